//! A farm without a shared drive: the blend file goes in through the broker
//! (`renderfarm submit --upload`), the agents fetch it by hash into their
//! caches, and the frames come back through the broker (`renderfarm
//! download`). The broker, each agent and the submitter have temporary
//! folders of their own, with no path in common. Real Blender throughout.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{
    blender_or_skip, blender_pids, png_pixels, renderfarm_command, wait_for, BrokerProcess,
    TestAgent, ADMIN_TOKEN,
};
use renderfarm_client::{BrokerClient, FileStatus};
use renderfarm_wire::{Render, RenderStatus};
use renderfarm_worker::{Agent, AgentConfig, AgentSummary, StopSignals};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const RENDER_LIMIT: Duration = Duration::from_secs(180);

/// Makes, in `dir`, an image texture (`texture.png`) and a scene
/// (`shot.blend`) whose plane shows it through a path relative to the
/// scene, as an artist's file would; the plane turns over `frames` frames.
/// Emission only and a fixed seed: Cycles renders the same pixels each time.
const TEXTURED_SCENE: &str = r#"
import math, os, sys
import bpy

folder, frames = sys.argv[sys.argv.index("--") + 1:]
frames = int(frames)
bpy.ops.wm.read_factory_settings(use_empty=True)

texture = bpy.data.images.new("texture", 8, 8)
pixels = []
for y in range(8):
    for x in range(8):
        pixels += [1.0, 0.25, 0.0, 1.0] if (x + y) % 2 else [0.0, 0.3, 1.0, 1.0]
texture.pixels = pixels
texture.filepath_raw = os.path.join(folder, "texture.png")
texture.file_format = "PNG"
texture.save()
bpy.data.images.remove(texture)

scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 2
scene.cycles.use_denoising = False
scene.render.resolution_x = 48
scene.render.resolution_y = 32
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.frame_start = 1
scene.frame_end = frames

bpy.ops.mesh.primitive_plane_add(size=2)
plane = bpy.context.active_object
material = bpy.data.materials.new("textured")
material.use_nodes = True
nodes = material.node_tree.nodes
links = material.node_tree.links
nodes.clear()
image = nodes.new("ShaderNodeTexImage")
image.image = bpy.data.images.load(os.path.join(folder, "texture.png"))
image.image.filepath = "//texture.png"
image.interpolation = "Closest"
emission = nodes.new("ShaderNodeEmission")
output = nodes.new("ShaderNodeOutputMaterial")
links.new(image.outputs["Color"], emission.inputs["Color"])
links.new(emission.outputs["Emission"], output.inputs["Surface"])
plane.data.materials.append(material)
plane.rotation_euler = (0.0, 0.0, 0.0)
plane.keyframe_insert("rotation_euler", frame=1)
plane.rotation_euler = (0.0, 0.0, math.radians(90))
plane.keyframe_insert("rotation_euler", frame=max(frames, 2))

bpy.ops.object.camera_add(location=(0, 0, 4), rotation=(0, 0, 0))
camera = bpy.context.active_object
camera.data.type = "ORTHO"
camera.data.ortho_scale = 3.2
scene.camera = camera

bpy.ops.wm.save_as_mainfile(filepath=os.path.join(folder, "shot.blend"), relative_remap=True)
"#;

/// A scene with what packing cannot carry: an image sequence, a cloth
/// simulation cached on disk and a VDB volume.
const SCENE_WITH_SEQUENCE_AND_VOLUME: &str = r#"
import os, sys
import bpy

folder = sys.argv[sys.argv.index("--") + 1]
bpy.ops.wm.read_factory_settings(use_empty=True)
for frame in (1, 2):
    still = bpy.data.images.new("still", 4, 4)
    still.filepath_raw = os.path.join(folder, "smoke_%04d.png" % frame)
    still.file_format = "PNG"
    still.save()
    bpy.data.images.remove(still)
sequence = bpy.data.images.load(os.path.join(folder, "smoke_0001.png"))
sequence.source = "SEQUENCE"
sequence.use_fake_user = True
volume = bpy.data.volumes.new("explosion")
volume.filepath = os.path.join(folder, "explosion.vdb")
bpy.context.scene.collection.objects.link(bpy.data.objects.new("explosion", volume))
bpy.ops.object.camera_add(location=(0, 0, 4))
bpy.context.scene.camera = bpy.context.active_object
bpy.ops.mesh.primitive_plane_add()
bpy.context.active_object.name = "flag"
cloth = bpy.context.active_object.modifiers.new("Cloth", "CLOTH")
# Blender takes a disk cache only for a file saved once.
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(folder, "shot.blend"))
cloth.point_cache.use_disk_cache = True
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(folder, "shot.blend"))
"#;

