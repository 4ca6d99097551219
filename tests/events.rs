//! The event stream (`GET /events`, `GET /events/summary`) from the outside:
//! a real broker process, real HTTP, a real SQLite file; one test kills the
//! broker with SIGKILL and resumes the stream on its restart.

mod common;

use std::time::Duration;

use common::{BrokerProcess, ADMIN_TOKEN, ENROLMENT_TOKEN};
use renderfarm_client::{BrokerClient, ClientError, EventStream};
use renderfarm_wire::{
    Assignment, CompleteReport, EventKind, FarmEvent, ProgressReport, RenderSpec, WorkerSpec,
};
use uuid::Uuid;

/// The longest a test waits for one event it expects.
const EVENT_WAIT: Duration = Duration::from_secs(15);

fn admin(broker: &BrokerProcess) -> BrokerClient {
    BrokerClient::new(&broker.address)
        .expect("a broker address")
        .with_token(Some(ADMIN_TOKEN.to_string()))
}

fn spec(name: &str, frames: i64, chunk: i64) -> RenderSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "blend_file": format!("/projects/{name}.blend"),
        "frame_start": 1,
        "frame_end": frames,
        "chunk_size": chunk,
    }))
    .expect("a render spec")
}

/// A registered worker: its id and a client that acts as it.
async fn worker(broker: &BrokerProcess, name: &str) -> (Uuid, BrokerClient) {
    let enrol = BrokerClient::new(&broker.address)
        .unwrap()
        .with_token(Some(ENROLMENT_TOKEN.to_string()));
    let registered = enrol
        .register(&WorkerSpec {
            name: name.into(),
            tags: vec![],
            kinds: vec![renderfarm_wire::TaskKind::Blender],
            time_zone: None,
            available: None,
            strict_hours: false,
            platform: Default::default(),
        })
        .await
        .expect("registers");
    let client = BrokerClient::new(&broker.address)
        .unwrap()
        .with_token(registered.secret);
    (registered.worker.id, client)
}

async fn claim(worker: &(Uuid, BrokerClient)) -> Assignment {
    worker
        .1
        .request_task(worker.0, Duration::from_secs(5))
        .await
        .expect("asks for work")
        .expect("gets a task")
}

/// The next event, failing the test when none comes in time.
async fn next(stream: &mut EventStream) -> FarmEvent {
    tokio::time::timeout(EVENT_WAIT, stream.next())
        .await
        .expect("an event within the wait")
        .expect("the stream goes on")
        .expect("a readable event")
}

/// Reads events until one satisfies `until`; returns all read.
async fn read_until(
    stream: &mut EventStream,
    until: impl Fn(&FarmEvent) -> bool,
) -> Vec<FarmEvent> {
    let mut read = Vec::new();
    loop {
        let event = next(stream).await;
        let done = until(&event);
        read.push(event);
        if done {
            return read;
        }
    }
}

fn kinds(events: &[FarmEvent]) -> Vec<(EventKind, Option<String>)> {
    events.iter().map(|e| (e.kind, e.status.clone())).collect()
}

#[tokio::test]
async fn the_stream_tells_each_change_of_a_render_its_tasks_and_workers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), "127.0.0.1:0");
    let client = admin(&broker);
    let mut stream = client.events(None, None).await.expect("the stream opens");

    let render = client.submit(&spec("shot", 4, 2)).await.unwrap();
    let w = worker(&broker, "w1").await;
    let task = claim(&w).await;
    w.1.progress(
        task.task_id,
        &ProgressReport {
            lease_id: task.lease_id,
            frames_done: 1,
            log: Some("Fra:1\n".into()),
        },
    )
    .await
    .unwrap();
    let events = read_until(&mut stream, |e| e.kind == EventKind::Log).await;
    w.1.complete(
        task.task_id,
        &CompleteReport {
            lease_id: task.lease_id,
            log: None,
        },
    )
    .await
    .unwrap();
    let more = read_until(&mut stream, |e| {
        e.kind == EventKind::Render && e.progress.is_some_and(|p| p.tasks_completed == 1)
    })
    .await;
    let all: Vec<FarmEvent> = events.into_iter().chain(more).collect();

    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "ids rise: {:?}",
        all.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    let seen = kinds(&all);
    let position = |kind: EventKind, status: Option<&str>| {
        seen.iter()
            .position(|(k, s)| *k == kind && s.as_deref() == status.or(s.as_deref()))
            .unwrap_or_else(|| panic!("no {kind:?} {status:?} in {seen:?}"))
    };
    let submitted = position(EventKind::Render, Some("queued"));
    let registered = position(EventKind::Worker, Some("idle"));
    let claimed = position(EventKind::Task, Some("running"));
    let progressed = position(EventKind::Progress, None);
    let completed = position(EventKind::Task, Some("completed"));
    assert!(submitted < registered && registered < claimed && claimed < progressed);
    assert!(progressed < completed, "{seen:?}");
    let claim = &all[claimed];
    assert_eq!(claim.task_id, Some(task.task_id));
    assert_eq!(claim.render_id, Some(render.id));
    assert_eq!(claim.worker_id, Some(w.0));
    assert_eq!(all[progressed].frames_done, Some(1));
    assert!(all
        .iter()
        .any(|e| e.kind == EventKind::Render && e.status.as_deref() == Some("rendering")));
    let log = all.iter().find(|e| e.kind == EventKind::Log).unwrap();
    assert_eq!(log.task_id, Some(task.task_id));
    assert_eq!(log.log_bytes, Some("Fra:1\n".len() as i64));
}

