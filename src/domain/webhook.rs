//! Webhooks: which farm events a receiver may subscribe to, which URLs it
//! may give, how each delivery is signed, retried and given up, and when a
//! receiver that keeps failing is disabled. Both stores and the delivery
//! loop (`crate::webhooks`) take these values; none restates them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use renderfarm_wire::{EventKind, FarmEvent, RenderStatus, TaskStatus, WorkerStatus};
use sha2::Sha256;
use uuid::Uuid;

use super::ValidationError;

/// What a webhook may subscribe to, by its name on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WebhookEvent {
    RenderCompleted,
    RenderFailed,
    RenderCanceled,
    /// A task's run failed (it is retried while retries remain).
    TaskFailed,
    /// The scheduler marked a worker offline: no sign of life in time.
    WorkerLost,
}

impl WebhookEvent {
    /// Every event, in the order they are documented.
    pub const ALL: [WebhookEvent; 5] = [
        WebhookEvent::RenderCompleted,
        WebhookEvent::RenderFailed,
        WebhookEvent::RenderCanceled,
        WebhookEvent::TaskFailed,
        WebhookEvent::WorkerLost,
    ];

    /// Its name on the wire (`type` of a delivery) and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::RenderCompleted => "render.completed",
            WebhookEvent::RenderFailed => "render.failed",
            WebhookEvent::RenderCanceled => "render.canceled",
            WebhookEvent::TaskFailed => "task.failed",
            WebhookEvent::WorkerLost => "worker.lost",
        }
    }

    /// The event named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// Every name, comma-separated, for messages.
    pub fn names() -> String {
        Self::ALL.map(|e| e.as_str()).join(", ")
    }
}

/// The webhook event an entry of the farm's event log is, if any. The event
/// log records each status change once (in the write of the change), so a
/// delivery derived from it is neither lost nor doubled.
pub fn webhook_event_of(event: &FarmEvent) -> Option<WebhookEvent> {
    let status = event.status.as_deref()?;
    match event.kind {
        EventKind::Render => match RenderStatus::parse(status)? {
            RenderStatus::Completed => Some(WebhookEvent::RenderCompleted),
            RenderStatus::Failed => Some(WebhookEvent::RenderFailed),
            RenderStatus::Canceled => Some(WebhookEvent::RenderCanceled),
            _ => None,
        },
        EventKind::Task => {
            (TaskStatus::parse(status)? == TaskStatus::Failed).then_some(WebhookEvent::TaskFailed)
        }
        // Only the scheduler marks a worker offline (`requeue_lost_workers`).
        EventKind::Worker => {
            (status == WorkerStatus::Offline.as_str()).then_some(WebhookEvent::WorkerLost)
        }
        _ => None,
    }
}

/// The longest URL accepted.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;
/// The longest description accepted.
pub const MAX_WEBHOOK_DESCRIPTION_LEN: usize = 500;

/// A webhook as registered, checked: an http(s) URL with a host, and known
/// events (sorted, once each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidWebhookSpec {
    pub url: url::Url,
    pub events: Vec<WebhookEvent>,
    pub description: Option<String>,
}

