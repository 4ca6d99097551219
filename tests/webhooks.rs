//! Webhooks end to end: real broker processes POST to a receiver in this
//! test (an actix-web server on 127.0.0.1, so the brokers run with
//! `--webhooks-allow-private` unless the test is about refusing it). The
//! receiver verifies every signature with the secret the broker showed and
//! dedups by idempotency id, as a real receiver would.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use common::{wait_for, BrokerProcess as Broker};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Notify;

/// What the receiver does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    /// Answers 500 to everything.
    Fail,
    /// Holds the first request open until released, then accepts.
    HoldFirst,
}

/// One request as the receiver got it.
#[derive(Debug, Clone)]
struct Hit {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    /// The first request arrived (`HoldFirst`).
    holding: Arc<Notify>,
    release: Arc<Notify>,
    server: actix_web::dev::ServerHandle,
}

impl Receiver {
    fn start(mode: Mode) -> Receiver {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let holding = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = (hits.clone(), holding.clone(), release.clone());
        let server = HttpServer::new(move || {
            let (hits, holding, release) = state.clone();
            App::new().route(
                "/hook",
                web::post().to(move |req: HttpRequest, body: web::Bytes| {
                    let (hits, holding, release) = (hits.clone(), holding.clone(), release.clone());
                    async move {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string()
                        };
                        let first = {
                            let mut hits = hits.lock().unwrap();
                            hits.push(Hit {
                                id: header("Renderfarm-Webhook-Id"),
                                timestamp: header("Renderfarm-Webhook-Timestamp"),
                                signature: header("Renderfarm-Signature"),
                                body: body.to_vec(),
                            });
                            hits.len() == 1
                        };
                        match mode {
                            Mode::Fail => HttpResponse::InternalServerError().finish(),
                            Mode::HoldFirst if first => {
                                holding.notify_one();
                                release.notified().await;
                                HttpResponse::NoContent().finish()
                            }
                            _ => HttpResponse::NoContent().finish(),
                        }
                    }
                }),
            )
        })
        .workers(2)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            hits,
            holding,
            release,
            server: handle,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// The distinct deliveries by idempotency id, each checked against
    /// `secret` as a receiver must.
    fn deduplicated(&self, secret: &str) -> BTreeMap<String, Value> {
        let mut seen = BTreeMap::new();
        for hit in self.hits() {
            assert_signed(&hit, secret);
            let body = hit.json();
            assert_eq!(body["id"], hit.id, "the header names the body's id");
            seen.entry(hit.id.clone()).or_insert(body);
        }
        seen
    }
}

