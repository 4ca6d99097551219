//! `renderfarm watch` against a real broker: a worker driven over HTTP moves
//! renders along, and the watch, a separate process, reports what it sees.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{send_json, wait_for, BrokerProcess, TestBroker};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `renderfarm watch` process whose stdout lines are collected as they come.
struct Watch {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn start(broker: &str, args: &[&str]) -> Watch {
        let mut child = Command::new(env!("CARGO_BIN_EXE_renderfarm"))
            .arg("watch")
            .args(args)
            .args(["--interval", "100ms", "--broker", broker])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("renderfarm watch starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Watch { child, lines }
    }

    async fn saw(&self, what: &str, needle: &str) {
        wait_for(what, Duration::from_secs(15), || async {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
                .then_some(())
        })
        .await;
    }

    /// Waits for the process to end: its success and its stderr.
    async fn end(self) -> (bool, Vec<String>, String) {
        let output = tokio::time::timeout(Duration::from_secs(15), self.child.wait_with_output())
            .await
            .expect("watch ends by itself")
            .expect("watch output");
        // Let the reader task take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lines = self.lines.lock().unwrap().clone();
        (
            output.status.success(),
            lines,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

async fn submit(broker: &TestBroker, name: &str, frames: i64, max_retries: i64) -> String {
    let render = send_json(
        &broker.client,
        Method::POST,
        format!("{}/renders", broker.address),
        &json!({"name": name, "blend_file": format!("/p/{name}.blend"), "frame_start": 1,
                "frame_end": frames, "chunk_size": 2, "max_retries": max_retries}),
    )
    .await;
    render["id"].as_str().unwrap().to_string()
}

async fn claim(broker: &TestBroker, worker: &str) -> Value {
    send_json(
        &broker.client,
        Method::POST,
        format!("{}/workers/{worker}/request-task", broker.address),
        &json!({}),
    )
    .await
}

async fn report(broker: &TestBroker, task: &Value, kind: &str, body: Value) {
    let mut body = body;
    body["lease_id"] = task["lease_id"].clone();
    send_json(
        &broker.client,
        Method::POST,
        format!(
            "{}/tasks/{}/{kind}",
            broker.address,
            task["task_id"].as_str().unwrap()
        ),
        &body,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_renders_to_their_end_and_exits_nonzero_when_one_failed() {
    let broker = TestBroker::start().await;
    let a = submit(&broker, "alpha", 4, 1).await;
    let b = submit(&broker, "beta", 2, 0).await;
    let lines_watch = Watch::start(&broker.address, &[&a, &b]);
    let json_watch = Watch::start(&broker.address, &[&a, "--json"]);
    lines_watch
        .saw(
            "both renders queued",
            &format!("render {b} \"beta\" 0/2 frames, queued"),
        )
        .await;

    let worker = send_json(
        &broker.client,
        Method::POST,
        format!("{}/workers", broker.address),
        &json!({"name": "node-7"}),
    )
    .await;
    let worker = worker["id"].as_str().unwrap();

    let first = claim(&broker, worker).await;
    report(&broker, &first, "progress", json!({"frames_done": 1})).await;
    lines_watch
        .saw(
            "the busy worker",
            "worker node-7 on \"alpha\" frames 1-2: 1/2 done",
        )
        .await;
    report(&broker, &first, "complete", json!({})).await;
    let second = claim(&broker, worker).await;
    report(&broker, &second, "complete", json!({})).await;

    let (ok, renders, err) = json_watch.end().await;
    assert!(ok, "alpha completed, so the JSON watch exits 0: {err}");
    let renders: Vec<Value> = renders
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is one render in JSON"))
        .collect();
    let done: Vec<i64> = renders
        .iter()
        .map(|r| r["progress"]["frames_done"].as_i64().unwrap())
        .collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "frames only go up: {done:?}"
    );
    assert!(
        renders.windows(2).all(|w| w[0] != w[1]),
        "a line is printed only when the render changed"
    );
    let last = renders.last().expect("at least one line");
    assert_eq!(
        (last["id"].as_str(), last["status"].as_str()),
        (Some(a.as_str()), Some("completed"))
    );

    // beta's only task fails with no retry left: beta fails.
    let third = claim(&broker, worker).await;
    assert_eq!(third["render_id"], b.as_str());
    report(
        &broker,
        &third,
        "fail",
        json!({"reason": "Blender exited 1", "exit_code": 1}),
    )
    .await;

    let (ok, lines, err) = lines_watch.end().await;
    assert!(!ok, "beta failed, so the watch exits non-zero");
    assert!(err.contains(&format!("{b} \"beta\" failed")), "{err}");
    assert!(!err.contains("alpha"), "alpha completed: {err}");
    for expected in [
        format!("render {a} \"alpha\" 4/4 frames, completed"),
        format!("render {b} \"beta\" 0/2 frames, failed, 1 failed"),
    ] {
        assert!(
            lines.iter().any(|l| l.ends_with(&expected)),
            "{expected:?} in {lines:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_ids_picks_up_new_renders_until_stopped() {
    let broker = TestBroker::start().await;
    let watch = Watch::start(&broker.address, &[]);
    // Submitted after the watch started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = submit(&broker, "gamma", 6, 1).await;
    watch
        .saw(
            "the new render",
            &format!("render {c} \"gamma\" 0/6 frames, queued"),
        )
        .await;
    let pid = nix::unistd::Pid::from_raw(watch.child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let (ok, _, err) = watch.end().await;
    assert!(ok, "stopping a watch of everything is no error: {err}");
}

#[tokio::test]
async fn watch_of_an_unknown_render_says_so() {
    let broker = TestBroker::start().await;
    let (ok, _, err) = Watch::start(&broker.address, &["0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d"])
        .end()
        .await;
    assert!(!ok);
    assert!(err.contains("no render with id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_carries_on_through_a_broker_restart() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0");
    let (address, port) = (broker.address.clone(), broker.port());
    let client = renderfarm_client::http_client_builder().build().unwrap();
    let render = send_json(
        &client,
        Method::POST,
        format!("{address}/renders"),
        &json!({"name": "restart", "blend_file": "/p/restart.blend", "frame_start": 1, "frame_end": 1}),
    )
    .await;
    let id = render["id"].as_str().unwrap().to_string();
    let watch = Watch::start(&address, &[&id]);
    watch
        .saw(
            "the render",
            &format!("render {id} \"restart\" 0/1 frames, queued"),
        )
        .await;

    broker.kill_9();
    // A few looks find nobody there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _broker = BrokerProcess::start(data.path(), &format!("127.0.0.1:{port}"));
    let worker = send_json(
        &client,
        Method::POST,
        format!("{address}/workers"),
        &json!({"name": "after-restart"}),
    )
    .await;
    let task = send_json(
        &client,
        Method::POST,
        format!(
            "{address}/workers/{}/request-task",
            worker["id"].as_str().unwrap()
        ),
        &json!({}),
    )
    .await;
    send_json(
        &client,
        Method::POST,
        format!(
            "{address}/tasks/{}/complete",
            task["task_id"].as_str().unwrap()
        ),
        &json!({"lease_id": task["lease_id"]}),
    )
    .await;

    let (ok, lines, err) = watch.end().await;
    assert!(ok, "the render completed after the restart: {err}");
    assert!(err.contains("trying again"), "the outage was shown: {err}");
    let done = format!("render {id} \"restart\" 1/1 frames, completed");
    assert!(lines.iter().any(|l| l.ends_with(&done)), "{lines:#?}");
}
