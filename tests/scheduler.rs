//! The scheduler's stories end to end over HTTP. Time is a manual clock the
//! tests move forward; ticks run through `POST /scheduler/run` or the
//! scheduler's own hook, never by waiting.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use renderfarm::clock::ManualClock;
use renderfarm::scheduler::{Scheduler, SchedulerSettings};
use renderfarm::startup::{Application, Settings, StoreChoice};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Farm {
    address: String,
    client: reqwest::Client,
    clock: Arc<ManualClock>,
    scheduler: Arc<Scheduler>,
    handle: actix_web::dev::ServerHandle,
}

fn start_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

impl Farm {
    async fn start(data_dir: &std::path::Path, clock: Arc<ManualClock>) -> Farm {
        Farm::start_with(data_dir, clock, SchedulerSettings::default()).await
    }

    /// A farm whose scheduler has `scheduler`'s settings, ticked by hand.
    async fn start_with(
        data_dir: &std::path::Path,
        clock: Arc<ManualClock>,
        scheduler: SchedulerSettings,
    ) -> Farm {
        let mut settings = Settings::new("127.0.0.1:0", data_dir, StoreChoice::Embedded);
        // The scheduler's stories, told by one trusted caller: who may do
        // what is the API tests' subject (tests/api/auth.rs).
        settings.auth = renderfarm::api::auth::AuthMode::Off;
        settings.scheduler = SchedulerSettings {
            periodic: false,
            ..scheduler
        };
        let app = Application::build_with_clock(settings, clock.clone())
            .await
            .unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        let scheduler = app.scheduler();
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        Farm {
            address,
            client: renderfarm_client::http_client_builder().build().unwrap(),
            clock,
            scheduler,
            handle,
        }
    }

    async fn fresh() -> (Farm, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let farm = Farm::start(dir.path(), Arc::new(ManualClock::new(start_time()))).await;
        (farm, dir)
    }

    fn advance(&self, seconds: i64) {
        self.clock.advance(Duration::seconds(seconds));
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(reqwest::Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn submit(
        &self,
        name: &str,
        frames: i64,
        chunk: i64,
        priority: &str,
        max_retries: i64,
    ) -> String {
        let body = json!({
            "name": name, "blend_file": format!("/p/{name}.blend"),
            "frame_start": 1, "frame_end": frames, "chunk_size": chunk,
            "priority": priority, "max_retries": max_retries,
        });
        let (status, render) = self.post("/renders", body).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        render["id"].as_str().unwrap().to_string()
    }

    async fn register(&self, name: &str) -> String {
        let (status, worker) = self.post("/workers", json!({ "name": name })).await;
        assert_eq!(status, StatusCode::CREATED);
        worker["id"].as_str().unwrap().to_string()
    }

    async fn claim(&self, worker: &str) -> Option<Value> {
        let (status, body) = self
            .post(&format!("/workers/{worker}/request-task"), Value::Null)
            .await;
        match status {
            StatusCode::OK => Some(body),
            StatusCode::NO_CONTENT => None,
            other => panic!("request-task answered {other}: {body}"),
        }
    }

    async fn heartbeat(&self, worker: &str, a: &Value) -> String {
        let body = json!({ "task_id": a["task_id"], "lease_id": a["lease_id"] });
        let (status, reply) = self
            .post(&format!("/workers/{worker}/heartbeat"), body)
            .await;
        assert_eq!(status, StatusCode::OK);
        reply["action"].as_str().unwrap().to_string()
    }

    async fn report(&self, a: &Value, kind: &str, extra: Value) -> StatusCode {
        let mut body = json!({ "lease_id": a["lease_id"] });
        if let Value::Object(fields) = extra {
            for (k, v) in fields {
                body[k] = v;
            }
        }
        self.post(
            &format!("/tasks/{}/{kind}", a["task_id"].as_str().unwrap()),
            body,
        )
        .await
        .0
    }

    async fn tick(&self) -> Value {
        let (status, report) = self.post("/scheduler/run", Value::Null).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        report
    }

    async fn history(&self, task: &Value) -> Vec<(String, Option<String>)> {
        let detail = self
            .get(&format!("/tasks/{}", task["task_id"].as_str().unwrap()))
            .await;
        detail["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["event"].as_str().unwrap().to_string(),
                    h["worker_id"].as_str().map(str::to_string),
                )
            })
            .collect()
    }
}

fn counts(report: &Value) -> (i64, i64, i64, i64, i64) {
    let n = |k: &str| report[k].as_i64().unwrap();
    (
        n("requeued"),
        n("retried"),
        n("failed"),
        n("preempted"),
        n("workers_wanted"),
    )
}

