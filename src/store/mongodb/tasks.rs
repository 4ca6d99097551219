//! Tasks: claims, reports under the lease, logs and history.

use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::{Hint, ReturnDocument};
use renderfarm_wire::{
    Assignment, HistoryEvent, Page, Task, TaskHistoryEntry, TaskKind, TaskStatus,
};
use uuid::Uuid;

use super::events::{add_set, claimed_key, ended_key, outbox_set, Entry};
use super::renders::run_again;
use super::rules::{carries_tags, claim_sort};
use super::{documents::*, *};
use crate::domain::{
    check_frames_done, claim_permission, follow_up_kinds, join_log, lease_accepts,
    log_chunks_to_drop, plan_requeue_of_kind, prefers_follow_up, runs_chunks, takes_new_work,
    task_transition, ClaimHead, ClaimPermission, IllegalTransition, Priority, Requeue, TaskEvent,
    TaskReport, WarmState, WarmTarget, CLAIMABLE_TASK_STATUS, LEASED_TASK_STATUS, TASK_LOG_LIMIT,
};
use crate::store::{PageRequest, StoreError, StoreResult};

impl MongoStore {
    pub(super) async fn load_task(&self, id: &str) -> StoreResult<TaskDoc> {
        self.tasks()?
            .find_one(doc! { "_id": id })
            .await?
            .ok_or_else(|| StoreError::not_found("task", id))
    }

