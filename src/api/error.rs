//! The one error type of the HTTP API. Every failure becomes
//! `{"error": code, "message": how to fix it}` with a status that means
//! something to the caller; unexpected causes go to the log, never to the
//! client.

use actix_web::error::{PathError, QueryPayloadError};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use renderfarm_wire::ErrorBody;

use crate::domain::{IllegalTransition, ValidationError};
use crate::store::StoreError;

/// The header telling how many bytes of a file the broker holds.
pub const UPLOAD_OFFSET: &str = "upload-offset";

/// Seconds a client should wait before retrying after a 503.
const UNAVAILABLE_RETRY_AFTER: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    /// No usable credential: missing, malformed, unknown, expired, revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid credential without the right.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String, &'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: try again after `retry_after_secs` (sent as `Retry-After`).
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    /// 409 about an upload: the broker holds `offset` bytes of the file,
    /// sent as `Upload-Offset` so the client resumes from there.
    #[error("{message}")]
    UploadOffset { message: String, offset: u64 },
    /// 416: the `Range` asked lies outside the file of `size` bytes.
    #[error("{message}")]
    RangeNotSatisfiable { message: String, size: u64 },
    /// 507: the file storage is full (`--storage-quota`, or the disk).
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("unexpected failure")]
    Unexpected(#[source] anyhow::Error),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "invalid_input",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(..) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::UploadOffset { .. } => "conflict",
            ApiError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::Unexpected(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UploadOffset { .. } => StatusCode::CONFLICT,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            ApiError::Unexpected(cause) => {
                tracing::error!(error = ?cause, "request failed unexpectedly");
                "the broker hit an unexpected error; it was logged. Retry later, and report it if it persists".to_string()
            }
            other => other.to_string(),
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER));
            }
            ApiError::TooManyRequests {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"renderfarm\""));
            }
            ApiError::MethodNotAllowed(_, allow) => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::UploadOffset { offset, .. } => {
                response.insert_header((UPLOAD_OFFSET, offset.to_string()));
            }
            ApiError::RangeNotSatisfiable { size, .. } => {
                response.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: self.code().to_string(),
            message,
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        crate::metrics::replica().store_error(&e);
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::NotYourTask { .. } => ApiError::Forbidden(e.to_string()),
            StoreError::StaleLease { .. }
            | StoreError::IllegalTransition(_)
            | StoreError::WorkerUnavailable(_)
            | StoreError::AlreadyExists => ApiError::Conflict(e.to_string()),
            StoreError::Invalid(m) => ApiError::Invalid(m),
            StoreError::Unavailable(m) => ApiError::Unavailable(format!("{m}; retry shortly")),
            StoreError::Unexpected(cause) => ApiError::Unexpected(cause),
        }
    }
}

impl From<crate::files::FilesError> for ApiError {
    fn from(e: crate::files::FilesError) -> Self {
        use crate::domain::files::UploadRefusal;
        use crate::files::FilesError;
        match e {
            FilesError::Refused(r @ UploadRefusal::TooLarge { .. }) => {
                ApiError::PayloadTooLarge(r.to_string())
            }
            FilesError::Refused(r @ UploadRefusal::QuotaExceeded { .. }) => {
                ApiError::InsufficientStorage(r.to_string())
            }
            FilesError::NoSpace(_) => ApiError::InsufficientStorage(e.to_string()),
            FilesError::Resume(r) => ApiError::UploadOffset {
                message: r.to_string(),
                offset: r.received(),
            },
            FilesError::Busy(_) => ApiError::Conflict(e.to_string()),
            FilesError::Invalid(v) => ApiError::Invalid(v.to_string()),
            // The client is gone (or stopped sending); if it still listens,
            // this tells where to resume.
            FilesError::Cut { received, .. } => ApiError::UploadOffset {
                message: e.to_string(),
                offset: received,
            },
            FilesError::Unavailable(m) => ApiError::Unavailable(format!("{m}; retry shortly")),
            FilesError::Unexpected(cause) => ApiError::Unexpected(cause),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}

impl From<IllegalTransition> for ApiError {
    fn from(e: IllegalTransition) -> Self {
        ApiError::Conflict(e.message)
    }
}

/// Turns a query string that does not fit the route into a 400.
pub fn query_error(err: QueryPayloadError, req: &HttpRequest) -> actix_web::Error {
    ApiError::Invalid(format!(
        "the query string {:?} of {} is not valid: {err}; see /api-docs for the parameters",
        req.query_string(),
        req.path()
    ))
    .into()
}

/// Path segments are parsed by hand (ids), so this only catches the rest.
pub fn path_error(err: PathError, req: &HttpRequest) -> actix_web::Error {
    ApiError::NotFound(format!("no resource at {}: {err}", req.path())).into()
}
