//! Webhooks and their outbox of deliveries. Deliveries are derived from the
//! event log (which keeps every status change once, see `events.rs`) by a
//! cursor kept in `webhook_cursor`. Without transactions, queuing is made
//! safe to repeat instead: each delivery is unique per webhook and
//! event-log entry (`webhook_deliveries_once`), its insert is done before
//! the cursor moves, and the cursor moves by compare-and-set. A broker that
//! dies between the two queues the same entries again, storing nothing
//! twice.

use bson::doc;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use renderfarm_wire::FarmEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::documents::bson_time;
use super::errors::{corrupt, is_duplicate_key, parse_uuid};
use super::MongoStore;
use crate::domain::{
    AttemptRecord, DeliveryCounts, DeliveryState, DueDelivery, NewDelivery, StoredWebhook,
    WebhookEvent, WebhookHealth,
};
use crate::store::{StoreError, StoreResult};

const WEBHOOKS: &str = "webhooks";
const DELIVERIES: &str = "webhook_deliveries";
const CURSOR: &str = "webhook_cursor";
/// The one document of `webhook_cursor`.
const CURSOR_ID: &str = "cursor";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WebhookDoc {
    #[serde(rename = "_id")]
    id: String,
    /// Creation order, for listings.
    seq: i64,
    url: String,
    events: Vec<String>,
    #[serde(default)]
    description: Option<String>,
    secret: String,
    created_at: bson::DateTime,
    #[serde(default)]
    disabled_at: Option<bson::DateTime>,
    #[serde(default)]
    disabled_reason: Option<String>,
    #[serde(default)]
    failing_since: Option<bson::DateTime>,
    consecutive_failures: i64,
    #[serde(default)]
    last_attempt_at: Option<bson::DateTime>,
    #[serde(default)]
    last_outcome: Option<String>,
    #[serde(default)]
    last_success_at: Option<bson::DateTime>,
}

