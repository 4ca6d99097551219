//! The OpenAPI description of the HTTP API, built from the handlers'
//! `#[utoipa::path]` annotations and the wire types' schemas. Served at
//! `/api-docs/openapi.json` (with Swagger UI at `/api-docs/`), printed by
//! `renderfarm openapi`, and committed as `openapi/openapi.json`; the black-box
//! tests check every answer they get against it.

use std::sync::LazyLock;

use actix_web::dev::ServiceResponse;
use actix_web::http::header;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, ResponseError};
use renderfarm_wire::{ErrorBody, ErrorCode, Task};
use serde_json::Value;
use utoipa::{IntoResponses, OpenApi, ToResponse};
use utoipa_swagger_ui::SwaggerUi;

use super::{
    blocklist, events, files, frames, health, hours, metrics, previews, renders, scheduler,
    session, signed, tasks, tokens, variables, videos, webhooks, workers, ApiError,
};

/// Where Swagger UI lives; the spec sits beside it.
pub const DOCS_PATH: &str = "/api-docs";
/// Where the spec is served.
pub const SPEC_PATH: &str = "/api-docs/openapi.json";

/// The broker's API: every route, its answers, and the schemas they use.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "renderfarm broker",
        description = "A pull-based render farm for Blender. Users submit renders; worker agents \
register, pull tasks (chunks of frames) with `POST /workers/{id}/request-task`, and report \
progress and results under the lease each assignment carries. Operators steer renders and \
workers.\n\nEvery error answer is JSON, `{\"error\": \"<code>\", \"message\": \"<what went wrong \
and how to fix it>\"}`, including malformed JSON, unknown routes (404) and wrong methods (405, \
with `Allow`). Request bodies are JSON (`Content-Type: application/json`, or none) of at most \
1 MiB, and unknown fields are refused.\n\nRate limits: each client (its `Authorization` header, \
else its `rf_session` cookie, else its address) has two budgets, one for the workers' routes \
(`POST /workers`, heartbeats, `request-task` and the task reports) and one for everything else; \
`/health` and `/ready` are not limited. The broker's flags set them (`--rate-limit`, \
`--worker-rate-limit`). Every limited answer carries `RateLimit-Limit` (the requests that may \
come at once), `RateLimit-Remaining` (what is left of them) and `RateLimit-Reset` (seconds until \
all are back), as draft-ietf-httpapi-ratelimit-headers-06 defines them; a request over the limit \
is answered 429 with `Retry-After`.",
    ),
    paths(
        renders::submit,
        renders::list,
        renders::get,
        renders::delete,
        renders::tasks,
        renders::change_status,
        renders::complete,
        blocklist::list,
        blocklist::clear,
        variables::list,
        variables::put,
        variables::delete,
        frames::list,
        frames::frame,
        frames::archive,
        frames::upload,
        previews::get,
        previews::upload,
        videos::video,
        videos::upload,
        files::status,
        files::upload,
        files::download,
        workers::register,
        workers::list,
        workers::get,
        workers::change_status,
        workers::remove,
        workers::revoke_secret,
        workers::heartbeat,
        workers::request_task,
        hours::report,
        hours::set,
        hours::clear,
        tasks::get,
        tasks::log,
        tasks::progress,
        tasks::complete,
        tasks::fail,
        tasks::release,
        tasks::requeue,
        health::health,
        health::ready,
        metrics::scrape,
        scheduler::status,
        scheduler::run,
        tokens::create,
        tokens::list,
        tokens::revoke,
        session::sign_in,
        session::whoami,
        session::sign_out,
        signed::sign,
        events::events,
        events::summary,
        webhooks::create,
        webhooks::list,
        webhooks::get,
        webhooks::delete,
        webhooks::enable,
    ),
    components(schemas(ErrorBody, ErrorCode, renderfarm_wire::FileInfo, renderfarm_wire::FileUpload, renderfarm_wire::WebhookPayload), responses(
        FileTooLarge,
        InsufficientStorage,
        RangeNotSatisfiable,
        Unauthorized,
        Forbidden,
        BadRequest,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        Internal,
        TooManyRequests,
        Unavailable,
    )),
    tags(
        (name = "renders", description = "Submit renders, follow them, and steer them (operators)."),
        (name = "workers", description = "Worker agents register, heartbeat and pull tasks; operators drain, disable and enable them."),
        (name = "tasks", description = "One chunk of a render's frames: its state, its log, and the lease-guarded reports of the worker running it."),
        (name = "health", description = "Liveness and readiness probes."),
        (name = "metrics", description = "Prometheus metrics: this replica's requests and latencies; the farm's gauges from the scheduler's leader."),
        (name = "scheduler", description = "The periodic tick: lost workers, retries, preemption, counter recount; run it now, see what it did."),
        (name = "tokens", description = "Credentials (admins): issue, list and revoke tokens."),
        (name = "events", description = "The farm's changes as they happen (Server-Sent Events), resumable with `Last-Event-ID`; the farm in numbers, live."),
        (name = "session", description = "Browsers: sign in with a token for a session cookie; signed links for downloads."),
        (name = "webhooks", description = "Operators register URLs that the broker POSTs signed JSON to (`WebhookPayload`) when renders complete, fail or are canceled, tasks fail and workers are lost; retried with backoff, disabled when the receiver keeps failing."),
        (name = "variables", description = "Path mapping (operators): farm-wide path variables, a shared folder's path on each platform (linux, windows, macos). Render paths under one are stored with the variable and given to each worker in its platform's form; paths inside the .blend are remapped by the agent before rendering."),
        (name = "files", description = "Files through the broker, named by their SHA-256: artists upload blends (resumable), workers and people download them (resumable with `Range`)."),
    ),
    modifiers(&Credentials)
)]
pub struct ApiDoc;

