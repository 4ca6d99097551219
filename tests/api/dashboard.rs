//! The dashboard's page and files, as HTTP sees them: open without a
//! credential (the shell holds no data), with headers that keep the page to
//! its own scripts, and without taking any answer of the API's. What the page
//! does is tested in a browser (tests/dashboard.rs).

use reqwest::{Method, StatusCode};

use crate::contract;
use crate::helpers::{assert_error, spawn_app};

fn header<'a>(response: &'a contract::ApiResponse, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_dashboard_shell_and_its_files_are_open_and_locked_down() {
    let app = spawn_app().await;
    // No credential at all: a browser's first visit.
    let shell = contract::send(app.client.get(app.url("/"))).await;
    assert_eq!(shell.status(), StatusCode::OK);
    assert!(header(&shell, "content-type").starts_with("text/html"));
    let csp = header(&shell, "content-security-policy").to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(header(&shell, "x-content-type-options"), "nosniff");
    assert_eq!(header(&shell, "cache-control"), "no-cache");
    let html = shell.text().await.unwrap();

    let app_js = html
        .split('"')
        .find(|s| s.starts_with("/ui/") && s.ends_with("/app.js"))
        .expect("the shell loads app.js")
        .to_string();
    let script = contract::send(app.client.get(app.url(&app_js))).await;
    assert_eq!(script.status(), StatusCode::OK);
    assert!(header(&script, "content-type").starts_with("text/javascript"));
    assert!(header(&script, "cache-control").contains("immutable"));
    assert_eq!(header(&script, "x-content-type-options"), "nosniff");

    // A file of another version (a page from before an upgrade) or none at
    // all: the broker's JSON 404, saying what to do.
    let stale = app_js.replace("/ui/", "/ui/0");
    let message = assert_error(
        contract::send(app.client.get(app.url(&stale))).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(message.contains("reload"), "{message}");
    assert_error(
        contract::send(app.client.post(app.url("/"))).await,
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
}

#[tokio::test]
async fn the_dashboard_takes_no_route_of_the_api() {
    let app = spawn_app().await;
    // Unknown API routes keep their JSON 404.
    for path in ["/renderz", "/renders/x/y/z", "/ui", "/index.html"] {
        assert_error(
            app.raw(Method::GET, path, None).await,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    // The page's routes are not API operations: neither in the spec nor among
    // the routes the auth test walks.
    let served = renderfarm::api::registered_routes();
    assert!(
        served
            .iter()
            .all(|(path, _)| path != "/" && !path.starts_with("/ui")),
        "{served:?}"
    );
    let spec = renderfarm::api::openapi::spec();
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.keys().all(|p| p != "/" && !p.starts_with("/ui")));
}