#[tokio::test]
async fn a_worker_that_dies_mid_task_loses_it_and_another_worker_finishes_the_chunk() {
    let (farm, _dir) = Farm::fresh().await;
    let render = farm.submit("shot", 4, 4, "normal", 1).await;
    let dead = farm.register("dead").await;
    let a = farm.claim(&dead).await.unwrap();
    assert_eq!(
        counts(&farm.tick().await),
        (0, 0, 0, 0, 0),
        "nothing to do while it lives"
    );

    farm.advance(61);
    let rescuer = farm.register("rescuer").await;
    let report = farm.tick().await;
    assert_eq!(counts(&report), (1, 0, 0, 0, 0));
    assert_eq!(report["workers_lost"], 1);
    let workers = farm.get("/workers").await;
    assert_eq!(workers[0]["status"], "offline");
    let task = farm
        .get(&format!("/tasks/{}", a["task_id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (task["status"].as_str(), task["retries"].as_i64()),
        (Some("pending"), Some(0)),
        "not a failure"
    );

    let b = farm
        .claim(&rescuer)
        .await
        .expect("the chunk is claimable again");
    assert_eq!(b["task_id"], a["task_id"]);
    assert_eq!(farm.report(&b, "complete", json!({})).await, StatusCode::OK);
    assert_eq!(
        farm.get(&format!("/renders/{render}")).await["status"],
        "completed"
    );

    // The dead worker comes back: its lease is stale, its next request works.
    assert_eq!(
        farm.report(&a, "complete", json!({})).await,
        StatusCode::CONFLICT
    );
    assert_eq!(farm.heartbeat(&dead, &a).await, "abort");
    assert_eq!(farm.claim(&dead).await, None);
    assert_eq!(farm.get("/workers").await[0]["status"], "idle");
    let history = farm.history(&a).await;
    let events: Vec<&str> = history.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["assigned", "requeued", "assigned", "completed"]);
    assert_eq!(history[1].1.as_deref(), Some(dead.as_str()));
    assert_eq!(history[2].1.as_deref(), Some(rescuer.as_str()));
}

#[tokio::test]
async fn a_chunk_that_fails_twice_with_one_retry_ends_the_render_failed() {
    let (farm, _dir) = Farm::fresh().await;
    let render = farm.submit("flaky", 2, 1, "normal", 1).await;
    let w = farm.register("w").await;
    let first = farm.claim(&w).await.unwrap();
    let fail = json!({ "exit_code": 1, "reason": "Error: Build without OpenImageDenoiser" });
    assert_eq!(
        farm.report(&first, "fail", fail.clone()).await,
        StatusCode::OK
    );
    assert_eq!(counts(&farm.tick().await), (0, 1, 0, 0, 0));
    let retried = farm
        .get(&format!("/tasks/{}", first["task_id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (retried["status"].as_str(), retried["retries"].as_i64()),
        (Some("pending"), Some(1))
    );

    let second = farm.claim(&w).await.unwrap();
    assert_eq!(second["task_id"], first["task_id"]);
    assert_eq!(farm.report(&second, "fail", fail).await, StatusCode::OK);
    let failed = farm.get(&format!("/renders/{render}")).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["progress"]["tasks_canceled"], 1,
        "its pending chunk was canceled"
    );
    assert_eq!(counts(&farm.tick().await), (0, 0, 0, 0, 0), "no retry left");
    let events: Vec<String> = farm
        .history(&first)
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        events,
        ["assigned", "failed", "retried", "assigned", "failed"]
    );
}

#[tokio::test]
async fn urgent_work_preempts_the_most_recent_low_chunk_which_later_completes() {
    let (farm, _dir) = Farm::fresh().await;
    let low = farm.submit("background", 4, 1, "low", 1).await;
    let w1 = farm.register("w1").await;
    let w2 = farm.register("w2").await;
    let older = farm.claim(&w1).await.unwrap();
    farm.advance(10);
    let newer = farm.claim(&w2).await.unwrap();
    farm.advance(10);
    let urgent = farm.submit("fix", 1, 1, "urgent", 1).await;
    assert!(
        farm.claim(&farm.register("late").await).await.is_some(),
        "a third worker would simply take it"
    );
    let urgent2 = farm.submit("fix-2", 1, 1, "urgent", 1).await;

    let report = farm.tick().await;
    assert_eq!(counts(&report), (0, 0, 0, 1, 0));
    assert_eq!(
        farm.heartbeat(&w2, &newer).await,
        "abort",
        "the most recently started makes way"
    );
    assert_eq!(farm.heartbeat(&w1, &older).await, "continue");
    let taken = farm.claim(&w2).await.unwrap();
    assert_eq!(
        taken["render_id"].as_str(),
        Some(urgent2.as_str()),
        "the freed worker takes the urgent chunk"
    );
    assert_eq!(
        farm.report(&taken, "complete", json!({})).await,
        StatusCode::OK
    );
    assert_eq!(
        farm.get(&format!("/renders/{urgent2}")).await["status"],
        "completed"
    );
    assert_eq!(
        farm.get(&format!("/renders/{urgent}")).await["status"],
        "rendering"
    );

    // The low render carries on; the preempted chunk runs again and completes.
    assert_eq!(
        farm.report(&older, "complete", json!({})).await,
        StatusCode::OK
    );
    while farm.get(&format!("/renders/{low}")).await["status"] != "completed" {
        let a = farm.claim(&w1).await.expect("low work is left");
        assert_eq!(farm.report(&a, "complete", json!({})).await, StatusCode::OK);
    }
    let events: Vec<String> = farm
        .history(&newer)
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(events, ["assigned", "preempted", "assigned", "completed"]);
    let task = farm
        .get(&format!("/tasks/{}", newer["task_id"].as_str().unwrap()))
        .await;
    assert_eq!(task["retries"], 0, "preemption is not a failure");
}

#[tokio::test]
async fn high_work_waits_its_allowance_and_unmet_demand_is_counted() {
    let (farm, _dir) = Farm::fresh().await;
    farm.submit("normal", 2, 1, "normal", 1).await;
    let w1 = farm.register("w1").await;
    let w2 = farm.register("w2").await;
    farm.claim(&w1).await.unwrap();
    farm.claim(&w2).await.unwrap();
    farm.submit("high", 3, 1, "high", 1).await;
    assert_eq!(
        counts(&farm.tick().await),
        (0, 0, 0, 0, 0),
        "high waits two minutes first"
    );
    farm.advance(121);
    // Keep the workers alive past the wait.
    for w in [&w1, &w2] {
        let (status, _) = farm
            .post(&format!("/workers/{w}/heartbeat"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let report = farm.tick().await;
    assert_eq!(
        counts(&report),
        (0, 0, 0, 2, 1),
        "two chunks preempted, one more worker wanted"
    );
    let status = farm.get("/scheduler").await;
    assert_eq!(status["last_report"]["workers_wanted"], 1);
    assert_eq!(
        status["allowances"],
        json!({ "low": null, "normal": 1800.0, "high": 120.0, "urgent": 0.0 })
    );
}

#[tokio::test]
async fn two_brokers_on_one_store_elect_exactly_one_leader_and_the_other_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start_time()));
    let a = Farm::start(dir.path(), clock.clone()).await;
    let b = Farm::start(dir.path(), clock.clone()).await;
    a.scheduler.scheduled_tick().await;
    b.scheduler.scheduled_tick().await;
    let (sa, sb) = (a.get("/scheduler").await, b.get("/scheduler").await);
    assert_eq!(sa["is_leader"], true);
    assert_eq!(sb["is_leader"], false);
    assert_eq!(sa["leader"]["holder"], sa["instance"]);
    assert_eq!(
        sb["leader"]["holder"], sa["instance"],
        "both see the same leader"
    );
    assert_ne!(sa["instance"], sb["instance"]);
    assert!(sa["next_tick_at"].is_string());

    // A leader that dies without a word: its lease lapses after three ticks.
    a.advance(60);
    b.scheduler.scheduled_tick().await;
    assert_eq!(
        b.get("/scheduler").await["is_leader"],
        false,
        "not lapsed yet"
    );
    a.scheduler.scheduled_tick().await;
    a.advance(89);
    b.scheduler.scheduled_tick().await;
    assert_eq!(
        b.get("/scheduler").await["is_leader"],
        false,
        "a renewed the lease at +60s, until +150s"
    );
    a.advance(1);
    b.scheduler.scheduled_tick().await;
    assert_eq!(
        b.get("/scheduler").await["is_leader"],
        true,
        "taken over once lapsed"
    );
    a.scheduler.scheduled_tick().await;
    assert_eq!(
        a.get("/scheduler").await["is_leader"],
        false,
        "exactly one leader"
    );

    // A leader that stops hands over at the other's next tick.
    b.handle.stop(true).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    a.scheduler.scheduled_tick().await;
    assert_eq!(a.get("/scheduler").await["is_leader"], true);
}

#[tokio::test]
async fn finished_renders_are_deleted_once_they_ended_longer_ago_than_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let retention = SchedulerSettings {
        keep_finished: Some(Duration::days(7)),
        ..SchedulerSettings::default()
    };
    let farm = Farm::start_with(
        dir.path(),
        Arc::new(ManualClock::new(start_time())),
        retention,
    )
    .await;
    let done = farm.submit("done", 1, 1, "normal", 0).await;
    let waiting = farm.submit("waiting", 1, 1, "low", 0).await;
    let worker = farm.register("w").await;
    let task = farm.claim(&worker).await.unwrap();
    assert_eq!(task["render_id"], done.as_str());
    assert_eq!(
        farm.report(&task, "complete", json!({})).await,
        StatusCode::OK
    );

    farm.advance(6 * 24 * 3600);
    assert_eq!(farm.tick().await["purged"], 0, "six days: kept");
    farm.advance(2 * 24 * 3600);
    assert_eq!(farm.tick().await["purged"], 1, "eight days: deleted");
    let (status, _) = farm
        .send(reqwest::Method::GET, &format!("/renders/{done}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = farm
        .send(
            reqwest::Method::GET,
            &format!("/tasks/{}", task["task_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "its tasks went with it");
    assert_eq!(
        farm.get(&format!("/renders/{waiting}")).await["status"],
        "queued",
        "unfinished work stays"
    );
    assert_eq!(
        farm.get("/scheduler").await["keep_finished_seconds"],
        7.0 * 24.0 * 3600.0
    );
    farm.handle.stop(true).await;
}
