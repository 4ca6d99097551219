//! `TestApp`: a real broker on port 0 with a fresh SQLite data directory, and
//! one method per endpoint. Every request goes through [`TestApp::send`], so
//! every answer is checked against the OpenAPI spec, and carries the
//! credential a real caller of that route would: the fleet's enrolment
//! token to register, a worker's own secret for its routes (the secret the
//! broker gave it, the holder's for a task's reports), the admin's for the
//! rest. A request that sets its own `Authorization` keeps it.

use std::collections::HashMap;
use std::sync::Mutex;

use renderfarm::startup::{Application, Settings, StoreChoice};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub use crate::contract::ApiResponse as Response;

pub struct TestApp {
    pub address: String,
    /// The broker's state, for a test that must wait for something no
    /// route shows (how many long polls are waiting).
    pub state: actix_web::web::Data<renderfarm::api::AppState>,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    /// The admin's secret (chosen at start, as a deployment would).
    pub admin: String,
    /// The fleet's enrolment secret.
    pub enrolment: String,
    credentials: Mutex<Credentials>,
    /// False when the test turned credentials off: requests go as built.
    auth_on: bool,
}

/// What the helper learned from the broker's answers.
#[derive(Default)]
struct Credentials {
    /// Each registered worker's own secret, by worker id.
    workers: HashMap<String, String>,
    /// The worker each claimed task went to, by task id.
    holders: HashMap<String, String>,
    /// The worker registered last, for reports about tasks never claimed here.
    last_worker: Option<String>,
}

/// A new random secret, as `renderfarm token create` makes them.
pub fn new_secret() -> String {
    renderfarm::domain::secret_from(renderfarm::credentials::random_bytes().expect("randomness"))
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A broker whose settings `adjust` changed first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::new("127.0.0.1:0", data_dir.path(), StoreChoice::Embedded);
    let (admin, enrolment) = (new_secret(), new_secret());
    settings.bootstrap = renderfarm::credentials::Bootstrap {
        admin_secret: Some(admin.clone()),
        enrolment_secret: Some(enrolment.clone()),
    };
    adjust(&mut settings);
    let auth_on = settings.auth == renderfarm::api::auth::AuthMode::On;
    let app = Application::build(settings).await.expect("broker builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        state,
        client: renderfarm_client::http_client_builder().build().unwrap(),
        data_dir,
        admin,
        enrolment,
        credentials: Mutex::new(Credentials::default()),
        auth_on,
    }
}

/// A render body with the given frames, chunk and priority.
pub fn render_body(name: &str, start: i64, end: i64, chunk: i64, priority: &str) -> Value {
    json!({
        "name": name,
        "blend_file": format!("/projects/{name}.blend"),
        "frame_start": start,
        "frame_end": end,
        "chunk_size": chunk,
        "priority": priority,
    })
}

