//! Dependencies between renders: waiting, released by the last dependency's
//! completion, blocked by a failed or canceled one, released or canceled by
//! an operator (`domain::waiting_reason`).

use renderfarm_wire::{Priority, RenderStatus, TaskStatus};
use uuid::Uuid;

use super::*;
use crate::domain::RenderCommand;
use crate::store::StoreError;

/// Submits `new` after `deps` as the API does: the dependencies' states
/// decide whether it starts waiting.
async fn submit_after(store: &dyn Store, new: NewRender, deps: &[Uuid]) -> renderfarm_wire::Render {
    let mut new = new;
    new.render.depends_on = deps.to_vec();
    let states = store
        .dependency_states(deps)
        .await
        .expect("dependency states");
    store
        .create_render(new.wait_for(&states))
        .await
        .expect("create a render with dependencies")
}

async fn status_of(store: &dyn Store, id: Uuid) -> (RenderStatus, Option<String>) {
    let r = store.get_render(id).await.unwrap();
    (r.status, r.waiting_reason)
}

/// Claims and completes every task the worker can get, never one of
/// `never`'s.
async fn render_all(store: &dyn Store, w: Uuid, never: Uuid) -> usize {
    let mut done = 0;
    while let Some(a) = claim(store, w).await {
        assert_ne!(a.render_id, never, "a waiting render's task was claimed");
        complete(store, &a).await;
        done += 1;
    }
    done
}

pub async fn a_render_waits_for_its_dependencies_and_starts_when_the_last_completes(
    store: &dyn Store,
) {
    let a = store
        .create_render(plan("a", 1, 4, 2, Priority::Low, t0()))
        .await
        .unwrap();
    let b = store
        .create_render(plan("b", 1, 2, 2, Priority::Low, t0()))
        .await
        .unwrap();
    // More urgent than both: still never claimed while it waits.
    let c = submit_after(
        store,
        plan("c", 1, 2, 1, Priority::Urgent, t0()),
        &[a.id, b.id],
    )
    .await;
    assert_eq!(c.status, RenderStatus::Waiting);
    assert_eq!(c.depends_on, vec![a.id, b.id]);
    let reason = c.waiting_reason.clone().expect("a reason while waiting");
    assert!(
        reason.contains(&a.id.to_string()) && reason.contains(&b.id.to_string()),
        "{reason}"
    );
    let listed = store
        .list_renders(
            &crate::store::RenderFilter {
                status: Some(RenderStatus::Waiting),
                ..Default::default()
            },
            crate::domain::RenderOrder::default(),
            crate::store::PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        listed.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![c.id]
    );

    let w = worker(store, "w", &[]).await;
    // a's two chunks first (older), one at a time.
    let first = claim(store, w).await.unwrap();
    assert_eq!(first.render_id, a.id);
    complete(store, &first).await;
    let second = claim(store, w).await.unwrap();
    complete(store, &second).await;
    let (status, reason) = status_of(store, c.id).await;
    assert_eq!(status, RenderStatus::Waiting, "b has not completed");
    let reason = reason.unwrap();
    assert!(!reason.contains(&a.id.to_string()), "a completed: {reason}");
    assert!(reason.contains(&b.id.to_string()), "{reason}");

    let last = claim(store, w).await.unwrap();
    assert_eq!(last.render_id, b.id);
    complete(store, &last).await;
    assert_eq!(
        status_of(store, c.id).await,
        (RenderStatus::Queued, None),
        "released in the write that completed its last dependency"
    );
    let next = claim(store, w).await.unwrap();
    assert_eq!(next.render_id, c.id);
    assert_eq!(store.settle_waiting(t0()).await.unwrap(), 0);
    assert_counters_exact(store).await;

    // Dependencies that completed before the submit: it starts queued.
    let d = submit_after(store, plan("d", 1, 1, 1, Priority::Low, t0()), &[a.id]).await;
    assert_eq!((d.status, d.waiting_reason), (RenderStatus::Queued, None));
}

