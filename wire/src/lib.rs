//! The JSON bodies that the renderfarm broker, its command-line client and its
//! worker agents exchange. Defined once here so that the worker agent can speak
//! the protocol without compiling the broker's web server or database drivers.
//!
//! These are plain data: validation and status transitions live in the
//! broker's `domain` module.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A point in time as it travels on the wire (RFC 3339, UTC).
pub type Timestamp = DateTime<Utc>;

/// How urgent a render is; higher levels are dispatched first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Priority {
    /// Every level, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ];

    /// Position in dispatch order: low 0 … urgent 3.
    pub fn rank(self) -> i64 {
        self as i64
    }

    /// The level at `rank`, if any.
    pub fn from_rank(rank: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.rank() == rank)
    }

    /// The level named `s` (lowercase), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

/// Where a render is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenderStatus {
    /// Waits for the renders it depends on to complete (`depends_on`); its
    /// `waiting_reason` says which, and how they stand.
    Waiting,
    Queued,
    Rendering,
    Paused,
    Completed,
    Failed,
    Canceled,
}

impl RenderStatus {
    /// The status named `s` (lowercase), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Every status, in life order.
    pub const ALL: [RenderStatus; 7] = [
        RenderStatus::Waiting,
        RenderStatus::Queued,
        RenderStatus::Rendering,
        RenderStatus::Paused,
        RenderStatus::Completed,
        RenderStatus::Failed,
        RenderStatus::Canceled,
    ];

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            RenderStatus::Waiting => "waiting",
            RenderStatus::Queued => "queued",
            RenderStatus::Rendering => "rendering",
            RenderStatus::Paused => "paused",
            RenderStatus::Completed => "completed",
            RenderStatus::Failed => "failed",
            RenderStatus::Canceled => "canceled",
        }
    }

    /// True once nothing more will happen to the render without an operator.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RenderStatus::Completed | RenderStatus::Failed | RenderStatus::Canceled
        )
    }
}

/// What a render listing is ordered by (`GET /renders?sort=`); what each
/// means is the broker's rule (`domain::compare_renders`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenderSort {
    /// When it was submitted (default; newest first).
    #[default]
    Created,
    /// Its name, as written (byte order: `Z` before `a`); A to Z by default.
    Name,
    /// Its priority; the most urgent first by default.
    Priority,
    /// Its status in life order: waiting, queued, rendering, paused,
    /// completed, failed, canceled (in that order by default).
    Status,
    /// `frames_done / frames_total`; the furthest along first by default.
    Progress,
}

impl RenderSort {
    /// Every sort.
    pub const ALL: [RenderSort; 5] = [
        RenderSort::Created,
        RenderSort::Name,
        RenderSort::Priority,
        RenderSort::Status,
        RenderSort::Progress,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RenderSort::Created => "created",
            RenderSort::Name => "name",
            RenderSort::Priority => "priority",
            RenderSort::Status => "status",
            RenderSort::Progress => "progress",
        }
    }

    /// The sort named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Which way a listing runs (`?order=`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListOrder {
    Asc,
    Desc,
}

impl ListOrder {
    /// The order named `s` (`asc` or `desc`), if any.
    pub fn parse(s: &str) -> Option<Self> {
        [ListOrder::Asc, ListOrder::Desc]
            .into_iter()
            .find(|v| v.as_str() == s)
    }

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ListOrder::Asc => "asc",
            ListOrder::Desc => "desc",
        }
    }
}

/// What a task runs. Workers announce the kinds they can run when they
/// register (`WorkerSpec::kinds`); a claim hands a worker only those.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// A chunk of a render's frames, rendered by Blender.
    #[default]
    Blender,
    /// The render's video, assembled by ffmpeg from its frames once they are
    /// all rendered.
    Ffmpeg,
}

impl TaskKind {
    /// Every kind.
    pub const ALL: [TaskKind; 2] = [TaskKind::Blender, TaskKind::Ffmpeg];

    /// The kind named `s` (lowercase), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Blender => "blender",
            TaskKind::Ffmpeg => "ffmpeg",
        }
    }
}

fn default_kinds() -> Vec<TaskKind> {
    vec![TaskKind::Blender]
}

fn default_blocklist_after() -> i64 {
    3
}

/// A worker's record with one render (`GET /renders/{id}/blocklist`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlocklistEntry {
    pub worker_id: Uuid,
    /// Null for a worker removed since.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub worker_name: Option<String>,
    /// Its failed chunks of the render.
    pub failures: i64,
    /// Whether it gets no more of the render's chunks.
    pub blocked: bool,
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub blocked_at: Option<Timestamp>,
    /// When the scheduler lifts the block (`--blocklist-expiry`); null
    /// while not blocked, or when blocks never expire.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub expires_at: Option<Timestamp>,
}

/// The order a render's frames are handed out in.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameOrder {
    /// Chunks of `chunk_size` frames, lowest first.
    #[default]
    Sequential,
    /// First the first, last and middle frames, then every Nth frame
    /// (N = a ninth of the frames, rounded up), each a task of one frame
    /// claimed before the render's other tasks, which are chunks of the
    /// frames left between them: a broken shot shows in minutes.
    PreviewFirst,
}

impl FrameOrder {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameOrder::Sequential => "sequential",
            FrameOrder::PreviewFirst => "preview-first",
        }
    }

    /// The order named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [FrameOrder::Sequential, FrameOrder::PreviewFirst]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// The codec of a render's video.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// H.264 in an MP4 (`libx264`, `yuv420p`): plays everywhere.
    #[default]
    H264,
}

impl VideoCodec {
    pub fn as_str(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
        }
    }

    /// The codec named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        (s == "h264").then_some(VideoCodec::H264)
    }
}

/// A video assembled from a render's frames once they are all rendered.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"fps": 24, "codec": "h264"})))]
pub struct VideoSpec {
    /// Frames per second: 1 to 240.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 240))]
    #[serde(deserialize_with = "whole::number")]
    pub fps: i64,
    #[cfg_attr(feature = "openapi", schema(default = "h264"))]
    #[serde(default)]
    pub codec: VideoCodec,
}

/// A frame an `ffmpeg` task assembles: fetch it with `GET /files/{sha256}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFrame {
    pub frame: i64,
    /// The file name Blender gave it, e.g. `frame_0001.png`.
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    pub sha256: String,
    pub bytes: u64,
}

/// Where one chunk of frames is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Canceled,
}

impl TaskStatus {
    /// The status named `s` (lowercase), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Every status, in life order.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Canceled,
    ];

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Canceled => "canceled",
        }
    }
}

/// What a worker is doing, as an operator sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    Idle,
    Busy,
    Offline,
    Draining,
    Disabled,
}

