//! The Blender add-on (`blender/renderfarm_addon`, zipped by `renderfarm
//! addon`) in Blender's real interface: Blender runs with its windows on an
//! Xvfb display (not `-b`), so the submit operator's modal timer and its
//! thread really run. `tests/addon/gui.py` drives it and reads back what
//! Blender showed (the Info editor's reports); a real broker on port 0 and
//! real agents take the render. Screenshots of the panel land in
//! `<target dir>/artifacts/addon-*.png`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::authority::{tls_broker, Authority};
use common::{
    admin_client, artifacts_dir, blender_or_skip, get_json, renderfarm_command, wait_for,
    TestAgent, TestBroker, ADMIN_TOKEN,
};
use renderfarm_worker::blender::scene::{make_scene, SceneSpec};
use serde_json::{json, Value};

const GUI_SCRIPT: &str = include_str!("addon/gui.py");
const UPLOAD_SCRIPT: &str = include_str!("addon/upload.py");
/// How long one Blender session of a test may last, start to quit.
const GUI_LIMIT: Duration = Duration::from_secs(300);
const RENDER_LIMIT: Duration = Duration::from_secs(240);
/// The camera's unsaved move: far enough that every frame shows it.
const CAMERA_OFFSET: [f64; 3] = [2.5, 0.0, 0.0];

/// The Blender interface is heavy on a small machine: one at a time.
static GUI: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An X server of its own for one test, on a display no one else uses.
struct Xvfb {
    child: Child,
    display: String,
}

/// How long Xvfb may take to open its display.
const XVFB_START_LIMIT: Duration = Duration::from_secs(90);

