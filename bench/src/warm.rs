//! Issue 17's figures, on one run (`renderfarm-bench farm --warm compare`):
//! (a) a scene slow to load, 1-frame chunks, W agents kept warm against W
//! plain Blender processes side by side, one per frame (`xargs -P W`);
//! (b) the farm bench's scene in its chunks, the farm warm against cold;
//! (c) the resident memory of one warm Blender over many chunks.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use renderfarm_worker::blender::warm::{peak_rss_bytes, rss_bytes, Launcher, SceneKey, WarmConfig};
use renderfarm_worker::blender::RenderJob;
use serde_json::{json, Value};
use tokio::process::Command;

use crate::broker::Auth;
use crate::farm::{bench_scene, plain_parallel, through_the_farm};

const SLOW_SCENE_SCRIPT: &str = include_str!("slow_scene.py");

/// What makes the slow scene slow: six dense meshes (an icosphere of 81,920
/// faces subdivided 3 times, about 1.3 M faces each) and a 2048² image of
/// noise, packed. About 790 MB on disk, which Blender 3.4 reads in more than
/// a second here (two copies, 270 MB, took 0.45 s).
const SLOW_COPIES: u32 = 6;
const SLOW_SUBDIVISIONS: u32 = 3;
const SLOW_IMAGE: u32 = 2048;

/// Blender times its own read of the file: `open_mainfile` of the file into
/// a Blender already started, so that neither start-up nor rendering counts.
const READ_TIME_EXPR: &str = "import sys, time, bpy\n\
path = sys.argv[sys.argv.index('--') + 1]\n\
t = time.perf_counter()\n\
bpy.ops.wm.open_mainfile(filepath=path)\n\
print('renderfarm-bench: file read in %.3f s' % (time.perf_counter() - t))\n";

/// The settings of one `--warm compare` run.
pub struct Compare<'a> {
    pub workers: usize,
    /// Frames of the existing scene, in chunks of `chunk` (case b).
    pub frames: i64,
    pub chunk: i64,
    /// Frames of the slow scene, one a chunk (case a).
    pub slow_frames: i64,
    /// Chunks through one warm Blender (case c).
    pub rss_chunks: u32,
    pub rounds: usize,
    pub blender: &'a Path,
    pub auth: Auth,
}