impl WorkerStatus {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Idle => "idle",
            WorkerStatus::Busy => "busy",
            WorkerStatus::Offline => "offline",
            WorkerStatus::Draining => "draining",
            WorkerStatus::Disabled => "disabled",
        }
    }
}

/// Integers in request bodies. JSON Schema, and so the OpenAPI spec, counts
/// `10.0` as the integer 10, and clients that keep numbers as floats send it
/// that way; a number with no fraction is taken as the integer it equals.
mod whole {
    use serde::de::{Deserializer, Error, Visitor};
    use std::fmt;

    pub(super) struct Whole;

    impl Visitor<'_> for Whole {
        type Value = i64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number")
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
            // 2^63 is exact as an f64; every whole f64 below it fits an i64.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                Ok(v as i64)
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
            }
        }
    }

    struct MaybeWhole;

    impl<'de> Visitor<'de> for MaybeWhole {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number or null")
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            number(d).map(Some)
        }
    }

    /// An `i64` written as a JSON integer, or as a float with no fraction.
    pub fn number<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        d.deserialize_any(Whole)
    }

    /// As [`number`], or null.
    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_option(MaybeWhole)
    }
}

/// `chunk_size` at submit: a number of frames per task, or `"auto"`,
/// which has the broker size the chunks from the frame times it measures so
/// that a chunk takes about `target_chunk_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSizeSpec {
    Frames(i64),
    Auto,
}

impl Default for ChunkSizeSpec {
    fn default() -> Self {
        ChunkSizeSpec::Frames(10)
    }
}

impl From<i64> for ChunkSizeSpec {
    fn from(frames: i64) -> Self {
        ChunkSizeSpec::Frames(frames)
    }
}

impl ChunkSizeSpec {
    /// The word that asks for adaptive chunking.
    pub const AUTO: &'static str = "auto";

    /// Reads what a command line gives: a whole number or `auto`.
    pub fn parse(s: &str) -> Option<Self> {
        if s == Self::AUTO {
            return Some(ChunkSizeSpec::Auto);
        }
        s.parse().ok().map(ChunkSizeSpec::Frames)
    }
}

impl Serialize for ChunkSizeSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ChunkSizeSpec::Frames(n) => s.serialize_i64(*n),
            ChunkSizeSpec::Auto => s.serialize_str(Self::AUTO),
        }
    }
}

impl<'de> Deserialize<'de> for ChunkSizeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Visitor;
        struct Spec;
        impl Visitor<'_> for Spec {
            type Value = ChunkSizeSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number of frames per task, or \"auto\"")
            }
            // Numbers as every other count reads them (`whole`).
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                whole::Whole.visit_i64(v).map(ChunkSizeSpec::Frames)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                whole::Whole.visit_u64(v).map(ChunkSizeSpec::Frames)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                whole::Whole.visit_f64(v).map(ChunkSizeSpec::Frames)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == ChunkSizeSpec::AUTO {
                    Ok(ChunkSizeSpec::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(Spec)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ChunkSizeSpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::Integer))
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Int64,
                    )))
                    .minimum(Some(1))
                    .maximum(Some(1_000_000)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::String))
                    .enum_values(Some([ChunkSizeSpec::AUTO])),
            )
            .description(Some(
                "Frames per task (1 to 1,000,000), or \"auto\": the broker sizes the chunks from measured frame times so that one takes about target_chunk_seconds (default 60)",
            ))
            .default(Some(serde_json::json!(10)))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ChunkSizeSpec {}

fn default_max_retries() -> i64 {
    1
}

// The `schema(...)` bounds below document the checks the broker makes on
// input (in its `domain` module); keep the two in step, the broker's contract
// tests and its fuzzing in CI send requests on both sides of every bound.

/// `POST /renders`: what a user submits.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "shot010", "blend_file": "/projects/shot010.blend", "frame_start": 1, "frame_end": 250, "chunk_size": 10, "priority": "high", "tags": ["gpu"]})))]
pub struct RenderSpec {
    /// Shown in listings; 1 to 200 characters, no control characters, not
    /// only spaces.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 200,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
        )
    )]
    pub name: String,
    /// The .blend file, as the workers see its path: at most 4096 bytes, no
    /// control characters, not only spaces. Required unless `blend_sha256`
    /// is given; with it, only the name shown (the uploaded file's name,
    /// `<first 12 hex digits>.blend` when empty).
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 4096,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
            default = ""
        )
    )]
    #[serde(default)]
    pub blend_file: String,
    /// The SHA-256 (64 lowercase hex digits) of a .blend file stored at the
    /// broker with `PUT /files/{sha256}`; the workers fetch it from there.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    #[serde(default)]
    pub blend_sha256: Option<String>,
    /// Whether the workers upload every frame to the broker
    /// (`PUT /tasks/{id}/frames/{frame}`); a task completes only once its
    /// frames are stored. Default: true with `blend_sha256`, else false.
    #[serde(default)]
    pub upload_frames: Option<bool>,
    /// First frame to render (0 or more).
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(deserialize_with = "whole::number")]
    pub frame_start: i64,
    /// Last frame to render, at least `frame_start`; one render holds at most
    /// 1,000,000 frames.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(deserialize_with = "whole::number")]
    pub frame_end: i64,
    // Frames per task, or "auto" (adaptive chunking); the schema carries
    // the description, which a doc comment here would wrap in a second
    // `oneOf`.
    #[cfg_attr(feature = "openapi", schema(inline))]
    #[serde(default)]
    pub chunk_size: ChunkSizeSpec,
    /// With `chunk_size: "auto"` only: the seconds one chunk should take
    /// (5 to 3600; 60 when absent).
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 5, maximum = 3600, nullable = true)
    )]
    #[serde(default, deserialize_with = "whole::optional")]
    pub target_chunk_seconds: Option<i64>,
    /// `sequential` (default) or `preview-first`.
    #[serde(default)]
    pub frame_order: FrameOrder,
    /// Failed chunks of this render on one worker before that worker gets
    /// no more of them (1 to 100); the broker's `--blocklist-after` when
    /// absent.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 100, nullable = true)
    )]
    #[serde(default)]
    pub blocklist_after: Option<i64>,
    #[cfg_attr(feature = "openapi", schema(default = "normal"))]
    #[serde(default)]
    pub priority: Priority,
    /// How many times a failed task is tried again.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100, default = 1))]
    #[serde(default = "default_max_retries", deserialize_with = "whole::number")]
    pub max_retries: i64,
    /// Blender output pattern (`-o`); the broker picks one under its data
    /// directory when absent. Same rules as `blend_file`.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 4096,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
        )
    )]
    #[serde(default)]
    pub output: Option<String>,
    /// Blender render engine (`-E`), e.g. `CYCLES`; the file's own when absent.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z0-9_]{1,64}$"))]
    #[serde(default)]
    pub engine: Option<String>,
    /// Only workers carrying every one of these tags may render it.
    #[cfg_attr(
        feature = "openapi",
        schema(max_items = 32, value_type = Vec<Tag>, default = json!([]))
    )]
    #[serde(default)]
    pub tags: Vec<String>,
    /// Assemble a video from the frames once they are all rendered: an
    /// `ffmpeg` task, claimed by a worker that has ffmpeg. The render is
    /// complete when its frames are; its `video_status` follows the video.
    #[cfg_attr(feature = "openapi", schema(nullable = true))]
    #[serde(default)]
    pub video: Option<VideoSpec>,
    /// Renders (at most 32, each existing) that must complete before this
    /// one starts: until then it is `waiting`.
    #[cfg_attr(feature = "openapi", schema(max_items = 32, default = json!([])))]
    #[serde(default)]
    pub depends_on: Vec<Uuid>,
}

