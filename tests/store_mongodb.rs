//! The store conformance suite against MongoDB, when `TEST_MONGODB_URI`
//! names one (e.g. `mongodb://localhost:27017`). Each test gets a database
//! of its own, migrated, and dropped afterwards. Without the variable every
//! test prints a visible SKIPPED line and passes: no MongoDB server can be
//! installed on our build machines; CI on GitHub runs these against a
//! `mongo:7` service.

use std::io::Write;
use std::sync::Arc;

use renderfarm::store::mongodb::MongoStore;
use renderfarm::store::Store;

struct Harness {
    store: Arc<dyn Store>,
    uri: String,
    database: String,
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

fn mongodb_uri_or_skip() -> Option<String> {
    match std::env::var("TEST_MONGODB_URI") {
        Ok(uri) if !uri.trim().is_empty() => Some(uri),
        _ => {
            // Written to the stderr handle itself, which the test harness does
            // not capture, so the skip shows in every run.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: MongoDB conformance: TEST_MONGODB_URI is not set (e.g. TEST_MONGODB_URI=mongodb://localhost:27017)"
            );
            None
        }
    }
}

async fn fresh_store() -> Option<Harness> {
    let uri = mongodb_uri_or_skip()?;
    let database = format!("renderfarm_test_{}", uuid::Uuid::new_v4().simple());
    let store = MongoStore::connect(&uri, Some(&database))
        .await
        .unwrap_or_else(|e| panic!("TEST_MONGODB_URI is set but MongoDB does not answer: {e}"));
    let applied = store.migrate().await.expect("migrations apply");
    assert!(
        !applied.is_empty(),
        "a fresh database takes every migration"
    );
    Some(Harness {
        store: Arc::new(store),
        uri,
        database,
    })
}

renderfarm::conformance_tests!(fresh_store());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_twice_change_nothing() {
    let Some(harness) = fresh_store().await else {
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
    let Some(harness) = fresh_store().await else {
        return;
    };
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
