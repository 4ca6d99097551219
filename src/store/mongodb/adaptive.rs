//! Adaptive chunking: what the tick measures, and the re-split of a
//! render's pending tasks.
//!
//! No multi-document transaction here, so a re-split is a journal on the
//! render's document and steps that are each idempotent; whoever finds a
//! journal (the next tick of any broker, [`finish_resplits`]) carries it
//! through:
//!
//! 1. the journal (`resplit`: a token, the size) is set, one at a time per
//!    render;
//! 2. the re-splittable pending tasks are marked with the token and made
//!    unclaimable (`runnable: false`, which the claim index reads), each on
//!    condition that it is still pending and never handed out, so a task a
//!    worker claimed meanwhile is left alone and a marked task is never
//!    claimed (`counters::runnable_sync` leaves marked tasks alone too);
//!    the journal then records how many were marked;
//! 3. the new chunks are inserted, with ids derived from the token and
//!    their first frame, so inserting again adds only what is missing; the
//!    plan is computed from the marked tasks, which stay whole until every
//!    new chunk is in;
//! 4. the marked tasks are deleted;
//! 5. the counters move by (new − marked) and the journal goes, in one
//!    update on condition that the journal is still there.
//!
//! Until step 5 the tick's recount leaves the render alone.

use bson::{doc, Bson};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use renderfarm_wire::{FrameOrder, TaskStatus};
use uuid::Uuid;

use super::rules::is_in;
use super::{documents::*, errors::*, *};
use crate::domain::{
    bulk_rank, is_claimable, is_resplittable, resplit_ranges, ChunkSize, ChunkTiming, PendingChunk,
    MEASURED_CHUNKS, UNFINISHED_RENDER_STATUSES,
};
use crate::store::{stored_frames, AdaptiveRender, Resplit, StoreError, StoreResult};

/// How old a journal is before any broker's tick carries it through: a
/// re-split takes a few commands, so one older than this was left by a
/// broker that died (or stalled; every step after marking is idempotent).
pub const RESPLIT_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// New tasks inserted per command.
const INSERT_BATCH: usize = 1_000;

pub(super) async fn adaptive_renders(store: &MongoStore) -> StoreResult<Vec<AdaptiveRender>> {
    let renders: Vec<RenderDoc> = store
        .renders()?
        .find(doc! {
            "target_chunk_seconds": { "$type": "number" },
            "status": is_in(UNFINISHED_RENDER_STATUSES),
            "tasks_completed": { "$gt": 0_i64 },
        })
        .await?
        .try_collect()
        .await?;
    let mut out = Vec::with_capacity(renders.len());
    for r in renders {
        let Some(target_seconds) = r.target_chunk_seconds else {
            continue;
        };
        let done: Vec<TaskDoc> = store
            .tasks()?
            .find(doc! {
                "render_id": &r.id,
                "status": TaskStatus::Completed.as_str(),
                "kind": { "$exists": false },
                "started_at": { "$type": "date" },
                "finished_at": { "$type": "date" },
            })
            .sort(doc! { "finished_at": -1 })
            .limit(MEASURED_CHUNKS)
            .await?
            .try_collect()
            .await?;
        let completed = done
            .iter()
            .filter_map(|t| {
                let took = t.finished_at?.timestamp_millis() - t.started_at?.timestamp_millis();
                Some(ChunkTiming {
                    frames: t.frame_end - t.frame_start + 1,
                    seconds: took as f64 / 1000.0,
                })
            })
            .collect();
        out.push(AdaptiveRender {
            render_id: parse_uuid(&r.id, "render id")?,
            target_seconds,
            chunk_size: r.chunk_size,
            measured_frame_seconds: r.measured_frame_seconds,
            completed,
        });
    }
    Ok(out)
}

pub(super) async fn adapt_chunks(
    store: &MongoStore,
    render: Uuid,
    frame_seconds: f64,
    resplit_to: Option<ChunkSize>,
    now: DateTime<Utc>,
) -> StoreResult<Option<Resplit>> {
    let id = render.to_string();
    let doc = store.load_render(&id).await?;
    if doc.target_chunk_seconds.is_none() {
        return Err(StoreError::not_found(
            "render with adaptive chunking",
            render,
        ));
    }
    let Some(size) = resplit_to else {
        store
            .renders()?
            .update_one(
                doc! { "_id": &id },
                doc! { "$set": { "measured_frame_seconds": frame_seconds } },
            )
            .await?;
        return Ok(None);
    };
    if !UNFINISHED_RENDER_STATUSES.contains(&doc.status()?) {
        return Ok(None);
    }
    resplit(store, &id, size, frame_seconds, Step::Done, now).await
}