/// A worker tag: 1 to 64 of `A-Z a-z 0-9 - _ . :`.
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$", example = "gpu")]
pub struct Tag(pub String);

/// Counters that roll up from a render's tasks.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"tasks_total": 25, "tasks_pending": 24, "tasks_running": 0, "tasks_completed": 1, "tasks_failed": 0, "tasks_canceled": 0, "frames_total": 250, "frames_done": 10})))]
pub struct Progress {
    pub tasks_total: i64,
    pub tasks_pending: i64,
    pub tasks_running: i64,
    pub tasks_completed: i64,
    pub tasks_failed: i64,
    pub tasks_canceled: i64,
    pub frames_total: i64,
    pub frames_done: i64,
}

impl Progress {
    /// How many tasks are in `status`; all of them for `None`.
    pub fn tasks_in(&self, status: Option<TaskStatus>) -> i64 {
        match status {
            None => self.tasks_total,
            Some(TaskStatus::Pending) => self.tasks_pending,
            Some(TaskStatus::Running) => self.tasks_running,
            Some(TaskStatus::Completed) => self.tasks_completed,
            Some(TaskStatus::Failed) => self.tasks_failed,
            Some(TaskStatus::Canceled) => self.tasks_canceled,
        }
    }
}

/// A render as the broker reports it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"id": "01a20b20-eeb3-759a-bc8b-10a01e3d5140", "name": "shot010", "status": "rendering", "priority": "high", "blend_file": "/projects/shot010.blend", "blend_sha256": null, "upload_frames": false, "frame_start": 1, "frame_end": 250, "chunk_size": 10, "chunk_size_auto": false, "target_chunk_seconds": null, "measured_frame_seconds": null, "max_retries": 1, "output": "/srv/renderfarm/renders/01a20b20-eeb3-759a-bc8b-10a01e3d5140/frame_####", "engine": null, "tags": ["gpu"], "progress": {"tasks_total": 25, "tasks_pending": 24, "tasks_running": 0, "tasks_completed": 1, "tasks_failed": 0, "tasks_canceled": 0, "frames_total": 250, "frames_done": 10}, "owner": "alice", "video": {"fps": 24, "codec": "h264"}, "video_status": null, "depends_on": [], "waiting_reason": null, "blocklist_after": 3, "failure_reason": null, "frame_order": "sequential", "created_at": "2026-11-24T01:17:17.363091Z", "started_at": "2026-11-24T01:17:17.600928Z", "finished_at": null})))]
pub struct Render {
    pub id: Uuid,
    pub name: String,
    pub status: RenderStatus,
    pub priority: Priority,
    /// The .blend file; a path under a path variable reads in stored form,
    /// `{name}/rest` (`GET /variables`), which each worker is given in its
    /// platform's form.
    pub blend_file: String,
    /// The stored .blend file the workers fetch (`GET /files/{sha256}`);
    /// null when `blend_file` is a path the workers see.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    #[serde(default)]
    pub blend_sha256: Option<String>,
    /// Whether the workers upload its frames to the broker.
    #[serde(default)]
    pub upload_frames: bool,
    pub frame_start: i64,
    pub frame_end: i64,
    /// The chunk size in force: the one asked for; with adaptive chunking,
    /// the first guess, then the size the broker adapted the pending
    /// chunks to.
    pub chunk_size: i64,
    /// Whether the broker sizes the chunks (`chunk_size: "auto"` at submit).
    #[serde(default)]
    pub chunk_size_auto: bool,
    /// With adaptive chunking, the seconds one chunk should take; null
    /// otherwise.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    #[serde(default)]
    pub target_chunk_seconds: Option<i64>,
    /// With adaptive chunking, the seconds one frame takes as measured from
    /// the render's completed chunks (the median of each chunk's time over
    /// its frames, Blender's start included); null until one completed.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    #[serde(default)]
    pub measured_frame_seconds: Option<f64>,
    #[serde(default)]
    pub frame_order: FrameOrder,
    /// Failed chunks on one worker before it is blocklisted from the render.
    #[serde(default = "default_blocklist_after")]
    pub blocklist_after: i64,
    /// Why the farm failed it, when it did so on its own rather than
    /// through a chunk's last retry (every worker able to take it was
    /// blocklisted); null otherwise.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    #[serde(default)]
    pub failure_reason: Option<String>,
    pub max_retries: i64,
    /// Where Blender writes the frames (`-o`); in stored form under a path
    /// variable, as `blend_file`.
    pub output: String,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub engine: Option<String>,
    pub tags: Vec<String>,
    pub progress: Progress,
    /// Who submitted it: the name of the credential it came with; null when
    /// the broker ran without credentials (`--auth off`), or for a render
    /// submitted before renders recorded it.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub owner: Option<String>,
    /// The video asked for at submit; null for none.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    #[serde(default)]
    pub video: Option<VideoSpec>,
    /// Where its video task is: null until the frames are all rendered (or
    /// with no video asked); `completed` once `GET /renders/{id}/video`
    /// serves it. A failed video does not fail the render; requeue its task
    /// (`POST /tasks/{id}/requeue`) to try again.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    #[serde(default)]
    pub video_status: Option<TaskStatus>,
    /// The renders it waits for (`depends_on` at submit).
    #[serde(default)]
    pub depends_on: Vec<Uuid>,
    /// While `waiting`: which dependencies it waits for and how they
    /// stand (still to run, or failed or canceled, needing an operator);
    /// null otherwise.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    #[serde(default)]
    pub waiting_reason: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When the first task was handed out.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub started_at: Option<Timestamp>,
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub finished_at: Option<Timestamp>,
}

