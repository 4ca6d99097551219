//! The broker's file storage (issue 13): blends artists upload and frames
//! workers send back, content-addressed by SHA-256.
//!
//! Two backends behind [`FileBackend`]: a directory under `--data-dir`
//! ([`local`], the default) and GridFS when the store is MongoDB
//! ([`gridfs`], so that several brokers share files without a shared
//! volume). A backend only keeps bytes; [`Files`] applies the rules of
//! `domain::files` (size limit, quota, resume offset, hash check) the same
//! way over both.
//!
//! What every backend promises:
//! - a file is visible (`state` says `Stored`, `read` serves it) only once
//!   it is whole and its hash checked; an upload cut short keeps the bytes
//!   that arrived as a partial, invisible, resumed from its end;
//! - what a 201 acknowledged survives `kill -9`: the bytes are synced
//!   before the file is published, and published in one step.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod gridfs;
pub mod local;
pub mod zip;

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use futures::Stream;
use renderfarm_wire::{FileInfo, FileUpload};
use sha2::Digest;

use crate::domain::files::{
    check_upload, collectable, ResumeRefusal, Sha256, StorageLimits, UploadPart, UploadRefusal,
    DEFAULT_FILE_GRACE,
};
use crate::domain::ValidationError;
use crate::store::Store;

/// Bytes in or out, in pieces.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// What the storage holds of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Stored {
        bytes: u64,
    },
    /// An upload under way (or cut off): `received` of `total` bytes.
    Partial {
        received: u64,
        total: u64,
    },
    Absent,
}

/// How the body of an append ended.
#[derive(Debug)]
pub enum BodyEnd {
    /// The body ended after at most the bytes asked for.
    Ended,
    /// The connection broke (or the client stopped sending): what arrived
    /// before is kept.
    Cut(std::io::Error),
    /// More bytes came than the part declared; the extra were not kept.
    Overflow,
}

/// One file (or partial upload) as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: String,
    pub partial: bool,
    pub bytes: u64,
    /// When it was last written or last put to use (a submit naming it,
    /// an upload finding it stored already).
    pub touched_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// Over `--max-file-size` (413) or `--storage-quota` (507).
    #[error("{0}")]
    Refused(UploadRefusal),
    /// The part does not start where the held bytes end (409).
    #[error("{0}")]
    Resume(ResumeRefusal),
    /// Another broker is writing the same part of the file now (409).
    #[error("another upload of file {0} is being received right now; wait for it to end (HEAD /files/{0} tells how far it got) and resume from there")]
    Busy(String),
    /// The bytes are not what was declared (400); nothing was kept.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The body stopped before its end; what arrived is kept.
    #[error("the upload stopped after {received} bytes of the file ({why}); they are kept: resume from byte {received}")]
    Cut { received: u64, why: String },
    /// The disk (or database) is out of room (507).
    #[error("the broker's file storage is out of space ({0}); nothing more was stored. Free space on the broker (delete finished renders) and retry")]
    NoSpace(String),
    #[error("the file storage is unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected file storage failure")]
    Unexpected(#[source] anyhow::Error),
}

pub type FilesResult<T> = Result<T, FilesError>;

impl From<std::io::Error> for FilesError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
            FilesError::NoSpace(e.to_string())
        } else {
            FilesError::Unexpected(anyhow::Error::new(e).context("file storage I/O failed"))
        }
    }
}

