//! Tasks: claims, reports under the lease, logs and history.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use renderfarm_wire::{Assignment, HistoryEvent, Page, Task, TaskHistoryEntry, TaskStatus};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::rules::*;
use super::{counters::*, renders::*, rows::*, workers::*, *};
use crate::domain::{
    check_frames_done, claim_permission, counts_in_tally, join_log, lease_accepts,
    log_chunks_to_drop, plan_requeue_of_kind, takes_new_work, tally_after, task_transition,
    BulkCause, ClaimPermission, IllegalTransition, Requeue, TaskEvent, TaskLease, TaskReport,
    TASK_LOG_LIMIT,
};
use crate::domain::{
    follow_up_kinds, kind_runnable_in, prefers_follow_up, runs_chunks, ClaimHead, Priority,
    WarmState,
};
use crate::domain::{
    ClaimKey, CLAIMABLE_RENDER_STATUSES, CLAIMABLE_TASK_STATUS, LEASED_TASK_STATUS,
};
use crate::store::{PageRequest, StoreError, StoreResult};
use renderfarm_wire::{RenderStatus, TaskKind};

pub(super) fn load_task_by_seq(conn: &Connection, seq: i64) -> StoreResult<Task> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks t JOIN renders r ON r.seq = t.render_seq WHERE t.seq = ?1"
        ))?
        .query_row([seq], task_from_row)?)
}

/// Applies `event` to every task of the render that is in one of `from`;
/// each gets a line in its history saying why (`cause`) and who did it
/// (`actor`), naming the worker the task keeps (none when it runs again).
pub(super) fn bulk_task_change(
    conn: &Connection,
    render_seq: i64,
    event: TaskEvent,
    from: &[TaskStatus],
    cause: BulkCause,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let (history_event, detail) = cause.history(event);
    // Commands on a render move its chunks; its follow-up (its video) is
    // the render's result, queued again when the render completes again.
    let chunk = lit(TaskKind::Blender);
    for status in from {
        let to = task_transition(*status, event)?;
        let worker = if to == TaskStatus::Pending {
            "NULL"
        } else {
            "worker_id"
        };
        // Written before the change, which moves them out of `status`: the
        // same tasks, in one transaction.
        conn.prepare_cached(&format!(
            "INSERT INTO task_history (task_seq, at, event, worker_id, detail, actor) \
             SELECT seq, ?3, ?4, {worker}, ?5, ?6 FROM tasks WHERE render_seq = ?1 AND status = ?2 AND kind = {chunk}"
        ))?
        .execute(params![
            render_seq,
            status.as_str(),
            ts(now),
            history_event.as_str(),
            detail,
            actor
        ])?;
        let sql = if to == TaskStatus::Pending {
            // A task run again starts from scratch, with no worker and no lease.
            format!("UPDATE tasks SET status = ?3, retries = 0, worker_id = NULL, lease_id = NULL, \
             frames_done = 0, exit_code = NULL, failure_reason = NULL, started_at = NULL, \
             finished_at = NULL, queued_at = ?4 WHERE render_seq = ?1 AND status = ?2 AND kind = {chunk}")
        } else {
            format!("UPDATE tasks SET status = ?3, finished_at = ?4 WHERE render_seq = ?1 AND status = ?2 AND kind = {chunk}")
        };
        conn.prepare_cached(&sql)?.execute(params![
            render_seq,
            status.as_str(),
            to.as_str(),
            ts(now)
        ])?;
    }
    Ok(())
}

/// What a lease-guarded report needs to know about the task it names.
pub(super) struct LeasedTask {
    pub(super) seq: i64,
    pub(super) render_seq: i64,
    pub(super) status: TaskStatus,
    pub(super) lease_id: Option<String>,
    pub(super) worker_id: Option<String>,
    pub(super) frames: i64,
    pub(super) frames_done: i64,
    pub(super) retries: i64,
    pub(super) max_retries: i64,
    pub(super) kind: TaskKind,
}

impl LeasedTask {
    /// What the domain's lease rule needs (an unreadable id matches no lease).
    pub(super) fn lease(&self) -> TaskLease {
        let id = |s: &Option<String>| s.as_deref().and_then(|s| Uuid::parse_str(s).ok());
        TaskLease {
            status: self.status,
            lease_id: id(&self.lease_id),
            worker_id: id(&self.worker_id),
        }
    }
}

