//! An operator's changes to renders: pause, resume, cancel, requeue, delete.

use crate::domain::RenderCommand;
use crate::domain::TaskReport;
use crate::store::{PageRequest, RenderFilter, Store, StoreError, StoreResult};
use renderfarm_wire::{Priority, RenderStatus, TaskStatus};

use super::{claim, complete, plan, plan_with, report, t0, worker};

pub async fn operator_commands_change_renders_and_their_tasks(store: &dyn Store) {
    let r = store
        .create_render(plan("r", 1, 4, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.unwrap();
    complete(store, &a).await;
    let paused = store
        .change_render(r.id, RenderCommand::Pause, t0())
        .await
        .unwrap();
    assert_eq!(paused.status, RenderStatus::Paused);
    let resumed = store
        .change_render(r.id, RenderCommand::Resume, t0())
        .await
        .unwrap();
    assert_eq!(resumed.status, RenderStatus::Rendering, "it had started");
    assert!(matches!(
        store.change_render(r.id, RenderCommand::Resume, t0()).await,
        Err(StoreError::IllegalTransition(_))
    ));
    let running = claim(store, w).await.unwrap();
    let canceled = store
        .change_render(r.id, RenderCommand::Cancel, t0())
        .await
        .unwrap();
    assert_eq!(canceled.status, RenderStatus::Canceled);
    assert_eq!(
        (
            canceled.progress.tasks_canceled,
            canceled.progress.tasks_completed
        ),
        (3, 1)
    );
    assert_eq!(
        store.get_task(running.task_id).await.unwrap().status,
        TaskStatus::Canceled
    );
    let requeued = store
        .change_render(r.id, RenderCommand::Requeue, t0())
        .await
        .unwrap();
    assert_eq!(requeued.status, RenderStatus::Queued);
    assert_eq!(
        (
            requeued.progress.tasks_pending,
            requeued.progress.tasks_completed
        ),
        (3, 1),
        "completed work is kept"
    );
    assert_eq!((requeued.started_at, requeued.finished_at), (None, None));
    let again = claim(store, w).await.unwrap();
    assert_ne!(again.lease_id, running.lease_id);
    let completed = store
        .change_render(r.id, RenderCommand::Complete, t0())
        .await
        .unwrap();
    assert_eq!(completed.status, RenderStatus::Completed);
    assert!(completed.finished_at.is_some());
    assert!(matches!(
        store
            .change_render(r.id, RenderCommand::Complete, t0())
            .await,
        Err(StoreError::IllegalTransition(_))
    ));
    let whole = store
        .change_render(r.id, RenderCommand::Requeue, t0())
        .await
        .unwrap();
    assert_eq!(
        whole.progress.tasks_pending, 3,
        "the canceled rest runs again"
    );
}

pub async fn only_a_finished_render_is_deleted_and_it_goes_whole(store: &dyn Store) {
    let keep = store
        .create_render(plan("keep", 1, 2, 1, Priority::Low, t0()))
        .await
        .unwrap();
    let r = store
        .create_render(plan_with("doomed", 1, 3, 1, Priority::Urgent, t0(), |s| {
            s.max_retries = 0
        }))
        .await
        .unwrap();
    let conflict = |e: Result<(), StoreError>| {
        assert!(matches!(e, Err(StoreError::IllegalTransition(_))), "{e:?}");
    };
    conflict(store.delete_render(r.id).await);

    // Its first chunk completes with a log; its second fails for good while
    // the third is still rendering: failed, but not deletable yet.
    let w = worker(store, "w", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    let first = claim(store, w).await.unwrap();
    store
        .report_task(
            first.task_id,
            first.lease_id,
            TaskReport::Complete,
            Some("Saved\n".into()),
            t0(),
        )
        .await
        .unwrap();
    let second = claim(store, w).await.unwrap();
    let third = claim(store, w2).await.unwrap();
    assert_eq!(third.render_id, r.id);
    report(
        store,
        &second,
        TaskReport::Fail {
            exit_code: Some(1),
            reason: "denoiser".into(),
        },
    )
    .await;
    assert_eq!(
        store.get_render(r.id).await.unwrap().status,
        RenderStatus::Failed
    );
    conflict(store.delete_render(r.id).await);
    complete(store, &third).await;

    store.delete_render(r.id).await.unwrap();
    let gone = |e: StoreResult<()>| {
        assert!(matches!(e, Err(StoreError::NotFound { .. })), "{e:?}");
    };
    gone(store.get_render(r.id).await.map(drop));
    gone(
        store
            .list_tasks(r.id, None, PageRequest::default())
            .await
            .map(drop),
    );
    gone(store.get_task(first.task_id).await.map(drop));
    gone(store.task_log(first.task_id).await.map(drop));
    gone(store.task_history(first.task_id).await.map(drop));
    gone(store.delete_render(r.id).await);
    // The other render is untouched.
    assert_eq!(
        store
            .list_renders(&RenderFilter::default(), PageRequest::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|x| x.id)
            .collect::<Vec<_>>(),
        vec![keep.id]
    );
    assert_eq!(
        store
            .list_tasks(keep.id, None, PageRequest::default())
            .await
            .unwrap()
            .total,
        2
    );
}
