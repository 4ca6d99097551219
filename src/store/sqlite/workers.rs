//! Workers: registration, operator changes, heartbeats.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use renderfarm_wire::{Heartbeat, HeartbeatAction, Worker, WorkerAction};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::rules::*;
use super::{rows::*, tasks::*, *};
use crate::domain::LEASED_TASK_STATUS;
use crate::domain::{
    hands_back, heartbeat_action, heartbeat_task, self_transition, worker_transition,
    IllegalTransition, Requeue, ValidWorkerHours, ValidWorkerSpec, WarmState, WorkerHoursState,
    WorkerMode, REMOVE_ONLY_DISABLED,
};
use crate::store::{StoreError, StoreResult};

pub(super) fn load_worker(conn: &Connection, id: Uuid, now: DateTime<Utc>) -> StoreResult<Worker> {
    conn.prepare_cached(&format!(
        "SELECT {} FROM workers w WHERE w.id = ?1",
        *WORKER_COLUMNS
    ))?
    .query_row([id.to_string()], |row| worker_from_row(row, now))
    .optional()?
    .ok_or_else(|| StoreError::not_found("worker", id))
}

/// What a claim needs of the worker it serves, read as it is marked alive.
pub(super) struct ClaimingWorker {
    pub(super) mode: WorkerMode,
    /// Its tags, as JSON.
    pub(super) tags: String,
    /// Its warm preference's state, renders named by their `seq`.
    pub(super) warm: WarmState<i64>,
    /// The task kinds it runs.
    pub(super) kinds: Vec<renderfarm_wire::TaskKind>,
    /// Its hours: whether it takes work now, or hands its task back.
    pub(super) hours: WorkerHoursState,
}

/// Records a sign of life from the worker; returns what a claim needs next.
pub(super) fn mark_alive(
    conn: &Connection,
    worker_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<ClaimingWorker> {
    conn.prepare_cached(
        "UPDATE workers SET last_heartbeat = ?2, offline = 0 WHERE id = ?1 \
         RETURNING mode, tags, last_render_seq, warm_streak, kinds, \
         time_zone, agent_hours, operator_hours, strict_hours",
    )?
    .query_row(params![worker_id.to_string(), ts(now)], |row| {
        Ok(ClaimingWorker {
            mode: get_enum(row, 0, WorkerMode::parse)?,
            tags: row.get(1)?,
            warm: WarmState {
                last_render: row.get(2)?,
                streak: row.get(3)?,
            },
            kinds: get_kinds(row, 4)?,
            hours: hours_from_row(row, 5)?,
        })
    })
    .optional()?
    .ok_or_else(|| StoreError::not_found("worker", worker_id))
}

/// Keeps the worker's warm preference's state after a claim.
pub(super) fn save_warm_state(
    conn: &Connection,
    worker_id: Uuid,
    warm: WarmState<i64>,
) -> StoreResult<()> {
    conn.prepare_cached("UPDATE workers SET last_render_seq = ?2, warm_streak = ?3 WHERE id = ?1")?
        .execute(params![
            worker_id.to_string(),
            warm.last_render,
            warm.streak
        ])?;
    Ok(())
}

pub(super) async fn register_worker(
    store: &SqliteStore,
    spec: ValidWorkerSpec,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    store
        .write(move |conn| {
            let id = Uuid::now_v7();
            conn.prepare_cached(
            "INSERT INTO workers (id, name, tags, mode, offline, last_heartbeat, registered_at, kinds, \
             time_zone, agent_hours, strict_hours, platform) \
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            id.to_string(),
            spec.name,
            tags_json(&spec.tags),
            WorkerMode::Active.as_str(),
            ts(now),
            kinds_json(&spec.kinds),
            spec.hours.time_zone,
            spec.hours.available,
            spec.hours.strict,
            spec.platform.as_str()
        ])?;
            tracing::info!(worker_id = %id, name = %spec.name, "worker registered");
            load_worker(conn, id, now)
        })
        .await
}

pub(super) async fn get_worker(
    store: &SqliteStore,
    id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    store.read(move |conn| load_worker(conn, id, now)).await
}

pub(super) async fn list_workers(
    store: &SqliteStore,
    now: DateTime<Utc>,
) -> StoreResult<Vec<Worker>> {
    store
        .read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {} FROM workers w ORDER BY w.seq",
                    *WORKER_COLUMNS
                ))?
                .query_map([], |row| worker_from_row(row, now))?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
}

