//! Webhooks and their outbox: kept with their secret, deliveries queued once
//! per webhook and event-log entry with the cursor, attempts applied once,
//! a webhook disabled when the domain says so.

use chrono::Duration;
use renderfarm_wire::{EventKind, FarmEvent};
use uuid::Uuid;

use super::t0;
use crate::domain::{
    plan_attempt, validate_webhook_spec, AttemptOutcome, DeliveryCounts, DeliveryState,
    NewDelivery, RetrySchedule, StoredWebhook, WebhookEvent,
};
use crate::store::{Store, StoreError};

fn webhook(events: &[&str]) -> StoredWebhook {
    let spec = validate_webhook_spec(
        "https://hooks.example.com/renderfarm",
        &events.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        Some("test"),
    )
    .expect("a valid test webhook");
    StoredWebhook::new(
        spec,
        Uuid::now_v7(),
        format!("whsec_{}", Uuid::new_v4().simple()),
        t0(),
    )
}

fn delivery(hook: &StoredWebhook, event_id: i64) -> NewDelivery {
    let mut source = FarmEvent::new(event_id, t0(), EventKind::Render);
    source.render_id = Some(Uuid::now_v7());
    source.status = Some("completed".into());
    NewDelivery {
        id: Uuid::now_v7(),
        webhook_id: hook.id,
        event: WebhookEvent::RenderCompleted,
        source,
    }
}

fn counts(pending: i64, delivered: i64, failed: i64) -> DeliveryCounts {
    DeliveryCounts {
        pending,
        delivered,
        failed,
    }
}

