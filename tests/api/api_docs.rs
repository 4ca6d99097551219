//! The API docs: Swagger UI and the spec are served, the committed
//! `openapi/openapi.json` is the one the code generates, and the spec's own
//! examples fit its schemas.

use reqwest::StatusCode;
use serde_json::Value;

use crate::contract::contract;
use crate::helpers::{assert_error, json_of, spawn_app};

#[test]
fn the_committed_spec_is_the_one_the_code_generates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = renderfarm::api::openapi::spec_json();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "its length".to_string(), |n| format!("line {}", n + 1));
        panic!(
            "openapi/openapi.json is out of date (it differs from the code at {line}); \
             regenerate it with `cargo run -- openapi > openapi/openapi.json` and commit it"
        );
    }
}

#[test]
fn renderfarm_openapi_prints_the_spec() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_renderfarm"))
        .arg("openapi")
        .output()
        .expect("renderfarm runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).expect("UTF-8"),
        renderfarm::api::openapi::spec_json()
    );
}

#[tokio::test]
async fn the_broker_serves_the_spec_and_swagger_ui() {
    let app = spawn_app().await;
    let spec = app.get("/api-docs/openapi.json").await;
    assert_eq!(spec.status(), StatusCode::OK);
    assert_eq!(json_of(spec).await, renderfarm::api::openapi::spec());

    // A browser that types /api-docs lands on the page, whose files load
    // relative to /api-docs/.
    let no_redirects = renderfarm_client::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let bare = app.send(no_redirects.get(app.url("/api-docs"))).await;
    assert!(bare.status().is_redirection(), "{}", bare.status());
    assert_eq!(bare.headers()["location"], "/api-docs/");
    let page = app.get("/api-docs").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.url().path(), "/api-docs/");
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    let initializer = app.get("/api-docs/swagger-initializer.js").await;
    assert!(initializer
        .text()
        .await
        .unwrap()
        .contains("/api-docs/openapi.json"));
}

#[tokio::test]
async fn unknown_paths_under_the_docs_and_elsewhere_get_json_404s() {
    let app = spawn_app().await;
    for path in ["/api-docs/no-such-file.js", "/api-docs-not", "/apidocs"] {
        assert_error(app.get(path).await, StatusCode::NOT_FOUND).await;
    }
}

#[test]
fn every_example_in_the_spec_fits_its_schema() {
    let spec = renderfarm::api::openapi::spec();
    let mut checked = 0;
    for (name, schema) in spec["components"]["schemas"].as_object().unwrap() {
        if let Some(example) = schema.get("example") {
            contract()
                .validate_against(schema, example)
                .unwrap_or_else(|e| panic!("the example of schema {name}: {e}"));
            checked += 1;
        }
    }
    let mut media: Vec<(String, &Value)> = Vec::new();
    for (name, response) in spec["components"]["responses"].as_object().unwrap() {
        media.push((format!("response {name}"), &response["content"]));
    }
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                media.push((format!("{method} {path} {status}"), &response["content"]));
            }
        }
    }
    for (what, content) in media {
        for body in content.as_object().into_iter().flat_map(|c| c.values()) {
            if let Some(example) = body.get("example") {
                contract()
                    .validate_against(&body["schema"], example)
                    .unwrap_or_else(|e| panic!("the example of {what}: {e}"));
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} examples found");
}
