//! `renderfarm-bench`: measures the broker the way the speed claims are made.
//! Each subcommand starts what it measures itself (the `renderfarm` broker as
//! a child process on loopback with a fresh store in a temporary directory,
//! so its memory is its own) and prints one JSON line last. Its broker
//! checks credentials (`--auth on`, the product's default) unless told
//! `--auth off`.

mod big_submit;
mod broker;
mod compare;
mod farm;
mod listing;
mod load;
mod machine;
mod transfer;
mod warm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use broker::Auth;
use load::DispatchAuth;

/// Benchmarks of the renderfarm broker.
#[derive(Debug, Parser)]
#[command(name = "renderfarm-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// W simulated workers loop request-task → complete as fast as they can.
    Dispatch {
        #[arg(long, default_value_t = 200)]
        workers: usize,
        #[arg(long, default_value_t = 100_000)]
        tasks: i64,
        /// The broker's `--auth`; `compare` alternates rounds of off and on
        /// (a fresh broker each) and compares the best of each against the
        /// 5 % budget.
        #[arg(long, value_enum, default_value = "on")]
        auth: DispatchAuth,
        /// With `--auth compare`, `--compare-dashboards` or
        /// `--compare-telemetry`: rounds of each. Nine, because the best of
        /// five moved by up to 6 % between runs of the same code here: one
        /// fast round of a side decides a best-of.
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Dashboards open during the run, each following the farm summary
        /// (`GET /events/summary`) and the dispatched render's events
        /// (`GET /events?render=`).
        #[arg(long, default_value_t = 0)]
        dashboards: usize,
        /// Alternates rounds without and with `--dashboards` (a fresh
        /// broker each) and compares the best of each, throughput and claim
        /// p99, against the 10 % budget.
        #[arg(long)]
        compare_dashboards: bool,
        /// Which render the dashboards follow: the one being dispatched
        /// (every claim and report of the run is an event for each), or
        /// another, small one (a render page open on other work).
        #[arg(long, value_enum, default_value = "dispatched")]
        dashboards_follow: load::Follow,
        /// Alternates rounds with metrics off and text logs, and with
        /// metrics on and JSON logs (both logging at info; a fresh broker
        /// each), and compares the best of each against the 3 % budget.
        #[arg(long)]
        compare_telemetry: bool,
        /// What `--compare-telemetry`'s candidate side turns on: both (the
        /// issue's figure), or one of them alone, to tell their costs apart.
        #[arg(long, value_enum, default_value = "both")]
        telemetry_candidate: load::TelemetryCandidate,
    },
    /// Claim latency with N tasks already queued, and the broker's memory.
    Depth {
        #[arg(long, default_value_t = 1_000)]
        queued: i64,
        /// Claims measured (each then completed).
        #[arg(long, default_value_t = 5_000)]
        claims: usize,
        /// Chunks of a paused urgent render queued ahead of that work: what
        /// an operator's pause of a big render leaves behind.
        #[arg(long, default_value_t = 0)]
        paused: i64,
        /// The broker's `--auth`.
        #[arg(long, value_enum, default_value = "on")]
        auth: Auth,
    },
    /// With W idle workers long-polling: time from a submit answered to the
    /// first task received by a worker.
    Latency {
        #[arg(long, default_value_t = 8)]
        workers: usize,
        #[arg(long, default_value_t = 200)]
        submits: usize,
        /// The broker's `--auth`.
        #[arg(long, value_enum, default_value = "on")]
        auth: Auth,
    },
    /// W simulated workers claim and complete in a loop while one render of
    /// FRAMES frames (chunk 1) is submitted: claim latency during the submit.
    BigSubmit {
        #[arg(long, default_value_t = 8)]
        workers: usize,
        #[arg(long, default_value_t = 1_000_000)]
        frames: i64,
        /// The broker's `--auth`.
        #[arg(long, value_enum, default_value = "on")]
        auth: Auth,
    },
    /// The dashboard's renders page: a broker filled through its API with
    /// RENDERS renders of TASKS tasks in all (RENDERED of them rendered by
    /// simulated workers, some renders paused or canceled), then
    /// `GET /renders?limit=50` timed REPETITIONS times for every sort and
    /// order, a name search, a status filter and the last page.
    Listing {
        #[arg(long, default_value_t = 10_000)]
        renders: usize,
        #[arg(long, default_value_t = 200_000)]
        tasks: i64,
        #[arg(long, default_value_t = 20_000)]
        rendered: usize,
        #[arg(long, default_value_t = 30)]
        repetitions: usize,
        /// The broker's `--auth`.
        #[arg(long, value_enum, default_value = "on")]
        auth: Auth,
    },
    /// Real Blender: the farm against W plain parallel Blender processes.
    Farm {
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 48)]
        frames: i64,
        #[arg(long, default_value_t = 8)]
        chunk: i64,
        #[arg(long, default_value = "blender")]
        blender: std::path::PathBuf,
        /// Farm and baseline runs, alternated; the best of each is compared.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// The broker's `--auth`.
        #[arg(long, value_enum, default_value = "on")]
        auth: Auth,
        /// How the blend and the frames travel: a shared directory, through
        /// the broker, or rounds of both compared.
        #[arg(long, value_enum, default_value = "shared")]
        files: farm::Files,
        /// The agents' `--warm`; `compare` measures issue 17's cases on one
        /// run instead: a slow-loading scene in 1-frame chunks (warm farm,
        /// cold farm, plain Blender per frame), the scene above in its
        /// chunks (warm and cold farm), and one warm Blender's memory over
        /// --rss-chunks chunks.
        #[arg(long, value_enum, default_value = "on")]
        warm: farm::Warm,
        /// With `--warm compare`: frames of the slow-loading scene.
        #[arg(long, default_value_t = 24)]
        slow_frames: i64,
        /// With `--warm compare`: chunks through one warm Blender, its
        /// memory read after each.
        #[arg(long, default_value_t = 200)]
        rss_chunks: u32,
    },
    /// Upload then download a file of SIZE_MB random MiB through a fresh
    /// broker over loopback, as `submit --upload` and the agents do.
    Transfer {
        #[arg(long, default_value_t = 1024)]
        size_mb: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The broker's `--auth`.
        #[arg(long, value_enum, default_value = "on")]
        auth: Auth,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RENDERFARM_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dispatch {
                workers,
                tasks,
                auth,
                rounds,
                dashboards,
                compare_dashboards,
                dashboards_follow,
                compare_telemetry,
                telemetry_candidate,
            } => {
                let dashboards = load::Dashboards {
                    count: dashboards,
                    follow: dashboards_follow,
                };
                load::dispatch(
                    workers,
                    tasks,
                    auth,
                    rounds,
                    dashboards,
                    compare_dashboards,
                    compare_telemetry.then_some(telemetry_candidate),
                )
                .await
            }
            Command::Depth {
                queued,
                claims,
                paused,
                auth,
            } => load::depth(queued, claims, paused, auth).await,
            Command::Latency {
                workers,
                submits,
                auth,
            } => load::latency(workers, submits, auth).await,
            Command::BigSubmit {
                workers,
                frames,
                auth,
            } => big_submit::big_submit(workers, frames, auth).await,
            Command::Listing {
                renders,
                tasks,
                rendered,
                repetitions,
                auth,
            } => listing::listing(renders, tasks, repetitions, rendered, auth).await,
            Command::Farm {
                workers,
                frames,
                chunk,
                blender,
                rounds,
                auth,
                files,
                warm,
                slow_frames,
                rss_chunks,
            } => match warm {
                farm::Warm::Compare => {
                    warm::compare(warm::Compare {
                        workers,
                        frames,
                        chunk,
                        slow_frames,
                        rss_chunks,
                        rounds,
                        blender: &blender,
                        auth,
                    })
                    .await
                }
                farm::Warm::On | farm::Warm::Off => {
                    let config = if warm == farm::Warm::On {
                        renderfarm_worker::blender::warm::WarmConfig::default()
                    } else {
                        renderfarm_worker::blender::warm::WarmConfig::off()
                    };
                    farm::farm(
                        workers, frames, chunk, rounds, &blender, auth, files, config,
                    )
                    .await
                }
            },
            Command::Transfer {
                size_mb,
                rounds,
                auth,
            } => transfer::transfer(size_mb, rounds, auth).await,
        }
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `q`-quantile of sorted durations, in milliseconds.
pub fn quantile_ms(sorted: &[std::time::Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    (sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}
