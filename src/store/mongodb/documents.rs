//! Documents as stored. Ids are UUID strings; times are BSON dates (ms).

use bson::{doc, Bson};
use chrono::{DateTime, Utc};
use renderfarm_wire::{
    Assignment, FrameOrder, HistoryEvent, LeaderLease, Priority, Progress, Render, RenderStatus,
    Task, TaskHistoryEntry, TaskKind, TaskStatus, VideoSpec, Worker,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{errors::*, *};
use crate::domain::{
    availability_view, worker_status, Tally, TaskLease, WarmState, WorkerHoursState, WorkerMode,
};
use crate::store::StoreResult;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RenderDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    /// Creation order, from the `renders` counter: listings and dispatch age.
    pub(super) seq: i64,
    pub(super) name: String,
    pub(super) status: String,
    pub(super) priority: i64,
    pub(super) blend_file: String,
    pub(super) frame_start: i64,
    pub(super) frame_end: i64,
    pub(super) chunk_size: i64,
    pub(super) max_retries: i64,
    pub(super) output: String,
    pub(super) engine: Option<String>,
    pub(super) tags: Vec<String>,
    pub(super) tasks_total: i64,
    pub(super) tasks_pending: i64,
    pub(super) tasks_running: i64,
    pub(super) tasks_completed: i64,
    pub(super) tasks_failed: i64,
    pub(super) tasks_canceled: i64,
    pub(super) frames_total: i64,
    pub(super) frames_done: i64,
    pub(super) failed_for_good: bool,
    pub(super) created_at: bson::DateTime,
    pub(super) started_at: Option<bson::DateTime>,
    pub(super) finished_at: Option<bson::DateTime>,
    /// Bumped by every change; status writes compare-and-set on it.
    pub(super) version: i64,
    /// Who submitted it; absent from renders stored before renders recorded it.
    #[serde(default)]
    pub(super) owner: Option<String>,
    /// The stored .blend its workers fetch; absent from renders stored
    /// before files travelled through the broker.
    #[serde(default)]
    pub(super) blend_sha256: Option<String>,
    #[serde(default)]
    pub(super) upload_frames: bool,
    /// Its outbox of status events (`events::OUTBOX`) and the marker of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) events: Option<Document>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) has_events: Option<bool>,
    /// The version and progress its last render event told: a coalesced
    /// render event is recorded when they moved on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) seen_version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) seen_progress: Option<Progress>,
    /// The video asked for, its task's status once queued, and the MP4
    /// stored at the broker; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) video: Option<VideoSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) video_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) video_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) video_bytes: Option<i64>,
    /// The ids of the renders it waits for, in the order given (absent:
    /// none); `waiting_reason` while it waits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) depends_on: Vec<String>,
    /// Failed chunks on one worker before it is blocklisted (absent on
    /// renders stored before the blocklist: the default).
    #[serde(default = "default_blocklist_after")]
    pub(super) blocklist_after: i64,
    /// Why the farm failed it on its own (every able worker blocklisted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) failure_reason: Option<String>,
    /// Absent: sequential (renders stored before frame orders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) frame_order: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) waiting_reason: Option<String>,
    /// With adaptive chunking: the target, and the frame time measured
    /// (absent until measured); absent target: a fixed chunk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) target_chunk_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) measured_frame_seconds: Option<f64>,
    /// A re-split of its pending tasks under way (`adaptive`); absent when
    /// none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) resplit: Option<ResplitJournal>,
}

/// A re-split in progress, on its render's document: what a broker that
/// takes over needs to finish it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ResplitJournal {
    /// Marks the render's old tasks (`TaskDoc::resplit`) and new tasks
    /// (`TaskDoc::resplit_of`) of this re-split.
    pub(super) token: String,
    pub(super) size: i64,
    pub(super) frame_seconds: f64,
    /// When it began: another broker takes over only a journal older than
    /// `adaptive::RESPLIT_GRACE`, so two never mark at once.
    pub(super) begun_at: bson::DateTime,
    /// How many old tasks were marked; absent while they are being marked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) replaced: Option<i64>,
}

