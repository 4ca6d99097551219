//! Who may be handed which task, in which order, and which reports count: the
//! rules of the claim and of the lease. Stores translate these values into
//! SQL or BSON; they never restate them.

use renderfarm_wire::{RenderStatus, TaskStatus};
use uuid::Uuid;

/// Renders in these statuses have their pending tasks handed out; paused,
/// canceled and finished renders never do.
pub const CLAIMABLE_RENDER_STATUSES: &[RenderStatus] =
    &[RenderStatus::Queued, RenderStatus::Rendering];

/// The status of a task a claim may take.
pub const CLAIMABLE_TASK_STATUS: TaskStatus = TaskStatus::Pending;

/// The status of a task that is held under a lease (and the only one whose
/// reports count).
pub const LEASED_TASK_STATUS: TaskStatus = TaskStatus::Running;

/// Whether the pending tasks of a render in `status` may be claimed.
pub fn is_claimable(status: RenderStatus) -> bool {
    CLAIMABLE_RENDER_STATUSES.contains(&status)
}

/// What the claim order compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKey {
    /// The render's priority.
    Priority,
    /// When the render was submitted (its submission sequence).
    Submitted,
    /// The task's rank in its render (`domain::plan_tasks`: the previews
    /// of a preview-first render go first).
    Rank,
    /// The task's first frame.
    FrameStart,
}

/// Which way a [`ClaimKey`] sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    Ascending,
    Descending,
}

/// The order in which claims hand tasks out: the highest priority first, then
/// the oldest render, then within the render the lowest rank (a
/// preview-first render's previews), then the lowest frames.
pub const CLAIM_ORDER: &[(ClaimKey, SortOrder)] = &[
    (ClaimKey::Priority, SortOrder::Descending),
    (ClaimKey::Submitted, SortOrder::Ascending),
    (ClaimKey::Rank, SortOrder::Ascending),
    (ClaimKey::FrameStart, SortOrder::Ascending),
];

/// Whether a worker with `worker_tags` may take work that requires
/// `required`: it must carry every one of them.
pub fn carries_tags(worker_tags: &[String], required: &[String]) -> bool {
    required.iter().all(|t| worker_tags.contains(t))
}

/// Worker tags and the tags a render requires, each with whether the worker
/// carries them: the table the domain's tag match is tested on, and that
/// ties each backend's spelling of it to the domain.
#[cfg(test)]
pub(crate) const TAG_MATCH_CASES: &[(&[&str], &[&str])] = &[
    (&[], &[]),
    (&["gpu"], &[]),
    (&[], &["gpu"]),
    (&["gpu", "linux"], &["gpu"]),
    (&["gpu"], &["gpu", "linux"]),
    (&["linux", "gpu"], &["gpu", "linux"]),
];

/// What the store knows of the task a lease names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLease {
    pub status: TaskStatus,
    pub lease_id: Option<Uuid>,
    pub worker_id: Option<Uuid>,
}

/// Why a lease is not accepted; every reason is a stale lease to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRefusal {
    /// The lease presented is not the task's current one.
    NotCurrent,
    /// The lease is current but another worker holds the task.
    OtherWorker,
    /// The task no longer runs (finished, canceled or handed back).
    NotRunning,
}

/// Whether a report (or heartbeat) under `lease` counts for `task`: only
/// while the task runs under that very lease, and, when the caller names
/// itself (`worker`), is held by that worker. A running task held by
/// another worker is refused as such whatever the lease (a worker's report
/// about another's task is forbidden, not merely stale).
pub fn lease_accepts(
    task: &TaskLease,
    lease: Uuid,
    worker: Option<Uuid>,
) -> Result<(), LeaseRefusal> {
    let held_by_another =
        task.worker_id.is_some() && worker.is_some_and(|w| task.worker_id != Some(w));
    if held_by_another && task.status == LEASED_TASK_STATUS {
        return Err(LeaseRefusal::OtherWorker);
    }
    if task.lease_id != Some(lease) {
        return Err(LeaseRefusal::NotCurrent);
    }
    if held_by_another {
        return Err(LeaseRefusal::OtherWorker);
    }
    if task.status != LEASED_TASK_STATUS {
        return Err(LeaseRefusal::NotRunning);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_queued_and_rendering_renders_are_claimed() {
        use RenderStatus as S;
        for (status, claimable) in [
            (S::Queued, true),
            (S::Rendering, true),
            (S::Paused, false),
            (S::Waiting, false),
            (S::Completed, false),
            (S::Failed, false),
            (S::Canceled, false),
        ] {
            assert_eq!(is_claimable(status), claimable, "{status:?}");
        }
    }

    #[test]
    fn a_worker_must_carry_every_required_tag() {
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let wants = [true, true, false, true, false, true];
        for ((worker, required), want) in TAG_MATCH_CASES.iter().zip(&wants) {
            assert_eq!(
                carries_tags(&tags(worker), &tags(required)),
                *want,
                "{worker:?} for {required:?}"
            );
        }
    }

    #[test]
    fn a_lease_counts_only_while_its_task_runs_under_it_for_its_worker() {
        let (lease, other_lease) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (me, someone) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let task = |status, lease_id, worker_id| TaskLease {
            status,
            lease_id,
            worker_id,
        };
        use LeaseRefusal as R;
        use TaskStatus as T;
        let table = [
            (task(T::Running, Some(lease), Some(me)), Some(me), Ok(())),
            (task(T::Running, Some(lease), Some(me)), None, Ok(())),
            (
                task(T::Running, Some(other_lease), Some(me)),
                Some(me),
                Err(R::NotCurrent),
            ),
            (task(T::Pending, None, None), None, Err(R::NotCurrent)),
            (
                task(T::Running, Some(lease), Some(someone)),
                Some(me),
                Err(R::OtherWorker),
            ),
            (
                task(T::Running, Some(other_lease), Some(someone)),
                Some(me),
                Err(R::OtherWorker),
            ),
            (
                task(T::Pending, None, Some(someone)),
                Some(me),
                Err(R::NotCurrent),
            ),
            (
                task(T::Completed, Some(lease), Some(me)),
                Some(me),
                Err(R::NotRunning),
            ),
        ];
        for (task, worker, want) in table {
            assert_eq!(lease_accepts(&task, lease, worker), want, "{task:?}");
        }
    }
}
