//! The event log on SQLite. Status changes are recorded by triggers, so that
//! every path that changes a status records its event in the same
//! transaction (a `kill -9` keeps both or neither); the triggers are made
//! from the domain's values at every start (`install_triggers`). Progress,
//! logs and render tallies are recorded from the stored state by
//! `record_coalesced_events`.

use chrono::{DateTime, Utc};
use renderfarm_wire::{
    EventKind, FarmEvent, Priority, Progress, RenderStatus, TaskKind, TaskStatus,
};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::rows::*;
use super::rules::*;
use super::SqliteStore;
use crate::domain::{
    worker_status, EventBounds, WorkerMode, CLAIMABLE_RENDER_STATUSES, LEASED_TASK_STATUS,
    UNFINISHED_RENDER_STATUSES,
};
use crate::store::{add_runnable, FarmCounts, StoreResult};

/// The time SQLite records a triggered event at, in the store's fixed-width
/// timestamp format (`rows::ts`: microseconds, `Z`).
const NOW: &str = "(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')";

/// Rows deleted per write when purging, so that the writer never stalls.
const PURGE_BATCH: i64 = 10_000;

/// A render's `Progress` as JSON, from the row `r` (field names as the wire's).
fn progress_json(r: &str) -> String {
    format!(
        "json_object('tasks_total', {r}.tasks_total, 'tasks_pending', {r}.tasks_pending, \
         'tasks_running', {r}.tasks_running, 'tasks_completed', {r}.tasks_completed, \
         'tasks_failed', {r}.tasks_failed, 'tasks_canceled', {r}.tasks_canceled, \
         'frames_total', {r}.frames_total, 'frames_done', {r}.frames_done)"
    )
}

/// `domain::worker_status` of the worker row `w`, as a CASE over every
/// combination of its inputs (so SQL restates nothing).
fn worker_status_sql(w: &str) -> String {
    let busy = format!(
        "EXISTS (SELECT 1 FROM tasks t WHERE t.worker_id = {w}.id AND t.status = {})",
        lit(LEASED_TASK_STATUS)
    );
    let mut arms = String::new();
    for mode in WorkerMode::ALL {
        for offline in [false, true] {
            for has_task in [false, true] {
                arms.push_str(&format!(
                    " WHEN {w}.mode = {} AND {w}.offline = {} AND ({busy}) = {} THEN '{}'",
                    lit(mode),
                    offline as i32,
                    has_task as i32,
                    worker_status(mode, offline, has_task).as_str()
                ));
            }
        }
    }
    format!("CASE{arms} END")
}

/// The statements that (re)create the triggers.
fn trigger_sql() -> String {
    let render = lit(EventKind::Render);
    let render_deleted = lit(EventKind::RenderDeleted);
    let task = lit(EventKind::Task);
    let worker = lit(EventKind::Worker);
    let worker_deleted = lit(EventKind::WorkerDeleted);
    let running = lit(LEASED_TASK_STATUS);
    let new_progress = progress_json("NEW");
    let new_worker_status = worker_status_sql("NEW");
    let render_event = format!(
        "INSERT INTO events (at, kind, render_id, status, progress) \
           VALUES ({NOW}, {render}, NEW.id, NEW.status, {new_progress}); \
         UPDATE renders SET seen_progress = {new_progress} WHERE seq = NEW.seq;"
    );
    let worker_event = format!(
        "INSERT INTO events (at, kind, worker_id, status) VALUES ({NOW}, {worker}, NEW.id, {new_worker_status});"
    );
    format!(
        "DROP TRIGGER IF EXISTS events_render_shown;
         CREATE TRIGGER events_render_shown AFTER UPDATE OF hidden ON renders
           WHEN OLD.hidden = 1 AND NEW.hidden = 0
           BEGIN {render_event} END;
         DROP TRIGGER IF EXISTS events_render_status;
         CREATE TRIGGER events_render_status AFTER UPDATE OF status ON renders
           WHEN OLD.status IS NOT NEW.status AND NEW.hidden = 0
           BEGIN {render_event} END;
         DROP TRIGGER IF EXISTS events_render_hidden;
         CREATE TRIGGER events_render_hidden AFTER UPDATE OF hidden ON renders
           WHEN OLD.hidden = 0 AND NEW.hidden = 1
           BEGIN INSERT INTO events (at, kind, render_id) VALUES ({NOW}, {render_deleted}, NEW.id); END;
         DROP TRIGGER IF EXISTS events_render_deleted;
         CREATE TRIGGER events_render_deleted AFTER DELETE ON renders
           WHEN OLD.hidden = 0
           BEGIN INSERT INTO events (at, kind, render_id) VALUES ({NOW}, {render_deleted}, OLD.id); END;
         DROP TRIGGER IF EXISTS events_task_status;
         CREATE TRIGGER events_task_status AFTER UPDATE OF status ON tasks
           WHEN OLD.status IS NOT NEW.status AND (OLD.status = {running} OR NEW.status = {running})
           BEGIN
             INSERT INTO events (at, kind, render_id, task_id, worker_id, status, frames_done)
               VALUES ({NOW}, {task}, (SELECT id FROM renders WHERE seq = NEW.render_seq), NEW.id,
                       COALESCE(NEW.worker_id, OLD.worker_id), NEW.status, NEW.frames_done);
             UPDATE tasks SET seen_frames_done = NEW.frames_done WHERE seq = NEW.seq;
           END;
         DROP TRIGGER IF EXISTS events_worker_added;
         CREATE TRIGGER events_worker_added AFTER INSERT ON workers
           BEGIN {worker_event} END;
         DROP TRIGGER IF EXISTS events_worker_changed;
         CREATE TRIGGER events_worker_changed AFTER UPDATE OF mode, offline ON workers
           WHEN OLD.mode IS NOT NEW.mode OR OLD.offline IS NOT NEW.offline
           BEGIN {worker_event} END;
         DROP TRIGGER IF EXISTS events_worker_deleted;
         CREATE TRIGGER events_worker_deleted AFTER DELETE ON workers
           BEGIN INSERT INTO events (at, kind, worker_id) VALUES ({NOW}, {worker_deleted}, OLD.id); END;"
    )
}

