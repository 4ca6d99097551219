//! Files through the broker over loopback: a file of random bytes uploaded
//! with the client's `upload_file` (what `renderfarm submit --upload` and
//! the agents' frame uploads use) and downloaded with `download_file` (what
//! the agents' blend cache and `renderfarm download` use), each timed end to
//! end, hashing included. A fresh broker and file per round.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::broker::{Auth, Broker};

/// Issue 13's goal for an upload over loopback.
const UPLOAD_GOAL_MB_PER_SEC: f64 = 200.0;

pub async fn transfer(size_mb: u64, rounds: usize, auth: Auth) -> anyhow::Result<String> {
    anyhow::ensure!(
        size_mb > 0 && rounds > 0,
        "give a positive --size-mb and --rounds"
    );
    let mut uploads = Vec::with_capacity(rounds);
    let mut downloads = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let dir = tempfile::tempdir()?;
        let source = dir.path().join("source.bin");
        write_random(&source, size_mb * 1024 * 1024)?;
        let broker = Broker::start(auth)?;
        let client = broker.admin()?;
        let no_progress = |_: u64, _: u64| {};
        let started = Instant::now();
        let sha256 = renderfarm_client::sha256_file(&source).await?;
        let stored = client.upload_file(&source, &sha256, &no_progress).await?;
        let upload_seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            stored.bytes == size_mb * 1024 * 1024,
            "the broker stored {} bytes of {}",
            stored.bytes,
            size_mb * 1024 * 1024
        );
        let back = dir.path().join("back.bin");
        let started = Instant::now();
        client.download_file(&sha256, &back, &no_progress).await?;
        let download_seconds = started.elapsed().as_secs_f64();
        let mb = size_mb as f64;
        let line = json!({
            "bench": "transfer",
            "round": round,
            "size_mb": size_mb,
            "upload_mb_per_sec": (mb / upload_seconds).round(),
            "download_mb_per_sec": (mb / download_seconds).round(),
            "upload_seconds": (upload_seconds * 1000.0).round() / 1000.0,
            "download_seconds": (download_seconds * 1000.0).round() / 1000.0,
        });
        println!("{line}");
        uploads.push(mb / upload_seconds);
        downloads.push(mb / download_seconds);
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max).round();
    let best_upload = best(&uploads);
    Ok(json!({
        "bench": "transfer",
        "auth": auth.as_str(),
        "size_mb": size_mb,
        "rounds": rounds,
        "best_upload_mb_per_sec": best_upload,
        "best_download_mb_per_sec": best(&downloads),
        "upload_goal_mb_per_sec": UPLOAD_GOAL_MB_PER_SEC,
        "verdict": if best_upload >= UPLOAD_GOAL_MB_PER_SEC { "PASS" } else { "FAIL" },
    })
    .to_string())
}

/// `bytes` of pseudo-random data at `path` (random-looking, so that no layer
/// can compress or deduplicate its way to a better figure; xorshift, since
/// the data need not be secret and must be fast to make).
fn write_random(path: &std::path::Path, bytes: u64) -> anyhow::Result<()> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ bytes;
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}
