//! Renders: checking what a user submits, the operator's status changes, and
//! how a render's status and counters follow its tasks.

use chrono::{DateTime, Utc};
use renderfarm_wire::{
    HistoryEvent, Priority, Progress, Render, RenderAction, RenderSpec, RenderStatus, TaskStatus,
};
use uuid::Uuid;

use super::files::{upload_frames_by_default, Sha256};
use super::{
    chunk_count, plan_tasks, probe_then_guess, statuses_affected_by, validate_chunking,
    validate_name, validate_tags, Chunking, FrameRange, IllegalTransition, PlannedTask, TaskEvent,
    ValidationError,
};

const MAX_RETRIES_LIMIT: i64 = 100;
const MAX_PATH_LEN: usize = 4096;

/// A submitted render whose every field passed its checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRenderSpec {
    pub name: String,
    pub blend_file: String,
    /// The stored .blend the workers fetch; whether it is stored is the
    /// caller's to check (the file storage knows).
    pub blend_sha256: Option<Sha256>,
    pub upload_frames: bool,
    pub frames: FrameRange,
    pub chunking: Chunking,
    pub frame_order: renderfarm_wire::FrameOrder,
    /// The render's own; the broker's `--blocklist-after` when `None`.
    pub blocklist_after: Option<i64>,
    pub priority: Priority,
    pub max_retries: i64,
    pub output: Option<String>,
    pub engine: Option<String>,
    pub tags: Vec<String>,
    pub video: Option<renderfarm_wire::VideoSpec>,
    /// Each once; whether they exist is checked against the store.
    pub depends_on: Vec<Uuid>,
}

