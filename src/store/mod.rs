//! Where renders, tasks and workers live. The [`Store`] trait speaks the
//! domain ("claim the next task for this worker"), not generic CRUD; each
//! backend decides how to make every operation atomic. Backends never decide a
//! status change: they ask `crate::domain`.
//!
//! The conformance suite is a test tool, absent from a build without the
//! `conformance` feature (such as the release binary).

mod by_concern;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod mongodb;
pub mod snapshot;
pub mod sqlite;

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renderfarm_wire::{
    Assignment, EventKind, FarmEvent, Heartbeat, HeartbeatAction, LeaderLease, Page, Priority,
    QueueDepth, Render, RenderCounts, RenderStatus, Task, TaskHistoryEntry, TaskKind, TaskStatus,
    Worker, WorkerAction,
};
use uuid::Uuid;

use crate::domain::preview::StoredPreview;
use crate::domain::{
    Allowances, DependencyState, EventBounds, IllegalTransition, LeaseRefusal, NewRender,
    OverdueWork, RenderCommand, RenderOrder, RunningWork, StoredToken, TaskReport,
    ValidWorkerHours, ValidWorkerSpec, WorkerMode, WorkerUnavailable,
};
use crate::domain::{AttemptRecord, DeliveryCounts, DueDelivery, NewDelivery, StoredWebhook};

/// The small vocabulary every backend's failures are translated into, once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such render, task or worker.
    #[error("no {kind} with id {id}")]
    NotFound { kind: &'static str, id: String },
    /// The lease presented is not the task's current one (fencing): the
    /// task was reassigned, canceled or finished meanwhile.
    #[error("the lease presented for task {task_id} is not its current one (the task was reassigned, canceled or finished); stop working on it and ask for a new task")]
    StaleLease { task_id: Uuid },
    /// The lease is the task's current one, but another worker holds it.
    #[error("task {task_id} is held by another worker; a worker reports only for the tasks it was given")]
    NotYourTask { task_id: Uuid },
    /// The state machine does not allow the change from the current status.
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// The worker may not take work in its current mode.
    #[error(transparent)]
    WorkerUnavailable(#[from] WorkerUnavailable),
    /// Something with the same identity is stored already.
    #[error("something with the same identity is already stored; it was not stored again")]
    AlreadyExists,
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

impl StoreError {
    /// What a refused lease is to the caller: another worker's task is
    /// forbidden; anything else is a stale lease.
    pub(crate) fn lease_refused(task_id: Uuid, why: LeaseRefusal) -> Self {
        match why {
            LeaseRefusal::OtherWorker => StoreError::NotYourTask { task_id },
            LeaseRefusal::NotCurrent | LeaseRefusal::NotRunning => {
                StoreError::StaleLease { task_id }
            }
        }
    }

    pub(crate) fn not_found(kind: &'static str, id: impl ToString) -> Self {
        StoreError::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    /// The change conflicts with the current state (HTTP 409), whichever
    /// conflict it is.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::StaleLease { .. }
                | StoreError::IllegalTransition(_)
                | StoreError::WorkerUnavailable(_)
                | StoreError::AlreadyExists
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A status (or mode) as both backends store it: the text the domain's
/// value is spelled with, for queries built from the domain's values.
pub(crate) trait Stored: Copy {
    fn stored(self) -> &'static str;
}

impl Stored for RenderStatus {
    fn stored(self) -> &'static str {
        self.as_str()
    }
}

impl Stored for renderfarm_wire::TaskKind {
    fn stored(self) -> &'static str {
        self.as_str()
    }
}

impl Stored for TaskStatus {
    fn stored(self) -> &'static str {
        self.as_str()
    }
}

impl Stored for EventKind {
    fn stored(self) -> &'static str {
        self.as_str()
    }
}

impl Stored for WorkerMode {
    fn stored(self) -> &'static str {
        self.as_str()
    }
}

/// Which renders a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderFilter {
    pub status: Option<RenderStatus>,
    pub priority: Option<Priority>,
    /// Only the renders this person submitted (`Render::owner`).
    pub owner: Option<String>,
    /// Only the renders whose name contains this (`domain::name_matches`).
    pub search: Option<String>,
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

