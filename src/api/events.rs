//! `GET /events` and `GET /events/summary`: the farm's changes as
//! Server-Sent Events.
//!
//! One [`EventHub`] per broker reads the store's event log (a few times a
//! second, and only while someone listens) and fans the events out to every
//! stream; a stream that resumes (`Last-Event-ID`) or falls behind reads the
//! log itself until it is level with the hub. The log is the store's, so a
//! broker restart or a second broker replica loses no event a client has
//! not seen. The hub also records the coalesced events (progress, logs,
//! render tallies) once a second, and keeps the latest farm summary for the
//! summary streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse;
use chrono::Utc;
use renderfarm_wire::{
    EventKind, FarmEvent, FarmSummary, RenderStatus, RunningRender, WorkerCounts, WorkerStatus,
};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use utoipa::IntoParams;
use uuid::Uuid;

use super::auth::{Access, Viewer};
use super::{resource, ApiError, AppState};
use crate::clock::Clock;
use crate::domain::{
    contiguous_prefix, resume_from, RenderOrder, RenderSort, Resume, COALESCE_INTERVAL,
    SUMMARY_INTERVAL, SUMMARY_RUNNING_LIMIT,
};
use crate::store::{PageRequest, RenderFilter, Store, StoreResult};

/// How often the hub looks for new events while someone listens.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Events read from the store at once.
const READ_BATCH: usize = 500;

/// Event ids read from the store at once, to find how far the log is whole.
const ID_BATCH: usize = 2000;

/// Events a stream may fall behind the hub before it reads the log itself.
const FANOUT_CAPACITY: usize = 4096;

/// A comment on an idle stream, so that proxies keep it open and a dead
/// connection is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long a browser waits before reconnecting a dropped stream.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Events queued for one slow client before its stream waits.
const CLIENT_QUEUE: usize = 256;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/events", "GET").route(web::get().to(events)))
        .service(resource("/events/summary", "GET").route(web::get().to(summary)));
}

/// The broker's reader of the event log, shared by every stream.
pub struct EventHub {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Every event, for the streams that follow the whole farm.
    everything: broadcast::Sender<Arc<Encoded>>,
    /// One render's events, for the streams that follow it (a dashboard's
    /// render page): each gets only its render's, however busy the rest
    /// of the farm is. Removed when nobody follows the render any more.
    by_render: std::sync::Mutex<HashMap<Uuid, broadcast::Sender<Arc<Encoded>>>>,
    /// Every event up to this id has been passed on (or skipped
    /// after its gap's grace).
    position: AtomicI64,
    /// Wakes the reader early (a stream subscribed, coalesced events were
    /// recorded).
    wake: Arc<Notify>,
    summary: watch::Sender<Option<Arc<FarmSummary>>>,
    summary_wanted: Arc<Notify>,
}

