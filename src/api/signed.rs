//! Signed URLs: a link to one download (a task's log, later frames) that a
//! program without the caller's credential can open for a few minutes — a
//! browser's `<img>`, `curl`, a video player. The signature is an HMAC of
//! the method, path and expiry, keyed by the signer's stored token hash:
//! every broker replica can check it without shared state, and revoking the
//! signer's token voids every link it signed.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use renderfarm_wire::{SignedUrl, SignedUrlRequest};
use sha2::Sha256;
use uuid::Uuid;

use super::auth::{Access, Viewer};
use super::{resource, ApiError, AppState, JsonBody};
use crate::domain::StoredToken;

/// The query parameters of a signed URL.
const SIGNER: &str = "rf_signer";
const EXPIRES: &str = "rf_expires";
const SIGNATURE: &str = "rf_sig";
/// How long a link lives unless asked otherwise, and at most.
const DEFAULT_LIFETIME: i64 = 300;
const MAX_LIFETIME: i64 = 3600;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/signed-urls", "POST").route(web::post().to(sign)));
}

fn signature(key: &StoredToken, path: &str, expires: i64) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.hash.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("GET\n{path}\n{expires}\n{}", key.id).as_bytes());
    mac
}

/// Sign a download link.
///
/// For programs that cannot send the `Authorization` header: the answer's
/// `url` opens the GET route at `path` as the caller, until `expires_at`.
/// Revoking the caller's token voids it.
#[utoipa::path(
    post,
    path = "/signed-urls",
    tag = "session",
    operation_id = "sign_url",
    request_body = SignedUrlRequest,
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The signed link.", body = SignedUrl),
        super::openapi::BodyErrors,
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn sign(
    access: Access<Viewer>,
    state: web::Data<AppState>,
    body: JsonBody<SignedUrlRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let lifetime = request.expires_in.unwrap_or(DEFAULT_LIFETIME);
    if !(1..=MAX_LIFETIME).contains(&lifetime) {
        return Err(ApiError::Invalid(format!(
            "expires_in: is {lifetime}; give 1 to {MAX_LIFETIME} seconds"
        )));
    }
    if !request.path.starts_with('/')
        || request.path.contains(['?', '#'])
        || request.path.len() > 2048
    {
        return Err(ApiError::Invalid(format!(
            "path: {:?} is not a path of this broker; give one such as /tasks/ID/log, without a query",
            request.path
        )));
    }
    let super::auth::Caller::Token(token) = access.caller else {
        return Err(ApiError::Invalid(
            "the broker runs with --auth off: its links need no signature; use the path as it is"
                .into(),
        ));
    };
    let expires_at = state.clock.now() + chrono::Duration::seconds(lifetime);
    let expires = expires_at.timestamp();
    let sig = hex::encode(
        signature(&token, &request.path, expires)
            .finalize()
            .into_bytes(),
    );
    Ok(HttpResponse::Ok().json(SignedUrl {
        url: format!(
            "{}?{SIGNER}={}&{EXPIRES}={expires}&{SIGNATURE}={sig}",
            request.path, token.id
        ),
        expires_at,
    }))
}

/// The signer of a signed request, checked; `None` when the request is not
/// signed.
pub async fn verify(
    req: &HttpRequest,
    state: &AppState,
    now: DateTime<Utc>,
) -> Result<Option<std::sync::Arc<StoredToken>>, ApiError> {
    let query = req.query_string();
    if !query.contains(SIGNATURE) {
        return Ok(None);
    }
    let invalid = || {
        ApiError::Unauthorized(
            "the signed URL is malformed or altered; ask for a new one (POST /signed-urls)".into(),
        )
    };
    let (mut signer, mut expires, mut sig) = (None, None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((SIGNER, v)) => signer = Uuid::parse_str(v).ok(),
            Some((EXPIRES, v)) => expires = v.parse::<i64>().ok(),
            Some((SIGNATURE, v)) => sig = hex::decode(v).ok(),
            // The signature covers the path only: anything else would ride
            // along unsigned.
            _ => return Err(invalid()),
        }
    }
    let (Some(signer), Some(expires), Some(sig)) = (signer, expires, sig) else {
        return Err(invalid());
    };
    if req.method() != actix_web::http::Method::GET && req.method() != actix_web::http::Method::HEAD
    {
        return Err(ApiError::Unauthorized(
            "a signed URL opens a download (GET) only".into(),
        ));
    }
    if expires <= now.timestamp() {
        return Err(ApiError::Unauthorized(
            "the signed URL expired; ask for a new one (POST /signed-urls)".into(),
        ));
    }
    let token = state.auth.signer(signer, now).await?;
    signature(&token, req.path(), expires)
        .verify_slice(&sig)
        .map_err(|_| invalid())?;
    Ok(Some(token))
}
