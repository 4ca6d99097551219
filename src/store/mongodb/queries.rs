//! Every filter, sort and update document the MongoDB store sends, built by
//! small pure functions so that each can be checked without a server. Field
//! names here are the ones `migrations/mongodb/` validates and indexes.

use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use renderfarm_wire::{Progress, RenderStatus, TaskStatus};

use crate::domain::{tally_after, WorkerMode};
use crate::store::RenderFilter;

/// The index the claim walks; named in the migration and hinted by the claim.
pub const CLAIM_INDEX: &str = "tasks_claim";

/// A point in time as stored: BSON dates hold milliseconds.
pub fn bson_time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(t)
}

fn opt_time(t: Option<bson::DateTime>) -> Bson {
    t.map_or(Bson::Null, Bson::DateTime)
}

/// Whether workers may be handed the tasks of a render in this status:
/// paused, canceled and finished renders are never dispatched.
pub fn dispatchable(status: RenderStatus) -> bool {
    matches!(status, RenderStatus::Queued | RenderStatus::Rendering)
}

/// Pending tasks of dispatchable renders that need no tag the worker lacks
/// (the render's tags must be a subset of the worker's).
pub fn claim_filter(worker_tags: &[String]) -> Document {
    doc! {
        "status": TaskStatus::Pending.as_str(),
        "runnable": true,
        "required_tags": { "$not": { "$elemMatch": { "$nin": worker_tags } } },
    }
}

/// Dispatch order: the highest priority, then the oldest render, then the
/// lowest frames. Matches the key order of [`CLAIM_INDEX`] after its two
/// equality fields, so the server walks the index and stops at the first match.
pub fn claim_sort() -> Document {
    doc! { "priority": -1, "render_seq": 1, "frame_start": 1 }
}

/// Adds 1 to `field` in the update's `$inc`.
fn add_inc(mut update: Document, field: &str) -> Document {
    match update.get_mut("$inc") {
        Some(Bson::Document(inc)) => {
            inc.insert(field, 1_i64);
        }
        _ => {
            update.insert("$inc", doc! { field: 1_i64 });
        }
    }
    update
}

/// Every task change that its history records takes the next history
/// sequence number (read from the document before the change).
fn with_history(update: Document) -> Document {
    add_inc(update, "history_seq")
}

/// A report that carries log text takes the next log sequence number and
/// counts the text's bytes toward the task's log bound.
fn with_log(update: Document, log_bytes: Option<i64>) -> Document {
    let Some(bytes) = log_bytes else {
        return update;
    };
    let mut update = add_inc(update, "log_chunks");
    if let Ok(inc) = update.get_document_mut("$inc") {
        inc.insert("log_bytes", bytes);
    }
    update
}

/// Hands a task to `worker` under a new `lease`.
pub fn claim_update(to: TaskStatus, worker: &str, lease: &str, now: DateTime<Utc>) -> Document {
    with_history(doc! {
        "$set": {
            "status": to.as_str(),
            "worker_id": worker,
            "lease_id": lease,
            "frames_done": 0_i64,
            "started_at": bson_time(now),
            "finished_at": Bson::Null,
        }
    })
}

/// The task `worker` is rendering now, if any.
pub fn held_filter(worker: &str) -> Document {
    doc! { "worker_id": worker, "status": TaskStatus::Running.as_str() }
}

/// The task, only while it is running under `lease`: every report is fenced
/// by this, so a stale lease matches nothing and changes nothing.
pub fn lease_filter(task: &str, lease: &str) -> Document {
    doc! { "_id": task, "lease_id": lease, "status": TaskStatus::Running.as_str() }
}

/// A running task's progress (not a history event).
pub fn progress_update(frames_done: i64, log_bytes: Option<i64>) -> Document {
    with_log(doc! { "$set": { "frames_done": frames_done } }, log_bytes)
}

/// Every frame of the task rendered.
pub fn complete_update(
    to: TaskStatus,
    frames: i64,
    now: DateTime<Utc>,
    log_bytes: Option<i64>,
) -> Document {
    with_log(
        with_history(doc! { "$set": {
            "status": to.as_str(),
            "frames_done": frames,
            "finished_at": bson_time(now),
        } }),
        log_bytes,
    )
}

