//! Live previews (issue 15) over real HTTP: a worker sends the JPEG of the
//! newest frame it saved under its lease, viewers get the newest one, and
//! every bad input is refused with nothing kept.

use reqwest::StatusCode;
use serde_json::json;

use crate::contract::ApiResponse;
use crate::helpers::{assert_error, render_body, spawn_app, TestApp};

/// A small real JPEG (made with ffmpeg), as the agent sends them.
const JPEG: &[u8] = include_bytes!("../../postman/preview.jpg");

/// A JPEG's bytes with `n` appended, to tell previews apart (decoders stop
/// at the end-of-image marker).
fn jpeg(n: u8) -> Vec<u8> {
    [JPEG, &[n]].concat()
}

/// A render of frames 1–4 in chunks of 2, its first chunk claimed:
/// (render id, task id, lease id).
async fn claimed(app: &TestApp) -> (String, String, String) {
    let render = app
        .submit_ok(&render_body("preview", 1, 4, 2, "normal"))
        .await;
    let worker = app.register_ok("w").await;
    let a = app.claim_ok(&worker).await;
    let s = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    (s(&render["id"]), s(&a["task_id"]), s(&a["lease_id"]))
}

async fn preview_of(app: &TestApp, render: &str) -> ApiResponse {
    app.get(&format!("/renders/{render}/preview")).await
}

#[tokio::test]
async fn the_newest_preview_sent_is_served_with_its_frame() {
    let app = spawn_app().await;
    let (render, task, lease) = claimed(&app).await;
    let message = assert_error(preview_of(&app, &render).await, StatusCode::NOT_FOUND).await;
    assert!(message.contains("no preview yet"), "{message}");

    for (frame, n) in [(1, 1), (2, 2)] {
        let sent = app.put_preview(&task, &lease, frame, &jpeg(n)).await;
        assert_eq!(sent.status(), StatusCode::NO_CONTENT);
        let got = preview_of(&app, &render).await;
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.headers()["content-type"], "image/jpeg");
        assert_eq!(got.headers()["x-preview-frame"], frame.to_string().as_str());
        assert_eq!(got.headers()["cache-control"], "no-cache");
        assert!(got.headers().contains_key("last-modified"));
        assert_eq!(got.bytes().to_vec(), jpeg(n));
    }

    // Deleted with its render.
    assert_eq!(
        app.change_render(&render, "cancel").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.delete_render(&render).await.status(),
        StatusCode::NO_CONTENT
    );
    let message = assert_error(preview_of(&app, &render).await, StatusCode::NOT_FOUND).await;
    assert!(message.contains("render"), "{message}");
}

#[tokio::test]
async fn a_bad_preview_is_refused_and_the_one_before_kept() {
    let app = spawn_app().await;
    let (render, task, lease) = claimed(&app).await;
    assert_eq!(
        app.put_preview(&task, &lease, 1, &jpeg(1)).await.status(),
        StatusCode::NO_CONTENT
    );

    let png = b"\x89PNG\r\n\x1a\n not a jpeg";
    let message = assert_error(
        app.put_preview(&task, &lease, 1, png).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.contains("JPEG"), "{message}");

    let huge = [JPEG, &vec![0u8; 300 * 1024]].concat();
    let message = assert_error(
        app.put_preview(&task, &lease, 1, &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(message.contains("262144"), "{message}");

    let message = assert_error(
        app.put_preview(&task, &lease, 3, &jpeg(2)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        message.contains("not one of this task's frames"),
        "{message}"
    );

    let stale = "00000000-0000-4000-8000-000000000000";
    let message = assert_error(
        app.put_preview(&task, stale, 1, &jpeg(3)).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(message.contains("not its current one"), "{message}");

    // Another worker holding a valid lease of its own cannot speak for this task.
    let other = app.register_ok("other").await;
    let secret = app.worker_secret(&other);
    let as_other = app
        .client
        .put(app.url(&format!("/tasks/{task}/preview")))
        .query(&[("lease_id", lease.as_str()), ("frame", "1")])
        .bearer_auth(secret)
        .header("content-type", "image/jpeg")
        .body(jpeg(4));
    assert_error(app.send(as_other).await, StatusCode::FORBIDDEN).await;

    let missing_lease = app
        .client
        .put(app.url(&format!("/tasks/{task}/preview")))
        .query(&[("frame", "1")])
        .header("content-type", "image/jpeg")
        .body(jpeg(5));
    let message = assert_error(app.send(missing_lease).await, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("lease_id"), "{message}");

    let kept = preview_of(&app, &render).await;
    assert_eq!(kept.headers()["x-preview-frame"], "1");
    assert_eq!(kept.bytes().to_vec(), jpeg(1));

    // After the task completes its lease takes no preview.
    let done = app
        .report(&task, "complete", &json!({ "lease_id": lease }))
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_error(
        app.put_preview(&task, &lease, 2, &jpeg(6)).await,
        StatusCode::CONFLICT,
    )
    .await;
}
