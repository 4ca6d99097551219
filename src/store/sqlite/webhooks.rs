//! Webhooks and their outbox of deliveries. Deliveries are derived from the
//! event log, which the triggers of `events.rs` write in the transaction of
//! each change; queuing stores a batch of deliveries and moves the cursor
//! past their entries in one transaction, so every entry makes its
//! deliveries exactly once, across any `kill -9`.

use chrono::{DateTime, Utc};
use renderfarm_wire::FarmEvent;
use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

use super::rows::*;
use super::SqliteStore;
use crate::domain::{
    AttemptRecord, DeliveryCounts, DeliveryState, DueDelivery, NewDelivery, StoredWebhook,
    WebhookEvent, WebhookHealth,
};
use crate::store::{StoreError, StoreResult};

const WEBHOOK_COLUMNS: &str = "w.id, w.url, w.events, w.description, w.secret, w.created_at, \
     w.disabled_at, w.disabled_reason, w.failing_since, w.consecutive_failures, \
     w.last_attempt_at, w.last_outcome, w.last_success_at";

fn events_json(events: &[WebhookEvent]) -> String {
    serde_json::Value::from(events.iter().map(|e| e.as_str()).collect::<Vec<_>>()).to_string()
}

fn webhook_from_row(row: &Row) -> rusqlite::Result<StoredWebhook> {
    webhook_from_row_at(row, 0)
}

/// The webhook whose [`WEBHOOK_COLUMNS`] start at column `at`.
fn webhook_from_row_at(row: &Row, at: usize) -> rusqlite::Result<StoredWebhook> {
    let events: String = row.get(at + 2)?;
    let names: Vec<String> =
        serde_json::from_str(&events).map_err(|_| conversion_error(at + 2, "events", &events))?;
    let events = names
        .iter()
        .map(|n| WebhookEvent::parse(n).ok_or_else(|| conversion_error(at + 2, "event", n)))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(StoredWebhook {
        id: get_uuid(row, at)?,
        url: row.get(at + 1)?,
        events,
        description: row.get(at + 3)?,
        secret: row.get(at + 4)?,
        created_at: get_time(row, at + 5)?,
        disabled_at: get_opt_time(row, at + 6)?,
        disabled_reason: row.get(at + 7)?,
        failing_since: get_opt_time(row, at + 8)?,
        consecutive_failures: row.get(at + 9)?,
        last_attempt_at: get_opt_time(row, at + 10)?,
        last_outcome: row.get(at + 11)?,
        last_success_at: get_opt_time(row, at + 12)?,
    })
}

fn load_webhook(conn: &Connection, id: Uuid) -> StoreResult<StoredWebhook> {
    conn.prepare_cached(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.id = ?1"
    ))?
    .query_row([id.to_string()], webhook_from_row)
    .optional()?
    .ok_or_else(|| StoreError::not_found("webhook", id))
}

pub(super) async fn create_webhook(
    store: &SqliteStore,
    hook: StoredWebhook,
) -> StoreResult<StoredWebhook> {
    store
        .write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO webhooks (id, url, events, description, secret, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    hook.id.to_string(),
                    hook.url,
                    events_json(&hook.events),
                    hook.description,
                    hook.secret,
                    ts(hook.created_at),
                ]);
            match inserted {
                Ok(_) => load_webhook(conn, hook.id),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::AlreadyExists)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
}

pub(super) async fn list_webhooks(store: &SqliteStore) -> StoreResult<Vec<StoredWebhook>> {
    store
        .read(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks w ORDER BY w.seq"
                ))?
                .query_map([], webhook_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
}

pub(super) async fn get_webhook(store: &SqliteStore, id: Uuid) -> StoreResult<StoredWebhook> {
    store.read(move |conn| load_webhook(conn, id)).await
}

pub(super) async fn delete_webhook(store: &SqliteStore, id: Uuid) -> StoreResult<()> {
    store
        .write(move |conn| {
            // Its deliveries go with it (ON DELETE CASCADE).
            let deleted = conn
                .prepare_cached("DELETE FROM webhooks WHERE id = ?1")?
                .execute([id.to_string()])?;
            if deleted == 0 {
                return Err(StoreError::not_found("webhook", id));
            }
            Ok(())
        })
        .await
}

pub(super) async fn enable_webhook(store: &SqliteStore, id: Uuid) -> StoreResult<StoredWebhook> {
    store
        .write(move |conn| {
            conn.prepare_cached(
                "UPDATE webhooks SET disabled_at = NULL, disabled_reason = NULL, \
                 failing_since = NULL, consecutive_failures = 0 WHERE id = ?1",
            )?
            .execute([id.to_string()])?;
            load_webhook(conn, id)
        })
        .await
}

pub(super) async fn webhook_delivery_counts(
    store: &SqliteStore,
    id: Uuid,
) -> StoreResult<DeliveryCounts> {
    store
        .read(move |conn| {
            load_webhook(conn, id)?;
            let mut counts = DeliveryCounts::default();
            let mut query = conn.prepare_cached(
                "SELECT state, COUNT(*) FROM webhook_deliveries WHERE webhook_id = ?1 GROUP BY state",
            )?;
            let mut rows = query.query([id.to_string()])?;
            while let Some(row) = rows.next()? {
                let n: i64 = row.get(1)?;
                match get_enum(row, 0, DeliveryState::parse)? {
                    DeliveryState::Pending => counts.pending = n,
                    DeliveryState::Delivered => counts.delivered = n,
                    DeliveryState::Failed => counts.failed = n,
                }
            }
            Ok(counts)
        })
        .await
}

