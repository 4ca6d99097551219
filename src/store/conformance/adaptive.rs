//! Adaptive chunking: the re-split of a render's pending tasks keeps every
//! frame exactly once and the counters exact, whatever claims meanwhile.

use chrono::Duration;
use renderfarm_wire::{ChunkSizeSpec, FrameOrder, Priority, RenderStatus, Task, TaskStatus};
use uuid::Uuid;

use super::{assert_counters_exact, claim, plan_with, t0, worker};
use crate::domain::{adapt, ChunkSize, TaskReport, FIRST_GUESS};
use crate::store::{PageRequest, Store};

/// A render plan with adaptive chunking of frames `start..=end` aiming at
/// `target` seconds a chunk.
pub fn plan_auto(
    name: &str,
    (start, end): (i64, i64),
    target: i64,
    order: FrameOrder,
) -> crate::domain::NewRender {
    plan_with(name, start, end, 1, Priority::Normal, t0(), |s| {
        s.chunk_size = ChunkSizeSpec::Auto;
        s.target_chunk_seconds = Some(target);
        s.frame_order = order;
    })
}

async fn auto_render(
    store: &dyn Store,
    name: &str,
    frames: (i64, i64),
    target: i64,
    order: FrameOrder,
) -> Uuid {
    let new = plan_auto(name, frames, target, order);
    store.create_render(new).await.unwrap().id
}

/// Every task of the render (any status).
pub async fn all_tasks(store: &dyn Store, render: Uuid) -> Vec<Task> {
    let page = PageRequest {
        limit: PageRequest::MAX_LIMIT,
        offset: 0,
    };
    store.list_tasks(render, None, page).await.unwrap().items
}

/// Asserts the render's tasks hold each frame of `start..=end` exactly once.
pub async fn assert_every_frame_once(store: &dyn Store, render: Uuid, (start, end): (i64, i64)) {
    let mut held: Vec<i64> = all_tasks(store, render)
        .await
        .iter()
        .flat_map(|t| t.frame_start..=t.frame_end)
        .collect();
    held.sort_unstable();
    assert_eq!(
        held,
        (start..=end).collect::<Vec<_>>(),
        "every frame held by exactly one task"
    );
}

/// Claims the next task at `at` and completes it `seconds` later; its
/// frames.
pub async fn render_one(
    store: &dyn Store,
    worker: Uuid,
    at: chrono::DateTime<chrono::Utc>,
    seconds: i64,
) -> (i64, i64) {
    let a = store
        .claim_next_task(worker, at)
        .await
        .unwrap()
        .expect("a task to claim");
    store
        .report_task(
            a.task_id,
            a.lease_id,
            TaskReport::Complete,
            None,
            at + Duration::seconds(seconds),
        )
        .await
        .unwrap();
    (a.frame_start, a.frame_end)
}

/// Runs the tick's rule for one render through the store, as the
/// scheduler does.
async fn adapt_now(store: &dyn Store, render: Uuid) -> Option<crate::store::Resplit> {
    let state = store
        .adaptive_renders()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.render_id == render)
        .expect("the auto render with a completed chunk is listed");
    let a = adapt(
        state.target_seconds,
        state.chunk_size,
        state.measured_frame_seconds.is_some(),
        &state.completed,
    )
    .expect("a measurement");
    store
        .adapt_chunks(render, a.frame_seconds, a.resplit_to, t0())
        .await
        .unwrap()
}

