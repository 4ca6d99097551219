//! `GET /metrics` (Prometheus) and the middleware that counts every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::{Access, Viewer};
use super::{resource, ApiError, AppState};
use crate::metrics::{self, FarmView};
use renderfarm_wire::ErrorBody;
use uuid::Uuid;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", "GET").route(web::get().to(scrape)));
}

/// The route label of a request that matched no route: raw paths would make
/// a series per id a scanner tries.
const UNMATCHED: &str = "unmatched";

/// The header a request id travels in, both ways.
const REQUEST_ID: &str = "x-request-id";

/// A request id a client sent that is safe to log and echo: short, visible
/// ASCII.
fn client_request_id(req: &ServiceRequest) -> Option<String> {
    let id = req.headers().get(REQUEST_ID)?.to_str().ok()?;
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| id.to_string())
}

/// Every request, observed: counted by method, route template and status
/// with the time to its answer's head (`/metrics`); with JSON logs or an
/// OTLP export also given a request id (an `X-Request-Id` answer header)
/// and a line on the `renderfarm::access` target (debug; warn for a 5xx).
/// With JSON logs, every line written while the request is served carries
/// its id, method and the resource its path names; with an export, the
/// request has a span (continuing the caller's `traceparent`).
pub async fn observe_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let json = crate::telemetry::json_logs();
    let exporting = crate::telemetry::exporting();
    let request_id = match client_request_id(&req) {
        Some(id) => Some(id),
        None if json || exporting => Some(new_request_id()),
        None => None,
    };
    let about = if json {
        PathIds::of(req.path())
    } else {
        PathIds::default()
    };
    let span = if exporting {
        // An exported span's name cannot change once it has children, so
        // the route is matched here, before the handler runs.
        let route = req.match_pattern();
        let route = route.as_deref().unwrap_or(UNMATCHED);
        let request_id = request_id.as_deref().unwrap_or_default();
        let span = tracing::info_span!(
            "request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            request_id,
            http.request.method = method,
            http.route = route,
            http.response.status_code = tracing::field::Empty,
        );
        crate::telemetry::continue_trace(&span, req.headers());
        span
    } else {
        tracing::Span::none()
    };
    let call = tracing::Instrument::instrument(next.call(req), span.clone());
    let mut response = if json {
        // Not a span: a span's fields are formatted as it is made, and its
        // making and closing cost more than the rest of what JSON logs add
        // to a claim. The context is read only when a line is written.
        let context = crate::telemetry::RequestContext {
            request_id: request_id.clone().unwrap_or_default(),
            method,
            worker_id: about.worker,
            task_id: about.task,
            render_id: about.render,
        };
        crate::telemetry::in_request(context, call).await?
    } else {
        call.await?
    };
    let took = started.elapsed();
    let status = response.status().as_u16();
    let route = match response.request().app_data::<super::RouteLabel>() {
        Some(label) => label.0,
        // The dashboard's and the docs' own routes: rare, so matched again.
        None => response
            .request()
            .match_pattern()
            .map_or(UNMATCHED, |p| super::intern_route(&p)),
    };
    metrics::replica().request(method, route, status, took);
    if let Some(id) = &request_id {
        if let Ok(value) = header::HeaderValue::from_str(id) {
            response
                .headers_mut()
                .insert(header::HeaderName::from_static(REQUEST_ID), value);
        }
    }
    if json || exporting {
        if exporting {
            span.record("http.response.status_code", status);
        }
        let duration_ms = took.as_secs_f64() * 1000.0;
        let request_id = request_id.as_deref().unwrap_or_default();
        let worker_id = about.worker.map(tracing::field::display);
        let task_id = about.task.map(tracing::field::display);
        let render_id = about.render.map(tracing::field::display);
        if status >= 500 {
            tracing::warn!(target: "renderfarm::access", parent: &span, request_id, method, route, status, duration_ms, worker_id, task_id, render_id, "request failed");
        } else {
            tracing::debug!(target: "renderfarm::access", parent: &span, request_id, method, route, status, duration_ms, worker_id, task_id, render_id, "request answered");
        }
    }
    Ok(response)
}

/// A request id for a request that came without one: a random prefix per
/// process (replicas' ids differ) and a counter. A UUID would cost a clock
/// read, a shared lock and random bits on every request.
fn new_request_id() -> String {
    static PREFIX: LazyLock<u64> = LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:016x}{:016x}",
        *PREFIX,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The resource a request's path names: every route under `/workers/`,
/// `/tasks/` and `/renders/` has the id second, so it is read from the path
/// without matching the route (the router's own match comes after this
/// middleware, and a second one costs a claim more than the rest of JSON
/// logging).
#[derive(Debug, Default, PartialEq, Eq)]
struct PathIds {
    worker: Option<Uuid>,
    task: Option<Uuid>,
    render: Option<Uuid>,
}

