//! A render's whole life over HTTP, and the lease that guards it.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, json_of, render_body, spawn_app};

#[tokio::test]
async fn a_submitted_render_is_accepted_with_its_location_and_split_into_tasks() {
    let app = spawn_app().await;
    let response = app.submit(&render_body("shot010", 1, 10, 3, "high")).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert!(response.headers().contains_key("retry-after"));
    let render = json_of(response).await;
    let id = render["id"].as_str().unwrap();
    assert_eq!(location, format!("/renders/{id}"));
    for (field, want) in [
        ("name", json!("shot010")),
        ("status", json!("queued")),
        ("priority", json!("high")),
        ("blend_file", json!("/projects/shot010.blend")),
        ("frame_start", json!(1)),
        ("frame_end", json!(10)),
        ("chunk_size", json!(3)),
        ("max_retries", json!(1)),
        ("started_at", json!(null)),
        ("finished_at", json!(null)),
    ] {
        assert_eq!(render[field], want, "{field}");
    }
    let output = render["output"].as_str().unwrap();
    assert!(
        output.starts_with(&app.data_dir.path().display().to_string()),
        "default output under the data dir: {output}"
    );
    assert!(output.contains(id));
    assert!(chrono::DateTime::parse_from_rfc3339(render["created_at"].as_str().unwrap()).is_ok());
    let progress = &render["progress"];
    for (field, want) in [
        ("tasks_total", 4),
        ("tasks_pending", 4),
        ("tasks_running", 0),
        ("tasks_completed", 0),
        ("tasks_failed", 0),
        ("frames_total", 10),
        ("frames_done", 0),
    ] {
        assert_eq!(progress[field], json!(want), "progress.{field}");
    }
    let fetched = app.get(&location).await;
    assert_eq!(fetched.status(), StatusCode::OK);
    assert!(
        fetched.headers().contains_key("retry-after"),
        "not finished yet"
    );
    assert_eq!(json_of(fetched).await, render);
    let tasks = app.render_tasks(id).await;
    let ranges: Vec<(i64, i64)> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["frame_start"].as_i64().unwrap(),
                t["frame_end"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ranges, vec![(1, 3), (4, 6), (7, 9), (10, 10)]);
    let task = &tasks["items"][0];
    for field in [
        "id",
        "render_id",
        "status",
        "retries",
        "worker_id",
        "frames_done",
        "started_at",
        "finished_at",
    ] {
        assert!(task.get(field).is_some(), "task field {field} in {task}");
    }
}

#[tokio::test]
async fn a_worker_renders_a_whole_render_under_its_leases() {
    let app = spawn_app().await;
    let render = app.submit_ok(&render_body("walk", 1, 4, 2, "normal")).await;
    let render_id = render["id"].as_str().unwrap();
    let response = app.register("node-01", &["linux"]).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let worker = json_of(response).await;
    assert_eq!(worker["status"], "idle");
    assert_eq!(worker["tags"], json!(["linux"]));
    assert_eq!(worker["current_task_id"], json!(null));
    assert!(worker["last_heartbeat"].is_string());
    let worker_id = worker["id"].as_str().unwrap();

    for chunk in 0..2 {
        let a = app.claim_ok(worker_id).await;
        assert_eq!(a["render_id"], render_id);
        assert_eq!(a["blend_file"], "/projects/walk.blend");
        assert_eq!(a["frame_start"], json!(1 + 2 * chunk));
        assert_eq!(a["frame_end"], json!(2 + 2 * chunk));
        assert_eq!(a["output"], render["output"]);
        assert!(a.get("engine").is_some());
        let task_id = a["task_id"].as_str().unwrap();
        let lease = a["lease_id"].clone();
        let started = app.render(render_id).await;
        assert_eq!(started["status"], "rendering");
        assert_eq!(started["progress"]["tasks_running"], 1);
        let workers = app.workers().await;
        assert_eq!(workers[0]["status"], "busy");
        assert_eq!(workers[0]["current_task_id"], a["task_id"]);

        let progress = app
            .report(
                task_id,
                "progress",
                &json!({ "lease_id": lease, "frames_done": 1, "log": "Fra:1 Mem:12M\n" }),
            )
            .await;
        assert_eq!(progress.status(), StatusCode::OK);
        assert_eq!(json_of(progress).await["frames_done"], 1);
        let beat = app
            .heartbeat(
                worker_id,
                &json!({ "task_id": task_id, "lease_id": lease, "frames_done": 1 }),
            )
            .await;
        assert_eq!(beat.status(), StatusCode::OK);
        assert_eq!(json_of(beat).await, json!({ "action": "continue" }));
        assert_eq!(app.task_log(task_id).await, "Fra:1 Mem:12M\n");

        let done = app
            .report(task_id, "complete", &json!({ "lease_id": lease }))
            .await;
        assert_eq!(done.status(), StatusCode::OK);
        let task = json_of(done).await;
        assert_eq!(task["status"], "completed");
        assert_eq!(task["frames_done"], 2);
        assert_eq!(task["worker_id"], worker_id);
        assert!(task["finished_at"].is_string());
    }
    let finished = app.get(&format!("/renders/{render_id}")).await;
    assert!(
        !finished.headers().contains_key("retry-after"),
        "finished renders need no polling"
    );
    let finished = json_of(finished).await;
    assert_eq!(finished["status"], "completed");
    assert_eq!(finished["progress"]["frames_done"], 4);
    assert_eq!(finished["progress"]["tasks_completed"], 2);
    assert!(finished["started_at"].is_string() && finished["finished_at"].is_string());
    let idle = app.request_task(worker_id, None).await;
    assert_eq!(idle.status(), StatusCode::NO_CONTENT);
    assert!(idle.headers().contains_key("retry-after"));
    assert_eq!(app.workers().await[0]["status"], "idle");
}