impl WebhookDoc {
    fn to_webhook(&self) -> StoreResult<StoredWebhook> {
        let events = self
            .events
            .iter()
            .map(|e| {
                WebhookEvent::parse(e)
                    .ok_or_else(|| corrupt(format!("webhook {} with event {e:?}", self.id)))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(StoredWebhook {
            id: parse_uuid(&self.id, "webhook id")?,
            url: self.url.clone(),
            events,
            description: self.description.clone(),
            secret: self.secret.clone(),
            created_at: self.created_at.to_chrono(),
            disabled_at: self.disabled_at.map(bson::DateTime::to_chrono),
            disabled_reason: self.disabled_reason.clone(),
            failing_since: self.failing_since.map(bson::DateTime::to_chrono),
            consecutive_failures: self.consecutive_failures,
            last_attempt_at: self.last_attempt_at.map(bson::DateTime::to_chrono),
            last_outcome: self.last_outcome.clone(),
            last_success_at: self.last_success_at.map(bson::DateTime::to_chrono),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeliveryDoc {
    /// The idempotency id.
    #[serde(rename = "_id")]
    id: String,
    webhook_id: String,
    event_id: i64,
    event: String,
    /// The event-log entry, as JSON.
    source: String,
    state: String,
    attempts: i64,
    next_attempt_at: bson::DateTime,
    created_at: bson::DateTime,
    #[serde(default)]
    last_outcome: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CursorDoc {
    #[serde(rename = "_id")]
    id: String,
    after: i64,
}

impl MongoStore {
    fn webhooks(&self) -> StoreResult<mongodb::Collection<WebhookDoc>> {
        Ok(self.db()?.collection(WEBHOOKS))
    }

    fn deliveries(&self) -> StoreResult<mongodb::Collection<DeliveryDoc>> {
        Ok(self.db()?.collection(DELIVERIES))
    }

    fn cursor(&self) -> StoreResult<mongodb::Collection<CursorDoc>> {
        Ok(self.db()?.collection(CURSOR))
    }
}

pub(super) async fn create_webhook(
    store: &MongoStore,
    hook: StoredWebhook,
) -> StoreResult<StoredWebhook> {
    let seq = store.next_seq(WEBHOOKS).await?;
    let doc = WebhookDoc {
        id: hook.id.to_string(),
        seq,
        url: hook.url.clone(),
        events: hook.events.iter().map(|e| e.as_str().to_string()).collect(),
        description: hook.description.clone(),
        secret: hook.secret.clone(),
        created_at: bson_time(hook.created_at),
        disabled_at: None,
        disabled_reason: None,
        failing_since: None,
        consecutive_failures: 0,
        last_attempt_at: None,
        last_outcome: None,
        last_success_at: None,
    };
    match store.webhooks()?.insert_one(&doc).await {
        Ok(_) => doc.to_webhook(),
        Err(e) if is_duplicate_key(&e) => Err(StoreError::AlreadyExists),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list_webhooks(store: &MongoStore) -> StoreResult<Vec<StoredWebhook>> {
    let docs: Vec<WebhookDoc> = store
        .webhooks()?
        .find(doc! {})
        .sort(doc! { "seq": 1 })
        .await?
        .try_collect()
        .await?;
    docs.iter().map(WebhookDoc::to_webhook).collect()
}

pub(super) async fn get_webhook(store: &MongoStore, id: Uuid) -> StoreResult<StoredWebhook> {
    store
        .webhooks()?
        .find_one(doc! { "_id": id.to_string() })
        .await?
        .ok_or_else(|| StoreError::not_found("webhook", id))?
        .to_webhook()
}

pub(super) async fn delete_webhook(store: &MongoStore, id: Uuid) -> StoreResult<()> {
    let deleted = store
        .webhooks()?
        .delete_one(doc! { "_id": id.to_string() })
        .await?;
    if deleted.deleted_count == 0 {
        return Err(StoreError::not_found("webhook", id));
    }
    // Deliveries left by a broker that dies here are never sent: sending
    // looks their webhook up and skips those without one.
    store
        .deliveries()?
        .delete_many(doc! { "webhook_id": id.to_string() })
        .await?;
    Ok(())
}

pub(super) async fn enable_webhook(store: &MongoStore, id: Uuid) -> StoreResult<StoredWebhook> {
    store
        .webhooks()?
        .find_one_and_update(
            doc! { "_id": id.to_string() },
            doc! { "$set": {
                "disabled_at": null, "disabled_reason": null,
                "failing_since": null, "consecutive_failures": 0_i64,
            } },
        )
        .return_document(mongodb::options::ReturnDocument::After)
        .await?
        .ok_or_else(|| StoreError::not_found("webhook", id))?
        .to_webhook()
}

pub(super) async fn webhook_delivery_counts(
    store: &MongoStore,
    id: Uuid,
) -> StoreResult<DeliveryCounts> {
    get_webhook(store, id).await?;
    let deliveries = store.deliveries()?;
    let mut counts = DeliveryCounts::default();
    for state in DeliveryState::ALL {
        let n = deliveries
            .count_documents(doc! { "webhook_id": id.to_string(), "state": state.as_str() })
            .await? as i64;
        match state {
            DeliveryState::Pending => counts.pending = n,
            DeliveryState::Delivered => counts.delivered = n,
            DeliveryState::Failed => counts.failed = n,
        }
    }
    Ok(counts)
}

pub(super) async fn webhook_cursor(store: &MongoStore) -> StoreResult<Option<i64>> {
    Ok(store
        .cursor()?
        .find_one(doc! { "_id": CURSOR_ID })
        .await?
        .map(|c| c.after))
}

pub(super) async fn queue_webhook_deliveries(
    store: &MongoStore,
    from: Option<i64>,
    to: i64,
    deliveries: Vec<NewDelivery>,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    if webhook_cursor(store).await? != from {
        return Ok(false);
    }
    if !deliveries.is_empty() {
        let docs = deliveries
            .into_iter()
            .map(|d| {
                Ok(DeliveryDoc {
                    id: d.id.to_string(),
                    webhook_id: d.webhook_id.to_string(),
                    event_id: d.source.id,
                    event: d.event.as_str().into(),
                    source: serde_json::to_string(&d.source)
                        .map_err(|e| StoreError::Unexpected(e.into()))?,
                    state: DeliveryState::Pending.as_str().into(),
                    attempts: 0,
                    next_attempt_at: bson_time(now),
                    created_at: bson_time(now),
                    last_outcome: None,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        // One insert each (deliveries are few): a duplicate is one queued
        // before by a broker that died before moving the cursor, and must
        // not keep the others out.
        let collection = store.deliveries()?;
        for doc in docs {
            match collection.insert_one(doc).await {
                Ok(_) => {}
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let cursor = store.cursor()?;
    let moved = match from {
        None => match cursor
            .insert_one(CursorDoc {
                id: CURSOR_ID.into(),
                after: to,
            })
            .await
        {
            Ok(_) => true,
            Err(e) if is_duplicate_key(&e) => false,
            Err(e) => return Err(e.into()),
        },
        Some(from) => {
            cursor
                .update_one(
                    doc! { "_id": CURSOR_ID, "after": from },
                    doc! { "$set": { "after": to } },
                )
                .await?
                .matched_count
                == 1
        }
    };
    Ok(moved)
}

pub(super) async fn due_webhook_deliveries(
    store: &MongoStore,
    now: DateTime<Utc>,
    limit: usize,
) -> StoreResult<Vec<DueDelivery>> {
    let hooks: Vec<StoredWebhook> = list_webhooks(store)
        .await?
        .into_iter()
        .filter(StoredWebhook::is_active)
        .collect();
    if hooks.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = hooks.iter().map(|h| h.id.to_string()).collect();
    let docs: Vec<DeliveryDoc> = store
        .deliveries()?
        .find(doc! {
            "state": DeliveryState::Pending.as_str(),
            "next_attempt_at": { "$lte": bson_time(now) },
            "webhook_id": { "$in": ids },
        })
        .sort(doc! { "next_attempt_at": 1, "event_id": 1 })
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .await?
        .try_collect()
        .await?;
    let mut due = Vec::with_capacity(docs.len());
    for d in docs {
        let Some(webhook) = hooks.iter().find(|h| h.id.to_string() == d.webhook_id) else {
            continue;
        };
        let source: FarmEvent = serde_json::from_str(&d.source)
            .map_err(|e| corrupt(format!("delivery {} with source {:?}: {e}", d.id, d.source)))?;
        due.push(DueDelivery {
            id: parse_uuid(&d.id, "delivery id")?,
            event: WebhookEvent::parse(&d.event)
                .ok_or_else(|| corrupt(format!("delivery {} of event {:?}", d.id, d.event)))?,
            source,
            attempts: d.attempts,
            webhook: webhook.clone(),
        });
    }
    Ok(due)
}

pub(super) async fn record_webhook_attempt(
    store: &MongoStore,
    record: AttemptRecord,
) -> StoreResult<bool> {
    let mut set = doc! {
        "state": record.state.as_str(),
        "last_outcome": &record.outcome,
    };
    if let Some(next) = record.next_attempt_at {
        set.insert("next_attempt_at", bson_time(next));
    }
    let applied = store
        .deliveries()?
        .update_one(
            doc! {
                "_id": record.delivery_id.to_string(),
                "attempts": record.attempts_before,
                "state": DeliveryState::Pending.as_str(),
            },
            doc! { "$set": set, "$inc": { "attempts": 1_i64 } },
        )
        .await?
        .matched_count
        == 1;
    if !applied {
        return Ok(false);
    }
    let at = bson_time(record.at);
    let update = match &record.webhook {
        WebhookHealth::Succeeded => doc! { "$set": {
            "failing_since": null, "consecutive_failures": 0_i64,
            "last_attempt_at": at, "last_outcome": &record.outcome, "last_success_at": at,
        } },
        // `since` is the start read with the delivery (or now, when it was
        // not failing); a success recorded meanwhile by a second sender is
        // overwritten, which only makes the webhook look failing a little
        // longer.
        WebhookHealth::Failing { since } => doc! {
            "$set": {
                "last_attempt_at": at, "last_outcome": &record.outcome,
                "failing_since": bson_time(*since),
            },
            "$inc": { "consecutive_failures": 1_i64 },
        },
        WebhookHealth::Disabled { since, reason } => doc! {
            "$set": {
                "last_attempt_at": at, "last_outcome": &record.outcome,
                "failing_since": bson_time(*since),
                "disabled_at": at, "disabled_reason": reason,
            },
            "$inc": { "consecutive_failures": 1_i64 },
        },
    };
    store
        .webhooks()?
        .update_one(doc! { "_id": record.webhook_id.to_string() }, update)
        .await?;
    Ok(true)
}
