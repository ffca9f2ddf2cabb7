//! Pruners: whether a running trial should stop, from the intermediate values of the objective
//! metric (its MLflow history, by step) of the trial and of the others of its sweep.
//!
//! - **median / percentile**: stop when the trial's best value so far is worse than the given
//!   percentile of the completed trials' values at its latest step (after `warmup_steps`, once
//!   `startup_trials` trials have completed).
//! - **asha** (asynchronous successive halving): rungs at `min_steps * reduction_factor^k`
//!   steps; a trial reaching a rung goes on only if its value there is in the top
//!   `1 / reduction_factor` of the trials that reached that rung before it (or is the best of
//!   them, while they are fewer than `reduction_factor`).
//! - **hyperband**: ASHA brackets whose first rung is `min_steps * reduction_factor^b`, for
//!   `b` up to what `max_steps` allows; trial `n` runs in bracket `n mod brackets` and is
//!   compared only with its bracket.

use crate::sweep::{Goal, PrunerKind, PrunerSpec};

use super::loss;

/// One intermediate value: the last one logged at its step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The step.
    pub step: i64,
    /// The value.
    pub value: f64,
    /// When it was logged, ms since the epoch.
    pub timestamp: i64,
}

/// A trial's intermediate values, by increasing step.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// The trial's number in the sweep.
    pub number: u64,
    /// Whether the trial completed (only completed trials set the median's bar).
    pub completed: bool,
    /// Its points, one per step, by increasing step.
    pub points: Vec<Point>,
}

/// What to do with a running trial.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let it run.
    Continue,
    /// Stop it: at this step, for this reason.
    Prune {
        /// The step at which it was judged.
        step: i64,
        /// Why, for people.
        reason: String,
    },
}

/// The pruner's decision on `trial` given the other trials of its sweep (`peers`, in any state;
/// `trial` itself may be among them and is skipped).
pub fn decide(pruner: &PrunerSpec, goal: Goal, trial: &Curve, peers: &[Curve]) -> Decision {
    let peers: Vec<&Curve> = peers.iter().filter(|p| p.number != trial.number).collect();
    match pruner.kind {
        PrunerKind::None => Decision::Continue,
        PrunerKind::Median | PrunerKind::Percentile => percentile_rule(pruner, goal, trial, &peers),
        PrunerKind::Asha => successive_halving(pruner, goal, trial, &peers, 0, "asha"),
        PrunerKind::Hyperband => {
            let brackets = hyperband_brackets(pruner);
            let bracket = trial.number % brackets;
            let same: Vec<&Curve> = peers
                .iter()
                .copied()
                .filter(|p| p.number % brackets == bracket)
                .collect();
            successive_halving(pruner, goal, trial, &same, bracket as u32, "hyperband")
        }
    }
}

/// Hyperband's number of brackets: one per first rung that leaves at least one more rung
/// before `max_steps`.
pub fn hyperband_brackets(pruner: &PrunerSpec) -> u64 {
    let eta = f64::from(pruner.reduction_factor());
    let ratio = pruner.max_steps.unwrap_or(pruner.min_steps()) as f64 / pruner.min_steps() as f64;
    ((ratio.max(1.0).ln() / eta.ln()).floor() as u64 + 1).max(1)
}

fn percentile_rule(pruner: &PrunerSpec, goal: Goal, trial: &Curve, peers: &[&Curve]) -> Decision {
    let Some(last) = trial.points.last() else {
        return Decision::Continue;
    };
    let completed = peers.iter().filter(|p| p.completed).count();
    if completed < pruner.startup_trials() as usize || last.step < pruner.warmup_steps() {
        return Decision::Continue;
    }
    let best = trial
        .points
        .iter()
        .map(|p| loss(goal, p.value))
        .fold(f64::INFINITY, |a, b| if b.is_nan() { f64::NAN } else { a.min(b) });
    let mut at_step: Vec<f64> = peers
        .iter()
        .filter(|p| p.completed)
        .filter_map(|p| p.points.iter().find(|q| q.step == last.step))
        .map(|q| loss(goal, q.value))
        .filter(|v| !v.is_nan())
        .collect();
    if at_step.is_empty() {
        return Decision::Continue;
    }
    at_step.sort_by(f64::total_cmp);
    let p = pruner.percentile();
    let bar = percentile(&at_step, p);
    if best.is_nan() || best > bar {
        let name = if pruner.kind == PrunerKind::Median {
            "median".to_string()
        } else {
            format!("{p}th percentile")
        };
        return Decision::Prune {
            step: last.step,
            reason: format!(
                "pruned at step {}: best value so far {} is worse than the {name} {} of {} completed trials at that step",
                last.step,
                signed(goal, best),
                signed(goal, bar),
                at_step.len()
            ),
        };
    }
    Decision::Continue
}