/// Creates the triggers as the domain's values give them now.
pub(super) fn install_triggers(conn: &Connection) -> StoreResult<()> {
    conn.execute_batch(&format!("BEGIN; {} COMMIT;", trigger_sql()))?;
    Ok(())
}

const EVENT_COLUMNS: &str =
    "id, at, kind, render_id, task_id, worker_id, status, frames_done, progress, log_bytes";

fn event_from_row(row: &rusqlite::Row) -> rusqlite::Result<FarmEvent> {
    let mut event = FarmEvent::new(
        row.get(0)?,
        get_time(row, 1)?,
        get_enum(row, 2, EventKind::parse)?,
    );
    event.render_id = get_opt_uuid(row, 3)?;
    event.task_id = get_opt_uuid(row, 4)?;
    event.worker_id = get_opt_uuid(row, 5)?;
    event.status = row.get(6)?;
    event.frames_done = row.get(7)?;
    let progress: Option<String> = row.get(8)?;
    event.progress = progress
        .map(|p| {
            serde_json::from_str::<Progress>(&p).map_err(|_| conversion_error(8, "progress", &p))
        })
        .transpose()?;
    event.log_bytes = row.get(9)?;
    Ok(event)
}

pub(super) async fn events_after(
    store: &SqliteStore,
    after: i64,
    render: Option<Uuid>,
    limit: usize,
) -> StoreResult<Vec<FarmEvent>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store
        .read(move |conn| {
            let events = match render {
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"
                    ))?
                    .query_map(params![after, limit], event_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                Some(render) => conn
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE render_id = ?3 AND id > ?1 \
                         ORDER BY id LIMIT ?2"
                    ))?
                    .query_map(params![after, limit, render.to_string()], event_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(events)
        })
        .await
}

pub(super) async fn event_ids_after(
    store: &SqliteStore,
    after: i64,
    limit: usize,
) -> StoreResult<Vec<i64>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store
        .read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT id FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?
                .query_map(params![after, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()?)
        })
        .await
}

pub(super) async fn event_bounds(store: &SqliteStore) -> StoreResult<EventBounds> {
    store
        .read(|conn| {
            let oldest: Option<i64> =
                conn.query_row("SELECT MIN(id) FROM events", [], |r| r.get(0))?;
            let newest: Option<i64> = conn
                .query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(EventBounds {
                oldest,
                newest: newest.unwrap_or(0),
            })
        })
        .await
}

