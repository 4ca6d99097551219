//! GPU slots (issue 16): `renderfarm-worker --gpus` runs one worker per GPU,
//! each pinned to its GPU. There is no GPU here, so two test doubles stand
//! in, both in `tests/doubles/` and named as such: `nvidia-smi` lists two
//! GPUs, and `blender-gpu-recorder` records the command line and environment
//! each slot's Blender got, then renders with the real Blender with the GPU
//! set-up replaced by a CPU one. What the real set-up does in the real
//! Blender is tested here too: with no GPU the chunk fails saying why, and
//! with a device list faked inside Blender it enables that device alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{
    blender_or_skip, get_json, scene, submission, submit, task_log, tasks_of, wait_for,
    worker_binary, TestAgent, TestBroker, ENROLMENT_TOKEN,
};
use renderfarm_worker::blender::scene::SceneSpec;
use renderfarm_worker::blender::warm::{Launcher, SceneKey, WarmConfig};
use renderfarm_worker::blender::{RenderJob, GPU_SETUP};
use serde_json::Value;

const RENDER_LIMIT: Duration = Duration::from_secs(240);

/// The folder of the test doubles.
fn doubles() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles")
}

/// This test process's PATH without any folder holding an `nvidia-smi`:
/// Blender and ffmpeg stay found, NVIDIA's tool does not.
fn path_without_nvidia_smi() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|dir| !dir.join("nvidia-smi").exists())
        .collect();
    std::env::join_paths(kept)
        .expect("PATH entries")
        .to_string_lossy()
        .into_owned()
}

/// The PATH of an agent on a machine with two GPUs: the `nvidia-smi` double
/// first.
fn path_with_two_gpus() -> String {
    format!("{}:{}", doubles().display(), path_without_nvidia_smi())
}

/// `renderfarm-worker ARGS` with nothing from the shell's environment
/// deciding its broker, token, GPUs or log level, and `path` as its PATH.
fn worker_command(args: &[&str], path: &str) -> Command {
    let mut command = Command::new(worker_binary());
    command
        .args(args)
        .env("PATH", path)
        .env("RENDERFARM_TOKEN", ENROLMENT_TOKEN)
        .env("RENDERFARM_LOG", "info")
        .env("RENDERFARM_LOG_FORMAT", "text")
        .env_remove("RENDERFARM_BROKER")
        .env_remove("RENDERFARM_GPUS")
        .env_remove("RENDERFARM_WORKER_TAGS")
        .env_remove("RENDERFARM_CA")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .stdin(Stdio::null());
    command
}

/// A `renderfarm-worker` process, its stderr in a file; killed if the test
/// ends first.
struct WorkerProcess {
    child: Child,
    stderr: PathBuf,
}

impl WorkerProcess {
    fn start(mut command: Command, stderr: PathBuf) -> WorkerProcess {
        let file = std::fs::File::create(&stderr).expect("a file for the agent's stderr");
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("renderfarm-worker starts");
        WorkerProcess { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Fails the test if the agent has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the agent exited with {status}:\n{}", self.stderr());
        }
    }

    /// SIGTERM, as a service manager stops it; its exit and what it said.
    async fn stop(mut self) -> (ExitStatus, String) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let status = wait_for("the agent to stop", Duration::from_secs(60), || {
            let exited = self.child.try_wait().expect("the agent's status");
            async move { exited }
        })
        .await;
        (status, self.stderr())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker's workers by name.
async fn workers_by_name(broker: &TestBroker) -> std::collections::HashMap<String, Value> {
    let workers = get_json(&broker.client, format!("{}/workers", broker.address)).await;
    workers
        .as_array()
        .expect("a list of workers")
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or_default().to_string(),
                w.clone(),
            )
        })
        .collect()
}

