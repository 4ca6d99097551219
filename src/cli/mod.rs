//! The `renderfarm` command: `serve` runs the broker and `up` a whole farm;
//! `openapi` prints the API's spec; `addon` writes the Blender add-on's zip;
//! the others are thin HTTP clients of a running broker.

mod addon;
mod client;
mod migrate_store;
mod operator;
mod token;
mod transfer;
mod up;
mod watch;

use crate::telemetry::LogFormat;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use renderfarm_client::sha256_file;
use renderfarm_wire::{
    ChunkSizeSpec, FrameOrder, Priority, RenderAction, RenderSpec, VideoCodec, VideoSpec,
    WorkerAction,
};

use crate::api::auth::AuthMode;
use crate::credentials::Bootstrap;
use crate::startup::{Application, RateLimit, RateLimits, Settings, StoreChoice};

/// A render farm for Blender.
#[derive(Debug, Parser)]
#[command(name = "renderfarm", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The credential the command line sends to the broker (an admin gives
    /// it: `renderfarm token create`). Never put it in a URL.
    #[arg(long, global = true, env = "RENDERFARM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the credential (e.g. the one `renderfarm up` writes).
    #[arg(
        long,
        global = true,
        env = "RENDERFARM_TOKEN_FILE",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// How log lines are written: text for a terminal, or json (one object
    /// per line, with the request's id and route and the ids of what a line
    /// is about, for a log collector).
    #[arg(long, global = true, env = "RENDERFARM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker: HTTP API and store.
    Serve(Box<ServeArgs>),
    /// Submit a .blend file for rendering (`--upload` to send it through
    /// the broker, for a farm without a shared drive).
    Submit(SubmitArgs),
    /// Fetch a render's frames from the broker into a folder (resumes, and
    /// skips the frames already there).
    Download(DownloadArgs),
    /// Show one render and its progress.
    Status(StatusArgs),
    /// Follow renders live until they finish (exit 0 only if all completed).
    Watch(watch::WatchArgs),
    /// List renders, newest first (or --search, --sort, --order).
    Renders(operator::RendersArgs),
    /// List a render's tasks (chunks), e.g. the failed ones.
    Tasks(operator::TasksArgs),
    /// Pause a render: its running chunks finish, no new ones start.
    Pause(operator::TargetArgs),
    /// Resume a paused render.
    Resume(operator::TargetArgs),
    /// Start a waiting render now, without waiting for the renders it
    /// depends on.
    Release(operator::TargetArgs),
    /// Cancel a render: its chunks stop and none start again.
    Cancel(operator::TargetArgs),
    /// Render a finished render again: the chunks that did not complete, or all if all did.
    Requeue(operator::TargetArgs),
    /// Render one task (chunk) again; a running one is taken from its worker.
    RequeueTask(operator::TargetArgs),
    /// Show a render's blocklist (workers that failed its chunks), or clear it.
    Blocklist(operator::BlocklistArgs),
    /// Delete a finished render with its tasks and logs (its frames stay).
    Delete(operator::TargetArgs),
    /// Print a task's log (`--follow` to keep printing until it ends).
    Log(operator::LogArgs),
    /// List the farm's path variables, or set or delete one (path mapping).
    Variables(operator::VariablesArgs),
    /// List the workers the broker knows.
    Workers(BrokerArgs),
    /// Let a worker finish its task, then give it no more.
    Drain(operator::TargetArgs),
    /// Give a worker no work (its task goes back to the queue).
    Disable(operator::TargetArgs),
    /// Let a drained or disabled worker take work again.
    Enable(operator::TargetArgs),
    /// Show a worker's hours, set an operator's (kept until cleared), or
    /// clear them.
    Hours(operator::HoursArgs),
    /// A whole farm in one command: the broker and local worker agents.
    Up(up::UpArgs),
    /// Bring the store's schema up to date (`serve` does it at start too).
    Migrate(MigrateArgs),
    /// Copy a farm from the embedded store into MongoDB: renders, tasks,
    /// logs, history and workers.
    MigrateStore(migrate_store::MigrateStoreArgs),
    /// Credentials: create, list and revoke tokens, with direct access to the
    /// store (also how an admin who lost every admin token gets one back).
    Token(token::TokenArgs),
    /// Print the broker's OpenAPI spec (JSON), as served at /api-docs/openapi.json.
    Openapi,
    /// Write the Blender add-on as a zip to install in Blender (3.4 or
    /// later; an extension in 4.2 or later).
    Addon(addon::AddonArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "RENDERFARM_BIND", default_value = "127.0.0.1:8080")]
    bind: String,
    /// Where the embedded store and default render outputs live.
    #[arg(long, env = "RENDERFARM_DATA_DIR", default_value = "renderfarm-data")]
    data_dir: PathBuf,
    /// Where default render outputs go, and the only folder whose frames
    /// the broker serves (`GET /renders/{id}/frames`) [default:
    /// <data-dir>/renders].
    #[arg(long, env = "RENDERFARM_OUTPUT_ROOT")]
    output_root: Option<PathBuf>,
    /// Store to use: leave out for the embedded SQLite store, or a mongodb:// URI.
    #[arg(long, env = "MONGODB_URI")]
    store: Option<String>,
    /// Do not apply store migrations at start; a MongoDB broker then stays
    /// unready until `renderfarm migrate` has applied them.
    #[arg(long, env = "RENDERFARM_NO_MIGRATE")]
    no_migrate: bool,
    /// How many workers may wait for work at once (each long poll holds a
    /// connection); more are told 429 and to come back.
    #[arg(long, env = "RENDERFARM_MAX_WAITING", default_value_t = crate::startup::DEFAULT_MAX_WAITING as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_waiting: u32,
    /// `off`: check no credentials, for a trusted single machine only.
    #[arg(long, env = "RENDERFARM_AUTH", default_value = "on", value_parser = parse_auth)]
    auth: AuthMode,
    /// Also serve /metrics on this address, without credentials (a port only
    /// Prometheus reaches, e.g. 0.0.0.0:9090 inside a cluster). On the API's
    /// address /metrics needs a viewer's token.
    #[arg(long, env = "RENDERFARM_METRICS_BIND", value_name = "ADDR")]
    metrics_bind: Option<String>,
    /// `off`: count nothing for Prometheus and answer /metrics with 404.
    #[arg(long, env = "RENDERFARM_METRICS", default_value = "on", value_parser = ["on", "off"])]
    metrics: String,
    /// Let webhooks point at loopback, private (RFC 1918, fc00::/7),
    /// link-local and this machine's own addresses. Without it those are
    /// refused when a webhook is registered and again before each delivery,
    /// so that a webhook cannot reach the broker's own network.
    #[arg(long, env = "RENDERFARM_WEBHOOKS_ALLOW_PRIVATE")]
    webhooks_allow_private: bool,
    /// For tests only: the waits between a webhook delivery's attempts
    /// (e.g. "1s,1s") instead of 10s,30s,1m,5m,15m,1h. A webhook failing
    /// for their sum is disabled.
    #[arg(long, env = "RENDERFARM_WEBHOOKS_RETRY_SCHEDULE", hide = true, value_parser = parse_retry_schedule)]
    webhooks_retry_schedule: Option<crate::domain::RetrySchedule>,
    /// Export traces (a span per request, claim, report and scheduler step)
    /// to this OpenTelemetry collector over OTLP/HTTP, e.g.
    /// http://collector:4318; nothing is exported without it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// The OTLP encoding: http/protobuf (the usual) or http/json.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf", value_parser = ["http/protobuf", "http/json"])]
    otlp_protocol: String,
    /// An admin secret chosen by the deployment (e.g. compose's secret); the
    /// broker stores its hash at start. Without it, a broker whose store has
    /// no token yet makes an admin token and prints it once.
    #[arg(long, env = "RENDERFARM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The same, read from a file (a Docker or Kubernetes secret).
    #[arg(
        long,
        env = "RENDERFARM_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    admin_token_file: Option<PathBuf>,
    /// An enrolment secret (role worker) chosen by the deployment, for its
    /// worker agents to register with.
    #[arg(long, env = "RENDERFARM_ENROLMENT_TOKEN", hide_env_values = true)]
    enrolment_token: Option<String>,
    /// The same, read from a file.
    #[arg(
        long,
        env = "RENDERFARM_ENROLMENT_TOKEN_FILE",
        conflicts_with = "enrolment_token"
    )]
    enrolment_token_file: Option<PathBuf>,
    /// Requests each client may make to the API (every route but the
    /// workers' below and /health, /ready): N/s or N/m (a second or a
    /// minute), optionally :BURST, how many may come at once (N if left out);
    /// or "off". A client is its Authorization header, else its session
    /// cookie, else its address; one over the limit is answered 429 with
    /// Retry-After.
    #[arg(long, env = "RENDERFARM_RATE_LIMIT", value_name = "N/s[:BURST]",
          default_value_t = RateLimits::DEFAULT_PEOPLE, value_parser = parse_rate_limit)]
    rate_limit: RateLimit,
    /// As --rate-limit, for the workers' own routes, on a budget of their own:
    /// registering, heartbeats, request-task and the task reports
    /// (progress, complete, fail, release).
    #[arg(long, env = "RENDERFARM_WORKER_RATE_LIMIT", value_name = "N/s[:BURST]",
          default_value_t = RateLimits::DEFAULT_WORKERS, value_parser = parse_rate_limit)]
    worker_rate_limit: RateLimit,
    /// Credentials the broker refuses (401) that one address may present,
    /// in the same form, before it is answered 429 for a while whatever it
    /// presents: each made-up credential has a budget of its own.
    #[arg(long, env = "RENDERFARM_REFUSED_CREDENTIAL_LIMIT", value_name = "N/m[:BURST]",
          default_value_t = crate::api::rate_limit::FAILED_CREDENTIALS, value_parser = parse_rate_limit)]
    refused_credential_limit: RateLimit,
    /// Serve HTTPS with this certificate (PEM: the broker's, then any
    /// intermediate ones), with --tls-key. Leave both out for plain HTTP, e.g.
    /// behind a proxy that terminates TLS.
    #[arg(
        long,
        env = "RENDERFARM_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "RENDERFARM_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    scheduler: SchedulerArgs,
    #[command(flatten)]
    files: crate::files::FileArgs,
}

