//! `/renders`: submit, list, inspect and steer renders.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use renderfarm_wire::{
    ListOrder, Page, Priority, Render, RenderSort, RenderSpec, RenderStatus, RenderStatusChange,
    Task, TaskStatus,
};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::auth::{Access, Artist, Caller, Operator, Viewer};
use super::{parse_id, resource, ApiError, AppState, JsonBody, PageQuery};
use crate::domain::{
    check_dependencies_exist, validate_name, validate_search, NewRender, RenderCommand,
    RenderOrder, SortOrder, ValidRenderSpec, OWNER_ME,
};
use crate::files::FileState;
use crate::store::{PageRequest, RenderFilter};

/// Seconds a client should wait before asking about an unfinished render again.
const RENDER_RETRY_AFTER: &str = "5";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/renders", "GET, POST")
            .route(web::post().to(submit))
            .route(web::get().to(list)),
    )
    .service(
        resource("/renders/{id}", "GET, DELETE")
            .route(web::get().to(get))
            .route(web::delete().to(delete)),
    )
    .service(resource("/renders/{id}/tasks", "GET").route(web::get().to(tasks)))
    .service(resource("/renders/{id}/status", "PUT").route(web::put().to(change_status)))
    .service(resource("/renders/{id}/complete", "POST").route(web::post().to(complete)));
}

/// The render, with `Retry-After` while it is not finished.
fn render_response(mut response: actix_web::HttpResponseBuilder, render: &Render) -> HttpResponse {
    if !render.status.is_finished() {
        response.insert_header((header::RETRY_AFTER, RENDER_RETRY_AFTER));
    }
    response.json(render)
}

/// Submit a render.
///
/// The frames `frame_start..=frame_end` are cut into tasks of `chunk_size`
/// frames (1–10 in chunks of 3: 1–3, 4–6, 7–9, 10–10). Follow the render at
/// `Location`.
#[utoipa::path(
    post,
    path = "/renders",
    tag = "renders",
    operation_id = "submit_render",
    request_body = RenderSpec,
    security(("bearer" = ["artist"]), ("session" = ["artist"])),
    responses(
        (status = 202, description = "Accepted and queued: the render, with its tasks counted in `progress`.", body = Render,
            headers(
                ("Location" = String, description = "Where to follow the render: `/renders/{id}`."),
                ("Retry-After" = u32, description = "Seconds to wait before asking about it.")
            ),
            links(
                ("get_render" = (operation_id = "get_render", parameters(("id" = "$response.body#/id")), description = "Follow the render.")),
                ("list_render_tasks" = (operation_id = "list_render_tasks", parameters(("id" = "$response.body#/id")), description = "Its tasks.")),
                ("change_render_status" = (operation_id = "change_render_status", parameters(("id" = "$response.body#/id")), description = "Pause, resume, cancel or requeue it.")),
                ("complete_render" = (operation_id = "complete_render", parameters(("id" = "$response.body#/id")), description = "Mark it complete.")),
            ),
            example = json!({"id": "01a20b20-eeb3-759a-bc8b-10a01e3d5140", "name": "shot010", "status": "queued", "priority": "high", "blend_file": "/projects/shot010.blend", "blend_sha256": null, "upload_frames": false, "frame_start": 1, "frame_end": 250, "chunk_size": 10, "chunk_size_auto": false, "target_chunk_seconds": null, "measured_frame_seconds": null, "max_retries": 1, "output": "/srv/renderfarm/renders/01a20b20-eeb3-759a-bc8b-10a01e3d5140/frame_####", "engine": null, "tags": ["gpu"], "progress": {"tasks_total": 25, "tasks_pending": 25, "tasks_running": 0, "tasks_completed": 0, "tasks_failed": 0, "tasks_canceled": 0, "frames_total": 250, "frames_done": 0}, "owner": null, "video": null, "video_status": null, "depends_on": [], "waiting_reason": null, "blocklist_after": 3, "failure_reason": null, "frame_order": "sequential", "created_at": "2026-11-24T01:17:17.363091Z", "started_at": null, "finished_at": null})),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn submit(
    access: Access<Artist>,
    state: web::Data<AppState>,
    body: JsonBody<RenderSpec>,
) -> Result<HttpResponse, ApiError> {
    let mut spec = ValidRenderSpec::try_from(body.into_inner())?;
    // A render that gives no threshold takes the broker's.
    spec.blocklist_after
        .get_or_insert(state.scheduler.settings().blocklist_after);
    if let Some(sha) = &spec.blend_sha256 {
        match state.files.state(sha).await? {
            FileState::Stored { .. } => {
                // Put to use: the collector's grace starts again, so a
                // file uploaded long before its submit is not freed now.
                state.files.touch(sha, state.clock.now()).await?;
            }
            _ => {
                return Err(ApiError::Invalid(format!(
                    "blend_sha256: no file {sha} is stored at this broker; upload it first with PUT /files/{sha}, then submit again"
                )))
            }
        }
    }
    super::variables::store_paths(&state, &mut spec).await?;
    let dependencies = state.store.dependency_states(&spec.depends_on).await?;
    check_dependencies_exist(&dependencies)?;
    let renders_dir = &state.output_root.absolute;
    let new = NewRender::plan(
        spec,
        Uuid::now_v7(),
        access.caller.name().map(String::from),
        |id| {
            renders_dir
                .join(id.to_string())
                .join("frame_####")
                .display()
                .to_string()
        },
        state.clock.now(),
    )
    .wait_for(&dependencies);
    let render = state.store.create_render(new).await?;
    state.wake_workers();
    tracing::info!(render_id = %render.id, tasks = render.progress.tasks_total, "render submitted");
    let mut response = HttpResponse::Accepted();
    response.insert_header((header::LOCATION, format!("/renders/{}", render.id)));
    Ok(render_response(response, &render))
}

/// `?status=&priority=&owner=&q=&sort=&order=&limit=&offset=`; any other
/// parameter is refused.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only renders in this status.
    #[param(nullable = false)]
    status: Option<RenderStatus>,
    /// Only renders of this priority.
    #[param(nullable = false)]
    priority: Option<Priority>,
    /// Only renders submitted by this person (the name of the credential
    /// they submitted with); `me` for the caller's own, which needs the
    /// broker to know callers (400 with `--auth off`).
    #[param(
        nullable = false,
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        example = "me"
    )]
    owner: Option<String>,
    /// Only renders whose name contains this; ASCII letters match either
    /// case (`shot` finds `Shot010`), other characters only as written.
    #[param(
        nullable = false,
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        example = "shot"
    )]
    q: Option<String>,
    /// What the renders are ordered by; ties by submission, in the same
    /// direction.
    #[param(nullable = false)]
    sort: Option<RenderSort>,
    /// Which way: `desc` by default for `created`, `priority` and
    /// `progress`, `asc` for `name` and `status`.
    #[param(nullable = false)]
    order: Option<ListOrder>,
    /// Renders per page.
    #[param(nullable = false, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<i64>,
    /// Renders to skip.
    #[param(nullable = false, minimum = 0, default = 0)]
    offset: Option<i64>,
}