pub async fn compare(c: Compare<'_>) -> anyhow::Result<String> {
    anyhow::ensure!(
        c.workers > 0 && c.frames > 0 && c.chunk > 0 && c.slow_frames > 0 && c.rss_chunks > 1,
        "give positive --workers, --frames, --chunk, --slow-frames and --rss-chunks above 1"
    );
    let dir = tempfile::tempdir()?;
    let slow = dir.path().join("slow.blend");
    make_slow_scene(c.blender, &slow, c.slow_frames).await?;
    let read_seconds = read_time(c.blender, &slow).await?;
    let scene = dir.path().join("bench.blend");
    renderfarm_worker::blender::scene::make_scene(c.blender, &scene, bench_scene(c.frames)).await?;
    tracing::info!(?read_seconds, "scenes made");

    let warm = WarmConfig::default();
    let cold = WarmConfig::off();
    let per_frame: Vec<(i64, i64)> = (1..=c.slow_frames).map(|f| (f, f)).collect();
    let (mut a_warm, mut a_cold, mut a_plain) = (Vec::new(), Vec::new(), Vec::new());
    let (mut b_warm, mut b_cold) = (Vec::new(), Vec::new());
    // Alternated, so that whatever else the machine does weighs on all alike;
    // the best round of each is compared.
    for round in 0..c.rounds.max(1) {
        let at = |case: &str| dir.path().join(format!("round-{round}-{case}"));
        let (w, f, s) = (c.workers, c.slow_frames, &slow);
        a_warm.push(
            through_the_farm(w, f, 1, c.blender, s, &at("a-warm"), c.auth, false, warm).await?,
        );
        a_plain.push(plain_parallel(w, &per_frame, c.blender, s, &at("a-plain")).await?);
        a_cold.push(
            through_the_farm(w, f, 1, c.blender, s, &at("a-cold"), c.auth, false, cold).await?,
        );
        let (f, k, s) = (c.frames, c.chunk, &scene);
        b_warm.push(
            through_the_farm(w, f, k, c.blender, s, &at("b-warm"), c.auth, false, warm).await?,
        );
        b_cold.push(
            through_the_farm(w, f, k, c.blender, s, &at("b-cold"), c.auth, false, cold).await?,
        );
    }
    let memory = rss_over_chunks(
        c.blender,
        &slow,
        c.slow_frames,
        c.rss_chunks,
        &dir.path().join("rss"),
    )
    .await?;

    let best = |runs: &[f64]| runs.iter().copied().fold(f64::INFINITY, f64::min);
    let ms = |s: f64| (s * 1000.0).round() / 1000.0;
    let runs = |r: &[f64]| r.iter().map(|s| ms(*s)).collect::<Vec<_>>();
    let speedup_a = best(&a_plain) / best(&a_warm);
    let speedup_b = best(&b_cold) / best(&b_warm);
    let first_peak = memory["first_chunk_peak_bytes"].as_f64().unwrap_or(0.0);
    let final_peak = memory["final_peak_bytes"].as_f64().unwrap_or(f64::INFINITY);
    let growth = (final_peak / first_peak - 1.0) * 100.0;
    let verdict = |pass: bool| if pass { "PASS" } else { "FAIL" };
    Ok(json!({
        "bench": "farm",
        "warm": "compare",
        "auth": c.auth.as_str(),
        "workers": c.workers,
        "slow_scene": {
            "frames": c.slow_frames,
            "bytes": std::fs::metadata(&slow)?.len(),
            "blender_file_read_seconds": read_seconds,
        },
        "a_slow_scene_1_frame_chunks": {
            "farm_warm_seconds": ms(best(&a_warm)),
            "plain_parallel_seconds": ms(best(&a_plain)),
            "farm_cold_seconds": ms(best(&a_cold)),
            "speedup_vs_plain": (speedup_a * 100.0).round() / 100.0,
            "goal": ">= 1.5",
            "verdict": verdict(speedup_a >= 1.5),
            "farm_warm_runs": runs(&a_warm),
            "plain_parallel_runs": runs(&a_plain),
            "farm_cold_runs": runs(&a_cold),
        },
        "b_existing_scene": {
            "frames": c.frames,
            "chunk": c.chunk,
            "farm_warm_seconds": ms(best(&b_warm)),
            "farm_cold_seconds": ms(best(&b_cold)),
            "speedup_vs_cold": (speedup_b * 1000.0).round() / 1000.0,
            "goal": "not slower (>= 1.0)",
            "verdict": verdict(speedup_b >= 1.0),
            "farm_warm_runs": runs(&b_warm),
            "farm_cold_runs": runs(&b_cold),
        },
        "c_warm_rss": {
            "growth_of_peak_percent": (growth * 10.0).round() / 10.0,
            "goal": "<= 10",
            "verdict": verdict(growth <= 10.0),
            "detail": memory,
        },
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
    .to_string())
}

async fn make_slow_scene(blender: &Path, path: &Path, frames: i64) -> anyhow::Result<()> {
    let script = path.with_extension("py");
    tokio::fs::write(&script, SLOW_SCENE_SCRIPT).await?;
    let output = Command::new(blender)
        .args(["-b", "--factory-startup", "--python"])
        .arg(&script)
        .arg("--")
        .arg(path)
        .args([
            frames.to_string(),
            SLOW_COPIES.to_string(),
            SLOW_SUBDIVISIONS.to_string(),
            SLOW_IMAGE.to_string(),
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {} to make the slow scene", blender.display()))?;
    anyhow::ensure!(
        output.status.success() && path.is_file(),
        "Blender could not make the slow scene {} ({}): {}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Blender's own reading time of `path`, three times (the first may pay for
/// a cold page cache; every render reads it warm).
async fn read_time(blender: &Path, path: &Path) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let output = Command::new(blender)
            .args([
                "-b",
                "--factory-startup",
                "--python-expr",
                READ_TIME_EXPR,
                "--",
            ])
            .arg(path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let seconds = stdout
            .lines()
            .find_map(|l| l.strip_prefix("renderfarm-bench: file read in "))
            .and_then(|rest| rest.trim_end_matches(" s").parse::<f64>().ok())
            .with_context(|| {
                format!(
                    "Blender did not time the read of {}: {stdout}",
                    path.display()
                )
            })?;
        times.push(seconds);
    }
    Ok(times)
}

/// Renders `chunks` 1-frame chunks through one warm Blender (the agent's
/// launcher, with no chunk limit), reading its resident memory after each.
async fn rss_over_chunks(
    blender: &Path,
    scene: &Path,
    frames: i64,
    chunks: u32,
    work: &Path,
) -> anyhow::Result<Value> {
    std::fs::create_dir_all(work)?;
    let config = WarmConfig {
        max_chunks: chunks + 1,
        max_rss: u64::MAX,
        ..WarmConfig::default()
    };
    let mut launcher = Launcher::new(blender.to_path_buf(), work.to_path_buf(), config);
    let blend = scene.display().to_string();
    let mut pid = None;
    let mut rss = Vec::new();
    let mut first_peak = 0;
    for n in 0..chunks {
        let frame = 1 + i64::from(n) % frames;
        let job = RenderJob {
            blend_file: blend.clone(),
            output: format!("{}/frame_####", work.join("out").display()),
            engine: None,
            from: frame,
            to: frame,
            path_mappings: Vec::new(),
        };
        let mut running = launcher
            .start(&job, SceneKey::new("rss", &blend, None))
            .await?;
        let this = running.process.pid();
        anyhow::ensure!(
            pid.is_none() || pid == this,
            "chunk {n} ran in another Blender ({this:?}, not {pid:?})"
        );
        pid = this;
        while running.lines.recv().await.is_some() {}
        let exit = running.process.wait().await?;
        anyhow::ensure!(exit == Some(0), "chunk {n} failed: {exit:?}");
        drop(running);
        let pid = pid.context("a pid")?;
        rss.push(rss_bytes(pid).context("the warm Blender's VmRSS")?);
        if n == 0 {
            first_peak = peak_rss_bytes(pid).context("VmHWM")?;
        }
    }
    let pid = pid.context("a pid")?;
    let final_peak = peak_rss_bytes(pid).context("VmHWM")?;
    let mib = |b: u64| (b as f64 / 1048576.0 * 10.0).round() / 10.0;
    let sampled: Vec<f64> = rss
        .iter()
        .step_by((rss.len() / 10).max(1))
        .map(|b| mib(*b))
        .collect();
    Ok(json!({
        "chunks": chunks,
        "first_chunk_peak_bytes": first_peak,
        "final_peak_bytes": final_peak,
        "first_chunk_peak_mib": mib(first_peak),
        "final_peak_mib": mib(final_peak),
        "rss_after_first_chunk_mib": mib(rss[0]),
        "rss_after_last_chunk_mib": mib(*rss.last().unwrap_or(&0)),
        "rss_max_after_a_chunk_mib": mib(rss.iter().copied().max().unwrap_or(0)),
        "rss_mib_every_tenth": sampled,
    }))
}
