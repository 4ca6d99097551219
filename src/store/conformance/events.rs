//! The event log: which events each operation records, in which order, and
//! how a reader resumes. Status events become visible on MongoDB only once
//! `record_coalesced_events` drained them (every broker calls it once a
//! second), so each step here calls it before it reads.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use renderfarm_wire::{
    EventKind, FarmEvent, Heartbeat, Priority, QueueDepth, RenderCounts, TaskStatus, WorkerAction,
};
use uuid::Uuid;

use super::*;
use crate::domain::{resume_from, EventBounds, RenderCommand, Resume, TaskReport};

/// Follows a store's event log as a reader does, naming ids as the test
/// named them.
struct Reader<'a> {
    store: &'a dyn Store,
    names: HashMap<Uuid, String>,
    after: i64,
}

impl<'a> Reader<'a> {
    fn new(store: &'a dyn Store) -> Self {
        Self {
            store,
            names: HashMap::new(),
            after: 0,
        }
    }

    fn name(&mut self, id: Uuid, name: &str) {
        self.names.insert(id, name.to_string());
    }

    fn label(&self, id: Option<Uuid>) -> String {
        id.map_or_else(
            || "-".into(),
            |id| {
                self.names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| id.to_string())
            },
        )
    }

    /// One event as a line: its kind, what it names and what it says.
    fn describe(&self, e: &FarmEvent) -> String {
        let status = e.status.clone().unwrap_or_default();
        match e.kind {
            EventKind::Render => {
                let p = e.progress.expect("a render event carries progress");
                format!(
                    "render {} {status} pending={} running={} completed={} failed={} canceled={} frames={}",
                    self.label(e.render_id),
                    p.tasks_pending,
                    p.tasks_running,
                    p.tasks_completed,
                    p.tasks_failed,
                    p.tasks_canceled,
                    p.frames_done
                )
            }
            EventKind::Task => format!(
                "task {} of {} by {} {status} frames={}",
                self.label(e.task_id),
                self.label(e.render_id),
                self.label(e.worker_id),
                e.frames_done.expect("a task event carries frames done")
            ),
            EventKind::Progress => format!(
                "progress {} of {} by {} frames={}",
                self.label(e.task_id),
                self.label(e.render_id),
                self.label(e.worker_id),
                e.frames_done.expect("a progress event carries frames done")
            ),
            EventKind::Log => format!(
                "log {} of {} bytes={}",
                self.label(e.task_id),
                self.label(e.render_id),
                e.log_bytes.expect("a log event carries its bytes")
            ),
            EventKind::Worker => format!("worker {} {status}", self.label(e.worker_id)),
            EventKind::RenderDeleted => format!("render_deleted {}", self.label(e.render_id)),
            EventKind::WorkerDeleted => format!("worker_deleted {}", self.label(e.worker_id)),
            EventKind::Reset => "reset".into(),
        }
    }

    /// Records the coalesced events (and drains what waits), then reads
    /// every event since the last step: they must be exactly `expected`,
    /// in order, with strictly increasing ids.
    async fn step(&mut self, what: &str, now: DateTime<Utc>, expected: &[&str]) {
        self.store
            .record_coalesced_events(now)
            .await
            .unwrap_or_else(|e| panic!("{what}: recording events: {e}"));
        let events = self
            .store
            .events_after(self.after, None, 1000)
            .await
            .unwrap_or_else(|e| panic!("{what}: reading events: {e}"));
        let mut last = self.after;
        for e in &events {
            assert!(e.id > last, "{what}: id {} after {last}", e.id);
            last = e.id;
        }
        self.after = last;
        let got: Vec<String> = events.iter().map(|e| self.describe(e)).collect();
        assert_eq!(got, expected, "{what}: the events recorded");
        // Nothing changed since: a second round records nothing.
        assert_eq!(
            self.store.record_coalesced_events(now).await.unwrap(),
            0,
            "{what}: a second round with nothing changed"
        );
        assert!(
            self.store
                .events_after(self.after, None, 10)
                .await
                .unwrap()
                .is_empty(),
            "{what}: nothing more"
        );
    }
}

fn beat(task: Option<&renderfarm_wire::Assignment>) -> Heartbeat {
    Heartbeat {
        task_id: task.map(|a| a.task_id),
        lease_id: task.map(|a| a.lease_id),
        frames_done: None,
    }
}

