//! Workers: what an operator may do to one, what status it shows, whether it
//! may take work, and what its heartbeat is answered.

use renderfarm_wire::{HeartbeatAction, WorkerAction, WorkerSpec, WorkerStatus};
use uuid::Uuid;

use super::{
    lease_accepts, validate_name, validate_tags, validate_worker_hours, IllegalTransition,
    TaskLease, ValidWorkerHours, ValidationError,
};

/// The operator's say over a worker, as stored. Busy, idle and offline are
/// not stored: they follow from its task and its heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMode {
    Active,
    Draining,
    Disabled,
}

impl WorkerMode {
    /// Every mode.
    pub const ALL: [WorkerMode; 3] = [
        WorkerMode::Active,
        WorkerMode::Draining,
        WorkerMode::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerMode::Active => "active",
            WorkerMode::Draining => "draining",
            WorkerMode::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(WorkerMode::Active),
            "draining" => Some(WorkerMode::Draining),
            "disabled" => Some(WorkerMode::Disabled),
            _ => None,
        }
    }
}

/// A registration whose fields passed their checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidWorkerSpec {
    pub name: String,
    pub tags: Vec<String>,
    /// The task kinds it runs, each once, in order.
    pub kinds: Vec<renderfarm_wire::TaskKind>,
    /// Its hours as its agent reports them.
    pub hours: ValidWorkerHours,
    /// The operating system it renders on.
    pub platform: renderfarm_wire::Platform,
}

/// Checks what a worker sends when it registers.
pub fn validate_worker_spec(spec: WorkerSpec) -> Result<ValidWorkerSpec, ValidationError> {
    Ok(ValidWorkerSpec {
        name: validate_name("name", &spec.name)?,
        tags: validate_tags("tags", &spec.tags)?,
        kinds: super::validate_kinds(&spec.kinds)?,
        hours: validate_worker_hours(
            spec.time_zone.as_deref(),
            spec.available.as_deref(),
            spec.strict_hours,
        )?,
        platform: spec.platform,
    })
}

/// The mode an operator's action leads to.
pub fn worker_transition(
    from: WorkerMode,
    action: WorkerAction,
) -> Result<WorkerMode, IllegalTransition> {
    match (action, from) {
        (WorkerAction::Drain, WorkerMode::Active | WorkerMode::Draining) => Ok(WorkerMode::Draining),
        (WorkerAction::Drain, WorkerMode::Disabled) => Err(IllegalTransition::new(
            "cannot drain a disabled worker: it takes no work already; enable it first if you want it to",
        )),
        (WorkerAction::Disable, _) => Ok(WorkerMode::Disabled),
        (WorkerAction::Enable, _) => Ok(WorkerMode::Active),
    }
}

/// A worker's own change of its mode, and whether the drain it is in is its
/// own afterwards. Its agent drains it when it stops (so that a long poll
/// left behind at the broker takes nothing) and enables it when it starts
/// again, but only out of that drain of its own: an operator's drain or
/// disable stands until an operator enables it.
pub fn self_transition(
    from: WorkerMode,
    drained_by_itself: bool,
    action: WorkerAction,
) -> Result<(WorkerMode, bool), IllegalTransition> {
    match (action, from) {
        (WorkerAction::Drain, WorkerMode::Active) => Ok((WorkerMode::Draining, true)),
        (WorkerAction::Drain, _) => Ok((worker_transition(from, action)?, drained_by_itself)),
        (WorkerAction::Enable, WorkerMode::Active) => Ok((WorkerMode::Active, false)),
        (WorkerAction::Enable, WorkerMode::Draining) if drained_by_itself => {
            Ok((WorkerMode::Active, false))
        }
        (WorkerAction::Enable, _) => Err(IllegalTransition::new(format!(
            "this worker was {} by an operator and stays so until an operator enables it (PUT /workers/{{id}}/status {{\"action\":\"enable\"}})",
            match from {
                WorkerMode::Disabled => "disabled",
                _ => "drained",
            }
        ))),
        (WorkerAction::Disable, _) => Err(IllegalTransition::new(
            "a worker may only drain itself when its agent stops, and take work again when it starts; disabling is for operators",
        )),
    }
}

/// Why a worker that is not disabled is not removed: disabling first takes
/// its task back to the queue and stops it claiming, so nothing it holds is
/// lost with its record.
pub const REMOVE_ONLY_DISABLED: &str =
    "only a disabled worker is removed: disable it first (PUT /workers/{id}/status {\"action\":\"disable\"}); DELETE /workers/{id} does both";

/// What an operator sees of a worker.
pub fn worker_status(mode: WorkerMode, offline: bool, has_task: bool) -> WorkerStatus {
    match mode {
        WorkerMode::Disabled => WorkerStatus::Disabled,
        _ if offline => WorkerStatus::Offline,
        WorkerMode::Draining => WorkerStatus::Draining,
        WorkerMode::Active if has_task => WorkerStatus::Busy,
        WorkerMode::Active => WorkerStatus::Idle,
    }
}

/// Whether a worker asking for work may get a new task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPermission {
    /// Hand it the next task.
    Allowed,
    /// It is draining: no new work, and no error either.
    NoNewWork,
}

/// Why a worker asking for work may not have any; a conflict the operator
/// should hear about (a draining worker simply gets none, without an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WorkerUnavailable {
    #[error("this worker is disabled and takes no work; enable it with PUT /workers/{{id}}/status {{\"action\":\"enable\"}}")]
    Disabled,
}

