//! The real broker binary pointed at a MongoDB that is not there (port 1 on
//! loopback refuses at once): it starts anyway, says it is alive but not
//! ready, and answers what needs the store with 503 + Retry-After, never 500.

mod common;

use std::time::Duration;

use common::BrokerProcess;
use renderfarm::wire::{ErrorBody, HealthReport};

#[tokio::test]
async fn the_broker_starts_and_answers_503_while_mongodb_is_unreachable() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start_with(
        data_dir.path(),
        "127.0.0.1:0",
        &["--store", "mongodb://127.0.0.1:1/x"],
    );
    // With a credential: checking it needs the store, which is away, so the
    // answer is 503 (retry), never 401 (it is not the credential's fault).
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", common::ADMIN_TOKEN).parse().unwrap(),
    );
    let client = renderfarm_client::http_client_builder()
        .timeout(Duration::from_secs(20))
        .default_headers(headers)
        .build()
        .unwrap();
    let url = |path: &str| format!("{}{path}", broker.address);

    let health = client.get(url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let ready = client.get(url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    let report: HealthReport = ready.json().await.expect("a JSON readiness report");
    assert_eq!(report.store.as_deref(), Some("mongodb"));
    assert!(report.status.contains("not ready"), "{report:?}");

    // Once the first connection attempt has failed too, the answer says why.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (method, path, body) in [
        (reqwest::Method::GET, "/renders", None),
        (reqwest::Method::GET, "/workers", None),
        (
            reqwest::Method::POST,
            "/workers",
            Some(serde_json::json!({ "name": "w1" })),
        ),
    ] {
        let mut request = client.request(method.clone(), url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 503, "{method} {path}");
        assert!(
            response.headers().contains_key("retry-after"),
            "{method} {path}"
        );
        let error: ErrorBody = response.json().await.expect("a JSON error");
        assert_eq!(error.error, "unavailable");
        assert!(error.message.contains("MongoDB"), "{}", error.message);
    }

    let ready = client.get(url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "still not ready");
    assert!(
        broker.is_running(),
        "the broker keeps running without its store"
    );
}
