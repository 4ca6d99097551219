//! `/renders/{id}/frames`: the rendered images of a render. For a render
//! whose workers upload its frames (`upload_frames`), from the broker's file
//! storage, where `PUT /tasks/{id}/frames/{frame}` puts them; for the
//! others, from its output folder when that lies under the broker's
//! `--output-root`, never from anywhere else.

use std::path::{Component, Path, PathBuf};

use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use renderfarm_wire::{FrameFile, FrameList, Render};
use renderfarm_worker::blender::output::OutputPattern;
use serde::Deserialize;
use uuid::Uuid;

use super::auth::{Access, RegisteredWorker, Viewer};
use super::files::{body_stream, content_length, serve_file};
use super::{parse_id, resource, ApiError, AppState};
use crate::domain::files::{check_frame_in_task, validate_frame_name, Sha256};
use crate::files::zip::{self, ZipEntry};
use crate::files::Uploaded;
use crate::store::{NewFrame, StoredFrame};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/renders/{id}/frames", "GET").route(web::get().to(list)))
        .service(resource("/renders/{id}/frames.zip", "GET").route(web::get().to(archive)))
        .service(resource("/renders/{id}/frames/{frame}", "GET").route(web::get().to(frame)))
        .service(resource("/tasks/{id}/frames/{frame}", "PUT").route(web::put().to(upload)));
}

/// The content type of a frame's file, by its extension.
fn content_type_of(name: &str) -> &'static str {
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    IMAGE_TYPES
        .iter()
        .find(|(ext, _)| extension.as_deref() == Some(*ext))
        .map_or("application/octet-stream", |(_, t)| *t)
}

fn stored_frame_file(f: &StoredFrame) -> FrameFile {
    FrameFile {
        frame: f.frame,
        name: f.name.clone(),
        url: frame_url(f.render_id, f.frame),
        bytes: f.bytes,
        sha256: Some(f.sha256.clone()),
        modified_at: f.stored_at,
    }
}

/// The image formats Blender writes, by the extension it gives them, with
/// their content types; the first of a frame's files in this order is the
/// one served.
const IMAGE_TYPES: &[(&str, &str)] = &[
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("webp", "image/webp"),
    ("exr", "image/x-exr"),
    ("tif", "image/tiff"),
    ("tiff", "image/tiff"),
    ("bmp", "image/bmp"),
    ("tga", "image/x-tga"),
    ("hdr", "image/vnd.radiance"),
    ("jp2", "image/jp2"),
    ("j2c", "image/x-j2c"),
    ("dpx", "image/x-dpx"),
    ("cin", "image/x-cineon"),
    ("rgb", "image/x-rgb"),
];

/// Where the broker may read frames from: `--output-root`, as configured
/// (absolute) and with its links resolved.
#[derive(Debug, Clone)]
pub struct OutputRoot {
    pub absolute: PathBuf,
    pub canonical: PathBuf,
}

impl OutputRoot {
    /// The root at `path` (created if missing, so that it can be resolved).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let absolute = std::path::absolute(path)?;
        std::fs::create_dir_all(&absolute)?;
        let canonical = absolute.canonicalize()?;
        Ok(Self {
            absolute,
            canonical,
        })
    }

    /// The render's output folder, if it lies under the root: no `..`, and
    /// once its links are resolved still under the resolved root. A folder
    /// not made yet is judged by its spelling (`Ok(None)`: no frames yet).
    async fn folder_of(&self, render: &Render) -> Result<Option<PathBuf>, ApiError> {
        let dir = OutputPattern::new(&render.output, &render.blend_file).dir();
        let outside = || {
            ApiError::Conflict(format!(
                "frames unavailable: render {}'s output {:?} is not under this broker's output root {}, so the broker does not serve its frames; render into the root (the default output is there) or start the broker with --output-root at a folder that holds it",
                render.id,
                render.output,
                self.absolute.display()
            ))
        };
        if !dir.is_absolute() || dir.components().any(|c| c == Component::ParentDir) {
            return Err(outside());
        }
        match tokio::fs::canonicalize(&dir).await {
            Ok(resolved) if resolved.starts_with(&self.canonical) => Ok(Some(resolved)),
            Ok(_) => Err(outside()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if dir.starts_with(&self.absolute) || dir.starts_with(&self.canonical) {
                    Ok(None)
                } else {
                    Err(outside())
                }
            }
            Err(e) => {
                tracing::warn!(render_id = %render.id, error = %e, "cannot read a render's output folder");
                Err(ApiError::NotFound(format!(
                    "render {}'s output folder cannot be read ({e}); check its permissions on the broker's machine",
                    render.id
                )))
            }
        }
    }
}

