//! Files through the broker (issue 13) over real HTTP: uploads (whole,
//! resumed, cut off, refused), downloads with `Range`, frames uploaded
//! under the lease, completion waiting for them, and every bad input of the
//! issue.

use std::io::Read;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::{assert_error, json_of, sha256_hex, spawn_app, spawn_app_with, TestApp};

fn bytes_of(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn upload_render(name: &str, sha: &str, end: i64, chunk: i64) -> Value {
    json!({
        "name": name,
        "blend_file": "shot.blend",
        "blend_sha256": sha,
        "frame_start": 1,
        "frame_end": end,
        "chunk_size": chunk,
    })
}

async fn head(app: &TestApp, sha: &str) -> (StatusCode, Option<String>, Option<String>) {
    let response = app
        .send(app.client.head(app.url(&format!("/files/{sha}"))))
        .await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    (
        response.status(),
        header("content-length"),
        header("upload-offset"),
    )
}

/// A render from an uploaded blend, claimed: (render, assignment, worker).
async fn claimed(app: &TestApp, end: i64, chunk: i64) -> (Value, Value, String) {
    let sha = app.upload_ok(b"a blend, packed").await;
    let render = app.submit_ok(&upload_render("up", &sha, end, chunk)).await;
    assert_eq!(render["blend_sha256"], sha);
    assert_eq!(render["upload_frames"], true);
    let worker = app.register_ok("w").await;
    let assignment = app.claim_ok(&worker).await;
    assert_eq!(assignment["blend_sha256"], sha);
    assert_eq!(assignment["upload_frames"], true);
    (render, assignment, worker)
}

fn ids(assignment: &Value) -> (String, String) {
    (
        assignment["task_id"].as_str().unwrap().to_string(),
        assignment["lease_id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn a_file_is_uploaded_checked_and_downloaded_whole_or_from_an_offset() {
    let app = spawn_app().await;
    let data = bytes_of(200_000, 1);
    let sha = sha256_hex(&data);
    assert_eq!(head(&app, &sha).await.0, StatusCode::NOT_FOUND);

    let response = app.put_file(&sha, &data, None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["location"].to_str().unwrap(),
        format!("/files/{sha}")
    );
    let info = json_of(response).await;
    assert_eq!(info, json!({"sha256": sha, "bytes": 200_000}));
    let (status, length, _) = head(&app, &sha).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(length.as_deref(), Some("200000"));

    let whole = app.get(&format!("/files/{sha}")).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.bytes(), &data[..]);
    let tail = app
        .send(
            app.client
                .get(app.url(&format!("/files/{sha}")))
                .header("range", "bytes=150000-"),
        )
        .await;
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        tail.headers()["content-range"].to_str().unwrap(),
        "bytes 150000-199999/200000"
    );
    assert_eq!(tail.bytes(), &data[150_000..]);
    let outside = app
        .send(
            app.client
                .get(app.url(&format!("/files/{sha}")))
                .header("range", "bytes=200000-"),
        )
        .await;
    assert_eq!(
        outside.headers()["content-range"].to_str().unwrap(),
        "bytes */200000"
    );
    assert_error(outside, StatusCode::RANGE_NOT_SATISFIABLE).await;

    // Stored already: 200, the body not needed.
    let again = app.put_file(&sha, &data, None).await;
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_body_whose_hash_or_size_differs_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let data = bytes_of(10_000, 2);
    let other = sha256_hex(b"not these bytes");
    let message = assert_error(
        app.put_file(&other, &data, None).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.contains("nothing was stored"), "{message}");
    let (status, _, offset) = head(&app, &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(offset.as_deref(), Some("0"), "no partial kept");

    // The last part makes the file, which does not hash to its name.
    let sha = sha256_hex(&data);
    let first = app
        .put_file(&sha, &data[..4000], Some("bytes 0-3999/10000"))
        .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let mut wrong_rest = data[4000..].to_vec();
    wrong_rest[10] ^= 0xff;
    assert_error(
        app.put_file(&sha, &wrong_rest, Some("bytes 4000-9999/10000"))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let (status, _, offset) = head(&app, &sha).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(offset.as_deref(), Some("0"), "the partial is discarded");

    // A part whose length is not the range it claims.
    let message = assert_error(
        app.put_file(&sha, &data[..100], Some("bytes 0-199/10000"))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.contains("Content-Length"), "{message}");
    // Not a hash.
    for bad in ["abc", "../../etc/passwd", &sha.to_uppercase()] {
        let response = app.put_file(bad, &data, None).await;
        if response.status() == StatusCode::NOT_FOUND {
            // `../` is resolved by the client before it is sent.
            continue;
        }
        let message = assert_error(response, StatusCode::BAD_REQUEST).await;
        assert!(message.contains("64 lowercase hex digits"), "{message}");
    }
    assert_error(app.get("/files/xyz").await, StatusCode::BAD_REQUEST).await;
}

/// Sends the start of an upload on a raw connection and drops it there, as
/// a machine switched off mid-upload does.
async fn cut_upload(app: &TestApp, sha: &str, total: usize, sent: &[u8]) {
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "PUT /files/{sha} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n",
        app.admin
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
}

#[tokio::test]
async fn an_upload_cut_off_is_invisible_and_resumes_where_it_stopped() {
    let app = spawn_app().await;
    let data = bytes_of(3_000_000, 3);
    let sha = sha256_hex(&data);
    cut_upload(&app, &sha, data.len(), &data[..1_000_000]).await;
    // The broker notices the cut when the connection closes.
    let mut held = None;
    for _ in 0..100 {
        let (status, _, offset) = head(&app, &sha).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "invisible while partial");
        if offset.as_deref() == Some("1000000") {
            held = offset;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        held.as_deref(),
        Some("1000000"),
        "the bytes that arrived are kept"
    );
    assert_error(
        app.get(&format!("/files/{sha}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;

    // From the wrong offset: 409 with the right one.
    let wrong = app
        .put_file(&sha, &data[500_000..], Some("bytes 500000-2999999/3000000"))
        .await;
    assert_eq!(
        wrong.headers()["upload-offset"].to_str().unwrap(),
        "1000000"
    );
    let message = assert_error(wrong, StatusCode::CONFLICT).await;
    assert!(message.contains("1000000"), "{message}");

    // Resumed in two parts.
    let middle = app
        .put_file(
            &sha,
            &data[1_000_000..2_000_000],
            Some("bytes 1000000-1999999/3000000"),
        )
        .await;
    assert_eq!(middle.status(), StatusCode::ACCEPTED);
    assert_eq!(
        middle.headers()["upload-offset"].to_str().unwrap(),
        "2000000"
    );
    assert_eq!(
        json_of(middle).await,
        json!({"sha256": sha, "bytes": 3_000_000, "received": 2_000_000})
    );
    let last = app
        .put_file(
            &sha,
            &data[2_000_000..],
            Some("bytes 2000000-2999999/3000000"),
        )
        .await;
    assert_eq!(last.status(), StatusCode::CREATED);
    let whole = app.get(&format!("/files/{sha}")).await;
    assert_eq!(whole.bytes(), &data[..]);
}

#[tokio::test]
async fn a_file_over_the_limit_is_refused_naming_the_limit_and_the_flag() {
    let app = spawn_app_with(|s| s.files.limits.max_file_size = 1000).await;
    let data = bytes_of(1001, 4);
    let sha = sha256_hex(&data);
    let message = assert_error(
        app.put_file(&sha, &data, None).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(message.contains("1000 bytes"), "{message}");
    assert!(message.contains("--max-file-size"), "{message}");
    // The total a part declares counts, not the part.
    let message = assert_error(
        app.put_file(&sha, &data[..10], Some("bytes 0-9/5000"))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(message.contains("--max-file-size"), "{message}");
    assert_eq!(head(&app, &sha).await.2.as_deref(), Some("0"));
}

#[tokio::test]
async fn a_render_names_only_a_stored_blend() {
    let app = spawn_app().await;
    let missing = sha256_hex(b"never uploaded");
    let response = app.submit(&upload_render("x", &missing, 2, 1)).await;
    let message = assert_error(response, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("blend_sha256"), "{message}");
    assert!(message.contains("PUT /files/"), "{message}");
    let response = app
        .submit(&upload_render("x", "../../etc/passwd", 2, 1))
        .await;
    assert_error(response, StatusCode::BAD_REQUEST).await;
    // The name defaults from the hash; frames upload by default.
    let sha = app.upload_ok(b"packed scene").await;
    let mut body = upload_render("y", &sha, 2, 1);
    body.as_object_mut().unwrap().remove("blend_file");
    let render = app.submit_ok(&body).await;
    assert_eq!(render["blend_file"], format!("{}.blend", &sha[..12]));
    assert_eq!(render["upload_frames"], true);
    // A path render keeps the old ways.
    let plain = app
        .submit_ok(&crate::helpers::render_body("plain", 1, 2, 1, "normal"))
        .await;
    assert_eq!(plain["blend_sha256"], Value::Null);
    assert_eq!(plain["upload_frames"], false);
}

#[tokio::test]
async fn frames_come_back_under_the_lease_and_the_task_completes_only_with_all_of_them() {
    let app = spawn_app().await;
    let (render, assignment, _) = claimed(&app, 4, 2).await;
    let render_id = render["id"].as_str().unwrap();
    let (task, lease) = ids(&assignment);
    let frame1 = bytes_of(5000, 10);
    let frame2 = bytes_of(7000, 11);

    let stored = app
        .put_frame(
            &task,
            &lease,
            1,
            "frame_0001.png",
            &frame1,
            &sha256_hex(&frame1),
        )
        .await;
    assert_eq!(stored.status(), StatusCode::CREATED);
    let stored = json_of(stored).await;
    assert_eq!(stored["name"], "frame_0001.png");
    assert_eq!(stored["sha256"], sha256_hex(&frame1));
    assert_eq!(stored["bytes"], 5000);

    // Completing with frame 2 missing: 409 naming it, the task still runs.
    let refused = app
        .report(&task, "complete", &json!({ "lease_id": lease }))
        .await;
    let message = assert_error(refused, StatusCode::CONFLICT).await;
    assert!(message.contains("(2)"), "{message}");
    assert!(message.contains("upload them first"), "{message}");
    assert_eq!(app.task(&task).await["status"], "running");

    // A frame of another task, a hash that is not the body's: 400, nothing kept.
    let outside = app
        .put_frame(
            &task,
            &lease,
            3,
            "frame_0003.png",
            &frame2,
            &sha256_hex(&frame2),
        )
        .await;
    assert_error(outside, StatusCode::BAD_REQUEST).await;
    let mismatch = app
        .put_frame(
            &task,
            &lease,
            2,
            "frame_0002.png",
            &frame2,
            &sha256_hex(&frame1),
        )
        .await;
    assert_error(mismatch, StatusCode::BAD_REQUEST).await;
    let list = json_of(app.get(&format!("/renders/{render_id}/frames")).await).await;
    assert_eq!(list["frames"].as_array().unwrap().len(), 1);

    // A retry of frame 1 replaces it; then frame 2; then completion.
    let retry = app
        .put_frame(
            &task,
            &lease,
            1,
            "frame_0001.png",
            &frame1,
            &sha256_hex(&frame1),
        )
        .await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    let second = app
        .put_frame(
            &task,
            &lease,
            2,
            "frame_0002.png",
            &frame2,
            &sha256_hex(&frame2),
        )
        .await;
    assert_eq!(second.status(), StatusCode::CREATED);
    let done = app
        .report(&task, "complete", &json!({ "lease_id": lease }))
        .await;
    assert_eq!(done.status(), StatusCode::OK);

    let list = json_of(app.get(&format!("/renders/{render_id}/frames")).await).await;
    let frames = list["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0]["frame"], 1);
    assert_eq!(frames[1]["name"], "frame_0002.png");
    assert_eq!(frames[1]["url"], format!("/renders/{render_id}/frames/2"));
    let image = app.get(&format!("/renders/{render_id}/frames/2")).await;
    assert_eq!(image.status(), StatusCode::OK);
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(image.bytes(), &frame2[..]);
    let partial = app
        .send(
            app.client
                .get(app.url(&format!("/renders/{render_id}/frames/2")))
                .header("range", "bytes=6000-"),
        )
        .await;
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(partial.bytes(), &frame2[6000..]);
    assert_error(
        app.get(&format!("/renders/{render_id}/frames/3")).await,
        StatusCode::NOT_FOUND,
    )
    .await;

    // The archive holds both, named as uploaded, byte for byte.
    let archive = app.get(&format!("/renders/{render_id}/frames.zip")).await;
    assert_eq!(archive.status(), StatusCode::OK);
    assert_eq!(archive.headers()["content-type"], "application/zip");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive.bytes().to_vec())).unwrap();
    assert_eq!(zip.len(), 2);
    for (i, (name, data)) in [("frame_0001.png", &frame1), ("frame_0002.png", &frame2)]
        .into_iter()
        .enumerate()
    {
        let mut entry = zip.by_index(i).unwrap();
        assert_eq!(entry.name(), name);
        let mut back = Vec::new();
        entry.read_to_end(&mut back).unwrap();
        assert_eq!(&back, data);
    }
}

#[tokio::test]
async fn a_frame_under_a_stale_lease_is_refused_and_not_stored() {
    let app = spawn_app().await;
    let (render, assignment, _) = claimed(&app, 2, 2).await;
    let render_id = render["id"].as_str().unwrap();
    let (task, lease) = ids(&assignment);
    // The operator takes the task back: the lease is stale from then on.
    let requeued = app
        .send(app.client.post(app.url(&format!("/tasks/{task}/requeue"))))
        .await;
    assert_eq!(requeued.status(), StatusCode::OK);
    let frame = bytes_of(3000, 12);
    let message = assert_error(
        app.put_frame(
            &task,
            &lease,
            1,
            "frame_0001.png",
            &frame,
            &sha256_hex(&frame),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(message.contains("lease"), "{message}");
    let list = json_of(app.get(&format!("/renders/{render_id}/frames")).await).await;
    assert!(list["frames"].as_array().unwrap().is_empty());
    // Neither is the file: the lease was refused before the body was read.
    assert_eq!(
        head(&app, &sha256_hex(&frame)).await.0,
        StatusCode::NOT_FOUND
    );
    // Completing under it says the lease is stale, not that frames are missing.
    let message = assert_error(
        app.report(&task, "complete", &json!({ "lease_id": lease }))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(message.contains("not its current one"), "{message}");
}

#[tokio::test]
async fn a_frame_name_that_is_not_a_plain_file_name_is_refused() {
    let app = spawn_app().await;
    let (render, assignment, _) = claimed(&app, 2, 2).await;
    let render_id = render["id"].as_str().unwrap();
    let (task, lease) = ids(&assignment);
    let frame = bytes_of(100, 13);
    let sha = sha256_hex(&frame);
    for bad in [
        "../../etc/passwd",
        "..\\..\\boot.ini",
        "a/b.png",
        "/abs.png",
        "..",
        "C:evil.png",
        "new\nline.png",
        "",
        &"x".repeat(256),
    ] {
        let message = assert_error(
            app.put_frame(&task, &lease, 1, bad, &frame, &sha).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(message.contains("plain file name"), "{bad:?}: {message}");
    }
    let list = json_of(app.get(&format!("/renders/{render_id}/frames")).await).await;
    assert!(list["frames"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_full_store_refuses_with_507_keeps_the_earlier_frames_and_the_task_running() {
    // Room for the blend and one frame, not two.
    let app = spawn_app_with(|s| s.files.limits.quota = Some(15 + 6000 + 3000)).await;
    let (render, assignment, _) = claimed(&app, 2, 2).await;
    let render_id = render["id"].as_str().unwrap();
    let (task, lease) = ids(&assignment);
    let frame1 = bytes_of(6000, 14);
    let frame2 = bytes_of(6000, 15);
    let first = app
        .put_frame(
            &task,
            &lease,
            1,
            "frame_0001.png",
            &frame1,
            &sha256_hex(&frame1),
        )
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let message = assert_error(
        app.put_frame(
            &task,
            &lease,
            2,
            "frame_0002.png",
            &frame2,
            &sha256_hex(&frame2),
        )
        .await,
        StatusCode::INSUFFICIENT_STORAGE,
    )
    .await;
    assert!(message.contains("--storage-quota"), "{message}");
    assert!(message.contains("9015 bytes"), "{message}");
    // Not completed: frame 2 is missing; frame 1 is kept.
    let refused = app
        .report(&task, "complete", &json!({ "lease_id": lease }))
        .await;
    assert_error(refused, StatusCode::CONFLICT).await;
    assert_eq!(app.task(&task).await["status"], "running");
    let list = json_of(app.get(&format!("/renders/{render_id}/frames")).await).await;
    assert_eq!(list["frames"].as_array().unwrap().len(), 1);
    let image = app.get(&format!("/renders/{render_id}/frames/1")).await;
    assert_eq!(image.bytes(), &frame1[..]);
    assert_eq!(
        head(&app, &sha256_hex(&frame2)).await.2.as_deref(),
        Some("0")
    );
}

#[tokio::test]
async fn deleting_a_render_frees_its_frames_once_the_grace_is_over() {
    let app = spawn_app_with(|s| {
        s.files.grace = chrono::Duration::zero();
        s.scheduler.periodic = false;
    })
    .await;
    let (render, assignment, _) = claimed(&app, 1, 1).await;
    let render_id = render["id"].as_str().unwrap();
    let (task, lease) = ids(&assignment);
    let frame = bytes_of(2000, 16);
    let sha = sha256_hex(&frame);
    app.put_frame(&task, &lease, 1, "frame_0001.png", &frame, &sha)
        .await;
    app.report(&task, "complete", &json!({ "lease_id": lease }))
        .await;
    // Referenced: kept by the tick.
    let tick = app.post_json("/scheduler/run", &json!({})).await;
    assert_eq!(tick.status(), StatusCode::OK);
    assert_eq!(head(&app, &sha).await.0, StatusCode::OK);
    let blend = render["blend_sha256"].as_str().unwrap().to_string();
    assert_eq!(head(&app, &blend).await.0, StatusCode::OK);

    assert_eq!(
        app.delete_render(render_id).await.status(),
        StatusCode::NO_CONTENT
    );
    let tick = json_of(app.post_json("/scheduler/run", &json!({})).await).await;
    assert_eq!(tick["files_collected"], 2, "{tick}");
    assert_eq!(head(&app, &sha).await.0, StatusCode::NOT_FOUND);
    assert_eq!(head(&app, &blend).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_worker_killed_mid_frame_upload_leaves_nothing_and_its_retry_is_stored() {
    let app = spawn_app().await;
    let (render, assignment, worker) = claimed(&app, 1, 1).await;
    let render_id = render["id"].as_str().unwrap();
    let (task, lease) = ids(&assignment);
    let frame = bytes_of(400_000, 17);
    let sha = sha256_hex(&frame);
    // The agent dies after sending half the frame.
    let address = app.address.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "PUT /tasks/{task}/frames/1?lease_id={lease}&sha256={sha}&name=frame_0001.png HTTP/1.1\r\n\
         Host: {address}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        app.worker_secret(&worker),
        frame.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&frame[..200_000]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let list = json_of(app.get(&format!("/renders/{render_id}/frames")).await).await;
    assert!(list["frames"].as_array().unwrap().is_empty(), "{list}");
    assert_eq!(head_status(&app, &sha).await, StatusCode::NOT_FOUND);
    let refused = app
        .report(&task, "complete", &json!({ "lease_id": lease }))
        .await;
    assert_error(refused, StatusCode::CONFLICT).await;

    // Restarted, the agent sends the frame again, whole.
    let stored = app
        .put_frame(&task, &lease, 1, "frame_0001.png", &frame, &sha)
        .await;
    assert_eq!(stored.status(), StatusCode::CREATED);
    let done = app
        .report(&task, "complete", &json!({ "lease_id": lease }))
        .await;
    assert_eq!(done.status(), StatusCode::OK);
    let image = app.get(&format!("/renders/{render_id}/frames/1")).await;
    assert_eq!(image.bytes(), &frame[..]);
}

async fn head_status(app: &TestApp, sha: &str) -> StatusCode {
    head(app, sha).await.0
}