fn parse_auth(s: &str) -> Result<AuthMode, String> {
    match s {
        "on" => Ok(AuthMode::On),
        "off" => Ok(AuthMode::Off),
        other => Err(format!("{other:?}: say on (the default) or off")),
    }
}

/// A secret given directly or in a file (trailing newline dropped).
pub(crate) fn secret_from(
    direct: Option<String>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let secret = text.trim().to_string();
        if secret.is_empty() {
            anyhow::bail!("the token file {} is empty", path.display());
        }
        return Ok(Some(secret));
    }
    Ok(direct
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    s.parse()
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// Where the embedded store lives (when no MongoDB URI is given).
    #[arg(long, env = "RENDERFARM_DATA_DIR", default_value = "renderfarm-data")]
    data_dir: PathBuf,
    /// Store to migrate: leave out for the embedded SQLite store, or a mongodb:// URI.
    #[arg(long, env = "MONGODB_URI")]
    store: Option<String>,
}

/// The scheduler's settings, shared by `serve` and `up`.
#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    /// Time between two scheduler ticks.
    #[arg(long, env = "RENDERFARM_TICK", default_value = "30s", value_parser = parse_positive_duration)]
    tick: std::time::Duration,
    /// A worker silent this long is lost; its task goes back to the queue.
    #[arg(long, env = "RENDERFARM_WORKER_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    worker_timeout: std::time::Duration,
    /// How long urgent work may wait before it preempts lower work ("never" to turn off).
    #[arg(long, env = "RENDERFARM_WAIT_URGENT", default_value = "0s", value_parser = parse_allowance)]
    wait_urgent: Allowance,
    /// How long high-priority work may wait before it preempts lower work.
    #[arg(long, env = "RENDERFARM_WAIT_HIGH", default_value = "2m", value_parser = parse_allowance)]
    wait_high: Allowance,
    /// How long normal work may wait before it preempts low work.
    #[arg(long, env = "RENDERFARM_WAIT_NORMAL", default_value = "30m", value_parser = parse_allowance)]
    wait_normal: Allowance,
    /// How long low work may wait (it has nothing lower to preempt).
    #[arg(long, env = "RENDERFARM_WAIT_LOW", default_value = "never", value_parser = parse_allowance)]
    wait_low: Allowance,
    /// Delete finished renders (with their tasks and logs; frames stay on
    /// disk) this long after they ended, e.g. 30d; "never" keeps them.
    #[arg(long, env = "RENDERFARM_KEEP_FINISHED", default_value = "never", value_parser = parse_allowance)]
    keep_finished: Allowance,
    /// Failed chunks of one render on one worker before that worker gets no
    /// more of the render's chunks (a render's own `blocklist_after` wins).
    #[arg(long, env = "RENDERFARM_BLOCKLIST_AFTER", default_value_t = 3, value_parser = clap::value_parser!(i64).range(1..=100))]
    blocklist_after: i64,
    /// How long a worker stays blocklisted from a render, e.g. 2h; "never"
    /// keeps it until an operator clears it.
    #[arg(long, env = "RENDERFARM_BLOCKLIST_EXPIRY", default_value = "2h", value_parser = parse_allowance)]
    blocklist_expiry: Allowance,
}

