//! `request-task?wait=S`: waiting workers are woken by new work, not by
//! polling, and told 204 + Retry-After when the wait runs out.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{assert_error, json_of, render_body, spawn_app, spawn_app_with};

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
        tokio::spawn(crate::contract::send(
            client.post(url).bearer_auth(app.worker_secret(&worker)),
        ))
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
        polls.push(tokio::spawn(crate::contract::send(
            client.post(url).bearer_auth(app.worker_secret(&worker)),
        )));
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

#[tokio::test]
async fn a_broker_holding_its_most_waiting_workers_tells_the_next_to_come_back() {
    let app = spawn_app_with(|s| s.max_waiting = 2).await;
    let mut polls = Vec::new();
    for i in 0..2 {
        let worker = app.register_ok(&format!("patient-{i}")).await;
        let url = app.url(&format!("/workers/{worker}/request-task?wait=30"));
        polls.push(tokio::spawn(crate::contract::send(
            app.client.post(url).bearer_auth(app.worker_secret(&worker)),
        )));
    }
    // Both polls must hold their places before the third asks: asked any
    // earlier, it would take one of them itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.state.waiting.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two polls never took their places"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let third = app.register_ok("one-too-many").await;
    let response = app.request_task(&third, Some(30.0)).await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("5")
    );
    let message = assert_error(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(message.contains("--max-waiting"), "{message}");
    // The agent's client reads that answer as "come back in 5 s".
    let agent_client = renderfarm_client::BrokerClient::new(&app.address)
        .unwrap()
        .with_token(Some(app.worker_secret(&third)));
    let error = agent_client
        .request_task(third.parse().unwrap(), Duration::from_secs(30))
        .await
        .expect_err("turned away");
    assert!(error.is_retryable(), "{error}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(5)), "{error}");
    // Asking without waiting takes no place: it is answered as usual.
    assert_eq!(
        app.request_task(&third, None).await.status(),
        StatusCode::NO_CONTENT
    );

    // Work for all three: the two waiting are woken, and their places free.
    app.submit_ok(&render_body("for-all", 1, 3, 1, "normal"))
        .await;
    for poll in polls {
        let response = tokio::time::timeout(WOKEN_WITHIN, poll)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = app.request_task(&third, Some(30.0)).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the third gets the last task"
    );
    // The answered polls gave their places back: a new worker may wait.
    let fourth = app.register_ok("later").await;
    assert_eq!(
        app.request_task(&fourth, Some(0.5)).await.status(),
        StatusCode::NO_CONTENT,
        "it waited out its half second instead of being turned away"
    );
}