/// The owner a listing asks for: a name, checked as credential names are;
/// `me` is the caller, whose name the auth layer knows (`None`: it does not,
/// and asking for `me` is a 400).
fn owner_filter(
    raw: Option<String>,
    caller_name: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let name = validate_name("owner", &raw)?;
    if name != OWNER_ME {
        return Ok(Some(name));
    }
    match caller_name {
        Some(caller) => Ok(Some(caller.to_string())),
        None => Err(ApiError::Invalid(format!(
            "owner={OWNER_ME} lists the caller's own renders, but this broker does not know who is calling (it runs without credentials); give the owner's name instead"
        ))),
    }
}

/// List renders: filter, search, sort and page.
///
/// Newest first unless `sort` and `order` say otherwise. An unknown `sort`
/// or `order` is a 400 naming the valid ones.
#[utoipa::path(
    get,
    path = "/renders",
    tag = "renders",
    operation_id = "list_renders",
    params(ListQuery),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "One page of renders; `total` counts every match.", body = Page<Render>),
        (status = 400, response = super::openapi::BadRequest),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn list(
    access: Access<Viewer>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let page = PageRequest::try_from(PageQuery {
        limit: q.limit,
        offset: q.offset,
    })?;
    let filter = RenderFilter {
        status: q.status,
        priority: q.priority,
        owner: owner_filter(q.owner, access.caller.name())?,
        search: q.q.as_deref().map(validate_search).transpose()?,
    };
    let order = RenderOrder::new(q.sort.unwrap_or_default(), q.order.map(SortOrder::from));
    Ok(HttpResponse::Ok().json(state.store.list_renders(&filter, order, page).await?))
}

/// One render, with its progress.
#[utoipa::path(
    get,
    path = "/renders/{id}",
    tag = "renders",
    operation_id = "get_render",
    params(("id" = Uuid, Path, description = "The render's id.")),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The render.", body = Render, headers(("Retry-After" = u32, description = "Seconds to wait before asking again; sent while the render is not finished."))),
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
    let render = state.store.get_render(id).await?;
    Ok(render_response(HttpResponse::Ok(), &render))
}

/// `?status=&limit=&offset=`; any other parameter is refused.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct TasksQuery {
    /// Only tasks in this status, e.g. `failed`.
    #[param(nullable = false)]
    status: Option<TaskStatus>,
    /// Tasks per page.
    #[param(nullable = false, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<i64>,
    /// Tasks to skip.
    #[param(nullable = false, minimum = 0, default = 0)]
    offset: Option<i64>,
}

