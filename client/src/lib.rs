//! The typed HTTP client of the renderfarm broker, used by the `renderfarm`
//! command line and the `renderfarm-worker` agent: one method per route of
//! the broker's API, the bodies of `renderfarm-wire`, and one error type
//! sorted by what the caller should do about it (try again, not before the
//! broker's `Retry-After`; register again; give up).

mod error;
mod events;
mod files;
mod tls;

pub use events::EventStream;
pub use files::{is_sha256, partial_path, sha256_file, FileStatus, Progress, TRANSFER_ATTEMPTS};

pub use error::ClientError;
/// The status of a [`ClientError::Rejected`] answer.
pub use reqwest::StatusCode;
pub use tls::http_client_builder;

use std::fmt::Display;
use std::path::PathBuf;
use std::time::Duration;

use renderfarm_wire::{
    Assignment, AvailabilityOverride, BlocklistEntry, CompleteReport, FailReport, FarmSummary,
    FrameList, HealthReport, Heartbeat, HeartbeatReply, ListOrder, Page, PathVariable,
    PathVariableSpec, Priority, ProgressReport, RegisteredWorker, ReleaseReport, Render,
    RenderAction, RenderSort, RenderSpec, RenderStatus, RenderStatusChange, SchedulerStatus, Task,
    TaskDetail, TaskStatus, TickReport, Worker, WorkerAction, WorkerHours, WorkerSpec,
    WorkerStatusChange,
};
use reqwest::{Method, RequestBuilder, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// How long one ordinary request may take, by default, before it counts as
/// unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Filters and page of `GET /renders`; `None` leaves each to the broker
/// (every status, priority and owner, its default page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderQuery {
    pub status: Option<RenderStatus>,
    pub priority: Option<Priority>,
    /// Only the renders this person submitted (the name of their
    /// credential); `me` for the caller's own.
    pub owner: Option<String>,
    /// Only the renders whose name contains this (ASCII letters in either case).
    pub search: Option<String>,
    /// What they are ordered by (newest first when `None`).
    pub sort: Option<RenderSort>,
    /// Which way (the sort's own default when `None`).
    pub order: Option<ListOrder>,
    /// Renders per page.
    pub limit: Option<i64>,
    /// Renders to skip.
    pub offset: Option<i64>,
}

/// Filter and page of `GET /renders/{id}/tasks`; `None` leaves each to the
/// broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    /// Tasks per page.
    pub limit: Option<i64>,
    /// Tasks to skip.
    pub offset: Option<i64>,
}

/// A client of one broker. Cheap to clone: clones share their connections.
#[derive(Debug, Clone)]
pub struct BrokerClient {
    /// The address as given, without a trailing slash, for messages.
    base: String,
    /// The same, parsed: routes are appended to its path.
    root: Url,
    http: reqwest::Client,
    /// How long one request may take (a long poll: this on top of its wait).
    timeout: Duration,
    /// Sent as `Authorization: Bearer …` with every request; never shown
    /// in `Debug` output or errors.
    token: Option<Secret>,
    /// Sent as W3C `traceparent` with every request, so that the broker's
    /// spans join the caller's trace (the agent: one per chunk).
    traceparent: Option<String>,
}

/// A credential, kept out of debug output and logs.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// How a [`BrokerClient`] connects, beyond the broker's address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// A PEM file of certificate authorities to trust for an `https://`
    /// broker, on top of the system's (a studio's private CA).
    pub ca_file: Option<PathBuf>,
}

