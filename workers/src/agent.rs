//! The agent's loop: register with the task kinds this machine can run,
//! pull a task, run it by its kind (a chunk with Blender, `chunk`; a video
//! with ffmpeg, [`crate::video`]) under its lease, report how it ended.
//! Reports that cannot reach the broker are retried with backoff and
//! jitter; a final report still undelivered when the agent stops is kept on
//! disk and sent at the next start. With GPU slots (`--gpus`) the agent runs
//! that loop once per GPU, side by side, each slot a worker of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use renderfarm_client::{BrokerClient, ClientError, ClientOptions};
use renderfarm_wire::{
    Assignment, Platform, ReleaseReport, TaskKind, WorkerAction, WorkerHours, WorkerSpec,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::blender;
use crate::blender::warm::{Launcher, WarmConfig};
use crate::cache::{BlendCache, CACHE_DIR};
use crate::retry::{backoff, retry_delay};
use crate::task::{Ending, FinalReport, Lease};
use crate::{chunk, video};

/// How long a stopping agent keeps trying to deliver its last report before
/// it saves it for the next start.
const STOP_DELIVERY_GRACE: Duration = Duration::from_secs(20);
const PENDING_DIR: &str = "undelivered";

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub broker: String,
    pub name: String,
    pub tags: Vec<String>,
    pub blender: PathBuf,
    /// The ffmpeg that makes renders' videos (`--ffmpeg`); a worker where it
    /// does not run takes no video tasks.
    pub ffmpeg: PathBuf,
    /// Blender runs here; undelivered reports are kept here.
    pub work_dir: PathBuf,
    /// How often to tell the broker it is alive while rendering.
    pub heartbeat: Duration,
    /// How often to send new log lines and frames done while rendering.
    pub log_interval: Duration,
    /// How long one `request-task` waits for work.
    pub poll_wait: Duration,
    /// The fleet's enrolment token (role `worker`), to register with; `None`
    /// for a broker with auth off. Once registered, the agent acts with the
    /// secret the broker gave it, kept in the work directory.
    pub enrolment_token: Option<String>,
    /// A PEM file of certificate authorities to trust for an `https://`
    /// broker, on top of the system's (`--ca`).
    pub ca_file: Option<PathBuf>,
    /// The most bytes of blend files fetched from the broker kept in the
    /// work directory (`--cache-size`; [`crate::cache::DEFAULT_CACHE_SIZE`]).
    pub cache_size: u64,
    /// Whether to send the broker previews of the frames saved
    /// ([`crate::preview`]).
    pub previews: bool,
    /// Whether and how long Blender stays loaded between the chunks of a
    /// render (`--warm`, `--warm-idle`, `--warm-max-rss`, `--warm-max-chunks`).
    pub warm: WarmConfig,
    /// The hours it takes new work in, its time zone, and whether a task
    /// running when they end is handed back (`--available`, `--time-zone`,
    /// `--strict-hours`); told to the broker at every start.
    pub hours: WorkerHours,
}

/// How the agent is told to stop.
#[derive(Debug, Clone, Default)]
pub struct StopSignals {
    /// Take no new work.
    pub stop: CancellationToken,
    /// Also abort the task at hand and hand it back to the broker.
    pub abort: CancellationToken,
}

/// What one agent did before it stopped: with GPU slots, the sums over
/// its slots, and what each did in [`AgentSummary::slots`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSummary {
    /// The worker the agent was at the broker; `None` with GPU slots (each
    /// is a worker of its own, see `slots`) or when it never registered.
    pub worker_id: Option<Uuid>,
    pub completed: u64,
    pub failed: u64,
    /// Tasks the broker took away (abort or stale lease).
    pub aborted: u64,
    /// Tasks handed back because the agent stopped.
    pub released: u64,
    /// Blend files fetched from the broker (the others came from the cache).
    pub blends_downloaded: u64,
    /// With GPU slots (`--gpus`), what each did, in the order of its GPU
    /// in `--gpus`; empty without.
    pub slots: Vec<SlotSummary>,
}

impl AgentSummary {
    /// Counts what `other` did too (its worker and slots aside).
    fn add(&mut self, other: &AgentSummary) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.aborted += other.aborted;
        self.released += other.released;
        self.blends_downloaded += other.blends_downloaded;
    }
}

