//! Sending webhooks. Every broker runs [`Deliverer`]; the one holding the
//! `webhooks` lease (like the scheduler's leader) queues deliveries from the
//! event log into the store's outbox and sends the ones due. The outbox is
//! in the store, so a broker killed mid-delivery leaves its deliveries
//! pending and whoever holds the lease next sends them again: a receiver
//! may get a delivery twice (it dedups by the idempotency id), never none.
//!
//! Before every attempt the URL's host is resolved and each address checked
//! ([`check_destination`]); the request then goes to the checked address
//! only (no second lookup, no proxy, no redirects), so a name that resolves
//! elsewhere later cannot point a delivery at the broker's own network.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use futures::StreamExt;
use renderfarm_wire::{EventKind, FarmEvent, WebhookPayload};
use tracing::Instrument;
use uuid::Uuid;

use crate::clock::Clock;
use crate::domain::{
    contiguous_prefix, forbidden_address, plan_attempt, plan_deliveries, webhook_signature,
    AttemptOutcome, DeliveryState, DueDelivery, RetrySchedule, DELIVERY_TIMEOUT, WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER,
};
use crate::store::{Store, StoreError, StoreResult};

/// The lease of the broker that queues and sends deliveries.
pub const WEBHOOKS_LEASE: &str = "webhooks";

/// How long the sender holds the lease without renewing it: more than one
/// round of sends (each at most [`DELIVERY_TIMEOUT`]), so that it keeps it
/// while it works; a sender that died is replaced within this.
const LEASE_TTL: TimeDelta = TimeDelta::seconds(15);

/// How often each broker looks for work.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Deliveries sent at once (and per round).
const SEND_BATCH: usize = 16;

/// Event-log entries read per queuing.
const QUEUE_BATCH: usize = 500;

/// How webhooks are sent.
#[derive(Debug, Clone, Default)]
pub struct WebhookSettings {
    /// `serve --webhooks-allow-private`: send to loopback, private and
    /// link-local addresses too (tests, and a farm whose receivers are on
    /// its own trusted network).
    pub allow_private: bool,
    /// The waits between attempts (`serve --webhooks-retry-schedule`, a
    /// hidden flag for tests).
    pub schedule: RetrySchedule,
}

/// Resolves `url`'s host and checks every address it gives; returns the
/// address to connect to. An unresolvable name is `Ok(None)` when
/// `unresolved_ok` (registration: DNS may answer later, and the check runs
/// again at every delivery). The error says what is refused and why.
pub async fn check_destination(
    url: &url::Url,
    allow_private: bool,
    unresolved_ok: bool,
) -> Result<Option<SocketAddr>, String> {
    let host = url.host_str().ok_or("the URL names no host")?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        _ => match tokio::time::timeout(DELIVERY_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
        {
            Ok(Ok(found)) => found.collect(),
            Ok(Err(e)) if unresolved_ok => {
                tracing::debug!(host, error = %e, "webhook host does not resolve (yet)");
                return Ok(None);
            }
            Ok(Err(e)) => return Err(format!("the host {host} does not resolve: {e}")),
            Err(_) if unresolved_ok => return Ok(None),
            Err(_) => return Err(format!("resolving {host} took over {DELIVERY_TIMEOUT:?}")),
        },
    };
    if allow_private {
        return Ok(addresses.first().copied());
    }
    // Every address, not only the first: a name that resolves to a public
    // and a private address could be connected to either.
    for address in &addresses {
        let ip = address.ip();
        let why =
            forbidden_address(ip).or_else(|| is_own_address(ip).then_some("this broker's own"));
        if let Some(why) = why {
            return Err(format!(
                "the host {host} resolves to {ip}, a {why} address; webhooks are sent only to public addresses, so that they cannot reach the broker's own network (a broker on a trusted network may allow it: serve --webhooks-allow-private)"
            ));
        }
    }
    Ok(addresses.first().copied())
}

