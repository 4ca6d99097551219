//! The event log on MongoDB: not built yet (issue 12 is building it).
//! Until then every operation answers `Unavailable`, so `GET /events` on a
//! MongoDB broker says so instead of streaming nothing.

use chrono::{DateTime, Utc};
use renderfarm_wire::FarmEvent;
use uuid::Uuid;

use super::MongoStore;
use crate::domain::EventBounds;
use crate::store::{FarmCounts, StoreError, StoreResult};

fn not_yet() -> StoreError {
    StoreError::Unavailable("the MongoDB store does not keep an event log yet".into())
}

pub(super) async fn events_after(
    _store: &MongoStore,
    _after: i64,
    _render: Option<Uuid>,
    _limit: usize,
) -> StoreResult<Vec<FarmEvent>> {
    Err(not_yet())
}

pub(super) async fn event_bounds(_store: &MongoStore) -> StoreResult<EventBounds> {
    Err(not_yet())
}

pub(super) async fn record_coalesced_events(
    _store: &MongoStore,
    _now: DateTime<Utc>,
) -> StoreResult<u64> {
    Ok(0)
}

pub(super) async fn purge_events(
    _store: &MongoStore,
    _before: DateTime<Utc>,
    _keep: i64,
) -> StoreResult<u64> {
    Ok(0)
}

pub(super) async fn farm_counts(
    _store: &MongoStore,
    _since: DateTime<Utc>,
) -> StoreResult<FarmCounts> {
    Err(not_yet())
}