/// A task the scheduler moved, for its log and its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedTask {
    pub task_id: Uuid,
    pub render_id: Uuid,
    /// The worker it was taken from, if any.
    pub worker_id: Option<Uuid>,
}

/// What the lost-worker step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LostWorkers {
    pub workers: Vec<Uuid>,
    pub requeued: Vec<MovedTask>,
}

/// What the retry step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retries {
    /// Put back to pending with one retry more.
    pub retried: Vec<MovedTask>,
    /// No retry left: their renders were failed by this step.
    pub failed: Vec<MovedTask>,
}

/// What preemption decides on, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreemptionInputs {
    /// Pending work past its priority's allowance, in dispatch order.
    pub overdue: Vec<OverdueWork>,
    pub running: Vec<RunningWork>,
    /// Tags of each worker that could take work now.
    pub idle_worker_tags: Vec<Vec<String>>,
}

/// What the farm summary counts in the store (`Store::farm_counts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FarmCounts {
    pub renders: RenderCounts,
    /// Pending tasks of renders that may run, by priority.
    pub queue: QueueDepth,
    /// Frames of the tasks that completed since the time asked about.
    pub frames_since: i64,
    /// Every render's tasks, by the render's priority and the tasks' status
    /// (from the renders' tallies); pairs with no task are left out.
    pub tasks: Vec<(Priority, TaskStatus, i64)>,
    /// Pending tasks that may run, by the tags a worker needs to take them
    /// (sorted) and their kind: chunks of renders that may run, and the
    /// videos of completed renders; groups with none pending are left out.
    pub runnable: Vec<(Vec<String>, TaskKind, i64)>,
}

/// Counts `n` more runnable tasks of `kind` needing `tags` (sorted).
pub(crate) fn add_runnable(counts: &mut FarmCounts, tags: Vec<String>, kind: TaskKind, n: i64) {
    match counts
        .runnable
        .iter_mut()
        .find(|(t, k, _)| *t == tags && *k == kind)
    {
        Some((_, _, m)) => *m += n,
        None => counts.runnable.push((tags, kind, n)),
    }
}

/// A frame a worker uploaded, as the store keeps it: the image itself is in
/// the file storage under `sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFrame {
    pub render_id: Uuid,
    pub frame: i64,
    /// The file name Blender gave it (`domain::files::validate_frame_name`).
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
    pub stored_at: DateTime<Utc>,
}

/// A frame about to be recorded (its file is stored already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFrame {
    pub frame: i64,
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// A render with adaptive chunking as the tick's rule reads it
/// (`domain::adapt`): its target, the chunk size in force, the frame time
/// measured before, and its most recently completed chunks' timings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveRender {
    pub render_id: Uuid,
    pub target_seconds: i64,
    pub chunk_size: i64,
    pub measured_frame_seconds: Option<f64>,
    pub completed: Vec<crate::domain::ChunkTiming>,
}

/// A stored task's frames, which were a range when they were written.
pub(crate) fn stored_frames(start: i64, end: i64) -> StoreResult<crate::domain::FrameRange> {
    crate::domain::FrameRange::new(start, end).map_err(|e| {
        StoreError::Unexpected(anyhow::anyhow!(
            "a stored task holds frames {start}-{end}: {}",
            e.message
        ))
    })
}

/// A re-split done: how many pending tasks went and how many came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resplit {
    pub replaced: i64,
    pub created: i64,
}

