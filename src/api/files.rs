//! `/files/{sha256}`: content-addressed files in and out of the broker
//! (issue 13). Artists upload blends, resumable part by part; workers and
//! people download them, resumable by `Range`.

use actix_web::body::SizedStream;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use renderfarm_wire::{ErrorBody, FileInfo, FileUpload};

use super::auth::{Access, Artist, ViewerOrWorker};
use super::error::UPLOAD_OFFSET;
use super::{resource, ApiError, AppState};
use crate::domain::files::{Sha256, UploadPart};
use crate::files::{ByteStream, FileState, Uploaded};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/files/{sha256}", "GET, HEAD, PUT")
            .route(web::get().to(download))
            .route(web::head().to(status))
            .route(web::put().to(upload)),
    );
}

pub(super) fn parse_sha(raw: &str) -> Result<Sha256, ApiError> {
    Ok(Sha256::parse("sha256", raw)?)
}

/// The request body as a stream of bytes for the file storage. A broken
/// connection becomes an error item, so that the storage keeps what came
/// before it. actix-web's payload lives on its worker's thread, so a task
/// there hands the chunks over (a few at a time: the client is slowed to
/// the storage's pace); once the storage stops reading, the task ends and
/// the rest of the body is not read.
pub(super) fn body_stream(mut payload: web::Payload) -> ByteStream {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    actix_web::rt::spawn(async move {
        while let Some(chunk) = payload.next().await {
            let item = chunk.map_err(std::io::Error::other);
            let broken = item.is_err();
            if tx.send(item).await.is_err() || broken {
                break;
            }
        }
    });
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// The `Content-Length` of a request, if it sent one.
pub(super) fn content_length(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    match req.headers().get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::Invalid("Content-Length is not a number of bytes".into())),
    }
}

