//! Rate limits per credential: governor's keyed GCRA limiter behind a small
//! middleware of ours, the outermost layer of the app so that it runs before
//! authentication and limits floods of bad credentials too.
//!
//! A request is keyed by the credential it *presents*, never a verified one:
//! a SHA-256 of its `Authorization` header, else of its `rf_session` cookie,
//! else its peer address (an IPv6 client by its /64, the block one host is
//! usually given). Only the first 16 bytes of the hash are kept; the
//! credential itself is neither stored nor logged.
//!
//! Two budgets, each with a limiter of its own: the workers' routes
//! (registration, heartbeats, `request-task` and the reports under a lease)
//! and the people's (everything else), so an artist's runaway script cannot
//! starve the farm. `/health` and `/ready` (orchestrator probes) are not
//! limited.
//!
//! Every limited answer carries `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` as draft-ietf-httpapi-ratelimit-headers-06 defines them
//! (the last draft with three separate fields): the limit is the burst, the
//! requests that may come at once; the remaining is what is left of it after
//! this request; the reset is the seconds until all of it is back (on a 429,
//! the same instant as `Retry-After`, as the draft asks). A refused request is
//! a 429 with the usual JSON error and a `Retry-After` of the limiter's real
//! wait, rounded up to whole seconds.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{Error, HttpRequest, ResponseError};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};

use super::ApiError;

/// The session cookie browsers present instead of an `Authorization` header.
pub const SESSION_COOKIE: &str = "rf_session";

/// How often the limiters forget the keys whose budget is whole again
/// (governor keeps each one replenish interval longer), so that their memory
/// follows the clients of the last moments, not every client ever seen (nor
/// every made-up credential of a flood).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// Requests in a rate's count are per second or per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Second,
    Minute,
}

impl Per {
    fn period(self) -> Duration {
        match self {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "m",
        }
    }
}

/// A budget's limit as `--rate-limit` and `--worker-rate-limit` take it:
/// `N/s` or `N/m`, optionally `:BURST`, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Not limited.
    Off,
    /// `requests` per second or minute on average, up to `burst` at once.
    Rate {
        requests: NonZeroU32,
        per: Per,
        burst: NonZeroU32,
    },
}

impl RateLimit {
    /// `requests` per `per`, up to `burst` at once. Panics (at compile time
    /// where used as a constant) when either is zero.
    pub const fn new(requests: u32, per: Per, burst: u32) -> Self {
        match (NonZeroU32::new(requests), NonZeroU32::new(burst)) {
            (Some(requests), Some(burst)) => RateLimit::Rate {
                requests,
                per,
                burst,
            },
            _ => panic!("a rate limit counts at least one request"),
        }
    }

    /// governor's quota for this limit; `None` when off.
    fn quota(self) -> Option<Quota> {
        match self {
            RateLimit::Off => None,
            RateLimit::Rate {
                requests,
                per,
                burst,
            } => Quota::with_period(per.period() / requests.get()).map(|q| q.allow_burst(burst)),
        }
    }
}

/// Shown in `--help` and in messages, and read back by [`FromStr`].
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimit::Off => f.write_str("off"),
            RateLimit::Rate {
                requests,
                per,
                burst,
            } if burst == requests => write!(f, "{requests}/{}", per.suffix()),
            RateLimit::Rate {
                requests,
                per,
                burst,
            } => write!(f, "{requests}/{}:{burst}", per.suffix()),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "{s:?} is not a rate limit ({why}): give N/s or N/m (N requests a second or a \
                 minute), optionally :BURST (how many may come at once, N if left out), such as \
                 300/s:600 or 30/m; or \"off\""
            )
        };
        let text = s.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(RateLimit::Off);
        }
        let count = |n: &str| n.trim().parse::<u32>().ok().and_then(NonZeroU32::new);
        let (rate, burst) = match text.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (text, None),
        };
        let (requests, per) = rate
            .split_once('/')
            .ok_or_else(|| bad("no /s or /m after the count"))?;
        let requests =
            count(requests).ok_or_else(|| bad("N is a whole number of requests, at least 1"))?;
        let per = match per.trim() {
            "s" => Per::Second,
            "m" => Per::Minute,
            _ => return Err(bad("the unit is s for a second or m for a minute")),
        };
        let burst = match burst {
            None => requests,
            Some(b) => count(b).ok_or_else(|| bad("BURST is a whole number, at least 1"))?,
        };
        Ok(RateLimit::Rate {
            requests,
            per,
            burst,
        })
    }
}

