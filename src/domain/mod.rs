//! Renders, tasks and workers, and the rules they follow. Pure: no I/O and no
//! clock reads; "now" and thresholds are arguments. Handlers and stores call
//! these functions to decide every status change, and never decide one
//! themselves.

mod adaptive;
mod availability;
mod blocklist;
mod dependency;
pub(crate) mod dispatch;
mod events;
pub mod files;
mod frames;
mod listing;
mod log;
mod path_mapping;
pub mod preview;
mod render;
mod scheduling;
mod tally;
mod task;
mod token;
mod video;
mod warm;
mod webhook;
mod worker;

pub use adaptive::{
    adapt, bulk_rank, desired_chunk_size, is_resplittable, measured_frame_seconds, needs_resplit,
    probe_then_guess, resplit_ranges, validate_chunking, Adaptation, ChunkTiming, Chunking,
    PendingChunk, DEFAULT_TARGET_CHUNK_SECONDS, FIRST_GUESS, MAX_ADAPTED_CHUNK,
    MAX_TARGET_CHUNK_SECONDS, MEASURED_CHUNKS, MIN_TARGET_CHUNK_SECONDS, PROBES,
};
pub use availability::{
    availability_view, hands_back, takes_new_work, validate_schedule, validate_worker_hours,
    Schedule, ValidWorkerHours, WorkerHoursState, HANDED_BACK,
};
pub use blocklist::{
    after_failure, became_blocked, starved_renders, validate_blocklist_after, BlockedRender,
    BlocklistCount, EligibleWorker, DEFAULT_BLOCKLIST_AFTER, MAX_BLOCKLIST_AFTER,
};
pub use dependency::{
    check_dependencies_exist, initial_status, settles_dependents, validate_dependencies,
    waiting_reason, DependencyState, MAX_DEPENDENCIES,
};
pub use dispatch::{
    carries_tags, is_claimable, lease_accepts, ClaimKey, LeaseRefusal, SortOrder, TaskLease,
    CLAIMABLE_RENDER_STATUSES, CLAIMABLE_TASK_STATUS, CLAIM_ORDER, LEASED_TASK_STATUS,
};
pub use events::{
    contiguous_prefix, event_cutoff, resume_from, EventBounds, Resume, COALESCE_INTERVAL,
    EVENTS_KEPT, EVENT_GAP_GRACE, EVENT_RETENTION, SUMMARY_INTERVAL, SUMMARY_RUNNING_LIMIT,
};
pub use frames::{
    chunk, chunk_count, plan_tasks, preview_frames, ChunkSize, FrameRange, PlannedTask,
    MAX_FRAMES_PER_RENDER,
};
pub use listing::{
    compare_progress, compare_renders, default_order, name_matches, status_rank, validate_search,
    RenderOrder, RenderSortKey, MAX_SEARCH_LEN,
};
pub use log::{join_log, log_chunks_to_drop, TASK_LOG_LIMIT, TASK_LOG_TRIMMED};
pub use path_mapping::{
    check_stored_form, for_platform, mappings_for, normalize_value, parse_stored, to_stored,
    uses_variable, validate_variable, validate_variable_name, PathMappingError, MAX_VARIABLES,
    MAX_VARIABLE_NAME_LEN, MAX_VARIABLE_VALUE_LEN,
};
pub use render::{
    check_deletable, render_transition, tasks_affected, BulkCause, NewRender, RenderCommand,
    ValidRenderSpec, FINISHED_RENDER_STATUSES, UNFINISHED_RENDER_STATUSES,
};
pub use renderfarm_wire::{
    Assignment, EventKind, FarmEvent, FarmSummary, HeartbeatAction, ListOrder, Priority, Progress,
    Render, RenderAction, RenderSort, RenderStatus, Task, TaskStatus, Worker, WorkerAction,
    WorkerStatus,
};
pub use scheduling::{
    plan_preemption, workers_wanted, Allowances, OverdueWork, PreemptionPlan, RunningWork,
};
pub use tally::{
    finished_at_after, render_change, tallied_status, tally_after, RenderChange, Tally,
};
pub use task::{
    check_frames_done, heartbeat_task, plan_task_requeue, retries_exhausted, statuses_affected_by,
    task_transition, FramesOutOfRange, Requeue, TaskEvent, TaskReport, TaskRequeue, UnpairedLease,
};
pub use token::{
    csrf_for, csrf_matches, plan_session, plan_token, plan_worker_secret, secret_digest,
    secret_from, secret_hash, secret_matches, NewToken, Role, StoredToken, TokenRefusal,
    MAX_TOKEN_LIFETIME, OWNER_ME, SECRET_PREFIX, SESSION_LIFETIME,
};
pub use video::{
    counts_in_tally, follow_up_kinds, follow_up_on, kind_runnable_in, plan_requeue_of_kind,
    prefers_follow_up, retried_while, runs_chunks, validate_kinds, validate_video, video_status_of,
    MAX_VIDEO_FPS,
};
pub use warm::{ClaimHead, WarmState, WarmTarget, WARM_STREAK_LIMIT};
pub use webhook::{
    forbidden_address, plan_attempt, plan_deliveries, validate_webhook_spec, webhook_event_of,
    webhook_secret_from, webhook_signature, AttemptOutcome, AttemptRecord, DeliveryCounts,
    DeliveryState, DueDelivery, NewDelivery, RetrySchedule, StoredWebhook, ValidWebhookSpec,
    WebhookEvent, WebhookHealth, DELIVERY_TIMEOUT, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
};
pub use worker::{
    claim_permission, heartbeat_action, self_transition, validate_worker_spec, worker_status,
    worker_transition, ClaimPermission, ValidWorkerSpec, WorkerMode, WorkerUnavailable,
    REMOVE_ONLY_DISABLED,
};

/// A request value that breaks a rule; `message` says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A status change that the state machine does not allow from where the
/// thing is now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct IllegalTransition {
    pub message: String,
}

impl IllegalTransition {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Checks a list of tags: few, short, and made of characters that survive a
/// command line and a URL unquoted.
pub(crate) fn validate_tags(
    field: &'static str,
    tags: &[String],
) -> Result<Vec<String>, ValidationError> {
    const MAX_TAGS: usize = 32;
    const MAX_TAG_LEN: usize = 64;
    if tags.len() > MAX_TAGS {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_TAGS} tags are allowed, got {}", tags.len()),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        let ok_chars = tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || !ok_chars {
            return Err(ValidationError::new(
                field,
                format!(
                    "tag {tag:?} is not valid: use 1 to {MAX_TAG_LEN} characters from A-Z, a-z, 0-9, '-', '_', '.', ':'"
                ),
            ));
        }
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// Checks a human-readable name: present, not absurdly long, no control
/// characters.
pub(crate) fn validate_name(field: &'static str, name: &str) -> Result<String, ValidationError> {
    const MAX_NAME_LEN: usize = 200;
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    // Counted before trimming, as the API spec's maxLength counts.
    let length = name.chars().count();
    if length > MAX_NAME_LEN {
        return Err(ValidationError::new(
            field,
            format!("is {length} characters long; use at most {MAX_NAME_LEN}"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters (newlines, tabs, ...)",
        ));
    }
    Ok(trimmed.to_string())
}
