//! Fencing: only the current lease (of a task, or of the leader) counts.

use std::collections::HashSet;

use chrono::Duration;
use renderfarm_wire::{Heartbeat, HeartbeatAction, Priority, TaskStatus, WorkerAction};
use uuid::Uuid;

use super::{assert_counters_exact, claim, complete, plan, report, t0, worker};
use crate::domain::RenderCommand;
use crate::domain::TaskReport;
use crate::store::{Store, StoreError};

pub async fn every_claim_mints_a_new_lease(store: &dyn Store) {
    let r = store
        .create_render(plan("r", 1, 1, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w1 = worker(store, "w1", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    let first = claim(store, w1).await.unwrap();
    store
        .change_worker(w1, WorkerAction::Disable, None, t0())
        .await
        .unwrap();
    let second = claim(store, w2)
        .await
        .expect("the task went back to the queue");
    assert_eq!(first.task_id, second.task_id);
    assert_ne!(first.lease_id, second.lease_id);
    let task = store.get_task(first.task_id).await.unwrap();
    assert_eq!(task.worker_id, Some(w2));
    assert_eq!(
        task.retries, 0,
        "taking a task from a worker is not a failure"
    );
    assert_eq!(
        store.get_render(r.id).await.unwrap().progress.tasks_running,
        1
    );
}

pub async fn a_stale_lease_changes_nothing(store: &dyn Store) {
    store
        .create_render(plan("r", 1, 2, 2, Priority::Normal, t0()))
        .await
        .unwrap();
    let w1 = worker(store, "w1", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    let old = claim(store, w1).await.unwrap();
    store
        .change_worker(w1, WorkerAction::Disable, None, t0())
        .await
        .unwrap();
    let new = claim(store, w2).await.unwrap();
    let before = store.get_task(old.task_id).await.unwrap();
    let render_before = store.get_render(old.render_id).await.unwrap();
    let reports = [
        TaskReport::Progress { frames_done: 1 },
        TaskReport::Complete,
        TaskReport::Fail {
            exit_code: Some(1),
            reason: "late".into(),
        },
    ];
    for report in reports {
        let err = store
            .report_task(
                old.task_id,
                old.lease_id,
                report.clone(),
                Some("stale log".into()),
                t0(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::StaleLease { .. }),
            "{report:?}: {err:?}"
        );
        let err = store
            .report_task(old.task_id, Uuid::new_v4(), report, None, t0())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::StaleLease { .. }),
            "a foreign lease: {err:?}"
        );
    }
    assert_eq!(store.get_task(old.task_id).await.unwrap(), before);
    assert_eq!(
        store.get_render(old.render_id).await.unwrap(),
        render_before
    );
    assert_eq!(store.task_log(old.task_id).await.unwrap(), "");
    complete(store, &new).await;
    let err = store
        .report_task(new.task_id, new.lease_id, TaskReport::Complete, None, t0())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::StaleLease { .. }),
        "a finished task takes no more reports"
    );
}

