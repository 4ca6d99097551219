//! Warm Blender: one Blender process kept alive between the chunks of a
//! render, so that every chunk after the first skips Blender's start-up and
//! the file's load.
//!
//! The process runs `blender -b FILE -t 0 --python warm_driver.py -- FILE`;
//! the driver (Blender's own Python, embedded in this binary and written to
//! the work directory) renders each chunk the [`Launcher`] writes to its
//! stdin as the cold command line `blender -b FILE -o OUTPUT [-E ENGINE] -s A
//! -e B -t 0 -a` would: same output paths, same frames, the same `Fra:` and
//! `Saved:` lines. It ends a chunk with `renderfarm-warm: chunk N done`; a
//! failed chunk ends the process with exit code 1, as a cold Blender does.
//!
//! A chunk goes to the warm process only when it has the same [`SceneKey`]
//! as the chunk before: the same render and the same file content (its
//! SHA-256 for an uploaded file, else its device, inode, size, modification
//! and change times). A different render or a changed file, more than
//! [`WarmConfig::idle`] without work, more than [`WarmConfig::max_rss`] of
//! resident memory after a chunk, or [`WarmConfig::max_chunks`] chunks start
//! a fresh process. A chunk that fails, is aborted or whose Blender crashes
//! takes the process with it: the next chunk starts cold.
//!
//! What a warm process cannot reset between chunks: the driver puts back
//! the scene's frame range, current frame (re-evaluating the animation
//! there), output path and engine, which are all it and rendering change.
//! It cannot put back module-level state of scripts the file runs at load
//! (registered text blocks, when Blender's preferences allow auto-run), the
//! handlers and `bpy.app.driver_namespace` entries they add, or scene data
//! their frame-change and render handlers write. So a file whose scripts ran
//! is never reused: the driver says so with its first chunk's end and quits,
//! and each chunk of that file gets a fresh Blender, as with `--warm off`.
//! What stays shared between the chunks of other files: state that add-ons
//! enabled in the user's preferences keep in their modules (they are loaded
//! once per process, cold or warm, but a cold chunk would see them fresh),
//! and Blender's caches (Cycles' compiled kernels, decoded images), which
//! only make later chunks faster.
//!
//! Memory: the process holds the scene between chunks, so one warm Blender
//! per agent slot costs one scene's memory while idle, for at most
//! [`WarmConfig::idle`]. The ceiling [`WarmConfig::max_rss`] is per process:
//! with GPU slots (`--gpus`) each slot has a launcher and so at most one
//! warm process of its own, bounded by it on its own, so a machine needs
//! slots × ceiling of memory; each holds its scene in its own GPU's memory
//! alone (it is pinned to that GPU), released when the process ends, at the
//! latest after the idle timeout or the chunk limit. An agent killed
//! outright does not leave a warm Blender behind for long: its stdin closes,
//! and the driver ends Blender after the chunk it is rendering.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, oneshot};

use super::{
    forward_output, kill_group, remove_temp_dir, spawn, start, BlenderProcess, ProcessKind,
    RenderJob, RunningBlender,
};

/// The driver script Blender runs in a warm process.
pub const DRIVER: &str = include_str!("warm_driver.py");
/// Where the driver is written, in the work directory.
pub const DRIVER_FILE: &str = "renderfarm-warm-driver.py";
/// How the driver's own lines start.
const MARKER: &str = "renderfarm-warm:";

/// When the agent keeps Blender warm between chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmConfig {
    /// Off: every chunk is a fresh `blender -b FILE … -a`, as before warm
    /// Blender existed.
    pub enabled: bool,
    /// How long a warm Blender waits for the render's next chunk.
    pub idle: Duration,
    /// The most resident memory (bytes) a warm Blender may hold after a
    /// chunk and still take the next one.
    pub max_rss: u64,
    /// The most chunks one warm Blender renders before a fresh one starts.
    pub max_chunks: u32,
}

