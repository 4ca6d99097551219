//! Who may do what. The expected access of every operation is written out
//! here by hand, not read from the annotations the broker enforces, and the
//! walk compares three lists: this table, the spec's operations, and the
//! routes actix-web serves; a route missing from any of them fails.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_of, spawn_app, TestApp};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Anyone, without a credential.
    Open,
    /// A person's token of at least this role.
    Person(Rank),
    /// The fleet's enrolment token.
    Enrolment,
    /// A registered worker's own secret.
    Worker,
    /// An operator, or the worker itself (draining itself).
    OperatorOrWorker,
    /// A person's browser session (its cookie): a bearer token is not one.
    Session,
    /// Any person's token, or a registered worker's own secret (not the
    /// fleet's enrolment token): reading stored files.
    ViewerOrWorker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Viewer,
    Artist,
    Operator,
    Admin,
}

/// The hand-written table: every operation of the API and who may call it.
const TABLE: &[(&str, &str, Needs)] = {
    use Needs::*;
    use Rank::*;
    &[
        ("GET", "/health", Open),
        ("GET", "/ready", Open),
        ("POST", "/renders", Person(Artist)),
        ("GET", "/renders", Person(Viewer)),
        ("GET", "/renders/{id}", Person(Viewer)),
        ("DELETE", "/renders/{id}", Person(Artist)),
        ("GET", "/renders/{id}/tasks", Person(Viewer)),
        ("PUT", "/renders/{id}/status", Person(Artist)),
        ("POST", "/renders/{id}/complete", Person(Operator)),
        ("GET", "/renders/{id}/blocklist", Person(Viewer)),
        ("DELETE", "/renders/{id}/blocklist", Person(Operator)),
        ("GET", "/variables", Person(Viewer)),
        ("PUT", "/variables/{name}", Person(Operator)),
        ("DELETE", "/variables/{name}", Person(Operator)),
        ("GET", "/renders/{id}/frames", Person(Viewer)),
        ("GET", "/renders/{id}/frames/{frame}", Person(Viewer)),
        ("GET", "/renders/{id}/frames.zip", Person(Viewer)),
        ("GET", "/renders/{id}/preview", Person(Viewer)),
        ("GET", "/renders/{id}/video", Person(Viewer)),
        ("HEAD", "/files/{sha256}", ViewerOrWorker),
        ("GET", "/files/{sha256}", ViewerOrWorker),
        ("PUT", "/files/{sha256}", Person(Artist)),
        ("PUT", "/tasks/{id}/frames/{frame}", Worker),
        ("PUT", "/tasks/{id}/preview", Worker),
        ("PUT", "/tasks/{id}/video", Worker),
        ("POST", "/workers", Enrolment),
        ("GET", "/workers", Person(Viewer)),
        ("GET", "/workers/{id}", Person(Viewer)),
        ("DELETE", "/workers/{id}", Person(Operator)),
        ("DELETE", "/workers/{id}/secret", Person(Operator)),
        ("PUT", "/workers/{id}/status", OperatorOrWorker),
        ("POST", "/workers/{id}/heartbeat", Worker),
        ("POST", "/workers/{id}/request-task", Worker),
        ("PUT", "/workers/{id}/hours", Worker),
        ("PUT", "/workers/{id}/availability", Person(Operator)),
        ("DELETE", "/workers/{id}/availability", Person(Operator)),
        ("GET", "/tasks/{id}", Person(Viewer)),
        ("GET", "/tasks/{id}/log", Person(Viewer)),
        ("POST", "/tasks/{id}/progress", Worker),
        ("POST", "/tasks/{id}/complete", Worker),
        ("POST", "/tasks/{id}/fail", Worker),
        ("POST", "/tasks/{id}/release", Worker),
        ("POST", "/tasks/{id}/requeue", Person(Operator)),
        ("GET", "/scheduler", Person(Operator)),
        ("POST", "/scheduler/run", Person(Operator)),
        ("GET", "/metrics", Person(Viewer)),
        ("POST", "/tokens", Person(Admin)),
        ("GET", "/tokens", Person(Admin)),
        ("DELETE", "/tokens/{id}", Person(Admin)),
        ("POST", "/webhooks", Person(Operator)),
        ("GET", "/webhooks", Person(Operator)),
        ("GET", "/webhooks/{id}", Person(Operator)),
        ("DELETE", "/webhooks/{id}", Person(Operator)),
        ("POST", "/webhooks/{id}/enable", Person(Operator)),
        ("GET", "/session", Person(Viewer)),
        ("POST", "/session", Person(Viewer)),
        ("DELETE", "/session", Session),
        ("POST", "/signed-urls", Person(Viewer)),
        ("GET", "/events", Person(Viewer)),
        ("GET", "/events/summary", Person(Viewer)),
    ]
};

