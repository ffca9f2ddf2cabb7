//! Latest values of wide writes, folded into `latest_metrics` in batches rather than on every
//! write.
//!
//! A write of a thousand keys at one step (per-class accuracies, per-layer norms, autologging)
//! is one row of `metric_writes`; its thousand latest-value upserts cost four times the rest of
//! the write. Measured at the store, 1,000-key writes to 128 runs from 4 clients:
//! 508-529 writes/s with the upserts, 1,680-2,490 without them
//! (`RUNS=128 cargo run --release -p spotsweep-store --example wide_batch -- 1000 1 3000 4`).
//! So a run's write row with [`DEFER_KEYS`] keys or more only lists itself in
//! `latest_unfolded`, in its own transaction (a crash loses nothing), and the writer task folds
//! the listed writes later: per run, the latest point of each key over all of its listed writes,
//! one upsert per (run, key) however many writes touched it.
//!
//! Every reader of latest values sees the listed writes as if they were folded:
//! - a run's latest values (get-run, a search's page, the sweep objective) are read together
//!   with the run's listed writes, in one snapshot, and merged ([`merge_into`]);
//! - a search that filters or sorts on metrics reads `latest_metrics` in SQL: it has the writer
//!   fold everything first ([`super::metrics_writer::latest_up_to_date`]), as it does for
//!   `metric_order`, which is built from `latest_metrics` and so is always brought up to date
//!   after a fold. On a full disk no fold can be written: such a search then filters and sorts
//!   on the values folded so far, rather than failing (reads go on).
//!
//! The writer folds when writes pause, when [`FOLD_AFTER`] writes are listed (so that a steady
//! stream does not pile them up), and whenever a search asks; a compaction folds its run's
//! listed writes before it removes their rows (so a run has at most 64 or so listed writes,
//! which bounds what a read of its latest values merges).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::metric_blocks::{Point, write_latest};
use super::{map_err, metric_order};
use crate::Result;

/// A run's write row with this many keys or more is folded later; below it its latest values
/// are upserted at once (a `log-metric`, a batch of a few keys), which costs no more.
pub(crate) const DEFER_KEYS: usize = 32;
/// Listed writes that make the writer fold without waiting for a pause. Under a steady stream
/// the compactions fold most writes (a run's every 64 writes, each key once); this bounds what a
/// search that arrives meanwhile waits for when writes go to many runs. Measured at the store,
/// 1,000-key writes to 128 runs in turn, 20,000 of them from 4 clients: 374 writes/s with
/// 1,024 (a fold every 8 writes of a run, which shares few upserts), 519 with 4,096 (492 before
/// any of this); 1,208 and 1,260 when each client sends 64 writes in a row to one run (513).
pub(crate) const FOLD_AFTER: usize = 4096;
/// About the longest the writer spends on one transaction of folding before it takes writes
/// again.
const SLICE: Duration = Duration::from_millis(10);
/// Most writes folded in one transaction (a 1,000-key write row is about 36 kB: this bounds
/// what one transaction reads and holds in memory).
const MAX_CHUNK: usize = 64;

/// Whether some write may be listed; set by the writers, cleared by a fold that left none.
#[derive(Debug)]
pub(crate) struct LatestFold {
    unfolded: AtomicBool,
    /// Writes per fold transaction (see [`fold_slice`]).
    chunk: AtomicUsize,
}

impl LatestFold {
    /// A store that just opened may have writes listed by the last process.
    pub(crate) fn new() -> Self {
        Self {
            unfolded: AtomicBool::new(true),
            chunk: AtomicUsize::new(16),
        }
    }

    /// Called after a commit that listed a write, before its writer is answered.
    pub(crate) fn note_unfolded(&self) {
        self.unfolded.store(true, Ordering::Release);
    }

    pub(crate) fn is_unfolded(&self) -> bool {
        self.unfolded.load(Ordering::Acquire)
    }
}

/// The latest point of each (run, key) in write rows `(run, data)`, borrowing the keys.
pub(crate) fn latest_of_writes(rows: &[(i64, Vec<u8>)]) -> Result<HashMap<(i64, &str), Point>> {
    let mut latest: HashMap<(i64, &str), Point> = HashMap::new();
    for (run, data) in rows {
        write_latest(data, |key, point| {
            latest
                .entry((*run, key))
                .and_modify(|p| {
                    if point.is_later_than(p) {
                        *p = point;
                    }
                })
                .or_insert(point);
        })?;
    }
    Ok(latest)
}

/// Merges the latest points of listed writes into stored latest points of the same runs:
/// each `(run, key)` keeps the later one.
pub(crate) fn merge_into(
    stored: &mut HashMap<(i64, String), Point>,
    listed: &[(i64, Vec<u8>)],
) -> Result<()> {
    for ((run, key), point) in latest_of_writes(listed)? {
        match stored.get_mut(&(run, key.to_owned())) {
            Some(p) if !point.is_later_than(p) => {}
            Some(p) => *p = point,
            None => {
                stored.insert((run, key.to_owned()), point);
            }
        }
    }
    Ok(())
}

/// The listed writes of the runs of a JSON list (?1), as `(run, data)`.
pub(crate) const LISTED_OF_RUNS: &str = "SELECT u.run_id, w.data FROM json_each(?1) p \
     CROSS JOIN latest_unfolded u ON u.run_id = p.value \
     CROSS JOIN metric_writes w ON w.id = u.write_id";

/// The listed writes of the trials of a sweep (?1), as `(run, data)`.
pub(crate) const LISTED_OF_SWEEP: &str = "SELECT u.run_id, w.data FROM trials t \
     CROSS JOIN latest_unfolded u ON u.run_id = t.run_id \
     CROSS JOIN metric_writes w ON w.id = u.write_id \
     WHERE t.sweep_id = ?1";

