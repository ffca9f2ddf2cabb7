//! The PostgreSQL backend (`postgres://` URLs), for a lab's shared control plane: several daemons
//! on one database. It implements every store trait the daemon needs, each held to the store's
//! conformance suite (`tests/common`): API tokens ([`crate::TokenStore`]), the fleet's records
//! ([`crate::FleetStore`]), leader leases ([`crate::LeaderStore`]), the MLflow tracking tables
//! ([`crate::TrackingStore`]), the trial queue ([`crate::SweepStore`]), the model registry
//! ([`crate::RegistryStore`]), logged models ([`crate::ModelStore`]) and traces
//! ([`crate::TraceStore`]). Daemons sharing a database tell each other what changed with
//! [`PgStore::announce`].
//!
//! Its own migrations (`migrations/postgres`); plain `sqlx::query` with bound parameters; the
//! rows are read through the same types as SQLite's (`crate::rows`). Transactions run at READ
//! COMMITTED; a statement that needs more takes row locks itself.

mod fleet;
mod leaders;
mod models;
mod queue_writer;
mod registry;
mod sweeps;
mod tokens;
mod traces;
mod tracking;

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use crate::{Result, StoreError};

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Where the database is, and how many connections a daemon keeps.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database` (or a socket: `?host=/run/postgresql`).
    pub url: String,
    /// Connections at most (shared by every request of this daemon).
    pub max_connections: u32,
}

impl PgOptions {
    /// The database at `url`, with 16 connections at most.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
        }
    }
}

/// A store on a PostgreSQL database. Clones share the pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The queue's sweep specs and grids, which never change once stored.
    specs: sweeps::Specs,
    /// Where leases and completions go to be committed in groups (`None` in the group writer's
    /// own store).
    queue_jobs: Option<tokio::sync::mpsc::Sender<queue_writer::QueueJob>>,
}

impl PgStore {
    /// Connects and migrates. Refuses a database whose schema is newer than this binary
    /// knows, rather than guessing at it.
    pub async fn open(options: &PgOptions) -> Result<Self> {
        let connect: PgConnectOptions = options
            .url
            .parse()
            .map_err(|e| StoreError::Incompatible(format!("bad database URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            // Requests queue here for a while under load; past this they answer 503.
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect)
            .await
            .map_err(map_err)?;
        refuse_newer_schema(&pool).await?;
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => map_err(e),
            other => StoreError::Incompatible(format!("cannot migrate the database: {other}")),
        })?;
        let mut store = Self {
            pool,
            specs: sweeps::Specs::default(),
            queue_jobs: None,
        };
        store.queue_jobs = Some(queue_writer::start(store.clone()));
        Ok(store)
    }

    /// A read-only transaction whose statements all see one snapshot, for a read that takes
    /// several queries (a record with its tags, a page with its children): READ COMMITTED would
    /// let a write that commits in between show in some of them and not in others.
    pub(crate) async fn snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(map_err)
    }

    /// Closes every connection; waits for in-flight queries.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Tells every daemon listening on this database ([`PgStore::announcements`]) `payload`
    /// (under 8,000 bytes). PostgreSQL delivers it to listeners' connections, this one's too.
    pub async fn announce(&self, payload: &str) -> Result<()> {
        // News needs no durability (a daemon that misses some looks again), so its commit does
        // not wait for the WAL to reach the disk: under load a daemon announces hundreds of
        // times a second, and each would otherwise cost an fsync. `set_config(.., true)` lasts
        // until the end of this statement's own transaction, commit included.
        sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)")
            .bind(PEER_CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// What daemons announce from now on, on a connection of its own.
    pub async fn announcements(&self) -> Result<Announcements> {
        let mut listener = PgListener::connect_with(&self.pool).await.map_err(map_err)?;
        listener.listen(PEER_CHANNEL).await.map_err(map_err)?;
        Ok(Announcements(listener))
    }
}

/// The channel of [`PgStore::announce`].
const PEER_CHANNEL: &str = "spotsweep_peers";

/// A stream of announcements (`LISTEN`).
pub struct Announcements(PgListener);

impl Announcements {
    /// The next announcement. `Ok(None)`: the connection was lost and has been made again;
    /// whatever was announced meanwhile is lost, so the caller looks at the database again.
    /// `Err`: the database cannot be reached now (the next call tries again).
    pub async fn next(&mut self) -> Result<Option<String>> {
        match self.0.try_recv().await.map_err(map_err)? {
            Some(notification) => Ok(Some(notification.payload().to_owned())),
            None => Ok(None),
        }
    }
}

/// A database migrated by a newer spotsweep is refused: its schema may mean what this build
/// cannot know.
async fn refuse_newer_schema(pool: &PgPool) -> Result<()> {
    let exists: (bool,) = sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(map_err)?;
    if !exists.0 {
        return Ok(());
    }
    let (applied,): (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(pool)
        .await
        .map_err(map_err)?;
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match applied {
        Some(applied) if applied > known => Err(StoreError::Incompatible(format!(
            "the database was migrated by a newer spotsweep (schema {applied}, this build knows {known}); \
             run that version or newer"
        ))),
        _ => Ok(()),
    }
}

/// A PostgreSQL error as the store's: lost races and an overloaded server may be retried, a
/// full disk says so, a stored value this build cannot read is an incompatibility.
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut => StoreError::Busy,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // serialization_failure, deadlock_detected, lock_not_available,
            // too_many_connections, cannot_connect_now, admin_shutdown
            Some("40001" | "40P01" | "55P03" | "53300" | "57P03" | "57P01") => StoreError::Busy,
            // disk_full, out_of_memory
            Some("53100" | "53200") => StoreError::Full,
            _ => StoreError::Internal(e),
        },
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed => StoreError::Busy,
        sqlx::Error::ColumnDecode { index, source } => {
            StoreError::Incompatible(format!("column {index}: {source}"))
        }
        _ => StoreError::Internal(e),
    }
}

/// Commits, mapping the error.
pub(crate) async fn commit(tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<()> {
    tx.commit().await.map_err(map_err)
}
