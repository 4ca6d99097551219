//! A render's video (issue 15): once a render's frames are all rendered, a
//! follow-up task of kind `ffmpeg` is claimed by an agent that has ffmpeg,
//! which assembles the frames in order into an MP4 and sends it to the
//! broker. Real Blender renders the frames, Debian's real ffmpeg encodes
//! them and real ffprobe reads the result.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{
    blender_or_skip, ffmpeg_or_skip, renderfarm_command, run_renderfarm, scene, submission,
    wait_for, TestAgent, TestBroker, ADMIN_TOKEN,
};
use renderfarm_client::{sha256_file, BrokerClient};
use renderfarm_wire::{Render, RenderSpec, RenderStatus, Task, TaskKind, TaskStatus};
use renderfarm_worker::blender::scene::SceneSpec;
use serde_json::Value;
use uuid::Uuid;

/// Long enough for two chunks of a tiny scene and a video on a busy machine.
const VIDEO_LIMIT: Duration = Duration::from_secs(240);

/// What every test here starts from: the tools, a broker on port 0 with an
/// admin's client, and a folder its agents share.
struct Farm {
    blender: PathBuf,
    ffprobe: PathBuf,
    broker: TestBroker,
    client: BrokerClient,
    shared: tempfile::TempDir,
}

impl Farm {
    /// `None` after a SKIPPED line when Blender is missing, or ffmpeg and
    /// ffprobe are and the test `needs_ffmpeg` (not one whose ffmpeg is a
    /// test double).
    async fn start(test: &str, needs_ffmpeg: bool) -> Option<Farm> {
        let blender = blender_or_skip(test).await?;
        let ffprobe = if needs_ffmpeg {
            ffmpeg_or_skip(test)?.1
        } else {
            PathBuf::from("ffprobe")
        };
        let broker = TestBroker::start().await;
        let client = BrokerClient::new(&broker.address)
            .unwrap()
            .with_token(Some(ADMIN_TOKEN.into()));
        Some(Farm {
            blender,
            ffprobe,
            broker,
            client,
            shared: tempfile::tempdir().unwrap(),
        })
    }
}

/// Waits until the render's video is `want` (failing fast on another
/// final status).
async fn wait_for_video(client: &BrokerClient, id: Uuid, want: TaskStatus) -> Render {
    wait_for(
        &format!("the video of render {id} to be {}", want.as_str()),
        VIDEO_LIMIT,
        || async {
            let render = client.render(id).await.ok()?;
            match render.video_status {
                Some(status) if status == want => Some(render),
                Some(
                    status @ (TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Canceled),
                ) => {
                    let tasks = client.tasks(id, &Default::default()).await.ok();
                    panic!(
                        "the video ended {} instead: {render:?} {tasks:?}",
                        status.as_str()
                    )
                }
                _ => None,
            }
        },
    )
    .await
}

/// Submits `render` (a [`submission`]) with a video at 24 fps in H.264 and
/// `max_retries`; its id.
async fn submit_with_video(client: &BrokerClient, mut render: Value, max_retries: i64) -> Uuid {
    render["video"] = serde_json::json!({"fps": 24, "codec": "h264"});
    render["max_retries"] = max_retries.into();
    let spec: RenderSpec = serde_json::from_value(render).expect("a render");
    client.submit(&spec).await.unwrap().id
}

/// The render's tasks of `kind`.
async fn tasks_of_kind(client: &BrokerClient, id: Uuid, kind: TaskKind) -> Vec<Task> {
    client
        .tasks(id, &Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|t| t.kind == kind)
        .collect()
}

/// What ffprobe reads in a video: its codec, size, frame rate, and the
/// frames it decodes one by one (`-count_frames`).
#[derive(Debug, PartialEq, Eq)]
struct Probe {
    codec: String,
    width: u64,
    height: u64,
    rate: String,
    frames: u64,
}

