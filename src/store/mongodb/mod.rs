//! The production store: MongoDB through the official driver.
//!
//! No transactions and no process-wide lock, so that several brokers can
//! share one database, standalone or replica set. What keeps it consistent:
//!
//! - **The claim is one `findOneAndUpdate`** over the `tasks_claim` index.
//!   Each task carries what the claim filter needs from its render (priority
//!   rank, creation order `render_seq`, required tags, and a `runnable` flag
//!   that is false while the render is paused or finished), so the server
//!   picks and takes the next task atomically. A unique partial index
//!   (`tasks_one_running_per_worker`) lets a worker hold one running task:
//!   the server refuses a second claim for it, however the claims race.
//! - **Reports are fenced by the lease**: every task change by a worker is a
//!   filtered update on `{_id, lease_id, status: "running"}`; matching nothing
//!   is a conflict, never a silent success. The update returns the task as it
//!   was, and the answer is that task with the same update applied, so a
//!   report does not read the task back (see the command counts asserted in
//!   `tests/store_mongodb.rs`).
//! - **Render counters follow the tasks by `$inc`**, one per task move (or per
//!   bulk `update_many`, counting what it modified), so concurrent moves add
//!   up. The render's status is then recomputed with the domain's `tallied_status`
//!   and written with a compare-and-set on the render's `version`, which
//!   every counter change bumps: a status decided from stale counters is
//!   recomputed, so concurrent brokers converge.
//! - **A render appears whole**: its tasks are inserted first (not runnable),
//!   then the render document, then its tasks are made runnable. A crash
//!   before the render document leaves only unreachable task documents.
//!
//! The broker must start while MongoDB is down: [`MongoStore::start`] returns
//! at once and connects (and migrates) in the background; until then every
//! operation answers [`StoreError::Unavailable`].

mod adaptive;
mod blocklist;
mod connect;
mod counters;
mod dependencies;
mod documents;
mod errors;
mod events;
mod frames;
mod migrations;
mod path_variables;
mod renders;
mod rules;
mod snapshot;
mod tasks;
mod tokens;
mod upkeep;
mod webhooks;
mod workers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use super::{PageRequest, StoreError, StoreResult};

use documents::*;
use errors::*;

pub use adaptive::Step as ResplitStep;
pub use connect::MigrationMode;
pub use migrations::MIGRATIONS;

/// The database used when the URI names none.
pub const DEFAULT_DATABASE: &str = "renderfarm";

const RENDERS: &str = "renders";

const TASKS: &str = "tasks";

const WORKERS: &str = "workers";

const TASK_LOGS: &str = "task_logs";

const COUNTERS: &str = "counters";

const TASK_HISTORY: &str = "task_history";

const LEASES: &str = "leases";

/// Renders being written: their tasks go in before the render document, so
/// a broker that dies half-way leaves tasks nothing refers to; the marker
/// says whose they are, and the scheduler clears them once it is stale.
const RENDERS_IN_WRITING: &str = "renders_in_writing";

struct Inner {
    /// Set once the server answered and the schema is current.
    db: OnceLock<Database>,
    /// Why the store is not ready yet, for `/ready` and 503 answers.
    waiting_for: Mutex<String>,
    /// The servers and database, without credentials, for messages.
    target: String,
    /// Frame counts and workers of the tasks this broker handed out, by
    /// lease: a completion sets the task's frames done to its frame count,
    /// which an update cannot take from the document itself (that needs a
    /// pipeline update), and a report's event names the worker, which the
    /// update that writes the event cannot take from the document either;
    /// so without this a report would read the task first. Neither changes
    /// under a lease, so an entry is never stale; a lease missing here
    /// (handed out by another broker, or before a restart) is read instead.
    lease_frames: Mutex<HashMap<String, Handed>>,
}

/// What this broker remembers of a task it handed out.
#[derive(Debug, Clone)]
struct Handed {
    frames: i64,
    worker: String,
}

/// Leases remembered in [`Inner::lease_frames`] at most; past it the map
/// starts over (entries whose reports went to another broker pile up).
const MAX_REMEMBERED_LEASES: usize = 100_000;

