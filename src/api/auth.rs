//! Who is calling, and what they may do. A middleware reads the credential
//! a request presents (a bearer token, or a browser's session cookie) and
//! records who it belongs to; each handler names the access it needs with
//! one extractor ([`Access`]), which refuses with 401 (no usable credential)
//! or 403 (a credential without the right). A handler without one is open:
//! only `/health`, `/ready` and the API docs are, and the auth test walks
//! every operation of the spec to keep it so.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::domain::{csrf_matches, secret_digest, secret_hash, Role, StoredToken, SECRET_PREFIX};
use crate::store::Store;

/// The cookie a browser's session travels in (HttpOnly: pages cannot read it).
pub const SESSION_COOKIE: &str = "rf_session";
/// The header a browser session sends its CSRF value in on every change.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long a verified token is trusted without asking the store again. A
/// revocation reaches every broker replica within this (the replica that
/// revoked forgets the token at once).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);
/// Tokens remembered at most; past it the memory starts over (each token
/// then costs one store read again), so random credentials cannot grow it.
const TOKEN_CACHE_LIMIT: usize = 50_000;

/// Whether the broker checks credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every route but the open ones needs a credential (the default).
    On,
    /// Anyone who reaches the broker may do anything: a trusted single
    /// machine only.
    Off,
}

/// Verifies presented secrets against the store, remembering the answers
/// for [`TOKEN_CACHE_TTL`] so that the steady state adds no store command
/// per request. A remembered token is shared, not copied, with every
/// request that presents it: the workers' hot routes pay a digest and a
/// lookup, no allocation.
pub struct Authenticator {
    mode: AuthMode,
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<Remembering, Remembered>>,
}

/// What a verified token is remembered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Remembering {
    /// A presented secret, by its SHA-256.
    Secret([u8; 32]),
    /// The signer of a signed URL, by the token's id.
    Signer(Uuid),
}

struct Remembered {
    token: Option<Arc<StoredToken>>,
    at: Instant,
}