/// Listed writes, up to ?1 of them, a run's together: `(write, run)`.
pub(crate) const LISTED: &str =
    "SELECT write_id, run_id FROM latest_unfolded ORDER BY run_id, write_id LIMIT ?1";

/// The write rows of a JSON list of ids (?1), as `(run, data)`.
pub(crate) const WRITES: &str = "SELECT w.run_id, w.data FROM json_each(?1) p \
     CROSS JOIN metric_writes w ON w.id = p.value";

/// Unlists the writes of the runs of a JSON list (?1).
pub(crate) const UNLIST_RUNS: &str =
    "DELETE FROM latest_unfolded WHERE run_id IN (SELECT value FROM json_each(?1))";

/// Unlists the writes of a JSON list of ids (?1).
pub(crate) const UNLIST_WRITES: &str =
    "DELETE FROM latest_unfolded WHERE write_id IN (SELECT value FROM json_each(?1))";

/// Pushes upserts of latest points `(run, key, point)`: each keeps the stored point unless the
/// new one is later. Each statement ends with `;`.
pub(crate) fn push_upserts(qb: &mut QueryBuilder<Sqlite>, latest: &[(i64, &str, Point)]) {
    let mut rest = latest;
    for size in super::tracking::split_chunks(latest.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        qb.push("INSERT INTO latest_metrics (run_id, key, timestamp, step, value, is_nan) ");
        qb.push_values(chunk, |mut row, (run, key, point)| {
            let (value, is_nan) = point.stored();
            row.push_bind(*run)
                .push_bind((*key).to_owned())
                .push_bind(point.timestamp)
                .push_bind(point.step)
                .push_bind(value)
                .push_bind(is_nan);
        });
        qb.push(
            " ON CONFLICT (run_id, key) DO UPDATE SET timestamp = excluded.timestamp, step = excluded.step, \
             value = excluded.value, is_nan = excluded.is_nan \
             WHERE (excluded.step, excluded.timestamp, excluded.value) \
                 > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value); ",
        );
    }
}

/// Folds the listed writes of some runs (a compaction's), inside the caller's transaction:
/// see [`fold_rows`].
pub(crate) async fn fold_runs(conn: &mut SqliteConnection, runs: &[i64]) -> Result<usize> {
    let ids = super::tracking::json_ids(runs);
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(LISTED_OF_RUNS)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    if rows.is_empty() {
        return Ok(0);
    }
    fold_rows(conn, &rows).await?;
    sqlx::query(UNLIST_RUNS)
        .bind(ids)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(rows.len())
}

/// Upserts the latest points of write rows `(run, data)` and records their runs as pending for
/// `metric_order` (the caller notes that after its commit); the caller unlists the rows.
async fn fold_rows(conn: &mut SqliteConnection, rows: &[(i64, Vec<u8>)]) -> Result<()> {
    let latest = latest_of_writes(rows)?;
    let mut latest: Vec<(i64, &str, Point)> = latest.into_iter().map(|((r, k), p)| (r, k, p)).collect();
    // Key order within each run: the upserts walk the table's pages in order.
    latest.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    // One statement of at most 250 rows at a time (the same few texts, prepared once): a fold
    // of many runs would otherwise build one batch of a hundred thousand bound values.
    let mut rest = latest.as_slice();
    for size in super::tracking::split_chunks(latest.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let mut qb = QueryBuilder::new("");
        push_upserts(&mut qb, chunk);
        qb.build()
            .persistent(true)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    let mut runs: Vec<i64> = rows.iter().map(|(run, _)| *run).collect();
    runs.sort_unstable();
    runs.dedup();
    let mut qb = QueryBuilder::new(metric_order::MARK_PENDING);
    qb.push_values(&runs, |mut row, run| {
        row.push_bind(*run);
    });
    qb.build()
        .persistent(false)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Folds a chunk of listed writes (a run's together) in a transaction of its own; the chunk
/// grows while a transaction takes less than [`SLICE`] and shrinks when it takes more. Clears
/// the flag when none is left (while the caller still holds the writer connection, so that no
/// write commits in between). Returns whether writes are left, and how many were folded.
pub(crate) async fn fold_slice(conn: &mut SqliteConnection, state: &LatestFold) -> Result<(bool, usize)> {
    let started = Instant::now();
    let chunk = state.chunk.load(Ordering::Relaxed).clamp(1, MAX_CHUNK);
    let (left, folded) = super::metric_blocks::in_transaction(conn, async |conn| {
        let listed: Vec<(i64, i64)> = sqlx::query_as(LISTED)
            .bind(chunk as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        if listed.is_empty() {
            return Ok((false, 0));
        }
        let ids = super::tracking::json_ids(&listed.iter().map(|l| l.0).collect::<Vec<_>>());
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(WRITES)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        fold_rows(conn, &rows).await?;
        sqlx::query(UNLIST_WRITES)
            .bind(ids)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        Ok((listed.len() == chunk, listed.len()))
    })
    .await?;
    let next = if started.elapsed() > SLICE {
        chunk / 2
    } else {
        chunk * 2
    };
    state.chunk.store(next.clamp(1, MAX_CHUNK), Ordering::Relaxed);
    if !left {
        state.unfolded.store(false, Ordering::Release);
    }
    Ok((left, folded))
}

/// Folds every listed write, a slice at a time. On an error the flag stays set.
pub(crate) async fn fold_all(conn: &mut SqliteConnection, state: &LatestFold) -> Result<()> {
    while state.is_unfolded() {
        fold_slice(conn, state).await?;
    }
    Ok(())
}