/// Checks what `POST /webhooks` gives. Where the URL's host points is
/// checked apart ([`forbidden_address`]), since that needs DNS.
pub fn validate_webhook_spec(
    url: &str,
    events: &[String],
    description: Option<&str>,
) -> Result<ValidWebhookSpec, ValidationError> {
    let url = validate_webhook_url(url)?;
    if events.is_empty() {
        return Err(ValidationError::new(
            "events",
            format!("name at least one event: {}", WebhookEvent::names()),
        ));
    }
    let unknown: Vec<&str> = events
        .iter()
        .filter(|e| WebhookEvent::parse(e).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(ValidationError::new(
            "events",
            format!(
                "{} {} not an event a webhook can receive; use any of {}",
                unknown
                    .iter()
                    .map(|u| format!("{u:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if unknown.len() == 1 { "is" } else { "are" },
                WebhookEvent::names()
            ),
        ));
    }
    let mut parsed: Vec<WebhookEvent> = events
        .iter()
        .filter_map(|e| WebhookEvent::parse(e))
        .collect();
    parsed.sort();
    parsed.dedup();
    let description = match description.map(str::trim) {
        None | Some("") => None,
        Some(d) if d.chars().count() > MAX_WEBHOOK_DESCRIPTION_LEN => {
            return Err(ValidationError::new(
                "description",
                format!("use at most {MAX_WEBHOOK_DESCRIPTION_LEN} characters"),
            ))
        }
        Some(d) if d.chars().any(char::is_control) => {
            return Err(ValidationError::new(
                "description",
                "must not contain control characters (newlines, tabs, ...)",
            ))
        }
        Some(d) => Some(d.to_string()),
    };
    Ok(ValidWebhookSpec {
        url,
        events: parsed,
        description,
    })
}

fn validate_webhook_url(raw: &str) -> Result<url::Url, ValidationError> {
    let invalid = |why: String| ValidationError::new("url", why);
    if raw.len() > MAX_WEBHOOK_URL_LEN {
        return Err(invalid(format!(
            "is {} bytes long; use at most {MAX_WEBHOOK_URL_LEN}",
            raw.len()
        )));
    }
    let url = url::Url::parse(raw.trim()).map_err(|e| {
        invalid(format!(
            "{raw:?} is not a URL ({e}); give an absolute one such as https://hooks.example.com/renderfarm"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme {:?} is not one webhooks are sent over; use https:// (or http://)",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(invalid(format!("{raw:?} names no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "must not carry a user name or password (it would be shown in listings); the receiver checks the signature instead".into(),
        ));
    }
    if url.fragment().is_some() {
        return Err(invalid(
            "must not have a #fragment (it is never sent); leave it out".into(),
        ));
    }
    Ok(url)
}

/// Why a webhook may not be sent to `ip`, if it may not: addresses that
/// reach the broker's own machine or network rather than the internet.
/// (The broker's own public addresses are checked by the caller, which can
/// see its interfaces.)
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private (RFC 1918)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT, RFC 6598)")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("broadcast or multicast")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (unique local, fc00::/7)")
    } else if ip.is_multicast() {
        Some("broadcast or multicast")
    } else {
        None
    }
}

/// How long one delivery attempt may take, connection included.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The waits between a delivery's attempts: after the first failed attempt
/// the first wait, and so on; when they are used up the delivery is given
/// up. Roughly exponential; each wait gets up to [`RETRY_JITTER`] more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

/// The share of a wait added at random, so that receivers that came back
/// are not hit by every waiting delivery at once.
pub const RETRY_JITTER: f64 = 0.2;