fn validate_path(field: &'static str, path: &str, what: &str) -> Result<String, ValidationError> {
    if path.trim().is_empty() {
        return Err(ValidationError::new(
            field,
            format!("must not be empty; give {what}"),
        ));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(ValidationError::new(
            field,
            format!(
                "is {} bytes long; use a path of at most {MAX_PATH_LEN} bytes",
                path.len()
            ),
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(path.to_string())
}

impl TryFrom<RenderSpec> for ValidRenderSpec {
    type Error = ValidationError;

    fn try_from(spec: RenderSpec) -> Result<Self, Self::Error> {
        let name = validate_name("name", &spec.name)?;
        let blend_sha256 = spec
            .blend_sha256
            .as_deref()
            .map(|h| Sha256::parse("blend_sha256", h))
            .transpose()?;
        let blend_file = match &blend_sha256 {
            // Only the name shown: the workers fetch the file by its hash.
            Some(hash) if spec.blend_file.is_empty() => hash.default_blend_name(),
            Some(_) => validate_path("blend_file", &spec.blend_file, "the uploaded file's name")?,
            None if spec.blend_file.is_empty() => {
                return Err(ValidationError::new(
                    "blend_file",
                    "is missing; give the path of the .blend file as the workers see it, or upload the file with PUT /files/{sha256} and give its blend_sha256",
                ))
            }
            None => validate_path(
                "blend_file",
                &spec.blend_file,
                "the path of the .blend file as the workers see it",
            )?,
        };
        let upload_frames = upload_frames_by_default(spec.upload_frames, blend_sha256.is_some());
        let frames = FrameRange::new(spec.frame_start, spec.frame_end)?;
        let chunking = validate_chunking(spec.chunk_size, spec.target_chunk_seconds)?;
        if !(0..=MAX_RETRIES_LIMIT).contains(&spec.max_retries) {
            return Err(ValidationError::new(
                "max_retries",
                format!("is {}; give 0 to {MAX_RETRIES_LIMIT}", spec.max_retries),
            ));
        }
        let output = spec
            .output
            .map(|o| {
                validate_path(
                    "output",
                    &o,
                    "a Blender output pattern such as /renders/shot1/frame_####",
                )
            })
            .transpose()?;
        let engine = spec.engine.map(validate_engine).transpose()?;
        let tags = validate_tags("tags", &spec.tags)?;
        let video = super::validate_video(spec.video)?;
        Ok(Self {
            name,
            blend_file,
            blend_sha256,
            upload_frames,
            frames,
            chunking,
            frame_order: spec.frame_order,
            blocklist_after: super::validate_blocklist_after(spec.blocklist_after)?,
            priority: spec.priority,
            max_retries: spec.max_retries,
            output,
            engine,
            tags,
            video,
            depends_on: super::validate_dependencies(&spec.depends_on)?,
        })
    }
}

fn validate_engine(engine: String) -> Result<String, ValidationError> {
    let ok = !engine.is_empty()
        && engine.len() <= 64
        && engine
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(engine)
    } else {
        Err(ValidationError::new(
            "engine",
            format!(
                "{engine:?} is not a Blender engine name; use one such as CYCLES, BLENDER_EEVEE or BLENDER_WORKBENCH, or leave it out to use the file's own"
            ),
        ))
    }
}

/// A render about to be stored: its record, and the chunks its tasks cover.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRender {
    pub render: Render,
    pub frames: FrameRange,
    pub chunking: Chunking,
}

impl NewRender {
    /// Builds the record of a new render submitted by `owner` (the name of
    /// the caller's credential; `None` without credentials);
    /// `default_output` names where frames go when the user did not say.
    pub fn plan(
        spec: ValidRenderSpec,
        id: Uuid,
        owner: Option<String>,
        default_output: impl FnOnce(Uuid) -> String,
        now: DateTime<Utc>,
    ) -> Self {
        let task_count = match (spec.chunking, spec.frame_order) {
            (Chunking::Fixed(size), renderfarm_wire::FrameOrder::Sequential) => {
                chunk_count(spec.frames, size)
            }
            (chunking, order) => initial_tasks(spec.frames, chunking, order).count() as i64,
        };
        let render = Render {
            id,
            name: spec.name,
            status: RenderStatus::Queued,
            priority: spec.priority,
            blend_file: spec.blend_file,
            blend_sha256: spec.blend_sha256.map(|h| h.to_string()),
            upload_frames: spec.upload_frames,
            frame_start: spec.frames.start(),
            frame_end: spec.frames.end(),
            chunk_size: spec.chunking.initial_size().get(),
            chunk_size_auto: matches!(spec.chunking, Chunking::Auto { .. }),
            target_chunk_seconds: spec.chunking.target_seconds(),
            measured_frame_seconds: None,
            frame_order: spec.frame_order,
            blocklist_after: spec
                .blocklist_after
                .unwrap_or(super::DEFAULT_BLOCKLIST_AFTER),
            failure_reason: None,
            max_retries: spec.max_retries,
            output: spec.output.unwrap_or_else(|| default_output(id)),
            engine: spec.engine,
            tags: spec.tags,
            progress: Progress {
                tasks_total: task_count,
                tasks_pending: task_count,
                frames_total: spec.frames.len(),
                ..Progress::default()
            },
            owner,
            video: spec.video,
            video_status: None,
            depends_on: spec.depends_on,
            waiting_reason: None,
            created_at: now,
            started_at: None,
            finished_at: None,
        };
        Self {
            render,
            frames: spec.frames,
            chunking: spec.chunking,
        }
    }

    /// Starts the render waiting when a dependency (as the store found
    /// them) has not completed.
    pub fn wait_for(mut self, deps: &[super::DependencyState]) -> Self {
        let reason = super::waiting_reason(deps);
        self.render.status = super::initial_status(&reason);
        self.render.waiting_reason = reason;
        self
    }

    /// The render's tasks: their frames and claim ranks
    /// (`domain::plan_tasks`), in the order they are written.
    pub fn tasks(&self) -> impl Iterator<Item = PlannedTask> {
        initial_tasks(self.frames, self.chunking, self.render.frame_order)
    }
}

/// A new render's tasks: `domain::plan_tasks` in chunks of the size given;
/// with adaptive chunking, a sequential render's probes then its first
/// guess (`domain::adaptive`), a preview-first render's previews (its
/// probes) then chunks of the first guess.
fn initial_tasks(
    frames: FrameRange,
    chunking: Chunking,
    order: renderfarm_wire::FrameOrder,
) -> Box<dyn Iterator<Item = PlannedTask> + Send> {
    match (chunking, order) {
        (Chunking::Auto { .. }, renderfarm_wire::FrameOrder::Sequential) => {
            Box::new(probe_then_guess(frames).map(|frames| PlannedTask { frames, rank: 0 }))
        }
        (chunking, order) => plan_tasks(frames, chunking.initial_size(), order),
    }
}

/// What an operator asks of a render: the four actions of
/// `PUT /renders/{id}/status`, and "mark complete".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderCommand {
    Pause,
    Resume,
    Cancel,
    Requeue,
    Complete,
    Release,
}