/// A frame's file found on disk.
struct Found {
    frame: i64,
    path: PathBuf,
    content_type: &'static str,
    bytes: u64,
    modified_at: DateTime<Utc>,
}

/// The render's frames in its output folder, lowest first: files named as
/// Blender names them, of a frame of the render, in an image format, that
/// are regular files under the root once resolved (a link out is skipped).
async fn frames_on_disk(
    root: &OutputRoot,
    render: &Render,
    only: Option<i64>,
) -> Result<Vec<Found>, ApiError> {
    let Some(dir) = root.folder_of(render).await? else {
        return Ok(Vec::new());
    };
    let pattern = OutputPattern::new(&render.output, &render.blend_file);
    let mut entries = match tokio::fs::read_dir(&dir).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(render_id = %render.id, error = %e, "cannot list a render's output folder");
            return Ok(Vec::new());
        }
    };
    let mut found: Vec<(i64, usize, PathBuf, &'static str)> = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((frame, extension)) = pattern.frame_of(name) else {
            continue;
        };
        let in_range = (render.frame_start..=render.frame_end).contains(&frame);
        if !in_range || only.is_some_and(|f| f != frame) {
            continue;
        }
        let lower = extension.to_ascii_lowercase();
        let Some(rank) = IMAGE_TYPES.iter().position(|(ext, _)| *ext == lower) else {
            continue;
        };
        found.push((frame, rank, entry.path(), IMAGE_TYPES[rank].1));
    }
    // One file per frame: the first format of the table.
    found.sort_by_key(|(frame, rank, _, _)| (*frame, *rank));
    found.dedup_by_key(|(frame, _, _, _)| *frame);
    let mut out = Vec::with_capacity(found.len());
    for (frame, _, path, content_type) in found {
        let Ok(resolved) = tokio::fs::canonicalize(&path).await else {
            continue;
        };
        if !resolved.starts_with(&root.canonical) {
            tracing::warn!(render_id = %render.id, path = %path.display(), "a frame links out of the output root; not served");
            continue;
        }
        let Ok(meta) = tokio::fs::metadata(&resolved).await else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        out.push(Found {
            frame,
            path: resolved,
            content_type,
            bytes: meta.len(),
            modified_at: meta
                .modified()
                .map(DateTime::<Utc>::from)
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

fn frame_url(render: Uuid, frame: i64) -> String {
    format!("/renders/{render}/frames/{frame}")
}

/// A render's frames at the broker.
///
/// For a render whose workers upload its frames (`upload_frames`): the
/// frames stored, with their names, sizes and SHA-256, lowest first. For
/// the others: the files in the render's output folder named as Blender
/// names its frames (`frame_####` → `frame_0001.png`), lowest first, served
/// only when the folder lies under the broker's `--output-root` (409
/// otherwise). None before the first is written.
#[utoipa::path(
    get,
    path = "/renders/{id}/frames",
    tag = "renders",
    operation_id = "list_render_frames",
    params(("id" = Uuid, Path, description = "The render's id.")),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The frames found, lowest first.", body = FrameList),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn list(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    let render = super::variables::on_broker(&state, state.store.get_render(id).await?).await?;
    if render.upload_frames {
        let frames = state.store.render_frames(id, None).await?;
        return Ok(HttpResponse::Ok().json(FrameList {
            render_id: id,
            frames: frames.iter().map(stored_frame_file).collect(),
        }));
    }
    let frames = frames_on_disk(&state.output_root, &render, None)
        .await?
        .into_iter()
        .map(|f| FrameFile {
            frame: f.frame,
            name: f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            url: frame_url(id, f.frame),
            bytes: f.bytes,
            sha256: None,
            modified_at: f.modified_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(FrameList {
        render_id: id,
        frames,
    }))
}

/// One rendered frame, as the image file Blender wrote.
///
/// Its content type follows its extension (`image/png`, `image/jpeg`,
/// `image/x-exr`, `image/tiff`, …). 404 while the frame is not written (or,
/// for a render whose workers upload frames, not uploaded). A frame stored
/// at the broker honours `Range: bytes=N-` (206).
#[utoipa::path(
    get,
    path = "/renders/{id}/frames/{frame}",
    tag = "renders",
    operation_id = "get_render_frame",
    params(
        ("id" = Uuid, Path, description = "The render's id."),
        ("frame" = i64, Path, description = "The frame number.", minimum = 0),
    ),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The image file.", content(
            ("image/png"), ("image/jpeg"), ("image/webp"), ("image/x-exr"), ("image/tiff"),
            ("image/bmp"), ("image/x-tga"), ("image/vnd.radiance"), ("image/jp2"),
            ("image/x-j2c"), ("image/x-dpx"), ("image/x-cineon"), ("image/x-rgb"),
            ("application/octet-stream")
        )),
        (status = 206, description = "The bytes of the `Range` asked (frames stored at the broker).", content(
            ("image/png"), ("image/jpeg"), ("image/webp"), ("image/x-exr"), ("image/tiff"),
            ("image/bmp"), ("image/x-tga"), ("image/vnd.radiance"), ("image/jp2"),
            ("image/x-j2c"), ("image/x-dpx"), ("image/x-cineon"), ("image/x-rgb"),
            ("application/octet-stream")
        ), headers(("Content-Range" = String, description = "`bytes START-END/SIZE`."))),
        (status = 416, response = super::openapi::RangeNotSatisfiable),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn frame(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, frame) = path.into_inner();
    let id = parse_id("render", &id)?;
    let not_found = |what: &str| {
        ApiError::NotFound(format!(
            "render {id} has no frame {what} on disk yet; GET /renders/{id}/frames lists those it has"
        ))
    };
    let Ok(frame) = frame.parse::<i64>() else {
        return Err(not_found(&format!("{frame:?} (a frame is a whole number)")));
    };
    let render = super::variables::on_broker(&state, state.store.get_render(id).await?).await?;
    if render.upload_frames {
        let stored = state
            .store
            .render_frames(id, Some((frame, frame)))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| not_found(&frame.to_string()))?;
        let sha = Sha256::parse("sha256", &stored.sha256)
            .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("a stored frame's hash: {e}")))?;
        return serve_file(&state, &req, &sha, content_type_of(&stored.name), || {
            not_found(&frame.to_string())
        })
        .await;
    }
    let found = frames_on_disk(&state.output_root, &render, Some(frame)).await?;
    let Some(found) = found.into_iter().next() else {
        return Err(not_found(&frame.to_string()));
    };
    let file = tokio::fs::File::open(&found.path)
        .await
        .map_err(|_| not_found(&frame.to_string()))?;
    // Streamed in chunks with its length known, so that a big EXR never sits
    // whole in memory.
    let body = SizedStream::new(found.bytes, tokio_util::io::ReaderStream::new(file));
    Ok(HttpResponse::Ok()
        .content_type(found.content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body))
}

