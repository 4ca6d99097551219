//! A render's blocklist: which workers failed its chunks, and which get no
//! more of them (`domain::after_failure`); operators clear it.

use actix_web::{web, HttpResponse};
use renderfarm_wire::BlocklistEntry;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::auth::{Access, Operator, Viewer};
use super::{parse_id, resource, ApiError, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/renders/{id}/blocklist", "GET, DELETE")
            .route(web::get().to(list))
            .route(web::delete().to(clear)),
    );
}

/// A render's blocklist.
///
/// Every worker with a failed chunk of the render: how many, and whether
/// it is blocked (it gets no more of the render's chunks, from its
/// `blocklist_after`-th failure until the entry expires or is cleared).
#[utoipa::path(
    get,
    path = "/renders/{id}/blocklist",
    tag = "renders",
    operation_id = "render_blocklist",
    params(("id" = Uuid, Path, description = "The render's id.")),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The entries, by worker id.", body = Vec<BlocklistEntry>),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn list(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    let expiry = state.scheduler.settings().blocklist_expiry;
    let entries: Vec<BlocklistEntry> = state
        .store
        .blocklist(id)
        .await?
        .into_iter()
        .map(|e| BlocklistEntry {
            worker_id: e.worker_id,
            worker_name: e.worker_name,
            failures: e.failures,
            blocked: e.blocked_at.is_some(),
            blocked_at: e.blocked_at,
            expires_at: e.blocked_at.zip(expiry).map(|(at, ttl)| at + ttl),
        })
        .collect();
    Ok(HttpResponse::Ok().json(entries))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ClearQuery {
    /// Clear only this worker's entry.
    worker_id: Option<String>,
}

/// Clear a render's blocklist.
///
/// Every entry, or one worker's (`?worker_id=`): the workers take its
/// chunks again, their failures counted from zero. Workers waiting for work
/// are woken.
#[utoipa::path(
    delete,
    path = "/renders/{id}/blocklist",
    tag = "renders",
    operation_id = "clear_render_blocklist",
    params(("id" = Uuid, Path, description = "The render's id."), ClearQuery),
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 204, description = "Cleared."),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn clear(
    _access: Access<Operator>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<ClearQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    let worker: Option<Uuid> = query
        .worker_id
        .as_deref()
        .map(|w| parse_id("worker", w))
        .transpose()?;
    let cleared = state.store.clear_blocklist(id, worker).await?;
    tracing::info!(render_id = %id, entries = cleared, "blocklist cleared");
    state.wake_workers();
    Ok(HttpResponse::NoContent().finish())
}