impl From<RenderAction> for RenderCommand {
    fn from(action: RenderAction) -> Self {
        match action {
            RenderAction::Pause => RenderCommand::Pause,
            RenderAction::Resume => RenderCommand::Resume,
            RenderAction::Cancel => RenderCommand::Cancel,
            RenderAction::Requeue => RenderCommand::Requeue,
            RenderAction::Release => RenderCommand::Release,
        }
    }
}

impl RenderCommand {
    fn verb(self) -> &'static str {
        match self {
            RenderCommand::Pause => "pause",
            RenderCommand::Resume => "resume",
            RenderCommand::Cancel => "cancel",
            RenderCommand::Requeue => "requeue",
            RenderCommand::Complete => "complete",
            RenderCommand::Release => "release",
        }
    }

    /// What the command did to the render, for history lines.
    fn done(self) -> &'static str {
        match self {
            RenderCommand::Pause => "paused",
            RenderCommand::Resume => "resumed",
            RenderCommand::Cancel => "canceled",
            RenderCommand::Requeue => "requeued",
            RenderCommand::Complete => "marked complete",
            RenderCommand::Release => "released",
        }
    }
}

/// Why a bulk change moves many tasks of a render at once (see
/// [`tasks_affected`] and `RenderChange::tasks_to_cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkCause {
    /// An operator's command.
    Command(RenderCommand),
    /// The render failed for good: its pending work is canceled.
    RenderFailed,
}

impl BulkCause {
    /// The line the history of every task that `event` moves gets. Who did
    /// it (the operator behind a command) is recorded beside it.
    pub fn history(self, event: TaskEvent) -> (HistoryEvent, String) {
        let detail = match self {
            BulkCause::Command(command) => format!("its render was {}", command.done()),
            BulkCause::RenderFailed => {
                "its render failed: a task of it failed with no retry left".to_string()
            }
        };
        (event.history_event(), detail)
    }
}

/// The status an operator's command leads to. Resume and requeue lead to
/// `queued`; [`tallied_status`](super::tallied_status) then moves a render that has started to `rendering`.
pub fn render_transition(
    from: RenderStatus,
    command: RenderCommand,
) -> Result<RenderStatus, IllegalTransition> {
    use RenderCommand as C;
    use RenderStatus as S;
    let to = match (command, from) {
        (C::Pause, S::Queued | S::Rendering | S::Paused) => S::Paused,
        (C::Resume, S::Paused) => S::Queued,
        (C::Cancel, S::Waiting | S::Queued | S::Rendering | S::Paused) => S::Canceled,
        (C::Requeue, S::Completed | S::Failed | S::Canceled) => S::Queued,
        (C::Complete, S::Waiting | S::Queued | S::Rendering | S::Paused | S::Failed) => {
            S::Completed
        }
        (C::Release, S::Waiting) => S::Queued,
        _ => {
            let hint = match command {
                C::Pause if from == S::Waiting => "a waiting render does not run yet; release it to start it now, or cancel it",
                C::Pause => "only a queued or rendering render can be paused",
                C::Resume => "only a paused render can be resumed",
                C::Cancel => "only a waiting, queued, rendering or paused render can be canceled",
                C::Release => "only a waiting render can be released; it is not waiting for other renders",
                C::Requeue => "only a completed, failed or canceled render can be requeued; pause or cancel it first",
                C::Complete => "this render is already finished",
            };
            return Err(IllegalTransition::new(format!(
                "cannot {} a render that is {}: {hint}",
                command.verb(),
                from.as_str()
            )));
        }
    };
    Ok(to)
}

/// Whether a render may be deleted: only a finished one whose tasks have all
/// stopped (a failed render's running chunks may still be rendering).
pub fn check_deletable(status: RenderStatus, tasks_running: i64) -> Result<(), IllegalTransition> {
    if !status.is_finished() {
        return Err(IllegalTransition::new(format!(
            "cannot delete a render that is {}: only a completed, failed or canceled render can be deleted; cancel it first",
            status.as_str()
        )));
    }
    if tasks_running > 0 {
        return Err(IllegalTransition::new(format!(
            "cannot delete this render yet: {tasks_running} of its chunks are still rendering; delete it once they have ended"
        )));
    }
    Ok(())
}

