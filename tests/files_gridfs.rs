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

/// A broker of its own data directory on the shared database.
async fn broker(uri: &str, admin: &str, enrolment: &str) -> (String, tempfile::TempDir) {
    use renderfarm::startup::{Application, Settings, StoreChoice};
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new("127.0.0.1:0", dir.path(), StoreChoice::MongoDb(uri.into()));
    settings.bootstrap = renderfarm::credentials::Bootstrap {
        admin_secret: Some(admin.into()),
        enrolment_secret: Some(enrolment.into()),
    };
    settings.scheduler.periodic = false;
    let app = Application::build(settings).await.expect("broker builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let client = renderfarm_client::http_client_builder().build().unwrap();
    for _ in 0..300 {
        let ready = client.get(format!("{address}/ready")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return (address, dir);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the broker at {address} never became ready");
}

fn secret() -> String {
    renderfarm::domain::secret_from(renderfarm::credentials::random_bytes().unwrap())
}

/// Two brokers, each with its own data directory and nothing in common but
/// the database: a blend cut off on one is resumed on the other, a worker
/// fetches it from either, sends its frames to one and completes on the
/// other, and both serve the frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brokers_share_files_without_a_shared_directory() {
    use reqwest::StatusCode;
    use serde_json::{json, Value};
    use tokio::io::AsyncWriteExt;

    let Some(target) = renderfarm_testkit::mongodb_for_tests("files across two brokers") else {
        return;
    };
    let database = format!("renderfarm_test_{}", uuid::Uuid::new_v4().simple());
    let uri = format!("{}/{database}", target.uri().trim_end_matches('/'));
    let _cleanup = Harness {
        store: MongoStore::connect(target.uri(), Some(&database))
            .await
            .unwrap(),
        database: database.clone(),
        uri: target.uri().to_string(),
    };
    let (admin, enrolment) = (secret(), secret());
    let (a, _dir_a) = broker(&uri, &admin, &enrolment).await;
    let (b, _dir_b) = broker(&uri, &admin, &enrolment).await;
    let http = renderfarm_client::http_client_builder().build().unwrap();

    let blend: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    let sha = sha_of(&blend).to_string();
    // Cut off at A after 1 MB.
    let address = a.trim_start_matches("http://").to_string();
    let mut raw = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "PUT /files/{sha} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {admin}\r\nContent-Length: {}\r\n\r\n",
        blend.len()
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    raw.write_all(&blend[..1_000_000]).await.unwrap();
    raw.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(raw);
    let mut offset = None;
    for _ in 0..100 {
        let answer = http
            .head(format!("{b}/files/{sha}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        offset = answer
            .headers()
            .get("upload-offset")
            .map(|v| v.to_str().unwrap().to_string());
        if offset.as_deref() == Some("1000000") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(offset.as_deref(), Some("1000000"), "B sees what A kept");
    let rest = http
        .put(format!("{b}/files/{sha}"))
        .bearer_auth(&admin)
        .header("content-range", "bytes 1000000-2999999/3000000")
        .body(blend[1_000_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::CREATED);

    let render: Value = http
        .post(format!("{a}/renders"))
        .bearer_auth(&admin)
        .json(&json!({"name": "shared", "blend_file": "shot.blend", "blend_sha256": sha, "frame_start": 1, "frame_end": 2, "chunk_size": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let render_id = render["id"].as_str().unwrap().to_string();
    let worker: Value = http
        .post(format!("{b}/workers"))
        .bearer_auth(&enrolment)
        .json(&json!({"name": "w"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (worker_id, worker_secret) = (
        worker["id"].as_str().unwrap().to_string(),
        worker["secret"].as_str().unwrap().to_string(),
    );
    let assignment: Value = http
        .post(format!("{a}/workers/{worker_id}/request-task"))
        .bearer_auth(&worker_secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(assignment["blend_sha256"], sha);
    let fetched = http
        .get(format!("{b}/files/{sha}"))
        .bearer_auth(&worker_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert!(
        fetched.bytes().await.unwrap() == blend,
        "the blend, byte for byte"
    );

    let (task, lease) = (
        assignment["task_id"].as_str().unwrap(),
        assignment["lease_id"].as_str().unwrap(),
    );
    for (frame, broker) in [(1, &b), (2, &a)] {
        let image: Vec<u8> = vec![frame as u8; 5000 + frame];
        let stored = http
            .put(format!("{broker}/tasks/{task}/frames/{frame}"))
            .bearer_auth(&worker_secret)
            .query(&[
                ("lease_id", lease.to_string()),
                ("sha256", sha_of(&image).to_string()),
                ("name", format!("frame_{frame:04}.png")),
            ])
            .body(image)
            .send()
            .await
            .unwrap();
        assert_eq!(stored.status(), StatusCode::CREATED);
    }
    let done = http
        .post(format!("{a}/tasks/{task}/complete"))
        .bearer_auth(&worker_secret)
        .json(&json!({"lease_id": lease}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    for broker in [&a, &b] {
        let list: Value = http
            .get(format!("{broker}/renders/{render_id}/frames"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["frames"].as_array().unwrap().len(), 2, "{list}");
        let frame = http
            .get(format!("{broker}/renders/{render_id}/frames/2"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(frame.len(), 5002);
    }
}
