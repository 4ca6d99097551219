//! The broker under measurement: the real `renderfarm serve` binary as a
//! child process, with a fresh data directory. Every benchmark's broker is
//! started by [`Broker::start`], so its settings are all in one place (a
//! setting that would weigh on the figures, such as a rate limit, is turned
//! off there with one more argument).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use renderfarm_client::BrokerClient;

/// Whether the broker checks credentials (`renderfarm serve --auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Auth {
    /// The product's default: every request carries a bearer token.
    On,
    /// No credentials at all (a trusted single machine).
    Off,
}

impl Auth {
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::On => "on",
            Auth::Off => "off",
        }
    }
}

/// The secrets the bench chose for its broker, as a deployment would.
struct Credentials {
    /// Submits, reads, operator actions.
    admin: String,
    /// Registers the simulated workers; each then acts with its own secret.
    enrolment: String,
}

impl Credentials {
    fn random() -> anyhow::Result<Credentials> {
        let secret = || {
            anyhow::Ok(renderfarm::domain::secret_from(
                renderfarm::credentials::random_bytes()?,
            ))
        };
        Ok(Credentials {
            admin: secret()?,
            enrolment: secret()?,
        })
    }
}

/// What the broker counts and logs while measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observability {
    /// `serve --metrics on` (the product's default) or `off`.
    pub metrics: bool,
    /// `--log-format json` instead of text.
    pub json_logs: bool,
    /// `RENDERFARM_LOG`: errors only by default, so that the figures are the
    /// broker's work rather than its writing to a terminal.
    pub log_filter: &'static str,
}

impl Default for Observability {
    fn default() -> Self {
        Self {
            metrics: true,
            json_logs: false,
            log_filter: "error",
        }
    }
}

pub struct Broker {
    child: Child,
    pub address: String,
    /// `None` with auth off.
    credentials: Option<Credentials>,
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

/// How long one set-up request may take: a submit of a million frames takes
/// longer than the client's ordinary timeout.
const SET_UP_TIMEOUT: Duration = Duration::from_secs(120);

impl Broker {
    /// Starts a broker with a fresh store and `auth`; with auth on, it
    /// stores an admin and an enrolment secret chosen here.
    pub fn start(auth: Auth) -> anyhow::Result<Broker> {
        Self::start_with(auth, &Observability::default())
    }

    /// As [`Broker::start`], with its metrics and logs as `observe` says.
    pub fn start_with(auth: Auth, observe: &Observability) -> anyhow::Result<Broker> {
        let data_dir = tempfile::tempdir()?;
        let credentials = match auth {
            Auth::On => Some(Credentials::random()?),
            Auth::Off => None,
        };
        let mut command = Command::new(broker_binary()?);
        // The broker's settings are these alone: none of the caller's
        // RENDERFARM_* variables (a token file, a store URI) reach it.
        for (name, _) in std::env::vars_os() {
            let name_str = name.to_string_lossy();
            if name_str.starts_with("RENDERFARM_") || name_str == "MONGODB_URI" {
                command.env_remove(&name);
            }
        }
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--auth", auth.as_str()])
            .arg("--data-dir")
            .arg(data_dir.path())
            // The benchmarks measure the broker's work, not its rate limits:
            // with auth off every simulated worker is the same client
            // (127.0.0.1 without a credential) and would share one budget.
            .args(["--rate-limit", "off", "--worker-rate-limit", "off"])
            .args(["--metrics", if observe.metrics { "on" } else { "off" }])
            .args([
                "--log-format",
                if observe.json_logs { "json" } else { "text" },
            ])
            .env("RENDERFARM_LOG", observe.log_filter);
        if let Some(c) = &credentials {
            // In the environment, not on the command line that `ps` shows.
            command
                .env("RENDERFARM_ADMIN_TOKEN", &c.admin)
                .env("RENDERFARM_ENROLMENT_TOKEN", &c.enrolment);
        }
        let mut child = command
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
            credentials,
            _data_dir: data_dir,
        })
    }

    /// A client with the admin token (none with auth off): submits, reads.
    pub fn admin(&self) -> anyhow::Result<BrokerClient> {
        Ok(BrokerClient::new(&self.address)?
            .with_timeout(SET_UP_TIMEOUT)
            .with_token(self.credentials.as_ref().map(|c| c.admin.clone())))
    }

    /// A client with the enrolment token, to register workers with.
    pub fn enrolment(&self) -> anyhow::Result<BrokerClient> {
        Ok(BrokerClient::new(&self.address)?
            .with_timeout(SET_UP_TIMEOUT)
            .with_token(self.enrolment_token()))
    }

    /// The enrolment secret (none with auth off), for real agents.
    pub fn enrolment_token(&self) -> Option<String> {
        self.credentials.as_ref().map(|c| c.enrolment.clone())
    }

    /// The broker's process id, for /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
