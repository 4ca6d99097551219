//! `/tokens`: admins issue, list and revoke credentials over HTTP (the same
//! as `renderfarm token`, which works on the store directly).

use actix_web::{web, HttpResponse};
use renderfarm_wire::{IssuedToken, TokenInfo, TokenSpec};

use super::auth::{Access, Admin};
use super::{parse_id, resource, ApiError, AppState, JsonBody};
use crate::credentials::{issue, IssueError};
use crate::domain::{Role, StoredToken, MAX_TOKEN_LIFETIME};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/tokens", "GET, POST")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(resource("/tokens/{id}", "DELETE").route(web::delete().to(revoke)));
}

/// A token as listed: never its hash.
pub fn token_info(t: &StoredToken) -> TokenInfo {
    TokenInfo {
        id: t.id,
        name: t.name.clone(),
        role: t.role.as_str().to_string(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
        worker_id: t.worker_id,
        session_of: t.session_of,
    }
}

fn parse_role(raw: &str) -> Result<Role, ApiError> {
    Role::parse(raw).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        ApiError::Invalid(format!(
            "role: {raw:?} is not a role; use one of {}",
            names.join(", ")
        ))
    })
}

fn parse_lifetime(raw: Option<&str>) -> Result<Option<chrono::Duration>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let invalid = || {
        ApiError::Invalid(format!(
            "expires: {raw:?} is not a duration such as 90d, 12h or 30m (at most {} days); leave it out for a token that does not expire",
            MAX_TOKEN_LIFETIME.num_days()
        ))
    };
    let std = humantime::parse_duration(raw).map_err(|_| invalid())?;
    chrono::Duration::from_std(std)
        .map(Some)
        .map_err(|_| invalid())
}

/// Issue a token.
///
/// The answer holds the secret, shown this once: only its SHA-256 is kept.
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "tokens",
    operation_id = "create_token",
    request_body = TokenSpec,
    security(("bearer" = ["admin"]), ("session" = ["admin"])),
    responses(
        (status = 201, description = "The token and its secret.", body = IssuedToken),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn create(
    _access: Access<Admin>,
    state: web::Data<AppState>,
    body: JsonBody<TokenSpec>,
) -> Result<HttpResponse, ApiError> {
    let spec = body.into_inner();
    let role = parse_role(&spec.role)?;
    let lifetime = parse_lifetime(spec.expires.as_deref())?;
    let new = issue(
        state.store.as_ref(),
        &spec.name,
        role,
        lifetime,
        state.clock.now(),
    )
    .await
    .map_err(|e| match e {
        IssueError::Invalid(v) => ApiError::from(v),
        IssueError::Store(s) => ApiError::from(s),
        IssueError::Randomness(r) => ApiError::Unexpected(r),
    })?;
    tracing::info!(token_id = %new.token.id, role = new.token.role.as_str(), "token issued");
    Ok(HttpResponse::Created().json(IssuedToken {
        token: token_info(&new.token),
        secret: new.secret,
    }))
}

/// List tokens, oldest first (never their secrets).
#[utoipa::path(
    get,
    path = "/tokens",
    tag = "tokens",
    operation_id = "list_tokens",
    security(("bearer" = ["admin"]), ("session" = ["admin"])),
    responses(
        (status = 200, description = "Every token, workers' secrets and browser sessions included.", body = Vec<TokenInfo>),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn list(
    _access: Access<Admin>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tokens = state.store.list_tokens().await?;
    Ok(HttpResponse::Ok().json(tokens.iter().map(token_info).collect::<Vec<_>>()))
}

/// Revoke a token, and the browser sessions signed in with it.
///
/// This broker refuses it at once; other replicas within
/// 10 seconds (the time they trust a verified token without asking the store).
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = "tokens",
    operation_id = "revoke_token",
    params(("id" = Uuid, Path, description = "The token's id (never its secret).")),
    security(("bearer" = ["admin"]), ("session" = ["admin"])),
    responses(
        (status = 200, description = "The revoked token.", body = TokenInfo),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn revoke(
    _access: Access<Admin>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("token", &id)?;
    let token = state.store.revoke_token(id, state.clock.now()).await?;
    state.auth.forget_all();
    tracing::info!(token_id = %token.id, "token revoked");
    Ok(HttpResponse::Ok().json(token_info(&token)))
}
