//! The renders page's calls: search and sort the listing, the frames of a
//! render from the broker's disk, and an operator's requeue of one task.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_of, render_body, spawn_app, spawn_app_with, TestApp};

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn renders_are_searched_and_sorted_as_asked() {
    let app = spawn_app().await;
    for (name, priority) in [
        ("shot020", "low"),
        ("Shot010", "urgent"),
        ("b-roll", "normal"),
        ("SHOT030", "high"),
    ] {
        app.submit_ok(&render_body(name, 1, 2, 1, priority)).await;
    }
    let newest_first = json_of(app.list_renders("").await).await;
    assert_eq!(
        names(&newest_first),
        ["SHOT030", "b-roll", "Shot010", "shot020"]
    );
    let shots = json_of(app.list_renders("?q=shot&sort=name").await).await;
    assert_eq!(shots["total"], 3);
    assert_eq!(
        names(&shots),
        ["SHOT030", "Shot010", "shot020"],
        "by name as written: capitals first"
    );
    let reversed = json_of(app.list_renders("?q=SHOT&sort=name&order=desc").await).await;
    assert_eq!(names(&reversed), ["shot020", "Shot010", "SHOT030"]);
    let urgent_first = json_of(app.list_renders("?sort=priority&limit=2").await).await;
    assert_eq!(
        (names(&urgent_first), urgent_first["total"].clone()),
        (vec!["Shot010".to_string(), "SHOT030".to_string()], json!(4))
    );
    let oldest_first = json_of(app.list_renders("?sort=created&order=asc").await).await;
    assert_eq!(
        names(&oldest_first),
        ["shot020", "Shot010", "b-roll", "SHOT030"]
    );
    // All queued and at 0 %: ties go by submission, in the sort's direction.
    for sort in ["status", "progress"] {
        let page = json_of(app.list_renders(&format!("?sort={sort}&order=asc")).await).await;
        assert_eq!(names(&page), names(&oldest_first), "{sort}");
    }
    let filtered = json_of(
        app.list_renders("?q=b-&status=queued&priority=normal")
            .await,
    )
    .await;
    assert_eq!(names(&filtered), ["b-roll"]);
}

#[tokio::test]
async fn an_unknown_sort_or_order_is_refused_naming_the_valid_ones() {
    let app = spawn_app().await;
    let message = assert_error(
        app.list_renders("?sort=size").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    for valid in ["created", "name", "priority", "status", "progress"] {
        assert!(message.contains(valid), "{message}");
    }
    let message = assert_error(app.list_renders("?order=up").await, StatusCode::BAD_REQUEST).await;
    assert!(
        message.contains("asc") && message.contains("desc"),
        "{message}"
    );
    for bad in [
        "?q=",
        "?q=%0A",
        &format!("?q={}", "x".repeat(201)),
        "?sort=",
    ] {
        assert_error(app.list_renders(bad).await, StatusCode::BAD_REQUEST).await;
    }
}

/// Bytes that begin as a PNG does; the broker serves files, it does not
/// decode them.
fn image(n: u8) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(std::iter::repeat_n(n, 3000));
    bytes
}

