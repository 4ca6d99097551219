//! `/scheduler`: what the periodic tick did, and running it now.

use actix_web::{web, HttpResponse};
#[allow(unused_imports)] // the annotations' examples use json!
use serde_json::json;

#[allow(unused_imports)] // named by the OpenAPI annotations
use renderfarm_wire::{SchedulerStatus, TickReport};

use super::auth::{Access, Operator};
use super::{resource, ApiError, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/scheduler", "GET").route(web::get().to(status)))
        .service(resource("/scheduler/run", "POST").route(web::post().to(run)));
}

/// The scheduler: who leads it, its settings, the last tick's report and
/// when the next tick runs.
#[utoipa::path(
    get,
    path = "/scheduler",
    tag = "scheduler",
    operation_id = "get_scheduler",
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "The scheduler as this broker sees it.", body = SchedulerStatus,
            example = json!({"instance": "render-01-4242-1a2b3c4d", "leader": {"holder": "render-01-4242-1a2b3c4d", "expires_at": "2026-11-24T02:10:30Z"}, "is_leader": true,
                "last_report": {"requeued": 1, "retried": 0, "failed": 0, "preempted": 1, "workers_wanted": 0, "workers_lost": 1, "purged": 0, "ran_at": "2026-11-24T02:09:00Z"},
                "next_tick_at": "2026-11-24T02:09:30Z", "tick_seconds": 30.0, "worker_timeout_seconds": 60.0,
                "allowances": {"low": null, "normal": 1800.0, "high": 120.0, "urgent": 0.0}, "keep_finished_seconds": 2592000.0})),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn status(
    _access: Access<Operator>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.scheduler.status().await?))
}

/// Runs one scheduler tick now, on this broker, whoever leads: lost workers'
/// tasks requeued, failed tasks retried, overdue work preempting lower work,
/// render counters recounted, finished renders past the retention deleted.
#[utoipa::path(
    post,
    path = "/scheduler/run",
    tag = "scheduler",
    operation_id = "run_scheduler",
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "What the tick did.", body = TickReport,
            example = json!({"requeued": 1, "retried": 0, "failed": 0, "preempted": 1, "workers_wanted": 0, "workers_lost": 1, "purged": 0, "ran_at": "2026-11-24T02:09:00Z"})),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn run(
    _access: Access<Operator>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.scheduler.tick().await?))
}
