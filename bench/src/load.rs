//! Simulated workers (HTTP clients on one runtime, no Blender) against the
//! broker: dispatch throughput, claim latency by queue depth, and the time
//! from a submission to the first task received.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use renderfarm_client::BrokerClient;
use renderfarm_wire::{
    Assignment, CompleteReport, Priority, RegisteredWorker, RenderAction, RenderSpec, Worker,
    WorkerSpec,
};
use serde_json::json;
use tokio::sync::Mutex;

use crate::broker::{Auth, Broker, Observability};
use crate::compare::{Comparison, Run, Side};
use crate::machine;
use crate::quantile_ms;

pub fn spec(name: &str, tasks: i64) -> RenderSpec {
    RenderSpec {
        name: name.into(),
        blend_file: "/bench/scene.blend".into(),
        blend_sha256: None,
        upload_frames: None,
        frame_start: 1,
        frame_end: tasks,
        chunk_size: 1.into(),
        target_chunk_seconds: None,
        frame_order: Default::default(),
        blocklist_after: None,
        priority: Priority::Normal,
        max_retries: 0,
        output: None,
        engine: None,
        tags: vec![],
        video: None,
        depends_on: vec![],
    }
}

/// Registers a worker through `enrolment` (a client with the enrolment
/// token): the worker and the secret it acts with.
pub async fn register(enrolment: &BrokerClient, name: String) -> anyhow::Result<RegisteredWorker> {
    Ok(enrolment
        .register(&WorkerSpec {
            name,
            tags: vec![],
            kinds: vec![renderfarm_wire::TaskKind::Blender],
            time_zone: None,
            available: None,
            strict_hours: false,
            platform: Default::default(),
        })
        .await?)
}

/// The set-up calls and the measured claims of `depth` and `latency` go
/// through the client the CLI and the agent use: this one acts as the
/// registered worker.
pub fn as_worker(enrolment: &BrokerClient, registered: &RegisteredWorker) -> BrokerClient {
    enrolment.clone().with_token(registered.secret.clone())
}

/// One claim: the assignment (None for 204) and how long it took.
pub async fn claim(
    client: &BrokerClient,
    worker: &Worker,
    wait: Duration,
) -> anyhow::Result<(Option<Assignment>, Duration)> {
    let started = Instant::now();
    let assignment = client.request_task(worker.id, wait).await?;
    Ok((assignment, started.elapsed()))
}

pub async fn complete(client: &BrokerClient, a: &Assignment) -> anyhow::Result<()> {
    let report = CompleteReport {
        lease_id: a.lease_id,
        log: None,
    };
    client.complete(a.task_id, &report).await?;
    Ok(())
}

/// A simulated worker's own keep-alive HTTP/1 connection: far less client
/// work per request than a pooled client, so the broker, not the load
/// generator, is what the figures measure.
pub struct Connection {
    host: String,
    /// `Bearer <the worker's secret>`, sent with every request; none with
    /// auth off.
    authorization: Option<hyper::header::HeaderValue>,
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl Connection {
    /// A connection of the worker whose secret is `secret`.
    pub async fn open(broker: &str, secret: Option<&str>) -> anyhow::Result<Connection> {
        let host = broker.trim_start_matches("http://").to_string();
        let authorization = secret
            .map(|s| {
                let mut value = hyper::header::HeaderValue::try_from(format!("Bearer {s}"))?;
                value.set_sensitive(true);
                anyhow::Ok(value)
            })
            .transpose()?;
        let stream = tokio::net::TcpStream::connect(&host).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection {
            host,
            authorization,
            sender,
        })
    }