/// Blender failed; frames done are forgotten (a retry renders them again).
pub fn fail_update(
    to: TaskStatus,
    exit_code: Option<i64>,
    reason: &str,
    now: DateTime<Utc>,
    log_bytes: Option<i64>,
) -> Document {
    with_log(
        with_history(doc! { "$set": {
            "status": to.as_str(),
            "frames_done": 0_i64,
            "exit_code": exit_code.map_or(Bson::Null, Bson::Int64),
            "failure_reason": reason,
            "finished_at": bson_time(now),
        } }),
        log_bytes,
    )
}

/// The task goes back to the queue without counting as a failure: no worker,
/// no lease, waiting from now.
pub fn requeue_update(to: TaskStatus, now: DateTime<Utc>, log_bytes: Option<i64>) -> Document {
    with_log(
        with_history(doc! { "$set": {
            "status": to.as_str(),
            "worker_id": Bson::Null,
            "lease_id": Bson::Null,
            "frames_done": 0_i64,
            "queued_at": bson_time(now),
        } }),
        log_bytes,
    )
}

/// `dropped` bytes of a task's log were trimmed away.
pub fn log_trimmed_update(dropped: i64) -> Document {
    doc! { "$inc": { "log_bytes": -dropped, "log_dropped": dropped } }
}

/// The failed task, only while it is still failed after `retries` retries:
/// one broker retries it once.
pub fn retry_filter(task: &str, retries: i64) -> Document {
    doc! { "_id": task, "status": TaskStatus::Failed.as_str(), "retries": retries }
}

/// A failed task gets another attempt, from scratch.
pub fn retry_update(to: TaskStatus, now: DateTime<Utc>) -> Document {
    doc! {
        "$set": {
            "status": to.as_str(),
            "worker_id": Bson::Null,
            "lease_id": Bson::Null,
            "frames_done": 0_i64,
            "started_at": Bson::Null,
            "finished_at": Bson::Null,
            "queued_at": bson_time(now),
        },
        "$inc": { "retries": 1_i64, "history_seq": 1_i64 },
    }
}

/// The `$inc` of a render's counters by `delta`; the render's version moves
/// too, so a status compare-and-set based on older counters fails and is
/// recomputed.
pub fn progress_inc(delta: &Progress) -> Document {
    let mut inc = Document::new();
    let fields = [
        ("tasks_total", delta.tasks_total),
        ("tasks_pending", delta.tasks_pending),
        ("tasks_running", delta.tasks_running),
        ("tasks_completed", delta.tasks_completed),
        ("tasks_failed", delta.tasks_failed),
        ("tasks_canceled", delta.tasks_canceled),
        ("frames_total", delta.frames_total),
        ("frames_done", delta.frames_done),
    ];
    for (field, value) in fields {
        if value != 0 {
            inc.insert(field, value);
        }
    }
    inc.insert("version", 1_i64);
    inc
}

/// The counter change of `tasks` tasks moving from `from` (`None`: tasks
/// counted anew) to `to` with `frames` more frames done (negative: fewer),
/// as the domain counts it.
pub fn progress_delta(
    from: Option<TaskStatus>,
    to: TaskStatus,
    tasks: i64,
    frames: i64,
) -> Progress {
    let one = tally_after(Progress::default(), from, to, 0);
    Progress {
        tasks_total: one.tasks_total * tasks,
        tasks_pending: one.tasks_pending * tasks,
        tasks_running: one.tasks_running * tasks,
        tasks_completed: one.tasks_completed * tasks,
        tasks_failed: one.tasks_failed * tasks,
        tasks_canceled: one.tasks_canceled * tasks,
        frames_total: one.frames_total * tasks,
        frames_done: frames,
    }
}

/// Adds two counter changes.
pub fn add_progress(a: Progress, b: Progress) -> Progress {
    Progress {
        tasks_total: a.tasks_total + b.tasks_total,
        tasks_pending: a.tasks_pending + b.tasks_pending,
        tasks_running: a.tasks_running + b.tasks_running,
        tasks_completed: a.tasks_completed + b.tasks_completed,
        tasks_failed: a.tasks_failed + b.tasks_failed,
        tasks_canceled: a.tasks_canceled + b.tasks_canceled,
        frames_total: a.frames_total + b.frames_total,
        frames_done: a.frames_done + b.frames_done,
    }
}