/// One chunk of a render's frames.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"id": "01a20b20-eeb3-759a-bc8b-10a14eccf12a", "render_id": "01a20b20-eeb3-759a-bc8b-10a01e3d5140", "kind": "blender", "frame_start": 1, "frame_end": 10, "status": "running", "retries": 0, "worker_id": "01a20b20-ef29-734d-8df5-13233266e6e2", "frames_done": 4, "exit_code": null, "failure_reason": null, "started_at": "2026-11-24T01:17:17.600928Z", "finished_at": null})))]
pub struct Task {
    pub id: Uuid,
    pub render_id: Uuid,
    /// What it runs: a chunk of frames (`blender`) or the render's video
    /// (`ffmpeg`, spanning all its frames, not counted in its progress).
    #[serde(default)]
    pub kind: TaskKind,
    pub frame_start: i64,
    pub frame_end: i64,
    pub status: TaskStatus,
    /// How many times the task was put back to pending after failing.
    pub retries: i64,
    /// The worker running it, or that ran it last.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub worker_id: Option<Uuid>,
    pub frames_done: i64,
    /// Blender's exit code in the last failure report.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub exit_code: Option<i64>,
    /// Why the last attempt failed, as the worker reported it.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub failure_reason: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub started_at: Option<Timestamp>,
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub finished_at: Option<Timestamp>,
}

/// Something that happened to a task, as its history shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryEvent {
    /// A worker claimed it.
    Assigned,
    Completed,
    Failed,
    /// Its worker handed it back unfinished.
    Released,
    /// Put back to pending without counting a failure: taken from its
    /// worker (lost, or disabled), or run again because an operator
    /// requeued its render.
    Requeued,
    /// Taken from its worker for more urgent work.
    Preempted,
    /// Put back to pending after a failure.
    Retried,
    /// Canceled with its render: an operator canceled it or marked it
    /// complete, or it failed for good.
    Canceled,
}

impl HistoryEvent {
    pub const ALL: [HistoryEvent; 8] = [
        HistoryEvent::Assigned,
        HistoryEvent::Completed,
        HistoryEvent::Failed,
        HistoryEvent::Released,
        HistoryEvent::Requeued,
        HistoryEvent::Preempted,
        HistoryEvent::Retried,
        HistoryEvent::Canceled,
    ];

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryEvent::Assigned => "assigned",
            HistoryEvent::Completed => "completed",
            HistoryEvent::Failed => "failed",
            HistoryEvent::Released => "released",
            HistoryEvent::Requeued => "requeued",
            HistoryEvent::Preempted => "preempted",
            HistoryEvent::Retried => "retried",
            HistoryEvent::Canceled => "canceled",
        }
    }

    /// The event named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One line of a task's history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskHistoryEntry {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    pub event: HistoryEvent,
    /// The worker concerned, if any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub worker_id: Option<Uuid>,
    /// Why, in words (e.g. "worker lost: no heartbeat for 60s").
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub detail: Option<String>,
    /// Who did it, when a person did: the name of the credential of the
    /// operator who canceled or requeued the render, or disabled the
    /// worker. Null for what workers and the scheduler did, when the broker
    /// ran without credentials, and in entries written before history
    /// recorded it.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub actor: Option<String>,
}

/// `GET /tasks/{id}`: a task with its history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: Task,
    /// Oldest first.
    pub history: Vec<TaskHistoryEntry>,
}

/// One rendered frame at the broker (`GET /renders/{id}/frames`): uploaded
/// by a worker, or found in the render's output folder.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"frame": 1, "name": "frame_0001.png", "url": "/renders/01a20b20-eeb3-759a-bc8b-10a01e3d5140/frames/1", "bytes": 48213, "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "modified_at": "2026-11-24T01:18:02.117Z"})))]
pub struct FrameFile {
    pub frame: i64,
    /// The file name Blender gave the frame, e.g. `frame_0001.png`.
    #[serde(default)]
    pub name: String,
    /// Where to fetch the image: `/renders/{id}/frames/{frame}`.
    pub url: String,
    /// The file's size.
    pub bytes: u64,
    /// The file's SHA-256 for a frame stored at the broker (uploaded by a
    /// worker); null for one read from the output folder.
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, pattern = "^[0-9a-f]{64}$")
    )]
    #[serde(default)]
    pub sha256: Option<String>,
    /// When the file was last written.
    pub modified_at: DateTime<Utc>,
}

/// A file stored at the broker (`PUT`/`HEAD /files/{sha256}`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "bytes": 104857600})))]
pub struct FileInfo {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    pub sha256: String,
    pub bytes: u64,
}

/// A part of a file accepted (`PUT /files/{sha256}` with `Content-Range`),
/// the file not complete yet: send the rest from `received` on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "bytes": 104857600, "received": 52428800})))]
pub struct FileUpload {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{64}$"))]
    pub sha256: String,
    /// The whole file's declared size.
    pub bytes: u64,
    /// The bytes held so far.
    pub received: u64,
}

/// `GET /renders/{id}/frames`: the frames of a render found on disk.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameList {
    pub render_id: Uuid,
    /// Lowest frame first.
    pub frames: Vec<FrameFile>,
}

/// What one scheduler tick did.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TickReport {
    /// Tasks of lost workers put back to pending.
    pub requeued: i64,
    /// Failed tasks put back to pending for another try.
    pub retried: i64,
    /// Failed tasks with no retry left whose render this tick failed.
    pub failed: i64,
    /// Running tasks taken from their workers for more urgent work.
    pub preempted: i64,
    /// How many more workers would be needed now for the work that waited
    /// past its allowance.
    pub workers_wanted: i64,
    /// Workers marked offline.
    pub workers_lost: i64,
    /// Finished renders deleted for having ended longer ago than the
    /// retention (`--keep-finished`).
    pub purged: i64,
    /// Stored files no render refers to, and partial uploads, freed for
    /// being older than `--file-grace`.
    #[serde(default)]
    pub files_collected: i64,
    /// Renders with adaptive chunking whose pending chunks were re-split to
    /// the size their measured frame time asks for.
    #[serde(default)]
    pub resplit: i64,
    /// When the tick ran (the scheduler's clock).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, required = true))]
    pub ran_at: Option<Timestamp>,
}

/// Who leads the scheduler, when several brokers share a store.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderLease {
    /// The broker instance holding the lease.
    pub holder: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: Timestamp,
}

/// `GET /scheduler`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerStatus {
    /// This broker instance.
    pub instance: String,
    /// The current leader, if any broker holds the lease.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub leader: Option<LeaderLease>,
    /// True when this broker runs the periodic tick.
    pub is_leader: bool,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_report: Option<TickReport>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, required = true))]
    pub next_tick_at: Option<Timestamp>,
    pub tick_seconds: f64,
    pub worker_timeout_seconds: f64,
    /// Wait allowance per priority level in seconds; null means never preempts.
    pub allowances: PriorityAllowances,
    /// Finished renders are deleted this many seconds after they ended;
    /// null: kept until an operator deletes them.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub keep_finished_seconds: Option<f64>,
}

