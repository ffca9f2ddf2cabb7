//! Metric history stored in blocks: one row holds many points of one (run, key).
//!
//! A row per point costs a 6-column primary-key entry, a trigger run and a sqlx row decode for
//! every point written or read; a 1000-point `log-batch` of 10 keys becomes 10 rows here, and
//! a 100,000-point history about 100 rows. A block is the points of one write (or of a merge)
//! packed as fixed 24-byte records: timestamp (i64), step (i64), value (f64 bits), little-endian.
//!
//! Blocks are append-only and unordered among themselves; a reader sorts the points into history
//! order and drops exact duplicates, which is what the row-per-point table's all-column primary
//! key did (so client retries stay harmless). The latest value per (run, key) is upserted once
//! per key and write, not per point.
//!
//! Wide writes: a key with fewer than [`LOOSE`] points in a write (a `log-metric`, or a
//! `log-batch` of a thousand keys at one step: per-class accuracies, per-layer norms) does not get
//! a block of its own. The write's small keys of one run go together into one `metric_writes`
//! row (the same records, each key's preceded by its name and count), so that a thousand keys
//! cost one row, not a thousand rows and index entries on as many pages (measured: a 1000-key
//! batch took 5 ms as blocks, and every 32nd one 0.7 s more to merge a thousand keys). Readers
//! take a key's points from its blocks and from its run's write rows. Once a run has
//! [`WRITES_DUE`] write rows or [`WRITE_POINTS_DUE`] points in them, the writer compacts them,
//! after answering: each key's points become one block, and the rows go. A key whose compacted
//! block is small (it got few points meanwhile) leaves a loose block; after [`MERGE_AFTER`] of
//! those the run's loose blocks are merged into sorted full ones, every due key of the run in
//! one pass.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::latest_fold::{self, DEFER_KEYS};
use super::tracking::split_chunks;
use super::{map_err, metric_order};
pub(crate) use crate::points::{Point, sort_dedup};
use crate::{Metric, Result, StoreError};

/// Bytes of one point in a block.
const POINT_BYTES: usize = 24;
/// Points in a full block: merges fill blocks up to this and never touch a full one again.
pub(super) const FULL_BLOCK: usize = 1024;
/// A block with fewer points than this is loose: written by a small write, worth merging.
const LOOSE: usize = 64;
/// Loose blocks written for one (run, key) since its last merge that trigger the next merge.
const MERGE_AFTER: u32 = 32;
/// Entries kept in the loose-block counts before they start over (a forgotten count only
/// delays a merge).
const LOOSE_LIMIT: usize = 100_000;
/// Write rows of one run that trigger its compaction.
const WRITES_DUE: u32 = 64;
/// Points in one run's write rows that trigger its compaction (what a reader of one key of it
/// scans at most, about, besides the blocks).
const WRITE_POINTS_DUE: u64 = 65_536;