/// The update of a render after one of its tasks moved from `from` to `to`;
/// `failed_for_good` marks that the task failed with no retry left.
pub fn render_counter_inc(
    from: TaskStatus,
    to: TaskStatus,
    frames: i64,
    failed_for_good: bool,
) -> Document {
    let mut update = doc! { "$inc": progress_inc(&progress_delta(Some(from), to, 1, frames)) };
    if failed_for_good {
        update.insert("$set", doc! { "failed_for_good": true });
    }
    update
}

/// The render, only while it still is at `version`: the compare-and-set that
/// makes concurrent brokers converge on one status.
pub fn render_cas_filter(render: &str, version: i64) -> Document {
    doc! { "_id": render, "version": version }
}

/// A render's status and the times that go with it, as decided by the domain.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub status: RenderStatus,
    pub started_at: Option<bson::DateTime>,
    pub finished_at: Option<bson::DateTime>,
    /// An operator's requeue starts the render over.
    pub reset_failure: bool,
}

/// Writes a status change (under [`render_cas_filter`]).
pub fn status_update(change: &StatusChange) -> Document {
    let mut set = doc! {
        "status": change.status.as_str(),
        "started_at": opt_time(change.started_at),
        "finished_at": opt_time(change.finished_at),
    };
    if change.reset_failure {
        set.insert("failed_for_good", false);
    }
    doc! { "$set": set, "$inc": { "version": 1_i64 } }
}

/// When a render that was `before` and is now `after` finished: now when it
/// just finished, never while unfinished, unchanged otherwise.
pub fn finished_at_after(
    before: RenderStatus,
    after: RenderStatus,
    finished_at: Option<bson::DateTime>,
    now: DateTime<Utc>,
) -> Option<bson::DateTime> {
    if after.is_finished() && !before.is_finished() {
        Some(bson_time(now))
    } else if !after.is_finished() {
        None
    } else {
        finished_at
    }
}

/// Marks every task of the render runnable or not, unless a newer status
/// change (a higher render `version`) already did: concurrent pause and
/// resume leave the tasks as the later one says.
pub fn runnable_sync(render: &str, runnable: bool, version: i64) -> (Document, Document) {
    (
        doc! { "render_id": render, "runnable_version": { "$lt": version } },
        doc! { "$set": { "runnable": runnable, "runnable_version": version } },
    )
}

/// The render's tasks in `status`, for a bulk change.
pub fn bulk_filter(render: &str, status: TaskStatus) -> Document {
    doc! { "render_id": render, "status": status.as_str() }
}

/// A bulk change to `to`. A task run again starts from scratch, with no
/// worker and no lease.
pub fn bulk_update(to: TaskStatus, now: DateTime<Utc>) -> Document {
    if to == TaskStatus::Pending {
        doc! { "$set": {
            "status": to.as_str(),
            "retries": 0_i64,
            "worker_id": Bson::Null,
            "lease_id": Bson::Null,
            "frames_done": 0_i64,
            "exit_code": Bson::Null,
            "failure_reason": Bson::Null,
            "started_at": Bson::Null,
            "finished_at": Bson::Null,
            "queued_at": bson_time(now),
        } }
    } else {
        doc! { "$set": { "status": to.as_str(), "finished_at": bson_time(now) } }
    }
}

/// Sums the frames done of the tasks a filter selects.
pub fn frames_done_sum(filter: Document) -> Vec<Document> {
    vec![
        doc! { "$match": filter },
        doc! { "$group": { "_id": Bson::Null, "frames": { "$sum": "$frames_done" } } },
    ]
}

/// Which renders a listing shows.
pub fn render_list_filter(filter: &RenderFilter) -> Document {
    let mut query = Document::new();
    if let Some(status) = filter.status {
        query.insert("status", status.as_str());
    }
    if let Some(priority) = filter.priority {
        query.insert("priority", priority.rank());
    }
    query
}

/// Newest first.
pub fn render_list_sort() -> Document {
    doc! { "seq": -1 }
}

/// Lowest frames first.
pub fn task_list_sort() -> Document {
    doc! { "frame_start": 1 }
}

/// Records that a worker is alive.
pub fn alive_update(now: DateTime<Utc>) -> Document {
    doc! { "$set": { "last_heartbeat": bson_time(now), "offline": false } }
}

/// Takes the next number of a named sequence (creating it at 1).
pub fn next_seq_update() -> Document {
    doc! { "$inc": { "seq": 1_i64 } }
}