/// `--warm-idle`'s default.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// `--warm-max-rss`'s default: 8 GiB.
pub const DEFAULT_MAX_RSS: u64 = 8 << 30;
/// `--warm-max-chunks`'s default.
pub const DEFAULT_MAX_CHUNKS: u32 = 100;

impl Default for WarmConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            idle: DEFAULT_IDLE,
            max_rss: DEFAULT_MAX_RSS,
            max_chunks: DEFAULT_MAX_CHUNKS,
        }
    }
}

impl WarmConfig {
    /// Every chunk cold.
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

/// What two chunks must share to be rendered by the same warm Blender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneKey {
    render: String,
    blend_file: String,
    content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Sha256(String),
    /// A file saved anew gets a new inode (Blender writes a temporary file
    /// and renames it) or at least new times and usually a new size.
    File {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
}

impl SceneKey {
    /// The key of a chunk of `render` on `blend_file`, whose content is
    /// `sha256` when it was uploaded; `None` when the file cannot be looked
    /// at (the chunk then runs cold and Blender says what is wrong).
    pub fn new(render: impl ToString, blend_file: &str, sha256: Option<&str>) -> Option<Self> {
        let content = match sha256 {
            Some(sha256) => Content::Sha256(sha256.to_string()),
            None => {
                let meta = std::fs::metadata(blend_file).ok()?;
                Content::File {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    len: meta.len(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    ctime: (meta.ctime(), meta.ctime_nsec()),
                }
            }
        };
        Some(Self {
            render: render.to_string(),
            blend_file: blend_file.to_string(),
            content,
        })
    }
}

/// Starts Blender for each chunk: a fresh process, or the warm one kept from
/// the render's previous chunk. At most one Blender at a time: a warm one
/// that cannot take the chunk is killed before another starts (they share
/// the work directory's temporary folder).
pub struct Launcher {
    blender: PathBuf,
    work_dir: PathBuf,
    config: WarmConfig,
    /// The GPU every Blender it starts is pinned to (a GPU slot's), cold or
    /// warm.
    gpu: Option<u32>,
    parked: Arc<Mutex<Parked>>,
}

/// The warm Blender waiting for its next chunk, if any. The generation
/// changes whenever it is taken or replaced, so that an idle timer set for
/// an earlier one does nothing.
#[derive(Default)]
struct Parked {
    warm: Option<WarmProcess>,
    generation: u64,
}

impl Launcher {
    /// A launcher of `blender` in `work_dir`.
    pub fn new(blender: PathBuf, work_dir: PathBuf, config: WarmConfig) -> Self {
        Self {
            blender,
            work_dir,
            config,
            gpu: None,
            parked: Arc::default(),
        }
    }

    /// The same launcher with every Blender pinned to `gpu` (a GPU slot's):
    /// the GPU set-up on its command line and CUDA showing it that GPU
    /// alone, cold or warm ([`super::pin_to_gpu`], [`super::gpu_env`]).
    pub fn on_gpu(self, gpu: u32) -> Self {
        Self {
            gpu: Some(gpu),
            ..self
        }
    }

    /// The process id of the warm Blender waiting for a chunk, if any.
    pub fn warm_pid(&self) -> Option<u32> {
        lock(&self.parked).warm.as_ref().and_then(|w| w.pid)
    }

    /// Starts rendering `job`, whose scene is `key` (`None`: not to be kept
    /// warm). With warm Blender off this is [`super::start`], the cold
    /// command line, exactly.
    pub async fn start(
        &mut self,
        job: &RenderJob,
        key: Option<SceneKey>,
    ) -> anyhow::Result<RunningBlender> {
        if !self.config.enabled {
            return start(&self.blender, job, &self.work_dir, self.gpu);
        }
        let parked = {
            let mut parked = lock(&self.parked);
            parked.generation += 1;
            parked.warm.take()
        };
        // Dropping one that cannot take this chunk kills it now, before
        // another Blender starts.
        let reusable = parked.filter(|w| key.as_ref() == Some(&w.key));
        let Some(key) = key else {
            return start(&self.blender, job, &self.work_dir, self.gpu);
        };
        if let Some(mut warm) = reusable {
            match warm.send(job).await {
                Ok(()) => return Ok(self.chunk(warm, true)),
                Err(e) => {
                    tracing::info!(error = %e, "the warm Blender is gone; starting a fresh one");
                }
            }
        }
        let mut warm = self.spawn(key, job)?;
        // A Blender that ended already (a file it cannot read) refuses the
        // chunk; the chunk then fails as a cold one would, with Blender's exit
        // code and output.
        if let Err(e) = warm.send(job).await {
            tracing::debug!(error = %e, "the warm Blender did not take the chunk");
        }
        Ok(self.chunk(warm, false))
    }

