//! An HTTP client of the broker, used by the worker agent and by the
//! `renderfarm` command line: one method per route, and errors sorted by what
//! the caller should do about them.

use std::time::Duration;

use renderfarm_wire::{
    Assignment, CompleteReport, ErrorBody, FailReport, Heartbeat, HeartbeatReply, Page, Priority,
    ProgressReport, ReleaseReport, Render, RenderAction, RenderSpec, RenderStatus,
    RenderStatusChange, Task, TaskDetail, TaskStatus, Worker, WorkerAction, WorkerSpec,
    WorkerStatusChange,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// How long one ordinary request may take before it counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to the broker, sorted by what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker could not be reached, timed out, or is overloaded or
    /// restarting (5xx, 429): try again later, not before `retry_after` when
    /// the broker said when (its `Retry-After`).
    #[error("the broker at {base} is unreachable: {cause}")]
    Unreachable {
        base: String,
        cause: String,
        retry_after: Option<Duration>,
    },
    /// 409: the lease is stale, the worker is disabled, or the change is not
    /// allowed now. Retrying the same request will not help.
    #[error("the broker refused: {0}")]
    Conflict(String),
    /// 404: the broker does not know this worker or task (e.g. it lost its
    /// data); register again.
    #[error("the broker does not know it: {0}")]
    NotFound(String),
    /// Any other 4xx: this agent sent something the broker will never accept.
    #[error("the broker rejected the request ({0}): {1}")]
    Rejected(StatusCode, String),
}

impl ClientError {
    /// True when the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// How long the broker asked to be left alone, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Unreachable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A client of one broker.
#[derive(Debug, Clone)]
pub struct BrokerClient {
    base: String,
    http: reqwest::Client,
}

impl BrokerClient {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// The broker's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn register(&self, spec: &WorkerSpec) -> Result<Worker, ClientError> {
        self.post("/workers".into(), spec, REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| self.unexpected_empty("/workers"))
    }

    /// Asks for a task, waiting up to `wait` for one. `None`: nothing to do now.
    pub async fn request_task(
        &self,
        worker: Uuid,
        wait: Duration,
    ) -> Result<Option<Assignment>, ClientError> {
        let path = format!("/workers/{worker}/request-task?wait={}", wait.as_secs_f64());
        self.post(path, &(), wait + REQUEST_TIMEOUT).await
    }

    /// `PUT /workers/{id}/status`: drain, disable or enable a worker.
    pub async fn change_worker(
        &self,
        worker: &str,
        action: WorkerAction,
    ) -> Result<Worker, ClientError> {
        self.put(
            format!("/workers/{worker}/status"),
            &WorkerStatusChange { action },
        )
        .await
    }

    pub async fn heartbeat(
        &self,
        worker: Uuid,
        beat: &Heartbeat,
    ) -> Result<HeartbeatReply, ClientError> {
        let path = format!("/workers/{worker}/heartbeat");
        self.post(path.clone(), beat, REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| self.unexpected_empty(&path))
    }

    pub async fn progress(&self, task: Uuid, report: &ProgressReport) -> Result<Task, ClientError> {
        self.task_report(task, "progress", report).await
    }

    pub async fn complete(&self, task: Uuid, report: &CompleteReport) -> Result<Task, ClientError> {
        self.task_report(task, "complete", report).await
    }

    pub async fn fail(&self, task: Uuid, report: &FailReport) -> Result<Task, ClientError> {
        self.task_report(task, "fail", report).await
    }

    pub async fn release(&self, task: Uuid, report: &ReleaseReport) -> Result<Task, ClientError> {
        self.task_report(task, "release", report).await
    }

    async fn task_report<B: Serialize>(
        &self,
        task: Uuid,
        kind: &str,
        body: &B,
    ) -> Result<Task, ClientError> {
        let path = format!("/tasks/{task}/{kind}");
        self.post(path.clone(), body, REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| self.unexpected_empty(&path))
    }

    /// `POST /renders`.
    pub async fn submit(&self, spec: &RenderSpec) -> Result<Render, ClientError> {
        self.post("/renders".into(), spec, REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| self.unexpected_empty("/renders"))
    }

    /// `GET /renders/{id}`.
    pub async fn render(&self, id: &str) -> Result<Render, ClientError> {
        self.get(&format!("/renders/{id}")).await
    }

