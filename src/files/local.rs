//! Files in a directory under `--data-dir` (the default backend):
//!
//! - `files/<first 2 hex digits>/<sha256>`: a stored file, complete and
//!   checked; it appears there by a rename of its synced partial, so a
//!   reader sees all of it or nothing;
//! - `files/partial/<sha256>/<total>`: an upload under way (or cut off),
//!   `total` being its declared size; the collector takes it after the
//!   grace.
//!
//! The data directory belongs to one broker (its SQLite store is there
//! too), so the bytes held are counted in memory, from a walk at start.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::*;
use crate::domain::files::check_upload;

const PARTIAL: &str = "partial";

pub struct LocalFiles {
    root: PathBuf,
    used: AtomicU64,
}

impl LocalFiles {
    /// Opens (creating) the storage at `root`, counting what it holds.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join(PARTIAL))?;
        let store = Self {
            root: root.to_path_buf(),
            used: AtomicU64::new(0),
        };
        let used: u64 = store.walk()?.iter().map(|e| e.bytes).sum();
        store.used.store(used, Ordering::Release);
        Ok(store)
    }

    /// Counts `bytes` as freed; never below zero, whatever was miscounted.
    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(bytes))
            });
    }

    fn stored_path(&self, sha: &str) -> PathBuf {
        self.root.join(&sha[..2]).join(sha)
    }

    fn partial_dir(&self, sha: &str) -> PathBuf {
        self.root.join(PARTIAL).join(sha)
    }

    /// The partial upload of `sha`: its path, declared total and length.
    fn partial(&self, sha: &str) -> std::io::Result<Option<(PathBuf, u64, u64)>> {
        let dir = self.partial_dir(sha);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(total) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            return Ok(Some((entry.path(), total, entry.metadata()?.len())));
        }
        Ok(None)
    }

    fn walk(&self) -> std::io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let touched = |meta: &std::fs::Metadata| {
            meta.modified()
                .map(DateTime::<Utc>::from)
                .unwrap_or_else(|_| Utc::now())
        };
        for dir in std::fs::read_dir(&self.root)? {
            let dir = dir?;
            let name = dir.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == PARTIAL {
                for upload in std::fs::read_dir(dir.path())? {
                    let upload = upload?;
                    let Some(sha) = upload.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    if let Some((path, _, bytes)) = self.partial(&sha)? {
                        let meta = std::fs::metadata(path)?;
                        out.push(Entry {
                            sha256: sha,
                            partial: true,
                            bytes,
                            touched_at: touched(&meta),
                        });
                    } else {
                        // An empty folder a crash left between the rename
                        // and its removal.
                        out.push(Entry {
                            sha256: sha,
                            partial: true,
                            bytes: 0,
                            touched_at: DateTime::<Utc>::MIN_UTC,
                        });
                    }
                }
                continue;
            }
            if name.len() != 2 || !dir.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(dir.path())? {
                let file = file?;
                let Some(sha) = file.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let meta = file.metadata()?;
                if meta.is_file() && Sha256::parse("sha256", &sha).is_ok() {
                    out.push(Entry {
                        sha256: sha,
                        partial: false,
                        bytes: meta.len(),
                        touched_at: touched(&meta),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Syncs a directory, so that a rename or a new entry in it is durable.
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> FilesResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FilesError::Unexpected(e.into()))?
        .map_err(FilesError::from)
}

#[async_trait]
impl FileBackend for LocalFiles {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn state(&self, sha: &Sha256) -> FilesResult<FileState> {
        match tokio::fs::metadata(self.stored_path(sha.as_str())).await {
            Ok(meta) => return Ok(FileState::Stored { bytes: meta.len() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(match self.partial(sha.as_str())? {
            Some((_, total, received)) => FileState::Partial { received, total },
            None => FileState::Absent,
        })
    }

    async fn append(
        &self,
        sha: &Sha256,
        total: u64,
        offset: u64,
        mut body: ByteStream,
        max: u64,
        mut hasher: Option<sha2::Sha256>,
    ) -> FilesResult<(u64, BodyEnd, Option<sha2::Sha256>)> {
        let dir = self.partial_dir(sha.as_str());
        let path = match self.partial(sha.as_str())? {
            Some((path, held_total, received)) => {
                if held_total != total || received != offset {
                    return Err(FilesError::Resume(ResumeRefusal::WrongOffset { received }));
                }
                path
            }
            None if offset == 0 => {
                tokio::fs::create_dir_all(&dir).await?;
                dir.join(total.to_string())
            }
            None => {
                return Err(FilesError::Resume(ResumeRefusal::WrongOffset {
                    received: 0,
                }))
            }
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .await?;
        file.seek(SeekFrom::Start(offset)).await?;
        // Buffered: a body arrives in pieces of a few KiB, and each write of
        // a tokio file is a trip to the blocking pool.
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut kept = 0u64;
        let received = async {
            let end = loop {
                match body.next().await {
                    None => break BodyEnd::Ended,
                    Some(Err(e)) => break BodyEnd::Cut(e),
                    Some(Ok(chunk)) => {
                        let room = max - kept;
                        let take = (chunk.len() as u64).min(room) as usize;
                        if take > 0 {
                            out.write_all(&chunk[..take]).await?;
                            if let Some(h) = hasher.as_mut() {
                                h.update(&chunk[..take]);
                            }
                            kept += take as u64;
                        }
                        if take < chunk.len() {
                            break BodyEnd::Overflow;
                        }
                    }
                }
            };
            out.flush().await?;
            // The offset HEAD reports from now on is on disk.
            out.get_mut().sync_data().await?;
            std::io::Result::Ok(end)
        }
        .await;
        let end = match received {
            Ok(end) => end,
            Err(e) => {
                // What this request wrote may be partly on disk: the partial
                // goes back to where it was, so that its length stays the
                // count of bytes that are all there.
                let file = out.get_mut();
                let _ = file.set_len(offset).await;
                let _ = file.sync_data().await;
                return Err(e.into());
            }
        };
        self.used.fetch_add(kept, Ordering::AcqRel);
        if offset == 0 {
            sync_dir(&dir).await?;
        }
        Ok((kept, end, hasher))
    }

    async fn finish(&self, sha: &Sha256, total: u64, known: Option<Sha256>) -> FilesResult<()> {
        let Some((path, _, received)) = self.partial(sha.as_str())? else {
            return Err(FilesError::Resume(ResumeRefusal::WrongOffset {
                received: 0,
            }));
        };
        let actual = match known {
            Some(actual) => actual,
            None => {
                let mut file = tokio::fs::File::open(&path).await?;
                let mut hasher = sha2::Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                Sha256::from_digest(&hasher.finalize())
            }
        };
        if let Err(e) = check_upload(sha, total, &actual, received) {
            self.discard_partial(sha).await?;
            return Err(e.into());
        }
        let stored = self.stored_path(sha.as_str());
        let parent = stored
            .parent()
            .expect("a stored file has a folder")
            .to_path_buf();
        tokio::fs::create_dir_all(&parent).await?;
        tokio::fs::rename(&path, &stored).await?;
        sync_dir(&parent).await?;
        let _ = tokio::fs::remove_dir(self.partial_dir(sha.as_str())).await;
        Ok(())
    }

    async fn discard_partial(&self, sha: &Sha256) -> FilesResult<()> {
        if let Some((_, _, bytes)) = self.partial(sha.as_str())? {
            self.release(bytes);
        }
        match tokio::fs::remove_dir_all(self.partial_dir(sha.as_str())).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn read(&self, sha: &Sha256, from: u64) -> FilesResult<Option<(u64, ByteStream)>> {
        let mut file = match tokio::fs::File::open(self.stored_path(sha.as_str())).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata().await?.len();
        file.seek(SeekFrom::Start(from.min(size))).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        Ok(Some((size, Box::pin(stream))))
    }

    async fn touch(&self, sha: &Sha256, now: DateTime<Utc>) -> FilesResult<()> {
        let path = self.stored_path(sha.as_str());
        blocking(move || {
            let file = std::fs::File::options().write(true).open(path)?;
            file.set_modified(now.into())
        })
        .await
    }

    async fn used(&self) -> FilesResult<u64> {
        Ok(self.used.load(Ordering::Acquire))
    }

    async fn entries(&self) -> FilesResult<Vec<Entry>> {
        let root = Self {
            root: self.root.clone(),
            used: AtomicU64::new(0),
        };
        blocking(move || root.walk()).await
    }

    async fn remove(&self, entry: &Entry) -> FilesResult<()> {
        let result = if entry.partial {
            tokio::fs::remove_dir_all(self.partial_dir(&entry.sha256)).await
        } else {
            tokio::fs::remove_file(self.stored_path(&entry.sha256)).await
        };
        match result {
            Ok(()) => {
                self.release(entry.bytes);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
