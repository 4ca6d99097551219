//! A render's tally (counters and the status they give), kept up to date one task move at a time by `$inc` and a compare-and-set on the render's version.

use std::time::Duration;

use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use renderfarm_wire::{HistoryEvent, Progress, RenderStatus, TaskKind, TaskStatus};

use super::events::{add_set, render_event_set};
use super::rules::retries_exhausted;
use super::{documents::*, errors::*, renders::*, *};
use crate::domain::tally_after;
use crate::domain::{
    counts_in_tally, follow_up_on, kind_runnable_in, settles_dependents, video_status_of,
};
use crate::domain::{is_claimable, render_change, BulkCause, Tally, TaskEvent};
use crate::store::StoreResult;

/// Compare-and-set attempts before a render is declared too busy to save its tally.
pub(super) const MAX_CAS_ATTEMPTS: usize = 64;

/// How long a recount that found a difference waits for in-flight counter
/// updates before it writes; and how often it tries.
pub(super) const RECOUNT_SETTLE: Duration = Duration::from_millis(250);

pub(super) const RECOUNT_ATTEMPTS: usize = 3;

impl MongoStore {
    /// Makes every task of a render runnable or not, fenced by `version`.
    pub(super) async fn sync_runnable(
        &self,
        render: &str,
        runnable: bool,
        version: i64,
    ) -> StoreResult<()> {
        let (filter, update) = runnable_sync(render, runnable, version);
        self.tasks()?.update_many(filter, update).await?;
        Ok(())
    }

