//! The PostgreSQL backend (`postgres://` URLs), for a lab's shared control plane: several daemons
//! on one database. It lands trait by trait, each on the store's conformance suite
//! (`tests/common`); so far the API tokens ([`crate::TokenStore`]), the fleet's records
//! ([`crate::FleetStore`]), leader leases ([`crate::LeaderStore`]), the MLflow tracking tables
//! ([`crate::TrackingStore`]) and the trial queue ([`crate::SweepStore`]). The daemon does not
//! offer it until every trait is here.
//!
//! Its own migrations (`migrations/postgres`); plain `sqlx::query` with bound parameters; the
//! rows are read through the same types as SQLite's (`crate::rows`). Transactions run at READ
//! COMMITTED; a statement that needs more takes row locks itself.

mod fleet;
mod leaders;
mod sweeps;
mod tokens;
mod tracking;

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

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
        Ok(Self {
            pool,
            specs: sweeps::Specs::default(),
        })
    }

    /// Closes every connection; waits for in-flight queries.
    pub async fn close(&self) {
        self.pool.close().await;
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