/// Declares how callers present credentials. Each operation names the role
/// it needs as the scopes of its security requirement (OpenAPI 3.1 allows
/// role names there for schemes other than OAuth).
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from an admin (`renderfarm token create`, or `POST /tokens`), sent as `Authorization: Bearer rf_…`; a registered worker sends its own secret. Never in the URL.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::auth::SESSION_COOKIE,
                "A browser's session from `POST /session`; every change made with it must carry `X-CSRF-Token`.",
            ))),
        );
    }
}

/// No usable credential.
#[derive(ToResponse)]
#[response(
    description = "No usable credential: none sent, malformed, unknown, expired or revoked. The message says which and how to get a valid one. Nothing was changed.",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"renderfarm\"`.")),
    example = json!({"error": "unauthorized", "message": "the token was revoked; ask an admin for a new one (renderfarm token create)"})
)]
pub struct Unauthorized(pub ErrorBody);

/// A valid credential without the right.
#[derive(ToResponse)]
#[response(
    description = "The credential is valid but lacks the right: the message names the role needed (or, for a worker, that it may act only as itself). Nothing was changed.",
    example = json!({"error": "forbidden", "message": "this needs the role operator or higher; the token \"alice\" has the role artist. Ask an admin for one with the role needed"})
)]
pub struct Forbidden(pub ErrorBody);

/// The request does not fit the route. The message names the field or
/// parameter at fault and what it should be.
#[derive(ToResponse)]
#[response(
    description = "Invalid input: malformed JSON, a missing or unknown field, a value out of range, or a bad query parameter. The message names the field.",
    example = json!({"error": "invalid_input", "message": "frame_end: is 2, before frame_start 5; give frame_end >= frame_start"})
)]
pub struct BadRequest(pub ErrorBody);

/// No such render, task or worker (ids are UUIDs).
#[derive(ToResponse)]
#[response(
    description = "No render, task or worker with that id (a malformed id names nothing, so it is a 404 too).",
    example = json!({"error": "not_found", "message": "no render with id 0b8f3c4e-5d6a-4f1b-9c2d-3e4f5a6b7c8d"})
)]
pub struct NotFound(pub ErrorBody);

/// The change conflicts with the current state; nothing was changed.
#[derive(ToResponse)]
#[response(
    description = "Conflict: a stale lease (the task was reassigned, canceled or finished: stop working on it), a status change the state machine does not allow from the current status, or a disabled worker asking for work. Nothing was changed.",
    example = json!({"error": "conflict", "message": "the lease presented for task 01a20b20-eeb3-759a-bc8b-10a14eccf12a is not its current one (the task was reassigned, canceled or finished); stop working on it and ask for a new task"})
)]
pub struct Conflict(pub ErrorBody);

/// The body is over the 1 MiB limit.
#[derive(ToResponse)]
#[response(
    description = "The body is larger than the 1 MiB accepted.",
    example = json!({"error": "payload_too_large", "message": "the body of POST /renders is larger than the 1048576 bytes accepted; send less (split logs into several reports)"})
)]
pub struct PayloadTooLarge(pub ErrorBody);

