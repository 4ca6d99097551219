//! What operators do: steer renders and workers, list and filter.

use chrono::Utc;
use renderfarm::store::conformance::plan_by;
use renderfarm_wire::Priority;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_of, render_body, spawn_app, spawn_app_with};

#[tokio::test]
async fn pause_resume_cancel_and_requeue_follow_the_status_machine() {
    let app = spawn_app().await;
    let render = app.submit_ok(&render_body("r", 1, 4, 2, "normal")).await;
    let id = render["id"].as_str().unwrap();
    let worker = app.register_ok("w").await;

    let paused = app.change_render(id, "pause").await;
    assert_eq!(paused.status(), StatusCode::OK);
    assert_eq!(json_of(paused).await["status"], "paused");
    assert_eq!(
        app.request_task(&worker, None).await.status(),
        StatusCode::NO_CONTENT,
        "paused work is not handed out"
    );
    let resumed = json_of(app.change_render(id, "resume").await).await;
    assert_eq!(resumed["status"], "queued");

    let a = app.claim_ok(&worker).await;
    let canceled = json_of(app.change_render(id, "cancel").await).await;
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["progress"]["tasks_canceled"], 2);
    assert!(canceled["finished_at"].is_string());
    let beat = app
        .heartbeat(
            &worker,
            &json!({ "task_id": a["task_id"], "lease_id": a["lease_id"] }),
        )
        .await;
    assert_eq!(
        json_of(beat).await["action"],
        "abort",
        "the worker is told to stop"
    );

    let message = assert_error(app.change_render(id, "resume").await, StatusCode::CONFLICT).await;
    assert!(message.contains("cannot resume"), "{message}");
    let requeued = json_of(app.change_render(id, "requeue").await).await;
    assert_eq!(requeued["status"], "queued");
    assert_eq!(requeued["progress"]["tasks_pending"], 2);
    let b = app.claim_ok(&worker).await;
    assert_ne!(b["lease_id"], a["lease_id"]);
}

#[tokio::test]
async fn an_operator_can_mark_a_render_complete_once() {
    let app = spawn_app().await;
    let render = app
        .submit_ok(&render_body("good-enough", 1, 10, 5, "low"))
        .await;
    let id = render["id"].as_str().unwrap();
    let response = app.complete_render(id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let done = json_of(response).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["progress"]["tasks_canceled"], 2);
    assert_error(app.complete_render(id).await, StatusCode::CONFLICT).await;
    let message = assert_error(app.change_render(id, "resume").await, StatusCode::CONFLICT).await;
    assert!(message.contains("completed"), "{message}");
}