fn successive_halving(
    pruner: &PrunerSpec,
    goal: Goal,
    trial: &Curve,
    peers: &[&Curve],
    first_rung: u32,
    name: &str,
) -> Decision {
    let eta = pruner.reduction_factor();
    let Some(last) = trial.points.last() else {
        return Decision::Continue;
    };
    let mut k = first_rung;
    loop {
        let Some(rung) = eta
            .checked_pow(k)
            .and_then(|f| pruner.min_steps().checked_mul(i64::from(f)))
        else {
            return Decision::Continue;
        };
        if rung > last.step {
            return Decision::Continue;
        }
        let mine = rung_point(trial, rung).expect("the trial reached this rung");
        let mine_loss = loss(goal, mine.value);
        // Who reached this rung before this trial did.
        let mut competing: Vec<f64> = peers
            .iter()
            .filter_map(|p| rung_point(p, rung).map(|q| (p.number, q)))
            .filter(|(n, q)| (q.timestamp, *n) < (mine.timestamp, trial.number))
            .map(|(_, q)| loss(goal, q.value))
            .filter(|v| !v.is_nan())
            .collect();
        competing.push(mine_loss);
        competing.sort_by(f64::total_cmp);
        let keep = (competing.len() / eta as usize).max(1);
        let bar = competing[keep - 1];
        if mine_loss.is_nan() || mine_loss > bar {
            return Decision::Prune {
                step: mine.step,
                reason: format!(
                    "pruned at step {} by {name}: value {} at the rung of step {rung} is not in the top {keep} of the {} trials that reached it",
                    mine.step,
                    signed(goal, mine_loss),
                    competing.len()
                ),
            };
        }
        k += 1;
    }
}

/// A curve's point at a rung: the first at or after the rung's step.
fn rung_point(curve: &Curve, rung: i64) -> Option<Point> {
    curve.points.iter().find(|p| p.step >= rung).copied()
}