pub(super) fn load_leased_task(conn: &Connection, id: Uuid) -> StoreResult<LeasedTask> {
    conn.prepare_cached(
        "SELECT t.seq, t.render_seq, t.status, t.lease_id, t.worker_id, t.frame_end - t.frame_start + 1, \
         t.frames_done, t.retries, r.max_retries, t.kind FROM tasks t JOIN renders r ON r.seq = t.render_seq \
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
            kind: get_kind(row, 9)?,
        })
    })
    .optional()?
    .ok_or_else(|| StoreError::not_found("task", id))
}

/// Records how many frames of a running task are done.
pub(super) fn record_progress(
    conn: &Connection,
    task: &LeasedTask,
    frames_done: i64,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    check_frames_done(frames_done, task.frames).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.prepare_cached("UPDATE tasks SET frames_done = ?2 WHERE seq = ?1")?
        .execute(params![task.seq, frames_done])?;
    let delta = frames_done - task.frames_done;
    tally_task_move(
        conn,
        task.render_seq,
        task.kind,
        task.status,
        task.status,
        delta,
        false,
        now,
    )
}

/// Appends a chunk to the task's log, then drops old chunks if the log
/// outgrew its bound (see `domain::log_chunks_to_drop`).
pub(super) fn append_log(conn: &Connection, task_seq: i64, log: Option<&str>) -> StoreResult<()> {
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

/// A pending chunk a claim may take, with its and its render's row numbers.
pub(super) struct PendingChunk {
    pub(super) task_seq: i64,
    pub(super) render_seq: i64,
    pub(super) priority: Priority,
    pub(super) assignment: Assignment,
}

/// Reads a [`PendingChunk`] from a row laid out as [`CLAIMABLE_RENDERS`]'
/// columns followed by [`FIRST_CLAIMABLE_CHUNK`]'s, from `chunk_at` on.
fn pending_chunk(
    render: &rusqlite::Row,
    chunk: &rusqlite::Row,
    chunk_at: usize,
) -> rusqlite::Result<PendingChunk> {
    let priority: i64 = render.get(1)?;
    Ok(PendingChunk {
        task_seq: chunk.get(chunk_at)?,
        render_seq: render.get(0)?,
        priority: Priority::from_rank(priority)
            .ok_or_else(|| rusqlite::Error::IntegralValueOutOfRange(1, priority))?,
        assignment: Assignment {
            task_id: get_uuid(chunk, chunk_at + 1)?,
            render_id: get_uuid(render, 2)?,
            lease_id: Uuid::new_v4(),
            blend_file: render.get(3)?,
            frame_start: chunk.get(chunk_at + 2)?,
            frame_end: chunk.get(chunk_at + 3)?,
            output: render.get(4)?,
            engine: render.get(5)?,
            blend_sha256: render.get(6)?,
            upload_frames: render.get(7)?,
            kind: TaskKind::Blender,
            video: None,
            inputs: Vec::new(),
            path_mappings: Vec::new(),
        },
    })
}

/// The first pending follow-up (of one of `kinds`) of a completed render
/// the worker with tags `worker_tags` (JSON) may take, by priority then age.
fn first_follow_up(
    conn: &Connection,
    worker_tags: &str,
    kinds: &[TaskKind],
) -> StoreResult<Option<PendingChunk>> {
    let mut first: Option<PendingChunk> = None;
    for kind in kinds {
        let found = conn
            .prepare_cached(&FIRST_FOLLOW_UP)?
            .query_row(params![kind.as_str(), worker_tags], |row| {
                let mut chunk = pending_chunk(row, row, CLAIMABLE_RENDER_COLUMNS)?;
                chunk.assignment.kind = *kind;
                chunk.assignment.video = get_video(row, CLAIMABLE_RENDER_COLUMNS + 4)?;
                Ok(chunk)
            })
            .optional()?;
        if let Some(found) = found {
            if first.as_ref().is_none_or(|f| found.priority > f.priority) {
                first = Some(found);
            }
        }
    }
    Ok(first)
}

/// The first chunk in claim order a worker with `worker_tags` (JSON) may
/// take: the renders first (only the unfinished ones with pending work, by
/// priority then age), then the chosen render's lowest pending chunk. Going
/// through the renders means a paused or canceled render's pending chunks
/// are never walked, however many there are.
fn first_pending_chunk(
    conn: &Connection,
    worker_tags: &str,
    worker_id: &str,
) -> StoreResult<Option<PendingChunk>> {
    let mut renders = conn.prepare_cached(&CLAIMABLE_RENDERS)?;
    let mut rows = renders.query([worker_tags, worker_id])?;
    let mut first_chunk = conn.prepare_cached(&FIRST_CLAIMABLE_CHUNK)?;
    // The first render has a pending chunk unless its counter drifted (the
    // scheduler's recount repairs it); then the next render is tried.
    while let Some(render) = rows.next()? {
        let render_seq: i64 = render.get(0)?;
        let priority: i64 = render.get(1)?;
        let chunk = first_chunk
            .query_row(params![priority, render_seq], |chunk| {
                pending_chunk(render, chunk, 0)
            })
            .optional()?;
        if chunk.is_some() {
            return Ok(chunk);
        }
    }
    Ok(None)
}

/// The chunk a worker should take next, and the worker's warm state after
/// taking it: the first in claim order (the head), unless the worker's warm
/// preference (`domain::WarmState::target`) names its last render and that
/// render has a claimable chunk at the head's priority. That costs one more
/// indexed lookup, and only when the worker is warm on another render than
/// the head.
pub(super) fn next_pending_task(
    conn: &Connection,
    worker_tags: &str,
    worker_id: &str,
    warm: WarmState<i64>,
) -> StoreResult<Option<(PendingChunk, WarmState<i64>)>> {
    let Some(head) = first_pending_chunk(conn, worker_tags, worker_id)? else {
        return Ok(None);
    };
    let target = warm.target(&ClaimHead {
        render: head.render_seq,
        priority: head.priority,
    });
    if let Some(target) = target {
        let warm_chunk = conn
            .prepare_cached(&WARM_CHUNK)?
            .query_row(
                params![
                    target.priority.rank(),
                    target.render,
                    worker_tags,
                    worker_id
                ],
                |row| pending_chunk(row, row, CLAIMABLE_RENDER_COLUMNS),
            )
            .optional()?;
        if let Some(chunk) = warm_chunk {
            let after = warm.after_claim(chunk.render_seq, true);
            return Ok(Some((chunk, after)));
        }
    }
    let after = warm.after_claim(head.render_seq, false);
    Ok(Some((head, after)))
}

/// Appends one line to a task's history; `actor` is the person who did it,
/// if a person did.
pub(super) fn record_history(
    conn: &Connection,
    task_seq: i64,
    event: HistoryEvent,
    worker_id: Option<&str>,
    detail: Option<&str>,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO task_history (task_seq, at, event, worker_id, detail, actor) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        task_seq,
        ts(now),
        event.as_str(),
        worker_id,
        detail,
        actor
    ])?;
    Ok(())
}

