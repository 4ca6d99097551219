//! Real Blender: a generated scene rendered through the farm (broker + W
//! agents), then the same chunks by W plain Blender processes side by side,
//! as a user would with `xargs -P W`, in the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use renderfarm_wire::{Priority, RenderSpec};
use renderfarm_worker::blender::scene::{make_scene, SceneSpec};
use renderfarm_worker::blender::warm::WarmConfig;
use renderfarm_worker::blender::{check_blender, RenderJob};
use renderfarm_worker::{Agent, AgentConfig, StopSignals};
use serde_json::json;
use tokio::sync::Mutex;

use crate::broker::{Auth, Broker};

/// A scene whose chunks take a few seconds of rendering each on 2 cores.
pub(crate) fn bench_scene(frames: i64) -> SceneSpec {
    SceneSpec {
        frames,
        width: 160,
        height: 90,
        samples: 16,
        denoise: false,
    }
}

/// How the farm's files travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Files {
    /// Every machine sees the blend and the output folder (one machine
    /// here): the path is submitted, Blender writes the frames in place.
    Shared,
    /// Through the broker: the blend uploaded before the submit (not timed),
    /// each agent downloads it once, every frame goes back to the broker.
    Broker,
    /// Rounds of both (and of plain Blender), the broker's against the
    /// shared run's 2 % budget.
    Compare,
}

/// The agents' warm Blender (issue 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Warm {
    On,
    Off,
    /// Issue 17's cases on one run (see `crate::warm`).
    Compare,
}

/// Issue 13: frames through the broker may cost the farm at most this much
/// against a shared directory.
const FILES_BUDGET_PERCENT: f64 = 2.0;

