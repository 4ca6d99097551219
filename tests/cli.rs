//! The command-line client against a real broker.

mod common;

use common::BrokerProcess;

fn renderfarm(args: &[&str]) -> (bool, String, String) {
    let output = common::renderfarm_command()
        .args(args)
        .output()
        .expect("runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn submit_status_and_workers_talk_to_the_broker() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0");
    let b = broker.address.as_str();
    let (ok, out, err) = renderfarm(&[
        "submit",
        "/projects/shot010.blend",
        "--frames",
        "1-250",
        "--chunk",
        "10",
        "--priority",
        "high",
        "--broker",
        b,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("frames 1-250 in 25 task(s), priority high"),
        "{out}"
    );
    let id = out.split_whitespace().nth(2).expect("an id").to_string();
    assert!(
        out.contains("\"shot010\""),
        "the name defaults to the file's: {out}"
    );

    let (ok, out, err) = renderfarm(&["status", &id, "--broker", b]);
    assert!(ok, "{err}");
    assert!(out.contains("status    queued (high priority)"), "{out}");
    assert!(out.contains("frames    0/250 done"), "{out}");

    let (ok, out, _) = renderfarm(&["status", &id, "--json", "--broker", b]);
    assert!(ok);
    let render: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(render["progress"]["tasks_total"], 25);

    let (ok, out, _) = renderfarm(&["workers", "--broker", b]);
    assert!(ok);
    assert!(out.contains("no workers registered"), "{out}");
}

#[test]
fn bad_arguments_and_a_missing_broker_get_clear_errors() {
    let (ok, _, err) = renderfarm(&[
        "submit",
        "/p/a.blend",
        "--frames",
        "10-1",
        "--broker",
        "http://127.0.0.1:1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach the broker at http://127.0.0.1:1"),
        "{err}"
    );
    let (ok, _, err) = renderfarm(&["workers", "--broker", "localhost:8080"]);
    assert!(!ok);
    assert!(
        err.contains("localhost:8080 is not a broker address")
            && err.contains("http://127.0.0.1:8080"),
        "{err}"
    );
    let (ok, _, err) = renderfarm(&["submit", "/p/a.blend", "--frames", "one-two"]);
    assert!(!ok);
    assert!(err.contains("--frames"), "{err}");
    let (ok, _, err) = renderfarm(&["submit", "/p/a.blend", "--priority", "asap"]);
    assert!(!ok);
    assert!(err.contains("low, normal, high or urgent"), "{err}");

    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0");
    let (ok, _, err) = renderfarm(&[
        "submit",
        "/p/a.blend",
        "--frames",
        "10-1",
        "--broker",
        &broker.address,
    ]);
    assert!(!ok);
    assert!(
        err.contains("frame_end"),
        "the broker's message is shown: {err}"
    );
    let (ok, _, err) = renderfarm(&["status", "not-an-id", "--broker", &broker.address]);
    assert!(!ok);
    assert!(err.contains("no render with id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_change_and_read_logs_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0");
    let b = broker.address.clone();
    let submit = |name: &str, priority: &str| {
        let (ok, out, err) = renderfarm(&[
            "submit",
            &format!("/p/{name}.blend"),
            "--frames",
            "1-4",
            "--chunk",
            "2",
            "--priority",
            priority,
            "--broker",
            &b,
        ]);
        assert!(ok, "{err}");
        out.split_whitespace().nth(2).expect("an id").to_string()
    };
    let a = submit("alpha", "normal");
    let c = submit("gamma", "low");

    let (ok, out, err) = renderfarm(&["renders", "--broker", &b]);
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].starts_with(&c) && rows[0].contains("queued"),
        "newest first: {out}"
    );
    assert!(rows[1].starts_with(&a) && rows[1].contains("0/4"), "{out}");
    let (ok, out, _) = renderfarm(&["renders", "--status", "paused", "--broker", &b]);
    assert!(ok);
    assert!(out.contains("no renders match"), "{out}");
    let (ok, _, err) = renderfarm(&["renders", "--status", "stuck", "--broker", &b]);
    assert!(!ok);
    assert!(err.contains("not a render status"), "{err}");
    let (ok, out, err) = renderfarm(&["renders", "--owner", "alice", "--broker", &b]);
    assert!(ok, "{err}");
    assert!(
        out.contains("no renders match"),
        "submitted by no one: {out}"
    );
    // The command line's token is the test admin's: its renders are `me`.
    let (ok, out, err) = renderfarm(&["renders", "--owner", "me", "--broker", &b]);
    assert!(ok, "{err}");
    assert!(out.contains(&a) && out.contains(&c), "{out}");
    let (ok, out, err) = renderfarm(&["renders", "--search", "ALP", "--broker", &b]);
    assert!(ok, "{err}");
    assert!(out.contains(&a) && !out.contains(&c), "{out}");
    for (order, first) in [(None, &a), (Some("desc"), &c)] {
        let mut args = vec!["renders", "--sort", "name", "--broker", &b];
        args.extend(order.map(|o| ["--order", o]).into_iter().flatten());
        let (ok, out, err) = renderfarm(&args);
        assert!(ok, "{err}");
        let first_row = out.lines().nth(1).unwrap_or_default();
        assert!(first_row.starts_with(first.as_str()), "{order:?}: {out}");
    }
    let (ok, _, err) = renderfarm(&["renders", "--sort", "size", "--broker", &b]);
    assert!(!ok);
    assert!(
        err.contains("not a sort") && err.contains("progress"),
        "{err}"
    );
    // One task of a queued render is pending: the broker says so.
    let tasks = common::send_json(
        &common::admin_client(),
        reqwest::Method::GET,
        format!("{b}/renders/{a}/tasks"),
        &serde_json::json!(null),
    )
    .await;
    let task = tasks["items"][0]["id"].as_str().unwrap().to_string();
    let (ok, _, err) = renderfarm(&["requeue-task", &task, "--broker", &b]);
    assert!(!ok, "a pending task is not requeued");
    assert!(
        err.contains("pending"),
        "the broker's reason is shown: {err}"
    );

    let (ok, out, err) = renderfarm(&["pause", &a, "--broker", &b]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("render {a} \"alpha\" is now paused")),
        "{out}"
    );
    let (ok, out, _) = renderfarm(&["renders", "--status", "paused", "--broker", &b]);
    assert!(ok);
    assert!(out.contains(&a) && !out.contains(&c), "{out}");
    let (ok, out, err) = renderfarm(&["resume", &a, "--broker", &b]);
    assert!(ok, "{err}");
    assert!(out.contains("is now queued"), "{out}");
    let (ok, _, err) = renderfarm(&["resume", &a, "--broker", &b]);
    assert!(!ok, "resuming a queued render is refused");
    assert!(
        err.contains("resume"),
        "the broker's reason is shown: {err}"
    );
    let (ok, out, _) = renderfarm(&["cancel", &c, "--broker", &b]);
    assert!(ok && out.contains("is now canceled"), "{out}");
    let (ok, out, _) = renderfarm(&["requeue", &c, "--broker", &b]);
    assert!(ok && out.contains("is now queued"), "{out}");

    let client = common::admin_client();
    let worker = common::send_json(
        &client,
        reqwest::Method::POST,
        format!("{b}/workers"),
        &serde_json::json!({"name": "node-1"}),
    )
    .await;
    let w = worker["id"].as_str().unwrap().to_string();
    for (command, status) in [
        ("drain", "draining"),
        ("enable", "idle"),
        ("disable", "disabled"),
        ("enable", "idle"),
    ] {
        let (ok, out, err) = renderfarm(&[command, &w, "--broker", &b]);
        assert!(ok, "{command}: {err}");
        assert!(
            out.contains(&format!("worker {w} \"node-1\" is now {status}")),
            "{command}: {out}"
        );
    }

    let task = common::send_json(
        &client,
        reqwest::Method::POST,
        format!("{b}/workers/{w}/request-task"),
        &serde_json::json!({}),
    )
    .await;
    let (task_id, lease) = (
        task["task_id"].as_str().unwrap().to_string(),
        task["lease_id"].clone(),
    );
    common::send_json(
        &client,
        reqwest::Method::POST,
        format!("{b}/tasks/{task_id}/progress"),
        &serde_json::json!({"lease_id": lease, "frames_done": 1, "log": "Fra:1 rendering\n"}),
    )
    .await;
    let (ok, out, err) = renderfarm(&["log", &task_id, "--broker", &b]);
    assert!(ok, "{err}");
    assert_eq!(out, "Fra:1 rendering\n");

    // Following: what is added arrives, and the command ends with the task.
    let follow = {
        let (task_id, b) = (task_id.clone(), b.clone());
        tokio::task::spawn_blocking(move || {
            renderfarm(&[
                "log",
                &task_id,
                "--follow",
                "--interval",
                "100ms",
                "--broker",
                &b,
            ])
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    common::send_json(
        &client,
        reqwest::Method::POST,
        format!("{b}/tasks/{task_id}/complete"),
        &serde_json::json!({"lease_id": lease, "log": "Saved: frame_0001.png\n"}),
    )
    .await;
    let (ok, out, err) = tokio::time::timeout(std::time::Duration::from_secs(10), follow)
        .await
        .expect("--follow ends once the task completed")
        .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out, "Fra:1 rendering\nSaved: frame_0001.png\n");

    let (ok, out, err) = renderfarm(&["tasks", &a, "--broker", &b]);
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).take(2).collect();
    assert!(
        rows[0].starts_with(&task_id) && rows[0].contains("1-2") && rows[0].contains("completed"),
        "{out}"
    );
    assert!(
        rows[1].contains("3-4") && rows[1].contains("pending"),
        "{out}"
    );
    let (ok, out, _) = renderfarm(&["tasks", &a, "--status", "pending", "--broker", &b]);
    assert!(ok);
    assert!(out.contains("3-4") && !out.contains(&task_id), "{out}");
    let (ok, out, _) = renderfarm(&["tasks", &a, "--status", "failed", "--broker", &b]);
    assert!(ok);
    assert!(out.contains("no tasks match (0 in all"), "{out}");

    let (ok, _, err) = renderfarm(&["delete", &a, "--broker", &b]);
    assert!(!ok, "an unfinished render is not deleted");
    assert!(err.contains("cancel it first"), "{err}");
    renderfarm(&["cancel", &a, "--broker", &b]);
    let (ok, out, err) = renderfarm(&["delete", &a, "--broker", &b]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("render {a} deleted")), "{out}");
    let (_, out, _) = renderfarm(&["renders", "--broker", &b]);
    assert!(out.contains(&c) && !out.contains(&a), "{out}");
}