    /// Appends one line to a task's history. `seq` comes from the task
    /// change it records, so entries read back in the order they happened;
    /// `actor` is the person who did it, if a person did.
    // One argument per column of the line, as on the SQLite side.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record_history(
        &self,
        task: &str,
        seq: i64,
        event: HistoryEvent,
        worker: Option<&str>,
        detail: Option<String>,
        actor: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.history()?
            .insert_one(HistoryDoc {
                task_id: task.to_string(),
                seq,
                at: bson_time(now),
                event: event.as_str().into(),
                worker_id: worker.map(str::to_string),
                detail,
                actor: actor.map(str::to_string),
            })
            .await?;
        Ok(())
    }

    /// Puts a running task back in the queue without counting a failure,
    /// under its current lease (nothing happens if the lease moved on); the
    /// history says why, and who did it (`actor`, when a person did).
    /// Returns the task as it was.
    /// `fence`: [`lease_filter`], or [`report_filter`] when the worker
    /// reporting is known; `worker`: the one that held the lease, for the
    /// event.
    // One argument per thing the requeue records, as on the SQLite side.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn requeue_under_lease(
        &self,
        fence: Document,
        lease: &str,
        worker: Option<&str>,
        why: &Requeue,
        actor: Option<&str>,
        log_bytes: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<TaskDoc>> {
        let to = task_transition(TaskStatus::Running, TaskEvent::Requeue)?;
        let before = self
            .tasks()?
            .find_one_and_update(fence, requeue_update(to, now, log_bytes, lease, worker))
            .return_document(ReturnDocument::Before)
            .await?;
        if let Some(before) = &before {
            self.tally_task_move(
                &before.render_id,
                before.kind()?,
                TaskStatus::Running,
                to,
                -before.frames_done,
                false,
                now,
            )
            .await?;
            let (event, detail) = why.history();
            self.record_history(
                &before.id,
                before.history_seq,
                event,
                before.worker_id.as_deref(),
                Some(detail.to_string()),
                actor,
                now,
            )
            .await?;
        }
        Ok(before)
    }

    /// Records a running task's frames done under `lease`, in one command
    /// fenced by the lease and by the task's frame count; `None` when that
    /// matched nothing (the caller finds out why).
    pub(super) async fn record_progress(
        &self,
        task: &str,
        lease: &str,
        holder: Option<&str>,
        frames_done: i64,
        log_bytes: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(TaskDoc, Document)>> {
        if frames_done < 0 {
            return Ok(None);
        }
        let mut filter = report_filter(task, lease, holder);
        filter.insert("$expr", frames_at_least(frames_done));
        let update = progress_update(frames_done, log_bytes);
        let before = self
            .tasks()?
            .find_one_and_update(filter, update.clone())
            .return_document(ReturnDocument::Before)
            .await?;
        if let Some(before) = &before {
            let delta = frames_done - before.frames_done;
            if delta != 0 {
                self.tally_task_move(
                    &before.render_id,
                    before.kind()?,
                    TaskStatus::Running,
                    TaskStatus::Running,
                    delta,
                    false,
                    now,
                )
                .await?;
            }
        }
        Ok(before.map(|b| (b, update)))
    }

    /// Why a report fenced by its lease matched nothing: the task is
    /// unknown, the lease is not (or no longer) its current one, or the
    /// frames done do not fit the task.
    async fn refusal(
        &self,
        holder: Option<Uuid>,
        task_id: Uuid,
        lease_id: Uuid,
        report: &TaskReport,
    ) -> StoreError {
        let task = match self.load_task(&task_id.to_string()).await {
            Ok(task) => task,
            Err(e) => return e,
        };
        let lease = match task.lease() {
            Ok(lease) => lease,
            Err(e) => return e,
        };
        if let Err(why) = lease_accepts(&lease, lease_id, holder) {
            return StoreError::lease_refused(task_id, why);
        }
        if let TaskReport::Progress { frames_done } = report {
            if let Err(e) = check_frames_done(*frames_done, task.frames()) {
                return StoreError::Invalid(e.to_string());
            }
        }
        // The lease moved on between the write and this look.
        StoreError::StaleLease { task_id }
    }

    /// Drops the oldest chunks between a task's first and newest once its
    /// log outgrew its bound (see `domain::log_chunks_to_drop`). Reports
    /// under one lease come one at a time, so no two trims of a task race.
    pub(super) async fn trim_log(&self, task: &str, total: i64) -> StoreResult<()> {
        let chunks: Vec<LogSize> = self
            .logs()?
            .clone_with_type::<LogSize>()
            .find(doc! { "task_id": task })
            .projection(doc! { "_id": 0, "seq": 1, "bytes": 1 })
            .sort(doc! { "seq": 1 })
            .await?
            .try_collect()
            .await?;
        let Some(droppable) = chunks.get(1..chunks.len().saturating_sub(1)) else {
            return Ok(());
        };
        let sizes: Vec<i64> = droppable.iter().map(|c| c.bytes).collect();
        let (count, dropped) = log_chunks_to_drop(total, &sizes);
        if count == 0 {
            return Ok(());
        }
        self.logs()?
            .delete_many(doc! {
                "task_id": task,
                "seq": { "$gt": chunks[0].seq, "$lte": droppable[count - 1].seq },
            })
            .await?;
        self.tasks()?
            .update_one(doc! { "_id": task }, log_trimmed_update(dropped))
            .await?;
        Ok(())
    }

    pub(super) async fn ensure_task_exists(&self, id: &str) -> StoreResult<()> {
        let exists = self
            .db()?
            .collection::<Document>(TASKS)
            .find_one(doc! { "_id": id })
            .projection(doc! { "_id": 1 })
            .await?;
        match exists {
            Some(_) => Ok(()),
            None => Err(StoreError::not_found("task", id)),
        }
    }

    pub(super) async fn current_task_of(&self, worker: &str) -> StoreResult<Option<TaskDoc>> {
        Ok(self.tasks()?.find_one(held_filter(worker)).await?)
    }

    /// The assignment of the task `worker` holds, if any: a worker that asks
    /// again while it holds one gets the same one.
    async fn held_assignment(&self, worker: &str) -> StoreResult<Option<Assignment>> {
        let Some(held) = self.current_task_of(worker).await? else {
            return Ok(None);
        };
        let render = self.load_render(&held.render_id).await?;
        held.assignment(&render).map(Some)
    }
}

