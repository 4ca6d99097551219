//! Task kinds, and the render's video: a follow-up task of its own kind
//! (`ffmpeg`) that the render gains when its frames are all rendered.
//!
//! A follow-up is not part of the render's tally: the render is complete
//! when its frames are (they are what it promised), and its video's state is
//! the video task's status, shown on the render as `video_status`. A failed
//! video therefore never fails the render, and requeuing it never reopens
//! the render. Stores keep every follow-up out of the counters by asking
//! [`counts_in_tally`]; the next kind (say, a denoise pass) is one more
//! [`TaskKind`] and its module in the agent.

use renderfarm_wire::{RenderStatus, TaskKind, TaskStatus, VideoSpec};

use super::ValidationError;

/// The highest frame rate a video may ask for.
pub const MAX_VIDEO_FPS: i64 = 240;

/// Checks the video a submission asks for.
pub fn validate_video(video: Option<VideoSpec>) -> Result<Option<VideoSpec>, ValidationError> {
    match video {
        Some(v) if !(1..=MAX_VIDEO_FPS).contains(&v.fps) => Err(ValidationError::new(
            "video.fps",
            format!("is {}; give 1 to {MAX_VIDEO_FPS} frames per second", v.fps),
        )),
        other => Ok(other),
    }
}

/// Whether a task of `kind` moves its render's counters (and so its
/// status). Chunks do; a follow-up of a finished render does not.
pub fn counts_in_tally(kind: TaskKind) -> bool {
    kind == TaskKind::Blender
}

/// The follow-up a render gains as its status moves from `before` to
/// `after`: its video task, when it asked for one and its frames just all
/// completed. A render completed again (after an operator's requeue) gets
/// its video made again, from the frames it has now.
pub fn follow_up_on(
    video: Option<&VideoSpec>,
    before: RenderStatus,
    after: RenderStatus,
) -> Option<TaskKind> {
    (video.is_some() && after == RenderStatus::Completed && before != RenderStatus::Completed)
        .then_some(TaskKind::Ffmpeg)
}

/// Whether a task of `kind` may be handed out while its render is `render`:
/// chunks of a claimable render; a follow-up of a completed one only (its
/// inputs are the render's finished frames).
pub fn kind_runnable_in(kind: TaskKind, render: RenderStatus) -> bool {
    match kind {
        TaskKind::Blender => super::is_claimable(render),
        TaskKind::Ffmpeg => render == RenderStatus::Completed,
    }
}

/// The kinds of follow-up a worker announcing `kinds` can take; a claim
/// looks for those before chunks (they finish a render someone waits on,
/// and are short), and not at all when there are none.
pub fn follow_up_kinds(kinds: &[TaskKind]) -> Vec<TaskKind> {
    kinds
        .iter()
        .copied()
        .filter(|k| !counts_in_tally(*k))
        .collect()
}

/// Checks and orders the kinds a worker announces: at least one, each once.
pub fn validate_kinds(kinds: &[TaskKind]) -> Result<Vec<TaskKind>, ValidationError> {
    if kinds.is_empty() {
        return Err(ValidationError::new(
            "kinds",
            "is empty; name the task kinds the worker runs, e.g. [\"blender\"] or [\"blender\", \"ffmpeg\"]",
        ));
    }
    let mut kinds = kinds.to_vec();
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

/// What a video task's status says to someone waiting for the video.
pub fn video_status_of(kind: TaskKind, status: TaskStatus) -> Option<TaskStatus> {
    (kind == TaskKind::Ffmpeg).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use renderfarm_wire::VideoCodec;
    use RenderStatus as S;

    fn video(fps: i64) -> VideoSpec {
        VideoSpec {
            fps,
            codec: VideoCodec::H264,
        }
    }

    #[test]
    fn a_video_is_queued_once_when_the_frames_complete() {
        let v = video(24);
        // (video, before, after, follow-up)
        let table: &[(Option<&VideoSpec>, S, S, Option<TaskKind>)] = &[
            (Some(&v), S::Rendering, S::Completed, Some(TaskKind::Ffmpeg)),
            (Some(&v), S::Paused, S::Completed, Some(TaskKind::Ffmpeg)),
            (Some(&v), S::Queued, S::Completed, Some(TaskKind::Ffmpeg)),
            (Some(&v), S::Completed, S::Completed, None),
            (Some(&v), S::Rendering, S::Failed, None),
            (Some(&v), S::Rendering, S::Canceled, None),
            (Some(&v), S::Queued, S::Rendering, None),
            (None, S::Rendering, S::Completed, None),
        ];
        for (video, before, after, expected) in table {
            assert_eq!(
                follow_up_on(*video, *before, *after),
                *expected,
                "{before:?} -> {after:?} with {video:?}"
            );
        }
    }

    #[test]
    fn only_chunks_move_the_tally() {
        assert!(counts_in_tally(TaskKind::Blender));
        assert!(!counts_in_tally(TaskKind::Ffmpeg));
        assert_eq!(
            follow_up_kinds(&[TaskKind::Blender, TaskKind::Ffmpeg]),
            vec![TaskKind::Ffmpeg]
        );
        assert!(follow_up_kinds(&[TaskKind::Blender]).is_empty());
    }

    #[test]
    fn a_video_runs_only_once_its_render_is_complete() {
        for status in RenderStatus::ALL {
            assert_eq!(
                kind_runnable_in(TaskKind::Ffmpeg, status),
                status == S::Completed,
                "{status:?}"
            );
            assert_eq!(
                kind_runnable_in(TaskKind::Blender, status),
                crate::domain::is_claimable(status),
                "{status:?}"
            );
        }
    }

    #[test]
    fn video_rates_outside_1_to_240_are_refused() {
        for (fps, ok) in [
            (0, false),
            (1, true),
            (24, true),
            (240, true),
            (241, false),
            (-5, false),
        ] {
            assert_eq!(validate_video(Some(video(fps))).is_ok(), ok, "{fps}");
        }
        assert_eq!(validate_video(None), Ok(None));
    }

    #[test]
    fn kinds_are_checked_and_ordered() {
        assert!(validate_kinds(&[]).is_err());
        assert_eq!(
            validate_kinds(&[TaskKind::Ffmpeg, TaskKind::Blender, TaskKind::Ffmpeg]).unwrap(),
            vec![TaskKind::Blender, TaskKind::Ffmpeg]
        );
    }
}
