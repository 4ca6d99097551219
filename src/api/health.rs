//! Liveness and readiness.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use renderfarm_wire::HealthReport;

use super::{resource, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/health", "GET").route(web::get().to(health)))
        .service(resource("/ready", "GET").route(web::get().to(ready)));
}

/// The process is up and answering.
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(HealthReport {
        status: "ok".into(),
        store: None,
    })
}

/// The broker can serve requests: its store answers.
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let backend = state.store.backend().to_string();
    match state.store.ping().await {
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
