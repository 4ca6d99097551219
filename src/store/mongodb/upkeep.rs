//! The scheduler's upkeep: lost workers, retries, preemption, purging, recounts, the leader lease.

use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use renderfarm_wire::{HistoryEvent, LeaderLease, Priority, RenderStatus, TaskStatus};
use uuid::Uuid;

use super::events::{fresh_key, outbox_set, Entry};
use super::rules::{claim_sort, is_in};
use super::{documents::*, errors::*, renders::*, workers::*, *};
use crate::domain::retried_while;
use crate::domain::{
    is_claimable, task_transition, Allowances, OverdueWork, Requeue, RunningWork, TaskEvent,
    WorkerMode, CLAIMABLE_TASK_STATUS, FINISHED_RENDER_STATUSES, LEASED_TASK_STATUS,
};
use crate::store::{LostWorkers, MovedTask, PreemptionInputs, Retries, StoreError, StoreResult};

impl MongoStore {
    pub(super) async fn running_tasks(&self) -> StoreResult<Vec<TaskDoc>> {
        Ok(self
            .tasks()?
            .find(status_filter(TaskStatus::Running))
            .await?
            .try_collect()
            .await?)
    }
}

/// A moved task as the scheduler reports it.
pub(super) fn moved(task: &TaskDoc) -> StoreResult<MovedTask> {
    Ok(MovedTask {
        task_id: parse_uuid(&task.id, "task id")?,
        render_id: parse_uuid(&task.render_id, "render id")?,
        worker_id: parse_opt_uuid(task.worker_id.as_deref(), "worker id")?,
    })
}

pub(super) async fn finished_renders_before(
    store: &MongoStore,
    before: DateTime<Utc>,
    limit: usize,
) -> StoreResult<Vec<Uuid>> {
    // MongoDB reads a limit of 0 as no limit at all.
    if limit == 0 {
        return Ok(Vec::new());
    }
    let finished: Vec<IdOnly> = store
        .renders()?
        .clone_with_type::<IdOnly>()
        .find(doc! {
            "status": is_in(FINISHED_RENDER_STATUSES),
            "tasks_running": 0_i64,
            "finished_at": { "$lt": bson_time(before) },
        })
        .projection(doc! { "_id": 1 })
        .sort(doc! { "finished_at": 1 })
        .limit(limit as i64)
        .await?
        .try_collect()
        .await?;
    finished
        .iter()
        .map(|r| parse_uuid(&r.id, "render id"))
        .collect()
}

