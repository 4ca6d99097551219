//! Operator commands of the command line: list renders, change a render or a
//! worker, read (or follow) a task's log. Each is one or two calls to the
//! broker's HTTP API.

use std::time::Duration;

use clap::Args;
use renderfarm_client::{RenderQuery, TaskQuery};
use renderfarm_wire::{
    ListOrder, Priority, RenderAction, RenderSort, RenderStatus, TaskStatus, WorkerAction,
};

use super::client::{connect, explain};
use super::BrokerArgs;

#[derive(Debug, Args)]
pub struct RendersArgs {
    /// Only renders in this status (queued, rendering, paused, completed, failed, canceled).
    #[arg(long, value_parser = parse_render_status)]
    status: Option<RenderStatus>,
    /// Only renders of this priority.
    #[arg(long, value_parser = super::parse_priority)]
    priority: Option<Priority>,
    /// Only renders this person submitted (the name of their credential);
    /// `me` for your own.
    #[arg(long)]
    owner: Option<String>,
    /// Only renders whose name contains this (ASCII letters in either case).
    #[arg(long)]
    search: Option<String>,
    /// What to order by: created (newest first), name (A to Z), priority
    /// (most urgent first), status (queued to canceled) or progress
    /// (furthest along first).
    #[arg(long, value_parser = parse_render_sort)]
    sort: Option<RenderSort>,
    /// asc or desc, to turn the sort's own direction around.
    #[arg(long, value_parser = parse_list_order)]
    order: Option<ListOrder>,
    /// How many to show.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
    limit: i64,
    #[command(flatten)]
    broker: BrokerArgs,
}

fn parse_render_sort(raw: &str) -> Result<RenderSort, String> {
    RenderSort::parse(raw).ok_or_else(|| {
        let names: Vec<&str> = RenderSort::ALL.iter().map(|s| s.as_str()).collect();
        format!("{raw:?} is not a sort; use one of {}", names.join(", "))
    })
}

fn parse_list_order(raw: &str) -> Result<ListOrder, String> {
    ListOrder::parse(raw).ok_or_else(|| format!("{raw:?} is not an order; use asc or desc"))
}

#[derive(Debug, Args)]
pub struct TasksArgs {
    /// The render's id.
    render: String,
    /// Only tasks in this status (pending, running, completed, failed, canceled).
    #[arg(long, value_parser = parse_task_status)]
    status: Option<TaskStatus>,
    /// How many to show, lowest frames first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1000))]
    limit: i64,
    /// How many to skip.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    offset: i64,
    #[command(flatten)]
    broker: BrokerArgs,
}

/// One id and the broker, for the commands that change one thing.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The id, as listed by `renders` or `workers`.
    id: String,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Debug, Args)]
pub struct BlocklistArgs {
    /// The render's id.
    id: String,
    /// Clear it (an operator's call): the workers take its chunks again.
    #[arg(long)]
    clear: bool,
    /// With --clear, only this worker's entry.
    #[arg(long, requires = "clear", value_name = "WORKER_ID")]
    worker: Option<uuid::Uuid>,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Debug, Args)]
pub struct HoursArgs {
    /// The worker's id, as listed by `workers`.
    id: String,
    /// The hours to set (an operator's call), kept until cleared and winning
    /// over the agent's --available, e.g. "mon-fri 19:00-07:00, sat-sun",
    /// or "always". Leave out to show the worker's hours.
    #[arg(conflicts_with = "clear")]
    schedule: Option<String>,
    /// Clear the operator's hours: the agent's own apply again.
    #[arg(long)]
    clear: bool,
    #[command(flatten)]
    broker: BrokerArgs,
}

/// Shows or sets a worker's hours.
pub async fn hours(args: HoursArgs) -> anyhow::Result<()> {
    let base = &args.broker.broker;
    let client = connect(base, &args.broker.client_options())?;
    let worker = match (&args.schedule, args.clear) {
        (Some(schedule), _) => {
            client
                .set_worker_availability(&args.id, Some(schedule))
                .await
        }
        (None, true) => client.set_worker_availability(&args.id, None).await,
        (None, false) => client.worker(&args.id).await,
    }
    .map_err(explain(base))?;
    if args.broker.json {
        println!("{}", serde_json::to_string_pretty(&worker)?);
        return Ok(());
    }
    println!("{}: {}", worker.name, describe_hours(&worker));
    Ok(())
}