/// Packs points into a block.
pub(crate) fn encode(points: &[Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(points.len() * POINT_BYTES);
    for p in points {
        out.extend_from_slice(&p.timestamp.to_le_bytes());
        out.extend_from_slice(&p.step.to_le_bytes());
        out.extend_from_slice(&p.value.to_bits().to_le_bytes());
    }
    out
}

/// Appends the points of a block to `out`.
pub(crate) fn decode_into(block: &[u8], out: &mut Vec<Point>) -> Result<()> {
    if !block.len().is_multiple_of(POINT_BYTES) {
        return Err(StoreError::Incompatible(format!(
            "a metric block of {} bytes is not a whole number of points; the database is damaged",
            block.len()
        )));
    }
    out.reserve(block.len() / POINT_BYTES);
    for chunk in block.chunks_exact(POINT_BYTES) {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&chunk[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        out.push(Point {
            timestamp: word(0) as i64,
            step: word(1) as i64,
            value: f64::from_bits(word(2)),
        });
    }
    Ok(())
}

/// The points of one key of one run (addressed by its MLflow id), from its blocks and its run's
/// write rows, decoded, in no order.
pub(crate) async fn load<'e, E>(exec: E, run_uuid: &str, key: &str) -> Result<Vec<Point>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    // `is_write`: a row of `metric_writes` (every key of a write), else a block of this key.
    let rows: Vec<(bool, Vec<u8>)> = sqlx::query_as(
        "SELECT 0, data FROM metric_blocks WHERE run_id = (SELECT id FROM runs WHERE run_uuid = ?1) AND key = ?2 \
         UNION ALL \
         SELECT 1, data FROM metric_writes WHERE run_id = (SELECT id FROM runs WHERE run_uuid = ?1)",
    )
    .bind(run_uuid)
    .bind(key)
    .fetch_all(exec)
    .await
    .map_err(map_err)?;
    let mut points = Vec::new();
    for (is_write, data) in &rows {
        decode_row_into(*is_write, data, key, &mut points)?;
    }
    Ok(points)
}

/// Appends the points of `key` in a row: a block (all of them are the key's) or a write row.
pub(crate) fn decode_row_into(is_write: bool, data: &[u8], key: &str, out: &mut Vec<Point>) -> Result<()> {
    if is_write {
        decode_write_key(data, key, out)
    } else {
        decode_into(data, out)
    }
}

/// Packs a write row: for each key, its name's length (u32), the name, its point count (u32),
/// then its points as in a block; little-endian.
fn encode_write(groups: &[&Group<'_>]) -> Vec<u8> {
    let size: usize = groups
        .iter()
        .map(|g| 8 + g.key.len() + g.points.len() * POINT_BYTES)
        .sum();
    let mut out = Vec::with_capacity(size);
    for g in groups {
        out.extend_from_slice(&(g.key.len() as u32).to_le_bytes());
        out.extend_from_slice(g.key.as_bytes());
        out.extend_from_slice(&(g.points.len() as u32).to_le_bytes());
        out.extend_from_slice(&encode(&g.points));
    }
    out
}

/// Walks a write row: each key's name and the bytes of its points.
fn write_entries(data: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8])>> {
    let damaged = || {
        StoreError::Incompatible(format!(
            "a metric write row of {} bytes is malformed; the database is damaged",
            data.len()
        ))
    };
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let word = |b: &[u8]| {
            b.get(..4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize)
        };
        let entry = (|| {
            let klen = word(rest)?;
            let key = rest.get(4..4 + klen)?;
            let n = word(rest.get(4 + klen..)?)?;
            let start = 8 + klen;
            let points = rest.get(start..start + n.checked_mul(POINT_BYTES)?)?;
            rest = &rest[start + points.len()..];
            Some((key, points))
        })();
        match entry {
            Some(e) => Some(Ok(e)),
            None => {
                rest = &[];
                Some(Err(damaged()))
            }
        }
    })
}

/// Appends the points of `key` in a write row.
fn decode_write_key(data: &[u8], key: &str, out: &mut Vec<Point>) -> Result<()> {
    for entry in write_entries(data) {
        let (name, points) = entry?;
        if name == key.as_bytes() {
            decode_into(points, out)?;
        }
    }
    Ok(())
}

/// Calls `f` with each key of a write row and its latest point there.
pub(crate) fn write_latest<'a>(data: &'a [u8], mut f: impl FnMut(&'a str, Point)) -> Result<()> {
    let mut points = Vec::new();
    for entry in write_entries(data) {
        let (name, bytes) = entry?;
        let name = std::str::from_utf8(name).map_err(|_| {
            StoreError::Incompatible(
                "a metric write row has a key that is not UTF-8; the database is damaged".into(),
            )
        })?;
        points.clear();
        decode_into(bytes, &mut points)?;
        let mut latest = None::<Point>;
        for &p in &points {
            if latest.is_none_or(|l| p.is_later_than(&l)) {
                latest = Some(p);
            }
        }
        if let Some(p) = latest {
            f(name, p);
        }
    }
    Ok(())
}

