//! Row mapping: the columns each query selects and the values they become.

use std::sync::LazyLock;

use chrono::{DateTime, SecondsFormat, Utc};
use renderfarm_wire::{
    Assignment, HistoryEvent, Platform, Priority, Progress, Render, RenderStatus, Task,
    TaskHistoryEntry, TaskKind, TaskStatus, VideoSpec, Worker,
};
use rusqlite::types::Type;
use rusqlite::Row;
use uuid::Uuid;

use super::rules::*;
use crate::domain::LEASED_TASK_STATUS;
use crate::domain::{availability_view, worker_status, WorkerHoursState, WorkerMode};
use crate::store::PageRequest;

pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(super) fn conversion_error(idx: usize, what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        idx,
        Type::Text,
        format!("{what} {value:?} in the database is not valid").into(),
    )
}

pub(super) fn get_time(row: &Row, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let s: String = row.get(idx)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| conversion_error(idx, "timestamp", &s))
}

pub(super) fn get_opt_time(row: &Row, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    match row.get_ref(idx)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => get_time(row, idx).map(Some),
    }
}

pub(super) fn get_uuid(row: &Row, idx: usize) -> rusqlite::Result<Uuid> {
    let s: String = row.get(idx)?;
    Uuid::parse_str(&s).map_err(|_| conversion_error(idx, "id", &s))
}

pub(super) fn get_opt_uuid(row: &Row, idx: usize) -> rusqlite::Result<Option<Uuid>> {
    let s: Option<String> = row.get(idx)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|_| conversion_error(idx, "id", &s)))
        .transpose()
}

pub(super) fn get_enum<T>(
    row: &Row,
    idx: usize,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    parse(&s).ok_or_else(|| conversion_error(idx, "status", &s))
}

pub(super) fn get_tags(row: &Row, idx: usize) -> rusqlite::Result<Vec<String>> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|_| conversion_error(idx, "tags", &s))
}

pub(super) fn get_video(row: &Row, idx: usize) -> rusqlite::Result<Option<VideoSpec>> {
    let s: Option<String> = row.get(idx)?;
    s.map(|s| serde_json::from_str(&s).map_err(|_| conversion_error(idx, "video", &s)))
        .transpose()
}

pub(super) fn video_json(video: Option<&VideoSpec>) -> Option<String> {
    video.map(|v| serde_json::to_string(v).expect("a video spec serializes"))
}

pub(super) fn get_kinds(row: &Row, idx: usize) -> rusqlite::Result<Vec<TaskKind>> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|_| conversion_error(idx, "kinds", &s))
}

pub(super) fn kinds_json(kinds: &[TaskKind]) -> String {
    serde_json::to_string(kinds).expect("kinds serialize")
}

pub(super) fn get_kind(row: &Row, idx: usize) -> rusqlite::Result<TaskKind> {
    get_enum(row, idx, TaskKind::parse)
}

pub(super) fn tags_json(tags: &[String]) -> String {
    serde_json::Value::from(tags.to_vec()).to_string()
}

pub(super) const RENDER_COLUMNS: &str =
    "r.id, r.name, r.status, r.priority, r.blend_file, r.frame_start, \
     r.frame_end, r.chunk_size, r.max_retries, r.output, r.engine, r.tags, r.tasks_total, \
     r.tasks_pending, r.tasks_running, r.tasks_completed, r.tasks_failed, r.tasks_canceled, \
     r.frames_total, r.frames_done, r.created_at, r.started_at, r.finished_at, r.owner, \
     r.blend_sha256, r.upload_frames, r.video, r.video_status, r.waiting_reason, r.frame_order, \
     r.blocklist_after, r.failure_reason, r.target_chunk_seconds, r.measured_frame_seconds, \
     (SELECT json_group_array(d.depends_on) FROM (SELECT depends_on FROM render_dependencies \
      WHERE render_seq = r.seq ORDER BY position) d)";

pub(super) fn progress_from_row(row: &Row, first: usize) -> rusqlite::Result<Progress> {
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

pub(super) fn render_from_row(row: &Row) -> rusqlite::Result<Render> {
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
        owner: row.get(23)?,
        blend_sha256: row.get(24)?,
        upload_frames: row.get(25)?,
        video: get_video(row, 26)?,
        video_status: row
            .get::<_, Option<String>>(27)?
            .map(|s| TaskStatus::parse(&s).ok_or_else(|| conversion_error(27, "video status", &s)))
            .transpose()?,
        waiting_reason: row.get(28)?,
        frame_order: get_enum(row, 29, renderfarm_wire::FrameOrder::parse)?,
        blocklist_after: row.get(30)?,
        failure_reason: row.get(31)?,
        chunk_size_auto: row.get::<_, Option<i64>>(32)?.is_some(),
        target_chunk_seconds: row.get(32)?,
        measured_frame_seconds: row.get(33)?,
        depends_on: {
            let ids: String = row.get(34)?;
            serde_json::from_str(&ids).map_err(|_| conversion_error(34, "dependencies", &ids))?
        },
    })
}