/// `?lease_id=&sha256=&name=` of a frame upload.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct FrameUploadQuery {
    /// The lease of the task's assignment.
    lease_id: Uuid,
    /// The SHA-256 of the body: 64 lowercase hex digits.
    #[param(pattern = "^[0-9a-f]{64}$")]
    sha256: String,
    /// The file name Blender gave the frame, e.g. `frame_0001.png`: a plain
    /// name (no `/`, `\\`, `..`, `:` or control characters), at most 255 bytes.
    #[param(min_length = 1, max_length = 255)]
    name: String,
}

/// Upload a rendered frame of a task (its worker, under the lease).
///
/// The body is the image file as Blender saved it. The broker checks the
/// lease first (409 when stale, 403 when another worker holds the task:
/// nothing stored), then takes the body, checks its size against
/// `Content-Length` and its hash against `sha256` (400 on a mismatch,
/// nothing stored), and records it as the frame of the render; the same
/// frame again replaces it. A task of a render with `upload_frames`
/// completes only once every frame of it is stored. 507 when the broker's
/// file storage is full: nothing is stored, the task stays running.
#[utoipa::path(
    put,
    path = "/tasks/{id}/frames/{frame}",
    tag = "tasks",
    operation_id = "upload_frame",
    params(
        ("id" = Uuid, Path, description = "The task's id."),
        ("frame" = i64, Path, description = "The frame number: one of the task's frames.", minimum = 0),
        FrameUploadQuery,
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The image file."),
    security(("bearer" = ["worker"])),
    responses(
        (status = 201, description = "The frame is stored.", body = FrameFile),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 413, response = super::openapi::FileTooLarge),
        (status = 507, response = super::openapi::InsufficientStorage),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn upload(
    access: Access<RegisteredWorker>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<FrameUploadQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (id, frame) = path.into_inner();
    let task_id = parse_id("task", &id)?;
    let frame: i64 = frame.parse().map_err(|_| {
        ApiError::Invalid(format!(
            "frame: {frame:?} is not a frame number; give the whole number of one of the task's frames"
        ))
    })?;
    let query = query.into_inner();
    let name = validate_frame_name(&query.name)?;
    let sha = Sha256::parse("sha256", &query.sha256)?;
    let bytes = content_length(&req)?
        .ok_or_else(|| ApiError::Invalid("send Content-Length: the frame file's size".into()))?;
    let holder = access.caller.worker_id();
    // The lease before the body: a stale worker's frame is not taken in.
    let task = state
        .store
        .leased_task(holder, task_id, query.lease_id)
        .await?;
    check_frame_in_task(frame, task.frame_start, task.frame_end)?;
    let now = state.clock.now();
    match state
        .files
        .upload_afresh(&sha, bytes, body_stream(payload), now)
        .await
    {
        Ok(Uploaded::Stored(_) | Uploaded::Already(_)) => {}
        Ok(Uploaded::Partial(_)) => {
            return Err(ApiError::Unexpected(anyhow::anyhow!(
                "a whole frame upload was taken as a part"
            )))
        }
        // A cut upload of a frame is not resumed (the worker sends the
        // frame again, which starts over): its bytes are no use.
        Err(crate::files::FilesError::Cut { .. }) => {
            let _ = state.files.discard_partial(&sha).await;
            return Err(ApiError::Invalid(
                "the frame's body did not arrive whole; nothing was stored. Send the frame again"
                    .into(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let stored = state
        .store
        .record_frame(
            holder,
            task_id,
            query.lease_id,
            NewFrame {
                frame,
                name,
                sha256: sha.to_string(),
                bytes,
            },
            now,
        )
        .await?;
    tracing::debug!(task_id = %task_id, frame, sha256 = %sha, bytes, "frame stored");
    Ok(HttpResponse::Created().json(stored_frame_file(&stored)))
}

/// All the frames of a render, as one ZIP archive.
///
/// Streamed as it is written (no `Content-Length`): one entry per frame,
/// named as the frame's file, stored uncompressed (frames are compressed
/// images already), lowest frame first. From the broker's file storage for
/// a render whose workers upload frames, else from its output folder under
/// `--output-root` (409 when it lies elsewhere). An empty archive before
/// the first frame.
#[utoipa::path(
    get,
    path = "/renders/{id}/frames.zip",
    tag = "renders",
    operation_id = "download_render_frames",
    params(("id" = Uuid, Path, description = "The render's id.")),
    security(("bearer" = ["viewer"]), ("session" = ["viewer"])),
    responses(
        (status = 200, description = "The archive.", content(("application/zip")),
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"<render name>-frames.zip\"`."))),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn archive(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id("render", &id)?;
    let render = super::variables::on_broker(&state, state.store.get_render(id).await?).await?;
    let mut entries = Vec::new();
    let mut names = std::collections::HashSet::new();
    // Two frames of one name would overwrite each other when unpacked.
    let mut unique = |frame: i64, name: String| {
        if names.insert(name.clone()) {
            name
        } else {
            let renamed = format!("{frame}_{name}");
            names.insert(renamed.clone());
            renamed
        }
    };
    if render.upload_frames {
        for f in state.store.render_frames(id, None).await? {
            let Ok(sha) = Sha256::parse("sha256", &f.sha256) else {
                continue;
            };
            let files = state.files.clone();
            entries.push(ZipEntry {
                name: unique(f.frame, f.name),
                bytes: f.bytes,
                modified: f.stored_at,
                open: Box::new(move || {
                    Box::pin(async move {
                        match files.read(&sha, 0).await {
                            Ok(Some((_, stream))) => Ok(stream),
                            Ok(None) => Err(std::io::Error::other(format!("file {sha} is gone"))),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        }
                    })
                }),
            });
        }
    } else {
        for f in frames_on_disk(&state.output_root, &render, None).await? {
            let name = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("frame_{}", f.frame));
            let path = f.path.clone();
            entries.push(ZipEntry {
                name: unique(f.frame, name),
                bytes: f.bytes,
                modified: f.modified_at,
                open: Box::new(move || {
                    Box::pin(async move {
                        let file = tokio::fs::File::open(path).await?;
                        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
                            file,
                            256 * 1024,
                        )) as crate::files::ByteStream)
                    })
                }),
            });
        }
    }
    let file_name: String = render
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(HttpResponse::Ok()
        .content_type("application/zip")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}-frames.zip\""),
        ))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(zip::stream(entries)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_type_served_is_declared_in_the_spec() {
        let spec: serde_json::Value =
            serde_json::from_str(&crate::api::openapi::spec_json()).unwrap();
        let declared =
            &spec["paths"]["/renders/{id}/frames/{frame}"]["get"]["responses"]["200"]["content"];
        for (extension, content_type) in IMAGE_TYPES {
            assert!(
                declared.get(content_type).is_some(),
                ".{extension} is served as {content_type}, which the spec does not declare"
            );
        }
    }
}
