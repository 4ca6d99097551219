//! Dependencies between renders: what a render waits for, and moving it on
//! when what it waits for changes (`domain::waiting_reason`). Every change
//! runs in the writer's transaction that changed the dependency, so a
//! render is released in the same commit as the completion that releases
//! it.

use chrono::{DateTime, Utc};
use renderfarm_wire::RenderStatus;
use rusqlite::{params, Connection};
use uuid::Uuid;

use super::counters::{load_tally, save_tally};
use super::rows::get_enum;
use super::rules::lit;
use crate::domain::{waiting_reason, DependencyState};
use crate::store::StoreResult;

/// Records what the render at `seq` depends on, in the order given.
pub(super) fn insert_dependencies(conn: &Connection, seq: i64, deps: &[Uuid]) -> StoreResult<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO render_dependencies (render_seq, depends_on, position) VALUES (?1, ?2, ?3)",
    )?;
    for (position, dep) in deps.iter().enumerate() {
        insert.execute(params![seq, dep.to_string(), position as i64])?;
    }
    Ok(())
}

/// How the renders with `ids` stand now (a hidden one, half-written or
/// being deleted, counts as missing).
pub(super) fn states_of(conn: &Connection, ids: &[Uuid]) -> StoreResult<Vec<DependencyState>> {
    let mut find =
        conn.prepare_cached("SELECT name, status FROM renders WHERE id = ?1 AND hidden = 0")?;
    ids.iter()
        .map(|id| {
            let mut rows = find.query([id.to_string()])?;
            let found = match rows.next()? {
                Some(row) => Some((row.get(0)?, get_enum(row, 1, RenderStatus::parse)?)),
                None => None,
            };
            Ok(DependencyState { id: *id, found })
        })
        .collect()
}

fn dependencies_of(conn: &Connection, seq: i64) -> StoreResult<Vec<Uuid>> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT depends_on FROM render_dependencies WHERE render_seq = ?1 ORDER BY position",
        )?
        .query_map([seq], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect())
}

/// Moves a waiting render on by its dependencies as they stand: to
/// `queued` when all completed, else to the reason it waits now. A render
/// that is not waiting is left alone. True when it was released.
pub(super) fn settle_render(conn: &Connection, seq: i64, now: DateTime<Utc>) -> StoreResult<bool> {
    let mut state = load_tally(conn, seq)?;
    if state.status != RenderStatus::Waiting {
        return Ok(false);
    }
    let deps = states_of(conn, &dependencies_of(conn, seq)?)?;
    match waiting_reason(&deps) {
        Some(reason) => {
            conn.prepare_cached(
                "UPDATE renders SET waiting_reason = ?2 WHERE seq = ?1 AND waiting_reason IS NOT ?2",
            )?
            .execute(params![seq, reason])?;
            Ok(false)
        }
        None => {
            state.status = RenderStatus::Queued;
            save_tally(conn, state, RenderStatus::Waiting, false, now)?;
            tracing::info!(
                render_seq = seq,
                "render released: its dependencies completed"
            );
            Ok(true)
        }
    }
}

/// Settles every waiting render that depends on the render `id`, after its
/// status changed (or it was deleted).
pub(super) fn settle_dependents(
    conn: &Connection,
    id: &str,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let waiting: Vec<i64> = conn
        .prepare_cached(&format!(
            "SELECT r.seq FROM render_dependencies d JOIN renders r ON r.seq = d.render_seq \
             WHERE d.depends_on = ?1 AND r.status = {}",
            lit(RenderStatus::Waiting)
        ))?
        .query_map([id], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for seq in waiting {
        settle_render(conn, seq, now)?;
    }
    Ok(())
}

/// Settles every waiting render; how many were released. Each move
/// already happens with the change that causes it: this is the scheduler's
/// safety net, and costs one index read while nothing waits.
pub(super) fn settle_all_waiting(conn: &Connection, now: DateTime<Utc>) -> StoreResult<u64> {
    let waiting: Vec<i64> = conn
        .prepare_cached(&format!(
            "SELECT seq FROM renders WHERE status = {} AND hidden = 0",
            lit(RenderStatus::Waiting)
        ))?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut released = 0;
    for seq in waiting {
        released += u64::from(settle_render(conn, seq, now)?);
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use renderfarm_wire::RenderStatus;
    use rusqlite::Connection;

    use crate::store::sqlite::{migrations, SqliteStore, DB_FILE};
    use crate::store::Store;

    /// Migration 15 rebuilds `renders` (a CHECK constraint cannot change in
    /// place): a store written at version 14 keeps every render, task and
    /// frame record, and every reference between them.
    #[tokio::test]
    async fn a_store_from_before_dependencies_keeps_everything_through_the_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4();
        {
            let mut conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
            migrations().to_version(&mut conn, 14).unwrap();
            conn.execute_batch(&format!(
                "INSERT INTO renders (id, name, status, priority, blend_file, frame_start, frame_end, \
                 chunk_size, max_retries, output, tags, tasks_total, tasks_pending, tasks_running, \
                 tasks_completed, tasks_failed, tasks_canceled, frames_total, frames_done, created_at) \
                 VALUES ('{id}', 'old', 'rendering', 1, '/p/old.blend', 1, 2, 1, 1, '/o/f_####', '[]', \
                 2, 1, 0, 1, 0, 0, 2, 1, '2026-11-01T00:00:00.000000Z');
                 INSERT INTO tasks (id, render_seq, priority, frame_start, frame_end, status, frames_done) \
                 VALUES ('{}', 1, 1, 1, 1, 'completed', 1), ('{}', 1, 1, 2, 2, 'pending', 0);
                 INSERT INTO frame_files (render_seq, frame, name, sha256, bytes, stored_at) \
                 VALUES (1, 1, 'f_0001.png', 'ab', 3, '2026-11-01T00:00:00.000000Z');",
                uuid::Uuid::new_v4(),
                uuid::Uuid::new_v4()
            ))
            .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let render = store.get_render(id).await.unwrap();
        assert_eq!(render.status, RenderStatus::Rendering);
        assert_eq!(
            (render.progress.tasks_completed, render.progress.frames_done),
            (1, 1)
        );
        assert_eq!((render.depends_on.len(), render.waiting_reason), (0, None));
        assert_eq!(
            store
                .list_tasks(id, None, Default::default())
                .await
                .unwrap()
                .total,
            2
        );
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let broken: i64 = conn
            .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(broken, 0);
        let frames: i64 = conn
            .query_row("SELECT COUNT(*) FROM frame_files", [], |row| row.get(0))
            .unwrap();
        assert_eq!(frames, 1);
        // The rebuilt table carries the new status.
        conn.execute("UPDATE renders SET status = 'waiting' WHERE seq = 1", [])
            .unwrap();
    }
}
