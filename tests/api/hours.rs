//! Workers' hours over HTTP: the agent reports them, operators set their own
//! (kept until cleared), a worker outside them takes nothing, a strict one
//! hands its task back at its next heartbeat; bad schedules and zones get a
//! 400 that says what to write.

use chrono::{Datelike, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_of, render_body, spawn_app, TestApp};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A whole day that is neither today nor yesterday in UTC (so neither it nor
/// the day before's range covers now, even if the date changes mid-test).
fn a_day_off() -> &'static str {
    let today = Utc::now().weekday().num_days_from_monday() as usize;
    DAYS[(today + 2) % 7]
}

async fn register_with(app: &TestApp, body: Value) -> String {
    let response = app.post_json("/workers", &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json_of(response).await["id"].as_str().unwrap().to_string()
}

async fn set_hours(app: &TestApp, worker: &str, available: &str) -> Value {
    let response = app
        .put_json(
            &format!("/workers/{worker}/availability"),
            &json!({ "available": available }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    json_of(response).await
}

async fn pending_claim(app: &TestApp, worker: &str) -> StatusCode {
    app.request_task(worker, Some(0.0)).await.status()
}

#[tokio::test]
async fn a_worker_outside_its_hours_takes_nothing_until_an_operator_s_hours_let_it() {
    let app = spawn_app().await;
    app.submit_ok(&render_body("night shot", 1, 2, 1, "normal"))
        .await;
    let off = a_day_off();
    let w = register_with(
        &app,
        json!({ "name": "studio-pc", "time_zone": "UTC", "available": off }),
    )
    .await;
    let shown = app.get(&format!("/workers/{w}")).await;
    let shown = json_of(shown).await;
    assert_eq!(shown["time_zone"], "UTC");
    assert_eq!(shown["availability"]["schedule"], off);
    assert_eq!(shown["availability"]["set_by"], "agent");
    assert_eq!(shown["availability"]["available_now"], false);
    assert!(shown["availability"]["next_change"].is_string());
    assert_eq!(
        pending_claim(&app, &w).await,
        StatusCode::NO_CONTENT,
        "outside its hours a worker takes nothing, though work waits"
    );

    let shown = set_hours(&app, &w, "always").await;
    assert_eq!(shown["availability"]["set_by"], "operator");
    assert_eq!(shown["availability"]["agent_schedule"], off);
    assert_eq!(shown["availability"]["available_now"], true);
    let first = app.claim_ok(&w).await;
    let done = app
        .report(
            first["task_id"].as_str().unwrap(),
            "complete",
            &json!({ "lease_id": first["lease_id"] }),
        )
        .await;
    assert_eq!(done.status(), StatusCode::OK);

    // The agent restarting and reporting its hours again changes nothing
    // while the operator's stand.
    let reported = app
        .put_json(
            &format!("/workers/{w}/hours"),
            &json!({ "time_zone": "Europe/Berlin", "available": off }),
        )
        .await;
    assert_eq!(reported.status(), StatusCode::OK);
    let reported = json_of(reported).await;
    assert_eq!(reported["time_zone"], "Europe/Berlin");
    assert_eq!(reported["availability"]["schedule"], "always");

    // Cleared: the agent's apply again.
    let cleared = app
        .raw(Method::DELETE, &format!("/workers/{w}/availability"), None)
        .await;
    assert_eq!(cleared.status(), StatusCode::OK);
    let cleared = json_of(cleared).await;
    assert_eq!(cleared["availability"]["set_by"], "agent");
    assert_eq!(pending_claim(&app, &w).await, StatusCode::NO_CONTENT);
    let listed = app.workers().await;
    assert_eq!(listed[0]["availability"]["available_now"], false);

    // An agent that reports no hours takes work at any time.
    let reported = app
        .put_json(&format!("/workers/{w}/hours"), &json!({}))
        .await;
    assert_eq!(reported.status(), StatusCode::OK);
    assert!(json_of(reported).await["availability"].is_null());
    assert_eq!(pending_claim(&app, &w).await, StatusCode::OK);
}

#[tokio::test]
async fn a_strict_worker_hands_its_task_back_when_its_hours_end() {
    let app = spawn_app().await;
    app.submit_ok(&render_body("long shot", 1, 1, 1, "normal"))
        .await;
    let strict = register_with(
        &app,
        json!({ "name": "strict", "available": "daily", "strict_hours": true }),
    )
    .await;
    let relaxed = register_with(&app, json!({ "name": "relaxed", "available": "daily" })).await;
    let a = app.claim_ok(&strict).await;
    let task = a["task_id"].as_str().unwrap();
    let beat = json!({ "task_id": task, "lease_id": a["lease_id"] });
    let reply = json_of(app.heartbeat(&strict, &beat).await).await;
    assert_eq!(reply["action"], "continue");

    set_hours(&app, &strict, a_day_off()).await;
    let reply = json_of(app.heartbeat(&strict, &beat).await).await;
    assert_eq!(reply["action"], "abort", "its hours ended: hand it back");
    let shown = app.task(task).await;
    assert_eq!(shown["status"], "pending");
    assert_eq!(shown["retries"], 0);
    let history = shown["history"].as_array().unwrap();
    let last = history.last().unwrap();
    assert_eq!(last["event"], "released");
    assert!(last["detail"].as_str().unwrap().contains("--strict-hours"));

    // A worker that is not strict finishes what it runs.
    let b = app.claim_ok(&relaxed).await;
    assert_eq!(b["task_id"], task);
    set_hours(&app, &relaxed, a_day_off()).await;
    let beat = json!({ "task_id": task, "lease_id": b["lease_id"] });
    let reply = json_of(app.heartbeat(&relaxed, &beat).await).await;
    assert_eq!(reply["action"], "continue");
}

#[tokio::test]
async fn bad_hours_and_zones_are_refused_with_what_to_write() {
    let app = spawn_app().await;
    let bad_registrations = [
        (json!({ "name": "a", "available": "weekdays" }), "not a day"),
        (json!({ "name": "a", "available": "mon 9-17" }), "HH:MM"),
        (json!({ "name": "a", "available": "" }), "is empty"),
        (json!({ "name": "a", "time_zone": "Mars/Olympus" }), "IANA"),
        (
            json!({ "name": "a", "strict_hours": "yes" }),
            "strict_hours",
        ),
    ];
    for (body, says) in bad_registrations {
        let response = app.post_json("/workers", &body).await;
        let message = assert_error(response, StatusCode::BAD_REQUEST).await;
        assert!(message.contains(says), "{body}: {message}");
    }
    let w = app.register_ok("w").await;
    let response = app
        .put_json(
            &format!("/workers/{w}/availability"),
            &json!({ "available": "mon 18:00-18:00" }),
        )
        .await;
    let message = assert_error(response, StatusCode::BAD_REQUEST).await;
    assert!(
        message.contains("whole day") || message.contains("no time"),
        "{message}"
    );
    let response = app
        .put_json(
            &format!("/workers/{w}/availability"),
            &json!({ "available": "sat", "until": "never" }),
        )
        .await;
    assert_error(response, StatusCode::BAD_REQUEST).await;
    let response = app
        .put_json(
            &format!("/workers/{w}/hours"),
            &json!({ "time_zone": "CEST" }),
        )
        .await;
    let message = assert_error(response, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("Europe/Berlin"), "{message}");
    let unknown = uuid::Uuid::new_v4();
    let response = app
        .put_json(
            &format!("/workers/{unknown}/availability"),
            &json!({ "available": "sat" }),
        )
        .await;
    assert_error(response, StatusCode::NOT_FOUND).await;
    let response = app
        .raw(
            Method::DELETE,
            &format!("/workers/{unknown}/availability"),
            None,
        )
        .await;
    assert_error(response, StatusCode::NOT_FOUND).await;
}