/// Runs `script` in Blender with `args` after `--`.
fn blender_python(blender: &Path, script: &str, args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("make.py");
    std::fs::write(&path, script).unwrap();
    let output = Command::new(blender)
        .args([
            "-b",
            "--factory-startup",
            "--python-exit-code",
            "1",
            "--python",
        ])
        .arg(&path)
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("Blender runs");
    assert!(
        output.status.success(),
        "Blender's Python failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The textured scene of `frames` frames in `dir`; its path.
fn textured_scene(blender: &Path, dir: &Path, frames: i64) -> PathBuf {
    blender_python(
        blender,
        TEXTURED_SCENE,
        &[&dir.display().to_string(), &frames.to_string()],
    );
    let blend = dir.join("shot.blend");
    assert!(blend.is_file() && dir.join("texture.png").is_file());
    blend
}

/// Frames `1..=frames` of `blend` rendered by Blender itself into `out`.
fn render_directly(blender: &Path, blend: &Path, out: &Path, frames: i64) {
    let output = Command::new(blender)
        .arg("-b")
        .arg(blend)
        .arg("-o")
        .arg(out.join("frame_####"))
        .args(["-s", "1", "-e", &frames.to_string(), "-t", "0", "-a"])
        .stdin(Stdio::null())
        .output()
        .expect("Blender runs");
    assert!(output.status.success(), "the reference render failed");
}

/// Every PNG in `dir`, by name.
fn pngs(dir: &Path) -> BTreeMap<String, PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| name.ends_with(".png"))
        .collect()
}

/// Asserts that `got` holds frames `1..=frames`, each with the pixels of
/// the same frame in `reference`, and nothing else.
fn assert_same_pixels(got: &Path, reference: &Path, frames: i64) {
    let want: Vec<String> = (1..=frames).map(|f| format!("frame_{f:04}.png")).collect();
    let got_files = pngs(got);
    assert_eq!(
        got_files.keys().cloned().collect::<Vec<_>>(),
        want,
        "the downloaded frames"
    );
    let reference_files = pngs(reference);
    for name in &want {
        let a = png_pixels(&got_files[name]);
        let b = png_pixels(&reference_files[name]);
        assert_eq!((a.0, a.1, a.2, a.3), (b.0, b.1, b.2, b.3), "{name}: format");
        assert!(
            a.4 == b.4,
            "{name}: the pixels differ from Blender's own render"
        );
    }
    // The frames differ from one another: the comparison can fail.
    if frames > 1 {
        assert_ne!(
            png_pixels(&got_files[&want[0]]).4,
            png_pixels(&got_files[&want[want.len() - 1]]).4,
            "the scene moves"
        );
    }
}

/// Asserts that the broker lists frames `1..=frames` of the render, each
/// once, with its hash.
async fn assert_every_frame_stored_once(client: &BrokerClient, id: Uuid, frames: i64) {
    let list = client.frames(id).await.unwrap();
    assert_eq!(
        list.frames.iter().map(|f| f.frame).collect::<Vec<_>>(),
        (1..=frames).collect::<Vec<_>>(),
        "every frame stored once"
    );
    assert!(list.frames.iter().all(|f| f.sha256.is_some()), "{list:?}");
}

fn admin(broker: &BrokerProcess) -> BrokerClient {
    BrokerClient::new(&broker.address)
        .unwrap()
        .with_token(Some(ADMIN_TOKEN.into()))
}

async fn ready(client: &BrokerClient) {
    // A MongoDB broker answers 503 until it has connected.
    wait_for(
        "the broker to be ready",
        Duration::from_secs(30),
        || async { client.ready().await.ok() },
    )
    .await;
}

/// `renderfarm submit FILE --upload …`: the render's id, and what the
/// command printed on stdout and stderr.
fn submit_upload(broker: &str, blend: &Path, frames: i64, chunk: i64) -> (Uuid, String, String) {
    let output = renderfarm_command()
        .arg("submit")
        .arg(blend)
        .args([
            "--upload",
            "--frames",
            &format!("1-{frames}"),
            "--chunk",
            &chunk.to_string(),
            "--broker",
            broker,
        ])
        .env(
            "RENDERFARM_BLENDER",
            std::env::var("RENDERFARM_BLENDER").unwrap_or_else(|_| "blender".into()),
        )
        .stdin(Stdio::null())
        .output()
        .expect("renderfarm runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "submit --upload failed: {stdout}{stderr}"
    );
    let id = stdout
        .split_whitespace()
        .skip_while(|w| *w != "render")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no render id in {stdout:?}"));
    (id, stdout, stderr)
}