fn probe(ffprobe: &Path, video: &Path) -> Probe {
    let output = std::process::Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height,r_frame_rate,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(video)
        .output()
        .expect("ffprobe runs");
    assert!(
        output.status.success(),
        "ffprobe {}: {}",
        video.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ffprobe's JSON");
    let stream = &json["streams"][0];
    let number = |v: &serde_json::Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("a number in {json}"))
    };
    Probe {
        codec: stream["codec_name"].as_str().unwrap_or_default().into(),
        width: number(&stream["width"]),
        height: number(&stream["height"]),
        rate: stream["r_frame_rate"].as_str().unwrap_or_default().into(),
        frames: number(&stream["nb_read_frames"]),
    }
}

/// Runs `renderfarm ARGS --broker BROKER`: whether it succeeded, and what it
/// printed on stdout and stderr.
/// The files left in an agent's video folder: none once its tasks ended.
fn video_leftovers(agent: &TestAgent) -> Vec<PathBuf> {
    walk(
        &agent
            .work_dir
            .path()
            .join(renderfarm_worker::video::VIDEO_DIR),
    )
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_uploaded_by_two_agents_become_a_24_fps_mp4_of_every_frame_at_the_scenes_size_rounded_up_to_even(
) {
    let test = "frames_uploaded_by_two_agents_become_a_24_fps_mp4_of_every_frame_at_the_scenes_size_rounded_up_to_even";
    let Some(farm) = Farm::start(test, true).await else {
        return;
    };
    let Farm {
        blender,
        ffprobe,
        broker,
        client,
        shared,
    } = &farm;
    // Odd on both sides: H.264 in 4:2:0 needs even ones, so the video pads.
    let spec = SceneSpec {
        width: 63,
        height: 47,
        ..SceneSpec::tiny(6)
    };
    let blend = scene(shared.path(), "turn", spec, blender).await;
    let sha256 = sha256_file(&blend).await.unwrap();
    client
        .upload_file(&blend, &sha256, &|_, _| {})
        .await
        .unwrap();
    let spec: RenderSpec = serde_json::from_value(serde_json::json!({
        "name": "turn",
        "blend_sha256": sha256,
        "frame_start": 1,
        "frame_end": 6,
        "chunk_size": 2,
        "video": {"fps": 24},
    }))
    .unwrap();
    let id = client.submit(&spec).await.unwrap().id;

    let a = TestAgent::start(&broker.address, "agent-a", blender).await;
    let b = TestAgent::start(&broker.address, "agent-b", blender).await;
    let done = wait_for_video(client, id, TaskStatus::Completed).await;

    assert_eq!(done.status, RenderStatus::Completed, "{done:?}");
    assert!(done.upload_frames, "the frames went through the broker");
    let p = &done.progress;
    assert_eq!(
        (
            p.tasks_total,
            p.tasks_completed,
            p.frames_done,
            p.frames_total
        ),
        (3, 3, 6, 6),
        "the progress counts the chunks alone: {p:?}"
    );
    let chunks = tasks_of_kind(client, id, TaskKind::Blender).await;
    assert_eq!(chunks.len(), 3, "{chunks:?}");
    let videos = tasks_of_kind(client, id, TaskKind::Ffmpeg).await;
    assert_eq!(videos.len(), 1, "one video task: {videos:?}");
    let video = &videos[0];
    assert_eq!(
        (
            video.status,
            video.frame_start,
            video.frame_end,
            video.frames_done
        ),
        (TaskStatus::Completed, 1, 6, 6),
        "{video:?}"
    );
    for worker in client.workers().await.unwrap() {
        assert_eq!(
            worker.kinds,
            [TaskKind::Blender, TaskKind::Ffmpeg],
            "an agent with ffmpeg says so: {worker:?}"
        );
    }
    let log = client.task_log(video.id).await.unwrap();
    assert!(
        log.contains("6 frame(s) 1-6 downloaded from the broker") && log.contains("libx264"),
        "the video task's log says what the agent and ffmpeg did: {log}"
    );

    // The command line fetches it; the broker serves it as video/mp4, in
    // parts when asked.
    let downloads = tempfile::tempdir().unwrap();
    let dir = downloads.path().to_str().unwrap();
    let (ok, out, err) = run_renderfarm(
        &broker.address,
        &["download", &id.to_string(), dir, "--video"],
    );
    assert!(ok, "download --video: {out}{err}");
    let mp4 = downloads.path().join("turn.mp4");
    assert!(out.contains(&mp4.display().to_string()), "{out}");
    assert_eq!(
        probe(ffprobe, &mp4),
        Probe {
            codec: "h264".into(),
            width: 64,
            height: 48,
            rate: "24/1".into(),
            frames: 6,
        }
    );
    let whole = std::fs::read(&mp4).unwrap();
    let part = broker
        .client
        .get(format!("{}/renders/{id}/video", broker.address))
        .header("Range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), reqwest::StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-type"].to_str().unwrap(),
        "video/mp4"
    );
    assert_eq!(part.bytes().await.unwrap(), whole[..100]);
    let (ok, out, _) = run_renderfarm(&broker.address, &["status", &id.to_string()]);
    assert!(ok && out.contains("24 fps h264: completed"), "{out}");

    for agent in [&a, &b] {
        assert_eq!(video_leftovers(agent), Vec::<PathBuf>::new());
    }
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(
        sa.completed + sb.completed,
        4,
        "3 chunks and a video: {sa:?} {sb:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_on_a_shared_drive_become_a_video_made_only_by_an_agent_that_has_ffmpeg() {
    let test = "frames_on_a_shared_drive_become_a_video_made_only_by_an_agent_that_has_ffmpeg";
    let Some(farm) = Farm::start(test, true).await else {
        return;
    };
    let Farm {
        blender,
        ffprobe,
        broker,
        client,
        shared,
    } = &farm;
    let blend = scene(shared.path(), "walk", SceneSpec::tiny(4), blender).await;
    let output = format!("{}/out/walk_###", shared.path().display());
    // An agent without ffmpeg renders the chunks and leaves the video alone.
    let without = TestAgent::start_with(&broker.address, "no-ffmpeg", blender, |c| {
        c.ffmpeg = PathBuf::from("/nonexistent/ffmpeg");
    })
    .await;
    let (ok, out, err) = run_renderfarm(
        &broker.address,
        &[
            "submit",
            blend.to_str().unwrap(),
            "--frames",
            "1-4",
            "--chunk",
            "2",
            "--output",
            &output,
            "--video-fps",
            "12",
        ],
    );
    assert!(ok, "submit: {out}{err}");
    assert!(
        out.contains("a h264 video at 12 fps follows the frames"),
        "{out}"
    );
    let id: Uuid = out
        .split_whitespace()
        .nth(2)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("an id in {out}"));
    // `watch` follows the render until its video is made, not only its frames.
    let mut watch = renderfarm_command();
    watch
        .args(["watch", &id.to_string(), "--broker", &broker.address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let watch = tokio::process::Command::from(watch)
        .kill_on_drop(true)
        .spawn()
        .expect("renderfarm watch runs");
    let rendered = wait_for("the frames to be rendered", VIDEO_LIMIT, || async {
        let render = client.render(id).await.ok()?;
        (render.status == RenderStatus::Completed).then_some(render)
    })
    .await;
    assert!(!rendered.upload_frames);
    let workers = client.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(
        workers[0].kinds,
        [TaskKind::Blender],
        "no ffmpeg, no videos"
    );
    // Long enough for a claim: the idle agent polls all along.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let render = client.render(id).await.unwrap();
    assert_eq!(
        render.video_status,
        Some(TaskStatus::Pending),
        "the video waits for an agent with ffmpeg: {render:?}"
    );

    let with = TestAgent::start(&broker.address, "ffmpeg", blender).await;
    let done = wait_for_video(client, id, TaskStatus::Completed).await;
    assert_eq!(done.status, RenderStatus::Completed);
    let video = &tasks_of_kind(client, id, TaskKind::Ffmpeg).await[0];
    let log = client.task_log(video.id).await.unwrap();
    assert!(
        log.contains(&format!(
            "4 frame(s) 1-4 found in {}/out",
            shared.path().display()
        )),
        "the frames were taken from the shared drive: {log}"
    );
    let downloads = tempfile::tempdir().unwrap();
    let mp4 = downloads.path().join("walk.mp4");
    client.download_video(id, &mp4, &|_, _| {}).await.unwrap();
    assert_eq!(
        probe(ffprobe, &mp4),
        Probe {
            codec: "h264".into(),
            width: 64,
            height: 48,
            rate: "12/1".into(),
            frames: 4,
        }
    );
    let watched = tokio::time::timeout(Duration::from_secs(60), watch.wait_with_output())
        .await
        .expect("watch ends once the video is made")
        .unwrap();
    let printed = String::from_utf8_lossy(&watched.stdout);
    assert!(watched.status.success(), "watch: {printed}");
    assert!(
        printed.contains("4/4 frames, completed, video waiting for the frames")
            || printed.contains("4/4 frames, completed, video pending"),
        "watch saw the frames done before the video: {printed}"
    );
    let last_of_render = printed.lines().rev().find(|l| l.contains(" render "));
    assert!(
        last_of_render.is_some_and(|l| l.ends_with("4/4 frames, completed, video completed")),
        "and stopped once the video was: {printed}"
    );
    let (s_without, s_with) = (without.stop().await, with.stop().await);
    assert_eq!((s_without.completed, s_with.completed), (2, 1));
    let (ok, out, _) = run_renderfarm(&broker.address, &["renders"]);
    assert!(
        ok && out.contains("4/4  completed"),
        "the video column: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_frame_or_one_that_does_not_decode_fails_the_video_saying_which() {
    let test = "a_missing_frame_or_one_that_does_not_decode_fails_the_video_saying_which";
    let Some(farm) = Farm::start(test, true).await else {
        return;
    };
    let Farm {
        blender,
        broker,
        client,
        shared,
        ..
    } = &farm;
    let blend = scene(shared.path(), "gap", SceneSpec::tiny(3), blender).await;
    let out = shared.path().join("out");
    // The frames are rendered first, by an agent that makes no videos, so
    // that the test can damage them before the video is made.
    let renderer = TestAgent::start_with(&broker.address, "renderer", blender, |c| {
        c.ffmpeg = PathBuf::from("/nonexistent/ffmpeg");
    })
    .await;
    let id = submit_with_video(client, submission("gap", &blend, 3, 3, &out), 0).await;
    wait_for("the frames to be rendered", VIDEO_LIMIT, || async {
        let render = client.render(id).await.ok()?;
        (render.status == RenderStatus::Completed).then_some(())
    })
    .await;
    renderer.stop().await;
    std::fs::remove_file(out.join("frame_0002.png")).unwrap();

    let agent = TestAgent::start(&broker.address, "ffmpeg", blender).await;
    wait_for_video(client, id, TaskStatus::Failed).await;
    let video = tasks_of_kind(client, id, TaskKind::Ffmpeg).await.remove(0);
    assert_eq!(
        video.failure_reason.as_deref(),
        Some(
            format!(
                "frame(s) 2 of 1-3 are not on disk under {}/frame_####; the video needs every frame",
                out.display()
            )
            .as_str()
        )
    );

    // Real ffmpeg on a frame that is not an image: it fails, and says so.
    std::fs::write(out.join("frame_0002.png"), b"not a PNG").unwrap();
    client.requeue_task(video.id).await.unwrap();
    wait_for("the video to fail again", VIDEO_LIMIT, || async {
        let video = tasks_of_kind(client, id, TaskKind::Ffmpeg).await.remove(0);
        let reason = video.failure_reason.clone()?;
        (video.status == TaskStatus::Failed && reason.starts_with("ffmpeg")).then_some(())
    })
    .await;
    let video = tasks_of_kind(client, id, TaskKind::Ffmpeg).await.remove(0);
    let reason = video.failure_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("ffmpeg exited with code")
            && reason.contains("Invalid PNG signature")
            && reason.ends_with("Conversion failed!"),
        "ffmpeg's own lines: {reason}"
    );
    assert_eq!(
        client.render(id).await.unwrap().status,
        RenderStatus::Completed
    );
    assert_eq!(video_leftovers(&agent), Vec::<PathBuf>::new());
    let summary = agent.stop().await;
    assert_eq!((summary.completed, summary.failed), (0, 2), "{summary:?}");
}

/// Writes, in `dir`, a test double of ffmpeg (real ffmpeg cannot be made to
/// fail on good frames): it answers `-version` like ffmpeg, so the agent
/// takes video tasks, and otherwise prints lines to stderr, as ffmpeg does
/// when an encode fails, and exits 1.
fn failing_ffmpeg(dir: &Path) -> PathBuf {
    let path = dir.join("ffmpeg-that-fails");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         if [ \"$1\" = -version ]; then echo 'ffmpeg version test-double'; exit 0; fi\n\
         echo 'Input #0, image2, from %08d.png:' >&2\n\
         echo '[libx264 @ 0x1] width not divisible by 2 (test double)' >&2\n\
         echo 'Error initializing output stream 0:0 -- Error while opening encoder' >&2\n\
         echo 'Conversion failed!' >&2\n\
         exit 1\n",
    )
    .unwrap();
    make_executable(&path);
    path
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_ffmpeg_fails_the_video_with_its_last_lines_after_the_retries_and_a_requeue_makes_it(
) {
    let test = "a_failing_ffmpeg_fails_the_video_with_its_last_lines_after_the_retries_and_a_requeue_makes_it";
    let Some(farm) = Farm::start(test, true).await else {
        return;
    };
    let Farm {
        blender,
        ffprobe,
        broker,
        client,
        shared,
    } = &farm;
    let blend = scene(shared.path(), "spin", SceneSpec::tiny(2), blender).await;
    let double = failing_ffmpeg(shared.path());
    let failing = TestAgent::start_with(&broker.address, "bad-ffmpeg", blender, |c| {
        c.ffmpeg = double.clone();
    })
    .await;
    let out = shared.path().join("out");
    let id = submit_with_video(client, submission("spin", &blend, 2, 2, &out), 1).await;
    wait_for_video(client, id, TaskStatus::Failed).await;
    // The scheduler's tick (run now rather than waited for) gives a failed
    // task its retries, a video's as a chunk's.
    let retried = client.run_scheduler().await.unwrap();
    let video = wait_for("the video's retry to fail", VIDEO_LIMIT, || async {
        let video = tasks_of_kind(client, id, TaskKind::Ffmpeg).await.remove(0);
        (video.retries == 1 && video.status == TaskStatus::Failed).then_some(video)
    })
    .await;
    client.run_scheduler().await.unwrap();
    let failed = client.render(id).await.unwrap();
    assert_eq!(
        failed.video_status,
        Some(TaskStatus::Failed),
        "no retry after max_retries (1): {failed:?} (first tick: {retried:?})"
    );
    assert_eq!(
        failed.status,
        RenderStatus::Completed,
        "a failed video does not fail the render: {failed:?}"
    );
    assert_eq!(failed.progress.tasks_failed, 0, "{:?}", failed.progress);
    assert_eq!(video.exit_code, Some(1));
    let reason = video.failure_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("ffmpeg exited with code 1")
            && reason.ends_with(
                "Error initializing output stream 0:0 -- Error while opening encoder\nConversion failed!"
            ),
        "the reason ends with ffmpeg's own last lines: {reason}"
    );
    assert_eq!(video_leftovers(&failing), Vec::<PathBuf>::new());
    let summary = failing.stop().await;
    assert_eq!((summary.completed, summary.failed), (1, 2), "{summary:?}");

    // An operator finds the video's task and tries again, on a worker whose
    // ffmpeg works.
    let (ok, out, _) = run_renderfarm(&broker.address, &["tasks", &id.to_string()]);
    assert!(
        ok && out.lines().any(|l| l.starts_with(&video.id.to_string())
            && l.contains(" ffmpeg ")
            && l.contains(" failed ")
            && l.ends_with("Conversion failed!")),
        "{out}"
    );
    let working = TestAgent::start(&broker.address, "good-ffmpeg", blender).await;
    let (ok, out, err) = run_renderfarm(&broker.address, &["requeue-task", &video.id.to_string()]);
    assert!(ok, "requeue-task: {out}{err}");
    let done = wait_for_video(client, id, TaskStatus::Completed).await;
    assert_eq!(done.status, RenderStatus::Completed);
    let mp4 = shared.path().join("spin.mp4");
    client.download_video(id, &mp4, &|_, _| {}).await.unwrap();
    let probed = probe(ffprobe, &mp4);
    assert_eq!(
        (probed.frames, probed.rate.as_str()),
        (2, "24/1"),
        "{probed:?}"
    );
    assert_eq!(working.stop().await.completed, 1);
}

/// A test double of ffmpeg that answers `-version` and otherwise records
/// its process id in `pids` and sleeps, as a long encode would.
fn sleeping_ffmpeg(dir: &Path, pids: &Path) -> PathBuf {
    let path = dir.join("ffmpeg-that-sleeps");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             if [ \"$1\" = -version ]; then echo 'ffmpeg version test-double'; exit 0; fi\n\
             echo $$ >> '{}'\n\
             exec sleep 600\n",
            pids.display()
        ),
    )
    .unwrap();
    make_executable(&path);
    path
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_video_task_taken_away_by_the_broker_has_its_ffmpeg_killed_within_two_seconds() {
    let test = "a_video_task_taken_away_by_the_broker_has_its_ffmpeg_killed_within_two_seconds";
    let Some(farm) = Farm::start(test, false).await else {
        return;
    };
    let Farm {
        blender,
        broker,
        client,
        shared,
        ..
    } = &farm;
    let blend = scene(shared.path(), "hold", SceneSpec::tiny(1), blender).await;
    let pids = shared.path().join("ffmpeg.pids");
    let double = sleeping_ffmpeg(shared.path(), &pids);
    let agent = TestAgent::start_with(&broker.address, "slow-ffmpeg", blender, |c| {
        c.ffmpeg = double.clone();
    })
    .await;
    let out = shared.path().join("out");
    let id = submit_with_video(client, submission("hold", &blend, 1, 1, &out), 0).await;
    let first: i32 = wait_for("ffmpeg to start", VIDEO_LIMIT, || async {
        std::fs::read_to_string(&pids)
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    })
    .await;
    assert!(alive(first));
    let video = tasks_of_kind(client, id, TaskKind::Ffmpeg).await.remove(0);
    assert_eq!(video.status, TaskStatus::Running);
    client.requeue_task(video.id).await.unwrap();
    let taken = tokio::time::Instant::now();
    wait_for(
        "the taken task's ffmpeg to be killed",
        Duration::from_secs(2),
        || async { (!alive(first)).then_some(()) },
    )
    .await;
    eprintln!("ffmpeg killed {:?} after the requeue", taken.elapsed());
    let summary = agent.stop().await;
    assert!(summary.aborted >= 1, "{summary:?}");
    let left: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p| alive(*p))
        .collect();
    assert_eq!(left, Vec::<i32>::new(), "no ffmpeg outlives its task");
}
