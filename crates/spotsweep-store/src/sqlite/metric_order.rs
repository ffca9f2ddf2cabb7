//! The latest metric values in each metric's order (`metric_order`), brought up to date in
//! batches rather than on every write.
//!
//! A search ordered by a metric walks a metric's runs in value order. An index on the latest
//! values gave that order, but every write had to move one entry of it per key, and the entries
//! of one key (of every run) sit together: a write of a thousand keys dirtied a thousand pages.
//! Measured at the store, 1,000-key writes at one new step to 128 runs from 4 clients: 120
//! writes/s with the index, 530 without it. So a write only records its run in
//! `metric_order_pending` (in its own transaction: nothing is lost to a crash). A search
//! ordered by a metric needs that one key's entries: it has the writer bring them up to date
//! for the pending runs first ([`update_key`]), a lookup per pending run, so it sees every
//! write acknowledged before it began. The writer task also works through the pending runs
//! when writes pause ([`QUIET`]), and one slice a second ([`FORCED`]) when they do not, in
//! slices of [`SLICE`] so that writes never wait long behind it ([`update_slice`]).
//!
//! Moving an entry costs 3-5 µs (two index operations at random places), so a daemon that
//! takes 700,000 new latest values a second (wide batches) cannot keep any ordered index of
//! them in step; a search needs one key's order, which stays cheap to bring up to date.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::SqliteConnection;

use super::map_err;
use crate::Result;

/// The writer task works on the pending runs once writes pause this long...
pub(crate) const QUIET: Duration = Duration::from_millis(50);
/// ...and for one slice this often under a steady stream of writes (1% of the writer), so that
/// the pending runs, which each search by a metric looks up, do not pile up for ever.
pub(crate) const FORCED: Duration = Duration::from_secs(1);
/// About the longest the writer spends on one slice of that work before it takes writes again.
const SLICE: Duration = Duration::from_millis(10);
/// Most runs in one slice.
const MAX_CHUNK: usize = 4096;

/// Whether some run may be pending; shared by the writers (which set it) and the searches
/// (which ask for an update when it is set).
#[derive(Debug)]
pub(crate) struct MetricOrder {
    pending: AtomicBool,
    /// Runs per slice transaction (see [`update_slice`]).
    chunk: AtomicUsize,
}

impl MetricOrder {
    /// A store that just opened may have pending runs left by a crash.
    pub(crate) fn new() -> Self {
        Self {
            pending: AtomicBool::new(true),
            chunk: AtomicUsize::new(16),
        }
    }

    /// Called after a commit that changed latest metrics, before its writer is answered.
    pub(crate) fn note_pending(&self) {
        self.pending.store(true, Ordering::Release);
    }

    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }
}

/// The statement that records the runs of a write as pending (`VALUES` follow): one row per
/// run, whatever the number of keys.
pub(crate) const MARK_PENDING: &str = "INSERT OR IGNORE INTO metric_order_pending (run_id) ";

