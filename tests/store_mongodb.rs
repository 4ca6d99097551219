//! The store conformance suite against MongoDB: a real server when
//! `TEST_MONGODB_URI` names one (the GitHub workflow's `mongo:7`), otherwise
//! the in-memory stand-in that `renderfarm-testkit` starts (a test double: an
//! npm server behind a serialising proxy; `npm ci --prefix .ci` installs it).
//! Each test gets a database of its own, migrated, and dropped afterwards.
//! Tests only a real server can prove print SKIPPED on the stand-in (and
//! fail there when `RENDERFARM_REQUIRE_MONGODB_SERVER` is set); with neither
//! server, every test prints SKIPPED (and fails when
//! `RENDERFARM_REQUIRE_MONGODB` is set, as in `.ci/run`).

use std::io::Write;
use std::sync::Arc;

use renderfarm::store::mongodb::MongoStore;
use renderfarm::store::Store;

struct Harness {
    store: Arc<dyn Store>,
    uri: String,
    database: String,
    target: renderfarm_testkit::MongoTarget,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime (or while it unwinds); a thread
        // with a runtime of its own can block on the cleanup either way.
        let (uri, database) = (self.uri.clone(), self.database.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            runtime.block_on(async {
                let store = MongoStore::connect(&uri, Some(&database)).await?;
                store.drop_database().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(
                std::io::stderr(),
                "warning: could not drop the test database {}",
                self.database
            );
        }
    }
}

/// Conformance tests that a serialising proxy cannot fail (the stand-in runs
/// one command at a time), so they prove something only on a real server.
const RACES: &[&str] = &["concurrent_claimers_get_every_task_exactly_once"];

async fn fresh_store(test: &str) -> Option<Harness> {
    let target = renderfarm_testkit::mongodb_for_tests("MongoDB conformance")?;
    if RACES.contains(&test) && !target.real_server_or_skip(test) {
        return None;
    }
    let uri = target.uri().to_string();
    let database = format!("renderfarm_test_{}", uuid::Uuid::new_v4().simple());
    let store = MongoStore::connect(&uri, Some(&database))
        .await
        .unwrap_or_else(|e| panic!("MongoDB at {uri} does not answer: {e}"));
    let applied = store.migrate().await.expect("migrations apply");
    assert!(
        !applied.is_empty(),
        "a fresh database takes every migration"
    );
    Some(Harness {
        store: Arc::new(store),
        uri,
        database,
        target,
    })
}

renderfarm::conformance_tests!(fresh_store);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_twice_change_nothing() {
    let Some(harness) = fresh_store("migrations_run_twice_change_nothing").await else {
        return;
    };
    let store = MongoStore::connect(&harness.uri, Some(&harness.database))
        .await
        .unwrap();
    assert_eq!(
        store.migrate().await.unwrap(),
        Vec::<&str>::new(),
        "everything was applied already"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validators_reject_a_document_of_the_wrong_shape() {
    let Some(harness) = fresh_store("the_validators_reject_a_document_of_the_wrong_shape").await
    else {
        return;
    };
    // The stand-in accepts validators without enforcing them.
    if !harness
        .target
        .real_server_or_skip("validators rejecting a bad document")
    {
        return;
    }
    let client = mongodb::Client::with_uri_str(&harness.uri).await.unwrap();
    let renders = client
        .database(&harness.database)
        .collection::<bson::Document>("renders");
    let err = renders
        .insert_one(bson::doc! { "_id": "x", "status": "exploded" })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("validation"), "{err}");
}

/// Commands the driver sends, by name, while counting is on.
#[derive(Default)]
struct CommandCount {
    counting: std::sync::atomic::AtomicBool,
    names: std::sync::Mutex<Vec<String>>,
}

impl CommandCount {
    /// Counts the commands `operation` sends; their names in order.
    async fn during<T>(&self, operation: impl std::future::Future<Output = T>) -> (T, Vec<String>) {
        self.names.lock().unwrap().clear();
        self.counting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let out = operation.await;
        self.counting
            .store(false, std::sync::atomic::Ordering::SeqCst);
        (out, std::mem::take(&mut *self.names.lock().unwrap()))
    }
}

/// The MongoDB commands a claim and each report cost, in the common case (no
/// other claimer, no render status change beyond the first claim's), each
/// report with a line of log, as agents send them. Issue 10 aims at two each;
/// these ceilings are what the store needs today (they were 6 for a claim and
/// 6 for a report before the claim trusted a unique index and reports stopped
/// reading the task before and after), and keep the count from creeping up. A change that lowers a count lowers its
/// ceiling. What is left: the worker's sign of life on a claim, the history
/// line (its own collection: the stand-in has no `$push` to keep it in the
/// task), and the log chunk. A completion reported to another broker than
/// the one that handed the task out also reads the task's frame count (an
/// update cannot set one field from others without a pipeline update, which
/// the stand-in lacks too); the broker that handed it out remembers it.
/// The event log added nothing: each status change writes its event into
/// the task's or render's outbox in the update that makes the change (4, 3,
/// 4 and 4 before the event log and after). The warm preference (issue 17)
/// added one read to the claim of a worker that claimed before: the head of
/// the claim index, without which the store cannot tell whether the
/// worker's last render may be preferred (a claim takes the head at once,
/// and a single-document filter cannot say "no higher priority elsewhere").
/// Its write of the worker's warm state happens only when the state
/// changes, which it does not here (the worker stays on its render).
/// The blocklist (issue 16) added one read to every claim (the renders its
/// worker is blocked from, one read of a partial index that is empty while
/// nobody is blocked) and three to a chunk's failure (the render's
/// threshold, the worker's entry, its upsert): failures are rare next to
/// claims.
const CLAIM_CEILING: usize = 6;
const PROGRESS_CEILING: usize = 3;
const COMPLETE_CEILING: usize = 4;
const FAIL_CEILING: usize = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_reports_cost_a_bounded_number_of_mongodb_commands() {
    use renderfarm::domain::TaskReport;
    use renderfarm::store::conformance::{plan, worker};
    use renderfarm::wire::Priority;

    let Some(harness) =
        fresh_store("claims_and_reports_cost_a_bounded_number_of_mongodb_commands").await
    else {
        return;
    };
    let count = Arc::new(CommandCount::default());
    let seen = count.clone();
    let handler = mongodb::event::EventHandler::callback(move |event| {
        if let mongodb::event::command::CommandEvent::Started(started) = event {
            if seen.counting.load(std::sync::atomic::Ordering::SeqCst) {
                seen.names.lock().unwrap().push(started.command_name);
            }
        }
    });
    let store = MongoStore::connect_observed(&harness.uri, Some(&harness.database), Some(handler))
        .await
        .unwrap();
    let now = chrono::Utc::now();
    store
        .create_render(plan("counted", 1, 40, 10, Priority::Normal, now))
        .await
        .unwrap();
    let w = worker(&store, "counted", &[]).await;
    // The first claim also starts the render (one status write more than the
    // steady state); measure a later one.
    let first = store.claim_next_task(w, now).await.unwrap().unwrap();
    store
        .report_task(
            first.task_id,
            first.lease_id,
            TaskReport::Complete,
            None,
            now,
        )
        .await
        .unwrap();

    let (claimed, claim) = count.during(store.claim_next_task(w, now)).await;
    let a = claimed.unwrap().expect("a task");
    let (_, progress) = count
        .during(store.report_task(
            a.task_id,
            a.lease_id,
            TaskReport::Progress { frames_done: 3 },
            Some("Fra:3\n".into()),
            now,
        ))
        .await;
    let (_, complete) = count
        .during(store.report_task(
            a.task_id,
            a.lease_id,
            TaskReport::Complete,
            Some("Saved: frame_0010.png\n".into()),
            now,
        ))
        .await;
    let b = store.claim_next_task(w, now).await.unwrap().unwrap();
    let (_, fail) = count
        .during(store.report_task(
            b.task_id,
            b.lease_id,
            TaskReport::Fail {
                exit_code: Some(1),
                reason: "exit 1".into(),
            },
            Some("Error: out of memory\n".into()),
            now,
        ))
        .await;
    let _ = writeln!(
        std::io::stderr(),
        "MongoDB commands: claim {} {claim:?}; progress {} {progress:?}; complete {} {complete:?}; fail {} {fail:?}",
        claim.len(),
        progress.len(),
        complete.len(),
        fail.len()
    );
    assert!(claim.len() <= CLAIM_CEILING, "a claim costs {claim:?}");
    assert!(
        progress.len() <= PROGRESS_CEILING,
        "a progress report costs {progress:?}"
    );
    assert!(
        complete.len() <= COMPLETE_CEILING,
        "a completion costs {complete:?}"
    );
    assert!(fail.len() <= FAIL_CEILING, "a failure costs {fail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_broker_left_half_written_is_settled_once_its_marker_is_stale() {
    use bson::{doc, Document};
    use renderfarm::store::conformance::{plan, worker};
    use renderfarm::wire::Priority;

    let Some(harness) =
        fresh_store("what_a_broker_left_half_written_is_settled_once_its_marker_is_stale").await
    else {
        return;
    };
    let store = &harness.store;
    let client = mongodb::Client::with_uri_str(&harness.uri).await.unwrap();
    let db = client.database(&harness.database);
    let markers = db.collection::<Document>("renders_in_writing");
    let tasks = db.collection::<Document>("tasks");
    let t0 = chrono::Utc::now();

    // Two renders written whole; a finished write leaves no marker.
    let lost = store
        .create_render(plan("lost", 1, 30, 10, Priority::Normal, t0))
        .await
        .unwrap();
    let unreleased = store
        .create_render(plan("unreleased", 1, 30, 10, Priority::Normal, t0))
        .await
        .unwrap();
    assert_eq!(markers.count_documents(doc! {}).await.unwrap(), 0);

    // What a broker that died mid-write leaves: for the first, tasks without
    // their render; for the second, a render whose tasks were never released.
    // Each with the marker its writer last refreshed at t0.
    db.collection::<Document>("renders")
        .delete_one(doc! { "_id": lost.id.to_string() })
        .await
        .unwrap();
    for id in [lost.id, unreleased.id] {
        // Tasks are written not runnable; only a stored render releases them.
        tasks
            .update_many(
                doc! { "render_id": id.to_string() },
                doc! { "$set": { "runnable": false, "runnable_version": -1_i64 } },
            )
            .await
            .unwrap();
        markers
            .insert_one(doc! { "_id": id.to_string(), "alive_at": bson::DateTime::from_chrono(t0) })
            .await
            .unwrap();
    }
    let w = worker(&**store, "after", &[]).await;
    assert!(
        store.claim_next_task(w, t0).await.unwrap().is_none(),
        "nothing of either is claimable"
    );

    // A writer may be slow: within its allowance nothing is touched.
    let soon = t0 + chrono::Duration::minutes(5);
    assert_eq!(store.clear_abandoned_writes(soon).await.unwrap(), 0);
    assert_eq!(
        tasks
            .count_documents(doc! { "render_id": lost.id.to_string() })
            .await
            .unwrap(),
        3
    );

    let late = t0 + chrono::Duration::minutes(11);
    assert_eq!(store.clear_abandoned_writes(late).await.unwrap(), 2);
    assert_eq!(
        tasks
            .count_documents(doc! { "render_id": lost.id.to_string() })
            .await
            .unwrap(),
        0,
        "the tasks of the render never stored are gone"
    );
    let claimed = store
        .claim_next_task(w, late)
        .await
        .unwrap()
        .expect("a task");
    assert_eq!(
        claimed.render_id, unreleased.id,
        "the stored render's tasks are released"
    );
    assert_eq!(markers.count_documents(doc! {}).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_split_a_broker_left_half_done_is_finished_by_the_next_tick() {
    use renderfarm::domain::ChunkSize;
    use renderfarm::store::conformance::{
        all_tasks, assert_every_frame_once, plan_auto, render_one, worker,
    };
    use renderfarm::store::mongodb::ResplitStep;
    use renderfarm::wire::{FrameOrder, TaskStatus};

    let Some(harness) =
        fresh_store("a_re_split_a_broker_left_half_done_is_finished_by_the_next_tick").await
    else {
        return;
    };
    let store = &harness.store;
    // The broker that dies midway, on the same database.
    let dying = MongoStore::connect(&harness.uri, Some(&harness.database))
        .await
        .unwrap();
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let w = worker(&**store, "w", &[]).await;
    for (i, step) in [
        ResplitStep::Marked,
        ResplitStep::Inserted,
        ResplitStep::Deleted,
    ]
    .into_iter()
    .enumerate()
    {
        let render = store
            .create_render(plan_auto(
                &format!("half-{i}"),
                (1, 30),
                10,
                FrameOrder::Sequential,
            ))
            .await
            .unwrap()
            .id;
        // Both probes done (2 s a frame): chunks of 5 are due.
        render_one(&**store, w, t0, 2).await;
        render_one(&**store, w, t0, 2).await;
        dying
            .resplit_until(render, ChunkSize::new(5).unwrap(), 2.0, step, t0)
            .await
            .unwrap();
        // Meanwhile a worker claims: never a task being replaced, and
        // never a frame twice.
        let claimed = store.claim_next_task(w, t0).await.unwrap();
        if let Some(a) = &claimed {
            assert_eq!(a.render_id, render);
        }
        assert_eq!(
            store.recount_tallies(t0).await.unwrap(),
            0,
            "the recount leaves a render mid-re-split alone ({step:?})"
        );
        assert_eq!(
            store.finish_resplits(t0).await.unwrap(),
            0,
            "a re-split another broker may still be making is left to it"
        );
        // The next tick of a broker's scheduler, past the grace.
        let clock = std::sync::Arc::new(renderfarm::clock::ManualClock::new(
            t0 + chrono::Duration::seconds(61),
        ));
        let scheduler = renderfarm::scheduler::Scheduler::new(
            store.clone(),
            clock,
            renderfarm::scheduler::SchedulerSettings {
                periodic: false,
                // The worker keeps its task through the minute skipped.
                worker_timeout: chrono::Duration::hours(1),
                ..Default::default()
            },
            Default::default(),
        );
        let report = scheduler.tick().await.unwrap();
        assert_eq!(report.resplit, 1, "the next tick finishes it ({step:?})");
        assert_eq!(scheduler.tick().await.unwrap().resplit, 0);
        assert_every_frame_once(&**store, render, (1, 30)).await;
        let tasks = all_tasks(&**store, render).await;
        if let Some(a) = &claimed {
            let task = tasks.iter().find(|t| t.id == a.task_id).expect("kept");
            assert_eq!(task.status, TaskStatus::Running, "{step:?}");
        }
        let pending: Vec<i64> = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Pending)
            .map(|t| t.frame_end - t.frame_start + 1)
            .collect();
        assert!(
            pending.iter().all(|n| *n <= 5) && pending.iter().filter(|n| **n == 5).count() >= 4,
            "pending chunks of 5 after {step:?}: {pending:?}"
        );
        let r = store.get_render(render).await.unwrap();
        assert_eq!(r.chunk_size, 5, "{step:?}");
        assert_eq!(r.measured_frame_seconds, Some(2.0));
        assert_eq!(r.progress.tasks_total as usize, tasks.len(), "{step:?}");
        assert_eq!(
            store.recount_tallies(t0).await.unwrap(),
            0,
            "counters exact after {step:?}"
        );
        // Finish it so the next round's claims go to the next render.
        while let Some(a) = store.claim_next_task(w, t0).await.unwrap() {
            store
                .report_task(
                    a.task_id,
                    a.lease_id,
                    renderfarm::domain::TaskReport::Complete,
                    None,
                    t0,
                )
                .await
                .unwrap();
        }
        assert_eq!(
            store.get_render(render).await.unwrap().progress.frames_done,
            30
        );
    }
}
