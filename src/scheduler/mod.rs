//! The periodic tick that keeps a farm honest: it requeues the work of lost
//! workers, retries failed tasks (then fails them), preempts low-priority work
//! for work that waited past its allowance, re-splits the pending chunks of
//! renders with adaptive chunking, and recounts the renders' tallies.
//!
//! Every decision comes from `crate::domain`; "now" comes from the injected
//! clock, so tests advance time and call [`Scheduler::tick`] instead of
//! sleeping. When several brokers share a store, only the holder of the
//! `scheduler` lease runs the periodic tick.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use renderfarm_wire::{SchedulerStatus, TickReport};
use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler};
use tracing::Instrument;

use crate::clock::Clock;
use crate::domain::{plan_preemption, Allowances};
use crate::files::Files;
use crate::store::{Store, StoreError, StoreResult};

/// The name of the lease that says which broker runs the tick.
pub const LEADER_LEASE: &str = "scheduler";

/// How the scheduler behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerSettings {
    /// Time between two ticks.
    pub tick: Duration,
    /// A worker silent for this long is lost.
    pub worker_timeout: chrono::Duration,
    pub allowances: Allowances,
    /// Run the tick on its own every `tick`; off where ticks are driven by
    /// hand (tests, `POST /scheduler/run`).
    pub periodic: bool,
    /// Delete finished renders this long after they ended; `None` keeps them.
    pub keep_finished: Option<chrono::Duration>,
    /// Failed chunks of one render on one worker before that worker is
    /// blocklisted from it, for renders that do not say
    /// (`--blocklist-after`).
    pub blocklist_after: i64,
    /// How long a block lasts (`--blocklist-expiry`); `None`: until an
    /// operator clears it.
    pub blocklist_expiry: Option<chrono::Duration>,
}

/// Finished renders deleted per tick at most, so one tick never holds the
/// store for long; the rest go in the next ticks.
const PURGE_BATCH: usize = 100;

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(30),
            worker_timeout: chrono::Duration::seconds(60),
            allowances: Allowances::default(),
            periodic: true,
            keep_finished: None,
            blocklist_after: crate::domain::DEFAULT_BLOCKLIST_AFTER,
            blocklist_expiry: Some(chrono::Duration::hours(2)),
        }
    }
}

impl SchedulerSettings {
    /// How long a leader's lease lasts: three ticks, so a leader that misses
    /// two ticks keeps its place and one that died is replaced soon after.
    fn lease_ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.tick * 3).unwrap_or(chrono::Duration::seconds(90))
    }
}

#[derive(Debug, Default)]
struct State {
    last_report: Option<TickReport>,
    next_tick_at: Option<DateTime<Utc>>,
    is_leader: bool,
}

/// The scheduler of one broker instance.
pub struct Scheduler {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: SchedulerSettings,
    instance: String,
    work_available: Arc<Notify>,
    state: Mutex<State>,
    /// One tick at a time, periodic or by hand.
    running: tokio::sync::Mutex<()>,
    cron: tokio::sync::Mutex<Option<JobScheduler>>,
    /// The file storage whose unreferenced files each tick collects; set
    /// once at start ([`Scheduler::collect_files_of`]).
    files: std::sync::OnceLock<Arc<Files>>,
}

