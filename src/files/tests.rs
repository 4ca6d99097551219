//! The rules of [`Files`] over the local backend. The GridFS backend runs
//! the same checks through the MongoDB stand-in (`tests/files_gridfs.rs`).

use std::sync::Arc;

use super::conformance::{body, cut_body, sha_of};
use super::local::LocalFiles;
use super::*;

fn local(dir: &std::path::Path, limits: StorageLimits) -> Files {
    Files::new(
        Arc::new(LocalFiles::open(dir).unwrap()),
        FileSettings {
            limits,
            grace: Duration::hours(1),
        },
    )
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

#[tokio::test]
async fn the_local_backend_keeps_only_checked_files_and_resumes_cut_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let files = local(dir.path(), StorageLimits::default());
    super::conformance::a_backend_keeps_only_checked_files_and_resumes_cut_uploads(&files).await;
    // Nothing half-written is left in the stored files' folders.
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        names.push(entry.unwrap().file_name().into_string().unwrap());
    }
    assert!(names.contains(&"partial".to_string()));
}

#[tokio::test]
async fn the_size_limit_and_the_quota_refuse_before_anything_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let files = local(
        dir.path(),
        StorageLimits {
            max_file_size: 1000,
            quota: Some(1500),
        },
    );
    let big = vec![1u8; 1001];
    let err = files
        .upload(&sha_of(&big), UploadPart::whole(1001), body(&big), now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, FilesError::Refused(UploadRefusal::TooLarge { .. })),
        "{err}"
    );
    let a = vec![2u8; 1000];
    files
        .upload(&sha_of(&a), UploadPart::whole(1000), body(&a), now())
        .await
        .unwrap();
    let b = vec![3u8; 600];
    let err = files
        .upload(&sha_of(&b), UploadPart::whole(600), body(&b), now())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FilesError::Refused(UploadRefusal::QuotaExceeded { used: 1000, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--storage-quota"), "{err}");
    assert_eq!(files.state(&sha_of(&b)).await.unwrap(), FileState::Absent);
    // A file that fits still goes in, and the count survives a restart.
    let c = vec![4u8; 500];
    files
        .upload(&sha_of(&c), UploadPart::whole(500), body(&c), now())
        .await
        .unwrap();
    let reopened = LocalFiles::open(dir.path()).unwrap();
    assert_eq!(reopened.used().await.unwrap(), 1500);
}

#[tokio::test]
async fn the_collector_frees_unreferenced_files_and_partials_after_the_grace() {
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db")).unwrap();
    let files = local(&dir.path().join("files"), StorageLimits::default());
    let kept = b"a blend a render uses".to_vec();
    let loose = b"uploaded, never submitted".to_vec();
    for data in [&kept, &loose] {
        files
            .upload(
                &sha_of(data),
                UploadPart::whole(data.len() as u64),
                body(data),
                now(),
            )
            .await
            .unwrap();
    }
    let partial = sha_of(b"never finished");
    let _ = files
        .upload(&partial, UploadPart::whole(14), cut_body(b"never"), now())
        .await;
    let mut new =
        crate::store::conformance::plan("uses", 1, 1, 1, renderfarm_wire::Priority::Normal, now());
    new.render.blend_sha256 = Some(sha_of(&kept).to_string());
    store.create_render(new).await.unwrap();

    // Within the grace: nothing goes.
    let within = files.collect(&store, now()).await.unwrap();
    assert_eq!(within, Collected::default());
    let later = now() + Duration::hours(2);
    let collected = files.collect(&store, later).await.unwrap();
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

#[tokio::test]
async fn a_file_put_to_use_again_starts_its_grace_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("db")).unwrap();
    let files = local(&dir.path().join("files"), StorageLimits::default());
    let data = b"uploaded yesterday".to_vec();
    let sha = sha_of(&data);
    files
        .upload(
            &sha,
            UploadPart::whole(data.len() as u64),
            body(&data),
            now(),
        )
        .await
        .unwrap();
    let later = now() + Duration::minutes(90);
    files.touch(&sha, later).await.unwrap();
    let collected = files
        .collect(&store, later + Duration::minutes(30))
        .await
        .unwrap();
    assert_eq!(collected, Collected::default());
}
