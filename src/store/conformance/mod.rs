//! The behaviour every [`Store`] backend must show, as plain async functions
//! that take a fresh, empty store. Each backend has one test per function
//! (see [`conformance_tests!`](crate::conformance_tests)); the functions panic
//! on the first broken promise.
//!
//! A test tool, not part of the public API: it exists only in the crate's own
//! tests and under the `conformance` feature, which the integration tests turn
//! on through the crate's dev-dependency on itself. A build without it, such
//! as the release binary, has no such module.

mod adaptive;
mod availability;
mod blocklist;
mod claims;
mod dependencies;
mod events;
mod files;
mod leases;
mod listings;
mod operators;
mod path_variables;
mod reports;
mod tokens;
mod upkeep;
mod videos;
mod webhooks;

use chrono::{DateTime, Utc};
use renderfarm_wire::{Priority, RenderSpec, WorkerSpec};
use uuid::Uuid;

use super::Store;
use crate::domain::TaskReport;
use crate::domain::{validate_worker_spec, NewRender, ValidRenderSpec};

pub use adaptive::*;
pub use availability::*;
pub use blocklist::*;
pub use claims::*;
pub use dependencies::*;
pub use events::*;
pub use files::*;
pub use leases::*;
pub use listings::*;
pub use operators::*;
pub use path_variables::*;
pub use reports::*;
pub use tokens::*;
pub use upkeep::*;
pub use videos::*;
pub use webhooks::*;

/// Every conformance function by name, for the per-backend test macro.
///
/// `$make_store` is an async function taking the test's name (so a backend's
/// harness can skip what its test server cannot show) and returning
/// `Option<harness>` with a `store` field; `None` skips the test.
#[macro_export]
macro_rules! conformance_tests {
    ($make_store:path) => {
        $crate::conformance_tests!(@each $make_store;
            creating_a_render_stores_it_with_all_its_tasks,
            an_auto_render_is_re_split_to_its_measured_frame_time_with_every_frame_once,
            a_task_claimed_during_a_re_split_is_never_duplicated,
            a_re_split_leaves_previews_and_handed_out_tasks_alone,
            a_worker_failing_a_render_is_blocklisted_until_cleared_or_expired,
            a_render_every_able_worker_is_blocked_from_fails_with_a_reason,
            a_render_waits_for_its_dependencies_and_starts_when_the_last_completes,
            a_failed_dependency_blocks_until_it_is_requeued_and_completes,
            an_operator_releases_or_cancels_a_waiting_render_and_a_deleted_dependency_blocks,
            a_render_s_video_is_queued_when_its_frames_complete_and_runs_outside_its_tally,
            a_failed_video_is_retried_never_fails_its_render_and_can_be_requeued,
            a_render_without_a_video_gets_no_follow_up,
            a_render_marked_complete_with_frames_missing_gets_no_video,
            claims_follow_priority_then_age_then_frame,
            a_preview_first_render_hands_out_its_previews_first,
            paused_and_canceled_renders_are_never_claimed,
            only_workers_with_the_required_tags_claim,
            a_worker_holding_a_task_gets_the_same_assignment_again,
            a_warm_worker_prefers_its_render_at_equal_priority_never_over_a_higher,
            an_older_render_of_equal_priority_waits_at_most_the_warm_streak_limit,
            every_claim_mints_a_new_lease,
            a_stale_lease_changes_nothing,
            every_report_answers_the_task_as_stored,
            tokens_are_kept_by_hash_listed_in_order_and_revoked_once,
            a_released_task_is_queued_again_without_a_failure,
            the_first_claim_starts_and_the_last_completion_completes_the_render,
            a_failure_with_no_retry_left_fails_the_render,
            a_failure_with_a_retry_left_keeps_the_render_going,
            progress_outside_the_task_is_rejected,
            heartbeats_answer_abort_once_the_task_is_taken_away,
            disabled_and_draining_workers_take_no_new_work,
            a_worker_takes_work_only_in_its_hours_and_a_strict_one_hands_it_back,
            a_worker_resumes_from_its_own_drain_never_from_an_operator_s,
            operator_commands_change_renders_and_their_tasks,
            operator_actions_in_a_task_history_name_who_did_them,
            only_a_finished_render_is_deleted_and_it_goes_whole,
            finished_renders_are_found_by_when_they_ended,
            listings_filter_and_paginate,
            renders_keep_who_submitted_them_and_list_by_owner,
            listings_search_and_sort_as_the_domain_says,
            an_operator_requeues_one_task_by_the_domain_s_rule,
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
            the_event_log_tells_every_change_once_in_order,
            the_farm_summary_counts_renders_queue_and_recent_frames,
            webhooks_are_kept_with_their_secret_listed_in_order_and_deleted_whole,
            webhook_deliveries_are_queued_once_each_as_the_cursor_moves,
            webhook_attempts_apply_once_and_a_receiver_failing_too_long_is_disabled,
            an_uploaded_blend_travels_with_its_render_and_assignments,
            uploaded_frames_are_recorded_under_the_lease_and_go_with_their_render,
            the_last_preview_sent_is_the_renders_and_goes_with_it,
            path_variables_are_kept_by_name_replaced_whole_and_deleted,
            a_worker_keeps_the_platform_it_registered_with,
            a_render_stored_with_variables_is_handed_out_in_that_form,
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

/// A render plan for tests: frames `start..=end` in chunks of `chunk`,
/// submitted without credentials (no owner).
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

/// As [`plan`], submitted by `owner`.
pub fn plan_by(
    owner: &str,
    name: &str,
    start: i64,
    end: i64,
    chunk: i64,
    priority: Priority,
    now: DateTime<Utc>,
) -> NewRender {
    let mut new = plan(name, start, end, chunk, priority, now);
    new.render.owner = Some(owner.to_string());
    new
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
        blend_sha256: None,
        upload_frames: None,
        frame_start: start,
        frame_end: end,
        chunk_size: chunk.into(),
        target_chunk_seconds: None,
        frame_order: Default::default(),
        blocklist_after: None,
        priority,
        max_retries: 1,
        output: None,
        engine: None,
        tags: vec![],
        video: None,
        depends_on: vec![],
    };
    adjust(&mut spec);
    let valid = ValidRenderSpec::try_from(spec).expect("a valid test render");
    NewRender::plan(
        valid,
        Uuid::new_v4(),
        None,
        |id| format!("/tmp/renders/{id}/frame_####"),
        now,
    )
}

/// Registers a worker named `name` with `tags`; its id.
pub async fn worker(store: &dyn Store, name: &str, tags: &[&str]) -> Uuid {
    let spec = validate_worker_spec(WorkerSpec {
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        kinds: vec![renderfarm_wire::TaskKind::Blender],
        time_zone: None,
        available: None,
        strict_hours: false,
        platform: Default::default(),
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

/// Counters kept up to date change by change must agree with a recount.
async fn assert_counters_exact(store: &dyn Store) {
    assert_eq!(
        store.recount_tallies(t0()).await.unwrap(),
        0,
        "a recount found drifted counters"
    );
}
