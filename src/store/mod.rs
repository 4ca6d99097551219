//! Where renders, tasks and workers live. The [`Store`] trait speaks the
//! domain ("claim the next task for this worker"), not generic CRUD; each
//! backend decides how to make every operation atomic. Backends never decide a
//! status change: they ask `crate::domain`.

pub mod conformance;
pub mod mongodb;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renderfarm_wire::{
    Assignment, Heartbeat, HeartbeatAction, Page, Priority, Render, RenderStatus, Task, Worker,
    WorkerAction,
};
use uuid::Uuid;

use crate::domain::{IllegalTransition, NewRender, RenderCommand, ValidWorkerSpec};

/// The small vocabulary every backend's failures are translated into, once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such render, task or worker.
    #[error("no {kind} with id {id}")]
    NotFound { kind: &'static str, id: String },
    /// The change conflicts with the current state: a stale lease, an illegal
    /// status change, a disabled worker.
    #[error("{0}")]
    Conflict(String),
    /// The request names things that exist but asks for something impossible
    /// (e.g. more frames done than the task has).
    #[error("{0}")]
    Invalid(String),
    /// The store cannot be reached or is shutting down; worth retrying.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Anything else; the cause goes to the log, never to a client.
    #[error("unexpected store failure")]
    Unexpected(#[source] anyhow::Error),
}

impl From<IllegalTransition> for StoreError {
    fn from(e: IllegalTransition) -> Self {
        StoreError::Conflict(e.message)
    }
}

impl StoreError {
    pub(crate) fn not_found(kind: &'static str, id: impl ToString) -> Self {
        StoreError::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    pub(crate) fn stale_lease(task_id: Uuid) -> Self {
        StoreError::Conflict(format!(
            "the lease presented for task {task_id} is not its current one (the task was reassigned, canceled or finished); stop working on it and ask for a new task"
        ))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which renders a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderFilter {
    pub status: Option<RenderStatus>,
    pub priority: Option<Priority>,
}

/// Which slice of a listing to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: i64,
    pub offset: i64,
}

impl PageRequest {
    /// The most items one page may hold.
    pub const MAX_LIMIT: i64 = 1000;
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: 100,
            offset: 0,
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

/// The operations the broker needs from persistence.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name of the backend, for logs and `/ready`.
    fn backend(&self) -> &'static str;

    /// Succeeds when the store can serve requests now.
    async fn ping(&self) -> StoreResult<()>;

    /// Stores a render and all its tasks at once: afterwards either both are
    /// visible or neither is.
    async fn create_render(&self, new: NewRender) -> StoreResult<Render>;

    async fn get_render(&self, id: Uuid) -> StoreResult<Render>;

    /// Newest first.
    async fn list_renders(
        &self,
        filter: &RenderFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Render>>;

    /// The render's tasks, lowest frames first.
    async fn list_tasks(&self, render_id: Uuid, page: PageRequest) -> StoreResult<Page<Task>>;

    /// An operator's change of a render's status, with what it does to the
    /// render's tasks.
    async fn change_render(
        &self,
        id: Uuid,
        command: RenderCommand,
        now: DateTime<Utc>,
    ) -> StoreResult<Render>;

    async fn get_task(&self, id: Uuid) -> StoreResult<Task>;

    /// Everything the task's workers sent as log, oldest first.
    async fn task_log(&self, id: Uuid) -> StoreResult<String>;

    async fn register_worker(
        &self,
        spec: ValidWorkerSpec,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker>;

    async fn get_worker(&self, id: Uuid) -> StoreResult<Worker>;

    /// In order of registration.
    async fn list_workers(&self) -> StoreResult<Vec<Worker>>;

    async fn change_worker(
        &self,
        id: Uuid,
        action: WorkerAction,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker>;

    /// Records that the worker is alive (and its progress, under its lease);
    /// answers whether it should keep rendering the task it names.
    async fn heartbeat(
        &self,
        worker_id: Uuid,
        beat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> StoreResult<HeartbeatAction>;

    /// Hands the worker its next task under a new lease: the highest priority
    /// first, then the oldest render, then the lowest frames; never a task of
    /// a paused or canceled render, nor one whose render needs tags the worker
    /// lacks. A worker that already holds a running task gets that one again.
    /// `None`: nothing for this worker now.
    async fn claim_next_task(
        &self,
        worker_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Assignment>>;

    /// Applies a worker's report if `lease_id` is the task's current lease
    /// (else `Conflict` and nothing changes); appends `log` to the task's log.
    async fn report_task(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        report: TaskReport,
        log: Option<String>,
        now: DateTime<Utc>,
    ) -> StoreResult<Task>;
}