/// A wait allowance per priority level, in seconds; `None`: never.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorityAllowances {
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub low: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub normal: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub high: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub urgent: Option<f64>,
}

/// `POST /workers`: a worker agent introduces itself.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "node-01", "tags": ["gpu", "linux"], "kinds": ["blender", "ffmpeg"]})))]
pub struct WorkerSpec {
    /// 1 to 200 characters, no control characters, not only spaces.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 200,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
        )
    )]
    pub name: String,
    /// What the machine offers (e.g. `gpu`); renders that ask for tags go only
    /// to workers carrying all of them.
    #[cfg_attr(
        feature = "openapi",
        schema(max_items = 32, value_type = Vec<Tag>, default = json!([]))
    )]
    #[serde(default)]
    pub tags: Vec<String>,
    /// The task kinds it can run; `["blender"]` when absent.
    #[cfg_attr(
        feature = "openapi",
        schema(min_items = 1, default = json!(["blender"]))
    )]
    #[serde(default = "default_kinds")]
    pub kinds: Vec<TaskKind>,
    /// The agent's IANA time zone (e.g. `Europe/Berlin`), in which its
    /// hours are read; UTC when absent.
    #[cfg_attr(
        feature = "openapi",
        schema(nullable = false, example = "Europe/Berlin")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The hours it takes new work in (`renderfarm-worker --available`),
    /// e.g. `mon-fri 19:00-07:00, sat-sun`; at any time when absent.
    #[cfg_attr(
        feature = "openapi",
        schema(nullable = false, example = "mon-fri 19:00-07:00, sat-sun")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<String>,
    /// Hand the running task back when its hours end, rather than finish it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict_hours: bool,
    /// The operating system it renders on; paths given to it are in this
    /// platform's form (path variables, `GET /variables`). `linux` when
    /// absent (agents older than path mapping).
    #[serde(default)]
    pub platform: Platform,
}

/// `PUT /workers/{id}/hours`: the hours an agent was started with, sent by
/// the agent itself each time it starts (its registration is kept across
/// restarts, its flags may change).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"time_zone": "Europe/Berlin", "available": "mon-fri 19:00-07:00, sat-sun", "strict_hours": false})))]
pub struct WorkerHours {
    /// As in [`WorkerSpec`].
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    #[serde(default)]
    pub time_zone: Option<String>,
    /// As in [`WorkerSpec`]; absent: at any time.
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    #[serde(default)]
    pub available: Option<String>,
    #[serde(default)]
    pub strict_hours: bool,
}

/// `PUT /workers/{id}/availability`: an operator's hours for a worker,
/// kept until cleared and winning over the agent's own.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"available": "sat-sun"})))]
pub struct AvailabilityOverride {
    /// Comma-separated entries, each days (`mon`, `mon-fri`, `fri-mon`,
    /// `daily`) and optionally hours (`19:00-07:00`; a range that crosses
    /// midnight belongs to the day it starts); `always` for no limit.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 1000,
            example = "mon-fri 19:00-07:00, sat-sun"
        )
    )]
    pub available: String,
}

/// Who set the hours a worker keeps.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoursSetBy {
    /// The agent's `--available` flag.
    Agent,
    /// An operator, through `PUT /workers/{id}/availability`.
    Operator,
}

/// The hours a worker takes new work in, and where it stands now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"schedule": "mon-fri 19:00-07:00, sat-sun", "set_by": "agent", "agent_schedule": "mon-fri 19:00-07:00, sat-sun", "time_zone": "Europe/Berlin", "strict_hours": false, "available_now": false, "next_change": "2026-11-24T18:00:00Z"})))]
pub struct WorkerAvailability {
    /// The hours in force, in canonical form.
    pub schedule: String,
    pub set_by: HoursSetBy,
    /// What the agent's flag says, also while an operator's hours win.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub agent_schedule: Option<String>,
    /// The IANA zone the hours are read in.
    pub time_zone: String,
    pub strict_hours: bool,
    /// Whether it takes new work now.
    pub available_now: bool,
    /// When `available_now` next flips; none within a week.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, required = true))]
    pub next_change: Option<Timestamp>,
}

/// A worker as the broker reports it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"id": "01a20b20-ef29-734d-8df5-13233266e6e2", "name": "node-01", "status": "idle", "tags": ["gpu", "linux"], "kinds": ["blender", "ffmpeg"], "last_heartbeat": "2026-11-24T01:17:17.481778Z", "current_task_id": null, "registered_at": "2026-11-24T01:17:17.481778Z", "time_zone": "Europe/Berlin", "availability": {"schedule": "mon-fri 19:00-07:00, sat-sun", "set_by": "agent", "agent_schedule": "mon-fri 19:00-07:00, sat-sun", "time_zone": "Europe/Berlin", "strict_hours": false, "available_now": true, "next_change": "2026-11-24T06:00:00Z"}, "platform": "linux"})))]
pub struct Worker {
    pub id: Uuid,
    pub name: String,
    pub status: WorkerStatus,
    pub tags: Vec<String>,
    /// The task kinds it runs.
    #[serde(default = "default_kinds")]
    pub kinds: Vec<TaskKind>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub last_heartbeat: Timestamp,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub current_task_id: Option<Uuid>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub registered_at: Timestamp,
    /// The IANA time zone its agent reported.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Its hours; null when it takes work at any time.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    #[serde(default)]
    pub availability: Option<WorkerAvailability>,
    /// The operating system it renders on, as its agent reported it.
    #[serde(default)]
    pub platform: Platform,
}

