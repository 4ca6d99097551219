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