/// The body is declared as something other than JSON.
#[derive(ToResponse)]
#[response(
    description = "The Content-Type is not JSON; send `Content-Type: application/json` (or none).",
    example = json!({"error": "unsupported_media_type", "message": "POST /renders takes JSON: send the header Content-Type: application/json"})
)]
pub struct UnsupportedMediaType(pub ErrorBody);

/// A file over `--max-file-size`.
#[derive(ToResponse)]
#[response(
    description = "The file is larger than this broker takes (`--max-file-size`); nothing was kept. The message names the limit and the flag.",
    example = json!({"error": "payload_too_large", "message": "the file is 60000000000 bytes (55.9 GiB), over this broker's limit of 53687091200 bytes (50.0 GiB); the broker's operator can raise it with --max-file-size (RENDERFARM_MAX_FILE_SIZE)"})
)]
pub struct FileTooLarge(pub ErrorBody);

/// The file storage is full.
#[derive(ToResponse)]
#[response(
    description = "The broker's file storage is full (`--storage-quota`, or its disk); nothing of this upload was kept, and a task whose frame it was stays running. The message names the quota and the flag.",
    example = json!({"error": "insufficient_storage", "message": "the broker's file storage is full: storing 48213 more bytes (47.1 KiB) would pass its quota of 1000000 bytes (976.6 KiB; 980000 in use); nothing was stored. Delete finished renders to free their frames, or ask the broker's operator to raise --storage-quota (RENDERFARM_STORAGE_QUOTA)"})
)]
pub struct InsufficientStorage(pub ErrorBody);

/// A `Range` outside the file.
#[derive(ToResponse)]
#[response(
    description = "The `Range` asked lies outside the file; `Content-Range: bytes */SIZE` tells its size.",
    headers(("Content-Range" = String, description = "`bytes */SIZE`.")),
    example = json!({"error": "range_not_satisfiable", "message": "the range \"500-\" is outside the file of 100 bytes; ask for bytes=N- with N below 100"})
)]
pub struct RangeNotSatisfiable(pub ErrorBody);

/// A failure the broker did not expect; its cause is in the broker's log.
#[derive(ToResponse)]
#[response(
    description = "The broker hit an unexpected error; the cause is in its log, never in the answer.",
    example = json!({"error": "internal", "message": "the broker hit an unexpected error; it was logged. Retry later, and report it if it persists"})
)]
pub struct Internal(pub ErrorBody);

/// The client is over its rate limit, or (`request-task`) the broker holds
/// as many waiting long polls as it may.
#[derive(ToResponse)]
#[response(
    description = "Too many requests: this client (its credential, or its address) spent its budget of requests (`--rate-limit`, or `--worker-rate-limit` on the workers' routes), or, on `request-task`, as many workers as the broker holds (`--max-waiting`) are waiting for work already. Ask again after `Retry-After` seconds.",
    headers(
        ("Retry-After" = u32, description = "Seconds to wait before asking again."),
        ("RateLimit-Limit" = u32, description = "Requests this client may make at once on this budget (draft-ietf-httpapi-ratelimit-headers-06); sent with every answer of a limited route."),
        ("RateLimit-Remaining" = u32, description = "What is left of them: 0 when refused."),
        ("RateLimit-Reset" = u32, description = "Seconds until all of them are back; on a 429, the same as `Retry-After`."),
    ),
    example = json!({"error": "too_many_requests", "message": "too many requests to the API with this Authorization header: this broker allows 300/s:600 per client (--rate-limit); retry in 1 s (Retry-After)"})
)]
pub struct TooManyRequests(pub ErrorBody);

/// The store cannot be reached just now.
#[derive(ToResponse)]
#[response(
    description = "The store is unavailable (e.g. the broker is shutting down); retry after `Retry-After` seconds.",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
    example = json!({"error": "unavailable", "message": "the disk holding the data directory is full; retry shortly"})
)]
pub struct Unavailable(pub ErrorBody);