/// Which tasks an operator's command changes, and how: `None` when it leaves
/// the tasks alone. Requeue re-runs what did not complete; a render whose
/// tasks all completed is rendered again whole.
pub fn tasks_affected(
    command: RenderCommand,
    progress: &Progress,
) -> Option<(TaskEvent, Vec<TaskStatus>)> {
    match command {
        RenderCommand::Pause | RenderCommand::Resume | RenderCommand::Release => None,
        RenderCommand::Cancel | RenderCommand::Complete => {
            Some((TaskEvent::Cancel, statuses_affected_by(TaskEvent::Cancel)))
        }
        RenderCommand::Requeue => {
            let unfinished = progress.tasks_failed + progress.tasks_canceled > 0;
            let targets = statuses_affected_by(TaskEvent::Reset)
                .into_iter()
                .filter(|s| (*s == TaskStatus::Completed) != unfinished)
                .collect();
            Some((TaskEvent::Reset, targets))
        }
    }
}

/// Renders in these statuses are finished: nothing of theirs runs again
/// unless an operator requeues them.
pub const FINISHED_RENDER_STATUSES: &[RenderStatus] = &[
    RenderStatus::Completed,
    RenderStatus::Failed,
    RenderStatus::Canceled,
];

/// Renders in these statuses are not finished: the scheduler still looks
/// after their tasks and counters.
pub const UNFINISHED_RENDER_STATUSES: &[RenderStatus] = &[
    RenderStatus::Waiting,
    RenderStatus::Queued,
    RenderStatus::Rendering,
    RenderStatus::Paused,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tally::tests::progress;
    use RenderCommand as C;
    use RenderStatus as S;

    #[test]
    fn only_finished_renders_with_nothing_running_can_be_deleted() {
        // (status, tasks running, deletable)
        let table: &[(S, i64, bool)] = &[
            (S::Queued, 0, false),
            (S::Rendering, 0, false),
            (S::Paused, 0, false),
            (S::Completed, 0, true),
            (S::Failed, 0, true),
            (S::Canceled, 0, true),
            (S::Failed, 2, false),
        ];
        for (status, running, deletable) in table {
            assert_eq!(
                check_deletable(*status, *running).is_ok(),
                *deletable,
                "{status:?} with {running} running"
            );
        }
        let message = check_deletable(S::Failed, 2).unwrap_err().message;
        assert!(
            message.contains("2 of its chunks are still rendering"),
            "{message}"
        );
    }

    #[test]
    fn operator_commands_follow_the_render_status_table() {
        // (from, command, Some(to) | None for illegal)
        let table: &[(S, C, Option<S>)] = &[
            (S::Queued, C::Pause, Some(S::Paused)),
            (S::Rendering, C::Pause, Some(S::Paused)),
            (S::Paused, C::Pause, Some(S::Paused)),
            (S::Completed, C::Pause, None),
            (S::Failed, C::Pause, None),
            (S::Canceled, C::Pause, None),
            (S::Paused, C::Resume, Some(S::Queued)),
            (S::Queued, C::Resume, None),
            (S::Rendering, C::Resume, None),
            (S::Completed, C::Resume, None),
            (S::Failed, C::Resume, None),
            (S::Canceled, C::Resume, None),
            (S::Queued, C::Cancel, Some(S::Canceled)),
            (S::Rendering, C::Cancel, Some(S::Canceled)),
            (S::Paused, C::Cancel, Some(S::Canceled)),
            (S::Completed, C::Cancel, None),
            (S::Failed, C::Cancel, None),
            (S::Canceled, C::Cancel, None),
            (S::Completed, C::Requeue, Some(S::Queued)),
            (S::Failed, C::Requeue, Some(S::Queued)),
            (S::Canceled, C::Requeue, Some(S::Queued)),
            (S::Queued, C::Requeue, None),
            (S::Rendering, C::Requeue, None),
            (S::Paused, C::Requeue, None),
            (S::Queued, C::Complete, Some(S::Completed)),
            (S::Rendering, C::Complete, Some(S::Completed)),
            (S::Paused, C::Complete, Some(S::Completed)),
            (S::Failed, C::Complete, Some(S::Completed)),
            (S::Completed, C::Complete, None),
            (S::Canceled, C::Complete, None),
            (S::Waiting, C::Pause, None),
            (S::Waiting, C::Resume, None),
            (S::Waiting, C::Cancel, Some(S::Canceled)),
            (S::Waiting, C::Requeue, None),
            (S::Waiting, C::Complete, Some(S::Completed)),
            (S::Waiting, C::Release, Some(S::Queued)),
            (S::Queued, C::Release, None),
            (S::Rendering, C::Release, None),
            (S::Paused, C::Release, None),
            (S::Completed, C::Release, None),
            (S::Failed, C::Release, None),
            (S::Canceled, C::Release, None),
        ];
        for (from, command, to) in table {
            assert_eq!(
                render_transition(*from, *command).ok(),
                *to,
                "{from:?} + {command:?}"
            );
        }
    }

    #[test]
    fn an_illegal_command_says_what_would_be_legal() {
        let err = render_transition(S::Completed, C::Resume).unwrap_err();
        assert!(
            err.message
                .contains("cannot resume a render that is completed"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("only a paused render"),
            "{}",
            err.message
        );
    }

    #[test]
    fn every_render_status_is_finished_or_unfinished_once() {
        for status in S::ALL {
            assert_eq!(
                FINISHED_RENDER_STATUSES.contains(&status),
                status.is_finished()
            );
            assert_eq!(
                UNFINISHED_RENDER_STATUSES.contains(&status),
                !status.is_finished()
            );
        }
    }

    #[test]
    fn commands_select_the_tasks_they_change() {
        let some_failed = progress(4, 1, 0, 2, 1);
        let all_done = progress(4, 0, 0, 4, 0);
        assert_eq!(tasks_affected(C::Pause, &some_failed), None);
        assert_eq!(tasks_affected(C::Resume, &some_failed), None);
        assert_eq!(
            tasks_affected(C::Cancel, &some_failed),
            Some((
                TaskEvent::Cancel,
                vec![TaskStatus::Pending, TaskStatus::Running]
            ))
        );
        assert_eq!(
            tasks_affected(C::Complete, &some_failed),
            Some((
                TaskEvent::Cancel,
                vec![TaskStatus::Pending, TaskStatus::Running]
            ))
        );
        assert_eq!(
            tasks_affected(C::Requeue, &some_failed),
            Some((
                TaskEvent::Reset,
                vec![TaskStatus::Failed, TaskStatus::Canceled]
            ))
        );
        assert_eq!(
            tasks_affected(C::Requeue, &all_done),
            Some((TaskEvent::Reset, vec![TaskStatus::Completed]))
        );
    }

    #[test]
    fn tasks_moved_in_bulk_say_why_in_their_history() {
        use HistoryEvent as H;
        let table = [
            (
                BulkCause::Command(C::Cancel),
                TaskEvent::Cancel,
                H::Canceled,
                "its render was canceled",
            ),
            (
                BulkCause::Command(C::Complete),
                TaskEvent::Cancel,
                H::Canceled,
                "its render was marked complete",
            ),
            (
                BulkCause::Command(C::Requeue),
                TaskEvent::Reset,
                H::Requeued,
                "its render was requeued",
            ),
            (
                BulkCause::RenderFailed,
                TaskEvent::Cancel,
                H::Canceled,
                "its render failed: a task of it failed with no retry left",
            ),
        ];
        for (cause, event, want, detail) in table {
            assert_eq!(
                cause.history(event),
                (want, detail.to_string()),
                "{cause:?} {event:?}"
            );
        }
    }

    fn spec() -> RenderSpec {
        RenderSpec {
            name: "shot 010".into(),
            blend_file: "/projects/shot010.blend".into(),
            blend_sha256: None,
            upload_frames: None,
            frame_start: 1,
            frame_end: 10,
            chunk_size: 3.into(),
            target_chunk_seconds: None,
            frame_order: Default::default(),
            blocklist_after: None,
            priority: Priority::High,
            max_retries: 1,
            output: None,
            engine: Some("CYCLES".into()),
            tags: vec!["gpu".into(), "linux".into(), "gpu".into()],
            video: None,
            depends_on: vec![],
        }
    }

    #[test]
    fn a_valid_submission_plans_a_queued_render_with_its_tasks() {
        let valid = ValidRenderSpec::try_from(spec()).unwrap();
        let id = Uuid::nil();
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let new = NewRender::plan(
            valid,
            id,
            Some("alice".into()),
            |id| format!("/data/renders/{id}/frame_####"),
            now,
        );
        assert_eq!(new.render.status, S::Queued);
        assert_eq!(new.render.owner.as_deref(), Some("alice"));
        assert_eq!(
            new.render.tags,
            vec!["gpu".to_string(), "linux".to_string()]
        );
        assert_eq!(new.render.output, format!("/data/renders/{id}/frame_####"));
        assert_eq!(new.render.progress.tasks_total, 4);
        assert_eq!(new.render.progress.tasks_pending, 4);
        assert_eq!(new.render.progress.frames_total, 10);
        assert_eq!(new.tasks().count(), 4);
    }

    #[test]
    fn an_auto_render_starts_with_probes_and_shows_its_target() {
        let mut s = spec();
        s.frame_end = 12;
        s.chunk_size = renderfarm_wire::ChunkSizeSpec::Auto;
        s.target_chunk_seconds = Some(30);
        let valid = ValidRenderSpec::try_from(s).unwrap();
        let new = NewRender::plan(valid, Uuid::nil(), None, |_| "/o".into(), Utc::now());
        assert!(new.render.chunk_size_auto);
        assert_eq!(new.render.target_chunk_seconds, Some(30));
        assert_eq!(new.render.chunk_size, crate::domain::FIRST_GUESS);
        assert_eq!(new.render.measured_frame_seconds, None);
        let sizes: Vec<i64> = new.tasks().map(|t| t.frames.len()).collect();
        assert_eq!(sizes, vec![1, 1, 4, 4, 2]);
        assert_eq!(new.render.progress.tasks_total, 5);
    }

    #[test]
    fn an_uploaded_blend_names_itself_and_uploads_frames_by_default() {
        let hash = "0123456789ab".to_string() + &"f".repeat(52);
        let mut s = spec();
        s.blend_file = String::new();
        s.blend_sha256 = Some(hash.clone());
        let valid = ValidRenderSpec::try_from(s.clone()).unwrap();
        assert_eq!(valid.blend_file, "0123456789ab.blend");
        assert!(valid.upload_frames);
        s.blend_file = "shot.blend".into();
        s.upload_frames = Some(false);
        let valid = ValidRenderSpec::try_from(s).unwrap();
        assert_eq!(valid.blend_file, "shot.blend");
        assert!(!valid.upload_frames);
        let new = NewRender::plan(valid, Uuid::nil(), None, |_| "/o".into(), Utc::now());
        assert_eq!(new.render.blend_sha256.as_deref(), Some(hash.as_str()));
        assert!(!ValidRenderSpec::try_from(spec()).unwrap().upload_frames);
        let mut s = spec();
        s.blend_file = String::new();
        let err = ValidRenderSpec::try_from(s).unwrap_err();
        assert!(err.message.contains("blend_sha256"), "{err}");
    }

    #[test]
    fn submissions_that_break_a_rule_name_the_field() {
        type Mutation = Box<dyn Fn(&mut RenderSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|s| s.name = "  ".into())),
            ("name", Box::new(|s| s.name = "x".repeat(10_000))),
            ("name", Box::new(|s| s.name = "a\nb".into())),
            ("blend_file", Box::new(|s| s.blend_file = String::new())),
            ("frame_start", Box::new(|s| s.frame_start = -1)),
            ("frame_end", Box::new(|s| s.frame_end = 0)),
            ("frame_end", Box::new(|s| s.frame_end = 2_000_000)),
            ("chunk_size", Box::new(|s| s.chunk_size = 0.into())),
            (
                "target_chunk_seconds",
                Box::new(|s| s.target_chunk_seconds = Some(60)),
            ),
            ("max_retries", Box::new(|s| s.max_retries = -1)),
            ("max_retries", Box::new(|s| s.max_retries = 1000)),
            (
                "engine",
                Box::new(|s| s.engine = Some("cycles; rm -rf".into())),
            ),
            ("tags", Box::new(|s| s.tags = vec!["has space".into()])),
            ("output", Box::new(|s| s.output = Some(String::new()))),
            (
                "blend_sha256",
                Box::new(|s| s.blend_sha256 = Some("../../etc/passwd".into())),
            ),
            (
                "blend_file",
                Box::new(|s| {
                    s.blend_sha256 = Some("a".repeat(64));
                    s.blend_file = "a\nb".into();
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = ValidRenderSpec::try_from(s).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(!err.message.is_empty());
        }
    }
}
