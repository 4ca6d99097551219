//! Builds the broker from its configuration and runs it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::sync::Notify;

use crate::api::auth::{AuthMode, Authenticator};
use crate::api::frames::OutputRoot;
use crate::api::rate_limit::{self, Limiters};
use crate::api::{self, AppState};
use crate::clock::{Clock, SystemClock};
use crate::credentials::{self, Bootstrap};
use crate::files::gridfs::GridFiles;
use crate::files::local::LocalFiles;
use crate::files::{FileBackend, FileSettings, Files};
use crate::scheduler::{Scheduler, SchedulerSettings};
use crate::store::mongodb::{MigrationMode, MongoStore};
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::tls::TlsFiles;
use crate::webhooks::Deliverer;

/// Which store the broker keeps its state in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded SQLite file under the data directory.
    Embedded,
    /// A MongoDB deployment at this URI.
    MongoDb(String),
}

impl StoreChoice {
    /// Reads `--store` / `MONGODB_URI`: empty or `sqlite` means embedded.
    pub fn parse(url: Option<&str>) -> anyhow::Result<Self> {
        match url.map(str::trim) {
            None | Some("") | Some("sqlite") | Some("embedded") => Ok(StoreChoice::Embedded),
            Some(u) if u.starts_with("mongodb://") || u.starts_with("mongodb+srv://") => {
                Ok(StoreChoice::MongoDb(u.to_string()))
            }
            Some(other) => anyhow::bail!(
                "--store {other:?} is not a store this broker knows: leave it out (or say \"sqlite\") for the embedded store under --data-dir, or give a mongodb:// URI"
            ),
        }
    }
}

/// What the broker needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free one.
    pub bind: String,
    pub data_dir: PathBuf,
    /// Where default outputs go and the only place frames are served from
    /// (`serve --output-root`); `None`: `<data_dir>/renders`.
    pub output_root: Option<PathBuf>,
    pub store: StoreChoice,
    pub scheduler: SchedulerSettings,
    /// Apply pending store migrations at start. Off (`serve --no-migrate`),
    /// a MongoDB broker stays unready until `renderfarm migrate` has run; the
    /// embedded store always migrates when it opens.
    pub migrate: bool,
    /// How many long polls may wait at once; more get 429.
    pub max_waiting: usize,
    /// Whether credentials are checked (`--auth off`: not).
    pub auth: AuthMode,
    /// Secrets the deployment chose for its admin and its workers' enrolment.
    pub bootstrap: Bootstrap,
    /// Requests per credential on the people's and the workers' routes
    /// (`serve --rate-limit`, `--worker-rate-limit`).
    pub rate_limits: RateLimits,
    /// Serve HTTPS with this certificate and key; `None` serves plain HTTP
    /// (on one machine, or behind a proxy that terminates TLS).
    pub tls: Option<TlsFiles>,
    /// Also serve `/metrics`, without credentials, on this address (a port
    /// only Prometheus reaches); `None`: only on the API's address, with a
    /// viewer's token.
    pub metrics_bind: Option<String>,
    /// How webhooks are sent (`serve --webhooks-allow-private`).
    pub webhooks: crate::webhooks::WebhookSettings,
    /// The file storage's limits and grace (`serve --max-file-size`,
    /// `--storage-quota`, `--file-grace`).
    pub files: FileSettings,
}

pub use crate::api::rate_limit::{Per, RateLimit, RateLimits};

/// The default of [`Settings::max_waiting`]: far more workers than a studio
/// has, and within the descriptors a process may open once `serve` has
/// raised its limit.
pub const DEFAULT_MAX_WAITING: usize = 4096;

impl Settings {
    /// Settings with the scheduler's defaults.
    pub fn new(bind: impl Into<String>, data_dir: impl Into<PathBuf>, store: StoreChoice) -> Self {
        Self {
            bind: bind.into(),
            data_dir: data_dir.into(),
            output_root: None,
            store,
            scheduler: SchedulerSettings::default(),
            migrate: true,
            max_waiting: DEFAULT_MAX_WAITING,
            auth: AuthMode::On,
            bootstrap: Bootstrap::default(),
            rate_limits: RateLimits::default(),
            tls: None,
            metrics_bind: None,
            webhooks: Default::default(),
            files: FileSettings::default(),
        }
    }
}

