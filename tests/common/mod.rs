//! Helpers shared by the black-box test files: brokers (in-process on port 0,
//! or the real binary as a child process), worker agents, Blender.
// Each test file uses a different part of this module.
#![allow(dead_code)]

pub mod authority;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use renderfarm::startup::{Application, Settings, StoreChoice};
use renderfarm_worker::{Agent, AgentConfig, AgentSummary, StopSignals};
use serde_json::Value;
use tokio::task::JoinHandle;

/// The broker binary as a child process, so tests can SIGKILL it.
pub struct BrokerProcess {
    child: Child,
    pub address: String,
}

/// The admin secret every test broker starts with (chosen, as a deployment
/// would with RENDERFARM_ADMIN_TOKEN), and what the command line sends.
pub const ADMIN_TOKEN: &str = "rf_test_admin_0123456789abcdef0123456789abcdef";
/// The enrolment secret the test agents register with.
pub const ENROLMENT_TOKEN: &str = "rf_test_enrolment_0123456789abcdef0123456789ab";

/// A client that sends the admin's credential with every request.
pub fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN_TOKEN}")
            .parse()
            .expect("a header value"),
    );
    renderfarm_client::http_client_builder()
        .default_headers(headers)
        .build()
        .expect("a client")
}

/// The `renderfarm` command, with the admin's credential in its environment.
pub fn renderfarm_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_renderfarm"));
    command.env("RENDERFARM_TOKEN", ADMIN_TOKEN);
    command
}