impl EventHub {
    /// A hub over `store`; nothing runs until [`EventHub::start`].
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            everything: broadcast::channel(FANOUT_CAPACITY).0,
            by_render: Default::default(),
            position: AtomicI64::new(0),
            wake: Arc::new(Notify::new()),
            summary: watch::channel(None).0,
            summary_wanted: Arc::new(Notify::new()),
        })
    }

    /// Starts the hub's loops: reading the log, recording the coalesced
    /// events, computing summaries. They end when the hub is dropped.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(read_loop(Arc::downgrade(self)));
        tokio::spawn(record_loop(Arc::downgrade(self)));
        tokio::spawn(summary_loop(Arc::downgrade(self)));
    }

    fn position(&self) -> i64 {
        self.position.load(Ordering::Acquire)
    }

    /// A receiver of every event, or of one render's.
    fn subscribe(&self, render: Option<Uuid>) -> broadcast::Receiver<Arc<Encoded>> {
        match render {
            None => self.everything.subscribe(),
            Some(render) => self
                .renders()
                .entry(render)
                .or_insert_with(|| broadcast::channel(FANOUT_CAPACITY / 4).0)
                .subscribe(),
        }
    }

    fn renders(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, broadcast::Sender<Arc<Encoded>>>> {
        self.by_render.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any stream is open; forgets the renders nobody follows.
    fn listening(&self) -> bool {
        let mut renders = self.renders();
        renders.retain(|_, sender| sender.receiver_count() > 0);
        !renders.is_empty() || self.everything.receiver_count() > 0
    }

    /// Passes on the events after `after` up to where the log has no gap
    /// (ids read alone, which is cheap); reads only the followed renders'
    /// events while no stream follows the whole farm (a busy farm records
    /// thousands a second, of which a render page wants few). True when
    /// there may be more to read at once.
    async fn read_after(&self, after: i64, gap_since: &mut Option<Instant>) -> StoreResult<bool> {
        let ids = self.store.event_ids_after(after, ID_BATCH).await?;
        let now = Instant::now();
        let pass = contiguous_prefix(after, &ids, *gap_since, now);
        *gap_since = if pass < ids.len() {
            gap_since.or(Some(now))
        } else {
            None
        };
        let Some(&until) = ids[..pass].last() else {
            return Ok(false);
        };
        let events = if self.everything.receiver_count() > 0 {
            self.read_range(after, until, None).await?
        } else {
            let followed: Vec<Uuid> = self.renders().keys().copied().collect();
            let mut events = Vec::new();
            for render in followed {
                events.extend(self.read_range(after, until, Some(render)).await?);
            }
            events.sort_by_key(|e| e.id);
            events
        };
        for event in events {
            self.pass_on(event);
        }
        self.position.store(until, Ordering::Release);
        Ok(pass == ID_BATCH)
    }

    /// The events after `after` up to `until`, only `render`'s when given.
    async fn read_range(
        &self,
        mut after: i64,
        until: i64,
        render: Option<Uuid>,
    ) -> StoreResult<Vec<FarmEvent>> {
        let mut events = Vec::new();
        loop {
            let batch = self.store.events_after(after, render, READ_BATCH).await?;
            let full = batch.len() == READ_BATCH;
            for event in batch {
                if event.id > until {
                    return Ok(events);
                }
                after = event.id;
                events.push(event);
            }
            if !full {
                return Ok(events);
            }
        }
    }

    /// Passes `event` to the streams that follow it; encodes it only when
    /// one does (a busy farm makes thousands a second, most of which no
    /// render page follows).
    fn pass_on(&self, event: FarmEvent) {
        let followers = event
            .render_id
            .and_then(|render| self.renders().get(&render).cloned());
        let everyone = self.everything.receiver_count() > 0;
        if followers.is_none() && !everyone {
            return;
        }
        let encoded = Arc::new(Encoded::new(event));
        if let Some(sender) = followers {
            let _ = sender.send(encoded.clone());
        }
        if everyone {
            let _ = self.everything.send(encoded);
        }
    }
}

/// An event with its frame on the wire, made once for every stream that
/// sends it.
struct Encoded {
    event: FarmEvent,
    /// `id: …`, `event: …`, `data: {json}` and the blank line.
    frame: Bytes,
}

impl Encoded {
    fn new(event: FarmEvent) -> Self {
        let json = serde_json::to_string(&event).unwrap_or_else(|_| "{}".to_string());
        let frame = format!(
            "id: {}\nevent: {}\ndata: {json}\n\n",
            event.id,
            event.kind.as_str()
        );
        Self {
            event,
            frame: Bytes::from(frame),
        }
    }
}

/// The frames one write carries at most: a busy stream sends what has
/// gathered in one write rather than one write per event (a dashboard on a
/// busy render gets thousands a second).
const BATCH_BYTES: usize = 64 * 1024;

/// Logs a loop's failure once per run of failures, not on every turn.
struct Complaint(Option<String>);

impl Complaint {
    fn failed(&mut self, what: &str, e: impl std::fmt::Display) {
        let e = e.to_string();
        if self.0.as_ref() != Some(&e) {
            tracing::warn!(error = %e, "{what} failed; trying again");
            self.0 = Some(e);
        }
    }

    fn succeeded(&mut self) {
        self.0 = None;
    }
}

async fn read_loop(hub: std::sync::Weak<EventHub>) {
    let mut complaint = Complaint(None);
    let mut started = false;
    let mut gap_since: Option<Instant> = None;
    loop {
        let Some(hub) = hub.upgrade() else { return };
        let listening = hub.listening();
        if !started || !listening {
            // Nobody to tell: move to the end of the log, where the next
            // stream without a position starts.
            match hub.store.event_bounds().await {
                Ok(bounds) => {
                    complaint.succeeded();
                    if !started || bounds.newest > hub.position() {
                        hub.position.store(bounds.newest, Ordering::Release);
                    }
                    started = true;
                    gap_since = None;
                }
                Err(e) => complaint.failed("reading the event log's bounds", e),
            }
        } else {
            let after = hub.position();
            match hub.read_after(after, &mut gap_since).await {
                Ok(more) => {
                    complaint.succeeded();
                    if more {
                        continue;
                    }
                }
                Err(e) => complaint.failed("reading the event log", e),
            }
        }
        let wake = hub.wake.clone();
        drop(hub);
        let _ = tokio::time::timeout(POLL_INTERVAL, wake.notified()).await;
    }
}

async fn record_loop(hub: std::sync::Weak<EventHub>) {
    let mut complaint = Complaint(None);
    let mut ticks = tokio::time::interval(COALESCE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        match hub.store.record_coalesced_events(hub.clock.now()).await {
            Ok(0) => complaint.succeeded(),
            Ok(_) => {
                complaint.succeeded();
                hub.wake.notify_one();
            }
            Err(e) => complaint.failed("recording progress and log events", e),
        }
    }
}

async fn summary_loop(hub: std::sync::Weak<EventHub>) {
    let mut complaint = Complaint(None);
    loop {
        let Some(strong) = hub.upgrade() else { return };
        if strong.summary.receiver_count() == 0 {
            let wanted = strong.summary_wanted.clone();
            drop(strong);
            // Looks again now and then, since the hub may have been dropped.
            let _ = tokio::time::timeout(Duration::from_secs(5), wanted.notified()).await;
            continue;
        }
        match farm_summary(strong.store.as_ref(), strong.clock.now()).await {
            Ok(summary) => {
                complaint.succeeded();
                strong.summary.send_if_modified(|latest| {
                    let changed = latest.as_ref().is_none_or(|l| !same_numbers(l, &summary));
                    if changed {
                        *latest = Some(Arc::new(summary));
                    }
                    changed
                });
            }
            Err(e) => complaint.failed("computing the farm summary", e),
        }
        drop(strong);
        tokio::time::sleep(SUMMARY_INTERVAL).await;
    }
}

/// Two summaries that differ in nothing but their time.
fn same_numbers(a: &FarmSummary, b: &FarmSummary) -> bool {
    a.renders == b.renders
        && a.queue == b.queue
        && a.workers == b.workers
        && a.frames_last_hour == b.frames_last_hour
        && a.running == b.running
}

/// The farm in numbers, now.
pub async fn farm_summary(
    store: &dyn Store,
    now: chrono::DateTime<Utc>,
) -> StoreResult<FarmSummary> {
    let counts = store.farm_counts(now - chrono::TimeDelta::hours(1)).await?;
    let mut workers = WorkerCounts::default();
    for worker in store.list_workers(now).await? {
        *match worker.status {
            WorkerStatus::Idle => &mut workers.idle,
            WorkerStatus::Busy => &mut workers.busy,
            WorkerStatus::Offline => &mut workers.offline,
            WorkerStatus::Draining => &mut workers.draining,
            WorkerStatus::Disabled => &mut workers.disabled,
        } += 1;
    }
    let running = store
        .list_renders(
            &RenderFilter {
                status: Some(RenderStatus::Rendering),
                ..Default::default()
            },
            // The summary promises the most urgent first.
            RenderOrder::new(RenderSort::Priority, None),
            PageRequest {
                limit: SUMMARY_RUNNING_LIMIT,
                offset: 0,
            },
        )
        .await?
        .items
        .into_iter()
        .map(|r| RunningRender {
            id: r.id,
            name: r.name,
            priority: r.priority,
            progress: r.progress,
        })
        .collect();
    Ok(FarmSummary {
        at: now,
        renders: counts.renders,
        queue: counts.queue,
        workers,
        frames_last_hour: counts.frames_since,
        running,
    })
}

/// `?render=&after=` on `GET /events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Only this render's events (kinds `render`, `render_deleted`, `task`,
    /// `progress`, `log`).
    #[param(nullable = false)]
    render: Option<Uuid>,
    /// Start after this event id, as `Last-Event-ID` does (which wins when
    /// both are given). Without either, the stream starts with the next
    /// event.
    #[param(nullable = false, minimum = 0)]
    after: Option<i64>,
}

