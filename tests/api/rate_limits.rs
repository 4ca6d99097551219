//! Rate limits per credential, from outside. The limits are small (two a
//! minute, a burst of two) so that the third request is the refused one
//! whatever the pace of the machine: nothing here depends on timing beyond
//! what the limiter guarantees.

use renderfarm::startup::{Per, RateLimit, RateLimits};
use reqwest::header::{AUTHORIZATION, COOKIE};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{json_of, spawn_app_with, Response, TestApp};

const TWO_A_MINUTE: RateLimit = RateLimit::new(2, Per::Minute, 2);
const ONE_A_MINUTE: RateLimit = RateLimit::new(1, Per::Minute, 1);

async fn app_with(limits: RateLimits) -> TestApp {
    // The limiter keys by the credential presented before anyone checks it;
    // these tests present made-up ones, so the broker checks none.
    spawn_app_with(|settings| {
        settings.rate_limits = limits;
        settings.auth = renderfarm::api::auth::AuthMode::Off;
    })
    .await
}

/// A credential as a client presents it: a header and its value.
type Credential = Option<(reqwest::header::HeaderName, &'static str)>;

async fn get_as(app: &TestApp, path: &str, credential: &Credential) -> Response {
    let mut request = app.client.get(app.url(path));
    if let Some((name, value)) = credential {
        request = request.header(name, *value);
    }
    app.send(request).await
}

/// A header that spells a whole number.
fn number(response: &Response, name: &str) -> Option<u64> {
    let value = response.headers().get(name)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {value:?} is not a number")),
    )
}

fn has_rate_limit_headers(response: &Response) -> bool {
    ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]
        .iter()
        .any(|name| response.headers().contains_key(*name))
}

/// Spends a two-a-minute budget with `credential`; returns the refusal.
async fn spend_two_a_minute(app: &TestApp, credential: &Credential) -> Response {
    for (remaining, reset) in [(1, 30), (0, 60)] {
        let response = get_as(app, "/renders", credential).await;
        assert_eq!(response.status(), StatusCode::OK, "within the budget");
        assert_eq!(number(&response, "ratelimit-limit"), Some(2));
        assert_eq!(number(&response, "ratelimit-remaining"), Some(remaining));
        assert_eq!(
            number(&response, "ratelimit-reset"),
            Some(reset),
            "seconds until the whole burst is back"
        );
    }
    let refused = get_as(app, "/renders", credential).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    refused
}