impl Authenticator {
    pub fn new(mode: AuthMode, store: Arc<dyn Store>) -> Self {
        Self {
            mode,
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The token whose secret is `secret`, if it is usable at `now`.
    pub async fn verify(
        &self,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Result<Arc<StoredToken>, ApiError> {
        let key = Remembering::Secret(secret_digest(secret));
        let token = match self.remembered(key) {
            Some(token) => token,
            None => {
                let token = self
                    .store
                    .token_by_hash(&secret_hash(secret))
                    .await?
                    .map(Arc::new);
                // Only found tokens are remembered: an unknown one may be
                // stored a moment later (a deployment's secret adopted by a
                // broker still connecting to MongoDB), and the rate limiter,
                // not this cache, bounds what guessing costs.
                if token.is_some() {
                    self.remember(key, token.clone());
                }
                token
            }
        };
        let token = token.ok_or_else(|| {
            ApiError::Unauthorized(
                "the token is not one this broker issued (or it was mistyped); ask an admin for one: renderfarm token create --name YOU --role ROLE"
                    .into(),
            )
        })?;
        token
            .usable_at(now)
            .map_err(|why| ApiError::Unauthorized(why.to_string()))?;
        Ok(token)
    }

    /// Forgets what was remembered of the secret stored as `hash` (hex), so
    /// that a revocation takes effect on this replica at once.
    pub fn forget(&self, hash: &str) {
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(hash, &mut digest).is_ok() {
            self.lock().remove(&Remembering::Secret(digest));
        } else {
            self.forget_all();
        }
    }

    /// Forgets every remembered token (after a revocation that may touch
    /// several: a worker's secrets, a token's sessions).
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    /// The token with id `id`, usable at `now`, for a signed URL: looked up
    /// among all tokens (signed URLs are rare next to bearer requests) and
    /// remembered like the others.
    pub async fn signer(&self, id: Uuid, now: DateTime<Utc>) -> Result<Arc<StoredToken>, ApiError> {
        let key = Remembering::Signer(id);
        let token = match self.remembered(key) {
            Some(token) => token,
            None => {
                let token = self
                    .store
                    .list_tokens()
                    .await?
                    .into_iter()
                    .find(|t| t.id == id)
                    .map(Arc::new);
                self.remember(key, token.clone());
                token
            }
        };
        let token = token.ok_or_else(|| {
            ApiError::Unauthorized("the signed URL's signer is unknown; ask for a new link".into())
        })?;
        token.usable_at(now).map_err(|why| {
            ApiError::Unauthorized(format!(
                "the signed URL's signer cannot sign any more: {why}"
            ))
        })?;
        Ok(token)
    }

    fn remembered(&self, key: Remembering) -> Option<Option<Arc<StoredToken>>> {
        let cache = self.lock();
        let entry = cache.get(&key)?;
        (entry.at.elapsed() < TOKEN_CACHE_TTL).then(|| entry.token.clone())
    }

    fn remember(&self, key: Remembering, token: Option<Arc<StoredToken>>) {
        let mut cache = self.lock();
        if cache.len() >= TOKEN_CACHE_LIMIT {
            cache.retain(|_, e| e.at.elapsed() < TOKEN_CACHE_TTL);
            if cache.len() >= TOKEN_CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Remembered {
                token,
                at: Instant::now(),
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Remembering, Remembered>> {
        // A panic while holding the lock leaves only a cache behind.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The broker runs with `--auth off`: everyone may do everything.
    Trusted,
    /// The holder of a token (a person's, an enrolment token, a worker's
    /// own secret, or a browser session).
    Token(Arc<StoredToken>),
}

impl Caller {
    /// The person's name, when a person calls.
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Token(t) if t.worker_id.is_none() => Some(&t.name),
            _ => None,
        }
    }

    /// Whether the caller may act on every render, not only its own.
    pub fn may_act_on_any_render(&self) -> bool {
        match self {
            Caller::Trusted => true,
            Caller::Token(t) => t.worker_id.is_none() && t.role.grants(Role::Operator),
        }
    }

    /// Refuses unless the caller is the registered worker `worker_id`.
    pub fn require_worker(&self, worker_id: Uuid) -> Result<(), ApiError> {
        match self {
            Caller::Trusted => Ok(()),
            Caller::Token(t) if t.worker_id == Some(worker_id) => Ok(()),
            Caller::Token(t) => Err(ApiError::Forbidden(match t.worker_id {
                Some(own) => format!(
                    "this credential belongs to worker {own}; a worker acts only as itself, never as worker {worker_id}"
                ),
                None => format!(
                    "only worker {worker_id} itself may do this, with the secret it got when it registered"
                ),
            })),
        }
    }

    /// The worker calling, when one does (`None` with auth off).
    pub fn worker_id(&self) -> Option<Uuid> {
        match self {
            Caller::Token(t) => t.worker_id,
            Caller::Trusted => None,
        }
    }
}

/// What the middleware found, for the extractors.
#[derive(Debug, Clone)]
enum Presented {
    Caller(Caller),
    Refused(Refusal),
}

/// Why the credential presented is not accepted, kept for the handler that
/// needs one (a route open to all ignores it).
#[derive(Debug, Clone)]
enum Refusal {
    Unauthorized(String),
    Forbidden(String),
    /// The store could not say: worth retrying.
    Unavailable(String),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Unauthorized(m) => Refusal::Unauthorized(m),
            ApiError::Forbidden(m) => Refusal::Forbidden(m),
            ApiError::Unavailable(m) => Refusal::Unavailable(m),
            other => {
                tracing::error!(error = ?other, "checking a credential failed");
                Refusal::Unavailable(
                    "the credential could not be checked just now; retry shortly".into(),
                )
            }
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthorized(m) => ApiError::Unauthorized(m),
            Refusal::Forbidden(m) => ApiError::Forbidden(m),
            Refusal::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

const MISSING: &str = "this route needs a credential: send the header \"Authorization: Bearer rf_…\" with a token an admin gave you (renderfarm token create --name YOU --role viewer|artist|operator|admin), or sign in at POST /session in a browser";

/// The middleware: finds the credential a request presents and records
/// whose it is. It refuses nothing itself; the handler's [`Access`] does.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(state) = req.app_data::<web::Data<AppState>>().cloned() {
        let presented = match state.auth.mode() {
            AuthMode::Off => Presented::Caller(Caller::Trusted),
            AuthMode::On => match present(req.request(), &state).await {
                Ok(Some(caller)) => Presented::Caller(caller),
                Ok(None) => Presented::Refused(Refusal::Unauthorized(MISSING.into())),
                Err(refused) => Presented::Refused(refused.into()),
            },
        };
        req.extensions_mut().insert(presented);
    }
    next.call(req).await
}

/// The credential a request presents, verified: `None` when it presents
/// none.
async fn present(req: &HttpRequest, state: &AppState) -> Result<Option<Caller>, ApiError> {
    refuse_secrets_in_url(req)?;
    let now = state.clock.now();
    if let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 512)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "the Authorization header is malformed: send \"Authorization: Bearer rf_…\" with the token an admin gave you".into(),
                )
            })?;
        let token = state.auth.verify(secret, now).await?;
        return Ok(Some(Caller::Token(token)));
    }
    if let Some(cookie) = req.cookie(SESSION_COOKIE) {
        let secret = cookie.value();
        let token = state.auth.verify(secret, now).await.map_err(|e| match e {
            ApiError::Unauthorized(m) => ApiError::Unauthorized(format!(
                "your browser session is no longer valid ({m}); sign in again"
            )),
            other => other,
        })?;
        if token.session_of.is_none() {
            return Err(ApiError::Unauthorized(
                "the session cookie does not hold a session; sign in at POST /session".into(),
            ));
        }
        if !is_safe(req.method()) {
            let presented = req
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !csrf_matches(secret, presented) {
                return Err(ApiError::Forbidden(
                    "a change made with a browser session must carry the X-CSRF-Token header with the csrf value the sign-in answered".into(),
                ));
            }
        }
        return Ok(Some(Caller::Token(token)));
    }
    if let Some(token) = super::signed::verify(req, state, now).await? {
        return Ok(Some(Caller::Token(token)));
    }
    Ok(None)
}

