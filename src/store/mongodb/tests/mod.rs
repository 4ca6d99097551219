//! Checks that need no server: every document this backend writes, and every
//! document its updates leave behind, passes the `$jsonSchema` validators of
//! `migrations/mongodb/` (checked by a small validator of the keywords those
//! files use: a test double for the server's, named as such); and the driver's
//! errors translate into the store's vocabulary.

use std::collections::HashMap;
use std::sync::Arc;

use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use mongodb::error::{
    CommandError, Error as DriverError, ErrorKind, InsertManyError, WriteError, WriteFailure,
};
use mongodb::options::ConnectionString;
use renderfarm_wire::Progress;
use renderfarm_wire::{Priority, RenderStatus, TaskStatus};
use uuid::Uuid;

use super::migrations;
use super::{
    connect::*, counters::*, documents::*, errors::*, renders::*, tasks::*, upkeep::*, workers::*,
    *,
};
use crate::domain::{WarmState, WorkerMode};
use crate::store::Store;

mod queries;
use crate::store::conformance::plan;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

/// The validator of each collection after every migration.
fn schemas() -> HashMap<String, Document> {
    let mut out = HashMap::new();
    for m in migrations::all().unwrap() {
        for c in m.collections {
            if let Some(v) = c.validator {
                let schema = v.get_document("$jsonSchema").unwrap().clone();
                out.insert(c.name, schema);
            }
        }
    }
    out
}

fn bson_type(value: &Bson) -> &'static str {
    match value {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Boolean(_) => "bool",
        Bson::Null => "null",
        Bson::Int32(_) => "int",
        Bson::Int64(_) => "long",
        Bson::DateTime(_) => "date",
        Bson::ObjectId(_) => "objectId",
        _ => "other",
    }
}

fn number(value: &Bson) -> Option<f64> {
    match value {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    }
}

