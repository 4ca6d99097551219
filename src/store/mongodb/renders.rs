//! Renders: submit, read, list, delete, and operator commands.

use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use renderfarm_wire::{HistoryEvent, Page, Progress, Render, RenderStatus, TaskStatus};
use uuid::Uuid;

use super::events::{add_set, outbox_of, outbox_set, render_event_set, render_key, Entry};
use super::rules::{name_search, render_sort};
use super::{counters::*, documents::*, *};
use crate::domain::{
    check_deletable, compare_renders, finished_at_after, is_claimable, render_transition,
    task_transition, tasks_affected, BulkCause, NewRender, RenderCommand, RenderOrder, TaskEvent,
    LEASED_TASK_STATUS,
};
use crate::store::{PageRequest, RenderFilter, StoreError, StoreResult};

/// Task ids per `$in` when deleting a render's logs and history.
pub(super) const DELETE_BATCH: usize = 10_000;

/// Tasks per `insert_many` (the driver splits further to fit message sizes).
pub(super) const TASK_BATCH: usize = 10_000;

impl MongoStore {
    /// Sets the status `status_for` gives the render's current one, by
    /// compare-and-set on its version (retried while other changes come
    /// first); `starts_over` clears its start and its failure, as a requeue
    /// does. Returns the status before, the counters before and the render
    /// after.
    pub(super) async fn write_render_status(
        &self,
        id: &str,
        starts_over: bool,
        now: DateTime<Utc>,
        status_for: impl Fn(RenderStatus) -> StoreResult<RenderStatus>,
    ) -> StoreResult<(RenderStatus, RenderStatus, Progress, RenderDoc)> {
        let renders = self.renders()?;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let doc = self.load_render(id).await?;
            let from = doc.status()?;
            let to = status_for(from)?;
            let change = StatusChange {
                status: to,
                started_at: if starts_over { None } else { doc.started_at },
                finished_at: finished_at_after(from, to, doc.finished_at, bson_time(now)),
                reset_failure: starts_over,
            };
            let mut update = status_update(&change);
            if to != from {
                // The status event, in the outbox of the same write.
                update = add_set(
                    update,
                    render_event_set(doc.version + 1, to, doc.progress(), now),
                );
            }
            if let Some(after) = renders
                .find_one_and_update(render_cas_filter(id, doc.version), update)
                .return_document(ReturnDocument::After)
                .await?
            {
                return Ok((from, to, doc.progress(), after));
            }
        }
        Err(StoreError::Unavailable(format!(
            "render {id} changed too often to apply the change; retry"
        )))
    }

    pub(super) async fn load_render(&self, id: &str) -> StoreResult<RenderDoc> {
        self.renders()?
            .find_one(doc! { "_id": id })
            .await?
            .ok_or_else(|| StoreError::not_found("render", id))
    }

    /// Applies `event` to every task of the render in one of `from`, then
    /// moves the render's counters by what was actually changed (so moves
    /// made concurrently by single-task updates are neither lost nor counted
    /// twice). Each task moved gets a line in its history saying why
    /// (`cause`) and who did it (`actor`), naming the worker the task keeps.
    ///
    /// The history is written after the change, from the tasks it marked:
    /// exact as long as nothing else moves them in between, which holds
    /// because what it leaves is canceled (no worker's or scheduler's change
    /// applies) or pending and not runnable (callers make the tasks of a
    /// requeued render runnable only afterwards).
    pub(super) async fn bulk_task_change(
        &self,
        render: &str,
        event: TaskEvent,
        from: &[TaskStatus],
        cause: BulkCause,
        actor: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<RenderDoc> {
        let tasks = self.tasks()?;
        let (history_event, detail) = cause.history(event);
        let mut delta = Progress::default();
        for status in from {
            let to = task_transition(*status, event)?;
            // Only tasks that run again lose their frames; they are in a
            // finished status, which nothing else changes meanwhile.
            let frames = if to == TaskStatus::Pending {
                self.frames_done_in(render, *status).await?
            } else {
                0
            };
            let change = Uuid::new_v4().to_string();
            let mut update = bulk_update(to, now, &change);
            if *status == LEASED_TASK_STATUS {
                // Leaving running is a task event; the worker and frames
                // done are each task's own, which the drain reads.
                let key = format!("b{}", Uuid::new_v4().simple());
                update = add_set(update, outbox_set(&key, &Entry::bulk_task(to, now)));
            }
            let changed = tasks
                .update_many(bulk_filter(render, *status), update)
                .await?
                .modified_count;
            let changed = i64::try_from(changed).unwrap_or(i64::MAX);
            if changed > 0 {
                delta = add_progress(delta, progress_delta(Some(*status), to, changed, -frames));
                self.record_bulk_history(render, &change, history_event, &detail, actor, now)
                    .await?;
            }
        }
        self.renders()?
            .find_one_and_update(
                doc! { "_id": render },
                doc! { "$inc": progress_inc(&delta) },
            )
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| StoreError::not_found("render", render))
    }

    /// Writes the history line of every task the bulk change `change` moved
    /// (see [`bulk_update`]), in batches.
    async fn record_bulk_history(
        &self,
        render: &str,
        change: &str,
        event: HistoryEvent,
        detail: &str,
        actor: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut moved = self
            .tasks()?
            .clone_with_type::<BulkMoved>()
            .find(bulk_moved_filter(render, change))
            .projection(doc! { "_id": 1, "history_seq": 1, "worker_id": 1 })
            .await?;
        let history = self.history()?;
        let mut batch = Vec::with_capacity(TASK_BATCH);
        while let Some(task) = moved.try_next().await? {
            batch.push(HistoryDoc {
                task_id: task.id,
                // The change took the sequence number before the one it left.
                seq: task.history_seq - 1,
                at: bson_time(now),
                event: event.as_str().into(),
                worker_id: task.worker_id,
                detail: Some(detail.to_string()),
                actor: actor.map(str::to_string),
            });
            if batch.len() == TASK_BATCH {
                history.insert_many(&batch).await?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            history.insert_many(&batch).await?;
        }
        Ok(())
    }
}

