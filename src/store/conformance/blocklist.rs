//! The blocklist: a worker's failed chunks of one render counted as they
//! fail, a blocked worker's claims skipping the render, operators clearing
//! it, the scheduler expiring it, and a render whose every able worker is
//! blocked failed with a reason (`domain::after_failure`,
//! `domain::starved_renders`).

use chrono::Duration;
use renderfarm_wire::{Priority, RenderStatus};

use super::*;
use crate::domain::{starved_renders, RenderCommand};

async fn fail(store: &dyn Store, a: &renderfarm_wire::Assignment) {
    report(
        store,
        a,
        TaskReport::Fail {
            exit_code: Some(1),
            reason: "Blender quit".into(),
        },
    )
    .await;
}

pub async fn a_worker_failing_a_render_is_blocklisted_until_cleared_or_expired(store: &dyn Store) {
    let r = store
        .create_render(plan_with("r", 1, 6, 1, Priority::High, t0(), |s| {
            s.blocklist_after = Some(2);
            s.max_retries = 10;
        }))
        .await
        .unwrap();
    assert_eq!(r.blocklist_after, 2);
    let other = store
        .create_render(plan("other", 1, 2, 1, Priority::Low, t0()))
        .await
        .unwrap();
    let a = worker(store, "a", &[]).await;
    let b = worker(store, "b", &[]).await;
    for _ in 0..2 {
        let task = claim(store, a).await.unwrap();
        assert_eq!(task.render_id, r.id);
        fail(store, &task).await;
    }
    let entries = store.blocklist(r.id).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].worker_id, entries[0].failures), (a, 2));
    assert_eq!(entries[0].worker_name.as_deref(), Some("a"));
    assert!(entries[0].blocked_at.is_some());
    // Blocked from r, a gets the lower render's work; b still gets r's.
    let elsewhere = claim(store, a).await.unwrap();
    assert_eq!(
        elsewhere.render_id, other.id,
        "a blocked worker skips the render"
    );
    complete(store, &elsewhere).await;
    let healthy = claim(store, b).await.unwrap();
    assert_eq!(healthy.render_id, r.id);
    complete(store, &healthy).await;

    // Nobody left to take r but a blocked worker: not yet starved, b can.
    let (blocked, workers) = store.blocklist_starvation_inputs().await.unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].id, r.id);
    assert!(starved_renders(&blocked, &workers).is_empty());

    // An operator clears a's entry: it takes r's chunks again.
    assert_eq!(store.clear_blocklist(r.id, Some(a)).await.unwrap(), 1);
    assert!(store.blocklist(r.id).await.unwrap().is_empty());
    let again = claim(store, a).await.unwrap();
    assert_eq!(again.render_id, r.id);
    fail(store, &again).await;
    let again = claim(store, a).await.unwrap();
    fail(store, &again).await;
    // Expiry lifts blocks made at or before the cutoff only.
    assert_eq!(
        store
            .expire_blocklist(t0() - Duration::seconds(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.expire_blocklist(t0()).await.unwrap(), 1);
    assert!(store.blocklist(r.id).await.unwrap().is_empty());
    assert_counters_exact(store).await;
}

pub async fn a_render_every_able_worker_is_blocked_from_fails_with_a_reason(store: &dyn Store) {
    let r = store
        .create_render(plan_with("r", 1, 4, 1, Priority::Normal, t0(), |s| {
            s.blocklist_after = Some(1);
            s.max_retries = 10;
        }))
        .await
        .unwrap();
    let a = worker(store, "a", &[]).await;
    let b = worker(store, "b", &[]).await;
    for w in [a, b] {
        let task = claim(store, w).await.unwrap();
        fail(store, &task).await;
        assert!(claim(store, w).await.is_none(), "blocked after one failure");
    }
    let (blocked, workers) = store.blocklist_starvation_inputs().await.unwrap();
    let starved = starved_renders(&blocked, &workers);
    assert_eq!(starved.len(), 1);
    let (id, reason) = starved.into_iter().next().unwrap();
    assert_eq!(id, r.id);
    store.fail_render(id, reason.clone(), t0()).await.unwrap();
    let failed = store.get_render(r.id).await.unwrap();
    assert_eq!(failed.status, RenderStatus::Failed);
    assert_eq!(failed.failure_reason.as_deref(), Some(reason.as_str()));
    assert_eq!(
        failed.progress.tasks_pending, 0,
        "its pending work is canceled"
    );
    // Failing it again changes nothing.
    store.fail_render(id, "again".into(), t0()).await.unwrap();
    assert_eq!(
        store
            .get_render(r.id)
            .await
            .unwrap()
            .failure_reason
            .as_deref(),
        Some(reason.as_str())
    );
    // Requeued (after the blocklist is cleared) it runs again, reason gone.
    store.clear_blocklist(r.id, None).await.unwrap();
    let requeued = store
        .change_render(r.id, RenderCommand::Requeue, None, t0())
        .await
        .unwrap();
    assert_eq!(requeued.status, RenderStatus::Queued);
    assert_eq!(requeued.failure_reason, None);
    assert!(claim(store, a).await.is_some());
    assert_counters_exact(store).await;
}