pub async fn heartbeats_answer_abort_once_the_task_is_taken_away(store: &dyn Store) {
    let r = store
        .create_render(plan("r", 1, 4, 4, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let later = t0() + Duration::seconds(30);
    assert_eq!(
        store
            .heartbeat(w, &Heartbeat::default(), later)
            .await
            .unwrap(),
        HeartbeatAction::Continue
    );
    assert_eq!(
        store
            .get_worker(w, chrono::Utc::now())
            .await
            .unwrap()
            .last_heartbeat,
        later
    );
    let a = claim(store, w).await.unwrap();
    let beat = Heartbeat {
        task_id: Some(a.task_id),
        lease_id: Some(a.lease_id),
        frames_done: Some(2),
    };
    assert_eq!(
        store.heartbeat(w, &beat, later).await.unwrap(),
        HeartbeatAction::Continue
    );
    assert_eq!(store.get_task(a.task_id).await.unwrap().frames_done, 2);
    let foreign = Heartbeat {
        lease_id: Some(Uuid::new_v4()),
        ..beat.clone()
    };
    assert_eq!(
        store.heartbeat(w, &foreign, later).await.unwrap(),
        HeartbeatAction::Abort
    );
    store
        .change_render(r.id, RenderCommand::Cancel, None, later)
        .await
        .unwrap();
    assert_eq!(
        store.heartbeat(w, &beat, later).await.unwrap(),
        HeartbeatAction::Abort
    );
    assert_eq!(
        store.get_task(a.task_id).await.unwrap().status,
        TaskStatus::Canceled
    );
    let half = Heartbeat {
        task_id: Some(a.task_id),
        ..Heartbeat::default()
    };
    assert!(matches!(
        store.heartbeat(w, &half, later).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .heartbeat(Uuid::new_v4(), &Heartbeat::default(), later)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn preemption_takes_a_task_back_only_under_its_current_lease(store: &dyn Store) {
    let r = store
        .create_render(plan("r", 1, 4, 4, Priority::Low, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.unwrap();
    report(store, &a, TaskReport::Progress { frames_done: 2 }).await;
    assert_eq!(
        store
            .preempt_task(a.task_id, Uuid::new_v4(), t0())
            .await
            .unwrap(),
        None,
        "a foreign lease"
    );
    let moved = store
        .preempt_task(a.task_id, a.lease_id, t0())
        .await
        .unwrap()
        .expect("preempted");
    assert_eq!(
        (moved.task_id, moved.render_id, moved.worker_id),
        (a.task_id, r.id, Some(w))
    );
    let task = store.get_task(a.task_id).await.unwrap();
    assert_eq!(
        (task.status, task.retries, task.frames_done),
        (TaskStatus::Pending, 0, 0)
    );
    let beat = Heartbeat {
        task_id: Some(a.task_id),
        lease_id: Some(a.lease_id),
        frames_done: None,
    };
    assert_eq!(
        store.heartbeat(w, &beat, t0()).await.unwrap(),
        HeartbeatAction::Abort
    );
    assert_eq!(
        store
            .preempt_task(a.task_id, a.lease_id, t0())
            .await
            .unwrap(),
        None,
        "once only"
    );
    let render = store.get_render(r.id).await.unwrap();
    assert_eq!(
        (
            render.progress.tasks_pending,
            render.progress.frames_done,
            render.progress.tasks_failed
        ),
        (1, 0, 0)
    );
    assert_counters_exact(store).await;
}

pub async fn one_lease_holder_at_a_time_and_a_takeover_once_it_lapses(store: &dyn Store) {
    let ttl = Duration::seconds(60);
    assert_eq!(store.current_lease("scheduler").await.unwrap(), None);
    let a = store
        .acquire_lease("scheduler", "broker-a", ttl, t0())
        .await
        .unwrap();
    assert_eq!((a.holder.as_str(), a.expires_at), ("broker-a", t0() + ttl));
    let b = store
        .acquire_lease("scheduler", "broker-b", ttl, t0() + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(b.holder, "broker-a", "held and not lapsed");
    let renewed = store
        .acquire_lease("scheduler", "broker-a", ttl, t0() + Duration::seconds(50))
        .await
        .unwrap();
    assert_eq!(renewed.expires_at, t0() + Duration::seconds(110));
    let still = store
        .acquire_lease("scheduler", "broker-b", ttl, t0() + Duration::seconds(100))
        .await
        .unwrap();
    assert_eq!(still.holder, "broker-a", "the renewal counts");
    let taken = store
        .acquire_lease("scheduler", "broker-b", ttl, t0() + Duration::seconds(111))
        .await
        .unwrap();
    assert_eq!(taken.holder, "broker-b", "taken over once lapsed");
    store.release_lease("scheduler", "broker-a").await.unwrap();
    assert_eq!(
        store
            .current_lease("scheduler")
            .await
            .unwrap()
            .map(|l| l.holder),
        Some("broker-b".into()),
        "only the holder releases"
    );
    store.release_lease("scheduler", "broker-b").await.unwrap();
    assert_eq!(store.current_lease("scheduler").await.unwrap(), None);
    let other = store
        .acquire_lease("other-job", "broker-a", ttl, t0())
        .await
        .unwrap();
    assert_eq!(other.holder, "broker-a", "leases are per name");
    let contenders = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];
    let results = futures::future::join_all(
        contenders
            .iter()
            .map(|c| store.acquire_lease("race", c, ttl, t0())),
    )
    .await;
    let holders: HashSet<String> = results.into_iter().map(|r| r.unwrap().holder).collect();
    assert_eq!(
        holders.len(),
        1,
        "concurrent contenders agree on one holder: {holders:?}"
    );
}
