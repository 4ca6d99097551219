//! The filter, sort and update documents the store sends, checked without a server.

use bson::{doc, Bson};
use chrono::{DateTime, Utc};
use renderfarm_wire::Priority;
use renderfarm_wire::{Progress, RenderStatus, TaskStatus};

use super::super::rules::claim_sort;
use super::super::{counters::*, documents::*, renders::*, tasks::*, upkeep::*, workers::*, *};
use crate::domain::{WarmState, WarmTarget, WorkerMode};
use crate::store::RenderFilter;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

#[test]
fn the_claim_takes_pending_runnable_tasks_whose_tags_the_worker_has() {
    let tags = vec!["gpu".to_string(), "linux".to_string()];
    assert_eq!(
        claim_filter(&tags),
        doc! {
            "status": "pending",
            "runnable": true,
            "required_tags": { "$not": { "$elemMatch": { "$nin": ["gpu", "linux"] } } },
        }
    );
    let untagged = claim_filter(&[]);
    assert_eq!(
        untagged.get_document("required_tags").unwrap(),
        &doc! { "$not": { "$elemMatch": { "$nin": [] } } },
        "a worker without tags takes only renders that need none"
    );
}

#[test]
fn the_claim_sorts_by_priority_then_render_age_then_rank_then_frame() {
    let sort = claim_sort();
    assert_eq!(
        sort,
        doc! { "priority": -1, "render_seq": 1, "claim_rank": 1, "frame_start": 1 }
    );
    let keys: Vec<&str> = sort.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["priority", "render_seq", "claim_rank", "frame_start"],
        "order matters"
    );
}

#[test]
fn a_warm_claim_looks_in_one_render_at_the_head_s_priority_by_the_claim_index_s_prefix() {
    let target = WarmTarget {
        render: 7,
        priority: Priority::High,
    };
    let filter = warm_claim_filter(&["gpu".to_string()], &target);
    let mut want = claim_filter(&["gpu".to_string()]);
    want.insert("priority", 2_i64);
    want.insert("render_seq", 7_i64);
    assert_eq!(filter, want, "the claim's filter, narrowed");
    // Every key of the claim index but the last two is an equality of the
    // filter: the server reads the render's chunks in rank, then frame
    // order.
    let index = super::super::migrations::all()
        .unwrap()
        .into_iter()
        .flat_map(|m| m.collections)
        .flat_map(|c| c.indexes)
        .find(|i| i.name == CLAIM_INDEX)
        .unwrap();
    let keys: Vec<&str> = index.key.keys().map(String::as_str).collect();
    assert_eq!(keys[keys.len() - 2..], ["claim_rank", "frame_start"]);
    for key in &keys[..keys.len() - 2] {
        assert!(filter.contains_key(*key), "{key}");
    }
    assert_eq!(
        warm_update(&WarmState {
            last_render: Some(7),
            streak: 2
        }),
        doc! { "$set": { "last_render_seq": 7_i64, "warm_streak": 2_i64 } }
    );
}

#[test]
fn a_claim_sets_the_worker_and_a_fresh_lease() {
    let update = claim_update(TaskStatus::Running, "w1", "l1", t(5));
    assert_eq!(
        without_event(update),
        doc! { "$set": {
            "status": "running",
            "worker_id": "w1",
            "lease_id": "l1",
            "frames_done": 0_i64,
            "started_at": bson::DateTime::from_millis(1_800_000_005_000),
            "finished_at": Bson::Null,
        }, "$inc": { "history_seq": 1_i64 } }
    );
}

#[test]
fn reports_match_only_the_running_task_under_its_lease() {
    assert_eq!(
        lease_filter("t1", "l1"),
        doc! { "_id": "t1", "lease_id": "l1", "status": "running" }
    );
    assert_eq!(
        held_filter("w1"),
        doc! { "worker_id": "w1", "status": "running" }
    );
}

