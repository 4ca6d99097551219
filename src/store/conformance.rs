//! The behaviour every [`Store`] backend must show, as plain async functions
//! that take a fresh, empty store. Each backend has one test per function
//! (see [`conformance_tests!`](crate::conformance_tests)); the functions panic
//! on the first broken promise.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use renderfarm_wire::{
    Heartbeat, HeartbeatAction, Priority, RenderSpec, RenderStatus, TaskStatus, WorkerAction,
    WorkerSpec, WorkerStatus,
};
use uuid::Uuid;

use super::{PageRequest, RenderFilter, Store, StoreError, StoreResult, TaskReport};
use crate::domain::{validate_worker_spec, Allowances, NewRender, RenderCommand, ValidRenderSpec};
use renderfarm_wire::HistoryEvent;

/// Every conformance function by name, for the per-backend test macro.
#[macro_export]
///
/// `$make_store` is an async function taking the test's name (so a backend's
/// harness can skip what its test server cannot show) and returning
/// `Option<harness>` with a `store` field; `None` skips the test.
macro_rules! conformance_tests {
    ($make_store:path) => {
        $crate::conformance_tests!(@each $make_store;
            creating_a_render_stores_it_with_all_its_tasks,
            claims_follow_priority_then_age_then_frame,
            paused_and_canceled_renders_are_never_claimed,
            only_workers_with_the_required_tags_claim,
            a_worker_holding_a_task_gets_the_same_assignment_again,
            every_claim_mints_a_new_lease,
            a_stale_lease_changes_nothing,
            a_released_task_is_queued_again_without_a_failure,
            the_first_claim_starts_and_the_last_completion_completes_the_render,
            a_failure_with_no_retry_left_fails_the_render,
            a_failure_with_a_retry_left_keeps_the_render_going,
            progress_outside_the_task_is_rejected,
            heartbeats_answer_abort_once_the_task_is_taken_away,
            disabled_and_draining_workers_take_no_new_work,
            operator_commands_change_renders_and_their_tasks,
            only_a_finished_render_is_deleted_and_it_goes_whole,
            finished_renders_are_found_by_when_they_ended,
            listings_filter_and_paginate,
            task_logs_accumulate_in_order,
            a_task_log_keeps_its_first_and_newest_output_within_its_bound,
            unknown_ids_are_not_found,
            concurrent_claimers_get_every_task_exactly_once,
            lost_workers_go_offline_and_their_tasks_are_requeued_without_a_failure,
            failed_tasks_are_retried_until_none_is_left_then_the_render_fails,
            preemption_sees_overdue_work_running_work_and_idle_workers,
            preemption_takes_a_task_back_only_under_its_current_lease,
            one_lease_holder_at_a_time_and_a_takeover_once_it_lapses,
            the_history_tells_what_happened_to_a_task,
        );
    };
    (@each $make_store:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let store = $make_store(stringify!($name)).await;
                let Some(store) = store else { return };
                $crate::store::conformance::$name(&*store.store).await;
            }
        )*
    };
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("a valid fixed time")
}

/// A render plan for tests: frames `start..=end` in chunks of `chunk`.
pub fn plan(
    name: &str,
    start: i64,
    end: i64,
    chunk: i64,
    priority: Priority,
    now: DateTime<Utc>,
) -> NewRender {
    plan_with(name, start, end, chunk, priority, now, |_| {})
}

fn plan_with(
    name: &str,
    start: i64,
    end: i64,
    chunk: i64,
    priority: Priority,
    now: DateTime<Utc>,
    adjust: impl FnOnce(&mut RenderSpec),
) -> NewRender {
    let mut spec = RenderSpec {
        name: name.into(),
        blend_file: format!("/projects/{name}.blend"),
        frame_start: start,
        frame_end: end,
        chunk_size: chunk,
        priority,
        max_retries: 1,
        output: None,
        engine: None,
        tags: vec![],
    };
    adjust(&mut spec);
    let valid = ValidRenderSpec::try_from(spec).expect("a valid test render");
    NewRender::plan(
        valid,
        Uuid::new_v4(),
        |id| format!("/tmp/renders/{id}/frame_####"),
        now,
    )
}