/// `renderfarm download RENDER DIR`; what it printed.
fn download(broker: &str, render: Uuid, dir: &Path) -> String {
    let output = renderfarm_command()
        .args(["download", &render.to_string()])
        .arg(dir)
        .args(["--broker", broker])
        .stdin(Stdio::null())
        .output()
        .expect("renderfarm runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "download failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn wait_until_finished(client: &BrokerClient, id: Uuid) -> Render {
    wait_for(&format!("render {id} to finish"), RENDER_LIMIT, || async {
        let render = client.render(id).await.ok()?;
        matches!(
            render.status,
            RenderStatus::Completed | RenderStatus::Failed | RenderStatus::Canceled
        )
        .then_some(render)
    })
    .await
}

/// The bytes of every file in `dir`, by path (a folder: its name alone), so
/// that a file changed or a file or folder added shows.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let bytes = if e.path().is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (e.path(), bytes)
        })
        .collect()
}

/// The whole of issue 13's farm, on the store `store_args` selects.
async fn a_farm_without_a_shared_drive(test: &str, store_args: &[&str]) {
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let frames = 6;
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with(broker_dir.path(), "127.0.0.1:0", store_args);
    let client = admin(&broker);
    ready(&client).await;

    let submitter = tempfile::tempdir().unwrap();
    let blend = textured_scene(&blender, submitter.path(), frames);
    let reference = tempfile::tempdir().unwrap();
    render_directly(&blender, &blend, reference.path(), frames);
    let before = snapshot(submitter.path());

    let (id, stdout, stderr) = submit_upload(&broker.address, &blend, frames, 2);
    assert!(stdout.contains("renderfarm download"), "{stdout}");
    assert!(!stderr.contains("warning"), "nothing left behind: {stderr}");
    assert_eq!(
        snapshot(submitter.path()),
        before,
        "the artist's folder is only read"
    );
    let render = client.render(id).await.unwrap();
    assert_eq!(render.blend_file, "shot.blend");
    assert!(render.upload_frames, "frames come back by default");
    let sha256 = render.blend_sha256.clone().expect("an uploaded blend");
    assert!(matches!(
        client.file_status(&sha256).await.unwrap(),
        FileStatus::Stored { .. }
    ));

    // Nothing the submitter had is left for the agents to find.
    drop(submitter);
    let a = TestAgent::start(&broker.address, "agent-a", &blender).await;
    let b = TestAgent::start(&broker.address, "agent-b", &blender).await;
    let done = wait_until_finished(&client, id).await;
    assert_eq!(done.status, RenderStatus::Completed, "{done:?}");

    let tasks = client.tasks(id, &Default::default()).await.unwrap().items;
    assert_eq!(tasks.len(), 3);
    let workers: std::collections::HashSet<_> = tasks.iter().filter_map(|t| t.worker_id).collect();
    assert_eq!(workers.len(), 2, "both agents rendered: {tasks:?}");
    for agent in [&a, &b] {
        let dir = agent.work_dir.path();
        assert!(dir.join("cache").join(format!("{sha256}.blend")).is_file());
        let left: Vec<_> = std::fs::read_dir(dir.join("frames"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "stored frames are removed locally: {left:?}"
        );
    }
    for summary in [a.stop().await, b.stop().await] {
        assert_eq!(
            summary.blends_downloaded, 1,
            "one download per agent: {summary:?}"
        );
    }

    assert_every_frame_stored_once(&client, id, frames).await;

    let downloads = tempfile::tempdir().unwrap();
    let printed = download(&broker.address, id, downloads.path());
    assert!(printed.contains("6 downloaded"), "{printed}");
    assert_same_pixels(downloads.path(), reference.path(), frames);

    // Again: complete files are kept, a partial one is taken up where it
    // stopped (its .part), a missing one fetched.
    let third = downloads.path().join("frame_0003.png");
    let whole = std::fs::read(&third).unwrap();
    std::fs::remove_file(&third).unwrap();
    std::fs::write(
        downloads.path().join("frame_0003.png.part"),
        &whole[..whole.len() / 2],
    )
    .unwrap();
    std::fs::remove_file(downloads.path().join("frame_0005.png")).unwrap();
    let printed = download(&broker.address, id, downloads.path());
    assert!(
        printed.contains("2 downloaded, 4 already there"),
        "{printed}"
    );
    assert_eq!(std::fs::read(&third).unwrap(), whole);
    assert!(!downloads.path().join("frame_0003.png.part").exists());
    assert_same_pixels(downloads.path(), reference.path(), frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_textured_scene_uploaded_rendered_by_two_agents_and_downloaded_has_blenders_own_pixels() {
    a_farm_without_a_shared_drive(
        "a_textured_scene_uploaded_rendered_by_two_agents_and_downloaded_has_blenders_own_pixels",
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_farm_without_a_shared_drive_on_mongodb_with_gridfs() {
    let test = "the_same_farm_without_a_shared_drive_on_mongodb_with_gridfs";
    let Some(target) = renderfarm_testkit::mongodb_for_tests(test) else {
        return;
    };
    let store = format!(
        "{}/renderfarm_files_{}",
        target.uri().trim_end_matches('/'),
        Uuid::new_v4().simple()
    );
    a_farm_without_a_shared_drive(test, &["--store", &store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_packing_cannot_carry_is_named_and_the_artists_file_is_untouched() {
    let test = "what_packing_cannot_carry_is_named_and_the_artists_file_is_untouched";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(broker_dir.path(), "127.0.0.1:0");
    let submitter = tempfile::tempdir().unwrap();
    let folder = submitter.path().display().to_string();
    blender_python(&blender, SCENE_WITH_SEQUENCE_AND_VOLUME, &[&folder]);
    let blend = submitter.path().join("shot.blend");
    let before = snapshot(submitter.path());

    let (_, _, stderr) = submit_upload(&broker.address, &blend, 1, 1);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    let file = |name: &str| submitter.path().join(name).display().to_string();
    for (warning, kind, path) in [
        (warnings[0], "image sequence", file("smoke_0001.png")),
        (
            warnings[1],
            "simulation cache on disk",
            file("blendcache_shot"),
        ),
        (warnings[2], "VDB volume", file("explosion.vdb")),
    ] {
        assert!(
            warning.contains(kind) && warning.contains(&path),
            "{kind} {path}: {stderr}"
        );
    }
    assert_eq!(
        snapshot(submitter.path()),
        before,
        "the artist's files are only read"
    );

    // Bad input is refused before Blender or the broker is bothered.
    let not_blend = submitter.path().join("notes.blend");
    std::fs::write(&not_blend, "shopping list").unwrap();
    for (file, says) in [
        (not_blend, "not a .blend file"),
        (submitter.path().join("missing.blend"), "cannot read it"),
    ] {
        let output = renderfarm_command()
            .arg("submit")
            .arg(&file)
            .args(["--upload", "--broker", &broker.address])
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{file:?}: {stderr}");
    }
}

/// An agent with a cache of `cache_size` bytes, in a work directory of its
/// own.
async fn agent_with_cache(
    broker: &str,
    name: &str,
    blender: &Path,
    cache_size: u64,
) -> (
    StopSignals,
    tokio::task::JoinHandle<anyhow::Result<AgentSummary>>,
    tempfile::TempDir,
) {
    let work_dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        cache_size,
        ..common::agent_config(broker, name, blender, work_dir.path())
    };
    let signals = StopSignals::default();
    let agent = Agent::new(config, signals.clone()).await.unwrap();
    (signals, tokio::spawn(agent.run()), work_dir)
}

async fn stop(
    signals: StopSignals,
    handle: tokio::task::JoinHandle<anyhow::Result<AgentSummary>>,
) -> AgentSummary {
    signals.stop.cancel();
    signals.abort.cancel();
    tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .expect("the agent stops")
        .unwrap()
        .unwrap()
}

fn cached_blends(work_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(work_dir.join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_downloads_a_blend_once_refetches_a_damaged_one_and_evicts_the_least_recently_used(
) {
    let test = "the_agent_downloads_a_blend_once_refetches_a_damaged_one_and_evicts_the_least_recently_used";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(broker_dir.path(), "127.0.0.1:0");
    let client = admin(&broker);
    ready(&client).await;
    let artist = tempfile::tempdir().unwrap();
    let (one, two) = (artist.path().join("one"), artist.path().join("two"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    let first = textured_scene(&blender, &one, 3);
    // Another scene (another hash): two frames instead of three.
    let second = textured_scene(&blender, &two, 2);
    let reference = tempfile::tempdir().unwrap();
    render_directly(&blender, &first, reference.path(), 3);

    let (id, _, _) = submit_upload(&broker.address, &first, 3, 1);
    let sha_one = client.render(id).await.unwrap().blend_sha256.unwrap();
    let Ok(FileStatus::Stored { bytes }) = client.file_status(&sha_one).await else {
        panic!("the first blend is stored");
    };
    // Room for one blend, not two.
    let (signals, handle, work_dir) =
        agent_with_cache(&broker.address, "cache", &blender, bytes * 3 / 2).await;
    let done = wait_until_finished(&client, id).await;
    assert_eq!(done.status, RenderStatus::Completed);
    assert_eq!(cached_blends(work_dir.path()), [format!("{sha_one}.blend")]);

    // Damaged on disk: same size, other bytes; the same blend again.
    let cached = work_dir
        .path()
        .join("cache")
        .join(format!("{sha_one}.blend"));
    let mut damaged = std::fs::read(&cached).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&cached, &damaged).unwrap();
    // By hash: packing again would make other bytes (a .blend file holds
    // the memory addresses of its run).
    let spec = serde_json::from_value(serde_json::json!({
        "name": "again",
        "blend_sha256": sha_one,
        "frame_start": 1,
        "frame_end": 3,
        "chunk_size": 3,
    }))
    .unwrap();
    let again = client.submit(&spec).await.unwrap().id;
    let done = wait_until_finished(&client, again).await;
    assert_eq!(done.status, RenderStatus::Completed, "{done:?}");
    let downloads = tempfile::tempdir().unwrap();
    download(&broker.address, again, downloads.path());
    assert_same_pixels(downloads.path(), reference.path(), 3);

    let (other, _, _) = submit_upload(&broker.address, &second, 2, 2);
    let sha_two = client.render(other).await.unwrap().blend_sha256.unwrap();
    assert_ne!(sha_one, sha_two);
    let done = wait_until_finished(&client, other).await;
    assert_eq!(done.status, RenderStatus::Completed);
    assert_eq!(
        cached_blends(work_dir.path()),
        [format!("{sha_two}.blend")],
        "the least recently used made room"
    );

    let summary = stop(signals, handle).await;
    // First render: one download for three chunks; the damaged copy: one
    // more; the second scene: one more.
    assert_eq!(summary.blends_downloaded, 3, "{summary:?}");
    assert_eq!(summary.completed, 3 + 1 + 1);
}

// --- an agent killed in the middle of a frame upload ---

/// The environment variable that turns [`child_agent_process`] on: the JSON
/// of [`ChildAgent`].
const CHILD_AGENT: &str = "RENDERFARM_TEST_CHILD_AGENT";

#[derive(serde::Serialize, serde::Deserialize)]
struct ChildAgent {
    broker: String,
    work_dir: PathBuf,
    blender: PathBuf,
}

/// Not a test: the body of an agent process that the kill test starts (this
/// test binary run again, `--ignored --exact child_agent_process`), so that
/// SIGKILL really kills an agent. Returns at once when not started so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the kill test as a separate process"]
async fn child_agent_process() {
    let Ok(json) = std::env::var(CHILD_AGENT) else {
        return;
    };
    let child: ChildAgent = serde_json::from_str(&json).unwrap();
    let config = common::agent_config(&child.broker, "doomed", &child.blender, &child.work_dir);
    let agent = Agent::new(config, StopSignals::default()).await.unwrap();
    agent.run().await.unwrap();
}

/// What a [`relay`] does to the first request that starts with its mark.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trip {
    /// Pass its headers and `body` bytes of its body, then hold the rest, as
    /// a network would in the middle of a large upload.
    Stall { body: usize },
    /// Pass its headers and `body` bytes of its body, then close both ends.
    Cut { body: usize },
    /// Pass it whole, and `answer` bytes of the broker's answer to it, then
    /// close both ends (a download cut off).
    CutAnswer { answer: u64 },
}

/// What marks the upload of a chunk's first frame (`PUT
/// /tasks/{id}/frames/1?lease_id=…`), and nothing else an agent sends: not
/// the frame's preview, which goes at the same time, nor a log that names
/// the frames' folder.
const FIRST_FRAME_UPLOAD: &[u8] = b"/frames/1?lease_id=";

/// A TCP relay between a client and the broker that passes everything but
/// the first request containing `mark` (`PUT /tasks/`), which it trips
/// as `trip` says; `tripped` is told then. Its address, and every byte the
/// clients sent through it so far.
async fn relay(
    broker: &str,
    mark: &'static [u8],
    trip: Trip,
    tripped: Arc<tokio::sync::Notify>,
) -> (String, Arc<std::sync::Mutex<Vec<u8>>>) {
    let upstream = broker.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = sent.clone();
    tokio::spawn(async move {
        while let Ok((client_side, _)) = listener.accept().await {
            let Ok(broker_side) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client_side.into_split();
            let (mut broker_read, mut broker_write) = broker_side.into_split();
            // The bytes of answers passed so far, and how many may pass in
            // all (a cut answer lowers it).
            let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let budget = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
            let answers = {
                let (answered, budget) = (answered.clone(), budget.clone());
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = match broker_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n as u64,
                        };
                        let so_far = answered.load(std::sync::atomic::Ordering::SeqCst);
                        let left = budget
                            .load(std::sync::atomic::Ordering::SeqCst)
                            .saturating_sub(so_far);
                        let pass = n.min(left) as usize;
                        if client_write.write_all(&buffer[..pass]).await.is_err() {
                            return;
                        }
                        answered.fetch_add(pass as u64, std::sync::atomic::Ordering::SeqCst);
                        if (pass as u64) < n {
                            return; // cut: both halves close as this ends
                        }
                    }
                })
            };
            let (tripped, done, seen) = (tripped.clone(), done.clone(), seen.clone());
            tokio::spawn(async move {
                let mut pending: Vec<u8> = Vec::new();
                let mut buffer = vec![0u8; 64 * 1024];
                let mut holding = false;
                loop {
                    let n = match client_read.read(&mut buffer).await {
                        // The client is gone: so is this connection.
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if holding {
                        continue;
                    }
                    pending.extend_from_slice(&buffer[..n]);
                    let at = (!done.load(std::sync::atomic::Ordering::SeqCst))
                        .then(|| pending.windows(mark.len()).position(|w| w == mark))
                        .flatten();
                    let body = match trip {
                        Trip::Stall { body } | Trip::Cut { body } => body,
                        Trip::CutAnswer { .. } => 0,
                    };
                    let cut_at = at.and_then(|at| {
                        let head_end =
                            pending[at..].windows(4).position(|w| w == b"\r\n\r\n")? + at + 4;
                        (pending.len() >= head_end + body).then_some(head_end + body)
                    });
                    let pass = match (at, cut_at) {
                        (_, Some(cut)) => cut,
                        (Some(at), None) => at,
                        // Only what may be the start of the mark waits for
                        // more bytes: a request must not stall on its end.
                        (None, None) => {
                            let keep = (1..mark.len())
                                .rev()
                                .find(|&k| pending.ends_with(&mark[..k]))
                                .filter(|_| !done.load(std::sync::atomic::Ordering::SeqCst))
                                .unwrap_or(0);
                            pending.len() - keep
                        }
                    };
                    seen.lock().unwrap().extend_from_slice(&pending[..pass]);
                    if broker_write.write_all(&pending[..pass]).await.is_err() {
                        return;
                    }
                    pending.drain(..pass);
                    if cut_at.is_some() && !done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        tripped.notify_one();
                        match trip {
                            Trip::Stall { .. } => holding = true,
                            Trip::Cut { .. } => {
                                answers.abort();
                                return;
                            }
                            // HTTP/1.1 answers in turn: what passed so far
                            // answered the requests before this one.
                            Trip::CutAnswer { answer } => budget.store(
                                answered.load(std::sync::atomic::Ordering::SeqCst) + answer,
                                std::sync::atomic::Ordering::SeqCst,
                            ),
                        }
                    }
                }
            });
        }
    });
    (address, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_or_a_download_cut_off_halfway_goes_on_from_where_it_stopped() {
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(broker_dir.path(), "127.0.0.1:0");
    let client = admin(&broker);
    ready(&client).await;
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("big.blend");
    // 8 MiB that compress to nothing smaller and repeat nowhere.
    let mut bytes = Vec::with_capacity(8 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while bytes.len() < 8 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&path, &bytes).unwrap();
    let sha256 = renderfarm_client::sha256_file(&path).await.unwrap();

    let tripped = Arc::new(tokio::sync::Notify::new());
    let (address, sent) = relay(
        &broker.address,
        b"PUT /files/",
        Trip::Cut { body: 3 << 20 },
        tripped.clone(),
    )
    .await;
    let through_relay = BrokerClient::new(&address)
        .unwrap()
        .with_token(Some(ADMIN_TOKEN.into()));
    let seen_offsets = std::sync::Mutex::new(Vec::new());
    let progress = |done: u64, total: u64| {
        assert_eq!(total, bytes.len() as u64);
        seen_offsets.lock().unwrap().push(done);
    };
    let info = through_relay
        .upload_file(&path, &sha256, &progress)
        .await
        .expect("the upload resumes and completes");
    assert_eq!(info.sha256, sha256);
    assert_eq!(info.bytes, bytes.len() as u64);
    assert_eq!(
        seen_offsets.lock().unwrap().last(),
        Some(&(bytes.len() as u64)),
        "the progress ends at the whole"
    );
    assert_eq!(
        client.file_status(&sha256).await.unwrap(),
        FileStatus::Stored {
            bytes: bytes.len() as u64
        }
    );

    // The second request sent only the rest: it named where it started.
    let sent = String::from_utf8_lossy(&sent.lock().unwrap()).to_ascii_lowercase();
    let resumed_at: u64 = sent
        .split("content-range: bytes ")
        .nth(1)
        .and_then(|rest| rest.split('-').next())
        .and_then(|start| start.trim().parse().ok())
        .unwrap_or_else(|| panic!("no resumed request went through"));
    assert!(
        resumed_at > 0 && resumed_at <= 3 << 20,
        "resumed at {resumed_at}"
    );

    // Downloaded back through a relay that cuts the answer after 2 MiB:
    // the download goes on from there (Range), is verified, then renamed.
    let cut = Arc::new(tokio::sync::Notify::new());
    let (address, sent) = relay(
        &broker.address,
        b"GET /files/",
        Trip::CutAnswer { answer: 2 << 20 },
        cut.clone(),
    )
    .await;
    let through_relay = BrokerClient::new(&address)
        .unwrap()
        .with_token(Some(ADMIN_TOKEN.into()));
    let dest = scratch.path().join("back.blend");
    let size = through_relay
        .download_file(&sha256, &dest, &|_, _| {})
        .await
        .expect("the download goes on after the cut and completes");
    let sent = String::from_utf8_lossy(&sent.lock().unwrap()).to_ascii_lowercase();
    assert!(sent.contains("range: bytes="), "a resumed request: {sent}");
    assert_eq!(size, bytes.len() as u64);
    assert!(std::fs::read(&dest).unwrap() == bytes);
    assert!(!renderfarm_client::partial_path(&dest).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_in_the_middle_of_a_frame_upload_has_its_chunk_redone_and_every_frame_stored_once(
) {
    let test = "an_agent_killed_in_the_middle_of_a_frame_upload_has_its_chunk_redone_and_every_frame_stored_once";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let frames = 3;
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with(
        broker_dir.path(),
        "127.0.0.1:0",
        &["--tick", "1s", "--worker-timeout", "3s"],
    );
    let client = admin(&broker);
    ready(&client).await;
    let artist = tempfile::tempdir().unwrap();
    let blend = textured_scene(&blender, artist.path(), frames);
    let reference = tempfile::tempdir().unwrap();
    render_directly(&blender, &blend, reference.path(), frames);
    let (id, _, _) = submit_upload(&broker.address, &blend, frames, frames);
    let sha256 = client.render(id).await.unwrap().blend_sha256.unwrap();
    drop(artist);

    let stalled = Arc::new(tokio::sync::Notify::new());
    let (relay, _) = relay(
        &broker.address,
        FIRST_FRAME_UPLOAD,
        Trip::Stall { body: 16 },
        stalled.clone(),
    )
    .await;
    let doomed_dir = tempfile::tempdir().unwrap();
    let child = ChildAgent {
        broker: relay,
        work_dir: doomed_dir.path().to_path_buf(),
        blender: blender.clone(),
    };
    let mut doomed = Command::new(std::env::current_exe().unwrap())
        .args(["child_agent_process", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_AGENT, serde_json::to_string(&child).unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::timeout(RENDER_LIMIT, stalled.notified())
        .await
        .expect("the agent starts uploading a frame");
    doomed.kill().expect("SIGKILL");
    doomed.wait().unwrap();
    // Its Blender has a process group of its own and outlives it: end it
    // too, as the machine's reboot would.
    let cached = doomed_dir
        .path()
        .join("cache")
        .join(format!("{sha256}.blend"));
    for pid in blender_pids(&cached) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = writeln!(std::io::stderr(), "{test}: agent killed mid-upload");

    // The cut upload left nothing visible.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.frames(id).await.unwrap().frames,
        vec![],
        "nothing stored from a cut upload"
    );

    let rescuer = TestAgent::start(&broker.address, "rescuer", &blender).await;
    let done = wait_until_finished(&client, id).await;
    assert_eq!(done.status, RenderStatus::Completed, "{done:?}");
    let summary = rescuer.stop().await;
    assert_eq!(
        summary.completed, 1,
        "the rescuer redid the chunk: {summary:?}"
    );

    assert_every_frame_stored_once(&client, id, frames).await;
    let downloads = tempfile::tempdir().unwrap();
    download(&broker.address, id, downloads.path());
    assert_same_pixels(downloads.path(), reference.path(), frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_store_fails_the_task_with_the_brokers_message_and_stores_no_frame() {
    let test = "a_full_store_fails_the_task_with_the_brokers_message_and_stores_no_frame";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let broker_dir = tempfile::tempdir().unwrap();
    let artist = tempfile::tempdir().unwrap();
    let blend = textured_scene(&blender, artist.path(), 2);
    let (uploaded, sha256, bytes) = {
        let broker = BrokerProcess::start(broker_dir.path(), "127.0.0.1:0");
        let client = admin(&broker);
        ready(&client).await;
        let (id, _, _) = submit_upload(&broker.address, &blend, 2, 2);
        let sha256 = client.render(id).await.unwrap().blend_sha256.unwrap();
        let Ok(FileStatus::Stored { bytes }) = client.file_status(&sha256).await else {
            panic!("the blend is stored");
        };
        (id, sha256, bytes)
    };
    // The same broker again, with room for the blend and not one frame more.
    let quota = (bytes + 100).to_string();
    let broker = BrokerProcess::start_with(
        broker_dir.path(),
        "127.0.0.1:0",
        // Ticks every second: the failed task fails its render without a wait.
        &["--storage-quota", &quota, "--tick", "1s"],
    );
    let client = admin(&broker);
    ready(&client).await;
    // No retry: one failure fails the render (a retry waits its turn).
    client
        .change_render(uploaded, renderfarm_wire::RenderAction::Cancel)
        .await
        .unwrap();
    let spec = serde_json::from_value(serde_json::json!({
        "name": "full",
        "blend_sha256": sha256,
        "frame_start": 1,
        "frame_end": 2,
        "chunk_size": 2,
        "max_retries": 0,
    }))
    .unwrap();
    let id = client.submit(&spec).await.unwrap().id;
    let agent = TestAgent::start(&broker.address, "agent", &blender).await;
    let done = wait_until_finished(&client, id).await;
    assert_eq!(done.status, RenderStatus::Failed, "{done:?}");
    let summary = agent.stop().await;
    assert!(summary.failed >= 1 && summary.completed == 0, "{summary:?}");
    let tasks = client.tasks(id, &Default::default()).await.unwrap().items;
    let detail = client.task(tasks[0].id).await.unwrap();
    let reasons = serde_json::to_string(&detail).unwrap();
    assert!(
        reasons.contains("no room") && reasons.contains("--storage-quota"),
        "the broker's message is the reason: {reasons}"
    );
    assert_eq!(client.frames(id).await.unwrap().frames, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_whose_lease_goes_stale_during_a_frame_upload_is_dropped_then_redone_with_every_frame_once(
) {
    let test = "a_chunk_whose_lease_goes_stale_during_a_frame_upload_is_dropped_then_redone_with_every_frame_once";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let frames = 2;
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(broker_dir.path(), "127.0.0.1:0");
    let client = admin(&broker);
    ready(&client).await;
    let artist = tempfile::tempdir().unwrap();
    let blend = textured_scene(&blender, artist.path(), frames);
    let (id, _, _) = submit_upload(&broker.address, &blend, frames, frames);

    let stalled = Arc::new(tokio::sync::Notify::new());
    let (relay, _) = relay(
        &broker.address,
        FIRST_FRAME_UPLOAD,
        Trip::Stall { body: 16 },
        stalled.clone(),
    )
    .await;
    let agent = TestAgent::start(&relay, "agent", &blender).await;
    tokio::time::timeout(RENDER_LIMIT, stalled.notified())
        .await
        .expect("the agent starts uploading a frame");
    // An operator takes the chunk back while its first frame is on the way:
    // the lease the upload is under is stale from now on.
    let task = client.tasks(id, &Default::default()).await.unwrap().items[0].id;
    client.requeue_task(task).await.unwrap();

    // The agent drops the chunk (nothing more under the old lease), takes it
    // again under a new one and stores every frame once.
    let done = wait_until_finished(&client, id).await;
    assert_eq!(done.status, RenderStatus::Completed, "{done:?}");
    let summary = agent.stop().await;
    assert_eq!((summary.aborted, summary.completed), (1, 1), "{summary:?}");
    assert_eq!(summary.blends_downloaded, 1, "the cache served the redo");
    assert_every_frame_stored_once(&client, id, frames).await;
}
