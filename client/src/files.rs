//! Files through the broker: content-addressed blends in (`/files/{sha256}`,
//! resumable both ways), rendered frames out (`/tasks/{id}/frames/…`,
//! `/renders/{id}/frames…`) and a render's video (`/tasks/{id}/video`,
//! `/renders/{id}/video`). Bodies are streamed from and to disk, never
//! held whole in memory: a blend may be many gigabytes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use renderfarm_wire::{FileInfo, FileUpload, FrameFile};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use uuid::Uuid;

use crate::{error, BrokerClient, ClientError};

/// How many times a transfer cut off halfway is taken up again from where it
/// stopped before the error is returned.
pub const TRANSFER_ATTEMPTS: u32 = 5;
/// The bytes read from disk at a time for a body or a hash.
const CHUNK: usize = 1 << 20;
/// How often a transfer's progress callback is told how far it got.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// The pause before taking a cut transfer up again, doubled each time.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// What the broker holds of one content-addressed file (`HEAD /files/{sha256}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Stored and verified.
    Stored { bytes: u64 },
    /// An upload that stopped after `received` bytes; send the rest.
    Partial { received: u64 },
    /// Nothing.
    Absent,
}

/// A progress callback: bytes done so far, bytes in all.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// The SHA-256 of the file at `path` as 64 lowercase hex digits, read in
/// chunks (the file may be larger than memory).
pub async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut digest = Sha256::new();
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            digest.update(&buffer[..n]);
        }
        Ok(hex::encode(digest.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// True for 64 lowercase hex digits, the only form of a hash the broker takes.
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where a download into `dest` keeps its bytes until they are verified.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

impl BrokerClient {
    /// `HEAD /files/{sha256}`: whether the broker holds the file, part of
    /// it, or nothing.
    pub async fn file_status(&self, sha256: &str) -> Result<FileStatus, ClientError> {
        let request = self.transfer_request(Method::HEAD, &["files", sha256]);
        let response = self.send_raw(request).await?;
        let header_number = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        match response.status() {
            s if s.is_success() => Ok(FileStatus::Stored {
                bytes: header_number(CONTENT_LENGTH.as_str()).unwrap_or(0),
            }),
            StatusCode::NOT_FOUND => Ok(match header_number("upload-offset") {
                Some(received) if received > 0 => FileStatus::Partial { received },
                _ => FileStatus::Absent,
            }),
            status => Err(self.failure(response, status).await),
        }
    }

    /// Uploads the file at `path`, whose SHA-256 is `sha256`, unless the
    /// broker has it already: asks first (`HEAD`), sends only what the broker
    /// lacks (a partial upload is taken up where it stopped), and takes a cut
    /// connection up again from the broker's offset, [`TRANSFER_ATTEMPTS`]
    /// times at most. `progress` hears the bytes the broker holds and the size.
    pub async fn upload_file(
        &self,
        path: &Path,
        sha256: &str,
        progress: Progress<'_>,
    ) -> Result<FileInfo, ClientError> {
        let total = tokio::fs::metadata(path)
            .await
            .map_err(|e| local(path, "cannot read it", e))?
            .len();
        let mut attempt = 0;
        loop {
            let outcome = async {
                let offset = match self.file_status(sha256).await? {
                    FileStatus::Stored { bytes } => {
                        progress(bytes, bytes);
                        return Ok(Some(FileInfo {
                            sha256: sha256.to_string(),
                            bytes,
                        }));
                    }
                    FileStatus::Partial { received } if received <= total => received,
                    // More than this file holds: not an upload of this file;
                    // sending it whole makes the broker say what is wrong.
                    FileStatus::Partial { .. } | FileStatus::Absent => 0,
                };
                progress(offset, total);
                self.put_file(path, sha256, offset, total, progress).await
            }
            .await;
            match outcome {
                Ok(Some(info)) => return Ok(info),
                // The broker kept the part, so the loop asks where to go on.
                Ok(None) => attempt = 0,
                // 409: the broker holds another offset than the one sent
                // (another upload of the same file ran meanwhile).
                Err(e) if resumable(&e) && attempt + 1 < TRANSFER_ATTEMPTS => {
                    attempt += 1;
                    pause_after_cut(&e, attempt, "upload").await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One `PUT /files/{sha256}` of the bytes of `path` from `offset` on.
    /// `Some` once the file is stored; `None` when the broker accepted the
    /// part without finishing the file (202).
    async fn put_file(
        &self,
        path: &Path,
        sha256: &str,
        offset: u64,
        total: u64,
        progress: Progress<'_>,
    ) -> Result<Option<FileInfo>, ClientError> {
        let sent = Arc::new(AtomicU64::new(offset));
        let body = file_body(path, offset, sent.clone()).await?;
        let mut request = self
            .transfer_request(Method::PUT, &["files", sha256])
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, total - offset)
            .body(body);
        if offset > 0 {
            request = request.header(
                CONTENT_RANGE,
                format!("bytes {offset}-{}/{total}", total - 1),
            );
        }
        let response = with_progress(self.send_raw(request), &sent, total, progress).await?;
        let (status, text) = self.success_text(response).await?;
        if status == StatusCode::ACCEPTED {
            let part: FileUpload = self.parse(status, &text)?;
            progress(part.received, part.bytes);
            return Ok(None);
        }
        let info: FileInfo = self.parse(status, &text)?;
        progress(info.bytes, info.bytes);
        Ok(Some(info))
    }

    /// `GET /files/{sha256}` into `dest`: the bytes go to `dest.part` first
    /// (a download that stopped goes on from there, with `Range`), are
    /// checked against the hash, and only then renamed to `dest`. A cut
    /// connection is taken up again [`TRANSFER_ATTEMPTS`] times at most.
    /// Returns the file's size.
    pub async fn download_file(
        &self,
        sha256: &str,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<u64, ClientError> {
        let part = partial_path(dest);
        let mut attempt = 0;
        // A part left by an earlier run may not be a beginning of this file
        // (a crash mid-write): one fresh start is allowed for that.
        let mut resumed = tokio::fs::metadata(&part).await.is_ok();
        loop {
            let outcome = self
                .fetch_to_part(&["files", sha256], &part, progress)
                .await;
            match outcome {
                Ok(bytes) => {
                    let actual = sha256_file(&part)
                        .await
                        .map_err(|e| local(&part, "cannot read it back", e))?;
                    if actual != sha256 {
                        let _ = tokio::fs::remove_file(&part).await;
                        if std::mem::take(&mut resumed) {
                            tracing::warn!(part = %part.display(), "a resumed download did not match its hash; downloading it whole");
                            continue;
                        }
                        return Err(ClientError::HashMismatch {
                            expected: sha256.to_string(),
                            actual,
                        });
                    }
                    tokio::fs::rename(&part, dest)
                        .await
                        .map_err(|e| local(dest, "cannot move the download there", e))?;
                    return Ok(bytes);
                }
                Err(e) if e.is_retryable() && attempt + 1 < TRANSFER_ATTEMPTS => {
                    attempt += 1;
                    pause_after_cut(&e, attempt, "download").await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// GETs the route of `segments` into `part`, going on from the bytes it
    /// holds already (`Range`); the size of the whole.
    async fn fetch_to_part(
        &self,
        segments: &[&str],
        part: &Path,
        progress: Progress<'_>,
    ) -> Result<u64, ClientError> {
        let have = tokio::fs::metadata(part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let mut request = self.transfer_request(Method::GET, segments);
        if have > 0 {
            request = request.header(RANGE, format!("bytes={have}-"));
        }
        let response = self.send_raw(request).await?;
        let status = response.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
            // Nothing after what is there: the part is whole (or longer than
            // the file), which the caller's check tells.
            progress(have, have);
            return Ok(have);
        }
        if !status.is_success() {
            return Err(self.failure(response, status).await);
        }
        let start = if status == StatusCode::PARTIAL_CONTENT {
            have
        } else {
            0
        };
        let total = start + response.content_length().unwrap_or(0);
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(part)
            .await
            .map_err(|e| local(part, "cannot write it", e))?;
        file.set_len(start)
            .await
            .map_err(|e| local(part, "cannot write it", e))?;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| local(part, "cannot write it", e))?;
        let mut done = start;
        progress(done, total);
        // Each write of a tokio file is a trip to the blocking pool: the
        // network's small chunks are gathered first.
        let mut writer = tokio::io::BufWriter::with_capacity(CHUNK, file);
        let received = async {
            let mut last_report = tokio::time::Instant::now();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.unreachable(error::describe(&e)))?;
                writer
                    .write_all(&chunk)
                    .await
                    .map_err(|e| local(part, "cannot write it", e))?;
                done += chunk.len() as u64;
                if last_report.elapsed() >= PROGRESS_EVERY {
                    progress(done, total);
                    last_report = tokio::time::Instant::now();
                }
            }
            Ok(())
        }
        .await;
        // What arrived stays on disk even when the connection was cut: the
        // next try starts after it.
        writer
            .flush()
            .await
            .map_err(|e| local(part, "cannot write it", e))?;
        received?;
        writer
            .get_ref()
            .sync_all()
            .await
            .map_err(|e| local(part, "cannot write it", e))?;
        progress(done, total.max(done));
        Ok(done)
    }

    /// `PUT /tasks/{id}/frames/{frame}`: one rendered frame, under the
    /// task's lease, with its hash and its file name (the name of `path`).
    pub async fn upload_frame(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        frame: i64,
        path: &Path,
    ) -> Result<FrameFile, ClientError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                local(
                    path,
                    "is not a file",
                    std::io::ErrorKind::InvalidInput.into(),
                )
            })?;
        let (task, frame) = (task_id.to_string(), frame.to_string());
        self.put_under_lease(
            &["tasks", &task, "frames", &frame],
            lease_id,
            &[("name", name)],
            path,
        )
        .await
    }

    /// `PUT /tasks/{id}/video`: the MP4 a video task made, under the task's
    /// lease, with its hash; streamed from disk. What the broker stored.
    pub async fn upload_video(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        path: &Path,
    ) -> Result<FileInfo, ClientError> {
        let task = task_id.to_string();
        self.put_under_lease(&["tasks", &task, "video"], lease_id, &[], path)
            .await
    }

    /// PUTs the file at `path` to the route of `segments` under a task's
    /// lease: streamed, with its `Content-Length` and its SHA-256 in the
    /// query (the broker checks both), and `query` besides.
    async fn put_under_lease<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
        lease_id: Uuid,
        query: &[(&str, String)],
        path: &Path,
    ) -> Result<T, ClientError> {
        let sha256 = sha256_file(path)
            .await
            .map_err(|e| local(path, "cannot read it", e))?;
        let bytes = tokio::fs::metadata(path)
            .await
            .map_err(|e| local(path, "cannot read it", e))?
            .len();
        let body = file_body(path, 0, Arc::new(AtomicU64::new(0))).await?;
        let request = self
            .transfer_request(Method::PUT, segments)
            .query(&[("lease_id", lease_id.to_string()), ("sha256", sha256)])
            .query(query)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, bytes)
            .body(body);
        let response = self.send_raw(request).await?;
        let (status, text) = self.success_text(response).await?;
        self.parse(status, &text)
    }

    /// `PUT /tasks/{id}/preview`: a JPEG of `frame`, under the task's lease,
    /// as the render's preview from now on.
    pub async fn upload_preview(
        &self,
        task_id: Uuid,
        lease_id: Uuid,
        frame: i64,
        jpeg: Vec<u8>,
    ) -> Result<(), ClientError> {
        let request = self
            .request(Method::PUT, &["tasks", &task_id.to_string(), "preview"])
            .query(&[
                ("lease_id", lease_id.to_string()),
                ("frame", frame.to_string()),
            ])
            .header(CONTENT_TYPE, "image/jpeg")
            .body(jpeg);
        let response = self.send_raw(request).await?;
        self.success_text(response).await.map(drop)
    }

    /// One frame of a render's [`FrameList`](renderfarm_wire::FrameList)
    /// into `dest`: a frame stored at the broker (with a hash) through
    /// [`BrokerClient::download_file`] (resumed, verified); one on the
    /// broker's output root as it is, through `.part`. The frame's size.
    pub async fn download_frame(
        &self,
        render_id: Uuid,
        frame: &FrameFile,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<u64, ClientError> {
        if let Some(sha256) = &frame.sha256 {
            return self.download_file(sha256, dest, progress).await;
        }
        let (render, number) = (render_id.to_string(), frame.frame.to_string());
        self.download_unhashed(&["renders", &render, "frames", &number], dest, progress)
            .await
    }

    /// `GET /renders/{id}/video` into `dest` (through `dest.part`): the MP4
    /// assembled from the render's frames. Its size.
    pub async fn download_video(
        &self,
        render_id: Uuid,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<u64, ClientError> {
        let render = render_id.to_string();
        self.download_unhashed(&["renders", &render, "video"], dest, progress)
            .await
    }

    /// GETs the route of `segments` whole into `dest`, through `dest.part`.
    async fn download_unhashed(
        &self,
        segments: &[&str],
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<u64, ClientError> {
        let part = partial_path(dest);
        // Without a hash a partial file cannot be trusted as a beginning.
        let _ = tokio::fs::remove_file(&part).await;
        let bytes = self.fetch_to_part(segments, &part, progress).await?;
        tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| local(dest, "cannot move the download there", e))?;
        Ok(bytes)
    }

    /// A request for a transfer: no time limit on the whole (a large file
    /// takes as long as it takes), only on connecting.
    fn transfer_request(&self, method: Method, segments: &[&str]) -> reqwest::RequestBuilder {
        self.authorized(self.http.request(method, self.url(segments)))
    }

    async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let request = crate::build(request)?;
        self.http
            .execute(request)
            .await
            .map_err(|e| self.not_sent(e))
    }

    /// A successful answer's status and text, else the error it says.
    async fn success_text(
        &self,
        response: reqwest::Response,
    ) -> Result<(StatusCode, String), ClientError> {
        let status = response.status();
        if !status.is_success() {
            return Err(self.failure(response, status).await);
        }
        let text = response
            .text()
            .await
            .map_err(|e| self.unreachable(error::describe(&e)))?;
        Ok((status, text))
    }

    /// The error for a failed answer. An answer without a body (to `HEAD`)
    /// still says what was refused.
    async fn failure(&self, response: reqwest::Response, status: StatusCode) -> ClientError {
        let retry_after = error::retry_after(response.headers());
        let route = response.url().path().to_string();
        let mut text = response.text().await.unwrap_or_default();
        if text.trim().is_empty() {
            text = format!("{route} answered {status}");
        }
        ClientError::from_answer(&self.base, status, text, retry_after)
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        status: StatusCode,
        text: &str,
    ) -> Result<T, ClientError> {
        serde_json::from_str(text).map_err(|e| {
            ClientError::Rejected(
                status,
                format!("the answer is not what this client expects ({e}); are the broker and this program the same version?"),
            )
        })
    }
}

/// Waits before the `attempt`th try to take a cut transfer up again, a
/// little longer each time.
async fn pause_after_cut(error: &ClientError, attempt: u32, what: &str) {
    tracing::warn!(%error, attempt, "{what} cut off; going on from where it stopped");
    tokio::time::sleep(FIRST_RETRY_PAUSE * 2u32.pow(attempt - 1)).await;
}

/// True when an upload that failed with `error` can go on from the
/// broker's offset: the connection was cut, or the broker holds another
/// offset than the one sent (409).
fn resumable(error: &ClientError) -> bool {
    error.is_retryable() || matches!(error, ClientError::Conflict(_))
}

fn local(path: &Path, what: &str, e: std::io::Error) -> ClientError {
    ClientError::LocalFile {
        path: path.to_path_buf(),
        cause: format!("{what}: {e}"),
    }
}

/// The bytes of `path` from `offset` on, as a streamed body; `sent` counts
/// the bytes handed to the connection (from `offset`).
async fn file_body(
    path: &Path,
    offset: u64,
    sent: Arc<AtomicU64>,
) -> Result<reqwest::Body, ClientError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| local(path, "cannot read it", e))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| local(path, "cannot read it", e))?;
    let stream =
        tokio_util::io::ReaderStream::with_capacity(file, CHUNK).inspect_ok(move |chunk| {
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        });
    Ok(reqwest::Body::wrap_stream(stream))
}

