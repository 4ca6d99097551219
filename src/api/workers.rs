//! `/workers`: registration, operator changes, heartbeats and the pull of work.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use renderfarm_wire::{
    Assignment, ErrorBody, Heartbeat, HeartbeatReply, InputFrame, RegisteredWorker as Registration,
    TaskKind, Worker, WorkerAction, WorkerSpec, WorkerStatusChange,
};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::auth::{
    Access, Caller, Enrolment, Operator, OperatorOrWorker, RegisteredWorker, Viewer,
};
use super::{parse_id, resource, ApiError, AppState, JsonBody};
use crate::credentials::random_bytes;
use crate::domain::{plan_worker_secret, validate_worker_spec};

/// The longest a worker may wait in one `request-task`.
pub const MAX_WAIT_SECONDS: f64 = 60.0;
/// Seconds a worker told "nothing to do" should wait before asking again.
const IDLE_RETRY_AFTER: &str = "1";
/// Seconds a worker turned away by `--max-waiting` waits before asking again.
const FULL_RETRY_AFTER_SECS: u64 = 5;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/workers", "GET, POST")
            .route(web::post().to(register))
            .route(web::get().to(list)),
    )
    .service(
        resource("/workers/{id}", "GET, DELETE")
            .route(web::get().to(get))
            .route(web::delete().to(remove)),
    )
    .service(resource("/workers/{id}/secret", "DELETE").route(web::delete().to(revoke_secret)))
    .service(resource("/workers/{id}/status", "PUT").route(web::put().to(change_status)))
    .service(resource("/workers/{id}/heartbeat", "POST").route(web::post().to(heartbeat)))
    .service(resource("/workers/{id}/request-task", "POST").route(web::post().to(request_task)));
}

/// Register a worker agent.
///
/// Needs an enrolment token (role `worker`). Keep the `id` and the `secret`:
/// every later call of the agent names the id and sends the secret as its
/// bearer token; a worker can act only as itself.
#[utoipa::path(
    post,
    path = "/workers",
    tag = "workers",
    operation_id = "register_worker",
    request_body = WorkerSpec,
    security(("bearer" = ["worker"])),
    responses(
        (status = 201, description = "Registered: the worker and the secret it acts with from now on.", body = Registration,
            headers(("Location" = String, description = "The worker: `/workers/{id}`.")),
            links(
                ("request_task" = (operation_id = "request_task", parameters(("id" = "$response.body#/id")), description = "Ask for work.")),
                ("heartbeat" = (operation_id = "heartbeat", parameters(("id" = "$response.body#/id")), request_body = json!({}), description = "Say it is alive while idle.")),
                ("get_worker" = (operation_id = "get_worker", parameters(("id" = "$response.body#/id")), description = "The worker.")),
                ("change_worker_status" = (operation_id = "change_worker_status", parameters(("id" = "$response.body#/id")), description = "Drain, disable or enable it.")),
            )),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn register(
    access: Access<Enrolment>,
    state: web::Data<AppState>,
    body: JsonBody<WorkerSpec>,
) -> Result<HttpResponse, ApiError> {
    let spec = validate_worker_spec(body.into_inner())?;
    let now = state.clock.now();
    let worker = state.store.register_worker(spec, now).await?;
    // The worker's own credential; with auth off there is none to give. A
    // broker that dies between the two writes leaves a worker nobody can
    // act as, which goes offline like any silent one.
    let secret = match access.caller {
        Caller::Trusted => None,
        Caller::Token(_) => {
            let random = random_bytes().map_err(ApiError::Unexpected)?;
            let new = plan_worker_secret(worker.id, &worker.name, Uuid::now_v7(), random, now);
            state.store.create_token(new.token).await?;
            Some(new.secret)
        }
    };
    tracing::info!(worker_id = %worker.id, name = %worker.name, "worker registered");
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/workers/{}", worker.id)))
        .json(Registration { worker, secret }))
}

/// Every worker the broker knows, with its status and current task.
#[utoipa::path(
    get,
    path = "/workers",
    tag = "workers",
    operation_id = "list_workers",
    security(("bearer" = ["operator", "worker"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "The workers, in registration order.", body = Vec<Worker>),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn list(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.list_workers(state.clock.now()).await?))
}

/// One worker.
#[utoipa::path(
    get,
    path = "/workers/{id}",
    tag = "workers",
    operation_id = "get_worker",
    params(("id" = Uuid, Path, description = "The worker's id.")),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The worker.", body = Worker),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn get(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    Ok(HttpResponse::Ok().json(state.store.get_worker(id, state.clock.now()).await?))
}

