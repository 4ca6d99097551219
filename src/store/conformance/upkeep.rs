//! The scheduler's upkeep: lost workers, retries, preemption, purging.

use chrono::Duration;
use renderfarm_wire::{
    Heartbeat, HeartbeatAction, Priority, RenderStatus, TaskStatus, WorkerAction, WorkerStatus,
};
use uuid::Uuid;

use super::{assert_counters_exact, claim, plan, plan_with, t0, worker};
use crate::domain::TaskReport;
use crate::domain::{Allowances, RenderCommand};
use crate::store::{Store, StoreError};

pub async fn lost_workers_go_offline_and_their_tasks_are_requeued_without_a_failure(
    store: &dyn Store,
) {
    let r = store
        .create_render(plan("r", 1, 2, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let lost = worker(store, "lost", &[]).await;
    let alive = worker(store, "alive", &[]).await;
    let a = store.claim_next_task(lost, t0()).await.unwrap().unwrap();
    let b = store.claim_next_task(alive, t0()).await.unwrap().unwrap();
    let later = t0() + Duration::seconds(90);
    store
        .heartbeat(
            alive,
            &Heartbeat {
                task_id: Some(b.task_id),
                lease_id: Some(b.lease_id),
                frames_done: None,
            },
            later,
        )
        .await
        .unwrap();
    let outcome = store
        .requeue_lost_workers(later - Duration::seconds(60), later)
        .await
        .unwrap();
    assert_eq!(outcome.workers, vec![lost]);
    assert_eq!(outcome.requeued.len(), 1);
    assert_eq!(
        (
            outcome.requeued[0].task_id,
            outcome.requeued[0].render_id,
            outcome.requeued[0].worker_id
        ),
        (a.task_id, r.id, Some(lost))
    );
    let task = store.get_task(a.task_id).await.unwrap();
    assert_eq!(
        (task.status, task.retries, task.worker_id),
        (TaskStatus::Pending, 0, None)
    );
    assert_eq!(
        store
            .get_worker(lost, chrono::Utc::now())
            .await
            .unwrap()
            .status,
        WorkerStatus::Offline
    );
    assert_eq!(
        store
            .get_worker(alive, chrono::Utc::now())
            .await
            .unwrap()
            .status,
        WorkerStatus::Busy
    );
    let render = store.get_render(r.id).await.unwrap();
    assert_eq!(
        (
            render.progress.tasks_running,
            render.progress.tasks_pending,
            render.progress.tasks_failed
        ),
        (1, 1, 0)
    );
    assert!(
        store
            .requeue_lost_workers(later - Duration::seconds(60), later)
            .await
            .unwrap()
            .workers
            .is_empty(),
        "once only"
    );
    // The lost worker comes back: its old lease is stale, its next claim works.
    let err = store
        .report_task(a.task_id, a.lease_id, TaskReport::Complete, None, later)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleLease { .. }));
    let beat = Heartbeat {
        task_id: Some(a.task_id),
        lease_id: Some(a.lease_id),
        frames_done: None,
    };
    assert_eq!(
        store.heartbeat(lost, &beat, later).await.unwrap(),
        HeartbeatAction::Abort
    );
    let again = store
        .claim_next_task(lost, later)
        .await
        .unwrap()
        .expect("its task is claimable again");
    assert_eq!(again.task_id, a.task_id);
    assert_ne!(again.lease_id, a.lease_id);
    assert_eq!(
        store
            .get_worker(lost, chrono::Utc::now())
            .await
            .unwrap()
            .status,
        WorkerStatus::Busy
    );
    assert_counters_exact(store).await;
}

pub async fn failed_tasks_are_retried_until_none_is_left_then_the_render_fails(store: &dyn Store) {
    let r = store
        .create_render(plan_with("r", 1, 2, 1, Priority::Normal, t0(), |s| {
            s.max_retries = 1
        }))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let fail = |a: renderfarm_wire::Assignment| async move {
        store
            .report_task(
                a.task_id,
                a.lease_id,
                TaskReport::Fail {
                    exit_code: Some(1),
                    reason: "boom".into(),
                },
                None,
                t0(),
            )
            .await
            .unwrap()
    };
    let a = claim(store, w).await.unwrap();
    fail(a.clone()).await;
    let outcome = store.retry_failed_tasks(t0()).await.unwrap();
    assert_eq!(
        outcome
            .retried
            .iter()
            .map(|m| m.task_id)
            .collect::<Vec<_>>(),
        vec![a.task_id]
    );
    assert!(outcome.failed.is_empty());
    let task = store.get_task(a.task_id).await.unwrap();
    assert_eq!(
        (task.status, task.retries, task.worker_id),
        (TaskStatus::Pending, 1, None)
    );
    assert_eq!(
        store.get_render(r.id).await.unwrap().status,
        RenderStatus::Rendering
    );
    assert!(
        store
            .retry_failed_tasks(t0())
            .await
            .unwrap()
            .retried
            .is_empty(),
        "nothing failed is left"
    );

    let again = claim(store, w).await.unwrap();
    assert_eq!(
        again.task_id, a.task_id,
        "the retried chunk comes first (lower frame)"
    );
    fail(again).await;
    let render = store.get_render(r.id).await.unwrap();
    assert_eq!(render.status, RenderStatus::Failed, "no retry left");
    assert_eq!(
        (render.progress.tasks_failed, render.progress.tasks_canceled),
        (1, 1)
    );
    let outcome = store.retry_failed_tasks(t0()).await.unwrap();
    assert!(
        outcome.retried.is_empty() && outcome.failed.is_empty(),
        "a failed render's tasks stay failed"
    );
    assert_eq!(store.get_task(a.task_id).await.unwrap().retries, 1);
    assert_counters_exact(store).await;
}

