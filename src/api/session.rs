//! Browser sessions. A page cannot put a bearer header on an `EventSource`
//! or an `<img>`, so signing in with a token (`POST /session` with the
//! bearer header) answers with an HttpOnly, `SameSite=Strict` cookie holding
//! a session of that token (its own secret, 12 hours at most, revoked with
//! its parent), `Secure` when the broker is reached over TLS. Every change
//! made with the cookie must carry `X-CSRF-Token`, a value derived from the
//! session's secret that the sign-in answers and a page of another site
//! cannot compute.

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::{web, HttpRequest, HttpResponse};
use renderfarm_wire::SessionInfo;
use uuid::Uuid;

use super::auth::{Access, Caller, Viewer, SESSION_COOKIE};
use super::{resource, ApiError, AppState};
use crate::domain::{csrf_for, plan_session, secret_hash, StoredToken, SESSION_LIFETIME};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/session", "GET, POST, DELETE")
            .route(web::get().to(whoami))
            .route(web::post().to(sign_in))
            .route(web::delete().to(sign_out)),
    );
}

fn info(token: &StoredToken, session_secret: Option<&str>) -> SessionInfo {
    SessionInfo {
        name: token.name.clone(),
        role: token.role.as_str().to_string(),
        expires_at: token.expires_at,
        csrf: session_secret.map(csrf_for),
    }
}

fn session_cookie(req: &HttpRequest, value: String, max_age: time::Duration) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(req.connection_info().scheme() == "https")
        .max_age(max_age)
        .finish()
}

/// Sign a browser in.
///
/// Send the bearer header once; the answer sets the session cookie and says
/// the CSRF value to send as `X-CSRF-Token` with every change made with it.
#[utoipa::path(
    post,
    path = "/session",
    tag = "session",
    operation_id = "sign_in",
    security(("bearer" = ["viewer"])),
    responses(
        (status = 201, description = "Signed in: the cookie is set.", body = SessionInfo,
            headers(("Set-Cookie" = String, description = "The session cookie (HttpOnly, SameSite=Strict, Secure over TLS)."))),
        (status = 400, response = super::openapi::BadRequest),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn sign_in(
    access: Access<Viewer>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let Caller::Token(parent) = access.caller else {
        return Err(ApiError::Invalid(
            "the broker runs with --auth off: there is nothing to sign in to".into(),
        ));
    };
    if parent.session_of.is_some() {
        return Err(ApiError::Invalid(
            "this browser is signed in already (GET /session says as whom); sign out first to sign in as someone else".into(),
        ));
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random)
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("no randomness: {e}")))?;
    let session = plan_session(&parent, Uuid::now_v7(), random, state.clock.now());
    let stored = state.store.create_token(session.token).await?;
    let lifetime = time::Duration::seconds(SESSION_LIFETIME.num_seconds());
    Ok(HttpResponse::Created()
        .cookie(session_cookie(&req, session.secret.clone(), lifetime))
        .json(info(&stored, Some(&session.secret))))
}

/// Who this browser (or token) acts as.
#[utoipa::path(
    get,
    path = "/session",
    tag = "session",
    operation_id = "whoami",
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The caller, with the CSRF value when it is a browser session.", body = SessionInfo),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn whoami(
    access: Access<Viewer>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let Caller::Token(token) = access.caller else {
        return Ok(HttpResponse::Ok().json(SessionInfo {
            name: "anyone (auth off)".into(),
            role: "admin".into(),
            expires_at: None,
            csrf: None,
        }));
    };
    let cookie = req.cookie(SESSION_COOKIE);
    let secret = cookie
        .as_ref()
        .map(|c| c.value())
        .filter(|s| token.session_of.is_some() && secret_hash(s) == token.hash);
    Ok(HttpResponse::Ok().json(info(&token, secret)))
}

/// Sign this browser out: its session ends on every broker and the cookie
/// is cleared. Only a session signs out (a bearer token is revoked instead).
#[utoipa::path(
    delete,
    path = "/session",
    tag = "session",
    operation_id = "sign_out",
    security(("session" = ["viewer"])),
    responses(
        (status = 204, description = "Signed out."),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn sign_out(
    access: Access<Viewer>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if let Caller::Token(token) = &access.caller {
        // A bearer token is no session (and one presented beside a session
        // cookie speaks for the request): it is revoked at DELETE /tokens/{id}.
        if token.session_of.is_none() {
            return Err(ApiError::Unauthorized(
                "signing out ends a browser session: send its cookie (rf_session) alone; a bearer token is revoked by an admin with DELETE /tokens/{id}".into(),
            ));
        }
        state
            .store
            .revoke_token(token.id, state.clock.now())
            .await?;
        state.auth.forget(&token.hash);
    }
    Ok(HttpResponse::NoContent()
        .cookie(session_cookie(&req, String::new(), time::Duration::ZERO))
        .finish())
}