/// The farm's changes as they happen (Server-Sent Events).
///
/// Each event's `id:` is its place in the farm's sequence, `event:` its
/// kind, `data:` the event as JSON (`FarmEvent`). A client that reconnects
/// with `Last-Event-ID` (browsers do) gets every event after it, also
/// across broker restarts and from another replica; the broker keeps 24
/// hours of events (at most 500,000): a client asking for older ones gets a
/// `reset` event, and should reload before following on. Progress and log
/// events come at most once a second per task. A comment line every 15
/// seconds keeps an idle stream open.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    operation_id = "events",
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "The id of the last event received: the stream goes on after it."),
    ),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The stream: `id: 4182`, `event: task`, `data: {FarmEvent as JSON}`, a blank line; and so on.", body = FarmEvent, content_type = "text/event-stream"),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn events(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<EventsQuery>,
) -> Result<impl Responder, ApiError> {
    let query = query.into_inner();
    let after = match req.headers().get("last-event-id") {
        Some(value) => Some(parse_event_id(value.to_str().unwrap_or(""))?),
        None => query.after,
    };
    if let Some(after) = after {
        if after < 0 {
            return Err(ApiError::Invalid(format!(
                "after is {after}; give an event id (0 or more)"
            )));
        }
    }
    if let Some(render) = query.render {
        // A render that does not exist has no events to wait for.
        state.store.get_render(render).await?;
    }
    let hub = state.events.clone();
    // Subscribed before anything is read, so that nothing falls between the
    // log and the fan-out.
    let fanout = hub.subscribe(query.render);
    hub.wake.notify_one();
    let start = match after {
        None => Start::At(hub.position()),
        Some(after) => match resume_from(after, state.store.event_bounds().await?) {
            Resume::After(after) => Start::At(after),
            Resume::Reset { newest, message } => Start::Reset(newest, message),
        },
    };
    let (tx, rx) = mpsc::channel::<Bytes>(CLIENT_QUEUE);
    tokio::spawn(follow(hub, query.render, start, fanout, tx));
    // Written here rather than with actix-web-lab's `Sse` (which the summary
    // uses): that sends each event as a write of its own, and a stream on a
    // busy render must batch them.
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frames| (Ok::<_, Infallible>(frames), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // Proxies such as nginx buffer responses unless told not to.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

fn parse_event_id(raw: &str) -> Result<i64, ApiError> {
    raw.trim().parse::<i64>().map_err(|_| {
        ApiError::Invalid(format!(
            "Last-Event-ID is {raw:?}; send the id of the last event received (a whole number), or leave it out to start from now"
        ))
    })
}

enum Start {
    At(i64),
    Reset(i64, String),
}

/// Feeds one stream: the log from where it starts up to the hub, then the
/// hub's events, as many in one write as have gathered; the log again
/// whenever it falls behind the hub.
async fn follow(
    hub: Arc<EventHub>,
    render: Option<Uuid>,
    start: Start,
    mut fanout: broadcast::Receiver<Arc<Encoded>>,
    tx: mpsc::Sender<Bytes>,
) {
    let retry = format!("retry: {}\n\n", RECONNECT_AFTER.as_millis());
    if tx.send(Bytes::from(retry)).await.is_err() {
        return;
    }
    let mut seen = match start {
        Start::At(after) => after,
        Start::Reset(newest, message) => {
            let mut reset = FarmEvent::new(newest, Utc::now(), EventKind::Reset);
            reset.message = Some(message);
            if tx.send(Encoded::new(reset).frame).await.is_err() {
                return;
            }
            newest
        }
    };
    if catch_up(&hub, render, &mut seen, &tx).await.is_err() {
        return;
    }
    let mut batch = BytesMut::new();
    loop {
        let first = tokio::select! {
            first = fanout.recv() => first,
            // The client left: its render stops being followed at once.
            () = tx.closed() => return,
            () = tokio::time::sleep(KEEP_ALIVE) => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let mut lagged = false;
        let mut next = Some(first);
        while let Some(received) = next.take() {
            match received {
                Ok(encoded) => {
                    if encoded.event.id > seen {
                        seen = encoded.event.id;
                        batch.extend_from_slice(&encoded.frame);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => lagged = true,
                Err(broadcast::error::RecvError::Closed) => return,
            }
            if batch.len() < BATCH_BYTES && !lagged {
                next = match fanout.try_recv() {
                    Ok(encoded) => Some(Ok(encoded)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Some(Err(broadcast::error::RecvError::Lagged(n)))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Some(Err(broadcast::error::RecvError::Closed))
                    }
                    Err(broadcast::error::TryRecvError::Empty) => None,
                };
            }
        }
        if !batch.is_empty() && tx.send(batch.split().freeze()).await.is_err() {
            return;
        }
        if lagged && catch_up(&hub, render, &mut seen, &tx).await.is_err() {
            return;
        }
    }
}

/// Sends the log's events after `seen` up to the hub's position.
async fn catch_up(
    hub: &EventHub,
    render: Option<Uuid>,
    seen: &mut i64,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), ()> {
    let until = hub.position();
    while *seen < until {
        let events = loop {
            match hub.store.events_after(*seen, render, READ_BATCH).await {
                Ok(events) => break events,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event log for a stream failed; trying again");
                    if tx.is_closed() {
                        return Err(());
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        };
        let full = events.len() == READ_BATCH;
        let mut batch = BytesMut::new();
        for event in events.into_iter().take_while(|e| e.id <= until) {
            *seen = event.id;
            batch.extend_from_slice(&Encoded::new(event).frame);
        }
        if !batch.is_empty() {
            tx.send(batch.freeze()).await.map_err(|_| ())?;
        }
        if !full {
            break;
        }
    }
    *seen = (*seen).max(until);
    Ok(())
}

/// The farm in numbers, live (Server-Sent Events): a `summary` event at
/// once, then whenever the numbers change, at most once a second.
#[utoipa::path(
    get,
    path = "/events/summary",
    tag = "events",
    operation_id = "events_summary",
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The stream: `event: summary`, `data: {FarmSummary as JSON}`, a blank line; and so on.", body = FarmSummary, content_type = "text/event-stream"),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn summary(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
) -> Result<impl Responder, ApiError> {
    let hub = state.events.clone();
    let mut latest = hub.summary.subscribe();
    hub.summary_wanted.notify_one();
    // The first one at once, even when the hub has none yet. Taken out of
    // the channel in a statement of its own: a borrow held across the
    // computation's await would block the hub's next send, and with it
    // every worker thread whose request borrows after that send began.
    let cached = latest.borrow_and_update().clone();
    let first = match cached {
        Some(summary) => summary,
        None => Arc::new(farm_summary(state.store.as_ref(), state.clock.now()).await?),
    };
    let (tx, rx) = mpsc::channel::<sse::Event>(4);
    tokio::spawn(async move {
        let send = |s: &FarmSummary| {
            let data = serde_json::to_string(s).unwrap_or_else(|_| "{}".to_string());
            tx.send(sse::Data::new(data).event("summary").into())
        };
        if send(&first).await.is_err() {
            return;
        }
        let mut sent = first;
        loop {
            // A client that left must not keep the summaries computed.
            tokio::select! {
                changed = latest.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            let Some(summary) = latest.borrow_and_update().clone() else {
                continue;
            };
            // The hub's first may repeat the one computed for this stream.
            if same_numbers(&summary, &sent) {
                continue;
            }
            if send(&summary).await.is_err() {
                return;
            }
            sent = summary;
        }
    });
    Ok(sse::Sse::from_infallible_receiver(rx)
        .with_keep_alive(KEEP_ALIVE)
        .with_retry_duration(RECONNECT_AFTER)
        .customize()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no")))
}