/// Runs `renderfarm ARGS --broker BROKER` as the admin: exit success,
/// stdout, stderr.
pub fn run_renderfarm(broker: &str, args: &[&str]) -> (bool, String, String) {
    let output = renderfarm_command()
        .args(args)
        .args(["--broker", broker])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("renderfarm runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The credentials a test broker starts with.
pub fn test_bootstrap() -> renderfarm::credentials::Bootstrap {
    renderfarm::credentials::Bootstrap {
        admin_secret: Some(ADMIN_TOKEN.into()),
        enrolment_secret: Some(ENROLMENT_TOKEN.into()),
    }
}

impl BrokerProcess {
    /// Starts `renderfarm serve` on `bind` (port 0 for a free one) and waits
    /// for the line that names its address.
    pub fn start(data_dir: &Path, bind: &str) -> BrokerProcess {
        Self::start_with(data_dir, bind, &[])
    }

    /// As [`BrokerProcess::start`], with more arguments for `serve` (e.g.
    /// `--store mongodb://...`).
    pub fn start_with(data_dir: &Path, bind: &str, extra: &[&str]) -> BrokerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_renderfarm"))
            .args(["serve", "--bind", bind, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            // The store is what the test says, not what the shell has.
            .env_remove("MONGODB_URI")
            .env("RENDERFARM_LOG", "warn")
            .env("RENDERFARM_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RENDERFARM_ENROLMENT_TOKEN", ENROLMENT_TOKEN)
            .env_remove("RENDERFARM_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the renderfarm binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("a first line");
        let address = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        BrokerProcess { child, address }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port")
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker inside the test process on port 0 with a fresh data directory.
pub struct TestBroker {
    pub address: String,
    pub data_dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::new("127.0.0.1:0", data_dir.path(), StoreChoice::Embedded);
        settings.bootstrap = test_bootstrap();
        let app = Application::build(settings).await.expect("broker builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped());
        TestBroker {
            address,
            data_dir,
            client: admin_client(),
        }
    }
}

/// GETs `url`, which must answer with a success.
async fn get_ok(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response
}

pub async fn get_json(client: &reqwest::Client, url: String) -> Value {
    get_ok(client, &url).await.json().await.expect("JSON")
}

/// A task's log as the broker serves it.
pub async fn task_log(client: &reqwest::Client, broker: &str, task_id: &str) -> String {
    let url = format!("{broker}/tasks/{task_id}/log");
    get_ok(client, &url).await.text().await.expect("log text")
}

/// The workers' own secrets and the tasks they claimed, learned from the
/// answers [`send_json`] saw, so that each later request carries the
/// credential its real caller holds.
static LEARNED: std::sync::Mutex<Option<Learned>> = std::sync::Mutex::new(None);

#[derive(Default)]
struct Learned {
    secrets: std::collections::HashMap<String, String>,
    holders: std::collections::HashMap<String, String>,
}

/// Sends `body` as JSON with the credential of the route's real caller:
/// the enrolment token to register, a worker's own secret for its routes,
/// the admin's (the client's default) otherwise.
pub async fn send_json(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: &Value,
) -> Value {
    let request = with_credential(
        client.request(method.clone(), &url).json(body),
        &method,
        &url,
    );
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    assert!(
        response.status().is_success(),
        "{method} {url}: {}",
        response.status()
    );
    let answer: Value = response.json().await.expect("JSON");
    learn(&url, &answer);
    answer
}

fn segments_of(url: &str) -> Vec<String> {
    let path = reqwest::Url::parse(url).expect("a URL").path().to_string();
    path.trim_start_matches('/')
        .split('/')
        .map(String::from)
        .collect()
}

/// `request` (to `method url`) with the credential its real caller holds,
/// when that is not the client's default admin.
pub fn with_credential(
    request: reqwest::RequestBuilder,
    method: &reqwest::Method,
    url: &str,
) -> reqwest::RequestBuilder {
    let segments = segments_of(url);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let bearer = {
        let learned = LEARNED.lock().unwrap();
        let learned = learned.as_ref();
        let secret_of = |worker: &str| learned.and_then(|l| l.secrets.get(worker).cloned());
        match (method.as_str(), segments.as_slice()) {
            ("POST", ["workers"]) => Some(ENROLMENT_TOKEN.to_string()),
            ("POST", ["workers", id, "heartbeat" | "request-task"]) => secret_of(id),
            ("POST", ["tasks", id, _]) | ("PUT", ["tasks", id, "frames", _]) => learned
                .and_then(|l| l.holders.get(*id))
                .and_then(|w| secret_of(w)),
            _ => None,
        }
    };
    match bearer {
        Some(secret) => request.bearer_auth(secret),
        None => request,
    }
}

/// Remembers the worker secrets and task holders an answer from `url` shows.
pub fn learn(url: &str, answer: &Value) {
    let segments = segments_of(url);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let mut learned = LEARNED.lock().unwrap();
    let learned = learned.get_or_insert_with(Learned::default);
    match segments.as_slice() {
        ["workers"] => {
            if let (Some(id), Some(secret)) = (answer["id"].as_str(), answer["secret"].as_str()) {
                learned.secrets.insert(id.into(), secret.into());
            }
        }
        ["workers", id, "request-task"] => {
            if let Some(task) = answer["task_id"].as_str() {
                learned.holders.insert(task.into(), id.to_string());
            }
        }
        _ => {}
    }
}

/// Polls `check` every 100 ms until it returns `Some`, failing the test after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Blender to test with, or `None` after a visible SKIPPED line. With
/// `RENDERFARM_REQUIRE_BLENDER=1` (CI), a missing Blender fails the test.
pub async fn blender_or_skip(test: &str) -> Option<PathBuf> {
    let blender =
        PathBuf::from(std::env::var("RENDERFARM_BLENDER").unwrap_or_else(|_| "blender".into()));
    match renderfarm_worker::blender::check_blender(&blender).await {
        Ok(_) => Some(blender),
        Err(e) => {
            if std::env::var("RENDERFARM_REQUIRE_BLENDER").as_deref() == Ok("1") {
                panic!("{test}: Blender is required (RENDERFARM_REQUIRE_BLENDER=1) but: {e:#}");
            }
            // Written to the stderr handle itself, which the test harness does
            // not capture, so the skip shows in every run.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: no working Blender ({e:#}); install it with `apt-get install blender`");
            None
        }
    }
}

/// Headless Chromium to look at pages with, or `None` after a visible
/// SKIPPED line. With `RENDERFARM_REQUIRE_CHROMIUM=1` (CI), a missing Chromium
/// fails the test.
pub fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let chromium =
        PathBuf::from(std::env::var("RENDERFARM_CHROMIUM").unwrap_or_else(|_| "chromium".into()));
    let problem = match Command::new(&chromium).arg("--version").output() {
        Ok(out) if out.status.success() => return Some(chromium),
        Ok(out) => format!(
            "`{} --version` failed: {}",
            chromium.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run {}: {e}", chromium.display()),
    };
    if std::env::var("RENDERFARM_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
        panic!("{test}: Chromium is required (RENDERFARM_REQUIRE_CHROMIUM=1) but {problem}");
    }
    // Written to the stderr handle itself, which the test harness does not
    // capture, so the skip shows in every run.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: no headless Chromium ({problem}); install it with `apt-get install chromium`"
    );
    None
}

/// The ffmpeg test agents assemble videos with: `RENDERFARM_FFMPEG`, else
/// `ffmpeg` on the PATH.
pub fn ffmpeg_path() -> PathBuf {
    PathBuf::from(std::env::var("RENDERFARM_FFMPEG").unwrap_or_else(|_| "ffmpeg".into()))
}

/// ffmpeg and ffprobe to test videos with, or `None` after a visible
/// SKIPPED line. With `RENDERFARM_REQUIRE_FFMPEG=1` (CI), a missing one
/// fails the test.
pub fn ffmpeg_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    let ffmpeg = ffmpeg_path();
    let ffprobe = ffmpeg.with_file_name("ffprobe");
    let ffprobe = if ffprobe.is_absolute() {
        ffprobe
    } else {
        PathBuf::from("ffprobe")
    };
    let mut problems = Vec::new();
    for tool in [&ffmpeg, &ffprobe] {
        match Command::new(tool).arg("-version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => problems.push(format!(
                "`{} -version` failed: {}",
                tool.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => problems.push(format!("cannot run {}: {e}", tool.display())),
        }
    }
    if problems.is_empty() {
        return Some((ffmpeg, ffprobe));
    }
    let problem = problems.join("; ");
    if std::env::var("RENDERFARM_REQUIRE_FFMPEG").as_deref() == Ok("1") {
        panic!("{test}: ffmpeg is required (RENDERFARM_REQUIRE_FFMPEG=1) but {problem}");
    }
    // Written to the stderr handle itself, which the test harness does not
    // capture, so the skip shows in every run.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: no ffmpeg/ffprobe ({problem}); install them with `apt-get install ffmpeg`"
    );
    None
}

/// The settings of a test agent: short intervals so tests need not wait
/// long, the enrolment token, the default blend cache.
pub fn agent_config(broker: &str, name: &str, blender: &Path, work_dir: &Path) -> AgentConfig {
    AgentConfig {
        broker: broker.to_string(),
        name: name.to_string(),
        tags: Vec::new(),
        blender: blender.to_path_buf(),
        ffmpeg: ffmpeg_path(),
        work_dir: work_dir.to_path_buf(),
        heartbeat: Duration::from_millis(300),
        log_interval: Duration::from_millis(200),
        poll_wait: Duration::from_secs(10),
        enrolment_token: Some(ENROLMENT_TOKEN.into()),
        ca_file: None,
        cache_size: renderfarm_worker::cache::DEFAULT_CACHE_SIZE,
        previews: true,
        warm: renderfarm_worker::blender::warm::WarmConfig::default(),
        hours: Default::default(),
    }
}

/// The `renderfarm-worker` binary. It belongs to another package of the
/// workspace, whose binaries cargo builds for this package's tests only
/// under `--workspace`; so ask cargo for it, once (a no-op when it is up to
/// date).
pub fn worker_binary() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "--package", "renderfarm-worker"])
            .args(["--bin", "renderfarm-worker", "--message-format=json"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit());
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let output = build.output().expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo build -p renderfarm-worker failed"
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the renderfarm-worker executable")
    })
}