/// What every route that uses the store may answer besides its own.
#[derive(IntoResponses)]
pub enum StoreErrors {
    #[response(status = 500)]
    Internal(#[ref_response] Internal),
    #[response(status = 503)]
    Unavailable(#[ref_response] Unavailable),
}

/// What every route that reads a JSON body may answer about the body.
#[derive(IntoResponses)]
pub enum BodyErrors {
    #[response(status = 400)]
    BadRequest(#[ref_response] BadRequest),
    #[response(status = 413)]
    PayloadTooLarge(#[ref_response] PayloadTooLarge),
    #[response(status = 415)]
    UnsupportedMediaType(#[ref_response] UnsupportedMediaType),
}

/// The answers to a worker's lease-guarded report about its task.
#[derive(IntoResponses)]
pub enum TaskReportAnswers {
    /// The task after the report.
    #[response(status = 200)]
    Reported(Task),
    #[response(status = 404)]
    NotFound(#[ref_response] NotFound),
    /// The lease is stale: drop the task and send nothing more about it.
    #[response(status = 409)]
    Conflict(#[ref_response] Conflict),
}

/// Response headers the broker sends with every answer of that status.
/// utoipa 5 cannot mark a response header `required`, so [`spec`] adds the
/// flag; headers not listed (`Retry-After` on a render that may be finished)
/// are sent only sometimes.
const ALWAYS_SENT_HEADERS: &[(&str, &str, &str, &str)] = &[
    ("/renders", "post", "202", "Location"),
    ("/renders", "post", "202", "Retry-After"),
    ("/workers", "post", "201", "Location"),
    ("/workers/{id}/request-task", "post", "204", "Retry-After"),
    ("/ready", "get", "503", "Retry-After"),
];

/// Built once: every server worker thread serves the same document.
static SPEC: LazyLock<Value> = LazyLock::new(spec);

/// Serves Swagger UI under `/api-docs/` and the spec beside it.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        SwaggerUi::new(format!("{DOCS_PATH}/{{_:.*}}"))
            .external_url_unchecked(SPEC_PATH, SPEC.clone()),
    )
    // Swagger UI loads its files relative to the page, so the page must be
    // the folder `/api-docs/`, not `/api-docs`.
    .service(web::redirect(DOCS_PATH, format!("{DOCS_PATH}/")));
}

/// Gives the bare 404s of Swagger UI's file server (`/api-docs/no-such-file`)
/// the JSON error body every other answer of the broker has.
pub fn json_not_found<B: 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().handler(actix_web::http::StatusCode::NOT_FOUND, |res| {
        if res.headers().contains_key(header::CONTENT_TYPE) {
            return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
        }
        let (req, _) = res.into_parts();
        let response = ApiError::NotFound(format!(
            "there is nothing at {}; the API docs are at {DOCS_PATH}/",
            req.path()
        ))
        .error_response();
        Ok(ErrorHandlerResponse::Response(
            ServiceResponse::new(req, response).map_into_right_body(),
        ))
    })
}

/// The spec as served and committed.
pub fn spec() -> Value {
    let mut spec = serde_json::to_value(ApiDoc::openapi())
        .expect("utoipa's OpenApi is maps of strings and serializes to JSON");
    for (path, method, status, header) in ALWAYS_SENT_HEADERS {
        if let Some(h) = spec
            .pointer_mut(&format!(
                "/paths/{}/{method}/responses/{status}/headers/{header}",
                path.replace('~', "~0").replace('/', "~1")
            ))
            .and_then(Value::as_object_mut)
        {
            h.insert("required".into(), Value::Bool(true));
        }
    }
    for response in ["Unavailable", "TooManyRequests"] {
        if let Some(h) = spec
            .pointer_mut(&format!(
                "/components/responses/{response}/headers/Retry-After"
            ))
            .and_then(Value::as_object_mut)
        {
            h.insert("required".into(), Value::Bool(true));
        }
    }
    declare_rate_limited(&mut spec);
    camel_case_links(&mut spec);
    answer_credential_errors(&mut spec);
    spec
}

/// Every operation that needs a credential may answer 401 and 403; said
/// once here rather than in each annotation.
fn answer_credential_errors(spec: &mut Value) {
    let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(Value::as_object_mut)
    {
        let needs_credential = operation
            .get("security")
            .and_then(Value::as_array)
            .is_some_and(|reqs| {
                reqs.iter()
                    .any(|r| r.as_object().is_some_and(|o| !o.is_empty()))
            });
        if !needs_credential {
            continue;
        }
        if let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        {
            responses.insert(
                "401".into(),
                serde_json::json!({"$ref": "#/components/responses/Unauthorized"}),
            );
            responses.insert(
                "403".into(),
                serde_json::json!({"$ref": "#/components/responses/Forbidden"}),
            );
        }
    }
}

/// Every operation the rate limiter counts may answer 429: declared here,
/// once, rather than on each handler, with the same rule the limiter uses.
fn declare_rate_limited(spec: &mut Value) {
    let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths {
        if super::rate_limit::is_unlimited(path) {
            continue;
        }
        let responses = item
            .as_object_mut()
            .into_iter()
            .flat_map(|item| item.values_mut())
            .filter_map(|operation| operation.get_mut("responses"))
            .filter_map(Value::as_object_mut);
        for responses in responses {
            responses.entry("429").or_insert_with(
                || serde_json::json!({ "$ref": "#/components/responses/TooManyRequests" }),
            );
        }
    }
}

/// utoipa 5 writes the fields of a Link Object in snake case
/// (`operation_id`); OpenAPI names them in camel case (`operationId`), and
/// tools ignore links spelled otherwise.
fn camel_case_links(spec: &mut Value) {
    let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses"))
        .filter_map(Value::as_object_mut)
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links"))
        .filter_map(Value::as_object_mut)
        .flat_map(|links| links.values_mut())
        .filter_map(Value::as_object_mut);
    for link in links {
        for (from, to) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(from) {
                link.insert(to.into(), value);
            }
        }
    }
}

/// The spec as pretty JSON with a final newline, as `renderfarm openapi`
/// prints it and `openapi/openapi.json` holds it.
pub fn spec_json() -> String {
    let mut text = serde_json::to_string_pretty(&spec()).expect("a JSON value serializes to JSON");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::workers::MAX_WAIT_SECONDS;
    use crate::store::PageRequest;

    #[test]
    fn every_always_sent_header_names_a_declared_header() {
        let spec = spec();
        for (path, method, status, header) in ALWAYS_SENT_HEADERS {
            let declared = &spec["paths"][path][method]["responses"][status]["headers"][header];
            assert_eq!(
                declared["required"],
                Value::Bool(true),
                "{method} {path} {status} does not declare {header}"
            );
        }
    }

    #[test]
    fn every_rate_limited_operation_declares_429_and_the_probes_do_not() {
        let spec = spec();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let declared = operation["responses"].get("429").is_some();
                assert_eq!(
                    declared,
                    !crate::api::rate_limit::is_unlimited(path),
                    "{method} {path}"
                );
            }
        }
        assert!(!crate::api::rate_limit::is_unlimited("/renders"));
        assert!(crate::api::rate_limit::is_unlimited("/health"));
    }

    #[test]
    fn every_link_names_an_operation_of_the_spec_in_openapi_spelling() {
        let spec = spec();
        let mut operations = Vec::new();
        let mut links = Vec::new();
        for item in spec["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                operations.push(operation["operationId"].clone());
                for response in operation["responses"].as_object().unwrap().values() {
                    if let Some(l) = response.get("links").and_then(Value::as_object) {
                        links.extend(l.values().cloned());
                    }
                }
            }
        }
        assert!(links.len() >= 10, "{} links", links.len());
        for link in links {
            assert!(operations.contains(&link["operationId"]), "{link}");
            assert!(link.get("operation_id").is_none() && link.get("request_body").is_none());
        }
    }

