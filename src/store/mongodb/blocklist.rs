//! The blocklist on MongoDB (`domain::after_failure`): one document per
//! worker and render (`_id` = `<render>/<worker>`), written after the
//! failure it counts; a claim reads the renders its worker is blocked from
//! first (a partial index holds only blocks) and leaves their tasks out.

use bson::{doc, Bson};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::documents::bson_time;
use super::documents::{RenderDoc, WorkerDoc};
use super::errors::parse_uuid;
use super::rules::is_in;
use super::MongoStore;
use crate::domain::{
    after_failure, became_blocked, runs_chunks, BlockedRender, BlocklistCount, EligibleWorker,
    WorkerMode, CLAIMABLE_RENDER_STATUSES,
};
use crate::store::{StoreResult, StoredBlocklistEntry};

pub(super) const BLOCKLIST: &str = "blocklist";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct BlocklistDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) render_id: String,
    pub(super) worker_id: String,
    pub(super) failures: i64,
    pub(super) blocked_at: Option<bson::DateTime>,
}

impl MongoStore {
    fn blocklist_docs(&self) -> StoreResult<mongodb::Collection<BlocklistDoc>> {
        Ok(self.db()?.collection(BLOCKLIST))
    }

    /// Counts a failed chunk of `render` against `worker`.
    pub(super) async fn record_failure(
        &self,
        render: &str,
        worker: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let Some(doc) = self.renders()?.find_one(doc! { "_id": render }).await? else {
            return Ok(());
        };
        let key = format!("{render}/{worker}");
        let docs = self.blocklist_docs()?;
        let before = docs
            .find_one(doc! { "_id": &key })
            .await?
            .map(|b| BlocklistCount {
                failures: b.failures,
                blocked_at: b.blocked_at,
            });
        let after = after_failure(before, doc.blocklist_after, bson_time(now));
        docs.replace_one(
            doc! { "_id": &key },
            BlocklistDoc {
                id: key.clone(),
                render_id: render.to_string(),
                worker_id: worker.to_string(),
                failures: after.failures,
                blocked_at: after.blocked_at,
            },
        )
        .upsert(true)
        .await?;
        if became_blocked(before.as_ref(), &after) {
            tracing::warn!(
                render_id = render,
                worker_id = worker,
                failures = after.failures,
                "worker blocklisted from the render"
            );
        }
        Ok(())
    }

    /// The renders `worker` is blocked from.
    pub(super) async fn blocked_renders(&self, worker: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .blocklist_docs()?
            .distinct(
                "render_id",
                doc! { "worker_id": worker, "blocked_at": { "$type": "date" } },
            )
            .await?
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }
}

pub(super) async fn blocklist(
    store: &MongoStore,
    render: Uuid,
) -> StoreResult<Vec<StoredBlocklistEntry>> {
    let id = render.to_string();
    store.load_render(&id).await?;
    let docs: Vec<BlocklistDoc> = store
        .blocklist_docs()?
        .find(doc! { "render_id": &id })
        .sort(doc! { "worker_id": 1 })
        .await?
        .try_collect()
        .await?;
    // The workers' names in one read, not one per entry.
    let ids: Vec<&str> = docs.iter().map(|d| d.worker_id.as_str()).collect();
    let workers: Vec<WorkerDoc> = store
        .workers()?
        .find(doc! { "_id": { "$in": ids } })
        .await?
        .try_collect()
        .await?;
    docs.into_iter()
        .map(|d| {
            Ok(StoredBlocklistEntry {
                worker_id: parse_uuid(&d.worker_id, "worker id")?,
                worker_name: workers
                    .iter()
                    .find(|w| w.id == d.worker_id)
                    .map(|w| w.name.clone()),
                failures: d.failures,
                blocked_at: d.blocked_at.map(bson::DateTime::to_chrono),
            })
        })
        .collect()
}

pub(super) async fn clear_blocklist(
    store: &MongoStore,
    render: Uuid,
    worker: Option<Uuid>,
) -> StoreResult<u64> {
    let id = render.to_string();
    store.load_render(&id).await?;
    let mut filter = doc! { "render_id": &id };
    if let Some(w) = worker {
        filter.insert("worker_id", w.to_string());
    }
    Ok(store
        .blocklist_docs()?
        .delete_many(filter)
        .await?
        .deleted_count)
}

pub(super) async fn expire_blocklist(
    store: &MongoStore,
    blocked_before: DateTime<Utc>,
) -> StoreResult<u64> {
    Ok(store
        .blocklist_docs()?
        .delete_many(doc! { "blocked_at": { "$type": "date", "$lte": bson_time(blocked_before) } })
        .await?
        .deleted_count)
}

pub(super) async fn blocklist_starvation_inputs(
    store: &MongoStore,
) -> StoreResult<(Vec<BlockedRender>, Vec<EligibleWorker>)> {
    let blocks: Vec<BlocklistDoc> = store
        .blocklist_docs()?
        .find(doc! { "blocked_at": { "$type": "date" } })
        .await?
        .try_collect()
        .await?;
    if blocks.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let ids: Vec<&str> = blocks.iter().map(|b| b.render_id.as_str()).collect();
    let renders: Vec<RenderDoc> = store
        .renders()?
        .find(doc! {
            "_id": { "$in": ids },
            "status": is_in(CLAIMABLE_RENDER_STATUSES),
            "tasks_pending": { "$gt": 0_i64 },
        })
        .await?
        .try_collect()
        .await?;
    let mut blocked = Vec::with_capacity(renders.len());
    for r in renders {
        blocked.push(BlockedRender {
            id: parse_uuid(&r.id, "render id")?,
            tags: r.tags.clone(),
            blocked: blocks
                .iter()
                .filter(|b| b.render_id == r.id)
                .map(|b| parse_uuid(&b.worker_id, "worker id"))
                .collect::<StoreResult<_>>()?,
        });
    }
    let workers: Vec<WorkerDoc> = store
        .workers()?
        .find(doc! { "mode": { "$ne": WorkerMode::Disabled.as_str() } })
        .await?
        .try_collect()
        .await?;
    let eligible = workers
        .into_iter()
        .filter(|w| runs_chunks(&w.kinds()))
        .map(|w| {
            Ok(EligibleWorker {
                id: parse_uuid(&w.id, "worker id")?,
                name: w.name,
                tags: w.tags,
            })
        })
        .collect::<StoreResult<_>>()?;
    Ok((blocked, eligible))
}

pub(super) async fn fail_render(
    store: &MongoStore,
    render: Uuid,
    reason: String,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let id = render.to_string();
    let marked = store
        .renders()?
        .find_one_and_update(
            doc! { "_id": &id, "status": is_in(CLAIMABLE_RENDER_STATUSES) },
            doc! { "$set": { "failed_for_good": true, "failure_reason": Bson::String(reason.clone()) } },
        )
        .return_document(mongodb::options::ReturnDocument::After)
        .await?;
    let Some(doc) = marked else {
        return Ok(());
    };
    store.save_tally(doc, false, now).await?;
    tracing::warn!(render_id = %id, %reason, "render failed by the scheduler");
    Ok(())
}
