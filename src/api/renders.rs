//! `/renders`: submit, list, inspect and steer renders.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use renderfarm_wire::{Priority, Render, RenderSpec, RenderStatus, RenderStatusChange};
use serde::Deserialize;
use uuid::Uuid;

use super::{parse_id, resource, ApiError, AppState, JsonBody, PageQuery};
use crate::domain::{NewRender, RenderCommand, ValidRenderSpec};
use crate::store::{PageRequest, RenderFilter};

/// Seconds a client should wait before asking about an unfinished render again.
const RENDER_RETRY_AFTER: &str = "5";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/renders", "GET, POST")
            .route(web::post().to(submit))
            .route(web::get().to(list)),
    )
    .service(resource("/renders/{id}", "GET").route(web::get().to(get)))
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

async fn submit(
    state: web::Data<AppState>,
    body: JsonBody<RenderSpec>,
) -> Result<HttpResponse, ApiError> {
    let spec = ValidRenderSpec::try_from(body.into_inner())?;
    let renders_dir = state.data_dir.join("renders");
    let new = NewRender::plan(
        spec,
        Uuid::now_v7(),
        |id| {
            renders_dir
                .join(id.to_string())
                .join("frame_####")
                .display()
                .to_string()
        },
        state.clock.now(),
    );
    let render = state.store.create_render(new).await?;
    state.wake_workers();
    tracing::info!(render_id = %render.id, tasks = render.progress.tasks_total, "render submitted");
    let mut response = HttpResponse::Accepted();
    response.insert_header((header::LOCATION, format!("/renders/{}", render.id)));
    Ok(render_response(response, &render))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<RenderStatus>,
    priority: Option<Priority>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(
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
    };
    Ok(HttpResponse::Ok().json(state.store.list_renders(&filter, page).await?))
}

async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    let render = state.store.get_render(id).await?;
    Ok(render_response(HttpResponse::Ok(), &render))
}

async fn tasks(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    let page = PageRequest::try_from(query.into_inner())?;
    Ok(HttpResponse::Ok().json(state.store.list_tasks(id, page).await?))
}

async fn change_status(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<RenderStatusChange>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    let command = RenderCommand::from(body.action);
    command_response(&state, id, command).await
}

async fn complete(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    command_response(&state, id, RenderCommand::Complete).await
}

async fn command_response(
    state: &AppState,
    id: Uuid,
    command: RenderCommand,
) -> Result<HttpResponse, ApiError> {
    let render = state
        .store
        .change_render(id, command, state.clock.now())
        .await?;
    if matches!(command, RenderCommand::Resume | RenderCommand::Requeue) {
        state.wake_workers();
    }
    Ok(render_response(HttpResponse::Ok(), &render))
}
