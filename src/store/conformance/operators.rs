//! An operator's changes to renders: pause, resume, cancel, requeue, delete.

use chrono::Duration;
use renderfarm_wire::{HistoryEvent, Priority, RenderStatus, TaskStatus, WorkerAction};
use uuid::Uuid;

use super::{assert_counters_exact, claim, complete, plan, plan_with, report, t0, worker};
use crate::domain::TaskReport;
use crate::domain::{RenderCommand, RenderOrder};
use crate::store::{PageRequest, RenderFilter, Store, StoreError, StoreResult};

/// A history line as the tests compare it: event, worker, actor, detail.
type Line = (HistoryEvent, Option<Uuid>, Option<String>, Option<String>);

async fn history_lines(store: &dyn Store, task: Uuid) -> Vec<Line> {
    store
        .task_history(task)
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.event, h.worker_id, h.actor, h.detail))
        .collect()
}

fn line(
    event: HistoryEvent,
    worker: Option<Uuid>,
    actor: Option<&str>,
    detail: Option<&str>,
) -> Line {
    (
        event,
        worker,
        actor.map(str::to_string),
        detail.map(str::to_string),
    )
}

/// The operator's commands write a line in the history of every task they
/// move, naming who gave them; what workers and the scheduler do names no one.
pub async fn operator_actions_in_a_task_history_name_who_did_them(store: &dyn Store) {
    use HistoryEvent as H;
    let r = store
        .create_render(plan("r", 1, 2, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w1 = worker(store, "w1", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    let running = claim(store, w1).await.unwrap();
    let pending = store
        .list_tasks(r.id, Some(TaskStatus::Pending), PageRequest::default())
        .await
        .unwrap()
        .items[0]
        .id;
    let later = t0() + Duration::seconds(10);

    // Canceled by alice: the running task keeps its worker in the line, the
    // pending one had none.
    store
        .change_render(r.id, RenderCommand::Cancel, Some("alice"), later)
        .await
        .unwrap();
    let canceled = Some("its render was canceled");
    assert_eq!(
        history_lines(store, running.task_id).await,
        vec![
            line(H::Assigned, Some(w1), None, None),
            line(H::Canceled, Some(w1), Some("alice"), canceled),
        ]
    );
    assert_eq!(
        history_lines(store, pending).await,
        vec![line(H::Canceled, None, Some("alice"), canceled)]
    );

    // Requeued by bob: every task runs again, with no worker.
    store
        .change_render(r.id, RenderCommand::Requeue, Some("bob"), later)
        .await
        .unwrap();
    let requeued = line(
        H::Requeued,
        None,
        Some("bob"),
        Some("its render was requeued"),
    );
    assert_eq!(history_lines(store, pending).await.last(), Some(&requeued));

    // Taken again, then its worker disabled by carol.
    let again = claim(store, w2).await.unwrap();
    assert_eq!(again.task_id, running.task_id);
    store
        .change_worker(w2, WorkerAction::Disable, Some("carol"), later)
        .await
        .unwrap();
    assert_eq!(
        history_lines(store, running.task_id).await,
        vec![
            line(H::Assigned, Some(w1), None, None),
            line(H::Canceled, Some(w1), Some("alice"), canceled),
            requeued.clone(),
            line(H::Assigned, Some(w2), None, None),
            line(
                H::Requeued,
                Some(w2),
                Some("carol"),
                Some("its worker was disabled")
            ),
        ]
    );
    let at: Vec<_> = store
        .task_history(running.task_id)
        .await
        .unwrap()
        .iter()
        .map(|h| h.at)
        .collect();
    assert_eq!(at, [t0(), later, later, t0(), later], "when each was done");

    // A command from a broker that knows no callers names no one.
    let done = store
        .change_render(r.id, RenderCommand::Complete, None, later)
        .await
        .unwrap();
    assert_eq!(done.status, RenderStatus::Completed);
    assert_eq!(
        history_lines(store, pending).await.last(),
        Some(&line(
            H::Canceled,
            None,
            None,
            Some("its render was marked complete")
        ))
    );

    // A render failed for good cancels its pending work: no one did that.
    let doomed = store
        .create_render(plan_with("doomed", 1, 2, 1, Priority::Normal, t0(), |s| {
            s.max_retries = 0
        }))
        .await
        .unwrap();
    let w3 = worker(store, "w3", &[]).await;
    let failing = claim(store, w3).await.unwrap();
    assert_eq!(failing.render_id, doomed.id);
    report(
        store,
        &failing,
        TaskReport::Fail {
            exit_code: Some(1),
            reason: "out of memory".into(),
        },
    )
    .await;
    let rest = store
        .list_tasks(
            doomed.id,
            Some(TaskStatus::Canceled),
            PageRequest::default(),
        )
        .await
        .unwrap()
        .items;
    assert_eq!(rest.len(), 1);
    assert_eq!(
        history_lines(store, rest[0].id).await,
        vec![line(
            H::Canceled,
            None,
            None,
            Some("its render failed: a task of it failed with no retry left")
        )]
    );
    assert!(history_lines(store, failing.task_id)
        .await
        .iter()
        .all(|(_, _, actor, _)| actor.is_none()));
    assert_counters_exact(store).await;
}

pub async fn operator_commands_change_renders_and_their_tasks(store: &dyn Store) {
    let r = store
        .create_render(plan("r", 1, 4, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.unwrap();
    complete(store, &a).await;
    let paused = store
        .change_render(r.id, RenderCommand::Pause, None, t0())
        .await
        .unwrap();
    assert_eq!(paused.status, RenderStatus::Paused);
    let resumed = store
        .change_render(r.id, RenderCommand::Resume, None, t0())
        .await
        .unwrap();
    assert_eq!(resumed.status, RenderStatus::Rendering, "it had started");
    assert!(matches!(
        store
            .change_render(r.id, RenderCommand::Resume, None, t0())
            .await,
        Err(StoreError::IllegalTransition(_))
    ));
    let running = claim(store, w).await.unwrap();
    let canceled = store
        .change_render(r.id, RenderCommand::Cancel, None, t0())
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
        .change_render(r.id, RenderCommand::Requeue, None, t0())
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
        .change_render(r.id, RenderCommand::Complete, None, t0())
        .await
        .unwrap();
    assert_eq!(completed.status, RenderStatus::Completed);
    assert!(completed.finished_at.is_some());
    assert!(matches!(
        store
            .change_render(r.id, RenderCommand::Complete, None, t0())
            .await,
        Err(StoreError::IllegalTransition(_))
    ));
    let whole = store
        .change_render(r.id, RenderCommand::Requeue, None, t0())
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
            .list_renders(
                &RenderFilter::default(),
                RenderOrder::default(),
                PageRequest::default()
            )
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

/// An operator requeues one task: a running one is taken from its worker
/// (whose lease is void), a finished one runs again, a finished render is
/// reopened when it can finish, and the history names who did it.
pub async fn an_operator_requeues_one_task_by_the_domain_s_rule(store: &dyn Store) {
    use HistoryEvent as H;
    let later = t0() + Duration::seconds(10);
    let r = store
        .create_render(plan("one", 1, 2, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w1 = worker(store, "w1", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    let first = claim(store, w1).await.unwrap();
    report(store, &first, TaskReport::Progress { frames_done: 1 }).await;
    let refused = store
        .requeue_one_task(
            store
                .list_tasks(r.id, Some(TaskStatus::Pending), PageRequest::default())
                .await
                .unwrap()
                .items[0]
                .id,
            Some("olga"),
            later,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::IllegalTransition(_)),
        "{refused:?}"
    );

    // Running: taken from w1, whose lease is void from now on.
    let task = store
        .requeue_one_task(first.task_id, Some("olga"), later)
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!((task.worker_id, task.frames_done), (None, 0));
    let stale = store
        .report_task(
            first.task_id,
            first.lease_id,
            TaskReport::Complete,
            None,
            later,
        )
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::StaleLease { .. }), "{stale:?}");
    let detail = Some("an operator requeued this task on its own");
    assert_eq!(
        history_lines(store, first.task_id).await,
        vec![
            line(H::Assigned, Some(w1), None, None),
            line(H::Requeued, Some(w1), Some("olga"), detail),
        ]
    );
    let render = store.get_render(r.id).await.unwrap();
    assert_eq!(
        (render.progress.tasks_pending, render.progress.frames_done),
        (2, 0)
    );
    assert_counters_exact(store).await;

    // Completed whole, then one task requeued: the render is reopened and
    // completes again once it is rendered.
    for w in [w1, w2] {
        let a = claim(store, w).await.unwrap();
        complete(store, &a).await;
    }
    let done = store.get_render(r.id).await.unwrap();
    assert_eq!(done.status, RenderStatus::Completed);
    store
        .requeue_one_task(first.task_id, Some("olga"), later)
        .await
        .unwrap();
    let reopened = store.get_render(r.id).await.unwrap();
    assert_eq!(reopened.status, RenderStatus::Queued);
    assert_eq!((reopened.started_at, reopened.finished_at), (None, None));
    assert_eq!(
        (
            reopened.progress.tasks_pending,
            reopened.progress.tasks_completed
        ),
        (1, 1)
    );
    assert_counters_exact(store).await;
    let again = claim(store, w2)
        .await
        .expect("the reopened render's task is claimable");
    assert_eq!(again.task_id, first.task_id);
    complete(store, &again).await;
    assert_eq!(
        store.get_render(r.id).await.unwrap().status,
        RenderStatus::Completed
    );

    // A failed render whose other tasks all completed is reopened; one with
    // canceled work is not (the whole render's requeue runs that).
    let failing = store
        .create_render(plan_with("failing", 1, 2, 1, Priority::Normal, t0(), |s| {
            s.max_retries = 0
        }))
        .await
        .unwrap();
    let a1 = claim(store, w1).await.unwrap();
    let a2 = claim(store, w2).await.unwrap();
    complete(store, &a2).await;
    let fail = TaskReport::Fail {
        exit_code: Some(1),
        reason: "boom".into(),
    };
    report(store, &a1, fail.clone()).await;
    assert_eq!(
        store.get_render(failing.id).await.unwrap().status,
        RenderStatus::Failed
    );
    store
        .requeue_one_task(a1.task_id, None, later)
        .await
        .unwrap();
    let back = store.get_render(failing.id).await.unwrap();
    assert_eq!(back.status, RenderStatus::Queued);
    assert_eq!(back.progress.tasks_failed, 0);
    assert_eq!(
        history_lines(store, a1.task_id).await.last(),
        Some(&line(H::Requeued, Some(w1), None, detail))
    );
    let retried = claim(store, w1).await.unwrap();
    assert_eq!(
        (retried.task_id, retried.render_id),
        (a1.task_id, failing.id)
    );
    complete(store, &retried).await;
    assert_eq!(
        store.get_render(failing.id).await.unwrap().status,
        RenderStatus::Completed
    );

    let stuck = store
        .create_render(plan_with("stuck", 1, 2, 1, Priority::Normal, t0(), |s| {
            s.max_retries = 0
        }))
        .await
        .unwrap();
    let s1 = claim(store, w1).await.unwrap();
    report(store, &s1, fail).await;
    let canceled = store
        .list_tasks(stuck.id, Some(TaskStatus::Canceled), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(canceled.total, 1, "its pending work was canceled");
    let refused = store
        .requeue_one_task(s1.task_id, Some("olga"), later)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("requeue the whole render"),
        "{refused}"
    );
    assert_eq!(
        store.get_render(stuck.id).await.unwrap().status,
        RenderStatus::Failed,
        "a refused requeue changes nothing"
    );
    assert_counters_exact(store).await;
    assert!(matches!(
        store.requeue_one_task(Uuid::new_v4(), None, later).await,
        Err(StoreError::NotFound { .. })
    ));
}
