//! Liveness and readiness.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use renderfarm_wire::HealthReport;

use super::{resource, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/health", "GET").route(web::get().to(health)))
        .service(resource("/ready", "GET").route(web::get().to(ready)));
}

/// Liveness: the process is up and answering.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    operation_id = "health",
    security(()),
    responses(
        (status = 200, description = "Up.", body = HealthReport, example = json!({"status": "ok", "store": null})),
    )
)]
pub(super) async fn health() -> HttpResponse {
    HttpResponse::Ok().json(HealthReport {
        status: "ok".into(),
        store: None,
    })
}

/// Readiness: the broker can serve requests, its store answers.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    operation_id = "ready",
    security(()),
    responses(
        (status = 200, description = "Ready.", body = HealthReport, example = json!({"status": "ready", "store": "sqlite"})),
        (status = 503, description = "Not ready: the store does not answer; ask again after `Retry-After`.", body = HealthReport,
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again.")),
            example = json!({"status": "not ready: the store is unavailable: the store is shutting down", "store": "sqlite"})),
    )
)]
pub(super) async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let backend = state.store.backend().to_string();
    let pinged = state.store.ping().await.and_then(|()| {
        if state
            .credentials_ready
            .load(std::sync::atomic::Ordering::Acquire)
        {
            Ok(())
        } else {
            Err(crate::store::StoreError::Unavailable(
                "the deployment's credentials are not stored yet".into(),
            ))
        }
    });
    match pinged {
        Ok(()) => HttpResponse::Ok().json(HealthReport {
            status: "ready".into(),
            store: Some(backend),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            HttpResponse::ServiceUnavailable()
                .insert_header((header::RETRY_AFTER, "5"))
                .json(HealthReport {
                    status: format!("not ready: {e}"),
                    store: Some(backend),
                })
        }
    }
}
