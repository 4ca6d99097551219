//! Frames workers uploaded (issue 13): one `frame_files` document per frame
//! of a render (`_id` = `<render id>:<frame>`, so an upload of the same
//! frame again replaces it), the image itself in GridFS under its hash.

use std::collections::{BTreeSet, HashSet};

use bson::doc;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::Collection;
use renderfarm_wire::{FileInfo, Task, TaskKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::documents::{bson_time, IdOnly, TaskDoc};
use super::errors::*;
use super::{MongoStore, RENDERS};
use crate::domain::files::check_frame_in_task;
use crate::domain::lease_accepts;
use crate::domain::preview::StoredPreview;
use crate::store::{NewFrame, StoreError, StoreResult, StoredFrame};

pub(super) const FRAME_FILES: &str = "frame_files";
pub(super) const PREVIEWS: &str = "previews";

/// A render's preview: `_id` is the render's id, so each new one replaces
/// the one before.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PreviewDoc {
    #[serde(rename = "_id")]
    render_id: String,
    task_id: String,
    frame: i64,
    jpeg: bson::Binary,
    stored_at: bson::DateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FrameDoc {
    #[serde(rename = "_id")]
    id: String,
    render_id: String,
    frame: i64,
    name: String,
    sha256: String,
    bytes: i64,
    stored_at: bson::DateTime,
}

impl FrameDoc {
    fn to_stored(&self) -> StoreResult<StoredFrame> {
        Ok(StoredFrame {
            render_id: parse_uuid(&self.render_id, "render id")?,
            frame: self.frame,
            name: self.name.clone(),
            sha256: self.sha256.clone(),
            bytes: u64::try_from(self.bytes)
                .map_err(|_| corrupt(format!("frame {} of {} bytes", self.id, self.bytes)))?,
            stored_at: self.stored_at.to_chrono(),
        })
    }
}

impl MongoStore {
    fn frame_files(&self) -> StoreResult<Collection<FrameDoc>> {
        Ok(self.db()?.collection(FRAME_FILES))
    }

    async fn accepted_task(
        &self,
        holder: Option<Uuid>,
        task_id: Uuid,
        lease_id: Uuid,
    ) -> StoreResult<TaskDoc> {
        let task = self.load_task(&task_id.to_string()).await?;
        lease_accepts(&task.lease()?, lease_id, holder)
            .map_err(|why| StoreError::lease_refused(task_id, why))?;
        Ok(task)
    }

    fn previews(&self) -> StoreResult<Collection<PreviewDoc>> {
        Ok(self.db()?.collection(PREVIEWS))
    }

    /// Removes the frame records and the preview of a deleted render.
    pub(super) async fn delete_render_frames(&self, render_id: &str) -> StoreResult<()> {
        self.frame_files()?
            .delete_many(doc! { "render_id": render_id })
            .await?;
        self.previews()?
            .delete_one(doc! { "_id": render_id })
            .await?;
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct VideoOnly {
    #[serde(default)]
    video_sha256: Option<String>,
}

pub(super) async fn record_video(
    store: &MongoStore,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
    file: FileInfo,
) -> StoreResult<()> {
    let task = store.accepted_task(holder, task_id, lease_id).await?;
    if task.kind()? != TaskKind::Ffmpeg {
        return Err(StoreError::Invalid(format!(
            "task {task_id} is a chunk of frames, not a video task; it uploads frames with PUT /tasks/{task_id}/frames/{{frame}}"
        )));
    }
    let bytes = i64::try_from(file.bytes)
        .map_err(|_| StoreError::Invalid(format!("a video of {} bytes", file.bytes)))?;
    // Fenced by the lease once more: a task requeued since the check
    // above records nothing.
    let still_leased = store
        .tasks()?
        .count_documents(super::tasks::report_filter(
            &task.id,
            &lease_id.to_string(),
            holder.map(|h| h.to_string()).as_deref(),
        ))
        .await?
        > 0;
    if !still_leased {
        return Err(StoreError::StaleLease { task_id });
    }
    store
        .renders()?
        .update_one(
            doc! { "_id": &task.render_id },
            doc! { "$set": { "video_sha256": &file.sha256, "video_bytes": bytes } },
        )
        .await?;
    Ok(())
}

pub(super) async fn render_video(
    store: &MongoStore,
    render_id: Uuid,
) -> StoreResult<Option<FileInfo>> {
    let render = store.load_render(&render_id.to_string()).await?;
    Ok(render
        .video_sha256
        .zip(render.video_bytes)
        .map(|(sha256, bytes)| FileInfo {
            sha256,
            bytes: u64::try_from(bytes).unwrap_or(0),
        }))
}

pub(super) async fn leased_task(
    store: &MongoStore,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
) -> StoreResult<Task> {
    store
        .accepted_task(holder, task_id, lease_id)
        .await?
        .to_task()
}

pub(super) async fn record_frame(
    store: &MongoStore,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
    new: NewFrame,
    now: DateTime<Utc>,
) -> StoreResult<StoredFrame> {
    let task = store.accepted_task(holder, task_id, lease_id).await?;
    let kind = task.kind()?;
    if kind != TaskKind::Blender {
        return Err(StoreError::Invalid(format!(
            "task {task_id} is the {} task of its render, not a chunk of frames; it sends its result with PUT /tasks/{task_id}/video",
            kind.as_str()
        )));
    }
    check_frame_in_task(new.frame, task.frame_start, task.frame_end)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let record = FrameDoc {
        id: format!("{}:{}", task.render_id, new.frame),
        render_id: task.render_id.clone(),
        frame: new.frame,
        name: new.name,
        sha256: new.sha256,
        bytes: i64::try_from(new.bytes)
            .map_err(|_| StoreError::Invalid(format!("a frame of {} bytes", new.bytes)))?,
        stored_at: bson_time(now),
    };
    store
        .frame_files()?
        .replace_one(doc! { "_id": &record.id }, &record)
        .upsert(true)
        .await?;
    // Without a transaction the check and the write are two commands; a
    // lease that moved on in between is caught here, and the record
    // written under it removed, so a stale worker's frame is never kept
    // in place of the new holder's once it was answered 409.
    let after = store.load_task(&task.id).await?;
    if after.lease_id != task.lease_id {
        store
            .frame_files()?
            .delete_one(
                doc! { "_id": &record.id, "stored_at": record.stored_at, "sha256": &record.sha256 },
            )
            .await?;
        return Err(StoreError::StaleLease { task_id });
    }
    record.to_stored()
}

pub(super) async fn record_preview(
    store: &MongoStore,
    holder: Option<Uuid>,
    task_id: Uuid,
    lease_id: Uuid,
    frame: i64,
    jpeg: Vec<u8>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let task = store.accepted_task(holder, task_id, lease_id).await?;
    check_frame_in_task(frame, task.frame_start, task.frame_end)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let record = PreviewDoc {
        render_id: task.render_id.clone(),
        task_id: task.id.clone(),
        frame,
        jpeg: bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: jpeg,
        },
        stored_at: bson_time(now),
    };
    store
        .previews()?
        .replace_one(doc! { "_id": &record.render_id }, &record)
        .upsert(true)
        .await?;
    // As for frames: the check and the write are two commands, so a lease
    // that moved on in between takes its preview back (unless a newer one
    // replaced it meanwhile).
    let after = store.load_task(&task.id).await?;
    if after.lease_id != task.lease_id {
        store
            .previews()?
            .delete_one(doc! { "_id": &record.render_id, "task_id": &record.task_id, "stored_at": record.stored_at })
            .await?;
        return Err(StoreError::StaleLease { task_id });
    }
    Ok(())
}

pub(super) async fn preview(
    store: &MongoStore,
    render_id: Uuid,
) -> StoreResult<Option<StoredPreview>> {
    let Some(found) = store
        .previews()?
        .find_one(doc! { "_id": render_id.to_string() })
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(StoredPreview {
        render_id,
        task_id: parse_uuid(&found.task_id, "task id")?,
        frame: found.frame,
        jpeg: found.jpeg.bytes,
        stored_at: found.stored_at.to_chrono(),
    }))
}

pub(super) async fn render_frames(
    store: &MongoStore,
    render_id: Uuid,
    range: Option<(i64, i64)>,
) -> StoreResult<Vec<StoredFrame>> {
    let mut filter = doc! { "render_id": render_id.to_string() };
    if let Some((start, end)) = range {
        filter.insert("frame", doc! { "$gte": start, "$lte": end });
    }
    let docs: Vec<FrameDoc> = store
        .frame_files()?
        .find(filter)
        .sort(doc! { "render_id": 1, "frame": 1 })
        .await?
        .try_collect()
        .await?;
    docs.iter().map(FrameDoc::to_stored).collect()
}

#[derive(Debug, Deserialize)]
struct BlendOnly {
    #[serde(default)]
    blend_sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FrameHashOnly {
    render_id: String,
    sha256: String,
}

pub(super) async fn referenced_files(store: &MongoStore) -> StoreResult<BTreeSet<String>> {
    let db = store.db()?;
    let mut hashes = BTreeSet::new();
    let renders: Vec<IdOnly> = db
        .collection::<IdOnly>(RENDERS)
        .find(doc! {})
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    let live: HashSet<String> = renders.into_iter().map(|r| r.id).collect();
    let blends: Vec<BlendOnly> = db
        .collection::<BlendOnly>(RENDERS)
        .find(doc! { "blend_sha256": { "$type": "string" } })
        .projection(doc! { "_id": 0, "blend_sha256": 1 })
        .await?
        .try_collect()
        .await?;
    hashes.extend(blends.into_iter().filter_map(|b| b.blend_sha256));
    let videos: Vec<VideoOnly> = db
        .collection::<VideoOnly>(RENDERS)
        .find(doc! { "video_sha256": { "$type": "string" } })
        .projection(doc! { "_id": 0, "video_sha256": 1 })
        .await?
        .try_collect()
        .await?;
    hashes.extend(videos.into_iter().filter_map(|v| v.video_sha256));
    let frames: Vec<FrameHashOnly> = db
        .collection::<FrameHashOnly>(FRAME_FILES)
        .find(doc! {})
        .projection(doc! { "_id": 0, "render_id": 1, "sha256": 1 })
        .await?
        .try_collect()
        .await?;
    let mut orphans = BTreeSet::new();
    for frame in frames {
        if live.contains(&frame.render_id) {
            hashes.insert(frame.sha256);
        } else {
            orphans.insert(frame.render_id);
        }
    }
    // A broker that died between deleting a render and its frame records
    // left these; they refer to nothing a user can reach.
    for render_id in orphans {
        if store.load_render(&render_id).await.is_err() {
            store.delete_render_frames(&render_id).await?;
        }
    }
    Ok(hashes)
}