/// Steps 1 and 2 (unless another re-split of the render is under way:
/// then `None`), then the rest up to `until`.
async fn resplit(
    store: &MongoStore,
    render: &str,
    size: ChunkSize,
    frame_seconds: f64,
    until: Step,
    now: DateTime<Utc>,
) -> StoreResult<Option<Resplit>> {
    let journal = ResplitJournal {
        token: Uuid::now_v7().to_string(),
        size: size.get(),
        frame_seconds,
        begun_at: bson_time(now),
        replaced: None,
    };
    let journal_bson = bson::to_bson(&journal).map_err(|e| StoreError::Unexpected(e.into()))?;
    let begun = store
        .renders()?
        .find_one_and_update(
            doc! { "_id": render, "resplit": { "$exists": false } },
            doc! { "$set": { "resplit": journal_bson } },
        )
        .return_document(ReturnDocument::After)
        .await?;
    let Some(doc) = begun else {
        // Another re-split of it is under way: the next tick finishes it.
        return Ok(None);
    };
    mark_resplittable(store, &doc, &journal.token).await?;
    if until == Step::Marked {
        return Ok(None);
    }
    carry_through(store, render, now, until).await
}

/// Where a re-split stops: at its end, or (a test tool) where a broker
/// killed midway would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Marked,
    Inserted,
    Deleted,
    Done,
}

#[cfg(any(test, feature = "conformance"))]
impl MongoStore {
    /// A test tool: a re-split of the render to `size` that stops after
    /// `step`, as a broker killed there leaves it.
    pub async fn resplit_until(
        &self,
        render: Uuid,
        size: ChunkSize,
        frame_seconds: f64,
        step: Step,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        resplit(self, &render.to_string(), size, frame_seconds, step, now)
            .await
            .map(|_| ())
    }
}

/// Step 2: marks the render's re-splittable pending tasks, then records
/// how many are marked.
async fn mark_resplittable(store: &MongoStore, doc: &RenderDoc, token: &str) -> StoreResult<()> {
    let order = match doc.frame_order.as_deref() {
        None => FrameOrder::Sequential,
        Some(o) => FrameOrder::parse(o)
            .ok_or_else(|| corrupt(format!("render {} with frame order {o:?}", doc.id)))?,
    };
    let bulk = bulk_rank(stored_frames(doc.frame_start, doc.frame_end)?, order);
    let pending: Vec<TaskDoc> = store
        .tasks()?
        .find(doc! {
            "render_id": &doc.id,
            "status": TaskStatus::Pending.as_str(),
            "kind": { "$exists": false },
            "resplit": { "$exists": false },
        })
        .await?
        .try_collect()
        .await?;
    let mut ids = Vec::new();
    for t in &pending {
        let chunk = PendingChunk {
            frames: stored_frames(t.frame_start, t.frame_end)?,
            rank: t.claim_rank,
            handed_out: t.worker_id.is_some(),
            retries: t.retries,
        };
        if is_resplittable(&chunk, bulk) {
            ids.push(t.id.clone());
        }
    }
    if !ids.is_empty() {
        store
            .tasks()?
            .update_many(
                // Still as read, where a claim may have changed it since:
                // pending, and no worker (a retry or a rank changes only
                // after a worker held it).
                doc! {
                    "_id": { "$in": ids },
                    "status": TaskStatus::Pending.as_str(),
                    "worker_id": Bson::Null,
                },
                doc! { "$set": { "resplit": token, "runnable": false } },
            )
            .await?;
    }
    record_marked(store, &doc.id, token).await
}

async fn record_marked(store: &MongoStore, render: &str, token: &str) -> StoreResult<()> {
    let marked = store
        .tasks()?
        .count_documents(doc! { "render_id": render, "resplit": token })
        .await? as i64;
    store
        .renders()?
        .update_one(
            doc! { "_id": render, "resplit.token": token, "resplit.replaced": { "$exists": false } },
            doc! { "$set": { "resplit.replaced": marked } },
        )
        .await?;
    Ok(())
}

