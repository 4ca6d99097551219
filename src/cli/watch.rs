//! `renderfarm watch`: follows renders live. On a terminal it draws a bar per
//! render and per worker busy on one; piped, it prints a line per change (with
//! `--json`, the changed render as one JSON line), so a script can `submit`,
//! then `watch` and read the exit code.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use renderfarm_client::{BrokerClient, ClientError, EventStream, RenderQuery};
use renderfarm_wire::{
    EventKind, FarmEvent, Render, RenderStatus, Task, TaskKind, TaskStatus, Worker, WorkerStatus,
};
use uuid::Uuid;

use super::client::explain;

/// How many renders of each unfinished status one look lists; more than a
/// terminal shows.
const LIST_LIMIT: i64 = 100;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Renders to follow, by id. Leave out to follow every unfinished render,
    /// new ones included, until Ctrl-C.
    ids: Vec<String>,
    /// The least time between two looks at the broker; it looks when its
    /// event stream tells of a change (or every interval, for a broker
    /// without one).
    #[arg(long, default_value = "1s", value_parser = super::parse_positive_duration)]
    interval: Duration,
    #[command(flatten)]
    broker: super::BrokerArgs,
}

/// Which renders to follow.
pub enum Target {
    /// These, until every one has finished.
    These(Vec<String>),
    /// Every unfinished render, new ones included, until stopped.
    Unfinished,
}

/// Exits 0 when every render named completed; an error names the ones that
/// failed or were canceled.
pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let client = super::client::connect(&args.broker.broker, &args.broker.client_options())?;
    let mut view = View::for_output(args.broker.json);
    let target = if args.ids.is_empty() {
        Target::Unfinished
    } else {
        Target::These(args.ids)
    };
    let renders = tokio::select! {
        renders = follow(&client, &target, args.interval, &mut view) => renders?,
        _ = super::shutdown_signal() => {
            return match target {
                Target::Unfinished => Ok(()),
                Target::These(_) => Err(anyhow::anyhow!("stopped watching; the renders go on")),
            };
        }
    };
    let unsuccessful: Vec<String> = renders
        .iter()
        .filter(|r| r.status != RenderStatus::Completed)
        .map(|r| format!("{} \"{}\" {}", r.id, r.name, r.status.as_str()))
        .collect();
    if unsuccessful.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "not completed: {}; see why with `renderfarm tasks ID --status failed` and `renderfarm log TASK_ID`",
        unsuccessful.join(", ")
    )
}

/// Follows `target`, showing each look in `view`, until every render named
/// has finished (never, for [`Target::Unfinished`]); returns their last state.
/// It looks again when the broker's event stream (`GET /events`) tells of a
/// change to what it shows, at most once an `interval`; a broker without
/// the stream is asked every `interval` instead. The first look must reach
/// the broker; later ones that cannot are shown and tried again, so a watch
/// outlives a broker restart.
pub async fn follow(
    client: &BrokerClient,
    target: &Target,
    interval: Duration,
    view: &mut View,
) -> anyhow::Result<Vec<Render>> {
    let mut renders: Vec<Render> = Vec::new();
    let mut first = true;
    // Opened before the first look, so that no change falls between the two.
    let mut changes = Changes::open(client).await;
    loop {
        let looked = Instant::now();
        // The broker's Retry-After (over the rate limit, store away) when it
        // asks for longer than the interval.
        let mut pause = interval;
        match look(client, target, &mut renders).await {
            Ok(workers) => view.show(&renders, &workers),
            Err(e) if !first && e.is_retryable() => {
                pause = pause.max(e.retry_after().unwrap_or_default());
                view.note(&format!("{e}; trying again"));
            }
            Err(e) => return Err(explain(client.base())(e)),
        }
        first = false;
        match target {
            Target::These(_) if renders.iter().all(|r| !moving(r)) => {
                view.finish();
                return Ok(renders);
            }
            Target::These(_) => {}
            // Finished renders were shown once as such; stop following them.
            Target::Unfinished => renders.retain(|r| !r.status.is_finished()),
        }
        let followed: HashSet<Uuid> = renders.iter().map(|r| r.id).collect();
        let shows = |event: &FarmEvent| match target {
            // Any render may be new, and any task may be a followed one's.
            Target::Unfinished => event.render_id.is_some(),
            Target::These(_) => event.render_id.is_some_and(|id| followed.contains(&id)),
        };
        changes.wait(client, shows, pause, view).await;
        // At most one look an interval, however many changes.
        tokio::time::sleep_until((looked + pause).into()).await;
    }
}

