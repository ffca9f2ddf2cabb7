//! Metric points as every backend reads them: the stored form of a value (±∞ clamped to
//! ±`f64::MAX`, NaN stored as 0 with a flag), history and step order, and the latest-point rule
//! (highest step, then timestamp, then value). Pure functions, shared by SQLite's blocks and
//! PostgreSQL's rows.

use std::cmp::Ordering;

use crate::Metric;

/// One stored point. ±∞ are stored as ±`f64::MAX` (what the reference returns for them); NaN
/// is stored as NaN and compares, as in the reference's table, like 0 followed by "is NaN".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    pub timestamp: i64,
    pub step: i64,
    pub value: f64,
}

impl Point {
    pub(crate) fn from_metric(m: &Metric) -> Self {
        let value = if m.value.is_nan() {
            f64::NAN
        } else if m.value.is_infinite() {
            if m.value > 0.0 { f64::MAX } else { f64::MIN }
        } else {
            m.value
        };
        Self {
            timestamp: m.timestamp,
            step: m.step,
            value,
        }
    }

    pub(crate) fn to_metric(self, key: &str) -> Metric {
        Metric {
            key: key.to_owned(),
            value: self.value,
            timestamp: self.timestamp,
            step: self.step,
        }
    }

    /// A point as a SQL row holds it (see [`Point::stored`]).
    pub(crate) fn from_stored(timestamp: i64, step: i64, value: f64, is_nan: bool) -> Self {
        Self {
            timestamp,
            step,
            value: if is_nan { f64::NAN } else { value },
        }
    }

    /// The value as the SQL column holds it (0 for NaN) and the NaN flag.
    pub(crate) fn stored(&self) -> (f64, bool) {
        if self.value.is_nan() {
            (0.0, true)
        } else {
            (self.value, false)
        }
    }

    fn value_order(&self, other: &Self) -> Ordering {
        let ((a, a_nan), (b, b_nan)) = (self.stored(), other.stored());
        a.partial_cmp(&b)
            .unwrap_or(Ordering::Equal)
            .then(a_nan.cmp(&b_nan))
    }

    /// History order: timestamp, step, value (as the reference's `get-history`).
    pub(crate) fn history_order(&self, other: &Self) -> Ordering {
        self.timestamp
            .cmp(&other.timestamp)
            .then(self.step.cmp(&other.step))
            .then_with(|| self.value_order(other))
    }

    /// Step order: step, timestamp, value (charts and pruning).
    pub(crate) fn step_order(&self, other: &Self) -> Ordering {
        self.step
            .cmp(&other.step)
            .then(self.timestamp.cmp(&other.timestamp))
            .then_with(|| self.value_order(other))
    }

    /// Whether `self` replaces `current` as the latest point: a higher step, then a higher
    /// timestamp, then a higher value (NaN counting as 0), strictly.
    pub(crate) fn is_later_than(&self, current: &Self) -> bool {
        let (a, _) = self.stored();
        let (b, _) = current.stored();
        (self.step, self.timestamp).cmp(&(current.step, current.timestamp)) == Ordering::Greater
            || ((self.step, self.timestamp) == (current.step, current.timestamp) && a > b)
    }
}

/// Sorts points with `order` and drops exact duplicates (equal in every column).
pub(crate) fn sort_dedup(points: &mut Vec<Point>, order: fn(&Point, &Point) -> Ordering) {
    points.sort_unstable_by(order);
    points.dedup_by(|a, b| a.history_order(b) == Ordering::Equal);
}

/// Which of `n` ordered rows a chart keeps when it may show `max` of them: the rows are cut into
/// `max` nearly equal buckets (the first `n % max` one row longer), the first row of each is
/// kept, and the last row always is, replacing the final sample when there is no room for it.
/// This is the reference server's rule, so charts look the same against both.
pub(crate) fn sample_rows(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let max = max.max(1);
    let (small, extra) = (n / max, n % max);
    let mut picks: Vec<usize> = (0..max).map(|i| i * small + i.min(extra)).collect();
    if picks.last() != Some(&(n - 1)) {
        if picks.len() == max {
            picks.pop();
        }
        picks.push(n - 1);
    }
    picks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_matches_the_reference_rule() {
        assert_eq!(sample_rows(20, 6), vec![0, 4, 8, 11, 14, 19]);
        assert_eq!(sample_rows(20, 1), vec![19]);
        assert_eq!(sample_rows(5, 10), vec![0, 1, 2, 3, 4]);
        for n in 1..300 {
            for max in 1..40 {
                let s = sample_rows(n, max);
                assert!(s.len() <= max && s.windows(2).all(|w| w[0] < w[1]), "{n} {max}");
                assert_eq!(s.last(), Some(&(n - 1)));
            }
        }
    }
}