pub(super) const TASK_COLUMNS: &str =
    "t.id, r.id, t.frame_start, t.frame_end, t.status, t.retries, \
     t.worker_id, t.frames_done, t.exit_code, t.failure_reason, t.started_at, t.finished_at, t.kind";

/// How many columns [`TASK_COLUMNS`] selects: a query's own come after.
pub(super) const TASK_COLUMN_COUNT: usize = 13;

pub(super) fn task_from_row(row: &Row) -> rusqlite::Result<Task> {
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
        kind: get_kind(row, 12)?,
    })
}

/// A worker's columns, with the task it is rendering.
pub(super) static WORKER_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "w.id, w.name, w.mode, w.offline, w.tags, w.last_heartbeat, w.registered_at, \
         (SELECT t.id FROM tasks t WHERE t.worker_id = w.id AND t.status = {} LIMIT 1), w.kinds, \
         w.time_zone, w.agent_hours, w.operator_hours, w.strict_hours, w.platform",
        lit(LEASED_TASK_STATUS)
    )
});

/// A worker's hours as stored, from the columns at `first` onwards (time
/// zone, agent's, operator's, strict).
pub(super) fn hours_from_row(row: &Row, first: usize) -> rusqlite::Result<WorkerHoursState> {
    Ok(WorkerHoursState {
        time_zone: row.get(first)?,
        agent: row.get(first + 1)?,
        operator: row.get(first + 2)?,
        strict: row.get(first + 3)?,
    })
}

/// A worker from a row of [`WORKER_COLUMNS`], its hours seen at `now`.
pub(super) fn worker_from_row(row: &Row, now: DateTime<Utc>) -> rusqlite::Result<Worker> {
    let mode = get_enum(row, 2, WorkerMode::parse)?;
    let offline: bool = row.get(3)?;
    let current_task_id = get_opt_uuid(row, 7)?;
    let hours = hours_from_row(row, 9)?;
    Ok(Worker {
        availability: availability_view(&hours, now),
        time_zone: hours.time_zone,
        id: get_uuid(row, 0)?,
        name: row.get(1)?,
        status: worker_status(mode, offline, current_task_id.is_some()),
        tags: get_tags(row, 4)?,
        last_heartbeat: get_time(row, 5)?,
        current_task_id,
        registered_at: get_time(row, 6)?,
        kinds: get_kinds(row, 8)?,
        platform: get_enum(row, 13, Platform::parse)?,
    })
}

/// A task's history, oldest first, by the task's row key.
pub(super) const HISTORY_OF_TASK: &str =
    "SELECT at, event, worker_id, detail, actor FROM task_history WHERE task_seq = ?1 ORDER BY seq";

pub(super) fn history_from_row(row: &Row) -> rusqlite::Result<TaskHistoryEntry> {
    Ok(TaskHistoryEntry {
        at: get_time(row, 0)?,
        event: get_enum(row, 1, HistoryEvent::parse)?,
        worker_id: get_opt_uuid(row, 2)?,
        detail: row.get(3)?,
        actor: row.get(4)?,
    })
}

pub(super) const ASSIGNMENT_COLUMNS: &str =
    "t.id, r.id, t.lease_id, r.blend_file, t.frame_start, t.frame_end, r.output, r.engine, \
     r.blend_sha256, r.upload_frames, t.kind, r.video";

pub(super) fn assignment_from_row(row: &Row) -> rusqlite::Result<Assignment> {
    Ok(Assignment {
        task_id: get_uuid(row, 0)?,
        render_id: get_uuid(row, 1)?,
        lease_id: get_uuid(row, 2)?,
        blend_file: row.get(3)?,
        frame_start: row.get(4)?,
        frame_end: row.get(5)?,
        output: row.get(6)?,
        engine: row.get(7)?,
        blend_sha256: row.get(8)?,
        upload_frames: row.get(9)?,
        kind: get_kind(row, 10)?,
        video: get_video(row, 11)?,
        inputs: Vec::new(),
        path_mappings: Vec::new(),
    })
}

pub(super) fn page_bounds(page: PageRequest) -> (i64, i64) {
    (
        page.limit.clamp(0, PageRequest::MAX_LIMIT),
        page.offset.max(0),
    )
}