impl Default for RetrySchedule {
    /// Attempts at once, then after 10 s, 30 s, 1 m, 5 m, 15 m and 1 h:
    /// about 1 h 22 m in all.
    fn default() -> Self {
        Self(
            [10, 30, 60, 300, 900, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
    }
}

impl RetrySchedule {
    /// The waits as given, e.g. "1s,2s" (tests shorten the schedule so).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let waits = raw
            .split(',')
            .map(|w| {
                humantime::parse_duration(w.trim())
                    .map_err(|e| format!("{w:?} is not a duration such as 10s or 5m: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if waits.is_empty() || waits.iter().any(Duration::is_zero) {
            return Err("give one or more waits above zero, e.g. 10s,30s,1m".into());
        }
        Ok(Self(waits))
    }

    /// The waits.
    pub fn waits(&self) -> &[Duration] {
        &self.0
    }

    /// How many attempts a delivery gets in all.
    pub fn max_attempts(&self) -> i64 {
        self.0.len() as i64 + 1
    }

    /// The time from a delivery's first attempt to its last (without jitter).
    pub fn window(&self) -> Duration {
        self.0.iter().sum()
    }

    /// The wait after the `attempts`-th failed attempt, or `None` when the
    /// delivery is given up. `jitter` is a random number in `[0, 1)`.
    pub fn wait_after(&self, attempts: i64, jitter: f64) -> Option<Duration> {
        let index = usize::try_from(attempts.checked_sub(1)?).ok()?;
        let wait = *self.0.get(index)?;
        Some(wait.mul_f64(1.0 + RETRY_JITTER * jitter.clamp(0.0, 1.0)))
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx answered it.
    Delivered,
    /// Given up: its attempts were used up.
    Failed,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 3] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// A webhook as stored. The secret is kept, because signing needs it; it is
/// shown only in the answer that registered the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWebhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    pub description: Option<String>,
    pub secret: String,
    pub created_at: DateTime<Utc>,
    /// Set while disabled; deliveries are neither queued nor sent then.
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    /// The first failed attempt since the last success, if it has failed since.
    pub failing_since: Option<DateTime<Utc>>,
    /// Attempts failed in a row.
    pub consecutive_failures: i64,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// What the last attempt got ("HTTP 204", "timed out after 10s", ...).
    pub last_outcome: Option<String>,
    pub last_success_at: Option<DateTime<Utc>>,
}

impl StoredWebhook {
    /// A new, active webhook.
    pub fn new(spec: ValidWebhookSpec, id: Uuid, secret: String, now: DateTime<Utc>) -> Self {
        Self {
            id,
            url: spec.url.to_string(),
            events: spec.events,
            description: spec.description,
            secret,
            created_at: now,
            disabled_at: None,
            disabled_reason: None,
            failing_since: None,
            consecutive_failures: 0,
            last_attempt_at: None,
            last_outcome: None,
            last_success_at: None,
        }
    }

    /// Whether deliveries are queued and sent for it.
    pub fn is_active(&self) -> bool {
        self.disabled_at.is_none()
    }

    /// Whether it wants `event`: active, subscribed, and registered by then
    /// (a webhook hears nothing that happened before it existed).
    pub fn wants(&self, event: WebhookEvent, at: DateTime<Utc>) -> bool {
        self.is_active() && self.events.contains(&event) && at >= self.created_at
    }
}

/// The secret a webhook signs with, from 32 random bytes.
pub fn webhook_secret_from(random: [u8; 32]) -> String {
    format!("whsec_{}", hex::encode(random))
}

/// The headers of a delivery.
pub const WEBHOOK_ID_HEADER: &str = "Renderfarm-Webhook-Id";
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "Renderfarm-Webhook-Timestamp";
pub const WEBHOOK_SIGNATURE_HEADER: &str = "Renderfarm-Signature";

/// The `Renderfarm-Signature` value: `v1=` and the hex HMAC-SHA256, keyed
/// with the webhook's secret (its text, as shown), of `{timestamp}.{body}`
/// where `timestamp` is the `Renderfarm-Webhook-Timestamp` header (Unix
/// seconds) and `body` the exact bytes sent.
pub fn webhook_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx.
    Delivered(String),
    /// Anything else: another status, a timeout, a refused connection or
    /// address; says what.
    Failed(String),
}

/// What the store writes after an attempt: the delivery's new state and
/// the webhook's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub delivery_id: Uuid,
    pub webhook_id: Uuid,
    /// The delivery's attempts before this one: the write applies only if
    /// they are still so (another sender did not record meanwhile).
    pub attempts_before: i64,
    pub at: DateTime<Utc>,
    pub state: DeliveryState,
    /// When to try again (`Pending` only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub webhook: WebhookHealth,
}

/// The webhook's health after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookHealth {
    /// Answered 2xx: failures forgotten.
    Succeeded,
    /// Failed, failing since then.
    Failing { since: DateTime<Utc> },
    /// Failed for so long that it is disabled, for the reason given.
    Disabled {
        since: DateTime<Utc>,
        reason: String,
    },
}

/// Decides what an attempt at `due` leads to; `jitter` in `[0, 1)`.
///
/// Disable policy: a webhook is disabled when a delivery is given up (all
/// its attempts failed) while the receiver has answered nothing but
/// failures for at least the schedule's whole window; one bad delivery
/// among good ones (a receiver that refuses one payload) does not disable
/// it.
pub fn plan_attempt(
    due: &DueDelivery,
    outcome: AttemptOutcome,
    schedule: &RetrySchedule,
    jitter: f64,
    now: DateTime<Utc>,
) -> AttemptRecord {
    let (attempts_before, failing_since) = (due.attempts, due.webhook.failing_since);
    let webhook_id = due.webhook.id;
    let attempts = attempts_before + 1;
    let (state, next_attempt_at, outcome, webhook) = match outcome {
        AttemptOutcome::Delivered(what) => (
            DeliveryState::Delivered,
            None,
            what,
            WebhookHealth::Succeeded,
        ),
        AttemptOutcome::Failed(what) => {
            let since = failing_since.unwrap_or(now).min(now);
            match schedule.wait_after(attempts, jitter) {
                Some(wait) => (
                    DeliveryState::Pending,
                    Some(now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX)),
                    what,
                    WebhookHealth::Failing { since },
                ),
                None => {
                    let window = TimeDelta::from_std(schedule.window()).unwrap_or(TimeDelta::MAX);
                    let health = if now - since >= window {
                        WebhookHealth::Disabled {
                            since,
                            reason: format!(
                                "every delivery attempt failed from {} to {} ({attempts} attempts of the last delivery; the last: {what}); fix the receiver, then enable the webhook again (POST /webhooks/{webhook_id}/enable)",
                                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            ),
                        }
                    } else {
                        WebhookHealth::Failing { since }
                    };
                    (DeliveryState::Failed, None, what, health)
                }
            }
        }
    };
    AttemptRecord {
        delivery_id: due.id,
        webhook_id,
        attempts_before,
        at: now,
        state,
        next_attempt_at,
        outcome,
        webhook,
    }
}

