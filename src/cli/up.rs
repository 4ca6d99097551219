//! `renderfarm up`: the broker and N worker agents in one process, on the
//! embedded store, stopped together by Ctrl-C. `--demo` renders a generated
//! scene and shows its progress.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use renderfarm_wire::{Priority, RenderSpec, RenderStatus};
use renderfarm_worker::blender::check_blender;
use renderfarm_worker::blender::scene::{make_scene, SceneSpec};
use renderfarm_worker::{Agent, AgentConfig, AgentSummary, StopSignals};
use tokio::task::JoinHandle;

use super::client::{connect, explain};
use super::shutdown_signal;
use super::watch::{follow, Target, View};
use crate::credentials::{random_bytes, Bootstrap};
use crate::domain::secret_from;
use crate::startup::{Application, Settings, StoreChoice};

/// How long stopping agents get to hand their tasks back.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(30);
const MONITOR_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many local worker agents to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Render a generated demo scene, show its progress, print where the
    /// frames are, and stop.
    #[arg(long)]
    demo: bool,
    /// Frames in the demo scene.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    demo_frames: i64,
    /// Address the broker listens on.
    #[arg(long, env = "RENDERFARM_BIND", default_value = "127.0.0.1:8080")]
    bind: String,
    /// Where the store, the demo scene and the frames go.
    #[arg(long, env = "RENDERFARM_DATA_DIR", default_value = "renderfarm-data")]
    data_dir: PathBuf,
    /// Where default render outputs go, and the only folder whose frames
    /// the broker serves (`GET /renders/{id}/frames`) [default:
    /// <data-dir>/renders].
    #[arg(long, env = "RENDERFARM_OUTPUT_ROOT")]
    output_root: Option<PathBuf>,
    /// The Blender executable the agents run.
    #[arg(long, env = "RENDERFARM_BLENDER", default_value = "blender")]
    blender: PathBuf,
    /// The ffmpeg the agents assemble renders' videos with (without a
    /// working one they render chunks only).
    #[arg(long, env = "RENDERFARM_FFMPEG", default_value = "ffmpeg")]
    ffmpeg: PathBuf,
    #[command(flatten)]
    scheduler: super::SchedulerArgs,
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    // Before anything starts: a farm without Blender renders nothing.
    check_blender(&args.blender).await?;
    let data_dir = std::path::absolute(&args.data_dir)?;
    let credentials = UpCredentials::load_or_make(&data_dir)?;
    let mut settings = Settings::new(args.bind.clone(), data_dir.clone(), StoreChoice::Embedded);
    settings.output_root = args.output_root.clone();
    settings.bootstrap = Bootstrap {
        admin_secret: Some(credentials.admin.clone()),
        enrolment_secret: Some(credentials.enrolment.clone()),
    };
    settings.scheduler = args.scheduler.settings()?;
    super::raise_open_file_limit(settings.max_waiting);
    let app = Application::build(settings).await?;
    let broker = format!("http://127.0.0.1:{}", app.port());
    let server_handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());

    let signals = StopSignals::default();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let mut agents: Vec<JoinHandle<anyhow::Result<AgentSummary>>> = Vec::new();
    for i in 1..=args.workers {
        let config = AgentConfig {
            broker: broker.clone(),
            name: format!("{host}-{i}"),
            tags: Vec::new(),
            blender: args.blender.clone(),
            ffmpeg: args.ffmpeg.clone(),
            work_dir: data_dir.join("workers").join(i.to_string()),
            heartbeat: Duration::from_secs(5),
            log_interval: Duration::from_secs(1),
            poll_wait: Duration::from_secs(30),
            enrolment_token: Some(credentials.enrolment.clone()),
            ca_file: None,
            cache_size: renderfarm_worker::cache::DEFAULT_CACHE_SIZE,
            previews: true,
            warm: renderfarm_worker::blender::warm::WarmConfig::default(),
            hours: Default::default(),
        };
        let agent = Agent::new(config, signals.clone()).await?;
        agents.push(tokio::spawn(agent.run()));
    }
    println!(
        "renderfarm is up: broker {broker} (data in {}), {} worker(s). Ctrl-C stops it all.",
        data_dir.display(),
        args.workers
    );
    println!(
        "the command line's admin token is in {}: export RENDERFARM_TOKEN_FILE={0}",
        credentials.admin_file.display()
    );
    println!(
        "the dashboard: {broker}/ (sign in with that token, or one made with `renderfarm token create`)"
    );

    let outcome = if args.demo {
        tokio::select! {
            outcome = run_demo(&broker, &credentials.admin, &args, &data_dir) => outcome,
            _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted before the demo finished")),
        }
    } else {
        println!("submit work with: renderfarm submit FILE.blend --frames 1-250 --broker {broker}");
        shutdown_signal().await;
        Ok(())
    };

    println!("stopping: the workers hand back their tasks, then the broker stops");
    signals.stop.cancel();
    signals.abort.cancel();
    for agent in agents {
        match tokio::time::timeout(AGENT_STOP_GRACE, agent).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "an agent stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "an agent crashed"),
            Err(_) => tracing::warn!("an agent did not stop in time"),
        }
    }
    server_handle.stop(true).await;
    let _ = server.await;
    outcome
}

