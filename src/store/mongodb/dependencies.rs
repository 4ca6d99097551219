//! Dependencies between renders on MongoDB: a waiting render is moved on
//! (`domain::waiting_reason`) right after a render it depends on changes
//! status, by that change's writer. Render documents change one at a
//! time, so a broker that dies between the two writes leaves the waiting
//! render for the scheduler's sweep (`settle_waiting`) to move on.

use bson::{doc, Bson};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use renderfarm_wire::RenderStatus;
use uuid::Uuid;

use super::counters::render_cas_filter;
use super::documents::RenderDoc;
use super::MongoStore;
use crate::domain::{waiting_reason, DependencyState, IllegalTransition};
use crate::store::{StoreError, StoreResult};

impl MongoStore {
    /// How the renders with `ids` stand now (a deleted one is missing: its
    /// document goes first).
    pub(super) async fn states_of(&self, ids: &[Uuid]) -> StoreResult<Vec<DependencyState>> {
        let keys: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let found: Vec<RenderDoc> = self
            .renders()?
            .find(doc! { "_id": { "$in": &keys } })
            .await?
            .try_collect()
            .await?;
        ids.iter()
            .map(|id| {
                let key = id.to_string();
                let found = match found.iter().find(|d| d.id == key) {
                    Some(d) => Some((d.name.clone(), d.status()?)),
                    None => None,
                };
                Ok(DependencyState { id: *id, found })
            })
            .collect()
    }

    /// Moves the render on if it waits: released (queued) when every
    /// dependency completed, else its reason brought up to date. True when
    /// it was released.
    pub(super) async fn settle_render(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let doc = match self.load_render(id).await {
            Ok(doc) => doc,
            Err(StoreError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        if doc.status()? != RenderStatus::Waiting {
            return Ok(false);
        }
        let deps: Vec<Uuid> = doc
            .depends_on
            .iter()
            .filter_map(|d| Uuid::parse_str(d).ok())
            .collect();
        let states = self.states_of(&deps).await?;
        if let Some(reason) = waiting_reason(&states) {
            if doc.waiting_reason.as_deref() != Some(reason.as_str()) {
                // Fenced by version: a render changed meanwhile is settled
                // again by whatever changed it.
                self.renders()?
                    .update_one(
                        render_cas_filter(id, doc.version),
                        doc! { "$set": { "waiting_reason": Bson::String(reason) } },
                    )
                    .await?;
            }
            return Ok(false);
        }
        let written = self
            .write_render_status(id, false, now, |from| {
                if from == RenderStatus::Waiting {
                    Ok(RenderStatus::Queued)
                } else {
                    Err(IllegalTransition::new("no longer waiting").into())
                }
            })
            .await;
        let (from, _, _, after) = match written {
            Ok(written) => written,
            // Released or canceled by someone else first.
            Err(StoreError::IllegalTransition(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        tracing::info!(render_id = %id, "render released: its dependencies completed");
        self.after_status_write(from, after, &[], now).await?;
        Ok(true)
    }

    /// Settles every waiting render that depends on the render `id`, after
    /// its status changed (or it was deleted).
    pub(super) async fn settle_dependents(&self, id: &str, now: DateTime<Utc>) -> StoreResult<()> {
        let waiting: Vec<String> = self
            .renders()?
            .distinct(
                "_id",
                doc! { "depends_on": id, "status": RenderStatus::Waiting.as_str() },
            )
            .await?
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        for render in waiting {
            Box::pin(self.settle_render(&render, now)).await?;
        }
        Ok(())
    }

    /// Settles every waiting render; how many were released.
    pub(super) async fn settle_all_waiting(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let waiting: Vec<String> = self
            .renders()?
            .distinct("_id", doc! { "status": RenderStatus::Waiting.as_str() })
            .await?
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let mut released = 0;
        for render in waiting {
            released += u64::from(self.settle_render(&render, now).await?);
        }
        Ok(released)
    }
}
