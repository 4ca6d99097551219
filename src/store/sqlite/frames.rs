//! Frames workers uploaded (issue 13): one row per frame of a render, the
//! image itself in the file storage under its hash.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use renderfarm_wire::{FileInfo, Task, TaskKind};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::renders::render_seq;
use super::rows::*;
use super::tasks::{load_leased_task, load_task_by_seq, LeasedTask};
use super::SqliteStore;
use crate::domain::files::check_frame_in_task;
use crate::domain::lease_accepts;
use crate::domain::preview::StoredPreview;
use crate::store::{NewFrame, StoreError, StoreResult, StoredFrame};

fn accepted(
    conn: &Connection,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
) -> StoreResult<LeasedTask> {
    let task = load_leased_task(conn, task_id)?;
    lease_accepts(&task.lease(), lease_id, holder)
        .map_err(|why| StoreError::lease_refused(task_id, why))?;
    Ok(task)
}

pub(super) async fn leased_task(
    store: &SqliteStore,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
) -> StoreResult<Task> {
    store
        .read(move |conn| {
            let task = accepted(conn, holder, task_id, lease_id)?;
            load_task_by_seq(conn, task.seq)
        })
        .await
}

pub(super) async fn record_frame(
    store: &SqliteStore,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
    new: NewFrame,
    now: DateTime<Utc>,
) -> StoreResult<StoredFrame> {
    store
        .write(move |conn| {
            // Checked and written in one write: a lease that went stale
            // before this records nothing.
            let leased = accepted(conn, holder, task_id, lease_id)?;
            if leased.kind != TaskKind::Blender {
                return Err(StoreError::Invalid(format!(
                    "task {task_id} is the {} task of its render, not a chunk of frames; it sends its result with PUT /tasks/{task_id}/video",
                    leased.kind.as_str()
                )));
            }
            let task = load_task_by_seq(conn, leased.seq)?;
            check_frame_in_task(new.frame, task.frame_start, task.frame_end)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            conn.prepare_cached(
                "INSERT INTO frame_files (render_seq, frame, name, sha256, bytes, stored_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (render_seq, frame) DO UPDATE SET name = excluded.name, \
                 sha256 = excluded.sha256, bytes = excluded.bytes, stored_at = excluded.stored_at",
            )?
            .execute(params![
                leased.render_seq,
                new.frame,
                new.name,
                new.sha256,
                new.bytes as i64,
                ts(now),
            ])?;
            Ok(StoredFrame {
                render_id: task.render_id,
                frame: new.frame,
                name: new.name,
                sha256: new.sha256,
                bytes: new.bytes,
                stored_at: now,
            })
        })
        .await
}

pub(super) async fn record_video(
    store: &SqliteStore,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
    file: FileInfo,
) -> StoreResult<()> {
    store
        .write(move |conn| {
            let leased = accepted(conn, holder, task_id, lease_id)?;
            if leased.kind != TaskKind::Ffmpeg {
                return Err(StoreError::Invalid(format!(
                    "task {task_id} is a chunk of frames, not a video task; it uploads frames with PUT /tasks/{task_id}/frames/{{frame}}"
                )));
            }
            conn.prepare_cached(
                "UPDATE renders SET video_sha256 = ?2, video_bytes = ?3 WHERE seq = ?1",
            )?
            .execute(params![leased.render_seq, file.sha256, file.bytes as i64])?;
            Ok(())
        })
        .await
}