/// The `p`-th percentile of sorted values, interpolating linearly between ranks.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// A loss back in the metric's own sign.
fn signed(goal: Goal, l: f64) -> f64 {
    loss(goal, l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(number: u64, completed: bool, values: &[(i64, f64)]) -> Curve {
        Curve {
            number,
            completed,
            points: values
                .iter()
                .map(|&(step, value)| Point {
                    step,
                    value,
                    timestamp: 1000 * number as i64 + step,
                })
                .collect(),
        }
    }

    fn spec(kind: PrunerKind) -> PrunerSpec {
        PrunerSpec {
            kind,
            ..PrunerSpec::default()
        }
    }

    #[test]
    fn median_prunes_worse_than_the_median_at_the_same_step() {
        let mut pruner = spec(PrunerKind::Median);
        pruner.startup_trials = Some(3);
        // Completed trials' losses at step 2: 1.0, 2.0, 3.0 -> median 2.0.
        let peers = vec![
            curve(0, true, &[(1, 5.0), (2, 1.0)]),
            curve(1, true, &[(1, 5.0), (2, 2.0)]),
            curve(2, true, &[(1, 5.0), (2, 3.0)]),
            // A running trial does not set the bar.
            curve(3, false, &[(1, 0.1), (2, 0.1)]),
        ];
        // Best so far 2.5 > 2.0: pruned at step 2.
        let worse = curve(4, false, &[(1, 2.5), (2, 2.6)]);
        assert!(matches!(
            decide(&pruner, Goal::Minimize, &worse, &peers),
            Decision::Prune { step: 2, .. }
        ));
        // Best so far 1.5 <= 2.0 (its step 1 value counts): continues.
        let fine = curve(5, false, &[(1, 1.5), (2, 2.6)]);
        assert_eq!(decide(&pruner, Goal::Minimize, &fine, &peers), Decision::Continue);
        // Maximising, the same numbers: the median is still 2.0 and 2.6 is better.
        assert_eq!(
            decide(&pruner, Goal::Maximize, &worse, &peers),
            Decision::Continue
        );
        // Nobody else at step 3: no evidence, no pruning.
        let ahead = curve(6, false, &[(3, 100.0)]);
        assert_eq!(
            decide(&pruner, Goal::Minimize, &ahead, &peers),
            Decision::Continue
        );
    }

    #[test]
    fn median_waits_for_startup_trials_and_warmup() {
        let mut pruner = spec(PrunerKind::Median);
        let peers = vec![curve(0, true, &[(1, 1.0)]), curve(1, true, &[(1, 1.0)])];
        let bad = curve(2, false, &[(1, 9.0)]);
        // Default: 5 startup trials; only 2 completed.
        assert_eq!(decide(&pruner, Goal::Minimize, &bad, &peers), Decision::Continue);
        pruner.startup_trials = Some(2);
        assert!(matches!(
            decide(&pruner, Goal::Minimize, &bad, &peers),
            Decision::Prune { .. }
        ));
        pruner.warmup_steps = Some(2);
        assert_eq!(decide(&pruner, Goal::Minimize, &bad, &peers), Decision::Continue);
    }

    #[test]
    fn percentile_interpolates() {
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 25.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0], 50.0), 1.5);
        let mut pruner = spec(PrunerKind::Percentile);
        pruner.percentile = Some(25.0);
        pruner.startup_trials = Some(1);
        let peers: Vec<Curve> = (0..5).map(|i| curve(i, true, &[(1, i as f64 + 1.0)])).collect();
        // 25th percentile of 1..5 is 2.0.
        assert!(matches!(
            decide(&pruner, Goal::Minimize, &curve(9, false, &[(1, 2.1)]), &peers),
            Decision::Prune { .. }
        ));
        assert_eq!(
            decide(&pruner, Goal::Minimize, &curve(9, false, &[(1, 2.0)]), &peers),
            Decision::Continue
        );
    }

    #[test]
    fn asha_keeps_the_top_third_of_those_before_it_at_each_rung() {
        let mut pruner = spec(PrunerKind::Asha);
        pruner.min_steps = Some(1);
        pruner.reduction_factor = Some(3);
        // Rungs at steps 1, 3, 9. Five trials reached step 1 before, with losses 1..5.
        let peers: Vec<Curve> = (0..5).map(|i| curve(i, true, &[(1, i as f64 + 1.0)])).collect();
        // With it, 6 competitors: the top 6 / 3 = 2 go on; 1.5 is second: continues.
        assert_eq!(
            decide(&pruner, Goal::Minimize, &curve(10, false, &[(1, 1.5)]), &peers),
            Decision::Continue
        );
        // 2.5 is third: pruned at step 1.
        assert!(matches!(
            decide(&pruner, Goal::Minimize, &curve(10, false, &[(1, 2.5)]), &peers),
            Decision::Prune { step: 1, .. }
        ));
        // The first trial at a rung is the best of one: it goes on.
        assert_eq!(
            decide(&pruner, Goal::Minimize, &curve(0, false, &[(1, 50.0)]), &[]),
            Decision::Continue
        );
        // Trials that reach the rung later do not count against an earlier one.
        let early = Curve {
            number: 20,
            completed: false,
            points: vec![Point {
                step: 1,
                value: 4.0,
                timestamp: 0,
            }],
        };
        assert_eq!(
            decide(&pruner, Goal::Minimize, &early, &peers),
            Decision::Continue
        );
        // Between rungs nothing new is decided; at step 3 (second rung) it is judged again.
        let at3 = curve(11, false, &[(1, 0.5), (2, 0.4), (3, 9.0)]);
        let peers3: Vec<Curve> = (0..3)
            .map(|i| curve(i, true, &[(1, 1.0), (3, i as f64)]))
            .collect();
        assert!(matches!(
            decide(&pruner, Goal::Minimize, &at3, &peers3),
            Decision::Prune { step: 3, .. }
        ));
    }

    #[test]
    fn hyperband_compares_within_a_bracket() {
        let mut pruner = spec(PrunerKind::Hyperband);
        pruner.min_steps = Some(1);
        pruner.reduction_factor = Some(3);
        pruner.max_steps = Some(9);
        // Brackets with first rungs 1, 3, 9.
        assert_eq!(hyperband_brackets(&pruner), 3);
        // Trial 3 is in bracket 0 (first rung step 1) with trial 0 only, which did better.
        let peers = vec![
            curve(0, true, &[(1, 1.0)]),
            curve(1, true, &[(1, 0.1)]),
            curve(2, true, &[(1, 0.1)]),
        ];
        assert!(matches!(
            decide(&pruner, Goal::Minimize, &curve(3, false, &[(1, 2.0)]), &peers),
            Decision::Prune { step: 1, .. }
        ));
        // Trial 4 is in bracket 1: its first rung is step 3, not reached yet.
        assert_eq!(
            decide(&pruner, Goal::Minimize, &curve(4, false, &[(1, 2.0)]), &peers),
            Decision::Continue
        );
    }
}
