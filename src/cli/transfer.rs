//! Files between an artist's machine and the broker: `submit --upload`
//! packs a self-contained copy of the .blend file with Blender and uploads
//! what the broker lacks; `download` fetches a render's frames, or its video.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use renderfarm_client::{sha256_file, BrokerClient};
use serde::Deserialize;
use uuid::Uuid;

use super::client;

/// The script Blender runs to pack the copy and report what it cannot carry.
const PACK_SCRIPT: &str = include_str!("../../blender/renderfarm_addon/pack.py");

/// What the pack script says of the copy it made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PackReport {
    /// The files now inside the copy.
    #[serde(default)]
    pub packed: Vec<String>,
    /// What the copy still needs from the artist's disk.
    #[serde(default)]
    pub warnings: Vec<PackWarning>,
}

/// One thing packing cannot carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PackWarning {
    /// What it is: "image sequence", "VDB volume", "Alembic cache", …
    pub kind: String,
    /// Its name in the .blend file.
    pub name: String,
    /// The file or folder it reads, absolute (empty when it names none).
    pub path: String,
}

impl std::fmt::Display for PackWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} \"{}\"", self.kind, self.name)?;
        if !self.path.is_empty() {
            write!(f, " ({})", self.path)?;
        }
        Ok(())
    }
}

/// A packed copy of a .blend file in a temporary folder (removed with it).
pub struct PackedBlend {
    pub path: PathBuf,
    pub report: PackReport,
    _dir: tempfile::TempDir,
}

/// Checks that `file` is a .blend file that can be read, before Blender is
/// started on it (Blender given a missing file opens its default scene and
/// would pack that).
pub fn check_blend_file(file: &Path) -> anyhow::Result<()> {
    let metadata = std::fs::metadata(file).with_context(|| {
        format!(
            "{}: cannot read it; give the path of a .blend file on this machine",
            file.display()
        )
    })?;
    if !metadata.is_file() {
        anyhow::bail!("{} is not a file; give a .blend file", file.display());
    }
    let mut magic = [0u8; 7];
    let read = std::fs::File::open(file)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
        .with_context(|| format!("reading {}", file.display()))?;
    // Blender writes "BLENDER" uncompressed; a compressed file starts with
    // the gzip or zstd magic numbers.
    let compressed =
        magic.starts_with(&[0x1f, 0x8b]) || magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if read < 7 || !(magic == *b"BLENDER" || compressed) {
        anyhow::bail!(
            "{} is not a .blend file (it does not start as one); give the file you save from Blender",
            file.display()
        );
    }
    Ok(())
}

/// Makes a self-contained copy of `file` with `blender` in a process of its
/// own: images and linked libraries packed, paths made absolute. The
/// artist's file is only read.
pub async fn pack(blender: &Path, file: &Path) -> anyhow::Result<PackedBlend> {
    check_blend_file(file)?;
    let dir = tempfile::Builder::new()
        .prefix("renderfarm-upload-")
        .tempdir()
        .context("making a temporary folder for the packed copy")?;
    let script = dir.path().join("pack.py");
    std::fs::write(&script, PACK_SCRIPT).context("writing the pack script")?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scene.blend".into());
    let copy = dir.path().join(&name);
    let report_path = dir.path().join("report.json");
    let output = tokio::process::Command::new(blender)
        .arg("-b")
        .arg("--factory-startup")
        .arg(file)
        .args(["--python-exit-code", "1", "--python"])
        .arg(&script)
        .arg("--")
        .arg(&copy)
        .arg(&report_path)
        // Blender's session files go with the copy, not into the artist's /tmp.
        .env("TMP", dir.path())
        .env("TMPDIR", dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} to pack {} (install Blender, or point --blender or RENDERFARM_BLENDER at it)",
                blender.display(),
                file.display()
            )
        })?;
    let report = std::fs::read(&report_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<PackReport>(&bytes).ok());
    let (true, Some(report), true) = (output.status.success(), report, copy.is_file()) else {
        let said: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
            .filter(|l| {
                l.contains("Error") || l.contains("Traceback") || l.contains("renderfarm pack")
            })
            .map(str::to_string)
            .collect();
        anyhow::bail!(
            "Blender could not make a packed copy of {} ({}): {}",
            file.display(),
            output.status,
            if said.is_empty() {
                "it said nothing about why".to_string()
            } else {
                said.join("; ")
            }
        );
    };
    Ok(PackedBlend {
        path: copy,
        report,
        _dir: dir,
    })
}

/// A progress bar of bytes, drawn on stderr (hidden when it is not a terminal).
fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Uploads the file at `path` (hash `sha256`) unless the broker has it,
/// with a progress bar; says which happened.
pub async fn upload(
    client: &BrokerClient,
    base: &str,
    path: &Path,
    sha256: &str,
) -> anyhow::Result<()> {
    let size = std::fs::metadata(path)?.len();
    let bar = bytes_bar(size, "uploading");
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let info = client
        .upload_file(path, sha256, &progress)
        .await
        .map_err(client::explain(base))?;
    bar.finish_and_clear();
    eprintln!(
        "the broker holds the packed file ({} bytes, sha256 {})",
        info.bytes, info.sha256
    );
    Ok(())
}