/// Counts a render's tasks by status, with their frames done.
pub fn recount_pipeline(render: &str) -> Vec<Document> {
    vec![
        doc! { "$match": { "render_id": render } },
        doc! { "$group": {
            "_id": "$status",
            "tasks": { "$sum": 1_i64 },
            "frames": { "$sum": "$frames_done" },
        } },
    ]
}

/// A failed task of the render with no retry left.
pub fn stuck_filter(render: &str) -> Document {
    doc! {
        "render_id": render,
        "status": TaskStatus::Failed.as_str(),
        "$expr": { "$gte": ["$retries", "$max_retries"] },
    }
}

/// Overwrites a render's counters and status with a recount, under
/// [`render_cas_filter`].
pub fn recount_update(
    progress: &Progress,
    failed_for_good: bool,
    change: &StatusChange,
) -> Document {
    let mut update = status_update(change);
    if let Ok(set) = update.get_document_mut("$set") {
        set.insert("tasks_total", progress.tasks_total);
        set.insert("tasks_pending", progress.tasks_pending);
        set.insert("tasks_running", progress.tasks_running);
        set.insert("tasks_completed", progress.tasks_completed);
        set.insert("tasks_failed", progress.tasks_failed);
        set.insert("tasks_canceled", progress.tasks_canceled);
        set.insert("frames_done", progress.frames_done);
        set.insert("failed_for_good", failed_for_good);
    }
    update
}

/// Pending tasks of dispatchable renders that became pending at or before
/// their priority's cutoff, counted per render in dispatch order. `cutoffs`
/// holds (priority rank, cutoff) for the levels that may be overdue at all;
/// `None` when none may.
pub fn overdue_pipeline(cutoffs: &[(i64, DateTime<Utc>)]) -> Option<Vec<Document>> {
    if cutoffs.is_empty() {
        return None;
    }
    let per_level: Vec<Document> = cutoffs
        .iter()
        .map(
            |(rank, cutoff)| doc! { "priority": rank, "queued_at": { "$lte": bson_time(*cutoff) } },
        )
        .collect();
    Some(vec![
        doc! { "$match": {
            "status": TaskStatus::Pending.as_str(),
            "runnable": true,
            "$or": per_level,
        } },
        doc! { "$group": {
            "_id": "$render_id",
            "priority": { "$first": "$priority" },
            "render_seq": { "$first": "$render_seq" },
            "tags": { "$first": "$required_tags" },
            "tasks": { "$sum": 1_i64 },
        } },
        doc! { "$sort": { "priority": -1, "render_seq": 1 } },
    ])
}

/// The worker, only while it is marked alive and silent since `cutoff`: one
/// broker marks it offline once, and a heartbeat in between keeps it.
pub fn lost_worker_filter(worker: &str, cutoff: DateTime<Utc>) -> Document {
    doc! { "_id": worker, "offline": false, "last_heartbeat": { "$lte": bson_time(cutoff) } }
}

/// The lease `name`, only when `holder` may take it: it is theirs or it lapsed.
pub fn lease_take_filter(name: &str, holder: &str, now: DateTime<Utc>) -> Document {
    doc! {
        "_id": name,
        "$or": [
            { "holder": holder },
            { "expires_at": { "$lte": bson_time(now) } },
        ],
    }
}

/// Takes or renews the lease until `expires_at`.
pub fn lease_take_update(holder: &str, expires_at: DateTime<Utc>) -> Document {
    doc! { "$set": { "holder": holder, "expires_at": bson_time(expires_at) } }
}

/// Tasks in one status.
pub fn status_filter(status: TaskStatus) -> Document {
    doc! { "status": status.as_str() }
}

/// The running tasks of these workers.
pub fn running_of_workers_filter(workers: &[&str]) -> Document {
    doc! { "worker_id": { "$in": workers }, "status": TaskStatus::Running.as_str() }
}

/// Renders not finished (queued, rendering, paused), among `ids` if given.
pub fn open_renders_filter(ids: Option<Vec<&str>>) -> Document {
    let open: Vec<&str> = RenderStatus::ALL
        .into_iter()
        .filter(|s| !s.is_finished())
        .map(RenderStatus::as_str)
        .collect();
    let mut filter = doc! { "status": { "$in": open } };
    if let Some(ids) = ids {
        filter.insert("_id", doc! { "$in": ids });
    }
    filter
}