#[tokio::test]
async fn a_worker_that_asks_again_gets_the_task_it_holds_not_a_second_one() {
    let app = spawn_app().await;
    app.submit_ok(&render_body("r", 1, 6, 1, "normal")).await;
    let worker = app.register_ok("w").await;
    let first = app.claim_ok(&worker).await;
    let again = app.claim_ok(&worker).await;
    assert_eq!(first, again);
}

#[tokio::test]
async fn a_stale_lease_gets_409_and_changes_nothing() {
    let app = spawn_app().await;
    let render = app.submit_ok(&render_body("r", 1, 2, 2, "normal")).await;
    let render_id = render["id"].as_str().unwrap();
    let w1 = app.register_ok("w1").await;
    let w2 = app.register_ok("w2").await;
    let old = app.claim_ok(&w1).await;
    let task_id = old["task_id"].as_str().unwrap();
    // Disabling w1 takes its task back; w2 gets it under a new lease.
    assert_eq!(
        app.change_worker(&w1, "disable").await.status(),
        StatusCode::OK
    );
    let new = app.claim_ok(&w2).await;
    assert_eq!(new["task_id"], old["task_id"]);
    assert_ne!(new["lease_id"], old["lease_id"]);

    let task_before = app.task(task_id).await;
    let render_before = app.render(render_id).await;
    for (kind, body) in [
        (
            "progress",
            json!({ "lease_id": old["lease_id"], "frames_done": 2, "log": "late\n" }),
        ),
        ("complete", json!({ "lease_id": old["lease_id"] })),
        (
            "fail",
            json!({ "lease_id": old["lease_id"], "exit_code": 1, "reason": "late" }),
        ),
        (
            "complete",
            json!({ "lease_id": "6f1d2c3b-0000-4000-8000-000000000000" }),
        ),
    ] {
        let message =
            assert_error(app.report(task_id, kind, &body).await, StatusCode::CONFLICT).await;
        assert!(message.contains("lease"), "{message}");
    }
    let beat = app
        .heartbeat(
            &w1,
            &json!({ "task_id": task_id, "lease_id": old["lease_id"] }),
        )
        .await;
    assert_eq!(json_of(beat).await["action"], "abort");
    assert_eq!(app.task(task_id).await, task_before);
    assert_eq!(app.render(render_id).await, render_before);
    assert_eq!(app.task_log(task_id).await, "");
    let ok = app
        .report(task_id, "complete", &json!({ "lease_id": new["lease_id"] }))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_failure_report_keeps_the_exit_code_and_reason() {
    let app = spawn_app().await;
    let mut body = render_body("denoise", 1, 1, 1, "normal");
    body["max_retries"] = json!(0);
    let render = app.submit_ok(&body).await;
    let worker = app.register_ok("w").await;
    let a = app.claim_ok(&worker).await;
    let task_id = a["task_id"].as_str().unwrap();
    let failed = app
        .report(
            task_id,
            "fail",
            &json!({ "lease_id": a["lease_id"], "exit_code": 1, "reason": "Error: Build without OpenImageDenoiser", "log": "Fra:1\n" }),
        )
        .await;
    assert_eq!(failed.status(), StatusCode::OK);
    let task = json_of(failed).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["exit_code"], 1);
    assert!(task["failure_reason"]
        .as_str()
        .unwrap()
        .contains("OpenImageDenoiser"));
    let render = app.render(render["id"].as_str().unwrap()).await;
    assert_eq!(render["status"], "failed");
    assert_eq!(render["progress"]["tasks_failed"], 1);
}

#[tokio::test]
async fn health_and_readiness_answer_while_the_store_is_up() {
    let app = spawn_app().await;
    let health = app.get("/health").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(json_of(health).await["status"], "ok");
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready = json_of(ready).await;
    assert_eq!(
        (ready["status"].as_str(), ready["store"].as_str()),
        (Some("ready"), Some("sqlite"))
    );
}
