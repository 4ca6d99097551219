//! Running Blender: checking it works, starting one render of a frame range in
//! its own process group (pinned to one GPU for a GPU slot), reading its
//! output line by line, killing it.

pub mod output;
pub mod scene;
pub mod warm;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::process::{forward_lines, kill_group, version_line};

/// How long `blender --version` may take (the first start after boot is slow).
const VERSION_TIMEOUT: Duration = Duration::from_secs(60);

/// Checks that `blender` runs; returns its version line. The error names the
/// flag and the package, so a newcomer knows what to do.
pub async fn check_blender(blender: &Path) -> anyhow::Result<String> {
    let help = format!(
        "Blender is needed to render, and `{}` does not run: install it (on Debian or Ubuntu: `sudo apt-get install blender`) or point --blender at the Blender executable",
        blender.display()
    );
    version_line(blender, "--version", VERSION_TIMEOUT, &help, |l| {
        l.starts_with("Blender ")
    })
    .await
}

/// The Python a GPU slot's Blender runs once the file is loaded, before the
/// render's own arguments (`--python-expr`, see [`pin_to_gpu`]): Cycles
/// renders every scene on the one GPU CUDA shows it ([`gpu_env`]), with
/// OptiX when this Blender has it, else CUDA, and never on the CPU. A
/// Blender that sees no such GPU prints an `Error:` line saying why and
/// exits with code 1, which fails the chunk with that reason.
pub const GPU_SETUP: &str = include_str!("gpu_setup.py");

/// What a GPU slot's Blender finds in its environment: CUDA shows it the
/// slot's GPU alone, numbered as `nvidia-smi` numbers it (CUDA's own order
/// is fastest first; the PCI bus order is nvidia-smi's).
pub fn gpu_env(gpu: u32) -> [(&'static str, String); 2] {
    [
        ("CUDA_DEVICE_ORDER", "PCI_BUS_ID".to_string()),
        ("CUDA_VISIBLE_DEVICES", gpu.to_string()),
    ]
}

/// Blender's arguments `args` (which start with `-b FILE`) for a Blender
/// pinned to `gpu`, if any: the GPU set-up goes right after the file is
/// loaded, so that it acts on the file's scenes before anything renders
/// them (Blender applies its arguments in order).
pub fn pin_to_gpu(mut args: Vec<OsString>, gpu: Option<u32>) -> Vec<OsString> {
    if gpu.is_some() {
        let at = args.len().min(2);
        args.splice(at..at, ["--python-expr".into(), GPU_SETUP.into()]);
    }
    args
}

/// The Python that rewrites other platforms' paths inside the .blend once
/// it is loaded (`--python-expr`, see [`with_path_mappings`]): images,
/// linked libraries and other file-backed data, each rewrite printed.
pub const PATH_REMAP: &str = include_str!("path_remap.py");

/// Blender's arguments `args` (which start with `-b FILE`) with the path
/// remap right after the file is loaded, when there is something to remap;
/// the mappings travel inside the expression as a JSON string literal
/// (which Python reads as the same string), so no file or environment
/// variable is involved.
pub fn with_path_mappings(
    mut args: Vec<OsString>,
    mappings: &[renderfarm_wire::PathMapping],
) -> Vec<OsString> {
    if mappings.is_empty() {
        return args;
    }
    let json = serde_json::to_string(mappings).unwrap_or_default();
    let literal = serde_json::to_string(&json).unwrap_or_default();
    let expr = format!("{PATH_REMAP}\nrenderfarm_remap_paths({literal})\n");
    let at = args.len().min(2);
    args.splice(at..at, ["--python-expr".into(), expr.into()]);
    args
}

/// One render of frames `from..=to` of a .blend file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderJob {
    pub blend_file: String,
    pub output: String,
    pub engine: Option<String>,
    pub from: i64,
    pub to: i64,
    /// Other platforms' path prefixes to rewrite inside the file.
    pub path_mappings: Vec<renderfarm_wire::PathMapping>,
}

