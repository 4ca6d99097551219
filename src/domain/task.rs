//! The task status machine.

use renderfarm_wire::{HistoryEvent, Progress, RenderStatus, TaskStatus};
use uuid::Uuid;

use super::IllegalTransition;

/// Why a running task goes back to the queue without counting as a failure;
/// its history says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// Its worker stopped and handed it back.
    Released,
    /// Taken back for more urgent work.
    Preempted,
    /// Its worker went silent; `last_seen` as the store writes times.
    WorkerLost { last_seen: String },
    /// An operator disabled its worker.
    WorkerDisabled,
    /// Its worker's hours ended and it keeps them strictly.
    OutsideHours,
}

impl Requeue {
    /// The line the task's history gets.
    pub fn history(&self) -> (HistoryEvent, String) {
        match self {
            Requeue::Released => (
                HistoryEvent::Released,
                "its worker stopped and handed it back".into(),
            ),
            Requeue::Preempted => (
                HistoryEvent::Preempted,
                "taken back for more urgent work".into(),
            ),
            Requeue::WorkerLost { last_seen } => (
                HistoryEvent::Requeued,
                format!("its worker was lost: no sign of life since {last_seen}"),
            ),
            Requeue::WorkerDisabled => (HistoryEvent::Requeued, "its worker was disabled".into()),
            Requeue::OutsideHours => (HistoryEvent::Released, super::HANDED_BACK.into()),
        }
    }
}

/// A progress report of more frames than the task has (or fewer than none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frames_done is {frames_done}, but this task has {frames} frame(s); report 0 to {frames}")]
pub struct FramesOutOfRange {
    pub frames_done: i64,
    pub frames: i64,
}

/// Checks a report of `frames_done` frames of a task of `frames` frames.
pub fn check_frames_done(frames_done: i64, frames: i64) -> Result<(), FramesOutOfRange> {
    if (0..=frames).contains(&frames_done) {
        Ok(())
    } else {
        Err(FramesOutOfRange {
            frames_done,
            frames,
        })
    }
}

/// A heartbeat that names a task without its lease, or a lease without its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("send task_id and lease_id together (both from your assignment), or neither when idle")]
pub struct UnpairedLease;

/// The task and lease a heartbeat names: both, or neither (an idle worker).
pub fn heartbeat_task(
    task_id: Option<Uuid>,
    lease_id: Option<Uuid>,
) -> Result<Option<(Uuid, Uuid)>, UnpairedLease> {
    match (task_id, lease_id) {
        (None, None) => Ok(None),
        (Some(task), Some(lease)) => Ok(Some((task, lease))),
        _ => Err(UnpairedLease),
    }
}

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

impl TaskEvent {
    /// The history event that records a task taking this event. A requeue's
    /// reason may name it more precisely ([`Requeue::history`]).
    pub fn history_event(self) -> HistoryEvent {
        match self {
            TaskEvent::Claim => HistoryEvent::Assigned,
            TaskEvent::Complete => HistoryEvent::Completed,
            TaskEvent::Fail => HistoryEvent::Failed,
            TaskEvent::Retry { .. } => HistoryEvent::Retried,
            TaskEvent::Requeue | TaskEvent::Reset => HistoryEvent::Requeued,
            TaskEvent::Cancel => HistoryEvent::Canceled,
        }
    }
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

impl TaskReport {
    /// The report's name as metrics label it.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TaskReport::Progress { .. } => "progress",
            TaskReport::Complete => "complete",
            TaskReport::Fail { .. } => "fail",
            TaskReport::Release => "release",
        }
    }
}

/// What an operator's requeue of one task does (`POST /tasks/{id}/requeue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRequeue {
    /// The task's move: `Requeue` takes a running task from its worker
    /// (its lease is void from then on, the worker's next report gets 409);
    /// `Reset` runs a finished one again. Either way it starts from scratch:
    /// no worker, no frames done, its retries counted anew.
    pub event: TaskEvent,
    /// The render's new status when the requeue reopens a finished render
    /// (it starts over as when the whole render is requeued); `None` leaves
    /// it as it is.
    pub reopen_render: Option<RenderStatus>,
}

impl TaskRequeue {
    /// The line the task's history gets (beside the operator's name).
    pub fn history(self) -> (HistoryEvent, &'static str) {
        (
            self.event.history_event(),
            "an operator requeued this task on its own",
        )
    }
}

/// Whether an operator may requeue one task in `task` of a render in
/// `render` whose counters are `progress`, and what it does.
///
/// A pending task is queued already. A finished render is reopened only if
/// that leaves it able to finish: its other tasks must all be completed or
/// still running, since nothing would ever run failed or canceled siblings
/// of a reopened render (the whole render's requeue does that).
/// The move an operator's requeue of one task in `task` makes: a running
/// task is taken from its worker, a finished one runs again; a pending one
/// is refused.
pub fn requeue_event(task: TaskStatus) -> Result<TaskEvent, IllegalTransition> {
    let event =
        match task {
            TaskStatus::Pending => return Err(IllegalTransition::new(
                "this task is pending: it is in the queue already and runs when a worker is free",
            )),
            TaskStatus::Running => TaskEvent::Requeue,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Canceled => TaskEvent::Reset,
        };
    task_transition(task, event)?;
    Ok(event)
}