/// A worker's record with one render's blocklist, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBlocklistEntry {
    pub worker_id: Uuid,
    /// `None` for a worker removed since.
    pub worker_name: Option<String>,
    pub failures: i64,
    pub blocked_at: Option<DateTime<Utc>>,
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

    /// How the renders with `ids` stand now, in the order given (for
    /// `depends_on`; `domain::DependencyState`).
    async fn dependency_states(&self, ids: &[Uuid]) -> StoreResult<Vec<DependencyState>>;

    /// In `order` (`domain::compare_renders`).
    async fn list_renders(
        &self,
        filter: &RenderFilter,
        order: RenderOrder,
        page: PageRequest,
    ) -> StoreResult<Page<Render>>;

    /// The render's tasks, lowest frames first; only those in `status` if given.
    async fn list_tasks(
        &self,
        render_id: Uuid,
        status: Option<TaskStatus>,
        page: PageRequest,
    ) -> StoreResult<Page<Task>>;

    /// Up to `limit` renders that finished before `before` with none of their
    /// chunks still rendering, those that ended first first.
    async fn finished_renders_before(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<Uuid>>;

    /// Deletes a finished render with its tasks, their logs and history
    /// (see `domain::check_deletable`; `IllegalTransition` otherwise). Frames on disk
    /// stay where they are.
    async fn delete_render(&self, id: Uuid) -> StoreResult<()>;

    /// An operator's change of a render's status, with what it does to the
    /// render's tasks. Every task it moves gets a line in its history
    /// (`domain::BulkCause`) naming `actor`, the person who gave the command
    /// (`None` when the broker does not know callers).
    async fn change_render(
        &self,
        id: Uuid,
        command: RenderCommand,
        actor: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Render>;

    /// An operator puts one task back in the queue, by the domain's rule
    /// (`domain::plan_task_requeue`): a finished one runs again from
    /// scratch, a running one is taken from its worker (whose lease is void
    /// from then on), and a finished render is reopened. Its history names
    /// `actor`. A task whose render is being deleted is `IllegalTransition`.
    async fn requeue_one_task(
        &self,
        id: Uuid,
        actor: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Task>;

    async fn get_task(&self, id: Uuid) -> StoreResult<Task>;

    /// Everything the task's workers sent as log, oldest first.
    async fn task_log(&self, id: Uuid) -> StoreResult<String>;

    async fn register_worker(
        &self,
        spec: ValidWorkerSpec,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker>;

    /// The worker, its hours seen at `now` (`domain::availability_view`).
    async fn get_worker(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<Worker>;

    /// In order of registration, their hours seen at `now`.
    async fn list_workers(&self, now: DateTime<Utc>) -> StoreResult<Vec<Worker>>;

    /// Keeps what the worker's agent reports about its hours (at each of its
    /// starts); an operator's hours, if any, stay and win.
    async fn set_worker_hours(
        &self,
        id: Uuid,
        hours: ValidWorkerHours,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker>;

    /// Sets an operator's hours for the worker (canonical form, from
    /// `domain::validate_schedule`), kept until cleared with `None`.
    async fn set_operator_hours(
        &self,
        id: Uuid,
        hours: Option<String>,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker>;

    /// An operator's change of a worker's mode. Disabling a busy worker
    /// puts its task back in the queue; that task's history names `actor`,
    /// the person who did it (`None` when the broker does not know callers).
    async fn change_worker(
        &self,
        id: Uuid,
        action: WorkerAction,
        actor: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker>;

    /// A worker's own change of its mode (`domain::self_transition`): a
    /// drain when its agent stops, marked as its own, and an enable when it
    /// starts again, out of that drain only.
    async fn change_worker_itself(
        &self,
        id: Uuid,
        action: WorkerAction,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker>;

    /// Records that the worker is alive (and its progress, under its lease);
    /// answers whether it should keep rendering the task it names. A worker
    /// whose hours ended and that keeps them strictly
    /// (`domain::hands_back`) hands its task back here: the task is released
    /// to the queue and the answer is `abort`.
    async fn heartbeat(
        &self,
        worker_id: Uuid,
        beat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> StoreResult<HeartbeatAction>;

    /// Hands the worker its next task under a new lease, by the domain's
    /// rules: none outside its hours (`domain::takes_new_work`); in
    /// `domain::CLAIM_ORDER`, only of a render in
    /// `domain::CLAIMABLE_RENDER_STATUSES` whose tags the worker carries
    /// (`domain::carries_tags`). A worker that already holds a running task
    /// gets that one again. `None`: nothing for this worker now.
    async fn claim_next_task(
        &self,
        worker_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Assignment>>;

    /// Applies a worker's report if `lease_id` is the task's current lease
    /// (else `StaleLease` and nothing changes); appends `log` to the task's log.
    async fn report_task(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        report: TaskReport,
        log: Option<String>,
        now: DateTime<Utc>,
    ) -> StoreResult<Task> {
        self.report_task_as(None, task_id, lease_id, report, log, now)
            .await
    }

    /// As [`Store::report_task`], from the worker `holder` when the caller
    /// is known: a current lease held by another worker is `NotYourTask`
    /// and changes nothing (a leaked lease is no credential).
    async fn report_task_as(
        &self,
        holder: Option<Uuid>,
        task_id: Uuid,
        lease_id: Uuid,
        report: TaskReport,
        log: Option<String>,
        now: DateTime<Utc>,
    ) -> StoreResult<Task>;

    /// What happened to the task, oldest first.
    async fn task_history(&self, task_id: Uuid) -> StoreResult<Vec<TaskHistoryEntry>>;

    /// Marks every worker whose last sign of life is at or before `cutoff`
    /// offline, and puts its running task back to pending without counting a
    /// failure (its lease is void from then on).
    async fn requeue_lost_workers(
        &self,
        cutoff: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<LostWorkers>;

    /// Puts failed tasks with a retry left back to pending, one retry more;
    /// fails the render of any failed task with none left (its pending tasks
    /// are canceled, running ones may finish).
    async fn retry_failed_tasks(&self, now: DateTime<Utc>) -> StoreResult<Retries>;

    /// Overdue pending work, running work and idle workers, for preemption.
    async fn preemption_inputs(
        &self,
        allowances: &Allowances,
        now: DateTime<Utc>,
    ) -> StoreResult<PreemptionInputs>;

    /// Takes a running task back for more urgent work, if it still runs under
    /// `lease_id` (`None` when it moved on meanwhile). Not a failure; the
    /// worker's next heartbeat answers abort.
    async fn preempt_task(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<MovedTask>>;

    /// Recounts the counters and status of every unfinished render from its
    /// tasks; returns how many renders were corrected.
    async fn recount_tallies(&self, now: DateTime<Utc>) -> StoreResult<i64>;

    /// Settles the renders whose writing a broker abandoned (it died while
    /// storing one): a render never stored loses the tasks written for it; a
    /// stored one gets its tasks released. Returns how many it settled.
    async fn clear_abandoned_writes(&self, now: DateTime<Utc>) -> StoreResult<i64>;

    /// Moves every waiting render on by its dependencies as they stand
    /// (`domain::waiting_reason`): released when all completed, else its
    /// reason brought up to date; how many were released. A dependency's
    /// change settles its dependents as it is written; this catches what a
    /// broker that died between the two left undone.
    async fn settle_waiting(&self, now: DateTime<Utc>) -> StoreResult<u64>;

    /// The render's blocklist (`domain::after_failure`): every worker with
    /// a failed chunk of it, blocked or not, by worker id. A failed chunk is
    /// counted against its worker as the failure is recorded, and a
    /// blocked worker's claims skip the render.
    async fn blocklist(&self, render: Uuid) -> StoreResult<Vec<StoredBlocklistEntry>>;

    /// An operator clears the render's blocklist, or one worker's entry;
    /// how many entries went.
    async fn clear_blocklist(&self, render: Uuid, worker: Option<Uuid>) -> StoreResult<u64>;

    /// Lifts every block made at or before `blocked_before` (with its
    /// count); how many.
    async fn expire_blocklist(&self, blocked_before: DateTime<Utc>) -> StoreResult<u64>;

    /// What `domain::starved_renders` decides on: the claimable renders with
    /// pending work and a blocked worker, and the workers that are not
    /// disabled and run chunks (none when no render has a block).
    async fn blocklist_starvation_inputs(
        &self,
    ) -> StoreResult<(
        Vec<crate::domain::BlockedRender>,
        Vec<crate::domain::EligibleWorker>,
    )>;

    /// The unfinished renders with adaptive chunking that have a completed
    /// chunk, each with its last `domain::MEASURED_CHUNKS` completed chunks.
    async fn adaptive_renders(&self) -> StoreResult<Vec<AdaptiveRender>>;

    /// Records the render's measured frame time and, with `resplit_to`,
    /// replaces its re-splittable pending tasks (`domain::is_resplittable`,
    /// as they stand at the write: a task claimed meanwhile is left alone)
    /// by chunks of that size (`domain::resplit_ranges`), which becomes its
    /// chunk size in force; its counters move by what went and came. `None`
    /// when nothing was re-split (no such task, or the render finished).
    async fn adapt_chunks(
        &self,
        render: Uuid,
        frame_seconds: f64,
        resplit_to: Option<crate::domain::ChunkSize>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Resplit>>;

    /// Finishes the re-splits a broker left half-done (a store that
    /// re-splits in one transaction has none); how many.
    async fn finish_resplits(&self, now: DateTime<Utc>) -> StoreResult<u64>;

    /// Every path variable (`domain::validate_variable`), by name.
    async fn list_path_variables(&self) -> StoreResult<Vec<renderfarm_wire::PathVariable>>;

    /// Stores the variable, replacing the one of the same name; `true` when
    /// there was none.
    async fn put_path_variable(
        &self,
        variable: renderfarm_wire::PathVariable,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Forgets the variable named `name` (`NotFound` when there is none).
    /// Renders stored with it keep its name; their claims fail until it is
    /// defined again (`domain::PathMappingError`).
    async fn delete_path_variable(&self, name: &str) -> StoreResult<()>;

    /// Fails an unfinished render for `reason` (its pending work canceled,
    /// running chunks may finish), as a task failing for good would.
    async fn fail_render(
        &self,
        render: Uuid,
        reason: String,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Takes the lease `name` for `holder` until `now + ttl` if it is free,
    /// lapsed or already `holder`'s; returns the lease as it stands after.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<LeaderLease>;

    /// Gives the lease up if `holder` has it, so another broker takes over at once.
    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()>;

    /// The lease `name` as it stands, if anyone ever held it.
    async fn current_lease(&self, name: &str) -> StoreResult<Option<LeaderLease>>;

    /// Stores a new token: its hash, never its secret.
    async fn create_token(&self, token: StoredToken) -> StoreResult<StoredToken>;

    /// Every token, oldest first.
    async fn list_tokens(&self) -> StoreResult<Vec<StoredToken>>;

    /// The token whose secret hashes to `hash`, if any (revoked and expired
    /// ones too: the caller says why it refuses them).
    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<StoredToken>>;

    /// Revokes a token from `now` on, and the browser sessions signed in
    /// with it; one revoked already keeps its time.
    async fn revoke_token(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<StoredToken>;

    /// Revokes every secret of the worker; returns how many were live.
    async fn revoke_worker_secrets(&self, worker_id: Uuid, now: DateTime<Utc>) -> StoreResult<u64>;

    /// Forgets a disabled worker (`IllegalTransition` when it is not
    /// disabled: disabling first puts its task back in the queue).
    async fn delete_worker(&self, id: Uuid) -> StoreResult<()>;

    /// Events after `after`, lowest id first, at most `limit`; only those of
    /// `render` when given. Ids are handed out in order, but on a store
    /// several brokers write, one may become visible after a higher one
    /// (see `domain::contiguous_prefix`).
    async fn events_after(
        &self,
        after: i64,
        render: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<FarmEvent>>;

    /// The ids of the events after `after`, lowest first, at most `limit`:
    /// what [`Store::events_after`] would return, without reading the events.
    async fn event_ids_after(&self, after: i64, limit: usize) -> StoreResult<Vec<i64>>;

    /// The event ids kept.
    async fn event_bounds(&self) -> StoreResult<EventBounds>;

    /// Records what is coalesced rather than recorded with each change: a
    /// `progress` event for each running task whose frames done changed
    /// since its last one, a `log` event for each whose log grew, and a
    /// `render` event for each unfinished render whose progress changed.
    /// A store that keeps status events in an outbox with each change
    /// (MongoDB) records them here first: until then they are not visible.
    /// Called about once a `domain::COALESCE_INTERVAL` by every broker;
    /// what it records it records once. Returns how many events it recorded.
    async fn record_coalesced_events(&self, now: DateTime<Utc>) -> StoreResult<u64>;

    /// Deletes events recorded before `before`, and all but the newest
    /// `keep`; returns how many went.
    async fn purge_events(&self, before: DateTime<Utc>, keep: i64) -> StoreResult<u64>;

    /// The counts of the farm summary; `frames_since` counts the frames of
    /// tasks completed since `since`.
    async fn farm_counts(&self, since: DateTime<Utc>) -> StoreResult<FarmCounts>;

    /// Stores a new webhook, secret included (signing needs it).
    async fn create_webhook(&self, hook: StoredWebhook) -> StoreResult<StoredWebhook>;

    /// Every webhook, oldest first.
    async fn list_webhooks(&self) -> StoreResult<Vec<StoredWebhook>>;

    async fn get_webhook(&self, id: Uuid) -> StoreResult<StoredWebhook>;

    /// Forgets a webhook and its deliveries.
    async fn delete_webhook(&self, id: Uuid) -> StoreResult<()>;

    /// Makes a webhook active again with its failures forgotten; deliveries
    /// still pending when it was disabled go out again.
    async fn enable_webhook(&self, id: Uuid) -> StoreResult<StoredWebhook>;

    /// The webhook's deliveries by state.
    async fn webhook_delivery_counts(&self, id: Uuid) -> StoreResult<DeliveryCounts>;

    /// The id of the last event-log entry deliveries were queued for;
    /// `None` before the first queuing.
    async fn webhook_cursor(&self) -> StoreResult<Option<i64>>;

    /// Stores `deliveries` (pending, due at once) and moves the cursor from
    /// `from` to `to`, if it is still at `from`; `false` when it was not
    /// (another broker queued meanwhile). A delivery for a webhook and
    /// event-log entry that has one already is not stored again, so a
    /// queuing that died half-way and is repeated stores each once; one for
    /// a webhook deleted meanwhile is dropped. On SQLite all of it is one
    /// transaction.
    async fn queue_webhook_deliveries(
        &self,
        from: Option<i64>,
        to: i64,
        deliveries: Vec<NewDelivery>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Pending deliveries due at `now` of active webhooks, the longest
    /// due first, at most `limit`.
    async fn due_webhook_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<DueDelivery>>;

    /// Applies what an attempt led to (`domain::plan_attempt`) to the
    /// delivery, if it still has the attempts the record was planned from,
    /// and to its webhook. Returns whether it applied.
    async fn record_webhook_attempt(&self, record: AttemptRecord) -> StoreResult<bool>;

    /// The task, if `lease_id` is its current lease (refused as
    /// [`Store::report_task_as`] refuses, changing nothing): a look before
    /// a worker's upload is taken.
    async fn leased_task(
        &self,
        holder: Option<Uuid>,
        task_id: Uuid,
        lease_id: Uuid,
    ) -> StoreResult<Task>;

    /// Records a frame a worker uploaded under the task's current lease
    /// (refused as [`Store::report_task_as`] refuses, recording nothing); a
    /// frame outside the task is `Invalid`. The same frame again replaces
    /// the record.
    async fn record_frame(
        &self,
        holder: Option<Uuid>,
        task_id: Uuid,
        lease_id: Uuid,
        frame: NewFrame,
        now: DateTime<Utc>,
    ) -> StoreResult<StoredFrame>;

    /// The frames recorded for the render, lowest first; only those of
    /// `start..=end` when given. None for an unknown render.
    async fn render_frames(
        &self,
        render_id: Uuid,
        range: Option<(i64, i64)>,
    ) -> StoreResult<Vec<StoredFrame>>;

    /// Keeps `preview` as the render's preview (replacing the one before)
    /// if `lease_id` is the task's current lease (refused as
    /// [`Store::report_task_as`] refuses, keeping nothing); a frame outside
    /// the task is `Invalid`. Deleted with the render.
    async fn record_preview(
        &self,
        holder: Option<Uuid>,
        task_id: Uuid,
        lease_id: Uuid,
        frame: i64,
        jpeg: Vec<u8>,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// The render's preview, if a worker sent one.
    async fn preview(&self, render_id: Uuid) -> StoreResult<Option<StoredPreview>>;

    /// Records `file` as the render's video, made by its `ffmpeg` task under
    /// the task's current lease (refused as [`Store::report_task_as`]
    /// refuses, recording nothing); a task of another kind is `Invalid`.
    async fn record_video(
        &self,
        holder: Option<Uuid>,
        task_id: Uuid,
        lease_id: Uuid,
        file: renderfarm_wire::FileInfo,
    ) -> StoreResult<()>;

    /// The render's video, once its video task stored one (cleared when the
    /// video is queued to be made again). `NotFound` for an unknown render.
    async fn render_video(&self, render_id: Uuid)
        -> StoreResult<Option<renderfarm_wire::FileInfo>>;

    /// Every file hash a render refers to (uploaded blends, recorded frames
    /// and videos): what the file collector keeps.
    async fn referenced_files(&self) -> StoreResult<BTreeSet<String>>;
}
