//! The one writer thread: group commit of every write, and checkpoints off the commit path.

use crate::store::{StoreError, StoreResult};
use rusqlite::Connection;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The most writes committed together.
pub(super) const MAX_BATCH: usize = 512;

/// A write waiting for the writer thread.
pub(super) trait WriteJob: Send {
    /// Runs the write inside the open transaction; true when it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

pub(super) struct Job<R, F> {
    pub(super) work: Option<F>,
    pub(super) result: Option<StoreResult<R>>,
    pub(super) reply: oneshot::Sender<StoreResult<R>>,
}

impl<R, F> WriteJob for Job<R, F>
where
    R: Send,
    F: FnOnce(&Connection) -> StoreResult<R> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = catch_unwind(AssertUnwindSafe(|| work(conn))).unwrap_or_else(|_| {
            Err(StoreError::Unexpected(anyhow::anyhow!(
                "a store write panicked; it was rolled back"
            )))
        });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let result = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(e), _) => Err(StoreError::Unavailable(format!(
                "the change could not be committed: {e}"
            ))),
            (Ok(()), None) => Err(StoreError::Unexpected(anyhow::anyhow!(
                "a store write was never run"
            ))),
        };
        // The caller may have gone away (client disconnected); the write stands.
        let _ = self.reply.send(result);
    }
}

pub(super) fn writer_loop(conn: Connection, mut jobs: mpsc::Receiver<Box<dyn WriteJob>>) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let commit = run_batch(&conn, &mut batch);
        for job in batch.drain(..) {
            job.finish(commit.clone());
        }
    }
}

pub(super) fn run_batch(conn: &Connection, batch: &mut [Box<dyn WriteJob>]) -> Result<(), String> {
    let mut run = || -> rusqlite::Result<()> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        for job in batch.iter_mut() {
            conn.prepare_cached("SAVEPOINT job")?.execute([])?;
            if !job.run(conn) {
                conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            }
            conn.prepare_cached("RELEASE job")?.execute([])?;
        }
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    };
    run().map_err(|e| {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        tracing::error!(error = %e, "sqlite batch failed and was rolled back");
        e.to_string()
    })
}

/// How often the WAL is copied back into the database file.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// Copies the WAL into the database file from its own connection, so the
/// writer never pauses for a checkpoint's fsync (SQLite's automatic
/// checkpoint runs inside the commit that crosses the threshold, which put
/// tens of milliseconds on some claims). PASSIVE never blocks the writer.
pub(super) fn checkpoint_loop(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(CHECKPOINT_INTERVAL)
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next one will try again");
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
}