/// Whether a method only reads (no CSRF check needed).
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A token in a URL ends up in proxy and server logs; it is refused even on
/// open routes, so that nobody learns to put it there.
fn refuse_secrets_in_url(req: &HttpRequest) -> Result<(), ApiError> {
    let query = req.query_string();
    if query.is_empty() {
        return Ok(());
    }
    let leaks = query.split('&').any(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        matches!(key, "token" | "access_token" | "api_key" | "bearer")
            || value.starts_with(SECRET_PREFIX)
    });
    if leaks {
        return Err(ApiError::Unauthorized(
            "a token was sent in the URL, where it ends up in logs: send it in the header \"Authorization: Bearer rf_…\" instead, and revoke that token (renderfarm token revoke ID), which is no longer secret".into(),
        ));
    }
    Ok(())
}

/// The caller of a request that passed through [`authenticate`].
fn caller_of(req: &HttpRequest) -> Result<Caller, ApiError> {
    match req.extensions().get::<Presented>() {
        Some(Presented::Caller(c)) => Ok(c.clone()),
        Some(Presented::Refused(r)) => Err(r.clone().into()),
        None => Err(ApiError::Unexpected(anyhow::anyhow!(
            "a route that needs a credential is served without the authentication middleware"
        ))),
    }
}

/// What a route needs of its caller.
pub trait Need {
    /// Refuses a caller without it (403 naming what is needed).
    fn check(caller: &Caller) -> Result<(), ApiError>;
}

/// A route for people holding at least `ROLE`.
pub struct AtLeast<const RANK: u8>;