/// What one GPU slot did before it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSummary {
    /// Its worker's name at the broker (`<agent name>/gpu<index>`).
    pub name: String,
    /// Its GPU, as `nvidia-smi` numbers it.
    pub gpu: u32,
    /// Its worker and counts (with no slots of its own).
    pub summary: AgentSummary,
}

/// One worker agent: one worker at the broker, or with GPU slots one per
/// GPU, running side by side on one runtime with one blend cache and one set
/// of stop signals.
pub struct Agent {
    slots: Vec<Slot>,
    signals: StopSignals,
    /// Held while the agent lives: its saved reports, its slots' folders and
    /// Blender's session files in the work directory are its alone.
    _work_dir_lock: Flock<std::fs::File>,
}

/// One worker at the broker: its registration and secret, its leases and
/// heartbeats, its undelivered reports and its Blender, all in a work
/// directory of its own (the agent's, or with GPU slots `gpu<index>` in it).
struct Slot {
    /// This slot's: its name, tags and work directory are its own.
    config: AgentConfig,
    /// Its GPU, with GPU slots.
    gpu: Option<u32>,
    client: BrokerClient,
    signals: StopSignals,
    summary: AgentSummary,
    /// The client with the enrolment token, to register with.
    enrolment: BrokerClient,
    /// Blends fetched from the broker by hash, shared by the agent's slots.
    cache: Arc<BlendCache>,
    /// Starts Blender for each chunk, cold or in the render's warm process.
    launcher: Launcher,
    /// The task kinds this worker runs, as it announces them to the broker.
    kinds: Vec<TaskKind>,
}

/// The lock file that keeps a work directory to one agent.
const LOCK_FILE: &str = "agent.lock";
/// The tag every GPU slot carries on top of the agent's: renders that need a
/// GPU require it.
pub const GPU_TAG: &str = "gpu";
/// Who the agent is at its broker: kept across restarts, so that an agent
/// restarted on the same work directory is the same worker again.
const IDENTITY_FILE: &str = "identity.json";

/// The worker this agent is, as the broker registered it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    /// The broker that knows it.
    broker: String,
    worker_id: Uuid,
    /// Its own credential; `None` from a broker with auth off.
    secret: Option<String>,
    /// The task kinds it announced (absent from agents before kinds:
    /// Blender's alone).
    #[serde(default = "blender_only")]
    kinds: Vec<TaskKind>,
    /// The platform it announced (absent from agents before path mapping,
    /// whose workers the broker counts as Linux ones).
    #[serde(default)]
    platform: Option<Platform>,
}

/// The platform this agent renders on, as the broker's path variables name
/// it; an operating system they have no paths for counts as Linux, whose
/// paths it shares.
pub fn this_platform() -> Platform {
    Platform::of_os(std::env::consts::OS).unwrap_or_default()
}

fn blender_only() -> Vec<TaskKind> {
    vec![TaskKind::Blender]
}

/// The name, tags and work directory of the slot on `gpu` of an agent set
/// up as `config`.
pub fn gpu_slot_config(config: &AgentConfig, gpu: u32) -> AgentConfig {
    let mut tags = config.tags.clone();
    if !tags.iter().any(|t| t == GPU_TAG) {
        tags.push(GPU_TAG.to_string());
    }
    AgentConfig {
        name: format!("{}/gpu{gpu}", config.name),
        tags,
        work_dir: config.work_dir.join(format!("gpu{gpu}")),
        ..config.clone()
    }
}

impl Agent {
    /// An agent that is one worker at the broker. Checks Blender before
    /// anything else, so a broken setup is reported before the agent
    /// registers.
    pub async fn new(config: AgentConfig, signals: StopSignals) -> anyhow::Result<Self> {
        Self::build(config, &[], signals).await
    }