pub(super) async fn record_coalesced_events(
    store: &SqliteStore,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    let running = lit(LEASED_TASK_STATUS);
    let unfinished = is_in(UNFINISHED_RENDER_STATUSES);
    let progress = progress_json("r");
    let tasks = "FROM tasks t JOIN renders r ON r.seq = t.render_seq";
    // Each: what changed since its last event, the event that tells it,
    // and the mark that it was told.
    let changed_frames = format!("t.status = {running} AND t.frames_done <> t.seen_frames_done");
    let changed_log =
        format!("t.status = {running} AND t.log_bytes + t.log_dropped <> t.seen_log_total");
    let changed_tally =
        format!("r.hidden = 0 AND r.status {unfinished} AND r.seen_progress IS NOT {progress}");
    let steps = [
        (
            format!(
                "INSERT INTO events (at, kind, render_id, task_id, worker_id, frames_done) \
                 SELECT ?1, {}, r.id, t.id, t.worker_id, t.frames_done {tasks} \
                 WHERE {changed_frames} ORDER BY t.seq",
                lit(EventKind::Progress)
            ),
            format!("UPDATE tasks AS t SET seen_frames_done = frames_done WHERE {changed_frames}"),
        ),
        (
            format!(
                "INSERT INTO events (at, kind, render_id, task_id, worker_id, log_bytes) \
                 SELECT ?1, {}, r.id, t.id, t.worker_id, t.log_bytes {tasks} \
                 WHERE {changed_log} ORDER BY t.seq",
                lit(EventKind::Log)
            ),
            format!(
                "UPDATE tasks AS t SET seen_log_total = log_bytes + log_dropped WHERE {changed_log}"
            ),
        ),
        (
            format!(
                "INSERT INTO events (at, kind, render_id, status, progress) \
                 SELECT ?1, {}, r.id, r.status, {progress} FROM renders r \
                 WHERE {changed_tally} ORDER BY r.seq",
                lit(EventKind::Render)
            ),
            format!("UPDATE renders AS r SET seen_progress = {progress} WHERE {changed_tally}"),
        ),
    ];
    let at = ts(now);
    store
        .write(move |conn| {
            let mut recorded = 0;
            for (record, mark) in &steps {
                recorded += conn.prepare_cached(record)?.execute([&at])? as u64;
                conn.prepare_cached(mark)?.execute([])?;
            }
            Ok(recorded)
        })
        .await
}

pub(super) async fn purge_events(
    store: &SqliteStore,
    before: DateTime<Utc>,
    keep: i64,
) -> StoreResult<u64> {
    let before = ts(before);
    let mut purged = 0;
    loop {
        let before = before.clone();
        let deleted = store
            .write(move |conn| {
                // The first event still young enough (ids and times rise together).
                let young: Option<i64> = conn
                    .prepare_cached("SELECT id FROM events WHERE at >= ?1 ORDER BY at LIMIT 1")?
                    .query_row([&before], |r| r.get(0))
                    .optional()?;
                let Some((oldest, newest)) = conn
                    .prepare_cached("SELECT MIN(id), MAX(id) FROM events")?
                    .query_row([], |r| {
                        Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
                    })
                    .map(|(a, b)| a.zip(b))?
                else {
                    return Ok(0);
                };
                let threshold = young
                    .unwrap_or(newest + 1)
                    .min(newest - keep + 1)
                    .min(oldest + PURGE_BATCH);
                Ok(conn
                    .prepare_cached("DELETE FROM events WHERE id < ?1")?
                    .execute([threshold])? as u64)
            })
            .await?;
        purged += deleted;
        if deleted == 0 {
            return Ok(purged);
        }
    }
}