/// The limits of both budgets (`startup::Settings::rate_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Per credential on every route but the workers' and the probes.
    pub people: RateLimit,
    /// Per credential on the workers' routes.
    pub workers: RateLimit,
    /// Per address, the credentials it presented that were refused (401).
    pub refused_credentials: RateLimit,
}

impl RateLimits {
    /// No limits (the benchmarks, which drive thousands of requests a second
    /// from one address).
    pub const OFF: RateLimits = RateLimits {
        people: RateLimit::Off,
        workers: RateLimit::Off,
        refused_credentials: RateLimit::Off,
    };
    /// The default of the people's budget. A `watch` asks for each render it
    /// follows and for the task of each busy worker every second (about 100
    /// requests on a 100-machine farm), `up --demo` four times a second; a
    /// runaway script asks thousands of times a second and is held to
    /// about 1.5% of what the broker serves.
    pub const DEFAULT_PEOPLE: RateLimit = RateLimit::new(300, Per::Second, 600);
    /// The default of the workers' budget. A rendering agent sends a few
    /// requests a second (progress every second, a heartbeat every few, a
    /// claim and a report per task), but without credentials a whole farm's
    /// agents may share one address (`up`, a NAT, no auth), and a farm that
    /// starts registers all at once; a runaway loop is still held to a tenth
    /// of its pace or less.
    pub const DEFAULT_WORKERS: RateLimit = RateLimit::new(1000, Per::Second, 2000);
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            people: Self::DEFAULT_PEOPLE,
            workers: Self::DEFAULT_WORKERS,
            refused_credentials: FAILED_CREDENTIALS,
        }
    }
}

/// Which budget a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    People,
    Workers,
}

impl Budget {
    /// The budget of a request; `None` for the routes that are never
    /// limited (`/health`, `/ready`). Worker routes are the POSTs of a
    /// worker's life: `/workers`, `/workers/{id}/heartbeat`,
    /// `/workers/{id}/request-task` and `/tasks/{id}/progress|complete|fail|release`;
    /// and its files: `GET`/`HEAD /files/{sha256}` (the blend) and
    /// `PUT /tasks/{id}/frames/{frame}` (each frame).
    pub fn of(method: &Method, path: &str) -> Option<Budget> {
        if is_unlimited(path) {
            return None;
        }
        let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
        let segments = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        );
        // Files: a worker fetches the blend of each render it renders and
        // sends each frame back as it is saved; people rarely fetch blends.
        let file_route = match segments {
            (Some("files"), Some(sha), None, None) => {
                !sha.is_empty() && (method == Method::GET || method == Method::HEAD)
            }
            (Some("tasks"), Some(id), Some("frames"), Some(frame)) => {
                !id.is_empty() && !frame.is_empty() && method == Method::PUT && !path.ends_with('/')
            }
            _ => false,
        };
        if file_route {
            return Some(Budget::Workers);
        }
        if method != Method::POST {
            return Some(Budget::People);
        }
        let worker = match segments {
            (Some("workers"), None, None, None) => true,
            (Some("workers"), Some(id), Some("heartbeat" | "request-task"), None)
            | (Some("tasks"), Some(id), Some("progress" | "complete" | "fail" | "release"), None) => {
                !id.is_empty()
            }
            _ => false,
        };
        Some(if worker {
            Budget::Workers
        } else {
            Budget::People
        })
    }

    /// The flag that sets this budget, for messages.
    fn flag(self) -> &'static str {
        match self {
            Budget::People => "--rate-limit",
            Budget::Workers => "--worker-rate-limit",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Budget::People => "requests to the API",
            Budget::Workers => "worker requests (registration, heartbeats, claims, reports)",
        }
    }
}

