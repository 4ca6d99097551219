//! `renderfarm-worker`: the agent that runs on every render machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use renderfarm_wire::WorkerHours;
use renderfarm_worker::blender::warm::WarmConfig;
use renderfarm_worker::gpu::{GpuChoice, NVIDIA_SMI};
use renderfarm_worker::{Agent, AgentConfig, AgentSummary, StopSignals};

/// Renders tasks from a renderfarm broker with Blender, and assembles
/// renders' videos with ffmpeg.
#[derive(Debug, Parser)]
#[command(name = "renderfarm-worker", version, about)]
struct Cli {
    /// The broker's address.
    #[arg(
        long,
        env = "RENDERFARM_BROKER",
        default_value = "http://127.0.0.1:8080"
    )]
    broker: String,
    /// The fleet's enrolment token (role worker) to register with; after
    /// that the agent acts with its own secret, kept in the work directory.
    #[arg(long, env = "RENDERFARM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the enrolment token (a Docker or Kubernetes secret).
    #[arg(long, env = "RENDERFARM_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The PEM certificate of the authority that signed an https:// broker's
    /// certificate (a private CA), trusted on top of the system's.
    #[arg(long, env = "RENDERFARM_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Name shown to operators (default: the host name).
    #[arg(long, env = "RENDERFARM_WORKER_NAME")]
    name: Option<String>,
    /// Tags this machine carries (renders can require them), comma-separated.
    #[arg(long, env = "RENDERFARM_WORKER_TAGS", value_delimiter = ',')]
    tags: Vec<String>,
    /// The Blender executable.
    #[arg(long, env = "RENDERFARM_BLENDER", default_value = "blender")]
    blender: PathBuf,
    /// The ffmpeg that assembles renders' frames into videos. Checked at
    /// start (`ffmpeg -version`): without a working one the worker still
    /// renders chunks but announces no video tasks.
    #[arg(long, env = "RENDERFARM_FFMPEG", default_value = "ffmpeg")]
    ffmpeg: PathBuf,
    /// Where Blender and ffmpeg run (a video's frames are gathered here) and
    /// undelivered reports are kept (default: a folder in the temp dir).
    #[arg(long, env = "RENDERFARM_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// How often to tell the broker this worker is alive while rendering.
    #[arg(long, env = "RENDERFARM_HEARTBEAT", default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// How often to send new log lines and progress while rendering.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    log_interval: Duration,
    /// How long one request for work waits at the broker (at most 60s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    poll_wait: Duration,
    /// The most disk the blend files fetched from the broker may take in the
    /// work directory (least recently used go first), e.g. 20GiB or 500MB.
    #[arg(long, env = "RENDERFARM_CACHE_SIZE", default_value = "20GiB", value_parser = renderfarm_worker::cache::parse_size)]
    cache_size: u64,
    /// Send the broker a small JPEG of the newest frame saved, about once a
    /// second while rendering, for the dashboard and the Blender add-on
    /// (`off` saves the tens of milliseconds each takes to make).
    #[arg(long, env = "RENDERFARM_PREVIEWS", default_value = "on", value_parser = ["on", "off"])]
    previews: String,
    /// Keep Blender loaded between the chunks of a render (on), so that every
    /// chunk after the first skips Blender's start-up and the file's load; off
    /// starts a fresh `blender -b FILE ... -a` for every chunk. A file whose
    /// own scripts ran at load is never kept warm.
    #[arg(long, env = "RENDERFARM_WARM", default_value = "on", value_parser = ["on", "off"])]
    warm: String,
    /// How long a warm Blender waits for the render's next chunk before it
    /// ends and frees its memory.
    #[arg(long, env = "RENDERFARM_WARM_IDLE", default_value = "60s", value_parser = humantime::parse_duration)]
    warm_idle: Duration,
    /// A warm Blender holding more resident memory than this after a chunk
    /// ends, and the next chunk starts fresh (per Blender process), e.g. 8GiB.
    #[arg(long, env = "RENDERFARM_WARM_MAX_RSS", default_value = "8GiB", value_parser = renderfarm_worker::cache::parse_size)]
    warm_max_rss: u64,
    /// A warm Blender ends after this many chunks, and the next starts fresh.
    #[arg(long, env = "RENDERFARM_WARM_MAX_CHUNKS", default_value = "100", value_parser = clap::value_parser!(u32).range(1..))]
    warm_max_chunks: u32,
    /// Run one task per GPU at once: `auto` for every GPU nvidia-smi lists,
    /// or indices as nvidia-smi numbers them (e.g. 0,1). Off by default.
    ///
    /// Each GPU is a slot, a worker of its own to the broker: named
    /// NAME/gpuINDEX, with --tags and `gpu` (a render that needs a GPU
    /// requires the tag `gpu`), its own secret, leases, heartbeats and
    /// undelivered reports under WORK_DIR/gpuINDEX. Its Blender renders
    /// Cycles on that GPU alone (CUDA_VISIBLE_DEVICES, and a --python-expr
    /// set-up before the render's arguments that picks OptiX, else CUDA); a
    /// chunk whose Blender sees no GPU fails with the reason in its log,
    /// never renders on the CPU. Each slot keeps at most one warm Blender of
    /// its own, bounded on its own by --warm-max-rss, --warm-idle and
    /// --warm-max-chunks, holding its scene in its own GPU's memory until it
    /// ends. The slots share the blend cache; a signal stops them all.
    ///
    /// `auto` on a machine without nvidia-smi or without a GPU warns and runs
    /// the agent as one worker without GPU slots and without the `gpu` tag,
    /// as without --gpus (so one setting fits every machine). Indices that
    /// nvidia-smi does not list, or cannot be checked, stop the agent at start
    /// with an error.
    #[arg(long, env = "RENDERFARM_GPUS", value_name = "auto|0,1,...")]
    gpus: Option<GpuChoice>,
    /// The hours this worker takes new work in, in its own time zone:
    /// comma-separated entries of days (`mon`, `mon-fri`, `fri-mon`, `daily`)
    /// and optionally hours; a range that crosses midnight belongs to the
    /// day it starts. E.g. "mon-fri 19:00-07:00, sat-sun" renders on
    /// weeknights and all weekend. Outside them it takes no new task (the
    /// running one finishes unless --strict-hours). Operators may set other
    /// hours through the API (`renderfarm worker-hours`), which win until
    /// cleared. Absent: at any time.
    #[arg(long, env = "RENDERFARM_AVAILABLE", value_name = "SCHEDULE")]
    available: Option<String>,
    /// The IANA time zone the hours are read in (e.g. Europe/Berlin);
    /// daylight-saving changes follow it. Default: the system's (TZ, else
    /// /etc/localtime), else UTC.
    #[arg(long, env = "RENDERFARM_TIME_ZONE", value_name = "ZONE")]
    time_zone: Option<String>,
    /// When the hours end, hand the running task back to the queue (another
    /// worker takes it from its first frame) rather than finish it.
    #[arg(long, env = "RENDERFARM_STRICT_HOURS")]
    strict_hours: bool,
    /// On SIGTERM or Ctrl-C, finish the current task before stopping (a second
    /// signal aborts it). Without it the task is aborted and handed back.
    #[arg(long)]
    drain: bool,
    /// How log lines are written: text for a terminal, or json (one object
    /// per line with the task's, render's and worker's ids as fields, for a
    /// log collector).
    #[arg(long, env = "RENDERFARM_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The TLS verifier's own report of a refused certificate is left out by
    // default: the agent's error says it, with what to do.
    let filter = tracing_subscriber::EnvFilter::new(
        std::env::var("RENDERFARM_LOG")
            .unwrap_or_else(|_| "info,rustls_platform_verifier=off".into()),
    );
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cli.log_format == "json" {
        logs.json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.poll_wait > Duration::from_secs(60) {
        anyhow::bail!(
            "--poll-wait is {:?}; the broker waits at most 60s",
            cli.poll_wait
        );
    }
    // Before Blender's check: a --gpus that cannot be had is the first thing
    // to fix.
    let gpus = match &cli.gpus {
        Some(choice) => renderfarm_worker::gpu::choose(choice, Path::new(NVIDIA_SMI)).await?,
        None => Vec::new(),
    };
    for gpu in &gpus {
        tracing::info!(gpu = gpu.index, uuid = %gpu.uuid, "a GPU slot on {gpu}");
    }
    let name = cli
        .name
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let work_dir = cli
        .work_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("renderfarm-worker-{name}")));
    let config = AgentConfig {
        broker: cli.broker,
        name,
        tags: cli.tags,
        blender: cli.blender,
        ffmpeg: cli.ffmpeg,
        work_dir,
        heartbeat: cli.heartbeat,
        log_interval: cli.log_interval,
        poll_wait: cli.poll_wait,
        enrolment_token: match &cli.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading the token file {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => cli.token,
        },
        ca_file: cli.ca,
        cache_size: cli.cache_size,
        previews: cli.previews == "on",
        warm: WarmConfig {
            enabled: cli.warm == "on",
            idle: cli.warm_idle,
            max_rss: cli.warm_max_rss,
            max_chunks: cli.warm_max_chunks,
        },
        hours: WorkerHours {
            time_zone: Some(cli.time_zone.unwrap_or_else(system_time_zone)),
            available: cli.available,
            strict_hours: cli.strict_hours,
        },
    };
    let signals = StopSignals::default();
    let indices: Vec<u32> = gpus.iter().map(|g| g.index).collect();
    let agent = Agent::with_gpu_slots(config, &indices, signals.clone()).await?;
    tokio::spawn(watch_signals(signals, cli.drain));
    let summary = agent.run().await?;
    eprintln!(
        "renderfarm-worker stopped: {}; {} blend file(s) downloaded",
        counts(&summary),
        summary.blends_downloaded
    );
    for slot in &summary.slots {
        eprintln!(
            "  {} (GPU {}): {}",
            slot.name,
            slot.gpu,
            counts(&slot.summary)
        );
    }
    Ok(())
}

