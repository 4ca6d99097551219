//! Which task a claim hands out, to whom, and exactly once.

use std::collections::HashSet;

use chrono::Duration;
use renderfarm_wire::{Priority, RenderStatus, TaskStatus, WorkerAction, WorkerStatus};
use uuid::Uuid;

use super::{assert_counters_exact, claim, complete, plan, plan_with, t0, worker};
use crate::domain::{RenderCommand, TaskReport, WorkerUnavailable, WARM_STREAK_LIMIT};
use crate::store::{PageRequest, Store, StoreError};

pub async fn creating_a_render_stores_it_with_all_its_tasks(store: &dyn Store) {
    let new = plan("shot010", 1, 10, 3, Priority::High, t0());
    let created = store.create_render(new.clone()).await.unwrap();
    assert_eq!(created, new.render, "the stored render is the planned one");
    assert_eq!(store.get_render(created.id).await.unwrap(), created);
    let tasks = store
        .list_tasks(created.id, None, PageRequest::default())
        .await
        .unwrap();
    let ranges: Vec<_> = tasks
        .items
        .iter()
        .map(|t| (t.frame_start, t.frame_end))
        .collect();
    assert_eq!(ranges, vec![(1, 3), (4, 6), (7, 9), (10, 10)]);
    assert_eq!(tasks.total, 4);
    for task in &tasks.items {
        assert_eq!(task.status, TaskStatus::Pending);
        assert_eq!(task.render_id, created.id);
        assert_eq!(
            (task.retries, task.frames_done, task.worker_id),
            (0, 0, None)
        );
        assert_eq!(store.get_task(task.id).await.unwrap(), *task);
    }
}