pub(super) async fn requeue_lost_workers(
    store: &MongoStore,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<LostWorkers> {
    let workers = store.workers()?;
    let mut outcome = LostWorkers::default();
    let silent: Vec<WorkerDoc> = workers
        .find(silent_workers_filter(cutoff))
        .sort(doc! { "seq": 1 })
        .await?
        .try_collect()
        .await?;
    for w in &silent {
        // Conditional, so one broker marks it once and a heartbeat that
        // came in meanwhile keeps it.
        let marked = workers
            .update_one(
                lost_worker_filter(&w.id, cutoff),
                offline_update(w.mode()?, now),
            )
            .await?;
        if marked.modified_count == 1 {
            outcome.workers.push(parse_uuid(&w.id, "worker id")?);
        }
    }
    // From the running tasks rather than the workers just marked, so the
    // task of a worker marked by a tick that stopped half way is not
    // left running forever.
    let running = store.running_tasks().await?;
    let holders = store
        .workers_by_id(
            running
                .iter()
                .filter_map(|t| t.worker_id.as_deref())
                .collect(),
        )
        .await?;
    for task in &running {
        let Some(worker) = task.worker_id.as_deref().and_then(|w| holders.get(w)) else {
            continue;
        };
        let (Some(lease), true) = (
            task.lease_id.as_deref(),
            worker.last_heartbeat <= bson_time(cutoff),
        ) else {
            continue;
        };
        let last_seen = worker
            .last_heartbeat
            .to_chrono()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let why = Requeue::WorkerLost { last_seen };
        if let Some(before) = store
            .requeue_under_lease(
                super::tasks::lease_filter(&task.id, lease),
                lease,
                Some(&worker.id),
                &why,
                None,
                None,
                now,
            )
            .await?
        {
            outcome.requeued.push(moved(&before)?);
        }
    }
    Ok(outcome)
}

pub(super) async fn retry_failed_tasks(
    store: &MongoStore,
    now: DateTime<Utc>,
) -> StoreResult<Retries> {
    let tasks = store.tasks()?;
    let failed: Vec<TaskDoc> = tasks
        .find(status_filter(TaskStatus::Failed))
        .sort(claim_sort())
        .await?
        .try_collect()
        .await?;
    if failed.is_empty() {
        return Ok(Retries::default());
    }
    // `domain::retried_while`: a finished render's failed chunks stay
    // failed; a completed render's failed video is tried again.
    let render_ids: Vec<&str> = failed.iter().map(|t| t.render_id.as_str()).collect();
    let renders: Vec<Document> = store
        .db()?
        .collection::<Document>(RENDERS)
        .find(doc! { "_id": { "$in": render_ids } })
        .projection(doc! { "_id": 1, "status": 1 })
        .await?
        .try_collect()
        .await?;
    let statuses: std::collections::HashMap<&str, RenderStatus> = renders
        .iter()
        .filter_map(|d| {
            let status = d.get_str("status").ok().and_then(RenderStatus::parse)?;
            Some((d.get_str("_id").ok()?, status))
        })
        .collect();
    let mut outcome = Retries::default();
    let mut retried = Vec::with_capacity(failed.len());
    for task in &failed {
        let status = statuses.get(task.render_id.as_str());
        if status.is_some_and(|s| retried_while(task.kind().unwrap_or_default(), *s)) {
            retried.push(task);
        }
    }
    for task in retried {
        let retry = TaskEvent::Retry {
            retries: task.retries,
            max_retries: task.max_retries,
        };
        match task_transition(task.status()?, retry) {
            Ok(to) => {
                let before = tasks
                    .find_one_and_update(
                        retry_filter(&task.id, task.retries),
                        retry_update(to, now),
                    )
                    .return_document(ReturnDocument::Before)
                    .await?;
                let Some(before) = before else {
                    continue;
                };
                store
                    .tally_task_move(
                        &before.render_id,
                        before.kind()?,
                        TaskStatus::Failed,
                        to,
                        -before.frames_done,
                        false,
                        now,
                    )
                    .await?;
                let detail = format!("retry {} of {}", before.retries + 1, before.max_retries);
                store
                    .record_history(
                        &before.id,
                        before.history_seq,
                        HistoryEvent::Retried,
                        None,
                        Some(detail),
                        None,
                        now,
                    )
                    .await?;
                outcome.retried.push(moved(&before)?);
            }
            Err(_) => {
                // No retry left: the render fails (saving its tally cancels
                // the pending work).
                store
                    .tally_task_move(
                        &task.render_id,
                        task.kind()?,
                        TaskStatus::Failed,
                        TaskStatus::Failed,
                        0,
                        true,
                        now,
                    )
                    .await?;
                outcome.failed.push(moved(task)?);
            }
        }
    }
    Ok(outcome)
}

pub(super) async fn preemption_inputs(
    store: &MongoStore,
    allowances: &Allowances,
    now: DateTime<Utc>,
) -> StoreResult<PreemptionInputs> {
    let cutoffs: Vec<(i64, DateTime<Utc>)> = Priority::ALL
        .into_iter()
        .filter_map(|p| allowances.overdue_cutoff(p, now).map(|c| (p.rank(), c)))
        .collect();
    let mut overdue = Vec::new();
    if let Some(pipeline) = overdue_pipeline(&cutoffs) {
        let rows: Vec<Document> = store
            .db()?
            .collection::<Document>(TASKS)
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        for row in rows {
            let bad = || corrupt(format!("an overdue-work row {row:?}"));
            let rank = row.get("priority").and_then(bson_i64).ok_or_else(bad)?;
            let tags = row
                .get_array("tags")
                .map_err(|_| bad())?
                .iter()
                .map(|t| t.as_str().map(str::to_string).ok_or_else(bad))
                .collect::<StoreResult<Vec<_>>>()?;
            overdue.push(OverdueWork {
                render_id: parse_uuid(row.get_str("_id").map_err(|_| bad())?, "render id")?,
                priority: Priority::from_rank(rank).ok_or_else(bad)?,
                tags,
                tasks: row.get("tasks").and_then(bson_i64).ok_or_else(bad)?,
            });
        }
    }
    let running_tasks = store.running_tasks().await?;
    let holders = store
        .workers_by_id(
            running_tasks
                .iter()
                .filter_map(|t| t.worker_id.as_deref())
                .collect(),
        )
        .await?;
    let mut running = Vec::new();
    for task in &running_tasks {
        // As a join would: a task whose worker is gone is not preemptible.
        let Some(worker) = task.worker_id.as_deref().and_then(|w| holders.get(w)) else {
            continue;
        };
        running.push(RunningWork {
            task_id: parse_uuid(&task.id, "task id")?,
            lease_id: parse_uuid(task.lease_id.as_deref().unwrap_or_default(), "lease id")?,
            priority: Priority::from_rank(task.priority).ok_or_else(|| {
                corrupt(format!("task {} with priority {}", task.id, task.priority))
            })?,
            started_at: task
                .started_at
                .ok_or_else(|| corrupt(format!("running task {} without a start", task.id)))?
                .to_chrono(),
            worker_tags: worker.tags.clone(),
        });
    }
    let busy: std::collections::HashSet<&str> = running_tasks
        .iter()
        .filter_map(|t| t.worker_id.as_deref())
        .collect();
    let available: Vec<WorkerDoc> = store
        .workers()?
        .find(available_workers_filter())
        .sort(doc! { "seq": 1 })
        .await?
        .try_collect()
        .await?;
    let idle_worker_tags = available
        .into_iter()
        .filter(|w| !busy.contains(w.id.as_str()))
        .map(|w| w.tags)
        .collect();
    Ok(PreemptionInputs {
        overdue,
        running,
        idle_worker_tags,
    })
}

pub(super) async fn preempt_task(
    store: &MongoStore,
    task_id: Uuid,
    lease_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<Option<MovedTask>> {
    let id = task_id.to_string();
    let lease = lease_id.to_string();
    let task = store.load_task(&id).await?;
    if task.status()? != TaskStatus::Running || task.lease_id.as_deref() != Some(&lease) {
        return Ok(None);
    }
    store
        .requeue_under_lease(
            super::tasks::lease_filter(&id, &lease),
            &lease,
            task.worker_id.as_deref(),
            &Requeue::Preempted,
            None,
            None,
            now,
        )
        .await?
        .as_ref()
        .map(moved)
        .transpose()
}

/// How long a render's writer may show no progress (it refreshes its marker
/// every 10,000 tasks) before what it wrote is taken as abandoned.
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(10 * 60);

pub(super) async fn clear_abandoned_writes(
    store: &MongoStore,
    now: DateTime<Utc>,
) -> StoreResult<i64> {
    let cutoff = now - chrono::Duration::from_std(ABANDONED_AFTER).unwrap_or_default();
    let stale: Vec<WritingDoc> = store
        .writing()?
        .find(doc! { "alive_at": { "$lt": bson_time(cutoff) } })
        .await?
        .try_collect()
        .await?;
    let mut settled = 0;
    for marker in stale {
        match store
            .renders()?
            .find_one(doc! { "_id": &marker.id })
            .await?
        {
            // Stored whole; its writer died before it released the tasks.
            Some(render) if is_claimable(render.status()?) => {
                store
                    .sync_runnable(&render.id, true, render.version)
                    .await?;
            }
            Some(_) => {}
            None => super::renders::clear_leftovers(store, &marker.id).await?,
        }
        store
            .writing()?
            .delete_one(doc! { "_id": &marker.id })
            .await?;
        tracing::warn!(render_id = %marker.id, "settled a render its broker left half-written");
        settled += 1;
    }
    Ok(settled)
}

pub(super) async fn recount_tallies(store: &MongoStore, now: DateTime<Utc>) -> StoreResult<i64> {
    let open: Vec<RenderDoc> = store
        .renders()?
        .find(open_renders_filter(None))
        .await?
        .try_collect()
        .await?;
    let mut corrected = 0;
    for doc in open {
        // Mid-re-split its old and new tasks are both stored: the re-split
        // moves its counters once it is through (`adaptive`).
        if doc.resplit.is_some() {
            continue;
        }
        if store.recount_tally(doc, now).await? {
            corrected += 1;
        }
    }
    Ok(corrected)
}

pub(super) async fn acquire_lease(
    store: &MongoStore,
    name: &str,
    holder: &str,
    ttl: chrono::Duration,
    now: DateTime<Utc>,
) -> StoreResult<LeaderLease> {
    let leases = store.leases()?;
    for _ in 0..3 {
        let taken = leases
            .find_one_and_update(
                lease_take_filter(name, holder, now),
                lease_take_update(holder, now + ttl),
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match taken {
            Ok(Some(lease)) => return Ok(lease.to_lease()),
            Ok(None) => {}
            // Someone else holds it and it has not lapsed (the upsert
            // tried to create a second document with its name).
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(current) = leases.find_one(doc! { "_id": name }).await? {
            return Ok(current.to_lease());
        }
        // Released between the two steps: try again.
    }
    Err(StoreError::Unavailable(format!(
        "the lease {name} changed hands too often to take; the next tick tries again"
    )))
}

pub(super) async fn release_lease(store: &MongoStore, name: &str, holder: &str) -> StoreResult<()> {
    store
        .leases()?
        .delete_one(lease_release_filter(name, holder))
        .await?;
    Ok(())
}

pub(super) async fn current_lease(
    store: &MongoStore,
    name: &str,
) -> StoreResult<Option<LeaderLease>> {
    Ok(store
        .leases()?
        .find_one(doc! { "_id": name })
        .await?
        .map(|l| l.to_lease()))
}

/// The failed task, only while it is still failed after `retries` retries:
/// one broker retries it once.
pub fn retry_filter(task: &str, retries: i64) -> Document {
    doc! { "_id": task, "status": TaskStatus::Failed.as_str(), "retries": retries }
}

/// A failed task gets another attempt, from scratch.
pub fn retry_update(to: TaskStatus, now: DateTime<Utc>) -> Document {
    doc! {
        "$set": {
            "status": to.as_str(),
            "worker_id": Bson::Null,
            "lease_id": Bson::Null,
            "frames_done": 0_i64,
            "started_at": Bson::Null,
            "finished_at": Bson::Null,
            "queued_at": bson_time(now),
        },
        "$inc": { "retries": 1_i64, "history_seq": 1_i64 },
    }
}

/// Pending tasks of dispatchable renders that became pending at or before
/// their priority's cutoff, counted per render in dispatch order. `cutoffs`
/// holds (priority rank, cutoff) for the levels that may be overdue at all;
/// `None` when none may.
pub fn overdue_pipeline(cutoffs: &[(i64, DateTime<Utc>)]) -> Option<Vec<Document>> {
    if cutoffs.is_empty() {
        return None;
    }
    let per_level: Vec<Document> = cutoffs
        .iter()
        .map(
            |(rank, cutoff)| doc! { "priority": rank, "queued_at": { "$lte": bson_time(*cutoff) } },
        )
        .collect();
    Some(vec![
        doc! { "$match": {
            "status": CLAIMABLE_TASK_STATUS.as_str(),
            "runnable": true,
            "$or": per_level,
        } },
        doc! { "$group": {
            "_id": "$render_id",
            "priority": { "$first": "$priority" },
            "render_seq": { "$first": "$render_seq" },
            "tags": { "$first": "$required_tags" },
            "tasks": { "$sum": 1_i64 },
        } },
        doc! { "$sort": { "priority": -1, "render_seq": 1 } },
    ])
}

/// The worker, only while it is marked alive and silent since `cutoff`: one
/// broker marks it offline once, and a heartbeat in between keeps it.
pub fn lost_worker_filter(worker: &str, cutoff: DateTime<Utc>) -> Document {
    doc! { "_id": worker, "offline": false, "last_heartbeat": { "$lte": bson_time(cutoff) } }
}

/// The lease `name`, only when `holder` may take it: it is theirs or it lapsed.
pub fn lease_take_filter(name: &str, holder: &str, now: DateTime<Utc>) -> Document {
    doc! {
        "_id": name,
        "$or": [
            { "holder": holder },
            { "expires_at": { "$lte": bson_time(now) } },
        ],
    }
}

/// Takes or renews the lease until `expires_at`.
pub fn lease_take_update(holder: &str, expires_at: DateTime<Utc>) -> Document {
    doc! { "$set": { "holder": holder, "expires_at": bson_time(expires_at) } }
}

/// The running tasks of these workers.
pub fn running_of_workers_filter(workers: &[&str]) -> Document {
    doc! { "worker_id": { "$in": workers }, "status": LEASED_TASK_STATUS.as_str() }
}

/// Workers marked alive that have been silent since `cutoff`.
pub fn silent_workers_filter(cutoff: DateTime<Utc>) -> Document {
    doc! { "offline": false, "last_heartbeat": { "$lte": bson_time(cutoff) } }
}

/// Marks a worker offline, with its event (`mode`: as last read).
pub fn offline_update(mode: WorkerMode, now: DateTime<Utc>) -> Document {
    let mut set = doc! { "offline": true, "seen_offline": true };
    set.extend(outbox_set(&fresh_key(), &Entry::worker(mode, true, now)));
    doc! { "$set": set }
}

/// The lease, only if `holder` has it.
pub fn lease_release_filter(name: &str, holder: &str) -> Document {
    doc! { "_id": name, "holder": holder }
}

pub(super) async fn settle_waiting(store: &MongoStore, now: DateTime<Utc>) -> StoreResult<u64> {
    store.settle_all_waiting(now).await
}