/// Takes a running task from its worker without counting a failure; the
/// history says why (`event`, `detail`) and who did it (`actor`, when a
/// person did).
pub(super) fn requeue_task(
    conn: &Connection,
    task: &LeasedTask,
    why: &Requeue,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let (event, detail) = why.history();
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
        Some(&detail),
        actor,
        now,
    )?;
    tally_task_move(
        conn,
        task.render_seq,
        task.kind,
        task.status,
        to,
        -task.frames_done,
        false,
        now,
    )
}

pub(super) async fn requeue_one_task(
    store: &SqliteStore,
    id: Uuid,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Task> {
    let actor = actor.map(str::to_string);
    store
        .write(move |conn| {
            let task = load_leased_task(conn, id)?;
            let hidden: bool = conn
                .prepare_cached("SELECT hidden FROM renders WHERE seq = ?1")?
                .query_row([task.render_seq], |row| row.get(0))?;
            if hidden {
                return Err(IllegalTransition::new(
                    "its render is being deleted (or was never stored whole); nothing of it runs again",
                )
                .into());
            }
            let mut state = load_tally(conn, task.render_seq)?;
            let plan = plan_requeue_of_kind(task.kind, task.status, state.status, &state.progress)?;
            let to = task_transition(task.status, plan.event)?;
            // From scratch, as a render's requeue starts its tasks.
            conn.prepare_cached(
                "UPDATE tasks SET status = ?2, retries = 0, worker_id = NULL, lease_id = NULL, \
                 frames_done = 0, exit_code = NULL, failure_reason = NULL, started_at = NULL, \
                 finished_at = NULL, queued_at = ?3 WHERE seq = ?1",
            )?
            .execute(params![task.seq, to.as_str(), ts(now)])?;
            let (event, detail) = plan.history();
            record_history(
                conn,
                task.seq,
                event,
                task.worker_id.as_deref(),
                Some(detail),
                actor.as_deref(),
                now,
            )?;
            if !counts_in_tally(task.kind) {
                tally_task_move(conn, task.render_seq, task.kind, task.status, to, 0, false, now)?;
                tracing::info!(task_id = %id, kind = task.kind.as_str(), "operator requeued a follow-up");
                return load_task_by_seq(conn, task.seq);
            }
            let before = state.status;
            state.progress = tally_after(state.progress, Some(task.status), to, -task.frames_done);
            if let Some(status) = plan.reopen_render {
                state.status = status;
                state.started_at = None;
                state.failed_for_good = false;
            }
            save_tally(conn, state, before, false, now)?;
            tracing::info!(task_id = %id, "operator requeued a task");
            load_task_by_seq(conn, task.seq)
        })
        .await
}

pub(super) async fn list_tasks(
    store: &SqliteStore,
    render_id: Uuid,
    status: Option<TaskStatus>,
    page: PageRequest,
) -> StoreResult<Page<Task>> {
    store
        .read(move |conn| {
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

pub(super) async fn get_task(store: &SqliteStore, id: Uuid) -> StoreResult<Task> {
    store.read(move |conn| {
        conn.prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks t JOIN renders r ON r.seq = t.render_seq WHERE t.id = ?1"
        ))?
        .query_row([id.to_string()], task_from_row)
        .optional()?
        .ok_or_else(|| StoreError::not_found("task", id))
    })
    .await
}

pub(super) async fn task_log(store: &SqliteStore, id: Uuid) -> StoreResult<String> {
    store
        .read(move |conn| {
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

pub(super) async fn claim_next_task(
    store: &SqliteStore,
    worker_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<Option<Assignment>> {
    store
        .write(move |conn| {
            let worker = mark_alive(conn, worker_id, now)?;
            let held = conn
                .prepare_cached(&HELD_ASSIGNMENT)?
                .query_row([worker_id.to_string()], assignment_from_row)
                .optional()?;
            if held.is_some() {
                return Ok(held);
            }
            if claim_permission(worker.mode)? == ClaimPermission::NoNewWork
                || !takes_new_work(&worker.hours, now)
            {
                return Ok(None);
            }
            let follow_up = first_follow_up(conn, &worker.tags, &follow_up_kinds(&worker.kinds))?;
            let chunk = match follow_up {
                // A follow-up at the head's priority or above goes first
                // (`domain::prefers_follow_up`), the warm preference aside.
                Some(f) => {
                    let head = match runs_chunks(&worker.kinds) {
                        true => first_pending_chunk(conn, &worker.tags, &worker_id.to_string())?,
                        false => None,
                    };
                    if prefers_follow_up(f.priority, head.as_ref().map(|h| h.priority)) {
                        Some(f)
                    } else {
                        None
                    }
                }
                None => None,
            };
            let chunk = match chunk {
                Some(f) => f,
                None if !runs_chunks(&worker.kinds) => return Ok(None),
                None => {
                    let Some((chunk, warm)) =
                        next_pending_task(conn, &worker.tags, &worker_id.to_string(), worker.warm)?
                    else {
                        return Ok(None);
                    };
                    if warm != worker.warm {
                        save_warm_state(conn, worker_id, warm)?;
                    }
                    chunk
                }
            };
            let PendingChunk {
                task_seq,
                render_seq,
                assignment,
                ..
            } = chunk;
            let to = task_transition(TaskStatus::Pending, TaskEvent::Claim)?;
            let lease = assignment.lease_id;
            conn.prepare_cached(
                "UPDATE tasks SET status = ?2, worker_id = ?3, lease_id = ?4, frames_done = 0, \
             started_at = ?5, finished_at = NULL WHERE seq = ?1",
            )?
            .execute(params![
                task_seq,
                to.as_str(),
                worker_id.to_string(),
                lease.to_string(),
                ts(now)
            ])?;
            tally_task_move(
                conn,
                render_seq,
                assignment.kind,
                TaskStatus::Pending,
                to,
                0,
                false,
                now,
            )?;
            record_history(
                conn,
                task_seq,
                HistoryEvent::Assigned,
                Some(&worker_id.to_string()),
                None,
                None,
                now,
            )?;
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

pub(super) async fn report_task(
    store: &SqliteStore,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
    report: TaskReport,
    log: Option<String>,
    now: DateTime<Utc>,
) -> StoreResult<Task> {
    store.write(move |conn| {
        let task = load_leased_task(conn, task_id)?;
        lease_accepts(&task.lease(), lease_id, holder)
            .map_err(|why| StoreError::lease_refused(task_id, why))?;
        match &report {
            TaskReport::Progress { frames_done } => record_progress(conn, &task, *frames_done, now)?,
            TaskReport::Complete => {
                let to = task_transition(task.status, TaskEvent::Complete)?;
                conn.prepare_cached(
                    "UPDATE tasks SET status = ?2, frames_done = ?3, finished_at = ?4 WHERE seq = ?1",
                )?
                .execute(params![task.seq, to.as_str(), task.frames, ts(now)])?;
                tally_task_move(conn, task.render_seq, task.kind, task.status, to, task.frames - task.frames_done, false, now)?;
                record_history(conn, task.seq, HistoryEvent::Completed, task.worker_id.as_deref(), None, None, now)?;
            }
            TaskReport::Release => requeue_task(conn, &task, &Requeue::Released, None, now)?,
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
                tally_task_move(conn, task.render_seq, task.kind, task.status, to, -task.frames_done, failed_for_good, now)?;
                let detail = match exit_code {
                    Some(code) => format!("exit code {code}"),
                    None => "no exit code".to_string(),
                };
                record_history(conn, task.seq, HistoryEvent::Failed, task.worker_id.as_deref(), Some(&detail), None, now)?;
                if let (TaskKind::Blender, Some(worker)) = (task.kind, task.worker_id.as_deref()) {
                    super::blocklist::record_failure(conn, task.render_seq, worker, now)?;
                }
            }
        }
        append_log(conn, task.seq, log.as_deref())?;
        load_task_by_seq(conn, task.seq)
    })
    .await
}

pub(super) async fn task_history(
    store: &SqliteStore,
    task_id: Uuid,
) -> StoreResult<Vec<TaskHistoryEntry>> {
    store
        .read(move |conn| {
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

/// The assignment a worker holds already, if any.
static HELD_ASSIGNMENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM tasks t JOIN renders r ON r.seq = t.render_seq \
         WHERE t.worker_id = ?1 AND t.status = {} LIMIT 1",
        lit(LEASED_TASK_STATUS)
    )
});

/// How many columns [`CLAIMABLE_RENDERS`] selects.
const CLAIMABLE_RENDER_COLUMNS: usize = 8;

/// The renders whose pending work the worker with tags `?1` (JSON) may
/// claim, in claim order.
static CLAIMABLE_RENDERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CLAIMABLE_RENDER_SELECT} FROM renders r WHERE {} ORDER BY {}",
        claimable_render("?1", "?2"),
        claim_order(render_column),
    )
});

/// What a claim reads of a render, [`CLAIMABLE_RENDER_COLUMNS`] columns.
const CLAIMABLE_RENDER_SELECT: &str = "r.seq, r.priority, r.id, r.blend_file, r.output, r.engine, \
     r.blend_sha256, r.upload_frames";

/// The render `r` has pending work the worker `worker` with tags `tags`
/// (JSON) may claim: it carries the tags and is not blocklisted.
fn claimable_render(tags: &str, worker: &str) -> String {
    format!(
        "r.status {} AND r.tasks_pending > 0 AND r.hidden = 0 AND {} AND {}",
        is_in(CLAIMABLE_RENDER_STATUSES),
        carries_tags(tags, "r.tags"),
        super::blocklist::not_blocked(worker),
    )
}

/// The first claimable chunk of the render `?2` (of priority `?1`, which
/// the claim index leads with).
static FIRST_CLAIMABLE_CHUNK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT t.seq, t.id, t.frame_start, t.frame_end FROM tasks t \
         WHERE t.status = {} AND t.priority = ?1 AND t.render_seq = ?2 AND t.kind = {} \
         ORDER BY {} LIMIT 1",
        lit(CLAIMABLE_TASK_STATUS),
        lit(TaskKind::Blender),
        chunk_order(),
    )
});

/// The first pending follow-up of kind `?1` the worker with tags `?2` may
/// take: of a render whose status lets that kind run
/// (`domain::kind_runnable_in`), by priority then age; the render's
/// columns, then the task's, then the render's video. Through the partial
/// index `tasks_follow_up`, empty while no follow-up waits.
static FIRST_FOLLOW_UP: LazyLock<String> = LazyLock::new(|| {
    let runnable: Vec<RenderStatus> = RenderStatus::ALL
        .into_iter()
        .filter(|s| kind_runnable_in(TaskKind::Ffmpeg, *s))
        .collect();
    format!(
        "SELECT {CLAIMABLE_RENDER_SELECT}, t.seq, t.id, t.frame_start, t.frame_end, r.video \
         FROM tasks t JOIN renders r ON r.seq = t.render_seq \
         WHERE t.kind = ?1 AND t.kind <> {} AND t.status = {} AND r.status {} AND r.hidden = 0 AND {} \
         ORDER BY {} LIMIT 1",
        lit(TaskKind::Blender),
        lit(CLAIMABLE_TASK_STATUS),
        is_in(&runnable),
        carries_tags("?2", "r.tags"),
        claim_order(|key| {
            // A render's one follow-up: its rank and frames do not matter.
            (!matches!(key, ClaimKey::Rank | ClaimKey::FrameStart))
                .then(|| task_column(key))
                .flatten()
        }),
    )
});

/// The claim order within one render.
fn chunk_order() -> String {
    claim_order(|key| {
        matches!(key, ClaimKey::Rank | ClaimKey::FrameStart)
            .then(|| task_column(key))
            .flatten()
    })
}

/// A warm target (`domain::WarmTarget`): the first claimable chunk of the
/// render `?2` at priority `?1`, if that render is claimable by the worker
/// with tags `?3` and id `?4` (not blocklisted from it); the render's columns, then the chunk's. One render by its
/// key, then the claim index by (status, priority, render).
static WARM_CHUNK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CLAIMABLE_RENDER_SELECT}, t.seq, t.id, t.frame_start, t.frame_end \
         FROM renders r JOIN tasks t ON t.render_seq = r.seq AND t.priority = r.priority \
         WHERE r.seq = ?2 AND r.priority = ?1 AND {} AND t.status = {} AND t.kind = {} \
         ORDER BY {} LIMIT 1",
        claimable_render("?3", "?4"),
        lit(CLAIMABLE_TASK_STATUS),
        lit(TaskKind::Blender),
        chunk_order(),
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_lookup_reads_renders_as_the_claim_walk_does_through_two_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrations().to_latest(&mut conn).unwrap();
        let columns = |sql: &str| conn.prepare(sql).unwrap().column_count();
        assert_eq!(columns(&CLAIMABLE_RENDERS), CLAIMABLE_RENDER_COLUMNS);
        assert_eq!(columns(&WARM_CHUNK), CLAIMABLE_RENDER_COLUMNS + 4);
        assert_eq!(columns(&FIRST_CLAIMABLE_CHUNK), 4);
        // One render by its key, its chunks by the claim index: never a scan
        // of a table (the tag match walks the two JSON arrays only).
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", *WARM_CHUNK))
            .unwrap()
            .query_map(params![1, 2, "[]", "w"], |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let steps = plan.join("\n");
        assert!(steps.contains("USING INTEGER PRIMARY KEY"), "{steps}");
        assert!(steps.contains("USING INDEX tasks_claim"), "{steps}");
        // The blocklist check is one keyed search, never a scan.
        assert!(steps.contains("SEARCH b USING"), "{steps}");
        assert!(
            !plan
                .iter()
                .any(|s| s.starts_with("SCAN") && !s.contains("VIRTUAL TABLE")),
            "{steps}"
        );
    }
}