pub async fn claims_follow_priority_then_age_then_frame(store: &dyn Store) {
    let old_low = store
        .create_render(plan("old-low", 1, 2, 1, Priority::Low, t0()))
        .await
        .unwrap();
    let old_normal = store
        .create_render(plan("old-normal", 1, 2, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let new_normal = store
        .create_render(plan(
            "new-normal",
            1,
            1,
            1,
            Priority::Normal,
            t0() + Duration::seconds(1),
        ))
        .await
        .unwrap();
    let urgent = store
        .create_render(plan(
            "urgent",
            5,
            6,
            1,
            Priority::Urgent,
            t0() + Duration::seconds(2),
        ))
        .await
        .unwrap();
    let mut order = Vec::new();
    for i in 0..7 {
        let w = worker(store, &format!("w{i}"), &[]).await;
        let a = claim(store, w).await.expect("work is left");
        order.push((a.render_id, a.frame_start));
    }
    let want = vec![
        (urgent.id, 5),
        (urgent.id, 6),
        (old_normal.id, 1),
        (old_normal.id, 2),
        (new_normal.id, 1),
        (old_low.id, 1),
        (old_low.id, 2),
    ];
    assert_eq!(order, want);
    let w = worker(store, "late", &[]).await;
    assert_eq!(claim(store, w).await, None, "everything was handed out");
}

pub async fn paused_and_canceled_renders_are_never_claimed(store: &dyn Store) {
    let paused = store
        .create_render(plan("paused", 1, 3, 1, Priority::Urgent, t0()))
        .await
        .unwrap();
    let canceled = store
        .create_render(plan("canceled", 1, 3, 1, Priority::Urgent, t0()))
        .await
        .unwrap();
    let open = store
        .create_render(plan("open", 1, 1, 1, Priority::Low, t0()))
        .await
        .unwrap();
    store
        .change_render(paused.id, RenderCommand::Pause, None, t0())
        .await
        .unwrap();
    store
        .change_render(canceled.id, RenderCommand::Cancel, None, t0())
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.expect("the open render has work");
    assert_eq!(a.render_id, open.id);
    complete(store, &a).await;
    assert_eq!(claim(store, w).await, None);
    store
        .change_render(paused.id, RenderCommand::Resume, None, t0())
        .await
        .unwrap();
    assert_eq!(claim(store, w).await.expect("resumed").render_id, paused.id);
}

pub async fn only_workers_with_the_required_tags_claim(store: &dyn Store) {
    let gpu = store
        .create_render(plan_with("gpu", 1, 1, 1, Priority::Urgent, t0(), |s| {
            s.tags = vec!["gpu".into(), "linux".into()]
        }))
        .await
        .unwrap();
    let any = store
        .create_render(plan("any", 1, 1, 1, Priority::Low, t0()))
        .await
        .unwrap();
    let plain = worker(store, "plain", &["linux"]).await;
    let strong = worker(store, "strong", &["gpu", "linux", "big"]).await;
    assert_eq!(
        claim(store, plain).await.unwrap().render_id,
        any.id,
        "lacks gpu"
    );
    assert_eq!(claim(store, strong).await.unwrap().render_id, gpu.id);
}

pub async fn a_worker_holding_a_task_gets_the_same_assignment_again(store: &dyn Store) {
    store
        .create_render(plan("r", 1, 4, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let first = claim(store, w).await.unwrap();
    let again = claim(store, w).await.unwrap();
    assert_eq!(first, again, "its earlier answer may have been lost");
    let render = store.get_render(first.render_id).await.unwrap();
    assert_eq!(render.progress.tasks_running, 1);
    let shown = store.get_worker(w, chrono::Utc::now()).await.unwrap();
    assert_eq!(
        (shown.status, shown.current_task_id),
        (WorkerStatus::Busy, Some(first.task_id))
    );
}

pub async fn disabled_and_draining_workers_take_no_new_work(store: &dyn Store) {
    store
        .create_render(plan("r", 1, 3, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.unwrap();
    let drained = store
        .change_worker(w, WorkerAction::Drain, None, t0())
        .await
        .unwrap();
    assert_eq!(drained.status, WorkerStatus::Draining);
    assert_eq!(
        claim(store, w).await,
        Some(a.clone()),
        "a draining worker keeps its task"
    );
    complete(store, &a).await;
    assert_eq!(claim(store, w).await, None, "and takes no new one");
    let disabled = store
        .change_worker(w, WorkerAction::Disable, None, t0())
        .await
        .unwrap();
    assert_eq!(disabled.status, WorkerStatus::Disabled);
    let err = store.claim_next_task(w, t0()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WorkerUnavailable(WorkerUnavailable::Disabled)
        ),
        "{err:?}"
    );
    assert!(matches!(
        store
            .change_worker(w, WorkerAction::Drain, None, t0())
            .await,
        Err(StoreError::IllegalTransition(_))
    ));
    store
        .change_worker(w, WorkerAction::Enable, None, t0())
        .await
        .unwrap();
    assert!(claim(store, w).await.is_some());
}

/// 32 claimers drain 2,000 tasks at once: every task is handed out exactly
/// once, and every claim's completion is accepted.
pub async fn concurrent_claimers_get_every_task_exactly_once(store: &dyn Store) {
    const CLAIMERS: usize = 32;
    const TASKS: i64 = 2_000;
    let r = store
        .create_render(plan("race", 1, TASKS, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let mut workers = Vec::new();
    for i in 0..CLAIMERS {
        workers.push(worker(store, &format!("racer{i}"), &[]).await);
    }
    let runs = workers.iter().map(|w| async move {
        let mut got = Vec::new();
        while let Some(a) = store.claim_next_task(*w, t0()).await.expect("claim") {
            store
                .report_task(a.task_id, a.lease_id, TaskReport::Complete, None, t0())
                .await
                .expect("complete under a fresh lease");
            got.push(a.task_id);
        }
        got
    });
    let results = futures::future::join_all(runs).await;
    let all: Vec<Uuid> = results.iter().flatten().copied().collect();
    let distinct: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(all.len() as i64, TASKS, "every task handed out once");
    assert_eq!(distinct.len(), all.len(), "no task handed out twice");
    assert!(
        results.iter().filter(|r| !r.is_empty()).count() > 1,
        "claimers ran side by side"
    );
    let done = store.get_render(r.id).await.unwrap();
    assert_eq!(done.status, RenderStatus::Completed);
    assert_eq!(done.progress.tasks_completed, TASKS);
    assert_counters_exact(store).await;
}

/// A render of `tasks` one-frame chunks submitted while every earlier one
/// named in `hold` is paused, with `w` warm on it: `w` claims and completes
/// its first chunk as the head (no preference), then `hold` is resumed.
async fn warm_on(
    store: &dyn Store,
    w: Uuid,
    name: &str,
    tasks: i64,
    priority: Priority,
    hold: &[Uuid],
) -> Uuid {
    for r in hold {
        store
            .change_render(*r, RenderCommand::Pause, None, t0())
            .await
            .unwrap();
    }
    let warm = store
        .create_render(plan(name, 1, tasks, 1, priority, t0()))
        .await
        .unwrap();
    let first = claim(store, w).await.expect("the warm render has work");
    assert_eq!(
        (first.render_id, first.frame_start),
        (warm.id, 1),
        "the only claimable render"
    );
    complete(store, &first).await;
    for r in hold {
        store
            .change_render(*r, RenderCommand::Resume, None, t0())
            .await
            .unwrap();
    }
    warm.id
}

/// Claims the next task for `w` and completes it; which render and frame.
async fn claim_done(store: &dyn Store, w: Uuid) -> Option<(Uuid, i64)> {
    let a = claim(store, w).await?;
    complete(store, &a).await;
    Some((a.render_id, a.frame_start))
}

pub async fn a_warm_worker_prefers_its_render_at_equal_priority_never_over_a_higher(
    store: &dyn Store,
) {
    let older = store
        .create_render(plan("older", 1, 3, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "warm", &[]).await;
    let warm = warm_on(store, w, "warm", 20, Priority::Normal, &[older.id]).await;
    assert_eq!(
        claim_done(store, w).await,
        Some((warm, 2)),
        "its warm render's chunk wins over the older render's"
    );
    let cold = worker(store, "cold", &[]).await;
    assert_eq!(
        claim_done(store, cold).await,
        Some((older.id, 1)),
        "a worker warm on nothing claims in claim order"
    );
    let urgent = store
        .create_render(plan("urgent", 1, 1, 1, Priority::Urgent, t0()))
        .await
        .unwrap();
    assert_eq!(
        claim_done(store, w).await,
        Some((urgent.id, 1)),
        "never over a higher priority"
    );
    // Now warm on the urgent render, which has nothing left: claim order.
    assert_eq!(claim_done(store, w).await, Some((older.id, 2)));
    assert_eq!(claim_done(store, w).await, Some((older.id, 3)));
    assert_eq!(claim_done(store, w).await, Some((warm, 3)));

    // A paused warm render is not preferred.
    let next = store
        .create_render(plan("next", 1, 2, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    store
        .change_render(warm, RenderCommand::Pause, None, t0())
        .await
        .unwrap();
    assert_eq!(
        claim_done(store, w).await,
        Some((next.id, 1)),
        "its warm render is paused"
    );
    store
        .change_render(warm, RenderCommand::Resume, None, t0())
        .await
        .unwrap();
    assert_eq!(
        claim_done(store, w).await,
        Some((next.id, 2)),
        "warm on the younger render now"
    );
    assert_eq!(claim_done(store, w).await, Some((warm, 4)));

    // A warm render of lower priority is never preferred.
    let again = worker(store, "again", &[]).await;
    let low = warm_on(store, again, "low", 3, Priority::Low, &[warm]).await;
    assert_eq!(
        claim_done(store, again).await,
        Some((warm, 5)),
        "warm on a low render, it takes the normal one first"
    );
    assert_eq!(
        store.get_render(low).await.unwrap().progress.tasks_pending,
        2
    );
    assert_counters_exact(store).await;
}

pub async fn an_older_render_of_equal_priority_waits_at_most_the_warm_streak_limit(
    store: &dyn Store,
) {
    let older = store
        .create_render(plan("older", 1, 2, 1, Priority::High, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let warm = warm_on(
        store,
        w,
        "warm",
        WARM_STREAK_LIMIT + 4,
        Priority::High,
        &[older.id],
    )
    .await;
    let mut order = Vec::new();
    while let Some(claimed) = claim_done(store, w).await {
        order.push(claimed);
    }
    let mut want: Vec<(Uuid, i64)> = (2..WARM_STREAK_LIMIT + 2).map(|f| (warm, f)).collect();
    // The older render gets the next claim and, now the warm one as well as
    // the head, the one after.
    want.extend([(older.id, 1), (older.id, 2)]);
    want.extend((WARM_STREAK_LIMIT + 2..=WARM_STREAK_LIMIT + 4).map(|f| (warm, f)));
    assert_eq!(order, want);
    assert_counters_exact(store).await;
}

pub async fn a_preview_first_render_hands_out_its_previews_first(store: &dyn Store) {
    store
        .create_render(plan("older", 1, 2, 2, Priority::Normal, t0()))
        .await
        .unwrap();
    let preview = store
        .create_render(plan_with("p", 1, 20, 4, Priority::Normal, t0(), |s| {
            s.frame_order = renderfarm_wire::FrameOrder::PreviewFirst
        }))
        .await
        .unwrap();
    assert_eq!(
        preview.frame_order,
        renderfarm_wire::FrameOrder::PreviewFirst
    );
    assert_eq!(preview.progress.tasks_total, 14, "8 previews, 6 chunks");
    assert_eq!(preview.progress.frames_total, 20);
    let w = worker(store, "w", &[]).await;
    let mut order = Vec::new();
    while let Some(a) = claim(store, w).await {
        order.push((a.render_id == preview.id, a.frame_start, a.frame_end));
        complete(store, &a).await;
    }
    assert_eq!(
        order,
        [
            (false, 1, 2),
            (true, 1, 1),
            (true, 20, 20),
            (true, 10, 10),
            (true, 4, 4),
            (true, 7, 7),
            (true, 13, 13),
            (true, 16, 16),
            (true, 19, 19),
            (true, 2, 3),
            (true, 5, 6),
            (true, 8, 9),
            (true, 11, 12),
            (true, 14, 15),
            (true, 17, 18),
        ],
        "the older render first, then the previews in their order, then the rest lowest first"
    );
    let done = store.get_render(preview.id).await.unwrap();
    assert_eq!(done.status, renderfarm_wire::RenderStatus::Completed);
    assert_eq!(done.progress.frames_done, 20);
    let listed = store
        .list_tasks(preview.id, None, Default::default())
        .await
        .unwrap();
    let starts: Vec<i64> = listed.items.iter().map(|t| t.frame_start).collect();
    let mut sorted = starts.clone();
    sorted.sort_unstable();
    assert_eq!(starts, sorted, "tasks list lowest frames first");
}
