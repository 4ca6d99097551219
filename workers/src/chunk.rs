//! The `blender` task kind: a chunk of a render's frames. The blend file
//! comes from its path or the agent's cache; Blender renders the range
//! (cold, or in the render's warm process) under the task's lease; with
//! `upload_frames` each frame goes to the broker as Blender saves it, and
//! previews of the newest frame go along.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use renderfarm_client::BrokerClient;
use renderfarm_wire::Assignment;

use crate::blender::output::RenderProgress;
use crate::blender::warm::{Launcher, SceneKey};
use crate::blender::RenderJob;
use crate::cache::{BlendCache, CachedBlend, Provenance};
use crate::preview;
use crate::task::{Ending, Lease, TaskDir, TaskLog};
use crate::uploads::{self, UploadError, FRAMES_DIR};

/// How long a chunk's completion waits for its last preview to be sent.
const PREVIEW_GRACE: Duration = Duration::from_secs(10);

/// What a chunk needs from its agent.
pub(crate) struct ChunkJob<'a> {
    pub client: &'a BrokerClient,
    pub cache: &'a Arc<BlendCache>,
    pub launcher: &'a mut Launcher,
    pub blender: &'a Path,
    pub work_dir: &'a Path,
    pub previews: bool,
    /// Counted up for each blend fetched from the broker (not the cache).
    pub blends_downloaded: &'a mut u64,
}

/// The blend file the assignment names: its path as given, or, for one
/// uploaded to the broker, the cached copy of it (fetched if need be),
/// held so that it is not evicted while the chunk renders.
/// Heartbeats go on while a large blend downloads (the broker would
/// otherwise count the worker lost); an abort from the broker or a stop
/// ends the download and the task.
async fn blend_for(
    job: &mut ChunkJob<'_>,
    lease: &mut Lease,
    a: &Assignment,
    log: &mut TaskLog,
) -> Result<(String, Option<CachedBlend>), Ending> {
    let Some(sha256) = &a.blend_sha256 else {
        return Ok((a.blend_file.clone(), None));
    };
    // The size makes room in the cache before the download, not after.
    let bytes = match job.client.file_status(sha256).await {
        Ok(renderfarm_client::FileStatus::Stored { bytes }) => Some(bytes),
        _ => None,
    };
    let client = job.client.clone();
    let fetch = job.cache.get(sha256, bytes, |path| async move {
        client
            .download_file(sha256, &path, &|_, _| {})
            .await
            .map(drop)
            .map_err(anyhow::Error::from)
    });
    let fetched = lease
        .hold(fetch, log, 0)
        .await
        .map_err(|interrupted| interrupted.ending(a, log))?;
    match fetched {
        Ok((blend, how)) => {
            let what = match how {
                Provenance::Cached => "from the agent's cache",
                Provenance::Downloaded => {
                    *job.blends_downloaded += 1;
                    "downloaded from the broker"
                }
            };
            log.push(format!(
                "renderfarm-worker: blend file {} ({sha256}) {what}\n",
                a.blend_file
            ));
            Ok((blend.path().display().to_string(), Some(blend)))
        }
        Err(e) => {
            let reason = format!(
                "could not fetch the blend file {} ({sha256}) from the broker: {e:#}",
                a.blend_file
            );
            tracing::warn!("{reason}");
            log.push(format!("renderfarm-worker: {reason}\n"));
            Err(Ending::fail(a, None, reason, log))
        }
    }
}