/// `renderfarm download RENDER DIR`: every frame the broker lists for the
/// render, into `dir`; files already there whole are kept, partial ones
/// resumed. The broker's list, and the number of frames fetched and kept.
pub async fn download(
    client: &BrokerClient,
    base: &str,
    render: Uuid,
    dir: &Path,
) -> anyhow::Result<(renderfarm_wire::FrameList, usize, usize)> {
    let list = client.frames(render).await.map_err(client::explain(base))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let total: u64 = list.frames.iter().map(|f| f.bytes).sum();
    let bar = bytes_bar(total, "downloading");
    let (mut fetched, mut kept) = (0, 0);
    let mut before = 0u64;
    for frame in &list.frames {
        let name = frame_file_name(frame);
        let dest = dir.join(&name);
        if is_complete(&dest, frame).await {
            kept += 1;
        } else {
            bar.set_message(name.clone());
            let progress = |done: u64, _: u64| bar.set_position(before + done);
            client
                .download_frame(render, frame, &dest, &progress)
                .await
                .map_err(client::explain(base))
                .with_context(|| {
                    format!("downloading frame {} to {}", frame.frame, dest.display())
                })?;
            fetched += 1;
        }
        before += frame.bytes;
        bar.set_position(before);
    }
    bar.finish_and_clear();
    Ok((list, fetched, kept))
}

/// Fetches the video of `render` into `dir` (made if missing), as
/// `<render name>.mp4` when the name is a plain file name, else `<id>.mp4`;
/// where it went and its size. Says why when there is no video (yet).
pub async fn download_video(
    client: &BrokerClient,
    base: &str,
    render: Uuid,
    dir: &Path,
) -> anyhow::Result<(PathBuf, u64)> {
    let found = client.render(render).await.map_err(client::explain(base))?;
    if found.video.is_none() {
        anyhow::bail!(
            "render {render} \"{}\" asked for no video; submit it with --video-fps to get one",
            found.name
        );
    }
    if found.video_status != Some(renderfarm_wire::TaskStatus::Completed) {
        anyhow::bail!(
            "render {render} \"{}\" has no video to fetch yet (video {})",
            found.name,
            super::watch::video_state(found.video_status)
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = plain_file_name(&found.name).unwrap_or_else(|| render.to_string());
    let dest = dir.join(format!("{stem}.mp4"));
    let bar = bytes_bar(0, "downloading the video");
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let bytes = client
        .download_video(render, &dest, &progress)
        .await
        .map_err(client::explain(base))
        .with_context(|| format!("downloading the video to {}", dest.display()))?;
    bar.finish_and_clear();
    Ok((dest, bytes))
}

/// `name` when it is a plain file name (no folder, not `..`), so that
/// writing it cannot land outside the chosen folder.
fn plain_file_name(name: &str) -> Option<String> {
    let plain = !name.is_empty()
        && Path::new(name).file_name().map(|n| n.to_string_lossy()) == Some(name.into())
        && name != ".."
        && !name.contains('\\');
    plain.then(|| name.to_string())
}

/// The name a frame is saved under: the broker's name for it when that is a
/// plain file name, else one made from its number (a name with a folder in
/// it must not write outside the chosen folder).
fn frame_file_name(frame: &renderfarm_wire::FrameFile) -> String {
    plain_file_name(&frame.name).unwrap_or_else(|| format!("frame_{:04}", frame.frame))
}

/// True when `dest` holds the frame whole: its size, and its hash when the
/// broker gave one.
async fn is_complete(dest: &Path, frame: &renderfarm_wire::FrameFile) -> bool {
    match std::fs::metadata(dest) {
        Ok(m) if m.is_file() && m.len() == frame.bytes => match &frame.sha256 {
            Some(sha256) => sha256_file(dest)
                .await
                .is_ok_and(|actual| &actual == sha256),
            None => true,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str) -> renderfarm_wire::FrameFile {
        renderfarm_wire::FrameFile {
            frame: 7,
            url: String::new(),
            bytes: 0,
            modified_at: chrono::Utc::now(),
            sha256: None,
            name: name.to_string(),
        }
    }

    #[test]
    fn a_frame_never_lands_outside_the_chosen_folder() {
        assert_eq!(frame_file_name(&frame("shot_0007.png")), "shot_0007.png");
        for bad in ["", "..", "../x.png", "a/b.png", "/etc/passwd", "a\\b.png"] {
            assert_eq!(frame_file_name(&frame(bad)), "frame_0007", "{bad:?}");
        }
    }

    #[test]
    fn only_a_blend_file_is_packed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = check_blend_file(&dir.path().join("nope.blend")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("give the path of a .blend file"),
            "{missing}"
        );
        let text = dir.path().join("notes.blend");
        std::fs::write(&text, "hello").unwrap();
        let error = check_blend_file(&text).unwrap_err();
        assert!(error.to_string().contains("not a .blend file"), "{error}");
        let folder = check_blend_file(dir.path()).unwrap_err();
        assert!(folder.to_string().contains("not a file"), "{folder}");
        let blend = dir.path().join("real.blend");
        std::fs::write(&blend, b"BLENDER-v304RENDH").unwrap();
        check_blend_file(&blend).unwrap();
    }

    #[test]
    fn warnings_name_the_files_they_need() {
        let report: PackReport = serde_json::from_str(
            r#"{"packed": ["/a/tex.png"], "warnings": [{"kind": "image sequence", "name": "smoke", "path": "/a/smoke_0001.png"}, {"kind": "Alembic cache", "name": "anim", "path": ""}]}"#,
        )
        .unwrap();
        assert_eq!(
            report.warnings[0].to_string(),
            "image sequence \"smoke\" (/a/smoke_0001.png)"
        );
        assert_eq!(report.warnings[1].to_string(), "Alembic cache \"anim\"");
    }
}
