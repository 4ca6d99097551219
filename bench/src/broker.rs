//! The broker under measurement: the real `renderfarm serve` binary as a
//! child process, with a fresh data directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

pub struct Broker {
    child: Child,
    pub address: String,
    _data_dir: tempfile::TempDir,
}

/// The `renderfarm` binary built beside this one.
fn broker_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("the bench binary has no folder")?;
    let candidate = dir.join("renderfarm");
    anyhow::ensure!(
        candidate.is_file(),
        "{} is missing: build both with `cargo build --release -p renderfarm -p renderfarm-bench`",
        candidate.display()
    );
    Ok(candidate)
}

impl Broker {
    pub fn start() -> anyhow::Result<Broker> {
        let data_dir = tempfile::tempdir()?;
        let mut child = Command::new(broker_binary()?)
            .args([
                "serve",
                "--auth",
                "off",
                "--bind",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir.path())
            // Every simulated worker and client comes from 127.0.0.1 without a
            // credential, so the rate limiter would count the whole benchmark
            // as one client and hold it to one client's budget. The benchmarks
            // measure the broker's work, not that limit: both budgets off.
            .args(["--rate-limit", "off", "--worker-rate-limit", "off"])
            .env("RENDERFARM_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the broker")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let address = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .with_context(|| format!("the broker did not say where it listens: {line:?}"))?
            .to_string();
        Ok(Broker {
            child,
            address,
            _data_dir: data_dir,
        })
    }

    /// Resident memory now and at its peak, in MiB, from /proc.
    pub fn rss_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
                .unwrap_or(0.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