/// Adds every key's points in a write row to `by_key`.
fn decode_write_all(data: &[u8], by_key: &mut HashMap<String, Vec<Point>>) -> Result<()> {
    for entry in write_entries(data) {
        let (name, points) = entry?;
        let name = std::str::from_utf8(name).map_err(|_| {
            StoreError::Incompatible(
                "a metric write row has a key that is not UTF-8; the database is damaged".into(),
            )
        })?;
        match by_key.get_mut(name) {
            Some(v) => decode_into(points, v)?,
            None => {
                let mut v = Vec::new();
                decode_into(points, &mut v)?;
                by_key.insert(name.to_owned(), v);
            }
        }
    }
    Ok(())
}

/// How many loose blocks each (run, key) got since its last merge, and how many write rows (and
/// points in them) each run has. Shared by every writer of metrics; only a hint (lost on
/// restart, reset when full), so a wrong count only moves a merge or a compaction.
#[derive(Debug, Clone, Default)]
pub(crate) struct LooseBlocks {
    loose: Arc<Mutex<HashMap<(i64, String), u32>>>,
    writes: Arc<Mutex<HashMap<i64, (u32, u64)>>>,
}

impl LooseBlocks {
    /// Counts one more write row of `run` with `points` points; true when the run is due for a
    /// compaction (its count starts over).
    fn add_write(&self, run: i64, points: usize) -> bool {
        let Ok(mut writes) = self.writes.lock() else {
            return false;
        };
        if writes.len() >= LOOSE_LIMIT {
            writes.clear();
        }
        let (rows, total) = writes.entry(run).or_insert((0, 0));
        *rows += 1;
        *total += points as u64;
        if *rows >= WRITES_DUE || *total >= WRITE_POINTS_DUE {
            writes.remove(&run);
            true
        } else {
            false
        }
    }

    /// Counts one more loose block; true when it is time to merge.
    fn add(&self, run: i64, key: &str) -> bool {
        let Ok(mut counts) = self.loose.lock() else {
            return false;
        };
        if counts.len() >= LOOSE_LIMIT {
            counts.clear();
        }
        let n = counts.entry((run, key.to_owned())).or_insert(0);
        *n += 1;
        if *n >= MERGE_AFTER {
            *n = 0;
            true
        } else {
            false
        }
    }
}

/// The points of one write for one (run, key), and the latest of them.
struct Group<'a> {
    run: i64,
    key: &'a str,
    points: Vec<Point>,
    latest: Point,
}

/// Groups points by (run, key), keeping the latest of each group.
fn group<'a>(rows: &[(i64, &'a Metric)]) -> Vec<Group<'a>> {
    let mut index: HashMap<(i64, &str), usize> = HashMap::new();
    let mut groups: Vec<Group<'a>> = Vec::new();
    for &(run, m) in rows {
        let point = Point::from_metric(m);
        match index.get(&(run, m.key.as_str())) {
            Some(&i) => {
                let g = &mut groups[i];
                if point.is_later_than(&g.latest) {
                    g.latest = point;
                }
                g.points.push(point);
            }
            None => {
                index.insert((run, m.key.as_str()), groups.len());
                groups.push(Group {
                    run,
                    key: m.key.as_str(),
                    points: vec![point],
                    latest: point,
                });
            }
        }
    }
    groups
}

