//! The production store: MongoDB through the official driver.
//!
//! No transactions and no process-wide lock, so that several brokers can
//! share one database, standalone or replica set. What keeps it consistent:
//!
//! - **The claim is one `findOneAndUpdate`** over the `tasks_claim` index.
//!   Each task carries what the claim filter needs from its render (priority
//!   rank, creation order `render_seq`, required tags, and a `runnable` flag
//!   that is false while the render is paused or finished), so the server
//!   picks and takes the next task atomically.
//! - **Reports are fenced by the lease**: every task change by a worker is a
//!   filtered update on `{_id, lease_id, status: "running"}`; matching nothing
//!   is a conflict, never a silent success.
//! - **Render counters follow the tasks by `$inc`**, one per task move (or per
//!   bulk `update_many`, counting what it modified), so concurrent moves add
//!   up. The render's status is then recomputed with the domain's `tallied_status`
//!   and written with a compare-and-set on the render's `version`, which
//!   every counter change bumps: a status decided from stale counters is
//!   recomputed, so concurrent brokers converge.
//! - **A render appears whole**: its tasks are inserted first (not runnable),
//!   then the render document, then its tasks are made runnable. A crash
//!   before the render document leaves only unreachable task documents.
//!
//! The broker must start while MongoDB is down: [`MongoStore::start`] returns
//! at once and connects (and migrates) in the background; until then every
//! operation answers [`StoreError::Unavailable`].

mod connect;
mod counters;
mod documents;
mod errors;
mod migrations;
mod renders;
mod snapshot;
mod tasks;
mod upkeep;
mod workers;

use super::{
    LostWorkers, MovedTask, PageRequest, PreemptionInputs, RenderFilter, Retries, Store,
    StoreError, StoreResult,
};
use crate::domain::{Allowances, NewRender, RenderCommand, TaskReport, ValidWorkerSpec};
use async_trait::async_trait;
use bson::{doc, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};
use renderfarm_wire::{
    Assignment, Heartbeat, HeartbeatAction, LeaderLease, Page, Render, Task, TaskHistoryEntry,
    TaskStatus, Worker, WorkerAction,
};
use std::sync::{Arc, Mutex, OnceLock};
use uuid::Uuid;

pub use connect::MigrationMode;
use documents::*;
use errors::*;
pub use migrations::MIGRATIONS;

/// The database used when the URI names none.
pub const DEFAULT_DATABASE: &str = "renderfarm";

const RENDERS: &str = "renders";

const TASKS: &str = "tasks";

const WORKERS: &str = "workers";

const TASK_LOGS: &str = "task_logs";

const COUNTERS: &str = "counters";

const TASK_HISTORY: &str = "task_history";

const LEASES: &str = "leases";

struct Inner {
    /// Set once the server answered and the schema is current.
    db: OnceLock<Database>,
    /// Why the store is not ready yet, for `/ready` and 503 answers.
    waiting_for: Mutex<String>,
    /// The servers and database, without credentials, for messages.
    target: String,
}

/// The MongoDB store.
#[derive(Clone)]
pub struct MongoStore {
    inner: Arc<Inner>,
}

impl MongoStore {
    fn db(&self) -> StoreResult<&Database> {
        self.inner.db.get().ok_or_else(|| {
            let why = self
                .inner
                .waiting_for
                .lock()
                .map(|w| w.clone())
                .unwrap_or_else(|_| "connecting to MongoDB".into());
            StoreError::Unavailable(why)
        })
    }

    fn renders(&self) -> StoreResult<Collection<RenderDoc>> {
        Ok(self.db()?.collection(RENDERS))
    }

    fn tasks(&self) -> StoreResult<Collection<TaskDoc>> {
        Ok(self.db()?.collection(TASKS))
    }

    fn workers(&self) -> StoreResult<Collection<WorkerDoc>> {
        Ok(self.db()?.collection(WORKERS))
    }

    fn logs(&self) -> StoreResult<Collection<LogDoc>> {
        Ok(self.db()?.collection(TASK_LOGS))
    }

    fn history(&self) -> StoreResult<Collection<HistoryDoc>> {
        Ok(self.db()?.collection(TASK_HISTORY))
    }

    fn leases(&self) -> StoreResult<Collection<LeaseDoc>> {
        Ok(self.db()?.collection(LEASES))
    }
}

