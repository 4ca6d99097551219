//! The `ffmpeg` task kind: a render's video, made once its frames are all
//! rendered. The frames are gathered into a folder of the task's own
//! (fetched by hash from the broker, or linked from the shared drive Blender
//! wrote them to), named in sequence, and ffmpeg encodes them into an MP4
//! that goes to the broker (`PUT /tasks/{id}/video`) before the task is
//! reported complete. It runs under the task's lease like a chunk: an abort
//! from the broker kills ffmpeg's process group, its stderr is the task's
//! log, and a failure's reason ends with ffmpeg's own last lines.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use renderfarm_client::BrokerClient;
use renderfarm_wire::{Assignment, InputFrame, VideoCodec, VideoSpec};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::blender::output::OutputPattern;
use crate::process::{forward_lines, kill_group, version_line};
use crate::task::{Ending, Lease, TaskDir, TaskLog};
use crate::uploads::{self, UploadError};

/// Where a video task gathers its frames and makes its video, under the
/// work directory (a folder per task).
pub const VIDEO_DIR: &str = "video";
/// The file ffmpeg writes, in the task's folder.
const VIDEO_FILE: &str = "video.mp4";
/// How long `ffmpeg -version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of ffmpeg's own output that end a failure's reason: enough for its
/// error, not a whole encode's chatter (the broker bounds the bytes).
const FAILURE_LINES: usize = 20;
/// Missing frames a failure names before it only counts the rest.
const NAMED_MISSING: usize = 5;
/// How long the last lines of an exited ffmpeg may take to arrive.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Checks that `ffmpeg` runs; returns its version line. The error says what
/// the agent does without it and how to fix that.
pub async fn check_ffmpeg(ffmpeg: &Path) -> anyhow::Result<String> {
    let help = format!(
        "this worker will not take video tasks: `{} -version` does not run; install ffmpeg (on Debian or Ubuntu: `sudo apt-get install ffmpeg`) or point --ffmpeg (RENDERFARM_FFMPEG) at it, then restart the agent",
        ffmpeg.display()
    );
    version_line(ffmpeg, "-version", VERSION_TIMEOUT, &help, |l| {
        l.starts_with("ffmpeg version")
    })
    .await
}

/// What a video task needs from its agent.
pub(crate) struct VideoJob<'a> {
    pub client: &'a BrokerClient,
    pub ffmpeg: &'a Path,
    pub work_dir: &'a Path,
}

