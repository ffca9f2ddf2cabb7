//! Sorted metric histories kept between the pages of one read. MLflow's client pages a history
//! 25,000 points at a time; without this, each page of a 1,000,000-point history loaded, decoded
//! and sorted all of it again (40 pages: 3.2 s; with it, the first page sorts and the others
//! slice).
//!
//! Only histories long enough to be paged are kept, for a short while, within a bound on points
//! held; the last page of a read drops its entry. Every metric write of a run drops that run's
//! entries (the writers call [`HistoryCache::invalidate`] after their commit), and a read that
//! raced a write does not store what it read (the cache's epoch moved meanwhile).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::metric_blocks::Point;

/// Histories shorter than this are read whole every time (a page or two).
pub(crate) const MIN_POINTS: usize = 50_000;
/// Points held at most (24 bytes each: 96 MB).
const MAX_POINTS: usize = 4_000_000;
/// An entry unused this long goes.
const IDLE: Duration = Duration::from_secs(30);

struct Entry {
    points: Arc<Vec<Point>>,
    used: Instant,
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct HistoryCache {
    entries: Mutex<HashMap<(String, String), Entry>>,
    /// Moves on every invalidation.
    epoch: AtomicU64,
}

impl std::fmt::Debug for HistoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryCache").finish_non_exhaustive()
    }
}

impl HistoryCache {
    /// The epoch to pass to [`HistoryCache::put`] for a read that starts now.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The sorted history of (run, key), if kept.
    pub(crate) fn get(&self, run: &str, key: &str) -> Option<Arc<Vec<Point>>> {
        let mut entries = self.entries.lock().ok()?;
        let entry = entries.get_mut(&(run.to_owned(), key.to_owned()))?;
        entry.used = Instant::now();
        Some(entry.points.clone())
    }

    /// Keeps a sorted history read since `epoch`, unless a write came meanwhile.
    pub(crate) fn put(&self, run: &str, key: &str, points: Arc<Vec<Point>>, epoch: u64) {
        if points.len() < MIN_POINTS || points.len() > MAX_POINTS {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let now = Instant::now();
        entries.retain(|_, e| now.duration_since(e.used) < IDLE);
        // Oldest first out, until the new one fits.
        let mut held: usize = entries.values().map(|e| e.points.len()).sum();
        while held + points.len() > MAX_POINTS {
            let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(e) = entries.remove(&oldest) {
                held -= e.points.len();
            }
        }
        entries.insert((run.to_owned(), key.to_owned()), Entry { points, used: now });
    }

    /// Drops an entry (its last page was read).
    pub(crate) fn remove(&self, run: &str, key: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&(run.to_owned(), key.to_owned()));
        }
    }

    /// A run's metrics changed: its entries go, and reads in flight keep nothing.
    pub(crate) fn invalidate(&self, run: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut entries) = self.entries.lock()
            && !entries.is_empty()
        {
            entries.retain(|(r, _), _| r != run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(n: usize) -> Arc<Vec<Point>> {
        Arc::new(
            (0..n as i64)
                .map(|i| Point {
                    timestamp: i,
                    step: i,
                    value: 0.0,
                })
                .collect(),
        )
    }

    #[test]
    fn a_write_during_a_read_keeps_the_read_out_and_drops_the_runs_entries() {
        let cache = HistoryCache::default();
        let e = cache.epoch();
        cache.put("r", "loss", points(MIN_POINTS), e);
        assert!(cache.get("r", "loss").is_some());
        // Short histories are not kept.
        cache.put("r", "acc", points(10), e);
        assert!(cache.get("r", "acc").is_none());
        let before = cache.epoch();
        cache.invalidate("r");
        assert!(cache.get("r", "loss").is_none());
        cache.put("r", "loss", points(MIN_POINTS), before);
        assert!(cache.get("r", "loss").is_none());
        // Another run's write drops nothing of this one's but still moves the epoch.
        let e = cache.epoch();
        cache.put("r", "loss", points(MIN_POINTS), e);
        cache.invalidate("other");
        assert!(cache.get("r", "loss").is_some());
    }

    #[test]
    fn the_bound_drops_the_least_recently_used() {
        let cache = HistoryCache::default();
        let n = MAX_POINTS / 2;
        cache.put("a", "k", points(n), cache.epoch());
        cache.put("b", "k", points(n), cache.epoch());
        assert!(cache.get("a", "k").is_some()); // a is now the most recent
        cache.put("c", "k", points(n), cache.epoch());
        assert!(cache.get("a", "k").is_some() && cache.get("c", "k").is_some());
        assert!(cache.get("b", "k").is_none());
    }
}