/// The paths no budget limits: the orchestrator's probes must always answer.
pub fn is_unlimited(path: &str) -> bool {
    matches!(path, "/health" | "/ready")
}

/// Whose budget a request draws on: the credential it presents (hashed), or
/// its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// The first 16 bytes of the SHA-256 of the `Authorization` header.
    Credential([u8; 16]),
    /// The same of the session cookie's value.
    Session([u8; 16]),
    /// The peer's address (IPv6 by its /64).
    Address(IpAddr),
    /// No address known (not over TCP).
    Unknown,
}

impl Key {
    /// The key of `req`.
    pub fn of(req: &HttpRequest) -> Key {
        if let Some(value) = req.headers().get(header::AUTHORIZATION) {
            return Key::Credential(digest(value.as_bytes()));
        }
        if let Some(value) = session_cookie(req.headers()) {
            return Key::Session(digest(value.as_bytes()));
        }
        match req.peer_addr() {
            Some(addr) => Key::Address(network_of(addr.ip())),
            None => Key::Unknown,
        }
    }

    /// What the key stands for, in a message to its client (never the
    /// credential itself).
    fn describe(&self) -> &'static str {
        match self {
            Key::Credential(_) => "with this Authorization header",
            Key::Session(_) => "with this session",
            Key::Address(_) | Key::Unknown => "without a credential from this address",
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 16] {
    let hash = Sha256::digest(bytes);
    let mut key = [0; 16];
    key.copy_from_slice(&hash[..16]);
    key
}

/// The `rf_session` cookie's value, from any `Cookie` header.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// An IPv4 address as is; an IPv6 one (not IPv4-mapped) cut to its /64.
fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

type KeyedLimiter<C> = RateLimiter<Key, DashMapStateStore<Key>, C, StateInformationMiddleware>;

/// One budget's limit and the state of every key that used it lately.
struct Limiter<C: Clock> {
    limit: RateLimit,
    keyed: KeyedLimiter<C>,
}

/// What the limiter decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let through; `remaining` more may follow at once, all of the `limit`
    /// is back in `reset_secs`.
    Allowed {
        limit: u32,
        remaining: u32,
        reset_secs: u64,
    },
    /// Refused; the next request may come in `retry_after_secs`.
    Refused { limit: u32, retry_after_secs: u64 },
}

/// The default of [`RateLimits::refused_credentials`]: refused credentials
/// (401) one address may present before it is turned away for a while. Each made-up credential has a budget of its own, so
/// without this a guesser could try as fast as the store answers; a person
/// who mistyped a token a few times is not held up.
pub const FAILED_CREDENTIALS: RateLimit = RateLimit::new(30, Per::Minute, 30);

/// The limiters of both budgets, shared by every server thread.
pub struct Limiters<C: Clock = DefaultClock> {
    people: Option<Limiter<C>>,
    workers: Option<Limiter<C>>,
    /// Refused credentials by address ([`FAILED_CREDENTIALS`]), and the
    /// addresses turned away until when.
    failures: Option<Limiter<C>>,
    turned_away: std::sync::Mutex<std::collections::HashMap<IpAddr, std::time::Instant>>,
}

