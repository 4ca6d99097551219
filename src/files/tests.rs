//! The rules of [`Files`] over the local backend. The GridFS backend runs
//! the same checks through the MongoDB stand-in (`tests/files_gridfs.rs`).

use std::sync::Arc;

use super::local::LocalFiles;
use super::*;

fn sha_of(data: &[u8]) -> Sha256 {
    Sha256::from_digest(&sha2::Sha256::digest(data))
}

fn body(data: &[u8]) -> ByteStream {
    let pieces: Vec<std::io::Result<Bytes>> = data
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(pieces))
}

/// A body that breaks after `data`, as a dropped connection does.
fn cut_body(data: &[u8]) -> ByteStream {
    let mut pieces: Vec<std::io::Result<Bytes>> = vec![Ok(Bytes::copy_from_slice(data))];
    pieces.push(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset",
    )));
    Box::pin(futures::stream::iter(pieces))
}

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

/// The rules every backend must follow; `files` is fresh and empty, with
/// no quota and a size limit of at least 1 MB.
pub(crate) async fn a_backend_keeps_only_checked_files_and_resumes_cut_uploads(files: &Files) {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let sha = sha_of(&data);
    assert_eq!(files.state(&sha).await.unwrap(), FileState::Absent);

    // Hash mismatch: 400, nothing kept.
    let wrong = sha_of(b"something else");
    let err = files
        .upload(
            &wrong,
            UploadPart::whole(data.len() as u64),
            body(&data),
            now(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, FilesError::Invalid(ref v) if v.field == "sha256"),
        "{err}"
    );
    assert_eq!(files.state(&wrong).await.unwrap(), FileState::Absent);
    // Fewer bytes than declared: 400, nothing kept.
    let err = files
        .upload(
            &sha,
            UploadPart::whole(data.len() as u64 + 1),
            body(&data),
            now(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, FilesError::Invalid(ref v) if v.field == "body"),
        "{err}"
    );
    assert_eq!(files.state(&sha).await.unwrap(), FileState::Absent);
    // More bytes than declared: 400, nothing kept.
    let err = files
        .upload(&sha, UploadPart::whole(10), body(&data), now())
        .await
        .unwrap_err();
    assert!(matches!(err, FilesError::Invalid(_)), "{err}");
    assert_eq!(files.state(&sha).await.unwrap(), FileState::Absent);

    // Cut after 100,000 bytes: kept, invisible.
    let total = data.len() as u64;
    let err = files
        .upload(
            &sha,
            UploadPart::whole(total),
            cut_body(&data[..100_000]),
            now(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FilesError::Cut {
                received: 100_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        files.state(&sha).await.unwrap(),
        FileState::Partial {
            received: 100_000,
            total
        }
    );
    assert!(files.read(&sha, 0).await.unwrap().is_none(), "invisible");
    // A part from the wrong offset: refused with the real one.
    let wrong_start = UploadPart {
        start: 50_000,
        len: total - 50_000,
        total,
    };
    let err = files
        .upload(&sha, wrong_start, body(&data[50_000..]), now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, FilesError::Resume(r) if r.received() == 100_000),
        "{err}"
    );
    // A whole upload again is a part from 0: refused the same way.
    assert!(matches!(
        files
            .upload(&sha, UploadPart::whole(total), body(&data), now())
            .await,
        Err(FilesError::Resume(_))
    ));
    // One more part, not the end: 202.
    let middle = UploadPart {
        start: 100_000,
        len: 100_000,
        total,
    };
    let answer = files
        .upload(&sha, middle, body(&data[100_000..200_000]), now())
        .await
        .unwrap();
    assert_eq!(
        answer,
        Uploaded::Partial(FileUpload {
            sha256: sha.to_string(),
            bytes: total,
            received: 200_000
        })
    );
    // The last part: hashed whole (read back), stored.
    let last = UploadPart {
        start: 200_000,
        len: total - 200_000,
        total,
    };
    let answer = files
        .upload(&sha, last, body(&data[200_000..]), now())
        .await
        .unwrap();
    let info = FileInfo {
        sha256: sha.to_string(),
        bytes: total,
    };
    assert_eq!(answer, Uploaded::Stored(info.clone()));
    assert_eq!(
        files.state(&sha).await.unwrap(),
        FileState::Stored { bytes: total }
    );
    let (size, stream) = files.read(&sha, 0).await.unwrap().unwrap();
    assert_eq!(size, total);
    assert_eq!(collect_bytes(stream).await.unwrap(), data);
    let (_, stream) = files.read(&sha, 123_457).await.unwrap().unwrap();
    assert_eq!(collect_bytes(stream).await.unwrap(), &data[123_457..]);
    // Again: stored already, the body is not read.
    let answer = files
        .upload(&sha, UploadPart::whole(total), body(b""), now())
        .await
        .unwrap();
    assert_eq!(answer, Uploaded::Already(info));

    // A resumed upload whose parts do not hash to the name: discarded.
    let other: Vec<u8> = vec![7; 5000];
    let named = sha_of(&[8; 5000]);
    let first = UploadPart {
        start: 0,
        len: 2000,
        total: 5000,
    };
    files
        .upload(&named, first, body(&other[..2000]), now())
        .await
        .unwrap();
    let rest = UploadPart {
        start: 2000,
        len: 3000,
        total: 5000,
    };
    let err = files
        .upload(&named, rest, body(&other[2000..]), now())
        .await
        .unwrap_err();
    assert!(matches!(err, FilesError::Invalid(_)), "{err}");
    assert_eq!(files.state(&named).await.unwrap(), FileState::Absent);

    // An empty file is a file.
    let empty = sha_of(b"");
    assert!(matches!(
        files
            .upload(&empty, UploadPart::whole(0), body(b""), now())
            .await,
        Ok(Uploaded::Stored(_))
    ));
    assert_eq!(
        files.state(&empty).await.unwrap(),
        FileState::Stored { bytes: 0 }
    );
}

#[tokio::test]
async fn the_local_backend_keeps_only_checked_files_and_resumes_cut_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let files = local(dir.path(), StorageLimits::default());
    a_backend_keeps_only_checked_files_and_resumes_cut_uploads(&files).await;
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