    /// Moves the render's counters after one of its tasks moved, then
    /// saves its tally (a task that is running means the render started).
    /// A follow-up (`domain::counts_in_tally`) moves no counter: the
    /// render's `video_status` follows it instead.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn tally_task_move(
        &self,
        render: &str,
        kind: TaskKind,
        from: TaskStatus,
        to: TaskStatus,
        frames: i64,
        failed_for_good: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<RenderDoc> {
        if !counts_in_tally(kind) {
            let status = video_status_of(kind, to).map(|s| s.as_str());
            return self
                .renders()?
                .find_one_and_update(
                    doc! { "_id": render },
                    doc! { "$set": { "video_status": status } },
                )
                .return_document(ReturnDocument::After)
                .await?
                .ok_or_else(|| corrupt(format!("tasks of render {render}, which is missing")));
        }
        let doc = self
            .renders()?
            .find_one_and_update(
                doc! { "_id": render },
                render_counter_inc(from, to, frames, failed_for_good),
            )
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| corrupt(format!("tasks of render {render}, which is missing")))?;
        self.save_tally(doc, to == TaskStatus::Running, now).await
    }

    /// Writes the status the domain gives the render's tally,
    /// by compare-and-set on its version; recomputes from a fresh read when
    /// another change came first.
    pub(super) async fn save_tally(
        &self,
        mut doc: RenderDoc,
        started: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<RenderDoc> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let before = doc.status()?;
            let tally = doc.tally()?;
            let domain_change = render_change(before, &tally, started, bson_time(now));
            if !domain_change.changes(&tally) {
                return Ok(doc);
            }
            let status = domain_change.status;
            let change = StatusChange::tallied(&domain_change);
            let mut update = status_update(&change);
            if status != before {
                update = add_set(
                    update,
                    render_event_set(doc.version + 1, status, doc.progress(), now),
                );
            }
            let written = self
                .renders()?
                .find_one_and_update(render_cas_filter(&doc.id, doc.version), update)
                .return_document(ReturnDocument::After)
                .await?;
            match written {
                Some(after) => {
                    if status != before {
                        tracing::info!(
                            render_id = %after.id,
                            from = before.as_str(),
                            to = status.as_str(),
                            "render status changed"
                        );
                    }
                    return self
                        .after_status_write(before, after, domain_change.tasks_to_cancel, now)
                        .await;
                }
                None => doc = self.load_render(&doc.id).await?,
            }
        }
        // The change that called this is stored already; the next change of
        // the render, or the scheduler's recount, saves its tally.
        tracing::warn!(render_id = %doc.id, "render changed too often to save its tally now");
        Ok(doc)
    }

    /// What follows a written status change: the tasks' runnable flags, and
    /// the tasks the domain's change cancels (`RenderChange::tasks_to_cancel`).
    pub(super) async fn after_status_write(
        &self,
        before: RenderStatus,
        doc: RenderDoc,
        tasks_to_cancel: &[TaskStatus],
        now: DateTime<Utc>,
    ) -> StoreResult<RenderDoc> {
        let after = doc.status()?;
        if is_claimable(before) != is_claimable(after) {
            self.sync_runnable(&doc.id, is_claimable(after), doc.version)
                .await?;
        }
        let follow_ups_run = kind_runnable_in(TaskKind::Ffmpeg, after);
        if kind_runnable_in(TaskKind::Ffmpeg, before) != follow_ups_run {
            self.tasks()?
                .update_many(
                    follow_ups_of(&doc.id),
                    doc! { "$set": { "follow_up_ready": follow_ups_run } },
                )
                .await?;
        }
        if let Some(kind) = follow_up_on(doc.video.as_ref(), before, after, &doc.progress()) {
            self.queue_follow_up(&doc, kind, now).await?;
        }
        if settles_dependents(before, after) {
            self.settle_dependents(&doc.id, now).await?;
        }
        if !tasks_to_cancel.is_empty() {
            let after = self
                .bulk_task_change(
                    &doc.id,
                    TaskEvent::Cancel,
                    tasks_to_cancel,
                    BulkCause::RenderFailed,
                    None,
                    now,
                )
                .await?;
            // The status event tells the render as the cancel left it.
            self.refresh_render_event(doc.version, &after).await?;
            return Ok(after);
        }
        Ok(doc)
    }

    /// Queues the render's follow-up of `kind` (its video): new, or run
    /// again from scratch when the render completes again (a worker still on
    /// the old attempt finds its lease stale). The video it had is
    /// forgotten: the one made from the frames it has now replaces it.
    async fn queue_follow_up(
        &self,
        render: &RenderDoc,
        kind: TaskKind,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let tasks = self.tasks()?;
        let existing = tasks
            .find_one(doc! { "render_id": &render.id, "kind": kind.as_str() })
            .await?;
        match existing {
            Some(task) => {
                let mut set = run_again(TaskStatus::Pending, now);
                set.insert("follow_up_ready", true);
                let runs_again = doc! { "$set": set, "$inc": { "history_seq": 1_i64 } };
                tasks
                    .update_one(doc! { "_id": &task.id }, runs_again)
                    .await?;
                self.record_history(
                    &task.id,
                    task.history_seq,
                    HistoryEvent::Requeued,
                    task.worker_id.as_deref(),
                    Some(
                        "its render completed again: the video is made again from its frames"
                            .into(),
                    ),
                    None,
                    now,
                )
                .await?;
            }
            None => {
                let mut task = TaskDoc::planned(render, render.frame_start, render.frame_end);
                task.kind = Some(kind.as_str().to_string());
                task.follow_up_ready = Some(true);
                task.queued_at = bson_time(now);
                tasks.insert_one(&task).await?;
            }
        }
        self.renders()?
            .update_one(
                doc! { "_id": &render.id },
                doc! { "$set": {
                    "video_status": TaskStatus::Pending.as_str(),
                    "video_sha256": Bson::Null,
                    "video_bytes": Bson::Null,
                } },
            )
            .await?;
        Ok(())
    }

    pub(super) async fn frames_done_in(
        &self,
        render: &str,
        status: TaskStatus,
    ) -> StoreResult<i64> {
        let mut cursor = self
            .db()?
            .collection::<Document>(TASKS)
            .aggregate(frames_done_sum(bulk_filter(render, status)))
            .await?;
        let Some(row) = cursor.try_next().await? else {
            return Ok(0);
        };
        row.get("frames")
            .and_then(bson_i64)
            .ok_or_else(|| corrupt(format!("a frame sum in {row:?}")))
    }

    /// Counts the render's tasks by status, as the domain counts them.
    pub(super) async fn count_tally(
        &self,
        render: &str,
        frames_total: i64,
    ) -> StoreResult<Progress> {
        let rows: Vec<Document> = self
            .db()?
            .collection::<Document>(TASKS)
            .aggregate(recount_pipeline(render))
            .await?
            .try_collect()
            .await?;
        let mut progress = Progress {
            frames_total,
            ..Progress::default()
        };
        for row in rows {
            let status = row
                .get_str("_id")
                .ok()
                .and_then(TaskStatus::parse)
                .ok_or_else(|| corrupt(format!("a task status in {row:?}")))?;
            let tasks = row.get("tasks").and_then(bson_i64).unwrap_or(0);
            let frames = row.get("frames").and_then(bson_i64).unwrap_or(0);
            progress = add_progress(progress, progress_delta(None, status, tasks, 0));
            progress.frames_done += frames;
        }
        Ok(progress)
    }

    /// Recounts one unfinished render from its tasks and writes what
    /// differs (compare-and-set); true when something was corrected.
    ///
    /// A task change and its counter `$inc` are two writes, so a recount may
    /// see a move whose `$inc` is still on its way. A difference is written
    /// only if the render's version stays put for [`RECOUNT_SETTLE`] after
    /// the recount (an `$inc` landing meanwhile moves it and the recount is
    /// redone); a render that keeps moving is left to the next tick, its
    /// counters being kept up to date by those very moves.
    pub(super) async fn recount_tally(
        &self,
        mut doc: RenderDoc,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        for _ in 0..RECOUNT_ATTEMPTS {
            let before = doc.status()?;
            if before.is_finished() {
                return Ok(false);
            }
            let progress = self.count_tally(&doc.id, doc.frames_total).await?;
            let stuck = self
                .tasks()?
                .count_documents(stuck_filter(&doc.id))
                .limit(1)
                .await?
                > 0;
            let failed_for_good = doc.failed_for_good || stuck;
            let recounted = Tally {
                progress,
                failed_for_good,
                ..doc.tally()?
            };
            let domain_change = render_change(before, &recounted, false, bson_time(now));
            let status = domain_change.status;
            if (status, progress, failed_for_good) == (before, doc.progress(), doc.failed_for_good)
            {
                return Ok(false);
            }
            tokio::time::sleep(RECOUNT_SETTLE).await;
            let change = StatusChange::tallied(&domain_change);
            let mut update = recount_update(&progress, failed_for_good, &change);
            if status != before {
                update = add_set(
                    update,
                    render_event_set(doc.version + 1, status, progress, now),
                );
            }
            let written = self
                .renders()?
                .find_one_and_update(render_cas_filter(&doc.id, doc.version), update)
                .return_document(ReturnDocument::After)
                .await?;
            match written {
                Some(after) => {
                    tracing::warn!(render_id = %after.id, "render counters corrected from its tasks");
                    self.after_status_write(before, after, domain_change.tasks_to_cancel, now)
                        .await?;
                    return Ok(true);
                }
                None => doc = self.load_render(&doc.id).await?,
            }
        }
        tracing::debug!(render_id = %doc.id, "render busy; its recount waits for the next tick");
        Ok(false)
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

impl StatusChange {
    /// The status change the domain's tally gives (never a requeue's reset).
    pub fn tallied(change: &crate::domain::RenderChange<bson::DateTime>) -> Self {
        Self {
            status: change.status,
            started_at: change.started_at,
            finished_at: change.finished_at,
            reset_failure: false,
        }
    }
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
    if change.status != RenderStatus::Waiting {
        set.insert("waiting_reason", Bson::Null);
    }
    if change.status != RenderStatus::Failed {
        set.insert("failure_reason", Bson::Null);
    }
    doc! { "$set": set, "$inc": { "version": 1_i64 } }
}

/// Marks every task of the render runnable or not, unless a newer status
/// change (a higher render `version`) already did: concurrent pause and
/// resume leave the tasks as the later one says.
pub fn runnable_sync(render: &str, runnable: bool, version: i64) -> (Document, Document) {
    (
        // A task a re-split is replacing stays out of the claim whatever
        // its render does meanwhile.
        doc! { "render_id": render, "runnable_version": { "$lt": version }, "kind": { "$exists": false }, "resplit": { "$exists": false } },
        doc! { "$set": { "runnable": runnable, "runnable_version": version } },
    )
}

/// Sums the frames done of the tasks a filter selects.
pub fn frames_done_sum(filter: Document) -> Vec<Document> {
    vec![
        doc! { "$match": filter },
        doc! { "$group": { "_id": Bson::Null, "frames": { "$sum": "$frames_done" } } },
    ]
}

/// Counts a render's tasks by status, with their frames done.
pub fn recount_pipeline(render: &str) -> Vec<Document> {
    vec![
        doc! { "$match": { "render_id": render, "kind": { "$exists": false } } },
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
        "kind": { "$exists": false },
        "$expr": retries_exhausted(),
    }
}

/// The follow-ups of a render (tasks that carry a kind: chunks do not).
pub fn follow_ups_of(render: &str) -> Document {
    doc! { "render_id": render, "kind": { "$exists": true } }
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
