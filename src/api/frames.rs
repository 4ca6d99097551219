//! `/renders/{id}/frames`: the rendered images of a render, read from its
//! output folder when that lies under the broker's `--output-root`, never
//! from anywhere else.

use std::path::{Component, Path, PathBuf};

use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use renderfarm_wire::{FrameFile, FrameList, Render};
use renderfarm_worker::blender::output::OutputPattern;
use uuid::Uuid;

use super::auth::{Access, Viewer};
use super::{parse_id, resource, ApiError, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/renders/{id}/frames", "GET").route(web::get().to(list)))
        .service(resource("/renders/{id}/frames/{frame}", "GET").route(web::get().to(frame)));
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

/// A render's frames on the broker's disk.
///
/// The files in the render's output folder named as Blender names its
/// frames (`frame_####` → `frame_0001.png`), lowest first; none before the
/// first is written. Served only when the folder lies under the broker's
/// `--output-root` (409 otherwise).
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
    let render = state.store.get_render(id).await?;
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
/// `image/x-exr`, `image/tiff`, …). 404 while the frame is not written.
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
            ("image/x-j2c"), ("image/x-dpx"), ("image/x-cineon"), ("image/x-rgb")
        )),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        super::openapi::StoreErrors,
    )
)]
pub(super) async fn frame(
    _access: Access<Viewer>,
    state: web::Data<AppState>,
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
    let render = state.store.get_render(id).await?;
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