/// Reads: any person's token.
pub type Viewer = AtLeast<0>;
/// Submits, and changes its own renders.
pub type Artist = AtLeast<1>;
/// Every render and worker action.
pub type Operator = AtLeast<2>;
/// Tokens.
pub type Admin = AtLeast<3>;

fn rank_role(rank: u8) -> Role {
    match rank {
        0 => Role::Viewer,
        1 => Role::Artist,
        2 => Role::Operator,
        _ => Role::Admin,
    }
}

impl<const RANK: u8> Need for AtLeast<RANK> {
    fn check(caller: &Caller) -> Result<(), ApiError> {
        let needed = rank_role(RANK);
        match caller {
            Caller::Trusted => Ok(()),
            Caller::Token(t) if t.role == Role::Worker => Err(ApiError::Forbidden(format!(
                "a worker's credential cannot do this; it needs a person's token with the role {} or higher",
                needed.as_str()
            ))),
            Caller::Token(t) if t.role.grants(needed) => Ok(()),
            Caller::Token(t) => Err(ApiError::Forbidden(format!(
                "this needs the role {} or higher; the token {:?} has the role {}. Ask an admin for one with the role needed",
                needed.as_str(),
                t.name,
                t.role.as_str()
            ))),
        }
    }
}

/// Registering a worker: an enrolment token (role `worker`).
pub struct Enrolment;

impl Need for Enrolment {
    fn check(caller: &Caller) -> Result<(), ApiError> {
        match caller {
            Caller::Trusted => Ok(()),
            Caller::Token(t) if t.role == Role::Worker && t.worker_id.is_none() => Ok(()),
            Caller::Token(t) if t.worker_id.is_some() => Err(ApiError::Forbidden(
                "a registered worker's secret cannot register another worker; registering needs the fleet's enrolment token (role worker)".into(),
            )),
            Caller::Token(_) => Err(ApiError::Forbidden(
                "registering a worker needs an enrolment token (role worker): renderfarm token create --name fleet --role worker".into(),
            )),
        }
    }
}

/// The routes of a registered worker: its own secret, checked against the
/// worker (or the lease) the request names by the handler.
pub struct RegisteredWorker;

impl Need for RegisteredWorker {
    fn check(caller: &Caller) -> Result<(), ApiError> {
        match caller {
            Caller::Trusted => Ok(()),
            Caller::Token(t) if t.worker_id.is_some() => Ok(()),
            Caller::Token(_) => Err(ApiError::Forbidden(
                "only a registered worker does this, with the secret it got when it registered (POST /workers with an enrolment token)".into(),
            )),
        }
    }
}

/// An operator's action that a registered worker may also take on itself
/// (draining itself when its agent stops); the handler checks which.
pub struct OperatorOrWorker;

impl Need for OperatorOrWorker {
    fn check(caller: &Caller) -> Result<(), ApiError> {
        match caller {
            Caller::Token(t) if t.worker_id.is_some() => Ok(()),
            _ => Operator::check(caller),
        }
    }
}

/// Reading stored files: any person's token (viewer or higher), or a
/// registered worker fetching what it renders. An enrolment token is
/// neither: it only registers workers.
pub struct ViewerOrWorker;

impl Need for ViewerOrWorker {
    fn check(caller: &Caller) -> Result<(), ApiError> {
        match caller {
            Caller::Token(t) if t.worker_id.is_some() => Ok(()),
            Caller::Token(t) if t.role == Role::Worker => Err(ApiError::Forbidden(
                "an enrolment token only registers workers; fetch files with the registered worker's own secret, or a person's token (role viewer or higher)".into(),
            )),
            _ => Viewer::check(caller),
        }
    }
}

/// The extractor a handler names its access with: `Access<Operator>`.
pub struct Access<N: Need> {
    pub caller: Caller,
    need: PhantomData<N>,
}

impl<N: Need> FromRequest for Access<N> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(caller_of(req).and_then(|caller| {
            N::check(&caller)?;
            Ok(Access {
                caller,
                need: PhantomData,
            })
        }))
    }
}
