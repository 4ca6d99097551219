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

/// The RGB of every pixel of a PNG frame, which must all be the same.
fn flat_colour(frame: &Path) -> [u8; 3] {
    let (_, _, colour, _, pixels) = png_pixels(frame);
    let step = match colour {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("{}: unexpected colour type {other:?}", frame.display()),
    };
    let first: [u8; 3] = pixels[..3].try_into().unwrap();
    for pixel in pixels.chunks(step) {
        assert_eq!(&pixel[..3], &first, "{} is not flat", frame.display());
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_render_submitted_with_a_windows_path_renders_on_the_linux_agent_through_a_mapping() {
    let test = "a_render_submitted_with_a_windows_path_renders_on_the_linux_agent_through_a_mapping";
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
    assert_eq!(
        flat_colour(&control.join("frame_0001.png")),
        [255, 0, 255],
        "without the mapping the texture is missing"
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
    assert!(
        log.contains(&format!(
            "path mapping: image 'green.png': {TEXTURE_ON_WINDOWS} -> {}",
            png.display()
        )),
        "the log says what was remapped:\n{log}"
    );
    let frame = projects.join("out").join("frame_0001.png");
    assert_eq!(
        flat_colour(&frame),
        [0, 255, 0],
        "the texture was found through the mapping"
    );
    let workers = client.workers().await.unwrap();
    assert_eq!(workers[0].platform, renderfarm_wire::Platform::Linux);
    agent.stop().await;
}