async fn run_demo(
    broker: &str,
    token: &str,
    args: &UpArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let scene = data_dir.join("demo").join("demo.blend");
    println!(
        "making a {}-frame demo scene with Blender: {}",
        args.demo_frames,
        scene.display()
    );
    let spec = SceneSpec {
        frames: args.demo_frames,
        width: 160,
        height: 90,
        samples: 8,
        denoise: false,
    };
    make_scene(&args.blender, &scene, spec).await?;
    let client = connect(broker, &Default::default())?.with_token(Some(token.to_string()));
    let render = client
        .submit(&RenderSpec {
            name: "demo".into(),
            blend_file: scene.display().to_string(),
            blend_sha256: None,
            upload_frames: None,
            frame_start: 1,
            frame_end: args.demo_frames,
            chunk_size: 4.into(),
            target_chunk_seconds: None,
            frame_order: Default::default(),
            blocklist_after: None,
            priority: Priority::Normal,
            max_retries: 1,
            output: None,
            engine: None,
            tags: Vec::new(),
            video: None,
            depends_on: Vec::new(),
        })
        .await
        .map_err(explain(broker))
        .context("submitting the demo render")?;
    let mut view = View::for_output(false);
    let target = Target::These(vec![render.id.to_string()]);
    let render = follow(&client, &target, MONITOR_INTERVAL, &mut view)
        .await?
        .pop()
        .context("the demo render vanished")?;
    let frames_dir = std::path::Path::new(&render.output)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| render.output.clone());
    if render.status == RenderStatus::Completed {
        println!(
            "demo render completed: {} frames in {frames_dir}",
            render.progress.frames_done
        );
        Ok(())
    } else {
        anyhow::bail!(
            "demo render ended {}; to see why, start the broker on the same data (`renderfarm serve --data-dir {}`), then `renderfarm tasks {} --status failed` and `renderfarm log TASK_ID`",
            render.status.as_str(),
            data_dir.display(),
            render.id
        )
    }
}

/// The farm's own credentials: an admin token for the command line and an
/// enrolment token for the local agents, kept in the data directory (only
/// this user may read them) so that every `up` on it uses the same ones.
struct UpCredentials {
    admin: String,
    admin_file: PathBuf,
    enrolment: String,
}

impl UpCredentials {
    fn load_or_make(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("credentials");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let admin_file = dir.join("admin.token");
        Ok(Self {
            admin: Self::secret_in(&admin_file)?,
            enrolment: Self::secret_in(&dir.join("enrolment.token"))?,
            admin_file,
        })
    }

    fn secret_in(path: &std::path::Path) -> anyhow::Result<String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_string());
            }
        }
        let secret = secret_from(random_bytes()?);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(format!("{secret}\n").as_bytes())?;
        file.sync_all()?;
        Ok(secret)
    }
}
