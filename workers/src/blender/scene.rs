//! Makes small animated scenes with Blender's own Python, for the demo and
//! for tests: nothing to download, nothing checked in but the script.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use tokio::process::Command;

const SCRIPT: &str = include_str!("scene.py");

/// What the generated scene looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SceneSpec {
    /// Frames 1..=frames are animated.
    pub frames: i64,
    pub width: u32,
    pub height: u32,
    /// Cycles samples per pixel.
    pub samples: u32,
    /// Cycles denoising; Debian's Blender fails to render with it on.
    pub denoise: bool,
}

impl SceneSpec {
    /// A scene that renders in well under a second a frame (64×48, 4 samples).
    pub fn tiny(frames: i64) -> Self {
        Self {
            frames,
            width: 64,
            height: 48,
            samples: 4,
            denoise: false,
        }
    }
}

/// Writes the scene to `path` (a .blend file) using `blender`.
pub async fn make_scene(blender: &Path, path: &Path, spec: SceneSpec) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let script = path.with_extension("py");
    tokio::fs::write(&script, SCRIPT).await?;
    let output = Command::new(blender)
        .args(["-b", "--factory-startup", "--python"])
        .arg(&script)
        .arg("--")
        .arg(path)
        .args([
            spec.frames.to_string(),
            spec.width.to_string(),
            spec.height.to_string(),
            spec.samples.to_string(),
            if spec.denoise { "1" } else { "0" }.to_string(),
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {} to make a scene", blender.display()))?;
    let _ = tokio::fs::remove_file(&script).await;
    if !output.status.success() || !path.is_file() {
        anyhow::bail!(
            "Blender could not make the scene {} ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&output.stderr).lines())
                .filter(|l| l.contains("Error") || l.contains("Traceback"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}