impl RenderJob {
    /// Blender's arguments. Blender applies them in order, so the frame range
    /// and engine come before `-a` (render the animation).
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "-b".into(),
            self.blend_file.clone().into(),
            "-o".into(),
            self.output.clone().into(),
        ];
        if let Some(engine) = &self.engine {
            args.push("-E".into());
            args.push(engine.into());
        }
        for a in [
            "-s".to_string(),
            self.from.to_string(),
            "-e".into(),
            self.to.to_string(),
            "-t".into(),
            "0".into(),
            "-a".into(),
        ] {
            args.push(a.into());
        }
        with_path_mappings(args, &self.path_mappings)
    }

    /// Blender's arguments on a Blender pinned to `gpu` (a GPU slot's), or
    /// [`RenderJob::args`] for `None`.
    pub fn args_on(&self, gpu: Option<u32>) -> Vec<OsString> {
        pin_to_gpu(self.args(), gpu)
    }
}

/// A Blender process rendering, with its output arriving line by line.
pub struct RunningBlender {
    pub process: BlenderProcess,
    /// Output lines (with their newline) from stdout and stderr; closed once
    /// both streams are.
    pub lines: mpsc::Receiver<String>,
}

/// The Blender process itself: one started for this chunk alone (cold), or
/// the warm one of [`warm::Launcher`] while it renders this chunk.
pub struct BlenderProcess {
    kind: ProcessKind,
    pid: Option<u32>,
}

// One per chunk at a time: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum ProcessKind {
    Cold { child: Child, temp_dir: PathBuf },
    Warm(warm::WarmChunk),
}

/// Where Blender keeps its session files, under the work directory: a killed
/// Blender cannot remove its own, and months of aborted tasks would otherwise
/// fill the machine's /tmp.
pub const TEMP_DIR: &str = "blender-tmp";

/// Starts Blender on `job` in `work_dir`, in a process group of its own so
/// that killing it takes any children along, pinned to `gpu` if given. No
/// shell is involved. One Blender at a time per work directory: its
/// temporary directory starts empty.
pub fn start(
    blender: &Path,
    job: &RenderJob,
    work_dir: &Path,
    gpu: Option<u32>,
) -> anyhow::Result<RunningBlender> {
    let (mut child, temp_dir) = spawn(blender, job.args_on(gpu), work_dir, Stdio::null(), gpu)?;
    let pid = child.id();
    let lines = forward_output(&mut child);
    Ok(RunningBlender {
        process: BlenderProcess {
            kind: ProcessKind::Cold { child, temp_dir },
            pid,
        },
        lines,
    })
}

/// Starts Blender with `args` as [`start`] does: in `work_dir`, in a process
/// group of its own, with an empty temporary directory, and CUDA showing it
/// `gpu` alone when given (`args` are pinned to it already); returns the
/// child and that directory.
fn spawn(
    blender: &Path,
    args: Vec<OsString>,
    work_dir: &Path,
    stdin: Stdio,
    gpu: Option<u32>,
) -> anyhow::Result<(Child, PathBuf)> {
    let temp_dir = work_dir.join(TEMP_DIR);
    match std::fs::remove_dir_all(&temp_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("emptying {}", temp_dir.display()))
        }
        _ => {}
    }
    std::fs::create_dir_all(&temp_dir)
        .with_context(|| format!("creating {}", temp_dir.display()))?;
    let child = Command::new(blender)
        .args(args)
        .current_dir(work_dir)
        // Blender looks at TMP before TMPDIR.
        .env("TMP", &temp_dir)
        .env("TMPDIR", &temp_dir)
        .envs(gpu.map(gpu_env).into_iter().flatten())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", blender.display()))?;
    Ok((child, temp_dir))
}

/// Blender's stdout and stderr, line by line, in one channel that closes
/// once both streams do.
fn forward_output(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel(1024);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_lines(stdout, tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_lines(stderr, tx));
    }
    lines
}

impl BlenderProcess {
    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Waits for Blender to exit; its exit code, or `None` if a signal ended
    /// it. A warm Blender counts as exited with code 0 once it says the chunk
    /// is done, and stays for the render's next chunk.
    pub async fn wait(&mut self) -> std::io::Result<Option<i32>> {
        match &mut self.kind {
            ProcessKind::Cold { child, .. } => Ok(child.wait().await?.code()),
            ProcessKind::Warm(chunk) => chunk.wait().await,
        }
    }

