//! A worker's hours (`domain::availability`): what its agent reports at
//! each start, and an operator's, which win until cleared.

use actix_web::{web, HttpResponse};
use renderfarm_wire::{AvailabilityOverride, Worker, WorkerHours};

use super::auth::{Access, Operator, RegisteredWorker};
use super::{parse_id, resource, ApiError, AppState, JsonBody};
use crate::domain::{validate_schedule, validate_worker_hours};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/workers/{id}/hours", "PUT").route(web::put().to(report)))
        .service(
            resource("/workers/{id}/availability", "PUT, DELETE")
                .route(web::put().to(set))
                .route(web::delete().to(clear)),
        );
}

/// Report the hours an agent was started with.
///
/// Sent by the worker itself each time its agent starts (a registration is
/// kept across restarts; its `--available`, `--time-zone` and
/// `--strict-hours` may change). Replaces what the agent reported before;
/// an operator's hours, if set, stay in force. Outside its hours a worker
/// takes no new task.
#[utoipa::path(
    put,
    path = "/workers/{id}/hours",
    tag = "workers",
    operation_id = "report_worker_hours",
    params(("id" = uuid::Uuid, Path, description = "The worker's id.")),
    request_body = WorkerHours,
    security(("bearer" = ["worker"])),
    responses(
        (status = 200, description = "The worker, its hours in force.", body = Worker),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn report(
    access: Access<RegisteredWorker>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<WorkerHours>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    access.caller.require_worker(id)?;
    let hours = validate_worker_hours(
        body.time_zone.as_deref(),
        body.available.as_deref(),
        body.strict_hours,
    )?;
    let worker = state
        .store
        .set_worker_hours(id, hours, state.clock.now())
        .await?;
    // A worker whose hours now include the present may take waiting work.
    state.wake_workers();
    Ok(HttpResponse::Ok().json(worker))
}

/// Set a worker's hours.
///
/// Kept until cleared (`DELETE`), across the agent's restarts, and winning
/// over the agent's `--available`; read in the worker's own time zone.
/// `always` lets it take work at any time. A worker outside its new hours
/// takes no new task; the one it runs finishes, unless it keeps its hours
/// strictly (`--strict-hours`), in which case its next heartbeat hands the
/// task back to the queue.
#[utoipa::path(
    put,
    path = "/workers/{id}/availability",
    tag = "workers",
    operation_id = "set_worker_availability",
    params(("id" = uuid::Uuid, Path, description = "The worker's id.")),
    request_body = AvailabilityOverride,
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "The worker, the operator's hours in force.", body = Worker),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn set(
    _access: Access<Operator>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<AvailabilityOverride>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    let schedule = validate_schedule("available", &body.available)?;
    let worker = state
        .store
        .set_operator_hours(id, Some(schedule), state.clock.now())
        .await?;
    state.wake_workers();
    Ok(HttpResponse::Ok().json(worker))
}

/// Clear an operator's hours for a worker.
///
/// The agent's own (`--available`) apply again; none: at any time.
#[utoipa::path(
    delete,
    path = "/workers/{id}/availability",
    tag = "workers",
    operation_id = "clear_worker_availability",
    params(("id" = uuid::Uuid, Path, description = "The worker's id.")),
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "The worker, the agent's hours in force.", body = Worker),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn clear(
    _access: Access<Operator>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("worker", &id)?;
    let worker = state
        .store
        .set_operator_hours(id, None, state.clock.now())
        .await?;
    state.wake_workers();
    Ok(HttpResponse::Ok().json(worker))
}