/// A worker agent running inside the test process.
pub struct TestAgent {
    pub signals: StopSignals,
    pub handle: JoinHandle<anyhow::Result<AgentSummary>>,
    pub work_dir: tempfile::TempDir,
}

impl TestAgent {
    /// Starts an agent with short intervals so tests need not wait long.
    pub async fn start(broker: &str, name: &str, blender: &Path) -> TestAgent {
        Self::start_with(broker, name, blender, |_| {}).await
    }

    /// As [`TestAgent::start`], with its settings changed by `adjust` first.
    pub async fn start_with(
        broker: &str,
        name: &str,
        blender: &Path,
        adjust: impl FnOnce(&mut AgentConfig),
    ) -> TestAgent {
        // RENDERFARM_TEST_LOG=1 shows what the in-process agents did, for a
        // failure that the assertions alone do not explain.
        if std::env::var_os("RENDERFARM_TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter("renderfarm_worker=debug")
                .try_init();
        }
        let work_dir = tempfile::tempdir().expect("work dir");
        let mut config = agent_config(broker, name, blender, work_dir.path());
        adjust(&mut config);
        let signals = StopSignals::default();
        let agent = Agent::new(config, signals.clone())
            .await
            .expect("agent starts");
        let handle = tokio::spawn(agent.run());
        TestAgent {
            signals,
            handle,
            work_dir,
        }
    }