impl MongoStore {
    /// Remembers the frame count and worker of the task handed out under `lease`.
    fn remember_lease(&self, lease: &str, frames: i64, worker: &str) {
        let mut map = self
            .inner
            .lease_frames
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_REMEMBERED_LEASES {
            map.clear();
        }
        map.insert(
            lease.to_string(),
            Handed {
                frames,
                worker: worker.to_string(),
            },
        );
    }

    /// What is remembered of `lease`, forgotten now (the lease ends with
    /// the report that asks).
    fn recall_lease(&self, lease: &str) -> Option<Handed> {
        self.inner
            .lease_frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(lease)
    }
}

/// The MongoDB store.
#[derive(Clone)]
pub struct MongoStore {
    inner: Arc<Inner>,
}

impl MongoStore {
    fn db(&self) -> StoreResult<&Database> {
        self.inner.db.get().ok_or_else(|| {
            let why = self
                .inner
                .waiting_for
                .lock()
                .map(|w| w.clone())
                .unwrap_or_else(|_| "connecting to MongoDB".into());
            StoreError::Unavailable(why)
        })
    }

    /// The database, once connected: the GridFS file storage shares it.
    pub fn database(&self) -> StoreResult<Database> {
        Ok(self.db()?.clone())
    }

    fn renders(&self) -> StoreResult<Collection<RenderDoc>> {
        Ok(self.db()?.collection(RENDERS))
    }

    fn tasks(&self) -> StoreResult<Collection<TaskDoc>> {
        Ok(self.db()?.collection(TASKS))
    }

    fn workers(&self) -> StoreResult<Collection<WorkerDoc>> {
        Ok(self.db()?.collection(WORKERS))
    }

    fn tokens(&self) -> StoreResult<Collection<tokens::TokenDoc>> {
        Ok(self.db()?.collection(tokens::TOKENS))
    }

    fn writing(&self) -> StoreResult<Collection<WritingDoc>> {
        Ok(self.db()?.collection(RENDERS_IN_WRITING))
    }

    fn logs(&self) -> StoreResult<Collection<LogDoc>> {
        Ok(self.db()?.collection(TASK_LOGS))
    }

    fn history(&self) -> StoreResult<Collection<HistoryDoc>> {
        Ok(self.db()?.collection(TASK_HISTORY))
    }

    fn leases(&self) -> StoreResult<Collection<LeaseDoc>> {
        Ok(self.db()?.collection(LEASES))
    }
}

impl MongoStore {
    async fn next_seq(&self, name: &str) -> StoreResult<i64> {
        let counters = self.db()?.collection::<CounterDoc>(COUNTERS);
        let mut last = None;
        // Two first-ever upserts may race on the new _id; the loser retries.
        for _ in 0..3 {
            match counters
                .find_one_and_update(doc! { "_id": name }, next_seq_update())
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await
            {
                Ok(Some(c)) => return Ok(c.seq),
                Ok(None) => return Err(corrupt(format!("no {name} counter after an upsert"))),
                Err(e) if is_duplicate_key(&e) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map_or_else(|| corrupt("an unusable counter"), StoreError::from))
    }
}

/// One page of a sorted listing.
async fn fetch_page<T>(
    collection: &Collection<T>,
    filter: Document,
    sort: Document,
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<T>>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    // A limit of 0 means "no limit" to the server.
    if limit == 0 {
        return Ok(Vec::new());
    }
    Ok(collection
        .find(filter)
        .sort(sort)
        .skip(u64::try_from(offset).unwrap_or(0))
        .limit(limit)
        .await?
        .try_collect()
        .await?)
}

fn page_bounds(page: PageRequest) -> (i64, i64) {
    (
        page.limit.clamp(0, PageRequest::MAX_LIMIT),
        page.offset.max(0),
    )
}

/// Takes the next number of a named sequence (creating it at 1).
pub fn next_seq_update() -> Document {
    doc! { "$inc": { "seq": 1_i64 } }
}

/// Answers when the store can serve requests now.
async fn ping(store: &MongoStore) -> StoreResult<()> {
    store.db()?.run_command(doc! { "ping": 1 }).await?;
    Ok(())
}

crate::store::by_concern::store_by_concern!(MongoStore, backend = "mongodb", ping = ping);

#[cfg(test)]
mod tests;