#[test]
fn the_lease_filter_matches_what_the_domain_s_lease_rule_accepts() {
    use crate::domain::{lease_accepts, TaskLease};
    let (lease, other) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
    let worker = Some(uuid::Uuid::from_u128(10));
    let filter = lease_filter("t1", &lease.to_string());
    for status in TaskStatus::ALL {
        for lease_id in [Some(lease), Some(other), None] {
            let task = TaskLease {
                status,
                lease_id,
                worker_id: worker,
            };
            let stored = doc! {
                "_id": "t1",
                "lease_id": lease_id.map(|l| l.to_string()),
                "status": status.as_str(),
            };
            // The filter is equalities only: it matches a document holding
            // every one of its values.
            let matched = filter.iter().all(|(k, v)| stored.get(k) == Some(v));
            assert_eq!(
                matched,
                lease_accepts(&task, lease, None).is_ok(),
                "{task:?}"
            );
        }
    }
}

#[test]
fn reports_with_log_text_take_a_log_sequence_number_and_count_its_bytes() {
    assert_eq!(
        progress_update(3, Some(120)),
        doc! { "$set": { "frames_done": 3_i64 }, "$inc": { "log_chunks": 1_i64, "log_bytes": 120_i64 } }
    );
    assert_eq!(
        progress_update(3, None),
        doc! { "$set": { "frames_done": 3_i64 } }
    );
    let fail = fail_update(
        TaskStatus::Failed,
        Some(1),
        "denoiser",
        t(0),
        None,
        "l1",
        Some("w1"),
    );
    assert_eq!(
        without_event(fail),
        doc! { "$set": {
            "status": "failed",
            "frames_done": 0_i64,
            "exit_code": 1_i64,
            "failure_reason": "denoiser",
            "finished_at": bson::DateTime::from_millis(1_800_000_000_000),
        }, "$inc": { "history_seq": 1_i64 } }
    );
    let no_code = fail_update(
        TaskStatus::Failed,
        None,
        "killed",
        t(0),
        Some(7),
        "l1",
        None,
    );
    assert_eq!(
        no_code.get_document("$set").unwrap().get("exit_code"),
        Some(&Bson::Null)
    );
    assert_eq!(
        without_event(requeue_update(
            TaskStatus::Pending,
            t(3),
            None,
            "l1",
            Some("w1")
        )),
        doc! { "$set": {
            "status": "pending",
            "worker_id": Bson::Null,
            "lease_id": Bson::Null,
            "frames_done": 0_i64,
            "queued_at": bson::DateTime::from_millis(1_800_000_003_000),
        }, "$inc": { "history_seq": 1_i64 } }
    );
    assert_eq!(
        without_event(complete_update(
            TaskStatus::Completed,
            5,
            t(9),
            Some(64),
            "l1",
            Some("w1")
        )),
        doc! { "$set": {
            "status": "completed",
            "frames_done": 5_i64,
            "finished_at": bson::DateTime::from_millis(1_800_000_009_000),
        }, "$inc": { "history_seq": 1_i64, "log_chunks": 1_i64, "log_bytes": 64_i64 } },
        "a report with log text takes both sequence numbers"
    );
}

#[test]
fn counters_move_with_the_task_and_bump_the_version() {
    assert_eq!(
        render_counter_inc(TaskStatus::Pending, TaskStatus::Running, 0, false),
        doc! { "$inc": { "tasks_pending": -1_i64, "tasks_running": 1_i64, "version": 1_i64 } }
    );
    assert_eq!(
        render_counter_inc(TaskStatus::Running, TaskStatus::Completed, 4, false),
        doc! { "$inc": {
            "tasks_running": -1_i64,
            "tasks_completed": 1_i64,
            "frames_done": 4_i64,
            "version": 1_i64,
        } }
    );
    assert_eq!(
        render_counter_inc(TaskStatus::Running, TaskStatus::Running, -2, false),
        doc! { "$inc": { "frames_done": -2_i64, "version": 1_i64 } },
        "progress moves frames only"
    );
    assert_eq!(
        render_counter_inc(TaskStatus::Running, TaskStatus::Failed, -3, true),
        doc! {
            "$inc": {
                "tasks_running": -1_i64,
                "tasks_failed": 1_i64,
                "frames_done": -3_i64,
                "version": 1_i64,
            },
            "$set": { "failed_for_good": true },
        }
    );
}

