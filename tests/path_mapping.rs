//! Path mapping (issue 16, point 6) with a real agent and real Blender: a
//! render submitted with Windows paths renders on a Linux agent through a
//! path variable, the image its .blend names by a Windows path included
//! (the agent's remap in Blender's Python before rendering).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    admin_client, blender_or_skip, png_pixels, run_renderfarm, task_log, tasks_of, wait_for,
    TestAgent, TestBroker, ADMIN_TOKEN,
};
use renderfarm_client::BrokerClient;
use renderfarm_wire::{RenderSpec, RenderStatus};
use renderfarm_worker::blender::RenderJob;

const RENDER_LIMIT: Duration = Duration::from_secs(240);

/// The Windows path the scene names its texture by.
const TEXTURE_ON_WINDOWS: &str = "P:\\projects\\tex\\green.png";

/// Makes, with Blender's own Python, a flat green PNG at `png` and a scene
/// at `blend` whose camera sees only a plane with an emission shader
/// showing that image, named by [`TEXTURE_ON_WINDOWS`] as an artist on
/// Windows would have saved it. Cycles on the CPU, no denoising (Debian's
/// Blender has no OpenImageDenoise), the Standard view so green stays green.
async fn windows_scene(blender: &Path, blend: &Path, png: &Path) {
    let script = format!(
        r#"
import bpy
png, blend, windows_path = {png:?}, {blend:?}, {windows:?}
image = bpy.data.images.new("green", 8, 8)
image.pixels = [0.0, 1.0, 0.0, 1.0] * 64
image.filepath_raw = png
image.file_format = "PNG"
image.save()
bpy.data.images.remove(image)
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples = 1
scene.cycles.use_denoising = False
scene.render.resolution_x = 16
scene.render.resolution_y = 16
scene.render.resolution_percentage = 100
scene.view_settings.view_transform = "Standard"
scene.render.dither_intensity = 0.0
scene.render.image_settings.file_format = "PNG"
scene.render.image_settings.color_mode = "RGB"
scene.frame_start = 1
scene.frame_end = 1
mesh = bpy.data.meshes.new("plane")
mesh.from_pydata([(-5, -5, 0), (5, -5, 0), (5, 5, 0), (-5, 5, 0)], [], [(0, 1, 2, 3)])
mesh.uv_layers.new(name="UVMap")
plane = bpy.data.objects.new("plane", mesh)
scene.collection.objects.link(plane)
material = bpy.data.materials.new("green")
material.use_nodes = True
nodes, links = material.node_tree.nodes, material.node_tree.links
nodes.clear()
texture = nodes.new("ShaderNodeTexImage")
texture.interpolation = "Closest"
texture.image = bpy.data.images.load(png)
texture.image.filepath = windows_path
emission = nodes.new("ShaderNodeEmission")
out = nodes.new("ShaderNodeOutputMaterial")
links.new(texture.outputs["Color"], emission.inputs["Color"])
links.new(emission.outputs["Emission"], out.inputs["Surface"])
mesh.materials.append(material)
camera_data = bpy.data.cameras.new("camera")
camera_data.type = "ORTHO"
camera_data.ortho_scale = 2.0
camera = bpy.data.objects.new("camera", camera_data)
camera.location = (0, 0, 5)
scene.collection.objects.link(camera)
scene.camera = camera
bpy.ops.wm.save_as_mainfile(filepath=blend, relative_remap=False)
"#,
        png = png.display().to_string(),
        blend = blend.display().to_string(),
        windows = TEXTURE_ON_WINDOWS,
    );
    let output = tokio::process::Command::new(blender)
        .args(["-b", "--factory-startup", "--python-expr", &script])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("Blender runs");
    assert!(
        output.status.success() && blend.is_file() && png.is_file(),
        "Blender could not make the scene: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Asserts that every pixel of a PNG frame is `want` (within a few levels:
/// Blender dithers its 8-bit output by default).
fn assert_every_pixel(frame: &Path, want: [u8; 3], why: &str) {
    let (_, _, colour, _, pixels) = png_pixels(frame);
    let step = match colour {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("{}: unexpected colour type {other:?}", frame.display()),
    };
    for pixel in pixels.chunks(step) {
        let near = pixel[..3]
            .iter()
            .zip(want)
            .all(|(got, want)| got.abs_diff(want) <= 4);
        assert!(
            near,
            "{}: a pixel {:?}, not {want:?}: {why}",
            frame.display(),
            &pixel[..3]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_render_submitted_with_a_windows_path_renders_on_the_linux_agent_through_a_mapping() {
    let test =
        "a_render_submitted_with_a_windows_path_renders_on_the_linux_agent_through_a_mapping";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let files = tempfile::tempdir().unwrap();
    let projects = files.path().join("projects");
    let blend = projects.join("shot.blend");
    let png = projects.join("tex").join("green.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    windows_scene(&blender, &blend, &png).await;

    // The control: Blender alone cannot find P:\ on Linux and renders the
    // missing texture magenta.
    let control = files.path().join("control");
    let job = RenderJob {
        blend_file: blend.display().to_string(),
        output: format!("{}/frame_####", control.display()),
        engine: None,
        from: 1,
        to: 1,
        path_mappings: Vec::new(),
    };
    let status = tokio::process::Command::new(&blender)
        .args(job.args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    assert_every_pixel(
        &control.join("frame_0001.png"),
        [255, 0, 255],
        "without the mapping the texture is missing",
    );

    let broker = TestBroker::start().await;
    let (ok, out, err) = run_renderfarm(
        &broker.address,
        &[
            "variables",
            "set",
            "projects",
            "--linux",
            &projects.display().to_string(),
            "--windows",
            "P:\\projects",
            "--token",
            ADMIN_TOKEN,
        ],
    );
    assert!(ok, "variables set: {out}{err}");
    let (ok, out, err) = run_renderfarm(&broker.address, &["variables", "--token", ADMIN_TOKEN]);
    assert!(ok && out.contains("P:\\projects"), "variables: {out}{err}");

    let client = BrokerClient::new(&broker.address)
        .unwrap()
        .with_token(Some(ADMIN_TOKEN.into()));
    let spec: RenderSpec = serde_json::from_value(serde_json::json!({
        "name": "from windows",
        "blend_file": "P:\\projects\\shot.blend",
        "output": "P:\\projects\\out\\frame_####",
        "frame_start": 1,
        "frame_end": 1,
    }))
    .unwrap();
    let render = client.submit(&spec).await.expect("submitted");
    assert_eq!(render.blend_file, "{projects}/shot.blend");
    assert_eq!(render.output, "{projects}/out/frame_####");

    let agent = TestAgent::start(&broker.address, "linux-node", &blender).await;
    let done = wait_for("the render to finish", RENDER_LIMIT, || async {
        let r = client.render(render.id).await.ok()?;
        r.status.is_finished().then_some(r)
    })
    .await;
    let admin = admin_client();
    let tasks = tasks_of(&broker.address, &admin, &render.id.to_string()).await;
    let log = task_log(&admin, &broker.address, tasks[0]["id"].as_str().unwrap()).await;
    assert_eq!(done.status, RenderStatus::Completed, "task log:\n{log}");
    // Blender keeps the path with either separator (3.4 on Linux writes
    // P:/projects/...); the remap takes both.
    let remapped = format!("-> {}", png.display());
    assert!(
        log.lines()
            .any(|l| l.contains("path mapping: image 'green.png': P:")
                && l.to_lowercase().contains("projects")
                && l.ends_with(&remapped)),
        "the log says what was remapped:\n{log}"
    );
    let frame = projects.join("out").join("frame_0001.png");
    assert_every_pixel(
        &frame,
        [0, 255, 0],
        "the texture was found through the mapping",
    );
    let workers = client.workers().await.unwrap();
    assert_eq!(workers[0].platform, renderfarm_wire::Platform::Linux);
    agent.stop().await;
}

/// The agent's remap, run in Blender's own Python on a table of paths as
/// files saved on each platform hold them: drive letters with either
/// separator and in any case, UNC shares, macOS folders in any case, Linux
/// ones exactly, a folder boundary, Blender-relative paths left alone.
#[tokio::test]
async fn the_in_blend_remap_rewrites_other_platforms_prefixes_as_the_broker_does() {
    let Some(blender) =
        blender_or_skip("the_in_blend_remap_rewrites_other_platforms_prefixes_as_the_broker_does")
            .await
    else {
        return;
    };
    let vars = [
        renderfarm_wire::PathVariable {
            name: "projects".into(),
            linux: Some("/mnt/projects".into()),
            windows: Some("P:\\projects".into()),
            macos: Some("/Volumes/Projects".into()),
        },
        renderfarm_wire::PathVariable {
            name: "shots".into(),
            linux: Some("/mnt/projects/shots".into()),
            windows: Some("\\\\nas\\shots".into()),
            macos: None,
        },
    ];
    let on_linux = renderfarm::domain::mappings_for(renderfarm_wire::Platform::Linux, &vars);
    let on_windows = renderfarm::domain::mappings_for(renderfarm_wire::Platform::Windows, &vars);
    let table = serde_json::json!([
        [
            &on_linux,
            "P:\\projects\\tex\\a.png",
            "/mnt/projects/tex/a.png"
        ],
        [
            &on_linux,
            "p:/Projects/tex/a.png",
            "/mnt/projects/tex/a.png"
        ],
        [&on_linux, "P:\\projects", "/mnt/projects"],
        [
            &on_linux,
            "\\\\NAS\\shots\\s1\\a.png",
            "/mnt/projects/shots/s1/a.png"
        ],
        [&on_linux, "/volumes/projects/a.png", "/mnt/projects/a.png"],
        [&on_linux, "P:\\projects2\\a.png", null],
        [&on_linux, "Q:\\projects\\a.png", null],
        [&on_linux, "//tex/a.png", null],
        [&on_linux, "/mnt/projects/a.png", null],
        [
            &on_windows,
            "/mnt/projects/shots/s1/a.png",
            "\\\\nas\\shots\\s1\\a.png"
        ],
        [
            &on_windows,
            "/mnt/projects/tex/a.png",
            "P:\\projects\\tex\\a.png"
        ],
        [&on_windows, "/mnt/Projects/tex/a.png", null],
        [
            &on_windows,
            "/Volumes/PROJECTS/a.png",
            "P:\\projects\\a.png"
        ],
    ]);
    let script = format!(
        "{}\nimport json\nfailures = []\nfor mappings, path, want in json.loads({}):\n    got = remap_path(path, mappings)\n    if got != want:\n        failures.append((path, got, want))\nassert not failures, failures\nprint('remap table ok')\n",
        renderfarm_worker::blender::PATH_REMAP,
        serde_json::to_string(&table.to_string()).unwrap()
    );
    let output = tokio::process::Command::new(&blender)
        .args([
            "-b",
            "--factory-startup",
            "--python-exit-code",
            "1",
            "--python-expr",
            &script,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("Blender runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("remap table ok"),
        "{text}"
    );
}

/// An agent kept its identity from before path mapping (no platform in
/// it): the broker would count it as Linux whatever it runs on, so it
/// registers anew, announcing its platform; restarted with that identity,
/// it is the same worker again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_whose_kept_identity_has_no_platform_registers_anew_with_its_own() {
    let Some(blender) =
        blender_or_skip("an_agent_whose_kept_identity_has_no_platform_registers_anew_with_its_own")
            .await
    else {
        return;
    };
    let broker = TestBroker::start().await;
    let client = BrokerClient::new(&broker.address)
        .unwrap()
        .with_token(Some(ADMIN_TOKEN.into()));
    let work = tempfile::tempdir().unwrap();
    let identity_file = work.path().join("identity.json");
    let start = || {
        let dir = work.path().to_path_buf();
        TestAgent::start_with(&broker.address, "node", &blender, move |c| c.work_dir = dir)
    };
    let workers_now = |n: usize| {
        let client = client.clone();
        async move {
            wait_for(&format!("{n} registered workers"), RENDER_LIMIT, || async {
                let workers = client.workers().await.ok()?;
                (workers.len() == n).then_some(workers)
            })
            .await
        }
    };
    start().await.stop().await;
    let first = workers_now(1).await;
    let mut identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&identity_file).unwrap()).unwrap();
    assert_eq!(identity["platform"], "linux");
    identity.as_object_mut().unwrap().remove("platform");
    std::fs::write(&identity_file, identity.to_string()).unwrap();

    start().await.stop().await;
    let second = workers_now(2).await;
    assert_eq!(second[1].platform, renderfarm_wire::Platform::Linux);
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&identity_file).unwrap()).unwrap();
    assert_eq!(kept["worker_id"], second[1].id.to_string());
    assert_ne!(second[1].id, first[0].id);

    let again = start().await;
    let id = second[1].id;
    wait_for("the kept worker to ask for work", RENDER_LIMIT, || async {
        let w = client.worker(id).await.ok()?;
        (w.last_heartbeat > second[1].last_heartbeat).then_some(())
    })
    .await;
    again.stop().await;
    assert_eq!(
        client.workers().await.unwrap().len(),
        2,
        "the same worker again"
    );
}