pub async fn a_failed_dependency_blocks_until_it_is_requeued_and_completes(store: &dyn Store) {
    let a = store
        .create_render(plan_with("a", 1, 1, 1, Priority::Normal, t0(), |s| {
            s.max_retries = 0
        }))
        .await
        .unwrap();
    let b = submit_after(store, plan("b", 1, 2, 1, Priority::Normal, t0()), &[a.id]).await;
    assert_eq!(b.status, RenderStatus::Waiting);
    let w = worker(store, "w", &[]).await;
    let task = claim(store, w).await.unwrap();
    report(
        store,
        &task,
        TaskReport::Fail {
            exit_code: Some(1),
            reason: "Blender quit".into(),
        },
    )
    .await;
    assert_eq!(
        store.get_render(a.id).await.unwrap().status,
        RenderStatus::Failed
    );
    let (status, reason) = status_of(store, b.id).await;
    assert_eq!(
        status,
        RenderStatus::Waiting,
        "a failed dependency never releases"
    );
    let reason = reason.unwrap();
    assert!(
        reason.contains("failed") && reason.contains("requeue"),
        "{reason}"
    );
    assert!(claim(store, w).await.is_none(), "nothing of b is claimable");

    store
        .change_render(a.id, RenderCommand::Requeue, None, t0())
        .await
        .unwrap();
    let (status, reason) = status_of(store, b.id).await;
    assert_eq!(status, RenderStatus::Waiting);
    assert!(
        reason.unwrap().contains("queued"),
        "the reason follows a's requeue"
    );
    let again = claim(store, w).await.unwrap();
    assert_eq!(again.render_id, a.id, "only the requeued task is claimable");
    complete(store, &again).await;
    assert_eq!(
        store.get_render(a.id).await.unwrap().status,
        RenderStatus::Completed
    );
    assert_eq!(status_of(store, b.id).await, (RenderStatus::Queued, None));
    assert_eq!(claim(store, w).await.unwrap().render_id, b.id);
    assert_counters_exact(store).await;
}

pub async fn an_operator_releases_or_cancels_a_waiting_render_and_a_deleted_dependency_blocks(
    store: &dyn Store,
) {
    let a = store
        .create_render(plan("a", 1, 2, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let b = submit_after(store, plan("b", 1, 2, 1, Priority::Normal, t0()), &[a.id]).await;
    assert!(matches!(
        store
            .change_render(b.id, RenderCommand::Pause, None, t0())
            .await,
        Err(StoreError::IllegalTransition(_))
    ));
    assert!(matches!(
        store
            .change_render(a.id, RenderCommand::Release, None, t0())
            .await,
        Err(StoreError::IllegalTransition(_))
    ));
    let released = store
        .change_render(b.id, RenderCommand::Release, None, t0())
        .await
        .unwrap();
    assert_eq!(
        (released.status, released.waiting_reason),
        (RenderStatus::Queued, None)
    );
    assert_eq!(released.progress.tasks_pending, 2);

    let c = submit_after(store, plan("c", 1, 2, 1, Priority::Normal, t0()), &[a.id]).await;
    let canceled = store
        .change_render(c.id, RenderCommand::Cancel, None, t0())
        .await
        .unwrap();
    assert_eq!(canceled.status, RenderStatus::Canceled);
    assert_eq!(canceled.progress.tasks_canceled, 2);

    // A dependency canceled, then deleted: the render waiting for it is
    // blocked, and says the dependency is gone.
    let d = submit_after(store, plan("d", 1, 1, 1, Priority::Normal, t0()), &[a.id]).await;
    store
        .change_render(a.id, RenderCommand::Cancel, None, t0())
        .await
        .unwrap();
    let (status, reason) = status_of(store, d.id).await;
    assert_eq!(status, RenderStatus::Waiting);
    assert!(reason.unwrap().contains("canceled"));
    store.delete_render(a.id).await.unwrap();
    let (status, reason) = status_of(store, d.id).await;
    assert_eq!(status, RenderStatus::Waiting);
    assert!(reason.unwrap().contains("deleted"));
    let states = store.dependency_states(&[a.id, d.id]).await.unwrap();
    assert_eq!(states[0].found, None);
    assert_eq!(
        states[1].found,
        Some(("d".to_string(), RenderStatus::Waiting))
    );
    let w = worker(store, "w", &[]).await;
    assert_eq!(
        render_all(store, w, d.id).await,
        2,
        "b's two chunks, never d's"
    );
    assert_eq!(
        store
            .get_task(
                store
                    .list_tasks(d.id, None, Default::default())
                    .await
                    .unwrap()
                    .items[0]
                    .id
            )
            .await
            .unwrap()
            .status,
        TaskStatus::Pending
    );
}
