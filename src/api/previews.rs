//! Live previews (issue 15): a render's workers send a small JPEG of the
//! newest frame they saved; the dashboard and the Blender add-on show it
//! while the render runs.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

use super::auth::{Access, RegisteredWorker, Viewer};
use super::files::content_length;
use super::{parse_id, resource, ApiError, AppState};
use crate::domain::preview::{check_preview, MAX_PREVIEW_BYTES};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/renders/{id}/preview", "GET").route(web::get().to(get)))
        .service(resource("/tasks/{id}/preview", "PUT").route(web::put().to(upload)));
}

/// The header naming the frame a preview shows.
pub const PREVIEW_FRAME_HEADER: &str = "X-Preview-Frame";

/// The newest preview of a render.
///
/// A small JPEG (320 pixels wide as the agent makes it) of the last frame a
/// worker of the render saved and sent, replaced as the render goes on:
/// while it renders, a look at the work in progress. `X-Preview-Frame` names
/// the frame it shows. 404 (JSON) before the first preview arrives.
#[utoipa::path(
    get,
    path = "/renders/{id}/preview",
    tag = "renders",
    operation_id = "get_render_preview",
    params(("id" = Uuid, Path, description = "The render's id.")),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The preview.", content(("image/jpeg")), headers(
            ("X-Preview-Frame" = i64, description = "The frame it shows."),
            ("Last-Modified" = String, description = "When it arrived."),
        )),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn get(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    let Some(preview) = state.store.preview(id).await? else {
        // One read for the common case; the render's existence only for
        // the message.
        state.store.get_render(id).await?;
        return Err(ApiError::NotFound(format!(
            "render {id} has no preview yet: its workers send one as they save frames; try again once it renders"
        )));
    };
    Ok(HttpResponse::Ok()
        .content_type("image/jpeg")
        .insert_header((PREVIEW_FRAME_HEADER, preview.frame.to_string()))
        .insert_header((
            header::LAST_MODIFIED,
            header::HttpDate::from(std::time::SystemTime::from(preview.stored_at)),
        ))
        // A new preview replaces this one under the same URL.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(preview.jpeg))
}

/// `PUT /tasks/{id}/preview`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PreviewQuery {
    /// The lease of the task's assignment.
    lease_id: Uuid,
    /// The frame the preview shows: one of the task's frames.
    #[param(minimum = 0)]
    frame: i64,
}

/// Send the preview of a frame a task saved (its worker, under the lease).
///
/// The body is a JPEG of at most 262,144 bytes (the agent makes them 320
/// pixels wide). It becomes the render's preview (`GET
/// /renders/{id}/preview`), replacing the one before. 409 when the lease is
/// stale and 403 when another worker holds the task: nothing kept.
#[utoipa::path(
    put,
    path = "/tasks/{id}/preview",
    tag = "tasks",
    operation_id = "upload_preview",
    params(("id" = Uuid, Path, description = "The task's id."), PreviewQuery),
    request_body(content = Vec<u8>, content_type = "image/jpeg", description = "The preview, a JPEG."),
    security(("bearer" = ["worker"])),
    responses(
        (status = 204, description = "The preview is the render's now."),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 413, response = super::openapi::PayloadTooLarge),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn upload(
    access: Access<RegisteredWorker>,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<PreviewQuery>,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let task_id = parse_id("task", &id)?;
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "a preview is at most {MAX_PREVIEW_BYTES} bytes; send a smaller JPEG (320 pixels wide is plenty)"
        ))
    };
    if content_length(&req)?.is_some_and(|n| n > MAX_PREVIEW_BYTES as u64) {
        return Err(too_large());
    }
    let mut jpeg = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::Invalid(format!(
                "the preview did not arrive whole ({e}); nothing was kept. Send it again"
            ))
        })?;
        if jpeg.len() + chunk.len() > MAX_PREVIEW_BYTES {
            return Err(too_large());
        }
        jpeg.extend_from_slice(&chunk);
    }
    check_preview(&jpeg)?;
    let query = query.into_inner();
    state
        .store
        .record_preview(
            access.caller.worker_id(),
            task_id,
            query.lease_id,
            query.frame,
            jpeg,
            state.clock.now(),
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
