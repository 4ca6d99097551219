//! Connecting (and migrating) in the background, so the broker starts while MongoDB is down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bson::doc;
use mongodb::error::ErrorKind;
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{ClientOptions, ConnectionString};
use mongodb::{Client, Database};

use super::*;
use crate::store::{StoreError, StoreResult};

/// How long an operation waits for a reachable server before it answers
/// `Unavailable` (503), unless the URI sets `serverSelectionTimeoutMS`.
pub(super) const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the broker does about schema migrations when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationMode {
    /// Apply the pending ones (the default of `serve`).
    Apply,
    /// Apply none; stay unready while any is pending (`serve --no-migrate`,
    /// for deployments that run `renderfarm migrate` as a separate step).
    RequireApplied,
}

/// The hosts and database of a URI, safe to log (no credentials).
pub(super) fn describe(conn: &ConnectionString) -> String {
    let hosts = match &conn.host_info {
        mongodb::options::HostInfo::HostIdentifiers(hosts) => hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        mongodb::options::HostInfo::DnsRecord(name) => format!("srv:{name}"),
        _ => "?".into(),
    };
    let db = conn
        .default_database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.into());
    format!("{hosts}/{db}")
}

/// Builds a client (no I/O yet for `mongodb://`; `mongodb+srv://` resolves
/// DNS) with short timeouts, so a missing server is reported in seconds.
pub(super) async fn client_for(
    uri: &str,
    commands: Option<EventHandler<CommandEvent>>,
) -> StoreResult<(Client, String)> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| match e.kind.as_ref() {
            ErrorKind::InvalidArgument { .. } => StoreError::Invalid(format!(
                "the MongoDB URI is not valid: {e}; give one like mongodb://host:27017/renderfarm"
            )),
            _ => StoreError::from(e),
        })?;
    options.app_name.get_or_insert_with(|| "renderfarm".into());
    options
        .server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    options.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
    options.command_event_handler = commands;
    let database = options
        .default_database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.into());
    let client = Client::with_options(options)?;
    Ok((client, database))
}

impl MongoStore {
    pub(super) fn new(target: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                db: OnceLock::new(),
                waiting_for: Mutex::new(format!("not connected to MongoDB at {target} yet")),
                target,
                lease_frames: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Connects to `uri` now (the database is `database`, else the URI's,
    /// else `renderfarm`) and checks that the server answers. Migrations are
    /// not applied: call [`MongoStore::migrate`]. For tools and tests.
    pub async fn connect(uri: &str, database: Option<&str>) -> StoreResult<Self> {
        Self::connect_observed(uri, database, None).await
    }

    /// As [`MongoStore::connect`], with every command the driver sends
    /// reported to `commands`: how tests count what an operation costs.
    pub async fn connect_observed(
        uri: &str,
        database: Option<&str>,
        commands: Option<EventHandler<CommandEvent>>,
    ) -> StoreResult<Self> {
        let conn = ConnectionString::parse(uri)
            .map_err(|e| StoreError::Invalid(format!("the MongoDB URI is not valid: {e}")))?;
        let (client, default_db) = client_for(uri, commands).await?;
        let name = database.map_or(default_db, str::to_string);
        let db = client.database(&name);
        db.run_command(doc! { "ping": 1 }).await?;
        let store = Self::new(describe(&conn));
        let _ = store.inner.db.set(db);
        Ok(store)
    }

    /// Returns at once and connects in the background, retrying until the
    /// server answers; then applies (or, with
    /// [`MigrationMode::RequireApplied`], waits for) the migrations. Until
    /// then every operation and [`Store::ping`](crate::store::Store::ping) answer `Unavailable`. Fails
    /// only when the URI itself is malformed.
    pub fn start(uri: &str, mode: MigrationMode) -> StoreResult<Self> {
        let conn = ConnectionString::parse(uri).map_err(|e| {
            StoreError::Invalid(format!(
                "the MongoDB URI is not valid: {e}; give one like mongodb://host:27017/renderfarm"
            ))
        })?;
        let store = Self::new(describe(&conn));
        tokio::spawn(connect_in_background(
            Arc::downgrade(&store.inner),
            uri.to_string(),
            mode,
        ));
        Ok(store)
    }

    /// Where this store keeps its data: servers and database, no credentials.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Applies the pending migrations; returns the names of those applied now.
    pub async fn migrate(&self) -> StoreResult<Vec<&'static str>> {
        migrations::apply(self.db()?).await
    }

    /// Drops the whole database. For tests that made one of their own.
    pub async fn drop_database(&self) -> StoreResult<()> {
        Ok(self.db()?.drop().await?)
    }
}

pub(super) async fn connect_in_background(inner: Weak<Inner>, uri: String, mode: MigrationMode) {
    let mut delay = Duration::from_millis(500);
    let mut attempts = 0_u32;
    // One client for every attempt: it keeps watching the servers and
    // connects as soon as one appears.
    let mut client: Option<(Client, String)> = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match connect_once(&mut client, &uri, mode).await {
            Ok(db) => {
                let _ = strong.db.set(db);
                tracing::info!(target_db = %strong.target, "MongoDB store ready");
                return;
            }
            Err((short, detail)) => {
                attempts += 1;
                // Loud at first and then every ~minute, quiet in between.
                if attempts == 1 || attempts % 12 == 0 {
                    tracing::warn!(target_db = %strong.target, error = %detail, "MongoDB is not ready; the broker keeps trying");
                } else {
                    tracing::debug!(target_db = %strong.target, error = %detail, "MongoDB is not ready");
                }
                if let Ok(mut w) = strong.waiting_for.lock() {
                    *w = format!(
                        "MongoDB at {} is not ready ({short}); the broker keeps trying to connect",
                        strong.target
                    );
                }
            }
        }
        drop(strong);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// One attempt to connect and bring the schema up; on failure, a short
/// reason for clients and the full one for the log.
pub(super) async fn connect_once(
    client: &mut Option<(Client, String)>,
    uri: &str,
    mode: MigrationMode,
) -> Result<Database, (String, String)> {
    let short = |e: StoreError| match e {
        StoreError::Unavailable(why) => why,
        other => other.to_string(),
    };
    if client.is_none() {
        let made = client_for(uri, None).await.map_err(|e| {
            let full = format!("{e:?}");
            (short(e), full)
        })?;
        *client = Some(made);
    }
    let Some((client, name)) = client.as_ref() else {
        return Err(("no MongoDB client".into(), "no MongoDB client".into()));
    };
    let db = client.database(name);
    db.run_command(doc! { "ping": 1 })
        .await
        .map_err(|e| (short(StoreError::from(e.clone())), e.to_string()))?;
    let schema = match mode {
        MigrationMode::Apply => migrations::apply(&db).await.map(drop),
        MigrationMode::RequireApplied => match migrations::pending(&db).await {
            Ok(pending) if pending.is_empty() => Ok(()),
            Ok(pending) => Err(StoreError::Unavailable(format!(
                "the database lacks migrations {}; run `renderfarm migrate --store <uri>` (or start serve without --no-migrate)",
                pending.join(", ")
            ))),
            Err(e) => Err(e),
        },
    };
    schema.map_err(|e| {
        let full = format!("{e:?}");
        (short(e), full)
    })?;
    Ok(db)
}
