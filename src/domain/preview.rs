//! Live previews (issue 15): the small JPEG of the newest frame a render's
//! workers saved, sent beside their progress and shown by the dashboard and
//! the Blender add-on while the render runs.

use super::ValidationError;

pub use renderfarm_wire::{MAX_PREVIEW_BYTES, PREVIEW_WIDTH};

/// A preview as the store keeps it: the last one a worker of the render
/// sent (the work happening now, which after a requeue is not the highest
/// frame number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPreview {
    pub render_id: uuid::Uuid,
    pub task_id: uuid::Uuid,
    /// The frame it shows.
    pub frame: i64,
    pub jpeg: Vec<u8>,
    pub stored_at: chrono::DateTime<chrono::Utc>,
}

/// Checks a preview's bytes: a JPEG (by its start-of-image marker, as
/// browsers sniff it) of at most [`MAX_PREVIEW_BYTES`]. Anything else would
/// be served as `image/jpeg` and show as a broken image.
pub fn check_preview(bytes: &[u8]) -> Result<(), ValidationError> {
    if bytes.len() > MAX_PREVIEW_BYTES {
        return Err(ValidationError::new(
            "body",
            format!(
                "a preview of {} bytes is larger than the {MAX_PREVIEW_BYTES} bytes allowed; send a smaller JPEG ({PREVIEW_WIDTH} pixels wide is plenty)",
                bytes.len()
            ),
        ));
    }
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Err(ValidationError::new(
            "body",
            "a preview must be a JPEG image (it starts with the bytes FF D8 FF); encode the frame as JPEG before sending it",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JPEG_START: [u8; 4] = [0xFF, 0xD8, 0xFF, 0xE0];

    #[test]
    fn a_preview_is_a_jpeg_of_bounded_size() {
        let cases: [(Vec<u8>, bool); 6] = [
            (JPEG_START.to_vec(), true),
            (
                [&JPEG_START[..], &vec![0; MAX_PREVIEW_BYTES - 4]].concat(),
                true,
            ),
            (
                [&JPEG_START[..], &vec![0; MAX_PREVIEW_BYTES - 3]].concat(),
                false,
            ),
            (b"\x89PNG\r\n\x1a\n".to_vec(), false),
            (Vec::new(), false),
            (vec![0xFF, 0xD8], false),
        ];
        for (bytes, ok) in cases {
            let got = check_preview(&bytes);
            assert_eq!(
                got.is_ok(),
                ok,
                "{} bytes starting {:02X?}",
                bytes.len(),
                &bytes[..bytes.len().min(4)]
            );
            if let Err(e) = got {
                assert_eq!(e.field, "body");
            }
        }
    }
}