/// A delivery to queue: one event for one webhook. Its `id` is the
/// idempotency id the receiver sees on every attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event: WebhookEvent,
    /// The event log entry it comes from (one delivery per webhook and entry).
    pub source: FarmEvent,
}

/// The deliveries the event log entries `events` make for `webhooks`.
/// `new_id` makes each delivery's id.
pub fn plan_deliveries(
    events: &[FarmEvent],
    webhooks: &[StoredWebhook],
    mut new_id: impl FnMut() -> Uuid,
) -> Vec<NewDelivery> {
    let mut out = Vec::new();
    for source in events {
        let Some(event) = webhook_event_of(source) else {
            continue;
        };
        for hook in webhooks.iter().filter(|h| h.wants(event, source.at)) {
            out.push(NewDelivery {
                id: new_id(),
                webhook_id: hook.id,
                event,
                source: source.clone(),
            });
        }
    }
    out
}

/// A delivery due now, with what sending it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDelivery {
    pub id: Uuid,
    pub event: WebhookEvent,
    pub source: FarmEvent,
    pub attempts: i64,
    pub webhook: StoredWebhook,
}

/// A webhook's deliveries by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn only_final_render_statuses_failed_tasks_and_lost_workers_are_webhook_events() {
        let cases = [
            (
                EventKind::Render,
                "completed",
                Some(WebhookEvent::RenderCompleted),
            ),
            (
                EventKind::Render,
                "failed",
                Some(WebhookEvent::RenderFailed),
            ),
            (
                EventKind::Render,
                "canceled",
                Some(WebhookEvent::RenderCanceled),
            ),
            (EventKind::Render, "rendering", None),
            (EventKind::Task, "failed", Some(WebhookEvent::TaskFailed)),
            (EventKind::Task, "completed", None),
            (EventKind::Worker, "offline", Some(WebhookEvent::WorkerLost)),
            (EventKind::Worker, "idle", None),
            (EventKind::Progress, "failed", None),
        ];
        for (kind, status, want) in cases {
            let mut e = FarmEvent::new(1, at(0), kind);
            e.status = Some(status.into());
            assert_eq!(webhook_event_of(&e), want, "{kind:?} {status}");
        }
        assert_eq!(
            webhook_event_of(&FarmEvent::new(1, at(0), EventKind::Render)),
            None
        );
    }

    #[test]
    fn event_names_round_trip_and_unknown_ones_are_listed() {
        for e in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(e.as_str()), Some(e));
        }
        let err = validate_webhook_spec(
            "https://hooks.example.com/x",
            &[
                "render.completed".into(),
                "render.done".into(),
                "nope".into(),
            ],
            None,
        )
        .unwrap_err();
        assert!(
            err.message.contains("\"render.done\", \"nope\" are not"),
            "{err}"
        );
        assert!(err.message.contains("worker.lost"), "{err}");
        let err = validate_webhook_spec("https://hooks.example.com/x", &[], None).unwrap_err();
        assert_eq!(err.field, "events");
    }

    #[test]
    fn only_absolute_http_urls_with_a_host_are_accepted() {
        let events = ["task.failed".to_string(), "task.failed".to_string()];
        let ok = validate_webhook_spec("https://hooks.example.com/rf?x=1", &events, Some(" hi "))
            .unwrap();
        assert_eq!(ok.events, vec![WebhookEvent::TaskFailed]);
        assert_eq!(ok.description.as_deref(), Some("hi"));
        for (bad, says) in [
            ("ftp://example.com/", "scheme"),
            ("file:///etc/passwd", "scheme"),
            ("hooks.example.com/x", "not a URL"),
            ("https://user:pw@example.com/", "password"),
            ("https://example.com/#x", "fragment"),
        ] {
            let err = validate_webhook_spec(bad, &events, None).unwrap_err();
            assert_eq!(err.field, "url");
            assert!(err.message.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn addresses_of_the_local_network_are_forbidden() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("fd00::1", "private"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:127.0.0.1", "loopback"),
            ("100.64.0.1", "shared"),
        ] {
            let got = forbidden_address(ip.parse().unwrap());
            assert!(got.is_some_and(|g| g.contains(why)), "{ip}: {got:?}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "172.32.0.1",
            "8.8.8.8",
        ] {
            assert_eq!(forbidden_address(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn the_signature_is_an_hmac_of_the_timestamp_and_body() {
        // From Python: hmac.new(b"whsec_k", b"1700000000.{}", hashlib.sha256).hexdigest()
        let sig = webhook_signature("whsec_k", 1_700_000_000, b"{}");
        assert!(sig.starts_with("v1="));
        assert_eq!(sig.len(), 3 + 64);
        assert_ne!(sig, webhook_signature("whsec_k", 1_700_000_001, b"{}"));
        assert_ne!(sig, webhook_signature("whsec_j", 1_700_000_000, b"{}"));
    }

    #[test]
    fn retries_follow_the_schedule_then_give_up() {
        let s = RetrySchedule::default();
        assert_eq!(s.max_attempts(), 7);
        assert_eq!(s.wait_after(1, 0.0), Some(Duration::from_secs(10)));
        assert_eq!(s.wait_after(6, 0.0), Some(Duration::from_secs(3600)));
        assert_eq!(s.wait_after(7, 0.0), None);
        assert_eq!(s.wait_after(1, 0.99).unwrap().as_secs(), 11);
        assert_eq!(
            s.window(),
            Duration::from_secs(10 + 30 + 60 + 300 + 900 + 3600)
        );
        assert_eq!(RetrySchedule::parse("1s, 2s").unwrap().max_attempts(), 3);
        assert!(RetrySchedule::parse("0s").is_err());
        assert!(RetrySchedule::parse("soon").is_err());
    }

    #[test]
    fn a_receiver_failing_for_the_whole_window_is_disabled() {
        let s = RetrySchedule::parse("10s,20s").unwrap();
        let due = |attempts: i64, failing_since: Option<DateTime<Utc>>| {
            let mut webhook = StoredWebhook::new(
                validate_webhook_spec("https://hooks.example.com/", &["task.failed".into()], None)
                    .unwrap(),
                Uuid::now_v7(),
                "s".into(),
                at(0),
            );
            webhook.failing_since = failing_since;
            DueDelivery {
                id: Uuid::now_v7(),
                event: WebhookEvent::TaskFailed,
                source: FarmEvent::new(1, at(0), EventKind::Task),
                attempts,
                webhook,
            }
        };
        let failed = || AttemptOutcome::Failed("HTTP 500".into());
        let first = plan_attempt(&due(0, None), failed(), &s, 0.0, at(0));
        assert_eq!(first.state, DeliveryState::Pending);
        assert_eq!(first.next_attempt_at, Some(at(10)));
        assert_eq!(first.webhook, WebhookHealth::Failing { since: at(0) });
        let last = plan_attempt(&due(2, Some(at(0))), failed(), &s, 0.0, at(30));
        assert_eq!(last.state, DeliveryState::Failed);
        assert!(
            matches!(last.webhook, WebhookHealth::Disabled { since, ref reason }
            if since == at(0) && reason.contains("HTTP 500") && reason.contains("/enable"))
        );
        // Another delivery succeeded meanwhile: given up, not disabled.
        let last = plan_attempt(&due(2, Some(at(25))), failed(), &s, 0.0, at(30));
        assert_eq!(last.state, DeliveryState::Failed);
        assert_eq!(last.webhook, WebhookHealth::Failing { since: at(25) });
        let ok = plan_attempt(
            &due(1, Some(at(0))),
            AttemptOutcome::Delivered("HTTP 204".into()),
            &s,
            0.0,
            at(30),
        );
        assert_eq!(ok.state, DeliveryState::Delivered);
        assert_eq!(ok.webhook, WebhookHealth::Succeeded);
    }

    #[test]
    fn deliveries_go_to_active_subscribers_registered_before_the_event() {
        let spec = |events: &[&str]| {
            validate_webhook_spec(
                "https://hooks.example.com/",
                &events.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                None,
            )
            .unwrap()
        };
        let a = StoredWebhook::new(
            spec(&["render.completed"]),
            Uuid::now_v7(),
            "s".into(),
            at(0),
        );
        let b = StoredWebhook::new(spec(&["task.failed"]), Uuid::now_v7(), "s".into(), at(0));
        let late = StoredWebhook::new(
            spec(&["render.completed"]),
            Uuid::now_v7(),
            "s".into(),
            at(50),
        );
        let mut off = a.clone();
        off.id = Uuid::now_v7();
        off.disabled_at = Some(at(1));
        let mut done = FarmEvent::new(7, at(10), EventKind::Render);
        done.status = Some("completed".into());
        let mut progress = FarmEvent::new(8, at(10), EventKind::Progress);
        progress.status = Some("completed".into());
        let planned = plan_deliveries(&[done, progress], &[a.clone(), b, late, off], Uuid::now_v7);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].webhook_id, a.id);
        assert_eq!(planned[0].event, WebhookEvent::RenderCompleted);
        assert_eq!(planned[0].source.id, 7);
    }
}