/// Where files are kept. Only bytes: the rules are [`Files`]'.
#[async_trait]
pub trait FileBackend: Send + Sync + 'static {
    /// A short name for logs (`local`, `gridfs`).
    fn name(&self) -> &'static str;

    async fn state(&self, sha: &Sha256) -> FilesResult<FileState>;

    /// Appends `body` to the partial upload of `sha` (declared `total`
    /// bytes), which holds exactly `offset` bytes now (else
    /// [`FilesError::Resume`]); keeps at most `max` bytes, each also fed to
    /// `hasher` when given. What arrived is kept (synced) whatever the end.
    /// Returns the bytes kept, how the body ended and the hasher.
    async fn append(
        &self,
        sha: &Sha256,
        total: u64,
        offset: u64,
        body: ByteStream,
        max: u64,
        hasher: Option<sha2::Sha256>,
    ) -> FilesResult<(u64, BodyEnd, Option<sha2::Sha256>)>;

    /// Checks the complete partial of `sha` against its hash (`known` when
    /// hashed on the way in, else read back) and publishes it as the stored
    /// file in one step; on a mismatch discards it (`Invalid`), nothing
    /// stored.
    async fn finish(&self, sha: &Sha256, total: u64, known: Option<Sha256>) -> FilesResult<()>;

    async fn discard_partial(&self, sha: &Sha256) -> FilesResult<()>;

    /// The stored file from byte `from` on (`from` at most its size), or
    /// `None` when it is not stored.
    async fn read(&self, sha: &Sha256, from: u64) -> FilesResult<Option<(u64, ByteStream)>>;

    /// Marks a stored file as put to use now, so the collector's grace
    /// starts again.
    async fn touch(&self, sha: &Sha256, now: DateTime<Utc>) -> FilesResult<()>;

    /// Bytes held: stored files and partial uploads.
    async fn used(&self) -> FilesResult<u64>;

    /// Every stored file and partial upload.
    async fn entries(&self) -> FilesResult<Vec<Entry>>;

    async fn remove(&self, entry: &Entry) -> FilesResult<()>;
}

/// The answer to an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uploaded {
    /// The file is complete and checked now (201).
    Stored(FileInfo),
    /// It was stored already; the body was not needed (200).
    Already(FileInfo),
    /// A part was taken, more is to come (202).
    Partial(FileUpload),
}

/// What one collection freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    pub files: u64,
    pub partials: u64,
    pub bytes: u64,
}

/// The file storage with its rules.
pub struct Files {
    backend: Arc<dyn FileBackend>,
    limits: StorageLimits,
    grace: Duration,
    /// Uploads being received by this broker, by hash, with the bytes each
    /// may still write: counted against the quota before they are written,
    /// so two uploads at once cannot both take the last room.
    in_flight: Mutex<HashMap<String, u64>>,
    /// One upload of a file at a time, by hash ([`Files::turn`]).
    turns: Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

/// The settings of the file storage (`serve --max-file-size`,
/// `--storage-quota`, `--file-grace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSettings {
    pub limits: StorageLimits,
    pub grace: Duration,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            limits: StorageLimits::default(),
            grace: DEFAULT_FILE_GRACE,
        }
    }
}

/// Releases an upload's place in [`Files::in_flight`].
struct InFlight<'a> {
    files: &'a Files,
    sha: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.files
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.sha);
    }
}

