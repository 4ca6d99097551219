//! What operators do: steer renders and workers, list and filter.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, json_of, render_body, spawn_app};

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
