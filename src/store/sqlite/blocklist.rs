//! The blocklist (`domain::after_failure`): a worker's failed chunks of one
//! render, counted in the transaction that records the failure, and the
//! claim's check that keeps a blocked worker off the render.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::counters::{load_tally, save_tally};
use super::renders::render_seq;
use super::rows::{get_kinds, get_tags, get_uuid, ts};
use super::rules::{is_in, lit};
use super::SqliteStore;
use crate::domain::{
    after_failure, became_blocked, runs_chunks, BlockedRender, BlocklistCount, EligibleWorker,
    WorkerMode, CLAIMABLE_RENDER_STATUSES,
};
use crate::store::{StoreResult, StoredBlocklistEntry};

/// The claim's condition on a render `r` for the worker `worker` (a
/// parameter): not blocked from it. One read of the partial index, empty
/// while nobody is blocked.
pub(super) fn not_blocked(worker: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM blocklist b WHERE b.worker_id = {worker} \
         AND b.render_seq = r.seq AND b.blocked_at IS NOT NULL)"
    )
}

/// Counts a failed chunk of the render at `seq` against `worker`.
pub(super) fn record_failure(
    conn: &Connection,
    seq: i64,
    worker: &str,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let threshold: i64 = conn
        .prepare_cached("SELECT blocklist_after FROM renders WHERE seq = ?1")?
        .query_row([seq], |row| row.get(0))?;
    let before = conn
        .prepare_cached(
            "SELECT failures, blocked_at FROM blocklist WHERE render_seq = ?1 AND worker_id = ?2",
        )?
        .query_row(params![seq, worker], |row| {
            Ok(BlocklistCount {
                failures: row.get(0)?,
                blocked_at: row.get::<_, Option<String>>(1)?,
            })
        })
        .optional()?;
    let after = after_failure(before.clone(), threshold, ts(now));
    conn.prepare_cached(
        "INSERT INTO blocklist (render_seq, worker_id, failures, blocked_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (render_seq, worker_id) DO UPDATE SET failures = ?3, blocked_at = ?4",
    )?
    .execute(params![seq, worker, after.failures, after.blocked_at])?;
    if became_blocked(before.as_ref(), &after) {
        tracing::warn!(
            render_seq = seq,
            worker_id = worker,
            failures = after.failures,
            "worker blocklisted from the render"
        );
    }
    Ok(())
}

pub(super) async fn blocklist(
    store: &SqliteStore,
    render: Uuid,
) -> StoreResult<Vec<StoredBlocklistEntry>> {
    store
        .read(move |conn| {
            let seq = render_seq(conn, render)?;
            let mut stmt = conn.prepare_cached(
                "SELECT b.worker_id, w.name, b.failures, b.blocked_at FROM blocklist b \
                 LEFT JOIN workers w ON w.id = b.worker_id WHERE b.render_seq = ?1 ORDER BY b.worker_id",
            )?;
            let rows = stmt.query_map([seq], |row| {
                Ok(StoredBlocklistEntry {
                    worker_id: get_uuid(row, 0)?,
                    worker_name: row.get(1)?,
                    failures: row.get(2)?,
                    blocked_at: super::rows::get_opt_time(row, 3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
}

pub(super) async fn clear_blocklist(
    store: &SqliteStore,
    render: Uuid,
    worker: Option<Uuid>,
) -> StoreResult<u64> {
    store
        .write(move |conn| {
            let seq = render_seq(conn, render)?;
            let cleared = match worker {
                Some(w) => conn
                    .prepare_cached(
                        "DELETE FROM blocklist WHERE render_seq = ?1 AND worker_id = ?2",
                    )?
                    .execute(params![seq, w.to_string()])?,
                None => conn
                    .prepare_cached("DELETE FROM blocklist WHERE render_seq = ?1")?
                    .execute([seq])?,
            };
            Ok(cleared as u64)
        })
        .await
}

pub(super) async fn expire_blocklist(
    store: &SqliteStore,
    blocked_before: DateTime<Utc>,
) -> StoreResult<u64> {
    store
        .write(move |conn| {
            Ok(conn
                .prepare_cached(
                    "DELETE FROM blocklist WHERE blocked_at IS NOT NULL AND blocked_at <= ?1",
                )?
                .execute([ts(blocked_before)])? as u64)
        })
        .await
}

pub(super) async fn blocklist_starvation_inputs(
    store: &SqliteStore,
) -> StoreResult<(Vec<BlockedRender>, Vec<EligibleWorker>)> {
    store
        .read(move |conn| {
            let mut renders: Vec<BlockedRender> = Vec::new();
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT r.id, r.tags, b.worker_id FROM blocklist b JOIN renders r ON r.seq = b.render_seq \
                 WHERE b.blocked_at IS NOT NULL AND r.hidden = 0 AND r.tasks_pending > 0 AND r.status {} \
                 ORDER BY r.seq",
                is_in(CLAIMABLE_RENDER_STATUSES)
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let id = get_uuid(row, 0)?;
                let worker = get_uuid(row, 2)?;
                match renders.last_mut() {
                    Some(last) if last.id == id => {
                        last.blocked.insert(worker);
                    }
                    _ => renders.push(BlockedRender {
                        id,
                        tags: get_tags(row, 1)?,
                        blocked: [worker].into(),
                    }),
                }
            }
            if renders.is_empty() {
                return Ok((renders, Vec::new()));
            }
            let mut workers = Vec::new();
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT id, name, tags, kinds FROM workers WHERE mode <> {}",
                lit(WorkerMode::Disabled)
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                if runs_chunks(&get_kinds(row, 3)?) {
                    workers.push(EligibleWorker {
                        id: get_uuid(row, 0)?,
                        name: row.get(1)?,
                        tags: get_tags(row, 2)?,
                    });
                }
            }
            Ok((renders, workers))
        })
        .await
}

pub(super) async fn fail_render(
    store: &SqliteStore,
    render: Uuid,
    reason: String,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    store
        .write(move |conn| {
            let seq = render_seq(conn, render)?;
            let mut state = load_tally(conn, seq)?;
            let before = state.status;
            if before.is_finished() {
                return Ok(());
            }
            state.failed_for_good = true;
            save_tally(conn, state, before, false, now)?;
            conn.prepare_cached("UPDATE renders SET failure_reason = ?2 WHERE seq = ?1")?
                .execute(params![seq, reason])?;
            tracing::warn!(render_id = %render, %reason, "render failed by the scheduler");
            Ok(())
        })
        .await
}