/// A credential the walk calls with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Person(Rank),
    Enrolment,
    Worker,
}

impl Holder {
    fn may(self, needs: Needs) -> bool {
        match (needs, self) {
            (Needs::Open, _) => true,
            (Needs::Person(need), Holder::Person(have)) => have >= need,
            (Needs::Enrolment, Holder::Enrolment) => true,
            (Needs::Worker, Holder::Worker) => true,
            (Needs::OperatorOrWorker, Holder::Worker) => true,
            (Needs::OperatorOrWorker, Holder::Person(have)) => have >= Rank::Operator,
            (Needs::ViewerOrWorker, Holder::Person(_) | Holder::Worker) => true,
            _ => false,
        }
    }
}

fn spec_operations() -> BTreeSet<(String, String)> {
    let spec = renderfarm::api::openapi::spec();
    let mut operations = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

/// A token of `role` made by the admin through `POST /tokens`.
async fn token(app: &TestApp, role: &str) -> String {
    let response = app
        .post_json(
            "/tokens",
            &json!({ "name": format!("a {role}"), "role": role }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json_of(response).await["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn call(app: &TestApp, method: &str, path: &str, bearer: Option<&str>) -> StatusCode {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.client.request(method.clone(), app.url(path));
    if path.ends_with("/status") {
        request = request.json(&json!({ "action": "drain" }));
    } else if method == Method::POST || method == Method::PUT {
        request = request.json(&json!({}));
    }
    let response = match bearer {
        Some(secret) => app.send(request.bearer_auth(secret)).await,
        // Straight to the wire: the helper would add a credential.
        None => crate::contract::send(request).await,
    };
    let status = response.status();
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
    if (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
        && method != Method::HEAD
    {
        // Every refusal says what is needed, in JSON.
        assert_error(response, status).await;
    }
    status
}

#[tokio::test]
async fn every_operation_asks_for_exactly_the_access_the_table_says() {
    let app = spawn_app().await;
    // The table, the spec and the served routes name the same operations.
    let table: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(table, spec_operations(), "the table and the spec differ");
    let served: BTreeSet<(String, String)> = renderfarm::api::registered_routes()
        .into_iter()
        .flat_map(|(path, allow)| {
            allow
                .split(", ")
                .map(move |m| (m.to_string(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(served, table, "the served routes and the table differ");

    let holders = [
        (Holder::Person(Rank::Viewer), token(&app, "viewer").await),
        (Holder::Person(Rank::Artist), token(&app, "artist").await),
        (
            Holder::Person(Rank::Operator),
            token(&app, "operator").await,
        ),
        (Holder::Person(Rank::Admin), app.admin.clone()),
        (Holder::Enrolment, app.enrolment.clone()),
    ];
    let worker = app.register_ok("walker").await;
    let worker_secret = app.worker_secret(&worker);
    let unknown = "0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d";

    for (method, template, needs) in TABLE {
        let path = template
            .replace("{id}", unknown)
            .replace("{frame}", "1")
            .replace("{sha256}", &"0".repeat(64));
        let anonymous = call(&app, method, &path, None).await;
        if *needs == Needs::Open {
            assert_eq!(anonymous, StatusCode::OK, "{method} {template} is open");
        } else {
            assert_eq!(
                anonymous,
                StatusCode::UNAUTHORIZED,
                "{method} {template} without a credential"
            );
        }
        for (holder, secret) in &holders {
            let status = call(&app, method, &path, Some(secret)).await;
            check(holder, needs, status, method, template);
        }
        // A worker acts on its own id; on another's it is refused.
        let own = template.replace("{id}", &worker);
        let own = if template.starts_with("/workers/{id}") {
            own
        } else {
            path.clone()
        };
        let status = call(&app, method, &own, Some(&worker_secret)).await;
        check(&Holder::Worker, needs, status, method, template);
        if template.starts_with("/workers/{id}") && Holder::Worker.may(*needs) {
            let status = call(&app, method, &path, Some(&worker_secret)).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {template} as another worker"
            );
        }
    }
}

fn check(holder: &Holder, needs: &Needs, status: StatusCode, method: &str, template: &str) {
    if *needs == Needs::Session {
        // A person's bearer token is no session: 401 says to send the
        // cookie; any other credential lacks the role.
        let want = match holder {
            Holder::Person(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        };
        assert_eq!(status, want, "{holder:?}: {method} {template}");
        return;
    }
    assert_ne!(
        status,
        StatusCode::UNAUTHORIZED,
        "{holder:?}: {method} {template}"
    );
    if holder.may(*needs) {
        assert_ne!(
            status,
            StatusCode::FORBIDDEN,
            "{holder:?} may {method} {template}"
        );
    } else {
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{holder:?} may not {method} {template}"
        );
    }
}

#[tokio::test]
async fn bad_credentials_get_401_saying_which_and_never_echo_the_token() {
    let app = spawn_app().await;
    let revoked = token(&app, "viewer").await;
    let tokens = json_of(app.get("/tokens").await).await;
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "a viewer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = app
        .raw(Method::DELETE, &format!("/tokens/{id}"), None)
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let unknown = "rf_0000000000000000000000000000000000000000000000000000000000000000";
    for (header, says) in [
        (format!("Bearer {revoked}"), "revoked"),
        (format!("Bearer {unknown}"), "not one this broker issued"),
        ("Basic dXNlcjpwYXNz".to_string(), "malformed"),
        ("Bearer ".to_string(), "malformed"),
    ] {
        let request = app
            .client
            .get(app.url("/renders"))
            .header("authorization", &header);
        let response = app.send(request).await;
        let message = assert_error(response, StatusCode::UNAUTHORIZED).await;
        assert!(message.contains(says), "{header}: {message}");
        assert!(
            !message.contains(&revoked) && !message.contains(unknown),
            "{message}"
        );
    }
    // A token in the URL is refused, even a valid one, before anything else.
    let response = crate::contract::send(
        app.client
            .get(app.url(&format!("/renders?access_token={}", app.admin))),
    )
    .await;
    let message = assert_error(response, StatusCode::UNAUTHORIZED).await;
    assert!(message.contains("Authorization"), "{message}");
    assert!(!message.contains(&app.admin), "{message}");
}

#[tokio::test]
async fn an_artist_changes_nothing_it_may_not_and_a_refusal_changes_nothing() {
    let app = spawn_app().await;
    let viewer = token(&app, "viewer").await;
    let body = json!({
        "name": "shot", "blend_file": "/p/shot.blend", "frame_start": 1, "frame_end": 2, "chunk_size": 1
    });
    let refused = app
        .send(
            app.client
                .post(app.url("/renders"))
                .json(&body)
                .bearer_auth(&viewer),
        )
        .await;
    let message = assert_error(refused, StatusCode::FORBIDDEN).await;
    assert!(message.contains("artist"), "{message}");
    assert_eq!(json_of(app.get("/renders").await).await["total"], 0);
}

#[tokio::test]
async fn a_browser_session_needs_its_csrf_value_for_changes_and_ends_at_sign_out() {
    let app = spawn_app().await;
    let signed_in = app
        .send(app.client.post(app.url("/session")).bearer_auth(&app.admin))
        .await;
    assert_eq!(signed_in.status(), StatusCode::CREATED);
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let csrf = json_of(signed_in).await["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let session = cookie.split(';').next().unwrap().to_string();
    // Straight to the wire, so that only the cookie speaks for the caller.
    let read = crate::contract::send(
        app.client
            .get(app.url("/renders"))
            .header("cookie", &session),
    )
    .await;
    assert_eq!(read.status(), StatusCode::OK);
    let unknown = "0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d";
    let change = || {
        app.client
            .put(app.url(&format!("/renders/{unknown}/status")))
            .json(&json!({ "action": "pause" }))
            .header("cookie", &session)
    };
    let forged = crate::contract::send(change()).await;
    let message = assert_error(forged, StatusCode::FORBIDDEN).await;
    assert!(message.contains("X-CSRF-Token"), "{message}");
    let wrong = crate::contract::send(change().header("x-csrf-token", "0".repeat(64))).await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let allowed = crate::contract::send(change().header("x-csrf-token", &csrf)).await;
    assert_eq!(
        allowed.status(),
        StatusCode::NOT_FOUND,
        "past the credential checks"
    );
    let out = crate::contract::send(
        app.client
            .delete(app.url("/session"))
            .header("cookie", &session)
            .header("x-csrf-token", &csrf),
    )
    .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let after = crate::contract::send(
        app.client
            .get(app.url("/renders"))
            .header("cookie", &session),
    )
    .await;
    let message = assert_error(after, StatusCode::UNAUTHORIZED).await;
    assert!(message.contains("sign in again"), "{message}");
}

#[tokio::test]
async fn a_signed_url_opens_one_download_without_a_credential_until_altered() {
    let app = spawn_app().await;
    app.submit_ok(&crate::helpers::render_body("signed", 1, 1, 1, "normal"))
        .await;
    let worker = app.register_ok("w").await;
    let task = app.claim_ok(&worker).await;
    let task_id = task["task_id"].as_str().unwrap();
    let log = json!({ "lease_id": task["lease_id"], "frames_done": 0, "log": "hello\n" });
    assert_eq!(
        app.report(task_id, "progress", &log).await.status(),
        StatusCode::OK
    );
    let path = format!("/tasks/{task_id}/log");
    let signed: Value = json_of(
        app.post_json("/signed-urls", &json!({ "path": path, "expires_in": 60 }))
            .await,
    )
    .await;
    let url = signed["url"].as_str().unwrap().to_string();
    let opened = crate::contract::send(app.client.get(app.url(&url))).await;
    assert_eq!(opened.status(), StatusCode::OK);
    assert_eq!(opened.text().await.unwrap(), "hello\n");
    // Another path under the same signature, or a changed expiry, is refused.
    let other = url.replace("/log", "");
    let refused = crate::contract::send(app.client.get(app.url(&other))).await;
    assert_error(refused, StatusCode::UNAUTHORIZED).await;
    let later = url.replacen("rf_expires=", "rf_expires=9", 1);
    let refused = crate::contract::send(app.client.get(app.url(&later))).await;
    assert_error(refused, StatusCode::UNAUTHORIZED).await;
}

async fn named_token(app: &TestApp, name: &str, role: &str) -> String {
    let response = app
        .post_json("/tokens", &json!({ "name": name, "role": role }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json_of(response).await["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn artists_change_only_their_own_renders_and_operators_actions_name_them() {
    let app = spawn_app().await;
    let alice = named_token(&app, "alice", "artist").await;
    let bob = named_token(&app, "bob", "artist").await;
    let ops = named_token(&app, "olga", "operator").await;
    let submit = |who: &str, name: &str| {
        app.client
            .post(app.url("/renders"))
            .json(&crate::helpers::render_body(name, 1, 2, 1, "normal"))
            .bearer_auth(who.to_string())
    };
    let mine = json_of(app.send(submit(&alice, "alices")).await).await;
    assert_eq!(mine["owner"], "alice");
    let theirs = json_of(app.send(submit(&bob, "bobs")).await).await;
    assert_eq!(theirs["owner"], "bob");

    let listed = json_of(
        app.send(
            app.client
                .get(app.url("/renders?owner=me"))
                .bearer_auth(&alice),
        )
        .await,
    )
    .await;
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["items"][0]["id"], mine["id"]);

    let pause = |who: &str, id: &Value| {
        app.client
            .put(app.url(&format!("/renders/{}/status", id.as_str().unwrap())))
            .json(&json!({ "action": "cancel" }))
            .bearer_auth(who.to_string())
    };
    let refused = app.send(pause(&bob, &mine["id"])).await;
    let message = assert_error(refused, StatusCode::FORBIDDEN).await;
    assert!(message.contains("\"alice\""), "{message}");
    assert_eq!(
        app.render(mine["id"].as_str().unwrap()).await["status"],
        "queued"
    );
    assert_eq!(
        app.send(pause(&alice, &mine["id"])).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.send(pause(&ops, &theirs["id"])).await.status(),
        StatusCode::OK
    );

    // The operator's cancel is in the history of bob's tasks, with her name.
    let tasks = app.render_tasks(theirs["id"].as_str().unwrap()).await;
    let task = tasks["items"][0]["id"].as_str().unwrap().to_string();
    let history = app.task(&task).await["history"].clone();
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "olga", "{history}");
}

#[tokio::test]
async fn a_worker_cannot_act_as_another_even_with_its_valid_lease() {
    let app = spawn_app().await;
    app.submit_ok(&crate::helpers::render_body("mine", 1, 4, 4, "normal"))
        .await;
    let a = app.register_ok("a").await;
    let b = app.register_ok("b").await;
    let b_secret = app.worker_secret(&b);
    let assignment = app.claim_ok(&a).await;
    let task = assignment["task_id"].as_str().unwrap().to_string();
    let lease = assignment["lease_id"].clone();
    let as_b = |request: reqwest::RequestBuilder| request.bearer_auth(&b_secret);

    let attempts = [
        as_b(app.client.post(app.url(&format!("/workers/{a}/heartbeat"))))
            .json(&json!({ "task_id": task, "lease_id": lease, "frames_done": 3 })),
        as_b(
            app.client
                .post(app.url(&format!("/workers/{a}/request-task"))),
        ),
        as_b(app.client.post(app.url(&format!("/tasks/{task}/progress"))))
            .json(&json!({ "lease_id": lease, "frames_done": 3 })),
        as_b(app.client.post(app.url(&format!("/tasks/{task}/complete"))))
            .json(&json!({ "lease_id": lease })),
        as_b(app.client.post(app.url(&format!("/tasks/{task}/fail"))))
            .json(&json!({ "lease_id": lease, "reason": "sabotage" })),
        as_b(app.client.post(app.url(&format!("/tasks/{task}/release"))))
            .json(&json!({ "lease_id": lease })),
    ];
    for attempt in attempts {
        let response = app.send(attempt).await;
        assert_error(response, StatusCode::FORBIDDEN).await;
    }
    // A's work is untouched, and A carries on under its lease.
    let detail = app.task(&task).await;
    assert_eq!(detail["status"], "running");
    assert_eq!(detail["worker_id"].as_str(), Some(a.as_str()));
    assert_eq!(detail["frames_done"], 0);
    let done = app
        .report(&task, "complete", &json!({ "lease_id": lease }))
        .await;
    assert_eq!(done.status(), StatusCode::OK);
}