/// Decides whether a worker in `mode` may claim.
pub fn claim_permission(mode: WorkerMode) -> Result<ClaimPermission, WorkerUnavailable> {
    match mode {
        WorkerMode::Active => Ok(ClaimPermission::Allowed),
        WorkerMode::Draining => Ok(ClaimPermission::NoNewWork),
        WorkerMode::Disabled => Err(WorkerUnavailable::Disabled),
    }
}

/// The answer to a heartbeat from `worker` that names a task under `lease`:
/// keep rendering only while the lease is accepted (see [`lease_accepts`]).
/// `None` means the task is unknown.
pub fn heartbeat_action(task: Option<&TaskLease>, lease: Uuid, worker: Uuid) -> HeartbeatAction {
    match task {
        Some(task) if lease_accepts(task, lease, Some(worker)).is_ok() => HeartbeatAction::Continue,
        _ => HeartbeatAction::Abort,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use renderfarm_wire::TaskStatus;
    use WorkerAction as A;
    use WorkerMode as M;

    #[test]
    fn operator_actions_follow_the_worker_table() {
        let table: &[(M, A, Option<M>)] = &[
            (M::Active, A::Drain, Some(M::Draining)),
            (M::Draining, A::Drain, Some(M::Draining)),
            (M::Disabled, A::Drain, None),
            (M::Active, A::Disable, Some(M::Disabled)),
            (M::Draining, A::Disable, Some(M::Disabled)),
            (M::Disabled, A::Disable, Some(M::Disabled)),
            (M::Active, A::Enable, Some(M::Active)),
            (M::Draining, A::Enable, Some(M::Active)),
            (M::Disabled, A::Enable, Some(M::Active)),
        ];
        for (from, action, to) in table {
            assert_eq!(
                worker_transition(*from, *action).ok(),
                *to,
                "{from:?} + {action:?}"
            );
        }
    }

    #[test]
    fn a_worker_resumes_only_from_its_own_drain() {
        type Row = (M, bool, A, Option<(M, bool)>);
        let table: &[Row] = &[
            (M::Active, false, A::Drain, Some((M::Draining, true))),
            (M::Draining, false, A::Drain, Some((M::Draining, false))),
            (M::Draining, true, A::Drain, Some((M::Draining, true))),
            (M::Disabled, false, A::Drain, None),
            (M::Draining, true, A::Enable, Some((M::Active, false))),
            (M::Draining, false, A::Enable, None),
            (M::Disabled, false, A::Enable, None),
            (M::Active, false, A::Enable, Some((M::Active, false))),
            (M::Active, false, A::Disable, None),
        ];
        for (from, own, action, want) in table {
            assert_eq!(
                self_transition(*from, *own, *action).ok(),
                *want,
                "{from:?} (own drain: {own}) + {action:?}"
            );
        }
        let refused = self_transition(M::Disabled, false, A::Enable).unwrap_err();
        assert!(
            refused.to_string().contains("disabled by an operator"),
            "{refused}"
        );
        let refused = self_transition(M::Draining, false, A::Enable).unwrap_err();
        assert!(
            refused.to_string().contains("drained by an operator"),
            "{refused}"
        );
    }

    #[test]
    fn shown_status_follows_mode_liveness_and_task() {
        use WorkerStatus as S;
        let table: &[(M, bool, bool, S)] = &[
            (M::Active, false, false, S::Idle),
            (M::Active, false, true, S::Busy),
            (M::Active, true, true, S::Offline),
            (M::Draining, false, true, S::Draining),
            (M::Draining, true, false, S::Offline),
            (M::Disabled, true, false, S::Disabled),
            (M::Disabled, false, true, S::Disabled),
        ];
        for (mode, offline, has_task, want) in table {
            assert_eq!(worker_status(*mode, *offline, *has_task), *want);
        }
    }

    #[test]
    fn only_active_workers_get_new_work() {
        assert_eq!(claim_permission(M::Active), Ok(ClaimPermission::Allowed));
        assert_eq!(
            claim_permission(M::Draining),
            Ok(ClaimPermission::NoNewWork)
        );
        assert_eq!(
            claim_permission(M::Disabled),
            Err(WorkerUnavailable::Disabled)
        );
        assert!(WorkerUnavailable::Disabled.to_string().contains("enable"));
    }

    #[test]
    fn heartbeats_abort_unless_the_lease_is_current_and_running() {
        use TaskStatus as T;
        let (lease, me) = (Uuid::from_u128(1), Uuid::from_u128(10));
        let task = |status, lease_id| TaskLease {
            status,
            lease_id: Some(lease_id),
            worker_id: Some(me),
        };
        let table = [
            (task(T::Running, lease), HeartbeatAction::Continue),
            (task(T::Running, Uuid::from_u128(2)), HeartbeatAction::Abort),
            (task(T::Canceled, lease), HeartbeatAction::Abort),
            (task(T::Pending, lease), HeartbeatAction::Abort),
        ];
        for (task, want) in table {
            assert_eq!(heartbeat_action(Some(&task), lease, me), want, "{task:?}");
        }
        let someone_else = Uuid::from_u128(11);
        assert_eq!(
            heartbeat_action(Some(&task(T::Running, lease)), lease, someone_else),
            HeartbeatAction::Abort
        );
        assert_eq!(heartbeat_action(None, lease, me), HeartbeatAction::Abort);
    }
}
