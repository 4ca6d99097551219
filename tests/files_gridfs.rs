//! The GridFS file storage (issue 13) against MongoDB: a real server when
//! `TEST_MONGODB_URI` names one, otherwise the in-memory stand-in (a test
//! double; see `renderfarm-testkit`). The same rules as the local backend
//! (`renderfarm::files::conformance`), plus what only a shared storage
//! shows: an upload begun through one broker resumes through another, and
//! the collector frees what no render of the shared store refers to.

use std::sync::Arc;

use chrono::{Duration, Utc};
use renderfarm::domain::files::{StorageLimits, UploadPart};
use renderfarm::files::conformance::{body, cut_body, sha_of};
use renderfarm::files::gridfs::GridFiles;
use renderfarm::files::{collect_bytes, FileSettings, FileState, Files, FilesError, Uploaded};
use renderfarm::store::mongodb::MongoStore;
use renderfarm::store::Store;

struct Harness {
    store: MongoStore,
    database: String,
    uri: String,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let (uri, database) = (self.uri.clone(), self.database.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let client = mongodb::Client::with_uri_str(&uri).await?;
                client.database(&database).drop().await
            })
        })
        .join();
    }
}

async fn fresh(what: &str) -> Option<Harness> {
    let target = renderfarm_testkit::mongodb_for_tests(what)?;
    let uri = target.uri().to_string();
    let database = format!("renderfarm_test_{}", uuid::Uuid::new_v4().simple());
    let store = MongoStore::connect(&uri, Some(&database))
        .await
        .unwrap_or_else(|e| panic!("MongoDB at {uri} does not answer: {e}"));
    store.migrate().await.expect("migrations apply");
    Some(Harness {
        store,
        database,
        uri,
    })
}

fn files_of(store: &MongoStore, limits: StorageLimits) -> Files {
    Files::new(
        Arc::new(GridFiles::new(store.clone())),
        FileSettings {
            limits,
            grace: Duration::hours(1),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gridfs_keeps_only_checked_files_and_resumes_cut_uploads() {
    let Some(h) = fresh("GridFS file storage").await else {
        return;
    };
    let files = files_of(&h.store, StorageLimits::default());
    renderfarm::files::conformance::a_backend_keeps_only_checked_files_and_resumes_cut_uploads(
        &files,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_at_one_broker_resumes_at_another_across_parts_and_chunks() {
    let Some(h) = fresh("GridFS across brokers").await else {
        return;
    };
    // Two brokers: two storages over one database.
    let first = files_of(&h.store, StorageLimits::default());
    let second = files_of(&h.store, StorageLimits::default());
    // Over one part (4 MiB) and many GridFS chunks (255 KiB).
    let data: Vec<u8> = (0..9_500_000u32).map(|i| (i % 253) as u8).collect();
    let sha = sha_of(&data);
    let total = data.len() as u64;
    let err = first
        .upload(
            &sha,
            UploadPart::whole(total),
            cut_body(&data[..5_000_000]),
            Utc::now(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FilesError::Cut {
                received: 5_000_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        second.state(&sha).await.unwrap(),
        FileState::Partial {
            received: 5_000_000,
            total
        }
    );
    let rest = UploadPart {
        start: 5_000_000,
        len: total - 5_000_000,
        total,
    };
    let answer = second
        .upload(&sha, rest, body(&data[5_000_000..]), Utc::now())
        .await
        .unwrap();
    assert!(matches!(answer, Uploaded::Stored(_)), "{answer:?}");
    assert_eq!(
        first.state(&sha).await.unwrap(),
        FileState::Stored { bytes: total }
    );
    // Read back whole, and from an offset inside a chunk.
    let (_, stream) = first.read(&sha, 0).await.unwrap().unwrap();
    assert!(collect_bytes(stream).await.unwrap() == data);
    let (_, stream) = first.read(&sha, 300_001).await.unwrap().unwrap();
    assert!(collect_bytes(stream).await.unwrap() == data[300_001..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_counts_what_every_broker_stored() {
    let Some(h) = fresh("GridFS quota").await else {
        return;
    };
    let limits = StorageLimits {
        max_file_size: 10_000,
        quota: Some(10_000),
    };
    let first = files_of(&h.store, limits);
    let second = files_of(&h.store, limits);
    let a = vec![1u8; 6000];
    first
        .upload(&sha_of(&a), UploadPart::whole(6000), body(&a), Utc::now())
        .await
        .unwrap();
    let b = vec![2u8; 6000];
    let err = second
        .upload(&sha_of(&b), UploadPart::whole(6000), body(&b), Utc::now())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--storage-quota"), "{err}");
    assert_eq!(second.state(&sha_of(&b)).await.unwrap(), FileState::Absent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_frees_what_no_render_refers_to_after_the_grace() {
    let Some(h) = fresh("GridFS collector").await else {
        return;
    };
    let files = files_of(&h.store, StorageLimits::default());
    let kept = b"the blend of a render".to_vec();
    let loose = b"uploaded and forgotten".to_vec();
    for data in [&kept, &loose] {
        files
            .upload(
                &sha_of(data),
                UploadPart::whole(data.len() as u64),
                body(data),
                Utc::now(),
            )
            .await
            .unwrap();
    }
    let partial = sha_of(b"never finished upload");
    let _ = files
        .upload(
            &partial,
            UploadPart::whole(21),
            cut_body(b"never"),
            Utc::now(),
        )
        .await;
    let mut new = renderfarm::store::conformance::plan(
        "uses",
        1,
        1,
        1,
        renderfarm_wire::Priority::Normal,
        Utc::now(),
    );
    new.render.blend_sha256 = Some(sha_of(&kept).to_string());
    h.store.create_render(new).await.unwrap();

    let now = Utc::now();
    assert_eq!(files.collect(&h.store, now).await.unwrap().files, 0);
    let collected = files
        .collect(&h.store, now + Duration::hours(2))
        .await
        .unwrap();
    assert_eq!((collected.files, collected.partials), (1, 1));
    assert!(matches!(
        files.state(&sha_of(&kept)).await.unwrap(),
        FileState::Stored { .. }
    ));
    assert_eq!(
        files.state(&sha_of(&loose)).await.unwrap(),
        FileState::Absent
    );
    assert_eq!(files.state(&partial).await.unwrap(), FileState::Absent);
}