    #[test]
    fn the_declared_bounds_are_the_enforced_ones() {
        let spec = spec();
        let param = |path: &str, method: &str, name: &str| {
            spec["paths"][path][method]["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .map(|p| p["schema"].clone())
                .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
        };
        for path in ["/renders", "/renders/{id}/tasks"] {
            let limit = param(path, "get", "limit");
            assert_eq!(limit["maximum"], PageRequest::MAX_LIMIT);
            assert_eq!(limit["default"], PageRequest::default().limit);
            assert_eq!(param(path, "get", "offset")["minimum"], 0);
        }
        let wait = param("/workers/{id}/request-task", "post", "wait");
        assert_eq!(wait["maximum"].as_f64(), Some(MAX_WAIT_SECONDS));
        let chunk = &spec["components"]["schemas"]["RenderSpec"]["properties"]["chunk_size"];
        assert_eq!(
            chunk["oneOf"][0]["maximum"],
            crate::domain::MAX_FRAMES_PER_RENDER
        );
        assert_eq!(chunk["oneOf"][1]["enum"][0], "auto");
        let target =
            &spec["components"]["schemas"]["RenderSpec"]["properties"]["target_chunk_seconds"];
        assert_eq!(target["minimum"], crate::domain::MIN_TARGET_CHUNK_SECONDS);
        assert_eq!(target["maximum"], crate::domain::MAX_TARGET_CHUNK_SECONDS);
    }
}