/// The answer to `POST /workers/{id}/request-task`: one chunk to render.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"task_id": "01a20b20-eeb3-759a-bc8b-10a14eccf12a", "render_id": "01a20b20-eeb3-759a-bc8b-10a01e3d5140", "lease_id": "304fbe81-bc54-4cd1-a56e-d37b57f0ad2c", "blend_file": "/projects/shot010.blend", "blend_sha256": null, "upload_frames": false, "frame_start": 1, "frame_end": 10, "output": "/srv/renderfarm/renders/01a20b20-eeb3-759a-bc8b-10a01e3d5140/frame_####", "engine": null, "kind": "blender", "path_mappings": []})))]
pub struct Assignment {
    pub task_id: Uuid,
    pub render_id: Uuid,
    /// Must accompany every report about this task; a newer assignment of the
    /// same task makes it stale.
    pub lease_id: Uuid,
    /// The .blend file, in this worker's platform's form.
    pub blend_file: String,
    /// Fetch the .blend file by this hash (`GET /files/{sha256}`) rather
    /// than opening `blend_file`.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    #[serde(default)]
    pub blend_sha256: Option<String>,
    /// Upload each frame (`PUT /tasks/{id}/frames/{frame}`) before
    /// completing the task.
    #[serde(default)]
    pub upload_frames: bool,
    pub frame_start: i64,
    pub frame_end: i64,
    pub output: String,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub engine: Option<String>,
    /// What to run: a chunk (`blender`), or the render's video (`ffmpeg`:
    /// frames `frame_start`..=`frame_end` in order, at `video`'s rate, sent
    /// with `PUT /tasks/{id}/video` before completing).
    #[serde(default)]
    pub kind: TaskKind,
    /// For an `ffmpeg` task: the video to make.
    #[cfg_attr(feature = "openapi", schema(nullable = true))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoSpec>,
    /// For an `ffmpeg` task of a render whose frames were uploaded: the
    /// stored frames, lowest first (fetch each with `GET /files/{sha256}`).
    /// Empty when the frames are in `output` on a drive the worker shares.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputFrame>,
    /// Path prefixes to rewrite inside the .blend before rendering (images,
    /// linked libraries and other file-backed data saved with another
    /// platform's paths), longest `from` first; `blend_file` and `output`
    /// are in this worker's form already. Empty when the render's paths use
    /// no path variable.
    #[serde(default)]
    pub path_mappings: Vec<PathMapping>,
}

/// One rewrite of the paths inside a .blend: a path that starts with
/// `from` (on a path-component boundary) starts with `to` instead.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"from": "P:\\projects", "to": "/mnt/projects", "ignore_case": true})))]
pub struct PathMapping {
    /// Another platform's value of a path variable.
    pub from: String,
    /// This worker's platform's value of the same variable.
    pub to: String,
    /// Whether `from` is compared without regard to case (a Windows or
    /// macOS value), `/` and `\` counting as the same for a Windows one.
    #[serde(default)]
    pub ignore_case: bool,
}

/// An operating system a worker renders on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    #[default]
    Linux,
    Windows,
    Macos,
}

impl Platform {
    /// Every platform.
    pub const ALL: [Platform; 3] = [Platform::Linux, Platform::Windows, Platform::Macos];

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Linux => "linux",
            Platform::Windows => "windows",
            Platform::Macos => "macos",
        }
    }

    /// The platform named `s` (lowercase), if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The platform of a Rust `std::env::consts::OS` name; `None` for one
    /// the farm has no paths for.
    pub fn of_os(os: &str) -> Option<Self> {
        match os {
            "linux" => Some(Platform::Linux),
            "windows" => Some(Platform::Windows),
            "macos" => Some(Platform::Macos),
            _ => None,
        }
    }
}

/// `PUT /variables/{name}`: a path variable's value on each platform; at
/// least one is given. A value is an absolute path of its platform:
/// `/...` on linux and macos; `X:\...`, `X:/...` or `\\server\share...`
/// on windows.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"linux": "/mnt/projects", "windows": "P:\\projects", "macos": "/Volumes/projects"})))]
pub struct PathVariableSpec {
    #[cfg_attr(feature = "openapi", schema(max_length = 1024, nullable = true))]
    #[serde(default)]
    pub linux: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 1024, nullable = true))]
    #[serde(default)]
    pub windows: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 1024, nullable = true))]
    #[serde(default)]
    pub macos: Option<String>,
}

/// A farm-wide path variable (`GET /variables`): a shared folder's path on
/// each platform. A render path under one of them is stored as
/// `{name}/rest` and given to each worker in its platform's form.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "projects", "linux": "/mnt/projects", "windows": "P:\\projects", "macos": null})))]
pub struct PathVariable {
    /// `^[a-z][a-z0-9_]{0,31}$`.
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub linux: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub windows: Option<String>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub macos: Option<String>,
}

impl PathVariable {
    /// Its value on `platform`, if it has one.
    pub fn value(&self, platform: Platform) -> Option<&str> {
        match platform {
            Platform::Linux => self.linux.as_deref(),
            Platform::Windows => self.windows.as_deref(),
            Platform::Macos => self.macos.as_deref(),
        }
    }
}

/// The largest preview a worker may send (`PUT /tasks/{id}/preview`). A
/// [`PREVIEW_WIDTH`]-pixel-wide JPEG of a rendered frame is 10–40 KiB; the
/// bound keeps the broker's one preview per render small whatever is sent.
pub const MAX_PREVIEW_BYTES: usize = 256 * 1024;

/// How wide the agent makes a frame's preview, in pixels.
pub const PREVIEW_WIDTH: u32 = 320;

/// `POST /tasks/{id}/progress`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"lease_id": "304fbe81-bc54-4cd1-a56e-d37b57f0ad2c", "frames_done": 4, "log": "Fra:4 Mem:12.5M | Time:00:00.41 | Sample 4/4\n"})))]
pub struct ProgressReport {
    pub lease_id: Uuid,
    /// Frames of this task finished so far: 0 to the task's frame count.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(deserialize_with = "whole::number")]
    pub frames_done: i64,
    /// Log text produced since the previous report; appended to the task's log.
    #[serde(default)]
    pub log: Option<String>,
}

/// `POST /tasks/{id}/complete`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"lease_id": "304fbe81-bc54-4cd1-a56e-d37b57f0ad2c", "log": "Saved: '/srv/renderfarm/renders/01a20b20-eeb3-759a-bc8b-10a01e3d5140/frame_0010.png'\n"})))]
pub struct CompleteReport {
    pub lease_id: Uuid,
    /// The rest of the log; appended to the task's log.
    #[serde(default)]
    pub log: Option<String>,
}

/// `POST /tasks/{id}/fail`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"lease_id": "304fbe81-bc54-4cd1-a56e-d37b57f0ad2c", "exit_code": 1, "reason": "Error: Build without OpenImageDenoiser", "log": "Fra:1 Mem:12.5M | Denoising\n"})))]
pub struct FailReport {
    pub lease_id: Uuid,
    /// Blender's exit code, if it exited.
    #[serde(default, deserialize_with = "whole::optional")]
    pub exit_code: Option<i64>,
    /// Why it failed (not only spaces); the broker keeps its last 64 KiB.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub reason: String,
    /// The rest of the log; appended to the task's log.
    #[serde(default)]
    pub log: Option<String>,
}

/// `POST /tasks/{id}/release`: the worker gives the task back unfinished
/// (it is stopping); the task is queued again without counting a failure.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"lease_id": "304fbe81-bc54-4cd1-a56e-d37b57f0ad2c", "log": "Fra:3 Mem:12.5M\n"})))]
pub struct ReleaseReport {
    pub lease_id: Uuid,
    /// The rest of the log; appended to the task's log.
    #[serde(default)]
    pub log: Option<String>,
}