/// A wait allowance: a duration, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance(Option<std::time::Duration>);

fn parse_allowance(s: &str) -> Result<Allowance, String> {
    if s.trim().eq_ignore_ascii_case("never") {
        return Ok(Allowance(None));
    }
    humantime::parse_duration(s)
        .map(|d| Allowance(Some(d)))
        .map_err(|e| {
            format!("{s:?} is not a duration such as 0s, 90s, 2m or 1h, nor \"never\": {e}")
        })
}

fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("give a duration above zero, such as 30s".into()),
        Err(e) => Err(format!("{s:?} is not a duration such as 30s or 2m: {e}")),
    }
}

impl SchedulerArgs {
    /// The scheduler settings these flags ask for.
    pub fn settings(&self) -> anyhow::Result<crate::scheduler::SchedulerSettings> {
        let chrono = |d: std::time::Duration| {
            chrono::Duration::from_std(d).map_err(|_| anyhow::anyhow!("{d:?} is too long"))
        };
        let allowance = |a: Allowance| a.0.map(chrono).transpose();
        Ok(crate::scheduler::SchedulerSettings {
            tick: self.tick,
            worker_timeout: chrono(self.worker_timeout)?,
            allowances: crate::domain::Allowances {
                low: allowance(self.wait_low)?,
                normal: allowance(self.wait_normal)?,
                high: allowance(self.wait_high)?,
                urgent: allowance(self.wait_urgent)?,
            },
            periodic: true,
            keep_finished: allowance(self.keep_finished)?,
            blocklist_after: self.blocklist_after,
            blocklist_expiry: allowance(self.blocklist_expiry)?,
        })
    }
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// The broker's address.
    #[arg(
        long,
        env = "RENDERFARM_BROKER",
        default_value = "http://127.0.0.1:8080"
    )]
    broker: String,
    /// The PEM certificate of the authority that signed an https:// broker's
    /// certificate (a private CA), trusted on top of the system's.
    #[arg(long, env = "RENDERFARM_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Print the broker's JSON answer instead of a summary.
    #[arg(long)]
    json: bool,
}