    /// Stops it (handing back any task) and returns what it did.
    pub async fn stop(self) -> AgentSummary {
        self.signals.stop.cancel();
        self.signals.abort.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the agent stops")
            .expect("the agent did not panic")
            .expect("the agent ran without error")
    }
}

/// Process ids of running Blender processes whose command line names `blend`:
/// rendering it cold (`-a`) or kept warm (the warm driver).
pub fn blender_pids(blend: &Path) -> Vec<i32> {
    let needle = blend.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true);
            !zombie
                && cmdline.split('\0').any(|a| a == needle)
                && cmdline.split('\0').any(|a| {
                    a == "-a" || a.ends_with(renderfarm_worker::blender::warm::DRIVER_FILE)
                })
        })
        .collect()
}

/// `<target dir>/artifacts`, where tests leave screenshots for people to
/// look at (`.ci/run` keeps them).
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("artifacts");
    std::fs::create_dir_all(&dir).expect("the artifacts dir");
    dir
}

/// A Blender scene made with Blender's own Python, as `DIR/NAME.blend`.
pub async fn scene(
    dir: &Path,
    name: &str,
    spec: renderfarm_worker::blender::scene::SceneSpec,
    blender: &Path,
) -> PathBuf {
    let path = dir.join(format!("{name}.blend"));
    renderfarm_worker::blender::scene::make_scene(blender, &path, spec)
        .await
        .expect("Blender makes the scene");
    path
}

/// A PNG's decoded pixels with what they mean (size, colour type, depth), so
/// that frames compare by what they show: Cycles writes its render times
/// into each PNG's metadata.
pub fn png_pixels(path: &Path) -> (u32, u32, png::ColorType, png::BitDepth, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buffer = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buffer).expect("a frame");
    buffer.truncate(info.buffer_size());
    (
        info.width,
        info.height,
        info.color_type,
        info.bit_depth,
        buffer,
    )
}

/// A render of frames 1..=`frames` of `blend` in chunks of `chunk`, its
/// frames written under `output`.
pub fn submission(name: &str, blend: &Path, frames: i64, chunk: i64, output: &Path) -> Value {
    serde_json::json!({
        "name": name,
        "blend_file": blend.display().to_string(),
        "frame_start": 1,
        "frame_end": frames,
        "chunk_size": chunk,
        "output": format!("{}/frame_####", output.display()),
    })
}

/// Submits `body`, answering the render.
pub async fn submit(broker: &str, client: &reqwest::Client, body: &Value) -> Value {
    send_json(
        client,
        reqwest::Method::POST,
        format!("{broker}/renders"),
        body,
    )
    .await
}

/// The render's tasks, in the broker's order.
pub async fn tasks_of(broker: &str, client: &reqwest::Client, id: &str) -> Vec<Value> {
    get_json(client, format!("{broker}/renders/{id}/tasks")).await["items"]
        .as_array()
        .expect("tasks")
        .clone()
}
