//! What every kind of task shares on this agent, whatever runs it: its log,
//! its lease kept alive (heartbeats, progress, the broker taking it away),
//! its scratch folder, and how it ended.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use renderfarm_client::{BrokerClient, ClientError};
use renderfarm_wire::{
    Assignment, CompleteReport, FailReport, Heartbeat, HeartbeatAction, ProgressReport,
    ReleaseReport,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::retry::quiet_after;

/// Lines of Blender's output sent as the reason of a failure.
pub const FAILURE_TAIL_LINES: usize = 50;
/// The most log text held while the broker is away; older text is dropped
/// (with a marker) beyond it, the failure tail is always kept.
const MAX_UNSENT_LOG: usize = 4 * 1024 * 1024;

/// A final report, kept on disk while it cannot be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum FinalReport {
    Complete { task_id: Uuid, body: CompleteReport },
    Fail { task_id: Uuid, body: FailReport },
    Release { task_id: Uuid, body: ReleaseReport },
}

impl FinalReport {
    pub(crate) fn task_id(&self) -> Uuid {
        match self {
            FinalReport::Complete { task_id, .. }
            | FinalReport::Fail { task_id, .. }
            | FinalReport::Release { task_id, .. } => *task_id,
        }
    }

    pub(crate) async fn send(&self, client: &BrokerClient) -> Result<(), ClientError> {
        match self {
            FinalReport::Complete { task_id, body } => {
                client.complete(*task_id, body).await.map(drop)
            }
            FinalReport::Fail { task_id, body } => client.fail(*task_id, body).await.map(drop),
            FinalReport::Release { task_id, body } => {
                client.release(*task_id, body).await.map(drop)
            }
        }
    }
}

/// How a task ended on this agent.
pub(crate) enum Ending {
    Report(FinalReport),
    /// The broker took the task away; nothing more is sent under its lease.
    Aborted,
}

impl Ending {
    /// The task failed on this agent: `reason` is what operators read.
    pub(crate) fn fail(
        a: &Assignment,
        exit_code: Option<i64>,
        reason: String,
        log: &mut TaskLog,
    ) -> Self {
        Ending::Report(FinalReport::Fail {
            task_id: a.task_id,
            body: FailReport {
                lease_id: a.lease_id,
                exit_code,
                reason,
                log: Some(log.take_unsent()),
            },
        })
    }

    /// The task is done, with the rest of its log.
    pub(crate) fn complete(a: &Assignment, log: &mut TaskLog) -> Self {
        Ending::Report(FinalReport::Complete {
            task_id: a.task_id,
            body: CompleteReport {
                lease_id: a.lease_id,
                log: Some(log.take_unsent()),
            },
        })
    }

    /// The agent stops: the task goes back to the broker for another worker.
    pub(crate) fn release(a: &Assignment, log: &mut TaskLog) -> Self {
        log.push("renderfarm-worker: stopping; the task is handed back to the broker\n".into());
        Ending::Report(FinalReport::Release {
            task_id: a.task_id,
            body: ReleaseReport {
                lease_id: a.lease_id,
                log: Some(log.take_unsent()),
            },
        })
    }
}

/// Why work under a lease stopped before it was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupted {
    /// The broker took the task away (an abort, a stale lease): nothing
    /// more is sent under it.
    Lost,
    /// The agent is stopping: the task is to be handed back.
    Stopping,
}

impl Interrupted {
    /// How the task ends for this interruption.
    pub(crate) fn ending(self, a: &Assignment, log: &mut TaskLog) -> Ending {
        match self {
            Interrupted::Lost => Ending::Aborted,
            Interrupted::Stopping => Ending::release(a, log),
        }
    }
}

/// What is due next under a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Tell the broker this worker is alive, with the frames done.
    Heartbeat,
    /// Send the new log lines and the frames done.
    Flush,
    /// The agent stops: hand the task back.
    Stop,
}