#[test]
fn bulk_moves_count_every_task_they_changed() {
    let cancel = add_progress(
        progress_delta(Some(TaskStatus::Pending), TaskStatus::Canceled, 3, 0),
        progress_delta(Some(TaskStatus::Running), TaskStatus::Canceled, 1, 0),
    );
    assert_eq!(
        progress_inc(&cancel),
        doc! {
            "tasks_pending": -3_i64,
            "tasks_running": -1_i64,
            "tasks_canceled": 4_i64,
            "version": 1_i64,
        }
    );
    assert_eq!(
        progress_inc(&progress_delta(
            Some(TaskStatus::Completed),
            TaskStatus::Pending,
            2,
            -10
        )),
        doc! {
            "tasks_pending": 2_i64,
            "tasks_completed": -2_i64,
            "frames_done": -10_i64,
            "version": 1_i64,
        }
    );
    assert_eq!(
        bulk_filter("r1", TaskStatus::Failed),
        doc! { "render_id": "r1", "status": "failed", "kind": { "$exists": false } }
    );
    let reset = bulk_update(TaskStatus::Pending, t(0), "c1");
    let set = reset.get_document("$set").unwrap();
    assert_eq!(set.get_str("status").unwrap(), "pending");
    assert_eq!(set.get_str("bulk_change").unwrap(), "c1");
    assert_eq!(
        reset.get_document("$inc").unwrap(),
        &doc! { "history_seq": 1_i64 }
    );
    for cleared in [
        "worker_id",
        "lease_id",
        "exit_code",
        "failure_reason",
        "started_at",
        "finished_at",
    ] {
        assert_eq!(set.get(cleared), Some(&Bson::Null), "{cleared}");
    }
    assert_eq!(set.get_i64("retries").unwrap(), 0);
    assert_eq!(
        bulk_update(TaskStatus::Canceled, t(1), "c2"),
        doc! {
            "$set": {
                "status": "canceled",
                "finished_at": bson::DateTime::from_millis(1_800_000_001_000),
                "bulk_change": "c2",
            },
            "$inc": { "history_seq": 1_i64 },
        }
    );
    assert_eq!(
        bulk_moved_filter("r1", "c2"),
        doc! { "render_id": "r1", "bulk_change": "c2" }
    );
    assert_eq!(
        frames_done_sum(bulk_filter("r1", TaskStatus::Completed)),
        vec![
            doc! { "$match": { "render_id": "r1", "status": "completed", "kind": { "$exists": false } } },
            doc! { "$group": { "_id": Bson::Null, "frames": { "$sum": "$frames_done" } } },
        ]
    );
}

#[test]
fn status_changes_are_compare_and_set_on_the_version() {
    assert_eq!(
        render_cas_filter("r1", 7),
        doc! { "_id": "r1", "version": 7_i64 }
    );
    let change = StatusChange {
        status: RenderStatus::Queued,
        started_at: None,
        finished_at: None,
        reset_failure: true,
    };
    assert_eq!(
        status_update(&change),
        doc! {
            "$set": {
                "status": "queued",
                "started_at": Bson::Null,
                "finished_at": Bson::Null,
                "failed_for_good": false,
                // Only a waiting render has a reason to wait, and only a
                // failed one a reason it failed.
                "waiting_reason": Bson::Null,
                "failure_reason": Bson::Null,
            },
            "$inc": { "version": 1_i64 },
        }
    );
}

