//! Path mapping over HTTP: operators define path variables; a submit
//! stores paths under one with the variable; each worker is given them in
//! its platform's form with the in-blend mappings; a task whose paths
//! cannot be given fails with a reason naming the variable.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_of, spawn_app, TestApp};

async fn set(app: &TestApp, name: &str, body: &Value) -> crate::helpers::Response {
    app.put_json(&format!("/variables/{name}"), body).await
}

async fn register_on(app: &TestApp, name: &str, platform: Option<&str>) -> Value {
    let mut body = json!({ "name": name });
    if let Some(p) = platform {
        body["platform"] = json!(p);
    }
    let response = app.post_json("/workers", &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json_of(response).await
}

fn submit_body(blend: &str, output: Option<&str>) -> Value {
    let mut body = json!({ "name": "shot", "blend_file": blend, "frame_start": 1, "frame_end": 1 });
    if let Some(o) = output {
        body["output"] = json!(o);
    }
    body
}

#[tokio::test]
async fn variables_are_set_listed_changed_and_deleted() {
    let app = spawn_app().await;
    assert_eq!(json_of(app.get("/variables").await).await, json!([]));
    let created = set(
        &app,
        "projects",
        &json!({ "linux": "/mnt/projects/", "windows": "p:/projects" }),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        json_of(created).await,
        json!({ "name": "projects", "linux": "/mnt/projects", "windows": "P:\\projects", "macos": null }),
        "stored in one spelling"
    );
    let changed = set(&app, "projects", &json!({ "macos": "/Volumes/projects" })).await;
    assert_eq!(changed.status(), StatusCode::OK);
    let listed = json_of(app.get("/variables").await).await;
    assert_eq!(
        listed,
        json!([{ "name": "projects", "linux": null, "windows": null, "macos": "/Volumes/projects" }]),
        "a put replaces every value"
    );
    let deleted = app.raw(Method::DELETE, "/variables/projects", None).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let again = app.raw(Method::DELETE, "/variables/projects", None).await;
    let message = assert_error(again, StatusCode::NOT_FOUND).await;
    assert!(message.contains("GET /variables"), "{message}");
}

#[tokio::test]
async fn bad_variables_are_refused_saying_how_to_fix_them() {
    let app = spawn_app().await;
    let cases: &[(&str, Value, &str)] = &[
        (
            "Projects",
            json!({ "linux": "/mnt/p" }),
            "not a valid variable name",
        ),
        ("2p", json!({ "linux": "/mnt/p" }), "starting with a letter"),
        ("projects", json!({}), "at least one platform"),
        (
            "projects",
            json!({ "linux": null }),
            "at least one platform",
        ),
        ("projects", json!({ "linux": "mnt/p" }), "starts with '/'"),
        ("projects", json!({ "linux": "/" }), "root folder"),
        ("projects", json!({ "windows": "projects" }), "UNC share"),
        ("projects", json!({ "windows": "\\\\server" }), "UNC share"),
        ("projects", json!({ "macos": 7 }), "macos"),
        (
            "projects",
            json!({ "linux": "/mnt/p", "solaris": "/p" }),
            "solaris",
        ),
    ];
    for (name, body, want) in cases {
        let message = assert_error(set(&app, name, body).await, StatusCode::BAD_REQUEST).await;
        assert!(message.contains(want), "{name} {body}: {message}");
    }
    let malformed = app
        .raw(Method::PUT, "/variables/projects", Some("{\"linux\":"))
        .await;
    assert_error(malformed, StatusCode::BAD_REQUEST).await;
    let bad_delete = app.raw(Method::DELETE, "/variables/No-Such", None).await;
    assert_error(bad_delete, StatusCode::BAD_REQUEST).await;
    assert_eq!(json_of(app.get("/variables").await).await, json!([]));
}

#[tokio::test]
async fn a_windows_path_is_stored_with_its_variable_and_given_to_each_platform_in_its_form() {
    let app = spawn_app().await;
    set(
        &app,
        "projects",
        &json!({ "linux": "/mnt/projects", "windows": "P:\\projects", "macos": "/Volumes/Projects" }),
    )
    .await;
    let render = app
        .submit_ok(&submit_body(
            "P:\\Projects\\shots\\a.blend",
            Some("p:/projects/out/a_####"),
        ))
        .await;
    assert_eq!(render["blend_file"], "{projects}/shots/a.blend");
    assert_eq!(render["output"], "{projects}/out/a_####");
    let id = render["id"].as_str().unwrap();
    assert_eq!(
        app.render(id).await["blend_file"],
        "{projects}/shots/a.blend"
    );

    let linux = register_on(&app, "lin", None).await;
    assert_eq!(linux["platform"], "linux", "older agents are Linux");
    let a = app.claim_ok(linux["id"].as_str().unwrap()).await;
    assert_eq!(a["blend_file"], "/mnt/projects/shots/a.blend");
    assert_eq!(a["output"], "/mnt/projects/out/a_####");
    assert_eq!(
        a["path_mappings"],
        json!([
            { "from": "/Volumes/Projects", "to": "/mnt/projects", "ignore_case": true },
            { "from": "P:\\projects", "to": "/mnt/projects", "ignore_case": true },
        ])
    );
    // Handed back, the task goes to a Windows worker in its form.
    let released = app
        .report(
            a["task_id"].as_str().unwrap(),
            "release",
            &json!({ "lease_id": a["lease_id"] }),
        )
        .await;
    assert_eq!(released.status(), StatusCode::OK);
    let windows = register_on(&app, "win", Some("windows")).await;
    let w = app.claim_ok(windows["id"].as_str().unwrap()).await;
    assert_eq!(w["blend_file"], "P:\\projects\\shots\\a.blend");
    assert_eq!(w["output"], "P:\\projects\\out\\a_####");
    assert_eq!(w["path_mappings"][0]["from"], "/Volumes/Projects");
    assert_eq!(w["path_mappings"][1]["from"], "/mnt/projects");
    assert_eq!(w["path_mappings"][1]["ignore_case"], false);
    let workers = app.workers().await;
    let platforms: Vec<&str> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux", "windows"]);
}

#[tokio::test]
async fn a_path_under_no_variable_is_given_as_submitted_without_mappings() {
    let app = spawn_app().await;
    set(
        &app,
        "projects",
        &json!({ "linux": "/mnt/projects", "windows": "P:\\projects" }),
    )
    .await;
    let render = app
        .submit_ok(&submit_body("/mnt/projectsX/a.blend", None))
        .await;
    assert_eq!(
        render["blend_file"], "/mnt/projectsX/a.blend",
        "not on a folder boundary"
    );
    let worker = register_on(&app, "win", Some("windows")).await;
    let a = app.claim_ok(worker["id"].as_str().unwrap()).await;
    assert_eq!(a["blend_file"], "/mnt/projectsX/a.blend");
    assert_eq!(a["path_mappings"], json!([]));
}

#[tokio::test]
async fn a_submit_in_stored_form_must_name_a_variable_that_exists() {
    let app = spawn_app().await;
    set(&app, "projects", &json!({ "linux": "/mnt/projects" })).await;
    let ok = app
        .submit_ok(&submit_body("{projects}/a.blend", None))
        .await;
    assert_eq!(ok["blend_file"], "{projects}/a.blend");
    let unknown = app.submit(&submit_body("{nope}/a.blend", None)).await;
    let message = assert_error(unknown, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("PUT /variables/nope"), "{message}");
    let malformed = app
        .submit(&submit_body("/mnt/a.blend", Some("{projects")))
        .await;
    let message = assert_error(malformed, StatusCode::BAD_REQUEST).await;
    assert!(message.starts_with("output"), "{message}");
}

#[tokio::test]
async fn a_task_whose_variable_has_no_value_on_the_worker_s_platform_fails_saying_so() {
    let app = spawn_app().await;
    set(&app, "projects", &json!({ "windows": "P:\\projects" })).await;
    let mut body = submit_body("P:\\projects\\a.blend", None);
    body["max_retries"] = json!(0);
    let render = app.submit_ok(&body).await;
    let worker = register_on(&app, "lin", Some("linux")).await;
    let nothing = app.request_task(worker["id"].as_str().unwrap(), None).await;
    assert_eq!(
        nothing.status(),
        StatusCode::NO_CONTENT,
        "the task failed at its claim"
    );
    let id = render["id"].as_str().unwrap();
    let tasks = app.render_tasks(id).await;
    let task = &tasks["items"][0];
    assert_eq!(task["status"], "failed");
    let reason = task["failure_reason"].as_str().unwrap();
    assert!(reason.contains("{projects} has no linux value"), "{reason}");
    assert!(
        reason.contains("renderfarm variables set projects --linux"),
        "{reason}"
    );
    let log = app.task_log(task["id"].as_str().unwrap()).await;
    assert!(log.contains("has no linux value"), "{log}");
}

#[tokio::test]
async fn a_task_whose_variable_was_deleted_fails_naming_it() {
    let app = spawn_app().await;
    set(&app, "projects", &json!({ "linux": "/mnt/projects" })).await;
    let mut body = submit_body("/mnt/projects/a.blend", None);
    body["max_retries"] = json!(0);
    let render = app.submit_ok(&body).await;
    app.raw(Method::DELETE, "/variables/projects", None).await;
    let worker = register_on(&app, "lin", None).await;
    let nothing = app.request_task(worker["id"].as_str().unwrap(), None).await;
    assert_eq!(nothing.status(), StatusCode::NO_CONTENT);
    let tasks = app.render_tasks(render["id"].as_str().unwrap()).await;
    let reason = tasks["items"][0]["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("{projects}, which does not exist"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_unknown_platform_is_refused_at_registration() {
    let app = spawn_app().await;
    let response = app
        .post_json("/workers", &json!({ "name": "w", "platform": "beos" }))
        .await;
    let message = assert_error(response, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("platform"), "{message}");
}
