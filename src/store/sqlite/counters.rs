//! A render's tally (counters and the status they give), kept up to date one task move at a time.

use chrono::{DateTime, Utc};
use renderfarm_wire::{HistoryEvent, Progress, RenderStatus, TaskKind, TaskStatus, VideoSpec};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::rules::lit;
use super::{rows::*, tasks::*};
use crate::domain::{counts_in_tally, follow_up_on, settles_dependents, video_status_of};
use crate::domain::{render_change, tally_after, BulkCause, Tally, TaskEvent};
use crate::store::StoreResult;

/// A render's tally: its counters and the status they give, as read and written together.
pub(super) struct RenderTally {
    pub(super) seq: i64,
    pub(super) status: RenderStatus,
    pub(super) progress: Progress,
    pub(super) started_at: Option<String>,
    pub(super) finished_at: Option<String>,
    pub(super) failed_for_good: bool,
}

pub(super) fn load_tally(conn: &Connection, seq: i64) -> StoreResult<RenderTally> {
    Ok(conn
        .prepare_cached(
            "SELECT seq, status, tasks_total, tasks_pending, tasks_running, tasks_completed, \
             tasks_failed, tasks_canceled, frames_total, frames_done, started_at, finished_at, \
             failed_for_good FROM renders WHERE seq = ?1",
        )?
        .query_row([seq], |row| {
            Ok(RenderTally {
                seq: row.get(0)?,
                status: get_enum(row, 1, RenderStatus::parse)?,
                progress: progress_from_row(row, 2)?,
                started_at: row.get(10)?,
                finished_at: row.get(11)?,
                failed_for_good: row.get(12)?,
            })
        })?)
}

/// Writes the render's new counters and the change the domain gives the
/// render for them (`domain::render_change`); `before` is the status the
/// render had when the change began, `task_started` whether a task of it
/// just started running.
pub(super) fn save_tally(
    conn: &Connection,
    mut state: RenderTally,
    before: RenderStatus,
    task_started: bool,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let change = render_change(
        before,
        &Tally {
            status: state.status,
            progress: state.progress,
            started_at: state.started_at.take(),
            finished_at: state.finished_at.take(),
            failed_for_good: state.failed_for_good,
        },
        task_started,
        ts(now),
    );
    let status = change.status;
    if !change.tasks_to_cancel.is_empty() {
        bulk_task_change(
            conn,
            state.seq,
            TaskEvent::Cancel,
            change.tasks_to_cancel,
            BulkCause::RenderFailed,
            None,
            now,
        )?;
        state.progress = count_tally(conn, state.seq, state.progress.frames_total)?;
    }
    let p = &state.progress;
    conn.prepare_cached(
        "UPDATE renders SET status = ?2, tasks_total = ?3, tasks_pending = ?4, tasks_running = ?5, \
         tasks_completed = ?6, tasks_failed = ?7, tasks_canceled = ?8, frames_done = ?9, \
         started_at = ?10, finished_at = ?11, failed_for_good = ?12, \
         waiting_reason = CASE WHEN status = ?2 THEN waiting_reason END, \
         failure_reason = CASE WHEN status = ?2 THEN failure_reason END WHERE seq = ?1",
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
        change.started_at,
        change.finished_at,
        state.failed_for_good,
    ])?;
    if status != before {
        tracing::info!(
            render_seq = state.seq,
            from = before.as_str(),
            to = status.as_str(),
            "render status changed"
        );
        if status == RenderStatus::Completed {
            queue_follow_up(conn, state.seq, before, status, &state.progress, now)?;
        }
        if settles_dependents(before, status) {
            let id: String = conn
                .prepare_cached("SELECT id FROM renders WHERE seq = ?1")?
                .query_row([state.seq], |row| row.get(0))?;
            super::dependencies::settle_dependents(conn, &id, now)?;
        }
    }
    Ok(())
}