/// The write rows of `groups`: per run, its keys with fewer than [`LOOSE`] points, together.
fn write_rows<'g, 'a>(groups: &'g [Group<'a>]) -> Vec<(i64, Vec<&'g Group<'a>>)> {
    let mut by_run: Vec<(i64, Vec<&Group<'a>>)> = Vec::new();
    for g in groups.iter().filter(|g| g.points.len() < LOOSE) {
        match by_run.iter_mut().find(|(run, _)| *run == g.run) {
            Some((_, v)) => v.push(g),
            None => by_run.push((g.run, vec![g])),
        }
    }
    by_run
}

/// Pushes the statements that store `groups`: a block for each key with [`LOOSE`] points or
/// more, one write row per run for the others, then their latest values (an upsert that keeps
/// the stored point unless the new one is later) and the runs as pending for `metric_order`.
/// Each statement ends with `;`. A run's write row of [`DEFER_KEYS`] keys or more is left out
/// with its latest values, and returned: the caller writes it with [`LIST_WRITE`], listed for a
/// later fold (see `latest_fold`).
fn push_writes<'g, 'a>(
    qb: &mut QueryBuilder<Sqlite>,
    groups: &'g [Group<'a>],
) -> Vec<(i64, Vec<&'g Group<'a>>)> {
    let blocks: Vec<&Group<'_>> = groups.iter().filter(|g| g.points.len() >= LOOSE).collect();
    let mut rest = blocks.as_slice();
    for size in split_chunks(blocks.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        qb.push("INSERT INTO metric_blocks (run_id, key, points, data) ");
        qb.push_values(chunk, |mut row, g| {
            row.push_bind(g.run)
                .push_bind(g.key.to_owned())
                .push_bind(g.points.len() as i64)
                .push_bind(encode(&g.points));
        });
        qb.push("; ");
    }
    let (deferred, now): (Vec<_>, Vec<_>) = write_rows(groups)
        .into_iter()
        .partition(|(_, gs)| gs.len() >= DEFER_KEYS);
    if !now.is_empty() {
        qb.push("INSERT INTO metric_writes (run_id, points, data) ");
        qb.push_values(&now, |mut row, (run, gs)| {
            row.push_bind(*run)
                .push_bind(gs.iter().map(|g| g.points.len() as i64).sum::<i64>())
                .push_bind(encode_write(gs));
        });
        qb.push("; ");
    }
    let deferred_runs: HashSet<i64> = deferred.iter().map(|(run, _)| *run).collect();
    let is_deferred = |g: &Group<'_>| g.points.len() < LOOSE && deferred_runs.contains(&g.run);
    let latest: Vec<(i64, &str, Point)> = groups
        .iter()
        .filter(|g| !is_deferred(g))
        .map(|g| (g.run, g.key, g.latest))
        .collect();
    latest_fold::push_upserts(qb, &latest);
    let mut runs: Vec<i64> = latest.iter().map(|(run, _, _)| *run).collect();
    runs.sort_unstable();
    runs.dedup();
    if !runs.is_empty() {
        qb.push(metric_order::MARK_PENDING);
        qb.push_values(&runs, |mut row, run| {
            row.push_bind(*run);
        });
        qb.push("; ");
    }
    deferred
}

/// Inserts a write row of one run and lists it for a fold: one fixed statement pair (cached
/// once; `last_insert_rowid()` names the row just inserted).
const LIST_WRITE: &str = "INSERT INTO metric_writes (run_id, points, data) VALUES (?1, ?2, ?3); \
     INSERT OR REPLACE INTO latest_unfolded (write_id, run_id) VALUES (last_insert_rowid(), ?1)";