pub(super) async fn list_tasks(
    store: &MongoStore,
    render_id: Uuid,
    status: Option<TaskStatus>,
    page: PageRequest,
) -> StoreResult<Page<Task>> {
    let render = store.load_render(&render_id.to_string()).await?;
    let (limit, offset) = page_bounds(page);
    let mut filter = doc! { "render_id": &render.id };
    if let Some(status) = status {
        filter.insert("status", status.as_str());
    }
    let docs = fetch_page(&store.tasks()?, filter, task_list_sort(), limit, offset).await?;
    Ok(Page {
        items: docs
            .iter()
            .map(TaskDoc::to_task)
            .collect::<StoreResult<_>>()?,
        total: render.to_render()?.progress.tasks_in(status),
        limit,
        offset,
    })
}

pub(super) async fn requeue_one_task(
    store: &MongoStore,
    id: Uuid,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Task> {
    let id = id.to_string();
    let task = store.load_task(&id).await?;
    // A render's document goes first when it is deleted.
    let Some(render) = store
        .renders()?
        .find_one(doc! { "_id": &task.render_id })
        .await?
    else {
        return Err(IllegalTransition::new(
            "its render is being deleted (or was never stored whole); nothing of it runs again",
        )
        .into());
    };
    let from = task.status()?;
    let plan = plan_requeue_of_kind(task.kind()?, from, render.status()?, &render.progress())?;
    let to = task_transition(from, plan.event)?;
    let mut update = with_history(doc! { "$set": run_again(to, now) });
    if let (true, Some(lease)) = (from == LEASED_TASK_STATUS, task.lease_id.as_deref()) {
        // Taken from its worker: a move from running, told as on SQLite.
        update = with_task_event(
            update,
            ended_key(lease),
            to,
            task.worker_id.as_deref(),
            0,
            now,
        );
    }
    // Fenced by the task as read: a claim, report or scheduler move that
    // came first makes this one match nothing.
    let before = store
        .tasks()?
        .find_one_and_update(
            requeue_one_filter(&id, from, task.lease_id.as_deref()),
            update,
        )
        .return_document(ReturnDocument::Before)
        .await?
        .ok_or_else(|| {
            StoreError::from(IllegalTransition::new(
                "the task changed while it was being requeued; look at it again and retry",
            ))
        })?;
    store
        .tally_task_move(
            &before.render_id,
            before.kind()?,
            from,
            to,
            -before.frames_done,
            false,
            now,
        )
        .await?;
    if let Some(status) = plan.reopen_render {
        // The task is pending but not runnable until the render is
        // claimable again, which syncs its tasks' flags.
        let (was, _, _, after) = store
            .write_render_status(&before.render_id, true, now, |_| Ok(status))
            .await?;
        let doc = store.after_status_write(was, after, &[], now).await?;
        store.save_tally(doc, false, now).await?;
    }
    let (event, detail) = plan.history();
    store
        .record_history(
            &before.id,
            before.history_seq,
            event,
            before.worker_id.as_deref(),
            Some(detail.to_string()),
            actor,
            now,
        )
        .await?;
    tracing::info!(task_id = %id, "operator requeued a task");
    store.load_task(&id).await?.to_task()
}

pub(super) async fn get_task(store: &MongoStore, id: Uuid) -> StoreResult<Task> {
    store.load_task(&id.to_string()).await?.to_task()
}

pub(super) async fn task_log(store: &MongoStore, id: Uuid) -> StoreResult<String> {
    let id = id.to_string();
    let task = store.load_task(&id).await?;
    let chunks: Vec<LogDoc> = store
        .logs()?
        .find(doc! { "task_id": &id })
        .sort(doc! { "seq": 1 })
        .await?
        .try_collect()
        .await?;
    Ok(join_log(
        chunks.into_iter().map(|c| c.text),
        task.log_dropped,
    ))
}

/// What one claim attempt came to.
enum ClaimAttempt {
    Took(Box<TaskDoc>),
    NoneLeft,
    /// The worker holds a running task already.
    HoldsOne,
}

impl MongoStore {
    /// Hands the first chunk matching `filter` in claim order to `worker`.
    async fn claim_matching(
        &self,
        filter: Document,
        update: Document,
    ) -> StoreResult<ClaimAttempt> {
        self.claim_first(filter, update, claim_sort(), CLAIM_INDEX)
            .await
    }

    /// Hands the first task matching `filter` in `sort`'s order, walking
    /// the index `index`, to `worker`.
    async fn claim_first(
        &self,
        filter: Document,
        update: Document,
        sort: Document,
        index: &str,
    ) -> StoreResult<ClaimAttempt> {
        // The `tasks_one_running_per_worker` index lets a worker hold one
        // running task: a worker that holds one already (it asked again, or
        // two of its requests raced) is refused by the server here,
        // atomically. So the common claim needs no look beforehand.
        let claimed = self
            .tasks()?
            .find_one_and_update(filter, update)
            .sort(sort)
            .hint(Hint::Name(index.into()))
            .return_document(ReturnDocument::After)
            .await;
        match claimed {
            Ok(Some(task)) => Ok(ClaimAttempt::Took(Box::new(task))),
            Ok(None) => Ok(ClaimAttempt::NoneLeft),
            Err(e) if is_duplicate_key(&e) => Ok(ClaimAttempt::HoldsOne),
            Err(e) => Err(e.into()),
        }
    }

    /// The priority of the first pending follow-up of `kind` a worker with
    /// `worker_tags` may take, if one waits.
    async fn first_follow_up(
        &self,
        kind: TaskKind,
        worker_tags: &[String],
    ) -> StoreResult<Option<Priority>> {
        let first = self
            .db()?
            .collection::<Document>(TASKS)
            .find_one(follow_up_filter(kind, worker_tags))
            .sort(follow_up_sort())
            .hint(Hint::Name(FOLLOW_UP_INDEX.into()))
            .projection(doc! { "_id": 0, "priority": 1 })
            .await?;
        Ok(first
            .and_then(|d| match d.get("priority") {
                Some(Bson::Int64(v)) => Some(*v),
                Some(Bson::Int32(v)) => Some(i64::from(*v)),
                _ => None,
            })
            .and_then(Priority::from_rank))
    }

    /// Hands the first follow-up matching `filter` to `worker`.
    async fn claim_follow_up(
        &self,
        filter: Document,
        update: Document,
    ) -> StoreResult<ClaimAttempt> {
        self.claim_first(filter, update, follow_up_sort(), FOLLOW_UP_INDEX)
            .await
    }

    /// The first render in claim order with work for a worker with
    /// `worker_tags`: read from the claim index alone.
    async fn claim_head(
        &self,
        worker_tags: &[String],
        blocked: &[String],
    ) -> StoreResult<Option<ClaimHead<i64>>> {
        let head = self
            .db()?
            .collection::<Document>(TASKS)
            .find_one(without_renders(claim_filter(worker_tags), blocked))
            .sort(claim_sort())
            .hint(Hint::Name(CLAIM_INDEX.into()))
            .projection(doc! { "_id": 0, "priority": 1, "render_seq": 1 })
            .await?;
        head.map(|h| claim_head_of(&h)).transpose()
    }
}

/// The head as the claim index's projection gives it.
fn claim_head_of(head: &Document) -> StoreResult<ClaimHead<i64>> {
    let int = |key: &str| match head.get(key) {
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Int32(v)) => Some(i64::from(*v)),
        _ => None,
    };
    let priority = int("priority").and_then(Priority::from_rank);
    match (int("render_seq"), priority) {
        (Some(render), Some(priority)) => Ok(ClaimHead { render, priority }),
        _ => Err(corrupt(format!("a claimable task reads {head}"))),
    }
}