/// The worker, only while its mode is still `mode`: operator changes are
/// compare-and-set.
pub fn mode_cas_filter(worker: &str, mode: &str) -> Document {
    doc! { "_id": worker, "mode": mode }
}

pub fn mode_update(mode: WorkerMode) -> Document {
    doc! { "$set": { "mode": mode.as_str() } }
}

/// Workers marked alive that have been silent since `cutoff`.
pub fn silent_workers_filter(cutoff: DateTime<Utc>) -> Document {
    doc! { "offline": false, "last_heartbeat": { "$lte": bson_time(cutoff) } }
}

pub fn offline_update() -> Document {
    doc! { "$set": { "offline": true } }
}

/// Workers that could take work now, if they hold none.
pub fn available_workers_filter() -> Document {
    doc! { "mode": WorkerMode::Active.as_str(), "offline": false }
}

/// The lease, only if `holder` has it.
pub fn lease_release_filter(name: &str, holder: &str) -> Document {
    doc! { "_id": name, "holder": holder }
}

#[cfg(test)]
mod tests {
    use super::*;
    use renderfarm_wire::Priority;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn the_claim_takes_pending_runnable_tasks_whose_tags_the_worker_has() {
        let tags = vec!["gpu".to_string(), "linux".to_string()];
        assert_eq!(
            claim_filter(&tags),
            doc! {
                "status": "pending",
                "runnable": true,
                "required_tags": { "$not": { "$elemMatch": { "$nin": ["gpu", "linux"] } } },
            }
        );
        let untagged = claim_filter(&[]);
        assert_eq!(
            untagged.get_document("required_tags").unwrap(),
            &doc! { "$not": { "$elemMatch": { "$nin": [] } } },
            "a worker without tags takes only renders that need none"
        );
    }