/// Steps 3 to 5 for the render's journal, from wherever it stands.
async fn carry_through(
    store: &MongoStore,
    render: &str,
    now: DateTime<Utc>,
    until: Step,
) -> StoreResult<Option<Resplit>> {
    let doc = store.load_render(render).await?;
    let Some(journal) = doc.resplit.clone() else {
        return Ok(None);
    };
    let token = journal.token.clone();
    let Some(replaced) = journal.replaced else {
        // Stopped while marking: what is marked is the set.
        record_marked(store, render, &token).await?;
        return Box::pin(carry_through(store, render, now, until)).await;
    };
    let tasks = store.tasks()?;
    let marked: Vec<TaskDoc> = tasks
        .find(doc! { "render_id": render, "resplit": &token })
        .await?
        .try_collect()
        .await?;
    // The marked tasks stay whole until every new chunk is in (step 4
    // follows step 3): a full set means step 3 may be unfinished.
    if marked.len() as i64 == replaced && replaced > 0 {
        insert_new_chunks(store, &doc, &journal, &marked, now).await?;
    }
    if until == Step::Inserted {
        return Ok(None);
    }
    tasks
        .delete_many(doc! { "render_id": render, "resplit": &token })
        .await?;
    if until == Step::Deleted {
        return Ok(None);
    }
    let created = tasks
        .count_documents(doc! { "render_id": render, "resplit_of": &token })
        .await? as i64;
    let delta = created - replaced;
    let mut set = doc! { "measured_frame_seconds": journal.frame_seconds };
    if replaced > 0 {
        set.insert("chunk_size", journal.size);
    }
    let done = store
        .renders()?
        .find_one_and_update(
            doc! { "_id": render, "resplit.token": &token },
            doc! {
                "$inc": { "tasks_total": delta, "tasks_pending": delta, "version": 1_i64 },
                "$set": set,
                "$unset": { "resplit": "" },
            },
        )
        .return_document(ReturnDocument::After)
        .await?;
    let Some(after) = done else {
        // Another broker carried it through first.
        return Ok(None);
    };
    if replaced == 0 {
        return Ok(None);
    }
    // New chunks took the render's claimability as it was read; a pause
    // or resume since then is applied to them now.
    store
        .sync_runnable(render, is_claimable(after.status()?), after.version)
        .await?;
    tracing::info!(
        render_id = %render,
        replaced,
        created,
        chunk_size = journal.size,
        "pending chunks re-split to the measured frame time"
    );
    Ok(Some(Resplit { replaced, created }))
}

/// Step 3: inserts the new chunks that are not in yet.
async fn insert_new_chunks(
    store: &MongoStore,
    doc: &RenderDoc,
    journal: &ResplitJournal,
    marked: &[TaskDoc],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let token = Uuid::parse_str(&journal.token)
        .map_err(|_| corrupt(format!("a re-split token {:?}", journal.token)))?;
    let size = ChunkSize::new(journal.size)
        .map_err(|e| corrupt(format!("a re-split to {}: {}", journal.size, e.message)))?;
    let ranges = marked
        .iter()
        .map(|t| stored_frames(t.frame_start, t.frame_end))
        .collect::<StoreResult<Vec<_>>>()?;
    let rank = marked.first().map(|t| t.claim_rank).unwrap_or_default();
    // Their wait counts from the earliest of the tasks they replace.
    let queued_at = marked
        .iter()
        .map(|t| t.queued_at)
        .min()
        .unwrap_or_else(|| bson_time(now));
    let runnable = is_claimable(doc.status()?);
    let planned: Vec<TaskDoc> = resplit_ranges(&ranges, size)
        .into_iter()
        .map(|r| {
            let mut task = TaskDoc::planned(doc, r.start(), r.end());
            // The same id for the same chunk of the same re-split, so a
            // second insert finds it.
            task.id =
                Uuid::from_u128(token.as_u128().wrapping_add(r.start() as u128 + 1)).to_string();
            task.claim_rank = rank;
            task.queued_at = queued_at;
            task.runnable = runnable;
            task.runnable_version = doc.version;
            task.resplit_of = Some(journal.token.clone());
            task
        })
        .collect();
    let tasks = store.tasks()?;
    for batch in planned.chunks(INSERT_BATCH) {
        let ids: Vec<&str> = batch.iter().map(|t| t.id.as_str()).collect();
        let present: Vec<String> = tasks
            .distinct("_id", doc! { "_id": { "$in": &ids } })
            .await?
            .into_iter()
            .filter_map(|b| b.as_str().map(str::to_string))
            .collect();
        let missing: Vec<&TaskDoc> = batch.iter().filter(|t| !present.contains(&t.id)).collect();
        if !missing.is_empty() {
            tasks.insert_many(missing).await?;
        }
    }
    Ok(())
}

/// Carries through every journal older than [`RESPLIT_GRACE`]: re-splits
/// a broker left half-done.
pub(super) async fn finish_resplits(store: &MongoStore, now: DateTime<Utc>) -> StoreResult<u64> {
    let open: Vec<RenderDoc> = store
        .renders()?
        .find(doc! {
            "resplit": { "$type": "object" },
            "resplit.begun_at": { "$lte": bson_time(now - RESPLIT_GRACE) },
        })
        .await?
        .try_collect()
        .await?;
    let mut finished = 0;
    for doc in open {
        tracing::warn!(render_id = %doc.id, "finishing a re-split left half-done");
        carry_through(store, &doc.id, now, Step::Done).await?;
        finished += 1;
    }
    Ok(finished)
}
