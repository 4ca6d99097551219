//! `/workers`: registration, operator changes, heartbeats and the pull of work.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use renderfarm_wire::{Heartbeat, HeartbeatReply, WorkerSpec, WorkerStatusChange};
use serde::Deserialize;
use uuid::Uuid;

use super::{parse_id, resource, ApiError, AppState, JsonBody};
use crate::domain::validate_worker_spec;

/// The longest a worker may wait in one `request-task`.
pub const MAX_WAIT_SECONDS: f64 = 60.0;
/// Seconds a worker told "nothing to do" should wait before asking again.
const IDLE_RETRY_AFTER: &str = "1";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/workers", "GET, POST")
            .route(web::post().to(register))
            .route(web::get().to(list)),
    )
    .service(resource("/workers/{id}", "GET").route(web::get().to(get)))
    .service(resource("/workers/{id}/status", "PUT").route(web::put().to(change_status)))
    .service(resource("/workers/{id}/heartbeat", "POST").route(web::post().to(heartbeat)))
    .service(resource("/workers/{id}/request-task", "POST").route(web::post().to(request_task)));
}

async fn register(
    state: web::Data<AppState>,
    body: JsonBody<WorkerSpec>,
) -> Result<HttpResponse, ApiError> {
    let spec = validate_worker_spec(body.into_inner())?;
    let worker = state.store.register_worker(spec, state.clock.now()).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/workers/{}", worker.id)))
        .json(worker))
}

async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.list_workers().await?))
}

async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    Ok(HttpResponse::Ok().json(state.store.get_worker(id).await?))
}

async fn change_status(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<WorkerStatusChange>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    let worker = state
        .store
        .change_worker(id, body.action, state.clock.now())
        .await?;
    // Disabling a busy worker puts its task back in the queue.
    state.wake_workers();
    Ok(HttpResponse::Ok().json(worker))
}

async fn heartbeat(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<Heartbeat>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    let action = state.store.heartbeat(id, &body, state.clock.now()).await?;
    Ok(HttpResponse::Ok().json(HeartbeatReply { action }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestQuery {
    /// Seconds to wait for work before answering 204.
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

/// Hands the worker a task. With `?wait=S` it waits up to S seconds for work
/// to appear, woken by [`AppState::wake_workers`], not by polling the store.
async fn request_task(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<RequestQuery>,
) -> Result<HttpResponse, ApiError> {
    let id: Uuid = parse_id("worker", &id)?;
    let deadline = tokio::time::Instant::now() + wait_duration(query.wait)?;
    loop {
        // Registered before the claim, so work submitted between the claim and
        // the wait still wakes this request.
        let woken = state.work_available.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(assignment) = state.store.claim_next_task(id, state.clock.now()).await? {
            return Ok(HttpResponse::Ok().json(assignment));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(HttpResponse::NoContent()
                .insert_header((header::RETRY_AFTER, IDLE_RETRY_AFTER))
                .finish());
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