/// Verifies a delivery as the README tells receivers to.
fn assert_signed(hit: &Hit, secret: &str) {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(hit.timestamp.as_bytes());
    mac.update(b".");
    mac.update(&hit.body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(hit.signature, expected, "signature of delivery {}", hit.id);
    let at: i64 = hit.timestamp.parse().expect("a Unix time");
    assert!(
        (chrono::Utc::now().timestamp() - at).abs() < 300,
        "a timestamp of now"
    );
}

async fn call(
    client: &reqwest::Client,
    method: Method,
    url: String,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = common::with_credential(client.request(method.clone(), &url), &method, &url);
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap();
    let answer = serde_json::from_str(&text).unwrap_or(Value::Null);
    common::learn(&url, &answer);
    (status, answer)
}

async fn register(
    client: &reqwest::Client,
    broker: &str,
    url: &str,
    events: &[&str],
) -> (String, String) {
    let (status, hook) = call(
        client,
        Method::POST,
        format!("{broker}/webhooks"),
        json!({"url": url, "events": events, "description": "test"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let secret = hook["secret"]
        .as_str()
        .expect("the secret, shown once")
        .to_string();
    assert!(secret.starts_with("whsec_"));
    (hook["id"].as_str().unwrap().to_string(), secret)
}

async fn submit_and_cancel(client: &reqwest::Client, broker: &str, name: &str) -> String {
    let (status, render) = call(
        client,
        Method::POST,
        format!("{broker}/renders"),
        json!({"name": name, "blend_file": "/p/a.blend", "frame_start": 1, "frame_end": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{render}");
    let id = render["id"].as_str().unwrap().to_string();
    let (status, answer) = call(
        client,
        Method::PUT,
        format!("{broker}/renders/{id}/status"),
        json!({"action": "cancel"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    id
}

/// Waits until the broker's store answers (a MongoDB broker connects in the
/// background).
async fn ready(client: &reqwest::Client, broker: &str) {
    wait_for("the broker ready", Duration::from_secs(30), || async {
        let response = client.get(format!("{broker}/ready")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
}

async fn webhook(client: &reqwest::Client, broker: &str, id: &str) -> Value {
    let (status, hook) = call(
        client,
        Method::GET,
        format!("{broker}/webhooks/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{hook}");
    hook
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_with_the_secret_shown_once_and_carry_what_happened() {
    let receiver = Receiver::start(Mode::Accept);
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(
        dir.path(),
        "127.0.0.1:0",
        &["--webhooks-allow-private", "--worker-timeout", "1s"],
    );
    let b = broker.address.as_str();
    let client = common::admin_client();
    let (hook_id, secret) = register(
        &client,
        b,
        &receiver.url,
        &["render.canceled", "task.failed", "worker.lost"],
    )
    .await;
    let shown = webhook(&client, b, &hook_id).await;
    assert!(
        shown.get("secret").is_none(),
        "the secret is shown only once: {shown}"
    );
    assert_eq!(shown["status"], "active");
    let (_, listed) = call(&client, Method::GET, format!("{b}/webhooks"), Value::Null).await;
    assert!(listed.to_string().contains(&hook_id) && !listed.to_string().contains(&secret));

    let render = submit_and_cancel(&client, b, "canceled").await;
    // A task fails on a worker, which is then lost.
    let (_, other) = call(&client, Method::POST, format!("{b}/renders"), json!({"name": "failing", "blend_file": "/p/f.blend", "frame_start": 1, "frame_end": 1, "max_retries": 0})).await;
    let (status, worker) = call(
        &client,
        Method::POST,
        format!("{b}/workers"),
        json!({"name": "w1"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{worker}");
    let worker_id = worker["id"].as_str().unwrap().to_string();
    let (_, task) = call(
        &client,
        Method::POST,
        format!("{b}/workers/{worker_id}/request-task"),
        Value::Null,
    )
    .await;
    let task_id = task["task_id"].as_str().expect("a task").to_string();
    let (status, failed) = call(&client, Method::POST, format!("{b}/tasks/{task_id}/fail"), json!({"lease_id": task["lease_id"], "exit_code": 1, "reason": "Build without OpenImageDenoiser"})).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = call(
        &client,
        Method::POST,
        format!("{b}/scheduler/run"),
        Value::Null,
    )
    .await;
    assert!(status.is_success());

    let got = wait_for("three deliveries", Duration::from_secs(30), || async {
        let got = receiver.deduplicated(&secret);
        (got.len() >= 3).then_some(got)
    })
    .await;
    let by_type: BTreeMap<String, Value> = got
        .values()
        .map(|b| (b["type"].as_str().unwrap().to_string(), b.clone()))
        .collect();
    assert_eq!(
        by_type.keys().cloned().collect::<Vec<_>>(),
        ["render.canceled", "task.failed", "worker.lost"],
        "{got:#?}"
    );
    let canceled = &by_type["render.canceled"];
    assert_eq!(canceled["data"]["render_id"], render.as_str());
    assert_eq!(canceled["data"]["status"], "canceled");
    assert_eq!(canceled["data"]["render"]["name"], "canceled");
    let failed = &by_type["task.failed"];
    assert_eq!(failed["data"]["task_id"], task_id.as_str());
    assert_eq!(failed["data"]["render_id"], other["id"]);
    assert_eq!(failed["data"]["task"]["status"], "failed");
    let lost = &by_type["worker.lost"];
    assert_eq!(lost["data"]["worker_id"], worker_id.as_str());
    assert_eq!(lost["data"]["worker"]["status"], "offline");
    for body in got.values() {
        assert!(body["created_at"].as_str().is_some());
    }
    let shown = webhook(&client, b, &hook_id).await;
    assert_eq!(shown["last_outcome"], "HTTP 204");
    assert_eq!(
        shown["deliveries"],
        json!({"pending": 0, "delivered": 3, "failed": 0})
    );
    receiver.server.stop(false).await;
}

/// Kills the broker while the receiver holds the first delivery open, and
/// starts it again on the same store: every event is delivered, exactly
/// one idempotency id per event (the held one may arrive twice).
async fn killed_mid_delivery(data_dir: &Path, store: &[&str]) {
    let receiver = Receiver::start(Mode::HoldFirst);
    let client = common::admin_client();
    let mut args = vec!["--webhooks-allow-private"];
    args.extend_from_slice(store);
    let broker = Broker::start_with(data_dir, "127.0.0.1:0", &args);
    let b = broker.address.clone();
    ready(&client, &b).await;
    let (hook_id, secret) = register(&client, &b, &receiver.url, &["render.canceled"]).await;
    let mut renders = BTreeSet::new();
    for name in ["one", "two", "three"] {
        renders.insert(submit_and_cancel(&client, &b, name).await);
    }
    tokio::time::timeout(Duration::from_secs(30), receiver.holding.notified())
        .await
        .expect("the first delivery arrives");
    broker.kill_9();
    receiver.release.notify_one();

    let broker = Broker::start_with(data_dir, "127.0.0.1:0", &args);
    let b = broker.address.clone();
    ready(&client, &b).await;
    let got = wait_for(
        "every delivery after the restart",
        Duration::from_secs(60),
        || async {
            let got = receiver.deduplicated(&secret);
            let hook = webhook(&client, &b, &hook_id).await;
            (hook["deliveries"]["delivered"] == 3 && got.len() >= 3).then_some(got)
        },
    )
    .await;
    let delivered: BTreeSet<String> = got
        .values()
        .map(|body| body["data"]["render_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered, renders, "every canceled render told");
    assert_eq!(got.len(), 3, "one idempotency id per event: {got:#?}");
    let hits = receiver.hits();
    assert!(
        hits.len() >= 4,
        "the held delivery was sent again after the restart ({} requests)",
        hits.len()
    );
    // Nothing more comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.deduplicated(&secret).len(), 3);
    let hook = webhook(&client, &b, &hook_id).await;
    assert_eq!(
        hook["deliveries"],
        json!({"pending": 0, "delivered": 3, "failed": 0})
    );
    receiver.server.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_delivery_delivers_every_event_once_per_id_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    killed_mid_delivery(dir.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_broker_killed_mid_delivery_delivers_every_event_once_per_id_after_restart() {
    let Some(mongo) = renderfarm_testkit::mongodb_for_tests("webhooks after kill -9") else {
        return;
    };
    let database = format!("webhooks_{}", uuid::Uuid::new_v4().simple());
    let uri = format!("{}/{database}", mongo.uri().trim_end_matches('/'));
    let dir = tempfile::tempdir().unwrap();
    killed_mid_delivery(dir.path(), &["--store", &uri]).await;
    if let Ok(store) =
        renderfarm::store::mongodb::MongoStore::connect(mongo.uri(), Some(&database)).await
    {
        let _ = store.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_then_disabled_until_enabled_again() {
    let receiver = Receiver::start(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    // The test's schedule: two retries a second apart (a whole window of 2 s).
    let broker = Broker::start_with(
        dir.path(),
        "127.0.0.1:0",
        &[
            "--webhooks-allow-private",
            "--webhooks-retry-schedule",
            "1s,1s",
        ],
    );
    let b = broker.address.as_str();
    let client = common::admin_client();
    let (hook_id, secret) = register(&client, b, &receiver.url, &["render.canceled"]).await;
    submit_and_cancel(&client, b, "unheard").await;
    let hook = wait_for("the webhook disabled", Duration::from_secs(30), || async {
        let hook = webhook(&client, b, &hook_id).await;
        (hook["status"] == "disabled").then_some(hook)
    })
    .await;
    let reason = hook["disabled_reason"].as_str().unwrap();
    assert!(
        reason.contains("HTTP 500") && reason.contains("/enable"),
        "{reason}"
    );
    assert_eq!(hook["last_outcome"], "HTTP 500");
    assert_eq!(hook["consecutive_failures"], 3);
    assert_eq!(
        hook["deliveries"],
        json!({"pending": 0, "delivered": 0, "failed": 1})
    );
    let hits = receiver.hits();
    assert_eq!(hits.len(), 3, "one attempt and two retries");
    assert!(
        hits.iter().all(|h| h.id == hits[0].id),
        "the same idempotency id on every attempt"
    );
    assert_eq!(receiver.deduplicated(&secret).len(), 1);
    let metrics = client
        .get(format!("{b}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (outcome, n) in [("retrying", 2), ("given_up", 1), ("delivered", 0)] {
        let line =
            format!("renderfarm_webhook_delivery_attempts_total{{outcome=\"{outcome}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // Disabled: nothing more is queued or sent.
    submit_and_cancel(&client, b, "not queued").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.hits().len(), 3);
    let hook = webhook(&client, b, &hook_id).await;
    assert_eq!(hook["deliveries"]["pending"], 0);

    let (status, enabled) = call(
        &client,
        Method::POST,
        format!("{b}/webhooks/{hook_id}/enable"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert_eq!(enabled["status"], "active");
    assert_eq!(enabled["disabled_reason"], Value::Null);
    assert_eq!(enabled["consecutive_failures"], 0);
    receiver.server.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_the_brokers_own_network_are_refused_at_registration_and_delivery() {
    let receiver = Receiver::start(Mode::Accept);
    let dir = tempfile::tempdir().unwrap();
    let client = common::admin_client();
    let broker = Broker::start(dir.path(), "127.0.0.1:0");
    let b = broker.address.clone();
    for (url, says) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.0.0.7/hook", "private"),
        ("http://192.168.1.20:8080/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fd12::1]/", "private"),
        ("http://0.0.0.0:80/", "unspecified"),
        ("ftp://hooks.example.com/x", "scheme"),
        ("not a url", "not a URL"),
    ] {
        let (status, error) = call(
            &client,
            Method::POST,
            format!("{b}/webhooks"),
            json!({"url": url, "events": ["render.failed"]}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {error}");
        assert_eq!(error["error"], "invalid_input");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(says), "{url}: {message}");
        if says != "scheme" && says != "not a URL" {
            assert!(message.contains("--webhooks-allow-private"), "{message}");
        }
    }
    let (status, error) = call(
        &client,
        Method::POST,
        format!("{b}/webhooks"),
        json!({"url": "https://hooks.example.com/x", "events": ["render.done", "render.failed"]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("\"render.done\"") && message.contains("worker.lost"),
        "{message}"
    );
    let (status, _) = call(
        &client,
        Method::POST,
        format!("{b}/webhooks"),
        json!({"url": "https://hooks.example.com/x", "events": []}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, none) = call(&client, Method::GET, format!("{b}/webhooks"), Value::Null).await;
    assert_eq!(
        (status, none),
        (StatusCode::OK, json!([])),
        "nothing half-stored"
    );
    drop(broker);

    // Registered where private addresses were allowed, then the broker
    // restarted without: the delivery is refused before connecting.
    let allowed = Broker::start_with(dir.path(), "127.0.0.1:0", &["--webhooks-allow-private"]);
    let (hook_id, _) = register(
        &client,
        &allowed.address,
        &receiver.url,
        &["render.canceled"],
    )
    .await;
    drop(allowed);
    let strict = Broker::start(dir.path(), "127.0.0.1:0");
    submit_and_cancel(&client, &strict.address, "refused").await;
    let hook = wait_for("a refused attempt", Duration::from_secs(30), || async {
        let hook = webhook(&client, &strict.address, &hook_id).await;
        hook["last_outcome"].as_str().is_some().then_some(hook)
    })
    .await;
    let outcome = hook["last_outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("refused:") && outcome.contains("loopback"),
        "{outcome}"
    );
    assert!(receiver.hits().is_empty(), "nothing reached the receiver");
    receiver.server.stop(false).await;
}
