//! `/scheduler`: what the periodic tick did, and running it now.

use actix_web::{web, HttpResponse};

use super::{resource, ApiError, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/scheduler", "GET").route(web::get().to(status)))
        .service(resource("/scheduler/run", "POST").route(web::post().to(run)));
}

async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.scheduler.status().await?))
}

/// Runs one tick now, on this broker, whoever leads.
async fn run(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.scheduler.tick().await?))
}