    /// An agent with one slot per GPU in `gpus` (`--gpus`), each a worker of
    /// its own to the broker: named `<name>/gpu<index>`, with the agent's
    /// tags and `gpu`, its own secret, leases, heartbeats and undelivered
    /// reports under `<work-dir>/gpu<index>/`, and its Blender pinned to its
    /// GPU. They share the blend cache and the stop signals. Without GPUs
    /// it is [`Agent::new`].
    pub async fn with_gpu_slots(
        config: AgentConfig,
        gpus: &[u32],
        signals: StopSignals,
    ) -> anyhow::Result<Self> {
        Self::build(config, gpus, signals).await
    }

    async fn build(
        config: AgentConfig,
        gpus: &[u32],
        signals: StopSignals,
    ) -> anyhow::Result<Self> {
        let version = blender::check_blender(&config.blender).await?;
        tracing::info!(blender = %config.blender.display(), %version, "Blender found");
        let kinds = match video::check_ffmpeg(&config.ffmpeg).await {
            Ok(version) => {
                tracing::info!(ffmpeg = %config.ffmpeg.display(), %version, "ffmpeg found; this worker also makes renders' videos");
                vec![TaskKind::Blender, TaskKind::Ffmpeg]
            }
            Err(e) => {
                tracing::warn!("{e:#}");
                vec![TaskKind::Blender]
            }
        };
        std::fs::create_dir_all(&config.work_dir).with_context(|| {
            format!("creating the work directory {}", config.work_dir.display())
        })?;
        let lock_path = config.work_dir.join(LOCK_FILE);
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let work_dir_lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow::anyhow!(
                "another renderfarm-worker uses the work directory {} ({e}); give each agent its own --work-dir (or --name)",
                config.work_dir.display()
            )
        })?;
        warn_of_stranded_reports(&config.work_dir, gpus);
        let options = ClientOptions {
            ca_file: config.ca_file.clone(),
        };
        let enrolment = BrokerClient::with_options(&config.broker, &options)?
            .with_token(config.enrolment_token.clone());
        let cache = BlendCache::open(&config.work_dir.join(CACHE_DIR), config.cache_size)?;
        let slot = |config: AgentConfig, gpu: Option<u32>| -> anyhow::Result<Slot> {
            std::fs::create_dir_all(config.work_dir.join(PENDING_DIR)).with_context(|| {
                format!("creating the work directory {}", config.work_dir.display())
            })?;
            let mut launcher =
                Launcher::new(config.blender.clone(), config.work_dir.clone(), config.warm);
            if let Some(gpu) = gpu {
                launcher = launcher.on_gpu(gpu);
            }
            Ok(Slot {
                cache: cache.clone(),
                launcher,
                kinds: kinds.clone(),
                gpu,
                client: enrolment.clone(),
                enrolment: enrolment.clone(),
                signals: signals.clone(),
                summary: AgentSummary::default(),
                config,
            })
        };
        let slots = if gpus.is_empty() {
            vec![slot(config, None)?]
        } else {
            gpus.iter()
                .map(|&gpu| slot(gpu_slot_config(&config, gpu), Some(gpu)))
                .collect::<anyhow::Result<_>>()?
        };
        Ok(Self {
            slots,
            signals,
            _work_dir_lock: work_dir_lock,
        })
    }

    /// Runs until told to stop; returns what it did. Fails when the broker
    /// cannot be talked to as set up (its TLS certificate is not trusted,
    /// the enrolment token is refused); with GPU slots, one slot failing so
    /// stops the others too (they hand their tasks back).
    pub async fn run(mut self) -> anyhow::Result<AgentSummary> {
        if self.slots.len() == 1 && self.slots[0].gpu.is_none() {
            let slot = self.slots.remove(0);
            return slot.run().await;
        }
        let mut running = tokio::task::JoinSet::new();
        for slot in std::mem::take(&mut self.slots) {
            let (name, gpu) = (slot.config.name.clone(), slot.gpu.unwrap_or_default());
            let span = tracing::info_span!("slot", gpu);
            running.spawn(async move { (name, gpu, slot.run().instrument(span).await) });
        }
        let mut total = AgentSummary::default();
        let mut first_error: Option<anyhow::Error> = None;
        while let Some(joined) = running.join_next().await {
            let (name, gpu, outcome) = match joined {
                Ok(ended) => ended,
                Err(e) => {
                    self.signals.stop.cancel();
                    self.signals.abort.cancel();
                    first_error.get_or_insert(anyhow::anyhow!("a GPU slot ended abnormally: {e}"));
                    continue;
                }
            };
            match outcome {
                Ok(summary) => {
                    total.add(&summary);
                    total.slots.push(SlotSummary { name, gpu, summary });
                }
                Err(e) => {
                    // The others would meet the same broker the same way.
                    self.signals.stop.cancel();
                    self.signals.abort.cancel();
                    first_error.get_or_insert(e.context(format!("GPU slot {name}")));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        total.slots.sort_by_key(|s| s.gpu);
        Ok(total)
    }
}

/// Reports saved by this work directory's other shape (one worker, or GPU
/// slots) are sent with that worker's secret alone: say where they wait.
fn warn_of_stranded_reports(work_dir: &Path, gpus: &[u32]) {
    let mut folders: Vec<PathBuf> = Vec::new();
    if gpus.is_empty() {
        if let Ok(entries) = std::fs::read_dir(work_dir) {
            folders.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("gpu"))
                    .map(|e| e.path().join(PENDING_DIR)),
            );
        }
    } else {
        folders.push(work_dir.join(PENDING_DIR));
    }
    for folder in folders {
        let waiting = std::fs::read_dir(&folder).map_or(0, |d| d.count());
        if waiting > 0 {
            let shape = if gpus.is_empty() {
                "with --gpus"
            } else {
                "without --gpus"
            };
            tracing::warn!(folder = %folder.display(), waiting, "reports saved when this agent ran {shape} wait in this folder; they are sent when it runs {shape} again");
        }
    }
}

