//! `/webhooks`: operators register receivers of the farm's events, list,
//! inspect, delete and re-enable them. Sending is `crate::webhooks`.

use actix_web::{web, HttpResponse};
use renderfarm_wire::{RegisteredWebhook, WebhookDeliveryCounts, WebhookInfo, WebhookSpec};
use uuid::Uuid;

use super::auth::{Access, Operator};
use super::{parse_id, resource, ApiError, AppState, JsonBody};
use crate::credentials::random_bytes;
use crate::domain::{validate_webhook_spec, webhook_secret_from, DeliveryCounts, StoredWebhook};
use crate::webhooks::check_destination;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/webhooks", "GET, POST")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(
        resource("/webhooks/{id}", "GET, DELETE")
            .route(web::get().to(get))
            .route(web::delete().to(delete)),
    )
    .service(resource("/webhooks/{id}/enable", "POST").route(web::post().to(enable)));
}

/// A webhook as shown: never its secret.
fn webhook_info(w: &StoredWebhook, deliveries: Option<DeliveryCounts>) -> WebhookInfo {
    WebhookInfo {
        id: w.id,
        url: w.url.clone(),
        events: w.events.iter().map(|e| e.as_str().to_string()).collect(),
        description: w.description.clone(),
        created_at: w.created_at,
        status: if w.is_active() { "active" } else { "disabled" }.into(),
        disabled_at: w.disabled_at,
        disabled_reason: w.disabled_reason.clone(),
        consecutive_failures: w.consecutive_failures,
        failing_since: w.failing_since,
        last_attempt_at: w.last_attempt_at,
        last_outcome: w.last_outcome.clone(),
        last_success_at: w.last_success_at,
        deliveries: deliveries.map(|d| WebhookDeliveryCounts {
            pending: d.pending,
            delivered: d.delivered,
            failed: d.failed,
        }),
    }
}

/// Register a webhook.
///
/// The answer holds the signing secret, shown this once. Each delivery is a
/// POST of JSON with `Renderfarm-Webhook-Id`, `Renderfarm-Webhook-Timestamp`
/// and `Renderfarm-Signature: v1=<hex HMAC-SHA256 of "{timestamp}.{body}">`
/// (see the README's "Webhooks"). URLs whose host resolves to a loopback,
/// private, link-local or the broker's own address are refused unless the
/// broker runs with `--webhooks-allow-private`.
#[utoipa::path(
    post,
    path = "/webhooks",
    tag = "webhooks",
    operation_id = "create_webhook",
    request_body = WebhookSpec,
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 201, description = "The webhook and its signing secret.", body = RegisteredWebhook),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn create(
    _access: Access<Operator>,
    state: web::Data<AppState>,
    body: JsonBody<WebhookSpec>,
) -> Result<HttpResponse, ApiError> {
    let spec = body.into_inner();
    let valid = validate_webhook_spec(&spec.url, &spec.events, spec.description.as_deref())?;
    check_destination(&valid.url, state.webhooks_allow_private, true)
        .await
        .map_err(|why| ApiError::Invalid(format!("url: {why}")))?;
    let secret = webhook_secret_from(random_bytes().map_err(ApiError::Unexpected)?);
    let hook = StoredWebhook::new(valid, Uuid::now_v7(), secret, state.clock.now());
    let hook = state.store.create_webhook(hook).await?;
    tracing::info!(webhook_id = %hook.id, url = %hook.url, "webhook registered");
    Ok(HttpResponse::Created()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/webhooks/{}", hook.id),
        ))
        .json(RegisteredWebhook {
            webhook: webhook_info(&hook, None),
            secret: hook.secret.clone(),
        }))
}

/// List webhooks, oldest first (never their secrets).
#[utoipa::path(
    get,
    path = "/webhooks",
    tag = "webhooks",
    operation_id = "list_webhooks",
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "Every webhook, with its state.", body = Vec<WebhookInfo>),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn list(
    _access: Access<Operator>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let hooks = state.store.list_webhooks().await?;
    Ok(HttpResponse::Ok().json(
        hooks
            .iter()
            .map(|h| webhook_info(h, None))
            .collect::<Vec<_>>(),
    ))
}

/// One webhook: active or disabled (and why), its last attempt, its
/// failures in a row and its deliveries by state.
#[utoipa::path(
    get,
    path = "/webhooks/{id}",
    tag = "webhooks",
    operation_id = "get_webhook",
    params(("id" = Uuid, Path, description = "The webhook's id.")),
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "The webhook.", body = WebhookInfo),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn get(
    _access: Access<Operator>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("webhook", &id)?;
    let hook = state.store.get_webhook(id).await?;
    let counts = state.store.webhook_delivery_counts(id).await?;
    Ok(HttpResponse::Ok().json(webhook_info(&hook, Some(counts))))
}

/// Delete a webhook and its deliveries, sent or not.
#[utoipa::path(
    delete,
    path = "/webhooks/{id}",
    tag = "webhooks",
    operation_id = "delete_webhook",
    params(("id" = Uuid, Path, description = "The webhook's id.")),
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn delete(
    _access: Access<Operator>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("webhook", &id)?;
    state.store.delete_webhook(id).await?;
    tracing::info!(webhook_id = %id, "webhook deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// Enable a webhook again (after it was disabled for failing); its
/// failures are forgotten and deliveries still pending go out again.
#[utoipa::path(
    post,
    path = "/webhooks/{id}/enable",
    tag = "webhooks",
    operation_id = "enable_webhook",
    params(("id" = Uuid, Path, description = "The webhook's id.")),
    security(("bearer" = ["operator"]), ("session" = ["operator"])),
    responses(
        (status = 200, description = "The webhook, active.", body = WebhookInfo),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn enable(
    _access: Access<Operator>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("webhook", &id)?;
    let hook = state.store.enable_webhook(id).await?;
    tracing::info!(webhook_id = %id, "webhook enabled");
    Ok(HttpResponse::Ok().json(webhook_info(&hook, None)))
}
