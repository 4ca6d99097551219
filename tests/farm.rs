//! A whole farm: a real broker, real worker agents, real Blender rendering
//! scenes these tests generate with Blender's own Python.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    blender_or_skip, blender_pids, get_json, scene, send_json, submission, submit, task_log,
    tasks_of, wait_for, BrokerProcess, TestAgent, TestBroker,
};
use renderfarm_worker::blender::scene::SceneSpec;
use renderfarm_worker::blender::TEMP_DIR;
use renderfarm_worker::{Agent, AgentConfig, StopSignals};
use reqwest::Method;
use serde_json::{json, Value};

const RENDER_LIMIT: Duration = Duration::from_secs(120);

async fn wait_for_render_status(
    broker: &str,
    client: &reqwest::Client,
    id: &str,
    statuses: &[&str],
) -> Value {
    wait_for(
        &format!("render {id} to be {statuses:?}"),
        RENDER_LIMIT,
        || async {
            let render = get_json(client, format!("{broker}/renders/{id}")).await;
            statuses
                .contains(&render["status"].as_str().unwrap_or_default())
                .then_some(render)
        },
    )
    .await
}

/// Waits until `count` workers are registered and have had time to start
/// their long poll.
async fn wait_for_workers(broker: &str, client: &reqwest::Client, count: usize) {
    wait_for(
        "the agents to register",
        Duration::from_secs(30),
        || async {
            let workers = get_json(client, format!("{broker}/workers")).await;
            (workers.as_array().map_or(0, Vec::len) >= count).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Waits until the render's first task has a frame done; returns that task.
async fn wait_for_first_frame(broker: &TestBroker, id: &str) -> Value {
    wait_for("Blender to render a first frame", RENDER_LIMIT, || async {
        let tasks = tasks_of(&broker.address, &broker.client, id).await;
        (tasks[0]["frames_done"].as_i64().unwrap_or(0) > 0).then(|| tasks[0].clone())
    })
    .await
}

/// How many Blender session directories (`blender_XXXXXX`) `dir` holds.
fn blender_session_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("blender_"))
                .count()
        })
        .unwrap_or(0)
}

/// A broker and one agent rendering one chunk too long to finish during the
/// test, past its first frame.
struct LongRender {
    broker: TestBroker,
    agent: TestAgent,
    blend: std::path::PathBuf,
    id: String,
    /// Holds the scene and the frames. Bind it by name when destructuring:
    /// `..` would drop it at once, and Blender, finding its output directory
    /// gone while it saves a frame, fails the chunk on its own (exit 1).
    files: tempfile::TempDir,
}