/// A task's lease, kept while its work runs: heartbeats every `heartbeat`,
/// the log and frames done every `log_interval`, quiet for as long as the
/// broker asked (`Retry-After`), and the word when the task is taken away.
pub(crate) struct Lease {
    client: BrokerClient,
    worker_id: Uuid,
    task_id: Uuid,
    lease_id: Uuid,
    heartbeat: tokio::time::Interval,
    flush: tokio::time::Interval,
    quiet_until: Option<tokio::time::Instant>,
    reported_frames: i64,
    /// Cancelled when the agent stops and hands its task back.
    abort: CancellationToken,
}

impl Lease {
    pub(crate) fn new(
        client: BrokerClient,
        worker_id: Uuid,
        a: &Assignment,
        heartbeat: Duration,
        log_interval: Duration,
        abort: CancellationToken,
    ) -> Self {
        Self {
            client,
            worker_id,
            task_id: a.task_id,
            lease_id: a.lease_id,
            heartbeat: tokio::time::interval(heartbeat),
            flush: tokio::time::interval(log_interval),
            quiet_until: None,
            reported_frames: 0,
            abort,
        }
    }

    /// Waits until a heartbeat or a flush is due, or the agent stops.
    pub(crate) async fn due(&mut self) -> Due {
        tokio::select! {
            _ = self.abort.cancelled() => Due::Stop,
            _ = self.heartbeat.tick() => Due::Heartbeat,
            _ = self.flush.tick() => Due::Flush,
        }
    }

