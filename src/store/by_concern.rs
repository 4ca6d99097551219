//! Both backends implement [`Store`](super::Store) the same way: every
//! operation is the function of the same name in the file of its concern
//! (`renders.rs`, `tasks.rs`, `workers.rs`, `upkeep.rs`, `events.rs`, `frames.rs`, `webhooks.rs`), so the two folders
//! stay mirrors and an operation is found in the same place on both sides.

/// Implements `Store` for `$store`, invoked in the backend's `mod.rs`: each
/// operation calls `renders::`, `tasks::`, `workers::` or `upkeep::` there
/// (paths resolve where the macro is invoked); `backend` and `ping` are the
/// backend's own.
macro_rules! store_by_concern {
    ($store:ty, backend = $backend:literal, ping = $ping:path) => {
        const _: () = {
            use ::chrono::{DateTime, Utc};
            use ::renderfarm_wire::{
                Assignment, FarmEvent, Heartbeat, HeartbeatAction, LeaderLease, Page, Render, Task,
                TaskHistoryEntry, TaskStatus, Worker, WorkerAction,
            };
            use ::uuid::Uuid;
            use $crate::domain::{
                Allowances, EventBounds, NewRender, RenderCommand, RenderOrder, StoredToken,
                TaskReport, ValidWorkerHours, ValidWorkerSpec,
            };
            use $crate::store::{
                FarmCounts, LostWorkers, MovedTask, PageRequest, PreemptionInputs, RenderFilter,
                Retries, Store, StoreResult,
            };

            #[::async_trait::async_trait]
            impl Store for $store {
                fn backend(&self) -> &'static str {
                    $backend
                }

                async fn ping(&self) -> StoreResult<()> {
                    $ping(self).await
                }

                async fn create_render(&self, new: NewRender) -> StoreResult<Render> {
                    renders::create_render(self, new).await
                }

                async fn get_render(&self, id: Uuid) -> StoreResult<Render> {
                    renders::get_render(self, id).await
                }

                async fn dependency_states(
                    &self,
                    ids: &[Uuid],
                ) -> StoreResult<Vec<$crate::domain::DependencyState>> {
                    renders::dependency_states(self, ids).await
                }

                async fn list_renders(
                    &self,
                    filter: &RenderFilter,
                    order: RenderOrder,
                    page: PageRequest,
                ) -> StoreResult<Page<Render>> {
                    renders::list_renders(self, filter, order, page).await
                }

                async fn list_tasks(
                    &self,
                    render_id: Uuid,
                    status: Option<TaskStatus>,
                    page: PageRequest,
                ) -> StoreResult<Page<Task>> {
                    tasks::list_tasks(self, render_id, status, page).await
                }

                async fn finished_renders_before(
                    &self,
                    before: DateTime<Utc>,
                    limit: usize,
                ) -> StoreResult<Vec<Uuid>> {
                    upkeep::finished_renders_before(self, before, limit).await
                }

                async fn delete_render(&self, id: Uuid) -> StoreResult<()> {
                    renders::delete_render(self, id).await
                }

                async fn change_render(
                    &self,
                    id: Uuid,
                    command: RenderCommand,
                    actor: Option<&str>,
                    now: DateTime<Utc>,
                ) -> StoreResult<Render> {
                    renders::change_render(self, id, command, actor, now).await
                }

                async fn requeue_one_task(
                    &self,
                    id: Uuid,
                    actor: Option<&str>,
                    now: DateTime<Utc>,
                ) -> StoreResult<Task> {
                    tasks::requeue_one_task(self, id, actor, now).await
                }

                async fn get_task(&self, id: Uuid) -> StoreResult<Task> {
                    tasks::get_task(self, id).await
                }

                async fn task_log(&self, id: Uuid) -> StoreResult<String> {
                    tasks::task_log(self, id).await
                }

                async fn register_worker(
                    &self,
                    spec: ValidWorkerSpec,
                    now: DateTime<Utc>,
                ) -> StoreResult<Worker> {
                    workers::register_worker(self, spec, now).await
                }

                async fn get_worker(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<Worker> {
                    workers::get_worker(self, id, now).await
                }

                async fn list_workers(&self, now: DateTime<Utc>) -> StoreResult<Vec<Worker>> {
                    workers::list_workers(self, now).await
                }

                async fn set_worker_hours(
                    &self,
                    id: Uuid,
                    hours: ValidWorkerHours,
                    now: DateTime<Utc>,
                ) -> StoreResult<Worker> {
                    workers::set_worker_hours(self, id, hours, now).await
                }

                async fn set_operator_hours(
                    &self,
                    id: Uuid,
                    hours: Option<String>,
                    now: DateTime<Utc>,
                ) -> StoreResult<Worker> {
                    workers::set_operator_hours(self, id, hours, now).await
                }

                async fn change_worker(
                    &self,
                    id: Uuid,
                    action: WorkerAction,
                    actor: Option<&str>,
                    now: DateTime<Utc>,
                ) -> StoreResult<Worker> {
                    workers::change_worker(self, id, action, actor, now).await
                }

                async fn change_worker_itself(
                    &self,
                    id: Uuid,
                    action: WorkerAction,
                    now: DateTime<Utc>,
                ) -> StoreResult<Worker> {
                    workers::change_worker_itself(self, id, action, now).await
                }

                async fn heartbeat(
                    &self,
                    worker_id: Uuid,
                    beat: &Heartbeat,
                    now: DateTime<Utc>,
                ) -> StoreResult<HeartbeatAction> {
                    workers::heartbeat(self, worker_id, beat, now).await
                }

                async fn claim_next_task(
                    &self,
                    worker_id: Uuid,
                    now: DateTime<Utc>,
                ) -> StoreResult<Option<Assignment>> {
                    tasks::claim_next_task(self, worker_id, now).await
                }

                async fn report_task_as(
                    &self,
                    holder: Option<Uuid>,
                    task_id: Uuid,
                    lease_id: Uuid,
                    report: TaskReport,
                    log: Option<String>,
                    now: DateTime<Utc>,
                ) -> StoreResult<Task> {
                    tasks::report_task(self, holder, task_id, lease_id, report, log, now).await
                }

                async fn task_history(&self, task_id: Uuid) -> StoreResult<Vec<TaskHistoryEntry>> {
                    tasks::task_history(self, task_id).await
                }

                async fn requeue_lost_workers(
                    &self,
                    cutoff: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> StoreResult<LostWorkers> {
                    upkeep::requeue_lost_workers(self, cutoff, now).await
                }

                async fn retry_failed_tasks(&self, now: DateTime<Utc>) -> StoreResult<Retries> {
                    upkeep::retry_failed_tasks(self, now).await
                }

                async fn preemption_inputs(
                    &self,
                    allowances: &Allowances,
                    now: DateTime<Utc>,
                ) -> StoreResult<PreemptionInputs> {
                    upkeep::preemption_inputs(self, allowances, now).await
                }

                async fn preempt_task(
                    &self,
                    task_id: Uuid,
                    lease_id: Uuid,
                    now: DateTime<Utc>,
                ) -> StoreResult<Option<MovedTask>> {
                    upkeep::preempt_task(self, task_id, lease_id, now).await
                }

                async fn recount_tallies(&self, now: DateTime<Utc>) -> StoreResult<i64> {
                    upkeep::recount_tallies(self, now).await
                }

                async fn clear_abandoned_writes(&self, now: DateTime<Utc>) -> StoreResult<i64> {
                    upkeep::clear_abandoned_writes(self, now).await
                }

                async fn settle_waiting(&self, now: DateTime<Utc>) -> StoreResult<u64> {
                    upkeep::settle_waiting(self, now).await
                }

                async fn blocklist(
                    &self,
                    render: Uuid,
                ) -> StoreResult<Vec<$crate::store::StoredBlocklistEntry>> {
                    blocklist::blocklist(self, render).await
                }

                async fn clear_blocklist(
                    &self,
                    render: Uuid,
                    worker: Option<Uuid>,
                ) -> StoreResult<u64> {
                    blocklist::clear_blocklist(self, render, worker).await
                }

                async fn expire_blocklist(
                    &self,
                    blocked_before: DateTime<Utc>,
                ) -> StoreResult<u64> {
                    blocklist::expire_blocklist(self, blocked_before).await
                }

                async fn blocklist_starvation_inputs(
                    &self,
                ) -> StoreResult<(
                    Vec<$crate::domain::BlockedRender>,
                    Vec<$crate::domain::EligibleWorker>,
                )> {
                    blocklist::blocklist_starvation_inputs(self).await
                }

                async fn adaptive_renders(
                    &self,
                ) -> StoreResult<Vec<$crate::store::AdaptiveRender>> {
                    adaptive::adaptive_renders(self).await
                }

                async fn adapt_chunks(
                    &self,
                    render: Uuid,
                    frame_seconds: f64,
                    resplit_to: Option<$crate::domain::ChunkSize>,
                    now: DateTime<Utc>,
                ) -> StoreResult<Option<$crate::store::Resplit>> {
                    adaptive::adapt_chunks(self, render, frame_seconds, resplit_to, now).await
                }

                async fn finish_resplits(&self, now: DateTime<Utc>) -> StoreResult<u64> {
                    adaptive::finish_resplits(self, now).await
                }

                async fn list_path_variables(
                    &self,
                ) -> StoreResult<Vec<::renderfarm_wire::PathVariable>> {
                    path_variables::list_path_variables(self).await
                }

                async fn put_path_variable(
                    &self,
                    variable: ::renderfarm_wire::PathVariable,
                    now: DateTime<Utc>,
                ) -> StoreResult<bool> {
                    path_variables::put_path_variable(self, variable, now).await
                }

                async fn delete_path_variable(&self, name: &str) -> StoreResult<()> {
                    path_variables::delete_path_variable(self, name).await
                }

                async fn fail_render(
                    &self,
                    render: Uuid,
                    reason: String,
                    now: DateTime<Utc>,
                ) -> StoreResult<()> {
                    blocklist::fail_render(self, render, reason, now).await
                }

                async fn acquire_lease(
                    &self,
                    name: &str,
                    holder: &str,
                    ttl: chrono::Duration,
                    now: DateTime<Utc>,
                ) -> StoreResult<LeaderLease> {
                    upkeep::acquire_lease(self, name, holder, ttl, now).await
                }

                async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
                    upkeep::release_lease(self, name, holder).await
                }

                async fn current_lease(&self, name: &str) -> StoreResult<Option<LeaderLease>> {
                    upkeep::current_lease(self, name).await
                }

                async fn create_token(&self, token: StoredToken) -> StoreResult<StoredToken> {
                    tokens::create_token(self, token).await
                }

                async fn list_tokens(&self) -> StoreResult<Vec<StoredToken>> {
                    tokens::list_tokens(self).await
                }

                async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<StoredToken>> {
                    tokens::token_by_hash(self, hash).await
                }

                async fn revoke_token(
                    &self,
                    id: Uuid,
                    now: DateTime<Utc>,
                ) -> StoreResult<StoredToken> {
                    tokens::revoke_token(self, id, now).await
                }

                async fn revoke_worker_secrets(
                    &self,
                    worker_id: Uuid,
                    now: DateTime<Utc>,
                ) -> StoreResult<u64> {
                    tokens::revoke_worker_secrets(self, worker_id, now).await
                }

                async fn delete_worker(&self, id: Uuid) -> StoreResult<()> {
                    workers::delete_worker(self, id).await
                }

                async fn events_after(
                    &self,
                    after: i64,
                    render: Option<Uuid>,
                    limit: usize,
                ) -> StoreResult<Vec<FarmEvent>> {
                    events::events_after(self, after, render, limit).await
                }

                async fn event_ids_after(&self, after: i64, limit: usize) -> StoreResult<Vec<i64>> {
                    events::event_ids_after(self, after, limit).await
                }

                async fn event_bounds(&self) -> StoreResult<EventBounds> {
                    events::event_bounds(self).await
                }

                async fn record_coalesced_events(&self, now: DateTime<Utc>) -> StoreResult<u64> {
                    events::record_coalesced_events(self, now).await
                }

                async fn purge_events(&self, before: DateTime<Utc>, keep: i64) -> StoreResult<u64> {
                    events::purge_events(self, before, keep).await
                }

                async fn farm_counts(&self, since: DateTime<Utc>) -> StoreResult<FarmCounts> {
                    events::farm_counts(self, since).await
                }

                async fn create_webhook(
                    &self,
                    hook: $crate::domain::StoredWebhook,
                ) -> StoreResult<$crate::domain::StoredWebhook> {
                    webhooks::create_webhook(self, hook).await
                }

                async fn list_webhooks(&self) -> StoreResult<Vec<$crate::domain::StoredWebhook>> {
                    webhooks::list_webhooks(self).await
                }

                async fn get_webhook(
                    &self,
                    id: Uuid,
                ) -> StoreResult<$crate::domain::StoredWebhook> {
                    webhooks::get_webhook(self, id).await
                }

                async fn delete_webhook(&self, id: Uuid) -> StoreResult<()> {
                    webhooks::delete_webhook(self, id).await
                }

                async fn enable_webhook(
                    &self,
                    id: Uuid,
                ) -> StoreResult<$crate::domain::StoredWebhook> {
                    webhooks::enable_webhook(self, id).await
                }

                async fn webhook_delivery_counts(
                    &self,
                    id: Uuid,
                ) -> StoreResult<$crate::domain::DeliveryCounts> {
                    webhooks::webhook_delivery_counts(self, id).await
                }

                async fn webhook_cursor(&self) -> StoreResult<Option<i64>> {
                    webhooks::webhook_cursor(self).await
                }

                async fn queue_webhook_deliveries(
                    &self,
                    from: Option<i64>,
                    to: i64,
                    deliveries: Vec<$crate::domain::NewDelivery>,
                    now: DateTime<Utc>,
                ) -> StoreResult<bool> {
                    webhooks::queue_webhook_deliveries(self, from, to, deliveries, now).await
                }

                async fn due_webhook_deliveries(
                    &self,
                    now: DateTime<Utc>,
                    limit: usize,
                ) -> StoreResult<Vec<$crate::domain::DueDelivery>> {
                    webhooks::due_webhook_deliveries(self, now, limit).await
                }

                async fn record_webhook_attempt(
                    &self,
                    record: $crate::domain::AttemptRecord,
                ) -> StoreResult<bool> {
                    webhooks::record_webhook_attempt(self, record).await
                }

                async fn leased_task(
                    &self,
                    holder: Option<Uuid>,
                    task_id: Uuid,
                    lease_id: Uuid,
                ) -> StoreResult<Task> {
                    frames::leased_task(self, holder, task_id, lease_id).await
                }

                async fn record_frame(
                    &self,
                    holder: Option<Uuid>,
                    task_id: Uuid,
                    lease_id: Uuid,
                    frame: $crate::store::NewFrame,
                    now: DateTime<Utc>,
                ) -> StoreResult<$crate::store::StoredFrame> {
                    frames::record_frame(self, holder, task_id, lease_id, frame, now).await
                }

                async fn render_frames(
                    &self,
                    render_id: Uuid,
                    range: Option<(i64, i64)>,
                ) -> StoreResult<Vec<$crate::store::StoredFrame>> {
                    frames::render_frames(self, render_id, range).await
                }

                async fn record_preview(
                    &self,
                    holder: Option<Uuid>,
                    task_id: Uuid,
                    lease_id: Uuid,
                    frame: i64,
                    jpeg: Vec<u8>,
                    now: DateTime<Utc>,
                ) -> StoreResult<()> {
                    frames::record_preview(self, holder, task_id, lease_id, frame, jpeg, now).await
                }

                async fn preview(
                    &self,
                    render_id: Uuid,
                ) -> StoreResult<Option<$crate::domain::preview::StoredPreview>> {
                    frames::preview(self, render_id).await
                }

                async fn record_video(
                    &self,
                    holder: Option<Uuid>,
                    task_id: Uuid,
                    lease_id: Uuid,
                    file: renderfarm_wire::FileInfo,
                ) -> StoreResult<()> {
                    frames::record_video(self, holder, task_id, lease_id, file).await
                }

                async fn render_video(
                    &self,
                    render_id: Uuid,
                ) -> StoreResult<Option<renderfarm_wire::FileInfo>> {
                    frames::render_video(self, render_id).await
                }

                async fn referenced_files(
                    &self,
                ) -> StoreResult<::std::collections::BTreeSet<String>> {
                    frames::referenced_files(self).await
                }
            }
        };
    };
}

pub(crate) use store_by_concern;