    fn spawn(&self, key: SceneKey, job: &RenderJob) -> anyhow::Result<WarmProcess> {
        let blend_file = job.blend_file.as_str();
        let driver = std::path::absolute(self.work_dir.join(DRIVER_FILE))
            .with_context(|| format!("locating the work directory {}", self.work_dir.display()))?;
        std::fs::write(&driver, DRIVER)
            .with_context(|| format!("writing the warm driver {}", driver.display()))?;
        // A warm Blender serves one render, whose mappings stay as they
        // were at its first chunk: remapped once, as the file is loaded.
        let args = super::with_path_mappings(
            driver_args(blend_file, driver.into_os_string(), self.gpu),
            &job.path_mappings,
        );
        let (mut child, temp_dir) = spawn(
            &self.blender,
            args,
            &self.work_dir,
            Stdio::piped(),
            self.gpu,
        )?;
        let pid = child.id();
        let stdin = child
            .stdin
            .take()
            .context("Blender started without a stdin to send chunks to")?;
        let lines = forward_output(&mut child);
        tracing::info!(pid, blend = blend_file, "started a warm Blender");
        Ok(WarmProcess {
            key,
            child,
            pid,
            stdin,
            lines: Some(lines),
            temp_dir,
            chunks: 0,
            reaped: false,
            cleaned: false,
        })
    }

