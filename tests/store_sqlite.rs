//! The store conformance suite against the embedded SQLite backend, each test
//! on a fresh database file in its own temporary directory.

use std::sync::Arc;

use renderfarm::store::sqlite::SqliteStore;
use renderfarm::store::Store;

struct Harness {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn fresh_store(_test: &str) -> Option<Harness> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open sqlite store");
    Some(Harness {
        store: Arc::new(store),
        _dir: dir,
    })
}

renderfarm::conformance_tests!(fresh_store);

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

#[tokio::test]
async fn a_render_whose_pending_count_drifted_does_not_hide_the_next_render() {
    use renderfarm::store::conformance::{plan, worker};
    use renderfarm::wire::Priority;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let now = chrono::Utc::now();
    let high = store
        .create_render(plan("high", 1, 1, 1, Priority::High, now))
        .await
        .unwrap();
    let normal = store
        .create_render(plan("normal", 1, 1, 1, Priority::Normal, now))
        .await
        .unwrap();
    // The claim picks a render by its pending counter: make the high render's
    // say 1 while its only task is running elsewhere (a drift the
    // scheduler's recount would repair at its next tick).
    let other = worker(&store, "other", &[]).await;
    let first = store.claim_next_task(other, now).await.unwrap().unwrap();
    assert_eq!(first.render_id, high.id);
    rusqlite::Connection::open(dir.path().join(renderfarm::store::sqlite::DB_FILE))
        .unwrap()
        .execute(
            "UPDATE renders SET tasks_pending = 1 WHERE id = ?1",
            [high.id.to_string()],
        )
        .unwrap();
    let w = worker(&store, "w", &[]).await;
    let next = store
        .claim_next_task(w, now)
        .await
        .unwrap()
        .expect("a task");
    assert_eq!(
        next.render_id, normal.id,
        "the next render's chunk is found past the drifted one"
    );
}