pub(super) async fn create_render(store: &MongoStore, new: NewRender) -> StoreResult<Render> {
    let seq = store.next_seq(RENDERS).await?;
    let mut render = RenderDoc::planned(&new.render, seq);
    // It appears with its event, in the same insert.
    let appeared = Entry::render(new.render.status, render.progress(), new.render.created_at);
    render.events = Some(outbox_of(&render_key(render.version), &appeared));
    render.has_events = Some(true);
    render.seen_version = Some(render.version);
    render.seen_progress = Some(render.progress());
    let tasks = store.tasks()?;
    // The marker's time moves on from the render's creation by the time the
    // writing took, so it follows whatever clock the caller planned with.
    let started = std::time::Instant::now();
    let alive = |render: &RenderDoc| {
        let elapsed = chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
        bson_time(render.created_at.to_chrono() + elapsed)
    };
    let writing = store.writing()?;
    writing
        .insert_one(WritingDoc {
            id: render.id.clone(),
            alive_at: alive(&render),
        })
        .await?;
    // Set once the render document is in: after that a failure leaves the
    // render whole, its tasks unreleased until the scheduler releases them.
    let mut render_stored = false;
    let stored = async {
        let mut batch = Vec::with_capacity(TASK_BATCH);
        for planned in new.tasks() {
            let mut task = TaskDoc::planned(&render, planned.frames.start(), planned.frames.end());
            task.claim_rank = planned.rank;
            batch.push(task);
            if batch.len() == TASK_BATCH {
                tasks.insert_many(&batch).await?;
                batch.clear();
                writing
                    .update_one(
                        doc! { "_id": &render.id },
                        doc! { "$set": { "alive_at": alive(&render) } },
                    )
                    .await?;
            }
        }
        if !batch.is_empty() {
            tasks.insert_many(&batch).await?;
        }
        // The render appears only now, whole.
        store.renders()?.insert_one(&render).await?;
        render_stored = true;
        if is_claimable(new.render.status) {
            store
                .sync_runnable(&render.id, true, render.version)
                .await?;
        }
        Ok::<_, StoreError>(())
    }
    .await;
    if let Err(e) = stored {
        // Best effort; what is left, the scheduler clears once the marker
        // is stale (`clear_abandoned_writes`).
        if !render_stored {
            let _ = tasks.delete_many(doc! { "render_id": &render.id }).await;
            let _ = writing.delete_one(doc! { "_id": &render.id }).await;
        }
        return Err(e);
    }
    writing.delete_one(doc! { "_id": &render.id }).await?;
    if new.render.status == RenderStatus::Waiting {
        // A dependency that completed after the submit looked, before this
        // render was in, found no dependent to release.
        let now = new.render.created_at;
        if store.settle_render(&render.id, now).await? {
            return store.load_render(&render.id).await?.to_render();
        }
    }
    render.to_render()
}