impl BrokerClient {
    /// A client of the broker at `base` (`http://host:port` or `https://…`,
    /// perhaps with a path prefix), trusting the system's certificate
    /// authorities. Sends nothing yet.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with_options(base, &ClientOptions::default())
    }

    /// As [`BrokerClient::new`], set up by `options` (e.g. a private CA).
    pub fn with_options(base: &str, options: &ClientOptions) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let invalid = |cause: String| ClientError::InvalidAddress {
            base: base.clone(),
            cause,
        };
        let root = Url::parse(&base).map_err(|e| invalid(e.to_string()))?;
        if !matches!(root.scheme(), "http" | "https") || root.cannot_be_a_base() {
            return Err(invalid("not an http:// or https:// URL".into()));
        }
        let authorities = match &options.ca_file {
            Some(ca_file) => tls::read_ca_file(ca_file)?,
            None => Vec::new(),
        };
        let http =
            tls::http_client(authorities, CONNECT_TIMEOUT).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            base,
            root,
            http,
            timeout: REQUEST_TIMEOUT,
            token: None,
            traceparent: None,
        })
    }

    /// The same client, with `timeout` for one request instead of
    /// [`REQUEST_TIMEOUT`] (a long poll waits this on top of its wait).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client, sending `token` as its bearer credential (`None`:
    /// none, for a broker with auth off).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(Secret);
        self
    }

    /// From now on, sends `traceparent` (a W3C trace context header,
    /// `00-{trace id}-{parent id}-01`) with every request; `None` stops.
    pub fn set_traceparent(&mut self, traceparent: Option<String>) {
        self.traceparent = traceparent;
    }

    /// The caller's credential and trace context on `request`.
    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        let request = match &self.traceparent {
            Some(traceparent) => request.header("traceparent", traceparent),
            None => request,
        };
        match &self.token {
            Some(Secret(token)) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The broker's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    // --- renders ---

    /// `POST /renders`: queue a render.
    pub async fn submit(&self, spec: &RenderSpec) -> Result<Render, ClientError> {
        self.answer(self.request(Method::POST, &["renders"]).json(spec))
            .await
    }

    /// `GET /renders`: one page of renders, newest first.
    pub async fn renders(&self, query: &RenderQuery) -> Result<Page<Render>, ClientError> {
        let mut pairs = page_pairs(query.limit, query.offset);
        if let Some(status) = query.status {
            pairs.push(("status", status.as_str().to_string()));
        }
        if let Some(priority) = query.priority {
            pairs.push(("priority", priority.as_str().to_string()));
        }
        if let Some(owner) = &query.owner {
            pairs.push(("owner", owner.clone()));
        }
        if let Some(search) = &query.search {
            pairs.push(("q", search.clone()));
        }
        if let Some(sort) = query.sort {
            pairs.push(("sort", sort.as_str().to_string()));
        }
        if let Some(order) = query.order {
            pairs.push(("order", order.as_str().to_string()));
        }
        self.answer(self.request(Method::GET, &["renders"]).query(&pairs))
            .await
    }

    /// `GET /renders/{id}`: one render with its progress.
    pub async fn render(&self, id: impl Display) -> Result<Render, ClientError> {
        let id = id.to_string();
        self.answer(self.request(Method::GET, &["renders", &id]))
            .await
    }

    /// `DELETE /renders/{id}`: a finished render, with its tasks and logs.
    pub async fn delete_render(&self, id: impl Display) -> Result<(), ClientError> {
        let id = id.to_string();
        self.maybe::<serde_json::Value>(self.request(Method::DELETE, &["renders", &id]))
            .await
            .map(drop)
    }

    /// `GET /renders/{id}/tasks`: one page of a render's tasks, lowest
    /// frames first.
    pub async fn tasks(
        &self,
        render: impl Display,
        query: &TaskQuery,
    ) -> Result<Page<Task>, ClientError> {
        let render = render.to_string();
        let mut pairs = page_pairs(query.limit, query.offset);
        if let Some(status) = query.status {
            pairs.push(("status", status.as_str().to_string()));
        }
        let request = self.request(Method::GET, &["renders", &render, "tasks"]);
        self.answer(request.query(&pairs)).await
    }

    /// `PUT /renders/{id}/status`: pause, resume, cancel or requeue a render.
    pub async fn change_render(
        &self,
        id: impl Display,
        action: RenderAction,
    ) -> Result<Render, ClientError> {
        self.change_status("renders", id, &RenderStatusChange { action })
            .await
    }

    /// `POST /renders/{id}/complete`: mark a render complete as it is; its
    /// unfinished tasks are canceled.
    pub async fn complete_render(&self, id: impl Display) -> Result<Render, ClientError> {
        let id = id.to_string();
        self.answer(self.request(Method::POST, &["renders", &id, "complete"]))
            .await
    }

    /// `GET /renders/{id}/blocklist`: the workers that failed its chunks,
    /// and which of them get no more.
    pub async fn blocklist(&self, id: impl Display) -> Result<Vec<BlocklistEntry>, ClientError> {
        let id = id.to_string();
        self.answer(self.request(Method::GET, &["renders", &id, "blocklist"]))
            .await
    }

    /// `DELETE /renders/{id}/blocklist`: clear it, or one worker's entry.
    pub async fn clear_blocklist(
        &self,
        id: impl Display,
        worker: Option<Uuid>,
    ) -> Result<(), ClientError> {
        let id = id.to_string();
        let mut request = self.request(Method::DELETE, &["renders", &id, "blocklist"]);
        if let Some(worker) = worker {
            request = request.query(&[("worker_id", worker.to_string())]);
        }
        self.maybe::<serde_json::Value>(request).await.map(drop)
    }

    // --- path variables ---

    /// `GET /variables`: the farm's path variables, by name.
    pub async fn variables(&self) -> Result<Vec<PathVariable>, ClientError> {
        self.answer(self.request(Method::GET, &["variables"])).await
    }

    /// `PUT /variables/{name}`: define or change a path variable.
    pub async fn set_variable(
        &self,
        name: &str,
        spec: &PathVariableSpec,
    ) -> Result<PathVariable, ClientError> {
        self.answer(self.request(Method::PUT, &["variables", name]).json(spec))
            .await
    }

    /// `DELETE /variables/{name}`: delete a path variable.
    pub async fn delete_variable(&self, name: &str) -> Result<(), ClientError> {
        self.maybe::<serde_json::Value>(self.request(Method::DELETE, &["variables", name]))
            .await
            .map(drop)
    }

    // --- workers ---

    /// `POST /workers`: register a worker.
    pub async fn register(&self, spec: &WorkerSpec) -> Result<RegisteredWorker, ClientError> {
        self.answer(self.request(Method::POST, &["workers"]).json(spec))
            .await
    }

    /// `GET /workers`: every worker, in registration order.
    pub async fn workers(&self) -> Result<Vec<Worker>, ClientError> {
        self.answer(self.request(Method::GET, &["workers"])).await
    }

    /// `GET /workers/{id}`: one worker.
    pub async fn worker(&self, id: impl Display) -> Result<Worker, ClientError> {
        let id = id.to_string();
        self.answer(self.request(Method::GET, &["workers", &id]))
            .await
    }

    /// `PUT /workers/{id}/hours`: the hours an agent was started with, sent
    /// as the worker itself.
    pub async fn set_worker_hours(
        &self,
        id: impl Display,
        hours: &WorkerHours,
    ) -> Result<Worker, ClientError> {
        let id = id.to_string();
        let request = self.request(Method::PUT, &["workers", &id, "hours"]);
        self.answer(request.json(hours)).await
    }

    /// `PUT /workers/{id}/availability`: an operator's hours for a worker,
    /// kept until cleared; `None` clears them
    /// (`DELETE /workers/{id}/availability`) and the agent's apply again.
    pub async fn set_worker_availability(
        &self,
        id: impl Display,
        available: Option<&str>,
    ) -> Result<Worker, ClientError> {
        let id = id.to_string();
        let path = ["workers", id.as_str(), "availability"];
        match available {
            Some(available) => {
                let body = AvailabilityOverride {
                    available: available.to_string(),
                };
                self.answer(self.request(Method::PUT, &path).json(&body))
                    .await
            }
            None => self.answer(self.request(Method::DELETE, &path)).await,
        }
    }

    /// `PUT /workers/{id}/status`: drain, disable or enable a worker.
    pub async fn change_worker(
        &self,
        id: impl Display,
        action: WorkerAction,
    ) -> Result<Worker, ClientError> {
        self.change_status("workers", id, &WorkerStatusChange { action })
            .await
    }

    /// `PUT /{resource}/{id}/status`: an operator's change of a render or
    /// a worker.
    async fn change_status<B: Serialize, T: DeserializeOwned>(
        &self,
        resource: &str,
        id: impl Display,
        change: &B,
    ) -> Result<T, ClientError> {
        let id = id.to_string();
        let request = self.request(Method::PUT, &[resource, &id, "status"]);
        self.answer(request.json(change)).await
    }

    /// `POST /workers/{id}/heartbeat`: the worker is alive (and how far it
    /// is); the answer says whether to go on with its task.
    pub async fn heartbeat(
        &self,
        worker: Uuid,
        beat: &Heartbeat,
    ) -> Result<HeartbeatReply, ClientError> {
        let worker = worker.to_string();
        let request = self.request(Method::POST, &["workers", &worker, "heartbeat"]);
        self.answer(request.json(beat)).await
    }

    /// `POST /workers/{id}/request-task`: asks for a task, waiting up to
    /// `wait` for one. `None`: nothing to do now.
    pub async fn request_task(
        &self,
        worker: Uuid,
        wait: Duration,
    ) -> Result<Option<Assignment>, ClientError> {
        let worker = worker.to_string();
        let request = self
            .request(Method::POST, &["workers", &worker, "request-task"])
            .query(&[("wait", wait.as_secs_f64().to_string())])
            .timeout(wait + self.timeout);
        self.maybe(request).await
    }

    // --- tasks ---

    /// `POST /tasks/{id}/progress`, under the task's lease.
    pub async fn progress(&self, task: Uuid, report: &ProgressReport) -> Result<Task, ClientError> {
        self.report(task, "progress", report).await
    }

    /// `POST /tasks/{id}/complete`, under the task's lease.
    pub async fn complete(&self, task: Uuid, report: &CompleteReport) -> Result<Task, ClientError> {
        self.report(task, "complete", report).await
    }

    /// `POST /tasks/{id}/fail`, under the task's lease.
    pub async fn fail(&self, task: Uuid, report: &FailReport) -> Result<Task, ClientError> {
        self.report(task, "fail", report).await
    }

    /// `POST /tasks/{id}/release`: hand the task back unfinished, under its
    /// lease.
    pub async fn release(&self, task: Uuid, report: &ReleaseReport) -> Result<Task, ClientError> {
        self.report(task, "release", report).await
    }

    async fn report<B: Serialize>(
        &self,
        task: Uuid,
        kind: &str,
        body: &B,
    ) -> Result<Task, ClientError> {
        let task = task.to_string();
        let request = self.request(Method::POST, &["tasks", &task, kind]);
        self.answer(request.json(body)).await
    }

    /// `GET /tasks/{id}`: one task with its history.
    pub async fn task(&self, id: impl Display) -> Result<TaskDetail, ClientError> {
        let id = id.to_string();
        self.answer(self.request(Method::GET, &["tasks", &id]))
            .await
    }

    /// `POST /tasks/{id}/requeue`: an operator puts one task back in the
    /// queue (a running one is taken from its worker).
    pub async fn requeue_task(&self, id: impl Display) -> Result<Task, ClientError> {
        let id = id.to_string();
        self.answer(self.request(Method::POST, &["tasks", &id, "requeue"]))
            .await
    }

    /// `GET /renders/{id}/frames`: the render's frames, from the broker's
    /// file storage (with their hashes) or its output root.
    pub async fn frames(&self, id: impl Display) -> Result<FrameList, ClientError> {
        let id = id.to_string();
        self.answer(self.request(Method::GET, &["renders", &id, "frames"]))
            .await
    }

    /// `GET /tasks/{id}/log`: the task's log so far (plain text).
    pub async fn task_log(&self, id: impl Display) -> Result<String, ClientError> {
        let id = id.to_string();
        let request = build(self.request(Method::GET, &["tasks", &id, "log"]))?;
        Ok(self.execute(request).await?.1)
    }

    // --- events ---

    /// `GET /events`: the farm's changes as they happen, only `render`'s
    /// when given, from after event `after` when given (else from now).
    /// The stream has no time limit (the broker sends a comment every 15 s
    /// while nothing happens); connecting has the client's.
    pub async fn events(
        &self,
        render: Option<Uuid>,
        after: Option<i64>,
    ) -> Result<EventStream, ClientError> {
        self.events_as(render, after).await
    }

    /// [`BrokerClient::events`], each event's data read as `T` (e.g.
    /// `serde::de::IgnoredAny` to count events without decoding them).
    pub async fn events_as<T: DeserializeOwned>(
        &self,
        render: Option<Uuid>,
        after: Option<i64>,
    ) -> Result<EventStream<T>, ClientError> {
        let mut request = self.stream_request(&["events"]);
        if let Some(render) = render {
            request = request.query(&[("render", render.to_string())]);
        }
        if let Some(after) = after {
            request = request.header("Last-Event-ID", after.to_string());
        }
        self.open_stream(request).await
    }

    /// `GET /events/summary`: the farm in numbers, at once and whenever they
    /// change (at most once a second).
    pub async fn summary(&self) -> Result<EventStream<FarmSummary>, ClientError> {
        self.open_stream(self.stream_request(&["events", "summary"]))
            .await
    }

    /// A request for an event stream: no time limit on the answer.
    fn stream_request(&self, segments: &[&str]) -> RequestBuilder {
        self.authorized(
            self.http
                .get(self.url(segments))
                .header(reqwest::header::ACCEPT, "text/event-stream"),
        )
    }

    async fn open_stream<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<EventStream<T>, ClientError> {
        let request = build(request)?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| self.not_sent(e))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = error::retry_after(response.headers());
            let text = response.text().await.unwrap_or_default();
            return Err(ClientError::from_answer(
                &self.base,
                status,
                text,
                retry_after,
            ));
        }
        Ok(EventStream::new(response, self.base.clone()))
    }

    // --- scheduler and health ---

    /// `GET /scheduler`: who leads it, its settings, its last tick.
    pub async fn scheduler(&self) -> Result<SchedulerStatus, ClientError> {
        self.answer(self.request(Method::GET, &["scheduler"])).await
    }

    /// `POST /scheduler/run`: run one tick now; what it did.
    pub async fn run_scheduler(&self) -> Result<TickReport, ClientError> {
        self.answer(self.request(Method::POST, &["scheduler", "run"]))
            .await
    }

    /// `GET /health`: the broker is up.
    pub async fn health(&self) -> Result<HealthReport, ClientError> {
        self.answer(self.request(Method::GET, &["health"])).await
    }

    /// `GET /ready`: the broker can serve (its store answers). Not ready is
    /// an [`ClientError::Unreachable`] with the broker's `Retry-After`.
    pub async fn ready(&self) -> Result<HealthReport, ClientError> {
        self.answer(self.request(Method::GET, &["ready"])).await
    }

    // --- one request ---

    /// A request to the route made of `segments` (each percent-encoded, so
    /// an id typed by a person cannot change the route), with the client's
    /// timeout.
    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.authorized(
            self.http
                .request(method, self.url(segments))
                .timeout(self.timeout),
        )
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.root.clone();
        // `new` made sure the address can take a path.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends `request`; the answer's body as JSON, which it must have.
    async fn answer<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let (path, body) = self.fetch(request).await?;
        body.ok_or_else(|| {
            self.unreachable(format!(
                "{path} answered without a body; is this a renderfarm broker?"
            ))
        })
    }

    /// Sends `request`; the answer's body as JSON, `None` for a 204.
    async fn maybe<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<Option<T>, ClientError> {
        Ok(self.fetch(request).await?.1)
    }

    /// Sends `request`; the route's path and the answer's body as JSON,
    /// `None` for a 204.
    async fn fetch<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<(String, Option<T>), ClientError> {
        let request = build(request)?;
        let path = request.url().path().to_string();
        let (status, text) = self.execute(request).await?;
        if status == StatusCode::NO_CONTENT {
            return Ok((path, None));
        }
        match serde_json::from_str(&text) {
            Ok(body) => Ok((path, Some(body))),
            Err(e) => Err(ClientError::Rejected(
                status,
                format!("the answer to {path} is not what this client expects ({e}); are the broker and this program the same version?"),
            )),
        }
    }

    /// Sends `request`; the answer's status and text when it succeeded, else
    /// the error sorted by what the caller should do.
    async fn execute(
        &self,
        request: reqwest::Request,
    ) -> Result<(StatusCode, String), ClientError> {
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| self.not_sent(e))?;
        let status = response.status();
        let retry_after = error::retry_after(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        if status.is_success() {
            Ok((status, text))
        } else {
            Err(ClientError::from_answer(
                &self.base,
                status,
                text,
                retry_after,
            ))
        }
    }

    /// The error for a request that got no answer: a certificate this
    /// client does not trust is a setting to change, anything else may pass.
    fn not_sent(&self, error: reqwest::Error) -> ClientError {
        match tls::certificate_problem(&error) {
            Some(cause) => ClientError::UntrustedCertificate {
                base: self.base.clone(),
                cause,
            },
            None => {
                let mut cause = error::describe(&error);
                if let Some(hint) = tls::scheme_hint(&error, self.root.scheme()) {
                    cause = format!("{cause}; {hint}");
                }
                self.unreachable(cause)
            }
        }
    }

    fn unreachable(&self, cause: String) -> ClientError {
        ClientError::Unreachable {
            base: self.base.clone(),
            cause,
            retry_after: None,
        }
    }
}