/// Writes the write rows [`push_writes`] left out, listed for a fold.
async fn list_writes(conn: &mut SqliteConnection, rows: &[(i64, Vec<&Group<'_>>)]) -> Result<()> {
    for (run, gs) in rows {
        sqlx::query(LIST_WRITE)
            .bind(*run)
            .bind(gs.iter().map(|g| g.points.len() as i64).sum::<i64>())
            .bind(encode_write(gs))
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// The runs among `groups` whose write rows are due for a compaction.
fn compactions_due(loose: &LooseBlocks, groups: &[Group<'_>]) -> Vec<i64> {
    write_rows(groups)
        .into_iter()
        .filter(|(run, gs)| loose.add_write(*run, gs.iter().map(|g| g.points.len()).sum()))
        .map(|(run, _)| run)
        .collect()
}

/// Writes points of any runs inside the caller's transaction: blocks, write rows and one
/// latest-value upsert per (run, key) (or a listing for a later fold), sent as one batch of
/// statements, then the compactions that became due. Returns how many writes were listed for
/// a fold (the caller notes that after its commit, see `latest_fold`).
pub(crate) async fn append(
    conn: &mut SqliteConnection,
    loose: &LooseBlocks,
    rows: &[(i64, &Metric)],
) -> Result<usize> {
    let groups = group(rows);
    if groups.is_empty() {
        return Ok(0);
    }
    let mut qb = QueryBuilder::new("");
    let listed = push_writes(&mut qb, &groups);
    if !qb.sql().as_str().is_empty() {
        qb.build()
            .persistent(true)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    list_writes(conn, &listed).await?;
    for run in compactions_due(loose, &groups) {
        compact(conn, loose, run).await?;
    }
    Ok(listed.len())
}

/// Writes points of any runs in a transaction of their own, sent to SQLite as one batch of
/// statements (`BEGIN` to `COMMIT`: one hand-off to the connection's thread instead of four or
/// more). Returns the runs due for a compaction, which the caller runs later with
/// [`compact_alone`], after answering the writers, and how many writes were listed for a fold.
pub(crate) async fn commit(
    conn: &mut SqliteConnection,
    loose: &LooseBlocks,
    rows: &[(i64, &Metric)],
) -> Result<(Vec<i64>, usize)> {
    let groups = group(rows);
    if groups.is_empty() {
        return Ok((vec![], 0));
    }
    let mut qb = QueryBuilder::new("BEGIN IMMEDIATE; ");
    let listed = push_writes(&mut qb, &groups);
    if listed.is_empty() {
        qb.push("COMMIT");
    }
    let mut done = qb
        .build()
        .persistent(true)
        .execute(&mut *conn)
        .await
        .map_err(map_err);
    if done.is_ok() && !listed.is_empty() {
        done = async {
            list_writes(conn, &listed).await?;
            sqlx::query("COMMIT").execute(&mut *conn).await.map_err(map_err)
        }
        .await;
    }
    if let Err(e) = done {
        // A failed statement leaves the transaction open; end it (an error here means there
        // was none left to end).
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return Err(e);
    }
    Ok((compactions_due(loose, &groups), listed.len()))
}

/// [`compact`] in a transaction of its own.
pub(crate) async fn compact_alone(conn: &mut SqliteConnection, loose: &LooseBlocks, run: i64) -> Result<()> {
    in_transaction(conn, async |conn| compact(conn, loose, run).await).await
}

/// Turns a run's write rows into blocks: each key's points, sorted and de-duplicated, become
/// blocks of their own (full ones and a last partly filled one), and the rows go (their
/// latest values folded first, see `latest_fold`; the caller notes the run's new pending
/// `metric_order` entries). Then the run's keys whose loose blocks became due are merged.
pub(crate) async fn compact(conn: &mut SqliteConnection, loose: &LooseBlocks, run: i64) -> Result<()> {
    latest_fold::fold_runs(conn, &[run]).await?;
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT id, data FROM metric_writes WHERE run_id = ? ORDER BY id")
            .bind(run)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
    let Some(&(last, _)) = rows.last() else {
        return Ok(());
    };
    let mut by_key: HashMap<String, Vec<Point>> = HashMap::new();
    for (_, data) in &rows {
        decode_write_all(data, &mut by_key)?;
    }
    drop(rows);
    let mut blocks: Vec<(&str, Vec<u8>, usize)> = Vec::new();
    let mut due = Vec::new();
    for (key, points) in &mut by_key {
        sort_dedup(points, Point::history_order);
        for chunk in points.chunks(FULL_BLOCK) {
            blocks.push((key.as_str(), encode(chunk), chunk.len()));
        }
        if points.len() % FULL_BLOCK < LOOSE
            && !points.len().is_multiple_of(FULL_BLOCK)
            && loose.add(run, key)
        {
            due.push(key.clone());
        }
    }
    insert_block_rows(conn, run, &blocks).await?;
    sqlx::query("DELETE FROM metric_writes WHERE run_id = ? AND id <= ?")
        .bind(run)
        .bind(last)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    if !due.is_empty() {
        merge_keys(conn, run, &due).await?;
    }
    Ok(())
}

/// Inserts blocks `(key, data, points)` of one run with multi-row statements.
async fn insert_block_rows<K: AsRef<str>>(
    conn: &mut SqliteConnection,
    run: i64,
    blocks: &[(K, Vec<u8>, usize)],
) -> Result<()> {
    let mut rest = blocks;
    for size in split_chunks(blocks.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let mut qb = QueryBuilder::new("INSERT INTO metric_blocks (run_id, key, points, data) ");
        qb.push_values(chunk, |mut row, (key, data, n)| {
            row.push_bind(run)
                .push_bind(key.as_ref().to_owned())
                .push_bind(*n as i64)
                .push_bind(data.clone());
        });
        qb.build()
            .persistent(true)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// Merges the partly filled blocks of some keys of one run into sorted, de-duplicated full
/// blocks (and at most one partly filled one per key): one read, one delete and multi-row
/// inserts for all of them.
pub(crate) async fn merge_keys(conn: &mut SqliteConnection, run: i64, keys: &[String]) -> Result<()> {
    let keys_json = serde_json::to_string(keys).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let partial: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, key, data FROM metric_blocks \
         WHERE run_id = ?1 AND key IN (SELECT value FROM json_each(?2)) AND points < ?3 ORDER BY key, id",
    )
    .bind(run)
    .bind(keys_json)
    .bind(FULL_BLOCK as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let mut gone: Vec<i64> = Vec::new();
    let mut merged: Vec<(String, Vec<u8>, usize)> = Vec::new();
    let mut points = Vec::new();
    let mut i = 0;
    while i < partial.len() {
        let key = &partial[i].1;
        let end = i + partial[i..].iter().take_while(|(_, k, _)| k == key).count();
        if end - i >= 2 {
            points.clear();
            for (id, _, block) in &partial[i..end] {
                decode_into(block, &mut points)?;
                gone.push(*id);
            }
            sort_dedup(&mut points, Point::history_order);
            for chunk in points.chunks(FULL_BLOCK) {
                merged.push((key.clone(), encode(chunk), chunk.len()));
            }
        }
        i = end;
    }
    if gone.is_empty() {
        return Ok(());
    }
    let ids = serde_json::to_string(&gone).map_err(|e| StoreError::Invalid(e.to_string()))?;
    sqlx::query("DELETE FROM metric_blocks WHERE id IN (SELECT value FROM json_each(?))")
        .bind(ids)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    insert_block_rows(conn, run, &merged).await
}

/// Runs `work` in a write transaction: committed when it succeeds, rolled back otherwise.
pub(super) async fn in_transaction<T>(
    conn: &mut SqliteConnection,
    work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T>,
) -> Result<T> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    let done = work(&mut *conn).await;
    let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
    if let Err(e) = sqlx::query(end).execute(&mut *conn).await {
        // A failed COMMIT (a full disk) may leave the transaction open: end it here; an
        // error means SQLite already had.
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return Err(map_err(e));
    }
    done
}

/// Stores sorted points of one (run, key) as full blocks and a last partly filled one.
pub(crate) async fn insert_blocks(
    conn: &mut SqliteConnection,
    run: i64,
    key: &str,
    points: &[Point],
) -> Result<()> {
    for chunk in points.chunks(FULL_BLOCK) {
        sqlx::query("INSERT INTO metric_blocks (run_id, key, points, data) VALUES (?, ?, ?, ?)")
            .bind(run)
            .bind(key)
            .bind(chunk.len() as i64)
            .bind(encode(chunk))
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// Moves the points of the row-per-point table of schema versions 1 to 4 (renamed
/// `metrics_legacy` by migration 5) into blocks, then drops it. One transaction: a crash half-way
/// leaves the legacy table whole, and the next start does it again.
pub(crate) async fn convert_legacy(conn: &mut SqliteConnection) -> Result<()> {
    let legacy: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'metrics_legacy'")
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
    if legacy.is_none() {
        return Ok(());
    }
    in_transaction(conn, convert_legacy_rows).await
}

async fn convert_legacy_rows(conn: &mut SqliteConnection) -> Result<()> {
    type Row = (i64, String, i64, i64, f64, bool);
    const PAGE: i64 = 65_536;
    // Pages in primary-key order, resuming after the last row of the previous page.
    let mut after: Option<Row> = None;
    loop {
        let rows: Vec<Row> = match &after {
            None => sqlx::query_as(
                "SELECT run_id, key, timestamp, step, value, is_nan FROM metrics_legacy \
                 ORDER BY run_id, key, timestamp, step, value, is_nan LIMIT ?",
            )
            .bind(PAGE),
            Some((run, key, timestamp, step, value, is_nan)) => sqlx::query_as(
                "SELECT run_id, key, timestamp, step, value, is_nan FROM metrics_legacy \
                 WHERE (run_id, key, timestamp, step, value, is_nan) > (?, ?, ?, ?, ?, ?) \
                 ORDER BY run_id, key, timestamp, step, value, is_nan LIMIT ?",
            )
            .bind(*run)
            .bind(key.clone())
            .bind(*timestamp)
            .bind(*step)
            .bind(*value)
            .bind(*is_nan)
            .bind(PAGE),
        }
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        let Some(last) = rows.last().cloned() else {
            break;
        };
        let mut start = 0;
        while start < rows.len() {
            let (run, key) = (rows[start].0, &rows[start].1);
            let end = start
                + rows[start..]
                    .iter()
                    .take_while(|r| r.0 == run && &r.1 == key)
                    .count();
            let points: Vec<Point> = rows[start..end]
                .iter()
                .map(|(_, _, timestamp, step, value, is_nan)| Point {
                    timestamp: *timestamp,
                    step: *step,
                    value: if *is_nan { f64::NAN } else { *value },
                })
                .collect();
            insert_blocks(conn, run, key, &points).await?;
            start = end;
        }
        after = Some(last);
    }
    sqlx::query("DROP TABLE metrics_legacy")
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(timestamp: i64, step: i64, value: f64) -> Point {
        Point {
            timestamp,
            step,
            value,
        }
    }

    #[test]
    fn blocks_round_trip_every_value() {
        let points = vec![
            p(1, 0, 0.5),
            p(-7, i64::MAX, f64::MAX),
            p(i64::MIN, -3, f64::MIN),
            p(3, 3, f64::NAN),
            p(4, 4, -0.0),
        ];
        let mut back = Vec::new();
        decode_into(&encode(&points), &mut back).unwrap();
        assert_eq!(back.len(), points.len());
        for (a, b) in points.iter().zip(&back) {
            assert_eq!(
                (a.timestamp, a.step, a.value.to_bits()),
                (b.timestamp, b.step, b.value.to_bits())
            );
        }
        assert!(decode_into(&[0u8; 23], &mut back).is_err());
    }

    #[test]
    fn history_is_sorted_and_exact_duplicates_dropped() {
        let mut points = vec![
            p(2, 1, 0.5),
            p(1, 5, 0.1),
            p(2, 1, 0.5),
            p(2, 1, f64::NAN),
            p(2, 1, 0.0),
            p(2, 1, f64::NAN),
        ];
        sort_dedup(&mut points, Point::history_order);
        let seen: Vec<(i64, i64, (f64, bool))> =
            points.iter().map(|x| (x.timestamp, x.step, x.stored())).collect();
        assert_eq!(
            seen,
            vec![
                (1, 5, (0.1, false)),
                (2, 1, (0.0, false)),
                (2, 1, (0.0, true)),
                (2, 1, (0.5, false))
            ]
        );
    }

    #[test]
    fn infinities_are_clamped_like_the_reference() {
        let m = |value: f64| Metric {
            key: "k".into(),
            value,
            timestamp: 0,
            step: 0,
        };
        assert_eq!(Point::from_metric(&m(f64::INFINITY)).value, f64::MAX);
        assert_eq!(Point::from_metric(&m(f64::NEG_INFINITY)).value, f64::MIN);
        assert!(Point::from_metric(&m(f64::NAN)).value.is_nan());
    }

    #[test]
    fn latest_is_max_step_then_timestamp_then_value() {
        assert!(p(0, 2, 0.0).is_later_than(&p(9, 1, 9.0)));
        assert!(p(5, 1, 0.0).is_later_than(&p(4, 1, 9.0)));
        assert!(p(5, 1, 2.0).is_later_than(&p(5, 1, 1.0)));
        assert!(!p(5, 1, 1.0).is_later_than(&p(5, 1, 1.0)));
        // NaN counts as 0 and never replaces an equal 0.
        assert!(!p(5, 1, f64::NAN).is_later_than(&p(5, 1, 0.0)));
        assert!(p(5, 1, 0.5).is_later_than(&p(5, 1, f64::NAN)));
    }
}
