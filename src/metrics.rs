//! Prometheus metrics, in the text exposition format at `/metrics`.
//!
//! Two kinds, so that a `sum()` over replicas is right:
//! - what one broker replica does (HTTP requests, claim and report latency,
//!   long polls waiting, scheduler ticks, store errors) is counted in this
//!   process and always exported;
//! - what describes the whole farm (tasks, renders and workers by status,
//!   queue depth, workers wanted) is read from the store at scrape time and
//!   exported only by the replica that leads the scheduler; the others leave
//!   those families out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use renderfarm_wire::{Priority, RenderStatus, TaskKind, TaskStatus, WorkerStatus};

use crate::domain::workers_wanted;
use crate::store::{FarmCounts, StoreError};

/// The content type of [`encode`]'s text (what Prometheus asks for first).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`to_prometheus_text`]'s (for other readers, and
/// `promtool check metrics`).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReportLabels {
    report: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms to ~16 s: a claim takes well under a millisecond on SQLite,
    // a scheduler tick on a big farm seconds.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// What one broker replica counts.
pub struct ReplicaMetrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    claim_duration: Histogram,
    report_duration: Family<ReportLabels, Histogram, fn() -> Histogram>,
    long_polls_waiting: Gauge,
    scheduler_leader: Gauge,
    tick_duration: Histogram,
    tick_actions: Family<ActionLabels, Counter>,
    store_errors: Family<KindLabels, Counter>,
    webhook_deliveries: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// What a webhook delivery attempt led to, as the `outcome` label names it.
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "retrying", "given_up"];

/// The scheduler tick's outcomes, as the `action` label names them.
pub const TICK_ACTIONS: [&str; 7] = [
    "requeued",
    "retried",
    "failed",
    "preempted",
    "purged",
    "workers_lost",
    "resplit",
];

