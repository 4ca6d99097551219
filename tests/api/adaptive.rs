//! Adaptive chunking over HTTP: `chunk_size: "auto"` is accepted with its
//! target, shown on the render, and planned as probes then a first guess.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{json_of, spawn_app};

#[tokio::test]
async fn an_auto_render_shows_its_target_and_starts_with_one_frame_probes() {
    let app = spawn_app().await;
    let render = app
        .submit_ok(&json!({
            "name": "auto",
            "blend_file": "/projects/auto.blend",
            "frame_start": 1,
            "frame_end": 12,
            "chunk_size": "auto",
            "target_chunk_seconds": 30,
        }))
        .await;
    assert_eq!(render["chunk_size_auto"], true);
    assert_eq!(render["target_chunk_seconds"], 30);
    assert_eq!(render["chunk_size"], 4, "the first guess");
    assert!(render["measured_frame_seconds"].is_null());
    let id = render["id"].as_str().unwrap();
    let tasks = app.render_tasks(id).await;
    let sizes: Vec<i64> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["frame_end"].as_i64().unwrap() - t["frame_start"].as_i64().unwrap() + 1)
        .collect();
    assert_eq!(sizes, vec![1, 1, 4, 4, 2]);

    let defaulted = app
        .submit_ok(&json!({
            "name": "auto-default",
            "blend_file": "/projects/auto.blend",
            "frame_start": 1,
            "frame_end": 3,
            "chunk_size": "auto",
        }))
        .await;
    assert_eq!(defaulted["target_chunk_seconds"], 60);

    let fixed = app
        .submit_ok(&json!({
            "name": "fixed",
            "blend_file": "/projects/fixed.blend",
            "frame_start": 1,
            "frame_end": 10,
            "chunk_size": 5.0,
        }))
        .await;
    assert_eq!(fixed["chunk_size"], 5);
    assert_eq!(fixed["chunk_size_auto"], false);
    assert!(fixed["target_chunk_seconds"].is_null());

    // Nothing measured yet: the tick re-splits nothing.
    let tick = app.post_json("/scheduler/run", &json!({})).await;
    assert_eq!(tick.status(), StatusCode::OK);
    assert_eq!(json_of(tick).await["resplit"], 0);
}
