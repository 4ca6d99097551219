//! The JSON body extractor of every route. Unlike `web::Json`, its errors
//! name the field at fault (`priority: unknown variant ...`), so a user knows
//! what to fix.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use super::{ApiError, MAX_BODY_BYTES};

/// A request body parsed as JSON into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T> JsonBody<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for JsonBody<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// JSON, or no content type at all (curl without -H): both are read as JSON.
fn is_json(req: &HttpRequest) -> bool {
    match req.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.type_() == mime::APPLICATION
                    && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
            }),
    }
}

/// Parses `bytes` as JSON into `T`, naming the field that does not fit;
/// `what` names the route, for messages.
pub fn parse_json<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::Invalid(format!(
                "{} needs a JSON body; see /api-docs for its fields",
                what()
            )))
        }
        // Serde reads a struct from an array of its fields in order too
        // (`["a", "b"]`); no body of this API is an array, so refuse it
        // before that.
        Some(b'[') => {
            return Err(ApiError::Invalid(format!(
                "the body of {} is a JSON array; expected a JSON object with named fields (see /api-docs)",
                what()
            )))
        }
        Some(_) => {}
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let what = what();
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::Invalid(format!(
                "the body of {what} is not valid JSON ({inner}); send a JSON object"
            ))
        } else if path == "." {
            ApiError::Invalid(format!(
                "the body of {what} does not have the expected shape: {inner}; see /api-docs for its fields"
            ))
        } else {
            ApiError::Invalid(format!(
                "{path}: {inner} (in the body of {what}; see /api-docs for its fields)"
            ))
        }
    })
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // The route is named in error messages only: matching its pattern
        // again costs a route search, so bodies that parse skip it.
        let request = req.clone();
        let what = move || {
            let route = request
                .match_pattern()
                .unwrap_or_else(|| request.path().to_string());
            format!("{} {route}", request.method())
        };
        if !is_json(req) {
            let err = ApiError::UnsupportedMediaType(format!(
                "{} takes JSON: send the header Content-Type: application/json",
                what()
            ));
            return Box::pin(async move { Err(err.into()) });
        }
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let bytes = match bytes.await {
                Ok(bytes) => bytes,
                Err(e) => {
                    let too_large = e.as_response_error().status_code()
                        == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE;
                    let err = if too_large {
                        ApiError::PayloadTooLarge(format!(
                            "the body of {} is larger than the {MAX_BODY_BYTES} bytes accepted; send less (split logs into several reports)",
                            what()
                        ))
                    } else {
                        ApiError::Invalid(format!("the body of {} could not be read: {e}", what()))
                    };
                    return Err(err.into());
                }
            };
            Ok(JsonBody(parse_json(&bytes, what)?))
        })
    }
}