/// Makes the video of assignment `a` (an `ffmpeg` task) under `lease`:
/// gathers its frames, runs ffmpeg, uploads the MP4, and says how it ended.
/// The task's folder goes whatever the ending.
pub(crate) async fn run(job: VideoJob<'_>, lease: &mut Lease, a: &Assignment) -> Ending {
    let mut log = TaskLog::default();
    let Some(video) = a.video else {
        let reason = "the broker sent a video task without its video settings (fps, codec); is the broker newer than this agent?".to_string();
        return Ending::fail(a, None, reason, &mut log);
    };
    let dir = match TaskDir::create(job.work_dir, VIDEO_DIR, a.task_id) {
        Ok(dir) => dir,
        Err(reason) => return Ending::fail(a, None, reason, &mut log),
    };
    let gathered = lease
        .hold(gather(job.client, job.work_dir, a, dir.path()), &mut log, 0)
        .await;
    let sequence = match gathered {
        Ok(Ok((sequence, note))) => {
            log.push(format!("renderfarm-worker: {note}\n"));
            sequence
        }
        Ok(Err(reason)) => {
            tracing::warn!(%reason, "the video's frames are not all there");
            log.push(format!("renderfarm-worker: {reason}\n"));
            return Ending::fail(a, None, reason, &mut log);
        }
        Err(interrupted) => return interrupted.ending(a, &mut log),
    };
    let args = ffmpeg_args(&sequence, video, VIDEO_FILE);
    log.push(format!(
        "renderfarm-worker: {} {}\n",
        job.ffmpeg.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let frames = sequence.count as i64;
    match encode(job.ffmpeg, args, dir.path(), frames, lease, &mut log).await {
        Encoded::Done => {}
        Encoded::Failed { exit_code, reason } => {
            tracing::warn!(%reason, "ffmpeg failed");
            return Ending::fail(a, exit_code, reason, &mut log);
        }
        Encoded::Interrupted(interrupted) => return interrupted.ending(a, &mut log),
    }
    let path = dir.path().join(VIDEO_FILE);
    let put = uploads::with_patience("the video", || {
        job.client.upload_video(a.task_id, a.lease_id, &path)
    });
    match lease.hold(put, &mut log, frames).await {
        Ok(Ok(stored)) => {
            tracing::info!(bytes = stored.bytes, sha256 = %stored.sha256, "video stored at the broker");
            log.push(format!(
                "renderfarm-worker: the video ({} bytes, sha256 {}) is stored at the broker\n",
                stored.bytes, stored.sha256
            ));
            Ending::complete(a, &mut log)
        }
        Ok(Err(UploadError::Stale(message))) => {
            tracing::warn!(%message, "the broker refused the video under this lease; dropping the task");
            Ending::Aborted
        }
        Ok(Err(UploadError::Full(message))) => {
            let reason = format!("the broker has no room for the video: {message}");
            log.push(format!("renderfarm-worker: {reason}\n"));
            Ending::fail(a, None, reason, &mut log)
        }
        Ok(Err(UploadError::Failed(reason))) => {
            log.push(format!("renderfarm-worker: {reason}\n"));
            Ending::fail(a, None, reason, &mut log)
        }
        Err(interrupted) => interrupted.ending(a, &mut log),
    }
}

/// A render's frames in order in one folder, as ffmpeg reads a sequence:
/// `00000001.EXT`, `00000002.EXT`, ….
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sequence {
    extension: String,
    count: usize,
}

impl Sequence {
    /// The name of the `index`th frame (from 1).
    fn name(extension: &str, index: usize) -> String {
        format!("{index:08}.{extension}")
    }
}

/// ffmpeg's arguments for `sequence` (in its working directory) into
/// `output`: every frame, in order, at the video's rate; a frame that does
/// not decode fails the video (`-xerror`; ffmpeg would otherwise repeat the
/// frame before it and exit 0); dimensions padded to even numbers (H.264 in
/// 4:2:0 needs them); the index at the front of the file so a browser plays
/// it before it is all downloaded; progress as `key=value` lines on stdout.
fn ffmpeg_args(sequence: &Sequence, video: VideoSpec, output: &str) -> Vec<OsString> {
    let codec: &[&str] = match video.codec {
        VideoCodec::H264 => &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
    };
    let mut args: Vec<String> = vec![
        "-hide_banner".into(),
        "-nostdin".into(),
        "-nostats".into(),
        "-y".into(),
        "-xerror".into(),
        "-progress".into(),
        "pipe:1".into(),
        "-framerate".into(),
        video.fps.to_string(),
        "-start_number".into(),
        "1".into(),
        "-i".into(),
        format!("%08d.{}", sequence.extension),
        "-frames:v".into(),
        sequence.count.to_string(),
        "-vf".into(),
        "pad=ceil(iw/2)*2:ceil(ih/2)*2".into(),
    ];
    args.extend(codec.iter().map(|a| a.to_string()));
    args.extend(["-movflags".into(), "+faststart".into(), output.into()]);
    args.into_iter().map(OsString::from).collect()
}

/// Puts the frames of `a`'s whole range into `dir` in sequence: downloaded
/// by hash (and checked against it) when they are stored at the broker,
/// else linked from where Blender wrote them. `Err` with the reason the
/// video cannot be made (frames missing, a download failed).
async fn gather(
    client: &BrokerClient,
    work_dir: &Path,
    a: &Assignment,
    dir: &Path,
) -> Result<(Sequence, String), String> {
    let (from, to) = (a.frame_start, a.frame_end);
    if a.upload_frames || !a.inputs.is_empty() {
        let inputs = inputs_in_order(&a.inputs, from, to)
            .map_err(|missing| missing_reason(&missing, from, to, "stored at the broker"))?;
        let extension = one_extension(inputs.iter().map(|i| i.name.as_str()))?;
        for (index, input) in inputs.iter().enumerate() {
            let dest = dir.join(Sequence::name(&extension, index + 1));
            client
                .download_file(&input.sha256, &dest, &|_, _| {})
                .await
                .map_err(|e| {
                    format!(
                        "could not fetch frame {} ({}, sha256 {}) from the broker: {e}",
                        input.frame, input.name, input.sha256
                    )
                })?;
        }
        let count = inputs.len();
        let note = format!("{count} frame(s) {from}-{to} downloaded from the broker");
        return Ok((Sequence { extension, count }, note));
    }
    let pattern = OutputPattern::new(&a.output, &a.blend_file);
    let mut folder = pattern.dir();
    // Blender ran in the work directory: a relative output is relative to it.
    if folder.is_relative() {
        folder = work_dir.join(folder);
    }
    let found = frames_on_disk(&pattern, &folder, from, to).map_err(|missing| {
        missing_reason(&missing, from, to, &format!("on disk under {}", a.output))
    })?;
    let extension = one_extension(found.iter().filter_map(|p| p.to_str()))?;
    for (index, source) in found.iter().enumerate() {
        let link = dir.join(Sequence::name(&extension, index + 1));
        std::os::unix::fs::symlink(source, &link).map_err(|e| {
            format!(
                "could not link {} into {}: {e}",
                source.display(),
                dir.display()
            )
        })?;
    }
    let count = found.len();
    let note = format!("{count} frame(s) {from}-{to} found in {}", folder.display());
    Ok((Sequence { extension, count }, note))
}

/// The stored frame of each frame of `from..=to`, in order; or the frames
/// with none.
fn inputs_in_order(
    inputs: &[InputFrame],
    from: i64,
    to: i64,
) -> Result<Vec<&InputFrame>, Vec<i64>> {
    let by_frame: BTreeMap<i64, &InputFrame> = inputs.iter().map(|i| (i.frame, i)).collect();
    let missing: Vec<i64> = (from..=to).filter(|f| !by_frame.contains_key(f)).collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok((from..=to).map(|f| by_frame[&f]).collect())
}

/// The file of each frame of `from..=to` in `folder`, named as Blender
/// names it for `pattern` (its padding, any image extension), in order; or
/// the frames with none. A frame saved in two formats is taken in the one
/// sorted first.
fn frames_on_disk(
    pattern: &OutputPattern,
    folder: &Path,
    from: i64,
    to: i64,
) -> Result<Vec<PathBuf>, Vec<i64>> {
    let mut found: BTreeMap<i64, PathBuf> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(folder) {
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            if let Some((frame, _)) = pattern.frame_of(&name) {
                if (from..=to).contains(&frame) {
                    found.entry(frame).or_insert_with(|| folder.join(&name));
                }
            }
        }
    }
    let missing: Vec<i64> = (from..=to).filter(|f| !found.contains_key(f)).collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(found.into_values().collect())
}

/// The one image extension the frames share (ffmpeg reads a sequence of
/// one format); a reason naming them when they differ.
fn one_extension<'a>(names: impl Iterator<Item = &'a str>) -> Result<String, String> {
    let mut extensions: Vec<String> = names
        .map(|n| {
            Path::new(n)
                .extension()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    extensions.sort();
    extensions.dedup();
    match extensions.as_slice() {
        [one] if !one.is_empty() => Ok(one.clone()),
        _ => Err(format!(
            "the frames are not all of one image format (extensions: {}); render them in one format to make a video",
            extensions
                .iter()
                .map(|e| if e.is_empty() { "none" } else { e.as_str() })
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Why a video cannot be made when `missing` frames of `from..=to` are not
/// `where_`: the first few named, the rest counted.
fn missing_reason(missing: &[i64], from: i64, to: i64, where_: &str) -> String {
    let named = missing
        .iter()
        .take(NAMED_MISSING)
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let more = match missing.len().saturating_sub(NAMED_MISSING) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    format!("frame(s) {named}{more} of {from}-{to} are not {where_}; the video needs every frame")
}

/// How a run of ffmpeg ended.
enum Encoded {
    Done,
    Failed {
        exit_code: Option<i64>,
        reason: String,
    },
    Interrupted(crate::task::Interrupted),
}

/// Runs ffmpeg with `args` in `dir` until it exits, keeping the lease with
/// the frames it has encoded (of `frames`); its stderr goes to the log.
async fn encode(
    ffmpeg: &Path,
    args: Vec<OsString>,
    dir: &Path,
    frames: i64,
    lease: &mut Lease,
    log: &mut TaskLog,
) -> Encoded {
    let started = Command::new(ffmpeg)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a kill takes any helper it started along.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match started {
        Ok(child) => child,
        Err(e) => {
            return Encoded::Failed {
                exit_code: None,
                reason: format!("could not start ffmpeg ({}): {e}", ffmpeg.display()),
            }
        }
    };
    let (mut progress, mut output) = (lines_of(child.stdout.take()), lines_of(child.stderr.take()));
    let mut last_lines: VecDeque<String> = VecDeque::with_capacity(FAILURE_LINES);
    let mut keep_line = |line: String, log: &mut TaskLog| {
        if last_lines.len() == FAILURE_LINES {
            last_lines.pop_front();
        }
        last_lines.push_back(line.trim_end().to_string());
        log.push(line);
    };
    let mut done = 0;
    let mut progress_open = true;
    let status = loop {
        tokio::select! {
            line = progress.recv(), if progress_open => match line {
                Some(line) => {
                    if let Some(frame) = encoded_frames(&line) {
                        done = frame.clamp(0, frames);
                    }
                }
                None => progress_open = false,
            },
            Some(line) = output.recv() => keep_line(line, log),
            status = child.wait() => break status,
            due = lease.due() => {
                if let Err(interrupted) = lease.keep(due, log, done).await {
                    kill(&mut child).await;
                    return Encoded::Interrupted(interrupted);
                }
            }
        }
    };
    // The last lines may still be in the pipe; a process holding it open
    // must not hold up the report.
    let drain = async {
        while let Some(line) = output.recv().await {
            keep_line(line, log);
        }
    };
    let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
    let exit_code = match &status {
        Ok(s) => s.code(),
        Err(_) => None,
    };
    if exit_code == Some(0) {
        if dir.join(VIDEO_FILE).is_file() {
            return Encoded::Done;
        }
        return Encoded::Failed {
            exit_code: Some(0),
            reason: format!("ffmpeg exited with code 0 but wrote no {VIDEO_FILE}"),
        };
    }
    let summary = match (&status, exit_code) {
        (Err(e), _) => format!("lost track of ffmpeg: {e}"),
        (_, Some(code)) => format!("ffmpeg exited with code {code}"),
        (_, None) => "ffmpeg was killed by a signal".to_string(),
    };
    Encoded::Failed {
        exit_code: exit_code.map(i64::from),
        reason: format!(
            "{summary}; its last lines:\n{}",
            Vec::from(last_lines).join("\n")
        ),
    }
}

/// The lines of one of a child's output streams.
fn lines_of(
    stream: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(1024);
    if let Some(stream) = stream {
        tokio::spawn(forward_lines(stream, tx));
    }
    rx
}

/// Kills ffmpeg and anything it started, at once, and reaps it.
async fn kill(child: &mut Child) {
    kill_group(child.id());
    let _ = child.kill().await;
}

/// The frames encoded so far, from a `-progress` line (`frame=12`).
fn encoded_frames(line: &str) -> Option<i64> {
    line.trim().strip_prefix("frame=")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(frame: i64, name: &str) -> InputFrame {
        InputFrame {
            frame,
            name: name.into(),
            sha256: "0".repeat(64),
            bytes: 1,
        }
    }

    #[test]
    fn ffmpeg_reads_the_sequence_at_the_videos_rate_into_an_even_sized_h264() {
        let sequence = Sequence {
            extension: "png".into(),
            count: 6,
        };
        let video = VideoSpec {
            fps: 24,
            codec: VideoCodec::H264,
        };
        let args: Vec<String> = ffmpeg_args(&sequence, video, "video.mp4")
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        for part in [
            "-framerate 24 -start_number 1 -i %08d.png -frames:v 6",
            "-vf pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v libx264 -pix_fmt yuv420p",
            "-movflags +faststart",
            "-progress pipe:1",
            "-xerror",
        ] {
            assert!(joined.contains(part), "{part} in {joined}");
        }
        assert_eq!(args.last().map(String::as_str), Some("video.mp4"));
        assert!(
            joined.find("-framerate") < joined.find("-i "),
            "the rate is the input's"
        );
        assert_eq!(Sequence::name("png", 7), "00000007.png");
    }

    #[test]
    fn stored_frames_are_taken_in_order_and_the_missing_ones_named() {
        let inputs = [
            input(3, "f_0003.png"),
            input(1, "f_0001.png"),
            input(2, "f_0002.png"),
        ];
        let ordered = inputs_in_order(&inputs, 1, 3).unwrap();
        assert_eq!(
            ordered.iter().map(|i| i.frame).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(inputs_in_order(&inputs, 1, 5).unwrap_err(), vec![4, 5]);
        assert_eq!(inputs_in_order(&inputs[..1], 2, 3).unwrap_err(), vec![2]);
    }

    #[test]
    fn a_few_missing_frames_are_named_and_the_rest_counted() {
        assert_eq!(
            missing_reason(&[4], 1, 6, "stored at the broker"),
            "frame(s) 4 of 1-6 are not stored at the broker; the video needs every frame"
        );
        let many: Vec<i64> = (10..=30).collect();
        let reason = missing_reason(&many, 1, 100, "on disk under /r/f_####");
        assert!(
            reason.starts_with(
                "frame(s) 10, 11, 12, 13, 14 and 16 more of 1-100 are not on disk under /r/f_####"
            ),
            "{reason}"
        );
    }

    #[test]
    fn frames_on_disk_are_found_with_blenders_padding_and_any_extension() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "f_0001.png",
            "f_0002.png",
            "f_0003.png",
            "f_002.png",
            "f_0004.png.tmp",
            "g_0004.png",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let output = format!("{}/f_####", dir.path().display());
        let pattern = OutputPattern::new(&output, "/p/shot.blend");
        let found = frames_on_disk(&pattern, &pattern.dir(), 1, 3).unwrap();
        assert_eq!(
            found,
            ["f_0001.png", "f_0002.png", "f_0003.png"].map(|n| dir.path().join(n))
        );
        assert_eq!(
            frames_on_disk(&pattern, &pattern.dir(), 2, 5).unwrap_err(),
            vec![4, 5]
        );
        // No `#`: Blender appends four digits.
        std::fs::write(dir.path().join("shot0010.jpg"), b"x").unwrap();
        let bare = OutputPattern::new(&format!("{}/shot", dir.path().display()), "/p/x.blend");
        assert_eq!(
            frames_on_disk(&bare, &bare.dir(), 10, 10).unwrap(),
            vec![dir.path().join("shot0010.jpg")]
        );
        // A folder that is not there has every frame missing.
        let gone = OutputPattern::new("/nonexistent/renderfarm/f_##", "/p/x.blend");
        assert_eq!(
            frames_on_disk(&gone, &gone.dir(), 1, 2).unwrap_err(),
            vec![1, 2]
        );
    }

    #[test]
    fn a_sequence_is_of_one_image_format() {
        assert_eq!(
            one_extension(["a_0001.png", "a_0002.png"].into_iter()).unwrap(),
            "png"
        );
        let mixed = one_extension(["a_0001.png", "a_0002.exr"].into_iter()).unwrap_err();
        assert!(mixed.contains("exr, png"), "{mixed}");
        assert!(one_extension(["a_0001"].into_iter()).is_err());
    }

    #[test]
    fn progress_lines_say_the_frames_encoded() {
        assert_eq!(encoded_frames("frame=12\n"), Some(12));
        assert_eq!(encoded_frames("fps=0.00"), None);
        assert_eq!(encoded_frames("progress=end"), None);
    }

    #[tokio::test]
    async fn a_missing_ffmpeg_is_reported_with_how_to_fix_it() {
        let error = check_ffmpeg(Path::new("/nonexistent/ffmpeg"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("will not take video tasks") && error.contains("apt-get install ffmpeg"),
            "{error}"
        );
    }
}
