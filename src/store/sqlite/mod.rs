//! The embedded store: one SQLite file in WAL mode under the data directory.
//!
//! Every write goes through one writer thread that owns the only writing
//! connection. It takes the writes that are waiting, runs each in a savepoint
//! of one transaction, commits once, and only then answers them (group
//! commit): no caller hears "done" before its change is in the file, and many
//! concurrent claims cost one commit. Reads run on a small pool of read-only
//! connections, which WAL lets run beside the writer.
//!
//! Durability: `synchronous=NORMAL` in WAL mode keeps every committed
//! transaction across a crash or `kill -9` of the broker; only a power loss or
//! OS crash can take back the last commits.

mod adaptive;
mod blocklist;
mod counters;
mod dependencies;
mod errors;
mod events;
mod frames;
mod path_variables;
mod renders;
mod rows;
mod rules;
mod snapshot;
mod tasks;
mod tokens;
mod upkeep;
mod webhooks;
mod workers;
mod writer;

use std::path::{Path, PathBuf};

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};
use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult};

use errors::pool_unavailable;
use writer::*;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "renderfarm.sqlite3";

const READ_POOL_SIZE: u32 = 4;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../../../migrations/sqlite/0001_initial.sql")),
        M::up(include_str!(
            "../../../migrations/sqlite/0002_scheduler.sql"
        )),
        M::up(include_str!(
            "../../../migrations/sqlite/0003_log_limit.sql"
        )),
        M::up(include_str!(
            "../../../migrations/sqlite/0004_hidden_renders.sql"
        )),
        M::up(include_str!("../../../migrations/sqlite/0005_tokens.sql")),
        M::up(include_str!(
            "../../../migrations/sqlite/0006_worker_secrets.sql"
        )),
        M::up(include_str!("../../../migrations/sqlite/0007_owner.sql")),
        M::up(include_str!("../../../migrations/sqlite/0008_events.sql")),
        M::up(include_str!(
            "../../../migrations/sqlite/0009_render_listing.sql"
        )),
        M::up(include_str!("../../../migrations/sqlite/0010_files.sql")),
        M::up(include_str!("../../../migrations/sqlite/0011_webhooks.sql")),
        M::up(include_str!("../../../migrations/sqlite/0012_previews.sql")),
        M::up(include_str!(
            "../../../migrations/sqlite/0013_warm_workers.sql"
        )),
        M::up(include_str!("../../../migrations/sqlite/0014_videos.sql")),
        M::up(include_str!(
            "../../../migrations/sqlite/0015_dependencies.sql"
        )),
        M::up(include_str!(
            "../../../migrations/sqlite/0016_frame_order.sql"
        )),
        M::up(include_str!(
            "../../../migrations/sqlite/0017_blocklist.sql"
        )),
        M::up(include_str!(
            "../../../migrations/sqlite/0018_worker_hours.sql"
        )),
        M::up(include_str!(
            "../../../migrations/sqlite/0019_path_variables.sql"
        )),
        M::up(include_str!(
            "../../../migrations/sqlite/0020_adaptive_chunks.sql"
        )),
    ])
}

/// The embedded SQLite store.
pub struct SqliteStore {
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: r2d2::Pool<SqliteConnectionManager>,
    path: PathBuf,
    /// Dropped with the store, which ends the checkpoint thread.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store under `data_dir` and brings its
    /// schema up to date, as its broker does: what a broker that died left
    /// half-written is removed.
    pub fn open(data_dir: &Path) -> StoreResult<Self> {
        Self::open_as(data_dir, true)
    }

    /// Opens the store for a tool that may run while its broker serves it
    /// (e.g. `renderfarm token create`): it leaves the hidden renders alone,
    /// since the broker may be writing one.
    pub fn open_beside_broker(data_dir: &Path) -> StoreResult<Self> {
        Self::open_as(data_dir, false)
    }

    fn open_as(data_dir: &Path, owner: bool) -> StoreResult<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create the data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA foreign_keys = OFF;
             PRAGMA busy_timeout = 5000;",
        )?;
        // Foreign keys off while migrating: a migration that rebuilds a
        // table (SQLite's way to change a constraint) drops the old one, and
        // with them on, that drop would be refused for the rows that refer
        // to it. The migrations leave every reference intact, which
        // `foreign_key_check` confirms before they are enforced again.
        migrations().to_latest(&mut conn).map_err(|e| {
            StoreError::Unexpected(anyhow::anyhow!(
                "applying migrations to {}: {e}",
                path.display()
            ))
        })?;
        let broken: Option<String> = conn
            .query_row("PRAGMA foreign_key_check", [], |row| row.get(0))
            .optional()?;
        if let Some(table) = broken {
            return Err(StoreError::Unexpected(anyhow::anyhow!(
                "{}: rows of table {table} refer to rows that do not exist after the migrations",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        events::install_triggers(&conn)?;
        conn.set_prepared_statement_cache_capacity(64);
        if owner {
            renders::remove_hidden_renders(&conn)?;
        }

        let manager = SqliteConnectionManager::file(&path)
            .with_init(|c| c.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;"));
        let readers = r2d2::Pool::builder()
            .max_size(READ_POOL_SIZE)
            .build(manager)
            .map_err(pool_unavailable)?;

        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Unexpected(e.into()))?;
        let checkpoints = Connection::open(&path)?;
        checkpoints.execute_batch("PRAGMA busy_timeout = 5000;")?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoints, stopped))
            .map_err(|e| StoreError::Unexpected(e.into()))?;
        Ok(Self {
            writer: tx,
            readers,
            path,
            _stop_checkpoints: stop_checkpoints,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job {
            work: Some(work),
            result: None,
            reply,
        });
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))?
    }

    async fn read<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get().map_err(pool_unavailable)?;
            work(&conn)
        })
        .await
        .map_err(|e| StoreError::Unexpected(e.into()))?
    }
}

/// Answers when the store can serve requests now.
async fn ping(store: &SqliteStore) -> StoreResult<()> {
    store
        .read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
        .await
}

crate::store::by_concern::store_by_concern!(SqliteStore, backend = "sqlite", ping = ping);