    fn chunk(&self, mut warm: WarmProcess, reused: bool) -> RunningBlender {
        let (tx, lines) = mpsc::channel(1024);
        let (done_tx, done) = oneshot::channel();
        let pid = warm.pid;
        let number = warm.chunks;
        let note = if reused {
            format!("renderfarm-worker: rendering in the render's warm Blender (pid {}), its chunk {number}: no start-up, no load\n", pid.unwrap_or(0))
        } else {
            format!("renderfarm-worker: started a warm Blender (pid {}) that keeps the file loaded for the render's next chunks\n", pid.unwrap_or(0))
        };
        let _ = tx.try_send(note);
        if let Some(raw) = warm.lines.take() {
            tokio::spawn(route(
                raw,
                tx,
                done_tx,
                format!("{MARKER} chunk {number} done"),
            ));
        }
        RunningBlender {
            process: BlenderProcess {
                kind: ProcessKind::Warm(WarmChunk {
                    warm: Some(warm),
                    done: Some(done),
                    finished: false,
                    parked: Arc::downgrade(&self.parked),
                    config: self.config,
                }),
                pid,
            },
            lines,
        }
    }
}

/// The warm Blender's arguments: `blend_file` loaded, pinned to `gpu` if
/// given (the GPU set-up runs before the driver, once for every chunk the
/// process renders), then the `driver` script.
pub fn driver_args(blend_file: &str, driver: OsString, gpu: Option<u32>) -> Vec<OsString> {
    let args: Vec<OsString> = vec![
        "-b".into(),
        blend_file.into(),
        "-t".into(),
        "0".into(),
        "--python".into(),
        driver,
        "--".into(),
        blend_file.into(),
    ];
    super::pin_to_gpu(args, gpu)
}

fn lock(parked: &Mutex<Parked>) -> std::sync::MutexGuard<'_, Parked> {
    // A panic while holding it leaves nothing half-done worth refusing.
    parked
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a chunk in a warm Blender ended well.
struct ChunkDone {
    /// Its output, for the next chunk.
    lines: mpsc::Receiver<String>,
    /// Whether the process may take another chunk: not when the file's own
    /// scripts ran (they may keep state a fresh Blender would not have).
    reusable: bool,
}

/// Passes the warm Blender's lines on to the chunk until the driver says the
/// chunk is done; then hands the stream back for the next chunk. The driver's
/// own lines stay out of the task's log.
async fn route(
    mut raw: mpsc::Receiver<String>,
    tx: mpsc::Sender<String>,
    done: oneshot::Sender<ChunkDone>,
    done_line: String,
) {
    let last_line = format!("{done_line}, last");
    while let Some(line) = raw.recv().await {
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed == done_line || trimmed == last_line {
            let reusable = trimmed == done_line;
            let _ = done.send(ChunkDone {
                lines: raw,
                reusable,
            });
            return;
        }
        if trimmed.starts_with(MARKER) {
            continue;
        }
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

/// A warm Blender process.
struct WarmProcess {
    key: SceneKey,
    child: Child,
    pid: Option<u32>,
    stdin: ChildStdin,
    /// Its output; with the chunk's router while a chunk renders.
    lines: Option<mpsc::Receiver<String>>,
    temp_dir: PathBuf,
    /// Chunks sent to it so far.
    chunks: u32,
    /// Its exit was seen: its process id may belong to another process by
    /// now, so its group is not signalled any more.
    reaped: bool,
    /// Its temporary folder is removed.
    cleaned: bool,
}

impl WarmProcess {
    async fn send(&mut self, job: &RenderJob) -> std::io::Result<()> {
        self.chunks += 1;
        let mut line = serde_json::json!({
            "chunk": self.chunks,
            "from": job.from,
            "to": job.to,
            "output": job.output,
            "engine": job.engine,
        })
        .to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await
    }

    async fn kill(&mut self) {
        if !self.reaped {
            kill_group(self.pid);
        }
        let _ = self.child.kill().await;
        self.reaped = true;
        remove_temp_dir(&self.temp_dir).await;
        self.cleaned = true;
    }
}

impl Drop for WarmProcess {
    fn drop(&mut self) {
        if !self.reaped {
            tracing::info!(pid = self.pid, "ending the warm Blender");
            kill_group(self.pid);
        }
        // kill_on_drop reaps it; the session files go now.
        if !self.cleaned {
            let _ = std::fs::remove_dir_all(&self.temp_dir);
        }
    }
}

/// One chunk rendering in a warm Blender.
pub(super) struct WarmChunk {
    /// `None` once killed.
    warm: Option<WarmProcess>,
    /// Answered when the driver says the chunk is done.
    done: Option<oneshot::Receiver<ChunkDone>>,
    /// The chunk ended well and the process may take the next one.
    finished: bool,
    parked: Weak<Mutex<Parked>>,
    config: WarmConfig,
}

impl WarmChunk {
    pub(super) async fn wait(&mut self) -> std::io::Result<Option<i32>> {
        let Some(warm) = self.warm.as_mut() else {
            return Ok(None);
        };
        if let Some(done) = self.done.as_mut() {
            // Either the driver says the chunk is done, or Blender exits
            // (a failed chunk, a crash) first.
            let ended = tokio::select! {
                biased;
                stream = done => Ok(stream.ok()),
                status = warm.child.wait() => Err(status),
            };
            self.done = None;
            match ended {
                Ok(Some(done)) => {
                    warm.lines = Some(done.lines);
                    self.finished = done.reusable;
                    return Ok(Some(0));
                }
                Ok(None) => {}
                Err(status) => {
                    warm.reaped = true;
                    return Ok(status?.code());
                }
            }
        }
        let status = warm.child.wait().await;
        warm.reaped = true;
        Ok(status?.code())
    }

    pub(super) async fn kill(&mut self) {
        if let Some(mut warm) = self.warm.take() {
            warm.kill().await;
        }
    }
}

impl Drop for WarmChunk {
    /// A chunk that ended well leaves its Blender waiting for the render's
    /// next chunk, unless a limit says a fresh one should take it.
    fn drop(&mut self) {
        let Some(warm) = self.warm.take() else {
            return;
        };
        if !self.finished {
            return;
        }
        let Some(parked) = self.parked.upgrade() else {
            return;
        };
        if warm.chunks >= self.config.max_chunks {
            tracing::info!(
                pid = warm.pid,
                chunks = warm.chunks,
                "the warm Blender rendered --warm-max-chunks chunks; the next starts fresh"
            );
            return;
        }
        let rss = warm.pid.and_then(rss_bytes);
        if rss.is_some_and(|rss| rss > self.config.max_rss) {
            tracing::info!(
                pid = warm.pid,
                rss,
                max = self.config.max_rss,
                "the warm Blender holds more than --warm-max-rss; the next chunk starts fresh"
            );
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let generation = {
            let mut slot = lock(&parked);
            slot.generation += 1;
            slot.warm = Some(warm);
            slot.generation
        };
        let idle = self.config.idle;
        let parked = Arc::downgrade(&parked);
        runtime.spawn(async move {
            tokio::time::sleep(idle).await;
            let Some(parked) = parked.upgrade() else {
                return;
            };
            let expired = {
                let mut slot = lock(&parked);
                if slot.generation == generation {
                    slot.warm.take()
                } else {
                    None
                }
            };
            if let Some(warm) = expired {
                tracing::info!(
                    pid = warm.pid,
                    ?idle,
                    "no chunk for the warm Blender within --warm-idle"
                );
            }
        });
    }
}

/// The resident memory of process `pid` (`VmRSS` in `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// The most resident memory process `pid` has held (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_scene_key_changes_with_the_render_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blend = dir.path().join("a.blend");
        std::fs::write(&blend, b"one").unwrap();
        let path = blend.to_str().unwrap();
        let first = SceneKey::new("r1", path, None).unwrap();
        assert_eq!(SceneKey::new("r1", path, None), Some(first.clone()));
        assert_ne!(SceneKey::new("r2", path, None), Some(first.clone()));
        // Saved anew, as Blender saves: a new file renamed over the old.
        let next = dir.path().join("a.blend@");
        std::fs::write(&next, b"two").unwrap();
        std::fs::rename(&next, &blend).unwrap();
        assert_ne!(SceneKey::new("r1", path, None), Some(first));
        assert_eq!(SceneKey::new("r1", "/no/such.blend", None), None);
        assert_eq!(
            SceneKey::new("r1", "/cache/x.blend", Some("ab")),
            SceneKey::new("r1", "/cache/x.blend", Some("ab"))
        );
        assert_ne!(
            SceneKey::new("r1", "/cache/x.blend", Some("ab")),
            SceneKey::new("r1", "/cache/x.blend", Some("cd"))
        );
    }

    #[test]
    fn memory_is_read_from_proc() {
        let me = std::process::id();
        let rss = rss_bytes(me).expect("this process has a VmRSS");
        assert!(rss > 0);
        assert!(peak_rss_bytes(me).expect("and a VmHWM") >= rss / 2);
        assert_eq!(rss_bytes(u32::MAX), None);
    }

    /// A stand-in for Blender (named as such): a shell script that writes
    /// its arguments to a file, one a line.
    fn fake_blender(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-blender");
        let record = dir.join("args");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\n",
                record.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A stand-in for Blender (named as such): a shell script that writes
    /// its arguments (NUL-separated: the GPU set-up spans lines) and the
    /// CUDA variables of its environment to files.
    fn recording_blender(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("recording-blender");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nprintf '%s\\0' \"$@\" > '{0}/args'\n\
                 printf 'CUDA_DEVICE_ORDER=%s\\nCUDA_VISIBLE_DEVICES=%s\\n' \"${{CUDA_DEVICE_ORDER-unset}}\" \"${{CUDA_VISIBLE_DEVICES-unset}}\" > '{0}/env'\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// What [`recording_blender`] got: its arguments and environment.
    fn recorded(dir: &Path) -> (Vec<String>, String) {
        let args = std::fs::read_to_string(dir.join("args")).unwrap();
        let args = args
            .strip_suffix('\0')
            .unwrap_or(&args)
            .split('\0')
            .map(String::from)
            .collect();
        (args, std::fs::read_to_string(dir.join("env")).unwrap())
    }

    #[tokio::test]
    async fn a_gpu_slot_s_launcher_pins_cold_and_warm_blender_to_its_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let blender = recording_blender(dir.path());
        let blend = dir.path().join("s.blend");
        std::fs::write(&blend, b"scene").unwrap();
        let job = RenderJob {
            blend_file: blend.display().to_string(),
            output: "/r/f_####".into(),
            engine: None,
            from: 1,
            to: 2,
            path_mappings: Vec::new(),
        };
        let strings = |args: Vec<OsString>| -> Vec<String> {
            args.into_iter().map(|a| a.into_string().unwrap()).collect()
        };

        let mut cold =
            Launcher::new(blender.clone(), dir.path().into(), WarmConfig::off()).on_gpu(1);
        let mut running = cold.start(&job, None).await.unwrap();
        running.process.wait().await.unwrap();
        let (args, env) = recorded(dir.path());
        assert_eq!(args, strings(job.args_on(Some(1))));
        assert_eq!(args[2..4], ["--python-expr", super::super::GPU_SETUP]);
        assert_eq!(
            env,
            "CUDA_DEVICE_ORDER=PCI_BUS_ID\nCUDA_VISIBLE_DEVICES=1\n"
        );

        let mut warm =
            Launcher::new(blender.clone(), dir.path().into(), WarmConfig::default()).on_gpu(0);
        let key = SceneKey::new("r", &job.blend_file, None);
        let mut running = warm.start(&job, key).await.unwrap();
        running.process.wait().await.unwrap();
        let (args, env) = recorded(dir.path());
        let driver = std::path::absolute(dir.path().join(DRIVER_FILE)).unwrap();
        assert_eq!(
            args,
            strings(driver_args(
                &job.blend_file,
                driver.into_os_string(),
                Some(0)
            ))
        );
        assert_eq!(
            args[..4],
            [
                "-b",
                job.blend_file.as_str(),
                "--python-expr",
                super::super::GPU_SETUP
            ],
            "the set-up runs before the warm driver"
        );
        assert_eq!(
            env,
            "CUDA_DEVICE_ORDER=PCI_BUS_ID\nCUDA_VISIBLE_DEVICES=0\n"
        );

        // Without a GPU: neither, as before GPU slots.
        let mut plain = Launcher::new(blender, dir.path().into(), WarmConfig::off());
        let mut running = plain.start(&job, None).await.unwrap();
        running.process.wait().await.unwrap();
        let (args, env) = recorded(dir.path());
        assert_eq!(args, strings(job.args()));
        if std::env::var_os("CUDA_VISIBLE_DEVICES").is_none() {
            assert_eq!(env, "CUDA_DEVICE_ORDER=unset\nCUDA_VISIBLE_DEVICES=unset\n");
        }
    }

    #[tokio::test]
    async fn warm_off_runs_the_cold_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let blender = fake_blender(dir.path());
        let blend = dir.path().join("s.blend");
        std::fs::write(&blend, b"scene").unwrap();
        let job = RenderJob {
            blend_file: blend.display().to_string(),
            output: "/r/f_####".into(),
            engine: Some("CYCLES".into()),
            from: 3,
            to: 5,
            path_mappings: Vec::new(),
        };
        let mut launcher = Launcher::new(blender, dir.path().to_path_buf(), WarmConfig::off());
        let key = SceneKey::new("r", &job.blend_file, None);
        assert!(key.is_some());
        let mut running = launcher.start(&job, key).await.unwrap();
        assert_eq!(running.process.wait().await.unwrap(), Some(0));
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        let want: Vec<String> = job
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(args.lines().collect::<Vec<_>>(), want);
        assert_eq!(launcher.warm_pid(), None);
    }
}