impl Slot {
    /// Runs until told to stop; returns what it did. Fails when the broker
    /// cannot be talked to as set up (its TLS certificate is not trusted).
    async fn run(mut self) -> anyhow::Result<AgentSummary> {
        let known = match self.saved_identity() {
            Some(id) => self.report_hours(id).await?,
            None => None,
        };
        let Some(mut worker_id) = (match known {
            Some(id) => Some(id),
            None => self.register().await?,
        }) else {
            return Ok(self.summary);
        };
        self.deliver_saved_reports().await;
        let mut retry = backoff();
        while !self.signals.stop.is_cancelled() {
            // A trace of its own for each claim: the chunk it gets, its
            // reports and uploads carry it, so they read as one trace.
            self.client.set_traceparent(Some(new_traceparent()));
            let answer = tokio::select! {
                _ = self.signals.stop.cancelled() => {
                    self.hand_back_abandoned_claim(worker_id).await;
                    break;
                }
                answer = self.client.request_task(worker_id, self.config.poll_wait) => answer,
            };
            match answer {
                Ok(Some(assignment)) => {
                    retry = backoff();
                    let span = tracing::info_span!(
                        "task",
                        worker_id = %worker_id,
                        task_id = %assignment.task_id,
                        render_id = %assignment.render_id,
                        lease_id = %assignment.lease_id
                    );
                    self.run_task(worker_id, assignment).instrument(span).await;
                }
                Ok(None) => retry = backoff(),
                Err(ClientError::NotFound(message)) | Err(ClientError::Unauthorized(message)) => {
                    tracing::warn!(%message, "the broker no longer knows this worker (or its secret was revoked); registering again");
                    match self.register().await? {
                        Some(id) => worker_id = id,
                        None => break,
                    }
                }
                Err(e @ ClientError::UntrustedCertificate { .. }) => return Err(e.into()),
                Err(e) => {
                    let delay = retry_delay(retry.next(), &e);
                    tracing::warn!(error = %e, ?delay, "cannot get work; trying again");
                    self.pause(delay).await;
                }
            }
        }
        tracing::info!(summary = ?self.summary, "agent stopped");
        Ok(self.summary)
    }

