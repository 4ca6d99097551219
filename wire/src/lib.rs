//! The JSON bodies that the renderfarm broker, its command-line client and its
//! worker agents exchange. Defined once here so that the worker agent can speak
//! the protocol without compiling the broker's web server or database drivers.
//!
//! These are plain data: validation and status transitions live in the
//! broker's `domain` module.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A point in time as it travels on the wire (RFC 3339, UTC).
pub type Timestamp = DateTime<Utc>;

/// How urgent a render is; higher levels are dispatched first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Priority {
    /// Every level, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ];

    /// Position in dispatch order: low 0 … urgent 3.
    pub fn rank(self) -> i64 {
        self as i64
    }

    /// The level at `rank`, if any.
    pub fn from_rank(rank: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.rank() == rank)
    }

    /// The level named `s` (lowercase), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

/// Where a render is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenderStatus {
    Queued,
    Rendering,
    Paused,
    Completed,
    Failed,
    Canceled,
}

impl RenderStatus {
    /// The status named `s` (lowercase), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Every status, in life order.
    pub const ALL: [RenderStatus; 6] = [
        RenderStatus::Queued,
        RenderStatus::Rendering,
        RenderStatus::Paused,
        RenderStatus::Completed,
        RenderStatus::Failed,
        RenderStatus::Canceled,
    ];

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            RenderStatus::Queued => "queued",
            RenderStatus::Rendering => "rendering",
            RenderStatus::Paused => "paused",
            RenderStatus::Completed => "completed",
            RenderStatus::Failed => "failed",
            RenderStatus::Canceled => "canceled",
        }
    }

    /// True once nothing more will happen to the render without an operator.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RenderStatus::Completed | RenderStatus::Failed | RenderStatus::Canceled
        )
    }
}

/// Where one chunk of frames is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Canceled,
}

impl TaskStatus {
    /// The status named `s` (lowercase), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Every status, in life order.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Canceled,
    ];

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Canceled => "canceled",
        }
    }
}

/// What a worker is doing, as an operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    Idle,
    Busy,
    Offline,
    Draining,
    Disabled,
}

impl WorkerStatus {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Idle => "idle",
            WorkerStatus::Busy => "busy",
            WorkerStatus::Offline => "offline",
            WorkerStatus::Draining => "draining",
            WorkerStatus::Disabled => "disabled",
        }
    }
}

fn default_chunk_size() -> i64 {
    10
}

fn default_max_retries() -> i64 {
    1
}

/// `POST /renders`: what a user submits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderSpec {
    pub name: String,
    pub blend_file: String,
    pub frame_start: i64,
    pub frame_end: i64,
    #[serde(default = "default_chunk_size")]
    pub chunk_size: i64,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default = "default_max_retries")]
    pub max_retries: i64,
    /// Blender output pattern (`-o`); the broker picks one under its data
    /// directory when absent.
    #[serde(default)]
    pub output: Option<String>,
    /// Blender render engine (`-E`), e.g. `CYCLES`; the file's own when absent.
    #[serde(default)]
    pub engine: Option<String>,
    /// Only workers carrying every one of these tags may render it.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Counters that roll up from a render's tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub tasks_total: i64,
    pub tasks_pending: i64,
    pub tasks_running: i64,
    pub tasks_completed: i64,
    pub tasks_failed: i64,
    pub tasks_canceled: i64,
    pub frames_total: i64,
    pub frames_done: i64,
}

/// A render as the broker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Render {
    pub id: Uuid,
    pub name: String,
    pub status: RenderStatus,
    pub priority: Priority,
    pub blend_file: String,
    pub frame_start: i64,
    pub frame_end: i64,
    pub chunk_size: i64,
    pub max_retries: i64,
    pub output: String,
    pub engine: Option<String>,
    pub tags: Vec<String>,
    pub progress: Progress,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// One chunk of a render's frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: Uuid,
    pub render_id: Uuid,
    pub frame_start: i64,
    pub frame_end: i64,
    pub status: TaskStatus,
    /// How many times the task was put back to pending after failing.
    pub retries: i64,
    pub worker_id: Option<Uuid>,
    pub frames_done: i64,
    pub exit_code: Option<i64>,
    /// Why the last attempt failed, as the worker reported it.
    pub failure_reason: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// Something that happened to a task, as its history shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryEvent {
    /// A worker claimed it.
    Assigned,
    Completed,
    Failed,
    /// Its worker handed it back unfinished.
    Released,
    /// Taken from its worker (lost, or disabled) without counting a failure.
    Requeued,
    /// Taken from its worker for more urgent work.
    Preempted,
    /// Put back to pending after a failure.
    Retried,
}

