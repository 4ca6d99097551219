//! `request-task?wait=S`: waiting workers are woken by new work, not by
//! polling, and told 204 + Retry-After when the wait runs out.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{assert_error, json_of, render_body, spawn_app};

/// Far shorter than the 30 s the workers ask to wait: a request that ends
/// within it was woken, not timed out.
const WOKEN_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_waiting_worker_is_woken_by_a_submission() {
    let app = spawn_app().await;
    let worker = app.register_ok("waiter").await;
    let poll = {
        let client = app.client.clone();
        let url = app.url(&format!("/workers/{worker}/request-task?wait=30"));
        tokio::spawn(crate::contract::send(client.post(url)))
    };
    // Let the request reach the broker and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let render = app
        .submit_ok(&render_body("fresh", 1, 1, 1, "normal"))
        .await;
    let response = tokio::time::timeout(WOKEN_WITHIN, poll)
        .await
        .expect("the waiting worker was woken by the submission")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["render_id"], render["id"]);
}

#[tokio::test]
async fn waiting_workers_are_woken_by_a_resume_and_share_the_work_out() {
    let app = spawn_app().await;
    let render = app.submit_ok(&render_body("held", 1, 3, 1, "normal")).await;
    let id = render["id"].as_str().unwrap();
    assert_eq!(
        app.change_render(id, "pause").await.status(),
        StatusCode::OK
    );
    let mut polls = Vec::new();
    for i in 0..3 {
        let worker = app.register_ok(&format!("w{i}")).await;
        let client = app.client.clone();
        let url = app.url(&format!("/workers/{worker}/request-task?wait=30"));
        polls.push(tokio::spawn(crate::contract::send(client.post(url))));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.change_render(id, "resume").await.status(),
        StatusCode::OK
    );
    let mut tasks = HashSet::new();
    for poll in polls {
        let response = tokio::time::timeout(WOKEN_WITHIN, poll)
            .await
            .expect("woken by the resume")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        tasks.insert(
            json_of(response).await["task_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(tasks.len(), 3, "each waiter got its own task");
}

#[tokio::test]
async fn a_wait_that_runs_out_answers_204_with_retry_after() {
    let app = spawn_app().await;
    let worker = app.register_ok("patient").await;
    let response = app.request_task(&worker, Some(0.3)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.headers().contains_key("retry-after"));
    assert!(response.text().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_wait_beyond_a_minute_is_refused() {
    let app = spawn_app().await;
    let worker = app.register_ok("greedy").await;
    for wait in ["61", "-1", "soon"] {
        let response = app
            .raw(
                reqwest::Method::POST,
                &format!("/workers/{worker}/request-task?wait={wait}"),
                None,
            )
            .await;
        let message = assert_error(response, StatusCode::BAD_REQUEST).await;
        assert!(message.contains("wait"), "{message}");
    }
}