    /// Kills Blender and everything it started, at once (SIGKILL to the
    /// process group), reaps it and removes the session files it left. A
    /// warm Blender goes too: the render's next chunk starts cold.
    pub async fn kill(&mut self) {
        match &mut self.kind {
            ProcessKind::Cold { child, temp_dir } => {
                kill_group(self.pid);
                let _ = child.kill().await;
                remove_temp_dir(temp_dir).await;
            }
            ProcessKind::Warm(chunk) => chunk.kill().await,
        }
    }
}

async fn remove_temp_dir(temp_dir: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(temp_dir).await {
        tracing::debug!(error = %e, dir = %temp_dir.display(), "could not remove Blender's temporary files");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blender_arguments_put_the_range_and_engine_before_render_animation() {
        let job = RenderJob {
            blend_file: "/p/shot 1.blend".into(),
            output: "/r/frame_####".into(),
            engine: Some("CYCLES".into()),
            from: 4,
            to: 6,
            path_mappings: Vec::new(),
        };
        let args: Vec<String> = job
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "-b",
                "/p/shot 1.blend",
                "-o",
                "/r/frame_####",
                "-E",
                "CYCLES",
                "-s",
                "4",
                "-e",
                "6",
                "-t",
                "0",
                "-a"
            ]
        );
        let plain = RenderJob {
            engine: None,
            ..job
        };
        assert!(!plain.args().iter().any(|a| a == "-E"));
    }

    #[test]
    fn a_gpu_slot_s_blender_runs_the_gpu_set_up_once_the_file_is_loaded_and_before_the_render_arguments(
    ) {
        let job = RenderJob {
            blend_file: "/p/shot.blend".into(),
            output: "/r/frame_####".into(),
            engine: Some("CYCLES".into()),
            from: 1,
            to: 2,
            path_mappings: Vec::new(),
        };
        let pinned = job.args_on(Some(1));
        let cold = job.args();
        assert_eq!(
            pinned[..4],
            [
                OsString::from("-b"),
                "/p/shot.blend".into(),
                "--python-expr".into(),
                GPU_SETUP.into()
            ]
        );
        assert_eq!(pinned[4..], cold[2..], "then the render's own arguments");
        assert_eq!(job.args_on(None), cold, "no GPU, no set-up");
        assert!(GPU_SETUP.starts_with("# renderfarm-worker: GPU set-up"));
        assert_eq!(
            gpu_env(1),
            [
                ("CUDA_DEVICE_ORDER", "PCI_BUS_ID".to_string()),
                ("CUDA_VISIBLE_DEVICES", "1".to_string())
            ]
        );
    }

    #[test]
    fn path_mappings_run_the_remap_right_after_the_file_loads_and_only_when_given() {
        let mut job = RenderJob {
            blend_file: "/p/shot.blend".into(),
            output: "/r/frame_####".into(),
            engine: None,
            from: 1,
            to: 2,
            path_mappings: Vec::new(),
        };
        assert!(!job.args().iter().any(|a| a == "--python-expr"));
        job.path_mappings = vec![renderfarm_wire::PathMapping {
            from: "P:\\it's \"quoted\"".into(),
            to: "/mnt/projects".into(),
            ignore_case: true,
        }];
        let args = job.args();
        assert_eq!(args[..2], ["-b", "/p/shot.blend"]);
        assert_eq!(args[2], "--python-expr");
        let expr = args[3].to_str().unwrap();
        assert!(expr.starts_with(PATH_REMAP));
        // The mappings travel as a JSON string literal Python reads as is.
        let call = expr[PATH_REMAP.len()..].trim();
        let literal = call
            .strip_prefix("renderfarm_remap_paths(")
            .and_then(|c| c.strip_suffix(')'))
            .unwrap();
        let json: String = serde_json::from_str(literal).unwrap();
        let back: Vec<renderfarm_wire::PathMapping> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, job.path_mappings);
        // A GPU slot's set-up goes first; both before the render's arguments.
        let pinned = job.args_on(Some(0));
        assert_eq!(pinned[2..4], ["--python-expr", GPU_SETUP]);
        assert_eq!(pinned[4], "--python-expr");
        assert_eq!(pinned[6], "-o");
    }
}