/// Delete a finished render.
///
/// Removes a completed, failed or canceled render with its tasks, their logs
/// and history, once none of its chunks is still rendering. The frames on
/// disk stay where they are.
#[utoipa::path(
    delete,
    path = "/renders/{id}",
    tag = "renders",
    operation_id = "delete_render",
    params(("id" = Uuid, Path, description = "The render's id.")),
    security(("bearer" = ["artist"]), ("session" = ["artist"])),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn delete(
    access: Access<Artist>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    may_change(&access.caller, &state, id).await?;
    state.store.delete_render(id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A render's tasks, lowest frames first; `total` counts every match.
#[utoipa::path(
    get,
    path = "/renders/{id}/tasks",
    tag = "renders",
    operation_id = "list_render_tasks",
    params(("id" = Uuid, Path, description = "The render's id."), TasksQuery),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "One page of the render's tasks.", body = Page<Task>),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn tasks(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<TasksQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    let q = query.into_inner();
    let page = PageRequest::try_from(PageQuery {
        limit: q.limit,
        offset: q.offset,
    })?;
    Ok(HttpResponse::Ok().json(state.store.list_tasks(id, q.status, page).await?))
}

/// Pause, resume, cancel or requeue a render.
///
/// `pause` from queued or rendering (running tasks may finish; nothing new is
/// handed out); `resume` a paused render; `cancel` anything unfinished
/// (workers are told to abort); `requeue` a failed or canceled render (its
/// unfinished tasks go back to pending).
#[utoipa::path(
    put,
    path = "/renders/{id}/status",
    tag = "renders",
    operation_id = "change_render_status",
    params(("id" = Uuid, Path, description = "The render's id.")),
    request_body = RenderStatusChange,
    security(("bearer" = ["artist"]), ("session" = ["artist"])),
    responses(
        (status = 200, description = "The render after the change.", body = Render, headers(("Retry-After" = u32, description = "Seconds to wait before asking again; sent while the render is not finished."))),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn change_status(
    access: Access<Artist>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<RenderStatusChange>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    may_change(&access.caller, &state, id).await?;
    let command = RenderCommand::from(body.action);
    command_response(&state, &access.caller, id, command).await
}

/// Mark a render complete (an operator's call: good enough as it is).
///
/// Its unfinished tasks are canceled. Takes no body.
#[utoipa::path(
    post,
    path = "/renders/{id}/complete",
    tag = "renders",
    operation_id = "complete_render",
    params(("id" = Uuid, Path, description = "The render's id.")),
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "The completed render.", body = Render, headers(("Retry-After" = u32, description = "Seconds to wait before asking again; sent while the render is not finished."))),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn complete(
    access: Access<Operator>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    command_response(&state, &access.caller, id, RenderCommand::Complete).await
}

async fn command_response(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    command: RenderCommand,
) -> Result<HttpResponse, ApiError> {
    let render = state
        .store
        .change_render(id, command, caller.name(), state.clock.now())
        .await?;
    if matches!(command, RenderCommand::Resume | RenderCommand::Requeue) {
        state.wake_workers();
    }
    Ok(render_response(HttpResponse::Ok(), &render))
}

/// Refuses an artist's change of a render someone else submitted; operators
/// change every render.
async fn may_change(caller: &Caller, state: &AppState, id: Uuid) -> Result<(), ApiError> {
    if caller.may_act_on_any_render() {
        return Ok(());
    }
    let render = state.store.get_render(id).await?;
    let owner = render.owner.as_deref();
    if owner.is_some() && owner == caller.name() {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "render {id} was submitted by {}; an artist changes only their own renders, an operator any",
        owner.map_or("nobody known (before credentials)".to_string(), |o| format!("{o:?}"))
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_me_is_the_caller_and_needs_one() {
        assert_eq!(owner_filter(None, Some("alice")).unwrap(), None);
        for me in ["me", " me "] {
            assert_eq!(
                owner_filter(Some(me.into()), Some("alice")).unwrap(),
                Some("alice".to_string())
            );
        }
        let refused = owner_filter(Some("me".into()), None).unwrap_err();
        assert!(matches!(refused, ApiError::Invalid(_)), "{refused:?}");
        assert!(
            refused.to_string().contains("give the owner's name"),
            "{refused}"
        );
    }

    #[test]
    fn other_owners_are_names_checked_as_credential_names_are() {
        assert_eq!(
            owner_filter(Some(" bob ".into()), None).unwrap(),
            Some("bob".to_string())
        );
        for bad in ["", "  ", "a\nb", &"x".repeat(201)] {
            assert!(
                matches!(
                    owner_filter(Some(bad.to_string()), Some("alice")),
                    Err(ApiError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }
}
