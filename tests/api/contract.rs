//! The spec as a contract: every answer the HTTP tests receive goes through
//! [`send`], which reads it whole and fails the test when the spec does not
//! declare its status for that operation, when a header the spec says is
//! always sent is missing, or when the body does not match the declared
//! content type and schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

/// An answer of the broker, read whole and checked against the spec.
#[derive(Debug)]
pub struct ApiResponse {
    status: StatusCode,
    headers: HeaderMap,
    url: Url,
    body: Vec<u8>,
}

impl ApiResponse {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body as it came, for a file that is not text.
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The body as text (async and fallible like `reqwest::Response::text`,
    /// so tests read the same either way).
    /// The body as JSON, without consuming the answer.
    pub fn peek_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub async fn text(self) -> Result<String, std::string::FromUtf8Error> {
        String::from_utf8(self.body)
    }
}

/// Sends `request`, reads the answer and checks it against the spec.
pub async fn send(request: reqwest::RequestBuilder) -> ApiResponse {
    let (client, request) = request.build_split();
    let request = request.expect("a well-formed request");
    let method = request.method().clone();
    let response = client
        .execute(request)
        .await
        .unwrap_or_else(|e| panic!("{method}: request failed: {e}"));
    let status = response.status();
    let headers = response.headers().clone();
    let url = response.url().clone();
    let body = if is_event_stream(&headers) {
        first_events(response).await
    } else {
        response.bytes().await.expect("the body").to_vec()
    };
    let answer = ApiResponse {
        status,
        headers,
        url,
        body,
    };
    if let Err(problem) = contract().check(&method, &answer) {
        panic!(
            "{method} {} answered {status}, which breaks the OpenAPI spec: {problem}\nbody: {}",
            answer.url.path(),
            String::from_utf8_lossy(&answer.body)
        );
    }
    answer
}

fn is_event_stream(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// The start of an event stream, which never ends by itself: what arrived
/// until its first event with data, or for two seconds.
async fn first_events(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, response.chunk()).await {
        body.extend_from_slice(&chunk);
        let text = String::from_utf8_lossy(&body);
        if text.contains("\ndata:") && text.ends_with("\n\n") {
            break;
        }
    }
    body
}

/// The spec the broker serves, and the schema validators built from it.
pub struct Contract {
    pub spec: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// Built once per test binary.
pub fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| Contract {
        spec: renderfarm::api::openapi::spec(),
        validators: Mutex::new(HashMap::new()),
    })
}

impl Contract {
    /// Checks one answer to `method` on its URL.
    pub fn check(&self, method: &Method, answer: &ApiResponse) -> Result<(), String> {
        let path = answer.url.path();
        if path == "/api-docs" || path.starts_with("/api-docs/") {
            // Swagger UI's own files are not part of the API.
            return Ok(());
        }
        if path == "/" || path.starts_with(&format!("{}/", renderfarm::web::ASSETS_PATH)) {
            // Nor are the dashboard's page and files (tests/api/dashboard.rs).
            return Ok(());
        }
        let Some((template, item)) = self.path_item(path) else {
            return self.check_error_outside_spec(answer, StatusCode::NOT_FOUND, "no route");
        };
        let Some(operation) = item.get(method.as_str().to_ascii_lowercase()) else {
            self.check_error_outside_spec(
                answer,
                StatusCode::METHOD_NOT_ALLOWED,
                "a method the route does not take",
            )?;
            return if answer.headers.contains_key("allow") {
                Ok(())
            } else {
                Err("a 405 must name the allowed methods in Allow".into())
            };
        };
        let status = answer.status.as_str();
        let responses = &operation["responses"];
        let declared = responses
            .get(status)
            .or_else(|| responses.get("default"))
            .ok_or_else(|| {
                let keys: Vec<&String> = responses
                    .as_object()
                    .map(|o| o.keys().collect())
                    .unwrap_or_default();
                format!(
                    "{method} {template} does not declare status {status} (it declares {keys:?})"
                )
            })?;
        let declared = self.resolve(declared)?;
        self.check_headers(declared, answer)?;
        if *method == Method::HEAD {
            // HEAD answers carry the headers of the answer but no body.
            return if answer.body.is_empty() {
                Ok(())
            } else {
                Err("a HEAD answer must have no body".into())
            };
        }
        self.check_content(declared, answer)
    }