#[tokio::test]
async fn a_client_over_its_budget_is_told_429_with_when_to_retry_and_what_is_left() {
    let app = app_with(RateLimits {
        people: TWO_A_MINUTE,
        workers: RateLimit::Off,
        refused_credentials: RateLimit::Off,
    })
    .await;
    let artist: Credential = Some((AUTHORIZATION, "Bearer rf_artists_very_own_secret"));
    let refused = spend_two_a_minute(&app, &artist).await;

    let retry_after = number(&refused, "retry-after").expect("Retry-After");
    // One request comes back every 30 s; the limiter's real wait, rounded up.
    assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(number(&refused, "ratelimit-limit"), Some(2));
    assert_eq!(number(&refused, "ratelimit-remaining"), Some(0));
    assert_eq!(
        number(&refused, "ratelimit-reset"),
        Some(retry_after),
        "the reset of a refusal is its Retry-After"
    );
    let body = json_of(refused).await;
    assert_eq!(body["error"], "too_many_requests", "{body}");
    let message = body["message"].as_str().expect("a message");
    assert!(
        message.contains("--rate-limit") && message.contains("2/m"),
        "names the budget: {message}"
    );
    assert!(
        message.contains(&format!("retry in {retry_after} s")),
        "says when: {message}"
    );
    assert!(
        !message.contains("rf_artists_very_own_secret"),
        "never echoes the credential: {message}"
    );

    // Still refused until the wait is over.
    let again = get_as(&app, "/renders", &artist).await;
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_throttled_client_does_not_hold_up_the_workers_on_its_address() {
    let app = app_with(RateLimits {
        people: TWO_A_MINUTE,
        workers: RateLimits::DEFAULT_WORKERS,
        refused_credentials: RateLimit::Off,
    })
    .await;
    // No credential: everything below is one client, 127.0.0.1.
    let anonymous: Credential = None;
    spend_two_a_minute(&app, &anonymous).await;

    let registered = app.register("render-01", &[]).await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    assert_eq!(number(&registered, "ratelimit-limit"), Some(2000));
    let worker = json_of(registered).await["id"]
        .as_str()
        .expect("worker id")
        .to_string();
    let beat = app.heartbeat(&worker, &json!({})).await;
    assert_eq!(beat.status(), StatusCode::OK);
    assert!(number(&beat, "ratelimit-remaining").is_some_and(|n| n < 2000));
    let claim = app.request_task(&worker, None).await;
    assert_eq!(claim.status(), StatusCode::NO_CONTENT, "nothing to do");
    assert!(has_rate_limit_headers(&claim));

    let listed = get_as(&app, "/workers", &anonymous).await;
    assert_eq!(
        listed.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the people's budget is still spent"
    );
}

#[tokio::test]
async fn another_credential_is_not_throttled_by_the_first() {
    let app = app_with(RateLimits {
        people: TWO_A_MINUTE,
        workers: RateLimit::Off,
        refused_credentials: RateLimit::Off,
    })
    .await;
    let first: Credential = Some((AUTHORIZATION, "Bearer rf_first"));
    spend_two_a_minute(&app, &first).await;

    let others: [Credential; 4] = [
        Some((AUTHORIZATION, "Bearer rf_second")),
        Some((AUTHORIZATION, "Bearer rf_First")),
        Some((COOKIE, "rf_session=a-browser-session")),
        None,
    ];
    for other in &others {
        let response = get_as(&app, "/renders", other).await;
        assert_eq!(response.status(), StatusCode::OK, "{other:?}");
        assert_eq!(
            number(&response, "ratelimit-remaining"),
            Some(1),
            "{other:?} has a budget of its own"
        );
    }
    let response = get_as(&app, "/renders", &first).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_probes_are_never_throttled() {
    let app = app_with(RateLimits {
        people: ONE_A_MINUTE,
        workers: ONE_A_MINUTE,
        refused_credentials: RateLimit::Off,
    })
    .await;
    for _ in 0..20 {
        for probe in ["/health", "/ready"] {
            let response = get_as(&app, probe, &None).await;
            assert_eq!(response.status(), StatusCode::OK, "{probe}");
            assert!(!has_rate_limit_headers(&response), "{probe} is not limited");
        }
    }
    // The limiter is on all the same.
    assert_eq!(
        get_as(&app, "/renders", &None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_as(&app, "/renders", &None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_worker_over_the_workers_budget_is_refused_naming_that_budget() {
    let app = app_with(RateLimits {
        people: RateLimit::Off,
        workers: TWO_A_MINUTE,
        refused_credentials: RateLimit::Off,
    })
    .await;
    let worker = app.register_ok("render-02").await;
    let beat = app.heartbeat(&worker, &json!({})).await;
    assert_eq!(beat.status(), StatusCode::OK);
    let refused = app.request_task(&worker, None).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(number(&refused, "retry-after").is_some_and(|s| (1..=30).contains(&s)));
    let message = json_of(refused).await["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("--worker-rate-limit"), "{message}");

    let listed = get_as(&app, "/workers", &None).await;
    assert_eq!(
        listed.status(),
        StatusCode::OK,
        "the people's budget is off"
    );
    assert!(!has_rate_limit_headers(&listed));
}

#[tokio::test]
async fn off_turns_limiting_off() {
    let app = app_with(RateLimits::OFF).await;
    let worker = app.register_ok("render-03").await;
    for _ in 0..30 {
        let listed = get_as(&app, "/renders", &None).await;
        assert_eq!(listed.status(), StatusCode::OK);
        assert!(!has_rate_limit_headers(&listed));
        let beat = app.heartbeat(&worker, &json!({})).await;
        assert_eq!(beat.status(), StatusCode::OK);
        assert!(!has_rate_limit_headers(&beat));
    }
}

#[tokio::test]
async fn an_address_presenting_many_refused_credentials_is_turned_away_for_a_while() {
    // Credentials checked, default limits: each made-up credential would have
    // a budget of its own, so the refusals count against the address.
    let app = crate::helpers::spawn_app().await;
    let allowed = renderfarm::api::rate_limit::FAILED_CREDENTIALS.to_string();
    let burst: usize = allowed.split('/').next().unwrap().parse().unwrap();
    for i in 0..=burst {
        let guess = format!("Bearer rf_guess_{i:064}");
        let response = app
            .send(
                app.client
                    .get(app.url("/renders"))
                    .header(AUTHORIZATION, guess),
            )
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    // Now even a good credential from that address waits.
    let response = app.get("/renders").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(number(&response, "retry-after").is_some_and(|s| s >= 1));
    let body = json_of(response).await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("refused"), "{message}");
    assert!(!message.contains("rf_guess"), "{message}");
    // The probes are never limited.
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}