impl BrokerArgs {
    /// How to connect to the broker, beyond its address.
    fn client_options(&self) -> renderfarm_client::ClientOptions {
        renderfarm_client::ClientOptions {
            ca_file: self.ca.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// The .blend file: as the workers see its path, or with --upload a file
    /// on this machine.
    file: String,
    /// Send the file through the broker instead of a shared drive: Blender
    /// packs a copy (images and linked libraries inside; your file is not
    /// changed), only what the broker lacks is uploaded, and the frames
    /// come back through the broker (`renderfarm download`).
    #[arg(long)]
    upload: bool,
    /// The Blender that packs the copy for --upload.
    #[arg(long, env = "RENDERFARM_BLENDER", default_value = "blender")]
    blender: PathBuf,
    /// Frames to render: `1-250`, or one frame `7`.
    #[arg(long, default_value = "1-1")]
    frames: String,
    /// Frames per task, or `auto`: the broker sizes the chunks from the
    /// frame times it measures so that one takes about
    /// --target-chunk-seconds.
    #[arg(long, default_value = "10", value_parser = parse_chunk)]
    chunk: ChunkSizeSpec,
    /// With `--chunk auto`: the seconds one chunk should take (5 to 3600;
    /// the broker's default, 60, when absent).
    #[arg(long, value_name = "SECONDS")]
    target_chunk_seconds: Option<i64>,
    /// `sequential`, or `preview-first`: the first, last and middle frames
    /// and every Nth frame render first, each alone, so a broken shot shows
    /// in minutes.
    #[arg(long, default_value = "sequential", value_parser = parse_frame_order)]
    frame_order: FrameOrder,
    /// Failed chunks on one worker before that worker gets no more of this
    /// render (1 to 100); the broker's --blocklist-after when absent.
    #[arg(long, value_name = "FAILURES")]
    blocklist_after: Option<i64>,
    /// low, normal, high or urgent.
    #[arg(long, default_value = "normal", value_parser = parse_priority)]
    priority: Priority,
    /// Name shown in listings (default: the file's name).
    #[arg(long)]
    name: Option<String>,
    /// How many times a failed chunk is tried again.
    #[arg(long, default_value_t = 1)]
    max_retries: i64,
    /// Blender output pattern, e.g. /renders/shot/frame_#### (default: under the broker's data dir).
    #[arg(long)]
    output: Option<String>,
    /// Blender engine, e.g. CYCLES (default: the file's own).
    #[arg(long)]
    engine: Option<String>,
    /// Tags a worker needs to take this render, comma-separated.
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Also make a video of the frames at this many frames per second (1 to
    /// 240) once they are all rendered, on a worker that has ffmpeg; fetch
    /// it with `renderfarm download ID DIR --video`.
    #[arg(long, value_name = "FPS")]
    video_fps: Option<i64>,
    /// The video's codec (with --video-fps): h264, an MP4 that plays
    /// everywhere.
    #[arg(long, default_value = "h264", value_parser = parse_video_codec, requires = "video_fps")]
    video_codec: VideoCodec,
    /// Start only once these renders have completed (ids, comma-separated);
    /// until then the render is `waiting`.
    #[arg(long, value_delimiter = ',', value_name = "RENDER_ID")]
    depends_on: Vec<uuid::Uuid>,
    #[command(flatten)]
    broker: BrokerArgs,
}

fn parse_chunk(s: &str) -> Result<ChunkSizeSpec, String> {
    ChunkSizeSpec::parse(s)
        .ok_or_else(|| format!("{s:?}: give a number of frames per task, or auto"))
}

fn parse_frame_order(s: &str) -> Result<FrameOrder, String> {
    FrameOrder::parse(s).ok_or_else(|| format!("{s:?}: give sequential or preview-first"))
}

fn parse_video_codec(s: &str) -> Result<VideoCodec, String> {
    VideoCodec::parse(s).ok_or_else(|| format!("{s:?} is not a video codec; use h264"))
}

#[derive(Debug, Args)]
struct DownloadArgs {
    /// The render's id, as `submit` printed it.
    render: String,
    /// The folder to put the frames in (made if missing).
    dir: PathBuf,
    /// Fetch the render's video (an MP4 named after the render) instead of
    /// its frames; it exists once the render's `video` is completed.
    #[arg(long)]
    video: bool,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The render's id, as `submit` printed it.
    id: String,
    #[command(flatten)]
    broker: BrokerArgs,
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    Priority::parse(s)
        .ok_or_else(|| format!("{s:?} is not a priority; use low, normal, high or urgent"))
}

/// Parses `A-B` or `A` into a frame range (checked again by the broker).
fn parse_frames(s: &str) -> anyhow::Result<(i64, i64)> {
    let parse = |p: &str| {
        p.trim().parse::<i64>().map_err(|_| {
            anyhow::anyhow!("--frames {s:?}: give a range such as 1-250, or one frame such as 7")
        })
    };
    match s.split_once('-') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => {
            let f = parse(s)?;
            Ok((f, f))
        }
    }
}

/// Installs the log subscriber: `RENDERFARM_LOG` (or `RUST_LOG`) filters;
/// info by default, warnings only under `up`, whose progress bars say the rest.
/// The TLS verifier's own report of a refused certificate is left out by
/// default: the command's error says it, with what to do.
/// `serve`'s spans go to the collector it names. The guard flushes them at
/// the end.
pub fn init_tracing(cli: &Cli) -> anyhow::Result<crate::telemetry::TelemetryGuard> {
    use std::io::IsTerminal;
    let default = match cli.command {
        Command::Up(_) => "warn,rustls_platform_verifier=off",
        _ => "info,rustls_platform_verifier=off",
    };
    let filter = std::env::var("RENDERFARM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.into());
    let otlp = match &cli.command {
        Command::Serve(args) => {
            args.otlp_endpoint
                .as_ref()
                .map(|endpoint| crate::telemetry::OtlpExport {
                    endpoint: endpoint.clone(),
                    json: args.otlp_protocol == "http/json",
                })
        }
        _ => None,
    };
    crate::telemetry::init(
        cli.log_format,
        &filter,
        std::io::stderr().is_terminal(),
        otlp.as_ref(),
    )
}

/// Resolves on the first Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    client::use_token(secret_from(cli.token, cli.token_file.as_deref())?);
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Submit(args) => submit(args).await,
        Command::Download(args) => download(args).await,
        Command::Status(args) => status(args).await,
        Command::Watch(args) => watch::watch(args).await,
        Command::Renders(args) => operator::renders(args).await,
        Command::Tasks(args) => operator::tasks(args).await,
        Command::Pause(args) => operator::change_render(args, RenderAction::Pause).await,
        Command::Resume(args) => operator::change_render(args, RenderAction::Resume).await,
        Command::Release(args) => operator::change_render(args, RenderAction::Release).await,
        Command::Cancel(args) => operator::change_render(args, RenderAction::Cancel).await,
        Command::Requeue(args) => operator::change_render(args, RenderAction::Requeue).await,
        Command::RequeueTask(args) => operator::requeue_task(args).await,
        Command::Blocklist(args) => operator::blocklist(args).await,
        Command::Delete(args) => operator::delete_render(args).await,
        Command::Log(args) => operator::log(args).await,
        Command::Variables(args) => operator::variables(args).await,
        Command::Workers(args) => workers(args).await,
        Command::Hours(args) => operator::hours(args).await,
        Command::Drain(args) => operator::change_worker(args, WorkerAction::Drain).await,
        Command::Disable(args) => operator::change_worker(args, WorkerAction::Disable).await,
        Command::Enable(args) => operator::change_worker(args, WorkerAction::Enable).await,
        Command::Up(args) => up::up(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::MigrateStore(args) => migrate_store::migrate_store(args).await,
        Command::Token(args) => token::token(args).await,
        Command::Addon(args) => addon::addon(args).await,
        Command::Openapi => {
            use std::io::Write;
            std::io::stdout().write_all(crate::api::openapi::spec_json().as_bytes())?;
            Ok(())
        }
    }
}

fn parse_retry_schedule(raw: &str) -> Result<crate::domain::RetrySchedule, String> {
    crate::domain::RetrySchedule::parse(raw)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = Settings::new(
        args.bind,
        args.data_dir,
        StoreChoice::parse(args.store.as_deref())?,
    );
    settings.scheduler = args.scheduler.settings()?;
    settings.output_root = args.output_root;
    settings.files = args.files.settings()?;
    settings.migrate = !args.no_migrate;
    settings.max_waiting = args.max_waiting as usize;
    settings.auth = args.auth;
    settings.bootstrap = Bootstrap {
        admin_secret: secret_from(args.admin_token, args.admin_token_file.as_deref())?,
        enrolment_secret: secret_from(args.enrolment_token, args.enrolment_token_file.as_deref())?,
    };
    settings.rate_limits = RateLimits {
        people: args.rate_limit,
        workers: args.worker_rate_limit,
        refused_credentials: args.refused_credential_limit,
    };
    // Clap makes sure both or neither are given.
    settings.tls = args
        .tls_cert
        .zip(args.tls_key)
        .map(|(cert, key)| crate::tls::TlsFiles { cert, key });
    settings.metrics_bind = args.metrics_bind;
    settings.webhooks = crate::webhooks::WebhookSettings {
        allow_private: args.webhooks_allow_private,
        schedule: args.webhooks_retry_schedule.unwrap_or_default(),
    };
    if settings.webhooks.allow_private {
        tracing::warn!(
            "--webhooks-allow-private: webhooks may reach this machine and its private network"
        );
    }
    crate::metrics::set_enabled(args.metrics == "on");
    raise_open_file_limit(settings.max_waiting);
    let app = Application::build(settings.clone()).await?;
    let host = settings
        .bind
        .rsplit_once(':')
        .map_or("127.0.0.1", |(host, _)| host);
    // On stdout, one line, so scripts (and tests) that bind port 0 learn the port.
    println!(
        "renderfarm broker listening on {}://{host}:{} (data dir {})",
        app.scheme(),
        app.port(),
        settings.data_dir.display()
    );
    if let Some(port) = app.metrics_port() {
        let host = settings
            .metrics_bind
            .as_deref()
            .and_then(|b| b.rsplit_once(':'))
            .map_or("127.0.0.1", |(host, _)| host);
        tracing::info!(
            url = %format!("http://{host}:{port}/metrics"),
            "metrics served without credentials (--metrics-bind)"
        );
    }
    let handle = app.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping");
        handle.stop(true).await;
    });
    app.run_until_stopped().await?;
    tracing::info!("broker stopped");
    Ok(())
}

