//! The event log on MongoDB: an **outbox in each changed document**, drained
//! into the `events` collection by one broker at a time.
//!
//! Every command that changes a status (a claim, a report, a requeue, a
//! render's status write, a worker's mode or being marked offline) also sets
//! an entry under the document's `events` field (and `has_events`), in the
//! same update: the change and its event are one atomic write, so a
//! `kill -9` keeps both or neither, and a claim or report costs no extra
//! command. Each entry has a key of its own in the document (a task's
//! `a<lease>`/`z<lease>`, a render's `v<version>`, a worker's random key), so
//! every status change is kept, even several within a second. A document
//! about to be deleted hands its entries to the `event_outbox` collection.
//!
//! `record_coalesced_events` (every broker, once a second) drains: under the
//! `events` lease (one drainer at a time), it reads the waiting entries,
//! orders them by the hybrid clock each carries ([`next_order`]: the writing
//! broker's clock in microseconds, never going back within a broker), adds
//! the coalesced progress, log and render events, takes that many ids from
//! the `events` counter in one `$inc`, inserts them, and only then removes
//! the entries (compare-and-unset, so an entry added meanwhile stays).
//!
//! Guarantees: ids strictly increase in the order events are inserted, and
//! with one drainer they become visible in id order, so readers see no gap.
//! An event's key is unique in `events`: a drainer that dies between the
//! insert and the removal, or a second one that took over a lapsed lease,
//! inserts nothing twice; it only leaves ids unused, which readers pass
//! after `domain::EVENT_GAP_GRACE`. Changes made one after another by one
//! broker keep their order; changes of different documents by different
//! brokers within their clocks' skew may be ordered by those clocks. Status
//! events become visible within about a second of the change (the drain's
//! interval), not at once as on SQLite.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use renderfarm_wire::{
    EventKind, FarmEvent, Priority, Progress, RenderStatus, TaskKind, TaskStatus,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::rules::is_in;
use super::{documents::*, errors::*, *};
use crate::domain::{
    worker_status, EventBounds, WorkerMode, CLAIMABLE_RENDER_STATUSES, LEASED_TASK_STATUS,
    UNFINISHED_RENDER_STATUSES,
};
use crate::store::{FarmCounts, StoreResult};

/// The events themselves.
const EVENTS: &str = "events";

/// Entries of documents that were deleted, waiting to be drained.
const EVENT_OUTBOX: &str = "event_outbox";

/// The counter the event ids come from, and the lease of the drainer.
const EVENTS_NAME: &str = "events";

/// How long a drainer holds the `events` lease without renewing it.
const DRAIN_LEASE: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// The field of a document's outbox, and its marker (indexed).
pub(super) const OUTBOX: &str = "events";
pub(super) const HAS_EVENTS: &str = "has_events";

/// The next value of this broker's hybrid clock: its time in microseconds,
/// but always above the last value it gave, so that changes one broker
/// makes one after another are ordered as they were made.
pub(super) fn next_order() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = Utc::now().timestamp_micros();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// This process's name as the holder of the drain lease.
fn drainer() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("events-{}", Uuid::new_v4()))
}

/// An event waiting in a document's outbox. What the document itself says
/// (its id, a task's render) is added when it is drained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) kind: String,
    /// [`next_order`] when it was written.
    pub(super) order: i64,
    pub(super) at: bson::DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) frames_done: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) progress: Option<Progress>,
    /// A worker's mode and being offline; its status also depends on
    /// whether it holds a task, which the drain looks up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) offline: Option<bool>,
    /// Set by a bulk change, which cannot write per-task values: the
    /// worker and frames done are the task document's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) from_document: bool,
}

impl Entry {
    fn new(kind: EventKind, now: DateTime<Utc>) -> Self {
        Self {
            kind: kind.as_str().into(),
            order: next_order(),
            at: bson_time(now),
            status: None,
            worker_id: None,
            frames_done: None,
            progress: None,
            mode: None,
            offline: None,
            from_document: false,
        }
    }