impl Files {
    pub fn new(backend: Arc<dyn FileBackend>, settings: FileSettings) -> Self {
        Self {
            backend,
            limits: settings.limits,
            grace: settings.grace,
            in_flight: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn limits(&self) -> StorageLimits {
        self.limits
    }

    pub async fn state(&self, sha: &Sha256) -> FilesResult<FileState> {
        self.backend.state(sha).await
    }

    /// The stored file from byte `from` on (`None`: not stored).
    pub async fn read(&self, sha: &Sha256, from: u64) -> FilesResult<Option<(u64, ByteStream)>> {
        self.backend.read(sha, from).await
    }

    /// Marks a stored file as in use (a render was submitted naming it).
    pub async fn touch(&self, sha: &Sha256, now: DateTime<Utc>) -> FilesResult<()> {
        self.backend.touch(sha, now).await
    }

    /// Takes one part of an upload of `sha` (the whole file when
    /// `part.start` is 0 and it finishes it), by the rules of
    /// `domain::files`: the size limit, the quota, the resume offset, then
    /// the hash once the file is complete.
    pub async fn upload(
        &self,
        sha: &Sha256,
        part: UploadPart,
        body: ByteStream,
        now: DateTime<Utc>,
    ) -> FilesResult<Uploaded> {
        self.upload_as(sha, part, body, now, false).await
    }

    /// As [`Files::upload`] for a file that is never resumed (a frame: its
    /// worker sends it whole again): what a cut upload of it left is
    /// dropped and the upload starts over.
    pub async fn upload_afresh(
        &self,
        sha: &Sha256,
        total: u64,
        body: ByteStream,
        now: DateTime<Utc>,
    ) -> FilesResult<Uploaded> {
        self.upload_as(sha, UploadPart::whole(total), body, now, true)
            .await
    }

    /// Drops what is held of an unfinished upload of `sha`.
    pub async fn discard_partial(&self, sha: &Sha256) -> FilesResult<()> {
        let _turn = self.turn(sha).await;
        self.backend.discard_partial(sha).await
    }

    /// Waits for the uploads of `sha` before this one (two workers may
    /// send the same image at once: a black frame), so that one writes
    /// at a time and the next finds the file stored.
    async fn turn(&self, sha: &Sha256) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            turns.retain(|_, t| t.strong_count() > 0);
            match turns.get(sha.as_str()).and_then(std::sync::Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    turns.insert(sha.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    async fn upload_as(
        &self,
        sha: &Sha256,
        part: UploadPart,
        body: ByteStream,
        now: DateTime<Utc>,
        afresh: bool,
    ) -> FilesResult<Uploaded> {
        self.limits
            .check_size(part.total)
            .map_err(FilesError::Refused)?;
        let _turn = self.turn(sha).await;
        let mut state = self.backend.state(sha).await?;
        if afresh && matches!(state, FileState::Partial { .. }) {
            self.backend.discard_partial(sha).await?;
            state = FileState::Absent;
        }
        match state {
            FileState::Stored { bytes } if afresh => {
                // A frame is taken only as the bytes it declares, even when
                // a file of that hash is stored (another worker's identical
                // frame): its body is read and checked, never trusted.
                let (actual, actual_bytes) = hash_stream(body).await?;
                check_upload(sha, part.total, &actual, actual_bytes)?;
                self.backend.touch(sha, now).await?;
                return Ok(Uploaded::Already(FileInfo {
                    sha256: sha.to_string(),
                    bytes,
                }));
            }
            FileState::Stored { bytes } => {
                self.backend.touch(sha, now).await?;
                return Ok(Uploaded::Already(FileInfo {
                    sha256: sha.to_string(),
                    bytes,
                }));
            }
            FileState::Partial { received, total } => part
                .check_resume(Some((received, total)))
                .map_err(FilesError::Resume)?,
            FileState::Absent => part.check_resume(None).map_err(FilesError::Resume)?,
        }
        let used = self.backend.used().await?;
        let _slot = self.reserve(sha, used, part.len)?;
        let hasher = (part.start == 0).then(sha2::Sha256::new);
        let (kept, end, hasher) = self
            .backend
            .append(sha, part.total, part.start, body, part.len, hasher)
            .await?;
        let received = part.start + kept;
        match end {
            BodyEnd::Cut(why) => {
                tracing::info!(sha256 = %sha, received, total = part.total, error = %why, "an upload stopped part-way; its bytes are kept for a resume");
                return Err(FilesError::Cut {
                    received,
                    why: why.to_string(),
                });
            }
            BodyEnd::Overflow => {
                self.backend.discard_partial(sha).await?;
                return Err(ValidationError::new(
                    "body",
                    format!(
                        "more bytes came than the {} declared (Content-Length or Content-Range); nothing was stored. Send the file again with its true size",
                        part.len
                    ),
                )
                .into());
            }
            BodyEnd::Ended if kept < part.len => {
                self.backend.discard_partial(sha).await?;
                return Err(ValidationError::new(
                    "body",
                    format!(
                        "the body ended after {kept} bytes where {} were declared; nothing was stored. Send the file again with its true size",
                        part.len
                    ),
                )
                .into());
            }
            BodyEnd::Ended => {}
        }
        if !part.finishes() {
            return Ok(Uploaded::Partial(FileUpload {
                sha256: sha.to_string(),
                bytes: part.total,
                received,
            }));
        }
        let known = hasher.map(|h| Sha256::from_digest(&h.finalize()));
        self.backend.finish(sha, part.total, known).await?;
        tracing::info!(sha256 = %sha, bytes = part.total, backend = self.backend.name(), "file stored");
        Ok(Uploaded::Stored(FileInfo {
            sha256: sha.to_string(),
            bytes: part.total,
        }))
    }

    /// Claims the right to write `len` more bytes of `sha`: refused when
    /// another upload of it is being received here, or when the quota has
    /// no room for them beside `used` and the other uploads under way.
    fn reserve(&self, sha: &Sha256, used: u64, len: u64) -> FilesResult<InFlight<'_>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if in_flight.contains_key(sha.as_str()) {
            return Err(FilesError::Busy(sha.to_string()));
        }
        let others: u64 = in_flight.values().sum();
        self.limits
            .check_room(used.saturating_add(others), len)
            .map_err(FilesError::Refused)?;
        in_flight.insert(sha.to_string(), len);
        Ok(InFlight {
            files: self,
            sha: sha.to_string(),
        })
    }

    /// Frees what no render refers to (`referenced`, read after this
    /// listing began) and partial uploads, once untouched for the grace.
    /// Uploads under way here are left alone.
    pub async fn collect(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Collected> {
        // Listed first, references read after: a file a render came to
        // refer to meanwhile is then in the references.
        let entries = self.backend.entries().await?;
        let candidates: Vec<Entry> = entries
            .into_iter()
            .filter(|e| collectable(e.touched_at, now, self.grace))
            .collect();
        if candidates.is_empty() {
            return Ok(Collected::default());
        }
        let referenced: BTreeSet<String> = store.referenced_files().await?;
        let mut collected = Collected::default();
        for entry in candidates {
            if !entry.partial && referenced.contains(&entry.sha256) {
                continue;
            }
            let busy = self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&entry.sha256);
            if busy {
                continue;
            }
            self.backend.remove(&entry).await?;
            collected.bytes += entry.bytes;
            if entry.partial {
                collected.partials += 1;
            } else {
                collected.files += 1;
            }
            tracing::info!(sha256 = %entry.sha256, partial = entry.partial, bytes = entry.bytes, "collected a file no render refers to");
        }
        Ok(collected)
    }
}

/// The hash and size of a whole stream; a stream that breaks is a cut.
async fn hash_stream(mut stream: ByteStream) -> FilesResult<(Sha256, u64)> {
    use futures::StreamExt;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| FilesError::Cut {
            received: 0,
            why: e.to_string(),
        })?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
    }
    Ok((Sha256::from_digest(&hasher.finalize()), size))
}

