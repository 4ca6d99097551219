//! `GET /metrics` (Prometheus) and the middleware that counts every request.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::{Access, Viewer};
use super::{resource, ApiError, AppState};
use crate::metrics::{self, FarmView};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", "GET").route(web::get().to(scrape)));
}

/// The route label of a request that matched no route: raw paths would make
/// a series per id a scanner tries.
const UNMATCHED: &str = "unmatched";

/// Counts each answered request by method, route template and status, with
/// the time to its answer's head.
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let response = next.call(req).await?;
    let route = response.request().match_pattern();
    metrics::replica().request(
        method.as_str(),
        route.as_deref().unwrap_or(UNMATCHED),
        response.status().as_u16(),
        started.elapsed(),
    );
    Ok(response)
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
            .list_workers()
            .await?
            .into_iter()
            .map(|w| (w.status, w.tags))
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