/// A worker's hours in a line: the schedule, who set it, and where it
/// stands now.
pub fn describe_hours(worker: &renderfarm_wire::Worker) -> String {
    let Some(a) = &worker.availability else {
        return "takes work at any time".into();
    };
    let by = match a.set_by {
        renderfarm_wire::HoursSetBy::Agent => "its agent's".to_string(),
        renderfarm_wire::HoursSetBy::Operator => match &a.agent_schedule {
            Some(own) => format!("an operator's, over its agent's \"{own}\""),
            None => "an operator's".to_string(),
        },
    };
    let now = if a.available_now {
        "in hours"
    } else {
        "outside its hours"
    };
    let until = a
        .next_change
        .map(|t| {
            format!(
                " until {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
        .unwrap_or_default();
    let strict = if a.strict_hours { ", strict" } else { "" };
    format!(
        "\"{}\" in {} ({by}{strict}): {now}{until}",
        a.schedule, a.time_zone
    )
}

pub async fn blocklist(args: BlocklistArgs) -> anyhow::Result<()> {
    let base = &args.broker.broker;
    let client = connect(base, &args.broker.client_options())?;
    if args.clear {
        client
            .clear_blocklist(&args.id, args.worker)
            .await
            .map_err(explain(base))?;
        println!("blocklist of render {} cleared", args.id);
        return Ok(());
    }
    let entries = client.blocklist(&args.id).await.map_err(explain(base))?;
    if args.broker.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no worker has failed a chunk of render {}", args.id);
        return Ok(());
    }
    println!(
        "{:<36}  {:<20}  {:>8}  blocked",
        "worker", "name", "failures"
    );
    for e in entries {
        let blocked = match (e.blocked_at, e.expires_at) {
            (None, _) => "no".to_string(),
            (Some(at), None) => format!(
                "since {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            (Some(at), Some(until)) => format!(
                "since {}, until {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        };
        println!(
            "{:<36}  {:<20}  {:>8}  {blocked}",
            e.worker_id,
            e.worker_name.as_deref().unwrap_or("(removed)"),
            e.failures
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// The task's id (from `GET /renders/{id}/tasks`, or a worker's current task).
    task: String,
    /// Keep printing what is added until the task has finished.
    #[arg(long, short)]
    follow: bool,
    /// Time between two looks when following.
    #[arg(long, default_value = "1s", value_parser = super::parse_positive_duration)]
    interval: Duration,
    #[arg(
        long,
        env = "RENDERFARM_BROKER",
        default_value = "http://127.0.0.1:8080"
    )]
    broker: String,
    /// The PEM certificate of the authority that signed an https:// broker's
    /// certificate (a private CA), trusted on top of the system's.
    #[arg(long, env = "RENDERFARM_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
}

fn parse_render_status(s: &str) -> Result<RenderStatus, String> {
    RenderStatus::parse(s).ok_or_else(|| {
        format!("{s:?} is not a render status; use queued, rendering, paused, completed, failed or canceled")
    })
}

fn parse_task_status(s: &str) -> Result<TaskStatus, String> {
    TaskStatus::parse(s).ok_or_else(|| {
        format!("{s:?} is not a task status; use pending, running, completed, failed or canceled")
    })
}

pub async fn tasks(args: TasksArgs) -> anyhow::Result<()> {
    let base = &args.broker.broker;
    let page = connect(base, &args.broker.client_options())?
        .tasks(
            &args.render,
            &TaskQuery {
                status: args.status,
                limit: Some(args.limit),
                offset: Some(args.offset),
            },
        )
        .await
        .map_err(explain(base))?;
    if args.broker.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    if page.items.is_empty() {
        println!("no tasks match ({} in all with this filter)", page.total);
        return Ok(());
    }
    println!(
        "{:<36}  {:<7}  {:>13}  {:<9}  {:>7}  {:<36}  why it failed",
        "id", "kind", "frames", "status", "retries", "worker"
    );
    for t in &page.items {
        println!(
            "{:<36}  {:<7}  {:>13}  {:<9}  {:>7}  {:<36}  {}",
            t.id,
            t.kind.as_str(),
            format!("{}-{}", t.frame_start, t.frame_end),
            t.status.as_str(),
            t.retries,
            t.worker_id
                .map(|w| w.to_string())
                .unwrap_or_else(|| "-".into()),
            t.failure_reason
                .as_deref()
                .and_then(|r| r.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("")
        );
    }
    let shown = args.offset + page.items.len() as i64;
    if shown < page.total {
        println!(
            "({}-{} of {} shown; --offset {shown} shows the next)",
            args.offset + 1,
            shown,
            page.total
        );
    }
    println!("a task's output (Blender's, or ffmpeg's for a video): renderfarm log TASK_ID");
    Ok(())
}

pub async fn renders(args: RendersArgs) -> anyhow::Result<()> {
    let base = &args.broker.broker;
    let page = connect(base, &args.broker.client_options())?
        .renders(&RenderQuery {
            status: args.status,
            priority: args.priority,
            owner: args.owner,
            search: args.search,
            sort: args.sort,
            order: args.order,
            limit: Some(args.limit),
            offset: None,
        })
        .await
        .map_err(explain(base))?;
    if args.broker.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    if page.items.is_empty() {
        println!("no renders match; submit one with: renderfarm submit FILE.blend --frames 1-250");
        return Ok(());
    }
    println!(
        "{:<36}  {:<20}  {:<9}  {:<6}  {:>15}  {:<9}  {:<20}  owner",
        "id", "name", "status", "prio", "frames done", "video", "submitted"
    );
    for r in &page.items {
        // A video asked for but not queued yet waits for the frames.
        let video = match (&r.video, r.video_status) {
            (None, _) => "-",
            (Some(_), None) => "waiting",
            (Some(_), Some(status)) => status.as_str(),
        };
        println!(
            "{:<36}  {:<20}  {:<9}  {:<6}  {:>15}  {:<9}  {:<20}  {}",
            r.id,
            r.name,
            r.status.as_str(),
            r.priority.as_str(),
            format!("{}/{}", r.progress.frames_done, r.progress.frames_total),
            video,
            r.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.owner.as_deref().unwrap_or("-")
        );
    }
    if page.total > page.items.len() as i64 {
        println!(
            "({} of {} shown; --limit shows more)",
            page.items.len(),
            page.total
        );
    }
    Ok(())
}

pub async fn change_render(args: TargetArgs, action: RenderAction) -> anyhow::Result<()> {
    let base = &args.broker.broker;
    let render = connect(base, &args.broker.client_options())?
        .change_render(&args.id, action)
        .await
        .map_err(explain(base))?;
    if args.broker.json {
        println!("{}", serde_json::to_string_pretty(&render)?);
    } else {
        println!(
            "render {} \"{}\" is now {}",
            render.id,
            render.name,
            render.status.as_str()
        );
    }
    Ok(())
}

pub async fn requeue_task(args: TargetArgs) -> anyhow::Result<()> {
    let base = &args.broker.broker;
    let task = connect(base, &args.broker.client_options())?
        .requeue_task(&args.id)
        .await
        .map_err(explain(base))?;
    if args.broker.json {
        println!("{}", serde_json::to_string_pretty(&task)?);
    } else {
        println!(
            "task {} (frames {}-{} of render {}) is {} again",
            task.id,
            task.frame_start,
            task.frame_end,
            task.render_id,
            task.status.as_str()
        );
    }
    Ok(())
}

pub async fn delete_render(args: TargetArgs) -> anyhow::Result<()> {
    let base = &args.broker.broker;
    connect(base, &args.broker.client_options())?
        .delete_render(&args.id)
        .await
        .map_err(explain(base))?;
    println!(
        "render {} deleted, with its tasks and logs; its frames stay on disk",
        args.id
    );
    Ok(())
}

pub async fn change_worker(args: TargetArgs, action: WorkerAction) -> anyhow::Result<()> {
    let base = &args.broker.broker;
    let worker = connect(base, &args.broker.client_options())?
        .change_worker(&args.id, action)
        .await
        .map_err(explain(base))?;
    if args.broker.json {
        println!("{}", serde_json::to_string_pretty(&worker)?);
    } else {
        println!(
            "worker {} \"{}\" is now {}",
            worker.id,
            worker.name,
            worker.status.as_str()
        );
    }
    Ok(())
}

/// Prints the log; with `--follow`, what is added too, until the task has
/// completed, failed or been canceled.
pub async fn log(args: LogArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let base = &args.broker;
    let options = renderfarm_client::ClientOptions {
        ca_file: args.ca.clone(),
    };
    let client = connect(base, &options)?;
    let mut shown = 0;
    loop {
        // The status first: a log read after it holds everything written
        // before the task finished.
        let status = if args.follow {
            Some(
                client
                    .task(&args.task)
                    .await
                    .map_err(explain(base))?
                    .task
                    .status,
            )
        } else {
            None
        };
        let log = client.task_log(&args.task).await.map_err(explain(base))?;
        // Logs only grow; a shorter one means the broker lost its data.
        let new = log.get(shown..).unwrap_or(&log);
        let mut out = std::io::stdout().lock();
        out.write_all(new.as_bytes())?;
        out.flush()?;
        shown = log.len();
        match status {
            None => return Ok(()),
            Some(TaskStatus::Completed | TaskStatus::Canceled) => return Ok(()),
            Some(TaskStatus::Failed) => {
                anyhow::bail!(
                    "task {} failed (the scheduler retries it while retries are left)",
                    args.task
                )
            }
            Some(TaskStatus::Pending | TaskStatus::Running) => {}
        }
        tokio::time::sleep(args.interval).await;
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct VariablesArgs {
    #[command(subcommand)]
    action: Option<VariablesAction>,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Debug, clap::Subcommand)]
enum VariablesAction {
    /// Define or change a variable: its folder on each platform (those left
    /// out have none). Render paths under one of them are stored with the
    /// variable and given to each worker in its platform's form.
    Set {
        /// The variable: a-z, 0-9 and '_', starting with a letter.
        name: String,
        /// Its folder on Linux workers, e.g. /mnt/projects.
        #[arg(long)]
        linux: Option<String>,
        /// Its folder on Windows workers, e.g. 'P:\projects' or '\\nas\projects'.
        #[arg(long)]
        windows: Option<String>,
        /// Its folder on macOS workers, e.g. /Volumes/projects.
        #[arg(long)]
        macos: Option<String>,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Delete a variable (renders stored with it fail their next claims
    /// until it is defined again).
    Delete {
        name: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
}

pub async fn variables(args: VariablesArgs) -> anyhow::Result<()> {
    match args.action {
        Some(VariablesAction::Set {
            name,
            linux,
            windows,
            macos,
            broker,
        }) => {
            let client = connect(&broker.broker, &broker.client_options())?;
            let spec = renderfarm_wire::PathVariableSpec {
                linux,
                windows,
                macos,
            };
            let variable = client
                .set_variable(&name, &spec)
                .await
                .map_err(explain(&broker.broker))?;
            if broker.json {
                println!("{}", serde_json::to_string_pretty(&variable)?);
            } else {
                print_variables(&[variable]);
            }
            Ok(())
        }
        Some(VariablesAction::Delete { name, broker }) => {
            let client = connect(&broker.broker, &broker.client_options())?;
            client
                .delete_variable(&name)
                .await
                .map_err(explain(&broker.broker))?;
            println!("path variable {name} deleted");
            Ok(())
        }
        None => {
            let base = &args.broker.broker;
            let client = connect(base, &args.broker.client_options())?;
            let variables = client.variables().await.map_err(explain(base))?;
            if args.broker.json {
                println!("{}", serde_json::to_string_pretty(&variables)?);
            } else if variables.is_empty() {
                println!("no path variables; define one with: renderfarm variables set projects --linux /mnt/projects --windows 'P:\\projects'");
            } else {
                print_variables(&variables);
            }
            Ok(())
        }
    }
}

fn print_variables(variables: &[renderfarm_wire::PathVariable]) {
    println!("{:<20}  {:<30}  {:<30}  macos", "name", "linux", "windows");
    for v in variables {
        let show = |p: &Option<String>| p.clone().unwrap_or_else(|| "-".into());
        println!(
            "{:<20}  {:<30}  {:<30}  {}",
            v.name,
            show(&v.linux),
            show(&v.windows),
            show(&v.macos)
        );
    }
}