    /// A task moved to or from running (`worker`: the one that holds or held it).
    pub(super) fn task(
        status: TaskStatus,
        worker: Option<&str>,
        frames_done: i64,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            status: Some(status.as_str().into()),
            worker_id: worker.map(str::to_string),
            frames_done: Some(frames_done),
            ..Self::new(EventKind::Task, now)
        }
    }

    /// Running tasks a bulk change moved to `status`.
    pub(super) fn bulk_task(status: TaskStatus, now: DateTime<Utc>) -> Self {
        Self {
            status: Some(status.as_str().into()),
            from_document: true,
            ..Self::new(EventKind::Task, now)
        }
    }

    /// A render appeared or changed status.
    pub(super) fn render(status: RenderStatus, progress: Progress, now: DateTime<Utc>) -> Self {
        Self {
            status: Some(status.as_str().into()),
            progress: Some(progress),
            ..Self::new(EventKind::Render, now)
        }
    }

    /// A worker registered, or its mode or being offline changed.
    pub(super) fn worker(mode: WorkerMode, offline: bool, now: DateTime<Utc>) -> Self {
        Self {
            mode: Some(mode.as_str().into()),
            offline: Some(offline),
            ..Self::new(EventKind::Worker, now)
        }
    }

    fn to_bson(&self) -> Bson {
        bson::to_bson(self).unwrap_or(Bson::Null)
    }
}

/// The `$set` fields that put `entry` in a document's outbox under `key`.
pub(super) fn outbox_set(key: &str, entry: &Entry) -> Document {
    doc! { format!("{OUTBOX}.{key}"): entry.to_bson(), HAS_EVENTS: true }
}

/// A document's outbox holding `entry` alone, for a document being inserted.
pub(super) fn outbox_of(key: &str, entry: &Entry) -> Document {
    doc! { key: entry.to_bson() }
}

/// Adds `fields` to the update's `$set`.
pub(super) fn add_set(mut update: Document, fields: Document) -> Document {
    match update.get_mut("$set") {
        Some(Bson::Document(set)) => set.extend(fields),
        _ => {
            update.insert("$set", fields);
        }
    }
    update
}

/// A task's outbox keys: its claim, and the end of the lease.
pub(super) fn claimed_key(lease: &str) -> String {
    format!("a{lease}")
}

pub(super) fn ended_key(lease: &str) -> String {
    format!("z{lease}")
}

/// A render's outbox key for the status write that left it at `version`.
pub(super) fn render_key(version: i64) -> String {
    format!("v{version}")
}

/// A fresh outbox key, for changes with no natural one.
pub(super) fn fresh_key() -> String {
    format!("k{}", Uuid::new_v4().simple())
}

/// A render's status write with its event: the outbox entry and what the
/// next coalesced render event compares with.
pub(super) fn render_event_set(
    version: i64,
    status: RenderStatus,
    progress: Progress,
    now: DateTime<Utc>,
) -> Document {
    let mut set = outbox_set(&render_key(version), &Entry::render(status, progress, now));
    set.extend(seen_render_set(version, &progress));
    set
}

fn seen_render_set(version: i64, progress: &Progress) -> Document {
    doc! {
        "seen_version": version,
        "seen_progress": bson::to_bson(progress).unwrap_or(Bson::Null),
    }
}

/// An event as stored in `events` (and, without `_id`, in `event_outbox`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EventDoc {
    #[serde(rename = "_id")]
    id: i64,
    /// Unique: a drain that is repeated records nothing twice.
    key: String,
    at: bson::DateTime,
    kind: String,
    #[serde(default)]
    render_id: Option<String>,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    worker_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    frames_done: Option<i64>,
    #[serde(default)]
    progress: Option<Progress>,
    #[serde(default)]
    log_bytes: Option<i64>,
}

/// An event waiting in `event_outbox`: its document was deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stashed {
    /// The event's key.
    #[serde(rename = "_id")]
    key: String,
    order: i64,
    sub: i64,
    event: EventDoc,
}

impl EventDoc {
    fn blank(key: String, kind: &str, at: bson::DateTime) -> Self {
        Self {
            id: 0,
            key,
            at,
            kind: kind.into(),
            render_id: None,
            task_id: None,
            worker_id: None,
            status: None,
            frames_done: None,
            progress: None,
            log_bytes: None,
        }
    }