/// The broker's event stream, as `watch` uses it: to know when to look.
struct Changes {
    stream: Option<EventStream>,
    /// The last event read, to resume after when the stream is opened again.
    last: Option<i64>,
    /// The broker has no event stream (an older broker): ask every interval.
    polling: bool,
}

impl Changes {
    async fn open(client: &BrokerClient) -> Self {
        let mut changes = Self {
            stream: None,
            last: None,
            polling: false,
        };
        changes.connect(client).await;
        changes
    }

    async fn connect(&mut self, client: &BrokerClient) {
        match client.events(None, self.last).await {
            Ok(stream) => self.stream = Some(stream),
            // A broker from before the event stream.
            Err(ClientError::NotFound(_)) => self.polling = true,
            // Unreachable now, say: poll until the stream opens again.
            Err(_) => self.stream = None,
        }
    }

    /// Waits until the stream tells of an event `shows` keeps; or for
    /// `interval` when there is no stream (then tries to open it again).
    async fn wait(
        &mut self,
        client: &BrokerClient,
        shows: impl Fn(&FarmEvent) -> bool,
        interval: Duration,
        view: &View,
    ) {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                tokio::time::sleep(interval).await;
                if !self.polling {
                    self.connect(client).await;
                }
                return;
            };
            match stream.next().await {
                Some(Ok(event)) => {
                    self.last = Some(event.id);
                    if event.kind == EventKind::Reset || shows(&event) {
                        return;
                    }
                }
                // Broken or closed (the broker restarts): look now, and open
                // it again after the last event read.
                ended => {
                    if let Some(Err(e)) = ended {
                        view.note(&format!("{e}; following again"));
                    }
                    self.stream = None;
                    self.connect(client).await;
                    return;
                }
            }
        }
    }
}

