//! TLS for real: `renderfarm serve --tls-cert --tls-key` with a certificate
//! from a certificate authority made here (rcgen), the command line and the
//! `renderfarm-worker` binary trusting that authority through `--ca`, and
//! refusals when they do not trust it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::authority::{tls_broker, Authority};
use common::{blender_or_skip, worker_binary, BrokerProcess};

/// `renderfarm ARGS --broker BROKER`, with nothing from the shell's
/// environment deciding what it trusts or where it goes. Every call to the
/// command line here goes through this one place, with the test admin's
/// credential.
fn renderfarm(broker: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_renderfarm"));
    command
        .args(args)
        .args(["--broker", broker])
        .env("RENDERFARM_TOKEN", common::ADMIN_TOKEN)
        .env_remove("RENDERFARM_CA")
        .env_remove("RENDERFARM_BROKER")
        .stdin(Stdio::null());
    command
}

/// Runs `command` (it must end within a minute): exit success, stdout, stderr.
fn run(mut command: Command) -> (bool, String, String) {
    let started = Instant::now();
    let output: Output = command.output().expect("the binary runs");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{command:?} took {:?}",
        started.elapsed()
    );
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `renderfarm-worker` against `broker`, its work directory under `dir`,
/// with the same isolation from the shell as [`renderfarm`].
fn worker(broker: &str, dir: &Path, name: &str, blender: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(worker_binary());
    command
        .args(["--broker", broker, "--name", name, "--work-dir"])
        .arg(dir.join(name))
        .arg("--blender")
        .arg(blender)
        .args(["--poll-wait", "1s"])
        .args(args)
        .env("RENDERFARM_TOKEN", common::ENROLMENT_TOKEN)
        .env_remove("RENDERFARM_CA")
        .env_remove("RENDERFARM_BROKER")
        .env("RENDERFARM_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// The Blender the agent checks at start, or `None` after a SKIPPED line.
fn blender(test: &str) -> Option<PathBuf> {
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(blender_or_skip(test))
}

/// The names of the workers the broker lists, asked through the command line
/// trusting `ca`.
fn worker_names(broker: &str, ca: &Path) -> Vec<String> {
    let ca = ca.display().to_string();
    let (ok, out, err) = run(renderfarm(broker, &["workers", "--json", "--ca", &ca]));
    assert!(ok, "{err}");
    let workers: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON workers");
    workers
        .iter()
        .filter_map(|w| w["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_command_line_and_the_agent_reach_a_tls_broker_through_a_private_ca_given_with_ca() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "studio");
    let broker = tls_broker(dir.path(), &authority);
    let address = broker.address.clone();
    assert!(
        address.starts_with("https://"),
        "the startup line says https: {address}"
    );
    let ca = authority.ca.display().to_string();

    let (ok, out, err) = run(renderfarm(&address, &["workers", "--ca", &ca]));
    assert!(ok, "{err}");
    assert!(out.contains("no workers registered"), "{out}");

    // RENDERFARM_CA does what --ca does, and the name localhost is in the
    // certificate as well as the address.
    let localhost = address.replace("127.0.0.1", "localhost");
    let mut by_env = renderfarm(&localhost, &["workers"]);
    by_env.env("RENDERFARM_CA", &authority.ca);
    let (ok, out, err) = run(by_env);
    assert!(ok, "{err}");
    assert!(out.contains("no workers registered"), "{out}");

    // A machine without a CA bundle of its own still trusts the one given.
    let mut bare = renderfarm(&address, &["workers", "--ca", &ca]);
    bare.env("SSL_CERT_FILE", dir.path().join("no-bundle.pem"))
        .env_remove("SSL_CERT_DIR");
    let (ok, _, err) = run(bare);
    assert!(ok, "{err}");

    let Some(blender) = blender(
        "the_command_line_and_the_agent_reach_a_tls_broker_through_a_private_ca_given_with_ca",
    ) else {
        return;
    };
    // Blender runs only to tell its version: nothing is rendered.
    let mut agent = worker(&address, dir.path(), "tls-agent", &blender, &["--ca", &ca])
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !worker_names(&address, &authority.ca).contains(&"tls-agent".to_string()) {
        if let Ok(Some(status)) = agent.try_wait() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut agent.stderr.take().unwrap(), &mut err);
            panic!("the agent exited with {status} before it registered: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not register over TLS within a minute"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let output = agent.wait_with_output().expect("the agent stops");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("renderfarm-worker stopped"), "{err}");
}

#[test]
fn a_certificate_from_an_authority_not_given_is_refused_with_a_word_about_ca() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "studio");
    let stranger = Authority::new(dir.path(), "stranger");
    let broker = tls_broker(dir.path(), &authority);
    let address = broker.address.clone();
    let stranger_ca = stranger.ca.display().to_string();

    for args in [
        vec!["workers"],
        vec!["workers", "--ca", &stranger_ca],
        vec!["status", "0190e6a0-0000-7000-8000-000000000000"],
    ] {
        let (ok, _, err) = run(renderfarm(&address, &args));
        assert!(!ok, "{args:?} trusted an unknown authority");
        assert!(
            err.contains("certificate") && err.contains("--ca"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("is `renderfarm serve` running?"), "{err}");
    }

    // A --ca that is not there, or not a certificate, is named.
    let missing = dir.path().join("missing.pem");
    let missing = missing.display().to_string();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let not_pem = not_pem.display().to_string();
    for ca in [&missing, &not_pem] {
        let (ok, _, err) = run(renderfarm(&address, &["workers", "--ca", ca]));
        assert!(!ok, "--ca {ca} was accepted");
        assert!(err.contains(ca.as_str()) && err.contains("--ca"), "{err}");
    }

    // Plain HTTP to the TLS port gets nowhere, quickly, with a word about
    // the scheme; and TLS to a plain broker (`serve` without the flags, as
    // behind a proxy that terminates TLS) likewise.
    let plain = address.replace("https://", "http://");
    let (ok, _, err) = run(renderfarm(&plain, &["workers"]));
    assert!(!ok, "plain HTTP was answered: {err}");
    assert!(err.contains("https://"), "{err}");
    let plain_broker = BrokerProcess::start(&dir.path().join("plain"), "127.0.0.1:0");
    assert!(plain_broker.address.starts_with("http://"));
    let (ok, _, err) = run(renderfarm(&plain_broker.address, &["workers"]));
    assert!(ok, "{err}");
    let tls_to_plain = plain_broker.address.replace("http://", "https://");
    let (ok, _, err) = run(renderfarm(&tls_to_plain, &["workers"]));
    assert!(!ok, "TLS to a plain broker was answered: {err}");
    assert!(err.contains("plain HTTP"), "{err}");

    // The agent stops at once instead of retrying what cannot succeed.
    if let Some(blender) =
        blender("a_certificate_from_an_authority_not_given_is_refused_with_a_word_about_ca")
    {
        let (ok, _, err) = run(worker(&address, dir.path(), "doubter", &blender, &[]));
        assert!(!ok, "the agent ran without trusting the broker");
        assert!(err.contains("certificate") && err.contains("--ca"), "{err}");
    }

    // After all that, the broker still serves those who trust it.
    let studio_ca = authority.ca.display().to_string();
    let (ok, _, err) = run(renderfarm(&address, &["workers", "--ca", &studio_ca]));
    assert!(ok, "{err}");
}

#[test]
fn serve_refuses_tls_files_that_do_not_fit_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "studio");
    let (cert, key) = authority.server_certificate(dir.path(), "one");
    let (_, other_key) = authority.server_certificate(dir.path(), "two");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let serve = |cert: &Path, key: &Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_renderfarm"));
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env_remove("MONGODB_URI")
            .stdin(Stdio::null());
        run(command)
    };
    let cases = [
        (&missing, &key, &missing, "cannot read"),
        (&cert, &missing, &missing, "cannot read"),
        (&not_pem, &key, &not_pem, "no certificate"),
        (&cert, &not_pem, &not_pem, "no private key"),
        // A key is not a certificate, nor a certificate a key.
        (&key, &key, &key, "no certificate"),
        (&cert, &cert, &cert, "no private key"),
        (&cert, &other_key, &other_key, "does not belong"),
    ];
    for (cert, key, named, says) in cases {
        let (ok, out, err) = serve(cert, key);
        assert!(!ok, "served with {cert:?} and {key:?}: {out}");
        assert!(
            err.contains(&named.display().to_string()) && err.contains(says),
            "{cert:?} {key:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "the store is not opened before the TLS files are checked"
    );

    // Both or neither.
    let mut half = Command::new(env!("CARGO_BIN_EXE_renderfarm"));
    half.args(["serve", "--bind", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .env_remove("RENDERFARM_TLS_KEY");
    let (ok, _, err) = run(half);
    assert!(!ok);
    assert!(err.contains("--tls-key"), "{err}");
}
