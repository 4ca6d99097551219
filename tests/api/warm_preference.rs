//! The warm preference over HTTP: a worker is handed the next chunk of the
//! render it worked on last before an older render's of the same priority,
//! within the domain's bound, and never before higher-priority work.

use renderfarm::domain::WARM_STREAK_LIMIT;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;
use crate::helpers::{render_body, TestApp};

/// Claims the worker's next chunk and completes it; its render and frame.
async fn claim_done(app: &TestApp, worker: &str) -> (String, i64) {
    let a = app.claim_ok(worker).await;
    let task = a["task_id"].as_str().unwrap();
    let done = app
        .report(task, "complete", &json!({ "lease_id": a["lease_id"] }))
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    (
        a["render_id"].as_str().unwrap().to_string(),
        a["frame_start"].as_i64().unwrap(),
    )
}

async fn submitted(app: &TestApp, name: &str, frames: i64, priority: &str) -> String {
    let render = app
        .submit_ok(&render_body(name, 1, frames, 1, priority))
        .await;
    render["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_worker_gets_its_warm_render_first_within_the_bound_and_never_over_urgent_work() {
    let app = spawn_app().await;
    let older = submitted(&app, "older", 2, "normal").await;
    let pause = app.change_render(&older, "pause").await;
    assert_eq!(pause.status(), StatusCode::OK);
    let warm = submitted(&app, "warm", 30, "normal").await;
    let w = app.register_ok("w").await;
    assert_eq!(claim_done(&app, &w).await, (warm.clone(), 1));
    let resume = app.change_render(&older, "resume").await;
    assert_eq!(resume.status(), StatusCode::OK);

    let mut order = Vec::new();
    for _ in 0..WARM_STREAK_LIMIT + 3 {
        order.push(claim_done(&app, &w).await);
    }
    let mut want: Vec<(String, i64)> = (2..WARM_STREAK_LIMIT + 2)
        .map(|f| (warm.clone(), f))
        .collect();
    want.extend([(older.clone(), 1), (older.clone(), 2)]);
    want.push((warm.clone(), WARM_STREAK_LIMIT + 2));
    assert_eq!(
        order, want,
        "the warm render, then the older one, then back"
    );

    let urgent = submitted(&app, "urgent", 1, "urgent").await;
    assert_eq!(claim_done(&app, &w).await, (urgent, 1), "urgent goes first");
}
