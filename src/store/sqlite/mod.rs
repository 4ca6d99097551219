//! The embedded store: one SQLite file in WAL mode under the data directory.
//!
//! Every write goes through one writer thread that owns the only writing
//! connection. It takes the writes that are waiting, runs each in a savepoint
//! of one transaction, commits once, and only then answers them (group
//! commit): no caller hears "done" before its change is in the file, and many
//! concurrent claims cost one commit. Reads run on a small pool of read-only
//! connections, which WAL lets run beside the writer.
//!
//! Durability: `synchronous=NORMAL` in WAL mode keeps every committed
//! transaction across a crash or `kill -9` of the broker; only a power loss or
//! OS crash can take back the last commits.

mod counters;
mod renders;
mod rows;
mod snapshot;
mod tasks;
mod upkeep;
mod workers;
mod writer;

use super::{
    LostWorkers, MovedTask, PageRequest, PreemptionInputs, RenderFilter, Retries, Store,
    StoreError, StoreResult,
};
use crate::domain::{Allowances, NewRender, RenderCommand, TaskReport, ValidWorkerSpec};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use r2d2_sqlite::SqliteConnectionManager;
use renderfarm_wire::{
    Assignment, Heartbeat, HeartbeatAction, LeaderLease, Page, Render, Task, TaskHistoryEntry,
    TaskStatus, Worker, WorkerAction,
};
use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use writer::*;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "renderfarm.sqlite3";

const READ_POOL_SIZE: u32 = 4;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../../migrations/sqlite/0001_initial.sql")),
        M::up(include_str!(
            "../../../migrations/sqlite/0002_scheduler.sql"
        )),
        M::up(include_str!(
            "../../../migrations/sqlite/0003_log_limit.sql"
        )),
        M::up(include_str!(
            "../../../migrations/sqlite/0004_hidden_renders.sql"
        )),
    ])
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(format!("the database is busy: {e}"))
            }
            Some(ErrorCode::DiskFull) => {
                StoreError::Unavailable("the disk holding the data directory is full".into())
            }
            Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
                StoreError::Unavailable(format!("the database file cannot be written: {e}"))
            }
            _ => StoreError::Unexpected(e.into()),
        }
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Unavailable(format!("no database connection is free: {e}"))
    }
}

/// The embedded SQLite store.
pub struct SqliteStore {
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: r2d2::Pool<SqliteConnectionManager>,
    path: PathBuf,
    /// Dropped with the store, which ends the checkpoint thread.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store under `data_dir` and brings its
    /// schema up to date.
    pub fn open(data_dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create the data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        migrations().to_latest(&mut conn).map_err(|e| {
            StoreError::Unexpected(anyhow::anyhow!(
                "applying migrations to {}: {e}",
                path.display()
            ))
        })?;
        conn.set_prepared_statement_cache_capacity(64);
        renders::remove_hidden_renders(&conn)?;

        let manager = SqliteConnectionManager::file(&path)
            .with_init(|c| c.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;"));
        let readers = r2d2::Pool::builder()
            .max_size(READ_POOL_SIZE)
            .build(manager)?;

        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Unexpected(e.into()))?;
        let checkpoints = Connection::open(&path)?;
        checkpoints.execute_batch("PRAGMA busy_timeout = 5000;")?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoints, stopped))
            .map_err(|e| StoreError::Unexpected(e.into()))?;
        Ok(Self {
            writer: tx,
            readers,
            path,
            _stop_checkpoints: stop_checkpoints,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job {
            work: Some(work),
            result: None,
            reply,
        });
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))?
    }

    async fn read<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get()?;
            work(&conn)
        })
        .await
        .map_err(|e| StoreError::Unexpected(e.into()))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
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
