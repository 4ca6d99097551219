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

#[tokio::test]
async fn a_render_bigger_than_a_write_batch_is_created_and_deleted_whole() {
    use renderfarm::domain::RenderCommand;
    use renderfarm::store::PageRequest;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let now = chrono::Utc::now();
    // Several write batches' worth of tasks, and one more.
    let plan = renderfarm::store::conformance::plan(
        "big",
        1,
        5_001,
        1,
        renderfarm::wire::Priority::Normal,
        now,
    );
    let render = store.create_render(plan).await.unwrap();
    assert_eq!(render.progress.tasks_total, 5_001);
    assert_eq!(render.progress.tasks_pending, 5_001);
    let page = PageRequest {
        limit: 1,
        offset: 0,
    };
    let tasks = store.list_tasks(render.id, None, page).await.unwrap();
    assert_eq!(tasks.total, 5_001, "every batch is in");

    store
        .change_render(render.id, RenderCommand::Cancel, None, now)
        .await
        .unwrap();
    store.delete_render(render.id).await.unwrap();
    assert!(store.get_render(render.id).await.is_err());
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let left: i64 = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM tasks) + (SELECT COUNT(*) FROM renders)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "no row of it is left");
}
