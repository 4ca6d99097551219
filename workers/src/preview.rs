//! Live previews (issue 15): a small JPEG of a frame Blender saved, sent to
//! the broker as the render's preview while the chunk goes on.
//!
//! Frames are decoded here, in the agent, with the `image` crate (PNG, JPEG,
//! TIFF, BMP, Targa, Radiance HDR, WebP) and the `exr` crate for OpenEXR.
//! Not with Blender: a second Blender per frame would cost a start-up and
//! the memory of a scene load beside the render; and not with
//! `oiiotool`/ImageMagick: one more program every render machine would need.
//! A multi-layer EXR is previewed from its combined pass (the channels named
//! `….Combined.R/G/B`, as Blender names them), float images are brought from
//! linear light to sRGB so that they look as Blender shows them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use image::{DynamicImage, ImageReader, RgbImage};
use renderfarm_client::{BrokerClient, ClientError};
use renderfarm_wire::PREVIEW_WIDTH;
use tokio::sync::mpsc;
use uuid::Uuid;

/// At most one preview per this while frames come faster: decoding a full
/// frame costs tens of milliseconds, taken from the render.
pub const PREVIEW_INTERVAL: Duration = Duration::from_secs(1);
const JPEG_QUALITY: u8 = 80;

/// A JPEG of the image at `path`, [`PREVIEW_WIDTH`] pixels wide at most.
pub fn make_preview(path: &Path) -> anyhow::Result<Vec<u8>> {
    let is_exr = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("exr"));
    let rgb = if is_exr {
        exr_combined(path)?
    } else {
        let image = ImageReader::open(path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .with_guessed_format()
            .with_context(|| format!("cannot read {}", path.display()))?
            .decode()
            .with_context(|| format!("cannot decode {}", path.display()))?;
        match image {
            DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => {
                let float = image.to_rgb32f();
                let (w, h) = float.dimensions();
                linear_to_srgb(w, h, float.pixels().map(|p| [p[0], p[1], p[2]]))
            }
            other => other.to_rgb8(),
        }
    };
    let rgb = if rgb.width() > PREVIEW_WIDTH {
        let height = (u64::from(rgb.height()) * u64::from(PREVIEW_WIDTH) / u64::from(rgb.width()))
            .max(1) as u32;
        image::imageops::thumbnail(&rgb, PREVIEW_WIDTH, height)
    } else {
        rgb
    };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode_image(&rgb)
        .context("cannot encode the preview as JPEG")?;
    Ok(jpeg)
}

/// The colour of an OpenEXR file: its combined pass in a multi-layer file,
/// else its plain `R`, `G`, `B` channels.
fn exr_combined(path: &Path) -> anyhow::Result<RgbImage> {
    let image = exr::prelude::read_first_flat_layer_from_file(path)
        .with_context(|| format!("cannot decode the OpenEXR file {}", path.display()))?;
    let layer = &image.layer_data;
    let channels = &layer.channel_data.list;
    let names: Vec<String> = channels.iter().map(|c| c.name.to_string()).collect();
    let pick = |colour: &str| {
        exr_channel(&names, colour).ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no {colour} channel of a combined pass (its channels: {})",
                path.display(),
                names.join(", ")
            )
        })
    };
    let (r, g, b) = (pick("R")?, pick("G")?, pick("B")?);
    let (w, h) = (layer.size.width(), layer.size.height());
    let sample = |c: usize, i: usize| channels[c].sample_data.value_by_flat_index(i).to_f32();
    Ok(linear_to_srgb(
        u32::try_from(w)?,
        u32::try_from(h)?,
        (0..w * h).map(|i| [sample(r, i), sample(g, i), sample(b, i)]),
    ))
}

/// The index of the channel holding `colour`: plain (`R`), else of the
/// combined pass (`ViewLayer.Combined.R`), else of any layer (`….R`).
fn exr_channel(names: &[String], colour: &str) -> Option<usize> {
    let suffix = format!(".{colour}");
    let combined = format!("Combined.{colour}");
    names
        .iter()
        .position(|n| n == colour)
        .or_else(|| names.iter().position(|n| n.ends_with(&combined)))
        .or_else(|| names.iter().position(|n| n.ends_with(&suffix)))
}