#[test]
fn tokens_are_made_listed_and_revoked_with_direct_access_to_the_store() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let output = common::renderfarm_command()
        .args([
            "token",
            "create",
            "--name",
            "alice",
            "--role",
            "artist",
            "--expires",
            "90d",
            "--data-dir",
            dir,
        ])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let secret = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(
        secret.starts_with("rf_") && secret.len() == 67,
        "the secret alone on stdout: {secret:?}"
    );
    let told = String::from_utf8_lossy(&output.stderr);
    assert!(
        told.contains("role artist") && told.contains("expires"),
        "{told}"
    );

    let (ok, out, err) = renderfarm(&["token", "list", "--data-dir", dir]);
    assert!(ok, "{err}");
    assert!(
        out.contains("artist") && out.contains("alice") && out.contains("usable"),
        "{out}"
    );
    assert!(
        !out.contains(&secret[3..]),
        "a listing never shows a secret: {out}"
    );
    let id = out.split_whitespace().next().unwrap().to_string();

    let (ok, out, err) = renderfarm(&["token", "revoke", &id, "--data-dir", dir]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let (_, out, _) = renderfarm(&["token", "list", "--data-dir", dir]);
    assert!(out.contains("revoked"), "{out}");

    let (ok, _, err) = renderfarm(&[
        "token",
        "create",
        "--name",
        "x",
        "--role",
        "root",
        "--data-dir",
        dir,
    ]);
    assert!(!ok);
    assert!(
        err.contains("viewer, artist, operator, admin, worker"),
        "{err}"
    );
}
