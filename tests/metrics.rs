//! `/metrics`: who may read it, that every metric moves, that Debian's
//! `promtool` accepts the exposition, and that a real Prometheus scraping a
//! farm of real agents answers PromQL with the numbers the API shows.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{get_json, send_json, wait_for, BrokerProcess, TestAgent};
use reqwest::Method;
use serde_json::{json, Value};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client without credentials (as Prometheus is).
fn anonymous_client() -> reqwest::Client {
    renderfarm_client::http_client_builder()
        .build()
        .expect("a client")
}

/// A broker with `/metrics` also on a port of its own; that port's URL.
fn broker_with_metrics(dir: &Path) -> (BrokerProcess, String) {
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let broker = BrokerProcess::start_with(dir, "127.0.0.1:0", &["--metrics-bind", &bind]);
    (broker, format!("http://{bind}/metrics"))
}

/// The exposition as Prometheus asks for it (OpenMetrics).
async fn exposition(url: &str) -> String {
    exposition_as(
        url,
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        "application/openmetrics-text",
    )
    .await
}

async fn exposition_as(url: &str, accept: &str, content_type: &str) -> String {
    let response = anonymous_client()
        .get(url)
        .header(reqwest::header::ACCEPT, accept)
        .send()
        .await
        .expect("the metrics answer");
    assert_eq!(response.status(), 200, "{url}");
    let got = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(got.starts_with(content_type), "{got}");
    response.text().await.unwrap()
}

/// The samples of an exposition: `name{labels}` (labels sorted) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let mut labels: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
                labels.sort();
                (name, labels.join(","))
            }
            None => (series, String::new()),
        };
        out.insert(
            format!("{name}{{{labels}}}"),
            value.parse().expect("a number"),
        );
    }
    out
}

/// The value of one series, 0 when absent: `series` as `samples` keys it.
fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

async fn register(client: &reqwest::Client, broker: &str, name: &str) -> String {
    let worker = send_json(
        client,
        Method::POST,
        format!("{broker}/workers"),
        &json!({ "name": name }),
    )
    .await;
    worker["id"].as_str().unwrap().to_string()
}

async fn claim(client: &reqwest::Client, broker: &str, worker: &str) -> Value {
    send_json(
        client,
        Method::POST,
        format!("{broker}/workers/{worker}/request-task"),
        &json!({}),
    )
    .await
}