    /// A long poll dropped at stop goes on at the broker, which cannot see
    /// that the connection is gone (actix-web runs the handler to its end),
    /// and may still hand this worker a task nobody will render. Drain the
    /// worker so the poll takes nothing more, then ask once without waiting:
    /// a worker holding a task is answered with it, and it goes straight back.
    async fn hand_back_abandoned_claim(&mut self, worker_id: Uuid) {
        if let Err(e) = self
            .client
            .change_worker(worker_id, WorkerAction::Drain)
            .await
        {
            tracing::warn!(error = %e, "could not tell the broker this worker stops; a task it hands out now waits for the worker timeout");
            return;
        }
        match self.client.request_task(worker_id, Duration::ZERO).await {
            Ok(None) => {}
            Ok(Some(assignment)) => {
                tracing::info!(task_id = %assignment.task_id, "handing back a task given to the abandoned request");
                self.summary.released += 1;
                self.deliver(FinalReport::Release {
                    task_id: assignment.task_id,
                    body: ReleaseReport {
                        lease_id: assignment.lease_id,
                        log: Some("the worker agent stopped before it started this task\n".into()),
                    },
                })
                .await;
            }
            Err(e) => tracing::warn!(error = %e, "could not check for a task handed out at stop"),
        }
    }

    /// Sleeps, unless told to stop.
    async fn pause(&self, delay: Duration) {
        tokio::select! {
            _ = self.signals.stop.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    /// The worker this work directory was registered as at this broker,
    /// if any; the agent acts with its secret from now on.
    fn saved_identity(&mut self) -> Option<Uuid> {
        let path = self.config.work_dir.join(IDENTITY_FILE);
        let text = std::fs::read_to_string(&path).ok()?;
        let identity: Identity = match serde_json::from_str(&text) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable worker identity; registering anew");
                return None;
            }
        };
        if identity.broker != self.enrolment.base() {
            tracing::info!(was = %identity.broker, "the worker identity is for another broker; registering anew");
            return None;
        }
        // The broker knows a worker's kinds from its registration alone.
        if identity.kinds != self.kinds {
            tracing::info!(was = ?identity.kinds, now = ?self.kinds, "the task kinds this worker runs changed; registering anew");
            return None;
        }
        // Nor its platform: paths are given to it in the form it announced.
        if identity.platform != Some(this_platform()) {
            tracing::info!(was = ?identity.platform, now = ?this_platform(), "this worker's identity has no or another platform; registering anew");
            return None;
        }
        tracing::info!(worker_id = %identity.worker_id, "the same worker as before (identity kept in the work directory)");
        self.client = self.enrolment.clone().with_token(identity.secret);
        self.summary.worker_id = Some(identity.worker_id);
        Some(identity.worker_id)
    }

    /// Tells the broker the hours this start was given (a registration kept
    /// from an earlier start carries that start's), retrying while it is
    /// unreachable. `None` when the broker no longer knows the worker, or
    /// the agent is told to stop first: register anew.
    async fn report_hours(&mut self, worker_id: Uuid) -> anyhow::Result<Option<Uuid>> {
        let mut retry = backoff();
        loop {
            match self.client.set_worker_hours(worker_id, &self.config.hours).await {
                Ok(_) => {
                    self.resume(worker_id).await;
                    return Ok(Some(worker_id));
                }
                Err(ClientError::NotFound(message) | ClientError::Unauthorized(message)) => {
                    tracing::info!(%message, "the broker no longer knows this worker; registering anew");
                    return Ok(None);
                }
                Err(e @ ClientError::UntrustedCertificate { .. }) => return Err(e.into()),
                Err(e @ ClientError::Rejected(..)) => anyhow::bail!(
                    "the broker at {} refused the hours {:?} in the time zone {:?}: {e}. Change --available or --time-zone",
                    self.client.base(),
                    self.config.hours.available,
                    self.config.hours.time_zone
                ),
                Err(e) => {
                    let delay = retry_delay(retry.next(), &e);
                    tracing::warn!(error = %e, ?delay, "cannot tell the broker this worker's hours; trying again");
                    if self.signals.stop.is_cancelled() {
                        return Ok(None);
                    }
                    self.pause(delay).await;
                }
            }
        }
    }

    /// Takes the worker out of the drain its agent put it in when it last
    /// stopped. An operator's drain or disable stands (the broker refuses),
    /// and is only logged: the worker waits for an operator to enable it.
    async fn resume(&mut self, worker_id: Uuid) {
        match self
            .client
            .change_worker(worker_id, WorkerAction::Enable)
            .await
        {
            Ok(worker) => {
                tracing::info!(status = worker.status.as_str(), "taking work again")
            }
            Err(e) => {
                tracing::warn!(error = %e, "this worker stays as an operator left it until an operator enables it")
            }
        }
    }

