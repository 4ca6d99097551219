//! The HTTP API: one module per resource, one error type, thin handlers that
//! parse at the edge and call the store.

pub mod auth;
mod blocklist;
mod body;
pub mod error;
pub mod events;
mod files;
pub mod frames;
mod health;
mod hours;
pub mod metrics;
pub mod openapi;
mod previews;
pub mod rate_limit;
mod renders;
mod scheduler;
mod session;
mod signed;
mod tasks;
mod tokens;
pub mod variables;
mod videos;
mod webhooks;
mod workers;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpRequest};
use serde::Deserialize;
use tokio::sync::Notify;
use utoipa::IntoParams;
use uuid::Uuid;

pub use body::JsonBody;
pub use error::ApiError;

use crate::clock::Clock;
use crate::scheduler::Scheduler;
use crate::store::{PageRequest, Store};

/// The largest JSON body accepted (a log chunk is the big one).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// Absolute; the store's files (SQLite) are under it.
    pub data_dir: PathBuf,
    /// `--output-root`: default outputs go under it, and frames are served
    /// only from under it.
    pub output_root: frames::OutputRoot,
    /// Blends uploaded and frames sent back (`/files`, frame uploads).
    pub files: Arc<crate::files::Files>,
    /// Woken whenever work may have become claimable, so long-polling workers
    /// try again at once instead of polling the store.
    pub work_available: Arc<Notify>,
    pub scheduler: Arc<Scheduler>,
    /// Long polls waiting now, and how many may: each holds a connection
    /// (a file descriptor) for up to a minute.
    pub waiting: AtomicUsize,
    pub max_waiting: usize,
    /// The event log's reader and the farm summary, shared by every stream.
    pub events: Arc<events::EventHub>,
    /// Checks credentials (or lets everyone in, with `--auth off`).
    pub auth: auth::Authenticator,
    /// Whether the credentials the broker starts with are stored (a MongoDB
    /// broker stores them once its store answers); not ready before.
    pub credentials_ready: Arc<std::sync::atomic::AtomicBool>,
    /// `serve --webhooks-allow-private`: webhooks may point at private,
    /// loopback and link-local addresses.
    pub webhooks_allow_private: bool,
    /// This broker's copy of the path variables, for claims.
    pub variables: Arc<variables::VariableCache>,
}

impl AppState {
    /// Tells every waiting worker to look for work again.
    pub fn wake_workers(&self) {
        self.work_available.notify_waiters();
    }

    /// A place among the waiting long polls, held until dropped; `None` when
    /// `max_waiting` are waiting already.
    pub fn wait_slot(&self) -> Option<WaitSlot<'_>> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_waiting).then_some(n + 1)
            })
            .ok()
            .map(|_| WaitSlot(&self.waiting))
    }
}

/// One waiting long poll, counted in [`AppState::waiting`] while it lives.
pub struct WaitSlot<'a>(&'a AtomicUsize);

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Registers every route and the JSON error answers for what matches none.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
        .app_data(web::QueryConfig::default().error_handler(error::query_error))
        .app_data(web::PathConfig::default().error_handler(error::path_error));
    // Routes are tried in this order, each dynamic one a pattern match: the
    // workers' hot paths (request-task, reports, heartbeats) go first.
    workers::configure(cfg);
    tasks::configure(cfg);
    renders::configure(cfg);
    events::configure(cfg);
    frames::configure(cfg);
    previews::configure(cfg);
    blocklist::configure(cfg);
    hours::configure(cfg);
    variables::configure(cfg);
    videos::configure(cfg);
    files::configure(cfg);
    health::configure(cfg);
    metrics::configure(cfg);
    scheduler::configure(cfg);
    tokens::configure(cfg);
    webhooks::configure(cfg);
    session::configure(cfg);
    signed::configure(cfg);
    openapi::configure(cfg);
}

/// Every resource registered through [`resource`], with the methods it
/// allows: what the auth test compares with the spec.
static REGISTERED: Mutex<BTreeSet<(String, &'static str)>> = Mutex::new(BTreeSet::new());

/// The routes served (path pattern, allowed methods), once an app was built.
pub fn registered_routes() -> Vec<(String, &'static str)> {
    REGISTERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// The answer for a path that matches no route.
pub async fn no_route(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "there is no route {} {}; see /api-docs for the routes",
        req.method(),
        req.path()
    )))
}

/// A route's template, as metrics and logs name it (`/renders/{id}`), kept
/// with its resource so that a request's route is known without matching its
/// path again.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// Each route template once, for the life of the process (apps are built
/// per server thread, and tests build many).
pub(crate) fn intern_route(path: &str) -> &'static str {
    static ROUTES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut routes = ROUTES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = routes.get(path) {
        return known;
    }
    let leaked: &'static str = Box::leak(path.to_string().into_boxed_str());
    routes.insert(leaked);
    leaked
}

/// A resource whose other methods get a JSON 405 naming the allowed ones.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    REGISTERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((path.to_string(), allow));
    web::resource(path)
        .app_data(RouteLabel(intern_route(path)))
        .default_service(web::to(move |req: HttpRequest| async move {
            Err::<actix_web::HttpResponse, _>(ApiError::MethodNotAllowed(
                format!(
                    "{} is not allowed on {}; use {allow}",
                    req.method(),
                    req.path()
                ),
                allow,
            ))
        }))
}

/// Parses an id from the path; a malformed one names nothing, so it is a 404.
fn parse_id(kind: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::NotFound(format!(
            "no {kind} with id {raw:?}: ids are UUIDs such as 0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d"
        ))
    })
}

/// `?limit=&offset=` on listings; any other parameter is refused.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    /// Items per page.
    #[param(nullable = false, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<i64>,
    /// Items to skip.
    #[param(nullable = false, minimum = 0, default = 0)]
    offset: Option<i64>,
}

impl TryFrom<PageQuery> for PageRequest {
    type Error = ApiError;

    fn try_from(q: PageQuery) -> Result<Self, Self::Error> {
        let default = PageRequest::default();
        let limit = q.limit.unwrap_or(default.limit);
        let offset = q.offset.unwrap_or(default.offset);
        if !(1..=PageRequest::MAX_LIMIT).contains(&limit) {
            return Err(ApiError::Invalid(format!(
                "limit is {limit}; give 1 to {}",
                PageRequest::MAX_LIMIT
            )));
        }
        if offset < 0 {
            return Err(ApiError::Invalid(format!(
                "offset is {offset}; give 0 or more"
            )));
        }
        Ok(PageRequest { limit, offset })
    }
}