/// A request this client cannot even make (a body that does not serialise)
/// would never be accepted.
fn build(request: RequestBuilder) -> Result<reqwest::Request, ClientError> {
    request.build().map_err(|e| {
        ClientError::Rejected(
            StatusCode::BAD_REQUEST,
            format!("cannot make the request: {e}"),
        )
    })
}

/// The `limit` and `offset` query pairs that are set.
fn page_pairs(limit: Option<i64>, offset: Option<i64>) -> Vec<(&'static str, String)> {
    [("limit", limit), ("offset", offset)]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_appended_to_the_address_with_ids_encoded() {
        let client = BrokerClient::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(client.base(), "http://127.0.0.1:8080");
        assert_eq!(
            client.url(&["renders", "abc", "tasks"]).as_str(),
            "http://127.0.0.1:8080/renders/abc/tasks"
        );
        // An id typed with a slash or a question mark stays one segment.
        assert_eq!(
            client.url(&["renders", "a/b?c"]).as_str(),
            "http://127.0.0.1:8080/renders/a%2Fb%3Fc"
        );
        let behind_a_proxy = BrokerClient::new("https://farm.example/api").unwrap();
        assert_eq!(
            behind_a_proxy.url(&["workers"]).as_str(),
            "https://farm.example/api/workers"
        );
    }

    #[test]
    fn an_address_that_is_not_an_http_url_is_refused_before_anything_is_sent() {
        for base in [
            "127.0.0.1:8080",
            "localhost:8080",
            "ftp://farm",
            "",
            "http://",
        ] {
            let error = BrokerClient::new(base).expect_err(base);
            assert!(
                matches!(error, ClientError::InvalidAddress { .. }),
                "{base}: {error:?}"
            );
            assert!(!error.is_retryable());
            assert!(
                error.to_string().contains("http://127.0.0.1:8080"),
                "{error}"
            );
        }
    }

    #[test]
    fn pages_ask_only_for_what_was_set() {
        assert_eq!(page_pairs(None, None), vec![]);
        assert_eq!(
            page_pairs(Some(50), Some(0)),
            vec![("limit", "50".to_string()), ("offset", "0".to_string())]
        );
        assert_eq!(page_pairs(None, Some(7)), vec![("offset", "7".to_string())]);
    }

    /// A one-shot test double of a broker: a socket that answers any request
    /// with `status` (`429 Too Many Requests`), `headers` and `body`.
    async fn answering(status: &str, headers: &str, body: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let answer = format!(
            "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            socket.write_all(answer.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
        });
        address
    }

    #[tokio::test]
    async fn a_busy_broker_is_retried_after_the_time_it_asked_for() {
        let address = answering(
            "429 Too Many Requests",
            "retry-after: 5\r\ncontent-type: application/json\r\n",
            r#"{"error": "too_many_requests", "message": "wait: busy"}"#,
        )
        .await;
        let client = BrokerClient::new(&address).unwrap();
        let error = client
            .request_task(Uuid::nil(), Duration::from_secs(1))
            .await
            .expect_err("turned away");
        assert!(error.is_retryable(), "{error}");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(5)));
        assert!(error.to_string().contains("wait: busy"), "{error}");
    }

    #[tokio::test]
    async fn nothing_to_do_is_none_and_a_closed_port_is_unreachable() {
        let address = answering("204 No Content", "retry-after: 1\r\n", "").await;
        let client = BrokerClient::new(&address).unwrap();
        let answer = client
            .request_task(Uuid::nil(), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(answer, None);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let error = BrokerClient::new(&closed)
            .unwrap()
            .workers()
            .await
            .expect_err("nobody listens");
        assert!(error.is_retryable(), "{error:?}");
        assert_eq!(error.retry_after(), None);
        assert!(error.to_string().contains(&closed), "{error}");
    }
}