/// Whether `ip` is an address of this machine: only then can a socket be
/// bound to it.
fn is_own_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Queues and sends webhook deliveries while it holds the `webhooks` lease.
pub struct Deliverer {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: WebhookSettings,
    instance: String,
    /// When the queuing first saw a gap in the event log it waits on.
    gap_since: Mutex<Option<Instant>>,
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: WebhookSettings,
    ) -> Arc<Self> {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        Arc::new(Self {
            store,
            clock,
            settings,
            instance: format!("{host}-{}-{}", std::process::id(), Uuid::new_v4().simple()),
            gap_since: Mutex::new(None),
        })
    }

    /// Runs [`Deliverer::run_once`] every second until the deliverer is
    /// dropped everywhere else.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(POLL_INTERVAL).await;
                let Some(me) = me.upgrade() else { return };
                match me.run_once().await {
                    Ok(_) => failing = false,
                    // Once per outage, not every second.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "webhook deliveries wait: the store failed");
                    }
                    Err(_) => {}
                }
            }
        })
    }

    /// Gives the lease up, so that another broker takes over at once.
    pub async fn stop(&self) {
        let _ = self
            .store
            .release_lease(WEBHOOKS_LEASE, &self.instance)
            .await;
    }

    /// If this broker holds (or takes) the lease: queues deliveries for the
    /// new event-log entries, then sends what is due. Returns how many
    /// attempts it made.
    pub async fn run_once(&self) -> StoreResult<usize> {
        let now = self.clock.now();
        let lease = self
            .store
            .acquire_lease(WEBHOOKS_LEASE, &self.instance, LEASE_TTL, now)
            .await?;
        if lease.holder != self.instance {
            return Ok(0);
        }
        while self.queue().await? {}
        let due = self
            .store
            .due_webhook_deliveries(self.clock.now(), SEND_BATCH)
            .await?;
        let attempts = due.len();
        let results: Vec<StoreResult<()>> = futures::stream::iter(due)
            .map(|d| self.attempt(d))
            .buffer_unordered(SEND_BATCH)
            .collect()
            .await;
        results.into_iter().collect::<StoreResult<Vec<()>>>()?;
        Ok(attempts)
    }

    /// Queues the deliveries of one batch of event-log entries; `true` when
    /// there may be more.
    async fn queue(&self) -> StoreResult<bool> {
        let now = self.clock.now();
        let Some(cursor) = self.store.webhook_cursor().await? else {
            // The first queuing ever. With no webhook yet, nothing kept in
            // the event log is wanted: start after it. With one (registered
            // before this first run), start at the beginning of what is
            // kept; `plan_deliveries` skips what happened before a webhook
            // was registered.
            let start = if self.store.list_webhooks().await?.is_empty() {
                self.store.event_bounds().await?.newest
            } else {
                0
            };
            self.store
                .queue_webhook_deliveries(None, start, Vec::new(), now)
                .await?;
            return Ok(true);
        };
        // With no webhook, no event is wanted: the cursor moves to the end of
        // the log without reading it (a busy farm writes thousands of events
        // a second). The end is read before the webhooks, so that an event
        // after a registration is never skipped: a webhook registered
        // meanwhile is listed, and takes the reading path below.
        let newest = self.store.event_bounds().await?.newest;
        if self.store.list_webhooks().await?.is_empty() {
            if newest > cursor {
                self.store
                    .queue_webhook_deliveries(Some(cursor), newest, Vec::new(), now)
                    .await?;
            }
            return Ok(false);
        }
        let events = self.store.events_after(cursor, None, QUEUE_BATCH).await?;
        if events.is_empty() {
            return Ok(false);
        }
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        let take = {
            let mut gap_since = self.gap_since.lock().unwrap_or_else(|e| e.into_inner());
            let take = contiguous_prefix(cursor, &ids, *gap_since, Instant::now());
            *gap_since = if take < ids.len() {
                Some(gap_since.unwrap_or_else(Instant::now))
            } else {
                None
            };
            take
        };
        if take == 0 {
            return Ok(false);
        }
        if ids[0] > cursor + 1 && take > 0 {
            tracing::warn!(
                after = cursor,
                next = ids[0],
                "webhooks: event-log entries were missed (purged before they were queued, or their ids were never used)"
            );
        }
        let events = &events[..take];
        let webhooks = self.store.list_webhooks().await?;
        let deliveries = plan_deliveries(events, &webhooks, Uuid::now_v7);
        let to = events[take - 1].id;
        let queued = deliveries.len();
        let moved = self
            .store
            .queue_webhook_deliveries(Some(cursor), to, deliveries, now)
            .await?;
        if moved && queued > 0 {
            tracing::debug!(queued, after = to, "webhook deliveries queued");
        }
        Ok(moved && take == QUEUE_BATCH)
    }

    /// One attempt at `due`, recorded.
    async fn attempt(&self, due: DueDelivery) -> StoreResult<()> {
        let span = tracing::info_span!(
            "webhook.deliver",
            webhook_id = %due.webhook.id,
            delivery_id = %due.id,
            event = due.event.as_str(),
            attempt = due.attempts + 1,
        );
        async move {
            let body = self.payload(&due).await?;
            let outcome = self.send(&due, &body).await;
            let record = plan_attempt(
                &due,
                outcome,
                &self.settings.schedule,
                jitter(),
                self.clock.now(),
            );
            match (&record.state, &record.outcome) {
                (DeliveryState::Delivered, what) => tracing::info!(outcome = %what, "webhook delivered"),
                (DeliveryState::Pending, what) => tracing::info!(outcome = %what, next_attempt_at = ?record.next_attempt_at, "webhook delivery failed; retrying later"),
                (DeliveryState::Failed, what) => tracing::warn!(outcome = %what, "webhook delivery given up"),
            }
            if let crate::domain::WebhookHealth::Disabled { reason, .. } = &record.webhook {
                tracing::warn!(reason = %reason, "webhook disabled");
            }
            crate::metrics::replica().webhook_attempt(match record.state {
                DeliveryState::Delivered => "delivered",
                DeliveryState::Pending => "retrying",
                DeliveryState::Failed => "given_up",
            });
            self.store.record_webhook_attempt(record).await?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// The JSON body of `due`: the event as recorded, and the render, task
    /// or worker as it is now (left out once deleted).
    async fn payload(&self, due: &DueDelivery) -> StoreResult<Vec<u8>> {
        let source = &due.source;
        let mut data = serde_json::Map::new();
        for (key, id) in [
            ("render_id", source.render_id),
            ("task_id", source.task_id),
            ("worker_id", source.worker_id),
        ] {
            if let Some(id) = id {
                data.insert(key.into(), id.to_string().into());
            }
        }
        if let Some(status) = &source.status {
            data.insert("status".into(), status.clone().into());
        }
        if let Some((key, value)) = self.subject(source).await? {
            data.insert(key.into(), value);
        }
        let payload = WebhookPayload {
            id: due.id,
            kind: due.event.as_str().into(),
            created_at: source.at,
            data: serde_json::Value::Object(data),
        };
        serde_json::to_vec(&payload).map_err(|e| StoreError::Unexpected(e.into()))
    }

    /// The thing the event is about, as it is now.
    async fn subject(
        &self,
        source: &FarmEvent,
    ) -> StoreResult<Option<(&'static str, serde_json::Value)>> {
        let found = match source.kind {
            EventKind::Render => match source.render_id {
                Some(id) => self
                    .store
                    .get_render(id)
                    .await
                    .map(|r| ("render", serde_json::to_value(r))),
                None => return Ok(None),
            },
            EventKind::Task => match source.task_id {
                Some(id) => self
                    .store
                    .get_task(id)
                    .await
                    .map(|t| ("task", serde_json::to_value(t))),
                None => return Ok(None),
            },
            EventKind::Worker => match source.worker_id {
                Some(id) => self
                    .store
                    .get_worker(id, chrono::Utc::now())
                    .await
                    .map(|w| ("worker", serde_json::to_value(w))),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        match found {
            Ok((key, Ok(value))) => Ok(Some((key, value))),
            Ok((_, Err(e))) => Err(StoreError::Unexpected(e.into())),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// POSTs `body` to the webhook's URL, at the address just checked.
    async fn send(&self, due: &DueDelivery, body: &[u8]) -> AttemptOutcome {
        let url = match url::Url::parse(&due.webhook.url) {
            Ok(url) => url,
            Err(e) => return AttemptOutcome::Failed(format!("the stored URL is not valid: {e}")),
        };
        let address = match check_destination(&url, self.settings.allow_private, false).await {
            Ok(Some(address)) => address,
            Ok(None) => return AttemptOutcome::Failed("the host resolves to no address".into()),
            Err(why) => return AttemptOutcome::Failed(format!("refused: {why}")),
        };
        let mut client = renderfarm_client::http_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(DELIVERY_TIMEOUT)
            .connect_timeout(DELIVERY_TIMEOUT);
        if let Some(host) = url
            .host_str()
            .filter(|_| matches!(url.host(), Some(url::Host::Domain(_))))
        {
            client = client.resolve(host, address);
        }
        let client = match client.build() {
            Ok(c) => c,
            Err(e) => return AttemptOutcome::Failed(format!("no HTTP client: {e}")),
        };
        let timestamp = self.clock.now().timestamp();
        let sent = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::USER_AGENT,
                concat!("renderfarm-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header(WEBHOOK_ID_HEADER, due.id.to_string())
            .header(WEBHOOK_TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                WEBHOOK_SIGNATURE_HEADER,
                webhook_signature(&due.webhook.secret, timestamp, body),
            )
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                AttemptOutcome::Delivered(format!("HTTP {}", response.status().as_u16()))
            }
            Ok(response) => AttemptOutcome::Failed(format!("HTTP {}", response.status().as_u16())),
            Err(e) if e.is_timeout() => {
                AttemptOutcome::Failed(format!("timed out after {}s", DELIVERY_TIMEOUT.as_secs()))
            }
            Err(e) if e.is_connect() => AttemptOutcome::Failed(format!(
                "could not connect to {address}: {}",
                error_chain(&e)
            )),
            Err(e) => AttemptOutcome::Failed(format!("the request failed: {}", error_chain(&e))),
        }
    }
}

/// An error and its causes, for the outcome a webhook shows.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// A random number in `[0, 1)` for the retry's jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}