/// Whether a file is stored, or how much of its upload the broker holds.
///
/// 200 with `Content-Length` (the file's size) when it is stored and
/// checked. 404 otherwise, with `Upload-Offset` telling how many bytes of an
/// upload under way (or cut off) the broker holds: resume with
/// `PUT /files/{sha256}` and `Content-Range: bytes OFFSET-…/TOTAL`.
#[utoipa::path(
    head,
    path = "/files/{sha256}",
    tag = "files",
    operation_id = "file_status",
    params(("sha256" = String, Path, description = "The file's SHA-256: 64 lowercase hex digits.", pattern = "^[0-9a-f]{64}$")),
    security(("bearer" = ["viewer", "worker"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "Stored and checked; the body of GET would be `Content-Length` bytes.",
            headers(("Content-Length" = u64, description = "The file's size."))),
        (status = 400, description = "The path is not a SHA-256 (no body: this is HEAD)."),
        (status = 404, description = "Not stored (no body: this is HEAD).",
            headers(("Upload-Offset" = u64, description = "The bytes of an upload under way the broker holds; 0 or absent when none."))),
        (status = 500, description = "Unexpected failure (no body: this is HEAD)."),
        (status = 503, description = "The file storage is unavailable (no body: this is HEAD).",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
pub(super) async fn status(
    _access: Access<ViewerOrWorker>,
    state: web::Data<AppState>,
    sha: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sha = parse_sha(&sha)?;
    let received = match state.files.state(&sha).await? {
        // The length the GET body would have: a HEAD answer is sent
        // without its body, so this one is never read.
        FileState::Stored { bytes } => {
            return Ok(HttpResponse::Ok()
                .content_type("application/octet-stream")
                .insert_header((header::ACCEPT_RANGES, "bytes"))
                .body(SizedStream::new(
                    bytes,
                    futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>(),
                )))
        }
        FileState::Partial { received, .. } => received,
        FileState::Absent => 0,
    };
    // With the error body a GET would get (HEAD sends none), so that it is
    // not taken for a route that does not exist.
    Ok(HttpResponse::NotFound()
        .insert_header((UPLOAD_OFFSET, received.to_string()))
        .json(ErrorBody {
            error: "not_found".into(),
            message: format!("file {sha} is not stored; {received} bytes of an upload are held"),
        }))
}

/// Upload a file, whole or part by part.
///
/// The body is the file's bytes (`application/octet-stream`), named by
/// their SHA-256. The whole file: no `Content-Range`, `Content-Length` its
/// size. A part: `Content-Range: bytes START-END/TOTAL` (END inclusive),
/// START where the bytes the broker holds end (`HEAD` tells; else 409 with
/// `Upload-Offset`). A part that does not finish the file answers 202;
/// the part that does has the whole file hashed: 201 when it matches, 400
/// (and everything received of it discarded) when its hash or size differ
/// from what was declared. A file stored already answers 200 at once.
/// An upload whose connection breaks keeps the bytes that arrived,
/// invisible until the file is complete: resume from `Upload-Offset`.
#[utoipa::path(
    put,
    path = "/files/{sha256}",
    tag = "files",
    operation_id = "upload_file",
    params(
        ("sha256" = String, Path, description = "The file's SHA-256: 64 lowercase hex digits.", pattern = "^[0-9a-f]{64}$"),
        ("Content-Range" = Option<String>, Header, description = "`bytes START-END/TOTAL` for a part; absent for the whole file."),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes (or the part's)."),
    security(("bearer" = ["artist"]), ("session" = ["artist"])),
    responses(
        (status = 200, description = "Stored already; the body was not needed.", body = FileInfo),
        (status = 201, description = "The file is complete, its hash checked, and stored.", body = FileInfo,
            headers(("Location" = String, description = "`/files/{sha256}`."))),
        (status = 202, description = "The part is kept; send the rest from `received` on.", body = FileUpload,
            headers(("Upload-Offset" = u64, description = "The bytes held: where the next part starts."))),
        (status = 400, response = super::openapi::BadRequest),
        (status = 409, description = "The part does not start where the bytes held end (or another upload of the file is being received now): resume from `Upload-Offset`.", body = ErrorBody,
            headers(("Upload-Offset" = u64, description = "The bytes the broker holds of this file."))),
        (status = 413, response = super::openapi::FileTooLarge),
        (status = 507, response = super::openapi::InsufficientStorage),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn upload(
    _access: Access<Artist>,
    state: web::Data<AppState>,
    req: HttpRequest,
    sha: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let sha = parse_sha(&sha)?;
    let length = content_length(&req)?;
    let part = match req.headers().get(header::CONTENT_RANGE) {
        Some(range) => {
            let range = range
                .to_str()
                .map_err(|_| ApiError::Invalid("Content-Range is not text".into()))?;
            let part = UploadPart::parse_content_range(range)?;
            if length.is_some_and(|l| l != part.len) {
                return Err(ApiError::Invalid(format!(
                    "Content-Length says {} bytes but Content-Range {range:?} says {}; send the part's own length",
                    length.unwrap_or_default(),
                    part.len
                )));
            }
            part
        }
        None => UploadPart::whole(length.ok_or_else(|| {
            ApiError::Invalid(
                "send Content-Length (the file's size) with the whole file, or Content-Range with a part".into(),
            )
        })?),
    };
    let uploaded = state
        .files
        .upload(&sha, part, body_stream(payload), state.clock.now())
        .await?;
    Ok(match uploaded {
        Uploaded::Stored(info) => HttpResponse::Created()
            .insert_header((header::LOCATION, format!("/files/{}", info.sha256)))
            .json(info),
        Uploaded::Already(info) => HttpResponse::Ok().json(info),
        Uploaded::Partial(upload) => HttpResponse::Accepted()
            .insert_header((UPLOAD_OFFSET, upload.received.to_string()))
            .json(upload),
    })
}

/// The bytes asked by a `Range` header of a file of `size` bytes: `None`
/// for the whole file (no header, or a form not served, such as several
/// ranges, which RFC 9110 lets a server ignore).
pub(super) fn requested_range(
    req: &HttpRequest,
    size: u64,
) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(raw) = req.headers().get(header::RANGE) else {
        return Ok(None);
    };
    let Some(spec) = raw
        .to_str()
        .ok()
        .and_then(|r| r.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let unsatisfiable = || {
        ApiError::RangeNotSatisfiable {
        message: format!(
            "the range {spec:?} is outside the file of {size} bytes; ask for bytes=N- with N below {size}"
        ),
        size,
    }
    };
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        // The last N bytes.
        let Ok(n) = end.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(unsatisfiable());
        }
        (size - n.min(size), size - 1)
    } else {
        let Ok(start) = start.parse::<u64>() else {
            return Ok(None);
        };
        let end = match end {
            "" => size.saturating_sub(1),
            e => match e.parse::<u64>() {
                Ok(e) => e.min(size.saturating_sub(1)),
                Err(_) => return Ok(None),
            },
        };
        if start >= size || end < start {
            return Err(unsatisfiable());
        }
        (start, end)
    };
    Ok(Some(range))
}

/// A stored file's bytes, from `start` to `end` inclusive when a range was
/// asked (206), else whole (200).
pub(super) async fn serve_file(
    state: &AppState,
    req: &HttpRequest,
    sha: &Sha256,
    content_type: &str,
    missing: impl FnOnce() -> ApiError,
) -> Result<HttpResponse, ApiError> {
    let size = match state.files.state(sha).await? {
        FileState::Stored { bytes } => bytes,
        _ => return Err(missing()),
    };
    let range = requested_range(req, size)?;
    let from = range.map_or(0, |(start, _)| start);
    let Some((size, stream)) = state.files.read(sha, from).await? else {
        return Err(missing());
    };
    let (status, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, end - start + 1),
        None => (StatusCode::OK, size),
    };
    let stream = limit(stream, len);
    let mut response = HttpResponse::build(status);
    response
        .content_type(content_type)
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    if let Some((start, end)) = range {
        response.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")));
    }
    Ok(response.body(SizedStream::new(len, stream)))
}

/// The first `len` bytes of a stream.
fn limit(stream: ByteStream, len: u64) -> ByteStream {
    let mut left = len;
    Box::pin(
        stream
            .take_while(move |_| std::future::ready(left > 0))
            .map(move |chunk| {
                let chunk = chunk?;
                let take = (chunk.len() as u64).min(left) as usize;
                left -= take as u64;
                Ok(chunk.slice(..take))
            }),
    )
}

/// Download a stored file.
///
/// `application/octet-stream`. Honours `Range: bytes=N-` (and `N-M`, `-N`)
/// with 206, so that a download cut off resumes where it stopped.
#[utoipa::path(
    get,
    path = "/files/{sha256}",
    tag = "files",
    operation_id = "download_file",
    params(
        ("sha256" = String, Path, description = "The file's SHA-256: 64 lowercase hex digits.", pattern = "^[0-9a-f]{64}$"),
        ("Range" = Option<String>, Header, description = "`bytes=N-` to resume from byte N."),
    ),
    security(("bearer" = ["viewer", "worker"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The whole file.", content(("application/octet-stream"))),
        (status = 206, description = "The bytes of the range asked.", content(("application/octet-stream")),
            headers(("Content-Range" = String, description = "`bytes START-END/SIZE`."))),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 416, response = super::openapi::RangeNotSatisfiable),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn download(
    _access: Access<ViewerOrWorker>,
    state: web::Data<AppState>,
    req: HttpRequest,
    sha: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sha = parse_sha(&sha)?;
    serve_file(&state, &req, &sha, "application/octet-stream", || {
        ApiError::NotFound(format!(
            "no file {sha} is stored (an upload of it may be under way: HEAD /files/{sha} tells); upload it with PUT /files/{sha}"
        ))
    })
    .await
}