/// Registers a worker named `name` with `tags`; its id.
pub async fn worker(store: &dyn Store, name: &str, tags: &[&str]) -> Uuid {
    let spec = validate_worker_spec(WorkerSpec {
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    })
    .expect("a valid test worker");
    store
        .register_worker(spec, t0())
        .await
        .expect("register worker")
        .id
}

async fn claim(store: &dyn Store, worker: Uuid) -> Option<renderfarm_wire::Assignment> {
    store.claim_next_task(worker, t0()).await.expect("claim")
}

async fn complete(store: &dyn Store, a: &renderfarm_wire::Assignment) {
    report(store, a, TaskReport::Complete).await;
}

/// A report under the assignment's lease that must be accepted.
async fn report(
    store: &dyn Store,
    a: &renderfarm_wire::Assignment,
    report: TaskReport,
) -> renderfarm_wire::Task {
    store
        .report_task(a.task_id, a.lease_id, report.clone(), None, t0())
        .await
        .unwrap_or_else(|e| panic!("{report:?}: {e}"))
}

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
        .change_render(paused.id, RenderCommand::Pause, t0())
        .await
        .unwrap();
    store
        .change_render(canceled.id, RenderCommand::Cancel, t0())
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.expect("the open render has work");
    assert_eq!(a.render_id, open.id);
    complete(store, &a).await;
    assert_eq!(claim(store, w).await, None);
    store
        .change_render(paused.id, RenderCommand::Resume, t0())
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
    let shown = store.get_worker(w).await.unwrap();
    assert_eq!(
        (shown.status, shown.current_task_id),
        (WorkerStatus::Busy, Some(first.task_id))
    );
}

pub async fn every_claim_mints_a_new_lease(store: &dyn Store) {
    let r = store
        .create_render(plan("r", 1, 1, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w1 = worker(store, "w1", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    let first = claim(store, w1).await.unwrap();
    store
        .change_worker(w1, WorkerAction::Disable, t0())
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
        .change_worker(w1, WorkerAction::Disable, t0())
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
            matches!(err, StoreError::Conflict(_)),
            "{report:?}: {err:?}"
        );
        let err = store
            .report_task(old.task_id, Uuid::new_v4(), report, None, t0())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict(_)),
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
        matches!(err, StoreError::Conflict(_)),
        "a finished task takes no more reports"
    );
}

pub async fn a_released_task_is_queued_again_without_a_failure(store: &dyn Store) {
    let r = store
        .create_render(plan("r", 1, 4, 4, Priority::Normal, t0()))
        .await
        .unwrap();
    let w1 = worker(store, "stopping", &[]).await;
    let w2 = worker(store, "next", &[]).await;
    let a = claim(store, w1).await.unwrap();
    report(store, &a, TaskReport::Progress { frames_done: 2 }).await;
    let released = store
        .report_task(
            a.task_id,
            a.lease_id,
            TaskReport::Release,
            Some("stopping\n".into()),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            released.status,
            released.retries,
            released.worker_id,
            released.frames_done
        ),
        (TaskStatus::Pending, 0, None, 0)
    );
    let render = store.get_render(r.id).await.unwrap();
    assert_eq!(
        (
            render.progress.tasks_pending,
            render.progress.tasks_running,
            render.progress.frames_done
        ),
        (1, 0, 0)
    );
    assert_eq!(
        store.get_worker(w1).await.unwrap().status,
        WorkerStatus::Idle
    );
    let err = store
        .report_task(a.task_id, a.lease_id, TaskReport::Complete, None, t0())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)),
        "the released lease is stale"
    );
    let b = claim(store, w2).await.expect("the task is claimable again");
    assert_eq!(b.task_id, a.task_id);
    assert_eq!(store.task_log(a.task_id).await.unwrap(), "stopping\n");
}