/// Runs Blender on the assignment until it exits or the task is taken
/// away; with `upload_frames`, uploads each frame as Blender saves it and
/// ends once all are stored.
pub(crate) async fn run(mut job: ChunkJob<'_>, lease: &mut Lease, a: &Assignment) -> Ending {
    let mut log = TaskLog::default();
    // Held until Blender is done with the file.
    let (blend_file, _cached) = match blend_for(&mut job, lease, a, &mut log).await {
        Ok(found) => found,
        Err(ending) => return ending,
    };
    let frames_dir = match a
        .upload_frames
        .then(|| TaskDir::create(job.work_dir, FRAMES_DIR, a.task_id))
        .transpose()
    {
        Ok(dir) => dir,
        Err(reason) => return Ending::fail(a, None, reason, &mut log),
    };
    let output = match &frames_dir {
        Some(dir) => uploads::local_output(&a.output, dir.path()),
        None => a.output.clone(),
    };
    let range = RenderJob {
        blend_file: blend_file.clone(),
        output: output.clone(),
        engine: a.engine.clone(),
        from: a.frame_start,
        to: a.frame_end,
        path_mappings: a.path_mappings.clone(),
    };
    let scene = SceneKey::new(a.render_id, &blend_file, a.blend_sha256.as_deref());
    let mut blender = match job.launcher.start(&range, scene).await {
        Ok(b) => b,
        Err(e) => {
            let reason = format!("could not start Blender ({}): {e:#}", job.blender.display());
            return Ending::fail(a, None, reason, &mut log);
        }
    };
    // The uploads run beside Blender; dropping the set stops them.
    let mut uploads = tokio::task::JoinSet::new();
    let upload_queue = frames_dir.as_ref().map(|_| {
        let (queue, frames) = tokio::sync::mpsc::unbounded_channel();
        uploads.spawn(uploads::upload_frames(
            job.client.clone(),
            a.task_id,
            a.lease_id,
            frames,
        ));
        queue
    });
    let uploading = upload_queue.is_some();
    // Saved frames go to the previews first (which make one before the
    // upload removes the file), then on to the uploads.
    let (mut saved_queue, previewer) = if job.previews {
        let (queue, frames) = tokio::sync::mpsc::unbounded_channel();
        let previewer = tokio::spawn(preview::preview_frames(
            job.client.clone(),
            a.task_id,
            a.lease_id,
            a.frame_end,
            frames,
            upload_queue,
        ));
        (Some(queue), Some(previewer))
    } else {
        (upload_queue, None)
    };
    let mut progress = RenderProgress::new(a.frame_start, a.frame_end);
    let mut lines_open = true;
    // Blender's exit, once it exited; the loop then waits for the uploads.
    let mut exit: Option<std::io::Result<Option<i32>>> = None;
    let mut stored: Option<Result<BTreeSet<i64>, UploadError>> = None;
    loop {
        if exit.is_some() && (!uploading || stored.is_some()) {
            break;
        }
        tokio::select! {
            line = blender.lines.recv(), if lines_open => match line {
                Some(line) => {
                    if let (Some(saved), Some(queue)) = (progress.observe(&line), &saved_queue) {
                        let _ = queue.send(saved);
                    }
                    log.push(line);
                }
                None => lines_open = false,
            },
            status = blender.process.wait(), if exit.is_none() => {
                // The last lines may still be in the pipes; a grandchild
                // holding them open must not hold up the report.
                let drain = async {
                    while let Some(line) = blender.lines.recv().await {
                        if let (Some(saved), Some(queue)) = (progress.observe(&line), &saved_queue) {
                            let _ = queue.send(saved);
                        }
                        log.push(line);
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                lines_open = false;
                // No more frames: the previews and the uploader end once
                // their queues are empty.
                saved_queue = None;
                let succeeded = status.as_ref().is_ok_and(|code| *code == Some(0));
                exit = Some(status);
                if !succeeded {
                    break;
                }
                if uploading {
                    log.push("renderfarm-worker: Blender is done; waiting for the last frames to be stored at the broker\n".into());
                }
            }
            Some(joined) = uploads.join_next(), if uploading && stored.is_none() => {
                let result = joined.unwrap_or_else(|e| Err(UploadError::Failed(format!("the frame uploads stopped: {e}"))));
                match result {
                    Ok(frames) => stored = Some(Ok(frames)),
                    Err(UploadError::Stale(message)) => {
                        blender.process.kill().await;
                        tracing::warn!(%message, "the broker refused a frame under this lease; dropping the task");
                        return Ending::Aborted;
                    }
                    Err(e) => {
                        blender.process.kill().await;
                        let reason = match e {
                            UploadError::Full(message) => format!("the broker has no room for this task's frames: {message}"),
                            UploadError::Failed(message) | UploadError::Stale(message) => message,
                        };
                        tracing::warn!(%reason, "frames not stored; failing the task");
                        log.push(format!("renderfarm-worker: {reason}\n"));
                        return Ending::fail(a, None, reason, &mut log);
                    }
                }
            }
            due = lease.due() => {
                if let Err(interrupted) = lease.keep(due, &mut log, progress.frames_done()).await {
                    blender.process.kill().await;
                    return interrupted.ending(a, &mut log);
                }
            }
        }
    }
    let exit_code = match exit {
        Some(Ok(code)) => code,
        Some(Err(e)) => {
            tracing::error!(error = %e, "lost track of Blender");
            None
        }
        None => None,
    };
    let (missing, missing_where) = match &stored {
        Some(Ok(frames)) => (
            (a.frame_start..=a.frame_end)
                .filter(|f| !frames.contains(f))
                .collect(),
            "stored at the broker".to_string(),
        ),
        _ => (
            progress.missing_frames(&output, &blend_file),
            format!("on disk under {output}"),
        ),
    };
    if exit_code == Some(0) && missing.is_empty() {
        // The last frame's preview goes out under the lease, before the
        // completion ends it.
        if let Some(previewer) = previewer {
            let _ = tokio::time::timeout(PREVIEW_GRACE, previewer).await;
        }
        return Ending::complete(a, &mut log);
    }
    let summary = match exit_code {
        Some(0) => format!(
            "Blender exited with code 0 but frame(s) {} are not {missing_where}",
            missing
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Some(code) => format!("Blender exited with code {code}"),
        None => "Blender was killed by a signal".to_string(),
    };
    tracing::warn!(task_id = %a.task_id, "{summary}");
    let reason = format!("{summary}; the last lines of its output:\n{}", log.tail());
    Ending::fail(a, exit_code.map(i64::from), reason, &mut log)
}