fn default_blocklist_after() -> i64 {
    crate::domain::DEFAULT_BLOCKLIST_AFTER
}

impl RenderDoc {
    pub(super) fn planned(r: &Render, seq: i64) -> Self {
        let p = &r.progress;
        Self {
            id: r.id.to_string(),
            seq,
            name: r.name.clone(),
            status: r.status.as_str().into(),
            priority: r.priority.rank(),
            blend_file: r.blend_file.clone(),
            frame_start: r.frame_start,
            frame_end: r.frame_end,
            chunk_size: r.chunk_size,
            max_retries: r.max_retries,
            output: r.output.clone(),
            engine: r.engine.clone(),
            tags: r.tags.clone(),
            tasks_total: p.tasks_total,
            tasks_pending: p.tasks_pending,
            tasks_running: p.tasks_running,
            tasks_completed: p.tasks_completed,
            tasks_failed: p.tasks_failed,
            tasks_canceled: p.tasks_canceled,
            frames_total: p.frames_total,
            frames_done: p.frames_done,
            failed_for_good: false,
            created_at: bson_time(r.created_at),
            started_at: r.started_at.map(bson_time),
            finished_at: r.finished_at.map(bson_time),
            version: 0,
            owner: r.owner.clone(),
            video: r.video,
            video_status: r.video_status.map(|s| s.as_str().to_string()),
            video_sha256: None,
            video_bytes: None,
            depends_on: r.depends_on.iter().map(Uuid::to_string).collect(),
            blocklist_after: r.blocklist_after,
            failure_reason: r.failure_reason.clone(),
            frame_order: (r.frame_order != FrameOrder::Sequential)
                .then(|| r.frame_order.as_str().to_string()),
            waiting_reason: r.waiting_reason.clone(),
            target_chunk_seconds: r.target_chunk_seconds,
            measured_frame_seconds: r.measured_frame_seconds,
            resplit: None,
            blend_sha256: r.blend_sha256.clone(),
            upload_frames: r.upload_frames,
            events: None,
            has_events: None,
            seen_version: None,
            seen_progress: None,
        }
    }

    pub(super) fn status(&self) -> StoreResult<RenderStatus> {
        RenderStatus::parse(&self.status)
            .ok_or_else(|| corrupt(format!("render {} with status {:?}", self.id, self.status)))
    }

    pub(super) fn progress(&self) -> Progress {
        Progress {
            tasks_total: self.tasks_total,
            tasks_pending: self.tasks_pending,
            tasks_running: self.tasks_running,
            tasks_completed: self.tasks_completed,
            tasks_failed: self.tasks_failed,
            tasks_canceled: self.tasks_canceled,
            frames_total: self.frames_total,
            frames_done: self.frames_done,
        }
    }

    /// The render's tally, for the domain's rules.
    pub(super) fn tally(&self) -> StoreResult<Tally<bson::DateTime>> {
        Ok(Tally {
            status: self.status()?,
            progress: self.progress(),
            started_at: self.started_at,
            finished_at: self.finished_at,
            failed_for_good: self.failed_for_good,
        })
    }

