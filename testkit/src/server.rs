//! Starting the stand-in: the `jongodb` binary that `npm ci --prefix .ci`
//! installs, and the [`Proxy`] in front of it, on loopback ports of their own.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::proxy::Proxy;

/// Where `npm ci --prefix .ci` puts the server's native binary.
const NPM_PATH: &str = ".ci/node_modules/@jongodb/memory-server-bin-linux-x64-gnu/bin/jongodb";
/// Overrides [`NPM_PATH`].
const BINARY_VARIABLE: &str = "RENDERFARM_JONGODB";

/// The `jongodb` binary: `RENDERFARM_JONGODB`, or the one npm installed
/// under the workspace's `.ci/`.
pub fn jongodb_binary() -> PathBuf {
    match std::env::var_os(BINARY_VARIABLE) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(NPM_PATH),
    }
}

/// A running stand-in; it lives as long as the process that started it.
#[derive(Debug)]
pub struct StandIn {
    uri: String,
}

impl StandIn {
    /// Starts the server and the proxy. Both run on a thread of their own
    /// with a runtime of its own, so they outlive any one test's runtime; the
    /// server is killed when that thread ends, that is with the process
    /// (`PR_SET_PDEATHSIG`), however the process ends.
    pub fn start() -> Result<StandIn, String> {
        let binary = jongodb_binary();
        if !binary.is_file() {
            return Err(format!("{} is missing", binary.display()));
        }
        let (started, outcome) = mpsc::channel();
        std::thread::Builder::new()
            .name("mongodb-stand-in".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(format!("no runtime for the proxy: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let upstream = match start_server(&binary) {
                        Ok(upstream) => upstream,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = started.send(Err(format!("the proxy cannot listen: {e}")));
                            return;
                        }
                    };
                    let address = listener.local_addr().map_err(|e| e.to_string());
                    let _ = started.send(address.map(|a| format!("mongodb://{a}")));
                    Proxy::new(upstream).run(listener).await;
                });
            })
            .map_err(|e| format!("no thread for the stand-in: {e}"))?;
        let uri = outcome
            .recv()
            .map_err(|_| "the stand-in's thread ended before it started".to_string())??;
        Ok(StandIn { uri })
    }

    /// `mongodb://127.0.0.1:PORT` of the proxy.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

/// Starts `jongodb` on a free port and returns where it listens (it prints
/// `JONGODB_URI=mongodb://127.0.0.1:PORT/test` once ready).
fn start_server(binary: &std::path::Path) -> Result<SocketAddr, String> {
    let mut command = Command::new(binary);
    command
        .args(["--host=127.0.0.1", "--port=0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: between fork and exec only an async-signal-safe prctl runs.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("{} does not start: {e}", binary.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout from jongodb")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines
        .next()
        .ok_or("jongodb exited before it said where it listens")?
        .map_err(|e| e.to_string())?;
    // Keep reading (and dropping) its output, so it never blocks on a full
    // pipe.
    std::thread::spawn(move || lines.for_each(drop));
    // The child is reaped by nobody on purpose: it must run until the process
    // ends, and PR_SET_PDEATHSIG ends it then.
    std::mem::forget(child);
    parse_address(&line).ok_or_else(|| format!("jongodb said {line:?}, not where it listens"))
}

fn parse_address(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("JONGODB_URI=mongodb://")?;
    rest.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_first_line_names_its_address() {
        assert_eq!(
            parse_address("JONGODB_URI=mongodb://127.0.0.1:44575/test"),
            Some("127.0.0.1:44575".parse().unwrap())
        );
        assert_eq!(parse_address("starting"), None);
    }
}
