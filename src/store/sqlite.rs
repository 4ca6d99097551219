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

mod snapshot;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use r2d2_sqlite::SqliteConnectionManager;
use renderfarm_wire::{
    Assignment, Heartbeat, HeartbeatAction, HistoryEvent, LeaderLease, Page, Priority, Progress,
    Render, RenderStatus, Task, TaskHistoryEntry, TaskStatus, Worker, WorkerAction,
};
use rusqlite::types::Type;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use rusqlite_migration::{Migrations, M};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    LostWorkers, MovedTask, PageRequest, PreemptionInputs, RenderFilter, Retries, Store,
    StoreError, StoreResult, TaskReport,
};
use crate::domain::{
    check_deletable, claim_permission, heartbeat_action, join_log, log_chunks_to_drop,
    progress_after, render_transition, roll_up, task_transition, tasks_affected, worker_status,
    worker_transition, Allowances, ClaimPermission, LeaseView, NewRender, OverdueWork,
    RenderCommand, RunningWork, TaskEvent, ValidWorkerSpec, WorkerMode, TASK_LOG_LIMIT,
};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "renderfarm.sqlite3";

/// The most writes committed together.
const MAX_BATCH: usize = 512;
/// Tasks written (or deleted) per transaction when a big render is created
/// (or deleted): a claim that waits behind one batch waits a few
/// milliseconds, where a whole render of 1,000,000 tasks held the writer for
/// six seconds.
const TASK_WRITE_BATCH: usize = 2_000;
const READ_POOL_SIZE: u32 = 4;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../migrations/sqlite/0001_initial.sql")),
        M::up(include_str!("../../migrations/sqlite/0002_scheduler.sql")),
        M::up(include_str!("../../migrations/sqlite/0003_log_limit.sql")),
        M::up(include_str!(
            "../../migrations/sqlite/0004_hidden_renders.sql"
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

/// A write waiting for the writer thread.
trait WriteJob: Send {
    /// Runs the write inside the open transaction; true when it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

struct Job<R, F> {
    work: Option<F>,
    result: Option<StoreResult<R>>,
    reply: oneshot::Sender<StoreResult<R>>,
}

impl<R, F> WriteJob for Job<R, F>
where
    R: Send,
    F: FnOnce(&Connection) -> StoreResult<R> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = catch_unwind(AssertUnwindSafe(|| work(conn))).unwrap_or_else(|_| {
            Err(StoreError::Unexpected(anyhow::anyhow!(
                "a store write panicked; it was rolled back"
            )))
        });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let result = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(e), _) => Err(StoreError::Unavailable(format!(
                "the change could not be committed: {e}"
            ))),
            (Ok(()), None) => Err(StoreError::Unexpected(anyhow::anyhow!(
                "a store write was never run"
            ))),
        };
        // The caller may have gone away (client disconnected); the write stands.
        let _ = self.reply.send(result);
    }
}

fn writer_loop(conn: Connection, mut jobs: mpsc::Receiver<Box<dyn WriteJob>>) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let commit = run_batch(&conn, &mut batch);
        for job in batch.drain(..) {
            job.finish(commit.clone());
        }
    }
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn WriteJob>]) -> Result<(), String> {
    let mut run = || -> rusqlite::Result<()> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        for job in batch.iter_mut() {
            conn.prepare_cached("SAVEPOINT job")?.execute([])?;
            if !job.run(conn) {
                conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            }
            conn.prepare_cached("RELEASE job")?.execute([])?;
        }
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    };
    run().map_err(|e| {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        tracing::error!(error = %e, "sqlite batch failed and was rolled back");
        e.to_string()
    })
}

/// The embedded SQLite store.
pub struct SqliteStore {
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: r2d2::Pool<SqliteConnectionManager>,
    path: PathBuf,
    /// Dropped with the store, which ends the checkpoint thread.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// Copies the WAL into the database file from its own connection, so the
/// writer never pauses for a checkpoint's fsync (SQLite's automatic
/// checkpoint runs inside the commit that crosses the threshold, which put
/// tens of milliseconds on some claims). PASSIVE never blocks the writer.
fn checkpoint_loop(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(CHECKPOINT_INTERVAL)
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next one will try again");
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
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
        remove_hidden_renders(&conn)?;

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

    /// Deletes a hidden render batch by batch, each its own write.
    async fn remove_hidden_render(&self, render_seq: i64) -> StoreResult<()> {
        while self
            .write(move |conn| delete_hidden_batch(conn, render_seq))
            .await?
        {}
        Ok(())
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

// ---------------------------------------------------------------------------
// Row mapping

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn conversion_error(idx: usize, what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        idx,
        Type::Text,
        format!("{what} {value:?} in the database is not valid").into(),
    )
}

fn get_time(row: &Row, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let s: String = row.get(idx)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| conversion_error(idx, "timestamp", &s))
}

fn get_opt_time(row: &Row, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    match row.get_ref(idx)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => get_time(row, idx).map(Some),
    }
}

fn get_uuid(row: &Row, idx: usize) -> rusqlite::Result<Uuid> {
    let s: String = row.get(idx)?;
    Uuid::parse_str(&s).map_err(|_| conversion_error(idx, "id", &s))
}

fn get_opt_uuid(row: &Row, idx: usize) -> rusqlite::Result<Option<Uuid>> {
    let s: Option<String> = row.get(idx)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|_| conversion_error(idx, "id", &s)))
        .transpose()
}

fn get_enum<T>(row: &Row, idx: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    parse(&s).ok_or_else(|| conversion_error(idx, "status", &s))
}

fn get_tags(row: &Row, idx: usize) -> rusqlite::Result<Vec<String>> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|_| conversion_error(idx, "tags", &s))
}

fn tags_json(tags: &[String]) -> String {
    serde_json::Value::from(tags.to_vec()).to_string()
}

const RENDER_COLUMNS: &str = "r.id, r.name, r.status, r.priority, r.blend_file, r.frame_start, \
     r.frame_end, r.chunk_size, r.max_retries, r.output, r.engine, r.tags, r.tasks_total, \
     r.tasks_pending, r.tasks_running, r.tasks_completed, r.tasks_failed, r.tasks_canceled, \
     r.frames_total, r.frames_done, r.created_at, r.started_at, r.finished_at";

fn progress_from_row(row: &Row, first: usize) -> rusqlite::Result<Progress> {
    Ok(Progress {
        tasks_total: row.get(first)?,
        tasks_pending: row.get(first + 1)?,
        tasks_running: row.get(first + 2)?,
        tasks_completed: row.get(first + 3)?,
        tasks_failed: row.get(first + 4)?,
        tasks_canceled: row.get(first + 5)?,
        frames_total: row.get(first + 6)?,
        frames_done: row.get(first + 7)?,
    })
}

