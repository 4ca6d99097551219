//! Frames back to the broker: for a render that asks for it, each frame
//! Blender saves is uploaded under the task's lease at once, while the next
//! one renders; the chunk is reported complete only once all are stored.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use renderfarm_client::{BrokerClient, ClientError, StatusCode};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Where Blender writes the frames of tasks whose frames go to the broker.
pub const FRAMES_DIR: &str = "frames";
/// How long one file's upload keeps being retried while the broker cannot
/// be reached. The lease outlives the broker's worker timeout only while
/// heartbeats get through, so waiting far longer than that gains nothing.
const UPLOAD_PATIENCE: Duration = Duration::from_secs(300);
/// Uploads of one file that the broker refuses as not matching its hash
/// or size (400): the file may have been read while still being written.
const MISMATCH_ATTEMPTS: u32 = 3;

/// Why the frames of a task could not all be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadError {
    /// The lease is stale or the task is not this worker's any more (409,
    /// 404, 403): nothing more is sent under it.
    Stale(String),
    /// The broker's storage is full (507): the task fails with its message.
    Full(String),
    /// Anything else that retrying did not cure.
    Failed(String),
}

/// The Blender output pattern for a task whose frames go to the broker:
/// the file-name part of the render's `output` (its folder belongs to the
/// broker's machine, not this one) under `frames_dir`.
pub fn local_output(output: &str, frames_dir: &Path) -> String {
    let name_start = output.rfind(['/', '\\']).map_or(0, |i| i + 1);
    let name = &output[name_start..];
    let mut local = frames_dir.display().to_string();
    if !local.ends_with('/') {
        local.push('/');
    }
    local.push_str(name);
    local
}

/// Uploads every frame that arrives on `frames` (its number and file), in
/// order, removing each local file once stored; the frames stored, once the
/// sender is dropped and all are in.
pub async fn upload_frames(
    client: BrokerClient,
    task_id: Uuid,
    lease_id: Uuid,
    mut frames: mpsc::UnboundedReceiver<(i64, PathBuf)>,
) -> Result<BTreeSet<i64>, UploadError> {
    let mut stored = BTreeSet::new();
    while let Some((frame, path)) = frames.recv().await {
        let file = upload_one(&client, task_id, lease_id, frame, &path).await?;
        tracing::info!(frame, name = %file.name, bytes = file.bytes, "frame stored at the broker");
        stored.insert(frame);
        if let Err(e) = tokio::fs::remove_file(&path).await {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a frame the broker stored");
        }
    }
    Ok(stored)
}

async fn upload_one(
    client: &BrokerClient,
    task_id: Uuid,
    lease_id: Uuid,
    frame: i64,
    path: &Path,
) -> Result<renderfarm_wire::FrameFile, UploadError> {
    let what = format!("frame {frame} ({})", path.display());
    with_patience(&what, || {
        client.upload_frame(task_id, lease_id, frame, path)
    })
    .await
}

/// Sends a file under a task's lease with `put` until the broker stores
/// it: a broker out of reach is tried again for [`UPLOAD_PATIENCE`], a
/// hash or size mismatch [`MISMATCH_ATTEMPTS`] times; a stale lease or a
/// full store ends it at once. `what` names the file in the errors.
pub(crate) async fn with_patience<T, F, Fut>(what: &str, mut put: F) -> Result<T, UploadError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut retry = crate::retry::backoff();
    let give_up = tokio::time::Instant::now() + UPLOAD_PATIENCE;
    let mut mismatches = 0;
    let failed = |e: &ClientError| {
        UploadError::Failed(format!("{what} could not be uploaded to the broker: {e}"))
    };
    loop {
        let error = match put().await {
            Ok(stored) => return Ok(stored),
            Err(e) => e,
        };
        match &error {
            ClientError::Conflict(m)
            | ClientError::NotFound(m)
            | ClientError::Forbidden(m)
            | ClientError::Unauthorized(m) => return Err(UploadError::Stale(m.clone())),
            ClientError::InsufficientStorage(m) => return Err(UploadError::Full(m.clone())),
            ClientError::Rejected(StatusCode::BAD_REQUEST, _)
                if mismatches + 1 < MISMATCH_ATTEMPTS =>
            {
                mismatches += 1;
            }
            e if e.is_retryable() && tokio::time::Instant::now() < give_up => {}
            e => return Err(failed(e)),
        }
        let delay = crate::retry::retry_delay(retry.next(), &error);
        tracing::warn!(%what, error = %error, ?delay, "not uploaded; trying again");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_for_the_broker_keep_only_the_file_name_of_the_output() {
        let dir = Path::new("/w/frames/t1");
        for (output, want) in [
            ("/renders/shot/frame_####", "/w/frames/t1/frame_####"),
            ("//render/shot_##_beauty", "/w/frames/t1/shot_##_beauty"),
            ("C:\\renders\\f_####", "/w/frames/t1/f_####"),
            ("frame_####", "/w/frames/t1/frame_####"),
            ("/renders/shot/", "/w/frames/t1/"),
        ] {
            assert_eq!(local_output(output, dir), want, "{output}");
        }
    }
}