pub fn plan_task_requeue(
    task: TaskStatus,
    render: RenderStatus,
    progress: &Progress,
) -> Result<TaskRequeue, IllegalTransition> {
    let event = requeue_event(task)?;
    if !render.is_finished() {
        return Ok(TaskRequeue {
            event,
            reopen_render: None,
        });
    }
    let this = i64::from(matches!(task, TaskStatus::Failed | TaskStatus::Canceled));
    let others = progress.tasks_failed + progress.tasks_canceled - this;
    if others > 0 {
        return Err(IllegalTransition::new(format!(
            "its render is {} with {others} other task(s) failed or canceled, which would never run again; requeue the whole render instead (PUT /renders/{{id}}/status {{\"action\": \"requeue\"}})",
            render.as_str()
        )));
    }
    Ok(TaskRequeue {
        event,
        reopen_render: Some(RenderStatus::Queued),
    })
}

/// Whether a failed task that was retried `retries` times may not be retried
/// again: its render fails for good.
pub fn retries_exhausted(retries: i64, max_retries: i64) -> bool {
    retries >= max_retries
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
            if !retries_exhausted(retries, max_retries) {
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
    fn progress_is_between_none_and_every_frame_of_the_task() {
        for (done, frames, ok) in [(0, 4, true), (4, 4, true), (5, 4, false), (-1, 4, false)] {
            assert_eq!(
                check_frames_done(done, frames).is_ok(),
                ok,
                "{done} of {frames}"
            );
        }
        assert!(check_frames_done(5, 4)
            .unwrap_err()
            .to_string()
            .contains("report 0 to 4"));
    }

    #[test]
    fn a_heartbeat_names_its_task_and_lease_together_or_neither() {
        let (t, l) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(heartbeat_task(None, None), Ok(None));
        assert_eq!(heartbeat_task(Some(t), Some(l)), Ok(Some((t, l))));
        assert_eq!(heartbeat_task(Some(t), None), Err(UnpairedLease));
        assert_eq!(heartbeat_task(None, Some(l)), Err(UnpairedLease));
    }

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
    fn an_operator_requeues_one_task_and_reopens_a_render_that_can_finish() {
        use RenderStatus as R;
        let tally = |completed, failed, canceled| Progress {
            tasks_total: 4,
            tasks_pending: 4 - completed - failed - canceled,
            tasks_completed: completed,
            tasks_failed: failed,
            tasks_canceled: canceled,
            ..Progress::default()
        };
        let reset = |reopen| {
            Some(TaskRequeue {
                event: E::Reset,
                reopen_render: reopen,
            })
        };
        // (task, render, its counters, the plan | None: refused)
        let table = [
            (S::Pending, R::Queued, tally(0, 0, 0), None),
            (
                S::Running,
                R::Rendering,
                tally(1, 0, 0),
                Some(TaskRequeue {
                    event: E::Requeue,
                    reopen_render: None,
                }),
            ),
            (S::Completed, R::Rendering, tally(2, 0, 0), reset(None)),
            (S::Failed, R::Rendering, tally(1, 1, 0), reset(None)),
            (S::Completed, R::Paused, tally(1, 0, 0), reset(None)),
            (
                S::Completed,
                R::Completed,
                tally(4, 0, 0),
                reset(Some(R::Queued)),
            ),
            (S::Failed, R::Failed, tally(3, 1, 0), reset(Some(R::Queued))),
            (
                S::Canceled,
                R::Canceled,
                tally(3, 0, 1),
                reset(Some(R::Queued)),
            ),
            (S::Failed, R::Failed, tally(1, 1, 2), None),
            (S::Completed, R::Failed, tally(1, 1, 0), None),
            (S::Completed, R::Completed, tally(3, 0, 1), None),
            (
                S::Running,
                R::Failed,
                Progress {
                    tasks_running: 1,
                    ..tally(2, 1, 0)
                },
                None,
            ),
            (
                S::Running,
                R::Failed,
                Progress {
                    tasks_running: 1,
                    ..tally(3, 0, 0)
                },
                Some(TaskRequeue {
                    event: E::Requeue,
                    reopen_render: Some(R::Queued),
                }),
            ),
        ];
        for (task, render, progress, want) in table {
            assert_eq!(
                plan_task_requeue(task, render, &progress).ok(),
                want,
                "{task:?} of a {render:?} render, {progress:?}"
            );
        }
        let refused = plan_task_requeue(S::Failed, R::Failed, &tally(1, 1, 2)).unwrap_err();
        assert!(
            refused.message.contains("requeue the whole render"),
            "{}",
            refused.message
        );
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
