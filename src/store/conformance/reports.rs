//! What a worker's reports under its lease do to the task and its render.

use chrono::Duration;
use renderfarm_wire::HistoryEvent;
use renderfarm_wire::{Priority, RenderStatus, TaskStatus, WorkerStatus};
use uuid::Uuid;

use super::{claim, complete, plan, plan_with, report, t0, worker};
use crate::domain::TaskReport;
use crate::store::{Store, StoreError};

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
        store
            .get_worker(w1, chrono::Utc::now())
            .await
            .unwrap()
            .status,
        WorkerStatus::Idle
    );
    let err = store
        .report_task(a.task_id, a.lease_id, TaskReport::Complete, None, t0())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::StaleLease { .. }),
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
        store
            .get_worker(w, chrono::Utc::now())
            .await
            .unwrap()
            .status,
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
    assert!(
        history.iter().all(|h| h.actor.is_none()),
        "workers and the scheduler are no one's actions: {history:?}"
    );
    assert_eq!(history[1].detail.as_deref(), Some("exit code 3"));
    assert!(matches!(
        store.task_history(Uuid::new_v4()).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// What a report answers is the task as stored afterwards, for every kind of
/// report (a backend may build its answer without reading the task back).
pub async fn every_report_answers_the_task_as_stored(store: &dyn Store) {
    store
        .create_render(plan("answers", 1, 40, 10, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "answering", &[]).await;
    let later = t0() + Duration::seconds(5);
    let reports = [
        TaskReport::Progress { frames_done: 3 },
        TaskReport::Complete,
        TaskReport::Fail {
            exit_code: Some(2),
            reason: "Blender exited with 2".into(),
        },
        TaskReport::Release,
    ];
    for kind in reports {
        let a = claim(store, w).await.expect("a task to report on");
        let answered = store
            .report_task(
                a.task_id,
                a.lease_id,
                kind.clone(),
                Some("log\n".into()),
                later,
            )
            .await
            .unwrap();
        let stored = store.get_task(a.task_id).await.unwrap();
        assert_eq!(
            answered, stored,
            "the answer to {kind:?} is the stored task"
        );
        if matches!(kind, TaskReport::Progress { .. }) {
            // Leave the worker free for the next claim.
            complete(store, &a).await;
        }
    }
}
