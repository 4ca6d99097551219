//! Workers: registration, operator changes, heartbeats.

use std::collections::HashMap;

use bson::{doc, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use renderfarm_wire::{Heartbeat, HeartbeatAction, Worker, WorkerAction};
use uuid::Uuid;

use super::events::{add_set, fresh_key, outbox_of, outbox_set, Entry};
use super::{counters::*, documents::*, upkeep::*, *};
use crate::domain::{
    check_frames_done, hands_back, heartbeat_action, heartbeat_task, self_transition,
    worker_transition, IllegalTransition, Requeue, ValidWorkerHours, ValidWorkerSpec, WorkerMode,
    REMOVE_ONLY_DISABLED,
};
use crate::store::{Store, StoreError, StoreResult};

impl MongoStore {
    /// Marks the worker alive; its document as it is now.
    pub(super) async fn mark_alive(
        &self,
        worker: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<WorkerDoc> {
        self.workers()?
            .find_one_and_update(doc! { "_id": worker }, alive_update(now))
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| StoreError::not_found("worker", worker))
    }

    pub(super) async fn workers_by_id(
        &self,
        ids: Vec<&str>,
    ) -> StoreResult<HashMap<String, WorkerDoc>> {
        let docs: Vec<WorkerDoc> = self
            .workers()?
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?;
        Ok(docs.into_iter().map(|w| (w.id.clone(), w)).collect())
    }
}

pub(super) async fn register_worker(
    store: &MongoStore,
    spec: ValidWorkerSpec,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    let seq = store.next_seq(WORKERS).await?;
    let doc = WorkerDoc {
        id: Uuid::now_v7().to_string(),
        seq,
        name: spec.name,
        tags: spec.tags,
        mode: WorkerMode::Active.as_str().into(),
        offline: false,
        last_heartbeat: bson_time(now),
        registered_at: bson_time(now),
        // It appears with its event, in the same insert.
        events: Some(outbox_of(
            &fresh_key(),
            &Entry::worker(WorkerMode::Active, false, now),
        )),
        has_events: Some(true),
        seen_offline: Some(false),
        last_render_seq: None,
        warm_streak: None,
        kinds: Some(spec.kinds),
        time_zone: spec.hours.time_zone,
        agent_hours: spec.hours.available,
        operator_hours: None,
        strict_hours: spec.hours.strict,
        drained_by_itself: false,
        platform: Some(spec.platform),
    };
    store.workers()?.insert_one(&doc).await?;
    tracing::info!(worker_id = %doc.id, name = %doc.name, "worker registered");
    doc.to_worker(None, now)
}

pub(super) async fn change_worker_itself(
    store: &MongoStore,
    id: Uuid,
    action: WorkerAction,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    let id_s = id.to_string();
    let workers = store.workers()?;
    for _ in 0..MAX_CAS_ATTEMPTS {
        let doc = workers
            .find_one(doc! { "_id": &id_s })
            .await?
            .ok_or_else(|| StoreError::not_found("worker", &id_s))?;
        let (next, own) = self_transition(doc.mode()?, doc.drained_by_itself, action)?;
        let mut update = doc! { "$set": { "mode": next.as_str(), "drained_by_itself": own } };
        if next.as_str() != doc.mode {
            let event = Entry::worker(next, doc.offline, now);
            update = add_set(update, outbox_set(&fresh_key(), &event));
        }
        let filter = doc! {
            "_id": &id_s,
            "mode": &doc.mode,
            "drained_by_itself": if doc.drained_by_itself { bson::Bson::Boolean(true) } else { bson::bson!({ "$ne": true }) },
        };
        if workers.update_one(filter, update).await?.matched_count == 1 {
            return get_worker(store, id, now).await;
        }
    }
    Err(StoreError::Unavailable(format!(
        "worker {id} changed too often to apply the action; retry"
    )))
}

pub(super) async fn set_worker_hours(
    store: &MongoStore,
    id: Uuid,
    hours: ValidWorkerHours,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    let set = doc! {
        "time_zone": hours.time_zone,
        "agent_hours": hours.available,
        "strict_hours": hours.strict,
    };
    update_worker(store, id, set, now).await
}

pub(super) async fn set_operator_hours(
    store: &MongoStore,
    id: Uuid,
    hours: Option<String>,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    update_worker(store, id, doc! { "operator_hours": hours }, now).await
}

/// Sets `set` on the worker `id` and answers the worker as it is then (its
/// hours seen at `now`); not found when there is no such worker.
async fn update_worker(
    store: &MongoStore,
    id: Uuid,
    set: Document,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    let changed = store
        .workers()?
        .update_one(doc! { "_id": id.to_string() }, doc! { "$set": set })
        .await?;
    if changed.matched_count == 0 {
        return Err(StoreError::not_found("worker", id));
    }
    get_worker(store, id, now).await
}

pub(super) async fn get_worker(
    store: &MongoStore,
    id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    let id = id.to_string();
    let doc = store
        .workers()?
        .find_one(doc! { "_id": &id })
        .await?
        .ok_or_else(|| StoreError::not_found("worker", &id))?;
    let task = store.current_task_of(&id).await?;
    doc.to_worker(task.as_ref().map(|t| t.id.as_str()), now)
}

pub(super) async fn list_workers(
    store: &MongoStore,
    now: DateTime<Utc>,
) -> StoreResult<Vec<Worker>> {
    let docs: Vec<WorkerDoc> = store
        .workers()?
        .find(doc! {})
        .sort(doc! { "seq": 1 })
        .await?
        .try_collect()
        .await?;
    let ids: Vec<&str> = docs.iter().map(|w| w.id.as_str()).collect();
    let running: Vec<Document> = store
        .db()?
        .collection::<Document>(TASKS)
        .find(running_of_workers_filter(&ids))
        .projection(doc! { "_id": 1, "worker_id": 1 })
        .await?
        .try_collect()
        .await?;
    let current: HashMap<&str, &str> = running
        .iter()
        .filter_map(|t| Some((t.get_str("worker_id").ok()?, t.get_str("_id").ok()?)))
        .collect();
    docs.iter()
        .map(|w| w.to_worker(current.get(w.id.as_str()).copied(), now))
        .collect()
}

pub(super) async fn change_worker(
    store: &MongoStore,
    id: Uuid,
    action: WorkerAction,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Worker> {
    let id_s = id.to_string();
    let workers = store.workers()?;
    let mut to = None;
    for _ in 0..MAX_CAS_ATTEMPTS {
        let doc = workers
            .find_one(doc! { "_id": &id_s })
            .await?
            .ok_or_else(|| StoreError::not_found("worker", &id_s))?;
        let next = worker_transition(doc.mode()?, action)?;
        let mut update = mode_update(next);
        if next.as_str() != doc.mode {
            let event = Entry::worker(next, doc.offline, now);
            update = add_set(update, outbox_set(&fresh_key(), &event));
        }
        let changed = workers
            .update_one(mode_cas_filter(&id_s, &doc.mode), update)
            .await?;
        if changed.matched_count == 1 {
            to = Some(next);
            break;
        }
    }
    let Some(to) = to else {
        return Err(StoreError::Unavailable(format!(
            "worker {id} changed too often to apply the action; retry"
        )));
    };
    if to == WorkerMode::Disabled {
        // A disabled machine stops now: its task goes back to the queue
        // without counting as a failure, and its next heartbeat answers
        // abort.
        if let Some(task) = store.current_task_of(&id_s).await? {
            if let Some(lease) = task.lease_id.clone() {
                if store
                    .requeue_under_lease(
                        super::tasks::lease_filter(&task.id, &lease),
                        &lease,
                        task.worker_id.as_deref(),
                        &Requeue::WorkerDisabled,
                        actor,
                        None,
                        now,
                    )
                    .await?
                    .is_some()
                {
                    tracing::info!(worker_id = %id, task_id = %task.id, "task of disabled worker requeued");
                }
            }
        }
    }
    store.get_worker(id, now).await
}

pub(super) async fn heartbeat(
    store: &MongoStore,
    worker_id: Uuid,
    beat: &Heartbeat,
    now: DateTime<Utc>,
) -> StoreResult<HeartbeatAction> {
    let worker = worker_id.to_string();
    let alive = store.mark_alive(&worker, now).await?;
    let Some((task_id, lease_id)) = heartbeat_task(beat.task_id, beat.lease_id)
        .map_err(|e| StoreError::Invalid(e.to_string()))?
    else {
        return Ok(HeartbeatAction::Continue);
    };
    let task_id = task_id.to_string();
    let task = store.tasks()?.find_one(doc! { "_id": &task_id }).await?;
    let held = task.as_ref().map(|t| t.lease()).transpose()?;
    let action = heartbeat_action(held.as_ref(), lease_id, worker_id);
    if let (HeartbeatAction::Continue, Some(task)) = (action, &task) {
        if hands_back(&alive.hours(), now) {
            let lease = lease_id.to_string();
            store
                .requeue_under_lease(
                    super::tasks::lease_filter(&task.id, &lease),
                    &lease,
                    Some(&worker),
                    &Requeue::OutsideHours,
                    None,
                    None,
                    now,
                )
                .await?;
            tracing::info!(worker_id = %worker_id, task_id = %task.id, "task handed back: the worker's hours ended (--strict-hours)");
            return Ok(HeartbeatAction::Abort);
        }
    }
    if let (HeartbeatAction::Continue, Some(task), Some(frames)) = (action, &task, beat.frames_done)
    {
        check_frames_done(frames, task.frames()).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if store
            .record_progress(&task.id, &lease_id.to_string(), None, frames, None, now)
            .await?
            .is_none()
        {
            // The lease moved on between the read and the write.
            return Ok(HeartbeatAction::Abort);
        }
    }
    Ok(action)
}

/// Records that a worker is alive.
pub fn alive_update(now: DateTime<Utc>) -> Document {
    doc! { "$set": { "last_heartbeat": bson_time(now), "offline": false } }
}

/// The worker, only while its mode is still `mode`: operator changes are
/// compare-and-set.
pub fn mode_cas_filter(worker: &str, mode: &str) -> Document {
    doc! { "_id": worker, "mode": mode }
}

/// An operator's change of mode: the mode becomes the operator's, not a
/// drain of the worker's own that its next start would lift.
pub fn mode_update(mode: WorkerMode) -> Document {
    doc! { "$set": { "mode": mode.as_str(), "drained_by_itself": false } }
}

/// Workers that could take work now, if they hold none.
pub fn available_workers_filter() -> Document {
    doc! { "mode": WorkerMode::Active.as_str(), "offline": false }
}

pub(super) async fn delete_worker(store: &MongoStore, id: Uuid) -> StoreResult<()> {
    let id_s = id.to_string();
    // Its waiting events and its deletion are kept for the drain.
    let deleted = store
        .db()?
        .collection::<Document>(WORKERS)
        .find_one_and_delete(doc! { "_id": &id_s, "mode": WorkerMode::Disabled.as_str() })
        .await?;
    if let Some(deleted) = deleted {
        return store.stash_worker_deletion(deleted, Utc::now()).await;
    }
    store.get_worker(id, Utc::now()).await?;
    Err(IllegalTransition::new(REMOVE_ONLY_DISABLED).into())
}