    /// One round of a simulated worker: claim, then complete what it got.
    /// How long the claim and the completion took; `None` when there was
    /// nothing to claim.
    pub async fn claim_and_complete(
        &mut self,
        worker: &Worker,
    ) -> anyhow::Result<Option<(Duration, Duration)>> {
        let started = Instant::now();
        let claim_path = format!("/workers/{}/request-task", worker.id);
        let (status, body) = self.post(&claim_path, Vec::new()).await?;
        let a: Assignment = match status {
            200 => serde_json::from_slice(&body)?,
            204 => return Ok(None),
            other => anyhow::bail!(
                "request-task answered {other}: {}",
                String::from_utf8_lossy(&body)
            ),
        };
        let claimed = started.elapsed();
        let started = Instant::now();
        let report = serde_json::to_vec(&CompleteReport {
            lease_id: a.lease_id,
            log: None,
        })?;
        let (status, body) = self
            .post(&format!("/tasks/{}/complete", a.task_id), report)
            .await?;
        anyhow::ensure!(
            status == 200,
            "complete answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(Some((claimed, started.elapsed())))
    }

    /// POSTs `body` to `path`; the status and the body bytes.
    pub async fn post(&mut self, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, bytes::Bytes)> {
        use http_body_util::BodyExt;
        let mut request = hyper::Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization.clone());
        }
        let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

#[derive(Default)]
struct Samples {
    claims: Vec<Duration>,
    completes: Vec<Duration>,
}

/// How `dispatch` runs its broker: with auth on or off, or both compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DispatchAuth {
    On,
    Off,
    /// Rounds of auth off and auth on, alternated; the best of each compared.
    Compare,
}

/// How much slower dispatch may be with auth on than off (issue 11).
const AUTH_BUDGET_PERCENT: f64 = 5.0;

/// Dashboards open during a dispatch run.
#[derive(Debug, Clone, Copy)]
pub struct Dashboards {
    pub count: usize,
    pub follow: Follow,
}

/// The render whose stream each dashboard follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Follow {
    /// The render being dispatched: every claim and report is an event.
    Dispatched,
    /// Another render of a few tasks, submitted before the dispatched one.
    Other,
}

impl Follow {
    fn as_str(self) -> &'static str {
        match self {
            Follow::Dispatched => "dispatched",
            Follow::Other => "other",
        }
    }
}

/// How much open dashboards may slow dispatch (issue 12).
const DASHBOARD_BUDGET_PERCENT: f64 = 10.0;

/// Issue 14: metrics and JSON logs on may cost the dispatch rate at most this
/// much against both off.
const TELEMETRY_BUDGET_PERCENT: f64 = 3.0;

/// What the candidate side of `--compare-telemetry` turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TelemetryCandidate {
    /// Metrics on and JSON logs: the figure.
    Both,
    /// Metrics on, text logs.
    Metrics,
    /// Metrics off, JSON logs.
    Json,
}

impl TelemetryCandidate {
    fn label(self) -> &'static str {
        match self {
            TelemetryCandidate::Both => "metrics on, JSON logs",
            TelemetryCandidate::Metrics => "metrics on, text logs",
            TelemetryCandidate::Json => "metrics off, JSON logs",
        }
    }
}

