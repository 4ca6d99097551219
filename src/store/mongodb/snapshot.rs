//! Writing a farm copied from another store, for `migrate-store`. A render
//! goes in the way `create_render` puts one in: its tasks (not runnable),
//! their logs and history, then the render document, then its tasks made
//! runnable; so it shows and dispatches only once whole, and what an
//! interrupted copy left of it (tasks without a render) is cleared first.

use async_trait::async_trait;
use bson::doc;

use super::documents::{bson_time, HistoryDoc, LogDoc, RenderDoc, TaskDoc, WorkerDoc};
use super::renders::TASK_BATCH;
use super::{MongoStore, RENDERS, WORKERS};
use crate::domain::is_claimable;
use crate::store::snapshot::{ImportFarm, RenderRecord, TaskRecord, WorkerRecord};
use crate::store::StoreResult;

#[async_trait]
impl ImportFarm for MongoStore {
    async fn holds_anything(&self) -> StoreResult<bool> {
        let render = self.renders()?.find_one(doc! {}).await?;
        let worker = self.workers()?.find_one(doc! {}).await?;
        Ok(render.is_some() || worker.is_some())
    }

    async fn import_render(&self, record: RenderRecord) -> StoreResult<bool> {
        let id = record.render.id.to_string();
        if self
            .renders()?
            .find_one(doc! { "_id": &id })
            .await?
            .is_some()
        {
            return Ok(false);
        }
        super::renders::clear_leftovers(self, &id).await?;
        let seq = self.next_seq(RENDERS).await?;
        let mut render = RenderDoc::planned(&record.render, seq);
        render.failed_for_good = record.failed_for_good;
        render.seen_version = Some(render.version);
        render.seen_progress = Some(render.progress());

        let mut tasks = Vec::with_capacity(TASK_BATCH);
        let mut logs = Vec::new();
        let mut history = Vec::new();
        for task in &record.tasks {
            let (doc, task_logs, task_history) = task_docs(&render, task);
            tasks.push(doc);
            logs.extend(task_logs);
            history.extend(task_history);
            if tasks.len() == TASK_BATCH {
                self.tasks()?.insert_many(&tasks).await?;
                tasks.clear();
            }
        }
        if !tasks.is_empty() {
            self.tasks()?.insert_many(&tasks).await?;
        }
        for batch in logs.chunks(TASK_BATCH) {
            self.logs()?.insert_many(batch).await?;
        }
        for batch in history.chunks(TASK_BATCH) {
            self.history()?.insert_many(batch).await?;
        }
        // The render appears only now, whole.
        self.renders()?.insert_one(&render).await?;
        if is_claimable(record.render.status) {
            self.sync_runnable(&render.id, true, render.version).await?;
        }
        Ok(true)
    }

    async fn import_worker(&self, worker: WorkerRecord) -> StoreResult<bool> {
        let id = worker.id.to_string();
        if self
            .workers()?
            .find_one(doc! { "_id": &id })
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let seq = self.next_seq(WORKERS).await?;
        self.workers()?
            .insert_one(WorkerDoc {
                id,
                seq,
                name: worker.name,
                tags: worker.tags,
                mode: worker.mode.as_str().into(),
                offline: worker.offline,
                last_heartbeat: bson_time(worker.last_heartbeat),
                registered_at: bson_time(worker.registered_at),
                events: None,
                has_events: None,
                seen_offline: Some(worker.offline),
                // A render's `seq` is each store's own: warmth starts afresh here.
                last_render_seq: None,
                warm_streak: None,
                // Not in the copy: an agent announces them when it registers.
                kinds: None,
                time_zone: worker.hours.time_zone,
                agent_hours: worker.hours.agent,
                operator_hours: worker.hours.operator,
                strict_hours: worker.hours.strict,
                drained_by_itself: false,
                platform: None,
            })
            .await?;
        Ok(true)
    }
}

/// A task's documents: the task itself (not yet runnable), its log chunks
/// and its history entries, numbered as the store numbers them.
fn task_docs(render: &RenderDoc, record: &TaskRecord) -> (TaskDoc, Vec<LogDoc>, Vec<HistoryDoc>) {
    let task = &record.task;
    let id = task.id.to_string();
    let mut doc = TaskDoc::planned(render, task.frame_start, task.frame_end);
    doc.id = id.clone();
    doc.status = task.status.as_str().into();
    doc.retries = task.retries;
    doc.worker_id = task.worker_id.map(|w| w.to_string());
    doc.lease_id = record.lease_id.map(|l| l.to_string());
    doc.frames_done = task.frames_done;
    doc.exit_code = task.exit_code;
    doc.failure_reason = task.failure_reason.clone();
    doc.started_at = task.started_at.map(bson_time);
    doc.finished_at = task.finished_at.map(bson_time);
    doc.queued_at = bson_time(record.queued_at);
    doc.claim_rank = record.claim_rank;
    if task.kind != renderfarm_wire::TaskKind::Blender {
        // A follow-up runs by its render's status, which the copy keeps.
        doc.kind = Some(task.kind.as_str().into());
        doc.follow_up_ready = Some(
            render
                .status()
                .is_ok_and(|s| crate::domain::kind_runnable_in(task.kind, s)),
        );
    }
    doc.log_chunks = record.log.len() as i64;
    doc.log_bytes = record.log.iter().map(|c| c.len() as i64).sum();
    doc.log_dropped = record.log_dropped;
    doc.history_seq = record.history.len() as i64;
    // A copy is not news: its events start from what it holds.
    doc.seen_frames_done = Some(doc.frames_done);
    doc.seen_log_total = Some(doc.log_bytes + doc.log_dropped);
    let logs = record
        .log
        .iter()
        .enumerate()
        .map(|(seq, text)| LogDoc {
            task_id: id.clone(),
            seq: seq as i64,
            text: text.clone(),
            bytes: text.len() as i64,
        })
        .collect();
    let history = record
        .history
        .iter()
        .enumerate()
        .map(|(seq, entry)| HistoryDoc {
            task_id: id.clone(),
            seq: seq as i64,
            at: bson_time(entry.at),
            event: entry.event.as_str().into(),
            worker_id: entry.worker_id.map(|w| w.to_string()),
            detail: entry.detail.clone(),
            actor: entry.actor.clone(),
        })
        .collect();
    (doc, logs, history)
}