    pub(super) fn to_render(&self) -> StoreResult<Render> {
        Ok(Render {
            id: parse_uuid(&self.id, "render id")?,
            name: self.name.clone(),
            status: self.status()?,
            priority: Priority::from_rank(self.priority).ok_or_else(|| {
                corrupt(format!(
                    "render {} with priority {}",
                    self.id, self.priority
                ))
            })?,
            blend_file: self.blend_file.clone(),
            frame_start: self.frame_start,
            frame_end: self.frame_end,
            chunk_size: self.chunk_size,
            chunk_size_auto: self.target_chunk_seconds.is_some(),
            target_chunk_seconds: self.target_chunk_seconds,
            measured_frame_seconds: self.measured_frame_seconds,
            max_retries: self.max_retries,
            output: self.output.clone(),
            engine: self.engine.clone(),
            tags: self.tags.clone(),
            progress: self.progress(),
            created_at: self.created_at.to_chrono(),
            started_at: self.started_at.map(bson::DateTime::to_chrono),
            finished_at: self.finished_at.map(bson::DateTime::to_chrono),
            owner: self.owner.clone(),
            blend_sha256: self.blend_sha256.clone(),
            upload_frames: self.upload_frames,
            video: self.video,
            video_status: self
                .video_status
                .as_deref()
                .map(|s| {
                    TaskStatus::parse(s).ok_or_else(|| {
                        corrupt(format!("render {} with video status {s:?}", self.id))
                    })
                })
                .transpose()?,
            depends_on: self
                .depends_on
                .iter()
                .map(|id| parse_uuid(id, "dependency id"))
                .collect::<StoreResult<_>>()?,
            waiting_reason: self.waiting_reason.clone(),
            blocklist_after: self.blocklist_after,
            failure_reason: self.failure_reason.clone(),
            frame_order: match self.frame_order.as_deref() {
                None => FrameOrder::Sequential,
                Some(o) => FrameOrder::parse(o)
                    .ok_or_else(|| corrupt(format!("render {} with frame order {o:?}", self.id)))?,
            },
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TaskDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) render_id: String,
    // Copies of the render's, for the claim filter and sort.
    pub(super) render_seq: i64,
    pub(super) priority: i64,
    pub(super) required_tags: Vec<String>,
    /// False while the render may not be dispatched (paused, finished, or
    /// not yet stored).
    pub(super) runnable: bool,
    /// The render version that last set `runnable`.
    pub(super) runnable_version: i64,
    pub(super) max_retries: i64,
    /// Its rank in its render's claim order (`domain::plan_tasks`);
    /// absent on tasks stored before ranks, which sort alike.
    #[serde(default)]
    pub(super) claim_rank: i64,
    pub(super) frame_start: i64,
    pub(super) frame_end: i64,
    pub(super) status: String,
    pub(super) retries: i64,
    pub(super) worker_id: Option<String>,
    pub(super) lease_id: Option<String>,
    pub(super) frames_done: i64,
    pub(super) exit_code: Option<i64>,
    pub(super) failure_reason: Option<String>,
    pub(super) started_at: Option<bson::DateTime>,
    pub(super) finished_at: Option<bson::DateTime>,
    /// When the task last became pending: its wait is counted from here.
    pub(super) queued_at: bson::DateTime,
    /// How many log chunks were appended: the next chunk's sequence number.
    pub(super) log_chunks: i64,
    /// Bytes of log kept, and bytes dropped to keep the log within its bound.
    #[serde(default)]
    pub(super) log_bytes: i64,
    #[serde(default)]
    pub(super) log_dropped: i64,
    /// How many history entries it has: the next entry's sequence number.
    pub(super) history_seq: i64,
    /// The frames done and log bytes written (kept + dropped) its last
    /// events told: the next coalesced events tell what changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) seen_frames_done: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) seen_log_total: Option<i64>,
    /// What it runs; absent for a chunk (`blender`), so that chunks keep
    /// out of the follow-up index (`tasks_follow_up`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) kind: Option<String>,
    /// A follow-up's `runnable`: true while its render lets it run
    /// (`domain::kind_runnable_in`). A follow-up's own `runnable` stays
    /// false, so that the chunk claim never sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) follow_up_ready: Option<bool>,
    /// The token of the re-split replacing it (`ResplitJournal`): it is
    /// kept out of the claim until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) resplit: Option<String>,
    /// The token of the re-split that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) resplit_of: Option<String>,
}

impl TaskDoc {
    pub(super) fn planned(render: &RenderDoc, frame_start: i64, frame_end: i64) -> Self {
        Self {
            id: Uuid::now_v7().to_string(),
            render_id: render.id.clone(),
            render_seq: render.seq,
            priority: render.priority,
            required_tags: render.tags.clone(),
            runnable: false,
            runnable_version: -1,
            max_retries: render.max_retries,
            claim_rank: 0,
            frame_start,
            frame_end,
            status: TaskStatus::Pending.as_str().into(),
            retries: 0,
            worker_id: None,
            lease_id: None,
            frames_done: 0,
            exit_code: None,
            failure_reason: None,
            started_at: None,
            finished_at: None,
            queued_at: render.created_at,
            log_chunks: 0,
            log_bytes: 0,
            log_dropped: 0,
            history_seq: 0,
            seen_frames_done: Some(0),
            seen_log_total: Some(0),
            kind: None,
            follow_up_ready: None,
            resplit: None,
            resplit_of: None,
        }
    }

    /// What it runs.
    pub(super) fn kind(&self) -> StoreResult<TaskKind> {
        match self.kind.as_deref() {
            None => Ok(TaskKind::Blender),
            Some(k) => {
                TaskKind::parse(k).ok_or_else(|| corrupt(format!("task {} of kind {k:?}", self.id)))
            }
        }
    }

    pub(super) fn frames(&self) -> i64 {
        self.frame_end - self.frame_start + 1
    }

    pub(super) fn status(&self) -> StoreResult<TaskStatus> {
        TaskStatus::parse(&self.status)
            .ok_or_else(|| corrupt(format!("task {} with status {:?}", self.id, self.status)))
    }

    /// What the domain's lease rule needs.
    pub(super) fn lease(&self) -> StoreResult<TaskLease> {
        Ok(TaskLease {
            status: self.status()?,
            lease_id: parse_opt_uuid(self.lease_id.as_deref(), "lease id")?,
            worker_id: parse_opt_uuid(self.worker_id.as_deref(), "worker id")?,
        })
    }

    pub(super) fn to_task(&self) -> StoreResult<Task> {
        Ok(Task {
            id: parse_uuid(&self.id, "task id")?,
            render_id: parse_uuid(&self.render_id, "render id")?,
            frame_start: self.frame_start,
            frame_end: self.frame_end,
            status: self.status()?,
            retries: self.retries,
            worker_id: parse_opt_uuid(self.worker_id.as_deref(), "worker id")?,
            frames_done: self.frames_done,
            exit_code: self.exit_code,
            failure_reason: self.failure_reason.clone(),
            started_at: self.started_at.map(bson::DateTime::to_chrono),
            finished_at: self.finished_at.map(bson::DateTime::to_chrono),
            kind: self.kind()?,
        })
    }

    pub(super) fn assignment(&self, render: &RenderDoc) -> StoreResult<Assignment> {
        let lease = self
            .lease_id
            .as_deref()
            .ok_or_else(|| corrupt(format!("running task {} without a lease", self.id)))?;
        Ok(Assignment {
            task_id: parse_uuid(&self.id, "task id")?,
            render_id: parse_uuid(&self.render_id, "render id")?,
            lease_id: parse_uuid(lease, "lease id")?,
            blend_file: render.blend_file.clone(),
            frame_start: self.frame_start,
            frame_end: self.frame_end,
            output: render.output.clone(),
            engine: render.engine.clone(),
            blend_sha256: render.blend_sha256.clone(),
            upload_frames: render.upload_frames,
            kind: self.kind()?,
            video: (self.kind()? != TaskKind::Blender)
                .then_some(render.video)
                .flatten(),
            inputs: Vec::new(),
            path_mappings: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WorkerDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    /// Registration order.
    pub(super) seq: i64,
    pub(super) name: String,
    pub(super) tags: Vec<String>,
    pub(super) mode: String,
    pub(super) offline: bool,
    pub(super) last_heartbeat: bson::DateTime,
    pub(super) registered_at: bson::DateTime,
    /// Its outbox of status events (`events::OUTBOX`) and the marker of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) events: Option<Document>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) has_events: Option<bool>,
    /// Whether its last event told it offline: a heartbeat brings it back
    /// without writing an event, the next drain tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) seen_offline: Option<bool>,
    /// The warm preference's state (`domain::WarmState`): the `seq` of the
    /// render of its last claimed task, and its streak of preferred claims.
    /// Absent until its first claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_render_seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) warm_streak: Option<i64>,
    /// The task kinds it runs; absent for workers registered before kinds
    /// (they run chunks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) kinds: Option<Vec<TaskKind>>,
    /// Its hours (`domain::WorkerHoursState`): what its agent reported at
    /// its last start, and an operator's, which win until cleared. Absent
    /// for workers registered before schedules: at any time, in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) agent_hours: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) operator_hours: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) strict_hours: bool,
    /// Whether its drain is its own (`domain::self_transition`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) drained_by_itself: bool,
    /// The platform it renders on; absent for workers registered before
    /// agents said (Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) platform: Option<renderfarm_wire::Platform>,
}

impl WorkerDoc {
    /// Its hours as the domain reads them.
    pub(super) fn hours(&self) -> WorkerHoursState {
        WorkerHoursState {
            time_zone: self.time_zone.clone(),
            agent: self.agent_hours.clone(),
            operator: self.operator_hours.clone(),
            strict: self.strict_hours,
        }
    }

    pub(super) fn mode(&self) -> StoreResult<WorkerMode> {
        WorkerMode::parse(&self.mode)
            .ok_or_else(|| corrupt(format!("worker {} with mode {:?}", self.id, self.mode)))
    }

    /// The task kinds it runs.
    pub(super) fn kinds(&self) -> Vec<TaskKind> {
        self.kinds
            .clone()
            .unwrap_or_else(|| vec![TaskKind::Blender])
    }

    /// Its warm preference's state, renders named by their `seq`.
    pub(super) fn warm_state(&self) -> WarmState<i64> {
        WarmState {
            last_render: self.last_render_seq,
            streak: self.warm_streak.unwrap_or(0),
        }
    }

    /// The worker, its hours seen at `now`.
    pub(super) fn to_worker(
        &self,
        current_task: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Worker> {
        let current_task_id = parse_opt_uuid(current_task, "task id")?;
        Ok(Worker {
            time_zone: self.time_zone.clone(),
            availability: availability_view(&self.hours(), now),
            id: parse_uuid(&self.id, "worker id")?,
            name: self.name.clone(),
            status: worker_status(self.mode()?, self.offline, current_task_id.is_some()),
            tags: self.tags.clone(),
            last_heartbeat: self.last_heartbeat.to_chrono(),
            current_task_id,
            registered_at: self.registered_at.to_chrono(),
            kinds: self.kinds(),
            platform: self.platform.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LogDoc {
    pub(super) task_id: String,
    pub(super) seq: i64,
    pub(super) text: String,
    /// The text's length in bytes, so trimming need not read the text.
    /// Chunks written before the bound existed count as 0.
    #[serde(default)]
    pub(super) bytes: i64,
}

/// What a listing in a computed order reads of each render.
#[derive(Debug, Deserialize)]
pub(super) struct SortKeyDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) seq: i64,
    pub(super) name: String,
    pub(super) priority: i64,
    pub(super) status: String,
    pub(super) frames_done: i64,
    pub(super) frames_total: i64,
}

impl SortKeyDoc {
    /// What `domain::compare_renders` compares.
    pub(super) fn key(&self) -> StoreResult<crate::domain::RenderSortKey<'_>> {
        Ok(crate::domain::RenderSortKey {
            name: &self.name,
            priority: Priority::from_rank(self.priority).ok_or_else(|| {
                corrupt(format!(
                    "render {} with priority {}",
                    self.id, self.priority
                ))
            })?,
            status: RenderStatus::parse(&self.status).ok_or_else(|| {
                corrupt(format!("render {} with status {:?}", self.id, self.status))
            })?,
            frames_done: self.frames_done,
            frames_total: self.frames_total,
            submitted: self.seq,
        })
    }
}

/// A document's id alone.
#[derive(Debug, Deserialize)]
pub(super) struct IdOnly {
    #[serde(rename = "_id")]
    pub(super) id: String,
}

/// A task moved by a bulk change, as its history needs it.
#[derive(Debug, Deserialize)]
pub(super) struct BulkMoved {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) history_seq: i64,
    pub(super) worker_id: Option<String>,
}

/// A log chunk's place and size, for trimming.
#[derive(Debug, Deserialize)]
pub(super) struct LogSize {
    pub(super) seq: i64,
    #[serde(default)]
    pub(super) bytes: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct HistoryDoc {
    pub(super) task_id: String,
    /// Taken from the task's `history_seq` by the change it records.
    pub(super) seq: i64,
    pub(super) at: bson::DateTime,
    pub(super) event: String,
    pub(super) worker_id: Option<String>,
    pub(super) detail: Option<String>,
    /// Who did it, when a person did; absent from entries written before
    /// history recorded it.
    #[serde(default)]
    pub(super) actor: Option<String>,
}

impl HistoryDoc {
    pub(super) fn to_entry(&self) -> StoreResult<TaskHistoryEntry> {
        Ok(TaskHistoryEntry {
            at: self.at.to_chrono(),
            event: HistoryEvent::parse(&self.event).ok_or_else(|| {
                corrupt(format!(
                    "a history event {:?} of task {}",
                    self.event, self.task_id
                ))
            })?,
            worker_id: parse_opt_uuid(self.worker_id.as_deref(), "worker id")?,
            detail: self.detail.clone(),
            actor: self.actor.clone(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LeaseDoc {
    #[serde(rename = "_id")]
    pub(super) name: String,
    pub(super) holder: String,
    pub(super) expires_at: bson::DateTime,
}

impl LeaseDoc {
    pub(super) fn to_lease(&self) -> LeaderLease {
        LeaderLease {
            holder: self.holder.clone(),
            expires_at: self.expires_at.to_chrono(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CounterDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) seq: i64,
}

/// A number from an aggregation result, whatever width the server chose.
pub(super) fn bson_i64(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Double(n) => Some(*n as i64),
        _ => None,
    }
}

/// A render whose documents are being written, and when its writer last
/// showed progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WritingDoc {
    /// The render's id.
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) alive_at: bson::DateTime,
}

/// A point in time as stored: BSON dates hold milliseconds.
pub fn bson_time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(t)
}

pub(super) fn opt_time(t: Option<bson::DateTime>) -> Bson {
    t.map_or(Bson::Null, Bson::DateTime)
}

/// Adds 1 to `field` in the update's `$inc`.
pub(super) fn add_inc(mut update: Document, field: &str) -> Document {
    match update.get_mut("$inc") {
        Some(Bson::Document(inc)) => {
            inc.insert(field, 1_i64);
        }
        _ => {
            update.insert("$inc", doc! { field: 1_i64 });
        }
    }
    update
}

/// Every task change that its history records takes the next history
/// sequence number (read from the document before the change).
pub(super) fn with_history(update: Document) -> Document {
    add_inc(update, "history_seq")
}

/// A report that carries log text takes the next log sequence number and
/// counts the text's bytes toward the task's log bound.
pub(super) fn with_log(update: Document, log_bytes: Option<i64>) -> Document {
    let Some(bytes) = log_bytes else {
        return update;
    };
    let mut update = add_inc(update, "log_chunks");
    if let Ok(inc) = update.get_document_mut("$inc") {
        inc.insert("log_bytes", bytes);
    }
    update
}

/// `before` with `update` applied as the server applies it: the task as a
/// fenced `findAndModify` left it, without reading it back. Knows the
/// operators the task updates use (`$set`, `$inc`); any other is refused
/// rather than guessed.
pub(super) fn applied<T>(before: &T, update: &Document) -> StoreResult<T>
where
    T: Serialize + serde::de::DeserializeOwned,
{
    let mut doc = bson::to_document(before).map_err(|e| corrupt(format!("a document: {e}")))?;
    for (operator, fields) in update {
        let fields = fields
            .as_document()
            .ok_or_else(|| corrupt(format!("an update operator {operator} without fields")))?;
        for (field, value) in fields {
            match operator.as_str() {
                "$set" => {
                    doc.insert(field, value.clone());
                }
                "$inc" => {
                    let now = doc.get(field).and_then(bson_i64).unwrap_or(0);
                    let by = bson_i64(value)
                        .ok_or_else(|| corrupt(format!("$inc of {field} by {value}")))?;
                    doc.insert(field, now + by);
                }
                other => return Err(corrupt(format!("an update with {other}"))),
            }
        }
    }
    bson::from_document(doc).map_err(|e| corrupt(format!("a document after an update: {e}")))
}