impl Xvfb {
    fn start() -> Result<Xvfb, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let binary = std::env::var("RENDERFARM_XVFB").unwrap_or_else(|_| "Xvfb".into());
        // Spread over the displays so that parallel test processes rarely
        // try the same one; a taken one makes Xvfb exit, and the next is tried.
        let first = 100 + (std::process::id() % 400) + NEXT.fetch_add(7, Ordering::Relaxed);
        for n in first..first + 40 {
            let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
            if socket.exists() || Path::new(&format!("/tmp/.X{n}-lock")).exists() {
                continue;
            }
            let mut child = Command::new(&binary)
                .arg(format!(":{n}"))
                .args(["-screen", "0", "1280x1024x24", "-nolisten", "tcp"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run {binary}: {e}"))?;
            // Xvfb compiles its keymap with xkbcomp as it starts, which took
            // over 15 s once in CI while the other tests' Blenders held both
            // cores.
            let deadline = Instant::now() + XVFB_START_LIMIT;
            loop {
                if socket.exists() {
                    return Ok(Xvfb {
                        child,
                        display: format!(":{n}"),
                    });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{binary} :{n} did not start within {} s",
                        XVFB_START_LIMIT.as_secs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(format!("no free X display from :{first} on"))
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An X display for Blender's interface, or `None` after a visible SKIPPED
/// line. With `RENDERFARM_REQUIRE_XVFB=1` (CI), a missing Xvfb fails the test.
fn xvfb_or_skip(test: &str) -> Option<Xvfb> {
    match Xvfb::start() {
        Ok(xvfb) => Some(xvfb),
        Err(problem) => {
            if std::env::var("RENDERFARM_REQUIRE_XVFB").as_deref() == Ok("1") {
                panic!("{test}: Xvfb is required (RENDERFARM_REQUIRE_XVFB=1) but: {problem}");
            }
            // Past the harness's capture, so the skip shows in every run.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test}: no Xvfb ({problem}); install it with `apt-get install xvfb`"
            );
            None
        }
    }
}

/// A token with the artist role for `name`: what an artist pastes into the
/// add-on's preferences.
async fn artist_token(broker: &str, name: &str) -> String {
    let answer = admin_client()
        .post(format!("{broker}/tokens"))
        .json(&json!({"name": name, "role": "artist"}))
        .send()
        .await
        .expect("POST /tokens");
    assert!(answer.status().is_success(), "{}", answer.status());
    let token: Value = answer.json().await.expect("JSON");
    token["secret"].as_str().expect("a secret").to_string()
}

/// `renderfarm addon --out DIR/renderfarm.zip`: the zip an artist installs.
fn addon_zip(dir: &Path) -> PathBuf {
    let zip = dir.join("renderfarm.zip");
    let output = renderfarm_command()
        .args(["addon", "--out"])
        .arg(&zip)
        .output()
        .expect("renderfarm runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("Install"),
        "renderfarm addon failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    zip
}

/// Runs Blender's interface on `blend` with gui.py and `config`; what the
/// script saw. Blender's own settings and session files stay in `dir`.
async fn run_gui(
    blender: &Path,
    xvfb: &Xvfb,
    blend: &Path,
    mut config: Value,
    dir: &Path,
) -> Value {
    let _one_at_a_time = GUI.lock().await;
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("gui.py");
    std::fs::write(&script, GUI_SCRIPT).unwrap();
    let result = dir.join("result.json");
    config["zip"] = json!(addon_zip(dir));
    config["result"] = json!(result);
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    for sub in ["config", "scripts", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let log = dir.join("blender.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = tokio::process::Command::new(blender)
        .arg("--factory-startup")
        .arg(blend)
        .arg("--python")
        .arg(&script)
        .arg("--")
        .arg(&config_path)
        .env("DISPLAY", &xvfb.display)
        .env("BLENDER_USER_CONFIG", dir.join("config"))
        .env("BLENDER_USER_SCRIPTS", dir.join("scripts"))
        .env("TMPDIR", dir.join("tmp"))
        .env("TMP", dir.join("tmp"))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("Blender starts");
    let ended = tokio::time::timeout(GUI_LIMIT, child.wait()).await;
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    let Ok(status) = ended else {
        let _ = child.kill().await;
        panic!(
            "Blender's interface did not quit within {GUI_LIMIT:?}: {}",
            said()
        );
    };
    let status = status.expect("Blender ran");
    let result: Value = std::fs::read(&result)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| panic!("gui.py wrote no result (Blender {status}): {}", said()));
    assert!(
        result["error"].is_null(),
        "gui.py failed: {}\n{}",
        result["error"].as_str().unwrap_or_default(),
        said()
    );
    result
}

/// A screenshot Blender took: a PNG of a real window, not a blank one.
fn assert_screenshot(path: &Path) {
    let (width, height, pixels) = rgb(path);
    assert!(
        width >= 400 && height >= 300,
        "{}: {width}×{height}",
        path.display()
    );
    let distinct: std::collections::HashSet<&[u8]> = pixels.chunks(3).collect();
    assert!(
        distinct.len() > 50,
        "{} shows {} colours: a blank window?",
        path.display(),
        distinct.len()
    );
}

/// A PNG's size and its pixels as 8-bit RGB, whatever its colour type.
fn rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buffer = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buffer).expect("a frame");
    buffer.truncate(info.buffer_size());
    let channels = info.color_type.samples();
    let rgb = buffer
        .chunks(channels)
        .flat_map(|p| match channels {
            1 | 2 => [p[0], p[0], p[0]],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    (info.width, info.height, rgb)
}

/// The mean difference of two same-sized frames, 0 to 255 per channel.
fn mean_difference(a: &Path, b: &Path) -> f64 {
    let (wa, ha, pa) = rgb(a);
    let (wb, hb, pb) = rgb(b);
    assert_eq!((wa, ha), (wb, hb), "{} and {}", a.display(), b.display());
    let total: u64 = pa
        .iter()
        .zip(&pb)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    total as f64 / pa.len() as f64
}

/// The PNG of `frame` in `dir`, whatever the pattern that named it.
fn frame_file(dir: &Path, frame: i64) -> PathBuf {
    let suffix = format!("{frame:04}.png");
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&suffix))
        .unwrap_or_else(|| panic!("no frame {frame} in {}", dir.display()))
}

/// Runs Blender in the background on `blend` with a Python expression.
fn blender_expr(blender: &Path, blend: &Path, expr: &str) {
    let output = Command::new(blender)
        .args(["-b", "--factory-startup"])
        .arg(blend)
        .args(["--python-exit-code", "1", "--python-expr", expr])
        .stdin(Stdio::null())
        .output()
        .expect("Blender runs");
    assert!(
        output.status.success(),
        "Blender's Python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Frames `from..=to` of `blend` rendered by Blender itself into `out`.
fn render_directly(blender: &Path, blend: &Path, out: &Path, from: i64, to: i64) {
    let output = Command::new(blender)
        .arg("-b")
        .arg(blend)
        .arg("-o")
        .arg(out.join("frame_####"))
        .args([
            "-s",
            &from.to_string(),
            "-e",
            &to.to_string(),
            "-t",
            "0",
            "-a",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("Blender runs");
    assert!(output.status.success(), "the reference render failed");
}

#[test]
fn the_addon_zip_is_one_folder_with_bl_info_and_a_manifest_that_agree() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let zip = std::fs::read(addon_zip(dir.path())).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut names: Vec<String> = archive.file_names().map(str::to_string).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "renderfarm_addon/__init__.py",
            "renderfarm_addon/blender_manifest.toml",
            "renderfarm_addon/broker.py",
            "renderfarm_addon/jobs.py",
            "renderfarm_addon/pack.py",
        ]
    );
    let mut read = |name: &str| {
        let mut text = String::new();
        archive
            .by_name(&format!("renderfarm_addon/{name}"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    };
    let manifest: toml_lite::Table = toml_lite::parse(&read("blender_manifest.toml"));
    let init = read("__init__.py");
    assert_eq!(manifest["schema_version"], "1.0.0");
    assert_eq!(manifest["type"], "add-on");
    assert_eq!(manifest["id"], "renderfarm_addon", "the folder's name");
    let version = manifest["version"].replace('.', ", ");
    assert!(
        init.contains(&format!("\"version\": ({version}),")),
        "bl_info's version is the manifest's ({version})"
    );
    assert!(init.contains("\"blender\": (3, 4, 0)"));
    assert!(
        manifest["tagline"].len() <= 64 && !manifest["tagline"].ends_with('.'),
        "Blender refuses a tagline past 64 characters or ending in a full stop"
    );
    assert_eq!(
        read("pack.py"),
        include_str!("../blender/renderfarm_addon/pack.py"),
        "the CLI and the add-on pack with the same script"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_addons_upload_resumes_where_the_broker_stopped_and_skips_a_file_it_holds() {
    let test = "the_addons_upload_resumes_where_the_broker_stopped_and_skips_a_file_it_holds";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let broker = TestBroker::start().await;
    let token = artist_token(&broker.address, "carol").await;
    let dir = tempfile::tempdir().unwrap();
    let zip = addon_zip(dir.path());
    let script = dir.path().join("upload.py");
    std::fs::write(&script, UPLOAD_SCRIPT).unwrap();
    let output = tokio::process::Command::new(&blender)
        .args([
            "-b",
            "--factory-startup",
            "--python-exit-code",
            "1",
            "--python",
        ])
        .arg(&script)
        .arg("--")
        .arg(&zip)
        .args([&broker.address, &token])
        .arg(dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("Blender runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| {
            panic!(
                "upload.py printed no result: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert_eq!(result["cut_status"], 202, "the broker kept the cut part");
    assert_eq!(result["sent"], true);
    let first = result["first_progress"].as_u64().unwrap();
    assert!(
        (1_000_000..1_100_000).contains(&first),
        "it went on from the broker's offset, not from 0: {result}"
    );
    assert_eq!(result["last_progress"], 3_000_000);
    assert_eq!(
        result["again"], false,
        "a file the broker holds is not sent again"
    );
    let sha256 = result["sha256"].as_str().unwrap();
    let held = broker
        .client
        .head(format!("{}/files/{sha256}", broker.address))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    assert_eq!(
        held.headers()["content-length"].to_str().unwrap(),
        "3000000"
    );
}

/// Just enough TOML for the manifest's top-level `key = "string"` lines.
mod toml_lite {
    pub type Table = std::collections::HashMap<String, String>;

    pub fn parse(text: &str) -> Table {
        text.lines()
            .take_while(|l| !l.starts_with('['))
            .filter_map(|l| l.split_once(" = "))
            .filter_map(|(k, v)| {
                Some((
                    k.trim().to_string(),
                    v.trim().strip_prefix('"')?.strip_suffix('"')?.to_string(),
                ))
            })
            .collect()
    }
}

/// What both Blender tests start from: Blender, a display, a live broker,
/// an artist's token and a generated scene saved in `files`.
struct Session {
    blender: PathBuf,
    xvfb: Xvfb,
    _broker: TestBroker,
    broker: String,
    token: String,
    files: tempfile::TempDir,
    blend: PathBuf,
    /// The scene's bytes as saved, before Blender's interface opens it.
    on_disk: Vec<u8>,
}

/// The session of `test` for `artist`, or `None` after a SKIPPED line.
async fn session(test: &str, artist: &str) -> Option<Session> {
    let blender = blender_or_skip(test).await?;
    let xvfb = xvfb_or_skip(test)?;
    let test_broker = TestBroker::start().await;
    let broker = test_broker.address.clone();
    let token = artist_token(&broker, artist).await;
    let files = tempfile::tempdir().unwrap();
    let blend = files.path().join("shot.blend");
    make_scene(&blender, &blend, SceneSpec::tiny(4))
        .await
        .expect("Blender makes the scene");
    let on_disk = std::fs::read(&blend).unwrap();
    Some(Session {
        blender,
        xvfb,
        _broker: test_broker,
        broker,
        token,
        files,
        blend,
        on_disk,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_artist_submits_the_unsaved_scene_from_blenders_interface_and_agents_render_it() {
    let test = "an_artist_submits_the_unsaved_scene_from_blenders_interface_and_agents_render_it";
    let Some(session) = session(test, "alice").await else {
        return;
    };
    let Session {
        blender,
        xvfb,
        _broker,
        broker,
        token,
        files,
        blend,
        on_disk,
    } = session;
    let agents = [
        TestAgent::start(&broker, "agent-a", &blender).await,
        TestAgent::start(&broker, "agent-b", &blender).await,
    ];

    let output = files.path().join("frames").join("shot_####");
    let screenshot = artifacts_dir().join("addon-panel.png");
    let _ = std::fs::remove_file(&screenshot);
    let gui = files.path().join("gui");
    let result = run_gui(
        &blender,
        &xvfb,
        &blend,
        json!({
            "mode": "UPLOAD",
            "scene": {"frame_start": 2, "frame_end": 4},
            "output": output,
            "camera_offset": CAMERA_OFFSET,
            "chunk_size": 2,
            "priority": "high",
            "attempts": [{
                "broker_url": broker,
                "token": token,
                "screenshot": screenshot,
                // Blender stays open until its list of recent renders shows
                // this one completed (seconds).
                "watch": RENDER_LIMIT.as_secs(),
            }],
        }),
        &gui,
    )
    .await;

    let attempt = &result["attempts"][0];
    let status = attempt["status"].as_str().unwrap();
    assert!(status.starts_with("Submitted render "), "{attempt}");
    let reports = attempt["reports"].as_str().unwrap();
    let id = status
        .split_whitespace()
        .nth(2)
        .expect("the render's id")
        .to_string();
    assert!(
        reports.contains(&format!("Submitted render {id}"))
            && reports.contains(&format!("{broker}/#/renders/{id}")),
        "the id and dashboard link are reported: {reports}"
    );
    assert_eq!(
        std::fs::read(&blend).unwrap(),
        on_disk,
        "the artist's .blend file on disk is untouched"
    );
    // Packing in another Blender, hashing and uploading took seconds, none
    // of them on the interface's thread.
    assert!(
        attempt["seconds"].as_f64().unwrap() > 1.0
            && attempt["longest_pause"].as_f64().unwrap() < 2.0,
        "Blender froze while it submitted: {attempt}"
    );
    assert_screenshot(&screenshot);

    let client = admin_client();
    let render = get_json(&client, format!("{broker}/renders/{id}")).await;
    assert_eq!(render["frame_start"], 2, "{render}");
    assert_eq!(render["frame_end"], 4, "{render}");
    assert_eq!(render["chunk_size"], 2, "{render}");
    assert_eq!(render["priority"], "high", "{render}");
    assert_eq!(render["output"], json!(output), "{render}");
    assert_eq!(render["owner"], "alice", "{render}");
    assert_eq!(render["blend_file"], "shot.blend", "{render}");
    assert!(render["blend_sha256"].is_string(), "uploaded: {render}");
    let watched = attempt["watched"].as_array().unwrap();
    assert_eq!(
        watched.last(),
        Some(&json!(["completed", 3])),
        "the panel's list followed the render to its end: {watched:?}"
    );
    let render = wait_for("the agents to render it", RENDER_LIMIT, || async {
        let render = get_json(&client, format!("{broker}/renders/{id}")).await;
        match render["status"].as_str() {
            Some("completed") => Some(render),
            Some("failed" | "canceled") => panic!("the render did not complete: {render}"),
            _ => None,
        }
    })
    .await;
    assert_eq!(render["progress"]["frames_done"], 3, "{render}");
    // The agents sent a preview of each chunk's last frame before completing
    // it, and the panel's list loaded the render's preview.
    let preview = client
        .get(format!("{broker}/renders/{id}/preview"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        preview.status(),
        reqwest::StatusCode::OK,
        "the broker serves a preview of {id}"
    );
    let previews = attempt["previews"].as_array().unwrap();
    assert!(
        previews
            .iter()
            .any(|k| k.as_str().unwrap().starts_with(&id)),
        "the broker serves a preview of {id}, the panel loaded {previews:?}"
    );
    for agent in agents {
        agent.stop().await;
    }

    let downloads = files.path().join("downloads");
    let done = renderfarm_command()
        .args(["download", &id])
        .arg(&downloads)
        .args(["--broker", &broker])
        .output()
        .expect("renderfarm runs");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );

    // What the frames should show: the scene with the camera moved (made
    // apart from the add-on), and what they must not: the file on disk.
    let moved = files.path().join("moved.blend");
    blender_expr(
        &blender,
        &blend,
        &format!(
            "import bpy; c = bpy.context.scene.camera; c.location.x += {}; c.location.y += {}; c.location.z += {}; bpy.ops.wm.save_as_mainfile(filepath={:?})",
            CAMERA_OFFSET[0],
            CAMERA_OFFSET[1],
            CAMERA_OFFSET[2],
            moved.display().to_string()
        ),
    );
    let (as_moved, as_saved) = (files.path().join("as-moved"), files.path().join("as-saved"));
    render_directly(&blender, &moved, &as_moved, 2, 4);
    render_directly(&blender, &blend, &as_saved, 2, 4);
    for frame in 2..=4 {
        let farm = frame_file(&downloads, frame);
        let to_moved = mean_difference(&farm, &frame_file(&as_moved, frame));
        let to_saved = mean_difference(&farm, &frame_file(&as_saved, frame));
        assert!(
            to_saved > 3.0 && to_moved * 4.0 < to_saved,
            "frame {frame} shows the unsaved camera move: {to_moved:.2} from the moved scene, {to_saved:.2} from the saved one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blender_reports_an_unreachable_broker_a_wrong_token_a_bad_range_and_a_movie_and_stays_responsive(
) {
    let test = "blender_reports_an_unreachable_broker_a_wrong_token_a_bad_range_and_a_movie_and_stays_responsive";
    let Some(session) = session(test, "bob").await else {
        return;
    };
    let Session {
        blender,
        xvfb,
        _broker,
        broker,
        token,
        files,
        blend,
        on_disk,
    } = session;
    // Nothing listens on a port just freed; a listener that never answers
    // holds a request until the add-on's timeout.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let closed_url = format!("http://127.0.0.1:{closed}");
    // What the broker itself says to a wrong token, to find in Blender.
    let refused = reqwest::Client::new()
        .get(format!("{broker}/renders?limit=1"))
        .bearer_auth("rf_not_a_token_anyone_was_given")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refused: Value = refused.json().await.unwrap();
    let refused = refused["message"].as_str().unwrap().to_string();

    // A broker whose certificate a private authority signed: refused until
    // the add-on is given that authority's certificate.
    let authority = Authority::new(files.path(), "studio");
    let tls = tls_broker(files.path(), &authority);

    let screenshot = artifacts_dir().join("addon-panel-error.png");
    let _ = std::fs::remove_file(&screenshot);
    let result = run_gui(
        &blender,
        &xvfb,
        &blend,
        json!({
            "mode": "SHARED",
            "attempts": [
                {"broker_url": closed_url, "token": token},
                {"broker_url": silent_url, "token": token, "timeout": 4.0},
                {"broker_url": broker, "token": "rf_not_a_token_anyone_was_given", "screenshot": screenshot},
                {"broker_url": broker, "token": token, "scene": {"frame_start": 0, "frame_end": 1_048_574}},
                {"broker_url": broker, "token": token, "movie": true},
                {"broker_url": tls.address, "token": ADMIN_TOKEN},
                // Then all is well: the copy goes beside the file, its
                // chunks sized by the farm.
                {"broker_url": broker, "token": token,
                 "renderfarm": {"chunk_mode": "AUTO", "target_chunk_seconds": 30}},
                {"broker_url": tls.address, "token": ADMIN_TOKEN, "ca_file": authority.ca},
            ],
        }),
        &files.path().join("gui"),
    )
    .await;
    drop(silent);
    let attempts = result["attempts"].as_array().unwrap();
    let reports: Vec<&str> = attempts
        .iter()
        .map(|a| a["reports"].as_str().unwrap())
        .collect();
    let (refusals, success) = attempts.split_at(6);
    for attempt in refusals {
        assert!(
            attempt["status"]
                .as_str()
                .unwrap()
                .starts_with("Not submitted: "),
            "{attempt}"
        );
    }
    assert!(
        reports[0].contains(&format!("cannot reach the broker at {closed_url}")),
        "{}",
        reports[0]
    );
    assert!(
        reports[1].contains(&format!(
            "the broker at {silent_url} did not answer within 4 s"
        )),
        "{}",
        reports[1]
    );
    // The interface went on while the add-on waited on a silent broker.
    let waited = &attempts[1];
    assert!(
        waited["seconds"].as_f64().unwrap() >= 4.0
            && waited["ticks"].as_u64().unwrap() >= 20
            && waited["longest_pause"].as_f64().unwrap() < 2.0,
        "Blender froze while it waited: {waited}"
    );
    assert!(
        reports[2].contains("with 401") && reports[2].contains(&refused),
        "the broker's own message: {}",
        reports[2]
    );
    assert!(
        reports[3].contains("with 400") && reports[3].contains("frame"),
        "{}",
        reports[3]
    );
    // Refused before anything starts: the operator's report comes back to
    // gui.py, its Python caller, as the exception Blender makes of it.
    assert_eq!(attempts[4]["returned"], json!(["CANCELLED"]));
    let raised = attempts[4]["raised"].as_str().unwrap_or_default();
    assert!(
        raised.contains("Render farm: the output format is a movie (FFMPEG)"),
        "{}",
        attempts[4]
    );
    assert!(
        reports[5].contains(&format!(
            "the broker at {} has a certificate this machine does not trust",
            tls.address
        )) && reports[5].contains("private CA file"),
        "{}",
        reports[5]
    );
    assert_screenshot(&screenshot);

    // Shared-drive mode submits the path of a copy saved beside the file
    // (a folder the workers see too); frames stay on the shared drive.
    let status = success[0]["status"].as_str().unwrap();
    assert!(status.starts_with("Submitted render "), "{}", success[0]);
    let renders = get_json(&admin_client(), format!("{broker}/renders")).await;
    let items = renders["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the last attempt submitted: {renders}");
    let copy = PathBuf::from(items[0]["blend_file"].as_str().unwrap());
    assert_eq!(
        copy.parent(),
        Some(files.path().join("renderfarm").as_path())
    );
    assert!(copy.is_file() && copy.extension().is_some_and(|e| e == "blend"));
    assert_eq!(items[0]["upload_frames"], false, "{renders}");
    assert_eq!(items[0]["chunk_size_auto"], true, "{renders}");
    assert_eq!(items[0]["target_chunk_seconds"], 30, "{renders}");
    assert_eq!(
        (
            items[0]["frame_start"].clone(),
            items[0]["frame_end"].clone()
        ),
        (json!(1), json!(4))
    );
    assert_eq!(
        std::fs::read(&blend).unwrap(),
        on_disk,
        "the artist's file is untouched"
    );
}
