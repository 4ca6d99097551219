//! A farm's records as one backend hands them to another, for
//! `renderfarm migrate-store`: a studio that started on one machine (SQLite)
//! moves to a cluster (MongoDB) with its renders, tasks, logs, history and
//! workers. Records carry what the API shows and the state behind it that a
//! farm needs to carry on (leases of running tasks, when pending work was
//! queued, whether a render failed for good, worker modes).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renderfarm_wire::{Render, Task, TaskHistoryEntry};
use uuid::Uuid;

use super::{Store, StoreError, StoreResult};
use crate::domain::WorkerMode;

/// A render with everything stored about it.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderRecord {
    pub render: Render,
    /// A task of it ran out of retries (the render fails once nothing runs).
    pub failed_for_good: bool,
    /// Its tasks in frame order.
    pub tasks: Vec<TaskRecord>,
}

/// A task with its lease, log and history.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub task: Task,
    /// The lease of a running task, so its worker's reports stay accepted.
    pub lease_id: Option<Uuid>,
    /// When it last became pending (its wait for preemption counts from here).
    pub queued_at: DateTime<Utc>,
    /// Log chunks in the order they were appended.
    pub log: Vec<String>,
    /// Bytes of log dropped to keep the log within its bound.
    pub log_dropped: i64,
    pub history: Vec<TaskHistoryEntry>,
    /// Its place in its render's claim order (`domain::plan_tasks`: a
    /// preview-first render's previews go first).
    pub claim_rank: i64,
}

/// A worker as stored (its status is derived from these and its task).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRecord {
    pub id: Uuid,
    pub name: String,
    pub tags: Vec<String>,
    pub mode: WorkerMode,
    pub offline: bool,
    pub last_heartbeat: DateTime<Utc>,
    pub registered_at: DateTime<Utc>,
    /// Its hours, an operator's among them (kept until cleared).
    pub hours: crate::domain::WorkerHoursState,
}

/// A store a farm can be copied from.
#[async_trait]
pub trait ExportFarm: Store + Send + Sync {
    /// Every render's id, oldest first.
    async fn render_ids(&self) -> StoreResult<Vec<Uuid>>;
    /// One render with its tasks, logs and history.
    async fn export_render(&self, id: Uuid) -> StoreResult<RenderRecord>;
    /// Every worker, in the order they registered.
    async fn export_workers(&self) -> StoreResult<Vec<WorkerRecord>>;
}

/// A store a farm can be copied into.
#[async_trait]
pub trait ImportFarm: Store + Send + Sync {
    /// Whether it holds any render or worker already.
    async fn holds_anything(&self) -> StoreResult<bool>;
    /// Stores the render as it was exported; false (and nothing changes)
    /// when a render with its id is stored already. What an interrupted
    /// import left of it is replaced, and it becomes visible (and
    /// claimable) only once whole.
    async fn import_render(&self, record: RenderRecord) -> StoreResult<bool>;
    /// Stores the worker; false when one with its id is stored already.
    async fn import_worker(&self, worker: WorkerRecord) -> StoreResult<bool>;
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub renders_copied: u64,
    pub renders_already_there: u64,
    pub tasks_copied: u64,
    pub workers_copied: u64,
    pub workers_already_there: u64,
    /// Credentials (hashes only), so that every token and every worker's
    /// secret works on the copy as on the original.
    pub tokens_copied: u64,
    pub tokens_already_there: u64,
}

/// Copies every worker, then every render oldest first (so the target's
/// creation order, and so its dispatch order, is the source's). Running it
/// again after an interruption copies what is missing. `on_render` hears of
/// each render as it is done (for a progress line).
pub async fn copy_farm(
    from: &dyn ExportFarm,
    to: &dyn ImportFarm,
    mut on_render: impl FnMut(&CopyReport, usize) + Send,
) -> StoreResult<CopyReport> {
    let mut report = CopyReport::default();
    for token in from.list_tokens().await? {
        match to.create_token(token).await {
            Ok(_) => report.tokens_copied += 1,
            Err(StoreError::AlreadyExists) => report.tokens_already_there += 1,
            Err(e) => return Err(e),
        }
    }
    for worker in from.export_workers().await? {
        if to.import_worker(worker).await? {
            report.workers_copied += 1;
        } else {
            report.workers_already_there += 1;
        }
    }
    let ids = from.render_ids().await?;
    for id in &ids {
        let record = from.export_render(*id).await?;
        let tasks = record.tasks.len() as u64;
        if to.import_render(record).await? {
            report.renders_copied += 1;
            report.tasks_copied += tasks;
        } else {
            report.renders_already_there += 1;
        }
        on_render(&report, ids.len());
    }
    Ok(report)
}
