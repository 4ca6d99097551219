//! The store conformance suite against the embedded SQLite backend, each test
//! on a fresh database file in its own temporary directory.

use std::sync::Arc;

use renderfarm::store::sqlite::SqliteStore;
use renderfarm::store::Store;

struct Harness {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn fresh_store() -> Option<Harness> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open sqlite store");
    Some(Harness {
        store: Arc::new(store),
        _dir: dir,
    })
}

renderfarm::conformance_tests!(fresh_store());

#[tokio::test]
async fn reopening_the_store_keeps_what_was_committed_and_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now();
    let created = {
        let store = SqliteStore::open(dir.path()).unwrap();
        let plan = renderfarm::store::conformance::plan(
            "keep",
            1,
            20,
            5,
            renderfarm::wire::Priority::High,
            now,
        );
        store.create_render(plan).await.unwrap()
    };
    let store = SqliteStore::open(dir.path()).unwrap();
    let again = store.get_render(created.id).await.unwrap();
    assert_eq!(again.name, created.name);
    assert_eq!(again.progress, created.progress);
    assert_eq!(
        again.created_at.timestamp_micros(),
        created.created_at.timestamp_micros()
    );
}