pub(super) async fn render_video(
    store: &SqliteStore,
    render_id: Uuid,
) -> StoreResult<Option<FileInfo>> {
    store
        .read(move |conn| {
            let (sha256, bytes): (Option<String>, Option<i64>) = conn
                .prepare_cached(
                    "SELECT video_sha256, video_bytes FROM renders WHERE id = ?1 AND hidden = 0",
                )?
                .query_row([render_id.to_string()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?
                .ok_or_else(|| StoreError::not_found("render", render_id))?;
            Ok(sha256.zip(bytes).map(|(sha256, bytes)| FileInfo {
                sha256,
                bytes: u64::try_from(bytes).unwrap_or(0),
            }))
        })
        .await
}

pub(super) async fn record_preview(
    store: &SqliteStore,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
    frame: i64,
    jpeg: Vec<u8>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    store
        .write(move |conn| {
            let leased = accepted(conn, holder, task_id, lease_id)?;
            let task = load_task_by_seq(conn, leased.seq)?;
            check_frame_in_task(frame, task.frame_start, task.frame_end)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            conn.prepare_cached(
                "INSERT INTO previews (render_seq, task_id, frame, jpeg, stored_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (render_seq) DO UPDATE SET task_id = excluded.task_id, \
                 frame = excluded.frame, jpeg = excluded.jpeg, stored_at = excluded.stored_at",
            )?
            .execute(params![
                leased.render_seq,
                task_id.to_string(),
                frame,
                jpeg,
                ts(now)
            ])?;
            Ok(())
        })
        .await
}

pub(super) async fn preview(
    store: &SqliteStore,
    render_id: Uuid,
) -> StoreResult<Option<StoredPreview>> {
    store
        .read(move |conn| {
            let seq = match render_seq(conn, render_id) {
                Ok(seq) => seq,
                Err(StoreError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let preview = conn
                .prepare_cached(
                    "SELECT task_id, frame, jpeg, stored_at FROM previews WHERE render_seq = ?1",
                )?
                .query_row([seq], |row| {
                    Ok(StoredPreview {
                        render_id,
                        task_id: get_uuid(row, 0)?,
                        frame: row.get(1)?,
                        jpeg: row.get(2)?,
                        stored_at: get_time(row, 3)?,
                    })
                })
                .optional()?;
            Ok(preview)
        })
        .await
}

pub(super) async fn render_frames(
    store: &SqliteStore,
    render_id: Uuid,
    range: Option<(i64, i64)>,
) -> StoreResult<Vec<StoredFrame>> {
    store
        .read(move |conn| {
            let seq = match render_seq(conn, render_id) {
                Ok(seq) => seq,
                Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let (start, end) = range.unwrap_or((i64::MIN, i64::MAX));
            let frames = conn
                .prepare_cached(
                    "SELECT frame, name, sha256, bytes, stored_at FROM frame_files \
                     WHERE render_seq = ?1 AND frame BETWEEN ?2 AND ?3 ORDER BY frame",
                )?
                .query_map(params![seq, start, end], |row| {
                    Ok(StoredFrame {
                        render_id,
                        frame: row.get(0)?,
                        name: row.get(1)?,
                        sha256: row.get(2)?,
                        bytes: row.get::<_, i64>(3)? as u64,
                        stored_at: get_time(row, 4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(frames)
        })
        .await
}

pub(super) async fn referenced_files(store: &SqliteStore) -> StoreResult<BTreeSet<String>> {
    store
        .read(|conn| {
            // Hidden renders too: one being written or deleted still holds
            // its files until it is gone.
            let mut hashes = BTreeSet::new();
            let mut blends = conn.prepare_cached(
                "SELECT DISTINCT blend_sha256 FROM renders WHERE blend_sha256 IS NOT NULL",
            )?;
            for hash in blends.query_map([], |row| row.get::<_, String>(0))? {
                hashes.insert(hash?);
            }
            let mut frames = conn.prepare_cached("SELECT DISTINCT sha256 FROM frame_files")?;
            for hash in frames.query_map([], |row| row.get::<_, String>(0))? {
                hashes.insert(hash?);
            }
            let mut videos = conn.prepare_cached(
                "SELECT DISTINCT video_sha256 FROM renders WHERE video_sha256 IS NOT NULL",
            )?;
            for hash in videos.query_map([], |row| row.get::<_, String>(0))? {
                hashes.insert(hash?);
            }
            Ok(hashes)
        })
        .await
}