    /// Does what is `due`; `Err` once the broker took the task away or the
    /// agent stops. A report the broker could not take is kept for the next
    /// time (the log keeps its unsent lines).
    pub(crate) async fn keep(
        &mut self,
        due: Due,
        log: &mut TaskLog,
        frames_done: i64,
    ) -> Result<(), Interrupted> {
        // Quiet for as long as the broker asked (over its rate limit, its
        // store away); the log keeps what was not sent.
        let quiet = self
            .quiet_until
            .is_some_and(|t| tokio::time::Instant::now() < t);
        match due {
            Due::Stop => return Err(Interrupted::Stopping),
            _ if quiet => {}
            Due::Heartbeat => {
                let beat = Heartbeat {
                    task_id: Some(self.task_id),
                    lease_id: Some(self.lease_id),
                    frames_done: Some(frames_done),
                };
                match self.client.heartbeat(self.worker_id, &beat).await {
                    Ok(reply) if reply.action == HeartbeatAction::Abort => {
                        return Err(Interrupted::Lost)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.quiet_until = quiet_after(&e);
                        tracing::warn!(error = %e, "heartbeat not delivered; working on");
                    }
                }
            }
            Due::Flush => {
                if !log.has_unsent() && frames_done == self.reported_frames {
                    return Ok(());
                }
                let report = ProgressReport {
                    lease_id: self.lease_id,
                    frames_done,
                    log: Some(log.unsent().to_string()),
                };
                match self.client.progress(self.task_id, &report).await {
                    Ok(_) => {
                        log.mark_sent();
                        self.reported_frames = frames_done;
                    }
                    Err(
                        ClientError::Conflict(_)
                        | ClientError::NotFound(_)
                        | ClientError::Forbidden(_)
                        | ClientError::Unauthorized(_),
                    ) => return Err(Interrupted::Lost),
                    Err(e) => {
                        self.quiet_until = quiet_after(&e);
                        tracing::warn!(error = %e, "progress not delivered; keeping the log to send later");
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs `work` to its end while keeping the lease (with `frames_done`
    /// reported); `Err` when the task is taken away or the agent stops
    /// first, and `work` is dropped.
    pub(crate) async fn hold<T>(
        &mut self,
        work: impl Future<Output = T>,
        log: &mut TaskLog,
        frames_done: i64,
    ) -> Result<T, Interrupted> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                due = self.due() => self.keep(due, log, frames_done).await?,
            }
        }
    }
}

/// A folder of one task's own under the work directory,
/// `<work-dir>/<kind>/<task_id>/`: made empty at the start (what a killed
/// earlier run left is not this run's), removed with what is left in it when
/// the task ends on this agent, however it ends.
pub(crate) struct TaskDir(PathBuf);

impl TaskDir {
    /// Makes it, empty; the reason to fail the task when it cannot.
    pub(crate) fn create(work_dir: &Path, kind: &str, task_id: Uuid) -> Result<Self, String> {
        // Blender and ffmpeg run in other folders: a relative --work-dir
        // would otherwise be taken twice.
        let work_dir = std::path::absolute(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
        let dir = Self(work_dir.join(kind).join(task_id.to_string()));
        let made = match std::fs::remove_dir_all(&dir.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::create_dir_all(&dir.0),
        };
        match made {
            Ok(()) => Ok(dir),
            Err(e) => Err(format!(
                "could not make the task's folder {}: {e}",
                dir.0.display()
            )),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A task's log: what is not yet sent, and the last lines for a failure.
#[derive(Debug, Default)]
pub(crate) struct TaskLog {
    unsent: String,
    tail: VecDeque<String>,
}

impl TaskLog {
    pub(crate) fn push(&mut self, line: String) {
        if self.unsent.len() + line.len() > MAX_UNSENT_LOG {
            let keep_from = self.unsent.len() / 2;
            let cut = (keep_from..self.unsent.len())
                .find(|i| self.unsent.is_char_boundary(*i))
                .unwrap_or(self.unsent.len());
            self.unsent = format!(
                "[renderfarm-worker: earlier output dropped while the broker was unreachable]\n{}",
                &self.unsent[cut..]
            );
        }
        self.unsent.push_str(&line);
        if self.tail.len() == FAILURE_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    pub(crate) fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }

    pub(crate) fn unsent(&self) -> &str {
        &self.unsent
    }

    pub(crate) fn mark_sent(&mut self) {
        self.unsent.clear();
    }

    pub(crate) fn take_unsent(&mut self) -> String {
        std::mem::take(&mut self.unsent)
    }

    pub(crate) fn tail(&self) -> String {
        self.tail
            .iter()
            .map(|l| l.trim_end_matches(['\r', '\n']))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_last_lines_for_a_failure_and_everything_unsent() {
        let mut log = TaskLog::default();
        for i in 0..120 {
            log.push(format!("line {i}\n"));
        }
        let tail = log.tail();
        assert_eq!(tail.lines().count(), FAILURE_TAIL_LINES);
        assert!(tail.starts_with("line 70"), "{tail}");
        assert!(tail.ends_with("line 119"));
        assert!(log.unsent().starts_with("line 0\n"));
        log.mark_sent();
        assert!(!log.has_unsent());
        log.push("more\n".into());
        assert_eq!(log.take_unsent(), "more\n");
    }

    #[test]
    fn an_unsent_log_is_bounded_while_the_broker_is_away() {
        let mut log = TaskLog::default();
        let line = "x".repeat(1000) + "\n";
        for _ in 0..10_000 {
            log.push(line.clone());
        }
        assert!(log.unsent().len() <= MAX_UNSENT_LOG + line.len());
        assert!(log
            .unsent()
            .starts_with("[renderfarm-worker: earlier output dropped"));
    }

    #[test]
    fn a_task_dir_starts_empty_and_goes_with_the_task() {
        let work = tempfile::tempdir().unwrap();
        let task = Uuid::new_v4();
        let leftover = work.path().join("video").join(task.to_string());
        std::fs::create_dir_all(&leftover).unwrap();
        std::fs::write(leftover.join("old.png"), b"x").unwrap();
        let dir = TaskDir::create(work.path(), "video", task).unwrap();
        assert_eq!(dir.path(), leftover);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        std::fs::write(dir.path().join("new.png"), b"y").unwrap();
        drop(dir);
        assert!(!leftover.exists());
    }
}