/// A broker bound to its port, ready to run.
pub struct Application {
    port: u16,
    scheme: &'static str,
    server: Server,
    /// `--metrics-bind`'s server and port.
    metrics: Option<(Server, u16)>,
    state: web::Data<AppState>,
    scheduler: Arc<Scheduler>,
    /// Queues and sends webhook deliveries while this broker holds their lease.
    webhooks: Arc<Deliverer>,
    webhooks_loop: tokio::task::JoinHandle<()>,
    /// Forgets the rate limiters' idle keys while the server runs.
    limiter_pruner: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Opens the store and binds the listener (so the port is known before
    /// the server runs).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// As [`Application::build`], with time from `clock`.
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        // Before the store: wrong files are found without touching it.
        let tls = settings
            .tls
            .as_ref()
            .map(TlsFiles::server_config)
            .transpose()?;
        let (store, file_backend) = open_store(&settings).await?;
        let data_dir = std::path::absolute(&settings.data_dir).with_context(|| {
            format!(
                "resolving the data directory {}",
                settings.data_dir.display()
            )
        })?;
        let file_backend: Arc<dyn FileBackend> = match file_backend {
            Some(backend) => backend,
            None => {
                let root = data_dir.join("files");
                let local = tokio::task::spawn_blocking({
                    let root = root.clone();
                    move || LocalFiles::open(&root)
                })
                .await?
                .with_context(|| {
                    format!(
                        "cannot use {} for the broker's files: check it is writable (it lives under --data-dir)",
                        root.display()
                    )
                })?;
                Arc::new(local)
            }
        };
        let files = Arc::new(Files::new(file_backend, settings.files));
        tracing::info!(backend = files.backend_name(), "file storage ready");
        let root = settings
            .output_root
            .clone()
            .unwrap_or_else(|| data_dir.join("renders"));
        let output_root = OutputRoot::open(&root).with_context(|| {
            format!(
                "cannot use the output root {}: make it (or give another with --output-root)",
                root.display()
            )
        })?;
        let work_available = Arc::new(Notify::new());
        let scheduler = Scheduler::new(
            store.clone(),
            clock.clone(),
            settings.scheduler.clone(),
            work_available.clone(),
        );
        scheduler.collect_files_of(files.clone());
        let credentials_ready = Arc::new(AtomicBool::new(settings.auth == AuthMode::Off));
        if settings.auth == AuthMode::On {
            start_credentials(
                store.clone(),
                clock.clone(),
                settings.bootstrap.clone(),
                credentials_ready.clone(),
            )
            .await?;
        } else {
            tracing::warn!("AUTH IS OFF (--auth off): anyone who can reach this broker can submit, cancel and delete renders, remove workers and act as any worker. Use it only on a trusted single machine");
        }
        let events = api::events::EventHub::new(store.clone(), clock.clone());
        events.start();
        let webhooks = Deliverer::new(store.clone(), clock.clone(), settings.webhooks.clone());
        let webhooks_loop = webhooks.start();
        let state = web::Data::new(AppState {
            events,
            auth: Authenticator::new(settings.auth, store.clone()),
            credentials_ready,
            store,
            clock,
            data_dir,
            output_root,
            files,
            work_available,
            scheduler: scheduler.clone(),
            waiting: Default::default(),
            max_waiting: settings.max_waiting,
            webhooks_allow_private: settings.webhooks.allow_private,
            variables: Default::default(),
        });
        let listener = TcpListener::bind(&settings.bind).with_context(|| {
            format!(
                "cannot listen on {}: is another broker running there? pick another with --bind",
                settings.bind
            )
        })?;
        let port = listener.local_addr()?.port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let app_state = state.clone();
        let limiters = Arc::new(Limiters::new(settings.rate_limits));
        let limiter_pruner = rate_limit::spawn_pruner(Arc::downgrade(&limiters));
        let server = HttpServer::new(move || {
            let limiters = limiters.clone();
            App::new()
                .wrap(actix_web::middleware::from_fn(api::auth::authenticate))
                .wrap(api::openapi::json_not_found())
                .app_data(app_state.clone())
                .configure(api::configure)
                .configure(crate::web::configure)
                .default_service(web::to(api::no_route))
                // Wrapped last, so outermost: the limiter runs before anything
                // else, authentication included, and limits floods of bad
                // credentials too. Keep it the last `wrap`.
                .wrap(from_fn(move |req, next| {
                    rate_limit::limit(limiters.clone(), req, next)
                }))
                // Outside the limiter only to count what it refuses too.
                .wrap(from_fn(api::metrics::observe_requests))
        })
        // Long polls hold requests for up to a minute; stopping should not
        // wait for them, the workers ask again.
        .shutdown_timeout(5)
        // The caller decides when to stop (`serve` on a signal, `up` after
        // its agents have handed their tasks back).
        .disable_signals()
        .client_request_timeout(Duration::from_secs(30));
        let server = match tls {
            Some(config) => server.listen_rustls_0_23(listener, config)?,
            None => server.listen(listener)?,
        }
        .run();
        let metrics = match &settings.metrics_bind {
            Some(bind) => Some(metrics_server(bind, state.clone())?),
            None => None,
        };
        scheduler.start().await?;
        Ok(Self {
            port,
            scheme,
            server,
            metrics,
            state,
            scheduler,
            webhooks,
            webhooks_loop,
            limiter_pruner,
        })
    }