    /// `GET /renders`: the newest `limit` renders, filtered by status and priority.
    pub async fn renders(
        &self,
        status: Option<RenderStatus>,
        priority: Option<Priority>,
        limit: i64,
    ) -> Result<Page<Render>, ClientError> {
        let mut path = format!("/renders?limit={limit}");
        if let Some(status) = status {
            path.push_str(&format!("&status={}", status.as_str()));
        }
        if let Some(priority) = priority {
            path.push_str(&format!("&priority={}", priority.as_str()));
        }
        self.get(&path).await
    }

    /// `GET /renders/{id}/tasks`: up to `limit` of a render's tasks from
    /// `offset`, lowest frames first, only those in `status` if given.
    pub async fn tasks(
        &self,
        render: &str,
        status: Option<TaskStatus>,
        limit: i64,
        offset: i64,
    ) -> Result<Page<Task>, ClientError> {
        let mut path = format!("/renders/{render}/tasks?limit={limit}&offset={offset}");
        if let Some(status) = status {
            path.push_str(&format!("&status={}", status.as_str()));
        }
        self.get(&path).await
    }

    /// `PUT /renders/{id}/status`: pause, resume, cancel or requeue a render.
    pub async fn change_render(
        &self,
        id: &str,
        action: RenderAction,
    ) -> Result<Render, ClientError> {
        self.put(
            format!("/renders/{id}/status"),
            &RenderStatusChange { action },
        )
        .await
    }

    /// `DELETE /renders/{id}`: a finished render, with its tasks and logs.
    pub async fn delete_render(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/renders/{id}");
        let request = self
            .http
            .delete(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT);
        self.answer::<serde_json::Value>(&path, request)
            .await
            .map(drop)
    }

    /// `GET /tasks/{id}/log`: the task's log so far.
    pub async fn task_log(&self, id: &str) -> Result<String, ClientError> {
        let path = format!("/tasks/{id}/log");
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(self.error(status, text, retry_after))
        }
    }

    /// `GET /tasks/{id}`.
    pub async fn task(&self, id: &str) -> Result<TaskDetail, ClientError> {
        self.get(&format!("/tasks/{id}")).await
    }

    /// `GET /workers`.
    pub async fn workers(&self) -> Result<Vec<Worker>, ClientError> {
        self.get("/workers").await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let request = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT);
        self.answer(path, request)
            .await?
            .ok_or_else(|| self.unexpected_empty(path))
    }

    fn unexpected_empty(&self, path: &str) -> ClientError {
        self.unreachable(format!("{path} answered without a body"))
    }

    fn unreachable(&self, cause: String) -> ClientError {
        ClientError::Unreachable {
            base: self.base.clone(),
            cause,
            retry_after: None,
        }
    }

    /// POSTs `body` (nothing for `()`); `None` for a 204.
    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: String,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<T>, ClientError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(timeout);
        let json = serde_json::to_value(body)
            .map_err(|e| ClientError::Rejected(StatusCode::BAD_REQUEST, e.to_string()))?;
        if !json.is_null() {
            request = request.json(&json);
        }
        self.answer(&path, request).await
    }

    /// PUTs `body` as JSON; the answer's body.
    async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: String,
        body: &B,
    ) -> Result<T, ClientError> {
        let request = self
            .http
            .put(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
            .json(body);
        self.answer(&path, request)
            .await?
            .ok_or_else(|| self.unexpected_empty(&path))
    }

    /// Sends `request`; `None` for a 204, else the body, or the error sorted
    /// by what the caller should do.
    async fn answer<T: DeserializeOwned>(
        &self,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let retry_after = retry_after(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_str(&text).map(Some).map_err(|e| {
                ClientError::Rejected(status, format!("the answer to {path} is not what this client expects ({e}); are the broker and this program the same version?"))
            });
        }
        Err(self.error(status, text, retry_after))
    }

    /// The error for a failed answer with body `text`, sorted by what to do.
    fn error(
        &self,
        status: StatusCode,
        text: String,
        retry_after: Option<Duration>,
    ) -> ClientError {
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.message)
            .unwrap_or(text);
        match status {
            StatusCode::CONFLICT => ClientError::Conflict(message),
            StatusCode::NOT_FOUND => ClientError::NotFound(message),
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                ClientError::Unreachable {
                    base: self.base.clone(),
                    cause: format!("{s}: {message}"),
                    retry_after,
                }
            }
            s => ClientError::Rejected(s, message),
        }
    }
}

/// A `Retry-After` given in seconds (the only form the broker sends); a date
/// or garbage counts as not given.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}