    fn to_event(&self) -> StoreResult<FarmEvent> {
        let kind = EventKind::parse(&self.kind)
            .ok_or_else(|| corrupt(format!("an event {} of kind {:?}", self.id, self.kind)))?;
        let mut event = FarmEvent::new(self.id, self.at.to_chrono(), kind);
        event.render_id = parse_opt_uuid(self.render_id.as_deref(), "render id")?;
        event.task_id = parse_opt_uuid(self.task_id.as_deref(), "task id")?;
        event.worker_id = parse_opt_uuid(self.worker_id.as_deref(), "worker id")?;
        event.status = self.status.clone();
        event.frames_done = self.frames_done;
        event.progress = self.progress;
        event.log_bytes = self.log_bytes;
        Ok(event)
    }
}

/// An event ready to be numbered, and where it came from.
struct Ready {
    order: i64,
    sub: i64,
    event: EventDoc,
}

/// Which documents hold outboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Task,
    Render,
    Worker,
}

impl Source {
    fn prefix(self) -> &'static str {
        match self {
            Source::Task => "t",
            Source::Render => "r",
            Source::Worker => "w",
        }
    }
}

/// The events waiting in one document's outbox (`doc` as read, whole).
/// `busy`: the workers holding a running task, for worker statuses.
fn entries_of(source: Source, doc: &Document, busy: &HashSet<String>) -> StoreResult<Vec<Ready>> {
    let id = doc
        .get_str("_id")
        .map_err(|_| corrupt(format!("a document without an id: {doc:?}")))?;
    let Ok(outbox) = doc.get_document(OUTBOX) else {
        return Ok(Vec::new());
    };
    let mut ready = Vec::new();
    for (key, value) in outbox {
        let entry: Entry = bson::from_bson(value.clone())
            .map_err(|e| corrupt(format!("an event entry {key} of {id}: {e}")))?;
        let mut event = EventDoc::blank(
            format!("{}:{id}:{key}", source.prefix()),
            &entry.kind,
            entry.at,
        );
        event.status = entry.status.clone();
        event.progress = entry.progress;
        let mut sub = 0;
        match source {
            Source::Task => {
                event.task_id = Some(id.to_string());
                event.render_id = doc.get_str("render_id").ok().map(str::to_string);
                if entry.from_document {
                    event.worker_id = doc.get_str("worker_id").ok().map(str::to_string);
                    event.frames_done = doc.get("frames_done").and_then(bson_i64);
                } else {
                    event.worker_id = entry.worker_id.clone();
                    event.frames_done = entry.frames_done;
                }
                sub = doc.get("frame_start").and_then(bson_i64).unwrap_or(0);
            }
            Source::Render => event.render_id = Some(id.to_string()),
            Source::Worker => {
                event.worker_id = Some(id.to_string());
                let mode = entry
                    .mode
                    .as_deref()
                    .and_then(WorkerMode::parse)
                    .ok_or_else(|| corrupt(format!("a worker event {key} of {id}")))?;
                let status = worker_status(mode, entry.offline.unwrap_or(false), busy.contains(id));
                event.status = Some(status.as_str().into());
            }
        }
        ready.push(Ready {
            order: entry.order,
            sub,
            event,
        });
    }
    Ok(ready)
}

impl MongoStore {
    fn events(&self) -> StoreResult<Collection<EventDoc>> {
        Ok(self.db()?.collection(EVENTS))
    }

    fn stash(&self) -> StoreResult<Collection<Stashed>> {
        Ok(self.db()?.collection(EVENT_OUTBOX))
    }