pub async fn webhooks_are_kept_with_their_secret_listed_in_order_and_deleted_whole(
    store: &dyn Store,
) {
    let a = webhook(&["render.completed", "task.failed"]);
    let b = webhook(&["worker.lost"]);
    assert_eq!(store.create_webhook(a.clone()).await.unwrap(), a);
    store.create_webhook(b.clone()).await.unwrap();
    assert_eq!(
        store.list_webhooks().await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(store.get_webhook(a.id).await.unwrap().secret, a.secret);
    assert!(matches!(
        store.create_webhook(a.clone()).await,
        Err(StoreError::AlreadyExists)
    ));
    store
        .queue_webhook_deliveries(None, 1, vec![delivery(&a, 1)], t0())
        .await
        .unwrap();
    assert_eq!(
        store.webhook_delivery_counts(a.id).await.unwrap(),
        counts(1, 0, 0)
    );
    store.delete_webhook(a.id).await.unwrap();
    assert!(matches!(
        store.get_webhook(a.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_webhook(a.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.webhook_delivery_counts(a.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        store
            .due_webhook_deliveries(t0(), 10)
            .await
            .unwrap()
            .is_empty(),
        "a deleted webhook's deliveries go with it"
    );
    assert_eq!(store.list_webhooks().await.unwrap(), vec![b]);
    assert!(matches!(
        store.enable_webhook(Uuid::now_v7()).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn webhook_deliveries_are_queued_once_each_as_the_cursor_moves(store: &dyn Store) {
    let a = store
        .create_webhook(webhook(&["render.completed"]))
        .await
        .unwrap();
    let b = store
        .create_webhook(webhook(&["render.completed"]))
        .await
        .unwrap();
    assert_eq!(store.webhook_cursor().await.unwrap(), None);
    assert!(store
        .queue_webhook_deliveries(None, 5, vec![], t0())
        .await
        .unwrap());
    assert_eq!(store.webhook_cursor().await.unwrap(), Some(5));
    // Another broker queued meanwhile: nothing moves.
    assert!(!store
        .queue_webhook_deliveries(None, 9, vec![], t0())
        .await
        .unwrap());
    assert!(!store
        .queue_webhook_deliveries(Some(4), 9, vec![delivery(&a, 6)], t0())
        .await
        .unwrap());
    assert_eq!(store.webhook_cursor().await.unwrap(), Some(5));

    let first = [delivery(&a, 6), delivery(&b, 6), delivery(&a, 7)];
    assert!(store
        .queue_webhook_deliveries(Some(5), 7, first.to_vec(), t0())
        .await
        .unwrap());
    assert_eq!(store.webhook_cursor().await.unwrap(), Some(7));
    // Queued again (a broker died before its cursor moved): new ids, same
    // pairs; none is stored twice.
    let again = [delivery(&a, 6), delivery(&a, 7), delivery(&a, 8)];
    assert!(store
        .queue_webhook_deliveries(Some(7), 8, again.to_vec(), t0())
        .await
        .unwrap());
    assert_eq!(
        store.webhook_delivery_counts(a.id).await.unwrap(),
        counts(3, 0, 0)
    );
    assert_eq!(
        store.webhook_delivery_counts(b.id).await.unwrap(),
        counts(1, 0, 0)
    );
    let due = store.due_webhook_deliveries(t0(), 10).await.unwrap();
    let mut ids: Vec<Uuid> = due.iter().map(|d| d.id).collect();
    ids.sort();
    let mut want = vec![first[0].id, first[1].id, first[2].id, again[2].id];
    want.sort();
    assert_eq!(ids, want, "the first of each pair is kept, with its id");
    let one = due.iter().find(|d| d.id == first[1].id).unwrap();
    assert_eq!(one.webhook, b);
    assert_eq!(one.source, first[1].source);
    assert_eq!(one.event, WebhookEvent::RenderCompleted);
    assert_eq!(one.attempts, 0);
    assert_eq!(
        store.due_webhook_deliveries(t0(), 2).await.unwrap().len(),
        2
    );
    assert!(
        store
            .due_webhook_deliveries(t0() - Duration::seconds(1), 10)
            .await
            .unwrap()
            .is_empty(),
        "due from when they were queued"
    );
}

pub async fn webhook_attempts_apply_once_and_a_receiver_failing_too_long_is_disabled(
    store: &dyn Store,
) {
    let schedule = RetrySchedule::parse("10s").unwrap();
    let hook = store
        .create_webhook(webhook(&["render.completed"]))
        .await
        .unwrap();
    store
        .queue_webhook_deliveries(None, 2, vec![delivery(&hook, 1), delivery(&hook, 2)], t0())
        .await
        .unwrap();
    let due = store.due_webhook_deliveries(t0(), 10).await.unwrap();
    assert_eq!(due.len(), 2);

    // The first fails: it waits 10 s, the webhook is failing.
    let failed = || AttemptOutcome::Failed("HTTP 500".into());
    let record = plan_attempt(&due[0], failed(), &schedule, 0.0, t0());
    assert_eq!(record.state, DeliveryState::Pending);
    assert!(store.record_webhook_attempt(record.clone()).await.unwrap());
    assert!(
        !store.record_webhook_attempt(record).await.unwrap(),
        "an attempt planned from stale attempts changes nothing"
    );
    let hook_now = store.get_webhook(hook.id).await.unwrap();
    assert_eq!(hook_now.failing_since, Some(t0()));
    assert_eq!(hook_now.consecutive_failures, 1);
    assert_eq!(hook_now.last_outcome.as_deref(), Some("HTTP 500"));
    let later = t0() + Duration::seconds(10);
    let due_later = store.due_webhook_deliveries(later, 10).await.unwrap();
    let again = due_later
        .iter()
        .find(|d| d.id == due[0].id)
        .expect("due again");
    assert_eq!(again.attempts, 1);
    assert_eq!(again.webhook.failing_since, Some(t0()));
    assert_eq!(
        store
            .due_webhook_deliveries(t0() + Duration::seconds(5), 10)
            .await
            .unwrap()
            .len(),
        1,
        "only the other one is due before the wait is over"
    );

    // Its last attempt fails 10 s on: given up, the webhook disabled.
    let record = plan_attempt(again, failed(), &schedule, 0.0, later);
    assert_eq!(record.state, DeliveryState::Failed);
    assert!(store.record_webhook_attempt(record).await.unwrap());
    let disabled = store.get_webhook(hook.id).await.unwrap();
    assert!(!disabled.is_active());
    assert!(disabled
        .disabled_reason
        .as_deref()
        .unwrap_or("")
        .contains("HTTP 500"));
    assert_eq!(disabled.consecutive_failures, 2);
    assert_eq!(
        store.webhook_delivery_counts(hook.id).await.unwrap(),
        counts(1, 0, 1)
    );
    assert!(
        store
            .due_webhook_deliveries(later, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing is sent for a disabled webhook"
    );

    // Enabled again: failures forgotten, the pending one goes out.
    let enabled = store.enable_webhook(hook.id).await.unwrap();
    assert!(enabled.is_active());
    assert_eq!(enabled.failing_since, None);
    assert_eq!(enabled.consecutive_failures, 0);
    assert_eq!(enabled.disabled_reason, None);
    let due = store.due_webhook_deliveries(later, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let record = plan_attempt(
        &due[0],
        AttemptOutcome::Delivered("HTTP 204".into()),
        &schedule,
        0.0,
        later,
    );
    assert!(store.record_webhook_attempt(record).await.unwrap());
    let healthy = store.get_webhook(hook.id).await.unwrap();
    assert_eq!(healthy.last_success_at, Some(later));
    assert_eq!(healthy.last_outcome.as_deref(), Some("HTTP 204"));
    assert_eq!(
        store.webhook_delivery_counts(hook.id).await.unwrap(),
        counts(0, 1, 1)
    );
    assert!(store
        .due_webhook_deliveries(later + Duration::hours(1), 10)
        .await
        .unwrap()
        .is_empty());
}