#[test]
fn runnable_flags_follow_only_newer_render_versions() {
    assert_eq!(
        runnable_sync("r1", false, 4),
        (
            // Chunks only: a follow-up has its own flag (`follow_up_ready`),
            // and a chunk a re-split is replacing stays unclaimable.
            doc! { "render_id": "r1", "runnable_version": { "$lt": 4_i64 }, "kind": { "$exists": false }, "resplit": { "$exists": false } },
            doc! { "$set": { "runnable": false, "runnable_version": 4_i64 } },
        )
    );
}

#[test]
fn listings_filter_on_status_priority_rank_and_owner() {
    assert_eq!(render_list_filter(&RenderFilter::default()), doc! {});
    assert_eq!(
        render_list_filter(&RenderFilter {
            status: Some(RenderStatus::Paused),
            priority: Some(Priority::High),
            owner: Some("alice".into()),
            search: None,
        }),
        doc! { "status": "paused", "priority": 2_i64, "owner": "alice" }
    );
    assert_eq!(task_list_sort(), doc! { "frame_start": 1 });
}

#[test]
fn heartbeats_and_sequences_are_plain_updates() {
    assert_eq!(
        alive_update(t(0)),
        doc! { "$set": {
            "last_heartbeat": bson::DateTime::from_millis(1_800_000_000_000),
            "offline": false,
        } }
    );
    assert_eq!(next_seq_update(), doc! { "$inc": { "seq": 1_i64 } });
}

#[test]
fn a_retry_is_taken_once_and_counts_one_retry_more() {
    assert_eq!(
        retry_filter("t1", 0),
        doc! { "_id": "t1", "status": "failed", "retries": 0_i64 }
    );
    assert_eq!(
        retry_update(TaskStatus::Pending, t(2)),
        doc! {
            "$set": {
                "status": "pending",
                "worker_id": Bson::Null,
                "lease_id": Bson::Null,
                "frames_done": 0_i64,
                "started_at": Bson::Null,
                "finished_at": Bson::Null,
                "queued_at": bson::DateTime::from_millis(1_800_000_002_000),
            },
            "$inc": { "retries": 1_i64, "history_seq": 1_i64 },
        }
    );
}

#[test]
fn overdue_work_is_pending_runnable_work_past_its_level_cutoff() {
    assert_eq!(overdue_pipeline(&[]), None, "no level may be overdue");
    let pipeline = overdue_pipeline(&[(3, t(0)), (2, t(-120))]).unwrap();
    assert_eq!(
        pipeline,
        vec![
            doc! { "$match": {
                "status": "pending",
                "runnable": true,
                "$or": [
                    { "priority": 3_i64, "queued_at": { "$lte": bson::DateTime::from_millis(1_800_000_000_000) } },
                    { "priority": 2_i64, "queued_at": { "$lte": bson::DateTime::from_millis(1_799_999_880_000) } },
                ],
            } },
            doc! { "$group": {
                "_id": "$render_id",
                "priority": { "$first": "$priority" },
                "render_seq": { "$first": "$render_seq" },
                "tags": { "$first": "$required_tags" },
                "tasks": { "$sum": 1_i64 },
            } },
            doc! { "$sort": { "priority": -1, "render_seq": 1 } },
        ]
    );
}

#[test]
fn a_lost_worker_is_marked_once_and_only_while_silent() {
    assert_eq!(
        lost_worker_filter("w1", t(0)),
        doc! {
            "_id": "w1",
            "offline": false,
            "last_heartbeat": { "$lte": bson::DateTime::from_millis(1_800_000_000_000) },
        }
    );
}

#[test]
fn a_lease_is_taken_when_it_is_ours_or_lapsed() {
    assert_eq!(
        lease_take_filter("scheduler", "b1", t(0)),
        doc! {
            "_id": "scheduler",
            "$or": [
                { "holder": "b1" },
                { "expires_at": { "$lte": bson::DateTime::from_millis(1_800_000_000_000) } },
            ],
        }
    );
    assert_eq!(
        lease_take_update("b1", t(90)),
        doc! { "$set": {
            "holder": "b1",
            "expires_at": bson::DateTime::from_millis(1_800_000_090_000),
        } }
    );
}