    /// Keeps the waiting events of documents about to be deleted, and
    /// `last` (their deletion), for the next drain.
    async fn stash_entries(
        &self,
        source: Source,
        docs: &[Document],
        last: Option<Ready>,
    ) -> StoreResult<()> {
        let busy = HashSet::new();
        let mut stashed = Vec::new();
        for doc in docs {
            stashed.extend(entries_of(source, doc, &busy)?);
        }
        stashed.extend(last);
        if stashed.is_empty() {
            return Ok(());
        }
        let docs: Vec<Stashed> = stashed
            .into_iter()
            .map(|r| Stashed {
                key: r.event.key.clone(),
                order: r.order,
                sub: r.sub,
                event: r.event,
            })
            .collect();
        match self.stash()?.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            // Stashed before by a deletion that did not finish.
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stashes a deleted render's waiting events, its tasks', and its
    /// deletion. `render`: its document as it was deleted.
    pub(super) async fn stash_render_deletion(
        &self,
        render: Document,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let id = render.get_str("_id").unwrap_or_default().to_string();
        let tasks: Vec<Document> = self
            .db()?
            .collection::<Document>(TASKS)
            .find(doc! { "render_id": &id, HAS_EVENTS: true })
            .await?
            .try_collect()
            .await?;
        self.stash_entries(Source::Task, &tasks, None).await?;
        let mut deleted = EventDoc::blank(
            format!("r:{id}:deleted"),
            EventKind::RenderDeleted.as_str(),
            bson_time(now),
        );
        deleted.render_id = Some(id);
        let last = Ready {
            order: next_order(),
            sub: 0,
            event: deleted,
        };
        self.stash_entries(Source::Render, &[render], Some(last))
            .await
    }

    /// Stashes a deleted worker's waiting events and its deletion.
    pub(super) async fn stash_worker_deletion(
        &self,
        worker: Document,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let id = worker.get_str("_id").unwrap_or_default().to_string();
        let mut deleted = EventDoc::blank(
            format!("w:{id}:deleted"),
            EventKind::WorkerDeleted.as_str(),
            bson_time(now),
        );
        deleted.worker_id = Some(id);
        let last = Ready {
            order: next_order(),
            sub: 0,
            event: deleted,
        };
        self.stash_entries(Source::Worker, &[worker], Some(last))
            .await
    }

    /// A render's status event, written with its status change, brought up
    /// to date after the change moved the render's tasks too: the render's
    /// progress after the move, and a place after the tasks' own events.
    /// Nothing when the entry was drained already (the next drain's
    /// coalesced render event then tells the progress).
    pub(super) async fn refresh_render_event(
        &self,
        key_version: i64,
        after: &RenderDoc,
    ) -> StoreResult<()> {
        let field = format!("{OUTBOX}.{}", render_key(key_version));
        let progress = after.progress();
        let mut set = doc! {
            format!("{field}.progress"): bson::to_bson(&progress).unwrap_or(Bson::Null),
            format!("{field}.order"): next_order(),
        };
        set.extend(seen_render_set(after.version, &progress));
        self.renders()?
            .update_one(
                doc! { "_id": &after.id, &field: { "$exists": true } },
                doc! { "$set": set },
            )
            .await?;
        Ok(())
    }

    /// Forgets a render's status event that has not been drained yet.
    pub(super) async fn drop_render_event(
        &self,
        render: &str,
        key_version: i64,
    ) -> StoreResult<()> {
        let field = format!("{OUTBOX}.{}", render_key(key_version));
        self.renders()?
            .update_one(doc! { "_id": render }, doc! { "$unset": { field: "" } })
            .await?;
        Ok(())
    }

    /// Removes drained entries from a document's outbox: the whole outbox
    /// when nothing was added since it was read, else the drained keys.
    async fn clear_outbox(&self, collection: &str, doc: &Document) -> StoreResult<()> {
        let (Ok(id), Ok(outbox)) = (doc.get_str("_id"), doc.get_document(OUTBOX)) else {
            return Ok(());
        };
        let c = self.db()?.collection::<Document>(collection);
        let cleared = c
            .update_one(
                doc! { "_id": id, OUTBOX: outbox.clone() },
                doc! { "$unset": { OUTBOX: "", HAS_EVENTS: "" } },
            )
            .await?;
        if cleared.matched_count == 0 && !outbox.is_empty() {
            let mut unset = Document::new();
            for key in outbox.keys() {
                unset.insert(format!("{OUTBOX}.{key}"), "");
            }
            c.update_one(doc! { "_id": id }, doc! { "$unset": unset })
                .await?;
        }
        Ok(())
    }

    /// Takes `n` event ids; the first.
    async fn take_ids(&self, n: i64) -> StoreResult<i64> {
        let counter = self
            .db()?
            .collection::<CounterDoc>(COUNTERS)
            .find_one_and_update(doc! { "_id": EVENTS_NAME }, doc! { "$inc": { "seq": n } })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| corrupt("no events counter after an upsert"))?;
        Ok(counter.seq - n + 1)
    }
}