fn render_from_row(row: &Row) -> rusqlite::Result<Render> {
    let rank: i64 = row.get(3)?;
    Ok(Render {
        id: get_uuid(row, 0)?,
        name: row.get(1)?,
        status: get_enum(row, 2, RenderStatus::parse)?,
        priority: Priority::from_rank(rank)
            .ok_or_else(|| conversion_error(3, "priority", &rank.to_string()))?,
        blend_file: row.get(4)?,
        frame_start: row.get(5)?,
        frame_end: row.get(6)?,
        chunk_size: row.get(7)?,
        max_retries: row.get(8)?,
        output: row.get(9)?,
        engine: row.get(10)?,
        tags: get_tags(row, 11)?,
        progress: progress_from_row(row, 12)?,
        created_at: get_time(row, 20)?,
        started_at: get_opt_time(row, 21)?,
        finished_at: get_opt_time(row, 22)?,
    })
}

const TASK_COLUMNS: &str = "t.id, r.id, t.frame_start, t.frame_end, t.status, t.retries, \
     t.worker_id, t.frames_done, t.exit_code, t.failure_reason, t.started_at, t.finished_at";

fn task_from_row(row: &Row) -> rusqlite::Result<Task> {
    Ok(Task {
        id: get_uuid(row, 0)?,
        render_id: get_uuid(row, 1)?,
        frame_start: row.get(2)?,
        frame_end: row.get(3)?,
        status: get_enum(row, 4, TaskStatus::parse)?,
        retries: row.get(5)?,
        worker_id: get_opt_uuid(row, 6)?,
        frames_done: row.get(7)?,
        exit_code: row.get(8)?,
        failure_reason: row.get(9)?,
        started_at: get_opt_time(row, 10)?,
        finished_at: get_opt_time(row, 11)?,
    })
}

const WORKER_COLUMNS: &str = "w.id, w.name, w.mode, w.offline, w.tags, w.last_heartbeat, \
     w.registered_at, (SELECT t.id FROM tasks t WHERE t.worker_id = w.id AND t.status = 'running' LIMIT 1)";

fn worker_from_row(row: &Row) -> rusqlite::Result<Worker> {
    let mode = get_enum(row, 2, WorkerMode::parse)?;
    let offline: bool = row.get(3)?;
    let current_task_id = get_opt_uuid(row, 7)?;
    Ok(Worker {
        id: get_uuid(row, 0)?,
        name: row.get(1)?,
        status: worker_status(mode, offline, current_task_id.is_some()),
        tags: get_tags(row, 4)?,
        last_heartbeat: get_time(row, 5)?,
        current_task_id,
        registered_at: get_time(row, 6)?,
    })
}

/// A task's history, oldest first, by the task's row key.
const HISTORY_OF_TASK: &str =
    "SELECT at, event, worker_id, detail FROM task_history WHERE task_seq = ?1 ORDER BY seq";

fn history_from_row(row: &Row) -> rusqlite::Result<TaskHistoryEntry> {
    Ok(TaskHistoryEntry {
        at: get_time(row, 0)?,
        event: get_enum(row, 1, HistoryEvent::parse)?,
        worker_id: get_opt_uuid(row, 2)?,
        detail: row.get(3)?,
    })
}

const ASSIGNMENT_COLUMNS: &str =
    "t.id, r.id, t.lease_id, r.blend_file, t.frame_start, t.frame_end, r.output, r.engine";

fn assignment_from_row(row: &Row) -> rusqlite::Result<Assignment> {
    Ok(Assignment {
        task_id: get_uuid(row, 0)?,
        render_id: get_uuid(row, 1)?,
        lease_id: get_uuid(row, 2)?,
        blend_file: row.get(3)?,
        frame_start: row.get(4)?,
        frame_end: row.get(5)?,
        output: row.get(6)?,
        engine: row.get(7)?,
    })
}

// ---------------------------------------------------------------------------
// Queries shared by several operations; each runs inside the caller's
// transaction (or read connection).

fn load_render(conn: &Connection, id: Uuid) -> StoreResult<Render> {
    conn.prepare_cached(&format!(
        "SELECT {RENDER_COLUMNS} FROM renders r WHERE r.id = ?1 AND r.hidden = 0"
    ))?
    .query_row([id.to_string()], render_from_row)
    .optional()?
    .ok_or_else(|| StoreError::not_found("render", id))
}

fn load_render_by_seq(conn: &Connection, seq: i64) -> StoreResult<Render> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {RENDER_COLUMNS} FROM renders r WHERE r.seq = ?1"
        ))?
        .query_row([seq], render_from_row)?)
}

fn load_task_by_seq(conn: &Connection, seq: i64) -> StoreResult<Task> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks t JOIN renders r ON r.seq = t.render_seq WHERE t.seq = ?1"
        ))?
        .query_row([seq], task_from_row)?)
}

fn load_worker(conn: &Connection, id: Uuid) -> StoreResult<Worker> {
    conn.prepare_cached(&format!(
        "SELECT {WORKER_COLUMNS} FROM workers w WHERE w.id = ?1"
    ))?
    .query_row([id.to_string()], worker_from_row)
    .optional()?
    .ok_or_else(|| StoreError::not_found("worker", id))
}

/// The state of a render that the roll-up reads and writes.
struct RenderState {
    seq: i64,
    status: RenderStatus,
    progress: Progress,
    started_at: Option<String>,
    finished_at: Option<String>,
    failed_for_good: bool,
}