pub async fn dispatch(
    workers: usize,
    tasks: i64,
    auth: DispatchAuth,
    rounds: usize,
    dashboards: Dashboards,
    compare_dashboards: bool,
    compare_telemetry: Option<TelemetryCandidate>,
) -> anyhow::Result<String> {
    if let Some(candidate) = compare_telemetry {
        anyhow::ensure!(
            !compare_dashboards && auth != DispatchAuth::Compare,
            "compare one thing at a time: --compare-telemetry alone"
        );
        let auth = if auth == DispatchAuth::Off {
            Auth::Off
        } else {
            Auth::On
        };
        // Both sides log at info, as a production broker does: the
        // difference is the metrics and the JSON lines with their spans.
        let comparison = Comparison {
            bench: "dispatch",
            what: "telemetry",
            figure: "tasks_per_sec",
            unit: "tasks/s",
            baseline: Side {
                label: "metrics off, text logs",
                setting: Observability {
                    metrics: false,
                    json_logs: false,
                    log_filter: "info",
                },
            },
            candidate: Side {
                label: candidate.label(),
                setting: Observability {
                    metrics: candidate != TelemetryCandidate::Json,
                    json_logs: candidate != TelemetryCandidate::Metrics,
                    log_filter: "info",
                },
            },
            budget_percent: TELEMETRY_BUDGET_PERCENT,
            rounds,
            // The figure is dispatch's throughput; the claim p99 is
            // reported (below) but a 3 % budget on a tail latency of a few
            // milliseconds is below what this machine repeats.
            lower_is_better: &[],
            details: &[
                "broker_cpu_us_per_task",
                "claim_p99_ms",
                "others_cpu_percent",
            ],
        };
        let mut summary = comparison
            .run(|observe| dispatch_once(workers, tasks, auth, dashboards, observe))
            .await?;
        summary["workers"] = json!(workers);
        summary["tasks"] = json!(tasks);
        return Ok(summary.to_string());
    }
    if compare_dashboards {
        anyhow::ensure!(
            dashboards.count > 0,
            "--compare-dashboards needs --dashboards N (N > 0)"
        );
        let auth = match auth {
            DispatchAuth::On => Auth::On,
            DispatchAuth::Off => Auth::Off,
            DispatchAuth::Compare => {
                anyhow::bail!(
                    "compare one thing at a time: --auth on or off with --compare-dashboards"
                )
            }
        };
        let comparison = Comparison {
            bench: "dispatch",
            what: "dashboards",
            figure: "tasks_per_sec",
            unit: "tasks/s",
            baseline: Side {
                label: "0",
                setting: Dashboards {
                    count: 0,
                    ..dashboards
                },
            },
            candidate: Side {
                label: "open",
                setting: dashboards,
            },
            budget_percent: DASHBOARD_BUDGET_PERCENT,
            rounds,
            lower_is_better: &["claim_p99_ms"],
            details: &[
                "broker_cpu_us_per_task",
                "claim_p99_ms",
                "events_received",
                "others_cpu_percent",
            ],
        };
        let mut summary = comparison
            .run(|dashboards| {
                dispatch_once(workers, tasks, auth, dashboards, Observability::default())
            })
            .await?;
        summary["workers"] = json!(workers);
        summary["tasks"] = json!(tasks);
        summary["dashboards"] = json!(dashboards.count);
        summary["dashboards_follow"] = json!(dashboards.follow.as_str());
        return Ok(summary.to_string());
    }
    let auth = match auth {
        DispatchAuth::On => Auth::On,
        DispatchAuth::Off => Auth::Off,
        DispatchAuth::Compare => {
            // A broker's auth is fixed when it starts, so each round has a
            // broker of its own; its fresh store also keeps the rounds alike
            // (a shared one would hold every earlier round's tasks).
            let comparison = Comparison {
                bench: "dispatch",
                what: "auth",
                figure: "tasks_per_sec",
                unit: "tasks/s",
                baseline: Side {
                    label: "off",
                    setting: Auth::Off,
                },
                candidate: Side {
                    label: "on",
                    setting: Auth::On,
                },
                budget_percent: AUTH_BUDGET_PERCENT,
                rounds,
                lower_is_better: &[],
                details: &[
                    "broker_cpu_us_per_task",
                    "claim_p99_ms",
                    "others_cpu_percent",
                ],
            };
            let mut summary = comparison
                .run(|auth| {
                    dispatch_once(workers, tasks, auth, dashboards, Observability::default())
                })
                .await?;
            summary["workers"] = json!(workers);
            summary["tasks"] = json!(tasks);
            return Ok(summary.to_string());
        }
    };
    Ok(
        dispatch_once(workers, tasks, auth, dashboards, Observability::default())
            .await?
            .line
            .to_string(),
    )
}

/// Opens `count` dashboards' streams on `render`: each the farm summary and
/// the render's events, read as a browser would, until aborted. Counts
/// what they receive.
async fn open_dashboards(
    admin: &BrokerClient,
    render: uuid::Uuid,
    count: usize,
    received: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use std::sync::atomic::Ordering;
    let mut readers = Vec::with_capacity(2 * count);
    for _ in 0..count {
        let mut summary = admin.summary().await?;
        // Read as plain JSON values, not typed events: the bench shares the
        // machine with the broker, so the lighter the dashboards the less
        // their CPU counts against it.
        let mut events = admin
            .events_as::<serde_json::value::Value>(Some(render), None)
            .await?;
        let counted = received.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = summary.next().await {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }));
        let counted = received.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = events.next().await {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    Ok(readers)
}

