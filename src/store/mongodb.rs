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
//!   up. The render's status is then recomputed with the domain's `roll_up`
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

mod migrations;
mod queries;
mod snapshot;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::error::{Error as DriverError, ErrorKind, WriteFailure};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{ClientOptions, ConnectionString, Hint, ReturnDocument};
use mongodb::{Client, Collection, Database};
use renderfarm_wire::{
    Assignment, Heartbeat, HeartbeatAction, HistoryEvent, LeaderLease, Page, Priority, Progress,
    Render, RenderStatus, Task, TaskHistoryEntry, TaskStatus, Worker, WorkerAction,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    LostWorkers, MovedTask, PageRequest, PreemptionInputs, RenderFilter, Retries, Store,
    StoreError, StoreResult, TaskReport,
};
use crate::domain::{
    check_deletable, claim_permission, heartbeat_action, join_log, log_chunks_to_drop,
    render_transition, roll_up, task_transition, tasks_affected, worker_status, worker_transition,
    Allowances, ClaimPermission, LeaseView, NewRender, OverdueWork, RenderCommand, RunningWork,
    TaskEvent, ValidWorkerSpec, WorkerMode, TASK_LOG_LIMIT,
};
use queries::*;

pub use migrations::MIGRATIONS;

/// The database used when the URI names none.
pub const DEFAULT_DATABASE: &str = "renderfarm";

const RENDERS: &str = "renders";
const TASKS: &str = "tasks";
const WORKERS: &str = "workers";
const TASK_LOGS: &str = "task_logs";
const COUNTERS: &str = "counters";
const TASK_HISTORY: &str = "task_history";
/// Task ids per `$in` when deleting a render's logs and history.
const DELETE_BATCH: usize = 10_000;
const LEASES: &str = "leases";

/// How long an operation waits for a reachable server before it answers
/// `Unavailable` (503), unless the URI sets `serverSelectionTimeoutMS`.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Tasks per `insert_many` (the driver splits further to fit message sizes).
const TASK_BATCH: usize = 10_000;
/// Compare-and-set attempts before a render is declared too busy to settle.
const MAX_CAS_ATTEMPTS: usize = 64;
/// How long a recount that found a difference waits for in-flight counter
/// updates before it writes; and how often it tries.
const RECOUNT_SETTLE: Duration = Duration::from_millis(250);
const RECOUNT_ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------
// Errors: the driver's are translated here, once.

/// The server's code for a duplicate key.
const DUPLICATE_KEY: i32 = 11000;
/// Codes that mean "this server cannot serve now; another may, or later".
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// The server's error code, wherever the driver put it.
fn error_code(e: &DriverError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|w| w.code)
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

fn is_duplicate_key(e: &DriverError) -> bool {
    error_code(e) == Some(DUPLICATE_KEY)
}

impl From<DriverError> for StoreError {
    fn from(e: DriverError) -> Self {
        // Clients get a short reason; the driver's full account (topology,
        // labels) goes to the log.
        let unavailable = |why: String| {
            tracing::debug!(error = %e, "MongoDB unavailable");
            StoreError::Unavailable(why)
        };
        match e.kind.as_ref() {
            ErrorKind::ServerSelection { .. } => {
                return unavailable(
                    "no MongoDB server answered in time; check that MongoDB runs and that the URI names the right hosts"
                        .into(),
                )
            }
            ErrorKind::Io(io) => return unavailable(format!("the connection to MongoDB failed: {io}")),
            ErrorKind::ConnectionPoolCleared { .. } | ErrorKind::Shutdown => {
                return unavailable("the connection to MongoDB was lost".into())
            }
            ErrorKind::DnsResolve { message, .. } => {
                return unavailable(format!("the MongoDB hosts cannot be resolved: {message}"))
            }
            ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
                return unavailable(format!(
                    "MongoDB could not confirm the write: {}",
                    w.message
                ))
            }
            // Every document written, but not confirmed as the write
            // concern asks: the same as for a single write.
            ErrorKind::InsertMany(m)
                if m.write_errors.as_ref().is_none_or(|w| w.is_empty()) =>
            {
                if let Some(w) = &m.write_concern_error {
                    return unavailable(format!(
                        "MongoDB could not confirm the write: {}",
                        w.message
                    ));
                }
            }
            ErrorKind::Authentication { .. } => {
                return unavailable(
                    "MongoDB refused the credentials in the store URI; fix the URI and restart the broker"
                        .into(),
                )
            }
            _ => {}
        }
        let code = error_code(&e);
        if code.is_some_and(|c| TRANSIENT_CODES.contains(&c))
            || e.contains_label("RetryableWriteError")
            || e.contains_label("TransientTransactionError")
        {
            return unavailable(format!(
                "MongoDB cannot serve the request now (error code {})",
                code.map_or_else(|| "none".into(), |c| c.to_string())
            ));
        }
        if code == Some(DUPLICATE_KEY) {
            return StoreError::Conflict(
                "something with the same identity is already stored; it was not stored again"
                    .into(),
            );
        }
        StoreError::Unexpected(anyhow::Error::new(e).context("MongoDB operation failed"))
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unexpected(anyhow::anyhow!("the MongoDB store holds {what}"))
}

fn parse_uuid(s: &str, what: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| corrupt(format!("a {what} {s:?} that is not a UUID")))
}

fn parse_opt_uuid(s: Option<&str>, what: &str) -> StoreResult<Option<Uuid>> {
    s.map(|s| parse_uuid(s, what)).transpose()
}

// ---------------------------------------------------------------------------
// Documents as stored. Ids are UUID strings; times are BSON dates (ms).

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RenderDoc {
    #[serde(rename = "_id")]
    id: String,
    /// Creation order, from the `renders` counter: listings and dispatch age.
    seq: i64,
    name: String,
    status: String,
    priority: i64,
    blend_file: String,
    frame_start: i64,
    frame_end: i64,
    chunk_size: i64,
    max_retries: i64,
    output: String,
    engine: Option<String>,
    tags: Vec<String>,
    tasks_total: i64,
    tasks_pending: i64,
    tasks_running: i64,
    tasks_completed: i64,
    tasks_failed: i64,
    tasks_canceled: i64,
    frames_total: i64,
    frames_done: i64,
    failed_for_good: bool,
    created_at: bson::DateTime,
    started_at: Option<bson::DateTime>,
    finished_at: Option<bson::DateTime>,
    /// Bumped by every change; status writes compare-and-set on it.
    version: i64,
}

impl RenderDoc {
    fn planned(r: &Render, seq: i64) -> Self {
        let p = &r.progress;
        Self {
            id: r.id.to_string(),
            seq,
            name: r.name.clone(),
            status: r.status.as_str().into(),
            priority: r.priority.rank(),
            blend_file: r.blend_file.clone(),
            frame_start: r.frame_start,
            frame_end: r.frame_end,
            chunk_size: r.chunk_size,
            max_retries: r.max_retries,
            output: r.output.clone(),
            engine: r.engine.clone(),
            tags: r.tags.clone(),
            tasks_total: p.tasks_total,
            tasks_pending: p.tasks_pending,
            tasks_running: p.tasks_running,
            tasks_completed: p.tasks_completed,
            tasks_failed: p.tasks_failed,
            tasks_canceled: p.tasks_canceled,
            frames_total: p.frames_total,
            frames_done: p.frames_done,
            failed_for_good: false,
            created_at: bson_time(r.created_at),
            started_at: r.started_at.map(bson_time),
            finished_at: r.finished_at.map(bson_time),
            version: 0,
        }
    }