impl PathIds {
    fn of(path: &str) -> Self {
        let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
        let mut ids = PathIds::default();
        let (Some(collection), Some(id)) = (segments.next(), segments.next()) else {
            return ids;
        };
        let Ok(id) = Uuid::try_parse(id) else {
            return ids;
        };
        match collection {
            "workers" => ids.worker = Some(id),
            "tasks" => ids.task = Some(id),
            "renders" => ids.render = Some(id),
            _ => {}
        }
        ids
    }
}

/// The method as a label, without allocating: the methods the API knows,
/// and one word for the rest.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Prometheus metrics.
///
/// The text exposition format (OpenMetrics). This replica's own metrics
/// (`renderfarm_http_*`, `renderfarm_claim_duration_seconds`,
/// `renderfarm_report_duration_seconds`, `renderfarm_long_polls_waiting`,
/// `renderfarm_scheduler_*`, `renderfarm_store_errors_total`) always; the
/// farm's (`renderfarm_tasks`, `renderfarm_queue_depth`,
/// `renderfarm_renders`, `renderfarm_workers`, `renderfarm_workers_wanted`)
/// only from the replica that leads the scheduler, so that a `sum()` over
/// replicas counts the farm once. Give Prometheus a viewer token, or serve
/// this without credentials on a separate address with `serve
/// --metrics-bind`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    operation_id = "metrics",
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The metrics: OpenMetrics when asked for (`Accept: application/openmetrics-text`, as Prometheus does), else the Prometheus text format 0.0.4.",
            content(
                (String = "text/plain",
                    example = "# HELP renderfarm_long_polls_waiting Workers' requests for work waiting on this replica now.\n# TYPE renderfarm_long_polls_waiting gauge\nrenderfarm_long_polls_waiting 3\n"),
                (String = "application/openmetrics-text",
                    example = "# HELP renderfarm_long_polls_waiting Workers' requests for work waiting on this replica now.\n# TYPE renderfarm_long_polls_waiting gauge\nrenderfarm_long_polls_waiting 3\n# EOF\n"),
            )),
        (status = 404, description = "The broker was started with `--metrics off`.", body = ErrorBody),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn scrape(
    _access: Access<Viewer>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    exposition(&state, &req).await
}

/// The exposition of this broker, as both `/metrics` routes serve it: in
/// OpenMetrics when the client asks for it (Prometheus does), else in the
/// older Prometheus text format.
pub async fn exposition(state: &AppState, req: &HttpRequest) -> Result<HttpResponse, ApiError> {
    if !metrics::enabled() {
        return Err(ApiError::NotFound(
            "metrics are off on this broker (it was started with --metrics off); start it without that flag to serve them".into(),
        ));
    }
    metrics::replica()
        .set_long_polls_waiting(state.waiting.load(std::sync::atomic::Ordering::Acquire));
    let leads = state.scheduler.is_leader();
    metrics::replica().set_leader(leads);
    let farm = if leads {
        let now = state.clock.now();
        let counts = state
            .store
            .farm_counts(now - chrono::TimeDelta::hours(1))
            .await?;
        let workers = state
            .store
            .list_workers(now)
            .await?
            .into_iter()
            .map(|w| metrics::FarmWorker {
                takes_new_work: w.availability.as_ref().is_none_or(|a| a.available_now),
                status: w.status,
                tags: w.tags,
                kinds: w.kinds,
            })
            .collect();
        Some(FarmView { counts, workers })
    } else {
        None
    };
    let text = metrics::encode(farm.as_ref())
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("encoding the metrics failed: {e}")))?;
    let openmetrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let (content_type, text) = if openmetrics {
        (metrics::OPENMETRICS, text)
    } else {
        (metrics::PROMETHEUS_TEXT, metrics::to_prometheus_text(&text))
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::VARY, "Accept"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_the_worker_task_or_render_it_is_about() {
        let id = Uuid::parse_str("01a20b20-eeb3-759a-bc8b-10a14eccf12a").unwrap();
        let table: [(&str, PathIds); 8] = [
            (
                "/workers/01a20b20-eeb3-759a-bc8b-10a14eccf12a/request-task",
                PathIds {
                    worker: Some(id),
                    ..PathIds::default()
                },
            ),
            (
                "/tasks/01a20b20-eeb3-759a-bc8b-10a14eccf12a/complete",
                PathIds {
                    task: Some(id),
                    ..PathIds::default()
                },
            ),
            (
                "/renders/01a20b20-eeb3-759a-bc8b-10a14eccf12a",
                PathIds {
                    render: Some(id),
                    ..PathIds::default()
                },
            ),
            ("/renders", PathIds::default()),
            ("/renders/", PathIds::default()),
            // Not an id: nothing a scanner sends ends up in the logs.
            ("/workers/../../etc/passwd", PathIds::default()),
            (
                "/tokens/01a20b20-eeb3-759a-bc8b-10a14eccf12a",
                PathIds::default(),
            ),
            ("", PathIds::default()),
        ];
        for (path, ids) in table {
            assert_eq!(PathIds::of(path), ids, "{path}");
        }
    }

    #[test]
    fn request_ids_differ_and_are_safe_to_echo() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(a[..16], b[..16], "one prefix per process");
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
