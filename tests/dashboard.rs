//! The dashboard in a real browser: Debian's Chromium, driven by
//! playwright-core (`tests/dashboard/dashboard.mjs`), against the real broker
//! binary with real worker agents rendering scenes made with Blender's own
//! Python. Screenshots of every page at desktop and phone widths land in
//! `<target dir>/artifacts/dashboard-*.png`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{
    artifacts_dir, blender_or_skip, chromium_or_skip, BrokerProcess, TestAgent, ADMIN_TOKEN,
};
use renderfarm_worker::blender::scene::{make_scene, SceneSpec};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Node.js and the pinned playwright-core (`npm ci --prefix .ci`), or `None`
/// after a visible SKIPPED line; with `RENDERFARM_REQUIRE_CHROMIUM=1` (CI)
/// their absence fails the test instead.
fn playwright_or_skip(test: &str) -> Option<PathBuf> {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/node_modules/playwright-core");
    let node = std::process::Command::new("node").arg("--version").output();
    let problem = match node {
        Ok(out) if out.status.success() && module.join("index.mjs").is_file() => {
            return Some(module)
        }
        Ok(out) if out.status.success() => format!(
            "playwright-core is not installed at {}: run `npm ci --prefix .ci`",
            module.display()
        ),
        _ => "Node.js is missing: install it with `apt-get install nodejs npm`".to_string(),
    };
    if std::env::var("RENDERFARM_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
        panic!(
            "{test}: the browser tests are required (RENDERFARM_REQUIRE_CHROMIUM=1) but {problem}"
        );
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {problem}");
    None
}

/// A token of `role`, made by the admin.
async fn token(broker: &str, role: &str) -> String {
    let answer: Value = common::admin_client()
        .post(format!("{broker}/tokens"))
        .json(&json!({ "name": format!("dashboard {role}"), "role": role }))
        .send()
        .await
        .expect("POST /tokens")
        .error_for_status()
        .expect("a token")
        .json()
        .await
        .expect("JSON");
    answer["secret"].as_str().expect("a secret").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_in_a_browser_submits_follows_and_steers_a_live_farm() {
    let test = "the_dashboard_in_a_browser_submits_follows_and_steers_a_live_farm";
    let Some(chromium) = chromium_or_skip(test) else {
        return;
    };
    let Some(playwright) = playwright_or_skip(test) else {
        return;
    };
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let files = tempfile::tempdir().expect("a scene dir");
    // A long render to watch, pause and cancel (big enough frames to look at
    // in the screenshots), and a scene Debian's Blender cannot render
    // (Cycles denoising: "Build without OpenImageDenoiser", exit 1).
    let long = files.path().join("long.blend");
    let denoise = files.path().join("denoise.blend");
    let long_spec = SceneSpec {
        width: 320,
        height: 180,
        ..SceneSpec::tiny(400)
    };
    let denoise_spec = SceneSpec {
        denoise: true,
        ..SceneSpec::tiny(2)
    };
    let (a, b) = tokio::join!(
        make_scene(&blender, &long, long_spec),
        make_scene(&blender, &denoise, denoise_spec)
    );
    a.expect("Blender makes the long scene");
    b.expect("Blender makes the denoiser scene");

    let data_dir = tempfile::tempdir().expect("a data dir");
    let mut broker = Some(BrokerProcess::start(data_dir.path(), "127.0.0.1:0"));
    let address = broker.as_ref().expect("a broker").address.clone();
    let bind = address.trim_start_matches("http://").to_string();
    let viewer = token(&address, "viewer").await;
    let agents = [
        TestAgent::start(&address, "agent-a", &blender).await,
        TestAgent::start(&address, "agent-b", &blender).await,
    ];
    common::wait_for(
        "both agents to register",
        Duration::from_secs(30),
        || async {
            let workers =
                common::get_json(&common::admin_client(), format!("{address}/workers")).await;
            (workers.as_array().map_or(0, Vec::len) == 2).then_some(())
        },
    )
    .await;

    let artifacts = artifacts_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/dashboard.mjs");
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .env("BROKER", &address)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("VIEWER_TOKEN", &viewer)
        .env("ARTIFACTS", &artifacts)
        .env("SCENE_LONG", &long)
        .env("SCENE_DENOISE", &denoise)
        .env("CHROMIUM", which(&chromium))
        .env("PLAYWRIGHT_CORE", &playwright)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut to_node = node.stdin.take().expect("stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut report = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.expect("node's output") {
            let _ = writeln!(std::io::stderr(), "dashboard.mjs: {line}");
            match line.strip_prefix("CONTROL ") {
                // The stream-drop scenario: the broker really goes away
                // and comes back on the same address and data.
                Some("stop-broker") => {
                    broker.take().expect("a running broker").kill_9();
                    to_node.write_all(b"ok\n").await.expect("answer node");
                }
                Some("start-broker") => {
                    broker = Some(BrokerProcess::start(data_dir.path(), &bind));
                    to_node.write_all(b"ok\n").await.expect("answer node");
                }
                Some(other) => panic!("dashboard.mjs asked for {other:?}"),
                None => report.push(line),
            }
        }
        node.wait().await.expect("node ran")
    };
    let status = tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .expect("the browser scenarios finished within 15 minutes");
    for agent in agents {
        agent.stop().await;
    }
    let failed: Vec<&String> = report.iter().filter(|l| l.starts_with("FAILED")).collect();
    assert!(
        status.success() && failed.is_empty(),
        "dashboard scenarios failed ({status}):\n{}",
        failed
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every scenario the script holds ran and said so.
    let scenarios = std::fs::read_to_string(&script)
        .expect("the script")
        .matches("\nawait scenario(")
        .count();
    let passed = report.iter().filter(|l| l.starts_with("ok: ")).count();
    assert!(
        scenarios > 10 && passed == scenarios,
        "{passed} of {scenarios} scenarios reported success: {report:?}"
    );
    for page in [
        "signin",
        "farm",
        "renders",
        "render",
        "workers",
        "submit",
        "not-found",
    ] {
        for width in ["desktop", "phone"] {
            let shot = artifacts.join(format!("dashboard-{page}-{width}.png"));
            let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
            assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", shot.display());
        }
    }
}

/// The absolute path of `binary` (Playwright wants one).
fn which(binary: &Path) -> PathBuf {
    if binary.is_absolute() {
        return binary.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(binary))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| binary.to_path_buf())
}