/// Brings one key's entries up to date for every pending run, which stay pending for their
/// other keys: what a search ordered by that key needs, a lookup per pending run.
pub(crate) async fn update_key(conn: &mut SqliteConnection, key: &str) -> Result<()> {
    super::metric_blocks::in_transaction(conn, async |conn| {
        for sql in [MOVE_KEY, ADD_KEY, LINK_KEY] {
            sqlx::query(sql)
                .bind(key)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    })
    .await
}

/// Brings whole pending runs up to date, a chunk of them in one transaction; the chunk grows
/// while a transaction takes less than [`SLICE`] and shrinks when it takes more (runs with a
/// thousand keys or five). Clears the flag when none is left (while the caller still holds the
/// writer connection, so that no write commits in between). Returns whether runs are left.
pub(crate) async fn update_slice(conn: &mut SqliteConnection, order: &MetricOrder) -> Result<bool> {
    let started = Instant::now();
    let chunk = order.chunk.load(Ordering::Relaxed).clamp(1, MAX_CHUNK);
    let left = super::metric_blocks::in_transaction(conn, async |conn| {
        let runs: Vec<(i64,)> = sqlx::query_as("SELECT run_id FROM metric_order_pending LIMIT ?")
            .bind(chunk as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        let ids = super::tracking::json_ids(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
        for sql in [MOVE_RUNS, ADD_RUNS, LINK_RUNS, FORGET_RUNS] {
            sqlx::query(sql)
                .bind(&ids)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
        }
        Ok(runs.len() == chunk)
    })
    .await?;
    let next = if started.elapsed() > SLICE {
        chunk / 2
    } else {
        chunk * 2
    };
    order.chunk.store(next.clamp(1, MAX_CHUNK), Ordering::Relaxed);
    if !left {
        order.pending.store(false, Ordering::Release);
    }
    Ok(left)
}

// The statements of both updates. Their joins are written in the order they must run (CROSS
// JOIN): from the pending runs to their latest values, never a scan of a whole table (a test
// checks their plans). "Changed" compares the latest value with its entry's.

/// Moves the entries of the runs of a JSON list (?1) whose value changed.
pub(super) const MOVE_RUNS: &str = "UPDATE metric_order SET (value, is_nan) = \
         (SELECT l.value, l.is_nan FROM latest_metrics l \
          WHERE l.run_id = metric_order.run_id AND l.key = metric_order.key) \
     WHERE id IN ( \
         SELECT m.id FROM json_each(?1) p \
         CROSS JOIN latest_metrics l ON l.run_id = p.value \
         CROSS JOIN metric_order m ON m.id = l.order_id \
         WHERE m.value IS NOT l.value OR m.is_nan IS NOT l.is_nan)";

/// Adds entries for the keys of the runs of a JSON list (?1) that have none.
pub(super) const ADD_RUNS: &str = "INSERT INTO metric_order (experiment_id, key, is_nan, value, run_id) \
     SELECT r.experiment_id, l.key, l.is_nan, l.value, l.run_id \
     FROM json_each(?1) p \
     CROSS JOIN runs r ON r.id = p.value \
     CROSS JOIN latest_metrics l ON l.run_id = p.value \
     WHERE l.order_id IS NULL";

/// Points the latest values of [`ADD_RUNS`] at their entries.
pub(super) const LINK_RUNS: &str = "UPDATE latest_metrics SET order_id = ( \
         SELECT m.id FROM runs r CROSS JOIN metric_order m \
         WHERE r.id = latest_metrics.run_id AND m.experiment_id = r.experiment_id \
           AND m.key = latest_metrics.key AND m.is_nan = latest_metrics.is_nan \
           AND m.value = latest_metrics.value AND m.run_id = latest_metrics.run_id) \
     WHERE run_id IN (SELECT value FROM json_each(?1)) AND order_id IS NULL";

/// Takes the runs of a JSON list (?1) off the pending list.
pub(super) const FORGET_RUNS: &str =
    "DELETE FROM metric_order_pending WHERE run_id IN (SELECT value FROM json_each(?1))";

/// Moves the entries of one key (?1) of every pending run whose value changed.
pub(super) const MOVE_KEY: &str = "UPDATE metric_order SET (value, is_nan) = \
         (SELECT l.value, l.is_nan FROM latest_metrics l \
          WHERE l.run_id = metric_order.run_id AND l.key = metric_order.key) \
     WHERE id IN ( \
         SELECT m.id FROM metric_order_pending p \
         CROSS JOIN latest_metrics l ON l.run_id = p.run_id AND l.key = ?1 \
         CROSS JOIN metric_order m ON m.id = l.order_id \
         WHERE m.value IS NOT l.value OR m.is_nan IS NOT l.is_nan)";

/// Adds entries for one key (?1) of the pending runs that have none for it.
pub(super) const ADD_KEY: &str = "INSERT INTO metric_order (experiment_id, key, is_nan, value, run_id) \
     SELECT r.experiment_id, l.key, l.is_nan, l.value, l.run_id \
     FROM metric_order_pending p \
     CROSS JOIN runs r ON r.id = p.run_id \
     CROSS JOIN latest_metrics l ON l.run_id = p.run_id AND l.key = ?1 \
     WHERE l.order_id IS NULL";

/// Points the latest values of [`ADD_KEY`] at their entries.
pub(super) const LINK_KEY: &str = "UPDATE latest_metrics SET order_id = ( \
         SELECT m.id FROM runs r CROSS JOIN metric_order m \
         WHERE r.id = latest_metrics.run_id AND m.experiment_id = r.experiment_id \
           AND m.key = latest_metrics.key AND m.is_nan = latest_metrics.is_nan \
           AND m.value = latest_metrics.value AND m.run_id = latest_metrics.run_id) \
     WHERE run_id IN (SELECT run_id FROM metric_order_pending) AND key = ?1 AND order_id IS NULL";