/// One dispatch run with a broker of its own.
async fn dispatch_once(
    workers: usize,
    tasks: i64,
    auth: Auth,
    dashboards: Dashboards,
    observe: Observability,
) -> anyhow::Result<Run> {
    let broker = Broker::start_with(auth, &observe)?;
    let enrolment = broker.enrolment()?;
    let address = broker.address.clone();
    let mut registered = Vec::with_capacity(workers);
    for i in 0..workers {
        registered.push(register(&enrolment, format!("sim-{i}")).await?);
    }
    let admin = broker.admin()?;
    let other = match dashboards.follow {
        Follow::Other => Some(admin.submit(&spec("followed", 10)).await?),
        Follow::Dispatched => None,
    };
    let render = admin.submit(&spec("dispatch", tasks)).await?;
    let followed = other.as_ref().map_or(render.id, |r| r.id);
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let readers = open_dashboards(&admin, followed, dashboards.count, received.clone()).await?;
    let samples = Arc::new(Mutex::new(Samples::default()));
    let before = machine::Reading::now(broker.pid())?;
    let started = Instant::now();
    let mut runs = Vec::with_capacity(workers);
    for registered in registered {
        let (address, samples) = (address.clone(), samples.clone());
        runs.push(tokio::spawn(async move {
            let mut mine = Samples::default();
            let mut conn = Connection::open(&address, registered.secret.as_deref()).await?;
            while let Some((claimed, completed)) =
                conn.claim_and_complete(&registered.worker).await?
            {
                mine.claims.push(claimed);
                mine.completes.push(completed);
            }
            let mut all = samples.lock().await;
            all.claims.extend(mine.claims);
            all.completes.extend(mine.completes);
            anyhow::Ok(())
        }));
    }
    for run in runs {
        run.await.context("a simulated worker panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (cpu, others_percent) = machine::Reading::now(broker.pid())?.since(&before);
    for reader in readers {
        reader.abort();
    }
    let (rss, peak) = broker.rss_mb();
    let mut samples = samples.lock().await;
    samples.claims.sort();
    samples.completes.sort();
    let done = samples.claims.len();
    // The followed render's few tasks are dispatched too.
    let expected = tasks + other.as_ref().map_or(0, |r| r.progress.tasks_total);
    anyhow::ensure!(
        done as i64 == expected,
        "{done} of {expected} tasks were dispatched"
    );
    let tasks_per_sec = done as f64 / seconds;
    Ok(Run {
        figure: tasks_per_sec,
        line: json!({
            "bench": "dispatch",
            "auth": auth.as_str(),
            "tasks": done,
            "workers": workers,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "tasks_per_sec": tasks_per_sec.round(),
            "dashboards": dashboards.count,
            "dashboards_follow": dashboards.follow.as_str(),
            "events_received": received.load(std::sync::atomic::Ordering::Relaxed),
            "claim_p50_ms": quantile_ms(&samples.claims, 0.50),
            "claim_p99_ms": quantile_ms(&samples.claims, 0.99),
            "complete_p99_ms": quantile_ms(&samples.completes, 0.99),
            // The broker's CPU time (all threads) per task claimed and
            // completed: its work, less sensitive than the rate to what
            // else the machine does.
            "broker_cpu_us_per_task": (cpu.as_secs_f64() * 1e6 / done as f64 * 10.0).round() / 10.0,
            // What else used the machine's CPUs meanwhile: a round with
            // much of it says more about the machine than the broker.
            "others_cpu_percent": others_percent.round(),
            "broker_rss_mb": rss,
            "broker_peak_rss_mb": peak,
        }),
    })
}

pub async fn depth(queued: i64, claims: usize, paused: i64, auth: Auth) -> anyhow::Result<String> {
    let broker = Broker::start(auth)?;
    let client = broker.admin()?;
    let fill = Instant::now();
    if paused > 0 {
        let mut urgent = spec("paused-urgent", paused.min(1_000_000));
        urgent.priority = Priority::Urgent;
        let render = client.submit(&urgent).await?;
        client.change_render(render.id, RenderAction::Pause).await?;
    }
    // Renders hold at most 1,000,000 frames; bigger queues take several.
    let mut left = queued;
    let mut n = 0;
    while left > 0 {
        let size = left.min(1_000_000);
        client.submit(&spec(&format!("depth-{n}"), size)).await?;
        left -= size;
        n += 1;
    }
    let fill_seconds = fill.elapsed().as_secs_f64();
    // A bulk insert leaves a large WAL that the checkpointer copies back over
    // the next seconds; measure the steady state after it, not the copy.
    let settle = Duration::from_secs(((queued + paused) / 100_000).clamp(0, 10) as u64);
    tokio::time::sleep(settle).await;
    let registered = register(&broker.enrolment()?, "depth".into()).await?;
    let (client, worker) = (as_worker(&client, &registered), registered.worker);
    const WARM_UP: i64 = 50;
    let claims = claims.min((queued - WARM_UP).max(1) as usize);
    // Warm up connections and caches before measuring.
    for _ in 0..WARM_UP.min(queued) {
        if let (Some(a), _) = claim(&client, &worker, Duration::ZERO).await? {
            complete(&client, &a).await?;
        }
    }
    let mut samples = Vec::with_capacity(claims);
    for _ in 0..claims {
        let (assignment, took) = claim(&client, &worker, Duration::ZERO).await?;
        let a = assignment.context("the queue ran dry; measure fewer claims")?;
        samples.push(took);
        complete(&client, &a).await?;
    }
    samples.sort();
    let (rss, peak) = broker.rss_mb();
    Ok(json!({
        "bench": "depth",
        "auth": auth.as_str(),
        "queued": queued,
        "paused_ahead": paused.min(1_000_000),
        "claims": claims,
        "fill_seconds": (fill_seconds * 100.0).round() / 100.0,
        "settle_seconds": settle.as_secs(),
        "claim_p50_ms": quantile_ms(&samples, 0.50),
        "claim_p99_ms": quantile_ms(&samples, 0.99),
        "broker_rss_mb": rss,
        "broker_peak_rss_mb": peak,
    })
    .to_string())
}

pub async fn latency(workers: usize, submits: usize, auth: Auth) -> anyhow::Result<String> {
    let broker = Broker::start(auth)?;
    let client = broker.admin()?;
    let enrolment = broker.enrolment()?;
    let (tx, mut received) = tokio::sync::mpsc::unbounded_channel::<(uuid::Uuid, Instant)>();
    let mut pollers = Vec::new();
    for i in 0..workers {
        let registered = register(&enrolment, format!("idle-{i}")).await?;
        let (client, worker) = (as_worker(&enrolment, &registered), registered.worker);
        let tx = tx.clone();
        pollers.push(tokio::spawn(async move {
            loop {
                let Ok((assignment, _)) = claim(&client, &worker, Duration::from_secs(30)).await
                else {
                    break;
                };
                if let Some(a) = assignment {
                    let at = Instant::now();
                    if tx.send((a.render_id, at)).is_err() {
                        break;
                    }
                    let _ = complete(&client, &a).await;
                }
            }
        }));
    }
    // Let every worker reach its long poll.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::with_capacity(submits);
    let mut from_sent = Vec::with_capacity(submits);
    for i in 0..submits {
        let sent = Instant::now();
        let render = client.submit(&spec(&format!("latency-{i}"), 1)).await?;
        let answered = Instant::now();
        let (render_id, at) = tokio::time::timeout(Duration::from_secs(30), received.recv())
            .await
            .context("no worker received the task within 30 s")?
            .context("the workers stopped")?;
        anyhow::ensure!(
            render_id == render.id,
            "a worker received another render's task"
        );
        // A worker may get the task before the submitter reads its 202: 0.
        samples.push(at.saturating_duration_since(answered));
        from_sent.push(at.saturating_duration_since(sent));
        // Let the worker finish and wait again, as an idle farm would.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for p in pollers {
        p.abort();
    }
    samples.sort();
    from_sent.sort();
    Ok(json!({
        "bench": "latency",
        "auth": auth.as_str(),
        "workers": workers,
        "submits": submits,
        "p50_ms": quantile_ms(&samples, 0.50),
        "p99_ms": quantile_ms(&samples, 0.99),
        "max_ms": quantile_ms(&samples, 1.0),
        "from_sent_p50_ms": quantile_ms(&from_sent, 0.50),
        "from_sent_p99_ms": quantile_ms(&from_sent, 0.99),
    })
    .to_string())
}
