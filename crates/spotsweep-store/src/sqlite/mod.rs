//! The SQLite backend: one file in WAL mode, one writer connection, a small pool of readers.
//!
//! Why one writer: SQLite allows one writer at a time anyway; funnelling every write through one
//! connection turns lock contention ("database is locked", the reference server's classic
//! failure under concurrent loggers) into a short queue in the pool. Readers never block on it
//! thanks to WAL. `synchronous = NORMAL` in WAL mode makes a commit durable against a crash of
//! the process (`kill -9`): the WAL frame is in the OS page cache before `COMMIT` returns. Only a
//! power loss can lose the last transactions, which is the trade every WAL database makes.

mod fleet;
mod history_cache;
mod latest_fold;
mod leaders;
mod metric_blocks;
mod metric_order;
mod metrics_writer;
mod models;
mod queue_writer;
mod registry;
mod search;
mod sweeps;
mod tokens;
mod traces;
mod tracking;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{Result, StoreError};

/// The migrations, embedded at compile time from `migrations/sqlite`.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// Read connections in the pool (reads run in parallel with the one writer).
    pub readers: u32,
}

impl SqliteOptions {
    /// Defaults for a file: four readers.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            readers: 4,
        }
    }
}

/// The SQLite store. Cheap to share behind an `Arc`; [`SqliteStore::close`] it on shutdown.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every write transaction runs here, one at a time.
    writer: SqlitePool,
    /// Read-only connections for queries.
    reader: SqlitePool,
    /// One read-write connection for checkpoints, so that copying the WAL into the database
    /// (and its fsync) never runs inside a request's write.
    maintenance: SqlitePool,
    /// Internal keys of runs known to be active, so that a metric write skips the lookup. Read
    /// and changed only inside write transactions, which the single writer serialises; any
    /// lifecycle change empties it.
    run_keys: RunKeys,
    /// Loose metric blocks per (run, key), to know when to merge them (see `metric_blocks`).
    loose_blocks: metric_blocks::LooseBlocks,
    /// Sorted long histories between the pages of a read (see `history_cache`).
    history: Arc<history_cache::HistoryCache>,
    /// Metric-only writes go to the group-commit task (see `metrics_writer`).
    metric_jobs: tokio::sync::mpsc::Sender<metrics_writer::Job>,
    /// Whether `metric_order` may lag behind the latest metrics (see `metric_order`).
    metric_order: Arc<metric_order::MetricOrder>,
    /// Whether writes wait to be folded into the latest metrics (see `latest_fold`).
    latest_fold: Arc<latest_fold::LatestFold>,
    /// The trial queue's transactions and caches.
    queue: sweeps::Queue,
    /// Leases and completions go to the queue's group-commit task (see `queue_writer`).
    queue_jobs: tokio::sync::mpsc::Sender<queue_writer::QueueJob>,
}

/// How long a connection waits for a lock held by another one before answering busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Puts [`BUSY_TIMEOUT`] back on a connection (SQL text must be a literal).
const RESTORE_BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 5000";
const _: () = assert!(BUSY_TIMEOUT.as_millis() == 5000);

/// WAL frames (pages) past which [`SqliteStore::checkpoint`] restarts the WAL: 64 MiB.
const RESTART_FRAMES: i64 = 16_384;

/// Entries kept in the run-key cache before it starts over.
const RUN_KEY_CACHE_LIMIT: usize = 100_000;

/// Internal keys of runs known to be active, shared by the store and the metric writer.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunKeys(Arc<Mutex<HashMap<String, i64>>>);

impl RunKeys {
    pub(crate) fn get(&self, run_id: &str) -> Option<i64> {
        self.0.lock().ok()?.get(run_id).copied()
    }

