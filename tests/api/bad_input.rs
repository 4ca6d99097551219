//! Every malformed request gets a 4xx JSON error that says what to fix, and
//! changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_of, render_body, spawn_app, TestApp};

async fn render_count(app: &TestApp) -> i64 {
    json_of(app.list_renders("").await).await["total"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn bad_submissions_are_refused_with_a_message_naming_the_problem() {
    let app = spawn_app().await;
    let with = |field: &str, value: Value| {
        let mut body = render_body("ok", 1, 10, 2, "normal");
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = render_body("ok", 1, 10, 2, "normal");
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("end before start", with("frame_end", json!(0)), "frame_end"),
        (
            "negative start",
            with("frame_start", json!(-5)),
            "frame_start",
        ),
        ("chunk 0", with("chunk_size", json!(0)), "chunk_size"),
        (
            "chunk as another word",
            with("chunk_size", json!("fast")),
            "auto",
        ),
        (
            "a target with a fixed chunk size",
            with("target_chunk_seconds", json!(60)),
            "target_chunk_seconds",
        ),
        (
            "negative chunk",
            with("chunk_size", json!(-1)),
            "chunk_size",
        ),
        (
            "unknown priority",
            with("priority", json!("asap")),
            "priority",
        ),
        (
            "too many frames",
            with("frame_end", json!(1_000_001)),
            "1000000",
        ),
        ("empty name", with("name", json!("")), "name"),
        (
            "10 KB name",
            with("name", json!("n".repeat(10 * 1024))),
            "name",
        ),
        (
            "empty blend file",
            with("blend_file", json!("  ")),
            "blend_file",
        ),
        (
            "frames as text",
            with("frame_start", json!("one")),
            "frame_start",
        ),
        (
            "fractional frame",
            with("frame_end", json!(2.5)),
            "frame_end",
        ),
        ("missing name", without("name"), "name"),
        ("missing blend file", without("blend_file"), "blend_file"),
        ("missing frames", without("frame_end"), "frame_end"),
        ("unknown field", with("chunksize", json!(5)), "chunksize"),
        (
            "bad engine",
            with("engine", json!("cycles --python evil.py")),
            "engine",
        ),
        ("bad tag", with("tags", json!(["has space"])), "tag"),
        (
            "negative retries",
            with("max_retries", json!(-1)),
            "max_retries",
        ),
        // Found by fuzzing: the frame count overflowed and the broker panicked.
        (
            "frames up to the largest number",
            with("frame_end", json!(i64::MAX)),
            "frame_end",
        ),
        (
            "control character in the name",
            with("name", json!("shot\u{7}010")),
            "control",
        ),
        ("array body", json!([1, 2, 3]), "expected"),
        // Serde would read these as the fields in order.
        (
            "fields as an array",
            json!(["n", "/f.blend", 1, 2]),
            "array",
        ),
        ("null body", Value::Null, "expected"),
        (
            "auto with too short a target",
            json!({"name": "a", "blend_file": "/a.blend", "frame_start": 1, "frame_end": 9, "chunk_size": "auto", "target_chunk_seconds": 4}),
            "target_chunk_seconds",
        ),
        (
            "auto with a target in words",
            json!({"name": "a", "blend_file": "/a.blend", "frame_start": 1, "frame_end": 9, "chunk_size": "auto", "target_chunk_seconds": "a minute"}),
            "target_chunk_seconds",
        ),
    ];
    for (what, body, mention) in cases {
        let response = app.submit(&body).await;
        let message = assert_error(response, StatusCode::BAD_REQUEST).await;
        assert!(
            message.contains(mention),
            "{what}: {message:?} should mention {mention:?}"
        );
    }
    assert_eq!(render_count(&app).await, 0, "nothing was stored");
}

#[tokio::test]
async fn bodies_that_are_not_json_are_refused() {
    let app = spawn_app().await;
    for body in ["", "{", "not json", "{\"name\": }", "\u{0}\u{1}"] {
        let response = app.raw(Method::POST, "/renders", Some(body)).await;
        assert_error(response, StatusCode::BAD_REQUEST).await;
    }
    let wrong_type = app
        .send(
            app.client
                .post(app.url("/renders"))
                .header("content-type", "text/csv")
                .body("a,b"),
        )
        .await;
    assert!(wrong_type.status().is_client_error());
    assert_error(wrong_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    assert_error(
        app.raw(Method::POST, "/renders", Some(&huge)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(render_count(&app).await, 0);
}

#[tokio::test]
async fn unknown_ids_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    // The task routes are a registered worker's: its reports about a task
    // nobody has are 404.
    app.register_ok("reporter").await;
    let unknown = "0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d";
    let lease = json!({ "lease_id": unknown });
    let not_found: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/renders/{unknown}"), None),
        (Method::GET, "/renders/not-a-uuid".into(), None),
        (Method::GET, format!("/renders/{unknown}/tasks"), None),
        (
            Method::PUT,
            format!("/renders/{unknown}/status"),
            Some(json!({ "action": "pause" })),
        ),
        (Method::POST, format!("/renders/{unknown}/complete"), None),
        (Method::GET, format!("/tasks/{unknown}"), None),
        (Method::GET, format!("/tasks/{unknown}/log"), None),
        (
            Method::POST,
            format!("/tasks/{unknown}/complete"),
            Some(lease.clone()),
        ),
        (
            Method::POST,
            format!("/tasks/{unknown}/progress"),
            Some(json!({ "lease_id": unknown, "frames_done": 1 })),
        ),
        (
            Method::POST,
            format!("/tasks/{unknown}/fail"),
            Some(json!({ "lease_id": unknown, "reason": "x" })),
        ),
        (Method::GET, format!("/workers/{unknown}"), None),
        (
            Method::PUT,
            format!("/workers/{unknown}/status"),
            Some(json!({ "action": "drain" })),
        ),
        (Method::GET, "/no/such/route".into(), None),
        // `/` is the dashboard's page (tests/api/dashboard.rs); names a
        // browser may try beside it are not.
        (Method::GET, "/index.html".into(), None),
    ];
    for (method, path, body) in not_found {
        let body = body.map(|b| b.to_string());
        let response = app.raw(method.clone(), &path, body.as_deref()).await;
        assert_error(response, StatusCode::NOT_FOUND).await;
    }
    // A worker acting as a worker that is not itself, known or not, is
    // refused before anything is looked up.
    for (path, body) in [
        (format!("/workers/{unknown}/request-task"), None),
        (format!("/workers/{unknown}/heartbeat"), Some("{}")),
    ] {
        let response = app.raw(Method::POST, &path, body).await;
        assert_error(response, StatusCode::FORBIDDEN).await;
    }
    for (method, path) in [
        (Method::DELETE, "/renders".to_string()),
        (Method::PATCH, format!("/renders/{unknown}")),
        (Method::GET, format!("/workers/{unknown}/request-task")),
        (Method::POST, "/health".to_string()),
    ] {
        let response = app.raw(method.clone(), &path, None).await;
        assert!(response.headers().contains_key("allow"), "{method} {path}");
        assert_error(response, StatusCode::METHOD_NOT_ALLOWED).await;
    }
}

#[tokio::test]
async fn bad_worker_messages_are_refused() {
    let app = spawn_app().await;
    for body in [
        json!({ "name": "" }),
        json!({ "name": "x".repeat(10_000) }),
        json!({}),
        json!({ "name": "w", "tags": "gpu" }),
    ] {
        assert_error(
            app.post_json("/workers", &body).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    assert_eq!(app.workers().await, json!([]), "no worker was registered");
    let worker = app.register_ok("w").await;
    let render = app.submit_ok(&render_body("r", 1, 4, 4, "normal")).await;
    let a = app.claim_ok(&worker).await;
    let task = a["task_id"].as_str().unwrap();
    let before = app.task(task).await;
    let bad_reports: Vec<(&str, Value)> = vec![
        (
            "progress",
            json!({ "lease_id": a["lease_id"], "frames_done": 99 }),
        ),
        (
            "progress",
            json!({ "lease_id": a["lease_id"], "frames_done": -1 }),
        ),
        ("progress", json!({ "lease_id": a["lease_id"] })),
        ("progress", json!({ "frames_done": 1 })),
        ("complete", json!({ "lease_id": "not-a-uuid" })),
        ("fail", json!({ "lease_id": a["lease_id"], "reason": "  " })),
        ("fail", json!({ "lease_id": a["lease_id"] })),
    ];
    for (kind, body) in bad_reports {
        assert_error(app.report(task, kind, &body).await, StatusCode::BAD_REQUEST).await;
    }
    for beat in [
        json!({ "task_id": task }),
        // Found by fuzzing: an array was read as the fields in order, and a
        // negative count was let through when no task was named.
        json!([null, null]),
        json!({ "frames_done": -1 }),
    ] {
        assert_error(app.heartbeat(&worker, &beat).await, StatusCode::BAD_REQUEST).await;
    }
    assert_error(
        app.heartbeat(
            &worker,
            &json!({ "task_id": task, "lease_id": a["lease_id"], "frames_done": 10 }),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    for action in [
        json!({ "action": "explode" }),
        json!({}),
        json!({ "action": "pause" }),
    ] {
        assert_error(
            app.put_json(&format!("/workers/{worker}/status"), &action)
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let id = render["id"].as_str().unwrap();
    assert_error(
        app.put_json(
            &format!("/renders/{id}/status"),
            &json!({ "action": "drain" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(app.task(task).await, before, "nothing changed");
}

#[tokio::test]
async fn whole_numbers_written_as_floats_are_taken_as_integers() {
    // The spec says "integer", and JSON Schema counts 2.0 as one.
    let app = spawn_app().await;
    let mut body = render_body("floats", 1, 4, 2, "normal");
    body["chunk_size"] = json!(2.0);
    body["frame_end"] = json!(4.0);
    let render = app.submit_ok(&body).await;
    assert_eq!(
        (render["chunk_size"].clone(), render["frame_end"].clone()),
        (json!(2), json!(4))
    );
}