/// The SHA-256 of `data` as the broker names files.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Reads a JSON body, failing the test with the text when it is not JSON.
pub async fn json_of(response: Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Checks a 4xx/5xx error answer: the status, and a JSON body with a code and a
/// message that is not empty. Returns the message.
pub async fn assert_error(response: Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type:?}"
    );
    let body = json_of(response).await;
    let code = body["error"].as_str().unwrap_or_default();
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!code.is_empty(), "error code missing in {body}");
    assert!(message.len() > 10, "message too thin in {body}");
    message.to_string()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Sends a request built on `self.client` and checks the answer against
    /// the spec; the one way the tests talk to the broker.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Response {
        let (client, request) = request.build_split();
        let mut request = request.expect("a well-formed request");
        let method = request.method().clone();
        let path = request.url().path().to_string();
        if self.auth_on && !request.headers().contains_key("authorization") {
            let secret = self.credential_for(&method, &path);
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {secret}").parse().expect("a header value"),
            );
        }
        let answer =
            crate::contract::send(reqwest::RequestBuilder::from_parts(client, request)).await;
        self.learn(&method, &path, &answer);
        answer
    }

    /// The credential a real caller of `method path` holds.
    fn credential_for(&self, method: &Method, path: &str) -> String {
        let known = self.credentials.lock().expect("credentials lock");
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let worker_secret = |id: &str| known.workers.get(id).cloned();
        let last = || known.last_worker.as_deref().and_then(worker_secret);
        let chosen = match (method.as_str(), segments.as_slice()) {
            ("POST", ["workers"]) => Some(self.enrolment.clone()),
            ("POST", ["workers", id, "heartbeat" | "request-task"])
            | ("PUT", ["workers", id, "hours"]) => worker_secret(id).or_else(last),
            ("POST", ["tasks", id, "progress" | "complete" | "fail" | "release"])
            | ("PUT", ["tasks", id, "frames", _] | ["tasks", id, "preview" | "video"]) => known
                .holders
                .get(*id)
                .and_then(|w| worker_secret(w))
                .or_else(last),
            _ => None,
        };
        chosen.unwrap_or_else(|| self.admin.clone())
    }

    /// Remembers the secrets and holders the broker's answers reveal.
    fn learn(&self, method: &Method, path: &str, answer: &Response) {
        if method != Method::POST
            || answer.status() != StatusCode::OK && answer.status() != StatusCode::CREATED
        {
            return;
        }
        let Some(body) = answer.peek_json() else {
            return;
        };
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut known = self.credentials.lock().expect("credentials lock");
        match segments.as_slice() {
            ["workers"] => {
                if let (Some(id), Some(secret)) = (body["id"].as_str(), body["secret"].as_str()) {
                    known.workers.insert(id.to_string(), secret.to_string());
                    known.last_worker = Some(id.to_string());
                }
            }
            ["workers", id, "request-task"] => {
                if let Some(task) = body["task_id"].as_str() {
                    known.holders.insert(task.to_string(), id.to_string());
                }
            }
            _ => {}
        }
    }

    /// The secret of a worker registered through this helper.
    pub fn worker_secret(&self, worker: &str) -> String {
        self.credentials.lock().expect("credentials lock").workers[worker].clone()
    }

    pub async fn raw(&self, method: Method, path: &str, body: Option<&str>) -> Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        self.send(request).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Response {
        self.send(self.client.put(self.url(path)).json(body)).await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn submit(&self, body: &Value) -> Response {
        self.post_json("/renders", body).await
    }

    /// Submits a render that must be accepted; returns its JSON.
    pub async fn submit_ok(&self, body: &Value) -> Value {
        let response = self.submit(body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        json_of(response).await
    }

    pub async fn render(&self, id: &str) -> Value {
        let response = self.get(&format!("/renders/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await
    }

    pub async fn render_tasks(&self, id: &str) -> Value {
        let response = self.get(&format!("/renders/{id}/tasks")).await;
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await
    }

    pub async fn list_renders(&self, query: &str) -> Response {
        self.get(&format!("/renders{query}")).await
    }

    pub async fn change_render(&self, id: &str, action: &str) -> Response {
        self.put_json(
            &format!("/renders/{id}/status"),
            &json!({ "action": action }),
        )
        .await
    }

    pub async fn delete_render(&self, id: &str) -> Response {
        self.raw(Method::DELETE, &format!("/renders/{id}"), None)
            .await
    }

    pub async fn complete_render(&self, id: &str) -> Response {
        self.raw(Method::POST, &format!("/renders/{id}/complete"), None)
            .await
    }

    pub async fn register(&self, name: &str, tags: &[&str]) -> Response {
        self.post_json("/workers", &json!({ "name": name, "tags": tags }))
            .await
    }

    /// Registers a worker that must be accepted; returns its id.
    pub async fn register_ok(&self, name: &str) -> String {
        let response = self.register(name, &[]).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        json_of(response).await["id"]
            .as_str()
            .expect("worker id")
            .to_string()
    }

    pub async fn workers(&self) -> Value {
        json_of(self.get("/workers").await).await
    }

    pub async fn change_worker(&self, id: &str, action: &str) -> Response {
        self.put_json(
            &format!("/workers/{id}/status"),
            &json!({ "action": action }),
        )
        .await
    }

    pub async fn request_task(&self, worker: &str, wait: Option<f64>) -> Response {
        let path = match wait {
            Some(w) => format!("/workers/{worker}/request-task?wait={w}"),
            None => format!("/workers/{worker}/request-task"),
        };
        self.raw(Method::POST, &path, None).await
    }

    /// Claims a task that must be there; returns the assignment.
    pub async fn claim_ok(&self, worker: &str) -> Value {
        let response = self.request_task(worker, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await
    }

    pub async fn heartbeat(&self, worker: &str, body: &Value) -> Response {
        self.post_json(&format!("/workers/{worker}/heartbeat"), body)
            .await
    }

    /// `kind` is progress, complete or fail.
    pub async fn report(&self, task: &str, kind: &str, body: &Value) -> Response {
        self.post_json(&format!("/tasks/{task}/{kind}"), body).await
    }

    pub async fn task(&self, id: &str) -> Value {
        let response = self.get(&format!("/tasks/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await
    }

    /// `PUT /files/{sha256}` with `data`, a part when `range` is given.
    pub async fn put_file(&self, sha: &str, data: &[u8], range: Option<&str>) -> Response {
        let mut request = self
            .client
            .put(self.url(&format!("/files/{sha}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec());
        if let Some(range) = range {
            request = request.header("content-range", range);
        }
        self.send(request).await
    }

    /// Uploads a whole file that must be stored; its hash.
    pub async fn upload_ok(&self, data: &[u8]) -> String {
        let sha = sha256_hex(data);
        let response = self.put_file(&sha, data, None).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        sha
    }

    /// `PUT /tasks/{task}/frames/{frame}` of `data` declared with `sha`,
    /// as the task's holder.
    pub async fn put_frame(
        &self,
        task: &str,
        lease: &str,
        frame: i64,
        name: &str,
        data: &[u8],
        sha: &str,
    ) -> Response {
        let request = self
            .client
            .put(self.url(&format!("/tasks/{task}/frames/{frame}")))
            .query(&[("lease_id", lease), ("sha256", sha), ("name", name)])
            .header("content-type", "application/octet-stream")
            .body(data.to_vec());
        self.send(request).await
    }

    pub async fn put_preview(&self, task: &str, lease: &str, frame: i64, jpeg: &[u8]) -> Response {
        let request = self
            .client
            .put(self.url(&format!("/tasks/{task}/preview")))
            .query(&[("lease_id", lease), ("frame", &frame.to_string())])
            .header("content-type", "image/jpeg")
            .body(jpeg.to_vec());
        self.send(request).await
    }

    /// `PUT /tasks/{task}/video` of `data` declared with `sha`, as the
    /// task's holder.
    pub async fn put_video(&self, task: &str, lease: &str, data: &[u8], sha: &str) -> Response {
        let request = self
            .client
            .put(self.url(&format!("/tasks/{task}/video")))
            .query(&[("lease_id", lease), ("sha256", sha)])
            .header("content-type", "application/octet-stream")
            .body(data.to_vec());
        self.send(request).await
    }

    pub async fn task_log(&self, id: &str) -> String {
        let response = self.get(&format!("/tasks/{id}/log")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.expect("log text")
    }
}