#[tokio::test]
async fn a_finished_render_can_be_deleted_and_an_unfinished_one_cannot() {
    let app = spawn_app().await;
    let render = app
        .submit_ok(&render_body("old-shot", 1, 4, 2, "normal"))
        .await;
    let id = render["id"].as_str().unwrap();
    let message = assert_error(app.delete_render(id).await, StatusCode::CONFLICT).await;
    assert!(message.contains("cancel it first"), "{message}");

    let worker = app.register_ok("w").await;
    let task = app.claim_ok(&worker).await;
    app.change_render(id, "cancel").await;
    let response = app.delete_render(id).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.get(&format!("/renders/{id}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let task_id = task["task_id"].as_str().unwrap();
    assert_error(
        app.get(&format!("/tasks/{task_id}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // The worker that held a chunk of it is free, and told to stop.
    let beat = app
        .heartbeat(
            &worker,
            &json!({"task_id": task_id, "lease_id": task["lease_id"]}),
        )
        .await;
    assert_eq!(json_of(beat).await["action"], "abort");
    assert_eq!(
        app.workers().await[0]["current_task_id"],
        serde_json::Value::Null
    );
    assert_error(app.delete_render(id).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn draining_and_disabling_a_worker() {
    let app = spawn_app().await;
    app.submit_ok(&render_body("r", 1, 3, 1, "normal")).await;
    let worker = app.register_ok("w").await;
    let a = app.claim_ok(&worker).await;
    let drained = json_of(app.change_worker(&worker, "drain").await).await;
    assert_eq!(drained["status"], "draining");
    let done = app
        .report(
            a["task_id"].as_str().unwrap(),
            "complete",
            &json!({ "lease_id": a["lease_id"] }),
        )
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(
        app.request_task(&worker, None).await.status(),
        StatusCode::NO_CONTENT
    );
    let disabled = json_of(app.change_worker(&worker, "disable").await).await;
    assert_eq!(disabled["status"], "disabled");
    let message = assert_error(app.request_task(&worker, None).await, StatusCode::CONFLICT).await;
    assert!(message.contains("enable"), "{message}");
    assert_eq!(
        json_of(app.change_worker(&worker, "enable").await).await["status"],
        "idle"
    );
    assert_eq!(
        app.request_task(&worker, None).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn renders_are_listed_newest_first_with_filters_and_pages() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for (i, priority) in ["low", "high", "high", "urgent"].iter().enumerate() {
        let r = app
            .submit_ok(&render_body(&format!("r{i}"), 1, 1, 1, priority))
            .await;
        ids.push(r["id"].clone());
    }
    app.change_render(ids[1].as_str().unwrap(), "pause").await;
    let all = json_of(app.list_renders("").await).await;
    assert_eq!(all["total"], 4);
    assert_eq!(all["items"][0]["id"], ids[3]);
    let high = json_of(app.list_renders("?priority=high").await).await;
    assert_eq!(high["total"], 2);
    let paused = json_of(app.list_renders("?status=paused&priority=high").await).await;
    assert_eq!(paused["items"].as_array().unwrap().len(), 1);
    assert_eq!(paused["items"][0]["id"], ids[1]);
    let page = json_of(app.list_renders("?limit=2&offset=1").await).await;
    assert_eq!(
        (page["limit"].as_i64(), page["offset"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].clone())
            .collect::<Vec<_>>(),
        vec![ids[2].clone(), ids[1].clone()]
    );
    for bad in [
        "?status=sleeping",
        "?priority=asap",
        "?limit=0",
        "?limit=5000",
        "?offset=-1",
        "?colour=red",
    ] {
        assert_error(app.list_renders(bad).await, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn renders_are_listed_by_owner_and_me_needs_a_known_caller() {
    let app = spawn_app_with(|s| s.auth = renderfarm::api::auth::AuthMode::Off).await;
    let anonymous = app
        .submit_ok(&render_body("anonymous", 1, 1, 1, "normal"))
        .await;
    assert_eq!(
        anonymous["owner"],
        Value::Null,
        "submitted without credentials"
    );
    // The API takes owners from credentials, which this broker does not
    // check (auth off): renders with owners go in through the store.
    let mut owned = Vec::new();
    for (owner, name) in [("alice", "a1"), ("bob", "b1"), ("alice", "a2")] {
        let new = plan_by(owner, name, 1, 1, 1, Priority::Normal, Utc::now());
        owned.push(
            app.state
                .store
                .create_render(new)
                .await
                .unwrap()
                .id
                .to_string(),
        );
    }

    let alice = json_of(app.list_renders("?owner=alice").await).await;
    assert_eq!(alice["total"], 2);
    let listed: Vec<&str> = alice["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [owned[2].as_str(), owned[0].as_str()],
        "newest first"
    );
    assert!(alice["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["owner"] == "alice"));
    let bob_paged = json_of(app.list_renders("?owner=bob&status=queued&limit=1").await).await;
    assert_eq!(bob_paged["items"][0]["id"], owned[1].as_str());
    assert_eq!(
        json_of(app.list_renders("?owner=carol").await).await["total"],
        0
    );
    assert_eq!(json_of(app.list_renders("").await).await["total"], 4);

    let message = assert_error(app.list_renders("?owner=me").await, StatusCode::BAD_REQUEST).await;
    assert!(
        message.contains("does not know who is calling"),
        "{message}"
    );
    assert_error(app.list_renders("?owner=").await, StatusCode::BAD_REQUEST).await;
    assert_error(
        app.list_renders(&format!("?owner={}", "x".repeat(201)))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn a_canceled_render_shows_in_its_tasks_history_naming_no_one_without_credentials() {
    let app = spawn_app_with(|s| s.auth = renderfarm::api::auth::AuthMode::Off).await;
    let render = app.submit_ok(&render_body("r", 1, 2, 1, "normal")).await;
    let id = render["id"].as_str().unwrap();
    let worker = app.register_ok("w").await;
    let assignment = app.claim_ok(&worker).await;
    assert_eq!(
        app.change_render(id, "cancel").await.status(),
        StatusCode::OK
    );
    let task = app.task(assignment["task_id"].as_str().unwrap()).await;
    let history = task["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0]["event"], "assigned");
    assert_eq!(history[0]["actor"], Value::Null);
    assert_eq!(history[1]["event"], "canceled");
    assert_eq!(history[1]["worker_id"], worker.as_str());
    assert_eq!(history[1]["detail"], "its render was canceled");
    assert_eq!(history[1]["actor"], Value::Null);
}