fn tags(worker: &Value) -> Vec<&str> {
    worker["tags"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// One Blender command line the recorder double saw.
#[derive(Debug)]
struct Recorded {
    args: Vec<String>,
    cuda_device_order: String,
    cuda_visible_devices: String,
    cwd: PathBuf,
}

/// Every Blender command line the recorder double saw in `dir`.
fn recorded(dir: &Path) -> Vec<Recorded> {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the record folder") {
        let path = entry.expect("an entry").path();
        if path.extension().is_none_or(|e| e != "env") {
            continue;
        }
        let env = std::fs::read_to_string(&path).expect("a record");
        let field = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} in {env}"))
                .to_string()
        };
        let args = std::fs::read_to_string(path.with_extension("args")).expect("its args");
        seen.push(Recorded {
            args: args
                .strip_suffix('\0')
                .unwrap_or(&args)
                .split('\0')
                .map(String::from)
                .collect(),
            cuda_device_order: field("CUDA_DEVICE_ORDER"),
            cuda_visible_devices: field("CUDA_VISIBLE_DEVICES"),
            cwd: PathBuf::from(field("cwd")),
        });
    }
    seen
}

fn timestamp(task: &Value, field: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let text = task[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} of {task}"));
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_agent_with_gpus_auto_is_one_worker_per_gpu_and_each_blender_is_pinned_to_its_gpu() {
    let test =
        "one_agent_with_gpus_auto_is_one_worker_per_gpu_and_each_blender_is_pinned_to_its_gpu";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let broker = TestBroker::start().await;
    let files = tempfile::tempdir().unwrap();
    let records = files.path().join("records");
    std::fs::create_dir(&records).unwrap();
    let blend = scene(files.path(), "gpu", SceneSpec::tiny(8), &blender).await;
    // A worker without GPUs beside it: a render that requires `gpu` must
    // never go to it.
    let cpu = TestAgent::start(&broker.address, "cpu-only", &blender).await;

    let work = files.path().join("render01");
    let recorder = doubles().join("blender-gpu-recorder");
    let work_arg = work.display().to_string();
    let recorder_arg = recorder.display().to_string();
    let mut command = worker_command(
        &[
            "--broker",
            &broker.address,
            "--name",
            "render01",
            "--tags",
            "linux",
            "--work-dir",
            &work_arg,
            "--blender",
            &recorder_arg,
            "--gpus",
            "auto",
            "--poll-wait",
            "1s",
            "--heartbeat",
            "1s",
        ],
        &path_with_two_gpus(),
    );
    command
        .env("RENDERFARM_TEST_REAL_BLENDER", &blender)
        .env("RENDERFARM_TEST_RECORD_DIR", &records);
    let mut agent = WorkerProcess::start(command, files.path().join("agent.stderr"));

    let workers = wait_for(
        "the agent's two GPU slots and the CPU worker to register",
        Duration::from_secs(120),
        || {
            agent.assert_running();
            let broker = &broker;
            async move {
                let workers = workers_by_name(broker).await;
                (workers.len() == 3).then_some(workers)
            }
        },
    )
    .await;
    for slot in ["render01/gpu0", "render01/gpu1"] {
        let worker = workers
            .get(slot)
            .unwrap_or_else(|| panic!("{slot} in {workers:?}"));
        assert_eq!(tags(worker), ["gpu", "linux"], "{slot}: its tags");
    }
    assert!(
        !workers.contains_key("render01"),
        "no worker of the agent's own"
    );
    assert_eq!(tags(&workers["cpu-only"]), Vec::<&str>::new());
    let id_of = |name: &str| workers[name]["id"].as_str().unwrap().to_string();
    let (gpu0, gpu1, cpu_id) = (
        id_of("render01/gpu0"),
        id_of("render01/gpu1"),
        id_of("cpu-only"),
    );

    // Uploaded, so that both slots want the same blend from the agent's one
    // cache at the same moment.
    let sha256 = renderfarm_client::sha256_file(&blend).await.unwrap();
    renderfarm_client::BrokerClient::new(&broker.address)
        .unwrap()
        .with_token(Some(common::ADMIN_TOKEN.into()))
        .upload_file(&blend, &sha256, &|_, _| {})
        .await
        .expect("the blend uploads");
    let body = serde_json::json!({
        "name": "needs a gpu",
        "blend_sha256": sha256,
        "frame_start": 1,
        "frame_end": 8,
        "chunk_size": 1,
        "tags": ["gpu"],
    });
    let render = submit(&broker.address, &broker.client, &body).await;
    let id = render["id"].as_str().unwrap().to_string();
    wait_for("the render to complete", RENDER_LIMIT, || {
        agent.assert_running();
        let (broker, id) = (&broker, &id);
        async move {
            let url = format!("{}/renders/{id}", broker.address);
            let render = get_json(&broker.client, url).await;
            assert_ne!(render["status"], "failed", "{render}");
            (render["status"] == "completed").then_some(())
        }
    })
    .await;
    let frames = get_json(
        &broker.client,
        format!("{}/renders/{id}/frames", broker.address),
    )
    .await;
    let numbers: Vec<i64> = frames["frames"]
        .as_array()
        .expect("the render's frames")
        .iter()
        .filter_map(|f| f["frame"].as_i64())
        .collect();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>(), "{frames}");

    // Each slot keeps its own identity (written just after it registered).
    let identities: Vec<Value> = ["gpu0", "gpu1"]
        .iter()
        .map(|slot| {
            let text = std::fs::read_to_string(work.join(slot).join("identity.json"))
                .unwrap_or_else(|e| panic!("{slot}'s identity: {e}"));
            serde_json::from_str(&text).unwrap()
        })
        .collect();
    assert_eq!(identities[0]["worker_id"], gpu0.as_str());
    assert_eq!(identities[1]["worker_id"], gpu1.as_str());
    assert_ne!(
        identities[0]["secret"], identities[1]["secret"],
        "each slot acts with a secret of its own"
    );
    assert!(!work.join("identity.json").exists());

    // Both slots rendered, side by side, and nothing went to the CPU worker.
    let tasks = tasks_of(&broker.address, &broker.client, &id).await;
    let by = |worker: &str| {
        tasks
            .iter()
            .filter(|t| t["worker_id"] == worker)
            .collect::<Vec<_>>()
    };
    assert!(
        !by(&gpu0).is_empty() && !by(&gpu1).is_empty(),
        "each slot took tasks: {tasks:?}"
    );
    assert_eq!(by(&gpu0).len() + by(&gpu1).len(), 8, "{tasks:?}");
    assert!(by(&cpu_id).is_empty());
    let overlapping = by(&gpu0).iter().any(|a| {
        by(&gpu1).iter().any(|b| {
            timestamp(a, "started_at") < timestamp(b, "finished_at")
                && timestamp(b, "started_at") < timestamp(a, "finished_at")
        })
    });
    assert!(
        overlapping,
        "a task of each slot ran at the same time, by the broker's times: {tasks:?}"
    );
    let mut logs = String::new();
    for task in &tasks {
        logs += &task_log(
            &broker.client,
            &broker.address,
            task["id"].as_str().unwrap(),
        )
        .await;
    }
    assert!(
        logs.contains("blender-gpu-recorder (a test double): the GPU set-up replaced by a CPU one"),
        "the set-up's place on the command line ran:\n{logs}"
    );

    // Each Blender: its slot's GPU alone, the set-up right after the file,
    // in its slot's own folder.
    let seen = recorded(&records);
    assert!(seen.len() >= 2, "{seen:?}");
    let mut devices: Vec<&str> = seen
        .iter()
        .map(|r| r.cuda_visible_devices.as_str())
        .collect();
    devices.sort();
    devices.dedup();
    assert_eq!(devices, ["0", "1"], "{seen:?}");
    for blender in &seen {
        assert_eq!(blender.cuda_device_order, "PCI_BUS_ID", "{blender:?}");
        let slot_dir = work.join(format!("gpu{}", blender.cuda_visible_devices));
        assert_eq!(
            std::fs::canonicalize(&blender.cwd).unwrap(),
            std::fs::canonicalize(&slot_dir).unwrap(),
            "each slot's Blender runs in its slot's folder"
        );
        let blend_arg = blender.args.get(1).cloned().unwrap_or_default();
        assert_eq!(
            blender.args[..4],
            ["-b", blend_arg.as_str(), "--python-expr", GPU_SETUP],
            "{blender:?}"
        );
        let renders = blender.args.iter().any(|a| a == "-a")
            || blender
                .args
                .iter()
                .any(|a| a.ends_with(renderfarm_worker::blender::warm::DRIVER_FILE));
        assert!(renders, "then the render or the warm driver: {blender:?}");
    }
    let cached = work.join("cache").join(format!("{sha256}.blend"));
    assert!(
        seen.iter().all(|b| Path::new(&b.args[1]) == cached),
        "every Blender opened the one cached copy, {}: {seen:?}",
        cached.display()
    );

    let cpu_summary = cpu.stop().await;
    assert_eq!(cpu_summary.completed, 0, "{cpu_summary:?}");
    let (status, stderr) = agent.stop().await;
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("renderfarm-worker stopped: 8 completed, 0 failed")
            && stderr.contains("; 1 blend file(s) downloaded"),
        "the agent's sums, one download for both slots:\n{stderr}"
    );
    for (slot, gpu) in [("render01/gpu0", 0), ("render01/gpu1", 1)] {
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{slot} (GPU {gpu}): ")))
            .unwrap_or_else(|| panic!("a line for {slot}:\n{stderr}"));
        let done = by(if gpu == 0 { &gpu0 } else { &gpu1 }).len();
        assert!(line.contains(&format!(": {done} completed")), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpus_auto_without_nvidia_smi_says_so_and_the_agent_is_one_worker_without_the_gpu_tag() {
    let test =
        "gpus_auto_without_nvidia_smi_says_so_and_the_agent_is_one_worker_without_the_gpu_tag";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    let broker = TestBroker::start().await;
    let files = tempfile::tempdir().unwrap();
    let work = files.path().join("work").display().to_string();
    let blender_arg = blender.display().to_string();
    let command = worker_command(
        &[
            "--broker",
            &broker.address,
            "--name",
            "render02",
            "--work-dir",
            &work,
            "--blender",
            &blender_arg,
            "--gpus",
            "auto",
            "--poll-wait",
            "1s",
        ],
        &path_without_nvidia_smi(),
    );
    let mut agent = WorkerProcess::start(command, files.path().join("agent.stderr"));
    let workers = wait_for("the agent to register", Duration::from_secs(60), || {
        agent.assert_running();
        let broker = &broker;
        async move {
            let workers = workers_by_name(broker).await;
            (!workers.is_empty()).then_some(workers)
        }
    })
    .await;
    let names: Vec<&String> = workers.keys().collect();
    assert_eq!(names, ["render02"], "one worker, without a slot suffix");
    assert_eq!(tags(&workers["render02"]), Vec::<&str>::new());
    let (status, stderr) = agent.stop().await;
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("--gpus auto found no GPU: nvidia-smi was not found on PATH")
            && stderr.contains("runs as one worker without GPU slots"),
        "the warning names what was looked for and what happens:\n{stderr}"
    );
}

#[test]
fn gpus_that_cannot_be_had_are_refused_at_start_with_what_to_do() {
    let run = |gpus: &str, path: &str| {
        let output = worker_command(&["--broker", "http://127.0.0.1:1", "--gpus", gpus], path)
            .output()
            .expect("renderfarm-worker runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let two_gpus = path_with_two_gpus();
    let (code, err) = run("0,2", &two_gpus);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--gpus 0,2: nvidia-smi lists no GPU 2; it lists GPU 0 (NVIDIA GeForce RTX 3090, 24576 MiB), GPU 1 (NVIDIA GeForce RTX 3090, 24576 MiB)")
            && err.contains("--gpus auto"),
        "{err}"
    );
    let (code, err) = run("1", &path_without_nvidia_smi());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--gpus 1: the GPUs cannot be checked: nvidia-smi was not found on PATH")
            && err.contains("without --gpus"),
        "{err}"
    );
    // Values that are no choice of GPUs at all: clap's usage error.
    for (gpus, want) in [
        ("foo", "\"foo\" is not a GPU index"),
        ("0,0", "GPU 0 is listed twice"),
        ("", "is not a GPU index"),
    ] {
        let (code, err) = run(gpus, &two_gpus);
        assert_eq!(code, Some(2), "{gpus:?}: {err}");
        assert!(
            err.contains(&format!("invalid value '{gpus}' for '--gpus")) && err.contains(want),
            "{gpus:?}: {err}"
        );
    }
}

/// Renders frame 1 of `blend` through `launcher`: Blender's exit and output.
async fn render_one(launcher: &mut Launcher, blend: &Path, out: &Path) -> (Option<i32>, String) {
    let job = RenderJob {
        blend_file: blend.display().to_string(),
        output: format!("{}/frame_####", out.display()),
        engine: None,
        from: 1,
        to: 1,
        path_mappings: Vec::new(),
    };
    let key = SceneKey::new("r", &job.blend_file, None);
    let mut running = launcher.start(&job, key).await.expect("Blender starts");
    let mut lines = String::new();
    let exit = tokio::time::timeout(RENDER_LIMIT, async {
        while let Some(line) = running.lines.recv().await {
            lines.push_str(&line);
        }
        running.process.wait().await.expect("Blender's exit")
    })
    .await
    .expect("the chunk ends");
    (exit, lines)
}

/// `None` after a SKIPPED line when this machine has an NVIDIA GPU: the
/// tests of what happens without one cannot run on it.
async fn no_gpu_or_skip(test: &str) -> Option<()> {
    match renderfarm_worker::gpu::list_gpus(Path::new("nvidia-smi")).await {
        Ok(gpus) => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("SKIPPED: {test}: this machine has a GPU ({gpus:?})\n").as_bytes(),
            );
            None
        }
        Err(_) => Some(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gpu_slot_s_blender_that_sees_no_gpu_fails_the_chunk_saying_why_cold_and_warm() {
    let test = "a_gpu_slot_s_blender_that_sees_no_gpu_fails_the_chunk_saying_why_cold_and_warm";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    if no_gpu_or_skip(test).await.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let blend = scene(dir.path(), "s", SceneSpec::tiny(2), &blender).await;
    let out = dir.path().join("out");
    let work = tempfile::tempdir().unwrap();
    for warm in [WarmConfig::off(), WarmConfig::default()] {
        let mut launcher =
            Launcher::new(blender.clone(), work.path().to_path_buf(), warm).on_gpu(0);
        let (exit, lines) = render_one(&mut launcher, &blend, &out).await;
        assert_eq!(exit, Some(1), "warm {}: {lines}", warm.enabled);
        assert!(
            lines.contains("Error: renderfarm-worker GPU slot (CUDA_VISIBLE_DEVICES=0): "),
            "warm {}: {lines}",
            warm.enabled
        );
        assert!(!out.exists(), "nothing rendered on the CPU instead");
        assert_eq!(launcher.warm_pid(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_render_on_a_gpu_slot_without_a_gpu_fails_with_the_reason_in_the_task() {
    let test = "a_render_on_a_gpu_slot_without_a_gpu_fails_with_the_reason_in_the_task";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    if no_gpu_or_skip(test).await.is_none() {
        return;
    }
    let broker = TestBroker::start().await;
    let files = tempfile::tempdir().unwrap();
    let blend = scene(files.path(), "s", SceneSpec::tiny(2), &blender).await;
    let work = tempfile::tempdir().unwrap();
    let config = common::agent_config(&broker.address, "render03", &blender, work.path());
    let signals = renderfarm_worker::StopSignals::default();
    let agent = renderfarm_worker::Agent::with_gpu_slots(config, &[0], signals.clone())
        .await
        .expect("the agent starts");
    let handle = tokio::spawn(agent.run());
    let mut body = submission("on a gpu", &blend, 2, 2, &files.path().join("out"));
    body["tags"] = serde_json::json!(["gpu"]);
    body["max_retries"] = serde_json::json!(0);
    let render = submit(&broker.address, &broker.client, &body).await;
    let id = render["id"].as_str().unwrap().to_string();
    wait_for("the render to fail", RENDER_LIMIT, || async {
        let render = get_json(&broker.client, format!("{}/renders/{id}", broker.address)).await;
        (render["status"] == "failed").then_some(())
    })
    .await;
    let task = &tasks_of(&broker.address, &broker.client, &id).await[0];
    let reason = task["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("Blender exited with code 1")
            && reason.contains("Error: renderfarm-worker GPU slot (CUDA_VISIBLE_DEVICES=0): "),
        "{task}"
    );
    signals.stop.cancel();
    signals.abort.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .expect("the agent stops")
        .expect("no panic")
        .expect("no error");
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert_eq!(summary.slots.len(), 1);
    assert_eq!(summary.slots[0].name, "render03/gpu0");
    assert_eq!(summary.slots[0].summary.failed, 1);
}

#[tokio::test]
async fn the_gpu_set_up_renders_every_scene_on_the_slot_s_gpu_alone_and_never_on_the_cpu() {
    let test = "the_gpu_set_up_renders_every_scene_on_the_slot_s_gpu_alone_and_never_on_the_cpu";
    let Some(blender) = blender_or_skip(test).await else {
        return;
    };
    // A test double inside Blender: Cycles' device list with one CUDA GPU
    // (the slot's, the only one CUDA shows it), the CPU, and a second scene.
    let fake_devices = r#"
import bpy
prefs = bpy.context.preferences.addons["cycles"].preferences
prefs.refresh_devices()
gpu = prefs.devices.add()
gpu.id, gpu.name, gpu.type, gpu.use = "CUDA_0000:65:00", "Faked GPU", "CUDA", False
type(prefs).get_devices_for_type = lambda self, kind: [
    d for d in self.devices if d.type in (kind, "CPU")]
bpy.data.scenes.new("Second")
"#;
    let report = r#"
import bpy
prefs = bpy.context.preferences.addons["cycles"].preferences
print("STATE", prefs.compute_device_type,
      sorted((d.type, d.use) for d in prefs.devices),
      sorted(s.cycles.device for s in bpy.data.scenes))
"#;
    let output = tokio::process::Command::new(&blender)
        .args(["-b", "--factory-startup", "--python-expr", fake_devices])
        .args(["--python-expr", GPU_SETUP, "--python-expr", report])
        .env("CUDA_VISIBLE_DEVICES", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("Blender runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "renderfarm-worker GPU slot (CUDA_VISIBLE_DEVICES=1): Cycles renders on CUDA: Faked GPU"
        ),
        "{stdout}"
    );
    // Blender built with OptiX would pick it first: only CUDA is faked here,
    // so CUDA it is, with the CPU off and every scene on the GPU.
    let state = stdout
        .lines()
        .find(|l| l.starts_with("STATE "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(state.starts_with("STATE CUDA "), "{state}");
    assert!(
        state.contains("('CUDA', True)") && !state.contains("('CUDA', False)"),
        "{state}"
    );
    assert!(!state.contains("('CPU', True)"), "{state}");
    assert!(state.ends_with("['GPU', 'GPU']"), "{state}");
}
