//! Claims while a huge render is submitted: simulated workers claim and
//! complete in a loop while one render of up to 1,000,000 frames (chunk 1,
//! so as many tasks) is submitted. A submit that holds the store's writer
//! shows as claims that wait for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use renderfarm_wire::Priority;
use serde_json::json;

use crate::broker::{Auth, Broker};
use crate::load::{register, spec, Connection};
use crate::quantile_ms;

/// Work the simulated workers claim from while the big render goes in.
const BACKGROUND_TASKS: i64 = 1_000_000;
/// Claims measured before the submit, for comparison.
const WARM_UP: Duration = Duration::from_secs(2);
/// How long the workers go on after the submit answered, so that the claims
/// it held up finish.
const AFTER: Duration = Duration::from_secs(1);

pub async fn big_submit(workers: usize, frames: i64, auth: Auth) -> anyhow::Result<String> {
    let broker = Broker::start(auth)?;
    let client = broker.admin()?;
    let enrolment = broker.enrolment()?;
    let address = broker.address.clone();
    let mut background = spec("background", BACKGROUND_TASKS);
    background.priority = Priority::High;
    client.submit(&background).await?;
    // Let the background render's WAL be checkpointed before measuring.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut runs = Vec::with_capacity(workers);
    for i in 0..workers {
        let registered = register(&enrolment, format!("sim-{i}")).await?;
        let (address, stop) = (address.clone(), stop.clone());
        runs.push(tokio::spawn(async move {
            // (when the claim was sent, how long it took)
            let mut samples: Vec<(Instant, Duration)> = Vec::new();
            let mut conn = Connection::open(&address, registered.secret.as_deref()).await?;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let (claimed, _) = conn
                    .claim_and_complete(&registered.worker)
                    .await?
                    .context("the background render ran dry")?;
                samples.push((sent, claimed));
            }
            anyhow::Ok(samples)
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    let submit_started = Instant::now();
    let mut big = spec("huge", frames);
    big.priority = Priority::Low;
    client.submit(&big).await?;
    let submit_answered = Instant::now();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let mut before = Vec::new();
    let mut during = Vec::new();
    for run in runs {
        for (sent, took) in run.await.context("a simulated worker panicked")?? {
            let done = sent + took;
            // In flight at any moment of the submit: sent before it was
            // answered, answered after it began.
            if done < submit_started {
                before.push(took);
            } else if sent < submit_answered {
                during.push(took);
            }
        }
    }
    before.sort();
    during.sort();
    anyhow::ensure!(
        !during.is_empty(),
        "no claim ran while the render was submitted"
    );
    let (rss, peak) = broker.rss_mb();
    Ok(json!({
        "bench": "big-submit",
        "auth": auth.as_str(),
        "frames": frames,
        "workers": workers,
        "submit_seconds": ((submit_answered - submit_started).as_secs_f64() * 1000.0).round() / 1000.0,
        "claims_before": before.len(),
        "claim_before_p99_ms": quantile_ms(&before, 0.99),
        "claims_during": during.len(),
        "claim_during_p50_ms": quantile_ms(&during, 0.50),
        "claim_during_p99_ms": quantile_ms(&during, 0.99),
        "claim_during_max_ms": quantile_ms(&during, 1.0),
        "broker_rss_mb": rss,
        "broker_peak_rss_mb": peak,
    })
    .to_string())
}
