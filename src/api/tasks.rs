//! `/tasks`: inspect a task and its log; the lease-guarded worker reports.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use renderfarm_wire::{
    CompleteReport, FailReport, ProgressReport, ReleaseReport, Task, TaskDetail, TaskKind,
    TaskStatus,
};
use uuid::Uuid;

use super::auth::{Access, Operator, RegisteredWorker, Viewer};
use super::{parse_id, resource, ApiError, AppState, JsonBody};
use crate::domain::files::{missing_frames, missing_frames_message};
use crate::domain::TaskReport;

/// The longest failure reason kept; the full output is in the task's log.
const MAX_REASON_BYTES: usize = 64 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/tasks/{id}", "GET").route(web::get().to(get)))
        .service(resource("/tasks/{id}/log", "GET").route(web::get().to(log)))
        .service(resource("/tasks/{id}/progress", "POST").route(web::post().to(progress)))
        .service(resource("/tasks/{id}/complete", "POST").route(web::post().to(complete)))
        .service(resource("/tasks/{id}/fail", "POST").route(web::post().to(fail)))
        .service(resource("/tasks/{id}/release", "POST").route(web::post().to(release)))
        .service(resource("/tasks/{id}/requeue", "POST").route(web::post().to(requeue)));
}

/// Requeue one task (an operator's call).
///
/// A completed, failed or canceled task runs again from scratch; a running
/// one is taken from its worker, whose next report gets 409 and whose next
/// heartbeat answers `abort`. A finished render is reopened (queued again)
/// when that leaves it able to finish; otherwise requeue the whole render.
/// The task's history names who did it. Takes no body (`{}` is ignored too).
#[utoipa::path(
    post,
    path = "/tasks/{id}/requeue",
    tag = "tasks",
    operation_id = "requeue_task",
    params(("id" = Uuid, Path, description = "The task's id.")),
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "The task, pending again.", body = Task),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn requeue(
    access: Access<Operator>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("task", &id)?;
    let task = state
        .store
        .requeue_one_task(id, access.caller.name(), state.clock.now())
        .await?;
    state.wake_workers();
    Ok(HttpResponse::Ok().json(task))
}

/// One task.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    tag = "tasks",
    operation_id = "get_task",
    params(("id" = Uuid, Path, description = "The task's id.")),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The task with its history (assigned, completed, failed, released, requeued, preempted, retried, canceled), each line naming who did it when a person did.", body = TaskDetail),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn get(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("task", &id)?;
    let task = state.store.get_task(id).await?;
    let history = state.store.task_history(id).await?;
    Ok(HttpResponse::Ok().json(TaskDetail { task, history }))
}

/// A task's log: what its workers reported, in order, as plain text. A task
/// keeps its first chunk and its newest ones, 4 MiB in all; a line where
/// older chunks were dropped says how many bytes went.
#[utoipa::path(
    get,
    path = "/tasks/{id}/log",
    tag = "tasks",
    operation_id = "get_task_log",
    params(("id" = Uuid, Path, description = "The task's id.")),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The log (empty before the first report).", body = String, content_type = "text/plain",
            example = "Fra:4 Mem:12.5M | Time:00:00.41 | Sample 4/4\nSaved: '/srv/renderfarm/renders/01a20b20-eeb3-759a-bc8b-10a01e3d5140/frame_0010.png'\n"),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn log(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("task", &id)?;
    let text = state.store.task_log(id).await?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body(text))
}

async fn report(
    access: Access<RegisteredWorker>,
    state: &AppState,
    id: &str,
    lease_id: Uuid,
    report: TaskReport,
    log: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("task", id)?;
    let kind = report.metric_label();
    let started = std::time::Instant::now();
    let span = crate::telemetry::trace_span(
        || tracing::info_span!("report", report = kind, task_id = %id, lease_id = %lease_id),
    );
    let task = tracing::Instrument::instrument(
        state.store.report_task_as(
            access.caller.worker_id(),
            id,
            lease_id,
            report,
            log,
            state.clock.now(),
        ),
        span,
    )
    .await;
    crate::metrics::replica().report(kind, started.elapsed());
    Ok(HttpResponse::Ok().json(task?))
}

/// A task of a render whose workers upload its frames completes only once
/// every one of its frames is stored (`domain::files::missing_frames`).
/// Frame records are only ever added while the task runs, so what is
/// missing now is missing at the completion that follows.
///
/// A video task completes only once its video is stored. Answers the
/// render when it asked for a video, whose task this completion may queue.
async fn refuse_with_frames_missing(
    state: &AppState,
    access: &Access<RegisteredWorker>,
    id: &str,
    lease_id: Uuid,
) -> Result<Option<Uuid>, ApiError> {
    // An unknown task, or one the lease no longer names, is the report's
    // own answer (404, 409 stale lease, 403): left to it, so that a stale
    // worker hears that its lease is stale, not that frames are missing.
    let Ok(task_id) = Uuid::parse_str(id) else {
        return Ok(None);
    };
    let Ok(task) = state
        .store
        .leased_task(access.caller.worker_id(), task_id, lease_id)
        .await
    else {
        return Ok(None);
    };
    let render = state.store.get_render(task.render_id).await?;
    if task.kind == TaskKind::Ffmpeg {
        if state.store.render_video(render.id).await?.is_none() {
            return Err(ApiError::Conflict(format!(
                "task {task_id} is the video of render {}, and no video is stored for it yet; upload it with PUT /tasks/{task_id}/video, then complete",
                render.id
            )));
        }
        return Ok(None);
    }
    let follows = render.video.is_some().then_some(render.id);
    if !render.upload_frames {
        return Ok(follows);
    }
    let stored: std::collections::BTreeSet<i64> = state
        .store
        .render_frames(render.id, Some((task.frame_start, task.frame_end)))
        .await?
        .into_iter()
        .map(|f| f.frame)
        .collect();
    let missing = missing_frames(task.frame_start, task.frame_end, &stored);
    if missing.is_empty() {
        Ok(follows)
    } else {
        Err(ApiError::Conflict(missing_frames_message(
            task_id, &missing,
        )))
    }
}