impl ReplicaMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("renderfarm");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered by this replica, by method, route template and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                seconds_histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer's head, by method and route template (a long poll's wait included)",
            http_duration.clone(),
        );
        let claim_duration = seconds_histogram();
        registry.register(
            "claim_duration_seconds",
            "Time the store took to hand out a task (or find none), without a long poll's wait",
            claim_duration.clone(),
        );
        let report_duration =
            Family::<ReportLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                seconds_histogram,
            );
        registry.register(
            "report_duration_seconds",
            "Time the store took to record a worker's report, by report (progress, complete, fail)",
            report_duration.clone(),
        );
        let long_polls_waiting = Gauge::default();
        registry.register(
            "long_polls_waiting",
            "Workers' requests for work waiting on this replica now",
            long_polls_waiting.clone(),
        );
        let scheduler_leader = Gauge::default();
        registry.register(
            "scheduler_leader",
            "1 on the replica that leads the scheduler (and exports the farm's gauges), else 0",
            scheduler_leader.clone(),
        );
        let tick_duration = seconds_histogram();
        registry.register(
            "scheduler_tick_duration_seconds",
            "Time one scheduler tick took on this replica",
            tick_duration.clone(),
        );
        let tick_actions = Family::<ActionLabels, Counter>::default();
        for action in TICK_ACTIONS {
            // Present from the start, so a rate over them is 0, not absent.
            let _ = tick_actions.get_or_create(&ActionLabels { action });
        }
        registry.register(
            "scheduler_actions",
            "What the scheduler's ticks on this replica did, by action",
            tick_actions.clone(),
        );
        let store_errors = Family::<KindLabels, Counter>::default();
        for kind in STORE_ERROR_KINDS {
            let _ = store_errors.get_or_create(&KindLabels { kind });
        }
        registry.register(
            "store_errors",
            "Store calls of this replica that failed, by kind (unavailable: the store could not be reached)",
            store_errors.clone(),
        );
        let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
        for outcome in WEBHOOK_OUTCOMES {
            let _ = webhook_deliveries.get_or_create(&OutcomeLabels { outcome });
        }
        registry.register(
            "webhook_delivery_attempts",
            "Webhook delivery attempts this replica made, by what they led to (delivered; failed and retrying later; failed and given up)",
            webhook_deliveries.clone(),
        );
        Self {
            registry,
            webhook_deliveries,
            http_requests,
            http_duration,
            claim_duration,
            report_duration,
            long_polls_waiting,
            scheduler_leader,
            tick_duration,
            tick_actions,
            store_errors,
        }
    }

    /// One answered request; `route` is the matched route's template (never
    /// the raw path, whose ids would make a series per render).
    pub fn request(&self, method: &'static str, route: &'static str, status: u16, took: Duration) {
        if !enabled() {
            return;
        }
        self.http_requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels { method, route })
            .observe(took.as_secs_f64());
    }

    pub fn claim(&self, took: Duration) {
        if !enabled() {
            return;
        }
        self.claim_duration.observe(took.as_secs_f64());
    }

    /// `report`: progress, complete or fail.
    pub fn report(&self, report: &'static str, took: Duration) {
        if !enabled() {
            return;
        }
        self.report_duration
            .get_or_create(&ReportLabels { report })
            .observe(took.as_secs_f64());
    }

    pub fn tick(&self, took: Duration, actions: &[(&'static str, i64)]) {
        if !enabled() {
            return;
        }
        self.tick_duration.observe(took.as_secs_f64());
        for (action, n) in actions {
            if *n > 0 {
                self.tick_actions
                    .get_or_create(&ActionLabels { action })
                    .inc_by(*n as u64);
            }
        }
    }

    pub fn store_error(&self, error: &StoreError) {
        if !enabled() {
            return;
        }
        self.store_errors
            .get_or_create(&KindLabels {
                kind: store_error_kind(error),
            })
            .inc();
    }

    /// One webhook delivery attempt; `outcome` is one of [`WEBHOOK_OUTCOMES`].
    pub fn webhook_attempt(&self, outcome: &'static str) {
        if !enabled() {
            return;
        }
        self.webhook_deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn set_long_polls_waiting(&self, n: usize) {
        self.long_polls_waiting.set(n as i64);
    }

    pub fn set_leader(&self, leads: bool) {
        self.scheduler_leader.set(i64::from(leads));
    }
}

/// The kinds of [`StoreError`] as the `kind` label names them.
pub const STORE_ERROR_KINDS: [&str; 9] = [
    "not_found",
    "stale_lease",
    "not_your_task",
    "illegal_transition",
    "worker_unavailable",
    "already_exists",
    "invalid",
    "unavailable",
    "unexpected",
];

fn store_error_kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::NotFound { .. } => "not_found",
        StoreError::StaleLease { .. } => "stale_lease",
        StoreError::NotYourTask { .. } => "not_your_task",
        StoreError::IllegalTransition(_) => "illegal_transition",
        StoreError::WorkerUnavailable(_) => "worker_unavailable",
        StoreError::AlreadyExists => "already_exists",
        StoreError::Invalid(_) => "invalid",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Unexpected(_) => "unexpected",
    }
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// `serve --metrics off`: the hot paths stop counting, `/metrics` answers
/// 404. On by default.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// This process's replica metrics: a replica is a process, so one set.
pub fn replica() -> &'static ReplicaMetrics {
    static METRICS: LazyLock<ReplicaMetrics> = LazyLock::new(ReplicaMetrics::new);
    &METRICS
}

/// The whole farm as the store and the workers' list show it, for the
/// leader's export.
pub struct FarmView {
    pub counts: FarmCounts,
    pub workers: Vec<FarmWorker>,
}

/// One worker as the farm's gauges count it.
pub struct FarmWorker {
    pub status: WorkerStatus,
    pub tags: Vec<String>,
    /// The task kinds it runs.
    pub kinds: Vec<TaskKind>,
    /// Inside its hours (or it has none): an idle worker outside them
    /// takes no task, so it covers no work an autoscaler would start a
    /// worker for.
    pub takes_new_work: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    status: &'static str,
    priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    status: &'static str,
    tags: String,
}

