//! The scheduler's upkeep: lost workers, retries, preemption, purging, recounts, the leader lease.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use renderfarm_wire::{HistoryEvent, LeaderLease, Priority, RenderStatus, TaskKind, TaskStatus};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use uuid::Uuid;

use super::rules::*;
use super::{counters::*, rows::*, tasks::*, *};
use crate::domain::retried_while;
use crate::domain::{
    lease_accepts, tallied_status, task_transition, Allowances, OverdueWork, Requeue, RunningWork,
    TaskEvent,
};
use crate::domain::{
    WorkerMode, CLAIMABLE_RENDER_STATUSES, CLAIMABLE_TASK_STATUS, FINISHED_RENDER_STATUSES,
    LEASED_TASK_STATUS, UNFINISHED_RENDER_STATUSES,
};
use crate::store::{LostWorkers, MovedTask, PreemptionInputs, Retries, StoreError, StoreResult};

pub(super) async fn finished_renders_before(
    store: &SqliteStore,
    before: DateTime<Utc>,
    limit: usize,
) -> StoreResult<Vec<Uuid>> {
    store
        .read(move |conn| {
            conn.prepare_cached(&FINISHED_BEFORE)?
                .query_map(params![ts(before), limit as i64], |row| get_uuid(row, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
        .await
}

pub(super) async fn requeue_lost_workers(
    store: &SqliteStore,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<LostWorkers> {
    store
        .write(move |conn| {
            let lost: Vec<(String, String)> = conn
                .prepare_cached(
                    "UPDATE workers SET offline = 1 WHERE offline = 0 AND last_heartbeat <= ?1 \
                 RETURNING id, last_heartbeat",
                )?
                .query_map([ts(cutoff)], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut outcome = LostWorkers::default();
            for (worker, last_seen) in lost {
                let worker_id =
                    Uuid::parse_str(&worker).map_err(|e| StoreError::Unexpected(e.into()))?;
                outcome.workers.push(worker_id);
                let running: Vec<String> = conn
                    .prepare_cached(&RUNNING_TASKS_OF_WORKER)?
                    .query_map([&worker], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                for task in running {
                    let task_id =
                        Uuid::parse_str(&task).map_err(|e| StoreError::Unexpected(e.into()))?;
                    let leased = load_leased_task(conn, task_id)?;
                    let why = Requeue::WorkerLost {
                        last_seen: last_seen.clone(),
                    };
                    requeue_task(conn, &leased, &why, None, now)?;
                    outcome.requeued.push(moved(conn, &leased, task_id)?);
                }
            }
            Ok(outcome)
        })
        .await
}

pub(super) async fn retry_failed_tasks(
    store: &SqliteStore,
    now: DateTime<Utc>,
) -> StoreResult<Retries> {
    store
        .write(move |conn| {
            let failed: Vec<Uuid> = conn
                .prepare_cached(&FAILED_TASKS)?
                .query_map([], |row| get_uuid(row, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut outcome = Retries::default();
            for task_id in failed {
                let task = load_leased_task(conn, task_id)?;
                let retry = TaskEvent::Retry {
                    retries: task.retries,
                    max_retries: task.max_retries,
                };
                match task_transition(task.status, retry) {
                    Ok(to) => {
                        conn.prepare_cached(
                        "UPDATE tasks SET status = ?2, retries = retries + 1, worker_id = NULL, \
                         lease_id = NULL, frames_done = 0, started_at = NULL, finished_at = NULL, \
                         queued_at = ?3 WHERE seq = ?1",
                    )?
                    .execute(params![task.seq, to.as_str(), ts(now)])?;
                        tally_task_move(
                            conn,
                            task.render_seq,
                            task.kind,
                            task.status,
                            to,
                            0,
                            false,
                            now,
                        )?;
                        let detail = format!("retry {} of {}", task.retries + 1, task.max_retries);
                        record_history(
                            conn,
                            task.seq,
                            HistoryEvent::Retried,
                            None,
                            Some(&detail),
                            None,
                            now,
                        )?;
                        outcome.retried.push(moved(conn, &task, task_id)?);
                    }
                    Err(_) => {
                        // No retry left: the render fails (saving its tally cancels its pending work).
                        tally_task_move(
                            conn,
                            task.render_seq,
                            task.kind,
                            task.status,
                            task.status,
                            0,
                            true,
                            now,
                        )?;
                        outcome.failed.push(moved(conn, &task, task_id)?);
                    }
                }
            }
            Ok(outcome)
        })
        .await
}

pub(super) async fn preemption_inputs(
    store: &SqliteStore,
    allowances: &Allowances,
    now: DateTime<Utc>,
) -> StoreResult<PreemptionInputs> {
    let cutoffs: Vec<Option<String>> = Priority::ALL
        .into_iter()
        .map(|p| allowances.overdue_cutoff(p, now).map(ts))
        .collect();
    store
        .read(move |conn| {
            let overdue = conn
                .prepare_cached(&OVERDUE_WORK)?
                .query_map(params_from_iter(cutoffs.iter()), |row| {
                    let rank: i64 = row.get(1)?;
                    Ok(OverdueWork {
                        render_id: get_uuid(row, 0)?,
                        priority: Priority::from_rank(rank)
                            .ok_or_else(|| conversion_error(1, "priority", &rank.to_string()))?,
                        tags: get_tags(row, 2)?,
                        tasks: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let running = conn
                .prepare_cached(&RUNNING_WORK)?
                .query_map([], |row| {
                    let rank: i64 = row.get(2)?;
                    Ok(RunningWork {
                        task_id: get_uuid(row, 0)?,
                        lease_id: get_uuid(row, 1)?,
                        priority: Priority::from_rank(rank)
                            .ok_or_else(|| conversion_error(2, "priority", &rank.to_string()))?,
                        started_at: get_time(row, 3)?,
                        worker_tags: get_tags(row, 4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let idle_worker_tags = conn
                .prepare_cached(&IDLE_WORKER_TAGS)?
                .query_map([], |row| get_tags(row, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(PreemptionInputs {
                overdue,
                running,
                idle_worker_tags,
            })
        })
        .await
}

pub(super) async fn preempt_task(
    store: &SqliteStore,
    task_id: Uuid,
    lease_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<Option<MovedTask>> {
    store
        .write(move |conn| {
            let task = load_leased_task(conn, task_id)?;
            if lease_accepts(&task.lease(), lease_id, None).is_err() {
                return Ok(None);
            }
            requeue_task(conn, &task, &Requeue::Preempted, None, now)?;
            Ok(Some(moved(conn, &task, task_id)?))
        })
        .await
}

/// Nothing to do while the store runs: one broker owns an embedded store,
/// and a render it left hidden (half-written or half-deleted) when it died is
/// removed when the store opens again (`renders::remove_hidden_renders`).
pub(super) async fn clear_abandoned_writes(
    _store: &SqliteStore,
    _now: DateTime<Utc>,
) -> StoreResult<i64> {
    Ok(0)
}

pub(super) async fn recount_tallies(store: &SqliteStore, now: DateTime<Utc>) -> StoreResult<i64> {
    store
        .write(move |conn| {
            let active: Vec<i64> = conn
                .prepare_cached(&UNFINISHED_RENDERS)?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut corrected = 0;
            for seq in active {
                let mut state = load_tally(conn, seq)?;
                let before = (state.status, state.progress, state.failed_for_good);
                state.progress = count_tally(conn, seq, state.progress.frames_total)?;
                let stuck: bool = conn
                    .prepare_cached(&FAILED_FOR_GOOD)?
                    .query_row([seq], |row| row.get(0))?;
                state.failed_for_good |= stuck;
                let status = tallied_status(
                    state.status,
                    &state.progress,
                    state.started_at.is_some(),
                    state.failed_for_good,
                );
                if (status, state.progress, state.failed_for_good) != before {
                    corrected += 1;
                    let was = state.status;
                    save_tally(conn, state, was, false, now)?;
                }
            }
            Ok(corrected)
        })
        .await
}

pub(super) async fn acquire_lease(
    store: &SqliteStore,
    name: &str,
    holder: &str,
    ttl: chrono::Duration,
    now: DateTime<Utc>,
) -> StoreResult<LeaderLease> {
    let (name, holder) = (name.to_string(), holder.to_string());
    store.write(move |conn| {
        conn.prepare_cached(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
        )?
        .execute(params![name, holder, ts(now + ttl), ts(now)])?;
        load_lease(conn, &name)?.ok_or_else(|| StoreError::Unexpected(anyhow::anyhow!("lease {name} vanished")))
    })
    .await
}

pub(super) async fn release_lease(
    store: &SqliteStore,
    name: &str,
    holder: &str,
) -> StoreResult<()> {
    let (name, holder) = (name.to_string(), holder.to_string());
    store
        .write(move |conn| {
            conn.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
                .execute(params![name, holder])?;
            Ok(())
        })
        .await
}

pub(super) async fn current_lease(
    store: &SqliteStore,
    name: &str,
) -> StoreResult<Option<LeaderLease>> {
    let name = name.to_string();
    store.read(move |conn| load_lease(conn, &name)).await
}

pub(super) fn load_lease(conn: &Connection, name: &str) -> StoreResult<Option<LeaderLease>> {
    Ok(conn
        .prepare_cached("SELECT holder, expires_at FROM leases WHERE name = ?1")?
        .query_row([name], |row| {
            Ok(LeaderLease {
                holder: row.get(0)?,
                expires_at: get_time(row, 1)?,
            })
        })
        .optional()?)
}

/// A moved task as the scheduler reports it.
pub(super) fn moved(conn: &Connection, task: &LeasedTask, task_id: Uuid) -> StoreResult<MovedTask> {
    let render_id = conn
        .prepare_cached("SELECT id FROM renders WHERE seq = ?1")?
        .query_row([task.render_seq], |row| get_uuid(row, 0))?;
    Ok(MovedTask {
        task_id,
        render_id,
        worker_id: task
            .worker_id
            .as_deref()
            .and_then(|w| Uuid::parse_str(w).ok()),
    })
}

/// Finished renders with nothing running that ended before `?1`, those
/// that ended first first, at most `?2`.
static FINISHED_BEFORE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id FROM renders WHERE status {} AND tasks_running = 0 AND finished_at < ?1 \
         AND hidden = 0 ORDER BY finished_at LIMIT ?2",
        is_in(FINISHED_RENDER_STATUSES)
    )
});

/// The tasks the worker `?1` is rendering.
static RUNNING_TASKS_OF_WORKER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id FROM tasks WHERE worker_id = ?1 AND status = {}",
        lit(LEASED_TASK_STATUS)
    )
});

/// Failed tasks of unfinished renders, in claim order.
static FAILED_TASKS: LazyLock<String> = LazyLock::new(|| {
    // `domain::retried_while`, one kind at a time.
    let by_kind: Vec<String> = TaskKind::ALL
        .into_iter()
        .map(|kind| {
            let statuses: Vec<RenderStatus> = RenderStatus::ALL
                .into_iter()
                .filter(|s| retried_while(kind, *s))
                .collect();
            format!("(t.kind = {} AND r.status {})", lit(kind), is_in(&statuses))
        })
        .collect();
    format!(
        "SELECT t.id FROM tasks t JOIN renders r ON r.seq = t.render_seq \
         WHERE t.status = {} AND ({}) ORDER BY {}",
        lit(TaskStatus::Failed),
        by_kind.join(" OR "),
        claim_order(task_column),
    )
});

/// Claimable work pending since before its priority's cutoff (`?1`..`?4`,
/// low to urgent; a NULL cutoff, never overdue, makes the comparison
/// false), counted per render in claim order.
static OVERDUE_WORK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT r.id, r.priority, r.tags, COUNT(*) FROM tasks t JOIN renders r ON r.seq = t.render_seq \
         WHERE t.status = {} AND r.status {} AND r.hidden = 0 \
           AND t.queued_at <= (CASE t.priority WHEN 0 THEN ?1 WHEN 1 THEN ?2 WHEN 2 THEN ?3 ELSE ?4 END) \
         GROUP BY r.seq ORDER BY {}",
        lit(CLAIMABLE_TASK_STATUS),
        is_in(CLAIMABLE_RENDER_STATUSES),
        claim_order(render_column),
    )
});

/// Every task being rendered, with its worker's tags.
static RUNNING_WORK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT t.id, t.lease_id, t.priority, t.started_at, w.tags FROM tasks t \
         JOIN workers w ON w.id = t.worker_id WHERE t.status = {}",
        lit(LEASED_TASK_STATUS)
    )
});

/// The tags of every worker that could take work now.
static IDLE_WORKER_TAGS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT w.tags FROM workers w WHERE w.mode = {} AND w.offline = 0 \
         AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.worker_id = w.id AND t.status = {})",
        lit(WorkerMode::Active),
        lit(LEASED_TASK_STATUS)
    )
});

/// Renders whose tallies the scheduler recounts.
static UNFINISHED_RENDERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT seq FROM renders WHERE status {} AND hidden = 0",
        is_in(UNFINISHED_RENDER_STATUSES)
    )
});

/// Whether the render `?1` has a failed task with no retry left.
static FAILED_FOR_GOOD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT EXISTS (SELECT 1 FROM tasks t JOIN renders r ON r.seq = t.render_seq \
         WHERE t.render_seq = ?1 AND t.status = {} AND {})",
        lit(TaskStatus::Failed),
        retries_exhausted("t.retries", "r.max_retries"),
    )
});

pub(super) async fn settle_waiting(store: &SqliteStore, now: DateTime<Utc>) -> StoreResult<u64> {
    store
        .write(move |conn| super::dependencies::settle_all_waiting(conn, now))
        .await
}