pub async fn the_first_claim_starts_and_the_last_completion_completes_the_render(
    store: &dyn Store,
) {
    let r = store
        .create_render(plan("r", 1, 10, 5, Priority::Normal, t0()))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.started_at, r.finished_at),
        (RenderStatus::Queued, None, None)
    );
    let w = worker(store, "w", &[]).await;
    let at = t0() + Duration::seconds(5);
    let a = store.claim_next_task(w, at).await.unwrap().unwrap();
    let started = store.get_render(r.id).await.unwrap();
    assert_eq!(started.status, RenderStatus::Rendering);
    assert_eq!(started.started_at, Some(at));
    store
        .report_task(
            a.task_id,
            a.lease_id,
            TaskReport::Progress { frames_done: 3 },
            None,
            at,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_render(r.id).await.unwrap().progress.frames_done,
        3
    );
    complete(store, &a).await;
    let half = store.get_render(r.id).await.unwrap();
    assert_eq!(
        (
            half.status,
            half.progress.frames_done,
            half.progress.tasks_completed
        ),
        (RenderStatus::Rendering, 5, 1)
    );
    let b = claim(store, w).await.unwrap();
    let end = t0() + Duration::seconds(9);
    store
        .report_task(b.task_id, b.lease_id, TaskReport::Complete, None, end)
        .await
        .unwrap();
    let done = store.get_render(r.id).await.unwrap();
    assert_eq!(done.status, RenderStatus::Completed);
    assert_eq!(done.finished_at, Some(end));
    assert_eq!(done.progress.frames_done, 10);
    assert_eq!(
        (
            done.progress.tasks_completed,
            done.progress.tasks_running,
            done.progress.tasks_pending
        ),
        (2, 0, 0)
    );
    let task = store.get_task(b.task_id).await.unwrap();
    assert_eq!(
        (task.status, task.frames_done, task.finished_at),
        (TaskStatus::Completed, 5, Some(end))
    );
    assert_eq!(
        store.get_worker(w).await.unwrap().status,
        WorkerStatus::Idle
    );
}