/// Deletes the tasks, logs and history of a render whose document is
/// missing: what an interrupted create or import left behind.
pub(super) async fn clear_leftovers(store: &MongoStore, render: &str) -> StoreResult<()> {
    let ids: Vec<String> = store
        .tasks()?
        .distinct("_id", doc! { "render_id": render })
        .await?
        .into_iter()
        .map(|id| {
            id.as_str()
                .map(str::to_string)
                .ok_or_else(|| StoreError::Unexpected(anyhow::anyhow!("a task id {id:?}")))
        })
        .collect::<StoreResult<_>>()?;
    if ids.is_empty() {
        return Ok(());
    }
    for batch in ids.chunks(TASK_BATCH) {
        let of_tasks = doc! { "task_id": { "$in": batch } };
        store.logs()?.delete_many(of_tasks.clone()).await?;
        store.history()?.delete_many(of_tasks).await?;
    }
    store
        .tasks()?
        .delete_many(doc! { "render_id": render })
        .await?;
    Ok(())
}

pub(super) async fn get_render(store: &MongoStore, id: Uuid) -> StoreResult<Render> {
    store.load_render(&id.to_string()).await?.to_render()
}

pub(super) async fn list_renders(
    store: &MongoStore,
    filter: &RenderFilter,
    order: RenderOrder,
    page: PageRequest,
) -> StoreResult<Page<Render>> {
    let query = render_list_filter(filter);
    let renders = store.renders()?;
    let total = renders.count_documents(query.clone()).await?;
    let (limit, offset) = page_bounds(page);
    let docs = match render_sort(order) {
        Some(sort) => fetch_page(&renders, query, sort, limit, offset).await?,
        None => computed_order_page(store, query, order, limit, offset).await?,
    };
    Ok(Page {
        items: docs
            .iter()
            .map(RenderDoc::to_render)
            .collect::<StoreResult<_>>()?,
        total: i64::try_from(total).unwrap_or(i64::MAX),
        limit,
        offset,
    })
}

/// One page in an order whose key is computed from several fields (see
/// `rules::render_sort`): the keys of every matching render (a small
/// projection), ordered by the domain's comparator, then the page's
/// documents by id.
async fn computed_order_page(
    store: &MongoStore,
    query: Document,
    order: RenderOrder,
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<RenderDoc>> {
    let renders = store.renders()?;
    let keys: Vec<SortKeyDoc> = renders
        .clone_with_type::<SortKeyDoc>()
        .find(query)
        .projection(sort_key_projection())
        .await?
        .try_collect()
        .await?;
    let mut keyed = keys
        .iter()
        .map(|k| Ok((k, k.key()?)))
        .collect::<StoreResult<Vec<_>>>()?;
    keyed.sort_by(|a, b| compare_renders(order, &a.1, &b.1));
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let ids: Vec<&str> = keyed
        .iter()
        .skip(start)
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|(k, _)| k.id.as_str())
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut docs: Vec<RenderDoc> = renders
        .find(doc! { "_id": { "$in": &ids } })
        .await?
        .try_collect()
        .await?;
    docs.sort_by_key(|d| ids.iter().position(|id| *id == d.id));
    Ok(docs)
}

pub(super) async fn dependency_states(
    store: &MongoStore,
    ids: &[Uuid],
) -> StoreResult<Vec<crate::domain::DependencyState>> {
    store.states_of(ids).await
}

pub(super) async fn delete_render(store: &MongoStore, id: Uuid) -> StoreResult<()> {
    let id = id.to_string();
    let render = store.load_render(&id).await?;
    check_deletable(render.status()?, render.tasks_running)?;
    // The render goes first: from then on nothing of it is visible, and
    // what a crash leaves behind is finished tasks no query reaches. Its
    // waiting events, its tasks' and its deletion's are kept for the drain.
    let deleted = store
        .db()?
        .collection::<Document>(RENDERS)
        .find_one_and_delete(doc! { "_id": &id })
        .await?;
    if let Some(deleted) = deleted {
        store.stash_render_deletion(deleted, Utc::now()).await?;
    }
    let tasks: Vec<IdOnly> = store
        .tasks()?
        .clone_with_type::<IdOnly>()
        .find(doc! { "render_id": &id })
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    let task_ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    for batch in task_ids.chunks(DELETE_BATCH) {
        store
            .logs()?
            .delete_many(doc! { "task_id": { "$in": batch } })
            .await?;
        store
            .history()?
            .delete_many(doc! { "task_id": { "$in": batch } })
            .await?;
    }
    store
        .tasks()?
        .delete_many(doc! { "render_id": &id })
        .await?;
    // Its frames' files are then unreferenced; the collector frees them
    // after the grace.
    store.delete_render_frames(&id).await?;
    store
        .db()?
        .collection::<Document>(super::blocklist::BLOCKLIST)
        .delete_many(doc! { "render_id": &id })
        .await?;
    // Renders that wait for it now wait for a render that is gone.
    store.settle_dependents(&id, Utc::now()).await?;
    tracing::info!(render_id = %id, "render deleted");
    Ok(())
}