    /// Keeps the identity where only this user can read it: the secret is
    /// the worker's credential.
    fn save_identity(&self, identity: &Identity) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.config.work_dir.join(IDENTITY_FILE);
        let partial = path.with_extension("json.partial");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("writing {}", partial.display()))?;
        file.write_all(serde_json::to_string(identity)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Registers, retrying while the broker is unreachable. `None` when told
    /// to stop first; an error when retrying cannot help (the enrolment
    /// token refused, an untrusted certificate).
    async fn register(&mut self) -> anyhow::Result<Option<Uuid>> {
        let spec = WorkerSpec {
            name: self.config.name.clone(),
            tags: self.config.tags.clone(),
            kinds: self.kinds.clone(),
            time_zone: self.config.hours.time_zone.clone(),
            available: self.config.hours.available.clone(),
            strict_hours: self.config.hours.strict_hours,
            platform: this_platform(),
        };
        let mut retry = backoff();
        loop {
            match self.enrolment.register(&spec).await {
                Ok(registered) => {
                    let worker = registered.worker;
                    tracing::info!(worker_id = %worker.id, name = %worker.name, broker = %self.client.base(), "registered");
                    let identity = Identity {
                        broker: self.enrolment.base().to_string(),
                        worker_id: worker.id,
                        secret: registered.secret,
                        kinds: self.kinds.clone(),
                        platform: Some(spec.platform),
                    };
                    if let Err(e) = self.save_identity(&identity) {
                        tracing::warn!(error = %e, "could not keep the worker identity; a restart will register a new worker");
                    }
                    self.client = self.enrolment.clone().with_token(identity.secret);
                    self.summary.worker_id = Some(worker.id);
                    return Ok(Some(worker.id));
                }
                Err(e @ (ClientError::Unauthorized(_) | ClientError::Forbidden(_))) => {
                    anyhow::bail!(
                        "cannot register with the broker at {}: {e}. Give the agent the fleet's enrolment token with --token (or RENDERFARM_TOKEN); an admin makes one with: renderfarm token create --name fleet --role worker",
                        self.enrolment.base()
                    );
                }
                Err(e @ ClientError::UntrustedCertificate { .. }) => return Err(e.into()),
                // Asking again cannot help (a name or tags it refuses): say
                // what it refused rather than retry for ever.
                Err(e @ ClientError::Rejected(..)) => {
                    anyhow::bail!(
                        "the broker at {} refused to register the worker {:?} with the tags {:?}: {e}. Change --name, --tags, --available or --time-zone",
                        self.enrolment.base(),
                        spec.name,
                        spec.tags
                    );
                }
                Err(e) => {
                    let delay = retry_delay(retry.next(), &e);
                    tracing::warn!(error = %e, ?delay, "cannot register; trying again");
                    if self.signals.stop.is_cancelled() {
                        return Ok(None);
                    }
                    self.pause(delay).await;
                }
            }
        }
    }

    async fn run_task(&mut self, worker_id: Uuid, assignment: Assignment) {
        let kind = assignment.kind;
        tracing::info!(kind = kind.as_str(), blend = %assignment.blend_file, from = assignment.frame_start, to = assignment.frame_end, "starting a task");
        let mut lease = self.lease(worker_id, &assignment);
        // One module per kind: the next kind is one more arm.
        let ending = match kind {
            TaskKind::Blender => {
                let job = chunk::ChunkJob {
                    client: &self.client,
                    cache: &self.cache,
                    launcher: &mut self.launcher,
                    blender: &self.config.blender,
                    work_dir: &self.config.work_dir,
                    previews: self.config.previews,
                    blends_downloaded: &mut self.summary.blends_downloaded,
                };
                chunk::run(job, &mut lease, &assignment).await
            }
            TaskKind::Ffmpeg => {
                let job = video::VideoJob {
                    client: &self.client,
                    ffmpeg: &self.config.ffmpeg,
                    work_dir: &self.config.work_dir,
                };
                video::run(job, &mut lease, &assignment).await
            }
        };
        match ending {
            Ending::Aborted => {
                self.summary.aborted += 1;
                tracing::info!(
                    kind = kind.as_str(),
                    "task taken away by the broker; its process stopped"
                );
            }
            Ending::Report(report) => {
                match &report {
                    FinalReport::Complete { .. } => self.summary.completed += 1,
                    FinalReport::Fail { .. } => self.summary.failed += 1,
                    FinalReport::Release { .. } => self.summary.released += 1,
                }
                self.deliver(report).await;
            }
        }
    }

    /// The lease of assignment `a`, kept while its work runs.
    fn lease(&self, worker_id: Uuid, a: &Assignment) -> Lease {
        Lease::new(
            self.client.clone(),
            worker_id,
            a,
            self.config.heartbeat,
            self.config.log_interval,
            self.signals.abort.clone(),
        )
    }

    /// Sends a final report until the broker takes it (or refuses it for
    /// good). A stopping agent keeps trying for a while, then saves the report
    /// to send at its next start.
    async fn deliver(&mut self, report: FinalReport) {
        let mut retry = backoff();
        let mut stop_deadline = None;
        loop {
            match report.send(&self.client).await {
                Ok(()) => return,
                Err(ClientError::Conflict(message)) | Err(ClientError::NotFound(message)) => {
                    tracing::warn!(%message, "the broker no longer takes reports for this task; dropping it");
                    return;
                }
                Err(ClientError::Rejected(status, message)) => {
                    tracing::error!(%status, %message, "the broker rejected the report; dropping it");
                    return;
                }
                Err(ClientError::Forbidden(message)) | Err(ClientError::Unauthorized(message)) => {
                    tracing::error!(%message, "the broker does not take this worker's report any more (its secret was revoked or the task is another's); dropping it");
                    return;
                }
                Err(e) => {
                    let delay = retry_delay(retry.next(), &e);
                    tracing::warn!(error = %e, ?delay, "report not delivered; trying again");
                    if self.signals.stop.is_cancelled() {
                        let deadline = *stop_deadline.get_or_insert_with(|| {
                            tokio::time::Instant::now() + STOP_DELIVERY_GRACE
                        });
                        if tokio::time::Instant::now() + delay > deadline {
                            self.save_report(&report);
                            return;
                        }
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn pending_path(&self, task_id: Uuid) -> PathBuf {
        self.config
            .work_dir
            .join(PENDING_DIR)
            .join(format!("{task_id}.json"))
    }

    fn save_report(&self, report: &FinalReport) {
        let path = self.pending_path(report.task_id());
        let written = serde_json::to_vec(report)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| write_atomically(&path, &bytes));
        match written {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "broker unreachable; report saved to send at the next start")
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "could not save an undelivered report")
            }
        }
    }

    /// Sends the reports an earlier run could not deliver.
    async fn deliver_saved_reports(&mut self) {
        let dir = self.config.work_dir.join(PENDING_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let report = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<FinalReport>(&bytes).ok());
            match report {
                Some(report) => {
                    tracing::info!(task_id = %report.task_id(), "sending a report saved by an earlier run");
                    self.deliver(report).await;
                }
                None => {
                    tracing::warn!(path = %path.display(), "unreadable saved report; removing it")
                }
            }
            // Delivered, refused for good, or saved again under the same name.
            if !self.signals.stop.is_cancelled() {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A fresh W3C trace context: a random trace id, a random parent id (the
/// chunk's), sampled.
fn new_traceparent() -> String {
    let trace = Uuid::new_v4().simple().to_string();
    let parent = Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-01", &parent[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use renderfarm_wire::FailReport;

    #[test]
    fn final_reports_survive_a_round_trip_through_disk() {
        let report = FinalReport::Fail {
            task_id: Uuid::nil(),
            body: FailReport {
                lease_id: Uuid::nil(),
                exit_code: Some(1),
                reason: "r".into(),
                log: Some("l".into()),
            },
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        write_atomically(&path, &serde_json::to_vec(&report).unwrap()).unwrap();
        let back: FinalReport = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, report);
    }
}
