//! Warm Blender (issue 17): a Blender process kept loaded between the chunks
//! of a render renders the same pixels as a fresh one, is replaced when it
//! should be, and dies as fast as a cold one when its chunk is aborted or
//! crashes. Real Blender, real scenes made with Blender's own Python.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    blender_or_skip, blender_pids, get_json, png_pixels, scene, send_json, submission, submit,
    task_log, tasks_of, wait_for, TestAgent, TestBroker,
};
use renderfarm_worker::blender::scene::SceneSpec;
use renderfarm_worker::blender::warm::{Launcher, SceneKey, WarmConfig};
use renderfarm_worker::blender::RenderJob;
use reqwest::Method;
use serde_json::{json, Value};

const RENDER_LIMIT: Duration = Duration::from_secs(180);

fn job(blend: &Path, out: &Path, from: i64, to: i64) -> RenderJob {
    RenderJob {
        blend_file: blend.display().to_string(),
        output: format!("{}/frame_####", out.display()),
        engine: None,
        from,
        to,
        path_mappings: Vec::new(),
    }
}

/// How one chunk went through a [`Launcher`].
struct Chunk {
    pid: u32,
    exit: Option<i32>,
    lines: Vec<String>,
}

/// Renders `job` as the agent does: reads the output until it ends, then
/// waits; dropping the chunk leaves a warm Blender for the next one.
async fn render(launcher: &mut Launcher, job: &RenderJob, render_id: &str) -> Chunk {
    let key = SceneKey::new(render_id, &job.blend_file, None);
    let mut running = launcher.start(job, key).await.expect("Blender starts");
    let pid = running.process.pid().expect("a pid");
    let mut lines = Vec::new();
    let exit = tokio::time::timeout(RENDER_LIMIT, async {
        while let Some(line) = running.lines.recv().await {
            lines.push(line);
        }
        running.process.wait().await.expect("Blender's exit")
    })
    .await
    .expect("the chunk ends");
    Chunk { pid, exit, lines }
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Waits for a Blender sent SIGKILL to be gone (the signal takes a moment).
async fn gone(pid: u32, what: &str) {
    wait_for(what, Duration::from_secs(3), || async {
        (!alive(pid)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_rendered_warm_have_the_pixels_of_frames_rendered_cold() {
    let Some(blender) =
        blender_or_skip("frames_rendered_warm_have_the_pixels_of_frames_rendered_cold").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let blend = scene(dir.path(), "same", SceneSpec::tiny(6), &blender).await;
    let cold_out = dir.path().join("cold");
    let warm_out = dir.path().join("warm");
    let work = tempfile::tempdir().unwrap();

    let mut cold = Launcher::new(
        blender.clone(),
        work.path().to_path_buf(),
        WarmConfig::off(),
    );
    let mut warm = Launcher::new(
        blender.clone(),
        work.path().to_path_buf(),
        WarmConfig::default(),
    );
    for (from, to) in [(1, 2), (3, 4), (5, 6)] {
        let done = render(&mut cold, &job(&blend, &cold_out, from, to), "r").await;
        assert_eq!(done.exit, Some(0), "{}", done.lines.concat());
    }
    let mut pids = Vec::new();
    for (from, to) in [(1, 2), (3, 4), (5, 6)] {
        let done = render(&mut warm, &job(&blend, &warm_out, from, to), "r").await;
        assert_eq!(done.exit, Some(0), "{}", done.lines.concat());
        let saved = done
            .lines
            .iter()
            .filter(|l| l.starts_with("Saved:"))
            .count();
        assert_eq!(saved, 2, "Saved: lines as a cold Blender prints them");
        assert!(
            done.lines.iter().any(|l| l.starts_with("Fra:")),
            "Fra: lines as a cold Blender prints them"
        );
        pids.push(done.pid);
    }
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "one Blender rendered the three chunks: {pids:?}"
    );
    assert_eq!(warm.warm_pid(), Some(pids[0]), "and waits for the next");

    let names = file_names(&cold_out);
    let want: Vec<String> = (1..=6).map(|f| format!("frame_{f:04}.png")).collect();
    assert_eq!(names, want);
    assert_eq!(file_names(&warm_out), names, "the same output paths");
    for name in &names {
        // Cycles with the scene's fixed seed is deterministic: exactly equal.
        assert!(
            png_pixels(&cold_out.join(name)) == png_pixels(&warm_out.join(name)),
            "{name}: warm and cold pixels differ"
        );
    }
    drop(warm);
    gone(pids[0], "the warm Blender to end with its launcher").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_blender_is_replaced_when_the_render_its_file_or_a_limit_changes() {
    let test = "a_warm_blender_is_replaced_when_the_render_its_file_or_a_limit_changes";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let blend = scene(dir.path(), "changing", SceneSpec::tiny(8), &blender).await;
    let out = dir.path().join("out");
    let work = tempfile::tempdir().unwrap();
    let config = WarmConfig {
        idle: Duration::from_secs(3),
        max_chunks: 3,
        ..WarmConfig::default()
    };
    let mut launcher = Launcher::new(blender.clone(), work.path().to_path_buf(), config);

    let first = render(&mut launcher, &job(&blend, &out, 1, 1), "r1").await;
    let again = render(&mut launcher, &job(&blend, &out, 2, 2), "r1").await;
    assert_eq!(again.pid, first.pid, "the same render's next chunk is warm");

    // The file saved anew (a new scene, moved over the old one).
    let next = scene(dir.path(), "changing-next", SceneSpec::tiny(8), &blender).await;
    std::fs::rename(&next, &blend).unwrap();
    let changed = render(&mut launcher, &job(&blend, &out, 3, 3), "r1").await;
    assert_eq!(changed.exit, Some(0));
    assert_ne!(
        changed.pid, first.pid,
        "a changed file starts a fresh Blender"
    );
    gone(first.pid, "the old one to be gone").await;

    let other = render(&mut launcher, &job(&blend, &out, 4, 4), "r2").await;
    assert_ne!(
        other.pid, changed.pid,
        "another render starts a fresh Blender"
    );
    gone(changed.pid, "the other render's Blender to be gone").await;

    let second = render(&mut launcher, &job(&blend, &out, 5, 5), "r2").await;
    let third = render(&mut launcher, &job(&blend, &out, 6, 6), "r2").await;
    assert_eq!((second.pid, third.pid), (other.pid, other.pid));
    assert_eq!(launcher.warm_pid(), None, "--warm-max-chunks 3 reached");
    let fourth = render(&mut launcher, &job(&blend, &out, 7, 7), "r2").await;
    assert_ne!(fourth.pid, other.pid);
    gone(other.pid, "the Blender past --warm-max-chunks to be gone").await;

    assert_eq!(launcher.warm_pid(), Some(fourth.pid));
    wait_for(
        "the idle warm Blender to end after --warm-idle",
        Duration::from_secs(20),
        || async { (!alive(fourth.pid)).then_some(()) },
    )
    .await;
    assert_eq!(launcher.warm_pid(), None);
    let names = file_names(&out);
    let want: Vec<String> = (1..=7).map(|f| format!("frame_{f:04}.png")).collect();
    assert_eq!(names, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_of_the_warm_blender_fails_only_its_chunk_and_the_next_starts_cold() {
    let test = "a_crash_of_the_warm_blender_fails_only_its_chunk_and_the_next_starts_cold";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let blend = scene(dir.path(), "crash", SceneSpec::tiny(400), &blender).await;
    let out = dir.path().join("out");
    let work = tempfile::tempdir().unwrap();
    let mut launcher = Launcher::new(
        blender.clone(),
        work.path().to_path_buf(),
        WarmConfig::default(),
    );
    let first = render(&mut launcher, &job(&blend, &out, 1, 1), "r").await;
    assert_eq!(first.exit, Some(0));

    let long = job(&blend, &out, 2, 400);
    let key = SceneKey::new("r", &long.blend_file, None);
    let mut running = launcher.start(&long, key).await.unwrap();
    assert_eq!(running.process.pid(), Some(first.pid), "the chunk is warm");
    // Blender crashes on its own (not the agent's kill of the group).
    loop {
        let line = running.lines.recv().await.expect("Blender renders");
        if line.starts_with("Saved:") {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid as i32),
        nix::sys::signal::Signal::SIGSEGV,
    )
    .unwrap();
    let exit = tokio::time::timeout(RENDER_LIMIT, running.process.wait())
        .await
        .expect("the crash ends the chunk")
        .unwrap();
    assert_eq!(exit, None, "a chunk whose Blender crashed fails");
    drop(running);
    assert_eq!(launcher.warm_pid(), None, "a crashed Blender is not kept");

    let next = render(&mut launcher, &job(&blend, &out, 3, 3), "r").await;
    assert_eq!(next.exit, Some(0), "{}", next.lines.concat());
    assert_ne!(next.pid, first.pid, "the next chunk starts a fresh Blender");
    assert!(
        next.lines
            .iter()
            .any(|l| l.contains("started a warm Blender")),
        "{}",
        next.lines.concat()
    );
    assert!(out.join("frame_0003.png").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_chunk_fails_with_blender_s_exit_code_and_error_as_when_cold() {
    let test = "a_failing_chunk_fails_with_blender_s_exit_code_and_error_as_when_cold";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = SceneSpec {
        denoise: true,
        ..SceneSpec::tiny(2)
    };
    let blend = scene(dir.path(), "denoise", spec, &blender).await;
    let work = tempfile::tempdir().unwrap();
    let mut launcher = Launcher::new(
        blender.clone(),
        work.path().to_path_buf(),
        WarmConfig::default(),
    );
    let done = render(
        &mut launcher,
        &job(&blend, &dir.path().join("o"), 1, 2),
        "r",
    )
    .await;
    assert_eq!(done.exit, Some(1), "{}", done.lines.concat());
    assert!(
        done.lines
            .iter()
            .any(|l| l.starts_with("Error: Build without OpenImageDenoiser")),
        "{}",
        done.lines.concat()
    );
    assert_eq!(launcher.warm_pid(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborting_a_warm_chunk_kills_blender_within_two_seconds_of_the_cancel() {
    let test = "aborting_a_warm_chunk_kills_blender_within_two_seconds_of_the_cancel";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let broker = TestBroker::start().await;
    let files = tempfile::tempdir().unwrap();
    // Frames of about a second here, so that the cancel lands inside the
    // second (warm) chunk, not between chunks.
    let spec = SceneSpec {
        frames: 40,
        width: 320,
        height: 240,
        samples: 24,
        denoise: false,
    };
    let blend = scene(files.path(), "abort", spec, &blender).await;
    let agent = TestAgent::start(&broker.address, "agent", &blender).await;
    let body = submission("abort", &blend, 40, 4, &files.path().join("out"));
    let render = submit(&broker.address, &broker.client, &body).await;
    let id = render["id"].as_str().unwrap().to_string();
    let tasks = || tasks_of(&broker.address, &broker.client, &id);
    // The second chunk running, with a frame done: its Blender is the warm one.
    let second: Value = wait_for("a second chunk to render a frame", RENDER_LIMIT, || async {
        let tasks = tasks().await;
        let done = tasks.iter().filter(|t| t["status"] == "completed").count();
        tasks
            .into_iter()
            .find(|t| t["status"] == "running" && t["frames_done"].as_i64() >= Some(1))
            .filter(|_| done >= 1)
    })
    .await;
    let pids = blender_pids(&blend);
    assert_eq!(pids.len(), 1, "one Blender renders the chunk");
    let task_id = second["id"].as_str().unwrap().to_string();
    let log = task_log(&broker.client, &broker.address, &task_id).await;
    assert!(
        log.contains("rendering in the render's warm Blender"),
        "the chunk runs warm:\n{log}"
    );

    let canceled_at = Instant::now();
    send_json(
        &broker.client,
        Method::PUT,
        format!("{}/renders/{id}/status", broker.address),
        &json!({ "action": "cancel" }),
    )
    .await;
    wait_for("Blender to be gone", Duration::from_secs(10), || async {
        blender_pids(&blend).is_empty().then_some(())
    })
    .await;
    let gone_after = canceled_at.elapsed();
    // The bound of tests/farm.rs's cancel test of a cold chunk.
    assert!(
        gone_after <= Duration::from_millis(2300),
        "the warm Blender lived {gone_after:?} after the cancel"
    );
    let summary = agent.stop().await;
    assert_eq!(summary.aborted, 1, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_blender_crashing_in_a_farm_fails_its_chunk_alone_and_the_next_starts_cold() {
    let test = "a_warm_blender_crashing_in_a_farm_fails_its_chunk_alone_and_the_next_starts_cold";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let broker = TestBroker::start().await;
    let files = tempfile::tempdir().unwrap();
    let spec = SceneSpec {
        frames: 16,
        width: 320,
        height: 240,
        samples: 16,
        denoise: false,
    };
    let blend = scene(files.path(), "crash", spec, &blender).await;
    let agent = TestAgent::start(&broker.address, "agent", &blender).await;
    let body = submission("crash", &blend, 16, 4, &files.path().join("out"));
    let render = submit(&broker.address, &broker.client, &body).await;
    let id = render["id"].as_str().unwrap().to_string();
    let tasks = || async {
        let mut tasks = tasks_of(&broker.address, &broker.client, &id).await;
        tasks.sort_by_key(|t| t["frame_start"].as_i64());
        tasks
    };
    wait_for(
        "the second chunk to render a frame",
        RENDER_LIMIT,
        || async {
            let tasks = tasks().await;
            (tasks[0]["status"] == "completed"
                && tasks[1]["status"] == "running"
                && tasks[1]["frames_done"].as_i64() >= Some(1))
            .then_some(())
        },
    )
    .await;
    let pids = blender_pids(&blend);
    assert_eq!(pids.len(), 1, "the warm Blender renders the second chunk");
    // Blender crashes on its own: the agent did not kill it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGSEGV,
    )
    .unwrap();

    let tasks = wait_for("the other chunks to complete", RENDER_LIMIT, || async {
        let tasks = tasks().await;
        (tasks[1]["status"] != "running"
            && tasks[2]["status"] == "completed"
            && tasks[3]["status"] == "completed")
            .then_some(tasks)
    })
    .await;
    let crashed = get_json(
        &broker.client,
        format!(
            "{}/tasks/{}",
            broker.address,
            tasks[1]["id"].as_str().unwrap()
        ),
    )
    .await;
    assert!(
        crashed["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("killed by a signal")),
        "the crashed chunk failed: {crashed}"
    );
    let log_of = |n: usize| {
        let task_id = tasks[n]["id"].as_str().unwrap().to_string();
        let broker = &broker;
        async move { task_log(&broker.client, &broker.address, &task_id).await }
    };
    assert!(
        log_of(1)
            .await
            .contains("rendering in the render's warm Blender"),
        "the crashed chunk was warm"
    );
    let next = log_of(2).await;
    assert!(
        next.contains("started a warm Blender"),
        "the next chunk started a fresh Blender:\n{next}"
    );
    assert!(
        log_of(3)
            .await
            .contains("rendering in the render's warm Blender"),
        "and the one after reused it"
    );
    let summary = agent.stop().await;
    // The crashed chunk has a retry (max_retries 1): when a scheduler tick
    // came before the agent stopped, the agent rendered it again.
    let after = tasks_of(&broker.address, &broker.client, &id).await;
    let retried = after
        .iter()
        .any(|t| t["id"] == tasks[1]["id"] && t["status"] == "completed");
    assert_eq!(
        (summary.completed, summary.failed),
        (3 + u64::from(retried), 1),
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_whose_own_scripts_ran_gets_a_fresh_blender_for_every_chunk() {
    let test = "a_file_whose_own_scripts_ran_gets_a_fresh_blender_for_every_chunk";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = scene(dir.path(), "plain", SceneSpec::tiny(4), &blender).await;
    // The scene with a registered script that keeps a count across frames.
    let scripted = dir.path().join("scripted.blend");
    let add_script = "import bpy, sys\n\
        bpy.ops.wm.open_mainfile(filepath=sys.argv[-2])\n\
        t = bpy.data.texts.new('keeper.py')\n\
        t.write('import bpy\\ncalls = [0]\\ndef count(scene, *args):\\n    calls[0] += 1\\nbpy.app.handlers.frame_change_post.append(count)\\n')\n\
        t.use_module = True\n\
        bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])\n";
    let made = tokio::process::Command::new(&blender)
        .args(["-b", "--factory-startup", "--python-expr", add_script, "--"])
        .arg(&plain)
        .arg(&scripted)
        .output()
        .await
        .unwrap();
    assert!(scripted.is_file(), "{made:?}");
    // Blender as a studio may set it up: scripts in files run (-y, the
    // preference "Auto Run Python Scripts").
    let trusting = dir.path().join("blender-y");
    std::fs::write(
        &trusting,
        format!("#!/bin/sh\nexec '{}' -y \"$@\"\n", blender.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &trusting,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut launcher = Launcher::new(trusting, work.path().to_path_buf(), WarmConfig::default());

    let first = render(&mut launcher, &job(&scripted, &out, 1, 2), "r").await;
    assert_eq!(first.exit, Some(0), "{}", first.lines.concat());
    assert_eq!(launcher.warm_pid(), None, "not kept: its scripts ran");
    let second = render(&mut launcher, &job(&scripted, &out, 3, 4), "r").await;
    assert_eq!(second.exit, Some(0), "{}", second.lines.concat());
    assert_ne!(second.pid, first.pid, "a fresh Blender for the next chunk");
    let want: Vec<String> = (1..=4).map(|f| format!("frame_{f:04}.png")).collect();
    assert_eq!(file_names(&out), want);

    // The same Blender keeps a file without scripts warm.
    let again = render(&mut launcher, &job(&plain, &out, 1, 1), "p").await;
    assert_eq!(launcher.warm_pid(), Some(again.pid));
}