    /// The path item whose template matches `path`; literal segments win over
    /// parameters, as in the router.
    fn path_item(&self, path: &str) -> Option<(&str, &Value)> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let mut best: Option<(usize, &str, &Value)> = None;
        for (template, item) in self.spec["paths"].as_object()? {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut literals = 0;
            let fits = parts.iter().zip(&segments).all(|(part, segment)| {
                if part.starts_with('{') && part.ends_with('}') {
                    !segment.is_empty()
                } else {
                    literals += 1;
                    part == segment
                }
            });
            if fits && best.is_none_or(|(n, ..)| literals > n) {
                best = Some((literals, template, item));
            }
        }
        best.map(|(_, template, item)| (template, item))
    }

    /// Answers for paths or methods the spec does not list: the broker's JSON
    /// error with the expected status.
    fn check_error_outside_spec(
        &self,
        answer: &ApiResponse,
        status: StatusCode,
        what: &str,
    ) -> Result<(), String> {
        if answer.status != status {
            return Err(format!(
                "the spec lists {what} here, so the answer must be {status}"
            ));
        }
        let error = json!({ "$ref": "#/components/schemas/ErrorBody" });
        self.check_json(&error, answer)
    }

    /// Follows a `$ref` into `#/components/...`.
    fn resolve<'a>(&'a self, value: &'a Value) -> Result<&'a Value, String> {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference
                    .strip_prefix('#')
                    .ok_or_else(|| format!("{reference} is not a local reference"))?;
                self.spec
                    .pointer(pointer)
                    .ok_or_else(|| format!("{reference} does not resolve"))
            }
            None => Ok(value),
        }
    }

    fn check_headers(&self, declared: &Value, answer: &ApiResponse) -> Result<(), String> {
        let Some(headers) = declared.get("headers").and_then(Value::as_object) else {
            return Ok(());
        };
        for (name, header) in headers {
            let header = self.resolve(header)?;
            match answer.headers.get(name.as_str()) {
                None if header["required"] == json!(true) => {
                    return Err(format!("the header {name} is missing"));
                }
                None => {}
                Some(value) => {
                    let text = value
                        .to_str()
                        .map_err(|_| format!("the header {name} is not text"))?;
                    // Header values are text; a header declared as an integer
                    // is checked as the number it spells.
                    let value = match header["schema"]["type"].as_str() {
                        Some("integer") | Some("number") => serde_json::from_str(text)
                            .map_err(|_| format!("the header {name}: {text:?} is not a number"))?,
                        _ => Value::String(text.to_string()),
                    };
                    self.validate_against(&header["schema"], &value)
                        .map_err(|e| format!("the header {name}: {e}"))?;
                }
            }
        }
        Ok(())
    }

    fn check_content(&self, declared: &Value, answer: &ApiResponse) -> Result<(), String> {
        let content = declared.get("content").and_then(Value::as_object);
        let Some(content) = content.filter(|c| !c.is_empty()) else {
            return if answer.body.is_empty() {
                Ok(())
            } else {
                Err("the spec declares no body for this answer, but it has one".into())
            };
        };
        let media_type = answer
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .ok_or("the answer has no Content-Type")?;
        let media = content.get(&media_type).ok_or_else(|| {
            format!(
                "the Content-Type is {media_type}, but the spec declares {:?}",
                content.keys().collect::<Vec<_>>()
            )
        })?;
        if media_type == "application/json" {
            self.check_json(&media["schema"], answer)
        } else if media_type == "text/event-stream" {
            // Each event's data is one JSON document of the declared schema.
            let text = std::str::from_utf8(&answer.body)
                .map_err(|_| "an event stream that is not UTF-8".to_string())?;
            for data in text.lines().filter_map(|l| l.strip_prefix("data:")) {
                let data: Value = serde_json::from_str(data.trim())
                    .map_err(|e| format!("an event's data is not JSON: {e}: {data}"))?;
                self.validate_against(&media["schema"], &data)?;
            }
            Ok(())
        } else if media.get("schema").is_none() {
            // A file of that type (an image): bytes with no schema to check.
            Ok(())
        } else {
            let text = std::str::from_utf8(&answer.body)
                .map_err(|_| format!("a {media_type} body that is not UTF-8"))?;
            self.validate_against(&media["schema"], &Value::String(text.to_string()))
        }
    }

    fn check_json(&self, schema: &Value, answer: &ApiResponse) -> Result<(), String> {
        let body: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("the body is not JSON: {e}"))?;
        self.validate_against(schema, &body)
    }

    /// Validates `instance` against `schema`, whose `$ref`s point into the
    /// spec's components.
    pub fn validate_against(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let key = schema.to_string();
        let validator = {
            let mut cache = self.validators.lock().expect("cache lock");
            match cache.get(&key) {
                Some(v) => v.clone(),
                None => {
                    // The schema sits in a document that carries the spec's
                    // components, so `#/components/schemas/X` resolves.
                    let document = json!({
                        "$schema": "https://json-schema.org/draft/2020-12/schema",
                        "components": self.spec["components"],
                        "allOf": [schema],
                    });
                    let v = Arc::new(
                        jsonschema::draft202012::options()
                            .should_validate_formats(true)
                            .build(&document)
                            .map_err(|e| format!("the spec's schema {schema} is not valid: {e}"))?,
                    );
                    cache.insert(key, v.clone());
                    v
                }
            }
        };
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("at {:?}: {e}", e.instance_path().to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the body does not match its schema: {}",
                errors.join("; ")
            ))
        }
    }
}