pub(super) async fn farm_counts(
    store: &SqliteStore,
    since: DateTime<Utc>,
) -> StoreResult<FarmCounts> {
    let queue_sql = format!(
        "SELECT priority, COALESCE(SUM(tasks_pending), 0) FROM renders \
         WHERE hidden = 0 AND status {} GROUP BY priority",
        is_in(CLAIMABLE_RENDER_STATUSES)
    );
    let frames_sql = format!(
        "SELECT COALESCE(SUM(frames_done), 0) FROM tasks WHERE status = {} AND finished_at >= ?1",
        lit(renderfarm_wire::TaskStatus::Completed)
    );
    let runnable_sql = format!(
        "SELECT tags, SUM(tasks_pending) FROM renders \
         WHERE hidden = 0 AND tasks_pending > 0 AND status {} GROUP BY tags",
        is_in(CLAIMABLE_RENDER_STATUSES)
    );
    // `domain::kind_runnable_in` for the follow-ups: a completed render's.
    let follow_ups_sql = format!(
        "SELECT r.tags, t.kind, COUNT(*) FROM tasks t JOIN renders r ON r.seq = t.render_seq \
         WHERE t.kind <> {} AND t.status = {} AND r.hidden = 0 AND r.status = {} \
         GROUP BY r.tags, t.kind",
        lit(TaskKind::Blender),
        lit(TaskStatus::Pending),
        lit(RenderStatus::Completed),
    );
    let since = ts(since);
    store
        .read(move |conn| {
            let mut counts = FarmCounts::default();
            let mut by_status = conn.prepare_cached(
                "SELECT status, COUNT(*) FROM renders WHERE hidden = 0 GROUP BY status",
            )?;
            let mut rows = by_status.query([])?;
            while let Some(row) = rows.next()? {
                let n: i64 = row.get(1)?;
                let slot = counts
                    .renders
                    .of_mut(get_enum(row, 0, RenderStatus::parse)?);
                *slot = n;
            }
            let mut queue = conn.prepare_cached(&queue_sql)?;
            let mut rows = queue.query([])?;
            while let Some(row) = rows.next()? {
                let rank: i64 = row.get(0)?;
                let n: i64 = row.get(1)?;
                let slot = match Priority::from_rank(rank)
                    .ok_or_else(|| conversion_error(0, "priority", &rank.to_string()))?
                {
                    Priority::Low => &mut counts.queue.low,
                    Priority::Normal => &mut counts.queue.normal,
                    Priority::High => &mut counts.queue.high,
                    Priority::Urgent => &mut counts.queue.urgent,
                };
                *slot = n;
            }
            counts.frames_since = conn
                .prepare_cached(&frames_sql)?
                .query_row([&since], |r| r.get(0))?;
            let mut tasks = conn.prepare_cached(
                "SELECT priority, SUM(tasks_pending), SUM(tasks_running), SUM(tasks_completed), \
                 SUM(tasks_failed), SUM(tasks_canceled) FROM renders WHERE hidden = 0 \
                 GROUP BY priority",
            )?;
            let mut rows = tasks.query([])?;
            while let Some(row) = rows.next()? {
                let rank: i64 = row.get(0)?;
                let priority = Priority::from_rank(rank)
                    .ok_or_else(|| conversion_error(0, "priority", &rank.to_string()))?;
                let by_status = [
                    TaskStatus::Pending,
                    TaskStatus::Running,
                    TaskStatus::Completed,
                    TaskStatus::Failed,
                    TaskStatus::Canceled,
                ];
                for (i, status) in by_status.into_iter().enumerate() {
                    let n: i64 = row.get(i + 1)?;
                    if n > 0 {
                        counts.tasks.push((priority, status, n));
                    }
                }
            }
            let mut runnable = conn.prepare_cached(&runnable_sql)?;
            let mut rows = runnable.query([])?;
            while let Some(row) = rows.next()? {
                let mut tags = get_tags(row, 0)?;
                tags.sort();
                let n: i64 = row.get(1)?;
                add_runnable(&mut counts, tags, TaskKind::Blender, n);
            }
            let mut follow_ups = conn.prepare_cached(&follow_ups_sql)?;
            let mut rows = follow_ups.query([])?;
            while let Some(row) = rows.next()? {
                let mut tags = get_tags(row, 0)?;
                tags.sort();
                add_runnable(&mut counts, tags, get_kind(row, 1)?, row.get(2)?);
            }
            Ok(counts)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_status_sql_is_the_domains() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE tasks (worker_id TEXT, status TEXT);
             CREATE TABLE w (id TEXT, mode TEXT, offline INTEGER);",
        )
        .unwrap();
        let sql = format!("SELECT {} FROM w", worker_status_sql("w"));
        for mode in WorkerMode::ALL {
            for offline in [false, true] {
                for has_task in [false, true] {
                    conn.execute_batch("DELETE FROM w; DELETE FROM tasks;")
                        .unwrap();
                    conn.execute(
                        "INSERT INTO w VALUES ('a', ?1, ?2)",
                        params![mode.as_str(), offline],
                    )
                    .unwrap();
                    if has_task {
                        conn.execute(
                            "INSERT INTO tasks VALUES ('a', ?1)",
                            [LEASED_TASK_STATUS.as_str()],
                        )
                        .unwrap();
                    }
                    let got: String = conn.query_row(&sql, [], |r| r.get(0)).unwrap();
                    assert_eq!(got, worker_status(mode, offline, has_task).as_str());
                }
            }
        }
    }

    #[test]
    fn the_progress_json_is_the_wires() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE r (tasks_total, tasks_pending, tasks_running, tasks_completed, \
             tasks_failed, tasks_canceled, frames_total, frames_done);
             INSERT INTO r VALUES (1, 2, 3, 4, 5, 6, 7, 8);",
        )
        .unwrap();
        let json: String = conn
            .query_row(&format!("SELECT {} FROM r", progress_json("r")), [], |r| {
                r.get(0)
            })
            .unwrap();
        let progress: Progress = serde_json::from_str(&json).unwrap();
        assert_eq!(
            progress,
            Progress {
                tasks_total: 1,
                tasks_pending: 2,
                tasks_running: 3,
                tasks_completed: 4,
                tasks_failed: 5,
                tasks_canceled: 6,
                frames_total: 7,
                frames_done: 8,
            }
        );
    }
}