/// Brings `renders` up to date and returns the workers busy on one of them,
/// with their tasks.
async fn look(
    client: &BrokerClient,
    target: &Target,
    renders: &mut Vec<Render>,
) -> Result<Vec<(Worker, Task)>, ClientError> {
    match target {
        Target::These(ids) if renders.is_empty() => {
            for id in ids {
                renders.push(client.render(id).await?);
            }
        }
        Target::These(_) => refresh(client, renders).await?,
        Target::Unfinished => {
            let mut seen = HashSet::new();
            for status in [
                RenderStatus::Rendering,
                RenderStatus::Queued,
                RenderStatus::Paused,
                RenderStatus::Waiting,
            ] {
                let query = RenderQuery {
                    status: Some(status),
                    limit: Some(LIST_LIMIT),
                    ..RenderQuery::default()
                };
                for render in client.renders(&query).await?.items {
                    seen.insert(render.id);
                    upsert(renders, render);
                }
            }
            // One that left the lists finished (or moved between them while
            // we looked): ask for it by id.
            let mut gone: Vec<Render> = renders
                .iter()
                .filter(|r| !seen.contains(&r.id))
                .cloned()
                .collect();
            refresh(client, &mut gone).await?;
            for render in gone {
                upsert(renders, render);
            }
        }
    }
    let followed: HashSet<Uuid> = renders.iter().map(|r| r.id).collect();
    let mut busy = Vec::new();
    for worker in client.workers().await? {
        let Some(task_id) = worker.current_task_id else {
            continue;
        };
        let task = match client.task(task_id).await {
            Ok(detail) => detail.task,
            // Finished and forgotten between the two looks.
            Err(ClientError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if followed.contains(&task.render_id) {
            busy.push((worker, task));
        }
    }
    Ok(busy)
}

/// Fetches again every render in `renders` that may still change.
async fn refresh(client: &BrokerClient, renders: &mut [Render]) -> Result<(), ClientError> {
    for render in renders.iter_mut().filter(|r| moving(r)) {
        *render = client.render(render.id).await?;
    }
    Ok(())
}

fn upsert(renders: &mut Vec<Render>, render: Render) {
    match renders.iter_mut().find(|r| r.id == render.id) {
        Some(known) => *known = render,
        None => renders.push(render),
    }
}

/// How a watch shows what it sees.
pub enum View {
    /// Progress bars on a terminal.
    Bars(Box<Bars>),
    /// A line per change.
    Lines(Lines),
    /// A JSON line per changed render, with the last one shown.
    Json(HashMap<Uuid, Render>),
}

/// The bars of a [`View::Bars`], each with the last line of its render.
pub struct Bars {
    multi: MultiProgress,
    render_style: ProgressStyle,
    worker_style: ProgressStyle,
    renders: HashMap<Uuid, (ProgressBar, String)>,
    workers: HashMap<Uuid, ProgressBar>,
}

/// The state of a [`View::Lines`]: the last line printed per render or
/// worker, and the workers last shown busy (by name).
#[derive(Default)]
pub struct Lines {
    last: HashMap<Uuid, String>,
    busy: HashMap<Uuid, String>,
}

impl View {
    /// Bars when standard error is a terminal, else lines; JSON if asked.
    pub fn for_output(json: bool) -> Self {
        if json {
            return View::Json(HashMap::new());
        }
        if !std::io::stderr().is_terminal() {
            return View::Lines(Lines::default());
        }
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .expect("the bar templates are valid")
                .progress_chars("=> ")
        };
        View::Bars(Box::new(Bars {
            multi: MultiProgress::new(),
            render_style: style("{prefix:>16} [{bar:40.cyan/blue}] {pos}/{len} frames {msg}"),
            worker_style: style("{prefix:>16} [{bar:40.green/white}] {pos}/{len} {msg}"),
            renders: HashMap::new(),
            workers: HashMap::new(),
        }))
    }

    fn show(&mut self, renders: &[Render], busy: &[(Worker, Task)]) {
        match self {
            View::Bars(bars) => bars.show(renders, busy),
            View::Lines(lines) => lines.show(renders, busy),
            View::Json(last) => {
                for render in renders {
                    if last.get(&render.id) != Some(render) {
                        match serde_json::to_string(render) {
                            Ok(line) => println!("{line}"),
                            Err(e) => eprintln!("cannot show render {}: {e}", render.id),
                        }
                        last.insert(render.id, render.clone());
                    }
                }
            }
        }
    }

    fn note(&self, message: &str) {
        match self {
            View::Bars(bars) => {
                let _ = bars.multi.println(message);
            }
            View::Lines(_) | View::Json(_) => eprintln!("{message}"),
        }
    }

    fn finish(&mut self) {
        if let View::Bars(bars) = self {
            for bar in bars.workers.values() {
                bar.finish_and_clear();
            }
            for (bar, _) in bars.renders.values() {
                bar.finish();
            }
        }
    }
}

impl Lines {
    fn show(&mut self, renders: &[Render], busy: &[(Worker, Task)]) {
        for render in renders {
            changed(&mut self.last, render.id, render_line(render));
        }
        for (worker, task) in busy {
            let render = renders.iter().find(|r| r.id == task.render_id);
            changed(&mut self.last, worker.id, worker_line(worker, task, render));
        }
        // A worker shown busy before and not now: say so once.
        let now_busy: HashMap<Uuid, String> =
            busy.iter().map(|(w, _)| (w.id, w.name.clone())).collect();
        for (id, name) in std::mem::replace(&mut self.busy, now_busy) {
            if !self.busy.contains_key(&id) {
                changed(&mut self.last, id, format!("worker {name} is free"));
            }
        }
        // Forget what is no longer followed, so a long watch does not grow.
        let followed: HashSet<Uuid> = renders.iter().map(|r| r.id).collect();
        let busy = &self.busy;
        self.last.retain(|id, line| {
            followed.contains(id) || busy.contains_key(id) || line.ends_with(" is free")
        });
    }
}

impl Bars {
    fn show(&mut self, renders: &[Render], busy: &[(Worker, Task)]) {
        // A render no longer followed has finished: it leaves a line.
        let followed: HashSet<Uuid> = renders.iter().map(|r| r.id).collect();
        let gone: Vec<Uuid> = self
            .renders
            .keys()
            .filter(|id| !followed.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some((bar, line)) = self.renders.remove(&id) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
                let _ = self.multi.println(line);
            }
        }
        for render in renders {
            let (bar, line) = self.renders.entry(render.id).or_insert_with(|| {
                let bar = self
                    .multi
                    .add(ProgressBar::new(render.progress.frames_total.max(0) as u64));
                bar.set_style(self.render_style.clone());
                bar.set_prefix(render.name.clone());
                (bar, String::new())
            });
            bar.set_position(render.progress.frames_done.max(0) as u64);
            bar.set_message(render_state(render));
            *line = render_line(render);
        }

        let busy_ids: HashSet<Uuid> = busy.iter().map(|(w, _)| w.id).collect();
        let multi = &self.multi;
        self.workers.retain(|id, bar| {
            let keep = busy_ids.contains(id);
            if !keep {
                bar.finish_and_clear();
                multi.remove(bar);
            }
            keep
        });
        for (worker, task) in busy {
            let bar = self.workers.entry(worker.id).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(1));
                bar.set_style(self.worker_style.clone());
                bar.set_prefix(worker.name.clone());
                bar
            });
            let render = renders.iter().find(|r| r.id == task.render_id);
            bar.set_length(task_frames(task));
            bar.set_position(task.frames_done.max(0) as u64);
            bar.set_message(format!(
                "{} frames {}-{}",
                render.map(|r| r.name.as_str()).unwrap_or("?"),
                task.frame_start,
                task.frame_end
            ));
        }
    }
}

