//! What every program the agent runs needs: a check that it runs (its
//! version), its output read line by line, and its whole process group
//! killed at once.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Runs `program arg` (its version) and returns the line of its output that
/// `is_version` picks. The error is `help` (what to do) with what went wrong:
/// it did not start, did not answer within `timeout`, failed, or printed no
/// such line.
pub(crate) async fn version_line(
    program: &Path,
    arg: &str,
    timeout: Duration,
    help: &str,
    is_version: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let run = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| anyhow::anyhow!("{help} (`{arg}` did not answer within {timeout:?})"))?
        .map_err(|e| anyhow::anyhow!("{help} ({e})"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = stdout
        .lines()
        .find(|l| is_version(l))
        .map(|l| l.trim().to_string());
    match (output.status.success(), version) {
        (true, Some(version)) => Ok(version),
        _ => anyhow::bail!(
            "{help} (`{arg}` exited with {} and printed: {})",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// Kills the process group led by `pid` at once (SIGKILL).
pub(crate) fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Sends each line of `stream` (with its newline, invalid UTF-8 replaced)
/// to `tx` until the stream or the receiver ends.
pub(crate) async fn forward_lines(stream: impl AsyncRead + Unpin, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        }
    }
}