pub(super) async fn change_render(
    store: &MongoStore,
    id: Uuid,
    command: RenderCommand,
    actor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Render> {
    let id = id.to_string();
    let requeue = command == RenderCommand::Requeue;
    let (from, to, progress, after) = store
        .write_render_status(&id, requeue, now, |from| {
            Ok(render_transition(from, command)?)
        })
        .await?;
    // The tasks move while none of them can be claimed, so that no claim
    // races the move and its history (see `bulk_task_change`): a render
    // that stops being claimable stops first, one that becomes claimable (a
    // requeue) only after. No operator command fails a render: nothing to
    // cancel beyond what the command itself changes.
    let claimable = is_claimable(after.status()?);
    let status_version = after.version;
    let mut doc = after;
    if !claimable {
        doc = store.after_status_write(from, doc, &[], now).await?;
    }
    if let Some((event, statuses)) = tasks_affected(command, &progress) {
        let cause = BulkCause::Command(command);
        doc = store
            .bulk_task_change(&id, event, &statuses, cause, actor, now)
            .await?;
        // The status event tells the render as the command left it, after
        // the events of the tasks it moved.
        store.refresh_render_event(status_version, &doc).await?;
    }
    if claimable {
        doc = store.after_status_write(from, doc, &[], now).await?;
    }
    let doc = store.save_tally(doc, false, now).await?;
    if doc.status()? != to {
        // The command's status was a step on the way (a resumed render
        // that had started is rendering, not queued): the tally's status
        // event tells where it ended, as the store's one write does on
        // SQLite.
        store.drop_render_event(&id, status_version).await?;
    }
    tracing::info!(render_id = %id, ?command, "operator changed render");
    doc.to_render()
}

/// The render's tasks in `status`, for a bulk change.
pub fn bulk_filter(render: &str, status: TaskStatus) -> Document {
    doc! { "render_id": render, "status": status.as_str(), "kind": { "$exists": false } }
}

/// A bulk change to `to`, marked with the change's id (`bulk_change`) so
/// that its history finds the tasks it moved, each of which takes a history
/// sequence number. A task run again starts from scratch, with no worker and
/// no lease.
pub fn bulk_update(to: TaskStatus, now: DateTime<Utc>, change: &str) -> Document {
    let update = if to == TaskStatus::Pending {
        let mut set = run_again(to, now);
        set.insert("bulk_change", change);
        doc! { "$set": set }
    } else {
        doc! { "$set": {
            "status": to.as_str(),
            "finished_at": bson_time(now),
            "bulk_change": change,
        } }
    };
    with_history(update)
}

/// The fields of a task run again from scratch, with no worker and no
/// lease, in status `to` (pending).
pub fn run_again(to: TaskStatus, now: DateTime<Utc>) -> Document {
    doc! {
        "status": to.as_str(),
        "retries": 0_i64,
        "worker_id": Bson::Null,
        "lease_id": Bson::Null,
        "frames_done": 0_i64,
        "exit_code": Bson::Null,
        "failure_reason": Bson::Null,
        "started_at": Bson::Null,
        "finished_at": Bson::Null,
        "queued_at": bson_time(now),
    }
}

/// The render's tasks that the bulk change `change` moved (and nothing
/// moved in bulk since).
pub fn bulk_moved_filter(render: &str, change: &str) -> Document {
    doc! { "render_id": render, "bulk_change": change }
}

/// Which renders a listing shows.
pub fn render_list_filter(filter: &RenderFilter) -> Document {
    let mut query = Document::new();
    if let Some(status) = filter.status {
        query.insert("status", status.as_str());
    }
    if let Some(priority) = filter.priority {
        query.insert("priority", priority.rank());
    }
    if let Some(owner) = &filter.owner {
        query.insert("owner", owner.as_str());
    }
    if let Some(search) = &filter.search {
        query.insert("name", name_search(search));
    }
    query
}

/// What `domain::compare_renders` reads of a render document.
pub fn sort_key_projection() -> Document {
    doc! { "_id": 1, "seq": 1, "name": 1, "priority": 1, "status": 1, "frames_done": 1, "frames_total": 1 }
}

/// Tasks in one status.
pub fn status_filter(status: TaskStatus) -> Document {
    doc! { "status": status.as_str() }
}

/// Renders not finished (queued, rendering, paused), among `ids` if given.
pub fn open_renders_filter(ids: Option<Vec<&str>>) -> Document {
    let open: Vec<&str> = RenderStatus::ALL
        .into_iter()
        .filter(|s| !s.is_finished())
        .map(RenderStatus::as_str)
        .collect();
    let mut filter = doc! { "status": { "$in": open } };
    if let Some(ids) = ids {
        filter.insert("_id", doc! { "$in": ids });
    }
    filter
}