impl Scheduler {
    /// `work_available` is woken when a tick puts work back in the queue.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: SchedulerSettings,
        work_available: Arc<Notify>,
    ) -> Arc<Self> {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let short = uuid::Uuid::new_v4().simple().to_string();
        Arc::new(Self {
            store,
            clock,
            settings,
            instance: format!("{host}-{}-{}", std::process::id(), &short[..8]),
            work_available,
            state: Mutex::new(State::default()),
            running: tokio::sync::Mutex::new(()),
            cron: tokio::sync::Mutex::new(None),
            files: std::sync::OnceLock::new(),
        })
    }

    /// Has every tick collect the files of `files` no render refers to.
    pub fn collect_files_of(&self, files: Arc<Files>) {
        let _ = self.files.set(files);
    }

    /// This broker instance's name in the leader lease.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn settings(&self) -> &SchedulerSettings {
        &self.settings
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs every step once, now, whoever leads: the operator's "run it now".
    pub async fn tick(&self) -> StoreResult<TickReport> {
        let _one_at_a_time = self.running.lock().await;
        let started = std::time::Instant::now();
        let report = self
            .tick_steps()
            .instrument(tracing::info_span!("scheduler.tick"))
            .await;
        let metrics = crate::metrics::replica();
        match &report {
            Ok(r) => metrics.tick(
                started.elapsed(),
                &[
                    ("requeued", r.requeued),
                    ("retried", r.retried),
                    ("failed", r.failed),
                    ("preempted", r.preempted),
                    ("purged", r.purged),
                    ("workers_lost", r.workers_lost),
                    ("resplit", r.resplit),
                ],
            ),
            Err(e) => {
                metrics.tick(started.elapsed(), &[]);
                metrics.store_error(e);
            }
        }
        report
    }

    async fn tick_steps(&self) -> StoreResult<TickReport> {
        let now = self.clock.now();
        let mut report = TickReport {
            ran_at: Some(now),
            ..TickReport::default()
        };

        let lost = self
            .store
            .requeue_lost_workers(now - self.settings.worker_timeout, now)
            .instrument(tracing::info_span!("scheduler.requeue_lost_workers"))
            .await?;
        for worker_id in &lost.workers {
            tracing::warn!(worker_id = %worker_id, timeout = ?self.settings.worker_timeout, "worker lost: no sign of life");
        }
        for m in &lost.requeued {
            tracing::info!(task_id = %m.task_id, render_id = %m.render_id, worker_id = ?m.worker_id, "requeued the task of a lost worker");
        }
        report.workers_lost = lost.workers.len() as i64;
        report.requeued = lost.requeued.len() as i64;

        let retries = self
            .store
            .retry_failed_tasks(now)
            .instrument(tracing::info_span!("scheduler.retry_failed_tasks"))
            .await?;
        for m in &retries.retried {
            tracing::info!(task_id = %m.task_id, render_id = %m.render_id, "retrying a failed task");
        }
        for m in &retries.failed {
            tracing::warn!(task_id = %m.task_id, render_id = %m.render_id, "task failed with no retry left; render failed");
        }
        report.retried = retries.retried.len() as i64;
        report.failed = retries.failed.len() as i64;

        let preempting = tracing::info_span!("scheduler.preempt");
        let inputs = self
            .store
            .preemption_inputs(&self.settings.allowances, now)
            .instrument(preempting.clone())
            .await?;
        let plan = plan_preemption(&inputs.overdue, &inputs.running, &inputs.idle_worker_tags);
        for (task_id, lease_id) in plan.preempt {
            let preempted = self
                .store
                .preempt_task(task_id, lease_id, now)
                .instrument(preempting.clone())
                .await?;
            if let Some(m) = preempted {
                tracing::info!(parent: &preempting, task_id = %m.task_id, render_id = %m.render_id, worker_id = ?m.worker_id, lease_id = %lease_id, "preempted for more urgent work");
                report.preempted += 1;
            }
        }
        report.workers_wanted = plan.workers_wanted;
        if plan.workers_wanted > 0 {
            tracing::info!(
                workers_wanted = plan.workers_wanted,
                "work waits past its allowance and no worker can take it"
            );
        }

        report.resplit = self
            .adapt_chunks(now)
            .instrument(tracing::info_span!("scheduler.adapt_chunks"))
            .await?;

        let corrected = self
            .store
            .recount_tallies(now)
            .instrument(tracing::info_span!("scheduler.recount_tallies"))
            .await?;
        if corrected > 0 {
            tracing::warn!(
                renders = corrected,
                "render counters corrected by the recount"
            );
        }
        self.store.clear_abandoned_writes(now).await?;
        if let Some(expiry) = self.settings.blocklist_expiry {
            let lifted = self.store.expire_blocklist(now - expiry).await?;
            if lifted > 0 {
                tracing::info!(entries = lifted, "blocklist entries expired");
            }
        }
        let (blocked, workers) = self.store.blocklist_starvation_inputs().await?;
        for (render, reason) in crate::domain::starved_renders(&blocked, &workers) {
            self.store.fail_render(render, reason, now).await?;
            report.failed += 1;
        }
        let released = self
            .store
            .settle_waiting(now)
            .instrument(tracing::info_span!("scheduler.settle_waiting"))
            .await?;
        if released > 0 {
            tracing::warn!(
                renders = released,
                "waiting renders released by the scheduler: their dependencies had completed"
            );
        }
        let events = self
            .store
            .purge_events(crate::domain::event_cutoff(now), crate::domain::EVENTS_KEPT)
            .instrument(tracing::info_span!("scheduler.purge_events"))
            .await?;
        if events > 0 {
            tracing::debug!(events, "old events purged");
        }

        if let Some(keep) = self.settings.keep_finished {
            report.purged = self
                .purge_finished(now - keep)
                .instrument(tracing::info_span!("scheduler.purge_finished"))
                .await?;
        }

        if let Some(files) = self.files.get() {
            // The files are not the store: a storage that cannot be
            // reached now leaves its garbage for the next tick, and the
            // tick's other work stands.
            match files.collect(self.store.as_ref(), now).await {
                Ok(collected) => {
                    report.files_collected = (collected.files + collected.partials) as i64
                }
                Err(e) => {
                    tracing::warn!(error = %e, "collecting unreferenced files failed; the next tick tries again")
                }
            }
        }

        if report.requeued + report.retried + report.preempted > 0 {
            self.work_available.notify_waiters();
        }
        self.state().last_report = Some(report.clone());
        Ok(report)
    }

    /// Adaptive chunking (`domain::adaptive`): finishes the re-splits a
    /// broker left half-done, then measures each auto render and re-splits
    /// its pending chunks where the rule says; how many renders were
    /// re-split. Before the recount, which must not see a re-split midway.
    async fn adapt_chunks(&self, now: DateTime<Utc>) -> StoreResult<i64> {
        let mut resplit = self.store.finish_resplits(now).await? as i64;
        for render in self.store.adaptive_renders().await? {
            let Some(adaptation) = crate::domain::adapt(
                render.target_seconds,
                render.chunk_size,
                render.measured_frame_seconds.is_some(),
                &render.completed,
            ) else {
                continue;
            };
            let unchanged = render.measured_frame_seconds == Some(adaptation.frame_seconds);
            if unchanged && adaptation.resplit_to.is_none() {
                continue;
            }
            let done = self
                .store
                .adapt_chunks(
                    render.render_id,
                    adaptation.frame_seconds,
                    adaptation.resplit_to,
                    now,
                )
                .await;
            match done {
                Ok(Some(r)) => {
                    tracing::info!(render_id = %render.render_id, frame_seconds = adaptation.frame_seconds, replaced = r.replaced, created = r.created, "re-split pending chunks");
                    resplit += 1;
                }
                Ok(None) => {}
                // Deleted since it was read.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(resplit)
    }

    /// Retention: deletes up to [`PURGE_BATCH`] renders that finished before
    /// `cutoff`; how many went. One that changed meanwhile (requeued, say)
    /// is left alone.
    async fn purge_finished(&self, cutoff: DateTime<Utc>) -> StoreResult<i64> {
        let mut purged = 0;
        for render_id in self
            .store
            .finished_renders_before(cutoff, PURGE_BATCH)
            .await?
        {
            match self.store.delete_render(render_id).await {
                Ok(()) => {
                    tracing::info!(render_id = %render_id, %cutoff, "deleted a render finished before the retention");
                    purged += 1;
                }
                Err(e) if e.is_conflict() || matches!(e, StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(purged)
    }

    /// The periodic tick: take or renew the leader lease; run the steps only
    /// when this broker leads.
    pub async fn scheduled_tick(&self) {
        let now = self.clock.now();
        let lease = self
            .store
            .acquire_lease(LEADER_LEASE, &self.instance, self.settings.lease_ttl(), now)
            .await;
        let leads = match lease {
            Ok(lease) => lease.holder == self.instance,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the store to take the scheduler lease");
                crate::metrics::replica().store_error(&e);
                false
            }
        };
        {
            let mut state = self.state();
            if leads != state.is_leader {
                tracing::info!(instance = %self.instance, leads, "scheduler leadership changed");
            }
            state.is_leader = leads;
            state.next_tick_at = chrono::Duration::from_std(self.settings.tick)
                .ok()
                .map(|t| now + t);
        }
        if leads {
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "scheduler tick failed; the next one will try again");
            }
        }
    }

    /// Whether this broker led the scheduler at its last election.
    pub fn is_leader(&self) -> bool {
        self.state().is_leader
    }

    /// What `GET /scheduler` shows.
    pub async fn status(&self) -> StoreResult<SchedulerStatus> {
        let leader = self.store.current_lease(LEADER_LEASE).await?;
        let now = self.clock.now();
        let state = self.state();
        let is_leader = leader
            .as_ref()
            .is_some_and(|l| l.holder == self.instance && l.expires_at > now);
        Ok(SchedulerStatus {
            instance: self.instance.clone(),
            leader,
            is_leader,
            last_report: state.last_report.clone(),
            next_tick_at: state.next_tick_at,
            tick_seconds: self.settings.tick.as_secs_f64(),
            worker_timeout_seconds: self.settings.worker_timeout.num_milliseconds() as f64 / 1000.0,
            allowances: self.settings.allowances.to_wire(),
            keep_finished_seconds: self
                .settings
                .keep_finished
                .map(|d| d.num_milliseconds() as f64 / 1000.0),
        })
    }

    /// Starts the periodic tick (if the settings ask for it), with a first
    /// election right away.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        if !self.settings.periodic {
            return Ok(());
        }
        let cron = JobScheduler::new().await?;
        let me = Arc::clone(self);
        let job = Job::new_repeated_async(self.settings.tick, move |_id, _locked| {
            let me = Arc::clone(&me);
            Box::pin(async move { me.scheduled_tick().await })
        })?;
        cron.add(job).await?;
        cron.start().await?;
        *self.cron.lock().await = Some(cron);
        let me = Arc::clone(self);
        tokio::spawn(async move { me.scheduled_tick().await });
        Ok(())
    }

    /// Stops the periodic tick and gives up the lease so another broker
    /// takes over at its next tick.
    pub async fn stop(&self) {
        if let Some(mut cron) = self.cron.lock().await.take() {
            if let Err(e) = cron.shutdown().await {
                tracing::warn!(error = %e, "stopping the scheduler's timer");
            }
        }
        if let Err(e) = self.store.release_lease(LEADER_LEASE, &self.instance).await {
            tracing::warn!(error = %e, "could not give up the scheduler lease; it lapses on its own");
        }
        self.state().is_leader = false;
    }
}
