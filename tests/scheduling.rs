//! Studio scheduling (issue 16) with real agents and real Blender:
//! dependencies (a render submitted with `depends_on` waits, starts by
//! itself when its dependency completes, and stays blocked when the
//! dependency fails until the dependency is requeued and completes), and a
//! preview-first render whose first, last and middle frames come first.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    blender_or_skip, run_renderfarm, scene, submission, wait_for, TestAgent, TestBroker,
    ADMIN_TOKEN,
};
use renderfarm_client::BrokerClient;
use renderfarm_wire::{FrameOrder, Render, RenderAction, RenderSpec, RenderStatus};
use renderfarm_worker::blender::scene::SceneSpec;
use uuid::Uuid;

const RENDER_LIMIT: Duration = Duration::from_secs(240);

async fn wait_for_status(client: &BrokerClient, id: Uuid, want: RenderStatus) -> Render {
    wait_for(
        &format!("render {id} to be {}", want.as_str()),
        RENDER_LIMIT,
        || async {
            let render = client.render(id).await.ok()?;
            (render.status == want).then_some(render)
        },
    )
    .await
}

async fn submit(client: &BrokerClient, body: serde_json::Value) -> Render {
    let spec: RenderSpec = serde_json::from_value(body).expect("a render");
    client.submit(&spec).await.expect("submitted")
}