/// Linear-light floats to 8-bit sRGB, clamped.
fn linear_to_srgb(w: u32, h: u32, pixels: impl Iterator<Item = [f32; 3]>) -> RgbImage {
    let encode = |v: f32| {
        let v = if v.is_finite() {
            v.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let s = if v <= 0.003_130_8 {
            12.92 * v
        } else {
            1.055 * v.powf(1.0 / 2.4) - 0.055
        };
        (s * 255.0).round() as u8
    };
    let raw: Vec<u8> = pixels
        .flat_map(|[r, g, b]| [encode(r), encode(g), encode(b)])
        .collect();
    RgbImage::from_raw(w, h, raw).unwrap_or_else(|| RgbImage::new(w.max(1), h.max(1)))
}

/// Previews the frames that arrive on `frames` as Blender saves them,
/// passing each on to `forward` (the frame uploads, which remove the file
/// once stored: so the preview is made first, and sent while the frame
/// uploads). One frame a
/// [`PREVIEW_INTERVAL`] at most, and always the chunk's `last_frame`. A
/// preview that cannot be made or sent is skipped: it is a courtesy, never
/// a reason to fail the chunk. Ends when `frames` closes.
pub async fn preview_frames(
    client: BrokerClient,
    task_id: Uuid,
    lease_id: Uuid,
    last_frame: i64,
    mut frames: mpsc::UnboundedReceiver<(i64, PathBuf)>,
    forward: Option<mpsc::UnboundedSender<(i64, PathBuf)>>,
) {
    let mut last_sent: Option<tokio::time::Instant> = None;
    let mut refused = false;
    while let Some((frame, path)) = frames.recv().await {
        let due = last_sent.is_none_or(|t| t.elapsed() >= PREVIEW_INTERVAL);
        let mut jpeg = None;
        if !refused && (due || frame == last_frame) {
            last_sent = Some(tokio::time::Instant::now());
            let source = path.clone();
            match tokio::task::spawn_blocking(move || make_preview(&source)).await {
                Ok(Ok(made)) => jpeg = Some(made),
                Ok(Err(e)) => {
                    tracing::debug!(error = format!("{e:#}"), frame, "no preview of this frame")
                }
                Err(e) => tracing::warn!(error = %e, "the preview maker stopped"),
            }
        }
        // The file is read: its upload (which removes it once stored) goes
        // on while the preview is sent, so a chunk's last frame does not
        // wait for its preview's round trip before its own.
        if let Some(forward) = &forward {
            let _ = forward.send((frame, path));
        }
        if let Some(jpeg) = jpeg {
            match client.upload_preview(task_id, lease_id, frame, jpeg).await {
                Ok(()) => tracing::debug!(task_id = %task_id, frame, "preview sent"),
                // The lease is over: the heartbeat tells the chunk so.
                Err(
                    ClientError::Conflict(_)
                    | ClientError::Forbidden(_)
                    | ClientError::NotFound(_)
                    | ClientError::Unauthorized(_),
                ) => refused = true,
                Err(e) => {
                    tracing::debug!(error = %e, frame, "preview not sent; the next frame's will be")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_combined_pass_is_found_among_a_multilayer_files_channels() {
        let multilayer = names(&[
            "ViewLayer.Depth.Z",
            "ViewLayer.DiffCol.R",
            "ViewLayer.Combined.A",
            "ViewLayer.Combined.B",
            "ViewLayer.Combined.G",
            "ViewLayer.Combined.R",
        ]);
        assert_eq!(exr_channel(&multilayer, "R"), Some(5));
        assert_eq!(exr_channel(&multilayer, "B"), Some(3));
        let plain = names(&["A", "B", "G", "R"]);
        assert_eq!(exr_channel(&plain, "G"), Some(2));
        let other = names(&["Layer.Emit.R"]);
        assert_eq!(exr_channel(&other, "R"), Some(0));
        assert_eq!(exr_channel(&other, "G"), None);
    }

    #[test]
    fn linear_light_is_encoded_as_srgb() {
        let image = linear_to_srgb(
            4,
            1,
            [
                [0.0, 1.0, 2.0],
                [0.5, 0.18, 0.002],
                [f32::NAN, -1.0, f32::INFINITY],
                [0.0031308, 0.04, 0.9],
            ]
            .into_iter(),
        );
        let px: Vec<[u8; 3]> = image.pixels().map(|p| p.0).collect();
        assert_eq!(px[0], [0, 255, 255]);
        // sRGB of 0.5 is 0.735 (188), of 0.18 is 0.461 (118), of 0.002 is 0.026 (7).
        assert_eq!(px[1], [188, 118, 7]);
        assert_eq!(px[2], [0, 0, 0]);
        assert_eq!(px[3], [10, 56, 243]);
    }

    #[test]
    fn a_png_becomes_a_jpeg_320_pixels_wide_with_its_aspect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frame_0001.png");
        let mut image = RgbImage::new(1280, 720);
        for (x, _, p) in image.enumerate_pixels_mut() {
            *p = if x < 640 {
                image::Rgb([250, 10, 10])
            } else {
                image::Rgb([10, 10, 250])
            };
        }
        image.save(&path).unwrap();
        let jpeg = make_preview(&path).unwrap();
        assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]));
        assert!(jpeg.len() <= renderfarm_wire::MAX_PREVIEW_BYTES);
        let back = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (320, 180));
        let left = back.get_pixel(40, 90).0;
        let right = back.get_pixel(280, 90).0;
        assert!(left[0] > 200 && left[2] < 60, "left half red: {left:?}");
        assert!(
            right[2] > 200 && right[0] < 60,
            "right half blue: {right:?}"
        );
    }

    #[test]
    fn a_small_frame_is_not_enlarged_and_a_broken_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.png");
        RgbImage::new(64, 48).save(&small).unwrap();
        let jpeg = make_preview(&small).unwrap();
        let back = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (64, 48));
        let broken = dir.path().join("broken.png");
        std::fs::write(&broken, b"not an image").unwrap();
        let err = make_preview(&broken).unwrap_err();
        assert!(format!("{err:#}").contains("broken.png"), "{err:#}");
    }
}
