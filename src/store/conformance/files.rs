//! Files through the broker (issue 13): what the store keeps of them.

use renderfarm_wire::Priority;

use super::*;
use crate::store::{PageRequest, RenderFilter};

/// A hash for tests: `n` repeated.
pub(super) fn hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// `blend_sha256` and `upload_frames` are kept with the render, listed, and
/// handed to the worker with each assignment; a render from a path keeps
/// neither.
pub async fn an_uploaded_blend_travels_with_its_render_and_assignments(store: &dyn Store) {
    let uploaded = plan_with("up", 1, 4, 2, Priority::Normal, t0(), |s| {
        s.blend_file = "shot.blend".into();
        s.blend_sha256 = Some(hash(0xab));
    });
    let created = store.create_render(uploaded).await.unwrap();
    assert_eq!(created.blend_sha256, Some(hash(0xab)));
    assert!(created.upload_frames, "the default with an uploaded blend");
    let stored = store.get_render(created.id).await.unwrap();
    assert_eq!(stored.blend_sha256, Some(hash(0xab)));
    assert_eq!(stored.blend_file, "shot.blend");
    assert!(stored.upload_frames);
    let listed = store
        .list_renders(
            &RenderFilter::default(),
            crate::domain::RenderOrder::default(),
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(listed.items[0].blend_sha256, Some(hash(0xab)));

    let worker = worker(store, "w", &[]).await;
    let a = claim(store, worker).await.expect("a task");
    assert_eq!(a.blend_sha256, Some(hash(0xab)));
    assert!(a.upload_frames);
    // The assignment a worker holds already is handed out again the same.
    let again = claim(store, worker).await.expect("the same task");
    assert_eq!(again, a);

    let mut from_path = plan("path", 1, 1, 1, Priority::Normal, t0());
    from_path.render.upload_frames = true;
    let created = store.create_render(from_path).await.unwrap();
    let stored = store.get_render(created.id).await.unwrap();
    assert_eq!(stored.blend_sha256, None);
    assert!(stored.upload_frames, "asked for explicitly");
}

fn frame(n: i64, h: u8) -> crate::store::NewFrame {
    crate::store::NewFrame {
        frame: n,
        name: format!("frame_{n:04}.png"),
        sha256: hash(h),
        bytes: 100 + n as u64,
    }
}

/// A frame is recorded only under the task's current lease, by the worker
/// holding it, for a frame of the task; the same frame again replaces it;
/// the render's frames are listed lowest first and go with the render.
pub async fn uploaded_frames_are_recorded_under_the_lease_and_go_with_their_render(
    store: &dyn Store,
) {
    let new = plan_with("frames", 1, 4, 2, Priority::Normal, t0(), |s| {
        s.blend_sha256 = Some(hash(1));
    });
    let render = store.create_render(new).await.unwrap();
    let w = worker(store, "w", &[]).await;
    let other = worker(store, "other", &[]).await;
    let a = claim(store, w).await.expect("a task");
    assert_eq!((a.frame_start, a.frame_end), (1, 2));

    let task = store
        .leased_task(Some(w), a.task_id, a.lease_id)
        .await
        .unwrap();
    assert_eq!(task.id, a.task_id);
    let stale = Uuid::new_v4();
    assert!(matches!(
        store.leased_task(Some(w), a.task_id, stale).await,
        Err(crate::store::StoreError::StaleLease { .. })
    ));

    let at = t0();
    let stored = store
        .record_frame(Some(w), a.task_id, a.lease_id, frame(2, 2), at)
        .await
        .unwrap();
    assert_eq!(stored.render_id, render.id);
    assert_eq!(stored.name, "frame_0002.png");
    assert_eq!(stored.bytes, 102);
    for (holder, lease, f, want) in [
        (Some(w), stale, frame(1, 3), "stale"),
        (Some(other), a.lease_id, frame(1, 3), "another's"),
        (Some(w), a.lease_id, frame(3, 3), "outside"),
    ] {
        let err = store
            .record_frame(holder, a.task_id, lease, f, at)
            .await
            .expect_err(want);
        match want {
            "stale" => assert!(
                matches!(err, crate::store::StoreError::StaleLease { .. }),
                "{err}"
            ),
            "another's" => assert!(
                matches!(err, crate::store::StoreError::NotYourTask { .. }),
                "{err}"
            ),
            _ => assert!(matches!(err, crate::store::StoreError::Invalid(_)), "{err}"),
        }
    }
    // A retry replaces the frame.
    store
        .record_frame(Some(w), a.task_id, a.lease_id, frame(1, 4), at)
        .await
        .unwrap();
    store
        .record_frame(Some(w), a.task_id, a.lease_id, frame(1, 5), at)
        .await
        .unwrap();
    let frames = store.render_frames(render.id, None).await.unwrap();
    let listed: Vec<(i64, String)> = frames.iter().map(|f| (f.frame, f.sha256.clone())).collect();
    assert_eq!(listed, vec![(1, hash(5)), (2, hash(2))]);
    assert_eq!(frames[0].stored_at, at);
    let only = store.render_frames(render.id, Some((2, 9))).await.unwrap();
    assert_eq!(only.len(), 1);
    assert!(store
        .render_frames(Uuid::new_v4(), None)
        .await
        .unwrap()
        .is_empty());

    let referenced = store.referenced_files().await.unwrap();
    for h in [1, 2, 5] {
        assert!(referenced.contains(&hash(h)), "{h} is referenced");
    }
    assert!(!referenced.contains(&hash(4)), "a replaced frame is not");

    // A task completed: its lease is over, no frame is taken under it.
    complete(store, &a).await;
    assert!(store
        .record_frame(Some(w), a.task_id, a.lease_id, frame(1, 6), at)
        .await
        .is_err());
    store
        .change_render(render.id, crate::domain::RenderCommand::Cancel, None, at)
        .await
        .unwrap();
    store.delete_render(render.id).await.unwrap();
    assert!(store
        .render_frames(render.id, None)
        .await
        .unwrap()
        .is_empty());
    assert!(
        store.referenced_files().await.unwrap().is_empty(),
        "a deleted render refers to nothing"
    );
}

/// A JPEG's first bytes and `n`, for telling previews apart.
fn jpeg(n: u8) -> Vec<u8> {
    vec![0xFF, 0xD8, 0xFF, 0xE0, n]
}

/// A render's preview is kept only under a task's current lease, by the
/// worker holding it, for a frame of the task; the last one sent replaces
/// the one before whichever frame it shows, and it goes with its render.
pub async fn the_last_preview_sent_is_the_renders_and_goes_with_it(store: &dyn Store) {
    let render = store
        .create_render(plan("previews", 1, 4, 2, Priority::Normal, t0()))
        .await
        .unwrap();
    let w = worker(store, "w", &[]).await;
    let v = worker(store, "v", &[]).await;
    assert_eq!(
        store.preview(render.id).await.unwrap(),
        None,
        "none sent yet"
    );
    let a = claim(store, w).await.expect("a task");
    let b = claim(store, v).await.expect("another task");
    assert_eq!((b.frame_start, b.frame_end), (3, 4));

    let at = t0();
    store
        .record_preview(Some(v), b.task_id, b.lease_id, 4, jpeg(1), at)
        .await
        .unwrap();
    let later = at + chrono::Duration::seconds(1);
    store
        .record_preview(Some(w), a.task_id, a.lease_id, 1, jpeg(2), later)
        .await
        .unwrap();
    let kept = store.preview(render.id).await.unwrap().expect("a preview");
    assert_eq!(
        (
            kept.render_id,
            kept.task_id,
            kept.frame,
            kept.jpeg,
            kept.stored_at
        ),
        (render.id, a.task_id, 1, jpeg(2), later),
        "the last sent wins over a higher frame"
    );

    let stale = Uuid::new_v4();
    for (holder, task, lease, frame, want) in [
        (Some(w), a.task_id, stale, 1, "stale"),
        (Some(v), a.task_id, a.lease_id, 1, "another's"),
        (Some(w), a.task_id, a.lease_id, 3, "outside"),
    ] {
        let err = store
            .record_preview(holder, task, lease, frame, jpeg(9), later)
            .await
            .expect_err(want);
        let right = match want {
            "stale" => matches!(err, crate::store::StoreError::StaleLease { .. }),
            "another's" => matches!(err, crate::store::StoreError::NotYourTask { .. }),
            _ => matches!(err, crate::store::StoreError::Invalid(_)),
        };
        assert!(right, "{want}: {err}");
    }
    assert_eq!(
        store.preview(render.id).await.unwrap().unwrap().jpeg,
        jpeg(2),
        "a refused preview changes nothing"
    );

    complete(store, &a).await;
    assert!(
        store
            .record_preview(Some(w), a.task_id, a.lease_id, 2, jpeg(3), later)
            .await
            .is_err(),
        "no preview under a finished lease"
    );
    store
        .change_render(render.id, crate::domain::RenderCommand::Cancel, None, at)
        .await
        .unwrap();
    store.delete_render(render.id).await.unwrap();
    assert_eq!(store.preview(render.id).await.unwrap(), None);
    assert_eq!(store.preview(Uuid::new_v4()).await.unwrap(), None);
}