/// The render's row key; not found when no render has that id.
/// Inserts the render's row, hidden and with no pending task to claim yet;
/// its row key.
fn insert_hidden_render(conn: &Connection, r: &Render) -> StoreResult<i64> {
    conn.prepare_cached(
        "INSERT INTO renders (id, name, status, priority, blend_file, frame_start, frame_end, \
         chunk_size, max_retries, output, engine, tags, tasks_total, tasks_pending, \
         tasks_running, tasks_completed, tasks_failed, tasks_canceled, frames_total, \
         frames_done, created_at, hidden) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 0, 0, 0, 0, 0, ?14, 0, ?15, 1)",
    )?
    .execute(params![
        r.id.to_string(),
        r.name,
        r.status.as_str(),
        r.priority.rank(),
        r.blend_file,
        r.frame_start,
        r.frame_end,
        r.chunk_size,
        r.max_retries,
        r.output,
        r.engine,
        tags_json(&r.tags),
        r.progress.tasks_total,
        r.progress.frames_total,
        ts(r.created_at),
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Inserts pending tasks of frames `chunks` for the render at `render_seq`.
fn insert_tasks(
    conn: &Connection,
    render_seq: i64,
    r: &Render,
    chunks: &[(i64, i64)],
) -> StoreResult<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO tasks (id, render_seq, priority, frame_start, frame_end, status, queued_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
    )?;
    let queued_at = ts(r.created_at);
    for (start, end) in chunks {
        insert.execute(params![
            Uuid::now_v7().to_string(),
            render_seq,
            r.priority.rank(),
            start,
            end,
            queued_at,
        ])?;
    }
    Ok(())
}

/// Deletes up to one batch of a hidden render's tasks (with their logs and
/// history), or the render itself once none is left; true while there is
/// more to delete.
fn delete_hidden_batch(conn: &Connection, render_seq: i64) -> StoreResult<bool> {
    // The same batch each time: the render's first tasks by row key.
    const BATCH: &str = "SELECT seq FROM tasks WHERE render_seq = ?1 ORDER BY seq LIMIT ?2";
    let args = params![render_seq, TASK_WRITE_BATCH as i64];
    conn.prepare_cached(&format!(
        "DELETE FROM task_logs WHERE task_seq IN ({BATCH})"
    ))?
    .execute(args)?;
    conn.prepare_cached(&format!(
        "DELETE FROM task_history WHERE task_seq IN ({BATCH})"
    ))?
    .execute(args)?;
    let deleted = conn
        .prepare_cached(&format!("DELETE FROM tasks WHERE seq IN ({BATCH})"))?
        .execute(args)?;
    if deleted > 0 {
        return Ok(true);
    }
    conn.prepare_cached("DELETE FROM renders WHERE seq = ?1 AND hidden = 1")?
        .execute([render_seq])?;
    Ok(false)
}

/// Removes every hidden render: what a broker that died half-way through a
/// big submit or delete left. Runs at start, before anything is served.
fn remove_hidden_renders(conn: &Connection) -> StoreResult<()> {
    let hidden: Vec<i64> = conn
        .prepare("SELECT seq FROM renders WHERE hidden = 1")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for seq in hidden {
        tracing::warn!(
            render_seq = seq,
            "removing a render left half-written or half-deleted by the last run"
        );
        loop {
            let tx = conn.unchecked_transaction()?;
            let more = delete_hidden_batch(&tx, seq)?;
            tx.commit()?;
            if !more {
                break;
            }
        }
    }
    Ok(())
}

fn render_seq(conn: &Connection, id: Uuid) -> StoreResult<i64> {
    conn.prepare_cached("SELECT seq FROM renders WHERE id = ?1 AND hidden = 0")?
        .query_row([id.to_string()], |row| row.get(0))
        .optional()?
        .ok_or_else(|| StoreError::not_found("render", id))
}

fn load_render_state(conn: &Connection, seq: i64) -> StoreResult<RenderState> {
    Ok(conn
        .prepare_cached(
            "SELECT seq, status, tasks_total, tasks_pending, tasks_running, tasks_completed, \
             tasks_failed, tasks_canceled, frames_total, frames_done, started_at, finished_at, \
             failed_for_good FROM renders WHERE seq = ?1",
        )?
        .query_row([seq], |row| {
            Ok(RenderState {
                seq: row.get(0)?,
                status: get_enum(row, 1, RenderStatus::parse)?,
                progress: progress_from_row(row, 2)?,
                started_at: row.get(10)?,
                finished_at: row.get(11)?,
                failed_for_good: row.get(12)?,
            })
        })?)
}

/// Writes the render's new counters and the status the roll-up gives them;
/// `before` is the status the render had when the change began. A render that
/// just failed for good has its pending tasks canceled (running ones may
/// finish).
fn save_rolled_up(
    conn: &Connection,
    mut state: RenderState,
    before: RenderStatus,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let status = roll_up(
        state.status,
        &state.progress,
        state.started_at.is_some(),
        state.failed_for_good,
    );
    if status.is_finished() && !before.is_finished() {
        state.finished_at = Some(ts(now));
    } else if !status.is_finished() {
        state.finished_at = None;
    }
    if status == RenderStatus::Failed && before != RenderStatus::Failed {
        bulk_task_change(
            conn,
            state.seq,
            TaskEvent::Cancel,
            &[TaskStatus::Pending],
            now,
        )?;
        state.progress = count_progress(conn, state.seq, state.progress.frames_total)?;
    }
    let p = &state.progress;
    conn.prepare_cached(
        "UPDATE renders SET status = ?2, tasks_total = ?3, tasks_pending = ?4, tasks_running = ?5, \
         tasks_completed = ?6, tasks_failed = ?7, tasks_canceled = ?8, frames_done = ?9, \
         started_at = ?10, finished_at = ?11, failed_for_good = ?12 WHERE seq = ?1",
    )?
    .execute(params![
        state.seq,
        status.as_str(),
        p.tasks_total,
        p.tasks_pending,
        p.tasks_running,
        p.tasks_completed,
        p.tasks_failed,
        p.tasks_canceled,
        p.frames_done,
        state.started_at,
        state.finished_at,
        state.failed_for_good,
    ])?;
    if status != before {
        tracing::info!(
            render_seq = state.seq,
            from = before.as_str(),
            to = status.as_str(),
            "render status changed"
        );
    }
    Ok(())
}

/// Moves the counters of a render after one of its tasks moved.
fn roll_task_move(
    conn: &Connection,
    render_seq: i64,
    from: TaskStatus,
    to: TaskStatus,
    frames_delta: i64,
    failed_for_good: bool,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let mut state = load_render_state(conn, render_seq)?;
    state.progress = progress_after(state.progress, Some(from), to, frames_delta);
    if to == TaskStatus::Running && state.started_at.is_none() {
        state.started_at = Some(ts(now));
    }
    state.failed_for_good |= failed_for_good;
    let before = state.status;
    save_rolled_up(conn, state, before, now)
}

/// Recounts a render's counters from its tasks, after a change to many.
fn count_progress(conn: &Connection, render_seq: i64, frames_total: i64) -> StoreResult<Progress> {
    let mut progress = Progress {
        frames_total,
        ..Progress::default()
    };
    let mut stmt = conn.prepare_cached(
        "SELECT status, COUNT(*), SUM(frames_done) FROM tasks WHERE render_seq = ?1 GROUP BY status",
    )?;
    let mut rows = stmt.query([render_seq])?;
    while let Some(row) = rows.next()? {
        let status = get_enum(row, 0, TaskStatus::parse)?;
        let count: i64 = row.get(1)?;
        let frames: i64 = row.get(2)?;
        progress = (0..count).fold(progress, |p, _| progress_after(p, None, status, 0));
        progress.frames_done += frames;
    }
    Ok(progress)
}

/// Applies `event` to every task of the render that is in one of `from`.
fn bulk_task_change(
    conn: &Connection,
    render_seq: i64,
    event: TaskEvent,
    from: &[TaskStatus],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    for status in from {
        let to = task_transition(*status, event)?;
        let sql = if to == TaskStatus::Pending {
            // A task run again starts from scratch, with no worker and no lease.
            "UPDATE tasks SET status = ?3, retries = 0, worker_id = NULL, lease_id = NULL, \
             frames_done = 0, exit_code = NULL, failure_reason = NULL, started_at = NULL, \
             finished_at = NULL, queued_at = ?4 WHERE render_seq = ?1 AND status = ?2"
        } else {
            "UPDATE tasks SET status = ?3, finished_at = ?4 WHERE render_seq = ?1 AND status = ?2"
        };
        conn.prepare_cached(sql)?.execute(params![
            render_seq,
            status.as_str(),
            to.as_str(),
            ts(now)
        ])?;
    }
    Ok(())
}

/// What a lease-guarded report needs to know about the task it names.
struct LeasedTask {
    seq: i64,
    render_seq: i64,
    status: TaskStatus,
    lease_id: Option<String>,
    worker_id: Option<String>,
    frames: i64,
    frames_done: i64,
    retries: i64,
    max_retries: i64,
}

impl LeasedTask {
    fn held_under(&self, lease: Uuid, worker: Option<Uuid>) -> bool {
        let lease_ok = self.lease_id.as_deref() == Some(lease.to_string().as_str());
        let worker_ok =
            worker.is_none_or(|w| self.worker_id.as_deref() == Some(w.to_string().as_str()));
        lease_ok && worker_ok
    }
}

fn load_leased_task(conn: &Connection, id: Uuid) -> StoreResult<LeasedTask> {
    conn.prepare_cached(
        "SELECT t.seq, t.render_seq, t.status, t.lease_id, t.worker_id, t.frame_end - t.frame_start + 1, \
         t.frames_done, t.retries, r.max_retries FROM tasks t JOIN renders r ON r.seq = t.render_seq \
         WHERE t.id = ?1",
    )?
    .query_row([id.to_string()], |row| {
        Ok(LeasedTask {
            seq: row.get(0)?,
            render_seq: row.get(1)?,
            status: get_enum(row, 2, TaskStatus::parse)?,
            lease_id: row.get(3)?,
            worker_id: row.get(4)?,
            frames: row.get(5)?,
            frames_done: row.get(6)?,
            retries: row.get(7)?,
            max_retries: row.get(8)?,
        })
    })
    .optional()?
    .ok_or_else(|| StoreError::not_found("task", id))
}

/// Records how many frames of a running task are done.
fn record_progress(
    conn: &Connection,
    task: &LeasedTask,
    frames_done: i64,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    if !(0..=task.frames).contains(&frames_done) {
        return Err(StoreError::Invalid(format!(
            "frames_done is {frames_done}, but this task has {} frame(s); report 0 to {}",
            task.frames, task.frames
        )));
    }
    conn.prepare_cached("UPDATE tasks SET frames_done = ?2 WHERE seq = ?1")?
        .execute(params![task.seq, frames_done])?;
    let delta = frames_done - task.frames_done;
    roll_task_move(
        conn,
        task.render_seq,
        task.status,
        task.status,
        delta,
        false,
        now,
    )
}

/// Appends a chunk to the task's log, then drops old chunks if the log
/// outgrew its bound (see `domain::log_chunks_to_drop`).
fn append_log(conn: &Connection, task_seq: i64, log: Option<&str>) -> StoreResult<()> {
    let Some(text) = log.filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    let bytes = text.len() as i64;
    conn.prepare_cached("INSERT INTO task_logs (task_seq, text, bytes) VALUES (?1, ?2, ?3)")?
        .execute(params![task_seq, text, bytes])?;
    let total: i64 = conn
        .prepare_cached(
            "UPDATE tasks SET log_bytes = log_bytes + ?2 WHERE seq = ?1 RETURNING log_bytes",
        )?
        .query_row(params![task_seq, bytes], |row| row.get(0))?;
    if total <= TASK_LOG_LIMIT {
        return Ok(());
    }
    let chunks = conn
        .prepare_cached("SELECT seq, bytes FROM task_logs WHERE task_seq = ?1 ORDER BY seq")?
        .query_map([task_seq], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let Some(droppable) = chunks.get(1..chunks.len().saturating_sub(1)) else {
        return Ok(());
    };
    let sizes: Vec<i64> = droppable.iter().map(|(_, bytes)| *bytes).collect();
    let (count, dropped) = log_chunks_to_drop(total, &sizes);
    if count == 0 {
        return Ok(());
    }
    conn.prepare_cached("DELETE FROM task_logs WHERE task_seq = ?1 AND seq > ?2 AND seq <= ?3")?
        .execute(params![task_seq, chunks[0].0, droppable[count - 1].0])?;
    conn.prepare_cached(
        "UPDATE tasks SET log_bytes = log_bytes - ?2, log_dropped = log_dropped + ?2 WHERE seq = ?1",
    )?
    .execute(params![task_seq, dropped])?;
    Ok(())
}

/// The task a worker with `worker_tags` (JSON) should take next, with its
/// and its render's row numbers: the renders first (only the unfinished ones
/// with pending work, by priority then age), then the chosen render's lowest
/// pending chunk. Going through the renders means a paused or canceled
/// render's pending chunks are never walked, however many there are.
fn next_pending_task(
    conn: &Connection,
    worker_tags: &str,
) -> StoreResult<Option<(i64, i64, Assignment)>> {
    let mut renders = conn.prepare_cached(
        "SELECT r.seq, r.priority, r.id, r.blend_file, r.output, r.engine FROM renders r \
         WHERE r.status IN ('queued', 'rendering') AND r.tasks_pending > 0 AND r.hidden = 0 \
           AND (r.tags = '[]' OR NOT EXISTS ( \
                 SELECT 1 FROM json_each(r.tags) need \
                 WHERE need.value NOT IN (SELECT have.value FROM json_each(?1) have))) \
         ORDER BY r.priority DESC, r.seq",
    )?;
    let mut rows = renders.query([worker_tags])?;
    let mut first_chunk = conn.prepare_cached(
        "SELECT seq, id, frame_start, frame_end FROM tasks \
         WHERE status = 'pending' AND priority = ?1 AND render_seq = ?2 \
         ORDER BY frame_start LIMIT 1",
    )?;
    // The first render has a pending chunk unless its counter drifted (the
    // scheduler's roll-up recounts it); then the next render is tried.
    while let Some(render) = rows.next()? {
        let render_seq: i64 = render.get(0)?;
        let priority: i64 = render.get(1)?;
        let chunk = first_chunk
            .query_row(params![priority, render_seq], |task| {
                Ok((
                    task.get::<_, i64>(0)?,
                    get_uuid(task, 1)?,
                    task.get(2)?,
                    task.get(3)?,
                ))
            })
            .optional()?;
        if let Some((task_seq, task_id, frame_start, frame_end)) = chunk {
            let assignment = Assignment {
                task_id,
                render_id: get_uuid(render, 2)?,
                lease_id: Uuid::new_v4(),
                blend_file: render.get(3)?,
                frame_start,
                frame_end,
                output: render.get(4)?,
                engine: render.get(5)?,
            };
            return Ok(Some((task_seq, render_seq, assignment)));
        }
    }
    Ok(None)
}

/// Records a sign of life from the worker; returns its mode and its tags
/// (JSON), which a claim needs next.
fn mark_alive(
    conn: &Connection,
    worker_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<(WorkerMode, String)> {
    conn.prepare_cached(
        "UPDATE workers SET last_heartbeat = ?2, offline = 0 WHERE id = ?1 RETURNING mode, tags",
    )?
    .query_row(params![worker_id.to_string(), ts(now)], |row| {
        Ok((get_enum(row, 0, WorkerMode::parse)?, row.get(1)?))
    })
    .optional()?
    .ok_or_else(|| StoreError::not_found("worker", worker_id))
}

/// Appends one line to a task's history.
fn record_history(
    conn: &Connection,
    task_seq: i64,
    event: HistoryEvent,
    worker_id: Option<&str>,
    detail: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO task_history (task_seq, at, event, worker_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![task_seq, ts(now), event.as_str(), worker_id, detail])?;
    Ok(())
}

/// Takes a running task from its worker without counting a failure; the
/// history says why (`event`, `detail`).
fn requeue_task(
    conn: &Connection,
    task: &LeasedTask,
    event: HistoryEvent,
    detail: &str,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let to = task_transition(task.status, TaskEvent::Requeue)?;
    conn.prepare_cached(
        "UPDATE tasks SET status = ?2, worker_id = NULL, lease_id = NULL, frames_done = 0, \
         queued_at = ?3 WHERE seq = ?1",
    )?
    .execute(params![task.seq, to.as_str(), ts(now)])?;
    record_history(
        conn,
        task.seq,
        event,
        task.worker_id.as_deref(),
        Some(detail),
        now,
    )?;
    roll_task_move(
        conn,
        task.render_seq,
        task.status,
        to,
        -task.frames_done,
        false,
        now,
    )
}

fn page_bounds(page: PageRequest) -> (i64, i64) {
    (
        page.limit.clamp(0, PageRequest::MAX_LIMIT),
        page.offset.max(0),
    )
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
        // Batches that commit separately, so that a render of a million
        // tasks does not hold the writer (and every claim behind it) for
        // seconds. The render stays hidden until its last batch is in.
        let render = new.render.clone();
        let chunks: Vec<(i64, i64)> = new.chunks().map(|f| (f.start(), f.end())).collect();
        let batches: Vec<Vec<(i64, i64)>> =
            chunks.chunks(TASK_WRITE_BATCH).map(<[_]>::to_vec).collect();
        let last = batches.len().saturating_sub(1);
        let mut render_seq = None;
        for (i, batch) in batches.into_iter().enumerate() {
            let render = render.clone();
            let written = self
                .write(move |conn| {
                    let seq = match render_seq {
                        Some(seq) => seq,
                        None => insert_hidden_render(conn, &render)?,
                    };
                    insert_tasks(conn, seq, &render, &batch)?;
                    if i == last {
                        conn.prepare_cached(
                            "UPDATE renders SET hidden = 0, tasks_pending = ?2 WHERE seq = ?1",
                        )?
                        .execute(params![seq, render.progress.tasks_pending])?;
                    }
                    Ok(seq)
                })
                .await;
            match written {
                Ok(seq) => render_seq = Some(seq),
                Err(e) => {
                    if let Some(seq) = render_seq {
                        // What is written stays hidden; the next start
                        // removes it if this cannot.
                        let _ = self.remove_hidden_render(seq).await;
                    }
                    return Err(e);
                }
            }
        }
        let seq = render_seq.ok_or_else(|| {
            StoreError::Unexpected(anyhow::anyhow!("a render planned without tasks"))
        })?;
        self.read(move |conn| load_render_by_seq(conn, seq)).await
    }

    async fn get_render(&self, id: Uuid) -> StoreResult<Render> {
        self.read(move |conn| load_render(conn, id)).await
    }

    async fn list_renders(
        &self,
        filter: &RenderFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Render>> {
        let filter = filter.clone();
        self.read(move |conn| {
            let mut clauses = Vec::new();
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(status) = filter.status {
                args.push(status.as_str().to_string().into());
                clauses.push(format!("r.status = ?{}", args.len()));
            }
            if let Some(priority) = filter.priority {
                args.push(priority.rank().into());
                clauses.push(format!("r.priority = ?{}", args.len()));
            }
            clauses.push("r.hidden = 0".to_string());
            let filter_sql = format!("WHERE {}", clauses.join(" AND "));
            let total: i64 = conn
                .prepare_cached(&format!("SELECT COUNT(*) FROM renders r {filter_sql}"))?
                .query_row(params_from_iter(args.iter()), |row| row.get(0))?;
            let (limit, offset) = page_bounds(page);
            args.push(limit.into());
            args.push(offset.into());
            let n = args.len();
            let items = conn
                .prepare_cached(&format!(
                    "SELECT {RENDER_COLUMNS} FROM renders r {filter_sql} ORDER BY r.seq DESC LIMIT ?{} OFFSET ?{}",
                    n - 1,
                    n
                ))?
                .query_map(params_from_iter(args.iter()), render_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Page {
                items,
                total,
                limit,
                offset,
            })
        })
        .await
    }

    async fn list_tasks(
        &self,
        render_id: Uuid,
        status: Option<TaskStatus>,
        page: PageRequest,
    ) -> StoreResult<Page<Task>> {
        self.read(move |conn| {
            let render = load_render(conn, render_id)?;
            let (limit, offset) = page_bounds(page);
            let id = render_id.to_string();
            let items = match status {
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {TASK_COLUMNS} FROM tasks t JOIN renders r ON r.seq = t.render_seq \
                         WHERE r.id = ?1 ORDER BY t.frame_start LIMIT ?2 OFFSET ?3"
                    ))?
                    .query_map(params![id, limit, offset], task_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                // A task has its render's priority: with it, the claim index
                // finds one status of one render in frame order, however
                // many tasks of other statuses the render has.
                Some(status) => conn
                    .prepare_cached(&format!(
                        "SELECT {TASK_COLUMNS} FROM renders r \
                         JOIN tasks t ON t.render_seq = r.seq AND t.priority = r.priority \
                         WHERE r.id = ?1 AND t.status = ?4 ORDER BY t.frame_start LIMIT ?2 OFFSET ?3"
                    ))?
                    .query_map(params![id, limit, offset, status.as_str()], task_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(Page {
                items,
                total: render.progress.tasks_in(status),
                limit,
                offset,
            })
        })
        .await
    }

    async fn finished_renders_before(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<Uuid>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id FROM renders \
                 WHERE status IN ('completed', 'failed', 'canceled') AND tasks_running = 0 \
                   AND finished_at < ?1 AND hidden = 0 \
                 ORDER BY finished_at LIMIT ?2",
            )?
            .query_map(params![ts(before), limit as i64], |row| get_uuid(row, 0))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(StoreError::from)
        })
        .await
    }

    async fn delete_render(&self, id: Uuid) -> StoreResult<()> {
        // Hidden first (gone for every reader from here on), then removed in
        // batches like a big submit is written.
        let seq = self
            .write(move |conn| {
                let seq = render_seq(conn, id)?;
                let state = load_render_state(conn, seq)?;
                check_deletable(state.status, state.progress.tasks_running)?;
                conn.prepare_cached("UPDATE renders SET hidden = 1 WHERE seq = ?1")?
                    .execute([seq])?;
                Ok(seq)
            })
            .await?;
        self.remove_hidden_render(seq).await?;
        tracing::info!(render_id = %id, "render deleted");
        Ok(())
    }

    async fn change_render(
        &self,
        id: Uuid,
        command: RenderCommand,
        now: DateTime<Utc>,
    ) -> StoreResult<Render> {
        self.write(move |conn| {
            let seq = render_seq(conn, id)?;
            let mut state = load_render_state(conn, seq)?;
            let before = state.status;
            let to = render_transition(before, command)?;
            if let Some((event, from)) = tasks_affected(command, &state.progress) {
                bulk_task_change(conn, seq, event, &from, now)?;
                state.progress = count_progress(conn, seq, state.progress.frames_total)?;
            }
            if command == RenderCommand::Requeue {
                state.started_at = None;
                state.failed_for_good = false;
            }
            state.status = to;
            save_rolled_up(conn, state, before, now)?;
            tracing::info!(render_id = %id, ?command, "operator changed render");
            load_render_by_seq(conn, seq)
        })
        .await
    }

    async fn get_task(&self, id: Uuid) -> StoreResult<Task> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks t JOIN renders r ON r.seq = t.render_seq WHERE t.id = ?1"
            ))?
            .query_row([id.to_string()], task_from_row)
            .optional()?
            .ok_or_else(|| StoreError::not_found("task", id))
        })
        .await
    }

    async fn task_log(&self, id: Uuid) -> StoreResult<String> {
        self.read(move |conn| {
            let (seq, dropped): (i64, i64) = conn
                .prepare_cached("SELECT seq, log_dropped FROM tasks WHERE id = ?1")?
                .query_row([id.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?
                .ok_or_else(|| StoreError::not_found("task", id))?;
            let mut stmt =
                conn.prepare_cached("SELECT text FROM task_logs WHERE task_seq = ?1 ORDER BY seq")?;
            let chunks = stmt
                .query_map([seq], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(join_log(chunks, dropped))
        })
        .await
    }

    async fn register_worker(
        &self,
        spec: ValidWorkerSpec,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker> {
        self.write(move |conn| {
            let id = Uuid::now_v7();
            conn.prepare_cached(
                "INSERT INTO workers (id, name, tags, mode, offline, last_heartbeat, registered_at) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
            )?
            .execute(params![
                id.to_string(),
                spec.name,
                tags_json(&spec.tags),
                WorkerMode::Active.as_str(),
                ts(now)
            ])?;
            tracing::info!(worker_id = %id, name = %spec.name, "worker registered");
            load_worker(conn, id)
        })
        .await
    }

    async fn get_worker(&self, id: Uuid) -> StoreResult<Worker> {
        self.read(move |conn| load_worker(conn, id)).await
    }

    async fn list_workers(&self) -> StoreResult<Vec<Worker>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {WORKER_COLUMNS} FROM workers w ORDER BY w.seq"
                ))?
                .query_map([], worker_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn change_worker(
        &self,
        id: Uuid,
        action: WorkerAction,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker> {
        self.write(move |conn| {
            let mode: WorkerMode = conn
                .prepare_cached("SELECT mode FROM workers WHERE id = ?1")?
                .query_row([id.to_string()], |row| get_enum(row, 0, WorkerMode::parse))
                .optional()?
                .ok_or_else(|| StoreError::not_found("worker", id))?;
            let to = worker_transition(mode, action)?;
            conn.prepare_cached("UPDATE workers SET mode = ?2 WHERE id = ?1")?
                .execute(params![id.to_string(), to.as_str()])?;
            if to == WorkerMode::Disabled {
                // A disabled machine stops now: its task goes back to the
                // queue without counting as a failure, and its next heartbeat
                // answers abort.
                let running: Option<String> = conn
                    .prepare_cached("SELECT id FROM tasks WHERE worker_id = ?1 AND status = 'running' LIMIT 1")?
                    .query_row([id.to_string()], |row| row.get(0))
                    .optional()?;
                if let Some(task_id) = running.and_then(|t| Uuid::parse_str(&t).ok()) {
                    let task = load_leased_task(conn, task_id)?;
                    requeue_task(conn, &task, HistoryEvent::Requeued, "its worker was disabled", now)?;
                    tracing::info!(worker_id = %id, task_id = %task_id, "task of disabled worker requeued");
                }
            }
            load_worker(conn, id)
        })
        .await
    }

    async fn heartbeat(
        &self,
        worker_id: Uuid,
        beat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> StoreResult<HeartbeatAction> {
        let beat = beat.clone();
        self.write(move |conn| {
            mark_alive(conn, worker_id, now)?;
            let (task_id, lease_id) = match (beat.task_id, beat.lease_id) {
                (None, None) => return Ok(HeartbeatAction::Continue),
                (Some(t), Some(l)) => (t, l),
                _ => {
                    return Err(StoreError::Invalid(
                        "send task_id and lease_id together (both from your assignment), or neither when idle".into(),
                    ))
                }
            };
            let task = match load_leased_task(conn, task_id) {
                Ok(task) => Some(task),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            let view = task.as_ref().map(|t| LeaseView {
                status: t.status,
                lease_matches: t.held_under(lease_id, Some(worker_id)),
            });
            let action = heartbeat_action(view);
            if let (HeartbeatAction::Continue, Some(task), Some(frames)) = (action, &task, beat.frames_done) {
                record_progress(conn, task, frames, now)?;
            }
            Ok(action)
        })
        .await
    }

    async fn claim_next_task(
        &self,
        worker_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Assignment>> {
        self.write(move |conn| {
            let (mode, worker_tags) = mark_alive(conn, worker_id, now)?;
            let held = conn
                .prepare_cached(&format!(
                    "SELECT {ASSIGNMENT_COLUMNS} FROM tasks t JOIN renders r ON r.seq = t.render_seq \
                     WHERE t.worker_id = ?1 AND t.status = 'running' LIMIT 1"
                ))?
                .query_row([worker_id.to_string()], assignment_from_row)
                .optional()?;
            if held.is_some() {
                return Ok(held);
            }
            if claim_permission(mode)? == ClaimPermission::NoNewWork {
                return Ok(None);
            }
            let Some((task_seq, render_seq, assignment)) = next_pending_task(conn, &worker_tags)? else {
                return Ok(None);
            };
            let to = task_transition(TaskStatus::Pending, TaskEvent::Claim)?;
            let lease = assignment.lease_id;
            conn.prepare_cached(
                "UPDATE tasks SET status = ?2, worker_id = ?3, lease_id = ?4, frames_done = 0, \
                 started_at = ?5, finished_at = NULL WHERE seq = ?1",
            )?
            .execute(params![task_seq, to.as_str(), worker_id.to_string(), lease.to_string(), ts(now)])?;
            roll_task_move(conn, render_seq, TaskStatus::Pending, to, 0, false, now)?;
            record_history(conn, task_seq, HistoryEvent::Assigned, Some(&worker_id.to_string()), None, now)?;
            tracing::debug!(
                worker_id = %worker_id,
                task_id = %assignment.task_id,
                render_id = %assignment.render_id,
                lease_id = %lease,
                "task claimed"
            );
            Ok(Some(assignment))
        })
        .await
    }

    async fn report_task(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        report: TaskReport,
        log: Option<String>,
        now: DateTime<Utc>,
    ) -> StoreResult<Task> {
        self.write(move |conn| {
            let task = load_leased_task(conn, task_id)?;
            if !task.held_under(lease_id, None) || task.status != TaskStatus::Running {
                return Err(StoreError::stale_lease(task_id));
            }
            match &report {
                TaskReport::Progress { frames_done } => record_progress(conn, &task, *frames_done, now)?,
                TaskReport::Complete => {
                    let to = task_transition(task.status, TaskEvent::Complete)?;
                    conn.prepare_cached(
                        "UPDATE tasks SET status = ?2, frames_done = ?3, finished_at = ?4 WHERE seq = ?1",
                    )?
                    .execute(params![task.seq, to.as_str(), task.frames, ts(now)])?;
                    roll_task_move(conn, task.render_seq, task.status, to, task.frames - task.frames_done, false, now)?;
                    record_history(conn, task.seq, HistoryEvent::Completed, task.worker_id.as_deref(), None, now)?;
                }
                TaskReport::Release => requeue_task(conn, &task, HistoryEvent::Released, "its worker stopped and handed it back", now)?,
                TaskReport::Fail { exit_code, reason } => {
                    let to = task_transition(task.status, TaskEvent::Fail)?;
                    conn.prepare_cached(
                        "UPDATE tasks SET status = ?2, frames_done = 0, exit_code = ?3, failure_reason = ?4, \
                         finished_at = ?5 WHERE seq = ?1",
                    )?
                    .execute(params![task.seq, to.as_str(), exit_code, reason, ts(now)])?;
                    let retry = TaskEvent::Retry {
                        retries: task.retries,
                        max_retries: task.max_retries,
                    };
                    let failed_for_good = task_transition(to, retry).is_err();
                    roll_task_move(conn, task.render_seq, task.status, to, -task.frames_done, failed_for_good, now)?;
                    let detail = match exit_code {
                        Some(code) => format!("exit code {code}"),
                        None => "no exit code".to_string(),
                    };
                    record_history(conn, task.seq, HistoryEvent::Failed, task.worker_id.as_deref(), Some(&detail), now)?;
                }
            }
            append_log(conn, task.seq, log.as_deref())?;
            load_task_by_seq(conn, task.seq)
        })
        .await
    }

    async fn task_history(&self, task_id: Uuid) -> StoreResult<Vec<TaskHistoryEntry>> {
        self.read(move |conn| {
            let seq: i64 = conn
                .prepare_cached("SELECT seq FROM tasks WHERE id = ?1")?
                .query_row([task_id.to_string()], |row| row.get(0))
                .optional()?
                .ok_or_else(|| StoreError::not_found("task", task_id))?;
            Ok(conn
                .prepare_cached(HISTORY_OF_TASK)?
                .query_map([seq], history_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn requeue_lost_workers(
        &self,
        cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<LostWorkers> {
        self.write(move |conn| {
            let lost: Vec<(String, String)> = conn
                .prepare_cached(
                    "UPDATE workers SET offline = 1 WHERE offline = 0 AND last_heartbeat <= ?1 \
                     RETURNING id, last_heartbeat",
                )?
                .query_map([ts(cutoff)], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut outcome = LostWorkers::default();
            for (worker, last_seen) in lost {
                let worker_id =
                    Uuid::parse_str(&worker).map_err(|e| StoreError::Unexpected(e.into()))?;
                outcome.workers.push(worker_id);
                let running: Vec<String> = conn
                    .prepare_cached(
                        "SELECT id FROM tasks WHERE worker_id = ?1 AND status = 'running'",
                    )?
                    .query_map([&worker], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                for task in running {
                    let task_id =
                        Uuid::parse_str(&task).map_err(|e| StoreError::Unexpected(e.into()))?;
                    let leased = load_leased_task(conn, task_id)?;
                    let detail = format!("its worker was lost: no sign of life since {last_seen}");
                    requeue_task(conn, &leased, HistoryEvent::Requeued, &detail, now)?;
                    outcome.requeued.push(moved(conn, &leased, task_id)?);
                }
            }
            Ok(outcome)
        })
        .await
    }

    async fn retry_failed_tasks(&self, now: DateTime<Utc>) -> StoreResult<Retries> {
        self.write(move |conn| {
            let failed: Vec<Uuid> = conn
                .prepare_cached(
                    "SELECT t.id FROM tasks t JOIN renders r ON r.seq = t.render_seq \
                     WHERE t.status = 'failed' AND r.status IN ('queued', 'rendering', 'paused') \
                     ORDER BY t.priority DESC, t.render_seq, t.frame_start",
                )?
                .query_map([], |row| get_uuid(row, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut outcome = Retries::default();
            for task_id in failed {
                let task = load_leased_task(conn, task_id)?;
                let retry = TaskEvent::Retry {
                    retries: task.retries,
                    max_retries: task.max_retries,
                };
                match task_transition(task.status, retry) {
                    Ok(to) => {
                        conn.prepare_cached(
                            "UPDATE tasks SET status = ?2, retries = retries + 1, worker_id = NULL, \
                             lease_id = NULL, frames_done = 0, started_at = NULL, finished_at = NULL, \
                             queued_at = ?3 WHERE seq = ?1",
                        )?
                        .execute(params![task.seq, to.as_str(), ts(now)])?;
                        roll_task_move(conn, task.render_seq, task.status, to, 0, false, now)?;
                        let detail = format!("retry {} of {}", task.retries + 1, task.max_retries);
                        record_history(conn, task.seq, HistoryEvent::Retried, None, Some(&detail), now)?;
                        outcome.retried.push(moved(conn, &task, task_id)?);
                    }
                    Err(_) => {
                        // No retry left: the render fails (roll-up cancels its pending work).
                        roll_task_move(conn, task.render_seq, task.status, task.status, 0, true, now)?;
                        outcome.failed.push(moved(conn, &task, task_id)?);
                    }
                }
            }
            Ok(outcome)
        })
        .await
    }

    async fn preemption_inputs(
        &self,
        allowances: &Allowances,
        now: DateTime<Utc>,
    ) -> StoreResult<PreemptionInputs> {
        let cutoffs: Vec<Option<String>> = Priority::ALL
            .into_iter()
            .map(|p| allowances.overdue_cutoff(p, now).map(ts))
            .collect();
        self.read(move |conn| {
            // A NULL cutoff (never overdue) makes the comparison false.
            let overdue = conn
                .prepare_cached(
                    "SELECT r.id, r.priority, r.tags, COUNT(*) FROM tasks t JOIN renders r ON r.seq = t.render_seq \
                     WHERE t.status = 'pending' AND r.status IN ('queued', 'rendering') AND r.hidden = 0 \
                       AND t.queued_at <= (CASE t.priority WHEN 0 THEN ?1 WHEN 1 THEN ?2 WHEN 2 THEN ?3 ELSE ?4 END) \
                     GROUP BY r.seq ORDER BY r.priority DESC, r.seq",
                )?
                .query_map(params_from_iter(cutoffs.iter()), |row| {
                    let rank: i64 = row.get(1)?;
                    Ok(OverdueWork {
                        render_id: get_uuid(row, 0)?,
                        priority: Priority::from_rank(rank)
                            .ok_or_else(|| conversion_error(1, "priority", &rank.to_string()))?,
                        tags: get_tags(row, 2)?,
                        tasks: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let running = conn
                .prepare_cached(
                    "SELECT t.id, t.lease_id, t.priority, t.started_at, w.tags FROM tasks t \
                     JOIN workers w ON w.id = t.worker_id WHERE t.status = 'running'",
                )?
                .query_map([], |row| {
                    let rank: i64 = row.get(2)?;
                    Ok(RunningWork {
                        task_id: get_uuid(row, 0)?,
                        lease_id: get_uuid(row, 1)?,
                        priority: Priority::from_rank(rank)
                            .ok_or_else(|| conversion_error(2, "priority", &rank.to_string()))?,
                        started_at: get_time(row, 3)?,
                        worker_tags: get_tags(row, 4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let idle_worker_tags = conn
                .prepare_cached(
                    "SELECT w.tags FROM workers w WHERE w.mode = 'active' AND w.offline = 0 \
                     AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.worker_id = w.id AND t.status = 'running')",
                )?
                .query_map([], |row| get_tags(row, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(PreemptionInputs {
                overdue,
                running,
                idle_worker_tags,
            })
        })
        .await
    }

    async fn preempt_task(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<MovedTask>> {
        self.write(move |conn| {
            let task = load_leased_task(conn, task_id)?;
            if task.status != TaskStatus::Running || !task.held_under(lease_id, None) {
                return Ok(None);
            }
            requeue_task(
                conn,
                &task,
                HistoryEvent::Preempted,
                "taken back for more urgent work",
                now,
            )?;
            Ok(Some(moved(conn, &task, task_id)?))
        })
        .await
    }

    async fn roll_up_renders(&self, now: DateTime<Utc>) -> StoreResult<i64> {
        self.write(move |conn| {
            let active: Vec<i64> = conn
                .prepare_cached("SELECT seq FROM renders WHERE status IN ('queued', 'rendering', 'paused') AND hidden = 0")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut corrected = 0;
            for seq in active {
                let mut state = load_render_state(conn, seq)?;
                let before = (state.status, state.progress, state.failed_for_good);
                state.progress = count_progress(conn, seq, state.progress.frames_total)?;
                let stuck: bool = conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM tasks t JOIN renders r ON r.seq = t.render_seq \
                         WHERE t.render_seq = ?1 AND t.status = 'failed' AND t.retries >= r.max_retries)",
                    )?
                    .query_row([seq], |row| row.get(0))?;
                state.failed_for_good |= stuck;
                let status = roll_up(state.status, &state.progress, state.started_at.is_some(), state.failed_for_good);
                if (status, state.progress, state.failed_for_good) != before {
                    corrected += 1;
                    let was = state.status;
                    save_rolled_up(conn, state, was, now)?;
                }
            }
            Ok(corrected)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<LeaderLease> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
            )?
            .execute(params![name, holder, ts(now + ttl), ts(now)])?;
            load_lease(conn, &name)?.ok_or_else(|| StoreError::Unexpected(anyhow::anyhow!("lease {name} vanished")))
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
                .execute(params![name, holder])?;
            Ok(())
        })
        .await
    }

    async fn current_lease(&self, name: &str) -> StoreResult<Option<LeaderLease>> {
        let name = name.to_string();
        self.read(move |conn| load_lease(conn, &name)).await
    }
}

fn load_lease(conn: &Connection, name: &str) -> StoreResult<Option<LeaderLease>> {
    Ok(conn
        .prepare_cached("SELECT holder, expires_at FROM leases WHERE name = ?1")?
        .query_row([name], |row| {
            Ok(LeaderLease {
                holder: row.get(0)?,
                expires_at: get_time(row, 1)?,
            })
        })
        .optional()?)
}

/// A moved task as the scheduler reports it.
fn moved(conn: &Connection, task: &LeasedTask, task_id: Uuid) -> StoreResult<MovedTask> {
    let render_id = conn
        .prepare_cached("SELECT id FROM renders WHERE seq = ?1")?
        .query_row([task.render_seq], |row| get_uuid(row, 0))?;
    Ok(MovedTask {
        task_id,
        render_id,
        worker_id: task
            .worker_id
            .as_deref()
            .and_then(|w| Uuid::parse_str(w).ok()),
    })
}