impl MongoStore {
    async fn next_seq(&self, name: &str) -> StoreResult<i64> {
        let counters = self.db()?.collection::<CounterDoc>(COUNTERS);
        let mut last = None;
        // Two first-ever upserts may race on the new _id; the loser retries.
        for _ in 0..3 {
            match counters
                .find_one_and_update(doc! { "_id": name }, next_seq_update())
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await
            {
                Ok(Some(c)) => return Ok(c.seq),
                Ok(None) => return Err(corrupt(format!("no {name} counter after an upsert"))),
                Err(e) if is_duplicate_key(&e) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map_or_else(|| corrupt("an unusable counter"), StoreError::from))
    }
}

/// One page of a sorted listing.
async fn fetch_page<T>(
    collection: &Collection<T>,
    filter: Document,
    sort: Document,
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<T>>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    // A limit of 0 means "no limit" to the server.
    if limit == 0 {
        return Ok(Vec::new());
    }
    Ok(collection
        .find(filter)
        .sort(sort)
        .skip(u64::try_from(offset).unwrap_or(0))
        .limit(limit)
        .await?
        .try_collect()
        .await?)
}

fn page_bounds(page: PageRequest) -> (i64, i64) {
    (
        page.limit.clamp(0, PageRequest::MAX_LIMIT),
        page.offset.max(0),
    )
}

/// Takes the next number of a named sequence (creating it at 1).
pub fn next_seq_update() -> Document {
    doc! { "$inc": { "seq": 1_i64 } }
}

#[async_trait]
impl Store for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db()?.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    async fn create_render(&self, new: NewRender) -> StoreResult<Render> {
        renders::create_render(self, new).await
    }

    async fn get_render(&self, id: Uuid) -> StoreResult<Render> {
        renders::get_render(self, id).await
    }

    async fn list_renders(
        &self,
        filter: &RenderFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Render>> {
        renders::list_renders(self, filter, page).await
    }

    async fn list_tasks(
        &self,
        render_id: Uuid,
        status: Option<TaskStatus>,
        page: PageRequest,
    ) -> StoreResult<Page<Task>> {
        tasks::list_tasks(self, render_id, status, page).await
    }

    async fn finished_renders_before(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<Uuid>> {
        upkeep::finished_renders_before(self, before, limit).await
    }

    async fn delete_render(&self, id: Uuid) -> StoreResult<()> {
        renders::delete_render(self, id).await
    }

    async fn change_render(
        &self,
        id: Uuid,
        command: RenderCommand,
        now: DateTime<Utc>,
    ) -> StoreResult<Render> {
        renders::change_render(self, id, command, now).await
    }

    async fn get_task(&self, id: Uuid) -> StoreResult<Task> {
        tasks::get_task(self, id).await
    }

    async fn task_log(&self, id: Uuid) -> StoreResult<String> {
        tasks::task_log(self, id).await
    }

    async fn register_worker(
        &self,
        spec: ValidWorkerSpec,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker> {
        workers::register_worker(self, spec, now).await
    }

    async fn get_worker(&self, id: Uuid) -> StoreResult<Worker> {
        workers::get_worker(self, id).await
    }

    async fn list_workers(&self) -> StoreResult<Vec<Worker>> {
        workers::list_workers(self).await
    }

    async fn change_worker(
        &self,
        id: Uuid,
        action: WorkerAction,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker> {
        workers::change_worker(self, id, action, now).await
    }

    async fn heartbeat(
        &self,
        worker_id: Uuid,
        beat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> StoreResult<HeartbeatAction> {
        workers::heartbeat(self, worker_id, beat, now).await
    }

    async fn claim_next_task(
        &self,
        worker_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Assignment>> {
        tasks::claim_next_task(self, worker_id, now).await
    }

    async fn report_task(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        report: TaskReport,
        log: Option<String>,
        now: DateTime<Utc>,
    ) -> StoreResult<Task> {
        tasks::report_task(self, task_id, lease_id, report, log, now).await
    }

    async fn task_history(&self, task_id: Uuid) -> StoreResult<Vec<TaskHistoryEntry>> {
        tasks::task_history(self, task_id).await
    }

    async fn requeue_lost_workers(
        &self,
        cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<LostWorkers> {
        upkeep::requeue_lost_workers(self, cutoff, now).await
    }

    async fn retry_failed_tasks(&self, now: DateTime<Utc>) -> StoreResult<Retries> {
        upkeep::retry_failed_tasks(self, now).await
    }

    async fn preemption_inputs(
        &self,
        allowances: &Allowances,
        now: DateTime<Utc>,
    ) -> StoreResult<PreemptionInputs> {
        upkeep::preemption_inputs(self, allowances, now).await
    }

    async fn preempt_task(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<MovedTask>> {
        upkeep::preempt_task(self, task_id, lease_id, now).await
    }

    async fn recount_tallies(&self, now: DateTime<Utc>) -> StoreResult<i64> {
        upkeep::recount_tallies(self, now).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<LeaderLease> {
        upkeep::acquire_lease(self, name, holder, ttl, now).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        upkeep::release_lease(self, name, holder).await
    }

    async fn current_lease(&self, name: &str) -> StoreResult<Option<LeaderLease>> {
        upkeep::current_lease(self, name).await
    }
}

#[cfg(test)]
mod tests;