/// Runs `send` while telling `progress` every [`PROGRESS_EVERY`] how many
/// bytes went out: the body's stream must own what it uses, so it counts
/// into `sent` and this reads the count.
async fn with_progress<T>(
    send: impl std::future::Future<Output = T>,
    sent: &AtomicU64,
    total: u64,
    progress: Progress<'_>,
) -> T {
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    tokio::pin!(send);
    loop {
        tokio::select! {
            answer = &mut send => return answer,
            _ = ticks.tick() => progress(sent.load(Ordering::Relaxed).min(total), total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_64_lowercase_hex_digits_are_a_hash() {
        assert!(is_sha256(&"a".repeat(64)));
        assert!(is_sha256(&"0123456789abcdef".repeat(4)));
        assert!(!is_sha256(&"A".repeat(64)));
        assert!(!is_sha256(&"a".repeat(63)));
        assert!(!is_sha256(&"g".repeat(64)));
        assert!(!is_sha256(""));
    }

    #[test]
    fn a_download_waits_beside_its_destination_under_a_part_name() {
        assert_eq!(
            partial_path(Path::new("/d/frame_0001.png")),
            Path::new("/d/frame_0001.png.part")
        );
    }

    #[tokio::test]
    async fn a_file_is_hashed_in_chunks_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // More than one chunk, not a multiple of it.
        let bytes: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            sha256_file(&path).await.unwrap(),
            hex::encode(Sha256::digest(&bytes))
        );
        std::fs::write(&path, b"").unwrap();
        assert_eq!(
            sha256_file(&path).await.unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
