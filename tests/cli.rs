//! The command-line client against a real broker.

mod common;

use std::process::Command;

use common::BrokerProcess;

fn renderfarm(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_renderfarm"))
        .args(args)
        .output()
        .expect("runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn submit_status_and_workers_talk_to_the_broker() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0");
    let b = broker.address.as_str();
    let (ok, out, err) = renderfarm(&[
        "submit",
        "/projects/shot010.blend",
        "--frames",
        "1-250",
        "--chunk",
        "10",
        "--priority",
        "high",
        "--broker",
        b,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("frames 1-250 in 25 task(s), priority high"),
        "{out}"
    );
    let id = out.split_whitespace().nth(2).expect("an id").to_string();
    assert!(
        out.contains("\"shot010\""),
        "the name defaults to the file's: {out}"
    );

    let (ok, out, err) = renderfarm(&["status", &id, "--broker", b]);
    assert!(ok, "{err}");
    assert!(out.contains("status    queued (high priority)"), "{out}");
    assert!(out.contains("frames    0/250 done"), "{out}");

    let (ok, out, _) = renderfarm(&["status", &id, "--json", "--broker", b]);
    assert!(ok);
    let render: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(render["progress"]["tasks_total"], 25);

    let (ok, out, _) = renderfarm(&["workers", "--broker", b]);
    assert!(ok);
    assert!(out.contains("no workers registered"), "{out}");
}

#[test]
fn bad_arguments_and_a_missing_broker_get_clear_errors() {
    let (ok, _, err) = renderfarm(&[
        "submit",
        "/p/a.blend",
        "--frames",
        "10-1",
        "--broker",
        "http://127.0.0.1:1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach the broker at http://127.0.0.1:1"),
        "{err}"
    );
    let (ok, _, err) = renderfarm(&["submit", "/p/a.blend", "--frames", "one-two"]);
    assert!(!ok);
    assert!(err.contains("--frames"), "{err}");
    let (ok, _, err) = renderfarm(&["submit", "/p/a.blend", "--priority", "asap"]);
    assert!(!ok);
    assert!(err.contains("low, normal, high or urgent"), "{err}");

    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), "127.0.0.1:0");
    let (ok, _, err) = renderfarm(&[
        "submit",
        "/p/a.blend",
        "--frames",
        "10-1",
        "--broker",
        &broker.address,
    ]);
    assert!(!ok);
    assert!(
        err.contains("frame_end"),
        "the broker's message is shown: {err}"
    );
    let (ok, _, err) = renderfarm(&["status", "not-an-id", "--broker", &broker.address]);
    assert!(!ok);
    assert!(err.contains("no render with id"), "{err}");
}
