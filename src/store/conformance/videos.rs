//! A render's video (`domain::video`): a follow-up task of kind `ffmpeg`,
//! queued when the frames complete, outside the render's counters.

use renderfarm_wire::{
    FileInfo, Priority, RenderStatus, TaskKind, TaskStatus, VideoCodec, VideoSpec, WorkerSpec,
};
use uuid::Uuid;

use super::{assert_counters_exact, claim, complete, plan_with, report, t0, worker};
use crate::domain::{validate_worker_spec, TaskReport};
use crate::store::{PageRequest, Store, StoreError};

async fn video_worker(store: &dyn Store, name: &str) -> Uuid {
    worker_of(store, name, &[TaskKind::Blender, TaskKind::Ffmpeg]).await
}

async fn worker_of(store: &dyn Store, name: &str, kinds: &[TaskKind]) -> Uuid {
    let spec = validate_worker_spec(WorkerSpec {
        name: name.into(),
        tags: vec![],
        kinds: kinds.to_vec(),
        time_zone: None,
        available: None,
        strict_hours: false,
        platform: Default::default(),
    })
    .expect("a valid test worker");
    store
        .register_worker(spec, t0())
        .await
        .expect("register")
        .id
}

fn video() -> Option<VideoSpec> {
    Some(VideoSpec {
        fps: 24,
        codec: VideoCodec::H264,
    })
}

fn mp4() -> FileInfo {
    FileInfo {
        sha256: "ab".repeat(32),
        bytes: 1234,
    }
}