pub(super) async fn change_worker(
    store: &SqliteStore,
    id: Uuid,
    action: WorkerAction,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    let actor = actor.map(str::to_string);
    store.write(move |conn| {
        let mode: WorkerMode = conn
            .prepare_cached("SELECT mode FROM workers WHERE id = ?1")?
            .query_row([id.to_string()], |row| get_enum(row, 0, WorkerMode::parse))
            .optional()?
            .ok_or_else(|| StoreError::not_found("worker", id))?;
        let to = worker_transition(mode, action)?;
        // An operator's change makes the mode the operator's, not a drain
        // of the worker's own that its next start would lift.
        conn.prepare_cached("UPDATE workers SET mode = ?2, drained_by_itself = 0 WHERE id = ?1")?
            .execute(params![id.to_string(), to.as_str()])?;
        if to == WorkerMode::Disabled {
            // A disabled machine stops now: its task goes back to the
            // queue without counting as a failure, and its next heartbeat
            // answers abort.
            let running: Option<String> = conn
                .prepare_cached(&RUNNING_TASK_OF_WORKER)?
                .query_row([id.to_string()], |row| row.get(0))
                .optional()?;
            if let Some(task_id) = running.and_then(|t| Uuid::parse_str(&t).ok()) {
                let task = load_leased_task(conn, task_id)?;
                requeue_task(conn, &task, &Requeue::WorkerDisabled, actor.as_deref(), now)?;
                tracing::info!(worker_id = %id, task_id = %task_id, "task of disabled worker requeued");
            }
        }
        load_worker(conn, id, now)
    })
    .await
}

pub(super) async fn change_worker_itself(
    store: &SqliteStore,
    id: Uuid,
    action: WorkerAction,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    store
        .write(move |conn| {
            let (mode, own): (WorkerMode, bool) = conn
                .prepare_cached("SELECT mode, drained_by_itself FROM workers WHERE id = ?1")?
                .query_row([id.to_string()], |row| {
                    Ok((get_enum(row, 0, WorkerMode::parse)?, row.get(1)?))
                })
                .optional()?
                .ok_or_else(|| StoreError::not_found("worker", id))?;
            let (to, own) = self_transition(mode, own, action)?;
            conn.prepare_cached(
                "UPDATE workers SET mode = ?2, drained_by_itself = ?3 WHERE id = ?1",
            )?
            .execute(params![id.to_string(), to.as_str(), own])?;
            load_worker(conn, id, now)
        })
        .await
}

pub(super) async fn set_worker_hours(
    store: &SqliteStore,
    id: Uuid,
    hours: ValidWorkerHours,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    store
        .write(move |conn| {
            update_worker(
                conn,
                id,
                "UPDATE workers SET time_zone = ?2, agent_hours = ?3, strict_hours = ?4 WHERE id = ?1",
                params![id.to_string(), hours.time_zone, hours.available, hours.strict],
                now,
            )
        })
        .await
}

pub(super) async fn set_operator_hours(
    store: &SqliteStore,
    id: Uuid,
    hours: Option<String>,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    store
        .write(move |conn| {
            update_worker(
                conn,
                id,
                "UPDATE workers SET operator_hours = ?2 WHERE id = ?1",
                params![id.to_string(), hours],
                now,
            )
        })
        .await
}

/// Runs `sql`, an update of the worker `id`, and answers the worker as it
/// is then (its hours seen at `now`); not found when no row matched.
fn update_worker(
    conn: &Connection,
    id: Uuid,
    sql: &str,
    values: impl rusqlite::Params,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    if conn.prepare_cached(sql)?.execute(values)? == 0 {
        return Err(StoreError::not_found("worker", id));
    }
    load_worker(conn, id, now)
}

pub(super) async fn heartbeat(
    store: &SqliteStore,
    worker_id: Uuid,
    beat: &Heartbeat,
    now: DateTime<Utc>,
) -> StoreResult<HeartbeatAction> {
    let beat = beat.clone();
    store
        .write(move |conn| {
            let worker = mark_alive(conn, worker_id, now)?;
            let Some((task_id, lease_id)) = heartbeat_task(beat.task_id, beat.lease_id)
                .map_err(|e| StoreError::Invalid(e.to_string()))?
            else {
                return Ok(HeartbeatAction::Continue);
            };
            let task = match load_leased_task(conn, task_id) {
                Ok(task) => Some(task),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            let action = heartbeat_action(
                task.as_ref().map(|t| t.lease()).as_ref(),
                lease_id,
                worker_id,
            );
            if let (HeartbeatAction::Continue, Some(task)) = (action, &task) {
                if hands_back(&worker.hours, now) {
                    requeue_task(conn, task, &Requeue::OutsideHours, None, now)?;
                    tracing::info!(worker_id = %worker_id, task_id = %task_id, "task handed back: the worker's hours ended (--strict-hours)");
                    return Ok(HeartbeatAction::Abort);
                }
            }
            if let (HeartbeatAction::Continue, Some(task), Some(frames)) =
                (action, &task, beat.frames_done)
            {
                record_progress(conn, task, frames, now)?;
            }
            Ok(action)
        })
        .await
}

/// The task a worker is rendering, if any.
static RUNNING_TASK_OF_WORKER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id FROM tasks WHERE worker_id = ?1 AND status = {} LIMIT 1",
        lit(LEASED_TASK_STATUS)
    )
});

pub(super) async fn delete_worker(store: &SqliteStore, id: Uuid) -> StoreResult<()> {
    store
        .write(move |conn| {
            let deleted = conn
                .prepare_cached("DELETE FROM workers WHERE id = ?1 AND mode = ?2")?
                .execute(params![id.to_string(), WorkerMode::Disabled.as_str()])?;
            if deleted == 1 {
                return Ok(());
            }
            load_worker(conn, id, Utc::now())?;
            Err(IllegalTransition::new(REMOVE_ONLY_DISABLED).into())
        })
        .await
}