/// Prints `line` under `id` when it differs from the last one printed there.
fn changed(last: &mut HashMap<Uuid, String>, id: Uuid, line: String) {
    if last.get(&id) != Some(&line) {
        println!("{} {line}", chrono::Local::now().format("%H:%M:%S"));
        last.insert(id, line);
    }
}

fn render_state(render: &Render) -> String {
    let p = &render.progress;
    let mut state = render.status.as_str().to_string();
    if p.tasks_running > 0 {
        state.push_str(&format!(", {} running", p.tasks_running));
    }
    if p.tasks_failed > 0 {
        state.push_str(&format!(", {} failed", p.tasks_failed));
    }
    if render.video.is_some() {
        state.push_str(&format!(", video {}", video_state(render.video_status)));
    }
    if let Some(reason) = &render.waiting_reason {
        state.push_str(&format!(": {reason}"));
    }
    state
}

/// Where a render's video is, for a person: its task's status, or that it
/// waits for the frames (a render's video task is made when they are done).
pub fn video_state(status: Option<TaskStatus>) -> String {
    match status {
        None => "waiting for the frames".into(),
        Some(TaskStatus::Failed) => {
            "failed (`renderfarm requeue-task TASK_ID` tries again, the ffmpeg task of `renderfarm tasks ID`)".into()
        }
        Some(status) => status.as_str().into(),
    }
}

/// True while a render may still change: it has not finished, or its video
/// is queued or being made (`watch` follows a completed render until its
/// video is done too).
fn moving(render: &Render) -> bool {
    !render.status.is_finished()
        || matches!(
            render.video_status,
            Some(TaskStatus::Pending | TaskStatus::Running)
        )
}

fn render_line(render: &Render) -> String {
    format!(
        "render {} \"{}\" {}/{} frames, {}",
        render.id,
        render.name,
        render.progress.frames_done,
        render.progress.frames_total,
        render_state(render)
    )
}

fn worker_line(worker: &Worker, task: &Task, render: Option<&Render>) -> String {
    let status = match worker.status {
        WorkerStatus::Draining => " (draining)",
        _ => "",
    };
    let name = render.map(|r| r.name.as_str()).unwrap_or("?");
    match task.kind {
        TaskKind::Blender => format!(
            "worker {}{status} on \"{name}\" frames {}-{}: {}/{} done",
            worker.name,
            task.frame_start,
            task.frame_end,
            task.frames_done,
            task_frames(task)
        ),
        TaskKind::Ffmpeg => format!(
            "worker {}{status} on \"{name}\" video: {}/{} frames encoded",
            worker.name,
            task.frames_done,
            task_frames(task)
        ),
    }
}

fn task_frames(task: &Task) -> u64 {
    (task.frame_end - task.frame_start + 1).max(1) as u64
}