#[tokio::test]
async fn the_contract_catches_answers_the_spec_does_not_allow() {
    let url = Url::parse("http://127.0.0.1:1/renders").unwrap();
    let answer = |status: u16, headers: &[(&str, &str)], body: &str| {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        ApiResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            url: url.clone(),
            body: body.as_bytes().to_vec(),
        }
    };
    let json = [("content-type", "application/json")];
    let c = contract();
    let page = r#"{"items": [], "total": 0, "limit": 100, "offset": 0}"#;
    assert_eq!(c.check(&Method::GET, &answer(200, &json, page)), Ok(()));
    let undeclared = c.check(&Method::GET, &answer(418, &json, page));
    assert!(undeclared.unwrap_err().contains("418"));
    let missing_field = c.check(&Method::GET, &answer(200, &json, r#"{"items": []}"#));
    assert!(missing_field.unwrap_err().contains("total"));
    let wrong_type = c.check(
        &Method::GET,
        &answer(200, &[("content-type", "text/html")], page),
    );
    assert!(wrong_type.unwrap_err().contains("text/html"));
    let bad_error = c.check(
        &Method::GET,
        &answer(400, &json, r#"{"error": "oops", "message": "x"}"#),
    );
    assert!(bad_error.unwrap_err().contains("oops"));
    // 202 on submit must carry Location and Retry-After.
    let render =
        serde_json::to_string(&c.spec["components"]["schemas"]["Render"]["example"]).unwrap();
    let no_location = c.check(&Method::POST, &answer(202, &json, &render));
    assert!(no_location.unwrap_err().contains("missing"));
    let with_headers = answer(
        202,
        &[
            ("content-type", "application/json"),
            ("location", "/renders/x"),
            ("retry-after", "5"),
        ],
        &render,
    );
    assert_eq!(c.check(&Method::POST, &with_headers), Ok(()));
}