/// The test double of the server's `$jsonSchema` check: the keywords our
/// migration files use, and a failure for any other (so a keyword it does
/// not know is never silently passed).
fn validate(schema: &Document, value: &Bson, path: &str) -> Result<(), String> {
    for key in schema.keys() {
        let known = [
            "bsonType",
            "required",
            "properties",
            "items",
            "enum",
            "minimum",
            "maximum",
        ];
        if !known.contains(&key.as_str()) {
            return Err(format!("{path}: the test validator does not know {key:?}"));
        }
    }
    if let Some(types) = schema.get("bsonType") {
        let allowed: Vec<&str> = match types {
            Bson::String(s) => vec![s.as_str()],
            Bson::Array(a) => a.iter().filter_map(Bson::as_str).collect(),
            other => return Err(format!("{path}: bsonType {other:?}")),
        };
        if !allowed.contains(&bson_type(value)) {
            return Err(format!(
                "{path}: a {} where {allowed:?} is required",
                bson_type(value)
            ));
        }
    }
    if let Ok(options) = schema.get_array("enum") {
        if !options.contains(value) {
            return Err(format!("{path}: {value} is not one of {options:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(number), number(value)) {
        if n < min {
            return Err(format!("{path}: {n} is below {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema.get("maximum").and_then(number), number(value)) {
        if n > max {
            return Err(format!("{path}: {n} is above {max}"));
        }
    }
    if let Bson::Document(doc) = value {
        if let Ok(required) = schema.get_array("required") {
            for field in required.iter().filter_map(Bson::as_str) {
                if !doc.contains_key(field) {
                    return Err(format!("{path}: {field} is missing"));
                }
            }
        }
        if let Ok(properties) = schema.get_document("properties") {
            for (field, sub) in properties {
                if let (Some(v), Bson::Document(sub)) = (doc.get(field), sub) {
                    validate(sub, v, &format!("{path}.{field}"))?;
                }
            }
        }
    }
    if let (Bson::Array(items), Ok(sub)) = (value, schema.get_document("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(sub, item, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

fn assert_valid(collection: &str, doc: &Document) {
    let schemas = schemas();
    let schema = schemas
        .get(collection)
        .unwrap_or_else(|| panic!("no validator for {collection}"));
    if let Err(e) = validate(schema, &Bson::Document(doc.clone()), collection) {
        panic!("{e}\nin {doc}");
    }
}

/// Applies the `$set` and `$inc` of an update to a document, as the server
/// would for top-level fields.
fn apply(doc: &mut Document, update: &Document) {
    for (op, fields) in update {
        let fields = fields.as_document().expect("an operator takes a document");
        for (field, value) in fields {
            match op.as_str() {
                "$set" => {
                    doc.insert(field, value.clone());
                }
                "$inc" => {
                    let sum = match (doc.get(field), value) {
                        (None, v) => v.clone(),
                        (Some(Bson::Int64(a)), Bson::Int64(b)) => Bson::Int64(a + b),
                        (Some(Bson::Int32(a)), Bson::Int64(b)) => Bson::Int64(i64::from(*a) + b),
                        (a, b) => panic!("$inc of {b:?} on {a:?}"),
                    };
                    doc.insert(field, sum);
                }
                other => panic!("the test does not apply {other}"),
            }
        }
    }
}

fn planned() -> (RenderDoc, Vec<TaskDoc>) {
    let mut new = plan("shot", 1, 10, 4, Priority::High, t(0));
    new.render.tags = vec!["gpu".into()];
    new.render.engine = Some("CYCLES".into());
    let render = RenderDoc::planned(&new.render, 1);
    let tasks = new
        .tasks()
        .map(|t| TaskDoc::planned(&render, t.frames.start(), t.frames.end()))
        .collect();
    (render, tasks)
}

#[test]
fn every_document_written_passes_its_collection_validator() {
    let (mut render, tasks) = planned();
    assert_valid("renders", &bson::to_document(&render).unwrap());
    render.owner = Some("alice".into());
    assert_valid("renders", &bson::to_document(&render).unwrap());
    assert_eq!(tasks.len(), 3);
    for task in &tasks {
        assert_valid("tasks", &bson::to_document(task).unwrap());
    }
    let worker = WorkerDoc {
        id: Uuid::now_v7().to_string(),
        seq: 1,
        name: "w1".into(),
        tags: vec!["gpu".into()],
        mode: WorkerMode::Active.as_str().into(),
        offline: false,
        last_heartbeat: bson_time(t(0)),
        registered_at: bson_time(t(0)),
        events: None,
        has_events: None,
        seen_offline: None,
        last_render_seq: None,
        warm_streak: None,
        kinds: Some(vec![
            renderfarm_wire::TaskKind::Blender,
            renderfarm_wire::TaskKind::Ffmpeg,
        ]),
        time_zone: Some("Europe/Berlin".into()),
        agent_hours: Some("mon-fri 19:00-07:00".into()),
        operator_hours: Some("sat-sun".into()),
        strict_hours: true,
        drained_by_itself: false,
        // The workers validator, as every migration left it, allows it.
        platform: Some(renderfarm_wire::Platform::Windows),
    };
    assert_valid("workers", &bson::to_document(&worker).unwrap());
    let log = LogDoc {
        task_id: tasks[0].id.clone(),
        seq: 0,
        text: "Fra:1\n".into(),
        bytes: 6,
    };
    assert_valid("task_logs", &bson::to_document(&log).unwrap());
    for (worker_id, detail, actor) in [
        (Some("w1".to_string()), None, None),
        (None, Some("retry 1 of 2".to_string()), None),
        (
            None,
            Some("its render was canceled".into()),
            Some("alice".into()),
        ),
    ] {
        for event in renderfarm_wire::HistoryEvent::ALL {
            let entry = HistoryDoc {
                task_id: tasks[0].id.clone(),
                seq: 0,
                at: bson_time(t(0)),
                event: event.as_str().into(),
                worker_id: worker_id.clone(),
                detail: detail.clone(),
                actor: actor.clone(),
            };
            assert_valid("task_history", &bson::to_document(&entry).unwrap());
        }
    }
    let lease = LeaseDoc {
        name: "scheduler".into(),
        holder: "broker-a".into(),
        expires_at: bson_time(t(90)),
    };
    assert_valid("leases", &bson::to_document(&lease).unwrap());
    // What an upsert on a missing counter creates.
    let mut counter = doc! { "_id": "renders" };
    apply(&mut counter, &next_seq_update());
    assert_valid("counters", &counter);
    // What a lease upsert creates: the filter's _id and the $set.
    let mut lease = doc! { "_id": "scheduler" };
    apply(&mut lease, &lease_take_update("broker-a", t(60)));
    assert_valid("leases", &lease);
}

#[test]
fn every_task_update_leaves_a_valid_task() {
    let (_, tasks) = planned();
    let mut task = bson::to_document(&tasks[0]).unwrap();
    let steps: Vec<Document> = vec![
        runnable_sync("r", true, 0).1,
        claim_update(TaskStatus::Running, "w1", "l1", t(1)),
        progress_update(2, Some(10)),
        fail_update(
            TaskStatus::Failed,
            Some(1),
            "boom",
            t(2),
            Some(20),
            "l1",
            Some("w1"),
        ),
        retry_update(TaskStatus::Pending, t(3)),
        claim_update(TaskStatus::Running, "w2", "l2", t(4)),
        fail_update(TaskStatus::Failed, None, "killed", t(5), None, "l2", None),
        retry_update(TaskStatus::Pending, t(6)),
        claim_update(TaskStatus::Running, "w1", "l3", t(7)),
        requeue_update(TaskStatus::Pending, t(8), Some(5), "l3", Some("w1")),
        claim_update(TaskStatus::Running, "w1", "l4", t(9)),
        complete_update(TaskStatus::Completed, 4, t(10), Some(7), "l4", Some("w1")),
        log_trimmed_update(12),
        bulk_update(TaskStatus::Pending, t(11), "c1"),
        runnable_sync("r", false, 3).1,
        bulk_update(TaskStatus::Canceled, t(12), "c2"),
    ];
    for (i, update) in steps.iter().enumerate() {
        apply(&mut task, update);
        let schemas = schemas();
        if let Err(e) = validate(&schemas["tasks"], &Bson::Document(task.clone()), "tasks") {
            panic!("after step {i} ({update}): {e}\nin {task}");
        }
    }
    let decoded: TaskDoc = bson::from_document(task).unwrap();
    assert_eq!(
        (decoded.retries, decoded.log_chunks, decoded.history_seq),
        (0, 4, 12),
        "reset clears retries; every report with log and every history event counted"
    );
    assert_eq!(
        (decoded.log_bytes, decoded.log_dropped),
        (30, 12),
        "log bytes counted as sent, less what trimming dropped"
    );
}

#[test]
fn every_render_update_leaves_a_valid_render() {
    let (render, _) = planned();
    let mut doc = bson::to_document(&render).unwrap();
    let running = StatusChange {
        status: RenderStatus::Rendering,
        started_at: Some(bson_time(t(1))),
        finished_at: None,
        reset_failure: false,
    };
    let failed = StatusChange {
        status: RenderStatus::Failed,
        started_at: Some(bson_time(t(1))),
        finished_at: Some(bson_time(t(2))),
        reset_failure: false,
    };
    let requeued = StatusChange {
        status: RenderStatus::Queued,
        started_at: None,
        finished_at: None,
        reset_failure: true,
    };
    let cancel_all = progress_delta(Some(TaskStatus::Pending), TaskStatus::Canceled, 2, 0);
    let steps: Vec<Document> = vec![
        render_counter_inc(TaskStatus::Pending, TaskStatus::Running, 0, false),
        status_update(&running),
        render_counter_inc(TaskStatus::Running, TaskStatus::Running, 3, false),
        render_counter_inc(TaskStatus::Running, TaskStatus::Failed, -3, true),
        status_update(&failed),
        doc! { "$inc": progress_inc(&cancel_all) },
        status_update(&requeued),
        recount_update(
            &Progress {
                tasks_total: 3,
                tasks_pending: 3,
                frames_total: 10,
                ..Progress::default()
            },
            false,
            &requeued,
        ),
    ];
    for (i, update) in steps.iter().enumerate() {
        apply(&mut doc, update);
        let schemas = schemas();
        if let Err(e) = validate(&schemas["renders"], &Bson::Document(doc.clone()), "renders") {
            panic!("after step {i} ({update}): {e}\nin {doc}");
        }
    }
    let back: RenderDoc = bson::from_document(doc).unwrap();
    assert_eq!(back.version, 8, "every step moved the version");
    assert_eq!(back.to_render().unwrap().status, RenderStatus::Queued);
}

#[test]
fn a_worker_stays_valid_as_it_beats_and_changes_mode() {
    let worker = WorkerDoc {
        id: "w1".into(),
        seq: 3,
        name: "w1".into(),
        tags: vec![],
        mode: WorkerMode::Active.as_str().into(),
        offline: true,
        last_heartbeat: bson_time(t(0)),
        registered_at: bson_time(t(0)),
        events: None,
        has_events: None,
        seen_offline: None,
        last_render_seq: None,
        warm_streak: None,
        kinds: Some(vec![
            renderfarm_wire::TaskKind::Blender,
            renderfarm_wire::TaskKind::Ffmpeg,
        ]),
        time_zone: None,
        agent_hours: None,
        operator_hours: None,
        strict_hours: false,
        drained_by_itself: false,
        platform: None,
    };
    let mut doc = bson::to_document(&worker).unwrap();
    apply(&mut doc, &alive_update(t(5)));
    apply(
        &mut doc,
        &doc! { "$set": { "mode": WorkerMode::Draining.as_str() } },
    );
    assert_valid("workers", &doc);
    let back: WorkerDoc = bson::from_document(doc.clone()).unwrap();
    assert!(!back.offline);
    assert_eq!(back.last_heartbeat, bson_time(t(5)));
    assert_eq!(back.warm_state(), WarmState::default(), "never claimed");
    let warm = WarmState {
        last_render: Some(12),
        streak: 3,
    };
    apply(&mut doc, &warm_update(&warm));
    assert_valid("workers", &doc);
    let back: WorkerDoc = bson::from_document(doc).unwrap();
    assert_eq!(back.warm_state(), warm);
}

#[test]
fn stored_documents_read_back_as_the_domain_values_they_came_from() {
    let new = plan("shot", 0, 9, 5, Priority::Urgent, t(0));
    let render = RenderDoc::planned(&new.render, 7);
    let stored: RenderDoc = bson::from_document(bson::to_document(&render).unwrap()).unwrap();
    assert_eq!(stored.to_render().unwrap(), new.render);
    let task = TaskDoc::planned(&stored, 0, 4);
    let stored: TaskDoc = bson::from_document(bson::to_document(&task).unwrap()).unwrap();
    let shown = stored.to_task().unwrap();
    assert_eq!(
        (
            shown.status,
            shown.frame_start,
            shown.frame_end,
            shown.worker_id
        ),
        (TaskStatus::Pending, 0, 4, None)
    );
    assert_eq!(stored.queued_at, bson_time(t(0)), "waits from submission");
    assert_eq!((stored.render_seq, stored.priority), (7, 3));
}

fn driver_error(kind: ErrorKind) -> DriverError {
    DriverError::from(kind)
}

fn command_error(code: i32, name: &str) -> DriverError {
    let error: CommandError = bson::from_document(doc! {
        "code": code,
        "codeName": name,
        "errmsg": format!("{name} happened"),
    })
    .unwrap();
    driver_error(ErrorKind::Command(error))
}

#[test]
fn driver_errors_become_the_store_vocabulary() {
    let refused = driver_error(ErrorKind::Io(Arc::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "refused",
    ))));
    assert!(matches!(
        StoreError::from(refused),
        StoreError::Unavailable(_)
    ));
    for (code, name) in [
        (91, "ShutdownInProgress"),
        (10107, "NotWritablePrimary"),
        (189, "PrimarySteppedDown"),
        (50, "MaxTimeMSExpired"),
    ] {
        assert!(
            matches!(
                StoreError::from(command_error(code, name)),
                StoreError::Unavailable(_)
            ),
            "{name}"
        );
    }
    let duplicate: WriteError = bson::from_document(doc! {
        "code": 11000,
        "codeName": "DuplicateKey",
        "errmsg": "E11000 duplicate key error",
    })
    .unwrap();
    let duplicate = driver_error(ErrorKind::Write(WriteFailure::WriteError(duplicate)));
    assert!(is_duplicate_key(&duplicate));
    assert!(matches!(
        StoreError::from(duplicate),
        StoreError::AlreadyExists
    ));
    let invalid: WriteError = bson::from_document(doc! {
        "code": 121,
        "codeName": "DocumentValidationFailure",
        "errmsg": "Document failed validation",
    })
    .unwrap();
    let invalid = driver_error(ErrorKind::Write(WriteFailure::WriteError(invalid)));
    assert!(
        matches!(StoreError::from(invalid), StoreError::Unexpected(_)),
        "a document our own code shaped wrong is a bug, not the client's fault"
    );
    assert!(matches!(
        StoreError::from(command_error(2, "BadValue")),
        StoreError::Unexpected(_)
    ));
    assert_eq!(error_code(&command_error(48, "NamespaceExists")), Some(48));
    // Every task inserted but the write concern unconfirmed (e.g. `w=majority`
    // with a member down): try again later, like a single write.
    let unconfirmed: InsertManyError = bson::from_document(doc! {
        "writeConcernError": { "code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out" },
    })
    .unwrap();
    assert!(matches!(
        StoreError::from(driver_error(ErrorKind::InsertMany(unconfirmed))),
        StoreError::Unavailable(_)
    ));
}

#[tokio::test]
async fn a_store_not_yet_connected_answers_unavailable_at_once() {
    let store = MongoStore::start("mongodb://127.0.0.1:1/never", MigrationMode::Apply).unwrap();
    assert_eq!(store.target(), "127.0.0.1:1/never");
    let started = std::time::Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = store.list_workers(chrono::Utc::now()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(ref m) if m.contains("127.0.0.1:1/never")));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert!(matches!(
        MongoStore::start("postgres://x", MigrationMode::Apply),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn the_database_is_the_uri_path_or_renderfarm() {
    let with =
        ConnectionString::parse("mongodb://user:secret@db1:27017,db2/farm?replicaSet=rs0").unwrap();
    let described = describe(&with);
    assert_eq!(described, "db1:27017,db2:27017/farm");
    assert!(!described.contains("secret"), "no credentials in messages");
    let without = ConnectionString::parse("mongodb://db").unwrap();
    assert_eq!(describe(&without), "db:27017/renderfarm");
}