/// `POST /workers/{id}/heartbeat`: send `task_id` and `lease_id` together
/// while rendering, neither when idle.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"task_id": "01a20b20-eeb3-759a-bc8b-10a14eccf12a", "lease_id": "304fbe81-bc54-4cd1-a56e-d37b57f0ad2c", "frames_done": 4})))]
pub struct Heartbeat {
    #[serde(default)]
    pub task_id: Option<Uuid>,
    #[serde(default)]
    pub lease_id: Option<Uuid>,
    /// Frames of the task finished so far.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(default, deserialize_with = "whole::optional")]
    pub frames_done: Option<i64>,
}

/// What the broker wants a worker to do with the task it holds.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatAction {
    /// Keep rendering (or keep asking for work).
    Continue,
    /// Stop the task now and send nothing more under its lease.
    Abort,
}

/// The answer to a heartbeat.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"action": "continue"})))]
pub struct HeartbeatReply {
    pub action: HeartbeatAction,
}

/// What an operator can ask of a render.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenderAction {
    Pause,
    Resume,
    Cancel,
    Requeue,
    /// Start a waiting render now, without waiting for its dependencies.
    Release,
}

/// `PUT /renders/{id}/status`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"action": "pause"})))]
pub struct RenderStatusChange {
    pub action: RenderAction,
}

/// What an operator can ask of a worker.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerAction {
    /// Finish the current task, take no new one.
    Drain,
    /// Take no work at all until enabled.
    Disable,
    /// Back to taking work.
    Enable,
}

/// `PUT /workers/{id}/status`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"action": "drain"})))]
pub struct WorkerStatusChange {
    pub action: WorkerAction,
}

/// One page of a listing.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// How many items match the filter in all pages.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// The body of every error answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"error": "not_found", "message": "no render with id 0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d"})))]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `invalid_input`, `not_found`.
    #[cfg_attr(feature = "openapi", schema(value_type = ErrorCode))]
    pub error: String,
    /// What went wrong and how to fix it.
    pub message: String,
}

/// The error codes, one per kind of failure.
// Documentation only: `ErrorBody::error` stays a string on the wire, so that
// clients built before a new code was added still parse the body.
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400
    InvalidInput,
    /// 401: no credential, or one that is not (or no longer) valid
    Unauthorized,
    /// 403: a valid credential without the right
    Forbidden,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 409
    Conflict,
    /// 413
    PayloadTooLarge,
    /// 416: a `Range` outside the file
    RangeNotSatisfiable,
    /// 415
    UnsupportedMediaType,
    /// 429
    TooManyRequests,
    /// 500
    Internal,
    /// 503
    Unavailable,
    /// 507: the broker's file storage is full (`--storage-quota`)
    InsufficientStorage,
}

/// `GET /health` and `GET /ready`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"status": "ready", "store": "sqlite"})))]
pub struct HealthReport {
    /// `ok` (health), `ready`, or `not ready: <why>`.
    pub status: String,
    /// The store backend (`sqlite`); null from `/health`.
    #[serde(default)]
    pub store: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(frame_end: &str) -> Result<RenderSpec, serde_json::Error> {
        serde_json::from_str(&format!(
            r#"{{"name": "n", "blend_file": "/f.blend", "frame_start": 1, "frame_end": {frame_end}}}"#
        ))
    }

    #[test]
    fn a_chunk_size_is_a_whole_number_or_auto_and_reads_back_as_written() {
        let read = |v: &str| serde_json::from_str::<ChunkSizeSpec>(v);
        type Case = (&'static str, Option<ChunkSizeSpec>);
        let table: &[Case] = &[
            ("10", Some(ChunkSizeSpec::Frames(10))),
            ("10.0", Some(ChunkSizeSpec::Frames(10))),
            ("\"auto\"", Some(ChunkSizeSpec::Auto)),
            ("2.5", None),
            ("\"fast\"", None),
            ("\"10\"", None),
            ("true", None),
            ("null", None),
        ];
        for (json, want) in table {
            assert_eq!(read(json).ok(), *want, "{json}");
        }
        for spec in [ChunkSizeSpec::Frames(7), ChunkSizeSpec::Auto] {
            assert_eq!(read(&serde_json::to_string(&spec).unwrap()).unwrap(), spec);
        }
        assert!(read("\"fast\"")
            .unwrap_err()
            .to_string()
            .contains("\"auto\""));
        assert_eq!(spec("4").unwrap().chunk_size, ChunkSizeSpec::Frames(10));
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats_but_fractions_are_refused() {
        assert_eq!(spec("10").unwrap().frame_end, 10);
        assert_eq!(spec("10.0").unwrap().frame_end, 10);
        assert_eq!(spec("-3e2").unwrap().frame_end, -300);
        for bad in [
            "2.5",
            "1e19",
            "9223372036854775808",
            "\"7\"",
            "null",
            "true",
        ] {
            assert!(spec(bad).is_err(), "{bad} was accepted");
        }
        let beat: Heartbeat = serde_json::from_str(r#"{"frames_done": 4.0}"#).unwrap();
        assert_eq!(beat.frames_done, Some(4));
        let beat: Heartbeat = serde_json::from_str(r#"{"frames_done": null}"#).unwrap();
        assert_eq!(beat.frames_done, None);
        assert!(serde_json::from_str::<Heartbeat>(r#"{"frames_done": 0.5}"#).is_err());
    }
}

/// `POST /tokens`: a new credential for a person, a script or a fleet of
/// workers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "alice", "role": "artist", "expires": "90d"})))]
pub struct TokenSpec {
    /// Who holds it (renders they submit record this name as their owner).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub name: String,
    /// `viewer` (reads), `artist` (submits, changes its own renders),
    /// `operator` (every render and worker action), `admin` (tokens), or
    /// `worker` (enrols render machines).
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(viewer|artist|operator|admin|worker)$")
    )]
    pub role: String,
    /// How long it lives, e.g. `90d`, `12h`; none: until revoked.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A credential as the broker lists it: never its secret.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"id": "0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d", "name": "alice", "role": "artist", "created_at": "2026-11-24T01:17:17.363091Z", "expires_at": null, "revoked_at": null, "worker_id": null, "session_of": null})))]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub expires_at: Option<Timestamp>,
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub revoked_at: Option<Timestamp>,
    /// The registered worker whose own secret this is.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub worker_id: Option<Uuid>,
    /// The token a browser signed in with, when this is that session.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub session_of: Option<Uuid>,
}

/// The answer to `POST /tokens`: the token and its secret, shown this once.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedToken {
    #[serde(flatten)]
    pub token: TokenInfo,
    /// Send it as `Authorization: Bearer <secret>`. Only its hash is kept:
    /// it cannot be shown again.
    pub secret: String,
}

/// The answer to `POST /workers`: the worker, and the secret it acts with.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredWorker {
    #[serde(flatten)]
    pub worker: Worker,
    /// The worker's own credential for every later request
    /// (`Authorization: Bearer <secret>`); null when the broker runs with
    /// auth off. Shown this once.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub secret: Option<String>,
}

/// `GET /session`, and the answer to signing in: who the browser acts as.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "alice", "role": "artist", "expires_at": "2026-11-24T13:17:17.363091Z", "csrf": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"})))]
pub struct SessionInfo {
    pub name: String,
    pub role: String,
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub expires_at: Option<Timestamp>,
    /// Send it as `X-CSRF-Token` with every change made with the session
    /// cookie; null when the caller used a bearer token.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub csrf: Option<String>,
}

/// `POST /signed-urls`: a link to one download that another program can
/// open without a credential, for a short while.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"path": "/tasks/01a20b20-eeb3-759a-bc8b-10a14eccf12a/log", "expires_in": 300})))]
pub struct SignedUrlRequest {
    /// The path to sign, e.g. `/tasks/{id}/log`; only GET routes.
    pub path: String,
    /// Seconds it stays valid: 1 to 3600, default 300.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3600))]
    #[serde(default, deserialize_with = "whole::optional")]
    pub expires_in: Option<i64>,
}

/// A signed URL.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedUrl {
    /// The path with its signature, relative to the broker's address.
    pub url: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: Timestamp,
}

/// What a [`FarmEvent`] tells of: its `event:` name on the stream.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A render appeared, changed status, or (at most once a second) its
    /// progress changed: `render_id`, `status`, `progress`.
    Render,
    /// A render was deleted: `render_id`.
    RenderDeleted,
    /// A task changed status in a move that involves a worker (claimed,
    /// completed, failed, released, requeued or preempted from running):
    /// `task_id`, `render_id`, `status`, `worker_id`, `frames_done`. Bulk
    /// moves of a whole render by an operator show as a `render` event.
    Task,
    /// A running task's frames done changed (at most once a second per task):
    /// `task_id`, `render_id`, `worker_id`, `frames_done`.
    Progress,
    /// A running task's log grew (at most once a second per task): `task_id`,
    /// `render_id`, `log_bytes` (bytes kept now).
    Log,
    /// A worker registered, or its mode or being offline changed:
    /// `worker_id`, `status`.
    Worker,
    /// A worker was removed: `worker_id`.
    WorkerDeleted,
    /// Not stored: the stream could not resume where the client asked
    /// (older than the broker keeps, or unknown): reload, then go on from
    /// this event's id. `message` says why.
    Reset,
}