pub async fn the_event_log_tells_every_change_once_in_order(store: &dyn Store) {
    let t = |s: i64| t0() + Duration::seconds(s);
    assert_eq!(
        store.event_bounds().await.unwrap(),
        EventBounds {
            oldest: None,
            newest: 0
        },
        "a new store has no event"
    );
    let mut log = Reader::new(store);

    let a = store
        .create_render(plan("a", 1, 20, 10, Priority::Normal, t0()))
        .await
        .unwrap();
    log.name(a.id, "A");
    let w1 = worker(store, "w1", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    log.name(w1, "w1");
    log.name(w2, "w2");
    log.step(
        "submit and register",
        t(1),
        &[
            "render A queued pending=2 running=0 completed=0 failed=0 canceled=0 frames=0",
            "worker w1 idle",
            "worker w2 idle",
        ],
    )
    .await;

    let a1 = claim(store, w1).await.expect("a task");
    log.name(a1.task_id, "A1");
    log.step(
        "the first claim",
        t(2),
        &[
            "task A1 of A by w1 running frames=0",
            "render A rendering pending=1 running=1 completed=0 failed=0 canceled=0 frames=0",
        ],
    )
    .await;

    store
        .report_task(
            a1.task_id,
            a1.lease_id,
            TaskReport::Progress { frames_done: 4 },
            Some("Fra:4\n".into()),
            t(3),
        )
        .await
        .unwrap();
    log.step(
        "progress with a log line",
        t(3),
        &[
            "progress A1 of A by w1 frames=4",
            "log A1 of A bytes=6",
            "render A rendering pending=1 running=1 completed=0 failed=0 canceled=0 frames=4",
        ],
    )
    .await;

    complete(store, &a1).await;
    log.step(
        "a completion",
        t(4),
        &[
            "task A1 of A by w1 completed frames=10",
            "render A rendering pending=1 running=0 completed=1 failed=0 canceled=0 frames=10",
        ],
    )
    .await;

    let a2 = claim(store, w2).await.expect("a task");
    log.name(a2.task_id, "A2");
    report(
        store,
        &a2,
        TaskReport::Fail {
            exit_code: Some(1),
            reason: "exit 1".into(),
        },
    )
    .await;
    log.step(
        "a claim and a failure within one round: both kept",
        t(5),
        &[
            "task A2 of A by w2 running frames=0",
            "task A2 of A by w2 failed frames=0",
            "render A rendering pending=0 running=0 completed=1 failed=1 canceled=0 frames=10",
        ],
    )
    .await;

    store.retry_failed_tasks(t(6)).await.unwrap();
    log.step(
        "a retry (no worker involved: the render tells it)",
        t(6),
        &["render A rendering pending=1 running=0 completed=1 failed=0 canceled=0 frames=10"],
    )
    .await;

    let a2 = claim(store, w1).await.expect("the retry");
    report(store, &a2, TaskReport::Release).await;
    log.step(
        "a release",
        t(7),
        &[
            "task A2 of A by w1 running frames=0",
            "task A2 of A by w1 pending frames=0",
        ],
    )
    .await;

    for command in [RenderCommand::Pause, RenderCommand::Resume] {
        store
            .change_render(a.id, command, Some("op"), t(8))
            .await
            .unwrap();
    }
    log.step(
        "pause and resume",
        t(8),
        &[
            "render A paused pending=1 running=0 completed=1 failed=0 canceled=0 frames=10",
            "render A rendering pending=1 running=0 completed=1 failed=0 canceled=0 frames=10",
        ],
    )
    .await;

    claim(store, w1).await.expect("a task");
    store
        .change_render(a.id, RenderCommand::Cancel, Some("op"), t(9))
        .await
        .unwrap();
    log.step(
        "a cancel takes the running task",
        t(9),
        &[
            "task A2 of A by w1 running frames=0",
            "task A2 of A by w1 canceled frames=0",
            "render A canceled pending=0 running=0 completed=1 failed=0 canceled=1 frames=10",
        ],
    )
    .await;

    store
        .change_render(a.id, RenderCommand::Requeue, Some("op"), t(10))
        .await
        .unwrap();
    log.step(
        "a requeue",
        t(10),
        &["render A queued pending=1 running=0 completed=1 failed=0 canceled=0 frames=10"],
    )
    .await;

    claim(store, w2).await.expect("a task");
    store
        .change_worker(w2, WorkerAction::Drain, Some("op"), t(11))
        .await
        .unwrap();
    store
        .change_worker(w2, WorkerAction::Disable, Some("op"), t(11))
        .await
        .unwrap();
    store.delete_worker(w2).await.unwrap();
    log.step(
        "a worker drained, disabled and removed",
        t(11),
        &[
            "task A2 of A by w2 running frames=0",
            "render A rendering pending=0 running=1 completed=1 failed=0 canceled=0 frames=10",
            "worker w2 draining",
            "worker w2 disabled",
            "task A2 of A by w2 pending frames=0",
            "worker_deleted w2",
            "render A rendering pending=1 running=0 completed=1 failed=0 canceled=0 frames=10",
        ],
    )
    .await;

    claim(store, w1).await.expect("a task");
    store.requeue_lost_workers(t(20), t(30)).await.unwrap();
    log.step(
        "a lost worker",
        t(30),
        &[
            "task A2 of A by w1 running frames=0",
            "worker w1 offline",
            "task A2 of A by w1 pending frames=0",
        ],
    )
    .await;

    store.heartbeat(w1, &beat(None), t(31)).await.unwrap();
    log.step("a lost worker comes back", t(31), &["worker w1 idle"])
        .await;

    let a2 = store
        .claim_next_task(w1, t(32))
        .await
        .unwrap()
        .expect("a task");
    store
        .preempt_task(a2.task_id, a2.lease_id, t(32))
        .await
        .unwrap()
        .expect("preempted");
    log.step(
        "a preemption",
        t(32),
        &[
            "task A2 of A by w1 running frames=0",
            "task A2 of A by w1 pending frames=0",
        ],
    )
    .await;

    let a2 = store
        .claim_next_task(w1, t(33))
        .await
        .unwrap()
        .expect("a task");
    store
        .report_task(a2.task_id, a2.lease_id, TaskReport::Complete, None, t(33))
        .await
        .unwrap();
    store.delete_render(a.id).await.unwrap();
    log.step(
        "the last completion, then a delete",
        t(33),
        &[
            "task A2 of A by w1 running frames=0",
            "task A2 of A by w1 completed frames=10",
            "render A completed pending=0 running=0 completed=2 failed=0 canceled=0 frames=20",
            "render_deleted A",
        ],
    )
    .await;

    let b = store
        .create_render(plan("b", 1, 20, 10, Priority::Normal, t(40)))
        .await
        .unwrap();
    log.name(b.id, "B");
    for round in 0..2 {
        let b1 = store
            .claim_next_task(w1, t(41))
            .await
            .unwrap()
            .expect("a task");
        log.name(b1.task_id, "B1");
        store
            .report_task(
                b1.task_id,
                b1.lease_id,
                TaskReport::Fail {
                    exit_code: Some(1),
                    reason: "no denoiser".into(),
                },
                None,
                t(41),
            )
            .await
            .unwrap();
        if round == 0 {
            store.retry_failed_tasks(t(41)).await.unwrap();
        }
    }
    log.step(
        "a failure with no retry left fails the render and cancels its pending work",
        t(41),
        &[
            "render B queued pending=2 running=0 completed=0 failed=0 canceled=0 frames=0",
            "task B1 of B by w1 running frames=0",
            "render B rendering pending=1 running=1 completed=0 failed=0 canceled=0 frames=0",
            "task B1 of B by w1 failed frames=0",
            "task B1 of B by w1 running frames=0",
            "task B1 of B by w1 failed frames=0",
            "render B failed pending=0 running=0 completed=0 failed=1 canceled=1 frames=0",
        ],
    )
    .await;

    // A render's own events, and no other's.
    let all = store.events_after(0, None, 1000).await.unwrap();
    let of_b = store.events_after(0, Some(b.id), 1000).await.unwrap();
    let expected: Vec<&FarmEvent> = all.iter().filter(|e| e.render_id == Some(b.id)).collect();
    assert_eq!(of_b.iter().collect::<Vec<_>>(), expected, "B's events");
    assert_eq!(of_b.len(), 7);
    let some = store.events_after(of_b[2].id, Some(b.id), 2).await.unwrap();
    assert_eq!(some, of_b[3..5].to_vec(), "after an id, at most the limit");
    // The ids alone, as the broker's reader finds how far the log is whole.
    let ids: Vec<i64> = all.iter().map(|e| e.id).collect();
    assert_eq!(store.event_ids_after(0, 1000).await.unwrap(), ids);
    assert_eq!(
        store.event_ids_after(ids[2], 3).await.unwrap(),
        ids[3..6].to_vec(),
        "ids after an id, at most the limit"
    );

    // Bounds, purging and where readers resume.
    let newest = all.last().unwrap().id;
    assert_eq!(
        store.event_bounds().await.unwrap(),
        EventBounds {
            oldest: Some(all[0].id),
            newest
        }
    );
    let long_ago = DateTime::from_timestamp(0, 0).unwrap();
    assert_eq!(
        store.purge_events(long_ago, 1_000_000).await.unwrap(),
        0,
        "nothing is old enough or too many"
    );
    let far_ahead = t0() + Duration::days(365 * 100);
    let purged = store.purge_events(far_ahead, 3).await.unwrap();
    assert_eq!(purged as usize, all.len() - 3, "all but the newest 3 go");
    let bounds = store.event_bounds().await.unwrap();
    assert_eq!(
        bounds,
        EventBounds {
            oldest: Some(all[all.len() - 3].id),
            newest
        }
    );
    assert_eq!(
        resume_from(all[all.len() - 4].id, bounds),
        Resume::After(all[all.len() - 4].id),
        "a reader that saw everything up to the oldest kept goes on"
    );
    assert!(matches!(
        resume_from(all[all.len() - 5].id, bounds),
        Resume::Reset { newest: n, .. } if n == newest
    ));
    assert!(matches!(
        resume_from(newest + 1, bounds),
        Resume::Reset { .. }
    ));
    assert_eq!(store.purge_events(far_ahead, 0).await.unwrap(), 3);
    assert_eq!(
        store.event_bounds().await.unwrap(),
        EventBounds {
            oldest: None,
            newest
        },
        "the newest id handed out stays known when every event is gone"
    );
    assert_eq!(
        resume_from(newest, store.event_bounds().await.unwrap()),
        Resume::After(newest)
    );

    // Ids keep rising after a purge.
    store
        .change_worker(w1, WorkerAction::Drain, None, t(50))
        .await
        .unwrap();
    log.step("after a purge", t(50), &["worker w1 draining"])
        .await;
    assert!(log.after > newest);
}

pub async fn the_farm_summary_counts_renders_queue_and_recent_frames(store: &dyn Store) {
    let t = |s: i64| t0() + Duration::seconds(s);
    let normal = store
        .create_render(plan("normal", 1, 30, 10, Priority::Normal, t0()))
        .await
        .unwrap();
    let high = store
        .create_render(plan("high", 1, 20, 10, Priority::High, t0()))
        .await
        .unwrap();
    store
        .create_render(plan("urgent", 1, 5, 5, Priority::Urgent, t0()))
        .await
        .unwrap();
    store
        .change_render(high.id, RenderCommand::Pause, None, t0())
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    // The urgent render's only task, then one of the normal one.
    let urgent = store.claim_next_task(w, t(10)).await.unwrap().unwrap();
    store
        .report_task(
            urgent.task_id,
            urgent.lease_id,
            TaskReport::Complete,
            None,
            t(10),
        )
        .await
        .unwrap();
    let first = store.claim_next_task(w, t(20)).await.unwrap().unwrap();
    assert_eq!(first.render_id, normal.id);
    store
        .report_task(
            first.task_id,
            first.lease_id,
            TaskReport::Complete,
            None,
            t(20),
        )
        .await
        .unwrap();
    store.claim_next_task(w, t(30)).await.unwrap().unwrap();

    let counts = store.farm_counts(t(15)).await.unwrap();
    assert_eq!(
        counts.renders,
        RenderCounts {
            waiting: 0,
            queued: 0,
            rendering: 1,
            paused: 1,
            completed: 1,
            failed: 0,
            canceled: 0
        }
    );
    assert_eq!(
        counts.queue,
        QueueDepth {
            low: 0,
            normal: 1,
            high: 0,
            urgent: 0
        },
        "pending tasks of renders that may run"
    );
    assert_eq!(
        counts.frames_since, 10,
        "the normal render's completed chunk"
    );
    assert_eq!(store.farm_counts(t(0)).await.unwrap().frames_since, 15);
    assert_eq!(store.farm_counts(t(21)).await.unwrap().frames_since, 0);
    assert_eq!(
        counts
            .tasks
            .iter()
            .copied()
            .collect::<std::collections::HashSet<_>>(),
        std::collections::HashSet::from([
            (Priority::Normal, TaskStatus::Pending, 1),
            (Priority::Normal, TaskStatus::Running, 1),
            (Priority::Normal, TaskStatus::Completed, 1),
            (Priority::High, TaskStatus::Pending, 2),
            (Priority::Urgent, TaskStatus::Completed, 1),
        ]),
        "every render's tasks by priority and status, paused ones too"
    );
    assert_eq!(
        counts.runnable,
        vec![(vec![], renderfarm_wire::TaskKind::Blender, 1)],
        "pending work of renders that may run, by the tags it needs"
    );

    // Work that needs tags is grouped by them, in whatever order given.
    for (name, tags) in [("gpu-a", ["gpu", "linux"]), ("gpu-b", ["linux", "gpu"])] {
        let mut new = plan(name, 1, 2, 1, Priority::Low, t0());
        new.render.tags = tags.iter().map(|t| t.to_string()).collect();
        store.create_render(new).await.unwrap();
    }
    let mut runnable = store.farm_counts(t(15)).await.unwrap().runnable;
    runnable.sort();
    let blender = renderfarm_wire::TaskKind::Blender;
    assert_eq!(
        runnable,
        vec![
            (vec![], blender, 1),
            (vec!["gpu".to_string(), "linux".to_string()], blender, 4)
        ]
    );
}
