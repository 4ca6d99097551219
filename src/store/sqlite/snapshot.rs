//! Reading a whole farm out of the embedded store, for `migrate-store`.

use async_trait::async_trait;
use rusqlite::Connection;
use uuid::Uuid;

use super::renders::{load_render, render_seq};
use super::rows::{
    get_enum, get_opt_uuid, get_tags, get_time, get_uuid, history_from_row, hours_from_row,
    task_from_row, HISTORY_OF_TASK, TASK_COLUMNS, TASK_COLUMN_COUNT,
};
use super::SqliteStore;
use crate::domain::WorkerMode;
use crate::store::snapshot::{ExportFarm, RenderRecord, TaskRecord, WorkerRecord};
use crate::store::StoreResult;

#[async_trait]
impl ExportFarm for SqliteStore {
    async fn render_ids(&self) -> StoreResult<Vec<Uuid>> {
        self.read(|conn| {
            Ok(conn
                .prepare("SELECT id FROM renders ORDER BY seq")?
                .query_map([], |row| get_uuid(row, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn export_render(&self, id: Uuid) -> StoreResult<RenderRecord> {
        // One read connection for the whole render: a consistent snapshot of
        // it (SQLite reads see one committed state per transaction).
        self.read(move |conn| {
            conn.execute_batch("BEGIN")?;
            let record = read_render(conn, id);
            conn.execute_batch("COMMIT")?;
            record
        })
        .await
    }

    async fn export_workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        self.read(|conn| {
            Ok(conn
                .prepare(
                    "SELECT id, name, tags, mode, offline, last_heartbeat, registered_at, \
                     time_zone, agent_hours, operator_hours, strict_hours \
                     FROM workers ORDER BY seq",
                )?
                .query_map([], |row| {
                    Ok(WorkerRecord {
                        id: get_uuid(row, 0)?,
                        name: row.get(1)?,
                        tags: get_tags(row, 2)?,
                        mode: get_enum(row, 3, WorkerMode::parse)?,
                        offline: row.get(4)?,
                        last_heartbeat: get_time(row, 5)?,
                        registered_at: get_time(row, 6)?,
                        hours: hours_from_row(row, 7)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

fn read_render(conn: &Connection, id: Uuid) -> StoreResult<RenderRecord> {
    let render = load_render(conn, id)?;
    let seq = render_seq(conn, id)?;
    let failed_for_good: bool = conn.query_row(
        "SELECT failed_for_good FROM renders WHERE seq = ?1",
        [seq],
        |row| row.get(0),
    )?;
    let mut tasks_stmt = conn.prepare(&format!(
        "SELECT {TASK_COLUMNS}, t.lease_id, COALESCE(t.queued_at, r.created_at), t.log_dropped, t.seq, \
         t.claim_rank \
         FROM tasks t JOIN renders r ON r.seq = t.render_seq \
         WHERE t.render_seq = ?1 ORDER BY t.frame_start"
    ))?;
    let mut log_stmt =
        conn.prepare_cached("SELECT text FROM task_logs WHERE task_seq = ?1 ORDER BY seq")?;
    let mut history_stmt = conn.prepare_cached(HISTORY_OF_TASK)?;
    let rows = tasks_stmt
        .query_map([seq], |row| {
            Ok((
                task_from_row(row)?,
                get_opt_uuid(row, TASK_COLUMN_COUNT)?,
                get_time(row, TASK_COLUMN_COUNT + 1)?,
                row.get::<_, i64>(TASK_COLUMN_COUNT + 2)?,
                row.get::<_, i64>(TASK_COLUMN_COUNT + 3)?,
                row.get::<_, i64>(TASK_COLUMN_COUNT + 4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut tasks = Vec::with_capacity(rows.len());
    for (task, lease_id, queued_at, log_dropped, task_seq, claim_rank) in rows {
        let log = log_stmt
            .query_map([task_seq], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let history = history_stmt
            .query_map([task_seq], history_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        tasks.push(TaskRecord {
            task,
            lease_id,
            queued_at,
            log,
            log_dropped,
            history,
            claim_rank,
        });
    }
    Ok(RenderRecord {
        render,
        failed_for_good,
        tasks,
    })
}