impl EventKind {
    /// Every kind that is stored (all but `reset`).
    pub const STORED: [EventKind; 7] = [
        EventKind::Render,
        EventKind::RenderDeleted,
        EventKind::Task,
        EventKind::Progress,
        EventKind::Log,
        EventKind::Worker,
        EventKind::WorkerDeleted,
    ];

    /// The snake_case name used on the wire (the SSE `event:` field) and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Render => "render",
            EventKind::RenderDeleted => "render_deleted",
            EventKind::Task => "task",
            EventKind::Progress => "progress",
            EventKind::Log => "log",
            EventKind::Worker => "worker",
            EventKind::WorkerDeleted => "worker_deleted",
            EventKind::Reset => "reset",
        }
    }

    /// The kind named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::STORED
            .into_iter()
            .chain([EventKind::Reset])
            .find(|k| k.as_str() == s)
    }
}

/// One change in the farm, as `GET /events` sends it (the `data:` of one
/// server-sent event; its `id:` and `event:` repeat `id` and `kind`). Which
/// fields are set depends on `kind` (see [`EventKind`]); the others are
/// absent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", schema(example = json!({"id": 4182, "at": "2026-11-24T01:17:19.104233Z", "kind": "task", "render_id": "01a20b20-eeb3-759a-bc8b-10a01e3d5140", "task_id": "01a20b20-eeb3-759a-bc8b-10a14eccf12a", "worker_id": "01a20b21-0c1d-7d3e-8f90-a1b2c3d4e5f6", "status": "running", "frames_done": 0})))]
pub struct FarmEvent {
    /// Its place in the farm's sequence of events: strictly increasing.
    pub id: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<Uuid>,
    /// The new status of the render, task or worker the event names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_done: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<i64>,
    /// Why the stream starts over (`reset` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl FarmEvent {
    /// An event of `kind` with nothing but its place and time set.
    pub fn new(id: i64, at: Timestamp, kind: EventKind) -> Self {
        Self {
            id,
            at,
            kind,
            render_id: None,
            task_id: None,
            worker_id: None,
            status: None,
            frames_done: None,
            progress: None,
            log_bytes: None,
            message: None,
        }
    }
}

/// Renders by status (`GET /events/summary`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderCounts {
    #[serde(default)]
    pub waiting: i64,
    pub queued: i64,
    pub rendering: i64,
    pub paused: i64,
    pub completed: i64,
    pub failed: i64,
    pub canceled: i64,
}

impl RenderCounts {
    /// The count of renders in `status`.
    pub fn of(mut self, status: RenderStatus) -> i64 {
        *self.of_mut(status)
    }

    /// The count of renders in `status`, to set.
    pub fn of_mut(&mut self, status: RenderStatus) -> &mut i64 {
        match status {
            RenderStatus::Waiting => &mut self.waiting,
            RenderStatus::Queued => &mut self.queued,
            RenderStatus::Rendering => &mut self.rendering,
            RenderStatus::Paused => &mut self.paused,
            RenderStatus::Completed => &mut self.completed,
            RenderStatus::Failed => &mut self.failed,
            RenderStatus::Canceled => &mut self.canceled,
        }
    }
}

/// Pending tasks by priority: the queue's depth (`GET /events/summary`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    pub low: i64,
    pub normal: i64,
    pub high: i64,
    pub urgent: i64,
}

/// Workers by status (`GET /events/summary`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounts {
    pub idle: i64,
    pub busy: i64,
    pub offline: i64,
    pub draining: i64,
    pub disabled: i64,
}

/// A render rendering now, in the farm summary.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningRender {
    pub id: Uuid,
    pub name: String,
    pub priority: Priority,
    pub progress: Progress,
}

/// The farm in numbers: the `data:` of `GET /events/summary`'s events.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FarmSummary {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    pub renders: RenderCounts,
    /// Pending tasks of renders that may run (not paused), by priority.
    pub queue: QueueDepth,
    pub workers: WorkerCounts,
    /// Frames of tasks that completed in the last hour.
    pub frames_last_hour: i64,
    /// Renders rendering now, the most urgent first (at most 50).
    pub running: Vec<RunningRender>,
}

mod webhooks;
pub use webhooks::{
    RegisteredWebhook, WebhookDeliveryCounts, WebhookInfo, WebhookPayload, WebhookSpec,
};