    #[test]
    fn the_claim_sorts_by_priority_then_render_age_then_frame() {
        let sort = claim_sort();
        assert_eq!(
            sort,
            doc! { "priority": -1, "render_seq": 1, "frame_start": 1 }
        );
        let keys: Vec<&str> = sort.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["priority", "render_seq", "frame_start"],
            "order matters"
        );
    }

    #[test]
    fn a_claim_sets_the_worker_and_a_fresh_lease() {
        let update = claim_update(TaskStatus::Running, "w1", "l1", t(5));
        assert_eq!(
            update,
            doc! { "$set": {
                "status": "running",
                "worker_id": "w1",
                "lease_id": "l1",
                "frames_done": 0_i64,
                "started_at": bson::DateTime::from_millis(1_800_000_005_000),
                "finished_at": Bson::Null,
            }, "$inc": { "history_seq": 1_i64 } }
        );
    }

    #[test]
    fn reports_match_only_the_running_task_under_its_lease() {
        assert_eq!(
            lease_filter("t1", "l1"),
            doc! { "_id": "t1", "lease_id": "l1", "status": "running" }
        );
        assert_eq!(
            held_filter("w1"),
            doc! { "worker_id": "w1", "status": "running" }
        );
    }

    #[test]
    fn reports_with_log_text_take_a_log_sequence_number_and_count_its_bytes() {
        assert_eq!(
            progress_update(3, Some(120)),
            doc! { "$set": { "frames_done": 3_i64 }, "$inc": { "log_chunks": 1_i64, "log_bytes": 120_i64 } }
        );
        assert_eq!(
            progress_update(3, None),
            doc! { "$set": { "frames_done": 3_i64 } }
        );
        let fail = fail_update(TaskStatus::Failed, Some(1), "denoiser", t(0), None);
        assert_eq!(
            fail,
            doc! { "$set": {
                "status": "failed",
                "frames_done": 0_i64,
                "exit_code": 1_i64,
                "failure_reason": "denoiser",
                "finished_at": bson::DateTime::from_millis(1_800_000_000_000),
            }, "$inc": { "history_seq": 1_i64 } }
        );
        let no_code = fail_update(TaskStatus::Failed, None, "killed", t(0), Some(7));
        assert_eq!(
            no_code.get_document("$set").unwrap().get("exit_code"),
            Some(&Bson::Null)
        );
        assert_eq!(
            requeue_update(TaskStatus::Pending, t(3), None),
            doc! { "$set": {
                "status": "pending",
                "worker_id": Bson::Null,
                "lease_id": Bson::Null,
                "frames_done": 0_i64,
                "queued_at": bson::DateTime::from_millis(1_800_000_003_000),
            }, "$inc": { "history_seq": 1_i64 } }
        );
        assert_eq!(
            complete_update(TaskStatus::Completed, 5, t(9), Some(64)),
            doc! { "$set": {
                "status": "completed",
                "frames_done": 5_i64,
                "finished_at": bson::DateTime::from_millis(1_800_000_009_000),
            }, "$inc": { "history_seq": 1_i64, "log_chunks": 1_i64, "log_bytes": 64_i64 } },
            "a report with log text takes both sequence numbers"
        );
    }

    #[test]
    fn counters_move_with_the_task_and_bump_the_version() {
        assert_eq!(
            render_counter_inc(TaskStatus::Pending, TaskStatus::Running, 0, false),
            doc! { "$inc": { "tasks_pending": -1_i64, "tasks_running": 1_i64, "version": 1_i64 } }
        );
        assert_eq!(
            render_counter_inc(TaskStatus::Running, TaskStatus::Completed, 4, false),
            doc! { "$inc": {
                "tasks_running": -1_i64,
                "tasks_completed": 1_i64,
                "frames_done": 4_i64,
                "version": 1_i64,
            } }
        );
        assert_eq!(
            render_counter_inc(TaskStatus::Running, TaskStatus::Running, -2, false),
            doc! { "$inc": { "frames_done": -2_i64, "version": 1_i64 } },
            "progress moves frames only"
        );
        assert_eq!(
            render_counter_inc(TaskStatus::Running, TaskStatus::Failed, -3, true),
            doc! {
                "$inc": {
                    "tasks_running": -1_i64,
                    "tasks_failed": 1_i64,
                    "frames_done": -3_i64,
                    "version": 1_i64,
                },
                "$set": { "failed_for_good": true },
            }
        );
    }

    #[test]
    fn bulk_moves_count_every_task_they_changed() {
        let cancel = add_progress(
            progress_delta(Some(TaskStatus::Pending), TaskStatus::Canceled, 3, 0),
            progress_delta(Some(TaskStatus::Running), TaskStatus::Canceled, 1, 0),
        );
        assert_eq!(
            progress_inc(&cancel),
            doc! {
                "tasks_pending": -3_i64,
                "tasks_running": -1_i64,
                "tasks_canceled": 4_i64,
                "version": 1_i64,
            }
        );
        assert_eq!(
            progress_inc(&progress_delta(
                Some(TaskStatus::Completed),
                TaskStatus::Pending,
                2,
                -10
            )),
            doc! {
                "tasks_pending": 2_i64,
                "tasks_completed": -2_i64,
                "frames_done": -10_i64,
                "version": 1_i64,
            }
        );
        assert_eq!(
            bulk_filter("r1", TaskStatus::Failed),
            doc! { "render_id": "r1", "status": "failed" }
        );
        let reset = bulk_update(TaskStatus::Pending, t(0));
        let set = reset.get_document("$set").unwrap();
        assert_eq!(set.get_str("status").unwrap(), "pending");
        for cleared in [
            "worker_id",
            "lease_id",
            "exit_code",
            "failure_reason",
            "started_at",
            "finished_at",
        ] {
            assert_eq!(set.get(cleared), Some(&Bson::Null), "{cleared}");
        }
        assert_eq!(set.get_i64("retries").unwrap(), 0);
        assert_eq!(
            bulk_update(TaskStatus::Canceled, t(1)),
            doc! { "$set": {
                "status": "canceled",
                "finished_at": bson::DateTime::from_millis(1_800_000_001_000),
            } }
        );
        assert_eq!(
            frames_done_sum(bulk_filter("r1", TaskStatus::Completed)),
            vec![
                doc! { "$match": { "render_id": "r1", "status": "completed" } },
                doc! { "$group": { "_id": Bson::Null, "frames": { "$sum": "$frames_done" } } },
            ]
        );
    }

    #[test]
    fn status_changes_are_compare_and_set_on_the_version() {
        assert_eq!(
            render_cas_filter("r1", 7),
            doc! { "_id": "r1", "version": 7_i64 }
        );
        let change = StatusChange {
            status: RenderStatus::Queued,
            started_at: None,
            finished_at: None,
            reset_failure: true,
        };
        assert_eq!(
            status_update(&change),
            doc! {
                "$set": {
                    "status": "queued",
                    "started_at": Bson::Null,
                    "finished_at": Bson::Null,
                    "failed_for_good": false,
                },
                "$inc": { "version": 1_i64 },
            }
        );
    }

    #[test]
    fn a_render_is_finished_once_and_unfinished_when_reopened() {
        use RenderStatus as S;
        let earlier = Some(bson_time(t(1)));
        let now = t(9);
        assert_eq!(
            finished_at_after(S::Rendering, S::Completed, None, now),
            Some(bson_time(now))
        );
        assert_eq!(
            finished_at_after(S::Failed, S::Completed, earlier, now),
            earlier
        );
        assert_eq!(
            finished_at_after(S::Completed, S::Queued, earlier, now),
            None
        );
        assert_eq!(finished_at_after(S::Queued, S::Rendering, None, now), None);
    }

    #[test]
    fn only_queued_and_rendering_renders_are_dispatched() {
        let yes: Vec<_> = RenderStatus::ALL
            .into_iter()
            .filter(|s| dispatchable(*s))
            .collect();
        assert_eq!(yes, vec![RenderStatus::Queued, RenderStatus::Rendering]);
    }

    #[test]
    fn runnable_flags_follow_only_newer_render_versions() {
        assert_eq!(
            runnable_sync("r1", false, 4),
            (
                doc! { "render_id": "r1", "runnable_version": { "$lt": 4_i64 } },
                doc! { "$set": { "runnable": false, "runnable_version": 4_i64 } },
            )
        );
    }

    #[test]
    fn listings_filter_on_status_and_priority_rank() {
        assert_eq!(render_list_filter(&RenderFilter::default()), doc! {});
        assert_eq!(
            render_list_filter(&RenderFilter {
                status: Some(RenderStatus::Paused),
                priority: Some(Priority::High),
            }),
            doc! { "status": "paused", "priority": 2_i64 }
        );
        assert_eq!(render_list_sort(), doc! { "seq": -1 });
        assert_eq!(task_list_sort(), doc! { "frame_start": 1 });
    }

    #[test]
    fn heartbeats_and_sequences_are_plain_updates() {
        assert_eq!(
            alive_update(t(0)),
            doc! { "$set": {
                "last_heartbeat": bson::DateTime::from_millis(1_800_000_000_000),
                "offline": false,
            } }
        );
        assert_eq!(next_seq_update(), doc! { "$inc": { "seq": 1_i64 } });
    }

    #[test]
    fn a_retry_is_taken_once_and_counts_one_retry_more() {
        assert_eq!(
            retry_filter("t1", 0),
            doc! { "_id": "t1", "status": "failed", "retries": 0_i64 }
        );
        assert_eq!(
            retry_update(TaskStatus::Pending, t(2)),
            doc! {
                "$set": {
                    "status": "pending",
                    "worker_id": Bson::Null,
                    "lease_id": Bson::Null,
                    "frames_done": 0_i64,
                    "started_at": Bson::Null,
                    "finished_at": Bson::Null,
                    "queued_at": bson::DateTime::from_millis(1_800_000_002_000),
                },
                "$inc": { "retries": 1_i64, "history_seq": 1_i64 },
            }
        );
    }

    #[test]
    fn overdue_work_is_pending_runnable_work_past_its_level_cutoff() {
        assert_eq!(overdue_pipeline(&[]), None, "no level may be overdue");
        let pipeline = overdue_pipeline(&[(3, t(0)), (2, t(-120))]).unwrap();
        assert_eq!(
            pipeline,
            vec![
                doc! { "$match": {
                    "status": "pending",
                    "runnable": true,
                    "$or": [
                        { "priority": 3_i64, "queued_at": { "$lte": bson::DateTime::from_millis(1_800_000_000_000) } },
                        { "priority": 2_i64, "queued_at": { "$lte": bson::DateTime::from_millis(1_799_999_880_000) } },
                    ],
                } },
                doc! { "$group": {
                    "_id": "$render_id",
                    "priority": { "$first": "$priority" },
                    "render_seq": { "$first": "$render_seq" },
                    "tags": { "$first": "$required_tags" },
                    "tasks": { "$sum": 1_i64 },
                } },
                doc! { "$sort": { "priority": -1, "render_seq": 1 } },
            ]
        );
    }

    #[test]
    fn a_lost_worker_is_marked_once_and_only_while_silent() {
        assert_eq!(
            lost_worker_filter("w1", t(0)),
            doc! {
                "_id": "w1",
                "offline": false,
                "last_heartbeat": { "$lte": bson::DateTime::from_millis(1_800_000_000_000) },
            }
        );
    }

    #[test]
    fn a_lease_is_taken_when_it_is_ours_or_lapsed() {
        assert_eq!(
            lease_take_filter("scheduler", "b1", t(0)),
            doc! {
                "_id": "scheduler",
                "$or": [
                    { "holder": "b1" },
                    { "expires_at": { "$lte": bson::DateTime::from_millis(1_800_000_000_000) } },
                ],
            }
        );
        assert_eq!(
            lease_take_update("b1", t(90)),
            doc! { "$set": {
                "holder": "b1",
                "expires_at": bson::DateTime::from_millis(1_800_000_090_000),
            } }
        );
    }

    #[test]
    fn a_recount_groups_tasks_by_status_and_finds_stuck_failures() {
        assert_eq!(
            recount_pipeline("r1"),
            vec![
                doc! { "$match": { "render_id": "r1" } },
                doc! { "$group": {
                    "_id": "$status",
                    "tasks": { "$sum": 1_i64 },
                    "frames": { "$sum": "$frames_done" },
                } },
            ]
        );
        assert_eq!(
            stuck_filter("r1"),
            doc! {
                "render_id": "r1",
                "status": "failed",
                "$expr": { "$gte": ["$retries", "$max_retries"] },
            }
        );
        let progress = Progress {
            tasks_total: 2,
            tasks_completed: 1,
            tasks_failed: 1,
            frames_total: 8,
            frames_done: 4,
            ..Progress::default()
        };
        let change = StatusChange {
            status: RenderStatus::Failed,
            started_at: Some(bson_time(t(0))),
            finished_at: Some(bson_time(t(5))),
            reset_failure: false,
        };
        let update = recount_update(&progress, true, &change);
        let set = update.get_document("$set").unwrap();
        assert_eq!(set.get_str("status").unwrap(), "failed");
        assert_eq!(set.get_i64("tasks_completed").unwrap(), 1);
        assert_eq!(set.get_i64("frames_done").unwrap(), 4);
        assert!(set.get_bool("failed_for_good").unwrap());
        assert!(set.get("frames_total").is_none(), "fixed at submission");
        assert_eq!(
            update.get_document("$inc").unwrap(),
            &doc! { "version": 1_i64 }
        );
    }

    #[test]
    fn workers_change_by_compare_and_set_and_go_offline_once_silent() {
        assert_eq!(
            mode_cas_filter("w1", "active"),
            doc! { "_id": "w1", "mode": "active" }
        );
        assert_eq!(
            mode_update(WorkerMode::Disabled),
            doc! { "$set": { "mode": "disabled" } }
        );
        assert_eq!(
            silent_workers_filter(t(0)),
            doc! {
                "offline": false,
                "last_heartbeat": { "$lte": bson::DateTime::from_millis(1_800_000_000_000) },
            }
        );
        assert_eq!(offline_update(), doc! { "$set": { "offline": true } });
        assert_eq!(
            available_workers_filter(),
            doc! { "mode": "active", "offline": false }
        );
        assert_eq!(
            running_of_workers_filter(&["w1", "w2"]),
            doc! { "worker_id": { "$in": ["w1", "w2"] }, "status": "running" }
        );
    }

    #[test]
    fn open_renders_are_the_unfinished_ones() {
        assert_eq!(
            open_renders_filter(None),
            doc! { "status": { "$in": ["queued", "rendering", "paused"] } }
        );
        assert_eq!(
            open_renders_filter(Some(vec!["r1"])),
            doc! {
                "status": { "$in": ["queued", "rendering", "paused"] },
                "_id": { "$in": ["r1"] },
            }
        );
        assert_eq!(
            status_filter(TaskStatus::Failed),
            doc! { "status": "failed" }
        );
        assert_eq!(
            lease_release_filter("scheduler", "b1"),
            doc! { "_id": "scheduler", "holder": "b1" }
        );
    }
}