/// Queues the follow-up the domain gives a render that just moved from
/// `before` to `after` (`domain::follow_up_on`): its video task, new, or
/// run again from scratch when the render completes again (a worker still
/// on the old attempt finds its lease stale). The video it had is
/// forgotten: the one made from the frames it has now replaces it.
fn queue_follow_up(
    conn: &Connection,
    seq: i64,
    before: RenderStatus,
    after: RenderStatus,
    progress: &Progress,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let (video, priority, start, end): (Option<String>, i64, i64, i64) = conn
        .prepare_cached(
            "SELECT video, priority, frame_start, frame_end FROM renders WHERE seq = ?1",
        )?
        .query_row([seq], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
    let video: Option<VideoSpec> = video.and_then(|v| serde_json::from_str(&v).ok());
    let Some(kind) = follow_up_on(video.as_ref(), before, after, progress) else {
        return Ok(());
    };
    let existing: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT seq, worker_id FROM tasks WHERE render_seq = ?1 AND kind = ?2")?
        .query_row(params![seq, kind.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let pending = TaskStatus::Pending;
    match existing {
        Some((task_seq, worker)) => {
            conn.prepare_cached(
                "UPDATE tasks SET status = ?2, retries = 0, worker_id = NULL, lease_id = NULL, \
                 frames_done = 0, exit_code = NULL, failure_reason = NULL, started_at = NULL, \
                 finished_at = NULL, queued_at = ?3 WHERE seq = ?1",
            )?
            .execute(params![task_seq, pending.as_str(), ts(now)])?;
            record_history(
                conn,
                task_seq,
                HistoryEvent::Requeued,
                worker.as_deref(),
                Some("its render completed again: the video is made again from its frames"),
                None,
                now,
            )?;
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO tasks (id, render_seq, priority, frame_start, frame_end, status, queued_at, kind) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                Uuid::now_v7().to_string(),
                seq,
                priority,
                start,
                end,
                pending.as_str(),
                ts(now),
                kind.as_str()
            ])?;
        }
    }
    conn.prepare_cached(
        "UPDATE renders SET video_status = ?2, video_sha256 = NULL, video_bytes = NULL WHERE seq = ?1",
    )?
    .execute(params![seq, pending.as_str()])?;
    Ok(())
}

/// Moves the counters of a render after one of its tasks moved.
/// A follow-up (`domain::counts_in_tally`) moves no counter: the
/// render's `video_status` follows it instead.
#[allow(clippy::too_many_arguments)]
pub(super) fn tally_task_move(
    conn: &Connection,
    render_seq: i64,
    kind: TaskKind,
    from: TaskStatus,
    to: TaskStatus,
    frames_delta: i64,
    failed_for_good: bool,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    if !counts_in_tally(kind) {
        if from != to {
            conn.prepare_cached("UPDATE renders SET video_status = ?2 WHERE seq = ?1")?
                .execute(params![
                    render_seq,
                    video_status_of(kind, to).map(|s| s.as_str())
                ])?;
        }
        return Ok(());
    }
    let mut state = load_tally(conn, render_seq)?;
    state.progress = tally_after(state.progress, Some(from), to, frames_delta);
    state.failed_for_good |= failed_for_good;
    let before = state.status;
    save_tally(conn, state, before, to == TaskStatus::Running, now)
}

/// Recounts a render's counters from its tasks, after a change to many.
pub(super) fn count_tally(
    conn: &Connection,
    render_seq: i64,
    frames_total: i64,
) -> StoreResult<Progress> {
    let mut progress = Progress {
        frames_total,
        ..Progress::default()
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT status, COUNT(*), SUM(frames_done) FROM tasks WHERE render_seq = ?1 AND kind = {} GROUP BY status",
        lit(TaskKind::Blender)
    ))?;
    let mut rows = stmt.query([render_seq])?;
    while let Some(row) = rows.next()? {
        let status = get_enum(row, 0, TaskStatus::parse)?;
        let count: i64 = row.get(1)?;
        let frames: i64 = row.get(2)?;
        progress = (0..count).fold(progress, |p, _| tally_after(p, None, status, 0));
        progress.frames_done += frames;
    }
    Ok(progress)
}
