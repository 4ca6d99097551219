//! The broker is killed with SIGKILL and restarted on the same data directory:
//! everything it acknowledged is still there, identical.

mod common;

use common::{task_log, BrokerProcess as Broker};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn get(client: &reqwest::Client, broker: &Broker, path: &str) -> Value {
    let response = client
        .get(format!("{}{path}", broker.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.unwrap()
}

async fn post(
    client: &reqwest::Client,
    broker: &Broker,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let url = format!("{}{path}", broker.address);
    let request =
        common::with_credential(client.post(&url).json(&body), &reqwest::Method::POST, &url);
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let answer = serde_json::from_str(&text).unwrap_or(Value::Null);
    common::learn(&url, &answer);
    (status, answer)
}

fn render_body(name: &str, end: i64) -> Value {
    json!({ "name": name, "blend_file": "/p/a.blend", "frame_start": 1, "frame_end": end, "chunk_size": 2 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_claimed_and_completed_survives_kill_9_identical() {
    let dir = tempfile::tempdir().unwrap();
    let client = common::admin_client();
    let broker = Broker::start(dir.path(), "127.0.0.1:0");

    let (status, render) = post(&client, &broker, "/renders", render_body("survivor", 4)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = render["id"].as_str().unwrap().to_string();
    let (status, worker) = post(&client, &broker, "/workers", json!({ "name": "w" })).await;
    assert_eq!(status, StatusCode::CREATED);
    let worker_id = worker["id"].as_str().unwrap().to_string();
    let claim = format!("/workers/{worker_id}/request-task");
    let (_, first) = post(&client, &broker, &claim, json!(null)).await;
    let first_task = first["task_id"].as_str().unwrap();
    let (status, _) = post(
        &client,
        &broker,
        &format!("/tasks/{first_task}/progress"),
        json!({ "lease_id": first["lease_id"], "frames_done": 1, "log": "Fra:1\n" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(
        &client,
        &broker,
        &format!("/tasks/{first_task}/complete"),
        json!({ "lease_id": first["lease_id"] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, second) = post(&client, &broker, &claim, json!(null)).await;
    let second_task = second["task_id"].as_str().unwrap().to_string();

    let paths = [
        format!("/renders/{id}"),
        format!("/renders/{id}/tasks"),
        format!("/tasks/{first_task}"),
        "/workers".to_string(),
        "/renders".to_string(),
    ];
    let mut before = Vec::new();
    for path in &paths {
        before.push(get(&client, &broker, path).await);
    }
    let log_before = task_log(&client, &broker.address, first_task).await;
    broker.kill_9();

    let broker = Broker::start(dir.path(), "127.0.0.1:0");
    for (path, want) in paths.iter().zip(&before) {
        assert_eq!(
            &get(&client, &broker, path).await,
            want,
            "{path} after kill -9"
        );
    }
    let log_after = task_log(&client, &broker.address, first_task).await;
    assert_eq!(log_after, log_before);
    assert_eq!(log_after, "Fra:1\n");
    // The lease handed out before the crash still holds.
    let (_, again) = post(&client, &broker, &claim, json!(null)).await;
    assert_eq!(again, second, "the worker's task and lease survived");
    let (status, _) = post(
        &client,
        &broker,
        &format!("/tasks/{second_task}/complete"),
        json!({ "lease_id": second["lease_id"] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        get(&client, &broker, &format!("/renders/{id}")).await["status"],
        "completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_submission_survives_a_kill_9_right_after() {
    let dir = tempfile::tempdir().unwrap();
    let client = common::admin_client();
    let broker = Broker::start(dir.path(), "127.0.0.1:0");
    let submits = (0..40).map(|i| {
        let client = client.clone();
        let url = format!("{}/renders", broker.address);
        async move {
            let response = client
                .post(url)
                .json(&render_body(&format!("r{i}"), 100))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            response.json::<Value>().await.unwrap()
        }
    });
    let acknowledged = futures::future::join_all(submits).await;
    broker.kill_9();
    let broker = Broker::start(dir.path(), "127.0.0.1:0");
    for render in acknowledged {
        let id = render["id"].as_str().unwrap();
        let after = get(&client, &broker, &format!("/renders/{id}")).await;
        assert_eq!(after, render, "render {id} as acknowledged");
        let tasks = get(&client, &broker, &format!("/renders/{id}/tasks")).await;
        assert_eq!(
            tasks["items"].as_array().unwrap().len(),
            50,
            "all of its tasks"
        );
    }
}

/// Rows of `table` in the broker's database, read beside the running (or
/// killed) broker.
fn count_rows(dir: &std::path::Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("renderfarm.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_render_killed_half_written_is_gone_after_the_restart_and_was_never_claimable() {
    let dir = tempfile::tempdir().unwrap();
    let client = common::admin_client();
    let broker = Broker::start(dir.path(), "127.0.0.1:0");
    let (status, worker) = post(&client, &broker, "/workers", json!({ "name": "w" })).await;
    assert_eq!(status, StatusCode::CREATED);
    let claim = format!("/workers/{}/request-task", worker["id"].as_str().unwrap());

    // A million one-frame tasks, written in batches; the answer never comes.
    let huge = json!({ "name": "huge", "blend_file": "/p/h.blend", "frame_start": 1, "frame_end": 1_000_000, "chunk_size": 1 });
    let submit = {
        let (client, url) = (client.clone(), format!("{}/renders", broker.address));
        tokio::spawn(async move { client.post(url).json(&huge).send().await })
    };
    let mut written = 0;
    for _ in 0..600 {
        written = count_rows(dir.path(), "tasks");
        if written >= 20_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        written >= 20_000,
        "the submit wrote {written} tasks in 30 s"
    );
    // Half-way: nothing of it is listed or claimable.
    let listed = get(&client, &broker, "/renders").await;
    assert_eq!(
        listed["total"], 0,
        "a render being written is not listed: {listed}"
    );
    let (status, _) = post(&client, &broker, &claim, json!(null)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "no task of it is claimable");
    assert!(!submit.is_finished(), "the submit was still being written");
    broker.kill_9();
    submit.abort();
    assert!(
        count_rows(dir.path(), "tasks") > 0,
        "the kill left part of it"
    );

    let broker = Broker::start(dir.path(), "127.0.0.1:0");
    let listed = get(&client, &broker, "/renders").await;
    assert_eq!(listed["total"], 0, "{listed}");
    assert_eq!(
        count_rows(dir.path(), "tasks"),
        0,
        "its tasks are removed at start"
    );
    assert_eq!(count_rows(dir.path(), "renders"), 0, "and so is its row");
    let (status, _) = post(&client, &broker, &claim, json!(null)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// `HEAD /files/{sha}`: the status and `Upload-Offset`.
async fn file_head(client: &reqwest::Client, broker: &Broker, sha: &str) -> (StatusCode, u64) {
    let response = client
        .head(format!("{}/files/{sha}", broker.address))
        .send()
        .await
        .unwrap();
    let offset = response
        .headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (response.status(), offset)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Starts an upload of `data` on a raw connection and sends `sent` bytes of
/// it; the connection stays open (the caller drops it, or kills the broker).
async fn start_upload(
    broker: &Broker,
    sha: &str,
    total: usize,
    sent: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = broker.address.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "PUT /files/{sha} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Length: {total}\r\n\r\n",
        common::ADMIN_TOKEN
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Files the broker acknowledged (a blend, a frame) are there after
/// `kill -9`, byte for byte; an upload the kill cut off is an invisible
/// partial that resumes from what reached the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_files_and_partial_uploads_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let client = common::admin_client();
    let broker = Broker::start(dir.path(), "127.0.0.1:0");

    let blend: Vec<u8> = (0..500_000u32).map(|i| (i % 239) as u8).collect();
    let blend_sha = sha256_hex(&blend);
    let stored = client
        .put(format!("{}/files/{blend_sha}", broker.address))
        .body(blend.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::CREATED);
    let (status, render) = post(
        &client,
        &broker,
        "/renders",
        json!({"name": "files", "blend_sha256": blend_sha, "frame_start": 1, "frame_end": 2, "chunk_size": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let render_id = render["id"].as_str().unwrap().to_string();
    let (_, worker) = post(&client, &broker, "/workers", json!({ "name": "w" })).await;
    let worker_id = worker["id"].as_str().unwrap().to_string();
    let (_, task) = post(
        &client,
        &broker,
        &format!("/workers/{worker_id}/request-task"),
        json!(null),
    )
    .await;
    let frame: Vec<u8> = vec![42; 12_345];
    let frame_sha = sha256_hex(&frame);
    let url = format!(
        "{}/tasks/{}/frames/1?lease_id={}&sha256={frame_sha}&name=frame_0001.png",
        broker.address,
        task["task_id"].as_str().unwrap(),
        task["lease_id"].as_str().unwrap()
    );
    let put = common::with_credential(
        client.put(&url).body(frame.clone()),
        &reqwest::Method::PUT,
        &url,
    );
    let answer = put.send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);

    // An upload under way when the broker dies.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 233) as u8).collect();
    let big_sha = sha256_hex(&big);
    // More than the broker buffers (1 MiB) before writing, so that some
    // bytes reach the disk while the upload is under way.
    let connection = start_upload(&broker, &big_sha, big.len(), &big[..2_500_000]).await;
    common::wait_for(
        "the broker to hold the first bytes",
        std::time::Duration::from_secs(10),
        || async {
            let (status, offset) = file_head(&client, &broker, &big_sha).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "invisible while partial");
            (offset > 0).then_some(())
        },
    )
    .await;
    broker.kill_9();
    drop(connection);

    let broker = Broker::start(dir.path(), "127.0.0.1:0");
    let back = client
        .get(format!("{}/files/{blend_sha}", broker.address))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), StatusCode::OK);
    assert!(
        back.bytes().await.unwrap() == blend,
        "the blend, byte for byte"
    );
    let frames = get(&client, &broker, &format!("/renders/{render_id}/frames")).await;
    assert_eq!(frames["frames"][0]["sha256"], frame_sha);
    let image = client
        .get(format!("{}/renders/{render_id}/frames/1", broker.address))
        .send()
        .await
        .unwrap();
    assert!(
        image.bytes().await.unwrap() == frame,
        "the frame, byte for byte"
    );

    let (status, offset) = file_head(&client, &broker, &big_sha).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(offset > 0 && offset <= 2_500_000, "held {offset}");
    let rest = client
        .put(format!("{}/files/{big_sha}", broker.address))
        .header("content-range", format!("bytes {offset}-2999999/3000000"))
        .body(big[offset as usize..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::CREATED);
    let whole = client
        .get(format!("{}/files/{big_sha}", broker.address))
        .send()
        .await
        .unwrap();
    assert!(whole.bytes().await.unwrap() == big);
}
