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

use renderfarm_wire::{Priority, Progress, RenderStatus, TaskKind, TaskStatus, VideoSpec};

use super::{IllegalTransition, TaskRequeue, ValidationError};

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
/// `after` with the counters `progress`: its video task, when it asked for
/// one and its frames just all completed. A render an operator marked
/// complete with chunks canceled has frames missing, and no video; one
/// completed again (after an operator's requeue) gets its video made again,
/// from the frames it has then.
pub fn follow_up_on(
    video: Option<&VideoSpec>,
    before: RenderStatus,
    after: RenderStatus,
    progress: &Progress,
) -> Option<TaskKind> {
    let every_frame = progress.tasks_total > 0 && progress.tasks_completed == progress.tasks_total;
    (video.is_some()
        && every_frame
        && after == RenderStatus::Completed
        && before != RenderStatus::Completed)
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

/// Whether the scheduler gives a failed task of `kind` another try while its
/// render is `render`: a chunk while the render is unfinished (a finished
/// render's failed chunks stay failed); a follow-up while its render lets it
/// run, so a failed video is retried like any chunk.
pub fn retried_while(kind: TaskKind, render: RenderStatus) -> bool {
    match kind {
        TaskKind::Blender => !render.is_finished(),
        _ => kind_runnable_in(kind, render),
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

/// Whether a claim hands out the waiting follow-up of priority `follow_up`
/// rather than the head chunk (of priority `head`, if any): at the head's
/// priority or above it does, as it finishes a render someone waits on;
/// more urgent chunks still come first.
pub fn prefers_follow_up(follow_up: Priority, head: Option<Priority>) -> bool {
    head.is_none_or(|head| follow_up >= head)
}

/// What an operator's requeue of one task does, for a task of `kind`: a
/// chunk follows [`super::plan_task_requeue`]; a follow-up runs again from
/// scratch, only while its render is in a status that lets it run, and never
/// reopens the render.
pub fn plan_requeue_of_kind(
    kind: TaskKind,
    task: TaskStatus,
    render: RenderStatus,
    progress: &Progress,
) -> Result<TaskRequeue, IllegalTransition> {
    if counts_in_tally(kind) {
        return super::plan_task_requeue(task, render, progress);
    }
    if !kind_runnable_in(kind, render) {
        return Err(IllegalTransition::new(format!(
            "this is the render's {} task and the render is {}: it runs again by itself when the render completes",
            kind.as_str(),
            render.as_str()
        )));
    }
    Ok(TaskRequeue {
        event: super::task::requeue_event(task)?,
        reopen_render: None,
    })
}

/// Whether a worker announcing `kinds` takes chunks at all (an agent may
/// run only follow-ups, e.g. a machine with ffmpeg and no Blender).
pub fn runs_chunks(kinds: &[TaskKind]) -> bool {
    kinds.contains(&TaskKind::Blender)
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
    use crate::domain::TaskEvent;
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
        let done = crate::domain::tally::tests::progress(3, 0, 0, 3, 0);
        // An operator marked it complete: one chunk canceled, a frame missing.
        let marked = Progress {
            tasks_canceled: 1,
            ..crate::domain::tally::tests::progress(3, 0, 0, 2, 0)
        };
        // (video, before, after, counters, follow-up)
        type Case<'a> = (Option<&'a VideoSpec>, S, S, &'a Progress, Option<TaskKind>);
        let table: &[Case] = &[
            (
                Some(&v),
                S::Rendering,
                S::Completed,
                &done,
                Some(TaskKind::Ffmpeg),
            ),
            (
                Some(&v),
                S::Paused,
                S::Completed,
                &done,
                Some(TaskKind::Ffmpeg),
            ),
            (
                Some(&v),
                S::Queued,
                S::Completed,
                &done,
                Some(TaskKind::Ffmpeg),
            ),
            (Some(&v), S::Rendering, S::Completed, &marked, None),
            (Some(&v), S::Completed, S::Completed, &done, None),
            (Some(&v), S::Rendering, S::Failed, &done, None),
            (Some(&v), S::Rendering, S::Canceled, &done, None),
            (Some(&v), S::Queued, S::Rendering, &done, None),
            (None, S::Rendering, S::Completed, &done, None),
        ];
        for (video, before, after, progress, expected) in table {
            assert_eq!(
                follow_up_on(*video, *before, *after, progress),
                *expected,
                "{before:?} -> {after:?} with {video:?}, {progress:?}"
            );
        }
    }

    #[test]
    fn a_failed_video_is_retried_while_its_render_is_complete() {
        for status in RenderStatus::ALL {
            assert_eq!(
                retried_while(TaskKind::Ffmpeg, status),
                status == S::Completed
            );
            assert_eq!(
                retried_while(TaskKind::Blender, status),
                !status.is_finished()
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
        assert!(runs_chunks(&[TaskKind::Blender, TaskKind::Ffmpeg]));
        assert!(!runs_chunks(&[TaskKind::Ffmpeg]));
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
    fn a_follow_up_goes_first_unless_a_chunk_is_more_urgent() {
        use Priority as P;
        // (follow-up, head chunk, follow-up first)
        let table = [
            (P::Normal, None, true),
            (P::Normal, Some(P::Normal), true),
            (P::Normal, Some(P::Low), true),
            (P::Normal, Some(P::High), false),
            (P::Urgent, Some(P::Urgent), true),
            (P::Low, Some(P::Normal), false),
        ];
        for (follow_up, head, expected) in table {
            assert_eq!(
                prefers_follow_up(follow_up, head),
                expected,
                "{follow_up:?} vs {head:?}"
            );
        }
    }

    #[test]
    fn a_video_is_requeued_only_while_its_render_is_complete() {
        let p = Progress::default();
        let ok =
            plan_requeue_of_kind(TaskKind::Ffmpeg, TaskStatus::Failed, S::Completed, &p).unwrap();
        assert_eq!(ok.event, TaskEvent::Reset);
        assert_eq!(ok.reopen_render, None);
        let running =
            plan_requeue_of_kind(TaskKind::Ffmpeg, TaskStatus::Running, S::Completed, &p).unwrap();
        assert_eq!(running.event, TaskEvent::Requeue);
        assert!(
            plan_requeue_of_kind(TaskKind::Ffmpeg, TaskStatus::Pending, S::Completed, &p).is_err()
        );
        let refused = plan_requeue_of_kind(TaskKind::Ffmpeg, TaskStatus::Failed, S::Rendering, &p)
            .unwrap_err();
        assert!(
            refused.message.contains("when the render completes"),
            "{}",
            refused.message
        );
        // A chunk's requeue is the chunk rule's.
        assert_eq!(
            plan_requeue_of_kind(TaskKind::Blender, TaskStatus::Failed, S::Rendering, &p),
            crate::domain::plan_task_requeue(TaskStatus::Failed, S::Rendering, &p)
        );
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