/// Lifts the soft limit on open files to the hard one: every waiting worker
/// holds a connection, and the usual soft limit (1,024) is below the number
/// of workers a broker may hold. Says so when even the hard limit is short.
pub fn raise_open_file_limit(max_waiting: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // Room for the store, the log and the clients that are not workers.
    const OTHER_FILES: u64 = 256;
    let wanted = max_waiting as u64 + OTHER_FILES;
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return;
        }
    };
    if limit < wanted {
        tracing::warn!(
            limit,
            max_waiting,
            "the open-file limit is below what --max-waiting needs; raise it (ulimit -n, LimitNOFILE=) or lower --max-waiting"
        );
    }
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    match StoreChoice::parse(args.store.as_deref())? {
        StoreChoice::Embedded => {
            let data_dir = args.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || {
                crate::store::sqlite::SqliteStore::open(&data_dir)
            })
            .await??;
            println!(
                "the embedded store {} is up to date",
                store.path().display()
            );
        }
        StoreChoice::MongoDb(uri) => {
            let store = crate::store::mongodb::MongoStore::connect(&uri, None)
                .await
                .context("connecting to MongoDB (is it running, and is the URI right?)")?;
            let applied = store.migrate().await?;
            if applied.is_empty() {
                println!(
                    "MongoDB at {}: nothing to apply, the schema is up to date",
                    store.target()
                );
            }
            for name in applied {
                println!("MongoDB at {}: applied {name}", store.target());
            }
        }
    }
    Ok(())
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let (frame_start, frame_end) = parse_frames(&args.frames)?;
    let name = args.name.unwrap_or_else(|| {
        std::path::Path::new(&args.file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| args.file.clone())
    });
    let client = client::connect(&args.broker.broker, &args.broker.client_options())?;
    let (blend_file, blend_sha256) = if args.upload {
        let file = std::path::Path::new(&args.file);
        eprintln!(
            "packing a self-contained copy of {} with Blender…",
            file.display()
        );
        let packed = transfer::pack(&args.blender, file).await?;
        for warning in &packed.report.warnings {
            eprintln!("warning: packing cannot carry the {warning}: the workers will not have it; bake it into the scene, or render from a shared drive without --upload");
        }
        let sha256 = sha256_file(&packed.path)
            .await
            .with_context(|| format!("hashing {}", packed.path.display()))?;
        transfer::upload(&client, &args.broker.broker, &packed.path, &sha256).await?;
        let shown = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| args.file.clone());
        (shown, Some(sha256))
    } else {
        (args.file, None)
    };
    let spec = RenderSpec {
        name,
        blend_file,
        blend_sha256,
        upload_frames: None,
        frame_start,
        frame_end,
        chunk_size: args.chunk,
        target_chunk_seconds: args.target_chunk_seconds,
        frame_order: args.frame_order,
        blocklist_after: args.blocklist_after,
        priority: args.priority,
        max_retries: args.max_retries,
        output: args.output,
        engine: args.engine,
        tags: args.tags,
        video: args.video_fps.map(|fps| VideoSpec {
            fps,
            codec: args.video_codec,
        }),
        depends_on: args.depends_on,
    };
    let render = client
        .submit(&spec)
        .await
        .map_err(client::explain(&args.broker.broker))?;
    if args.broker.json {
        println!("{}", serde_json::to_string_pretty(&render)?);
    } else {
        println!(
            "submitted render {} \"{}\": frames {}-{} in {} task(s), priority {}, output {}",
            render.id,
            render.name,
            render.frame_start,
            render.frame_end,
            render.progress.tasks_total,
            render.priority.as_str(),
            render.output
        );
        println!("follow it with: renderfarm watch {}", render.id);
        if render.upload_frames {
            println!(
                "fetch its frames with: renderfarm download {} DIR",
                render.id
            );
        }
        if let Some(video) = &render.video {
            println!(
                "a {} video at {} fps follows the frames; fetch it with: renderfarm download {} DIR --video",
                video.codec.as_str(),
                video.fps,
                render.id
            );
        }
    }
    Ok(())
}

