//! Files in MongoDB, when the store is MongoDB: every broker replica sees
//! the same files, and the compose farm needs no shared volume.
//!
//! - A stored file is a GridFS file of the bucket `files` (`files.files`,
//!   `files.chunks`), named by its SHA-256. It is written through the
//!   driver's GridFS upload stream, whose `files` document is inserted only
//!   once every chunk is in: a file is invisible until whole. Each upload
//!   gets an id of its own, so two brokers finishing the same file at once
//!   store two equal copies rather than mixing their chunks (and an abort
//!   removes only its own chunks); readers take the first.
//! - An upload under way is a series of parts in `upload_parts`
//!   (`_id` = `<sha256>:<offset>`), at most [`PART_BYTES`] each, so that any
//!   broker can resume it: a part is a document, written at once, its unique
//!   id fencing two brokers appending at the same offset. The part that
//!   finishes the file has the parts copied into GridFS in order, hashed on
//!   the way, then removed.
//! - Reads go to `files.chunks` by chunk number, so a `Range` starts at its
//!   chunk instead of reading the file from its start.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bson::{doc, Binary, Bson, Document};
use chrono::{DateTime, Utc};
use futures::{AsyncWriteExt, StreamExt, TryStreamExt};
use mongodb::gridfs::GridFsBucket;
use mongodb::options::GridFsBucketOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::*;
use crate::domain::files::check_upload;
use crate::store::mongodb::MongoStore;

/// The bucket's name: its collections are `files.files` and `files.chunks`.
pub const BUCKET: &str = "files";
/// The collection of upload parts.
pub const UPLOAD_PARTS: &str = "upload_parts";
/// The most bytes one part document holds (documents are bounded at 16 MiB).
pub const PART_BYTES: usize = 4 * 1024 * 1024;

pub struct GridFiles {
    store: MongoStore,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartDoc {
    #[serde(rename = "_id")]
    id: String,
    sha256: String,
    total: i64,
    offset: i64,
    bytes: i64,
    data: Binary,
    at: bson::DateTime,
}

/// A part without its bytes.
#[derive(Debug, Clone, Deserialize)]
struct PartHead {
    total: i64,
    offset: i64,
    bytes: i64,
    at: bson::DateTime,
    sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
struct StoredDoc {
    #[serde(rename = "_id")]
    id: Bson,
    length: i64,
    #[serde(rename = "chunkSize")]
    chunk_size: i64,
    #[serde(rename = "uploadDate")]
    upload_date: bson::DateTime,
    filename: String,
    #[serde(default)]
    metadata: Option<Document>,
}

impl StoredDoc {
    fn touched_at(&self) -> DateTime<Utc> {
        let touched = self
            .metadata
            .as_ref()
            .and_then(|m| m.get_datetime("touched_at").ok())
            .copied()
            .unwrap_or(self.upload_date);
        touched.max(self.upload_date).to_chrono()
    }
}

fn part_id(sha: &str, offset: u64) -> String {
    // Zero-padded, so ids sort as offsets do.
    format!("{sha}:{offset:020}")
}

fn mongo_error(e: mongodb::error::Error) -> FilesError {
    use mongodb::error::ErrorKind;
    match *e.kind {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => {
            FilesError::Unavailable(format!("MongoDB cannot be reached ({e})"))
        }
        _ => FilesError::Unexpected(anyhow::Error::new(e).context("GridFS file storage")),
    }
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|w| w.code == 11000)),
        _ => false,
    }
}

impl From<crate::store::StoreError> for FilesError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Unavailable(m) => FilesError::Unavailable(m),
            other => FilesError::Unexpected(anyhow::Error::new(other)),
        }
    }
}

impl GridFiles {
    pub fn new(store: MongoStore) -> Self {
        Self { store }
    }

    fn db(&self) -> FilesResult<Database> {
        Ok(self.store.database()?)
    }

    fn bucket(&self) -> FilesResult<GridFsBucket> {
        Ok(self.db()?.gridfs_bucket(
            GridFsBucketOptions::builder()
                .bucket_name(BUCKET.to_string())
                .build(),
        ))
    }

    fn stored_files(&self) -> FilesResult<Collection<StoredDoc>> {
        Ok(self.db()?.collection(&format!("{BUCKET}.files")))
    }

    fn parts(&self) -> FilesResult<Collection<PartDoc>> {
        Ok(self.db()?.collection(UPLOAD_PARTS))
    }

    async fn stored(&self, sha: &str) -> FilesResult<Option<StoredDoc>> {
        self.stored_files()?
            .find_one(doc! { "filename": sha })
            .sort(doc! { "filename": 1, "uploadDate": 1 })
            .await
            .map_err(mongo_error)
    }

    async fn part_heads(&self, filter: Document) -> FilesResult<Vec<PartHead>> {
        self.parts()?
            .clone_with_type::<PartHead>()
            .find(filter)
            .projection(
                doc! { "_id": 0, "sha256": 1, "total": 1, "offset": 1, "bytes": 1, "at": 1 },
            )
            .sort(doc! { "_id": 1 })
            .await
            .map_err(mongo_error)?
            .try_collect()
            .await
            .map_err(mongo_error)
    }