impl HistoryEvent {
    pub const ALL: [HistoryEvent; 7] = [
        HistoryEvent::Assigned,
        HistoryEvent::Completed,
        HistoryEvent::Failed,
        HistoryEvent::Released,
        HistoryEvent::Requeued,
        HistoryEvent::Preempted,
        HistoryEvent::Retried,
    ];

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryEvent::Assigned => "assigned",
            HistoryEvent::Completed => "completed",
            HistoryEvent::Failed => "failed",
            HistoryEvent::Released => "released",
            HistoryEvent::Requeued => "requeued",
            HistoryEvent::Preempted => "preempted",
            HistoryEvent::Retried => "retried",
        }
    }

    /// The event named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One line of a task's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskHistoryEntry {
    pub at: Timestamp,
    pub event: HistoryEvent,
    /// The worker concerned, if any.
    pub worker_id: Option<Uuid>,
    /// Why, in words (e.g. "worker lost: no heartbeat for 60s").
    pub detail: Option<String>,
}

/// `GET /tasks/{id}`: a task with its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: Task,
    /// Oldest first.
    pub history: Vec<TaskHistoryEntry>,
}

/// What one scheduler tick did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TickReport {
    /// Tasks of lost workers put back to pending.
    pub requeued: i64,
    /// Failed tasks put back to pending for another try.
    pub retried: i64,
    /// Failed tasks with no retry left whose render this tick failed.
    pub failed: i64,
    /// Running tasks taken from their workers for more urgent work.
    pub preempted: i64,
    /// How many more workers would be needed now for the work that waited
    /// past its allowance.
    pub workers_wanted: i64,
    /// Workers marked offline.
    pub workers_lost: i64,
    /// When the tick ran (the scheduler's clock).
    pub ran_at: Option<Timestamp>,
}

/// Who leads the scheduler, when several brokers share a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderLease {
    /// The broker instance holding the lease.
    pub holder: String,
    pub expires_at: Timestamp,
}

/// `GET /scheduler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerStatus {
    /// This broker instance.
    pub instance: String,
    /// The current leader, if any broker holds the lease.
    pub leader: Option<LeaderLease>,
    /// True when this broker runs the periodic tick.
    pub is_leader: bool,
    pub last_report: Option<TickReport>,
    pub next_tick_at: Option<Timestamp>,
    pub tick_seconds: f64,
    pub worker_timeout_seconds: f64,
    /// Wait allowance per priority level in seconds; null means never preempts.
    pub allowances: PriorityAllowances,
}

/// A wait allowance per priority level, in seconds; `None`: never.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorityAllowances {
    pub low: Option<f64>,
    pub normal: Option<f64>,
    pub high: Option<f64>,
    pub urgent: Option<f64>,
}

/// `POST /workers`: a worker agent introduces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A worker as the broker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub id: Uuid,
    pub name: String,
    pub status: WorkerStatus,
    pub tags: Vec<String>,
    pub last_heartbeat: Timestamp,
    pub current_task_id: Option<Uuid>,
    pub registered_at: Timestamp,
}

/// The answer to `POST /workers/{id}/request-task`: one chunk to render.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub task_id: Uuid,
    pub render_id: Uuid,
    /// Must accompany every report about this task; a newer assignment of the
    /// same task makes it stale.
    pub lease_id: Uuid,
    pub blend_file: String,
    pub frame_start: i64,
    pub frame_end: i64,
    pub output: String,
    pub engine: Option<String>,
}

/// `POST /tasks/{id}/progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    pub lease_id: Uuid,
    pub frames_done: i64,
    /// Log text produced since the previous report; appended to the task's log.
    #[serde(default)]
    pub log: Option<String>,
}

/// `POST /tasks/{id}/complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteReport {
    pub lease_id: Uuid,
    #[serde(default)]
    pub log: Option<String>,
}

/// `POST /tasks/{id}/fail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailReport {
    pub lease_id: Uuid,
    #[serde(default)]
    pub exit_code: Option<i64>,
    pub reason: String,
    #[serde(default)]
    pub log: Option<String>,
}

/// `POST /tasks/{id}/release`: the worker gives the task back unfinished
/// (it is stopping); the task is queued again without counting a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseReport {
    pub lease_id: Uuid,
    #[serde(default)]
    pub log: Option<String>,
}

/// `POST /workers/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub task_id: Option<Uuid>,
    #[serde(default)]
    pub lease_id: Option<Uuid>,
    #[serde(default)]
    pub frames_done: Option<i64>,
}

/// What the broker wants a worker to do with the task it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatAction {
    /// Keep rendering (or keep asking for work).
    Continue,
    /// Stop the task now and send nothing more under its lease.
    Abort,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub action: HeartbeatAction,
}

/// What an operator can ask of a render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenderAction {
    Pause,
    Resume,
    Cancel,
    Requeue,
}

/// `PUT /renders/{id}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderStatusChange {
    pub action: RenderAction,
}

/// What an operator can ask of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerAction {
    /// Finish the current task, take no new one.
    Drain,
    /// Take no work at all until enabled.
    Disable,
    /// Back to taking work.
    Enable,
}

/// `PUT /workers/{id}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerStatusChange {
    pub action: WorkerAction,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// How many items match the filter in all pages.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `invalid_input`, `not_found`.
    pub error: String,
    /// What went wrong and how to fix it.
    pub message: String,
}

/// `GET /health` and `GET /ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub status: String,
    #[serde(default)]
    pub store: Option<String>,
}