/// Report progress on a task: frames done so far, and new log lines.
///
/// Lease-guarded: a stale lease gets 409 and changes nothing.
#[utoipa::path(
    post,
    path = "/tasks/{id}/progress",
    tag = "tasks",
    operation_id = "report_progress",
    params(("id" = Uuid, Path, description = "The task's id.")),
    request_body = ProgressReport,
    security(("bearer" = ["worker"])),
    responses(super::openapi::TaskReportAnswers, super::openapi::BodyErrors, super::openapi::StoreErrors)
)]
pub(super) async fn progress(
    access: Access<RegisteredWorker>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<ProgressReport>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let frames_done = body.frames_done;
    report(
        access,
        &state,
        &id,
        body.lease_id,
        TaskReport::Progress { frames_done },
        body.log,
    )
    .await
}

/// Report a task done: every frame rendered.
///
/// Lease-guarded: a stale lease gets 409 and changes nothing. The last task
/// to complete completes the render. For a render whose workers upload its
/// frames (`upload_frames`): 409 while any frame of the task is not stored
/// yet, naming them; upload them (`PUT /tasks/{id}/frames/{frame}`), then
/// complete.
#[utoipa::path(
    post,
    path = "/tasks/{id}/complete",
    tag = "tasks",
    operation_id = "report_complete",
    params(("id" = Uuid, Path, description = "The task's id.")),
    request_body = CompleteReport,
    security(("bearer" = ["worker"])),
    responses(super::openapi::TaskReportAnswers, super::openapi::BodyErrors, super::openapi::StoreErrors)
)]
pub(super) async fn complete(
    access: Access<RegisteredWorker>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<CompleteReport>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let video_of = refuse_with_frames_missing(&state, &access, &id, body.lease_id).await?;
    let answer = report(
        access,
        &state,
        &id,
        body.lease_id,
        TaskReport::Complete,
        body.log,
    )
    .await?;
    if let Some(render) = video_of {
        // The last chunk queues the video: a worker waiting for work may
        // take it now rather than at its next poll.
        if state.store.get_render(render).await?.video_status == Some(TaskStatus::Pending) {
            state.wake_workers();
        }
    }
    Ok(answer)
}

/// Report a task failed (Blender exited non-zero, a frame is missing, ...).
///
/// Lease-guarded: a stale lease gets 409 and changes nothing. The task goes
/// back to pending while it has retries left; after that it fails, and so
/// does its render.
#[utoipa::path(
    post,
    path = "/tasks/{id}/fail",
    tag = "tasks",
    operation_id = "report_failure",
    params(("id" = Uuid, Path, description = "The task's id.")),
    request_body = FailReport,
    security(("bearer" = ["worker"])),
    responses(super::openapi::TaskReportAnswers, super::openapi::BodyErrors, super::openapi::StoreErrors)
)]
pub(super) async fn fail(
    access: Access<RegisteredWorker>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<FailReport>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let reason = body.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::Invalid(
            "reason must say why the task failed (for example the last lines of Blender's output)"
                .into(),
        ));
    }
    let fail = TaskReport::Fail {
        exit_code: body.exit_code,
        reason: keep_tail(reason, MAX_REASON_BYTES).to_string(),
    };
    report(access, &state, &id, body.lease_id, fail, body.log).await
}

/// Hand a task back unfinished (the worker is stopping).
///
/// Lease-guarded: a stale lease gets 409 and changes nothing. The task is
/// queued again without counting a failure.
#[utoipa::path(
    post,
    path = "/tasks/{id}/release",
    tag = "tasks",
    operation_id = "release_task",
    params(("id" = Uuid, Path, description = "The task's id.")),
    request_body = ReleaseReport,
    security(("bearer" = ["worker"])),
    responses(super::openapi::TaskReportAnswers, super::openapi::BodyErrors, super::openapi::StoreErrors)
)]
pub(super) async fn release(
    access: Access<RegisteredWorker>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<ReleaseReport>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let response = report(
        access,
        &state,
        &id,
        body.lease_id,
        TaskReport::Release,
        body.log,
    )
    .await?;
    // The task is claimable again.
    state.wake_workers();
    Ok(response)
}

/// The last `max` bytes of `text`, cut at a character boundary: the end of
/// Blender's output is where the error is.
fn keep_tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::keep_tail;

    #[test]
    fn long_reasons_keep_their_end_on_a_character_boundary() {
        assert_eq!(keep_tail("short", 10), "short");
        assert_eq!(keep_tail("abcdef", 3), "def");
        assert_eq!(keep_tail("aé", 1), "");
        assert_eq!(keep_tail("aéb", 2), "b");
    }
}