/// The output folder of a render submitted with the default output.
fn output_dir(render: &Value) -> std::path::PathBuf {
    std::path::Path::new(render["output"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

#[tokio::test]
async fn frames_are_listed_and_served_from_the_render_s_output_folder() {
    let app = spawn_app().await;
    let render = app
        .submit_ok(&render_body("frames", 1, 3, 1, "normal"))
        .await;
    let id = render["id"].as_str().unwrap();
    assert!(
        render["output"]
            .as_str()
            .unwrap()
            .starts_with(&app.data_dir.path().join("renders").display().to_string()),
        "the default output is under the default root: {render}"
    );
    let none_yet = json_of(app.get(&format!("/renders/{id}/frames")).await).await;
    assert_eq!(none_yet, json!({"render_id": id, "frames": []}));

    let dir = output_dir(&render);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("frame_0001.png"), image(1)).unwrap();
    std::fs::write(dir.join("frame_0003.exr"), b"v/1\x01 not really an EXR").unwrap();
    // Not frames of this render: another name, another padding, outside its
    // range, no extension.
    for other in ["notes.txt", "frame_002.png", "frame_0009.png", "frame_0002"] {
        std::fs::write(dir.join(other), b"x").unwrap();
    }
    let listed = json_of(app.get(&format!("/renders/{id}/frames")).await).await;
    let frames = listed["frames"].as_array().unwrap();
    assert_eq!(
        frames
            .iter()
            .map(|f| f["frame"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(3)]
    );
    assert_eq!(frames[0]["url"], format!("/renders/{id}/frames/1"));
    assert_eq!(frames[0]["bytes"], image(1).len());

    let png = app.get(&format!("/renders/{id}/frames/1")).await;
    assert_eq!(png.status(), StatusCode::OK);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert_eq!(png.bytes(), image(1).as_slice());
    let exr = app.get(&format!("/renders/{id}/frames/3")).await;
    assert_eq!(exr.headers()["content-type"], "image/x-exr");
    assert_eq!(frames[0]["name"], "frame_0001.png");
    assert_eq!(frames[0]["sha256"], Value::Null, "not stored at the broker");

    // The archive holds the frames of the folder, under their file names.
    let archive = app.get(&format!("/renders/{id}/frames.zip")).await;
    assert_eq!(archive.status(), StatusCode::OK);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive.bytes().to_vec())).unwrap();
    let names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().to_string())
        .collect();
    assert_eq!(names, ["frame_0001.png", "frame_0003.exr"]);
    let mut first = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_index(0).unwrap(), &mut first).unwrap();
    assert_eq!(first, image(1));

    for missing in ["2", "9", "-1", "abc", "1.png", "99999999999999999999"] {
        assert_error(
            app.get(&format!("/renders/{id}/frames/{missing}")).await,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    let unknown = "0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d";
    for path in [
        format!("/renders/{unknown}/frames"),
        format!("/renders/{unknown}/frames/1"),
        "/renders/not-an-id/frames".to_string(),
    ] {
        assert_error(app.get(&path).await, StatusCode::NOT_FOUND).await;
    }
}

async fn submit_with_output(app: &TestApp, name: &str, output: &str) -> String {
    let mut body = render_body(name, 1, 2, 1, "normal");
    body["output"] = json!(output);
    app.submit_ok(&body).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn frames_outside_the_output_root_are_never_served() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().to_path_buf();
    let app = spawn_app_with(|s| s.output_root = Some(root_path)).await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("frame_0001.png"), image(7)).unwrap();

    // Written outside the root, under it through `..`, and through a folder
    // that links out.
    let linked = root.path().join("linked");
    std::os::unix::fs::symlink(outside.path(), &linked).unwrap();
    let refused = [
        format!("{}/frame_####", outside.path().display()),
        format!("{}/../{}/frame_####", root.path().display(), {
            outside.path().file_name().unwrap().to_string_lossy()
        }),
        format!("{}/frame_####", linked.display()),
        "//relative/frame_####".to_string(),
    ];
    for output in &refused {
        let id = submit_with_output(&app, "out", output).await;
        for path in [
            format!("/renders/{id}/frames"),
            format!("/renders/{id}/frames/1"),
        ] {
            let message = assert_error(app.get(&path).await, StatusCode::CONFLICT).await;
            assert!(message.contains("--output-root"), "{output}: {message}");
        }
    }

    // Inside the root, a frame that is a link out is neither listed nor served.
    let inside = root.path().join("shot");
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::write(inside.join("frame_0002.png"), image(2)).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("frame_0001.png"),
        inside.join("frame_0001.png"),
    )
    .unwrap();
    let id = submit_with_output(&app, "in", &format!("{}/frame_####", inside.display())).await;
    let listed = json_of(app.get(&format!("/renders/{id}/frames")).await).await;
    assert_eq!(listed["frames"].as_array().unwrap().len(), 1);
    assert_eq!(listed["frames"][0]["frame"], 2);
    assert_error(
        app.get(&format!("/renders/{id}/frames/1")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let served = app.get(&format!("/renders/{id}/frames/2")).await;
    assert_eq!(served.bytes(), image(2).as_slice());
}

#[tokio::test]
async fn an_operator_requeues_one_task_and_its_worker_loses_it() {
    let app = spawn_app().await;
    let render = app
        .submit_ok(&render_body("again", 1, 2, 1, "normal"))
        .await;
    let worker = app.register_ok("w").await;
    let assignment = app.claim_ok(&worker).await;
    let task = assignment["task_id"].as_str().unwrap();

    let requeued = app
        .post_json(&format!("/tasks/{task}/requeue"), &json!({}))
        .await;
    assert_eq!(requeued.status(), StatusCode::OK);
    let requeued = json_of(requeued).await;
    assert_eq!(
        (requeued["status"].clone(), requeued["worker_id"].clone()),
        (json!("pending"), Value::Null)
    );
    let stale = app
        .report(
            task,
            "complete",
            &json!({ "lease_id": assignment["lease_id"] }),
        )
        .await;
    assert_error(stale, StatusCode::CONFLICT).await;
    let detail = app.task(task).await;
    let last = detail["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event"], "requeued");
    assert!(last["actor"].is_string(), "the operator is named: {last}");

    // Pending already: nothing to requeue.
    let message = assert_error(
        app.raw(
            reqwest::Method::POST,
            &format!("/tasks/{task}/requeue"),
            None,
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(message.contains("pending"), "{message}");
    let unknown = "0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d";
    assert_error(
        app.post_json(&format!("/tasks/{unknown}/requeue"), &json!({}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        app.render(render["id"].as_str().unwrap()).await["progress"]["tasks_pending"],
        2
    );
}