    pub(crate) fn insert(&self, run_id: &str, key: i64) {
        if let Ok(mut keys) = self.0.lock() {
            if keys.len() >= RUN_KEY_CACHE_LIMIT {
                keys.clear();
            }
            keys.insert(run_id.to_owned(), key);
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut keys) = self.0.lock() {
            keys.clear();
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database. Refuses a database whose schema is
    /// newer than this binary knows, rather than guessing at it.
    pub async fn open(options: &SqliteOptions) -> Result<Self> {
        let connect = connect_options(&options.path)?;
        // No liveness ping before each use: these are in-process SQLite connections, and the
        // ping would double the round trips of a one-statement write.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            // A connection that comes back still inside a transaction (a commit and then its
            // rollback failed, as on a full disk) is closed rather than reused: the next write
            // gets a fresh connection, where SQLite has rolled the transaction back, instead of
            // "cannot start a transaction within a transaction" for ever.
            .after_release(|conn, _| {
                Box::pin(async move {
                    use sqlx::Connection;
                    if conn.is_in_transaction() {
                        // A transaction dropped on an error path has sent its rollback to the
                        // connection's thread but it may not have run yet: a ping queues behind
                        // it, so after it the depth is what the rollback left.
                        let _ = conn.ping().await;
                    }
                    let clean = !conn.is_in_transaction();
                    if !clean {
                        tracing::warn!("the writer connection was left inside a transaction; reopening it");
                    }
                    Ok(clean)
                })
            })
            // Writes queue here for a while under load; past this the request answers 503.
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect.clone())
            .await?;
        refuse_newer_schema(&writer).await?;
        MIGRATOR.run(&writer).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => StoreError::Internal(e),
            other => StoreError::Incompatible(format!("cannot migrate the database: {other}")),
        })?;
        {
            let mut conn = writer.acquire().await.map_err(map_err)?;
            metric_blocks::convert_legacy(&mut conn).await?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect.clone().read_only(true))
            .await?;
        // ANALYZE (run by `PRAGMA optimize`) is a write transaction: bounded to a sample of each
        // index, it holds the writer for a few milliseconds instead of reading whole tables.
        let maintenance = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect.pragma("analysis_limit", "1000"))
            .await?;
        let run_keys = RunKeys::default();
        let loose_blocks = metric_blocks::LooseBlocks::default();
        let queue = sweeps::Queue::default();
        let history = Arc::new(history_cache::HistoryCache::default());
        let order = Arc::new(metric_order::MetricOrder::new());
        let fold = Arc::new(latest_fold::LatestFold::new());
        let metric_jobs = metrics_writer::start(metrics_writer::Shared {
            writer: writer.clone(),
            keys: run_keys.clone(),
            loose: loose_blocks.clone(),
            history: history.clone(),
            order: order.clone(),
            fold: fold.clone(),
        });
        Ok(Self {
            writer: writer.clone(),
            reader,
            maintenance,
            run_keys: run_keys.clone(),
            loose_blocks: loose_blocks.clone(),
            history: history.clone(),
            metric_jobs,
            metric_order: order,
            latest_fold: fold,
            queue: queue.clone(),
            queue_jobs: queue_writer::start(writer.clone(), queue),
        })
    }

    /// WAL upkeep, off the request path; the daemon calls it four times a second.
    ///
    /// First a passive checkpoint on its own connection copies what it can of the WAL into the
    /// database without blocking readers or the writer. Under a steady stream of commits that
    /// never lets the WAL start over (a commit always lands while the copy runs), so once the
    /// WAL holds [`RESTART_FRAMES`] frames a restart checkpoint follows, taking its turn on the
    /// writer connection: the passive one has just copied nearly everything, so the writer
    /// waits only for the last few frames and two syncs, and the next commit starts the WAL
    /// from its beginning. Left to SQLite, the writer would do the whole checkpoint itself
    /// inside a commit once the WAL reached `wal_autocheckpoint` pages, holding every write
    /// for tens of milliseconds (measured: p99 of `log-metric` 23 to 40 ms instead of 4 ms).
    pub async fn checkpoint(&self) -> Result<()> {
        let (_busy, frames, _copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&self.maintenance)
            .await
            .map_err(map_err)?;
        if frames >= RESTART_FRAMES {
            let started = std::time::Instant::now();
            // The restart waits for readers still on the WAL while holding the write lock:
            // it gives up after 10 ms (and is tried again at the next call) rather than stall
            // every write for the connection's usual 5 s.
            let mut conn = self.writer.acquire().await.map_err(map_err)?;
            sqlx::query("PRAGMA busy_timeout = 10")
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            let restarted = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                .execute(&mut *conn)
                .await
                .map_err(map_err);
            sqlx::query(RESTORE_BUSY_TIMEOUT)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            drop(conn);
            restarted?;
            let held = started.elapsed();
            if held > Duration::from_millis(50) {
                tracing::info!(
                    frames,
                    held_ms = held.as_millis() as u64,
                    "slow WAL restart held writes"
                );
            }
        }
        Ok(())
    }

    /// Refreshes the query planner's statistics of tables that changed a lot
    /// (`PRAGMA optimize`, across all tables). Without them SQLite guesses, and for a search
    /// such as `metrics.m0 > 0.5 AND params.p0 = 'v3'` it may walk half the runs instead of the
    /// tenth that match the param. The daemon calls it every 10 s.
    pub async fn optimize(&self) -> Result<()> {
        sqlx::query("PRAGMA optimize=0x10002")
            .execute(&self.maintenance)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Closes every connection, checkpointing the WAL. Waits for in-flight queries.
    pub async fn close(&self) {
        self.maintenance.close().await;
        self.reader.close().await;
        self.writer.close().await;
    }

    pub(crate) fn forget_run_keys(&self) {
        self.run_keys.clear();
    }

    /// Starts a write transaction on the writer connection. `BEGIN IMMEDIATE` takes the write
    /// lock up front, so a transaction never fails half-way on a lock upgrade.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)
    }
}

