//! A render's **tally** is its task counters ([`Progress`]) and the status
//! they give it ([`tallied_status`]). Stores keep it up to date one task move
//! at a time and recount it from the tasks when it may have drifted; every
//! name for that work speaks of the tally (`tally_task_move`, `save_tally`,
//! `recount_tallies`). What a render undergoes when its tally moves is
//! [`render_change`]'s answer, which the stores apply.

use renderfarm_wire::{Progress, RenderStatus, TaskStatus};

/// The counters after one task moves from `from` (None: a new task) to `to`,
/// with `frames_delta` frames more (or fewer) done.
pub fn tally_after(
    mut progress: Progress,
    from: Option<TaskStatus>,
    to: TaskStatus,
    frames_delta: i64,
) -> Progress {
    fn counter(p: &mut Progress, status: TaskStatus) -> &mut i64 {
        match status {
            TaskStatus::Pending => &mut p.tasks_pending,
            TaskStatus::Running => &mut p.tasks_running,
            TaskStatus::Completed => &mut p.tasks_completed,
            TaskStatus::Failed => &mut p.tasks_failed,
            TaskStatus::Canceled => &mut p.tasks_canceled,
        }
    }
    match from {
        Some(from) => *counter(&mut progress, from) -= 1,
        None => progress.tasks_total += 1,
    }
    *counter(&mut progress, to) += 1;
    progress.frames_done += frames_delta;
    progress
}

/// The status a render has given its tasks. `started` is true once any task
/// was claimed; `failed_for_good` is true when a task failed with no retry
/// left. Canceled, completed and failed stick until an operator acts; a paused
/// render stays paused until its work is all done or failed for good.
pub fn tallied_status(
    current: RenderStatus,
    progress: &Progress,
    started: bool,
    failed_for_good: bool,
) -> RenderStatus {
    use RenderStatus as S;
    match current {
        // A waiting render has run nothing: its dependencies, or an
        // operator, move it on.
        S::Canceled | S::Completed | S::Failed | S::Waiting => current,
        S::Queued | S::Rendering | S::Paused => {
            if failed_for_good {
                S::Failed
            } else if progress.tasks_total > 0 && progress.tasks_completed == progress.tasks_total {
                S::Completed
            } else if current == S::Paused {
                S::Paused
            } else if started {
                S::Rendering
            } else {
                S::Queued
            }
        }
    }
}

/// A render's tally as stored, in the store's own representation of a
/// moment (`T`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally<T> {
    /// The status the render has now (an operator's command may just have set it).
    pub status: RenderStatus,
    pub progress: Progress,
    pub started_at: Option<T>,
    pub finished_at: Option<T>,
    /// A task of it failed with no retry left.
    pub failed_for_good: bool,
}

/// What a render undergoes once its counters moved (a task moved, an
/// operator acted, or a recount corrected them): the store writes these
/// values and cancels `tasks_to_cancel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderChange<T> {
    pub status: RenderStatus,
    pub started_at: Option<T>,
    pub finished_at: Option<T>,
    /// The render's tasks in these statuses are canceled: a render that just
    /// failed for good cancels its pending work (running work may finish).
    pub tasks_to_cancel: &'static [TaskStatus],
}

impl<T: PartialEq> RenderChange<T> {
    /// Whether writing this change would change what `tally` stores.
    pub fn changes(&self, tally: &Tally<T>) -> bool {
        self.status != tally.status
            || self.started_at != tally.started_at
            || self.finished_at != tally.finished_at
            || !self.tasks_to_cancel.is_empty()
    }
}

/// When a render that was `before` and is now `after` finished: `now` when
/// it just finished, never while unfinished, unchanged otherwise.
pub fn finished_at_after<T>(
    before: RenderStatus,
    after: RenderStatus,
    finished_at: Option<T>,
    now: T,
) -> Option<T> {
    if after.is_finished() && !before.is_finished() {
        Some(now)
    } else if !after.is_finished() {
        None
    } else {
        finished_at
    }
}