impl Limiters {
    /// The limiters for `limits`, on the system's clock.
    pub fn new(limits: RateLimits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiters<C> {
    /// The limiters for `limits`, on `clock` (tests advance a fake one).
    pub fn with_clock(limits: RateLimits, clock: C) -> Self {
        let limiter = |limit: RateLimit| {
            limit.quota().map(|quota| Limiter {
                limit,
                keyed: RateLimiter::dashmap_with_clock(quota, clock.clone())
                    .with_middleware::<StateInformationMiddleware>(),
            })
        };
        Limiters {
            people: limiter(limits.people),
            workers: limiter(limits.workers),
            failures: limiter(limits.refused_credentials),
            turned_away: Default::default(),
        }
    }
}

impl<C: Clock> Limiters<C> {
    /// True when neither budget is limited.
    pub fn is_off(&self) -> bool {
        self.people.is_none() && self.workers.is_none() && self.failures.is_none()
    }

    fn limiter(&self, budget: Budget) -> Option<&Limiter<C>> {
        match budget {
            Budget::People => self.people.as_ref(),
            Budget::Workers => self.workers.as_ref(),
        }
    }

    /// Counts one request of `key` against `budget`; `None` when that budget
    /// is not limited.
    pub fn check(&self, budget: Budget, key: &Key) -> Option<Decision> {
        let limiter = self.limiter(budget)?;
        Some(match limiter.keyed.check_key(key) {
            Ok(state) => {
                let quota = state.quota();
                let limit = quota.burst_size().get();
                let remaining = state.remaining_burst_capacity();
                Decision::Allowed {
                    limit,
                    remaining,
                    reset_secs: whole_seconds(
                        quota.replenish_interval() * limit.saturating_sub(remaining),
                    ),
                }
            }
            Err(refusal) => Decision::Refused {
                limit: refusal.quota().burst_size().get(),
                retry_after_secs: whole_seconds(
                    refusal.wait_time_from(limiter.keyed.clock().now()),
                )
                .max(1),
            },
        })
    }

    /// Counts a credential `address` presented that the broker refused.
    pub fn count_refused_credential(&self, address: IpAddr) {
        let Some(failures) = &self.failures else {
            return;
        };
        let address = network_of(address);
        if let Err(refusal) = failures.keyed.check_key(&Key::Address(address)) {
            let wait = refusal.wait_time_from(failures.keyed.clock().now());
            self.turned_away()
                .insert(address, std::time::Instant::now() + wait);
        }
    }

    /// Seconds `address` must still wait after presenting too many refused
    /// credentials; `None` when it need not.
    pub fn turned_away_for(&self, address: IpAddr) -> Option<u64> {
        let until = *self.turned_away().get(&network_of(address))?;
        let left = until.checked_duration_since(std::time::Instant::now())?;
        Some(whole_seconds(left).max(1))
    }

    fn turned_away(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<IpAddr, std::time::Instant>> {
        self.turned_away.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the keys whose budget is whole again (they would start afresh
    /// anyway), and gives back the memory they held.
    pub fn prune(&self) {
        for limiter in [&self.people, &self.workers, &self.failures]
            .into_iter()
            .flatten()
        {
            limiter.keyed.retain_recent();
            limiter.keyed.shrink_to_fit();
        }
        let now = std::time::Instant::now();
        self.turned_away().retain(|_, until| *until > now);
    }

    /// The keys remembered now, over both budgets.
    pub fn keys(&self) -> usize {
        [&self.people, &self.workers]
            .into_iter()
            .flatten()
            .map(|l| l.keyed.len())
            .sum()
    }

    /// The 429 for a request of `key` refused on `budget`.
    fn refusal(&self, budget: Budget, key: &Key, retry_after_secs: u64) -> ApiError {
        let limit = self.limiter(budget).map_or(RateLimit::Off, |l| l.limit);
        ApiError::TooManyRequests {
            message: format!(
                "too many {} {}: this broker allows {limit} per client ({}); retry in {retry_after_secs} s (Retry-After)",
                budget.name(),
                key.describe(),
                budget.flag(),
            ),
            retry_after_secs,
        }
    }
}

/// Whole seconds, rounded up.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

fn insert_headers(headers: &mut HeaderMap, limit: u32, remaining: u32, reset_secs: u64) {
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(remaining));
    headers.insert(RATELIMIT_RESET, HeaderValue::from(reset_secs));
}

/// The middleware (`actix_web::middleware::from_fn`): counts the request
/// against its budget, answers 429 when that is spent, and marks every
/// limited answer with the `RateLimit-*` headers.
pub async fn limit<B: MessageBody>(
    limiters: Arc<Limiters>,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    if limiters.is_off() {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let Some(budget) = Budget::of(req.method(), req.path()) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let key = Key::of(req.request());
    let address = req.peer_addr().map(|a| a.ip());
    if let Some(retry_after_secs) = address.and_then(|a| limiters.turned_away_for(a)) {
        let response = ApiError::TooManyRequests {
            message: format!(
                "this address presented too many credentials the broker refused (--refused-credential-limit); check the token and retry in {retry_after_secs} s (Retry-After)"
            ),
            retry_after_secs,
        }
        .error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    let presents_credential = matches!(key, Key::Credential(_) | Key::Session(_));
    let count_refusal = |status: actix_web::http::StatusCode| {
        if presents_credential && status == actix_web::http::StatusCode::UNAUTHORIZED {
            if let Some(address) = address {
                limiters.count_refused_credential(address);
            }
        }
    };
    match limiters.check(budget, &key) {
        None => {
            let response = next.call(req).await?;
            count_refusal(response.status());
            Ok(response.map_into_left_body())
        }
        Some(Decision::Allowed {
            limit,
            remaining,
            reset_secs,
        }) => {
            let mut response = next.call(req).await?;
            count_refusal(response.status());
            insert_headers(response.headers_mut(), limit, remaining, reset_secs);
            Ok(response.map_into_left_body())
        }
        Some(Decision::Refused {
            limit,
            retry_after_secs,
        }) => {
            tracing::debug!(
                ?budget,
                client = key.describe(),
                retry_after_secs,
                "rate limited"
            );
            let mut response = limiters
                .refusal(budget, &key, retry_after_secs)
                .error_response();
            insert_headers(response.headers_mut(), limit, 0, retry_after_secs);
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

/// Prunes `limiters` every [`PRUNE_INTERVAL`] until they are dropped (the
/// server that used them stopped) or the task is aborted.
pub fn spawn_pruner(limiters: Weak<Limiters>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PRUNE_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(limiters) = limiters.upgrade() else {
                return;
            };
            limiters.prune();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn limits_parse_from_the_documented_forms_and_print_back_the_same() {
        let cases = [
            ("300/s:600", RateLimit::new(300, Per::Second, 600)),
            ("20/s", RateLimit::new(20, Per::Second, 20)),
            ("2/m", RateLimit::new(2, Per::Minute, 2)),
            (" 30/m:5 ", RateLimit::new(30, Per::Minute, 5)),
            ("off", RateLimit::Off),
            ("OFF", RateLimit::Off),
        ];
        for (text, want) in cases {
            let parsed: RateLimit = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(parsed, want, "{text:?}");
            assert_eq!(
                parsed.to_string().parse::<RateLimit>(),
                Ok(want),
                "{text:?}"
            );
        }
        assert_eq!(RateLimit::new(20, Per::Second, 20).to_string(), "20/s");
        assert_eq!(RateLimit::new(2, Per::Minute, 5).to_string(), "2/m:5");
        for default in [RateLimits::DEFAULT_PEOPLE, RateLimits::DEFAULT_WORKERS] {
            assert_eq!(default.to_string().parse::<RateLimit>(), Ok(default));
        }
    }

    #[test]
    fn a_malformed_limit_is_refused_with_the_accepted_forms() {
        for text in [
            "",
            "20",
            "20/h",
            "0/s",
            "-1/s",
            "x/s",
            "20/s:0",
            "20/s:",
            "20/s:x",
            "1.5/s",
            "20 per s",
            "99999999999/s",
        ] {
            let error = text.parse::<RateLimit>().unwrap_err();
            assert!(
                error.contains("N/s or N/m") && error.contains(":BURST") && error.contains("off"),
                "{text:?}: {error}"
            );
            assert!(error.contains(&format!("{text:?}")), "{text:?}: {error}");
        }
    }

    #[test]
    fn worker_routes_draw_on_the_workers_budget_and_probes_on_none() {
        let id = "0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d";
        let post = Method::POST;
        let get = Method::GET;
        let cases = [
            (&post, "/workers".to_string(), Some(Budget::Workers)),
            (
                &post,
                format!("/workers/{id}/heartbeat"),
                Some(Budget::Workers),
            ),
            (
                &post,
                format!("/workers/{id}/request-task"),
                Some(Budget::Workers),
            ),
            (
                &post,
                format!("/tasks/{id}/progress"),
                Some(Budget::Workers),
            ),
            (
                &post,
                format!("/tasks/{id}/complete"),
                Some(Budget::Workers),
            ),
            (&post, format!("/tasks/{id}/fail"), Some(Budget::Workers)),
            (&post, format!("/tasks/{id}/release"), Some(Budget::Workers)),
            (
                &get,
                format!("/files/{}", "a".repeat(64)),
                Some(Budget::Workers),
            ),
            (
                &Method::HEAD,
                format!("/files/{}", "a".repeat(64)),
                Some(Budget::Workers),
            ),
            (
                &Method::PUT,
                format!("/files/{}", "a".repeat(64)),
                Some(Budget::People),
            ),
            (
                &Method::PUT,
                format!("/tasks/{id}/frames/3"),
                Some(Budget::Workers),
            ),
            (&get, format!("/tasks/{id}/frames/3"), Some(Budget::People)),
            (
                &get,
                format!("/renders/{id}/frames.zip"),
                Some(Budget::People),
            ),
            (&get, "/workers".to_string(), Some(Budget::People)),
            (&get, format!("/workers/{id}"), Some(Budget::People)),
            (&get, format!("/tasks/{id}"), Some(Budget::People)),
            (&get, format!("/tasks/{id}/log"), Some(Budget::People)),
            (
                &get,
                format!("/workers/{id}/heartbeat"),
                Some(Budget::People),
            ),
            (
                &Method::PUT,
                format!("/workers/{id}/status"),
                Some(Budget::People),
            ),
            (&post, "/renders".to_string(), Some(Budget::People)),
            (
                &post,
                format!("/renders/{id}/complete"),
                Some(Budget::People),
            ),
            (&post, "/scheduler/run".to_string(), Some(Budget::People)),
            (&post, "/webhooks".to_string(), Some(Budget::People)),
            (
                &post,
                format!("/webhooks/{id}/enable"),
                Some(Budget::People),
            ),
            (&post, "/workers/".to_string(), Some(Budget::People)),
            (
                &post,
                "/workers//heartbeat".to_string(),
                Some(Budget::People),
            ),
            (
                &post,
                format!("/tasks/{id}/complete/x"),
                Some(Budget::People),
            ),
            (&get, "/api-docs/".to_string(), Some(Budget::People)),
            (&get, "/health".to_string(), None),
            (&get, "/ready".to_string(), None),
            (&post, "/health".to_string(), None),
        ];
        for (method, path, want) in cases {
            assert_eq!(Budget::of(method, &path), want, "{method} {path}");
        }
    }

    #[test]
    fn requests_are_keyed_by_the_credential_they_present_then_by_address() {
        let peer = "192.0.2.7:40000".parse().unwrap();
        let key = |req: TestRequest| Key::of(&req.peer_addr(peer).to_http_request());
        let bearer = key(TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer rf_secret"))
            .insert_header((header::COOKIE, "rf_session=abc")));
        assert!(matches!(bearer, Key::Credential(_)), "{bearer:?}");
        assert_eq!(
            bearer,
            key(TestRequest::default().insert_header((header::AUTHORIZATION, "Bearer rf_secret")))
        );
        assert_ne!(
            bearer,
            key(TestRequest::default().insert_header((header::AUTHORIZATION, "Bearer rf_other")))
        );
        let session = key(TestRequest::default()
            .insert_header((header::COOKIE, "theme=dark; rf_session=abc; lang=en")));
        assert!(matches!(session, Key::Session(_)), "{session:?}");
        assert_ne!(
            session,
            key(TestRequest::default().insert_header((header::COOKIE, "rf_session=abd")))
        );
        assert_eq!(
            key(TestRequest::default().insert_header((header::COOKIE, "theme=dark"))),
            Key::Address("192.0.2.7".parse().unwrap())
        );
        // The key is a hash: the credential is nowhere in it.
        assert!(!format!("{bearer:?}{session:?}").contains("rf_secret"));
        assert!(!format!("{bearer:?}").contains("abc"));
    }

    #[test]
    fn an_ipv6_client_is_keyed_by_its_slash_64_and_a_mapped_ipv4_one_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            network_of(ip("2001:db8:1:2:ffff::9")),
            network_of(ip("2001:db8:1:2::1"))
        );
        assert_ne!(network_of(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(network_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network_of(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    fn two_a_minute() -> RateLimits {
        RateLimits {
            people: RateLimit::new(2, Per::Minute, 2),
            workers: RateLimit::Off,
            refused_credentials: RateLimit::Off,
        }
    }

    #[test]
    fn the_burst_is_counted_down_and_the_wait_is_the_limiters_rounded_up() {
        let clock = FakeRelativeClock::default();
        let limiters = Limiters::with_clock(two_a_minute(), clock.clone());
        let key = Key::Unknown;
        assert_eq!(
            limiters.check(Budget::People, &key),
            Some(Decision::Allowed {
                limit: 2,
                remaining: 1,
                reset_secs: 30
            })
        );
        assert_eq!(
            limiters.check(Budget::People, &key),
            Some(Decision::Allowed {
                limit: 2,
                remaining: 0,
                reset_secs: 60
            })
        );
        assert_eq!(
            limiters.check(Budget::People, &key),
            Some(Decision::Refused {
                limit: 2,
                retry_after_secs: 30
            })
        );
        clock.advance(Duration::from_millis(29_500));
        assert_eq!(
            limiters.check(Budget::People, &key),
            Some(Decision::Refused {
                limit: 2,
                retry_after_secs: 1
            }),
            "half a second left is a whole one"
        );
        clock.advance(Duration::from_millis(500));
        assert!(matches!(
            limiters.check(Budget::People, &key),
            Some(Decision::Allowed { remaining: 0, .. })
        ));
        assert_eq!(
            limiters.check(Budget::Workers, &key),
            None,
            "an unlimited budget is not counted"
        );
    }

    #[test]
    fn keys_are_forgotten_once_their_budget_is_whole_again() {
        let clock = FakeRelativeClock::default();
        let limiters = Limiters::with_clock(two_a_minute(), clock.clone());
        for i in 0..1000u32 {
            limiters.check(Budget::People, &Key::Credential(digest(&i.to_be_bytes())));
        }
        limiters.check(Budget::People, &Key::Unknown);
        limiters.check(Budget::People, &Key::Unknown);
        assert_eq!(limiters.keys(), 1001);
        // governor forgets a key one replenish interval (30 s) after its
        // budget is whole again: here 30 s after one request, 60 s after two.
        clock.advance(Duration::from_secs(61));
        limiters.prune();
        assert_eq!(
            limiters.keys(),
            1,
            "only the key that spent its whole burst is kept"
        );
        clock.advance(Duration::from_secs(30));
        limiters.prune();
        assert_eq!(limiters.keys(), 0);
    }

    #[test]
    fn the_refusal_names_the_budget_and_the_wait_but_not_the_credential() {
        let limiters = Limiters::new(two_a_minute());
        let message = limiters
            .refusal(Budget::People, &Key::Credential(digest(b"Bearer rf_x")), 30)
            .to_string();
        assert!(
            message.contains("--rate-limit") && message.contains("2/m"),
            "{message}"
        );
        assert!(message.contains("retry in 30 s"), "{message}");
        assert!(message.contains("Authorization"), "{message}");
        let message = limiters
            .refusal(Budget::Workers, &Key::Unknown, 1)
            .to_string();
        assert!(message.contains("--worker-rate-limit"), "{message}");
    }
}