pub async fn preemption_sees_overdue_work_running_work_and_idle_workers(store: &dyn Store) {
    let low = store
        .create_render(plan("low", 1, 2, 1, Priority::Low, t0()))
        .await
        .unwrap();
    let busy = worker(store, "busy", &["gpu"]).await;
    let running = claim(store, busy).await.unwrap();
    assert_eq!(running.render_id, low.id);
    let idle = worker(store, "idle", &["cpu"]).await;
    store
        .change_worker(idle, WorkerAction::Drain, None, t0())
        .await
        .unwrap();
    let urgent = store
        .create_render(plan_with("urgent", 1, 3, 1, Priority::Urgent, t0(), |s| {
            s.tags = vec!["gpu".into()]
        }))
        .await
        .unwrap();
    let normal = store
        .create_render(plan("normal", 1, 1, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let idle2 = worker(store, "idle2", &[]).await;

    let inputs = store
        .preemption_inputs(&Allowances::default(), t0())
        .await
        .unwrap();
    let overdue: Vec<_> = inputs
        .overdue
        .iter()
        .map(|o| (o.render_id, o.priority, o.tasks, o.tags.clone()))
        .collect();
    assert_eq!(
        overdue,
        vec![(urgent.id, Priority::Urgent, 3, vec!["gpu".to_string()])],
        "normal waits 30 minutes, low never"
    );
    assert_eq!(inputs.running.len(), 1);
    let r = &inputs.running[0];
    assert_eq!(
        (
            r.task_id,
            r.lease_id,
            r.priority,
            r.started_at,
            r.worker_tags.clone()
        ),
        (
            running.task_id,
            running.lease_id,
            Priority::Low,
            t0(),
            vec!["gpu".to_string()]
        )
    );
    assert_eq!(
        inputs.idle_worker_tags,
        vec![Vec::<String>::new()],
        "draining and busy workers are not idle"
    );

    let later = store
        .preemption_inputs(&Allowances::default(), t0() + Duration::minutes(31))
        .await
        .unwrap();
    let ids: Vec<Uuid> = later.overdue.iter().map(|o| o.render_id).collect();
    assert_eq!(
        ids,
        vec![urgent.id, normal.id],
        "dispatch order: urgent, then normal; low never"
    );
    let _ = idle2;
}

pub async fn finished_renders_are_found_by_when_they_ended(store: &dyn Store) {
    let at = |s: i64| t0() + Duration::seconds(s);
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = store
            .create_render(plan(&format!("f{i}"), 1, 1, 1, Priority::Low, t0()))
            .await
            .unwrap();
        ids.push(r.id);
    }
    store
        .create_render(plan("unfinished", 1, 1, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    for (i, when) in [(2, 10), (0, 20), (1, 30)] {
        store
            .change_render(ids[i], RenderCommand::Cancel, None, at(when))
            .await
            .unwrap();
    }
    let before = |t: i64, limit: usize| store.finished_renders_before(at(t), limit);
    assert_eq!(
        before(25, 10).await.unwrap(),
        vec![ids[2], ids[0]],
        "ended before, first first"
    );
    assert_eq!(
        before(60, 2).await.unwrap(),
        vec![ids[2], ids[0]],
        "at most the limit"
    );
    assert_eq!(before(60, 10).await.unwrap(), vec![ids[2], ids[0], ids[1]]);

    // A failed render whose other chunk still renders is not finished with.
    let busy = store
        .create_render(plan_with("busy", 1, 2, 1, Priority::Urgent, at(40), |s| {
            s.max_retries = 0
        }))
        .await
        .unwrap();
    let (w1, w2) = (
        worker(store, "w1", &[]).await,
        worker(store, "w2", &[]).await,
    );
    let failing = claim(store, w1).await.unwrap();
    let rendering = claim(store, w2).await.unwrap();
    store
        .report_task(
            failing.task_id,
            failing.lease_id,
            TaskReport::Fail {
                exit_code: Some(1),
                reason: "denoiser".into(),
            },
            None,
            at(50),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_render(busy.id).await.unwrap().status,
        RenderStatus::Failed
    );
    assert!(!before(3600, 10).await.unwrap().contains(&busy.id));
    store
        .report_task(
            rendering.task_id,
            rendering.lease_id,
            TaskReport::Complete,
            None,
            at(55),
        )
        .await
        .unwrap();
    assert!(before(3600, 10).await.unwrap().contains(&busy.id));
}
