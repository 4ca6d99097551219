//! The task status machine.

use renderfarm_wire::TaskStatus;

use super::IllegalTransition;

/// Something that happens to one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// A worker is handed the task.
    Claim,
    /// Its worker reports every frame rendered.
    Complete,
    /// Its worker reports that Blender failed.
    Fail,
    /// A failed task gets another attempt; allowed while `retries < max_retries`.
    Retry { retries: i64, max_retries: i64 },
    /// The task is taken from its worker (lost, preempted or handed back)
    /// without counting as a failure.
    Requeue,
    /// The render was canceled or marked complete by an operator.
    Cancel,
    /// An operator requeued the render: the task runs again from scratch.
    Reset,
}

/// What a worker reports about the task it holds, under its lease.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskReport {
    Progress {
        frames_done: i64,
    },
    Complete,
    Fail {
        exit_code: Option<i64>,
        reason: String,
    },
    /// The worker hands the task back unfinished; it is queued again without
    /// counting as a failure.
    Release,
}

/// The status `event` moves a task in `from` to, or why it cannot.
pub fn task_transition(
    from: TaskStatus,
    event: TaskEvent,
) -> Result<TaskStatus, IllegalTransition> {
    use TaskEvent as E;
    use TaskStatus as S;
    match (event, from) {
        (E::Claim, S::Pending) => Ok(S::Running),
        (E::Complete, S::Running) => Ok(S::Completed),
        (E::Fail, S::Running) => Ok(S::Failed),
        (
            E::Retry {
                retries,
                max_retries,
            },
            S::Failed,
        ) => {
            if retries < max_retries {
                Ok(S::Pending)
            } else {
                Err(IllegalTransition::new(format!(
                    "the task failed {} time(s) and may be retried {max_retries} time(s); requeue the render to try again",
                    retries + 1
                )))
            }
        }
        (E::Requeue, S::Running) => Ok(S::Pending),
        (E::Cancel, S::Pending | S::Running) => Ok(S::Canceled),
        (E::Reset, S::Failed | S::Canceled | S::Completed) => Ok(S::Pending),
        _ => Err(IllegalTransition::new(format!(
            "a {} task cannot take the event {event:?}",
            from.as_str()
        ))),
    }
}

/// The statuses from which `event` is legal: what a bulk change (cancel every
/// task of a render, ...) selects.
pub fn statuses_affected_by(event: TaskEvent) -> Vec<TaskStatus> {
    TaskStatus::ALL
        .into_iter()
        .filter(|s| task_transition(*s, event).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskEvent as E;
    use TaskStatus as S;

    #[test]
    fn task_events_follow_the_status_table() {
        let retry_left = E::Retry {
            retries: 0,
            max_retries: 1,
        };
        let no_retry_left = E::Retry {
            retries: 1,
            max_retries: 1,
        };
        // (from, event, Some(to) | None for illegal); every pair not listed is illegal.
        let legal: &[(S, E, S)] = &[
            (S::Pending, E::Claim, S::Running),
            (S::Running, E::Complete, S::Completed),
            (S::Running, E::Fail, S::Failed),
            (S::Failed, retry_left, S::Pending),
            (S::Running, E::Requeue, S::Pending),
            (S::Pending, E::Cancel, S::Canceled),
            (S::Running, E::Cancel, S::Canceled),
            (S::Failed, E::Reset, S::Pending),
            (S::Canceled, E::Reset, S::Pending),
            (S::Completed, E::Reset, S::Pending),
        ];
        let events = [
            E::Claim,
            E::Complete,
            E::Fail,
            retry_left,
            no_retry_left,
            E::Requeue,
            E::Cancel,
            E::Reset,
        ];
        for from in S::ALL {
            for event in events {
                let want = legal
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to);
                assert_eq!(
                    task_transition(from, event).ok(),
                    want,
                    "{from:?} + {event:?}"
                );
            }
        }
    }

    #[test]
    fn bulk_changes_select_the_statuses_their_event_applies_to() {
        assert_eq!(
            statuses_affected_by(E::Cancel),
            vec![S::Pending, S::Running]
        );
        assert_eq!(
            statuses_affected_by(E::Reset),
            vec![S::Completed, S::Failed, S::Canceled]
        );
    }
}