fn connect_options(path: &Path) -> Result<SqliteConnectOptions> {
    let url = format!("sqlite://{}", path.display());
    let options = SqliteConnectOptions::from_str(&url)
        .map_err(|e| StoreError::Incompatible(format!("bad database path {}: {e}", path.display())))?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // MLflow's LIKE is case-sensitive; ILIKE is spelled LOWER(x) LIKE LOWER(y).
        .pragma("case_sensitive_like", "ON")
        // Checkpoints run in the background (`SqliteStore::checkpoint`), off the request path;
        // this only bounds the WAL if they fall behind (twice `RESTART_FRAMES`).
        .pragma("wal_autocheckpoint", "32768");
    Ok(options)
}

/// A database written by a newer spotsweep has migrations this binary does not know. sqlx would
/// report a missing migration; say what it means instead.
async fn refuse_newer_schema(pool: &SqlitePool) -> Result<()> {
    let exists: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
            .fetch_optional(pool)
            .await?;
    if exists.is_none() {
        return Ok(());
    }
    let (applied,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match applied {
        Some(applied) if applied > known => Err(StoreError::Incompatible(format!(
            "the database schema is version {applied}, newer than this spotsweep binary knows \
             (up to {known}); run a newer spotsweep, or restore a backup made by this version"
        ))),
        _ => Ok(()),
    }
}

/// Maps sqlx errors: lock contention and pool exhaustion become `Busy` (a 503 the client
/// retries), a full disk `Full`, everything else stays internal.
/// `'a', 'b', ...`: a list of words for an `IN (...)` of a statement, from core's constants
/// (their spellings are fixed identifiers, never input).
pub(crate) fn words_sql<W: spotsweep_core::words::Word>(words: &[W]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut => StoreError::Busy,
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("5" | "6" | "517" | "261")) => {
            StoreError::Busy
        }
        // SQLITE_FULL: the unix VFS answers it for ENOSPC, and so does `max_page_count`.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("13") => {
            note_full();
            StoreError::Full
        }
        // A stored value this build cannot read (see `Stored`): the message names it.
        sqlx::Error::ColumnDecode { index, source } => {
            StoreError::Incompatible(format!("column {index}: {source}"))
        }
        _ => StoreError::Internal(e),
    }
}

/// Whether the log has said that the disk is full and not yet that it is back. A full disk
/// fails writes until space is freed; the log says so once when it starts and once when it
/// ends, not once a request. Process-wide, as the disk is.
static DISK_FULL_LOGGED: AtomicBool = AtomicBool::new(false);
/// When a write last failed for want of space (ms since the epoch).
static LAST_REFUSAL_MS: AtomicI64 = AtomicI64::new(0);
/// On a nearly full disk small writes still fit between refusals: the disk counts as back
/// only when a write succeeds this long after the last refusal.
const DISK_BACK_AFTER_MS: i64 = 2_000;

fn note_full() {
    LAST_REFUSAL_MS.store(now_ms(), Ordering::Relaxed);
    if !DISK_FULL_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::error!(
            "the disk holding the database is full: writes are refused until space is freed, then resume by \
             themselves (nothing acknowledged is lost)"
        );
    }
}

/// Called after each successful commit: ends a full-disk episode in the log.
pub(crate) fn note_written() {
    if DISK_FULL_LOGGED.load(Ordering::Relaxed)
        && now_ms() - LAST_REFUSAL_MS.load(Ordering::Relaxed) >= DISK_BACK_AFTER_MS
        && DISK_FULL_LOGGED.swap(false, Ordering::Relaxed)
    {
        tracing::info!("disk space is back: writes succeed again");
    }
}

/// Commits a transaction, mapping its error.
pub(crate) async fn commit(tx: sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<()> {
    tx.commit().await.map_err(map_err)?;
    note_written();
    Ok(())
}

/// Ends whatever a raw (`BEGIN IMMEDIATE` as a statement) transaction on the writer left open
/// after an error or a panic: rolls it back, and when even that fails, closes the connection
/// when it is given back (SQLite rolls back what a closing connection had open), so that the
/// next write never starts inside it.
pub(crate) async fn abandon(conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>) {
    // An error here usually means there was no transaction left to end (SQLite rolls some
    // failures back by itself); only a connection still inside one is a problem.
    let rolled_back = sqlx::query("ROLLBACK").execute(&mut **conn).await;
    if let Err(e) = rolled_back
        && !e.to_string().contains("no transaction is active")
    {
        tracing::warn!(error = %e, "cannot roll back on the writer connection; reopening it");
        conn.close_on_drop();
    }
}

/// Runs `work`, turning a panic into [`StoreError::Panicked`] (logged with `doing`), so that a
/// bug in one request fails that request alone and leaves the writer task alive.
pub(crate) async fn catch_panic<T>(doing: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(done) => done,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            tracing::error!(panic = %what, "a bug while {doing}: the write was rolled back");
            Err(StoreError::Panicked(doing.to_owned()))
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