async fn download(args: DownloadArgs) -> anyhow::Result<()> {
    let render: uuid::Uuid = args.render.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "{:?} is not a render id; give the id `renderfarm submit` printed (see `renderfarm renders`)",
            args.render
        )
    })?;
    let client = client::connect(&args.broker.broker, &args.broker.client_options())?;
    if args.video {
        let (path, bytes) =
            transfer::download_video(&client, &args.broker.broker, render, &args.dir).await?;
        if args.broker.json {
            println!(
                "{}",
                serde_json::json!({"path": path.display().to_string(), "bytes": bytes})
            );
        } else {
            println!("the video is in {} ({bytes} bytes)", path.display());
        }
        return Ok(());
    }
    let (list, fetched, kept) =
        transfer::download(&client, &args.broker.broker, render, &args.dir).await?;
    if args.broker.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{} frame(s) in {}: {fetched} downloaded, {kept} already there",
        fetched + kept,
        args.dir.display()
    );
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = client::connect(&args.broker.broker, &args.broker.client_options())?;
    let render = client
        .render(&args.id)
        .await
        .map_err(client::explain(&args.broker.broker))?;
    if args.broker.json {
        println!("{}", serde_json::to_string_pretty(&render)?);
        return Ok(());
    }
    let p = &render.progress;
    let percent = if p.frames_total > 0 {
        100.0 * p.frames_done as f64 / p.frames_total as f64
    } else {
        0.0
    };
    println!("render    {} \"{}\"", render.id, render.name);
    println!(
        "status    {} ({} priority)",
        render.status.as_str(),
        render.priority.as_str()
    );
    if let Some(reason) = &render.waiting_reason {
        println!(
            "waiting   {reason} (`renderfarm release {}` starts it now)",
            render.id
        );
    } else if !render.depends_on.is_empty() {
        let deps: Vec<String> = render
            .depends_on
            .iter()
            .map(uuid::Uuid::to_string)
            .collect();
        println!("after     {}", deps.join(", "));
    }
    println!(
        "frames    {}/{} done ({percent:.1}%)",
        p.frames_done, p.frames_total
    );
    println!(
        "tasks     {} total: {} pending, {} running, {} completed, {} failed, {} canceled",
        p.tasks_total,
        p.tasks_pending,
        p.tasks_running,
        p.tasks_completed,
        p.tasks_failed,
        p.tasks_canceled
    );
    println!("chunks    {}", chunking_line(&render));
    println!("output    {}", render.output);
    if let Some(video) = &render.video {
        println!(
            "video     {} fps {}: {}",
            video.fps,
            video.codec.as_str(),
            watch::video_state(render.video_status)
        );
    }
    if let Some(owner) = &render.owner {
        println!("owner     {owner}");
    }
    Ok(())
}