#[tokio::test]
async fn a_stream_filtered_by_render_carries_only_that_render() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), "127.0.0.1:0");
    let client = admin(&broker);
    let first = client.submit(&spec("first", 2, 2)).await.unwrap();
    let mut stream = client.events(Some(first.id), Some(0)).await.unwrap();
    let second = client.submit(&spec("second", 2, 2)).await.unwrap();
    client
        .change_render(first.id, renderfarm_wire::RenderAction::Pause)
        .await
        .unwrap();
    let events = read_until(&mut stream, |e| e.status.as_deref() == Some("paused")).await;
    assert_eq!(
        kinds(&events)[0],
        (EventKind::Render, Some("queued".into()))
    );
    assert!(
        events.iter().all(|e| e.render_id == Some(first.id)),
        "{events:?} (the other render is {})",
        second.id
    );

    match client.events(Some(Uuid::now_v7()), None).await {
        Err(ClientError::NotFound(message)) => assert!(message.contains("render"), "{message}"),
        Err(other) => panic!("an unknown render gave {other}"),
        Ok(_) => panic!("an unknown render gave a stream"),
    }
}

#[tokio::test]
async fn a_stream_resumes_after_the_last_event_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), "127.0.0.1:0");
    let client = admin(&broker);
    let mut stream = client.events(None, None).await.unwrap();
    let render = client.submit(&spec("resumed", 2, 2)).await.unwrap();
    let first = next(&mut stream).await;
    assert_eq!(first.render_id, Some(render.id));
    drop(stream);

    // While nobody listens.
    client
        .change_render(render.id, renderfarm_wire::RenderAction::Pause)
        .await
        .unwrap();
    client
        .change_render(render.id, renderfarm_wire::RenderAction::Resume)
        .await
        .unwrap();

    let mut resumed = client.events(None, Some(first.id)).await.unwrap();
    let paused = next(&mut resumed).await;
    let queued = next(&mut resumed).await;
    assert_eq!(paused.id, first.id + 1);
    assert_eq!(paused.status.as_deref(), Some("paused"));
    assert_eq!(queued.id, first.id + 2);
    assert_eq!(queued.status.as_deref(), Some("queued"));
}

#[tokio::test]
async fn a_client_asking_for_events_no_longer_kept_is_told_to_reload() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), "127.0.0.1:0");
    let client = admin(&broker);
    client.submit(&spec("old", 2, 2)).await.unwrap();
    // One ahead of everything this broker ever recorded.
    let mut stream = client.events(None, Some(1_000_000)).await.unwrap();
    let reset = next(&mut stream).await;
    assert_eq!(reset.kind, EventKind::Reset);
    let message = reset.message.expect("a reset says why");
    assert!(message.contains("reload"), "{message}");
    // It goes on from there: the next change comes through.
    let render = client.submit(&spec("new", 2, 2)).await.unwrap();
    let after = next(&mut stream).await;
    assert_eq!(after.render_id, Some(render.id));
    assert!(after.id > reset.id);
}

#[tokio::test]
async fn a_malformed_last_event_id_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), "127.0.0.1:0");
    let answer = common::admin_client()
        .get(format!("{}/events", broker.address))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("Last-Event-ID"),
        "{body}"
    );
}

