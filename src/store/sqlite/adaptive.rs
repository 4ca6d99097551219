//! Adaptive chunking: what the tick measures, and the re-split of a
//! render's pending tasks, in one write transaction (the writer's), so a
//! claim sees either the old tasks or the new ones and never both.

use chrono::{DateTime, Utc};
use renderfarm_wire::{FrameOrder, RenderStatus, TaskKind, TaskStatus};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use uuid::Uuid;

use super::rules::*;
use super::{rows::*, *};
use crate::domain::{
    bulk_rank, is_resplittable, resplit_ranges, ChunkSize, ChunkTiming, FrameRange, PendingChunk,
    MEASURED_CHUNKS, UNFINISHED_RENDER_STATUSES,
};
use crate::store::{stored_frames, AdaptiveRender, Resplit, StoreError, StoreResult};

pub(super) async fn adaptive_renders(store: &SqliteStore) -> StoreResult<Vec<AdaptiveRender>> {
    store
        .read(|conn| {
            let renders: Vec<(i64, AdaptiveRender)> = conn
                .prepare_cached(&format!(
                    "SELECT seq, id, target_chunk_seconds, chunk_size, measured_frame_seconds \
                     FROM renders WHERE target_chunk_seconds IS NOT NULL AND hidden = 0 \
                     AND status {} AND tasks_completed > 0",
                    is_in(UNFINISHED_RENDER_STATUSES)
                ))?
                .query_map([], |row| {
                    Ok((
                        row.get(0)?,
                        AdaptiveRender {
                            render_id: get_uuid(row, 1)?,
                            target_seconds: row.get(2)?,
                            chunk_size: row.get(3)?,
                            measured_frame_seconds: row.get(4)?,
                            completed: Vec::new(),
                        },
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut timings = conn.prepare_cached(&format!(
                "SELECT frame_end - frame_start + 1, started_at, finished_at FROM tasks \
                 WHERE render_seq = ?1 AND status = {} AND kind = {} \
                 AND started_at IS NOT NULL AND finished_at IS NOT NULL \
                 ORDER BY finished_at DESC LIMIT ?2",
                lit(TaskStatus::Completed),
                lit(TaskKind::Blender)
            ))?;
            let mut out = Vec::with_capacity(renders.len());
            for (seq, mut render) in renders {
                render.completed = timings
                    .query_map(params![seq, MEASURED_CHUNKS], |row| {
                        let frames: i64 = row.get(0)?;
                        let took = get_time(row, 2)? - get_time(row, 1)?;
                        Ok(ChunkTiming {
                            frames,
                            seconds: took.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                out.push(render);
            }
            Ok(out)
        })
        .await
}

pub(super) async fn adapt_chunks(
    store: &SqliteStore,
    render: Uuid,
    frame_seconds: f64,
    resplit_to: Option<ChunkSize>,
    now: DateTime<Utc>,
) -> StoreResult<Option<Resplit>> {
    store
        .write(move |conn| {
            let Some((seq, status, priority, start, end, order)) = conn
                .prepare_cached(
                    "SELECT seq, status, priority, frame_start, frame_end, frame_order FROM renders \
                     WHERE id = ?1 AND hidden = 0 AND target_chunk_seconds IS NOT NULL",
                )?
                .query_row([render.to_string()], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        get_enum(row, 1, RenderStatus::parse)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, i64>(4)?,
                        get_enum(row, 5, FrameOrder::parse)?,
                    ))
                })
                .optional()?
            else {
                return Err(StoreError::not_found("render with adaptive chunking", render));
            };
            conn.prepare_cached("UPDATE renders SET measured_frame_seconds = ?2 WHERE seq = ?1")?
                .execute(params![seq, frame_seconds])?;
            let Some(size) = resplit_to else {
                return Ok(None);
            };
            if !UNFINISHED_RENDER_STATUSES.contains(&status) {
                return Ok(None);
            }
            let bulk = bulk_rank(stored_frames(start, end)?, order);
            let replaced = resplittable_tasks(conn, seq, bulk)?;
            if replaced.is_empty() {
                return Ok(None);
            }
            let ranges: Vec<FrameRange> = replaced.iter().map(|t| t.1.frames).collect();
            let queued_at = replaced
                .iter()
                .map(|t| t.2.clone())
                .filter(|q| !q.is_empty())
                .min()
                .unwrap_or_else(|| ts(now));
            let seqs: Vec<i64> = replaced.iter().map(|t| t.0).collect();
            let list = vec!["?"; seqs.len()].join(",");
            // Never handed out, so there is no log; the history of their
            // queueing goes with them.
            conn.execute(
                &format!("DELETE FROM task_history WHERE task_seq IN ({list})"),
                params_from_iter(&seqs),
            )?;
            conn.execute(
                &format!("DELETE FROM task_logs WHERE task_seq IN ({list})"),
                params_from_iter(&seqs),
            )?;
            conn.execute(
                &format!("DELETE FROM tasks WHERE seq IN ({list})"),
                params_from_iter(&seqs),
            )?;
            let chunks = resplit_ranges(&ranges, size);
            let mut insert = conn.prepare_cached(&format!(
                "INSERT INTO tasks (id, render_seq, priority, frame_start, frame_end, status, \
                 queued_at, claim_rank) VALUES (?1, ?2, ?3, ?4, ?5, {}, ?6, ?7)",
                lit(TaskStatus::Pending)
            ))?;
            for chunk in &chunks {
                insert.execute(params![
                    Uuid::now_v7().to_string(),
                    seq,
                    priority,
                    chunk.start(),
                    chunk.end(),
                    queued_at,
                    bulk
                ])?;
            }
            let outcome = Resplit {
                replaced: seqs.len() as i64,
                created: chunks.len() as i64,
            };
            let delta = outcome.created - outcome.replaced;
            conn.prepare_cached(
                "UPDATE renders SET tasks_total = tasks_total + ?2, \
                 tasks_pending = tasks_pending + ?2, chunk_size = ?3 WHERE seq = ?1",
            )?
            .execute(params![seq, delta, size.get()])?;
            tracing::info!(
                render_seq = seq,
                replaced = outcome.replaced,
                created = outcome.created,
                chunk_size = size.get(),
                "pending chunks re-split to the measured frame time"
            );
            Ok(Some(outcome))
        })
        .await
}

/// The render's pending chunks that a re-split may replace: row key,
/// the chunk, and when it was queued.
fn resplittable_tasks(
    conn: &Connection,
    seq: i64,
    bulk: i64,
) -> StoreResult<Vec<(i64, PendingChunk, String)>> {
    type Row = (i64, i64, i64, i64, bool, i64, Option<String>);
    let rows: Vec<Row> = conn
        .prepare_cached(&format!(
            "SELECT seq, frame_start, frame_end, claim_rank, worker_id IS NOT NULL, retries, \
             queued_at FROM tasks WHERE render_seq = ?1 AND status = {} AND kind = {}",
            lit(TaskStatus::Pending),
            lit(TaskKind::Blender)
        ))?
        .query_map([seq], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for (task_seq, start, end, rank, handed_out, retries, queued_at) in rows {
        let chunk = PendingChunk {
            frames: stored_frames(start, end)?,
            rank,
            handed_out,
            retries,
        };
        if is_resplittable(&chunk, bulk) {
            out.push((task_seq, chunk, queued_at.unwrap_or_default()));
        }
    }
    Ok(out)
}

/// One transaction leaves nothing half-done.
pub(super) async fn finish_resplits(_store: &SqliteStore, _now: DateTime<Utc>) -> StoreResult<u64> {
    Ok(0)
}