#[tokio::test]
async fn metrics_need_a_viewer_token_except_on_the_metrics_address() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics_url) = broker_with_metrics(dir.path());
    let b = broker.address.as_str();
    let anonymous = anonymous_client();
    let refused = anonymous.get(format!("{b}/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("token"),
        "{body}"
    );

    let viewer = send_json(
        &common::admin_client(),
        Method::POST,
        format!("{b}/tokens"),
        &json!({"name": "prometheus", "role": "viewer"}),
    )
    .await;
    let with_token = anonymous
        .get(format!("{b}/metrics"))
        .bearer_auth(viewer["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    assert!(with_token
        .text()
        .await
        .unwrap()
        .contains("renderfarm_http_requests_total"));

    // The separate address needs none, and serves nothing else.
    assert!(exposition(&metrics_url).await.ends_with("# EOF\n"));
    let other = anonymous
        .get(metrics_url.replace("/metrics", "/renders"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_with_what_the_farm_does() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics_url) = broker_with_metrics(dir.path());
    let b = broker.address.as_str();
    let client = common::admin_client();
    wait_for(
        "the broker to lead its scheduler",
        Duration::from_secs(10),
        || async {
            let s = samples(&exposition(&metrics_url).await);
            (value(&s, "renderfarm_scheduler_leader{}") == 1.0).then_some(())
        },
    )
    .await;
    let before = samples(&exposition(&metrics_url).await);

    // Two renders: one any worker takes, one that needs a GPU nobody has.
    let plain = send_json(&client, Method::POST, format!("{b}/renders"),
        &json!({"name": "plain", "blend_file": "/p/a.blend", "frame_start": 1, "frame_end": 3, "chunk_size": 1, "max_retries": 1})).await;
    send_json(&client, Method::POST, format!("{b}/renders"),
        &json!({"name": "gpu", "blend_file": "/p/g.blend", "frame_start": 1, "frame_end": 2, "chunk_size": 1, "priority": "high", "tags": ["gpu"]})).await;
    let worker = register(&client, b, "w1").await;

    // Claims and reports, a good one, a failure and a stale one.
    let first = claim(&client, b, &worker).await;
    let task = first["task_id"].as_str().unwrap();
    send_json(
        &client,
        Method::POST,
        format!("{b}/tasks/{task}/progress"),
        &json!({"lease_id": first["lease_id"], "frames_done": 1}),
    )
    .await;
    send_json(
        &client,
        Method::POST,
        format!("{b}/tasks/{task}/complete"),
        &json!({"lease_id": first["lease_id"]}),
    )
    .await;
    let second = claim(&client, b, &worker).await;
    let task2 = second["task_id"].as_str().unwrap();
    send_json(
        &client,
        Method::POST,
        format!("{b}/tasks/{task2}/fail"),
        &json!({"lease_id": second["lease_id"], "exit_code": 1, "reason": "Blender exited with 1"}),
    )
    .await;
    // A stale report: a store error of its kind.
    let stale = common::with_credential(
        client.post(format!("{b}/tasks/{task}/progress")),
        &Method::POST,
        &format!("{b}/tasks/{task}/progress"),
    )
    .json(&json!({"lease_id": uuid::Uuid::new_v4(), "frames_done": 1}))
    .send()
    .await
    .unwrap();
    assert_eq!(stale.status(), 409);
    // The tick retries the failed task.
    send_json(
        &client,
        Method::POST,
        format!("{b}/scheduler/run"),
        &json!({}),
    )
    .await;

    let after = samples(&exposition(&metrics_url).await);
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        moved(r#"renderfarm_http_requests_total{method="POST",route="/renders",status="202"}"#),
        2.0
    );
    assert!(
        moved(
            r#"renderfarm_http_request_duration_seconds_count{method="POST",route="/workers/{id}/request-task"}"#
        ) >= 2.0
    );
    assert!(moved("renderfarm_claim_duration_seconds_count{}") >= 2.0);
    for report in ["progress", "complete", "fail"] {
        assert!(
            moved(&format!(
                r#"renderfarm_report_duration_seconds_count{{report="{report}"}}"#
            )) >= 1.0,
            "{report}"
        );
    }
    assert_eq!(
        moved(r#"renderfarm_store_errors_total{kind="stale_lease"}"#),
        1.0
    );
    assert!(moved("renderfarm_scheduler_tick_duration_seconds_count{}") >= 1.0);
    assert_eq!(
        moved(r#"renderfarm_scheduler_actions_total{action="retried"}"#),
        1.0
    );

    // The farm's gauges are what the API shows.
    let render = get_json(
        &client,
        format!("{b}/renders/{}", plain["id"].as_str().unwrap()),
    )
    .await;
    let progress = &render["progress"];
    assert_eq!(
        value(
            &after,
            r#"renderfarm_tasks{priority="normal",status="completed"}"#
        ),
        progress["tasks_completed"].as_f64().unwrap()
    );
    assert_eq!(
        value(
            &after,
            r#"renderfarm_tasks{priority="normal",status="pending"}"#
        ),
        progress["tasks_pending"].as_f64().unwrap()
    );
    assert_eq!(
        value(&after, r#"renderfarm_queue_depth{priority="high"}"#),
        2.0
    );
    assert_eq!(
        value(&after, r#"renderfarm_renders{status="rendering"}"#),
        1.0
    );
    assert_eq!(
        value(&after, r#"renderfarm_workers{status="idle",tags=""}"#),
        1.0
    );
    // The idle worker covers one plain task; nobody can take the GPU work.
    assert_eq!(
        value(
            &after,
            r#"renderfarm_workers_wanted{kind="blender",tags="gpu"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &after,
            r#"renderfarm_workers_wanted{kind="blender",tags=""}"#
        ),
        progress["tasks_pending"].as_f64().unwrap() - 1.0
    );

    // Outside its hours the idle worker takes nothing, so it covers nothing:
    // the plain work wants one more worker. (Two days on from today in UTC
    // never covers now, even if the date changes mid-test.)
    let off = {
        use chrono::Datelike as _;
        const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        DAYS[(chrono::Utc::now().weekday().num_days_from_monday() as usize + 2) % 7]
    };
    let hours = send_json(
        &client,
        Method::PUT,
        format!("{b}/workers/{worker}/availability"),
        &json!({ "available": off }),
    )
    .await;
    assert_eq!(hours["availability"]["available_now"], false, "{hours}");
    let off_hours = samples(&exposition(&metrics_url).await);
    assert_eq!(
        value(&off_hours, r#"renderfarm_workers{status="idle",tags=""}"#),
        1.0
    );
    assert_eq!(
        value(
            &off_hours,
            r#"renderfarm_workers_wanted{kind="blender",tags=""}"#
        ),
        progress["tasks_pending"].as_f64().unwrap()
    );
    send_json(
        &client,
        Method::DELETE,
        format!("{b}/workers/{worker}/availability"),
        &json!({}),
    )
    .await;

    // A long poll with nothing for it shows while it waits.
    let gpu_less = register(&client, b, "w2").await;
    send_json(
        &client,
        Method::PUT,
        format!("{b}/workers/{worker}/status"),
        &json!({"action": "disable"}),
    )
    .await;
    for render in get_json(&client, format!("{b}/renders")).await["items"]
        .as_array()
        .unwrap()
    {
        send_json(
            &client,
            Method::PUT,
            format!("{b}/renders/{}/status", render["id"].as_str().unwrap()),
            &json!({"action": "pause"}),
        )
        .await;
    }
    let url = format!("{b}/workers/{gpu_less}/request-task?wait=5");
    let waiting = tokio::spawn(
        common::with_credential(client.post(&url), &Method::POST, &url)
            .json(&json!({}))
            .send(),
    );
    wait_for("the long poll to show", Duration::from_secs(4), || async {
        let s = samples(&exposition(&metrics_url).await);
        (value(&s, "renderfarm_long_polls_waiting{}") == 1.0).then_some(())
    })
    .await;
    assert_eq!(waiting.await.unwrap().unwrap().status(), 204);
    let s = samples(&exposition(&metrics_url).await);
    assert_eq!(value(&s, "renderfarm_long_polls_waiting{}"), 0.0);
}

/// Debian's `promtool`, or `None` after a visible SKIPPED line; with
/// `RENDERFARM_REQUIRE_PROMETHEUS=1` (CI) a missing one fails the test.
fn prometheus_tool_or_skip(test: &str, tool: &str) -> Option<PathBuf> {
    let path = PathBuf::from(tool);
    match Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => Some(path),
        other => {
            let problem = format!("cannot run `{tool} --version`: {other:?}");
            if std::env::var("RENDERFARM_REQUIRE_PROMETHEUS").as_deref() == Ok("1") {
                panic!("{test}: Prometheus is required (RENDERFARM_REQUIRE_PROMETHEUS=1) but {problem}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test}: {problem}; install it with `apt-get install prometheus`"
            );
            None
        }
    }
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let Some(promtool) = prometheus_tool_or_skip("promtool", "promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics_url) = broker_with_metrics(dir.path());
    let client = common::admin_client();
    send_json(&client, Method::POST, format!("{}/renders", broker.address),
        &json!({"name": "a", "blend_file": "/p/a.blend", "frame_start": 1, "frame_end": 2, "tags": ["gpu"]})).await;
    // As a reader that does not ask for OpenMetrics gets it.
    let text = wait_for("the farm's gauges", Duration::from_secs(10), || async {
        let text = exposition_as(&metrics_url, "*/*", "text/plain; version=0.0.4").await;
        text.contains("renderfarm_workers_wanted").then_some(text)
    })
    .await;
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus server of its own, scraping `target` every second.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: renderfarm\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The value of a PromQL query that answers one number.
    async fn number(&self, query: &str) -> Option<f64> {
        let answer: Value = anonymous_client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_the_queue_and_the_completed_count_the_api_shows() {
    let Some(prometheus) = prometheus_tool_or_skip("prometheus", "prometheus") else {
        return;
    };
    let Some(blender) = common::blender_or_skip("prometheus").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, metrics_url) = broker_with_metrics(dir.path());
    let b = broker.address.clone();
    let client = common::admin_client();
    let files = tempfile::tempdir().unwrap();
    let blend = files.path().join("scene.blend");
    renderfarm_worker::blender::scene::make_scene(
        &blender,
        &blend,
        renderfarm_worker::blender::scene::SceneSpec::tiny(6),
    )
    .await
    .unwrap();
    let target = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let prometheus = Prometheus::start(&prometheus, &target);

    // Work for the agents, and work none of them can take (it needs a GPU).
    let render = send_json(&client, Method::POST, format!("{b}/renders"),
        &json!({"name": "shot", "blend_file": blend, "frame_start": 1, "frame_end": 6, "chunk_size": 2})).await;
    send_json(&client, Method::POST, format!("{b}/renders"),
        &json!({"name": "gpu", "blend_file": blend, "frame_start": 1, "frame_end": 3, "chunk_size": 1, "tags": ["gpu"]})).await;
    let agents = [
        TestAgent::start(&b, "a1", &blender).await,
        TestAgent::start(&b, "a2", &blender).await,
    ];
    let id = render["id"].as_str().unwrap();
    wait_for(
        "the render to complete",
        Duration::from_secs(120),
        || async {
            let r = get_json(&client, format!("{b}/renders/{id}")).await;
            (r["status"] == "completed").then_some(())
        },
    )
    .await;
    let completed = get_json(&client, format!("{b}/renders/{id}")).await["progress"]
        ["tasks_completed"]
        .as_f64()
        .unwrap();
    let queue = get_json(&client, format!("{b}/renders?status=queued")).await["items"][0]
        ["progress"]["tasks_pending"]
        .as_f64()
        .unwrap();
    // Prometheus scrapes once a second: wait for a scrape after the end.
    wait_for(
        "Prometheus to see the finished render",
        Duration::from_secs(30),
        || async {
            let done = prometheus
                .number(r#"sum(renderfarm_tasks{status="completed"})"#)
                .await?;
            let depth = prometheus.number("sum(renderfarm_queue_depth)").await?;
            (done == completed && depth == queue).then_some(())
        },
    )
    .await;
    assert_eq!(
        prometheus
            .number(r#"sum(renderfarm_workers_wanted{tags="gpu"})"#)
            .await,
        Some(queue)
    );
    assert!(
        prometheus
            .number(r#"sum(renderfarm_claim_duration_seconds_count)"#)
            .await
            .unwrap_or(0.0)
            >= 3.0
    );
    for agent in agents {
        agent.stop().await;
    }
}