pub async fn an_auto_render_is_re_split_to_its_measured_frame_time_with_every_frame_once(
    store: &dyn Store,
) {
    let render = auto_render(store, "auto", (1, 40), 10, FrameOrder::Sequential).await;
    let stored = store.get_render(render).await.unwrap();
    assert!(stored.chunk_size_auto);
    assert_eq!(
        (
            stored.chunk_size,
            stored.target_chunk_seconds,
            stored.measured_frame_seconds
        ),
        (FIRST_GUESS, Some(10), None)
    );
    // Probes 1 and 2, then 3-6 ... 39-40: 12 tasks.
    assert_eq!(stored.progress.tasks_total, 12);
    let w = worker(store, "w", &[]).await;
    assert!(
        store.adaptive_renders().await.unwrap().is_empty(),
        "nothing measured before a chunk completed"
    );
    // The first probe takes 2 s: 10 s / 2 s = 5 frames a chunk.
    assert_eq!(render_one(store, w, t0(), 2).await, (1, 1));
    // The second probe is running while the re-split runs.
    let running = claim(store, w).await.expect("the second probe");
    assert_eq!((running.frame_start, running.frame_end), (2, 2));
    let done = adapt_now(store, render).await.expect("a re-split");
    // 3-40 was 10 chunks of up to 4; it is 8 of up to 5.
    assert_eq!((done.replaced, done.created), (10, 8));
    let after = store.get_render(render).await.unwrap();
    assert_eq!(after.chunk_size, 5);
    assert_eq!(after.measured_frame_seconds, Some(2.0));
    assert_eq!(after.progress.tasks_total, 10);
    assert_eq!(after.progress.tasks_pending, 8);
    assert_eq!(after.progress.tasks_running, 1);
    assert_eq!(after.progress.tasks_completed, 1);
    assert_counters_exact(store).await;
    assert_every_frame_once(store, render, (1, 40)).await;
    let pending: Vec<(i64, i64)> = all_tasks(store, render)
        .await
        .iter()
        .filter(|t| t.status == TaskStatus::Pending)
        .map(|t| (t.frame_start, t.frame_end))
        .collect();
    assert_eq!(
        pending,
        vec![
            (3, 7),
            (8, 12),
            (13, 17),
            (18, 22),
            (23, 27),
            (28, 32),
            (33, 37),
            (38, 40)
        ]
    );
    // The same measurement again changes nothing (hysteresis).
    assert_eq!(adapt_now(store, render).await, None);
    // The rest renders to the end, each frame once.
    store
        .report_task(
            running.task_id,
            running.lease_id,
            TaskReport::Complete,
            None,
            t0() + Duration::seconds(4),
        )
        .await
        .unwrap();
    while let Some(a) = claim(store, w).await {
        store
            .report_task(a.task_id, a.lease_id, TaskReport::Complete, None, t0())
            .await
            .unwrap();
    }
    let finished = store.get_render(render).await.unwrap();
    assert_eq!(finished.status, RenderStatus::Completed);
    assert_eq!(finished.progress.frames_done, 40);
    assert_eq!(finished.progress.tasks_completed, 10);
    assert_counters_exact(store).await;
    assert_every_frame_once(store, render, (1, 40)).await;
}

pub async fn a_task_claimed_during_a_re_split_is_never_duplicated(store: &dyn Store) {
    let render = auto_render(store, "race", (1, 60), 20, FrameOrder::Sequential).await;
    let first = worker(store, "first", &[]).await;
    // 20 s / 10 s a frame: chunks of 2.
    render_one(store, first, t0(), 10).await;
    let workers = [
        worker(store, "a", &[]).await,
        worker(store, "b", &[]).await,
        worker(store, "c", &[]).await,
        worker(store, "d", &[]).await,
    ];
    let claims = futures::future::join_all(workers.iter().map(|w| claim(store, *w)));
    let (claimed, resplit) = tokio::join!(claims, adapt_now(store, render));
    assert!(resplit.is_some(), "the re-split ran");
    let claimed: Vec<_> = claimed.into_iter().flatten().collect();
    assert_eq!(claimed.len(), workers.len(), "every worker got a task");
    let tasks = all_tasks(store, render).await;
    for a in &claimed {
        let task = tasks
            .iter()
            .find(|t| t.id == a.task_id)
            .expect("a claimed task is never deleted by a re-split");
        assert_eq!(task.status, TaskStatus::Running);
    }
    assert_every_frame_once(store, render, (1, 60)).await;
    assert_counters_exact(store).await;
    let r = store.get_render(render).await.unwrap();
    assert_eq!(r.progress.tasks_total as usize, tasks.len());
    assert_eq!(r.progress.tasks_running, workers.len() as i64);
}

pub async fn a_re_split_leaves_previews_and_handed_out_tasks_alone(store: &dyn Store) {
    let render = auto_render(store, "previews", (1, 100), 8, FrameOrder::PreviewFirst).await;
    let before = all_tasks(store, render).await;
    let previews: Vec<(i64, i64)> = before
        .iter()
        .filter(|t| t.frame_start == t.frame_end)
        .map(|t| (t.frame_start, t.frame_end))
        .collect();
    let w = worker(store, "w", &[]).await;
    // The first preview (frame 1) takes 4 s: chunks of 2.
    assert_eq!(render_one(store, w, t0(), 4).await, (1, 1));
    let done = store
        .adapt_chunks(render, 4.0, Some(ChunkSize::new(2).unwrap()), t0())
        .await
        .unwrap()
        .expect("a re-split");
    assert!(done.created > done.replaced);
    let after = all_tasks(store, render).await;
    for p in &previews {
        assert!(
            after.iter().any(|t| (t.frame_start, t.frame_end) == *p),
            "preview {p:?} is still its own task"
        );
    }
    assert!(after
        .iter()
        .filter(|t| t.status == TaskStatus::Pending)
        .all(|t| t.frame_end - t.frame_start < 2));
    // The previews are still claimed first.
    let next = claim(store, w).await.unwrap();
    assert_eq!(next.frame_start, next.frame_end, "a preview comes next");
    assert_every_frame_once(store, render, (1, 100)).await;
    assert_counters_exact(store).await;
}