fn load_cursor(conn: &Connection) -> StoreResult<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT after FROM webhook_cursor WHERE id = 1")?
        .query_row([], |r| r.get(0))
        .optional()?)
}

pub(super) async fn webhook_cursor(store: &SqliteStore) -> StoreResult<Option<i64>> {
    store.read(load_cursor).await
}

pub(super) async fn queue_webhook_deliveries(
    store: &SqliteStore,
    from: Option<i64>,
    to: i64,
    deliveries: Vec<NewDelivery>,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let pending = DeliveryState::Pending.as_str();
    let rows = deliveries
        .into_iter()
        .map(|d| {
            let source =
                serde_json::to_string(&d.source).map_err(|e| StoreError::Unexpected(e.into()))?;
            Ok((d, source))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let now = ts(now);
    store
        .write(move |conn| {
            if load_cursor(conn)? != from {
                return Ok(false);
            }
            // A webhook deleted since the deliveries were planned gets none
            // (the SELECT finds no row); a pair queued before is kept as is.
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO webhook_deliveries \
                 (id, webhook_id, event_id, event, source, state, attempts, next_attempt_at, created_at) \
                 SELECT ?1, id, ?3, ?4, ?5, ?6, 0, ?7, ?7 FROM webhooks WHERE id = ?2",
            )?;
            for (d, source) in &rows {
                insert.execute(params![
                    d.id.to_string(),
                    d.webhook_id.to_string(),
                    d.source.id,
                    d.event.as_str(),
                    source,
                    pending,
                    now,
                ])?;
            }
            conn.prepare_cached(
                "INSERT INTO webhook_cursor (id, after) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET after = excluded.after",
            )?
            .execute([to])?;
            Ok(true)
        })
        .await
}

pub(super) async fn due_webhook_deliveries(
    store: &SqliteStore,
    now: DateTime<Utc>,
    limit: usize,
) -> StoreResult<Vec<DueDelivery>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = format!(
        "SELECT d.id, d.event, d.source, d.attempts, {WEBHOOK_COLUMNS} \
         FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
         WHERE d.state = ?1 AND d.next_attempt_at <= ?2 AND w.disabled_at IS NULL \
         ORDER BY d.next_attempt_at, d.seq LIMIT ?3"
    );
    let now = ts(now);
    store
        .read(move |conn| {
            Ok(conn
                .prepare_cached(&sql)?
                .query_map(
                    params![DeliveryState::Pending.as_str(), now, limit],
                    due_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
}

fn due_from_row(row: &Row) -> rusqlite::Result<DueDelivery> {
    let source: String = row.get(2)?;
    let source: FarmEvent =
        serde_json::from_str(&source).map_err(|_| conversion_error(2, "source", &source))?;
    // The webhook's columns follow the delivery's four.
    let webhook = webhook_from_row_at(row, 4)?;
    Ok(DueDelivery {
        id: get_uuid(row, 0)?,
        event: get_enum(row, 1, WebhookEvent::parse)?,
        source,
        attempts: row.get(3)?,
        webhook,
    })
}

pub(super) async fn record_webhook_attempt(
    store: &SqliteStore,
    record: AttemptRecord,
) -> StoreResult<bool> {
    store
        .write(move |conn| {
            let applied = conn
                .prepare_cached(
                    "UPDATE webhook_deliveries SET state = ?2, attempts = attempts + 1, \
                     next_attempt_at = COALESCE(?3, next_attempt_at), last_outcome = ?4 \
                     WHERE id = ?1 AND attempts = ?5 AND state = ?6",
                )?
                .execute(params![
                    record.delivery_id.to_string(),
                    record.state.as_str(),
                    record.next_attempt_at.map(ts),
                    record.outcome,
                    record.attempts_before,
                    DeliveryState::Pending.as_str(),
                ])?;
            if applied == 0 {
                return Ok(false);
            }
            let id = record.webhook_id.to_string();
            let at = ts(record.at);
            match &record.webhook {
                WebhookHealth::Succeeded => conn
                    .prepare_cached(
                        "UPDATE webhooks SET failing_since = NULL, consecutive_failures = 0, \
                         last_attempt_at = ?2, last_outcome = ?3, last_success_at = ?2 WHERE id = ?1",
                    )?
                    .execute(params![id, at, record.outcome])?,
                WebhookHealth::Failing { since } => conn
                    .prepare_cached(
                        "UPDATE webhooks SET failing_since = COALESCE(failing_since, ?4), \
                         consecutive_failures = consecutive_failures + 1, \
                         last_attempt_at = ?2, last_outcome = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, at, record.outcome, ts(*since)])?,
                WebhookHealth::Disabled { since, reason } => conn
                    .prepare_cached(
                        "UPDATE webhooks SET failing_since = COALESCE(failing_since, ?4), \
                         consecutive_failures = consecutive_failures + 1, \
                         last_attempt_at = ?2, last_outcome = ?3, \
                         disabled_at = COALESCE(disabled_at, ?2), \
                         disabled_reason = COALESCE(disabled_reason, ?5) WHERE id = ?1",
                    )?
                    .execute(params![id, at, record.outcome, ts(*since), reason])?,
            };
            Ok(true)
        })
        .await
}
