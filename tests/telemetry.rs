//! Structured logs and traces: `--log-format json` writes one JSON object
//! per line with the request's id, route, status and duration and the ids of
//! what a line is about; `--otlp-endpoint` exports spans over OTLP/HTTP to a
//! receiver in this test, continuing the caller's W3C `traceparent`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use common::{send_json, wait_for, ADMIN_TOKEN, ENROLMENT_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

/// A broker process whose stderr this test reads, line by line.
struct Broker {
    child: Child,
    address: String,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(extra: &[&str], env: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_renderfarm"))
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env_remove("MONGODB_URI")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RENDERFARM_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RENDERFARM_ENROLMENT_TOKEN", ENROLMENT_TOKEN)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the broker starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let address = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Broker {
            child,
            address,
            lines,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_and_what_a_line_is_about() {
    let broker = Broker::start(
        &["--log-format", "json"],
        &[("RENDERFARM_LOG", "info,renderfarm::access=debug")],
    );
    let b = broker.address.as_str();
    let client = common::admin_client();

    // A request id the client chose is kept and echoed.
    let submitted = client
        .post(format!("{b}/renders"))
        .header("x-request-id", "submit-from-test-1")
        .json(&json!({"name": "logs", "blend_file": "/p/a.blend", "frame_start": 1, "frame_end": 1, "max_retries": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 202);
    assert_eq!(submitted.headers()["x-request-id"], "submit-from-test-1");
    // One the broker made is answered too.
    let listed = client.get(format!("{b}/renders")).send().await.unwrap();
    let made_id = listed.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    let worker = send_json(
        &client,
        Method::POST,
        format!("{b}/workers"),
        &json!({"name": "w"}),
    )
    .await;
    let worker = worker["id"].as_str().unwrap();
    let task = send_json(
        &client,
        Method::POST,
        format!("{b}/workers/{worker}/request-task"),
        &json!({}),
    )
    .await;
    let task_id = task["task_id"].as_str().unwrap().to_string();
    send_json(
        &client,
        Method::POST,
        format!("{b}/tasks/{task_id}/fail"),
        &json!({"lease_id": task["lease_id"], "exit_code": 1, "reason": "Blender exited with 1"}),
    )
    .await;
    send_json(
        &client,
        Method::POST,
        format!("{b}/scheduler/run"),
        &json!({}),
    )
    .await;

    let lines = wait_for("the retry's log line", Duration::from_secs(10), || async {
        let lines = broker.lines();
        lines
            .iter()
            .any(|l| l.contains("retrying a failed task"))
            .then_some(lines)
    })
    .await;
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // The request's own line (renderfarm::access) whose `field` is `value`.
    let access_line = |field: &str, value: &str| {
        parsed
            .iter()
            .find(|l| l["target"] == "renderfarm::access" && l[field] == value)
            .unwrap_or_else(|| panic!("no access line with {field} {value} in {lines:#?}"))
            .clone()
    };
    let access = |request_id: &str| access_line("request_id", request_id);
    let submit = access("submit-from-test-1");
    assert_eq!(submit["method"], "POST");
    assert_eq!(submit["route"], "/renders");
    assert_eq!(submit["status"], 202);
    assert!(submit["duration_ms"].as_f64().unwrap() >= 0.0, "{submit}");
    assert_eq!(submit["level"], "DEBUG");
    assert!(submit["timestamp"].is_string());
    assert_eq!(access(&made_id)["route"], "/renders");
    assert_eq!(access(&made_id)["method"], "GET");
    // The request's line names the worker or task its path is about.
    let routed = |route: &str| access_line("route", route);
    let claim = routed("/workers/{id}/request-task");
    assert_eq!(claim["worker_id"], worker, "{claim}");
    let failed = routed("/tasks/{id}/fail");
    assert_eq!(failed["task_id"], task_id.as_str(), "{failed}");
    assert!(failed.get("worker_id").is_none(), "{failed}");
    // A line written while a request is served names the request.
    let submitted_line = parsed
        .iter()
        .find(|l| l["message"] == "render submitted")
        .unwrap();
    assert_eq!(
        submitted_line["request"],
        json!({"request_id": "submit-from-test-1", "method": "POST"}),
        "{submitted_line}"
    );
    assert!(submitted_line["render_id"].is_string(), "{submitted_line}");
    // The tick this test ran through the API wrote its lines while serving
    // that request; the lines of a tick the scheduler runs by itself name
    // none (the first line of the broker's start, written before any).
    let retry_line = parsed
        .iter()
        .find(|l| l["message"] == "retrying a failed task")
        .unwrap();
    assert_eq!(
        retry_line["request"]["request_id"],
        routed("/scheduler/run")["request_id"],
        "{retry_line}"
    );
    assert!(parsed[0].get("request").is_none(), "{}", parsed[0]);

    // A line about a task names it and its render as fields, inside the
    // span of the tick that wrote it.
    let retry = parsed
        .iter()
        .find(|l| l["message"] == "retrying a failed task")
        .unwrap();
    assert_eq!(retry["task_id"], task_id.as_str(), "{retry}");
    assert_eq!(retry["render_id"], task["render_id"], "{retry}");
    assert_eq!(retry["level"], "INFO");
    assert_eq!(retry["span"]["name"], "scheduler.tick", "{retry}");
}

/// An OTLP/HTTP receiver (JSON encoding): every span it was sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(&self) -> (actix_web::dev::ServerHandle, u16) {
        let spans = self.spans.clone();
        let server = HttpServer::new(move || {
            let spans = spans.clone();
            App::new().route(
                "/v1/traces",
                web::post().to(move |body: web::Bytes| {
                    let spans = spans.clone();
                    async move {
                        let export: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                        for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                                for span in scope["spans"].as_array().into_iter().flatten() {
                                    spans.lock().unwrap().push(span.clone());
                                }
                            }
                        }
                        HttpResponse::Ok().json(json!({}))
                    }
                }),
            )
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        (handle, port)
    }

    fn named(&self, name: &str) -> Vec<Value> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == name)
            .cloned()
            .collect()
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_and_continue_the_caller_s_trace() {
    let receiver = Receiver::default();
    let (handle, port) = receiver.start();
    let endpoint = format!("http://127.0.0.1:{port}");
    let broker = Broker::start(
        &["--otlp-endpoint", &endpoint, "--otlp-protocol", "http/json"],
        // The batch goes out within a tenth of a second, not five.
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let b = broker.address.as_str();
    let client = common::admin_client();
    send_json(
        &client,
        Method::POST,
        format!("{b}/renders"),
        &json!({"name": "traced", "blend_file": "/p/a.blend", "frame_start": 1, "frame_end": 1}),
    )
    .await;
    let worker = send_json(
        &client,
        Method::POST,
        format!("{b}/workers"),
        &json!({"name": "w"}),
    )
    .await;
    let worker = worker["id"].as_str().unwrap();

    // As the agent does for a chunk: one trace, a new parent per request.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = |span: &str| format!("00-{trace}-{span}-01");
    let url = format!("{b}/workers/{worker}/request-task");
    let task: Value = common::with_credential(client.post(&url), &Method::POST, &url)
        .header("traceparent", traceparent("00f067aa0ba902b7"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    common::learn(&url, &task);
    let task_id = task["task_id"].as_str().unwrap();
    let url = format!("{b}/tasks/{task_id}/complete");
    let done = common::with_credential(client.post(&url), &Method::POST, &url)
        .header("traceparent", traceparent("00f067aa0ba902b8"))
        .json(&json!({"lease_id": task["lease_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);

    let (claim_request, claim) = wait_for("the claim's spans", Duration::from_secs(15), || async {
        let request = receiver
            .named("POST /workers/{id}/request-task")
            .into_iter()
            .find(|s| s["traceId"].as_str().map(str::to_lowercase).as_deref() == Some(trace))?;
        let claim = receiver
            .named("claim")
            .into_iter()
            .find(|s| s["parentSpanId"] == request["spanId"])?;
        Some((request, claim))
    })
    .await;
    assert_eq!(
        claim_request["parentSpanId"]
            .as_str()
            .map(str::to_lowercase)
            .as_deref(),
        Some("00f067aa0ba902b7"),
        "the request's span is a child of the caller's"
    );
    assert_eq!(claim["traceId"], claim_request["traceId"]);
    assert_eq!(
        attribute(&claim, "task_id").and_then(|v| v["stringValue"].as_str()),
        Some(task_id)
    );
    assert_eq!(
        attribute(&claim_request, "http.route").and_then(|v| v["stringValue"].as_str()),
        Some("/workers/{id}/request-task")
    );
    let report = wait_for(
        "the report's span in the same trace",
        Duration::from_secs(15),
        || async {
            receiver
                .named("report")
                .into_iter()
                .find(|s| s["traceId"] == claim["traceId"])
        },
    )
    .await;
    assert_eq!(
        attribute(&report, "report").and_then(|v| v["stringValue"].as_str()),
        Some("complete")
    );

    // Scheduler steps are spans of a tick of their own.
    send_json(
        &client,
        Method::POST,
        format!("{b}/scheduler/run"),
        &json!({}),
    )
    .await;
    let tick = wait_for("a tick's span", Duration::from_secs(15), || async {
        receiver.named("scheduler.tick").into_iter().next()
    })
    .await;
    wait_for("its steps", Duration::from_secs(15), || async {
        receiver
            .named("scheduler.retry_failed_tasks")
            .into_iter()
            .find(|s| s["parentSpanId"] == tick["spanId"])
    })
    .await;
    drop(broker);
    handle.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_s_life_is_one_trace_from_the_agent_s_claim_to_its_completion() {
    let Some(blender) = common::blender_or_skip("telemetry agent trace").await else {
        return;
    };
    let receiver = Receiver::default();
    let (handle, port) = receiver.start();
    let endpoint = format!("http://127.0.0.1:{port}");
    let broker = Broker::start(
        &["--otlp-endpoint", &endpoint, "--otlp-protocol", "http/json"],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let b = broker.address.clone();
    let client = common::admin_client();
    let files = tempfile::tempdir().unwrap();
    let blend = files.path().join("scene.blend");
    renderfarm_worker::blender::scene::make_scene(
        &blender,
        &blend,
        renderfarm_worker::blender::scene::SceneSpec::tiny(2),
    )
    .await
    .unwrap();
    let render = send_json(&client, Method::POST, format!("{b}/renders"),
        &json!({"name": "traced", "blend_file": blend, "frame_start": 1, "frame_end": 2, "chunk_size": 2})).await;
    let agent = common::TestAgent::start(&b, "tracer", &blender).await;
    let id = render["id"].as_str().unwrap();
    wait_for(
        "the render to complete",
        Duration::from_secs(120),
        || async {
            let r = common::get_json(&client, format!("{b}/renders/{id}")).await;
            (r["status"] == "completed").then_some(())
        },
    )
    .await;
    agent.stop().await;

    // The claim that handed out the chunk, the progress reports and the
    // completion: children of request spans whose parent is the agent's,
    // all in one trace the agent began.
    let claim = wait_for("the claim's span", Duration::from_secs(15), || async {
        receiver
            .named("claim")
            .into_iter()
            .find(|s| attribute(s, "render_id").and_then(|v| v["stringValue"].as_str()) == Some(id))
    })
    .await;
    let trace = claim["traceId"].clone();
    let complete = wait_for(
        "the completion in the same trace",
        Duration::from_secs(15),
        || async {
            receiver
                .named("POST /tasks/{id}/complete")
                .into_iter()
                .find(|s| s["traceId"] == trace)
        },
    )
    .await;
    let claim_request = receiver
        .named("POST /workers/{id}/request-task")
        .into_iter()
        .find(|s| s["spanId"] == claim["parentSpanId"])
        .expect("the claim's request span");
    let agent_span = claim_request["parentSpanId"].as_str().unwrap_or_default();
    assert!(
        !agent_span.is_empty()
            && receiver
                .spans
                .lock()
                .unwrap()
                .iter()
                .all(|s| s["spanId"] != agent_span),
        "the request's parent is the agent's span, which the broker did not make: {claim_request}"
    );
    assert_eq!(complete["parentSpanId"], claim_request["parentSpanId"]);
    assert!(
        receiver
            .named("report")
            .iter()
            .filter(|s| s["traceId"] == trace)
            .count()
            >= 1
    );
    drop(broker);
    handle.stop(true).await;
}