#[test]
fn a_recount_groups_tasks_by_status_and_finds_stuck_failures() {
    assert_eq!(
        recount_pipeline("r1"),
        vec![
            doc! { "$match": { "render_id": "r1", "kind": { "$exists": false } } },
            doc! { "$group": {
                "_id": "$status",
                "tasks": { "$sum": 1_i64 },
                "frames": { "$sum": "$frames_done" },
            } },
        ]
    );
    assert_eq!(
        stuck_filter("r1"),
        doc! {
            "render_id": "r1",
            "status": "failed",
            "kind": { "$exists": false },
            "$expr": { "$gte": ["$retries", "$max_retries"] },
        }
    );
    let progress = Progress {
        tasks_total: 2,
        tasks_completed: 1,
        tasks_failed: 1,
        frames_total: 8,
        frames_done: 4,
        ..Progress::default()
    };
    let change = StatusChange {
        status: RenderStatus::Failed,
        started_at: Some(bson_time(t(0))),
        finished_at: Some(bson_time(t(5))),
        reset_failure: false,
    };
    let update = recount_update(&progress, true, &change);
    let set = update.get_document("$set").unwrap();
    assert_eq!(set.get_str("status").unwrap(), "failed");
    assert_eq!(set.get_i64("tasks_completed").unwrap(), 1);
    assert_eq!(set.get_i64("frames_done").unwrap(), 4);
    assert!(set.get_bool("failed_for_good").unwrap());
    assert!(set.get("frames_total").is_none(), "fixed at submission");
    assert_eq!(
        update.get_document("$inc").unwrap(),
        &doc! { "version": 1_i64 }
    );
}

#[test]
fn workers_change_by_compare_and_set_and_go_offline_once_silent() {
    assert_eq!(
        mode_cas_filter("w1", "active"),
        doc! { "_id": "w1", "mode": "active" }
    );
    assert_eq!(
        mode_update(WorkerMode::Disabled),
        doc! { "$set": { "mode": "disabled", "drained_by_itself": false } }
    );
    assert_eq!(
        silent_workers_filter(t(0)),
        doc! {
            "offline": false,
            "last_heartbeat": { "$lte": bson::DateTime::from_millis(1_800_000_000_000) },
        }
    );
    assert_eq!(
        without_event(offline_update(WorkerMode::Active, t(0))),
        doc! { "$set": { "offline": true, "seen_offline": true } }
    );
    assert_eq!(
        available_workers_filter(),
        doc! { "mode": "active", "offline": false }
    );
    assert_eq!(
        running_of_workers_filter(&["w1", "w2"]),
        doc! { "worker_id": { "$in": ["w1", "w2"] }, "status": "running" }
    );
}

#[test]
fn open_renders_are_the_unfinished_ones() {
    assert_eq!(
        open_renders_filter(None),
        doc! { "status": { "$in": ["waiting", "queued", "rendering", "paused"] } }
    );
    assert_eq!(
        open_renders_filter(Some(vec!["r1"])),
        doc! {
            "status": { "$in": ["waiting", "queued", "rendering", "paused"] },
            "_id": { "$in": ["r1"] },
        }
    );
    assert_eq!(
        status_filter(TaskStatus::Failed),
        doc! { "status": "failed" }
    );
    assert_eq!(
        lease_release_filter("scheduler", "b1"),
        doc! { "_id": "scheduler", "holder": "b1" }
    );
}

/// The update without its event (one outbox entry and its marker, and the
/// frames done the event tells), which must be there.
fn without_event(mut update: Document) -> Document {
    let set = update.get_document_mut("$set").unwrap();
    let keys: Vec<String> = set
        .keys()
        .filter(|k| k.starts_with("events."))
        .cloned()
        .collect();
    assert_eq!(keys.len(), 1, "one event in {set}");
    for key in keys {
        set.remove(&key);
    }
    assert_eq!(set.remove("has_events"), Some(Bson::Boolean(true)));
    set.remove("seen_frames_done");
    update
}