/// The change of a render whose tally is `tally`, when it had status `before`
/// as the change began; `task_started` when a task of it just started
/// running. It finishes `now` when it just became finished, is unfinished
/// again when its status is, and fails its pending work when it just failed.
pub fn render_change<T: Clone>(
    before: RenderStatus,
    tally: &Tally<T>,
    task_started: bool,
    now: T,
) -> RenderChange<T> {
    let started_at = match &tally.started_at {
        Some(at) => Some(at.clone()),
        None => task_started.then(|| now.clone()),
    };
    let status = tallied_status(
        tally.status,
        &tally.progress,
        started_at.is_some(),
        tally.failed_for_good,
    );
    let finished_at = finished_at_after(before, status, tally.finished_at.clone(), now);
    let tasks_to_cancel: &'static [TaskStatus] =
        if status == RenderStatus::Failed && before != RenderStatus::Failed {
            &[TaskStatus::Pending]
        } else {
            &[]
        };
    RenderChange {
        status,
        started_at,
        finished_at,
        tasks_to_cancel,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use RenderStatus as S;

    pub(crate) fn progress(
        total: i64,
        pending: i64,
        running: i64,
        completed: i64,
        failed: i64,
    ) -> Progress {
        Progress {
            tasks_total: total,
            tasks_pending: pending,
            tasks_running: running,
            tasks_completed: completed,
            tasks_failed: failed,
            ..Progress::default()
        }
    }

    #[test]
    fn render_status_follows_its_tasks() {
        // (current, progress, started, failed_for_good, expected)
        let table: &[(S, Progress, bool, bool, S)] = &[
            (S::Queued, progress(3, 3, 0, 0, 0), false, false, S::Queued),
            (
                S::Queued,
                progress(3, 2, 1, 0, 0),
                true,
                false,
                S::Rendering,
            ),
            (
                S::Rendering,
                progress(3, 0, 1, 2, 0),
                true,
                false,
                S::Rendering,
            ),
            (
                S::Rendering,
                progress(3, 0, 0, 3, 0),
                true,
                false,
                S::Completed,
            ),
            (
                S::Rendering,
                progress(3, 1, 0, 1, 1),
                true,
                false,
                S::Rendering,
            ),
            (S::Rendering, progress(3, 1, 0, 1, 1), true, true, S::Failed),
            (S::Paused, progress(3, 1, 1, 1, 0), true, false, S::Paused),
            (
                S::Waiting,
                progress(3, 3, 0, 0, 0),
                false,
                false,
                S::Waiting,
            ),
            (
                S::Paused,
                progress(3, 0, 0, 3, 0),
                true,
                false,
                S::Completed,
            ),
            (S::Paused, progress(3, 1, 0, 1, 1), true, true, S::Failed),
            (
                S::Queued,
                progress(3, 3, 0, 0, 0),
                true,
                false,
                S::Rendering,
            ),
            (
                S::Canceled,
                progress(3, 0, 0, 3, 0),
                true,
                false,
                S::Canceled,
            ),
            (
                S::Completed,
                progress(3, 0, 0, 0, 0),
                true,
                false,
                S::Completed,
            ),
            (S::Failed, progress(3, 0, 0, 3, 0), true, false, S::Failed),
        ];
        for (current, p, started, failed, want) in table {
            assert_eq!(
                tallied_status(*current, p, *started, *failed),
                *want,
                "{current:?} {p:?} started={started} failed={failed}"
            );
        }
    }

    #[test]
    fn a_render_is_finished_once_and_unfinished_when_reopened() {
        assert_eq!(
            finished_at_after(S::Rendering, S::Completed, None, 9),
            Some(9)
        );
        assert_eq!(
            finished_at_after(S::Failed, S::Completed, Some(1), 9),
            Some(1)
        );
        assert_eq!(finished_at_after(S::Completed, S::Queued, Some(1), 9), None);
        assert_eq!(finished_at_after(S::Queued, S::Rendering, None, 9), None);
    }

    #[test]
    fn a_render_changes_with_its_tally() {
        // Times as plain numbers: the rule only compares and copies them.
        let tally = |status, progress, started_at, finished_at, failed_for_good| Tally {
            status,
            progress,
            started_at,
            finished_at,
            failed_for_good,
        };
        let none: &[TaskStatus] = &[];
        let pending: &[TaskStatus] = &[TaskStatus::Pending];
        // (before, tally, task started, want status, started, finished, cancel)
        let table = [
            // The first claim starts the render.
            (
                S::Queued,
                tally(S::Queued, progress(2, 1, 1, 0, 0), None, None, false),
                true,
                S::Rendering,
                Some(9),
                None,
                none,
            ),
            // The last completion finishes it, now.
            (
                S::Rendering,
                tally(S::Rendering, progress(2, 0, 0, 2, 0), Some(1), None, false),
                false,
                S::Completed,
                Some(1),
                Some(9),
                none,
            ),
            // A failure with no retry left fails it and cancels its pending work.
            (
                S::Rendering,
                tally(S::Rendering, progress(3, 1, 1, 0, 1), Some(1), None, true),
                false,
                S::Failed,
                Some(1),
                Some(9),
                pending,
            ),
            // Already failed: its finish time stays, nothing more to cancel.
            (
                S::Failed,
                tally(S::Failed, progress(3, 0, 1, 0, 2), Some(1), Some(5), true),
                false,
                S::Failed,
                Some(1),
                Some(5),
                none,
            ),
            // Requeued by an operator: unfinished again.
            (
                S::Completed,
                tally(S::Queued, progress(2, 2, 0, 0, 0), Some(1), Some(5), false),
                false,
                S::Rendering,
                Some(1),
                None,
                none,
            ),
        ];
        for (before, tally, task_started, status, started_at, finished_at, cancel) in table {
            let change = render_change(before, &tally, task_started, 9);
            assert_eq!(
                change,
                RenderChange {
                    status,
                    started_at,
                    finished_at,
                    tasks_to_cancel: cancel
                },
                "{before:?} {tally:?}"
            );
            assert!(change.changes(&tally) || (before == S::Failed));
        }
    }

    #[test]
    fn counters_move_with_each_task() {
        let p = Progress::default();
        let p = tally_after(p, None, TaskStatus::Pending, 0);
        let p = tally_after(p, None, TaskStatus::Pending, 0);
        assert_eq!((p.tasks_total, p.tasks_pending), (2, 2));
        let p = tally_after(p, Some(TaskStatus::Pending), TaskStatus::Running, 0);
        let p = tally_after(p, Some(TaskStatus::Running), TaskStatus::Running, 3);
        let p = tally_after(p, Some(TaskStatus::Running), TaskStatus::Completed, 2);
        assert_eq!(
            p,
            Progress {
                tasks_total: 2,
                tasks_pending: 1,
                tasks_completed: 1,
                frames_done: 5,
                ..Progress::default()
            }
        );
    }
}