    /// The port the broker listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `--metrics-bind`, when given.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(_, port)| *port)
    }

    /// `https` when the broker serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// The state the handlers share (the store, the clock).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// A handle that stops the server.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// The broker's scheduler (tests drive its tick by hand).
    pub fn scheduler(&self) -> Arc<Scheduler> {
        self.scheduler.clone()
    }

    /// Serves until stopped through [`Application::handle`], then stops the
    /// scheduler and gives up its lease.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics = self.metrics.map(|(server, _)| {
            let handle = server.handle();
            (tokio::spawn(server), handle)
        });
        let served = self.server.await;
        if let Some((task, handle)) = metrics {
            handle.stop(true).await;
            let _ = task.await;
        }
        self.limiter_pruner.abort();
        self.webhooks_loop.abort();
        self.webhooks.stop().await;
        self.scheduler.stop().await;
        served
    }
}

/// `/metrics` alone, without credentials, on `bind`: for a port that only
/// the monitoring reaches (a cluster-internal one), so Prometheus needs no
/// token. Plain HTTP, as scrapers inside a cluster use.
fn metrics_server(bind: &str, state: web::Data<AppState>) -> anyhow::Result<(Server, u16)> {
    let listener = TcpListener::bind(bind).with_context(|| {
        format!("cannot listen on {bind} for --metrics-bind: pick a free address")
    })?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route(
                "/metrics",
                web::get().to(
                    |state: web::Data<AppState>, req: actix_web::HttpRequest| async move {
                        api::metrics::exposition(&state, &req).await
                    },
                ),
            )
            .default_service(web::to(api::no_route))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((server, port))
}

/// Stores the deployment's chosen secrets and, on a store with no token yet,
/// issues the first admin token and prints it once. The embedded store is
/// there at once; a MongoDB store may still be connecting, so its broker
/// does this in the background as soon as the store answers.
async fn start_credentials(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    chosen: Bootstrap,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let run = {
        let store = store.clone();
        move || async move {
            if let Some(first) = credentials::bootstrap(store, &chosen, clock.now()).await? {
                announce_first_admin(&first.secret);
            }
            ready.store(true, Ordering::Release);
            anyhow::Ok(())
        }
    };
    if store.ping().await.is_ok() {
        return run().await;
    }
    tokio::spawn(async move {
        loop {
            if store.ping().await.is_ok() {
                if let Err(e) = run().await {
                    tracing::error!(error = %e, "storing the broker's first credentials failed");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(())
}

/// The first admin token, shown once: only its hash is stored.
fn announce_first_admin(secret: &str) {
    eprintln!(
        "\n================================================================\n\
         renderfarm: the store had no credentials, so this broker made the\n\
         first admin token. It is shown this once (only its hash is kept):\n\n    {secret}\n\n\
         Use it as RENDERFARM_TOKEN (or --token) to make more:\n\
         renderfarm token create --name alice --role artist --broker URL\n\
         Lost it? On this machine: renderfarm token create --name admin --role admin --data-dir DIR\n\
         ================================================================\n"
    );
}

/// The store, and the file storage that goes with it when the store brings
/// its own (GridFS with MongoDB); `None`: files under the data directory.
async fn open_store(
    settings: &Settings,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<dyn FileBackend>>)> {
    match &settings.store {
        StoreChoice::Embedded => {
            let data_dir = settings.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&data_dir))
                .await?
                .with_context(|| {
                    format!(
                        "opening the embedded store under {}",
                        settings.data_dir.display()
                    )
                })?;
            tracing::info!(path = %store.path().display(), "embedded SQLite store open");
            Ok((Arc::new(store), None))
        }
        StoreChoice::MongoDb(uri) => {
            // Returns at once: the broker serves (and answers 503 for what
            // needs the store) while it connects in the background.
            let mode = if settings.migrate {
                MigrationMode::Apply
            } else {
                MigrationMode::RequireApplied
            };
            let store = MongoStore::start(uri, mode).context("--store / MONGODB_URI")?;
            tracing::info!(
                target_db = store.target(),
                "MongoDB store: connecting in the background"
            );
            // Files live in the same database, so that every broker replica
            // sees them without a shared volume.
            let files: Arc<dyn FileBackend> = Arc::new(GridFiles::new(store.clone()));
            Ok((Arc::new(store), Some(files)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreChoice;

    #[test]
    fn store_urls_select_a_backend_or_say_what_is_wrong() {
        assert_eq!(StoreChoice::parse(None).unwrap(), StoreChoice::Embedded);
        assert_eq!(StoreChoice::parse(Some("")).unwrap(), StoreChoice::Embedded);
        assert_eq!(
            StoreChoice::parse(Some("mongodb://db:27017/farm")).unwrap(),
            StoreChoice::MongoDb("mongodb://db:27017/farm".into())
        );
        let err = StoreChoice::parse(Some("postgres://x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mongodb://"), "{err}");
    }
}