pub(super) async fn claim_next_task(
    store: &MongoStore,
    worker_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<Option<Assignment>> {
    let worker_key = worker_id.to_string();
    let worker = store.mark_alive(&worker_key, now).await?;
    if claim_permission(worker.mode()?)? == ClaimPermission::NoNewWork
        || !takes_new_work(&worker.hours(), now)
    {
        return store.held_assignment(&worker_key).await;
    }
    let to = task_transition(TaskStatus::Pending, TaskEvent::Claim)?;
    let lease = Uuid::new_v4().to_string();
    let update = || claim_update(to, &worker_key, &lease, now);
    let warm = worker.warm_state();
    let mut attempt = ClaimAttempt::NoneLeft;
    let mut preferred = false;
    let mut follow_up = false;
    let chunks = runs_chunks(&worker.kinds());
    // The renders this worker is blocklisted from: one read of a partial
    // index, empty while nobody is blocked.
    let blocked = match chunks {
        true => store.blocked_renders(&worker_key).await?,
        false => Vec::new(),
    };
    // A follow-up at the head's priority or above goes first
    // (`domain::prefers_follow_up`): two more reads, only for a worker that
    // runs follow-ups and only while one waits.
    for kind in follow_up_kinds(&worker.kinds()) {
        let Some(waiting) = store.first_follow_up(kind, &worker.tags).await? else {
            continue;
        };
        let head = match chunks {
            true => store.claim_head(&worker.tags, &blocked).await?,
            false => None,
        };
        if prefers_follow_up(waiting, head.map(|h| h.priority)) {
            attempt = store
                .claim_follow_up(follow_up_filter(kind, &worker.tags), update())
                .await?;
            follow_up = matches!(attempt, ClaimAttempt::Took(_));
        }
        break;
    }
    // The warm preference needs the head first: one read of the claim index,
    // only for a worker that may prefer at all.
    if chunks && !follow_up && warm.may_prefer() {
        let Some(head) = store.claim_head(&worker.tags, &blocked).await? else {
            return Ok(None);
        };
        if let Some(target) = warm.target(&head) {
            attempt = store
                .claim_matching(
                    without_renders(warm_claim_filter(&worker.tags, &target), &blocked),
                    update(),
                )
                .await?;
            preferred = matches!(attempt, ClaimAttempt::Took(_));
        }
    }
    if chunks && matches!(attempt, ClaimAttempt::NoneLeft) {
        attempt = store
            .claim_matching(
                without_renders(claim_filter(&worker.tags), &blocked),
                update(),
            )
            .await?;
    }
    let task = match attempt {
        ClaimAttempt::Took(task) => task,
        ClaimAttempt::NoneLeft => return Ok(None),
        ClaimAttempt::HoldsOne => return store.held_assignment(&worker_key).await,
    };
    store.remember_lease(&lease, task.frames(), &worker_key);
    let render = store
        .tally_task_move(
            &task.render_id,
            task.kind()?,
            TaskStatus::Pending,
            to,
            0,
            false,
            now,
        )
        .await?;
    store
        .record_history(
            &task.id,
            task.history_seq - 1,
            HistoryEvent::Assigned,
            Some(&worker_key),
            None,
            None,
            now,
        )
        .await?;
    let after = warm.after_claim(task.render_seq, preferred);
    if after != warm && !follow_up {
        // Advisory: a lost write costs the worker a preference, or lets one
        // streak run long once (the bound holds for the writes that land),
        // never the claim it is part of, which the worker would be handed
        // again without this write anyway.
        let saved = match store.workers() {
            Ok(workers) => workers
                .update_one(doc! { "_id": &worker_key }, warm_update(&after))
                .await
                .map_err(StoreError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            tracing::warn!(worker_id = %worker_id, error = %e, "the worker's warm state was not saved");
        }
    }
    tracing::debug!(
        worker_id = %worker_id,
        task_id = %task.id,
        render_id = %task.render_id,
        lease_id = ?task.lease_id,
        preferred,
        "task claimed"
    );
    task.assignment(&render).map(Some)
}

pub(super) async fn report_task(
    store: &MongoStore,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
    report: TaskReport,
    log: Option<String>,
    now: DateTime<Utc>,
) -> StoreResult<Task> {
    let id = task_id.to_string();
    let lease = lease_id.to_string();
    let holder_s = holder.map(|w| w.to_string());
    let holder_s = holder_s.as_deref();
    let log = log.filter(|t| !t.is_empty());
    let log_bytes = log.as_ref().map(|text| text.len() as i64);
    let tasks = store.tasks()?;
    // A report that ends the lease names its worker in its event: the
    // reporting worker's, or remembered from the claim, or read.
    let handed = match report {
        TaskReport::Progress { .. } => None,
        _ => store.recall_lease(&lease),
    };
    let mut worker = holder_s
        .map(str::to_string)
        .or_else(|| handed.as_ref().map(|h| h.worker.clone()));
    let mut frames = handed.map(|h| h.frames);
    let ends = !matches!(report, TaskReport::Progress { .. });
    if ends && (worker.is_none() || (frames.is_none() && matches!(report, TaskReport::Complete))) {
        let task = store.load_task(&id).await?;
        worker = worker.or(task.worker_id.clone());
        frames = frames.or(Some(task.frames()));
    }
    let worker = worker.as_deref();
    // Each report is one update fenced by the lease, from which the task's
    // new state follows (the same update applied to the task as it was);
    // only a refused report looks further.
    let changed: Option<(TaskDoc, Document)> = match &report {
        TaskReport::Progress { frames_done } => {
            store
                .record_progress(&id, &lease, holder_s, *frames_done, log_bytes, now)
                .await?
        }
        TaskReport::Release => {
            // The update `requeue_under_lease` sends, to apply to the task
            // as it was.
            let to = task_transition(TaskStatus::Running, TaskEvent::Requeue)?;
            let update = requeue_update(to, now, log_bytes, &lease, worker);
            store
                .requeue_under_lease(
                    report_filter(&id, &lease, holder_s),
                    &lease,
                    worker,
                    &Requeue::Released,
                    None,
                    log_bytes,
                    now,
                )
                .await?
                .map(|b| (b, update))
        }
        TaskReport::Complete => {
            // Its frame count, which the update sets as its frames done.
            let frames = frames.ok_or_else(|| StoreError::not_found("task", &id))?;
            let to = task_transition(TaskStatus::Running, TaskEvent::Complete)?;
            let update = complete_update(to, frames, now, log_bytes, &lease, worker);
            let before = tasks
                .find_one_and_update(report_filter(&id, &lease, holder_s), update.clone())
                .return_document(ReturnDocument::Before)
                .await?;
            if let Some(b) = &before {
                store
                    .tally_task_move(
                        &b.render_id,
                        b.kind()?,
                        TaskStatus::Running,
                        to,
                        b.frames() - b.frames_done,
                        false,
                        now,
                    )
                    .await?;
                store
                    .record_history(
                        &id,
                        b.history_seq,
                        HistoryEvent::Completed,
                        b.worker_id.as_deref(),
                        None,
                        None,
                        now,
                    )
                    .await?;
            }
            before.map(|b| (b, update))
        }
        TaskReport::Fail { exit_code, reason } => {
            let to = task_transition(TaskStatus::Running, TaskEvent::Fail)?;
            let update = fail_update(to, *exit_code, reason, now, log_bytes, &lease, worker);
            let before = tasks
                .find_one_and_update(report_filter(&id, &lease, holder_s), update.clone())
                .return_document(ReturnDocument::Before)
                .await?;
            if let Some(b) = &before {
                let retry = TaskEvent::Retry {
                    retries: b.retries,
                    max_retries: b.max_retries,
                };
                let failed_for_good = task_transition(to, retry).is_err();
                store
                    .tally_task_move(
                        &b.render_id,
                        b.kind()?,
                        TaskStatus::Running,
                        to,
                        -b.frames_done,
                        failed_for_good,
                        now,
                    )
                    .await?;
                let detail = match exit_code {
                    Some(code) => format!("exit code {code}"),
                    None => "no exit code".to_string(),
                };
                store
                    .record_history(
                        &id,
                        b.history_seq,
                        HistoryEvent::Failed,
                        b.worker_id.as_deref(),
                        Some(detail),
                        None,
                        now,
                    )
                    .await?;
                if let (TaskKind::Blender, Some(worker)) = (b.kind()?, b.worker_id.as_deref()) {
                    store.record_failure(&b.render_id, worker, now).await?;
                }
            }
            before.map(|b| (b, update))
        }
    };
    let Some((before, update)) = changed else {
        return Err(store.refusal(holder, task_id, lease_id, &report).await);
    };
    if let Some(text) = log {
        let bytes = text.len() as i64;
        store
            .logs()?
            .insert_one(LogDoc {
                task_id: id.clone(),
                seq: before.log_chunks,
                text,
                bytes,
            })
            .await?;
        let total = before.log_bytes + bytes;
        if total > TASK_LOG_LIMIT {
            store.trim_log(&id, total).await?;
        }
    }
    applied(&before, &update)?.to_task()
}

pub(super) async fn task_history(
    store: &MongoStore,
    task_id: Uuid,
) -> StoreResult<Vec<TaskHistoryEntry>> {
    let id = task_id.to_string();
    store.ensure_task_exists(&id).await?;
    let docs: Vec<HistoryDoc> = store
        .history()?
        .find(doc! { "task_id": &id })
        .sort(doc! { "seq": 1 })
        .await?
        .try_collect()
        .await?;
    docs.iter().map(HistoryDoc::to_entry).collect()
}

/// The index the claim walks; named in the migration and hinted by the claim.
pub const CLAIM_INDEX: &str = "tasks_claim_ranked";

/// Claimable tasks (`runnable`: of a claimable render, kept in step with the
/// render's status) whose render needs no tag the worker lacks. Sorted by
/// `rules::claim_sort`, which matches the key order of [`CLAIM_INDEX`] after
/// its two equality fields, so the server walks the index and stops at the
/// first match.
/// `filter`, leaving out the tasks of the renders `blocked`.
pub fn without_renders(mut filter: Document, blocked: &[String]) -> Document {
    if !blocked.is_empty() {
        filter.insert("render_id", doc! { "$nin": blocked });
    }
    filter
}

pub fn claim_filter(worker_tags: &[String]) -> Document {
    doc! {
        "status": CLAIMABLE_TASK_STATUS.as_str(),
        "runnable": true,
        "required_tags": carries_tags(worker_tags),
    }
}

/// The index a follow-up claim walks (migration 0014): follow-ups only,
/// chunks carry no `kind`.
pub const FOLLOW_UP_INDEX: &str = "tasks_follow_up";

/// Pending follow-ups of `kind` (`follow_up_ready`: their render lets them
/// run, `domain::kind_runnable_in`) whose render needs no tag the worker
/// lacks.
pub fn follow_up_filter(kind: TaskKind, worker_tags: &[String]) -> Document {
    doc! {
        "kind": kind.as_str(),
        "status": CLAIMABLE_TASK_STATUS.as_str(),
        "follow_up_ready": true,
        "required_tags": carries_tags(worker_tags),
    }
}

/// Follow-ups by priority, then render age: the claim order without frames.
pub fn follow_up_sort() -> Document {
    let mut sort = claim_sort();
    sort.remove("frame_start");
    sort
}

/// A warm target (`domain::WarmTarget`): claimable tasks of one render at
/// one priority, which the claim index finds by its leading fields.
pub fn warm_claim_filter(worker_tags: &[String], target: &WarmTarget<i64>) -> Document {
    let mut filter = claim_filter(worker_tags);
    filter.insert("priority", target.priority.rank());
    filter.insert("render_seq", target.render);
    filter
}

/// Keeps a worker's warm preference's state after a claim.
pub fn warm_update(warm: &WarmState<i64>) -> Document {
    doc! { "$set": { "last_render_seq": warm.last_render, "warm_streak": warm.streak } }
}

/// Hands a task to `worker` under a new `lease`, with its event.
pub fn claim_update(to: TaskStatus, worker: &str, lease: &str, now: DateTime<Utc>) -> Document {
    let update = with_history(doc! {
        "$set": {
            "status": to.as_str(),
            "worker_id": worker,
            "lease_id": lease,
            "frames_done": 0_i64,
            "started_at": bson_time(now),
            "finished_at": Bson::Null,
        }
    });
    with_task_event(update, claimed_key(lease), to, Some(worker), 0, now)
}

/// A status change to or from running records its event in the task's
/// outbox, in the same update; its frames done are what the event tells.
fn with_task_event(
    update: Document,
    key: String,
    to: TaskStatus,
    worker: Option<&str>,
    frames_done: i64,
    now: DateTime<Utc>,
) -> Document {
    let mut set = outbox_set(&key, &Entry::task(to, worker, frames_done, now));
    set.insert("seen_frames_done", frames_done);
    add_set(update, set)
}

/// The task `worker` is rendering now, if any.
pub fn held_filter(worker: &str) -> Document {
    doc! { "worker_id": worker, "status": LEASED_TASK_STATUS.as_str() }
}

/// The task as an operator's requeue read it: still in `status` under the
/// same lease (none, unless running).
pub fn requeue_one_filter(task: &str, status: TaskStatus, lease: Option<&str>) -> Document {
    doc! { "_id": task, "status": status.as_str(), "lease_id": lease.map_or(Bson::Null, Bson::from) }
}

/// The task, only while it is running under `lease`: every report is fenced
/// by this, so a stale lease matches nothing and changes nothing.
pub fn lease_filter(task: &str, lease: &str) -> Document {
    doc! { "_id": task, "lease_id": lease, "status": LEASED_TASK_STATUS.as_str() }
}

/// [`lease_filter`], and held by `holder` when the reporting worker is known.
pub fn report_filter(task: &str, lease: &str, holder: Option<&str>) -> Document {
    let mut filter = lease_filter(task, lease);
    if let Some(worker) = holder {
        filter.insert("worker_id", worker);
    }
    filter
}

/// `domain::check_frames_done`'s upper bound as a condition on a task
/// document: it has at least `frames_done` frames.
pub fn frames_at_least(frames_done: i64) -> Document {
    doc! { "$gte": ["$frame_end", { "$add": ["$frame_start", frames_done - 1] }] }
}

/// A running task's progress (not a history event).
pub fn progress_update(frames_done: i64, log_bytes: Option<i64>) -> Document {
    with_log(doc! { "$set": { "frames_done": frames_done } }, log_bytes)
}

/// Every frame of the task rendered.
pub fn complete_update(
    to: TaskStatus,
    frames: i64,
    now: DateTime<Utc>,
    log_bytes: Option<i64>,
    lease: &str,
    worker: Option<&str>,
) -> Document {
    let update = with_log(
        with_history(doc! { "$set": {
            "status": to.as_str(),
            "frames_done": frames,
            "finished_at": bson_time(now),
        } }),
        log_bytes,
    );
    with_task_event(update, ended_key(lease), to, worker, frames, now)
}

/// Blender failed; frames done are forgotten (a retry renders them again).
pub fn fail_update(
    to: TaskStatus,
    exit_code: Option<i64>,
    reason: &str,
    now: DateTime<Utc>,
    log_bytes: Option<i64>,
    lease: &str,
    worker: Option<&str>,
) -> Document {
    let update = with_log(
        with_history(doc! { "$set": {
            "status": to.as_str(),
            "frames_done": 0_i64,
            "exit_code": exit_code.map_or(Bson::Null, Bson::Int64),
            "failure_reason": reason,
            "finished_at": bson_time(now),
        } }),
        log_bytes,
    );
    with_task_event(update, ended_key(lease), to, worker, 0, now)
}

/// The task goes back to the queue without counting as a failure: no worker,
/// no lease, waiting from now.
pub fn requeue_update(
    to: TaskStatus,
    now: DateTime<Utc>,
    log_bytes: Option<i64>,
    lease: &str,
    worker: Option<&str>,
) -> Document {
    let update = with_log(
        with_history(doc! { "$set": {
            "status": to.as_str(),
            "worker_id": Bson::Null,
            "lease_id": Bson::Null,
            "frames_done": 0_i64,
            "queued_at": bson_time(now),
        } }),
        log_bytes,
    );
    with_task_event(update, ended_key(lease), to, worker, 0, now)
}

/// `dropped` bytes of a task's log were trimmed away.
pub fn log_trimmed_update(dropped: i64) -> Document {
    doc! { "$inc": { "log_bytes": -dropped, "log_dropped": dropped } }
}

/// Lowest frames first.
pub fn task_list_sort() -> Document {
    doc! { "frame_start": 1 }
}