pub async fn a_render_s_video_is_queued_when_its_frames_complete_and_runs_outside_its_tally(
    store: &dyn Store,
) {
    let new = plan_with("film", 1, 4, 2, Priority::Normal, t0(), |s| {
        s.video = video()
    });
    let r = store.create_render(new).await.unwrap();
    assert_eq!(r.video, video());
    assert_eq!(r.video_status, None);
    let chunks_only = worker(store, "chunks", &[]).await;
    let both = video_worker(store, "both").await;
    let videos_only = worker_of(store, "videos", &[TaskKind::Ffmpeg]).await;
    // A worker without Blender takes no chunk.
    assert!(claim(store, videos_only).await.is_none());
    // Chunks are all any worker gets while frames remain.
    let a = claim(store, both).await.unwrap();
    assert_eq!(a.kind, TaskKind::Blender);
    let b = claim(store, chunks_only).await.unwrap();
    complete(store, &a).await;
    assert_eq!(store.get_render(r.id).await.unwrap().video_status, None);
    complete(store, &b).await;

    let done = store.get_render(r.id).await.unwrap();
    assert_eq!(
        done.status,
        RenderStatus::Completed,
        "frames are what it promised"
    );
    assert_eq!(done.progress.tasks_total, 2, "the video is not a chunk");
    assert_eq!(done.progress.tasks_completed, 2);
    assert_eq!(done.video_status, Some(TaskStatus::Pending));
    let tasks = store
        .list_tasks(
            r.id,
            None,
            PageRequest {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    let follow_ups: Vec<_> = tasks
        .items
        .iter()
        .filter(|t| t.kind == TaskKind::Ffmpeg)
        .collect();
    assert_eq!(follow_ups.len(), 1, "{tasks:?}");
    assert_eq!((follow_ups[0].frame_start, follow_ups[0].frame_end), (1, 4));

    // Counted apart from chunks, for the autoscaler's `workers_wanted`.
    assert_eq!(
        store.farm_counts(t0()).await.unwrap().runnable,
        vec![(vec![], TaskKind::Ffmpeg, 1)]
    );
    // A worker without ffmpeg never gets it; one with it does.
    assert!(claim(store, chunks_only).await.is_none());
    let v = claim(store, both).await.unwrap();
    assert_eq!(v.kind, TaskKind::Ffmpeg);
    assert_eq!(v.video, video());
    assert_eq!((v.frame_start, v.frame_end), (1, 4));
    assert_eq!(
        store.get_render(r.id).await.unwrap().video_status,
        Some(TaskStatus::Running)
    );
    assert!(store.farm_counts(t0()).await.unwrap().runnable.is_empty());
    report(store, &v, TaskReport::Progress { frames_done: 2 }).await;
    // Frames belong to chunks: a video task sends a video.
    let wrong = store
        .record_frame(
            Some(both),
            v.task_id,
            v.lease_id,
            crate::store::NewFrame {
                frame: 1,
                name: "frame_0001.png".into(),
                sha256: "cd".repeat(32),
                bytes: 10,
            },
            t0(),
        )
        .await;
    assert!(matches!(wrong, Err(StoreError::Invalid(_))), "{wrong:?}");
    assert_eq!(store.render_video(r.id).await.unwrap(), None);
    store
        .record_video(Some(both), v.task_id, v.lease_id, mp4())
        .await
        .unwrap();
    complete(store, &v).await;
    let after = store.get_render(r.id).await.unwrap();
    assert_eq!(after.status, RenderStatus::Completed);
    assert_eq!(after.video_status, Some(TaskStatus::Completed));
    assert_eq!(after.progress, done.progress, "the video moved no counter");
    assert_eq!(store.render_video(r.id).await.unwrap(), Some(mp4()));
    assert!(store
        .referenced_files()
        .await
        .unwrap()
        .contains(&mp4().sha256));
    assert_counters_exact(store).await;
}

pub async fn a_failed_video_is_retried_never_fails_its_render_and_can_be_requeued(
    store: &dyn Store,
) {
    let new = plan_with("film", 1, 2, 2, Priority::Normal, t0(), |s| {
        s.video = video();
        s.max_retries = 1;
    });
    let r = store.create_render(new).await.unwrap();
    let w = video_worker(store, "both").await;
    let chunk = claim(store, w).await.unwrap();
    // A chunk's lease sends no video.
    let wrong = store
        .record_video(Some(w), chunk.task_id, chunk.lease_id, mp4())
        .await;
    assert!(matches!(wrong, Err(StoreError::Invalid(_))), "{wrong:?}");
    complete(store, &chunk).await;
    let fail = TaskReport::Fail {
        exit_code: Some(1),
        reason: "ffmpeg: Invalid data found when processing input".into(),
    };
    let v = claim(store, w).await.unwrap();
    assert_eq!(v.kind, TaskKind::Ffmpeg);
    report(store, &v, fail.clone()).await;
    assert_eq!(
        store.get_render(r.id).await.unwrap().video_status,
        Some(TaskStatus::Failed)
    );
    let retried = store.retry_failed_tasks(t0()).await.unwrap();
    assert_eq!(
        retried.retried.len(),
        1,
        "a failed video is retried like any chunk"
    );
    let again = claim(store, w).await.unwrap();
    assert_eq!(again.task_id, v.task_id);
    report(store, &again, fail).await;
    let retried = store.retry_failed_tasks(t0()).await.unwrap();
    assert!(retried.retried.is_empty(), "its one retry is used");
    let render = store.get_render(r.id).await.unwrap();
    assert_eq!(
        render.status,
        RenderStatus::Completed,
        "a failed video fails no render"
    );
    assert_eq!(render.video_status, Some(TaskStatus::Failed));
    assert!(claim(store, w).await.is_none());

    let requeued = store
        .requeue_one_task(v.task_id, Some("ops"), t0())
        .await
        .unwrap();
    assert_eq!(requeued.status, TaskStatus::Pending);
    assert_eq!(requeued.retries, 0);
    let render = store.get_render(r.id).await.unwrap();
    assert_eq!(
        render.status,
        RenderStatus::Completed,
        "the render stays complete"
    );
    assert_eq!(render.video_status, Some(TaskStatus::Pending));
    let last = claim(store, w).await.unwrap();
    assert_eq!(last.task_id, v.task_id);
    store
        .record_video(Some(w), last.task_id, last.lease_id, mp4())
        .await
        .unwrap();
    complete(store, &last).await;
    assert_eq!(
        store.get_render(r.id).await.unwrap().video_status,
        Some(TaskStatus::Completed)
    );
    assert_counters_exact(store).await;
}

pub async fn a_render_marked_complete_with_frames_missing_gets_no_video(store: &dyn Store) {
    let new = plan_with("cut short", 1, 4, 2, Priority::Normal, t0(), |s| {
        s.video = video()
    });
    let r = store.create_render(new).await.unwrap();
    let w = video_worker(store, "both").await;
    let a = claim(store, w).await.unwrap();
    complete(store, &a).await;
    let marked = store
        .change_render(
            r.id,
            crate::domain::RenderCommand::Complete,
            Some("ops"),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(marked.status, RenderStatus::Completed);
    assert_eq!(marked.video_status, None, "frames 3-4 were never rendered");
    assert!(claim(store, w).await.is_none());
}

pub async fn a_render_without_a_video_gets_no_follow_up(store: &dyn Store) {
    let r = store
        .create_render(plan_with("stills", 1, 2, 2, Priority::Normal, t0(), |_| {}))
        .await
        .unwrap();
    let w = video_worker(store, "both").await;
    let a = claim(store, w).await.unwrap();
    complete(store, &a).await;
    let done = store.get_render(r.id).await.unwrap();
    assert_eq!(done.status, RenderStatus::Completed);
    assert_eq!(done.video_status, None);
    assert!(claim(store, w).await.is_none());
    assert_eq!(store.render_video(r.id).await.unwrap(), None);
}