pub async fn a_failure_with_no_retry_left_fails_the_render(store: &dyn Store) {
    let r = store
        .create_render(plan_with("r", 1, 3, 1, Priority::Normal, t0(), |s| {
            s.max_retries = 0
        }))
        .await
        .unwrap();
    let w1 = worker(store, "w1", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    let a = claim(store, w1).await.unwrap();
    let b = claim(store, w2).await.unwrap();
    let task = store
        .report_task(
            a.task_id,
            a.lease_id,
            TaskReport::Fail {
                exit_code: Some(1),
                reason: "Build without OpenImageDenoiser".into(),
            },
            None,
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.exit_code, Some(1));
    assert_eq!(
        task.failure_reason.as_deref(),
        Some("Build without OpenImageDenoiser")
    );
    let failed = store.get_render(r.id).await.unwrap();
    assert_eq!(failed.status, RenderStatus::Failed);
    assert!(failed.finished_at.is_some());
    assert_eq!(
        (
            failed.progress.tasks_failed,
            failed.progress.tasks_running,
            failed.progress.tasks_canceled,
            failed.progress.tasks_pending
        ),
        (1, 1, 1, 0),
        "pending work is canceled, running work may finish"
    );
    complete(store, &b).await;
    assert_eq!(
        store.get_render(r.id).await.unwrap().status,
        RenderStatus::Failed
    );
}

pub async fn a_failure_with_a_retry_left_keeps_the_render_going(store: &dyn Store) {
    let r = store
        .create_render(plan_with("r", 1, 2, 1, Priority::Normal, t0(), |s| {
            s.max_retries = 1
        }))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.unwrap();
    report(
        store,
        &a,
        TaskReport::Fail {
            exit_code: Some(134),
            reason: "crash".into(),
        },
    )
    .await;
    let render = store.get_render(r.id).await.unwrap();
    assert_eq!(render.status, RenderStatus::Rendering);
    assert_eq!(
        (render.progress.tasks_failed, render.progress.tasks_pending),
        (1, 1)
    );
    let b = claim(store, w)
        .await
        .expect("the other chunk is still there");
    assert_ne!(
        b.task_id, a.task_id,
        "a failed task waits for the scheduler's retry"
    );
}

pub async fn progress_outside_the_task_is_rejected(store: &dyn Store) {
    store
        .create_render(plan("r", 1, 4, 4, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.unwrap();
    for bad in [-1, 5] {
        let err = store
            .report_task(
                a.task_id,
                a.lease_id,
                TaskReport::Progress { frames_done: bad },
                None,
                t0(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{bad}: {err:?}");
    }
    assert_eq!(store.get_task(a.task_id).await.unwrap().frames_done, 0);
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
    assert_eq!(store.get_worker(w).await.unwrap().last_heartbeat, later);
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
        .change_render(r.id, RenderCommand::Cancel, later)
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

pub async fn disabled_and_draining_workers_take_no_new_work(store: &dyn Store) {
    store
        .create_render(plan("r", 1, 3, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.unwrap();
    let drained = store
        .change_worker(w, WorkerAction::Drain, t0())
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
        .change_worker(w, WorkerAction::Disable, t0())
        .await
        .unwrap();
    assert_eq!(disabled.status, WorkerStatus::Disabled);
    let err = store.claim_next_task(w, t0()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("enable")),
        "{err:?}"
    );
    assert!(matches!(
        store.change_worker(w, WorkerAction::Drain, t0()).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .change_worker(w, WorkerAction::Enable, t0())
        .await
        .unwrap();
    assert!(claim(store, w).await.is_some());
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
        assert!(matches!(e, Err(StoreError::Conflict(_))), "{e:?}");
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
            .change_render(ids[i], RenderCommand::Cancel, at(when))
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
        Err(StoreError::Conflict(_))
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
        Err(StoreError::Conflict(_))
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

pub async fn listings_filter_and_paginate(store: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let priority = if i % 2 == 0 {
            Priority::High
        } else {
            Priority::Low
        };
        let r = store
            .create_render(plan(
                &format!("r{i}"),
                1,
                1,
                1,
                priority,
                t0() + Duration::seconds(i),
            ))
            .await
            .unwrap();
        ids.push(r.id);
    }
    store
        .change_render(ids[0], RenderCommand::Pause, t0())
        .await
        .unwrap();
    let all = store
        .list_renders(&RenderFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(all.total, 5);
    assert_eq!(
        all.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>(),
        "newest first"
    );
    let page = store
        .list_renders(
            &RenderFilter::default(),
            PageRequest {
                limit: 2,
                offset: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    assert_eq!((page.total, page.limit, page.offset), (5, 2, 2));
    let high = store
        .list_renders(
            &RenderFilter {
                priority: Some(Priority::High),
                status: None,
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(high.total, 3);
    let paused_high = store
        .list_renders(
            &RenderFilter {
                priority: Some(Priority::High),
                status: Some(RenderStatus::Paused),
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        paused_high.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let r = store
        // Urgent: the claims below take its tasks before the others'.
        .create_render(plan("many", 1, 10, 1, Priority::Urgent, t0()))
        .await
        .unwrap();
    let tasks = store
        .list_tasks(
            r.id,
            None,
            PageRequest {
                limit: 3,
                offset: 8,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        tasks
            .items
            .iter()
            .map(|t| t.frame_start)
            .collect::<Vec<_>>(),
        vec![9, 10]
    );
    assert_eq!(tasks.total, 10);
    // Two of its tasks claimed, one of those completed: filter by status.
    let w0 = worker(store, "w0", &[]).await;
    let first = claim(store, w0).await.unwrap();
    complete(store, &first).await;
    let second = claim(store, w0).await.unwrap();
    let frames_in = |status: TaskStatus, page: PageRequest| async move {
        let page = store.list_tasks(r.id, Some(status), page).await.unwrap();
        assert!(page.items.iter().all(|t| t.status == status), "{page:?}");
        (
            page.items.iter().map(|t| t.frame_start).collect::<Vec<_>>(),
            page.total,
        )
    };
    assert_eq!(
        frames_in(TaskStatus::Completed, PageRequest::default()).await,
        (vec![1], 1)
    );
    assert_eq!(
        frames_in(TaskStatus::Running, PageRequest::default()).await,
        (vec![2], 1)
    );
    assert_eq!(
        frames_in(
            TaskStatus::Pending,
            PageRequest {
                limit: 2,
                offset: 1
            }
        )
        .await,
        (vec![4, 5], 8),
        "pages count within the status"
    );
    assert_eq!(
        frames_in(TaskStatus::Failed, PageRequest::default()).await,
        (vec![], 0)
    );
    store
        .report_task(
            second.task_id,
            second.lease_id,
            TaskReport::Release,
            None,
            t0(),
        )
        .await
        .unwrap();
    let w1 = worker(store, "w1", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    let workers = store.list_workers().await.unwrap();
    assert_eq!(
        workers.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![w0, w1, w2],
        "workers in the order they registered"
    );
}

pub async fn task_logs_accumulate_in_order(store: &dyn Store) {
    store
        .create_render(plan("r", 1, 2, 2, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.unwrap();
    for (i, line) in ["Fra:1 Mem:10M | Rendering\n", "Saved: '/tmp/0001.png'\n"]
        .iter()
        .enumerate()
    {
        store
            .report_task(
                a.task_id,
                a.lease_id,
                TaskReport::Progress {
                    frames_done: i as i64,
                },
                Some(line.to_string()),
                t0(),
            )
            .await
            .unwrap();
    }
    store
        .report_task(
            a.task_id,
            a.lease_id,
            TaskReport::Complete,
            Some("Blender quit\n".into()),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.task_log(a.task_id).await.unwrap(),
        "Fra:1 Mem:10M | Rendering\nSaved: '/tmp/0001.png'\nBlender quit\n"
    );
}

pub async fn a_task_log_keeps_its_first_and_newest_output_within_its_bound(store: &dyn Store) {
    use crate::domain::{TASK_LOG_LIMIT, TASK_LOG_TRIMMED};
    store
        .create_render(plan("r", 1, 1, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let a = claim(store, w).await.unwrap();
    // Chunks of 256 KiB, each line naming its chunk: twice the bound in all.
    let chunk = |i: usize| {
        let line = format!("chunk {i:03} Fra:1 | Sample 7/128\n");
        line.repeat(256 * 1024 / line.len())
    };
    let chunks = (2 * TASK_LOG_LIMIT as usize) / chunk(0).len();
    for i in 0..chunks {
        store
            .report_task(
                a.task_id,
                a.lease_id,
                TaskReport::Progress { frames_done: 0 },
                Some(chunk(i)),
                t0(),
            )
            .await
            .unwrap();
    }
    let log = store.task_log(a.task_id).await.unwrap();
    assert!(
        log.len() as i64 <= TASK_LOG_LIMIT + 1024,
        "the log is kept within its bound: {} bytes",
        log.len()
    );
    assert!(
        log.len() as i64 >= TASK_LOG_TRIMMED - chunk(0).len() as i64,
        "only what the bound asks is dropped: {} bytes kept",
        log.len()
    );
    assert!(log.starts_with(&chunk(0)), "the first chunk stays");
    assert!(log.ends_with(&chunk(chunks - 1)), "the newest chunk stays");
    let marker = log
        .lines()
        .find(|l| l.starts_with("[renderfarm: "))
        .expect("a line says where chunks were dropped");
    let dropped: usize = marker
        .trim_start_matches("[renderfarm: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the marker counts the bytes dropped");
    // The marker is a line of its own, with a newline before it.
    let kept = log.len() - (marker.len() + 2);
    assert_eq!(
        dropped + kept,
        chunks * chunk(0).len(),
        "kept and dropped add up to what was sent"
    );
    // The kept chunks are whole and in order: the first, then the newest run.
    let mut names: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("chunk "))
        .map(|l| &l[6..9])
        .collect();
    names.dedup();
    let resumed: usize = names[1].parse().unwrap();
    let expected: Vec<String> = std::iter::once(0)
        .chain(resumed..chunks)
        .map(|i| format!("{i:03}"))
        .collect();
    assert_eq!(names, expected);
}

pub async fn unknown_ids_are_not_found(store: &dyn Store) {
    let id = Uuid::new_v4();
    let not_found =
        |r: Result<(), StoreError>| assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
    not_found(store.get_render(id).await.map(drop));
    not_found(
        store
            .list_tasks(id, None, PageRequest::default())
            .await
            .map(drop),
    );
    not_found(
        store
            .change_render(id, RenderCommand::Pause, t0())
            .await
            .map(drop),
    );
    not_found(store.get_task(id).await.map(drop));
    not_found(store.task_log(id).await.map(drop));
    not_found(store.get_worker(id).await.map(drop));
    not_found(
        store
            .change_worker(id, WorkerAction::Drain, t0())
            .await
            .map(drop),
    );
    not_found(store.claim_next_task(id, t0()).await.map(drop));
    not_found(
        store
            .report_task(id, id, TaskReport::Complete, None, t0())
            .await
            .map(drop),
    );
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

/// Counters kept up to date change by change must agree with a recount.
async fn assert_counters_exact(store: &dyn Store) {
    assert_eq!(
        store.roll_up_renders(t0()).await.unwrap(),
        0,
        "a recount found drifted counters"
    );
}

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
        store.get_worker(lost).await.unwrap().status,
        WorkerStatus::Offline
    );
    assert_eq!(
        store.get_worker(alive).await.unwrap().status,
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
    assert!(matches!(err, StoreError::Conflict(_)));
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
        store.get_worker(lost).await.unwrap().status,
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
        .change_worker(idle, WorkerAction::Drain, t0())
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

pub async fn the_history_tells_what_happened_to_a_task(store: &dyn Store) {
    store
        .create_render(plan_with("r", 1, 1, 1, Priority::Normal, t0(), |s| {
            s.max_retries = 2
        }))
        .await
        .unwrap();
    let w1 = worker(store, "w1", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    let a = claim(store, w1).await.unwrap();
    report(
        store,
        &a,
        TaskReport::Fail {
            exit_code: Some(3),
            reason: "x".into(),
        },
    )
    .await;
    store.retry_failed_tasks(t0()).await.unwrap();
    let b = claim(store, w2).await.unwrap();
    store
        .preempt_task(b.task_id, b.lease_id, t0())
        .await
        .unwrap();
    let c = claim(store, w1).await.unwrap();
    store
        .report_task(c.task_id, c.lease_id, TaskReport::Release, None, t0())
        .await
        .unwrap();
    let d = claim(store, w2).await.unwrap();
    complete(store, &d).await;
    let history = store.task_history(a.task_id).await.unwrap();
    let events: Vec<(HistoryEvent, Option<Uuid>)> =
        history.iter().map(|h| (h.event, h.worker_id)).collect();
    assert_eq!(
        events,
        vec![
            (HistoryEvent::Assigned, Some(w1)),
            (HistoryEvent::Failed, Some(w1)),
            (HistoryEvent::Retried, None),
            (HistoryEvent::Assigned, Some(w2)),
            (HistoryEvent::Preempted, Some(w2)),
            (HistoryEvent::Assigned, Some(w1)),
            (HistoryEvent::Released, Some(w1)),
            (HistoryEvent::Assigned, Some(w2)),
            (HistoryEvent::Completed, Some(w2)),
        ]
    );
    assert!(history.iter().all(|h| h.at == t0()));
    assert_eq!(history[1].detail.as_deref(), Some("exit code 3"));
    assert!(matches!(
        store.task_history(Uuid::new_v4()).await,
        Err(StoreError::NotFound { .. })
    ));
}
