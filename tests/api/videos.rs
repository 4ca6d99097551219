//! A render's video (issue 15, point 3) over real HTTP: queued when the
//! frames complete, claimed only by a worker that runs ffmpeg, sent under
//! its lease, served with ranges; every bad input refused with nothing kept.
//! The bytes sent stand for an MP4: the broker stores what the task made
//! and does not read it (tests/video.rs makes real ones with ffmpeg).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_of, render_body, sha256_hex, spawn_app, TestApp};

const VIDEO: &[u8] = b"\x00\x00\x00\x18ftypmp42 stands for the video a worker made";

fn with_video(mut body: Value, video: Value) -> Value {
    body["video"] = video;
    body
}

async fn video_worker(app: &TestApp, name: &str) -> String {
    let response = app
        .post_json(
            "/workers",
            &json!({ "name": name, "kinds": ["blender", "ffmpeg"] }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let worker = json_of(response).await;
    assert_eq!(worker["kinds"], json!(["blender", "ffmpeg"]));
    worker["id"].as_str().unwrap().to_string()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_video_is_made_after_the_frames_sent_under_its_lease_and_served() {
    let app = spawn_app().await;
    let body = with_video(render_body("film", 1, 2, 2, "normal"), json!({ "fps": 24 }));
    let render = app.submit_ok(&body).await;
    let id = s(&render["id"]);
    assert_eq!(render["video"], json!({ "fps": 24, "codec": "h264" }));
    assert_eq!(render["video_status"], Value::Null);
    let missing = assert_error(
        app.get(&format!("/renders/{id}/video")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(missing.contains("still queued"), "{missing}");

    let chunks_only = app.register_ok("chunks").await;
    let both = video_worker(&app, "both").await;
    let chunk = app.claim_ok(&both).await;
    assert_eq!(chunk["kind"], "blender");
    let done = app
        .report(
            &s(&chunk["task_id"]),
            "complete",
            &json!({ "lease_id": chunk["lease_id"] }),
        )
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    let render = app.render(&id).await;
    assert_eq!(render["status"], "completed");
    assert_eq!(
        render["progress"]["tasks_total"], 1,
        "the video is no chunk"
    );
    assert_eq!(render["video_status"], "pending");
    let missing = assert_error(
        app.get(&format!("/renders/{id}/video")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(missing.contains("video task is pending"), "{missing}");

    // Only a worker that runs ffmpeg gets it.
    assert_eq!(
        app.request_task(&chunks_only, None).await.status(),
        StatusCode::NO_CONTENT
    );
    let video = app.claim_ok(&both).await;
    assert_eq!(video["kind"], "ffmpeg");
    assert_eq!(video["video"], json!({ "fps": 24, "codec": "h264" }));
    assert_eq!(
        (video["frame_start"].as_i64(), video["frame_end"].as_i64()),
        (Some(1), Some(2))
    );
    let (task, lease) = (s(&video["task_id"]), s(&video["lease_id"]));
    let tasks = app.render_tasks(&id).await;
    let kinds: Vec<&str> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "ffmpeg").count(),
        1,
        "{tasks}"
    );

    // No completion before the video is stored.
    let early = assert_error(
        app.report(&task, "complete", &json!({ "lease_id": lease }))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(
        early.contains(&format!("PUT /tasks/{task}/video")),
        "{early}"
    );

    let sha = sha256_hex(VIDEO);
    // A stale lease and a wrong hash store nothing.
    let stale = uuid::Uuid::new_v4().to_string();
    assert_error(
        app.put_video(&task, &stale, VIDEO, &sha).await,
        StatusCode::CONFLICT,
    )
    .await;
    let message = assert_error(
        app.put_video(&task, &lease, VIDEO, &sha256_hex(b"other"))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        message.contains("sha256") || message.contains("hash"),
        "{message}"
    );
    assert_eq!(app.render(&id).await["video_status"], "running");
    let stored = app.put_video(&task, &lease, VIDEO, &sha).await;
    assert_eq!(stored.status(), StatusCode::CREATED);
    assert_eq!(
        json_of(stored).await,
        json!({ "sha256": sha, "bytes": VIDEO.len() })
    );
    let done = app
        .report(&task, "complete", &json!({ "lease_id": lease }))
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    let render = app.render(&id).await;
    assert_eq!(render["status"], "completed");
    assert_eq!(render["video_status"], "completed");

    let got = app.get(&format!("/renders/{id}/video")).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["content-type"], "video/mp4");
    assert_eq!(got.bytes().to_vec(), VIDEO);
    let part = app
        .send(
            app.client
                .get(app.url(&format!("/renders/{id}/video")))
                .header("range", "bytes=4-"),
        )
        .await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().to_vec(), VIDEO[4..].to_vec());
}

#[tokio::test]
async fn bad_videos_and_bad_kinds_are_refused_with_nothing_kept() {
    let app = spawn_app().await;
    for (video, field) in [
        (json!({ "fps": 0 }), "video.fps"),
        (json!({ "fps": 241 }), "video.fps"),
        (json!({ "fps": 24, "codec": "vp9" }), "codec"),
        (json!({ "fps": 24.5 }), "fps"),
        (json!({ "rate": 24 }), "rate"),
    ] {
        let body = with_video(render_body("bad", 1, 2, 2, "normal"), video.clone());
        let message = assert_error(app.submit(&body).await, StatusCode::BAD_REQUEST).await;
        assert!(message.contains(field), "{video}: {message}");
    }
    for kinds in [json!([]), json!(["blender", "houdini"])] {
        let response = app
            .post_json("/workers", &json!({ "name": "w", "kinds": kinds }))
            .await;
        let message = assert_error(response, StatusCode::BAD_REQUEST).await;
        assert!(
            message.contains("kinds") || message.contains("houdini") || message.contains("variant"),
            "{message}"
        );
    }

    let body = with_video(render_body("film", 1, 4, 2, "normal"), json!({ "fps": 24 }));
    let id = s(&app.submit_ok(&body).await["id"]);
    let worker = video_worker(&app, "both").await;
    let chunk = app.claim_ok(&worker).await;
    let (task, lease) = (s(&chunk["task_id"]), s(&chunk["lease_id"]));
    let sha = sha256_hex(VIDEO);
    // A chunk sends frames, not a video.
    let message = assert_error(
        app.put_video(&task, &lease, VIDEO, &sha).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.contains("not a video task"), "{message}");
    let render = app.render(&id).await;
    assert_eq!(render["video_status"], Value::Null);
    let missing = assert_error(
        app.get(&format!("/renders/{id}/video")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(missing.contains("no video"), "{missing}");
    // A render without a video says so.
    let plain = s(&app
        .submit_ok(&render_body("stills", 1, 1, 1, "normal"))
        .await["id"]);
    let missing = assert_error(
        app.get(&format!("/renders/{plain}/video")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(missing.contains("none was asked for"), "{missing}");
}
