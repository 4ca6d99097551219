//! The rules every file backend must follow, as plain async functions over
//! a fresh, empty [`Files`]: the local backend runs them in the crate's
//! tests, GridFS in `tests/files_gridfs.rs` through the MongoDB stand-in.
//! A test tool, absent from a build without the `conformance` feature.

use bytes::Bytes;
use chrono::Utc;
use renderfarm_wire::{FileInfo, FileUpload};
use sha2::Digest;

use super::*;

pub fn sha_of(data: &[u8]) -> Sha256 {
    Sha256::from_digest(&sha2::Sha256::digest(data))
}

/// `data` as a body, in pieces of 1000 bytes.
pub fn body(data: &[u8]) -> ByteStream {
    let pieces: Vec<std::io::Result<Bytes>> = data
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(pieces))
}

/// A body that breaks after `data`, as a dropped connection does.
pub fn cut_body(data: &[u8]) -> ByteStream {
    let pieces: Vec<std::io::Result<Bytes>> = vec![
        Ok(Bytes::copy_from_slice(data)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )),
    ];
    Box::pin(futures::stream::iter(pieces))
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// The rules every backend must follow; `files` is fresh and empty, with
/// no quota and a size limit of at least 1 MB.
pub async fn a_backend_keeps_only_checked_files_and_resumes_cut_uploads(files: &Files) {
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