fn client_of(broker: &TestBroker) -> BrokerClient {
    BrokerClient::new(&broker.address)
        .unwrap()
        .with_token(Some(ADMIN_TOKEN.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_render_waits_for_another_and_starts_when_it_completes() {
    let Some(blender) =
        blender_or_skip("a_render_waits_for_another_and_starts_when_it_completes").await
    else {
        return;
    };
    let broker = TestBroker::start().await;
    let client = client_of(&broker);
    let files = tempfile::tempdir().unwrap();
    let blend = scene(files.path(), "shot", SceneSpec::tiny(4), &blender).await;
    let a = submit(
        &client,
        submission("layout", &blend, 4, 2, &files.path().join("a")),
    )
    .await;

    // B from the command line, more urgent than A: it still waits for A.
    let output = files.path().join("b");
    let (ok, out, err) = run_renderfarm(
        &broker.address,
        &[
            "submit",
            &blend.display().to_string(),
            "--name",
            "lighting",
            "--frames",
            "1-2",
            "--chunk",
            "1",
            "--priority",
            "urgent",
            "--output",
            &format!("{}/frame_####", output.display()),
            "--depends-on",
            &a.id.to_string(),
            "--token",
            ADMIN_TOKEN,
        ],
    );
    assert!(ok, "submit --depends-on: {out}{err}");
    let b = client
        .renders(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|r| r.name == "lighting")
        .expect("B is listed");
    assert_eq!(b.status, RenderStatus::Waiting, "{b:?}");
    assert_eq!(b.depends_on, vec![a.id]);
    let reason = b.waiting_reason.clone().unwrap();
    assert!(
        reason.contains("layout") && reason.contains("to complete"),
        "{reason}"
    );
    let (ok, out, _) = run_renderfarm(
        &broker.address,
        &["status", &b.id.to_string(), "--token", ADMIN_TOKEN],
    );
    assert!(
        ok && out.contains("waiting") && out.contains("layout"),
        "{out}"
    );

    let agent = TestAgent::start(&broker.address, "agent", &blender).await;
    let b = wait_for_status(&client, b.id, RenderStatus::Completed).await;
    let a = client.render(a.id).await.unwrap();
    assert_eq!(a.status, RenderStatus::Completed);
    let (a_done, b_started) = (a.finished_at.unwrap(), b.started_at.unwrap());
    assert!(
        b_started >= a_done,
        "B started at {b_started}, before A completed at {a_done}"
    );
    assert_eq!(b.waiting_reason, None);
    for frame in 1..=2 {
        assert!(output.join(format!("frame_{frame:04}.png")).is_file());
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_dependency_blocks_until_it_is_requeued_and_completes() {
    let Some(blender) =
        blender_or_skip("a_failed_dependency_blocks_until_it_is_requeued_and_completes").await
    else {
        return;
    };
    let broker = TestBroker::start().await;
    let client = client_of(&broker);
    let files = tempfile::tempdir().unwrap();
    // A names a file that is not there yet: Blender fails to open it.
    let late = files.path().join("late.blend");
    let mut body = submission("sim", &late, 2, 2, &files.path().join("a"));
    body["max_retries"] = 0.into();
    let a = submit(&client, body).await;
    let blend = scene(files.path(), "shot", SceneSpec::tiny(2), &blender).await;
    let mut body = submission("comp", &blend, 2, 1, &files.path().join("b"));
    body["depends_on"] = serde_json::json!([a.id]);
    let b = submit(&client, body).await;
    assert_eq!(b.status, RenderStatus::Waiting);

    let agent = TestAgent::start(&broker.address, "agent", &blender).await;
    wait_for_status(&client, a.id, RenderStatus::Failed).await;
    // A tick of the scheduler settles waiting renders too: B stays.
    client.run_scheduler().await.unwrap();
    let blocked = client.render(b.id).await.unwrap();
    assert_eq!(blocked.status, RenderStatus::Waiting, "{blocked:?}");
    let reason = blocked.waiting_reason.unwrap();
    assert!(
        reason.contains("failed") && reason.contains("requeue it"),
        "{reason}"
    );
    assert_eq!(blocked.progress.tasks_pending, 2, "nothing of B ran");
    assert!(blocked.started_at.is_none());

    // The file arrives; A is requeued, renders, and releases B.
    std::fs::copy(&blend, &late).unwrap();
    client
        .change_render(a.id, RenderAction::Requeue)
        .await
        .unwrap();
    let b = wait_for_status(&client, b.id, RenderStatus::Completed).await;
    let a = client.render(a.id).await.unwrap();
    assert_eq!(a.status, RenderStatus::Completed);
    assert!(b.started_at.unwrap() >= a.finished_at.unwrap());
    assert_frames(&files.path().join("b"), 2);
    agent.stop().await;
}

fn assert_frames(dir: &Path, frames: i64) {
    for frame in 1..=frames {
        let path = dir.join(format!("frame_{frame:04}.png"));
        assert!(path.is_file(), "{} was not rendered", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preview_first_render_renders_first_last_and_middle_frames_first() {
    let Some(blender) =
        blender_or_skip("a_preview_first_render_renders_first_last_and_middle_frames_first").await
    else {
        return;
    };
    let broker = TestBroker::start().await;
    let client = client_of(&broker);
    let files = tempfile::tempdir().unwrap();
    let blend = scene(files.path(), "shot", SceneSpec::tiny(36), &blender).await;
    let output = files.path().join("out");
    let mut body = submission("preview", &blend, 36, 6, &output);
    body["frame_order"] = "preview-first".into();
    let render = submit(&client, body).await;
    assert_eq!(render.frame_order, FrameOrder::PreviewFirst);

    // One agent: the tasks run one after another, in claim order.
    let agent = TestAgent::start(&broker.address, "agent", &blender).await;
    wait_for_status(&client, render.id, RenderStatus::Completed).await;
    agent.stop().await;
    let mut tasks = client
        .tasks(render.id, &Default::default())
        .await
        .unwrap()
        .items;
    tasks.sort_by_key(|t| t.started_at);
    let order: Vec<(i64, i64)> = tasks.iter().map(|t| (t.frame_start, t.frame_end)).collect();
    // 36 frames: the first, last and middle, then every 4th.
    assert_eq!(
        order[..3],
        [(1, 1), (36, 36), (18, 18)],
        "first, last and middle first: {order:?}"
    );
    let previews = preview_frames_of(&order);
    assert_eq!(
        previews,
        [1, 36, 18, 5, 9, 13, 17, 21, 25, 29, 33],
        "{order:?}"
    );
    let rest = &order[previews.len()..];
    assert!(
        rest.windows(2).all(|w| w[0].1 < w[1].0) && rest.iter().all(|(a, b)| b > a),
        "then chunks of the frames between them, lowest first: {order:?}"
    );
    assert_frames(&output, 36);
}

/// The one-frame tasks at the head of `order`.
fn preview_frames_of(order: &[(i64, i64)]) -> Vec<i64> {
    order
        .iter()
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| *a)
        .collect()
}