/// How a render's frames are chunked, as `status` tells it.
fn chunking_line(render: &renderfarm_wire::Render) -> String {
    let Some(target) = render
        .target_chunk_seconds
        .filter(|_| render.chunk_size_auto)
    else {
        return format!("{} frames each", render.chunk_size);
    };
    match render.measured_frame_seconds {
        Some(frame) => format!(
            "auto: {} frames each for a {target} s target, measured {frame:.2} s a frame",
            render.chunk_size
        ),
        None => format!(
            "auto: {} frames each (first guess) for a {target} s target, not measured yet",
            render.chunk_size
        ),
    }
}

async fn workers(args: BrokerArgs) -> anyhow::Result<()> {
    let client = client::connect(&args.broker, &args.client_options())?;
    let workers = client
        .workers()
        .await
        .map_err(client::explain(&args.broker))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&workers)?);
        return Ok(());
    }
    if workers.is_empty() {
        println!(
            "no workers registered; start one with renderfarm-worker --broker {}",
            args.broker
        );
        return Ok(());
    }
    println!(
        "{:<36}  {:<20}  {:<9}  {:<8}  {:<36}  {:<20}  hours",
        "id", "name", "status", "platform", "task", "last heartbeat"
    );
    for w in workers {
        println!(
            "{:<36}  {:<20}  {:<9}  {:<8}  {:<36}  {:<20}  {}",
            w.id,
            w.name,
            w.status.as_str(),
            w.platform.as_str(),
            w.current_task_id
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            w.last_heartbeat
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            operator::describe_hours(&w)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_allowance, parse_frames, Allowance, Cli};
    use crate::startup::{Per, RateLimit, RateLimits};
    use clap::Parser;

    fn serve_args(args: &[&str]) -> Result<super::ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(["renderfarm", "serve"].iter().chain(args))?;
        match cli.command {
            super::Command::Serve(args) => Ok(*args),
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn rate_limit_flags_default_to_the_settings_defaults_and_refuse_bad_forms_clearly() {
        let args = serve_args(&[]).unwrap();
        assert_eq!(
            RateLimits {
                people: args.rate_limit,
                workers: args.worker_rate_limit,
                refused_credentials: args.refused_credential_limit,
            },
            RateLimits::default()
        );
        let args = serve_args(&["--rate-limit", "2/m", "--worker-rate-limit", "off"]).unwrap();
        assert_eq!(args.rate_limit, RateLimit::new(2, Per::Minute, 2));
        assert_eq!(args.worker_rate_limit, RateLimit::Off);
        let args = serve_args(&["--worker-rate-limit", "50/s:200"]).unwrap();
        assert_eq!(args.worker_rate_limit, RateLimit::new(50, Per::Second, 200));
        let error = serve_args(&["--rate-limit", "lots"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--rate-limit") && error.contains("N/s or N/m"),
            "{error}"
        );
    }

    #[test]
    fn submit_takes_a_video_rate_and_a_codec_only_with_it() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["renderfarm", "submit", "x.blend"].iter().chain(args))
        };
        let super::Command::Submit(args) = parse(&["--video-fps", "24"]).unwrap().command else {
            panic!("submit")
        };
        assert_eq!(
            (args.video_fps, args.video_codec),
            (Some(24), renderfarm_wire::VideoCodec::H264)
        );
        let super::Command::Submit(args) = parse(&[]).unwrap().command else {
            panic!("submit")
        };
        assert_eq!(args.video_fps, None, "no video unless asked");
        assert!(
            parse(&["--video-codec", "h264"]).is_err(),
            "a codec needs a rate"
        );
        let error = parse(&["--video-fps", "24", "--video-codec", "vp9"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("use h264"), "{error}");
    }

    #[test]
    fn frame_arguments_parse_as_ranges_or_single_frames() {
        assert_eq!(parse_frames("1-250").unwrap(), (1, 250));
        assert_eq!(parse_frames("7").unwrap(), (7, 7));
        assert!(parse_frames("a-b").is_err());
        assert!(parse_frames("").is_err());
    }

    #[test]
    fn scheduler_flags_take_durations_or_never_and_default_to_the_documented_values() {
        assert_eq!(parse_allowance("never").unwrap(), Allowance(None));
        assert_eq!(
            parse_allowance("2m").unwrap(),
            Allowance(Some(std::time::Duration::from_secs(120)))
        );
        assert!(parse_allowance("soon").is_err());
        let cli = Cli::try_parse_from(["renderfarm", "serve"]).unwrap();
        let super::Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let s = args.scheduler.settings().unwrap();
        assert_eq!(s.tick, std::time::Duration::from_secs(30));
        assert_eq!(s.worker_timeout, chrono::Duration::seconds(60));
        assert_eq!(s.allowances, crate::domain::Allowances::default());
        assert_eq!(
            s.keep_finished, None,
            "finished renders are kept unless asked"
        );
        assert!(Cli::try_parse_from(["renderfarm", "serve", "--tick", "0s"]).is_err());
        let cli =
            Cli::try_parse_from(["renderfarm", "serve", "--keep-finished", "30days"]).unwrap();
        let super::Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(
            args.scheduler.settings().unwrap().keep_finished,
            Some(chrono::Duration::days(30))
        );
    }
}
