//! A real browser looks at the API docs: headless Chromium loads Swagger UI
//! from a live broker, and every operation of the spec must show on the
//! rendered page. A screenshot is kept as an artifact
//! (`<target dir>/artifacts/api-docs.png`) for people to look at.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{artifacts_dir, chromium_or_skip, TestBroker};

/// Chromium's flags for a quiet, self-contained headless run that gives
/// Swagger UI (virtual) time to fetch the spec and render it.
fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=15000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// Runs Chromium with `args`, returning its stdout; fails the test if it
/// does not finish within a minute or exits with an error.
async fn chromium(binary: &Path, args: &[String]) -> String {
    let profile = tempfile::tempdir().expect("a Chromium profile directory");
    let child = tokio::process::Command::new(binary)
        .args(chromium_args(profile.path()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("Chromium finished within a minute")
        .expect("Chromium started");
    assert!(
        out.status.success(),
        "Chromium {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The (METHOD, path) of every operation block Swagger UI rendered:
/// `<span class="opblock-summary-method">POST</span>` followed by
/// `data-path="/renders"`.
fn shown_operations(dom: &str) -> BTreeSet<(String, String)> {
    const METHOD: &str = r#"class="opblock-summary-method">"#;
    const PATH: &str = r#"data-path=""#;
    let mut shown = BTreeSet::new();
    let mut rest = dom;
    while let Some(at) = rest.find(METHOD) {
        rest = &rest[at + METHOD.len()..];
        let Some(method) = rest.split('<').next() else {
            break;
        };
        let Some(path) = rest
            .find(PATH)
            .map(|p| &rest[p + PATH.len()..])
            .and_then(|r| r.split('"').next())
        else {
            break;
        };
        shown.insert((method.to_ascii_uppercase(), path.to_string()));
    }
    shown
}

#[tokio::test(flavor = "multi_thread")]
async fn swagger_ui_in_a_browser_shows_every_operation_of_the_spec() {
    let test = "swagger_ui_in_a_browser_shows_every_operation_of_the_spec";
    let Some(binary) = chromium_or_skip(test) else {
        return;
    };
    let broker = TestBroker::start().await;
    // As a user types it: the broker sends the browser on to /api-docs/.
    let page = format!("{}/api-docs", broker.address);

    let dom = chromium(&binary, &["--dump-dom".into(), page.clone()]).await;
    assert!(
        !dom.contains("Failed to load API definition"),
        "Swagger UI could not load the spec"
    );
    let spec = renderfarm::api::openapi::spec();
    let mut declared = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            declared.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let shown = shown_operations(&dom);
    let missing: Vec<_> = declared.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "operations of the spec missing from the rendered page: {missing:?} (shown: {shown:?})"
    );
    assert!(dom.contains("renderfarm broker"), "the title shows");
    // The spec's bearer scheme gives the page its Authorize button, and every
    // operation that needs a credential its lock.
    assert!(dom.contains("btn authorize"), "the Authorize button shows");
    let locks = dom.matches("authorization__btn").count();
    let secured = declared.len() - 2; // all but /health and /ready
    assert!(
        locks >= secured,
        "{locks} locks for {secured} secured operations"
    );

    let screenshot = artifacts_dir().join("api-docs.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &binary,
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,2000".into(),
            page,
        ],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("Chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "the screenshot at {} looks empty ({} bytes)",
        screenshot.display(),
        png.len()
    );
    let _ = writeln!(
        std::io::stderr(),
        "api docs: {} operations rendered; screenshot at {}",
        shown.len(),
        screenshot.display()
    );
}