/// Drain, disable or enable a worker.
///
/// `drain`: finish the current task, take no new one (asking for work gets
/// 204). `disable`: take no work at all (asking gets 409); its current task
/// goes back to the queue without counting a failure. `enable`: back to work.
///
/// A worker may also call this as itself: its agent drains it when it
/// stops, and enables it when it starts again, which succeeds only out of
/// that drain of its own (409 when an operator drained or disabled it: the
/// operator's change stands).
#[utoipa::path(
    put,
    path = "/workers/{id}/status",
    tag = "workers",
    operation_id = "change_worker_status",
    params(("id" = Uuid, Path, description = "The worker's id.")),
    request_body = WorkerStatusChange,
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "The worker after the change.", body = Worker),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn change_status(
    access: Access<OperatorOrWorker>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<WorkerStatusChange>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    if access.caller.worker_id().is_some() {
        access.caller.require_worker(id)?;
        if body.action == WorkerAction::Disable {
            return Err(ApiError::Forbidden(
                "a worker may only drain itself, and enable itself out of its own drain; disabling workers is for operators"
                    .into(),
            ));
        }
        let worker = state
            .store
            .change_worker_itself(id, body.action, state.clock.now())
            .await?;
        state.wake_workers();
        return Ok(HttpResponse::Ok().json(worker));
    }
    let worker = state
        .store
        .change_worker(id, body.action, access.caller.name(), state.clock.now())
        .await?;
    // Disabling a busy worker puts its task back in the queue.
    state.wake_workers();
    Ok(HttpResponse::Ok().json(worker))
}

/// Tell the broker the worker is alive (and how far its task is).
///
/// While rendering, send the `task_id` and `lease_id` of the assignment; the
/// answer says whether to go on (`continue`) or to stop at once and send
/// nothing more under that lease (`abort`: the render was canceled or the
/// task given to someone else). When idle, send `{}`.
#[utoipa::path(
    post,
    path = "/workers/{id}/heartbeat",
    tag = "workers",
    operation_id = "heartbeat",
    params(("id" = Uuid, Path, description = "The worker's id.")),
    request_body = Heartbeat,
    security(("bearer" = ["worker"])),
    responses(
        (status = 200, description = "What to do with the task held.", body = HeartbeatReply),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn heartbeat(
    access: Access<RegisteredWorker>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<Heartbeat>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    access.caller.require_worker(id)?;
    // Checked here, not only against the task: a beat from an idle worker,
    // or under a stale lease, never reaches the task.
    if let Some(frames) = body.frames_done.filter(|f| *f < 0) {
        return Err(ApiError::Invalid(format!(
            "frames_done is {frames}; give 0 or more"
        )));
    }
    let action = state.store.heartbeat(id, &body, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(HeartbeatReply { action }))
}

/// `?wait=`; any other parameter is refused.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct RequestQuery {
    /// Seconds to wait for work before answering 204 (0 to 60, fractions
    /// allowed); 0 answers at once.
    #[param(nullable = false, minimum = 0, maximum = 60, default = 0, example = 30)]
    wait: Option<f64>,
}

