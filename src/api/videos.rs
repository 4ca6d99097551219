//! A render's video: made by its `ffmpeg` task once its frames are all
//! rendered (`domain::video`), sent to the broker under that task's lease
//! and kept in the file storage under its hash.

use actix_web::{web, HttpRequest, HttpResponse};
use renderfarm_wire::FileInfo;
use serde::Deserialize;
use uuid::Uuid;

use super::auth::{Access, RegisteredWorker, Viewer};
use super::files::{body_stream, content_length, serve_file};
use super::{parse_id, resource, ApiError, AppState};
use crate::domain::files::Sha256;
use crate::files::Uploaded;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/renders/{id}/video", "GET").route(web::get().to(video)))
        .service(resource("/tasks/{id}/video", "PUT").route(web::put().to(upload)));
}

/// A render's video, as an MP4.
///
/// 404 while it has none: none asked for, its frames still rendering, or
/// its video task not done (`video_status` on the render says which).
/// Honours `Range: bytes=N-` (206), so players can seek.
#[utoipa::path(
    get,
    path = "/renders/{id}/video",
    tag = "renders",
    operation_id = "get_render_video",
    params(("id" = Uuid, Path, description = "The render's id.")),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The video.", content(("video/mp4"))),
        (status = 206, description = "The bytes of the `Range` asked.", content(("video/mp4")),
            headers(("Content-Range" = String, description = "`bytes START-END/SIZE`."))),
        (status = 416, response = super::openapi::RangeNotSatisfiable),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn video(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    let render = state.store.get_render(id).await?;
    let missing = || {
        let why = match (&render.video, render.video_status) {
            (None, _) => "none was asked for at submit (\"video\": {\"fps\": 24})".to_string(),
            (Some(_), None) => format!(
                "its frames are still {}; the video is made once they are all rendered",
                render.status.as_str()
            ),
            (Some(_), Some(status)) => format!(
                "its video task is {}; GET /renders/{id}/tasks lists it (kind ffmpeg)",
                status.as_str()
            ),
        };
        ApiError::NotFound(format!("render {id} has no video: {why}"))
    };
    let Some(file) = state.store.render_video(id).await? else {
        return Err(missing());
    };
    let sha = Sha256::parse("sha256", &file.sha256)
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("a stored video's hash: {e}")))?;
    serve_file(&state, &req, &sha, "video/mp4", missing).await
}

/// `?lease_id=&sha256=` of a video upload.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct VideoUploadQuery {
    /// The lease of the task's assignment.
    lease_id: Uuid,
    /// The SHA-256 of the body: 64 lowercase hex digits.
    #[param(pattern = "^[0-9a-f]{64}$")]
    sha256: String,
}

/// Upload the video an `ffmpeg` task made (its worker, under the lease).
///
/// The body is the MP4. The broker checks the lease first (409 when stale,
/// 403 when another worker holds the task: nothing stored), then takes the
/// body, checks its size against `Content-Length` and its hash against
/// `sha256` (400 on a mismatch, nothing stored), and keeps it as the
/// render's video, replacing one sent before. 400 for a task that is not a
/// video task. The task completes only once its video is stored. 507 when
/// the broker's file storage is full: nothing is stored, the task stays
/// running.
#[utoipa::path(
    put,
    path = "/tasks/{id}/video",
    tag = "tasks",
    operation_id = "upload_video",
    params(("id" = Uuid, Path, description = "The task's id."), VideoUploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The MP4 file."),
    security(("bearer" = ["worker"])),
    responses(
        (status = 201, description = "The video is stored.", body = FileInfo),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 413, response = super::openapi::FileTooLarge),
        (status = 507, response = super::openapi::InsufficientStorage),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn upload(
    access: Access<RegisteredWorker>,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<VideoUploadQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let task_id = parse_id("task", &id)?;
    let query = query.into_inner();
    let sha = Sha256::parse("sha256", &query.sha256)?;
    let bytes = content_length(&req)?
        .ok_or_else(|| ApiError::Invalid("send Content-Length: the video file's size".into()))?;
    let holder = access.caller.worker_id();
    // The lease and the kind before the body: a stale worker's video, or a
    // chunk's, is not taken in.
    let task = state
        .store
        .leased_task(holder, task_id, query.lease_id)
        .await?;
    if task.kind != renderfarm_wire::TaskKind::Ffmpeg {
        return Err(ApiError::Invalid(format!(
            "task {task_id} is a chunk of frames, not a video task; it uploads frames with PUT /tasks/{task_id}/frames/{{frame}}"
        )));
    }
    let now = state.clock.now();
    match state
        .files
        .upload_afresh(&sha, bytes, body_stream(payload), now)
        .await
    {
        Ok(Uploaded::Stored(_) | Uploaded::Already(_)) => {}
        Ok(Uploaded::Partial(_)) => {
            return Err(ApiError::Unexpected(anyhow::anyhow!(
                "a whole video upload was taken as a part"
            )))
        }
        Err(crate::files::FilesError::Cut { .. }) => {
            let _ = state.files.discard_partial(&sha).await;
            return Err(ApiError::Invalid(
                "the video's body did not arrive whole; nothing was stored. Send it again".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let file = FileInfo {
        sha256: sha.to_string(),
        bytes,
    };
    state
        .store
        .record_video(holder, task_id, query.lease_id, file.clone())
        .await?;
    tracing::info!(task_id = %task_id, render_id = %task.render_id, sha256 = %sha, bytes, "video stored");
    Ok(HttpResponse::Created().json(file))
}