/// Tags as a label: sorted and comma-joined, empty for none.
fn pool_label(tags: &[String]) -> String {
    let mut tags = tags.to_vec();
    tags.sort();
    tags.join(",")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabels {
    priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WantedLabels {
    /// The tags a worker needs, sorted and joined with commas; empty for
    /// work any worker takes.
    tags: String,
    kind: &'static str,
}

/// The farm's gauges: every label value present (0 where nothing is), so a
/// dashboard's series do not come and go.
fn farm_registry(view: &FarmView) -> Registry {
    let mut registry = Registry::with_prefix("renderfarm");
    let tasks = Family::<TaskLabels, Gauge>::default();
    for priority in Priority::ALL {
        for status in TaskStatus::ALL {
            let n = view
                .counts
                .tasks
                .iter()
                .find(|(p, s, _)| *p == priority && *s == status)
                .map_or(0, |(_, _, n)| *n);
            tasks
                .get_or_create(&TaskLabels {
                    status: status.as_str(),
                    priority: priority.as_str(),
                })
                .set(n);
        }
    }
    registry.register(
        "tasks",
        "Tasks of every render by status and the render's priority (exported by the scheduler's leader only)",
        tasks,
    );
    let queue = Family::<PriorityLabels, Gauge>::default();
    let depth = &view.counts.queue;
    for (priority, n) in [
        (Priority::Low, depth.low),
        (Priority::Normal, depth.normal),
        (Priority::High, depth.high),
        (Priority::Urgent, depth.urgent),
    ] {
        queue
            .get_or_create(&PriorityLabels {
                priority: priority.as_str(),
            })
            .set(n);
    }
    registry.register(
        "queue_depth",
        "Pending tasks of renders that may run (not paused), by priority (leader only)",
        queue,
    );
    let renders = Family::<StatusLabels, Gauge>::default();
    for status in RenderStatus::ALL {
        let n = view.counts.renders.of(status);
        renders
            .get_or_create(&StatusLabels {
                status: status.as_str(),
            })
            .set(n);
    }
    registry.register("renders", "Renders by status (leader only)", renders);
    // By tags too, so that each worker pool (a GPU pool's workers carry
    // `gpu`) sizes itself on its own busy workers. Every status of the
    // plain group is always there, the others for the tags workers have.
    let workers = Family::<WorkerLabels, Gauge>::default();
    let mut pools: Vec<String> = vec![String::new()];
    pools.extend(view.workers.iter().map(|w| pool_label(&w.tags)));
    pools.sort();
    pools.dedup();
    for tags in pools {
        for status in WORKER_STATUSES {
            let n = view
                .workers
                .iter()
                .filter(|w| w.status == status && pool_label(&w.tags) == tags)
                .count();
            workers
                .get_or_create(&WorkerLabels {
                    status: status.as_str(),
                    tags: tags.clone(),
                })
                .set(n as i64);
        }
    }
    registry.register(
        "workers",
        "Workers by status and by their tags (sorted, comma-joined; empty for none) (leader only)",
        workers,
    );
    let idle: Vec<(Vec<String>, Vec<TaskKind>)> = view
        .workers
        .iter()
        .filter(|w| w.status == WorkerStatus::Idle && w.takes_new_work)
        .map(|w| (w.tags.clone(), w.kinds.clone()))
        .collect();
    let wanted = Family::<WantedLabels, Gauge>::default();
    // Each group of runnable work has its series, 0 when idle workers cover
    // it; the plain group of each kind is always there, so an autoscaler's
    // query never finds nothing.
    let mut groups: Vec<(Vec<String>, TaskKind)> =
        TaskKind::ALL.iter().map(|k| (Vec::new(), *k)).collect();
    groups.extend(view.counts.runnable.iter().map(|(t, k, _)| (t.clone(), *k)));
    groups.sort();
    groups.dedup();
    let needed = workers_wanted(&view.counts.runnable, &idle);
    for (tags, kind) in groups {
        let n = needed
            .iter()
            .find(|(t, k, _)| *t == tags && *k == kind)
            .map_or(0, |(_, _, n)| *n);
        wanted
            .get_or_create(&WantedLabels {
                tags: tags.join(","),
                kind: kind.as_str(),
            })
            .set(n);
    }
    registry.register(
        "workers_wanted",
        "More workers that could start work right now: runnable tasks no idle worker can take, by the tags and task kind a worker needs (leader only; what an autoscaler scales on)",
        wanted,
    );
    registry
}

const WORKER_STATUSES: [WorkerStatus; 5] = [
    WorkerStatus::Idle,
    WorkerStatus::Busy,
    WorkerStatus::Draining,
    WorkerStatus::Offline,
    WorkerStatus::Disabled,
];

/// The exposition: the replica's metrics, and the farm's when `farm` is
/// given (this replica leads).
pub fn encode(farm: Option<&FarmView>) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    encode_registry(&mut text, &replica().registry)?;
    if let Some(view) = farm {
        encode_registry(&mut text, &farm_registry(view))?;
    }
    encode_eof(&mut text)?;
    Ok(text)
}

/// The same exposition in Prometheus's older text format, for clients that
/// do not ask for OpenMetrics: there a counter's `# HELP`/`# TYPE` name its
/// samples' `_total` name, and there is no `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => text.push_str(&line),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_older_text_format_names_counters_by_their_samples() {
        let open =
            "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"b\"} 1\n\
                    # HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"b\"} 1\n\
             # HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }

    fn worker(
        status: WorkerStatus,
        tags: &[&str],
        kinds: &[TaskKind],
        takes_new_work: bool,
    ) -> FarmWorker {
        FarmWorker {
            status,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            kinds: kinds.to_vec(),
            takes_new_work,
        }
    }

    #[test]
    fn the_farm_gauges_cover_every_label_and_the_plain_autoscaling_group() {
        let view = FarmView {
            counts: FarmCounts {
                runnable: vec![
                    (vec!["gpu".into()], TaskKind::Blender, 2),
                    (vec![], TaskKind::Blender, 1),
                    (vec![], TaskKind::Ffmpeg, 1),
                ],
                ..FarmCounts::default()
            },
            workers: vec![
                worker(WorkerStatus::Idle, &[], &[TaskKind::Blender], true),
                worker(WorkerStatus::Busy, &[], &[TaskKind::Blender], true),
                worker(
                    WorkerStatus::Busy,
                    &["linux", "gpu"],
                    &[TaskKind::Blender, TaskKind::Ffmpeg],
                    true,
                ),
                // Idle but outside its hours: counted among the idle, and
                // wanted work is not covered by it.
                worker(WorkerStatus::Idle, &["gpu"], &[TaskKind::Blender], false),
            ],
        };
        let text = encode(Some(&view)).unwrap();
        for series in [
            r#"renderfarm_tasks{status="pending",priority="urgent"} 0"#,
            r#"renderfarm_workers{status="idle",tags=""} 1"#,
            r#"renderfarm_workers{status="disabled",tags=""} 0"#,
            r#"renderfarm_workers{status="busy",tags="gpu,linux"} 1"#,
            r#"renderfarm_workers{status="idle",tags="gpu,linux"} 0"#,
            r#"renderfarm_workers{status="idle",tags="gpu"} 1"#,
            r#"renderfarm_workers_wanted{tags="gpu",kind="blender"} 2"#,
            r#"renderfarm_workers_wanted{tags="",kind="blender"} 0"#,
            // The idle worker runs no ffmpeg: the video wants a worker.
            r#"renderfarm_workers_wanted{tags="",kind="ffmpeg"} 1"#,
            r#"renderfarm_queue_depth{priority="low"} 0"#,
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        let replica_only = encode(None).unwrap();
        assert!(!replica_only.contains("renderfarm_tasks"));
        assert!(replica_only.contains("renderfarm_scheduler_leader"));
    }
}
