//! The dashboard's renders page: a broker filled through its API with many
//! renders (and their tasks) in every status, then the page's first request,
//! `GET /renders?limit=50`, timed for every sort in both directions, with a
//! name search, with a status filter, and on the last page.

use std::time::{Duration, Instant};

use anyhow::Context;
use renderfarm_client::{BrokerClient, RenderQuery};
use renderfarm_wire::{ListOrder, Priority, RenderAction, RenderSort, RenderStatus};
use serde_json::json;
use tokio::task::JoinSet;

use crate::broker::{Auth, Broker};
use crate::load::{as_worker, claim, complete, register, spec};
use crate::quantile_ms;

/// Submits in flight at once while filling.
const SUBMITTERS: usize = 8;
/// Simulated workers that render (claim and complete) part of the work.
const WORKERS: usize = 8;
/// What the dashboard asks for: one page of 50.
const PAGE: i64 = 50;
/// The goal of issue 12.
const BUDGET_MS: f64 = 1000.0;

/// A render's name: a shot, a kind and a version, so that a search for a
/// shot keeps about one render in a hundred.
fn name(i: usize) -> String {
    let kind = ["comp", "lighting", "fx", "anim", "layout"][i % 5];
    format!("shot{:03}_{kind}_v{}", (i / 5) % 1000, i / 5000 + 1)
}

pub async fn listing(
    renders: usize,
    tasks: i64,
    repetitions: usize,
    rendered: usize,
    auth: Auth,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        renders > 0 && tasks >= renders as i64,
        "give at least one task per render"
    );
    let broker = Broker::start(auth)?;
    let client = broker.admin()?;

    // Fill: every render through `POST /renders`, SUBMITTERS at a time, the
    // tasks spread evenly; priorities in turn.
    let fill = Instant::now();
    let per_render = tasks / renders as i64;
    let extra = (tasks % renders as i64) as usize;
    let mut submitters = JoinSet::new();
    for s in 0..SUBMITTERS {
        let client = client.clone();
        submitters.spawn(async move {
            let mut ids = Vec::new();
            for i in (s..renders).step_by(SUBMITTERS) {
                let mut spec = spec(&name(i), per_render + i64::from(i < extra));
                spec.priority = Priority::ALL[i % Priority::ALL.len()];
                ids.push((i, client.submit(&spec).await?.id));
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids = Vec::with_capacity(renders);
    while let Some(done) = submitters.join_next().await {
        ids.extend(done??);
    }
    ids.sort();
    let submit_seconds = fill.elapsed().as_secs_f64();

    // Work done through the workers' own calls, so that renders differ in
    // progress and status as on a real farm: WORKERS claim and complete
    // `rendered` tasks in all (the most urgent first, as dispatch goes).
    let rendering = Instant::now();
    let enrolment = broker.enrolment()?;
    let mut workers = JoinSet::new();
    for w in 0..WORKERS {
        let registered = register(&enrolment, format!("lister-{w}")).await?;
        let client = as_worker(&enrolment, &registered);
        let share = rendered / WORKERS + usize::from(w < rendered % WORKERS);
        workers.spawn(async move {
            for _ in 0..share {
                let (Some(a), _) = claim(&client, &registered.worker, Duration::ZERO).await? else {
                    break;
                };
                complete(&client, &a).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    // An operator's hand: one render in 20 paused, one in 50 canceled.
    for (i, id) in &ids {
        let action = match i {
            i if i % 20 == 7 => RenderAction::Pause,
            i if i % 50 == 11 => RenderAction::Cancel,
            _ => continue,
        };
        // A render finished meanwhile cannot be paused; that is fine here.
        let _ = client.change_render(id, action).await;
    }
    let render_seconds = rendering.elapsed().as_secs_f64();

    let mut cases: Vec<(String, RenderQuery)> = vec![("default".into(), RenderQuery::default())];
    for sort in RenderSort::ALL {
        for order in [ListOrder::Asc, ListOrder::Desc] {
            cases.push((
                format!("sort={}&order={}", sort.as_str(), order.as_str()),
                RenderQuery {
                    sort: Some(sort),
                    order: Some(order),
                    ..RenderQuery::default()
                },
            ));
        }
    }
    cases.push((
        "q=shot042".into(),
        RenderQuery {
            search: Some("shot042".into()),
            ..RenderQuery::default()
        },
    ));
    cases.push((
        "q=SHOT04&sort=progress".into(),
        RenderQuery {
            search: Some("SHOT04".into()),
            sort: Some(RenderSort::Progress),
            ..RenderQuery::default()
        },
    ));
    cases.push((
        "status=queued".into(),
        RenderQuery {
            status: Some(RenderStatus::Queued),
            ..RenderQuery::default()
        },
    ));
    cases.push((
        "status=paused&sort=name".into(),
        RenderQuery {
            status: Some(RenderStatus::Paused),
            sort: Some(RenderSort::Name),
            ..RenderQuery::default()
        },
    ));
    cases.push((
        "sort=status, last page".into(),
        RenderQuery {
            sort: Some(RenderSort::Status),
            offset: Some((renders as i64 - PAGE).max(0)),
            ..RenderQuery::default()
        },
    ));
    // Warm the broker's caches and connections once.
    time(&client, &RenderQuery::default()).await?;
    let mut results = Vec::new();
    let mut worst: f64 = 0.0;
    for (label, mut query) in cases {
        query.limit = Some(PAGE);
        let mut samples = Vec::with_capacity(repetitions);
        let mut total = 0;
        for _ in 0..repetitions {
            let (took, matched) = time(&client, &query).await?;
            samples.push(took);
            total = matched;
        }
        samples.sort();
        let max = quantile_ms(&samples, 1.0);
        worst = worst.max(max);
        results.push(json!({
            "case": label,
            "total": total,
            "p50_ms": quantile_ms(&samples, 0.50),
            "p99_ms": quantile_ms(&samples, 0.99),
            "max_ms": max,
        }));
    }
    let (rss, peak) = broker.rss_mb();
    Ok(json!({
        "bench": "listing",
        "auth": auth.as_str(),
        "renders": renders,
        "tasks": tasks,
        "rendered": rendered,
        "repetitions": repetitions,
        "page": PAGE,
        "submit_seconds": (submit_seconds * 100.0).round() / 100.0,
        "render_seconds": (render_seconds * 100.0).round() / 100.0,
        "cases": results,
        "worst_ms": worst,
        "budget_ms": BUDGET_MS,
        "met": worst < BUDGET_MS,
        "broker_rss_mb": rss,
        "broker_peak_rss_mb": peak,
    })
    .to_string())
}

/// One page as the dashboard asks for it: the time to the decoded answer,
/// and how many renders matched.
async fn time(client: &BrokerClient, query: &RenderQuery) -> anyhow::Result<(Duration, i64)> {
    let started = Instant::now();
    let page = client.renders(query).await.context("listing renders")?;
    Ok((started.elapsed(), page.total))
}