/// Reads a whole stream of bytes (small bodies only: tests, checks).
pub async fn collect_bytes(mut stream: ByteStream) -> std::io::Result<Vec<u8>> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

/// The flags of `serve` that set the file storage.
#[derive(Debug, Clone, clap::Args)]
pub struct FileArgs {
    /// The largest file the broker takes (a blend, a frame): a bigger upload
    /// is refused with 413 before any byte is kept. E.g. 50GiB, 500MB.
    #[arg(long, env = "RENDERFARM_MAX_FILE_SIZE", default_value = "50GiB", value_parser = parse_size)]
    pub max_file_size: u64,
    /// The most bytes the broker's files may take (stored files and uploads
    /// under way); an upload past it is refused with 507 and nothing of it
    /// kept. No quota when left out (the disk's own size is the bound).
    #[arg(long, env = "RENDERFARM_STORAGE_QUOTA", value_parser = parse_size)]
    pub storage_quota: Option<u64>,
    /// How long a file no render refers to, or an upload left unfinished,
    /// is kept before the scheduler's tick frees it.
    #[arg(long, env = "RENDERFARM_FILE_GRACE", default_value = "24h", value_parser = parse_grace)]
    pub file_grace: std::time::Duration,
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::domain::files::parse_byte_size(s)
}

fn parse_grace(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?}: {e}; give a duration such as 24h or 30m"))
}

impl FileArgs {
    pub fn settings(&self) -> anyhow::Result<FileSettings> {
        Ok(FileSettings {
            limits: StorageLimits {
                max_file_size: self.max_file_size,
                quota: self.storage_quota,
            },
            grace: Duration::from_std(self.file_grace)
                .map_err(|_| anyhow::anyhow!("--file-grace is too long"))?,
        })
    }
}