pub(super) async fn event_ids_after(
    store: &MongoStore,
    after: i64,
    limit: usize,
) -> StoreResult<Vec<i64>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let ids: Vec<Document> = store
        .events()?
        .clone_with_type::<Document>()
        .find(doc! { "_id": { "$gt": after } })
        .projection(doc! { "_id": 1 })
        .sort(doc! { "_id": 1 })
        .limit(limit)
        .await?
        .try_collect()
        .await?;
    Ok(ids.iter().filter_map(|d| d.get_i64("_id").ok()).collect())
}

pub(super) async fn events_after(
    store: &MongoStore,
    after: i64,
    render: Option<Uuid>,
    limit: usize,
) -> StoreResult<Vec<FarmEvent>> {
    let mut filter = doc! { "_id": { "$gt": after } };
    if let Some(render) = render {
        filter.insert("render_id", render.to_string());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let docs = fetch_page(&store.events()?, filter, doc! { "_id": 1 }, limit, 0).await?;
    docs.iter().map(EventDoc::to_event).collect()
}

pub(super) async fn event_bounds(store: &MongoStore) -> StoreResult<EventBounds> {
    let oldest = store
        .events()?
        .find_one(doc! {})
        .sort(doc! { "_id": 1 })
        .projection(doc! { "_id": 1, "key": 1, "at": 1, "kind": 1 })
        .await?
        .map(|e| e.id);
    let newest = store
        .db()?
        .collection::<CounterDoc>(COUNTERS)
        .find_one(doc! { "_id": EVENTS_NAME })
        .await?
        .map_or(0, |c| c.seq);
    Ok(EventBounds { oldest, newest })
}

pub(super) async fn record_coalesced_events(
    store: &MongoStore,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    let lease =
        super::upkeep::acquire_lease(store, EVENTS_NAME, drainer(), DRAIN_LEASE, now).await?;
    if lease.holder != drainer() {
        return Ok(0);
    }
    let db = store.db()?;
    let running: Vec<TaskDoc> = store
        .tasks()?
        .find(doc! { "status": LEASED_TASK_STATUS.as_str() })
        .sort(doc! { "render_seq": 1, "frame_start": 1 })
        .await?
        .try_collect()
        .await?;
    let busy: HashSet<String> = running.iter().filter_map(|t| t.worker_id.clone()).collect();

    // The outboxes, in the order their changes were made.
    let mut outboxes: Vec<(&str, Vec<Document>)> = Vec::new();
    let mut ready = Vec::new();
    for (source, collection) in [
        (Source::Task, TASKS),
        (Source::Render, RENDERS),
        (Source::Worker, WORKERS),
    ] {
        let docs: Vec<Document> = db
            .collection::<Document>(collection)
            .find(doc! { HAS_EVENTS: true })
            .await?
            .try_collect()
            .await?;
        for d in &docs {
            ready.extend(entries_of(source, d, &busy)?);
        }
        outboxes.push((collection, docs));
    }
    let stashed: Vec<Stashed> = store.stash()?.find(doc! {}).await?.try_collect().await?;
    ready.extend(stashed.iter().map(|s| Ready {
        order: s.order,
        sub: s.sub,
        event: s.event.clone(),
    }));
    ready.sort_by(|a, b| (a.order, a.sub, &a.event.key).cmp(&(b.order, b.sub, &b.event.key)));

    // Workers back from offline (a heartbeat clears `offline` in the
    // command that marks them alive, which writes no entry).
    let returned: Vec<WorkerDoc> = store
        .workers()?
        .find(doc! { "$expr": { "$ne": ["$offline", "$seen_offline"] } })
        .sort(doc! { "seq": 1 })
        .await?
        .try_collect()
        .await?;
    for w in &returned {
        let mut event = EventDoc::blank(
            format!("w:{}:o{}", w.id, next_order()),
            EventKind::Worker.as_str(),
            bson_time(now),
        );
        event.worker_id = Some(w.id.clone());
        event.status = Some(
            worker_status(w.mode()?, w.offline, busy.contains(&w.id))
                .as_str()
                .into(),
        );
        ready.push(Ready {
            order: next_order(),
            sub: 0,
            event,
        });
    }

    // Progress and logs of running tasks, then render tallies, as SQLite
    // records them.
    let mut progressed = Vec::new();
    for t in &running {
        if Some(t.frames_done) != t.seen_frames_done {
            let mut event = EventDoc::blank(
                format!(
                    "p:{}:{}:{}-{}",
                    t.id,
                    t.lease_id.as_deref().unwrap_or_default(),
                    t.seen_frames_done.unwrap_or(-1),
                    t.frames_done
                ),
                EventKind::Progress.as_str(),
                bson_time(now),
            );
            event.render_id = Some(t.render_id.clone());
            event.task_id = Some(t.id.clone());
            event.worker_id = t.worker_id.clone();
            event.frames_done = Some(t.frames_done);
            ready.push(Ready {
                order: next_order(),
                sub: 0,
                event,
            });
            progressed.push(t);
        }
    }
    let mut logged = Vec::new();
    for t in &running {
        let total = t.log_bytes + t.log_dropped;
        if Some(total) != t.seen_log_total {
            let mut event = EventDoc::blank(
                format!("l:{}:{total}", t.id),
                EventKind::Log.as_str(),
                bson_time(now),
            );
            event.render_id = Some(t.render_id.clone());
            event.task_id = Some(t.id.clone());
            event.worker_id = t.worker_id.clone();
            event.log_bytes = Some(t.log_bytes);
            ready.push(Ready {
                order: next_order(),
                sub: 0,
                event,
            });
            logged.push(t);
        }
    }
    let moved: Vec<RenderDoc> = store
        .renders()?
        .find(doc! {
            "status": is_in(UNFINISHED_RENDER_STATUSES),
            "$expr": { "$ne": ["$version", "$seen_version"] },
        })
        .sort(doc! { "seq": 1 })
        .await?
        .try_collect()
        .await?;
    let mut tallied = Vec::new();
    for r in &moved {
        let progress = r.progress();
        if r.seen_progress != Some(progress) {
            let mut event = EventDoc::blank(
                format!("r:{}:p{}", r.id, r.version),
                EventKind::Render.as_str(),
                bson_time(now),
            );
            event.render_id = Some(r.id.clone());
            event.status = Some(r.status.clone());
            event.progress = Some(progress);
            ready.push(Ready {
                order: next_order(),
                sub: 0,
                event,
            });
        }
        tallied.push(r);
    }

    let mut recorded = 0;
    if !ready.is_empty() {
        let n = ready.len() as i64;
        let first = store.take_ids(n).await?;
        let docs: Vec<EventDoc> = ready
            .into_iter()
            .zip(first..)
            .map(|(r, id)| EventDoc { id, ..r.event })
            .collect();
        recorded = match store.events()?.insert_many(&docs).ordered(false).await {
            Ok(done) => done.inserted_ids.len() as u64,
            Err(e) => match e.kind.as_ref() {
                // Recorded by an earlier drain that died before it removed
                // the entries: each key is recorded once.
                mongodb::error::ErrorKind::InsertMany(m)
                    if m.write_concern_error.is_none()
                        && m.write_errors
                            .as_ref()
                            .is_some_and(|w| w.iter().all(|w| w.code == DUPLICATE_KEY)) =>
                {
                    let duplicates = m.write_errors.as_ref().map_or(0, Vec::len);
                    (docs.len() - duplicates) as u64
                }
                _ => return Err(e.into()),
            },
        };
    }

    // Only now that they are recorded: what was drained goes.
    for (collection, docs) in &outboxes {
        for d in docs {
            store.clear_outbox(collection, d).await?;
        }
    }
    if !stashed.is_empty() {
        let keys: Vec<&str> = stashed.iter().map(|s| s.key.as_str()).collect();
        store
            .stash()?
            .delete_many(doc! { "_id": { "$in": keys } })
            .await?;
    }
    for w in &returned {
        store
            .workers()?
            .update_one(
                doc! { "_id": &w.id, "offline": w.offline },
                doc! { "$set": { "seen_offline": w.offline } },
            )
            .await?;
    }
    let tasks = store.tasks()?;
    for t in progressed {
        tasks
            .update_one(
                doc! { "_id": &t.id, "lease_id": &t.lease_id, "frames_done": t.frames_done },
                doc! { "$set": { "seen_frames_done": t.frames_done } },
            )
            .await?;
    }
    for t in logged {
        tasks
            .update_one(
                doc! { "_id": &t.id, "log_bytes": t.log_bytes, "log_dropped": t.log_dropped },
                doc! { "$set": { "seen_log_total": t.log_bytes + t.log_dropped } },
            )
            .await?;
    }
    for r in tallied {
        store
            .renders()?
            .update_one(
                doc! { "_id": &r.id, "version": r.version },
                doc! { "$set": seen_render_set(r.version, &r.progress()) },
            )
            .await?;
    }
    Ok(recorded)
}

pub(super) async fn purge_events(
    store: &MongoStore,
    before: DateTime<Utc>,
    keep: i64,
) -> StoreResult<u64> {
    let events = store.events()?;
    // The first event still young enough (ids and times rise together),
    // and the oldest of the newest `keep`.
    let young = events
        .find_one(doc! { "at": { "$gte": bson_time(before) } })
        .sort(doc! { "_id": 1 })
        .await?
        .map(|e| e.id);
    let kept_from = if keep <= 0 {
        None
    } else {
        events
            .find_one(doc! {})
            .sort(doc! { "_id": -1 })
            .skip(u64::try_from(keep - 1).unwrap_or(0))
            .await?
            .map(|e| e.id)
    };
    let newest = event_bounds(store).await?.newest;
    let by_age = young.unwrap_or(newest + 1);
    let by_count = match kept_from {
        _ if keep <= 0 => newest + 1,
        Some(id) => id,
        // Fewer than `keep` are kept.
        None => i64::MAX,
    };
    let threshold = by_age.min(by_count);
    let deleted = events
        .delete_many(doc! { "_id": { "$lt": threshold } })
        .await?
        .deleted_count;
    Ok(deleted)
}

/// The tags in `row`'s array `key`, sorted.
fn sorted_tags(row: &Document, key: &str) -> StoreResult<Vec<String>> {
    let mut tags: Vec<String> = row
        .get_array(key)
        .map_err(|_| corrupt(format!("tags in {row:?}")))?
        .iter()
        .map(|t| t.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| corrupt(format!("tags in {row:?}")))?;
    tags.sort();
    Ok(tags)
}

pub(super) async fn farm_counts(
    store: &MongoStore,
    since: DateTime<Utc>,
) -> StoreResult<FarmCounts> {
    let db = store.db()?;
    let renders = db.collection::<Document>(RENDERS);
    let mut counts = FarmCounts::default();
    let by_status: Vec<Document> = renders
        .aggregate(vec![
            doc! { "$group": { "_id": "$status", "n": { "$sum": 1_i64 } } },
        ])
        .await?
        .try_collect()
        .await?;
    for row in by_status {
        let n = row.get("n").and_then(bson_i64).unwrap_or(0);
        let status = row
            .get_str("_id")
            .ok()
            .and_then(RenderStatus::parse)
            .ok_or_else(|| corrupt(format!("a render status in {row:?}")))?;
        *counts.renders.of_mut(status) = n;
    }
    let queue: Vec<Document> = renders
        .aggregate(vec![
            doc! { "$match": { "status": is_in(CLAIMABLE_RENDER_STATUSES) } },
            doc! { "$group": { "_id": "$priority", "n": { "$sum": "$tasks_pending" } } },
        ])
        .await?
        .try_collect()
        .await?;
    for row in queue {
        let n = row.get("n").and_then(bson_i64).unwrap_or(0);
        let priority = row
            .get("_id")
            .and_then(bson_i64)
            .and_then(Priority::from_rank)
            .ok_or_else(|| corrupt(format!("a priority in {row:?}")))?;
        *match priority {
            Priority::Low => &mut counts.queue.low,
            Priority::Normal => &mut counts.queue.normal,
            Priority::High => &mut counts.queue.high,
            Priority::Urgent => &mut counts.queue.urgent,
        } = n;
    }
    let frames: Vec<Document> = db
        .collection::<Document>(TASKS)
        .aggregate(super::counters::frames_done_sum(doc! {
            "status": TaskStatus::Completed.as_str(),
            "finished_at": { "$gte": bson_time(since) },
        }))
        .await?
        .try_collect()
        .await?;
    counts.frames_since = frames
        .first()
        .and_then(|row| row.get("frames"))
        .and_then(bson_i64)
        .unwrap_or(0);
    let by_status = [
        (TaskStatus::Pending, "tasks_pending"),
        (TaskStatus::Running, "tasks_running"),
        (TaskStatus::Completed, "tasks_completed"),
        (TaskStatus::Failed, "tasks_failed"),
        (TaskStatus::Canceled, "tasks_canceled"),
    ];
    let mut group = doc! { "_id": "$priority" };
    for (status, field) in by_status {
        group.insert(status.as_str(), doc! { "$sum": format!("${field}") });
    }
    let tasks: Vec<Document> = renders
        .aggregate(vec![doc! { "$group": group }])
        .await?
        .try_collect()
        .await?;
    for row in tasks {
        let priority = row
            .get("_id")
            .and_then(bson_i64)
            .and_then(Priority::from_rank)
            .ok_or_else(|| corrupt(format!("a priority in {row:?}")))?;
        for (status, _) in by_status {
            let n = row.get(status.as_str()).and_then(bson_i64).unwrap_or(0);
            if n > 0 {
                counts.tasks.push((priority, status, n));
            }
        }
    }
    let runnable: Vec<Document> = renders
        .aggregate(vec![
            doc! { "$match": {
                "status": is_in(CLAIMABLE_RENDER_STATUSES),
                "tasks_pending": { "$gt": 0_i64 },
            } },
            doc! { "$group": { "_id": "$tags", "n": { "$sum": "$tasks_pending" } } },
        ])
        .await?
        .try_collect()
        .await?;
    for row in runnable {
        let tags = sorted_tags(&row, "_id")?;
        let n = row.get("n").and_then(bson_i64).unwrap_or(0);
        crate::store::add_runnable(&mut counts, tags, TaskKind::Blender, n);
    }
    // Videos of completed renders (`follow_up_ready`), by their render's
    // tags: read through the follow-up index and counted here (few wait at
    // once: one per completed render, until a worker takes it).
    let mut follow_ups = store
        .db()?
        .collection::<Document>(super::TASKS)
        .find(doc! {
            "kind": { "$exists": true },
            "status": TaskStatus::Pending.as_str(),
            "follow_up_ready": true,
        })
        .projection(doc! { "_id": 0, "required_tags": 1, "kind": 1 })
        .await?;
    while let Some(row) = follow_ups.try_next().await? {
        let tags = sorted_tags(&row, "required_tags")?;
        let kind = row
            .get_str("kind")
            .ok()
            .and_then(TaskKind::parse)
            .ok_or_else(|| corrupt(format!("a kind in {row:?}")))?;
        crate::store::add_runnable(&mut counts, tags, kind, 1);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_broker_s_clock_never_goes_back() {
        let mut last = next_order();
        for _ in 0..1000 {
            let next = next_order();
            assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn an_outbox_entry_reads_back_as_written() {
        let entry = Entry::task(TaskStatus::Running, Some("w"), 0, Utc::now());
        let set = outbox_set(&claimed_key("l"), &entry);
        let back: Entry = bson::from_bson(set.get("events.al").unwrap().clone()).unwrap();
        assert_eq!(back.status.as_deref(), Some(LEASED_TASK_STATUS.as_str()));
        assert_eq!(back.worker_id.as_deref(), Some("w"));
        assert_eq!(set.get_bool(HAS_EVENTS), Ok(true));
    }
}