/// The machine's IANA zone: `TZ` when it names one, else the system's
/// (`/etc/localtime`), else UTC with a warning.
fn system_time_zone() -> String {
    let from_env = std::env::var("TZ")
        .ok()
        .map(|tz| tz.trim_start_matches(':').to_string())
        .filter(|tz| tz.contains('/') || tz == "UTC");
    if let Some(tz) = from_env {
        return tz;
    }
    match iana_time_zone::get_timezone() {
        Ok(tz) => tz,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell this machine's time zone; reading --available in UTC (set --time-zone)");
            "UTC".to_string()
        }
    }
}

fn counts(summary: &AgentSummary) -> String {
    format!(
        "{} completed, {} failed, {} aborted by the broker, {} handed back",
        summary.completed, summary.failed, summary.aborted, summary.released
    )
}

/// First SIGTERM/Ctrl-C: take no new work (and abort the current task unless
/// draining). A second one aborts in any case.
async fn watch_signals(signals: StopSignals, drain: bool) {
    let mut first = true;
    loop {
        if wait_for_signal().await.is_err() {
            return;
        }
        if first && drain {
            tracing::info!("stopping after the current task (signal again to abort it)");
            signals.stop.cancel();
        } else {
            tracing::info!("stopping; handing the current task back");
            signals.stop.cancel();
            signals.abort.cancel();
        }
        first = false;
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