    fn status(&self) -> StoreResult<RenderStatus> {
        RenderStatus::parse(&self.status)
            .ok_or_else(|| corrupt(format!("render {} with status {:?}", self.id, self.status)))
    }

    fn progress(&self) -> Progress {
        Progress {
            tasks_total: self.tasks_total,
            tasks_pending: self.tasks_pending,
            tasks_running: self.tasks_running,
            tasks_completed: self.tasks_completed,
            tasks_failed: self.tasks_failed,
            tasks_canceled: self.tasks_canceled,
            frames_total: self.frames_total,
            frames_done: self.frames_done,
        }
    }

    fn to_render(&self) -> StoreResult<Render> {
        Ok(Render {
            id: parse_uuid(&self.id, "render id")?,
            name: self.name.clone(),
            status: self.status()?,
            priority: Priority::from_rank(self.priority).ok_or_else(|| {
                corrupt(format!(
                    "render {} with priority {}",
                    self.id, self.priority
                ))
            })?,
            blend_file: self.blend_file.clone(),
            frame_start: self.frame_start,
            frame_end: self.frame_end,
            chunk_size: self.chunk_size,
            max_retries: self.max_retries,
            output: self.output.clone(),
            engine: self.engine.clone(),
            tags: self.tags.clone(),
            progress: self.progress(),
            created_at: self.created_at.to_chrono(),
            started_at: self.started_at.map(bson::DateTime::to_chrono),
            finished_at: self.finished_at.map(bson::DateTime::to_chrono),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskDoc {
    #[serde(rename = "_id")]
    id: String,
    render_id: String,
    // Copies of the render's, for the claim filter and sort.
    render_seq: i64,
    priority: i64,
    required_tags: Vec<String>,
    /// False while the render may not be dispatched (paused, finished, or
    /// not yet stored).
    runnable: bool,
    /// The render version that last set `runnable`.
    runnable_version: i64,
    max_retries: i64,
    frame_start: i64,
    frame_end: i64,
    status: String,
    retries: i64,
    worker_id: Option<String>,
    lease_id: Option<String>,
    frames_done: i64,
    exit_code: Option<i64>,
    failure_reason: Option<String>,
    started_at: Option<bson::DateTime>,
    finished_at: Option<bson::DateTime>,
    /// When the task last became pending: its wait is counted from here.
    queued_at: bson::DateTime,
    /// How many log chunks were appended: the next chunk's sequence number.
    log_chunks: i64,
    /// Bytes of log kept, and bytes dropped to keep the log within its bound.
    #[serde(default)]
    log_bytes: i64,
    #[serde(default)]
    log_dropped: i64,
    /// How many history entries it has: the next entry's sequence number.
    history_seq: i64,
}

impl TaskDoc {
    fn planned(render: &RenderDoc, frame_start: i64, frame_end: i64) -> Self {
        Self {
            id: Uuid::now_v7().to_string(),
            render_id: render.id.clone(),
            render_seq: render.seq,
            priority: render.priority,
            required_tags: render.tags.clone(),
            runnable: false,
            runnable_version: -1,
            max_retries: render.max_retries,
            frame_start,
            frame_end,
            status: TaskStatus::Pending.as_str().into(),
            retries: 0,
            worker_id: None,
            lease_id: None,
            frames_done: 0,
            exit_code: None,
            failure_reason: None,
            started_at: None,
            finished_at: None,
            queued_at: render.created_at,
            log_chunks: 0,
            log_bytes: 0,
            log_dropped: 0,
            history_seq: 0,
        }
    }

    fn frames(&self) -> i64 {
        self.frame_end - self.frame_start + 1
    }

    fn status(&self) -> StoreResult<TaskStatus> {
        TaskStatus::parse(&self.status)
            .ok_or_else(|| corrupt(format!("task {} with status {:?}", self.id, self.status)))
    }

    fn to_task(&self) -> StoreResult<Task> {
        Ok(Task {
            id: parse_uuid(&self.id, "task id")?,
            render_id: parse_uuid(&self.render_id, "render id")?,
            frame_start: self.frame_start,
            frame_end: self.frame_end,
            status: self.status()?,
            retries: self.retries,
            worker_id: parse_opt_uuid(self.worker_id.as_deref(), "worker id")?,
            frames_done: self.frames_done,
            exit_code: self.exit_code,
            failure_reason: self.failure_reason.clone(),
            started_at: self.started_at.map(bson::DateTime::to_chrono),
            finished_at: self.finished_at.map(bson::DateTime::to_chrono),
        })
    }

    fn assignment(&self, render: &RenderDoc) -> StoreResult<Assignment> {
        let lease = self
            .lease_id
            .as_deref()
            .ok_or_else(|| corrupt(format!("running task {} without a lease", self.id)))?;
        Ok(Assignment {
            task_id: parse_uuid(&self.id, "task id")?,
            render_id: parse_uuid(&self.render_id, "render id")?,
            lease_id: parse_uuid(lease, "lease id")?,
            blend_file: render.blend_file.clone(),
            frame_start: self.frame_start,
            frame_end: self.frame_end,
            output: render.output.clone(),
            engine: render.engine.clone(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkerDoc {
    #[serde(rename = "_id")]
    id: String,
    /// Registration order.
    seq: i64,
    name: String,
    tags: Vec<String>,
    mode: String,
    offline: bool,
    last_heartbeat: bson::DateTime,
    registered_at: bson::DateTime,
}

impl WorkerDoc {
    fn mode(&self) -> StoreResult<WorkerMode> {
        WorkerMode::parse(&self.mode)
            .ok_or_else(|| corrupt(format!("worker {} with mode {:?}", self.id, self.mode)))
    }

    fn to_worker(&self, current_task: Option<&str>) -> StoreResult<Worker> {
        let current_task_id = parse_opt_uuid(current_task, "task id")?;
        Ok(Worker {
            id: parse_uuid(&self.id, "worker id")?,
            name: self.name.clone(),
            status: worker_status(self.mode()?, self.offline, current_task_id.is_some()),
            tags: self.tags.clone(),
            last_heartbeat: self.last_heartbeat.to_chrono(),
            current_task_id,
            registered_at: self.registered_at.to_chrono(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogDoc {
    task_id: String,
    seq: i64,
    text: String,
    /// The text's length in bytes, so trimming need not read the text.
    /// Chunks written before the bound existed count as 0.
    #[serde(default)]
    bytes: i64,
}

/// A document's id alone.
#[derive(Debug, Deserialize)]
struct IdOnly {
    #[serde(rename = "_id")]
    id: String,
}

/// A log chunk's place and size, for trimming.
#[derive(Debug, Deserialize)]
struct LogSize {
    seq: i64,
    #[serde(default)]
    bytes: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HistoryDoc {
    task_id: String,
    /// Taken from the task's `history_seq` by the change it records.
    seq: i64,
    at: bson::DateTime,
    event: String,
    worker_id: Option<String>,
    detail: Option<String>,
}

impl HistoryDoc {
    fn to_entry(&self) -> StoreResult<TaskHistoryEntry> {
        Ok(TaskHistoryEntry {
            at: self.at.to_chrono(),
            event: HistoryEvent::parse(&self.event).ok_or_else(|| {
                corrupt(format!(
                    "a history event {:?} of task {}",
                    self.event, self.task_id
                ))
            })?,
            worker_id: parse_opt_uuid(self.worker_id.as_deref(), "worker id")?,
            detail: self.detail.clone(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseDoc {
    #[serde(rename = "_id")]
    name: String,
    holder: String,
    expires_at: bson::DateTime,
}

impl LeaseDoc {
    fn to_lease(&self) -> LeaderLease {
        LeaderLease {
            holder: self.holder.clone(),
            expires_at: self.expires_at.to_chrono(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CounterDoc {
    #[serde(rename = "_id")]
    id: String,
    seq: i64,
}

// ---------------------------------------------------------------------------
// Connecting

/// What the broker does about schema migrations when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationMode {
    /// Apply the pending ones (the default of `serve`).
    Apply,
    /// Apply none; stay unready while any is pending (`serve --no-migrate`,
    /// for deployments that run `renderfarm migrate` as a separate step).
    RequireApplied,
}

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

/// The hosts and database of a URI, safe to log (no credentials).
fn describe(conn: &ConnectionString) -> String {
    let hosts = match &conn.host_info {
        mongodb::options::HostInfo::HostIdentifiers(hosts) => hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        mongodb::options::HostInfo::DnsRecord(name) => format!("srv:{name}"),
        _ => "?".into(),
    };
    let db = conn
        .default_database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.into());
    format!("{hosts}/{db}")
}

/// Builds a client (no I/O yet for `mongodb://`; `mongodb+srv://` resolves
/// DNS) with short timeouts, so a missing server is reported in seconds.
async fn client_for(
    uri: &str,
    commands: Option<EventHandler<CommandEvent>>,
) -> StoreResult<(Client, String)> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| match e.kind.as_ref() {
            ErrorKind::InvalidArgument { .. } => StoreError::Invalid(format!(
                "the MongoDB URI is not valid: {e}; give one like mongodb://host:27017/renderfarm"
            )),
            _ => StoreError::from(e),
        })?;
    options.app_name.get_or_insert_with(|| "renderfarm".into());
    options
        .server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    options.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
    options.command_event_handler = commands;
    let database = options
        .default_database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.into());
    let client = Client::with_options(options)?;
    Ok((client, database))
}

impl MongoStore {
    fn new(target: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                db: OnceLock::new(),
                waiting_for: Mutex::new(format!("not connected to MongoDB at {target} yet")),
                target,
            }),
        }
    }

    /// Connects to `uri` now (the database is `database`, else the URI's,
    /// else `renderfarm`) and checks that the server answers. Migrations are
    /// not applied: call [`MongoStore::migrate`]. For tools and tests.
    pub async fn connect(uri: &str, database: Option<&str>) -> StoreResult<Self> {
        Self::connect_observed(uri, database, None).await
    }

    /// As [`MongoStore::connect`], with every command the driver sends
    /// reported to `commands`: how tests count what an operation costs.
    pub async fn connect_observed(
        uri: &str,
        database: Option<&str>,
        commands: Option<EventHandler<CommandEvent>>,
    ) -> StoreResult<Self> {
        let conn = ConnectionString::parse(uri)
            .map_err(|e| StoreError::Invalid(format!("the MongoDB URI is not valid: {e}")))?;
        let (client, default_db) = client_for(uri, commands).await?;
        let name = database.map_or(default_db, str::to_string);
        let db = client.database(&name);
        db.run_command(doc! { "ping": 1 }).await?;
        let store = Self::new(describe(&conn));
        let _ = store.inner.db.set(db);
        Ok(store)
    }

    /// Returns at once and connects in the background, retrying until the
    /// server answers; then applies (or, with
    /// [`MigrationMode::RequireApplied`], waits for) the migrations. Until
    /// then every operation and [`Store::ping`] answer `Unavailable`. Fails
    /// only when the URI itself is malformed.
    pub fn start(uri: &str, mode: MigrationMode) -> StoreResult<Self> {
        let conn = ConnectionString::parse(uri).map_err(|e| {
            StoreError::Invalid(format!(
                "the MongoDB URI is not valid: {e}; give one like mongodb://host:27017/renderfarm"
            ))
        })?;
        let store = Self::new(describe(&conn));
        tokio::spawn(connect_in_background(
            Arc::downgrade(&store.inner),
            uri.to_string(),
            mode,
        ));
        Ok(store)
    }

    /// Where this store keeps its data: servers and database, no credentials.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Applies the pending migrations; returns the names of those applied now.
    pub async fn migrate(&self) -> StoreResult<Vec<&'static str>> {
        migrations::apply(self.db()?).await
    }

    /// Drops the whole database. For tests that made one of their own.
    pub async fn drop_database(&self) -> StoreResult<()> {
        Ok(self.db()?.drop().await?)
    }

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

async fn connect_in_background(inner: Weak<Inner>, uri: String, mode: MigrationMode) {
    let mut delay = Duration::from_millis(500);
    let mut attempts = 0_u32;
    // One client for every attempt: it keeps watching the servers and
    // connects as soon as one appears.
    let mut client: Option<(Client, String)> = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match connect_once(&mut client, &uri, mode).await {
            Ok(db) => {
                let _ = strong.db.set(db);
                tracing::info!(target_db = %strong.target, "MongoDB store ready");
                return;
            }
            Err((short, detail)) => {
                attempts += 1;
                // Loud at first and then every ~minute, quiet in between.
                if attempts == 1 || attempts % 12 == 0 {
                    tracing::warn!(target_db = %strong.target, error = %detail, "MongoDB is not ready; the broker keeps trying");
                } else {
                    tracing::debug!(target_db = %strong.target, error = %detail, "MongoDB is not ready");
                }
                if let Ok(mut w) = strong.waiting_for.lock() {
                    *w = format!(
                        "MongoDB at {} is not ready ({short}); the broker keeps trying to connect",
                        strong.target
                    );
                }
            }
        }
        drop(strong);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// One attempt to connect and bring the schema up; on failure, a short
/// reason for clients and the full one for the log.
async fn connect_once(
    client: &mut Option<(Client, String)>,
    uri: &str,
    mode: MigrationMode,
) -> Result<Database, (String, String)> {
    let short = |e: StoreError| match e {
        StoreError::Unavailable(why) => why,
        other => other.to_string(),
    };
    if client.is_none() {
        let made = client_for(uri, None).await.map_err(|e| {
            let full = format!("{e:?}");
            (short(e), full)
        })?;
        *client = Some(made);
    }
    let Some((client, name)) = client.as_ref() else {
        return Err(("no MongoDB client".into(), "no MongoDB client".into()));
    };
    let db = client.database(name);
    db.run_command(doc! { "ping": 1 })
        .await
        .map_err(|e| (short(StoreError::from(e.clone())), e.to_string()))?;
    let schema = match mode {
        MigrationMode::Apply => migrations::apply(&db).await.map(drop),
        MigrationMode::RequireApplied => match migrations::pending(&db).await {
            Ok(pending) if pending.is_empty() => Ok(()),
            Ok(pending) => Err(StoreError::Unavailable(format!(
                "the database lacks migrations {}; run `renderfarm migrate --store <uri>` (or start serve without --no-migrate)",
                pending.join(", ")
            ))),
            Err(e) => Err(e),
        },
    };
    schema.map_err(|e| {
        let full = format!("{e:?}");
        (short(e), full)
    })?;
    Ok(db)
}

// ---------------------------------------------------------------------------
// Operations shared by several trait methods

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

    async fn load_render(&self, id: &str) -> StoreResult<RenderDoc> {
        self.renders()?
            .find_one(doc! { "_id": id })
            .await?
            .ok_or_else(|| StoreError::not_found("render", id))
    }

    async fn load_task(&self, id: &str) -> StoreResult<TaskDoc> {
        self.tasks()?
            .find_one(doc! { "_id": id })
            .await?
            .ok_or_else(|| StoreError::not_found("task", id))
    }

    /// Marks the worker alive; its document as it is now.
    async fn mark_alive(&self, worker: &str, now: DateTime<Utc>) -> StoreResult<WorkerDoc> {
        self.workers()?
            .find_one_and_update(doc! { "_id": worker }, alive_update(now))
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| StoreError::not_found("worker", worker))
    }

    /// Makes every task of a render runnable or not, fenced by `version`.
    async fn sync_runnable(&self, render: &str, runnable: bool, version: i64) -> StoreResult<()> {
        let (filter, update) = runnable_sync(render, runnable, version);
        self.tasks()?.update_many(filter, update).await?;
        Ok(())
    }

    /// Moves the render's counters after one of its tasks moved, then
    /// settles its status (a task that is running means the render started).
    async fn move_render(
        &self,
        render: &str,
        from: TaskStatus,
        to: TaskStatus,
        frames: i64,
        failed_for_good: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<RenderDoc> {
        let doc = self
            .renders()?
            .find_one_and_update(
                doc! { "_id": render },
                render_counter_inc(from, to, frames, failed_for_good),
            )
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| corrupt(format!("tasks of render {render}, which is missing")))?;
        self.settle(doc, to == TaskStatus::Running, now).await
    }

    /// Writes the status the domain's roll-up gives the render's counters,
    /// by compare-and-set on its version; recomputes from a fresh read when
    /// another change came first.
    async fn settle(
        &self,
        mut doc: RenderDoc,
        started: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<RenderDoc> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let before = doc.status()?;
            let started_at = doc.started_at.or(started.then(|| bson_time(now)));
            let status = roll_up(
                before,
                &doc.progress(),
                started_at.is_some(),
                doc.failed_for_good,
            );
            let change = StatusChange {
                status,
                started_at,
                finished_at: finished_at_after(before, status, doc.finished_at, now),
                reset_failure: false,
            };
            if change.status == before
                && change.started_at == doc.started_at
                && change.finished_at == doc.finished_at
            {
                return Ok(doc);
            }
            let written = self
                .renders()?
                .find_one_and_update(
                    render_cas_filter(&doc.id, doc.version),
                    status_update(&change),
                )
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
                    return self.after_status_write(before, after, now).await;
                }
                None => doc = self.load_render(&doc.id).await?,
            }
        }
        // The change that called this is stored already; the next change of
        // the render, or the scheduler's roll-up, settles its status.
        tracing::warn!(render_id = %doc.id, "render changed too often to settle its status now");
        Ok(doc)
    }

    /// What follows a written status change: the tasks' runnable flags, and
    /// for a render that just failed for good, its pending tasks canceled
    /// (running ones may finish).
    async fn after_status_write(
        &self,
        before: RenderStatus,
        doc: RenderDoc,
        now: DateTime<Utc>,
    ) -> StoreResult<RenderDoc> {
        let after = doc.status()?;
        if dispatchable(before) != dispatchable(after) {
            self.sync_runnable(&doc.id, dispatchable(after), doc.version)
                .await?;
        }
        if after == RenderStatus::Failed && before != RenderStatus::Failed {
            return self
                .bulk_task_change(&doc.id, TaskEvent::Cancel, &[TaskStatus::Pending], now)
                .await;
        }
        Ok(doc)
    }

    /// Applies `event` to every task of the render in one of `from`, then
    /// moves the render's counters by what was actually changed (so moves
    /// made concurrently by single-task updates are neither lost nor counted
    /// twice).
    async fn bulk_task_change(
        &self,
        render: &str,
        event: TaskEvent,
        from: &[TaskStatus],
        now: DateTime<Utc>,
    ) -> StoreResult<RenderDoc> {
        let tasks = self.tasks()?;
        let mut delta = Progress::default();
        for status in from {
            let to = task_transition(*status, event)?;
            // Only tasks that run again lose their frames; they are in a
            // finished status, which nothing else changes meanwhile.
            let frames = if to == TaskStatus::Pending {
                self.frames_done_in(render, *status).await?
            } else {
                0
            };
            let changed = tasks
                .update_many(bulk_filter(render, *status), bulk_update(to, now))
                .await?
                .modified_count;
            let changed = i64::try_from(changed).unwrap_or(i64::MAX);
            if changed > 0 {
                delta = add_progress(delta, progress_delta(Some(*status), to, changed, -frames));
            }
        }
        self.renders()?
            .find_one_and_update(
                doc! { "_id": render },
                doc! { "$inc": progress_inc(&delta) },
            )
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| StoreError::not_found("render", render))
    }

    async fn frames_done_in(&self, render: &str, status: TaskStatus) -> StoreResult<i64> {
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

    /// Appends one line to a task's history. `seq` comes from the task
    /// change it records, so entries read back in the order they happened.
    async fn record_history(
        &self,
        task: &str,
        seq: i64,
        event: HistoryEvent,
        worker: Option<&str>,
        detail: Option<String>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.history()?
            .insert_one(HistoryDoc {
                task_id: task.to_string(),
                seq,
                at: bson_time(now),
                event: event.as_str().into(),
                worker_id: worker.map(str::to_string),
                detail,
            })
            .await?;
        Ok(())
    }

    /// Puts a running task back in the queue without counting a failure,
    /// under its current lease (nothing happens if the lease moved on); the
    /// history says why. Returns the task as it was.
    async fn requeue_under_lease(
        &self,
        task: &str,
        lease: &str,
        why: (HistoryEvent, &str),
        log_bytes: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<TaskDoc>> {
        let to = task_transition(TaskStatus::Running, TaskEvent::Requeue)?;
        let before = self
            .tasks()?
            .find_one_and_update(
                lease_filter(task, lease),
                requeue_update(to, now, log_bytes),
            )
            .return_document(ReturnDocument::Before)
            .await?;
        if let Some(before) = &before {
            self.move_render(
                &before.render_id,
                TaskStatus::Running,
                to,
                -before.frames_done,
                false,
                now,
            )
            .await?;
            let (event, detail) = why;
            self.record_history(
                &before.id,
                before.history_seq,
                event,
                before.worker_id.as_deref(),
                Some(detail.to_string()),
                now,
            )
            .await?;
        }
        Ok(before)
    }

    /// Records a running task's frames done under `lease`; `None` when the
    /// lease is no longer current.
    async fn record_progress(
        &self,
        task: &TaskDoc,
        lease: &str,
        frames_done: i64,
        log_bytes: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<TaskDoc>> {
        if !(0..=task.frames()).contains(&frames_done) {
            return Err(StoreError::Invalid(format!(
                "frames_done is {frames_done}, but this task has {} frame(s); report 0 to {}",
                task.frames(),
                task.frames()
            )));
        }
        let before = self
            .tasks()?
            .find_one_and_update(
                lease_filter(&task.id, lease),
                progress_update(frames_done, log_bytes),
            )
            .return_document(ReturnDocument::Before)
            .await?;
        if let Some(before) = &before {
            let delta = frames_done - before.frames_done;
            if delta != 0 {
                self.move_render(
                    &before.render_id,
                    TaskStatus::Running,
                    TaskStatus::Running,
                    delta,
                    false,
                    now,
                )
                .await?;
            }
        }
        Ok(before)
    }

    /// Drops the oldest chunks between a task's first and newest once its
    /// log outgrew its bound (see `domain::log_chunks_to_drop`). Reports
    /// under one lease come one at a time, so no two trims of a task race.
    async fn trim_log(&self, task: &str, total: i64) -> StoreResult<()> {
        let chunks: Vec<LogSize> = self
            .logs()?
            .clone_with_type::<LogSize>()
            .find(doc! { "task_id": task })
            .projection(doc! { "_id": 0, "seq": 1, "bytes": 1 })
            .sort(doc! { "seq": 1 })
            .await?
            .try_collect()
            .await?;
        let Some(droppable) = chunks.get(1..chunks.len().saturating_sub(1)) else {
            return Ok(());
        };
        let sizes: Vec<i64> = droppable.iter().map(|c| c.bytes).collect();
        let (count, dropped) = log_chunks_to_drop(total, &sizes);
        if count == 0 {
            return Ok(());
        }
        self.logs()?
            .delete_many(doc! {
                "task_id": task,
                "seq": { "$gt": chunks[0].seq, "$lte": droppable[count - 1].seq },
            })
            .await?;
        self.tasks()?
            .update_one(doc! { "_id": task }, log_trimmed_update(dropped))
            .await?;
        Ok(())
    }

    async fn ensure_task_exists(&self, id: &str) -> StoreResult<()> {
        let exists = self
            .db()?
            .collection::<Document>(TASKS)
            .find_one(doc! { "_id": id })
            .projection(doc! { "_id": 1 })
            .await?;
        match exists {
            Some(_) => Ok(()),
            None => Err(StoreError::not_found("task", id)),
        }
    }

    /// Counts the render's tasks by status, as the domain counts them.
    async fn count_progress(&self, render: &str, frames_total: i64) -> StoreResult<Progress> {
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
    async fn recount_render(&self, mut doc: RenderDoc, now: DateTime<Utc>) -> StoreResult<bool> {
        for _ in 0..RECOUNT_ATTEMPTS {
            let before = doc.status()?;
            if before.is_finished() {
                return Ok(false);
            }
            let progress = self.count_progress(&doc.id, doc.frames_total).await?;
            let stuck = self
                .tasks()?
                .count_documents(stuck_filter(&doc.id))
                .limit(1)
                .await?
                > 0;
            let failed_for_good = doc.failed_for_good || stuck;
            let status = roll_up(before, &progress, doc.started_at.is_some(), failed_for_good);
            if (status, progress, failed_for_good) == (before, doc.progress(), doc.failed_for_good)
            {
                return Ok(false);
            }
            tokio::time::sleep(RECOUNT_SETTLE).await;
            let change = StatusChange {
                status,
                started_at: doc.started_at,
                finished_at: finished_at_after(before, status, doc.finished_at, now),
                reset_failure: false,
            };
            let written = self
                .renders()?
                .find_one_and_update(
                    render_cas_filter(&doc.id, doc.version),
                    recount_update(&progress, failed_for_good, &change),
                )
                .return_document(ReturnDocument::After)
                .await?;
            match written {
                Some(after) => {
                    tracing::warn!(render_id = %after.id, "render counters corrected from its tasks");
                    self.after_status_write(before, after, now).await?;
                    return Ok(true);
                }
                None => doc = self.load_render(&doc.id).await?,
            }
        }
        tracing::debug!(render_id = %doc.id, "render busy; its recount waits for the next tick");
        Ok(false)
    }

    async fn running_tasks(&self) -> StoreResult<Vec<TaskDoc>> {
        Ok(self
            .tasks()?
            .find(status_filter(TaskStatus::Running))
            .await?
            .try_collect()
            .await?)
    }

    async fn workers_by_id(&self, ids: Vec<&str>) -> StoreResult<HashMap<String, WorkerDoc>> {
        let docs: Vec<WorkerDoc> = self
            .workers()?
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?;
        Ok(docs.into_iter().map(|w| (w.id.clone(), w)).collect())
    }

    async fn current_task_of(&self, worker: &str) -> StoreResult<Option<TaskDoc>> {
        Ok(self.tasks()?.find_one(held_filter(worker)).await?)
    }

    /// Two claims of one worker that raced past the "already holds a task"
    /// check may both have taken a task. A claimer that finds its worker
    /// holding more than one hands its own back, so a worker never keeps
    /// two (if both hand theirs back, the worker simply asks again). Returns
    /// the task the worker holds now, if any.
    async fn keep_one_task(
        &self,
        worker: &str,
        mine: TaskDoc,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<TaskDoc>> {
        let held = self.tasks()?.count_documents(held_filter(worker)).await?;
        if held <= 1 {
            return Ok(Some(mine));
        }
        if let Some(lease) = mine.lease_id.as_deref() {
            self.requeue_under_lease(
                &mine.id,
                lease,
                (
                    HistoryEvent::Requeued,
                    "claimed twice at once; its worker keeps its other task",
                ),
                None,
                now,
            )
            .await?;
        }
        self.current_task_of(worker).await
    }
}

/// A number from an aggregation result, whatever width the server chose.
fn bson_i64(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Double(n) => Some(*n as i64),
        _ => None,
    }
}

/// A moved task as the scheduler reports it.
fn moved(task: &TaskDoc) -> StoreResult<MovedTask> {
    Ok(MovedTask {
        task_id: parse_uuid(&task.id, "task id")?,
        render_id: parse_uuid(&task.render_id, "render id")?,
        worker_id: parse_opt_uuid(task.worker_id.as_deref(), "worker id")?,
    })
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
        let seq = self.next_seq(RENDERS).await?;
        let render = RenderDoc::planned(&new.render, seq);
        let tasks = self.tasks()?;
        let stored = async {
            let mut batch = Vec::with_capacity(TASK_BATCH);
            for frames in new.chunks() {
                batch.push(TaskDoc::planned(&render, frames.start(), frames.end()));
                if batch.len() == TASK_BATCH {
                    tasks.insert_many(&batch).await?;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                tasks.insert_many(&batch).await?;
            }
            // The render appears only now, whole.
            self.renders()?.insert_one(&render).await?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(e) = stored {
            // Best effort: the tasks are unreachable without their render,
            // but they take space.
            let _ = tasks.delete_many(doc! { "render_id": &render.id }).await;
            return Err(e);
        }
        if dispatchable(new.render.status) {
            self.sync_runnable(&render.id, true, render.version)
                .await
                .map_err(|e| {
                    tracing::error!(render_id = %render.id, error = %e, "render stored but its tasks were not released; pause and resume it to release them");
                    e
                })?;
        }
        render.to_render()
    }

    async fn get_render(&self, id: Uuid) -> StoreResult<Render> {
        self.load_render(&id.to_string()).await?.to_render()
    }

    async fn list_renders(
        &self,
        filter: &RenderFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Render>> {
        let query = render_list_filter(filter);
        let renders = self.renders()?;
        let total = renders.count_documents(query.clone()).await?;
        let (limit, offset) = page_bounds(page);
        let docs = fetch_page(&renders, query, render_list_sort(), limit, offset).await?;
        Ok(Page {
            items: docs
                .iter()
                .map(RenderDoc::to_render)
                .collect::<StoreResult<_>>()?,
            total: i64::try_from(total).unwrap_or(i64::MAX),
            limit,
            offset,
        })
    }

    async fn list_tasks(
        &self,
        render_id: Uuid,
        status: Option<TaskStatus>,
        page: PageRequest,
    ) -> StoreResult<Page<Task>> {
        let render = self.load_render(&render_id.to_string()).await?;
        let (limit, offset) = page_bounds(page);
        let mut filter = doc! { "render_id": &render.id };
        if let Some(status) = status {
            filter.insert("status", status.as_str());
        }
        let docs = fetch_page(&self.tasks()?, filter, task_list_sort(), limit, offset).await?;
        Ok(Page {
            items: docs
                .iter()
                .map(TaskDoc::to_task)
                .collect::<StoreResult<_>>()?,
            total: render.to_render()?.progress.tasks_in(status),
            limit,
            offset,
        })
    }

    async fn finished_renders_before(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<Uuid>> {
        // MongoDB reads a limit of 0 as no limit at all.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let finished: Vec<IdOnly> = self
            .renders()?
            .clone_with_type::<IdOnly>()
            .find(doc! {
                "status": { "$in": ["completed", "failed", "canceled"] },
                "tasks_running": 0_i64,
                "finished_at": { "$lt": bson_time(before) },
            })
            .projection(doc! { "_id": 1 })
            .sort(doc! { "finished_at": 1 })
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?;
        finished
            .iter()
            .map(|r| parse_uuid(&r.id, "render id"))
            .collect()
    }

    async fn delete_render(&self, id: Uuid) -> StoreResult<()> {
        let id = id.to_string();
        let render = self.load_render(&id).await?;
        check_deletable(render.status()?, render.tasks_running)?;
        // The render goes first: from then on nothing of it is visible, and
        // what a crash leaves behind is finished tasks no query reaches.
        self.renders()?.delete_one(doc! { "_id": &id }).await?;
        let tasks: Vec<IdOnly> = self
            .tasks()?
            .clone_with_type::<IdOnly>()
            .find(doc! { "render_id": &id })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        let task_ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        for batch in task_ids.chunks(DELETE_BATCH) {
            self.logs()?
                .delete_many(doc! { "task_id": { "$in": batch } })
                .await?;
            self.history()?
                .delete_many(doc! { "task_id": { "$in": batch } })
                .await?;
        }
        self.tasks()?.delete_many(doc! { "render_id": &id }).await?;
        tracing::info!(render_id = %id, "render deleted");
        Ok(())
    }

    async fn change_render(
        &self,
        id: Uuid,
        command: RenderCommand,
        now: DateTime<Utc>,
    ) -> StoreResult<Render> {
        let id = id.to_string();
        let renders = self.renders()?;
        let mut written = None;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let doc = self.load_render(&id).await?;
            let from = doc.status()?;
            let to = render_transition(from, command)?;
            let requeue = command == RenderCommand::Requeue;
            let change = StatusChange {
                status: to,
                started_at: if requeue { None } else { doc.started_at },
                finished_at: finished_at_after(from, to, doc.finished_at, now),
                reset_failure: requeue,
            };
            if let Some(after) = renders
                .find_one_and_update(render_cas_filter(&id, doc.version), status_update(&change))
                .return_document(ReturnDocument::After)
                .await?
            {
                written = Some((from, doc.progress(), after));
                break;
            }
        }
        let Some((from, progress, after)) = written else {
            return Err(StoreError::Unavailable(format!(
                "render {id} changed too often to apply the command; retry"
            )));
        };
        let mut doc = self.after_status_write(from, after, now).await?;
        if let Some((event, statuses)) = tasks_affected(command, &progress) {
            doc = self.bulk_task_change(&id, event, &statuses, now).await?;
        }
        let doc = self.settle(doc, false, now).await?;
        tracing::info!(render_id = %id, ?command, "operator changed render");
        doc.to_render()
    }

    async fn get_task(&self, id: Uuid) -> StoreResult<Task> {
        self.load_task(&id.to_string()).await?.to_task()
    }

    async fn task_log(&self, id: Uuid) -> StoreResult<String> {
        let id = id.to_string();
        let task = self.load_task(&id).await?;
        let chunks: Vec<LogDoc> = self
            .logs()?
            .find(doc! { "task_id": &id })
            .sort(doc! { "seq": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(join_log(
            chunks.into_iter().map(|c| c.text),
            task.log_dropped,
        ))
    }

    async fn register_worker(
        &self,
        spec: ValidWorkerSpec,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker> {
        let seq = self.next_seq(WORKERS).await?;
        let doc = WorkerDoc {
            id: Uuid::now_v7().to_string(),
            seq,
            name: spec.name,
            tags: spec.tags,
            mode: WorkerMode::Active.as_str().into(),
            offline: false,
            last_heartbeat: bson_time(now),
            registered_at: bson_time(now),
        };
        self.workers()?.insert_one(&doc).await?;
        tracing::info!(worker_id = %doc.id, name = %doc.name, "worker registered");
        doc.to_worker(None)
    }

    async fn get_worker(&self, id: Uuid) -> StoreResult<Worker> {
        let id = id.to_string();
        let doc = self
            .workers()?
            .find_one(doc! { "_id": &id })
            .await?
            .ok_or_else(|| StoreError::not_found("worker", &id))?;
        let task = self.current_task_of(&id).await?;
        doc.to_worker(task.as_ref().map(|t| t.id.as_str()))
    }

    async fn list_workers(&self) -> StoreResult<Vec<Worker>> {
        let docs: Vec<WorkerDoc> = self
            .workers()?
            .find(doc! {})
            .sort(doc! { "seq": 1 })
            .await?
            .try_collect()
            .await?;
        let ids: Vec<&str> = docs.iter().map(|w| w.id.as_str()).collect();
        let running: Vec<Document> = self
            .db()?
            .collection::<Document>(TASKS)
            .find(running_of_workers_filter(&ids))
            .projection(doc! { "_id": 1, "worker_id": 1 })
            .await?
            .try_collect()
            .await?;
        let current: HashMap<&str, &str> = running
            .iter()
            .filter_map(|t| Some((t.get_str("worker_id").ok()?, t.get_str("_id").ok()?)))
            .collect();
        docs.iter()
            .map(|w| w.to_worker(current.get(w.id.as_str()).copied()))
            .collect()
    }

    async fn change_worker(
        &self,
        id: Uuid,
        action: WorkerAction,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker> {
        let id_s = id.to_string();
        let workers = self.workers()?;
        let mut to = None;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let doc = workers
                .find_one(doc! { "_id": &id_s })
                .await?
                .ok_or_else(|| StoreError::not_found("worker", &id_s))?;
            let next = worker_transition(doc.mode()?, action)?;
            let changed = workers
                .update_one(mode_cas_filter(&id_s, &doc.mode), mode_update(next))
                .await?;
            if changed.matched_count == 1 {
                to = Some(next);
                break;
            }
        }
        let Some(to) = to else {
            return Err(StoreError::Unavailable(format!(
                "worker {id} changed too often to apply the action; retry"
            )));
        };
        if to == WorkerMode::Disabled {
            // A disabled machine stops now: its task goes back to the queue
            // without counting as a failure, and its next heartbeat answers
            // abort.
            if let Some(task) = self.current_task_of(&id_s).await? {
                if let Some(lease) = task.lease_id.clone() {
                    if self
                        .requeue_under_lease(
                            &task.id,
                            &lease,
                            (HistoryEvent::Requeued, "its worker was disabled"),
                            None,
                            now,
                        )
                        .await?
                        .is_some()
                    {
                        tracing::info!(worker_id = %id, task_id = %task.id, "task of disabled worker requeued");
                    }
                }
            }
        }
        self.get_worker(id).await
    }

    async fn heartbeat(
        &self,
        worker_id: Uuid,
        beat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> StoreResult<HeartbeatAction> {
        let worker = worker_id.to_string();
        self.mark_alive(&worker, now).await?;
        let (task_id, lease_id) = match (beat.task_id, beat.lease_id) {
            (None, None) => return Ok(HeartbeatAction::Continue),
            (Some(t), Some(l)) => (t.to_string(), l.to_string()),
            _ => {
                return Err(StoreError::Invalid(
                    "send task_id and lease_id together (both from your assignment), or neither when idle".into(),
                ))
            }
        };
        let task = self.tasks()?.find_one(doc! { "_id": &task_id }).await?;
        let view = match &task {
            Some(t) => Some(LeaseView {
                status: t.status()?,
                lease_matches: t.lease_id.as_deref() == Some(lease_id.as_str())
                    && t.worker_id.as_deref() == Some(worker.as_str()),
            }),
            None => None,
        };
        let action = heartbeat_action(view);
        if let (HeartbeatAction::Continue, Some(task), Some(frames)) =
            (action, &task, beat.frames_done)
        {
            if self
                .record_progress(task, &lease_id, frames, None, now)
                .await?
                .is_none()
            {
                // The lease moved on between the read and the write.
                return Ok(HeartbeatAction::Abort);
            }
        }
        Ok(action)
    }

    async fn claim_next_task(
        &self,
        worker_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Assignment>> {
        let worker_key = worker_id.to_string();
        let worker = self.mark_alive(&worker_key, now).await?;
        if let Some(held) = self.current_task_of(&worker_key).await? {
            let render = self.load_render(&held.render_id).await?;
            return held.assignment(&render).map(Some);
        }
        if claim_permission(worker.mode()?)? == ClaimPermission::NoNewWork {
            return Ok(None);
        }
        let to = task_transition(TaskStatus::Pending, TaskEvent::Claim)?;
        let lease = Uuid::new_v4().to_string();
        let claimed = self
            .tasks()?
            .find_one_and_update(
                claim_filter(&worker.tags),
                claim_update(to, &worker_key, &lease, now),
            )
            .sort(claim_sort())
            .hint(Hint::Name(CLAIM_INDEX.into()))
            .return_document(ReturnDocument::After)
            .await?;
        let Some(task) = claimed else {
            return Ok(None);
        };
        let render = self
            .move_render(&task.render_id, TaskStatus::Pending, to, 0, false, now)
            .await?;
        self.record_history(
            &task.id,
            task.history_seq - 1,
            HistoryEvent::Assigned,
            Some(&worker_key),
            None,
            now,
        )
        .await?;
        let Some(task) = self.keep_one_task(&worker_key, task, now).await? else {
            return Ok(None);
        };
        let render = if task.render_id == render.id {
            render
        } else {
            self.load_render(&task.render_id).await?
        };
        tracing::debug!(
            worker_id = %worker_id,
            task_id = %task.id,
            render_id = %task.render_id,
            lease_id = ?task.lease_id,
            "task claimed"
        );
        task.assignment(&render).map(Some)
    }

    async fn report_task(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        report: TaskReport,
        log: Option<String>,
        now: DateTime<Utc>,
    ) -> StoreResult<Task> {
        let id = task_id.to_string();
        let lease = lease_id.to_string();
        let task = self.load_task(&id).await?;
        if task.lease_id.as_deref() != Some(lease.as_str()) || task.status()? != TaskStatus::Running
        {
            return Err(StoreError::stale_lease(task_id));
        }
        let log = log.filter(|t| !t.is_empty());
        let log_bytes = log.as_ref().map(|text| text.len() as i64);
        let tasks = self.tasks()?;
        let before = match &report {
            TaskReport::Progress { frames_done } => {
                self.record_progress(&task, &lease, *frames_done, log_bytes, now)
                    .await?
            }
            TaskReport::Release => {
                self.requeue_under_lease(
                    &id,
                    &lease,
                    (
                        HistoryEvent::Released,
                        "its worker stopped and handed it back",
                    ),
                    log_bytes,
                    now,
                )
                .await?
            }
            TaskReport::Complete => {
                let to = task_transition(TaskStatus::Running, TaskEvent::Complete)?;
                let before = tasks
                    .find_one_and_update(
                        lease_filter(&id, &lease),
                        complete_update(to, task.frames(), now, log_bytes),
                    )
                    .return_document(ReturnDocument::Before)
                    .await?;
                if let Some(b) = &before {
                    self.move_render(
                        &b.render_id,
                        TaskStatus::Running,
                        to,
                        b.frames() - b.frames_done,
                        false,
                        now,
                    )
                    .await?;
                    self.record_history(
                        &id,
                        b.history_seq,
                        HistoryEvent::Completed,
                        b.worker_id.as_deref(),
                        None,
                        now,
                    )
                    .await?;
                }
                before
            }
            TaskReport::Fail { exit_code, reason } => {
                let to = task_transition(TaskStatus::Running, TaskEvent::Fail)?;
                let before = tasks
                    .find_one_and_update(
                        lease_filter(&id, &lease),
                        fail_update(to, *exit_code, reason, now, log_bytes),
                    )
                    .return_document(ReturnDocument::Before)
                    .await?;
                if let Some(b) = &before {
                    let retry = TaskEvent::Retry {
                        retries: b.retries,
                        max_retries: b.max_retries,
                    };
                    let failed_for_good = task_transition(to, retry).is_err();
                    self.move_render(
                        &b.render_id,
                        TaskStatus::Running,
                        to,
                        -b.frames_done,
                        failed_for_good,
                        now,
                    )
                    .await?;
                    let detail = match exit_code {
                        Some(code) => format!("exit code {code}"),
                        None => "no exit code".to_string(),
                    };
                    self.record_history(
                        &id,
                        b.history_seq,
                        HistoryEvent::Failed,
                        b.worker_id.as_deref(),
                        Some(detail),
                        now,
                    )
                    .await?;
                }
                before
            }
        };
        let Some(before) = before else {
            // The lease moved on between the check and the write.
            return Err(StoreError::stale_lease(task_id));
        };
        if let Some(text) = log {
            let bytes = text.len() as i64;
            self.logs()?
                .insert_one(LogDoc {
                    task_id: id.clone(),
                    seq: before.log_chunks,
                    text,
                    bytes,
                })
                .await?;
            let total = before.log_bytes + bytes;
            if total > TASK_LOG_LIMIT {
                self.trim_log(&id, total).await?;
            }
        }
        self.load_task(&id).await?.to_task()
    }

    async fn task_history(&self, task_id: Uuid) -> StoreResult<Vec<TaskHistoryEntry>> {
        let id = task_id.to_string();
        self.ensure_task_exists(&id).await?;
        let docs: Vec<HistoryDoc> = self
            .history()?
            .find(doc! { "task_id": &id })
            .sort(doc! { "seq": 1 })
            .await?
            .try_collect()
            .await?;
        docs.iter().map(HistoryDoc::to_entry).collect()
    }

    async fn requeue_lost_workers(
        &self,
        cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<LostWorkers> {
        let workers = self.workers()?;
        let mut outcome = LostWorkers::default();
        let silent: Vec<WorkerDoc> = workers
            .find(silent_workers_filter(cutoff))
            .sort(doc! { "seq": 1 })
            .await?
            .try_collect()
            .await?;
        for w in &silent {
            // Conditional, so one broker marks it once and a heartbeat that
            // came in meanwhile keeps it.
            let marked = workers
                .update_one(lost_worker_filter(&w.id, cutoff), offline_update())
                .await?;
            if marked.modified_count == 1 {
                outcome.workers.push(parse_uuid(&w.id, "worker id")?);
            }
        }
        // From the running tasks rather than the workers just marked, so the
        // task of a worker marked by a tick that stopped half way is not
        // left running forever.
        let running = self.running_tasks().await?;
        let holders = self
            .workers_by_id(
                running
                    .iter()
                    .filter_map(|t| t.worker_id.as_deref())
                    .collect(),
            )
            .await?;
        for task in &running {
            let Some(worker) = task.worker_id.as_deref().and_then(|w| holders.get(w)) else {
                continue;
            };
            let (Some(lease), true) = (
                task.lease_id.as_deref(),
                worker.last_heartbeat <= bson_time(cutoff),
            ) else {
                continue;
            };
            let last_seen = worker
                .last_heartbeat
                .to_chrono()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let detail = format!("its worker was lost: no sign of life since {last_seen}");
            if let Some(before) = self
                .requeue_under_lease(
                    &task.id,
                    lease,
                    (HistoryEvent::Requeued, &detail),
                    None,
                    now,
                )
                .await?
            {
                outcome.requeued.push(moved(&before)?);
            }
        }
        Ok(outcome)
    }

    async fn retry_failed_tasks(&self, now: DateTime<Utc>) -> StoreResult<Retries> {
        let tasks = self.tasks()?;
        let failed: Vec<TaskDoc> = tasks
            .find(status_filter(TaskStatus::Failed))
            .sort(claim_sort())
            .await?
            .try_collect()
            .await?;
        if failed.is_empty() {
            return Ok(Retries::default());
        }
        // A finished render's failed tasks stay failed.
        let render_ids: Vec<&str> = failed.iter().map(|t| t.render_id.as_str()).collect();
        let open: Vec<Document> = self
            .db()?
            .collection::<Document>(RENDERS)
            .find(open_renders_filter(Some(render_ids)))
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        let open: std::collections::HashSet<&str> =
            open.iter().filter_map(|d| d.get_str("_id").ok()).collect();
        let mut outcome = Retries::default();
        for task in failed
            .iter()
            .filter(|t| open.contains(t.render_id.as_str()))
        {
            let retry = TaskEvent::Retry {
                retries: task.retries,
                max_retries: task.max_retries,
            };
            match task_transition(task.status()?, retry) {
                Ok(to) => {
                    let before = tasks
                        .find_one_and_update(
                            retry_filter(&task.id, task.retries),
                            retry_update(to, now),
                        )
                        .return_document(ReturnDocument::Before)
                        .await?;
                    let Some(before) = before else {
                        continue;
                    };
                    self.move_render(
                        &before.render_id,
                        TaskStatus::Failed,
                        to,
                        -before.frames_done,
                        false,
                        now,
                    )
                    .await?;
                    let detail = format!("retry {} of {}", before.retries + 1, before.max_retries);
                    self.record_history(
                        &before.id,
                        before.history_seq,
                        HistoryEvent::Retried,
                        None,
                        Some(detail),
                        now,
                    )
                    .await?;
                    outcome.retried.push(moved(&before)?);
                }
                Err(_) => {
                    // No retry left: the render fails (its roll-up cancels
                    // the pending work).
                    self.move_render(
                        &task.render_id,
                        TaskStatus::Failed,
                        TaskStatus::Failed,
                        0,
                        true,
                        now,
                    )
                    .await?;
                    outcome.failed.push(moved(task)?);
                }
            }
        }
        Ok(outcome)
    }

    async fn preemption_inputs(
        &self,
        allowances: &Allowances,
        now: DateTime<Utc>,
    ) -> StoreResult<PreemptionInputs> {
        let cutoffs: Vec<(i64, DateTime<Utc>)> = Priority::ALL
            .into_iter()
            .filter_map(|p| allowances.overdue_cutoff(p, now).map(|c| (p.rank(), c)))
            .collect();
        let mut overdue = Vec::new();
        if let Some(pipeline) = overdue_pipeline(&cutoffs) {
            let rows: Vec<Document> = self
                .db()?
                .collection::<Document>(TASKS)
                .aggregate(pipeline)
                .await?
                .try_collect()
                .await?;
            for row in rows {
                let bad = || corrupt(format!("an overdue-work row {row:?}"));
                let rank = row.get("priority").and_then(bson_i64).ok_or_else(bad)?;
                let tags = row
                    .get_array("tags")
                    .map_err(|_| bad())?
                    .iter()
                    .map(|t| t.as_str().map(str::to_string).ok_or_else(bad))
                    .collect::<StoreResult<Vec<_>>>()?;
                overdue.push(OverdueWork {
                    render_id: parse_uuid(row.get_str("_id").map_err(|_| bad())?, "render id")?,
                    priority: Priority::from_rank(rank).ok_or_else(bad)?,
                    tags,
                    tasks: row.get("tasks").and_then(bson_i64).ok_or_else(bad)?,
                });
            }
        }
        let running_tasks = self.running_tasks().await?;
        let holders = self
            .workers_by_id(
                running_tasks
                    .iter()
                    .filter_map(|t| t.worker_id.as_deref())
                    .collect(),
            )
            .await?;
        let mut running = Vec::new();
        for task in &running_tasks {
            // As a join would: a task whose worker is gone is not preemptible.
            let Some(worker) = task.worker_id.as_deref().and_then(|w| holders.get(w)) else {
                continue;
            };
            running.push(RunningWork {
                task_id: parse_uuid(&task.id, "task id")?,
                lease_id: parse_uuid(task.lease_id.as_deref().unwrap_or_default(), "lease id")?,
                priority: Priority::from_rank(task.priority).ok_or_else(|| {
                    corrupt(format!("task {} with priority {}", task.id, task.priority))
                })?,
                started_at: task
                    .started_at
                    .ok_or_else(|| corrupt(format!("running task {} without a start", task.id)))?
                    .to_chrono(),
                worker_tags: worker.tags.clone(),
            });
        }
        let busy: std::collections::HashSet<&str> = running_tasks
            .iter()
            .filter_map(|t| t.worker_id.as_deref())
            .collect();
        let available: Vec<WorkerDoc> = self
            .workers()?
            .find(available_workers_filter())
            .sort(doc! { "seq": 1 })
            .await?
            .try_collect()
            .await?;
        let idle_worker_tags = available
            .into_iter()
            .filter(|w| !busy.contains(w.id.as_str()))
            .map(|w| w.tags)
            .collect();
        Ok(PreemptionInputs {
            overdue,
            running,
            idle_worker_tags,
        })
    }

    async fn preempt_task(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<MovedTask>> {
        let id = task_id.to_string();
        let lease = lease_id.to_string();
        let task = self.load_task(&id).await?;
        if task.status()? != TaskStatus::Running || task.lease_id.as_deref() != Some(&lease) {
            return Ok(None);
        }
        self.requeue_under_lease(
            &id,
            &lease,
            (HistoryEvent::Preempted, "taken back for more urgent work"),
            None,
            now,
        )
        .await?
        .as_ref()
        .map(moved)
        .transpose()
    }

    async fn roll_up_renders(&self, now: DateTime<Utc>) -> StoreResult<i64> {
        let open: Vec<RenderDoc> = self
            .renders()?
            .find(open_renders_filter(None))
            .await?
            .try_collect()
            .await?;
        let mut corrected = 0;
        for doc in open {
            if self.recount_render(doc, now).await? {
                corrected += 1;
            }
        }
        Ok(corrected)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<LeaderLease> {
        let leases = self.leases()?;
        for _ in 0..3 {
            let taken = leases
                .find_one_and_update(
                    lease_take_filter(name, holder, now),
                    lease_take_update(holder, now + ttl),
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match taken {
                Ok(Some(lease)) => return Ok(lease.to_lease()),
                Ok(None) => {}
                // Someone else holds it and it has not lapsed (the upsert
                // tried to create a second document with its name).
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(current) = leases.find_one(doc! { "_id": name }).await? {
                return Ok(current.to_lease());
            }
            // Released between the two steps: try again.
        }
        Err(StoreError::Unavailable(format!(
            "the lease {name} changed hands too often to take; the next tick tries again"
        )))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        self.leases()?
            .delete_one(lease_release_filter(name, holder))
            .await?;
        Ok(())
    }

    async fn current_lease(&self, name: &str) -> StoreResult<Option<LeaderLease>> {
        Ok(self
            .leases()?
            .find_one(doc! { "_id": name })
            .await?
            .map(|l| l.to_lease()))
    }
}

#[cfg(test)]
mod tests;