    /// Bytes held of the partial upload of `sha` and its declared total: the
    /// parts from offset 0 on that follow each other.
    async fn held(&self, sha: &str) -> FilesResult<Option<(u64, u64)>> {
        let heads = self.part_heads(doc! { "sha256": sha }).await?;
        let Some(first) = heads.first() else {
            return Ok(None);
        };
        let total = first.total as u64;
        let mut received = 0u64;
        for head in &heads {
            if head.offset as u64 != received || head.total as u64 != total {
                break;
            }
            received += head.bytes as u64;
        }
        Ok(Some((received, total)))
    }

    async fn insert_part(
        &self,
        sha: &str,
        total: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> FilesResult<()> {
        let part = PartDoc {
            id: part_id(sha, offset),
            sha256: sha.to_string(),
            total: total as i64,
            offset: offset as i64,
            bytes: data.len() as i64,
            data: Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: data,
            },
            at: bson::DateTime::now(),
        };
        match self.parts()?.insert_one(&part).await {
            Ok(_) => Ok(()),
            // Another broker wrote this offset first.
            Err(e) if is_duplicate(&e) => Err(FilesError::Busy(sha.to_string())),
            Err(e) => Err(mongo_error(e)),
        }
    }
}

#[async_trait]
impl FileBackend for GridFiles {
    fn name(&self) -> &'static str {
        "gridfs"
    }

    async fn state(&self, sha: &Sha256) -> FilesResult<FileState> {
        if let Some(stored) = self.stored(sha.as_str()).await? {
            return Ok(FileState::Stored {
                bytes: stored.length as u64,
            });
        }
        Ok(match self.held(sha.as_str()).await? {
            Some((received, total)) => FileState::Partial { received, total },
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
        let (received, held_total) = self.held(sha.as_str()).await?.unwrap_or((0, total));
        if received != offset || held_total != total {
            return Err(FilesError::Resume(ResumeRefusal::WrongOffset { received }));
        }
        let mut kept = 0u64;
        let mut buffer: Vec<u8> = Vec::with_capacity(PART_BYTES);
        let end = loop {
            match body.next().await {
                None => break BodyEnd::Ended,
                Some(Err(e)) => break BodyEnd::Cut(e),
                Some(Ok(chunk)) => {
                    let room = max - kept - buffer.len() as u64;
                    let take = (chunk.len() as u64).min(room) as usize;
                    let mut rest = &chunk[..take];
                    while !rest.is_empty() {
                        let n = rest.len().min(PART_BYTES - buffer.len());
                        buffer.extend_from_slice(&rest[..n]);
                        rest = &rest[n..];
                        if buffer.len() == PART_BYTES {
                            let data =
                                std::mem::replace(&mut buffer, Vec::with_capacity(PART_BYTES));
                            if let Some(h) = hasher.as_mut() {
                                h.update(&data);
                            }
                            let len = data.len() as u64;
                            self.insert_part(sha.as_str(), total, offset + kept, data)
                                .await?;
                            kept += len;
                        }
                    }
                    if take < chunk.len() {
                        break BodyEnd::Overflow;
                    }
                }
            }
        };
        // What arrived before the end (or the cut) is kept as a last part.
        if !buffer.is_empty() {
            if let Some(h) = hasher.as_mut() {
                h.update(&buffer);
            }
            let len = buffer.len() as u64;
            self.insert_part(sha.as_str(), total, offset + kept, buffer)
                .await?;
            kept += len;
        }
        Ok((kept, end, hasher))
    }

    async fn finish(&self, sha: &Sha256, total: u64, known: Option<Sha256>) -> FilesResult<()> {
        // An empty file has no part.
        let received = match self.held(sha.as_str()).await? {
            Some((received, _)) => received,
            None if total == 0 => 0,
            None => {
                return Err(FilesError::Resume(ResumeRefusal::WrongOffset {
                    received: 0,
                }))
            }
        };
        if received != total {
            self.discard_partial(sha).await?;
            return Err(check_upload(sha, total, sha, received)
                .expect_err("sizes differ")
                .into());
        }
        if let Some(actual) = &known {
            if let Err(e) = check_upload(sha, total, actual, received) {
                self.discard_partial(sha).await?;
                return Err(e.into());
            }
        }
        let bucket = self.bucket()?;
        let mut upload = bucket
            .open_upload_stream(sha.as_str())
            .id(Bson::ObjectId(bson::oid::ObjectId::new()))
            .await
            .map_err(mongo_error)?;
        let mut hasher = sha2::Sha256::new();
        let mut parts = self
            .parts()?
            .find(doc! { "sha256": sha.as_str() })
            .sort(doc! { "_id": 1 })
            .await
            .map_err(mongo_error)?;
        let mut copied = 0u64;
        while let Some(part) = parts.try_next().await.map_err(mongo_error)? {
            if part.offset as u64 != copied {
                break;
            }
            hasher.update(&part.data.bytes);
            if let Err(e) = upload.write_all(&part.data.bytes).await {
                let _ = upload.abort().await;
                return Err(FilesError::Unexpected(
                    anyhow::Error::new(e).context("writing a file into GridFS"),
                ));
            }
            copied += part.bytes as u64;
        }
        let actual = Sha256::from_digest(&hasher.finalize());
        if let Err(e) = check_upload(sha, total, &actual, copied) {
            let _ = upload.abort().await;
            self.discard_partial(sha).await?;
            return Err(e.into());
        }
        upload.close().await.map_err(|e| {
            FilesError::Unexpected(anyhow::Error::new(e).context("closing a GridFS upload"))
        })?;
        self.discard_partial(sha).await?;
        Ok(())
    }

    async fn discard_partial(&self, sha: &Sha256) -> FilesResult<()> {
        self.parts()?
            .delete_many(doc! { "sha256": sha.as_str() })
            .await
            .map_err(mongo_error)?;
        Ok(())
    }

    async fn read(&self, sha: &Sha256, from: u64) -> FilesResult<Option<(u64, ByteStream)>> {
        let Some(stored) = self.stored(sha.as_str()).await? else {
            return Ok(None);
        };
        let size = stored.length as u64;
        let chunk_size = stored.chunk_size.max(1) as u64;
        let from = from.min(size);
        let first = (from / chunk_size) as i64;
        let mut skip = (from % chunk_size) as usize;
        let chunks = self
            .db()?
            .collection::<Document>(&format!("{BUCKET}.chunks"))
            .find(doc! { "files_id": stored.id.clone(), "n": { "$gte": first } })
            .sort(doc! { "files_id": 1, "n": 1 })
            .await
            .map_err(mongo_error)?;
        let stream = chunks.map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            let data = chunk
                .get_binary_generic("data")
                .map_err(std::io::Error::other)?;
            let start = std::mem::take(&mut skip).min(data.len());
            Ok(Bytes::copy_from_slice(&data[start..]))
        });
        Ok(Some((size, Box::pin(stream))))
    }

    async fn touch(&self, sha: &Sha256, now: DateTime<Utc>) -> FilesResult<()> {
        self.stored_files()?
            .update_many(
                doc! { "filename": sha.as_str() },
                // The whole field: the driver stores `metadata: null` for
                // a file uploaded without any, which a dotted path cannot
                // go through.
                doc! { "$set": { "metadata": { "touched_at": bson::DateTime::from_chrono(now) } } },
            )
            .await
            .map_err(mongo_error)?;
        Ok(())
    }

    async fn used(&self) -> FilesResult<u64> {
        let sum = |field: &str| doc! { "$group": { "_id": Bson::Null, "total": { "$sum": format!("${field}") } } };
        let mut used = 0u64;
        for (collection, field) in [
            (format!("{BUCKET}.files"), "length"),
            (UPLOAD_PARTS.to_string(), "bytes"),
        ] {
            let mut totals = self
                .db()?
                .collection::<Document>(&collection)
                .aggregate(vec![sum(field)])
                .await
                .map_err(mongo_error)?;
            if let Some(total) = totals.try_next().await.map_err(mongo_error)? {
                let n = match total.get("total") {
                    Some(Bson::Int32(n)) => *n as i64,
                    Some(Bson::Int64(n)) => *n,
                    Some(Bson::Double(n)) => *n as i64,
                    _ => 0,
                };
                used += n.max(0) as u64;
            }
        }
        Ok(used)
    }

    async fn entries(&self) -> FilesResult<Vec<Entry>> {
        let stored: Vec<StoredDoc> = self
            .stored_files()?
            .find(doc! {})
            .await
            .map_err(mongo_error)?
            .try_collect()
            .await
            .map_err(mongo_error)?;
        let mut out: Vec<Entry> = stored
            .iter()
            .map(|s| Entry {
                sha256: s.filename.clone(),
                partial: false,
                bytes: s.length as u64,
                touched_at: s.touched_at(),
            })
            .collect();
        let mut partials: BTreeMap<String, Entry> = BTreeMap::new();
        for head in self.part_heads(doc! {}).await? {
            let entry = partials.entry(head.sha256.clone()).or_insert(Entry {
                sha256: head.sha256.clone(),
                partial: true,
                bytes: 0,
                touched_at: DateTime::<Utc>::MIN_UTC,
            });
            entry.bytes += head.bytes as u64;
            entry.touched_at = entry.touched_at.max(head.at.to_chrono());
            let _ = head.total;
        }
        out.extend(partials.into_values());
        Ok(out)
    }

    async fn remove(&self, entry: &Entry) -> FilesResult<()> {
        if entry.partial {
            self.parts()?
                .delete_many(doc! { "sha256": &entry.sha256 })
                .await
                .map_err(mongo_error)?;
            return Ok(());
        }
        let bucket = self.bucket()?;
        let copies: Vec<StoredDoc> = self
            .stored_files()?
            .find(doc! { "filename": &entry.sha256 })
            .await
            .map_err(mongo_error)?
            .try_collect()
            .await
            .map_err(mongo_error)?;
        for copy in copies {
            bucket.delete(copy.id).await.map_err(mongo_error)?;
        }
        Ok(())
    }
}