fn wait_duration(wait: Option<f64>) -> Result<Duration, ApiError> {
    let seconds = wait.unwrap_or(0.0);
    if !(0.0..=MAX_WAIT_SECONDS).contains(&seconds) {
        return Err(ApiError::Invalid(format!(
            "wait is {seconds}; give 0 to {MAX_WAIT_SECONDS} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A follow-up of a render whose frames were uploaded names them, so that
/// its worker fetches them by hash (`GET /files/{sha256}`, a worker's
/// route) rather than through the viewers' frame routes.
async fn with_inputs(state: &AppState, mut assignment: Assignment) -> Result<Assignment, ApiError> {
    if assignment.kind != TaskKind::Blender && assignment.upload_frames {
        assignment.inputs = state
            .store
            .render_frames(assignment.render_id, None)
            .await?
            .into_iter()
            .map(|f| InputFrame {
                frame: f.frame,
                name: f.name,
                sha256: f.sha256,
                bytes: f.bytes,
            })
            .collect();
    }
    Ok(assignment)
}

/// Ask for a task (the pull).
///
/// Answers the next task by priority, then age, then frames, that the
/// worker's tags allow, with a fresh `lease_id`; or 204 when there is none.
/// Asking again while holding a task returns the same assignment. A draining
/// worker gets 204, a disabled one 409. With `?wait=S` the broker holds the
/// request up to S seconds until work appears (a long poll).
#[utoipa::path(
    post,
    path = "/workers/{id}/request-task",
    tag = "workers",
    operation_id = "request_task",
    params(("id" = Uuid, Path, description = "The worker's id."), RequestQuery),
    security(("bearer" = ["worker"])),
    responses(
        (status = 200, description = "A task to render, under a new lease.", body = Assignment,
            links(
                ("get_task" = (operation_id = "get_task", parameters(("id" = "$response.body#/task_id")), description = "The task.")),
                ("get_task_log" = (operation_id = "get_task_log", parameters(("id" = "$response.body#/task_id")), description = "Its log.")),
                ("heartbeat" = (operation_id = "heartbeat", parameters(("id" = "$request.path.id")), request_body = json!({"task_id": "$response.body#/task_id", "lease_id": "$response.body#/lease_id"}), description = "Say the worker is alive and rendering it.")),
                ("report_progress" = (operation_id = "report_progress", parameters(("id" = "$response.body#/task_id")), request_body = json!({"lease_id": "$response.body#/lease_id", "frames_done": 1}), description = "Report progress under the lease.")),
                ("report_complete" = (operation_id = "report_complete", parameters(("id" = "$response.body#/task_id")), request_body = json!({"lease_id": "$response.body#/lease_id"}), description = "Report it done under the lease.")),
                ("report_failure" = (operation_id = "report_failure", parameters(("id" = "$response.body#/task_id")), request_body = json!({"lease_id": "$response.body#/lease_id", "exit_code": 1, "reason": "Error: Build without OpenImageDenoiser"}), description = "Report it failed under the lease.")),
                ("release_task" = (operation_id = "release_task", parameters(("id" = "$response.body#/task_id")), request_body = json!({"lease_id": "$response.body#/lease_id"}), description = "Hand it back under the lease.")),
            )),
        (status = 204, description = "No work for this worker now (or it is draining); ask again after `Retry-After`.",
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again."))),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 429, response = super::openapi::TooManyRequests),
        super::openapi::StoreErrors,
    )
)]
// Waiting requests are woken by [`AppState::wake_workers`], not by polling
// the store.
pub(super) async fn request_task(
    access: Access<RegisteredWorker>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<RequestQuery>,
) -> Result<HttpResponse, ApiError> {
    let id: Uuid = parse_id("worker", &id)?;
    access.caller.require_worker(id)?;
    let deadline = tokio::time::Instant::now() + wait_duration(query.wait)?;
    let mut slot = None;
    loop {
        // Registered before the claim, so work submitted between the claim and
        // the wait still wakes this request.
        let woken = state.work_available.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let started = std::time::Instant::now();
        let span = crate::telemetry::trace_span(|| {
            tracing::info_span!(
                "claim",
                worker_id = %id,
                task_id = tracing::field::Empty,
                render_id = tracing::field::Empty
            )
        });
        let claimed = tracing::Instrument::instrument(
            state.store.claim_next_task(id, state.clock.now()),
            span.clone(),
        )
        .await;
        crate::metrics::replica().claim(started.elapsed());
        // Recorded for the exported span; no log line is written inside it
        // after the claim, and each record formats a JSON span's fields anew.
        if let (true, Ok(Some(assignment))) = (crate::telemetry::exporting(), &claimed) {
            span.record("task_id", tracing::field::display(assignment.task_id));
            span.record("render_id", tracing::field::display(assignment.render_id));
        }
        if let Some(assignment) = claimed? {
            let assignment = with_inputs(&state, assignment).await?;
            // A task failed for its paths leaves the worker free: look again.
            match super::variables::for_worker(&state, id, assignment).await? {
                Some(assignment) => return Ok(HttpResponse::Ok().json(assignment)),
                None => continue,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(HttpResponse::NoContent()
                .insert_header((header::RETRY_AFTER, IDLE_RETRY_AFTER))
                .finish());
        }
        // Only a request that must wait takes a place among the waiting.
        if slot.is_none() {
            slot = Some(state.wait_slot().ok_or_else(|| {
                ApiError::TooManyRequests {
                    message: format!(
                        "{} workers are waiting for work on this broker already, as many as it holds (--max-waiting); ask again after Retry-After seconds, or raise --max-waiting",
                        state.max_waiting
                    ),
                    retry_after_secs: FULL_RETRY_AFTER_SECS,
                }
            })?);
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Remove a worker.
///
/// Its running task goes back to the queue at once (not counted as a
/// failure), its secrets are revoked, and it is forgotten. An agent still
/// running there must enrol again to work.
#[utoipa::path(
    delete,
    path = "/workers/{id}",
    tag = "workers",
    operation_id = "remove_worker",
    params(("id" = Uuid, Path, description = "The worker's id.")),
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, description = "Someone enabled the worker again between its disabling and its removal; nothing more changed. Ask again.", body = ErrorBody),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn remove(
    access: Access<Operator>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    let now = state.clock.now();
    // Each step holds if the broker dies after it, and repeating the call
    // finishes the rest: disabling takes the task back and stops claims,
    // then the secrets go, then the record.
    state
        .store
        .change_worker(id, WorkerAction::Disable, access.caller.name(), now)
        .await?;
    state.wake_workers();
    state.store.revoke_worker_secrets(id, now).await?;
    state.auth.forget_all();
    state.store.delete_worker(id).await?;
    tracing::info!(worker_id = %id, "worker removed");
    Ok(HttpResponse::NoContent().finish())
}

/// Revoke a worker's secret.
///
/// The worker can no longer act: its agent must enrol again (and becomes a
/// new worker); its running task returns to the queue when the worker is
/// found lost. To stop it at once and forget it, remove it instead.
#[utoipa::path(
    delete,
    path = "/workers/{id}/secret",
    tag = "workers",
    operation_id = "revoke_worker_secret",
    params(("id" = Uuid, Path, description = "The worker's id.")),
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 204, description = "Revoked."),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn revoke_secret(
    _access: Access<Operator>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    state.store.get_worker(id, state.clock.now()).await?;
    state
        .store
        .revoke_worker_secrets(id, state.clock.now())
        .await?;
    state.auth.forget_all();
    tracing::info!(worker_id = %id, "worker secret revoked");
    Ok(HttpResponse::NoContent().finish())
}