#[tokio::test]
async fn the_summary_stream_counts_the_farm() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), "127.0.0.1:0");
    let client = admin(&broker);
    client.submit(&spec("counted", 6, 2)).await.unwrap();
    let w = worker(&broker, "w1").await;
    claim(&w).await;
    let mut summary = common::admin_client()
        .get(format!("{}/events/summary", broker.address))
        .send()
        .await
        .unwrap();
    assert_eq!(
        summary.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut text = String::new();
    while !text.contains("\n\n") || !text.contains("data:") {
        let chunk = tokio::time::timeout(EVENT_WAIT, summary.chunk())
            .await
            .expect("a summary in time")
            .unwrap()
            .expect("more of the stream");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .expect("a data line");
    let summary: renderfarm_wire::FarmSummary = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(summary.renders.rendering, 1);
    assert_eq!(summary.queue.normal, 2);
    assert_eq!(summary.workers.busy, 1);
    assert_eq!(summary.running.len(), 1);
    assert_eq!(summary.running[0].name, "counted");
}

#[tokio::test]
async fn a_stream_resumed_across_a_broker_sigkill_gets_every_event_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), "127.0.0.1:0");
    let client = admin(&broker);
    let mut stream = client.events(None, Some(0)).await.unwrap();
    let render = client.submit(&spec("survivor", 8, 2)).await.unwrap();
    let w = worker(&broker, "w1").await;
    let task = claim(&w).await;
    // Read some of what happened, not all.
    let mut received = vec![next(&mut stream).await, next(&mut stream).await];
    // Changes the client has not read when the broker dies.
    client
        .change_render(render.id, renderfarm_wire::RenderAction::Pause)
        .await
        .unwrap();
    broker.kill_9();
    drop(stream);

    let broker = BrokerProcess::start(dir.path(), "127.0.0.1:0");
    let client = admin(&broker);
    let last = received.last().unwrap().id;
    let mut stream = client.events(None, Some(last)).await.unwrap();
    let later = client
        .submit(&spec("after the restart", 2, 2))
        .await
        .unwrap();
    received.extend(read_until(&mut stream, |e| e.render_id == Some(later.id)).await);
    assert!(
        received.iter().any(|e| e.task_id == Some(task.task_id)),
        "the claim before the kill is in the stream"
    );

    // The whole log, read afresh from the start.
    let mut everything = client.events(None, Some(0)).await.unwrap();
    let newest = received.last().unwrap().id;
    let log = read_until(&mut everything, |e| e.id >= newest).await;
    let ids = |events: &[FarmEvent]| events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&received), ids(&log), "every event once, in order");
    assert_eq!(received, log);
}

/// Two brokers on one MongoDB database, as replicas behind one address: a
/// client that read part of the stream from one and reconnects to the other
/// with `Last-Event-ID` gets the rest, once each, in order.
#[tokio::test]
async fn a_stream_moved_to_another_replica_on_mongodb_loses_and_repeats_nothing() {
    let Some(target) = renderfarm_testkit::mongodb_for_tests("events across two brokers") else {
        return;
    };
    let store = format!(
        "{}/renderfarm_events_{}",
        target.uri().trim_end_matches('/'),
        Uuid::new_v4().simple()
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = BrokerProcess::start_with(dir_a.path(), "127.0.0.1:0", &["--store", &store]);
    let b = BrokerProcess::start_with(dir_b.path(), "127.0.0.1:0", &["--store", &store]);
    let (client_a, client_b) = (admin(&a), admin(&b));
    for client in [&client_a, &client_b] {
        // A MongoDB broker answers 503 until it has connected.
        common::wait_for(
            "the broker to be ready",
            Duration::from_secs(30),
            || async { client.ready().await.ok() },
        )
        .await;
    }
    let mut stream = client_a.events(None, Some(0)).await.unwrap();

    let first = client_a.submit(&spec("on a", 4, 2)).await.unwrap();
    let w = worker(&b, "w1").await;
    let task = claim(&w).await;
    let mut received = read_until(&mut stream, |e| e.task_id == Some(task.task_id)).await;
    drop(stream);

    // Changes on both replicas while the client moves.
    client_b
        .change_render(first.id, renderfarm_wire::RenderAction::Pause)
        .await
        .unwrap();
    let second = client_a.submit(&spec("also on a", 2, 2)).await.unwrap();
    let last = received.last().unwrap().id;
    let mut moved = client_b.events(None, Some(last)).await.unwrap();
    received.extend(read_until(&mut moved, |e| e.render_id == Some(second.id)).await);

    let mut everything = client_a.events(None, Some(0)).await.unwrap();
    let newest = received.last().unwrap().id;
    let log = read_until(&mut everything, |e| e.id >= newest).await;
    let ids = |events: &[FarmEvent]| events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&received), ids(&log), "every event once, in order");
    assert!(received
        .iter()
        .any(|e| e.render_id == Some(first.id) && e.status.as_deref() == Some("paused")));
    assert!(received.windows(2).all(|w| w[0].id < w[1].id));
}