async fn start_long_render(blender: &Path, name: &str) -> LongRender {
    let broker = TestBroker::start().await;
    let files = tempfile::tempdir().unwrap();
    let blend = scene(files.path(), name, SceneSpec::tiny(2000), blender).await;
    let agent = TestAgent::start(&broker.address, "agent", blender).await;
    let body = submission(name, &blend, 2000, 2000, &files.path().join("out"));
    let render = submit(&broker.address, &broker.client, &body).await;
    let id = render["id"].as_str().unwrap().to_string();
    wait_for_first_frame(&broker, &id).await;
    LongRender {
        broker,
        agent,
        blend,
        id,
        files,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_agents_render_a_twelve_frame_scene_in_chunks_of_three() {
    let Some(blender) =
        blender_or_skip("two_agents_render_a_twelve_frame_scene_in_chunks_of_three").await
    else {
        return;
    };
    let broker = TestBroker::start().await;
    let files = tempfile::tempdir().unwrap();
    let blend = scene(files.path(), "walk", SceneSpec::tiny(12), &blender).await;
    let a = TestAgent::start(&broker.address, "agent-a", &blender).await;
    let b = TestAgent::start(&broker.address, "agent-b", &blender).await;
    wait_for_workers(&broker.address, &broker.client, 2).await;

    let out = files.path().join("frames");
    let render = submit(
        &broker.address,
        &broker.client,
        &submission("walk", &blend, 12, 3, &out),
    )
    .await;
    let id = render["id"].as_str().unwrap();
    let done = wait_for_render_status(
        &broker.address,
        &broker.client,
        id,
        &["completed", "failed"],
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["frames_done"], 12);

    let mut frames: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    frames.sort();
    let want: Vec<String> = (1..=12).map(|f| format!("frame_{f:04}.png")).collect();
    assert_eq!(frames, want);
    for f in &frames {
        assert!(
            std::fs::metadata(out.join(f)).unwrap().len() > 100,
            "{f} holds an image"
        );
    }
    let tasks = tasks_of(&broker.address, &broker.client, id).await;
    assert_eq!(tasks.len(), 4);
    assert!(
        tasks
            .iter()
            .all(|t| t["status"] == "completed" && t["frames_done"] == 3),
        "{tasks:?}"
    );
    let workers: HashSet<&str> = tasks
        .iter()
        .filter_map(|t| t["worker_id"].as_str())
        .collect();
    assert_eq!(workers.len(), 2, "both agents rendered: {tasks:?}");
    let log = task_log(
        &broker.client,
        &broker.address,
        tasks[0]["id"].as_str().unwrap(),
    )
    .await;
    assert!(
        log.contains("Saved:") && log.contains("Fra:1"),
        "the task log holds Blender's output: {log}"
    );

    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(sa.completed + sb.completed, 4);
    assert!(sa.completed > 0 && sb.completed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scene_with_denoising_fails_with_blenders_exit_code_and_reason() {
    let Some(blender) =
        blender_or_skip("a_scene_with_denoising_fails_with_blenders_exit_code_and_reason").await
    else {
        return;
    };
    let broker = TestBroker::start().await;
    let files = tempfile::tempdir().unwrap();
    let spec = SceneSpec {
        denoise: true,
        ..SceneSpec::tiny(2)
    };
    let blend = scene(files.path(), "denoise", spec, &blender).await;
    let agent = TestAgent::start(&broker.address, "agent", &blender).await;
    let mut body = submission("denoise", &blend, 2, 2, &files.path().join("out"));
    body["max_retries"] = json!(1);
    let render = submit(&broker.address, &broker.client, &body).await;
    let id = render["id"].as_str().unwrap();

    let task = wait_for("the task to fail", RENDER_LIMIT, || async {
        let tasks = tasks_of(&broker.address, &broker.client, id).await;
        tasks.into_iter().find(|t| t["status"] == "failed")
    })
    .await;
    assert_eq!(task["exit_code"], 1);
    let reason = task["failure_reason"].as_str().unwrap();
    assert!(reason.contains("OpenImageDenoiser"), "{reason}");
    assert!(reason.contains("exited with code 1"), "{reason}");
    assert!(
        reason.lines().count() <= 51,
        "a summary and at most 50 lines of output"
    );
    let render = get_json(&broker.client, format!("{}/renders/{id}", broker.address)).await;
    assert_eq!(
        render["status"], "rendering",
        "a retry is left (the scheduler's to make)"
    );
    assert_eq!(render["progress"]["tasks_failed"], 1);
    let summary = agent.stop().await;
    assert_eq!(summary.failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canceling_a_render_kills_blender_within_two_seconds_of_the_abort() {
    let test = "canceling_a_render_kills_blender_within_two_seconds_of_the_abort";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let LongRender {
        broker,
        agent,
        blend,
        id,
        files: _files,
    } = start_long_render(&blender, "long").await;
    let blend_path = Path::new(&blend);
    assert_eq!(
        blender_pids(blend_path).len(),
        1,
        "one Blender renders the task"
    );
    let temp_dir = agent.work_dir.path().join(TEMP_DIR);
    assert_eq!(
        blender_session_dirs(&temp_dir),
        1,
        "Blender keeps its session files in the agent's work directory"
    );

    let canceled_at = Instant::now();
    let cancel = json!({ "action": "cancel" });
    send_json(
        &broker.client,
        Method::PUT,
        format!("{}/renders/{id}/status", broker.address),
        &cancel,
    )
    .await;
    // The next heartbeat (every 300 ms here) carries the abort.
    wait_for("Blender to be gone", Duration::from_secs(10), || async {
        blender_pids(blend_path).is_empty().then_some(())
    })
    .await;
    let gone_after = canceled_at.elapsed();
    assert!(
        gone_after <= Duration::from_millis(2300),
        "Blender lived {gone_after:?} after the cancel"
    );
    let tasks = tasks_of(&broker.address, &broker.client, &id).await;
    assert_eq!(tasks[0]["status"], "canceled");
    wait_for(
        "the killed Blender's session files to be removed",
        Duration::from_secs(5),
        || async { (blender_session_dirs(&temp_dir) == 0).then_some(()) },
    )
    .await;
    let task_id = tasks[0]["id"].as_str().unwrap().to_string();
    let summary = agent.stop().await;
    // If this fails, what the broker saw of the task says why.
    let seen = get_json(
        &broker.client,
        format!("{}/tasks/{task_id}", broker.address),
    )
    .await;
    let log = task_log(&broker.client, &broker.address, &task_id).await;
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    assert_eq!(
        summary.aborted, 1,
        "{summary:?}\nhistory: {}\nlog tail (newest first): {tail:#?}",
        seen["history"]
    );
    assert_eq!(
        (summary.completed, summary.failed),
        (0, 0),
        "nothing was reported under the dead lease"
    );
}

/// The render's preview, when there is one: (the frame it shows, the JPEG).
async fn preview_of(broker: &TestBroker, id: &str) -> Option<(i64, Vec<u8>)> {
    let answer = broker
        .client
        .get(format!("{}/renders/{id}/preview", broker.address))
        .send()
        .await
        .expect("the broker answers");
    if answer.status() != reqwest::StatusCode::OK {
        return None;
    }
    let frame = answer.headers()["x-preview-frame"]
        .to_str()
        .unwrap()
        .parse()
        .expect("a frame number");
    Some((frame, answer.bytes().await.unwrap().to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preview_of_the_frame_in_progress_is_served_while_the_render_runs() {
    let test = "a_preview_of_the_frame_in_progress_is_served_while_the_render_runs";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let LongRender {
        broker,
        agent,
        id,
        files: _files,
        ..
    } = start_long_render(&blender, "previewed").await;
    let (first, jpeg) = wait_for("a preview", Duration::from_secs(30), || {
        preview_of(&broker, &id)
    })
    .await;
    let image = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
        .expect("the preview is a JPEG");
    // The scene renders 64×48: smaller than a preview, so not enlarged.
    assert_eq!((image.width(), image.height()), (64, 48));
    // The sun lights the scene: a preview of the frame is not all black.
    let rgb = image.to_rgb8();
    let brightest = rgb
        .pixels()
        .map(|p| p.0.iter().map(|&c| u32::from(c)).sum::<u32>())
        .max();
    assert!(
        brightest > Some(60),
        "the preview is not black: {brightest:?}"
    );

    // It follows the render: a later frame's preview replaces it, while
    // the one chunk is still running.
    let (later, _) = wait_for("a later preview", Duration::from_secs(30), || async {
        preview_of(&broker, &id).await.filter(|(f, _)| *f > first)
    })
    .await;
    let render = get_json(&broker.client, format!("{}/renders/{id}", broker.address)).await;
    assert_eq!(
        render["status"], "rendering",
        "frame {later} previewed mid-render"
    );
    let tasks = tasks_of(&broker.address, &broker.client, &id).await;
    assert_eq!(tasks[0]["status"], "running");
    agent.stop().await;
}

/// Blender's multi-layer OpenEXR is previewed from its combined pass, and
/// looks like the same frame saved as PNG (both in sRGB; the scene uses
/// Blender's Standard view transform, which a preview of linear light
/// reproduces: Filmic would be brighter in the PNG).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multilayer_exr_frame_is_previewed_from_its_combined_pass() {
    let test = "a_multilayer_exr_frame_is_previewed_from_its_combined_pass";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let files = tempfile::tempdir().unwrap();
    let blend = scene(files.path(), "exr", SceneSpec::tiny(2), &blender).await;
    let render_as = |format: &str, pattern: &str| {
        let status = std::process::Command::new(&blender)
            .arg("-b").arg(&blend).arg("--python-expr")
            .arg(format!(
                "import bpy; s = bpy.context.scene; s.view_settings.view_transform = 'Standard'; s.render.image_settings.file_format = '{format}'"
            ))
            .args(["-o", &files.path().join(pattern).display().to_string(), "-f", "1"])
            .output()
            .expect("Blender runs");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stdout)
        );
    };
    render_as("OPEN_EXR_MULTILAYER", "exr_####");
    render_as("PNG", "png_####");
    let decode = |name: &str| {
        let jpeg = renderfarm_worker::preview::make_preview(&files.path().join(name))
            .unwrap_or_else(|e| panic!("a preview of {name}: {e:#}"));
        image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8()
    };
    let (exr, png) = (decode("exr_0001.exr"), decode("png_0001.png"));
    assert_eq!(exr.dimensions(), (64, 48));
    assert_eq!(exr.dimensions(), png.dimensions());
    let mean_difference = exr
        .as_raw()
        .iter()
        .zip(png.as_raw())
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / exr.as_raw().len() as f64;
    let mean_level =
        png.as_raw().iter().map(|&v| f64::from(v)).sum::<f64>() / png.as_raw().len() as f64;
    assert!(
        mean_level > 10.0,
        "the PNG frame is not black: {mean_level}"
    );
    // JPEG and 8-bit rounding differ by a few levels; a wrong pass or a
    // missing transfer curve by tens.
    assert!(
        mean_difference < 6.0,
        "EXR and PNG previews differ by {mean_difference} levels on average"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_delivers_its_completion_after_a_five_second_broker_outage() {
    let Some(blender) =
        blender_or_skip("an_agent_delivers_its_completion_after_a_five_second_broker_outage").await
    else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let client = common::admin_client();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0");
    let address = broker.address.clone();
    let port = broker.port();
    let blend = scene(files.path(), "outage", SceneSpec::tiny(40), &blender).await;
    let agent = TestAgent::start(&address, "agent", &blender).await;
    let render = submit(
        &address,
        &client,
        &submission("outage", &blend, 40, 40, &files.path().join("out")),
    )
    .await;
    let id = render["id"].as_str().unwrap().to_string();
    wait_for("the task to start", RENDER_LIMIT, || async {
        let tasks = tasks_of(&address, &client, &id).await;
        (tasks[0]["status"] == "running").then_some(())
    })
    .await;

    broker.kill_9();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let broker = BrokerProcess::start(data.path(), &format!("127.0.0.1:{port}"));
    let done =
        wait_for_render_status(&broker.address, &client, &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let task_id = tasks_of(&broker.address, &client, &id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let log = task_log(&client, &broker.address, &task_id).await;
    assert!(
        log.contains("frame_0040"),
        "the log written during the outage arrived too"
    );
    assert_eq!(
        std::fs::read_dir(files.path().join("out")).unwrap().count(),
        40
    );
    let summary = agent.stop().await;
    assert_eq!(summary.completed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_agent_hands_its_task_back_without_a_failure() {
    let Some(blender) =
        blender_or_skip("a_stopping_agent_hands_its_task_back_without_a_failure").await
    else {
        return;
    };
    let LongRender {
        broker,
        agent,
        blend,
        id,
        files: _files,
    } = start_long_render(&blender, "handback").await;
    let summary = agent.stop().await;
    assert_eq!(summary.released, 1);
    assert!(
        blender_pids(Path::new(&blend)).is_empty(),
        "Blender was stopped"
    );
    let task = &tasks_of(&broker.address, &broker.client, &id).await[0];
    assert_eq!(
        (
            task["status"].as_str(),
            task["retries"].as_i64(),
            task["worker_id"].as_str()
        ),
        (Some("pending"), Some(0), None)
    );
    let render = get_json(&broker.client, format!("{}/renders/{id}", broker.address)).await;
    assert_eq!(render["progress"]["tasks_failed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_stopped_while_waiting_leaves_no_task_to_its_abandoned_request() {
    let test = "an_agent_stopped_while_waiting_leaves_no_task_to_its_abandoned_request";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let broker = TestBroker::start().await;
    let agent = TestAgent::start(&broker.address, "leaving", &blender).await;
    wait_for_workers(&broker.address, &broker.client, 1).await;
    let summary = agent.stop().await;
    assert_eq!(
        summary.released, 0,
        "nothing was handed out before the stop"
    );

    // The broker still holds the agent's long poll (10 s here): work that
    // arrives now must not go to it.
    let body = json!({"name": "after", "blend_file": "/p/after.blend", "frame_start": 1, "frame_end": 2, "chunk_size": 1});
    let render = submit(&broker.address, &broker.client, &body).await;
    let id = render["id"].as_str().unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let statuses: Vec<Value> = tasks_of(&broker.address, &broker.client, id)
            .await
            .iter()
            .map(|t| t["status"].clone())
            .collect();
        assert_eq!(
            statuses,
            ["pending", "pending"],
            "no task went to the stopped agent"
        );
    }
    let workers = get_json(&broker.client, format!("{}/workers", broker.address)).await;
    assert_eq!(
        workers[0]["status"], "draining",
        "the stopped agent takes no work"
    );
}

#[tokio::test]
async fn two_agents_cannot_share_a_work_directory() {
    let Some(blender) = blender_or_skip("two_agents_cannot_share_a_work_directory").await else {
        return;
    };
    let work_dir = tempfile::tempdir().unwrap();
    let config = |name: &str| AgentConfig {
        broker: "http://127.0.0.1:1".into(),
        name: name.into(),
        tags: Vec::new(),
        blender: blender.clone(),
        ffmpeg: "ffmpeg".into(),
        work_dir: work_dir.path().to_path_buf(),
        heartbeat: Duration::from_secs(1),
        log_interval: Duration::from_secs(1),
        poll_wait: Duration::from_secs(1),
        enrolment_token: Some(common::ENROLMENT_TOKEN.into()),
        ca_file: None,
        cache_size: renderfarm_worker::cache::DEFAULT_CACHE_SIZE,
        previews: true,
        warm: renderfarm_worker::blender::warm::WarmConfig::default(),
        hours: Default::default(),
    };
    let first = Agent::new(config("first"), StopSignals::default())
        .await
        .expect("the first agent takes the work directory");
    let second = Agent::new(config("second"), StopSignals::default()).await;
    let message = format!("{:#}", second.err().expect("the second is refused"));
    assert!(
        message.contains("another renderfarm-worker uses the work directory")
            && message.contains("--work-dir"),
        "{message}"
    );
    drop(first);
    Agent::new(config("third"), StopSignals::default())
        .await
        .expect("free again once the first agent is gone");
}

#[tokio::test]
async fn an_agent_without_blender_says_how_to_install_it_before_registering() {
    let broker = TestBroker::start().await;
    let work = tempfile::tempdir().unwrap();
    let config = renderfarm_worker::AgentConfig {
        broker: broker.address.clone(),
        name: "no-blender".into(),
        tags: vec![],
        blender: work.path().join("not-blender"),
        ffmpeg: "ffmpeg".into(),
        work_dir: work.path().to_path_buf(),
        heartbeat: Duration::from_secs(1),
        log_interval: Duration::from_secs(1),
        poll_wait: Duration::from_secs(1),
        enrolment_token: Some(common::ENROLMENT_TOKEN.into()),
        ca_file: None,
        cache_size: renderfarm_worker::cache::DEFAULT_CACHE_SIZE,
        previews: true,
        warm: renderfarm_worker::blender::warm::WarmConfig::default(),
        hours: Default::default(),
    };
    let err = match renderfarm_worker::Agent::new(config, Default::default()).await {
        Ok(_) => panic!("an agent without Blender must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("--blender") && err.contains("apt-get install blender"),
        "{err}"
    );
    let workers = get_json(&broker.client, format!("{}/workers", broker.address)).await;
    assert_eq!(workers, json!([]), "it did not register");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_demo_renders_the_demo_scene_and_prints_where_the_frames_are() {
    let Some(blender) =
        blender_or_skip("up_with_demo_renders_the_demo_scene_and_prints_where_the_frames_are")
            .await
    else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::from(common::renderfarm_command())
        .args([
            "up",
            "--demo",
            "--workers",
            "2",
            "--demo-frames",
            "8",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .arg("--blender")
        .arg(&blender)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RENDER_LIMIT, output)
        .await
        .expect("the demo finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("demo render completed"))
        .expect("a completion line");
    let dir = line.rsplit(" in ").next().unwrap();
    let frames = std::fs::read_dir(dir).unwrap().count();
    assert_eq!(frames, 8, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_urgent_render_preempts_a_real_agent_whose_low_chunk_later_completes() {
    let Some(blender) =
        blender_or_skip("an_urgent_render_preempts_a_real_agent_whose_low_chunk_later_completes")
            .await
    else {
        return;
    };
    let broker = TestBroker::start().await;
    let files = tempfile::tempdir().unwrap();
    let low_blend = scene(files.path(), "low", SceneSpec::tiny(60), &blender).await;
    let urgent_blend = scene(files.path(), "urgent", SceneSpec::tiny(2), &blender).await;
    let agent = TestAgent::start(&broker.address, "only", &blender).await;
    let mut low = submission("low", &low_blend, 60, 60, &files.path().join("low"));
    low["priority"] = json!("low");
    let low = submit(&broker.address, &broker.client, &low).await;
    let low_id = low["id"].as_str().unwrap();
    let first = wait_for_first_frame(&broker, low_id).await;

    let mut urgent = submission("urgent", &urgent_blend, 2, 2, &files.path().join("urgent"));
    urgent["priority"] = json!("urgent");
    let urgent = submit(&broker.address, &broker.client, &urgent).await;
    let report = send_json(
        &broker.client,
        Method::POST,
        format!("{}/scheduler/run", broker.address),
        &json!(null),
    )
    .await;
    assert_eq!(report["preempted"], 1, "{report}");
    let urgent_id = urgent["id"].as_str().unwrap();
    wait_for_render_status(&broker.address, &broker.client, urgent_id, &["completed"]).await;
    let low_done = wait_for_render_status(
        &broker.address,
        &broker.client,
        low_id,
        &["completed", "failed"],
    )
    .await;
    assert_eq!(low_done["status"], "completed");
    let detail = get_json(
        &broker.client,
        format!("{}/tasks/{}", broker.address, first["id"].as_str().unwrap()),
    )
    .await;
    let events: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["assigned", "preempted", "assigned", "completed"]);
    assert_eq!(detail["retries"], 0);
    assert_eq!(
        std::fs::read_dir(files.path().join("low")).unwrap().count(),
        60
    );
    let summary = agent.stop().await;
    assert_eq!((summary.aborted, summary.completed), (1, 2));
}

/// The secret a test agent got when it registered, as it keeps it.
fn agent_identity(agent: &TestAgent) -> (String, String) {
    let text = std::fs::read_to_string(agent.work_dir.path().join("identity.json"))
        .expect("the agent keeps its identity in its work directory");
    let identity: Value = serde_json::from_str(&text).unwrap();
    (
        identity["worker_id"].as_str().unwrap().to_string(),
        identity["secret"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_b_cannot_heartbeat_claim_or_report_as_agent_a_and_a_renders_on() {
    let Some(blender) =
        blender_or_skip("agent_b_cannot_heartbeat_claim_or_report_as_agent_a_and_a_renders_on")
            .await
    else {
        return;
    };
    let broker = TestBroker::start().await;
    let files = tempfile::tempdir().unwrap();
    let blend = scene(files.path(), "mine", SceneSpec::tiny(40), &blender).await;
    let a = TestAgent::start(&broker.address, "agent-a", &blender).await;
    let b = TestAgent::start(&broker.address, "agent-b", &blender).await;
    wait_for_workers(&broker.address, &broker.client, 2).await;
    let out = files.path().join("frames");
    // One chunk: one agent renders it, the other has nothing to do.
    let render = submit(
        &broker.address,
        &broker.client,
        &submission("mine", &blend, 40, 40, &out),
    )
    .await;
    let id = render["id"].as_str().unwrap().to_string();
    let task = wait_for_first_frame(&broker, &id).await;
    let task_id = task["id"].as_str().unwrap().to_string();
    let holder = task["worker_id"].as_str().unwrap().to_string();
    let (ida, _) = agent_identity(&a);
    let (idb, secret_b) = agent_identity(&b);
    let (holder_id, other_secret) = if holder == ida {
        (ida.clone(), secret_b.clone())
    } else {
        assert_eq!(holder, idb);
        (idb.clone(), agent_identity(&a).1)
    };

    let raw = renderfarm_client::http_client_builder().build().unwrap();
    let as_other = |path: &str| {
        raw.post(format!("{}{path}", broker.address))
            .bearer_auth(&other_secret)
    };
    let lease = "304fbe81-bc54-4cd1-a56e-d37b57f0ad2c";
    let attempts = [
        as_other(&format!("/workers/{holder_id}/heartbeat"))
            .json(&json!({ "task_id": task_id, "lease_id": lease, "frames_done": 6 })),
        as_other(&format!("/workers/{holder_id}/request-task")),
        as_other(&format!("/tasks/{task_id}/progress"))
            .json(&json!({ "lease_id": lease, "frames_done": 6 })),
        as_other(&format!("/tasks/{task_id}/complete")).json(&json!({ "lease_id": lease })),
        as_other(&format!("/tasks/{task_id}/fail"))
            .json(&json!({ "lease_id": lease, "reason": "sabotage" })),
        as_other(&format!("/tasks/{task_id}/release")).json(&json!({ "lease_id": lease })),
    ];
    for attempt in attempts {
        let response = attempt.send().await.unwrap();
        let url = response.url().clone();
        assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN, "{url}");
    }
    // The holder's work is untouched: it finishes the render itself.
    let done = wait_for_render_status(
        &broker.address,
        &broker.client,
        &id,
        &["completed", "failed"],
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let tasks = tasks_of(&broker.address, &broker.client, &id).await;
    assert_eq!(tasks[0]["worker_id"].as_str(), Some(holder_id.as_str()));
    assert_eq!(tasks[0]["retries"], 0);
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(sa.completed + sb.completed, 1);
    assert_eq!(sa.aborted + sb.aborted + sa.failed + sb.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_restarted_on_its_work_directory_is_the_same_worker() {
    let Some(blender) =
        blender_or_skip("an_agent_restarted_on_its_work_directory_is_the_same_worker").await
    else {
        return;
    };
    let broker = TestBroker::start().await;
    let work = tempfile::tempdir().unwrap();
    let config = || AgentConfig {
        broker: broker.address.clone(),
        name: "keeper".into(),
        tags: Vec::new(),
        blender: blender.clone(),
        ffmpeg: "ffmpeg".into(),
        work_dir: work.path().to_path_buf(),
        heartbeat: Duration::from_millis(300),
        log_interval: Duration::from_millis(200),
        poll_wait: Duration::from_secs(1),
        enrolment_token: Some(common::ENROLMENT_TOKEN.into()),
        ca_file: None,
        cache_size: renderfarm_worker::cache::DEFAULT_CACHE_SIZE,
        previews: true,
        warm: renderfarm_worker::blender::warm::WarmConfig::default(),
        hours: Default::default(),
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let signals = StopSignals::default();
        let agent = Agent::new(config(), signals.clone()).await.unwrap();
        let running = tokio::spawn(agent.run());
        wait_for_workers(&broker.address, &broker.client, 1).await;
        signals.stop.cancel();
        let summary = running.await.unwrap().unwrap();
        ids.push(summary.worker_id.expect("a worker id"));
    }
    assert_eq!(ids[0], ids[1], "the same worker both times");
    let workers = get_json(&broker.client, format!("{}/workers", broker.address)).await;
    assert_eq!(workers.as_array().unwrap().len(), 1, "{workers}");
}