#[allow(clippy::too_many_arguments)]
pub async fn farm(
    workers: usize,
    frames: i64,
    chunk: i64,
    rounds: usize,
    blender: &Path,
    auth: Auth,
    files: Files,
    warm: WarmConfig,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        workers > 0 && frames > 0 && chunk > 0,
        "give positive --workers, --frames and --chunk"
    );
    check_blender(blender).await?;
    let dir = tempfile::tempdir()?;
    let scene = dir.path().join("bench.blend");
    make_scene(blender, &scene, bench_scene(frames)).await?;
    let chunks: Vec<(i64, i64)> = (1..=frames)
        .step_by(chunk as usize)
        .map(|s| (s, (s + chunk - 1).min(frames)))
        .collect();

    // Alternate the two, so that whatever else the machine does weighs on
    // both alike; the best round of each is compared.
    let mut farm_runs = Vec::new();
    let mut broker_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    for round in 0..rounds.max(1) {
        let round_dir = dir.path().join(format!("round-{round}"));
        if files != Files::Broker {
            farm_runs.push(
                through_the_farm(
                    workers, frames, chunk, blender, &scene, &round_dir, auth, false, warm,
                )
                .await?,
            );
        }
        if files != Files::Shared {
            broker_runs.push(
                through_the_farm(
                    workers,
                    frames,
                    chunk,
                    blender,
                    &scene,
                    &round_dir.join("through-broker"),
                    auth,
                    true,
                    warm,
                )
                .await?,
            );
        }
        baseline_runs.push(
            plain_parallel(
                workers,
                &chunks,
                blender,
                &scene,
                &round_dir.join("baseline"),
            )
            .await?,
        );
    }
    let best = |runs: &[f64]| runs.iter().copied().fold(f64::INFINITY, f64::min);
    let round3 = |runs: &[f64]| {
        runs.iter()
            .map(|s| (s * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    };
    let baseline_seconds = best(&baseline_runs);
    if files != Files::Shared {
        let broker_seconds = best(&broker_runs);
        let mut line = json!({
            "bench": "farm",
            "files": "broker",
            "auth": auth.as_str(),
            "warm": if warm.enabled { "on" } else { "off" },
            "workers": workers,
            "frames": frames,
            "chunk": chunk,
            "chunks": chunks.len(),
            "broker_seconds": (broker_seconds * 1000.0).round() / 1000.0,
            "baseline_seconds": (baseline_seconds * 1000.0).round() / 1000.0,
            "efficiency_broker": (baseline_seconds / broker_seconds * 1000.0).round() / 1000.0,
            "broker_runs": round3(&broker_runs),
            "baseline_runs": round3(&baseline_runs),
        });
        if files == Files::Compare {
            let shared_seconds = best(&farm_runs);
            let slower = (broker_seconds / shared_seconds - 1.0) * 100.0;
            line["files"] = json!("compare");
            line["shared_seconds"] = json!((shared_seconds * 1000.0).round() / 1000.0);
            line["efficiency_shared"] =
                json!((baseline_seconds / shared_seconds * 1000.0).round() / 1000.0);
            line["shared_runs"] = json!(round3(&farm_runs));
            line["broker_slower_percent"] = json!((slower * 10.0).round() / 10.0);
            line["budget_percent"] = json!(FILES_BUDGET_PERCENT);
            line["verdict"] = json!(if slower <= FILES_BUDGET_PERCENT {
                "PASS"
            } else {
                "FAIL"
            });
        }
        return Ok(line.to_string());
    }
    let farm_seconds = best(&farm_runs);
    Ok(json!({
        "bench": "farm",
        "auth": auth.as_str(),
        "warm": if warm.enabled { "on" } else { "off" },
        "workers": workers,
        "frames": frames,
        "chunk": chunk,
        "chunks": chunks.len(),
        "farm_seconds": (farm_seconds * 1000.0).round() / 1000.0,
        "baseline_seconds": (baseline_seconds * 1000.0).round() / 1000.0,
        "efficiency": (baseline_seconds / farm_seconds * 1000.0).round() / 1000.0,
        "farm_runs": round3(&farm_runs),
        "baseline_runs": round3(&baseline_runs),
    })
    .to_string())
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn through_the_farm(
    workers: usize,
    frames: i64,
    chunk: i64,
    blender: &Path,
    scene: &Path,
    dir: &Path,
    auth: Auth,
    through_broker: bool,
    warm: WarmConfig,
) -> anyhow::Result<f64> {
    let broker = Broker::start(auth)?;
    let signals = StopSignals::default();
    let mut agents = Vec::new();
    for i in 0..workers {
        let config = AgentConfig {
            broker: broker.address.clone(),
            name: format!("bench-{i}"),
            tags: vec![],
            blender: blender.to_path_buf(),
            ffmpeg: "ffmpeg".into(),
            work_dir: dir.join(format!("agent-{i}")),
            heartbeat: Duration::from_secs(10),
            log_interval: Duration::from_secs(1),
            poll_wait: Duration::from_secs(30),
            enrolment_token: broker.enrolment_token(),
            ca_file: None,
            cache_size: renderfarm_worker::cache::DEFAULT_CACHE_SIZE,
            previews: true,
            warm,
            hours: Default::default(),
        };
        let agent = Agent::new(config, signals.clone()).await?;
        agents.push(tokio::spawn(agent.run()));
    }
    let client = broker.admin()?;
    // Wait until every agent is registered and polling, as a farm at rest.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.workers().await?.len() >= workers {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the agents did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let blend_sha256 = if through_broker {
        let sha256 = renderfarm_client::sha256_file(scene).await?;
        client.upload_file(scene, &sha256, &|_, _| {}).await?;
        Some(sha256)
    } else {
        None
    };
    let spec = RenderSpec {
        name: "bench".into(),
        blend_file: if through_broker {
            "bench.blend".into()
        } else {
            scene.display().to_string()
        },
        blend_sha256: blend_sha256.clone(),
        upload_frames: Some(through_broker),
        frame_start: 1,
        frame_end: frames,
        chunk_size: chunk.into(),
        target_chunk_seconds: None,
        frame_order: Default::default(),
        blocklist_after: None,
        priority: Priority::Normal,
        max_retries: 0,
        output: Some(format!("{}/farm/frame_####", dir.display())),
        engine: None,
        tags: vec![],
        video: None,
        depends_on: vec![],
    };
    let started = Instant::now();
    let render = client.submit(&spec).await?;
    // The broker stamps the render's creation and its last task's completion;
    // those two times are the farm's, so polling can be slow and cost the
    // renders nothing.
    let finished = loop {
        let now = client.render(render.id).await?;
        if now.status.is_finished() {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let finished_at = finished
        .finished_at
        .context("a completed render has a finish time")?;
    let seconds = (finished_at - finished.created_at)
        .num_microseconds()
        .unwrap_or(i64::MAX) as f64
        / 1e6;
    tracing::info!(
        wall_seconds = started.elapsed().as_secs_f64(),
        seconds,
        "farm render done"
    );
    anyhow::ensure!(
        finished.status == renderfarm_wire::RenderStatus::Completed,
        "the farm render ended {}",
        finished.status.as_str()
    );
    if through_broker {
        let stored = client.frames(render.id).await?.frames.len() as i64;
        anyhow::ensure!(
            stored == frames,
            "{stored} of {frames} frames are stored at the broker"
        );
    }
    signals.stop.cancel();
    signals.abort.cancel();
    for agent in agents {
        let _ = agent.await;
    }
    Ok(seconds)
}

pub(crate) async fn plain_parallel(
    workers: usize,
    chunks: &[(i64, i64)],
    blender: &Path,
    scene: &Path,
    out: &Path,
) -> anyhow::Result<f64> {
    let queue = Arc::new(Mutex::new(chunks.to_vec()));
    let started = Instant::now();
    let mut runners = Vec::new();
    for _ in 0..workers {
        let (queue, blender, scene, out) = (
            queue.clone(),
            blender.to_path_buf(),
            scene.to_path_buf(),
            out.to_path_buf(),
        );
        runners.push(tokio::spawn(async move {
            loop {
                let Some((from, to)) = queue.lock().await.pop() else {
                    break;
                };
                let job = RenderJob {
                    blend_file: scene.display().to_string(),
                    output: format!("{}/frame_####", out.display()),
                    engine: None,
                    from,
                    to,
                    path_mappings: Vec::new(),
                };
                let status = tokio::process::Command::new(&blender)
                    .args(job.args())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .await
                    .context("running Blender")?;
                anyhow::ensure!(
                    status.success(),
                    "Blender failed on frames {from}-{to}: {status}"
                );
            }
            anyhow::Ok(())
        }));
    }
    for r in runners {
        r.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}
