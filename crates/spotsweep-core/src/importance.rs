//! Parameter importance by PED-ANOVA (Watanabe et al., "PED-ANOVA: Efficiently Quantifying
//! Hyperparameter Importance in Arbitrary Subspaces", IJCAI 2023), computed the way Optuna's
//! `PedAnovaImportanceEvaluator` does with its defaults (`target_quantile = 0.1`,
//! `region_quantile = 1.0`, `evaluate_on_local = true`) and normalised the way
//! `optuna.importance.get_param_importances` does.
//!
//! The question it answers: which parameters did the best 10% of trials need to get right?
//! For each parameter, the good trials' values and all trials' values each become a density on
//! a grid, and the parameter's importance is how far apart the two are (the Pearson
//! χ²-divergence of the good density from the overall one). A parameter the objective ignores
//! has good trials spread like all trials, and a divergence near 0.
//!
//! - **Good trials**: the `ceil(0.1 n)` lowest values, and every trial tied with the last one.
//! - **Grids**: a numerical parameter is binned on 50 evenly spaced points between its bounds
//!   (in log space for a log parameter), fewer when it has fewer values (a stepped or integer
//!   range; a log integer range gets `ceil(log2(high - low + 1)) + 1`). A categorical
//!   parameter has one point per choice.
//! - **Densities**: a Parzen estimator over the grid points, one kernel per occupied point
//!   weighted by its count plus a prior kernel of weight 1. Numerical kernels are normals
//!   truncated to the grid, integrated over each point's cell, with Scott's-rule bandwidth
//!   (`1.059 min(IQR / 1.34, σ) n^-0.2`, at least `0.5 / 1.64` grid steps: narrower than TPE's,
//!   which would blur the comparison); the prior is centred on the grid, as wide as it.
//!   Categorical kernels put `1` on their choice plus `1 / (kernels)` smoothing on every choice.
//! - **Conditional parameters** (Conditional PED-ANOVA, Optuna 5): a parameter's importance is
//!   computed from the trials in which it is active, and scaled by `α² / β`, where `α` is the
//!   share of good trials in which it is active and `β` the share of all trials; a parameter
//!   active in fewer than 2 trials, or in no good one, gets 0. Optuna 4 instead left out every
//!   parameter not present in all trials.
//!
//! Checked against Optuna 5.0.0 (the version `bench/queue-requirements.txt` pins): the unit
//! test `matches_optuna_on_a_fixed_history` holds Optuna's own numbers for a fixed history of
//! eight parameters of every kind, and `tests/e2e/test_importance.py` compares the daemon's
//! endpoint with Optuna on 120 random trials and on that history (they agree to 2e-16).

use std::f64::consts::{PI, SQRT_2};

use crate::sweep::{Distribution, ParamValue, Params, SweepSpec, quantize};

/// Share of trials that count as good (Optuna's `target_quantile`).
const TARGET_QUANTILE: f64 = 0.1;
/// Grid points of a continuous parameter (Optuna's `n_steps`).
const GRID_POINTS: usize = 50;
/// Weight of the prior kernel against one trial's.
const PRIOR_WEIGHT: f64 = 1.0;
/// A parameter active in fewer trials than this gets no importance.
const MIN_ACTIVE_TRIALS: usize = 2;
/// Added to both densities so that the divergence never divides by 0.
const DENSITY_FLOOR: f64 = 1e-12;
/// The narrowest kernel, in grid steps: 1.64 σ (90% of the mass) within half a step.
const MIN_BANDWIDTH: f64 = 0.5 / 1.64;

/// Each parameter's importance to reaching the best 10% of `trials`, by PED-ANOVA, highest
/// first, summing to 1.
///
/// `trials` are completed trials' parameters and objective values, **oriented so that lower
/// is better**: negate the values of a sweep that maximises. Trials whose value is NaN or
/// infinite are left out.
///
/// - Reported: the spec's parameters that appear in at least one trial, in spec order where
///   importances tie. A trial lacking a parameter (an inactive conditional one), or holding a
///   value its distribution cannot place (a string for a float, a choice not listed), counts
///   as one where the parameter is inactive.
/// - Fewer than 2 trials with a finite value: an empty list.
/// - When no parameter has any importance (every value tied, so the good trials are all of
///   them; or no parameter with two possible values), equal shares, as Optuna gives.
/// - A parameter whose distribution has a single value (`low == high`, one choice) gets 0. One
///   that every trial merely holds at the same value does not, here as in Optuna: the prior
///   kernel weighs more among the few good trials than among all, so the two densities
///   differ.
///
/// Linear in the trials (one pass per parameter plus one selection): 10,000 trials of 8
/// parameters take about 7 ms in a release build (the ignored test
/// `ten_thousand_trials_of_eight_parameters_time`).
pub fn ped_anova(spec: &SweepSpec, trials: &[(Params, f64)]) -> Vec<(String, f64)> {
    let params: Vec<(&str, &Distribution)> = spec
        .parameters
        .iter()
        .filter(|(name, _)| trials.iter().any(|(p, _)| p.contains_key(name.as_str())))
        .map(|(name, dist)| (name.as_str(), dist))
        .collect();
    let region: Vec<&(Params, f64)> = trials.iter().filter(|(_, v)| v.is_finite()).collect();
    if region.len() < 2 || params.is_empty() {
        return Vec::new();
    }
    let good = good_trials(&region);
    let n_good = good.iter().filter(|&&g| g).count();
    let raw: Vec<f64> = params
        .iter()
        .map(|&(name, dist)| match Axis::of(dist) {
            Some(axis) => importance(name, &axis, &region, &good, n_good),
            None => 0.0,
        })
        .collect();

    let total: f64 = raw.iter().sum();
    let share = |v: f64| {
        if total > 0.0 && total.is_finite() {
            v / total
        } else {
            1.0 / raw.len() as f64
        }
    };
    let mut out: Vec<(String, f64)> = params
        .iter()
        .zip(&raw)
        .map(|(&(name, _), &v)| (name.to_owned(), share(v)))
        .collect();
    // Stable: ties keep the spec's order.
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Which trials are good: the `ceil(0.1 n)` lowest values and those tied with the last one.
fn good_trials(region: &[&(Params, f64)]) -> Vec<bool> {
    let mut values: Vec<f64> = region.iter().map(|(_, v)| *v).collect();
    let k = ((TARGET_QUANTILE * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
    let (_, &mut cutoff, _) = values.select_nth_unstable_by(k, f64::total_cmp);
    region.iter().map(|(_, v)| *v <= cutoff).collect()
}

/// One parameter's unnormalised importance: `(|good| / |all|)² (α² / β) D(good ‖ active)`, where
/// the divergence compares the good trials in which it is active with all those in which it is.
fn importance(name: &str, axis: &Axis, region: &[&(Params, f64)], good: &[bool], n_good: usize) -> f64 {
    let mut good_counts = vec![0u32; axis.points()];
    let mut all_counts = vec![0u32; axis.points()];
    let (mut n_good_active, mut n_active) = (0usize, 0usize);
    for ((params, _), &is_good) in region.iter().zip(good) {
        let Some(point) = params.get(name).and_then(|v| axis.point(v)) else {
            continue;
        };
        all_counts[point] += 1;
        n_active += 1;
        if is_good {
            good_counts[point] += 1;
            n_good_active += 1;
        }
    }
    if n_active < MIN_ACTIVE_TRIALS || n_good_active == 0 || n_good == 0 {
        return 0.0;
    }
    let quantile = n_good as f64 / region.len() as f64;
    let alpha = n_good_active as f64 / n_good as f64;
    let beta = n_active as f64 / region.len() as f64;
    let divergence = pearson_divergence(&axis.density(&good_counts), &axis.density(&all_counts));
    quantile * quantile * alpha * alpha / beta * divergence
}

/// The Pearson χ²-divergence `Σ q (p / q - 1)²` of `p` from `q`, each floored at 1e-12.
fn pearson_divergence(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&p, &q)| {
            let (p, q) = (p + DENSITY_FLOOR, q + DENSITY_FLOOR);
            q * (p / q - 1.0).powi(2)
        })
        .sum()
}

/// A parameter's grid: where each value falls, and the density of a set of counts on it.
enum Axis<'a> {
    /// `points` evenly spaced values from `low` to `high` (logarithms for a log parameter).
    Numeric {
        /// The first point (a logarithm if `log`).
        low: f64,
        /// The last point (a logarithm if `log`).
        high: f64,
        /// Whether values are placed by their logarithm.
        log: bool,
        /// How many points, at least 2.
        points: usize,
    },
    /// One point per choice, in the spec's order.
    Categorical(&'a [ParamValue]),
}

impl<'a> Axis<'a> {
    /// The grid of a distribution; `None` when it has a single possible value (or bounds no
    /// grid can span), which makes its importance 0.
    fn of(dist: &'a Distribution) -> Option<Self> {
        match dist {
            Distribution::Float {
                low, high, log, step, ..
            } => {
                let (low, high) = (*low, *high);
                if low.is_nan() || high.is_nan() || low >= high {
                    return None;
                }
                match step {
                    // Stepped: one point per value, at most 50, the range ending on the last
                    // value (Optuna lowers `high` onto the step grid the same way).
                    Some(step) if !*log && step.is_finite() && *step > 0.0 => {
                        let k = ((high - low) / step + 1e-9).floor();
                        if k.is_nan() || k < 1.0 {
                            return None;
                        }
                        let last = quantize(low + k * step, low, *step);
                        Self::numeric(low, last, false, (k as usize).saturating_add(1))
                    }
                    _ => Self::numeric(low, high, *log, GRID_POINTS),
                }
            }
            Distribution::Int {
                low, high, log, step, ..
            } => {
                let (low, high) = (*low, *high);
                if low >= high {
                    return None;
                }
                let span = i128::from(high) - i128::from(low);
                if *log {
                    // About one point per doubling.
                    let doublings = ((span + 1) as f64).ln() / 2f64.ln();
                    Self::numeric(low as f64, high as f64, true, doublings.ceil() as usize + 1)
                } else {
                    let step = i128::from(step.unwrap_or(1).max(1));
                    let k = span / step;
                    if k < 1 {
                        return None;
                    }
                    let last = (i128::from(low) + k * step) as f64;
                    Self::numeric(
                        low as f64,
                        last,
                        false,
                        usize::try_from(k + 1).unwrap_or(usize::MAX),
                    )
                }
            }
            Distribution::Categorical { choices, .. } => {
                (choices.len() >= 2).then_some(Self::Categorical(choices))
            }
        }
    }

    /// A numerical grid of `points` (at most [`GRID_POINTS`]) from `low` to `high`.
    fn numeric(low: f64, high: f64, log: bool, points: usize) -> Option<Self> {
        let (low, high) = if log { (low.ln(), high.ln()) } else { (low, high) };
        let points = points.min(GRID_POINTS);
        (low.is_finite() && high.is_finite() && low < high && points >= 2).then_some(Self::Numeric {
            low,
            high,
            log,
            points,
        })
    }

    /// How many grid points.
    fn points(&self) -> usize {
        match self {
            Self::Numeric { points, .. } => *points,
            Self::Categorical(choices) => choices.len(),
        }
    }

    /// The grid point of a value: the nearest one (ties to the lower), values outside the range
    /// at its ends; `None` for a value this parameter cannot take.
    fn point(&self, value: &ParamValue) -> Option<usize> {
        match self {
            Self::Numeric {
                low,
                high,
                log,
                points,
            } => {
                let x = match value {
                    ParamValue::Int(i) => *i as f64,
                    ParamValue::Float(x) => *x,
                    ParamValue::Bool(_) | ParamValue::Str(_) => return None,
                };
                let x = if *log { x.ln() } else { x };
                if !x.is_finite() {
                    return None;
                }
                let last = (*points - 1) as f64;
                let width = (high - low) / last;
                // `ceil(.. - 0.5)` rounds half down, as Optuna does.
                let index = ((x - low) / width - 0.5).ceil();
                Some(index.clamp(0.0, last) as usize)
            }
            Self::Categorical(choices) => choices.iter().position(|c| c == value),
        }
    }

    /// The Parzen estimator's probability of each grid point, for trials counted per point.
    fn density(&self, counts: &[u32]) -> Vec<f64> {
        match self {
            Self::Numeric { .. } => numeric_density(counts),
            Self::Categorical(_) => categorical_density(counts),
        }
    }
}

/// A mixture of normals on grid points `0..n`, one per occupied point (weighted by its count,
/// Scott's-rule bandwidth) and a prior (centred, standard deviation `n`), each truncated to
/// `[-0.5, n - 0.5]` and integrated over each point's cell `[x - 0.5, x + 0.5]`.
fn numeric_density(counts: &[u32]) -> Vec<f64> {
    let n = counts.len();
    let occupied: Vec<(f64, f64)> = counts
        .iter()
        .enumerate()
        .filter(|&(_, &c)| c > 0)
        .map(|(x, &c)| (x as f64, f64::from(c)))
        .collect();
    let total: f64 = occupied.iter().map(|&(_, c)| c).sum();
    let weight_sum = total + PRIOR_WEIGHT;
    let mut density = vec![0.0; n];

    if !occupied.is_empty() {
        let bandwidth = scott_bandwidth(&occupied, total);
        // Every kernel centre is a grid point, so a cell's mass depends only on its distance
        // `d` from the centre: `cell_mass[d + n - 1]`.
        let cell_mass: Vec<f64> = (0..2 * n - 1)
            .map(|i| {
                let d = i as f64 - (n - 1) as f64;
                gauss_mass((d - 0.5) / bandwidth, (d + 0.5) / bandwidth)
            })
            .collect();
        for &(centre, count) in &occupied {
            let inside = gauss_mass((-0.5 - centre) / bandwidth, (n as f64 - 0.5 - centre) / bandwidth);
            let weight = count / weight_sum / inside;
            let offset = n - 1 - centre as usize;
            for (x, p) in density.iter_mut().enumerate() {
                *p += weight * cell_mass[x + offset];
            }
        }
    }

    let (centre, width) = ((n - 1) as f64 / 2.0, n as f64);
    let inside = gauss_mass((-0.5 - centre) / width, (n as f64 - 0.5 - centre) / width);
    let weight = PRIOR_WEIGHT / weight_sum / inside;
    for (x, p) in density.iter_mut().enumerate() {
        let x = x as f64;
        *p += weight * gauss_mass((x - 0.5 - centre) / width, (x + 0.5 - centre) / width);
    }
    density
}

/// Scott's rule on weighted grid points: `1.059 min(IQR / 1.34, σ) n^-0.2`, with the
/// quartiles read off the cumulative counts as Optuna does, and at least [`MIN_BANDWIDTH`].
fn scott_bandwidth(occupied: &[(f64, f64)], total: f64) -> f64 {
    let mean = occupied.iter().map(|&(x, c)| x * c).sum::<f64>() / total;
    let variance =
        occupied.iter().map(|&(x, c)| c * (x - mean).powi(2)).sum::<f64>() / (total - 1.0).max(1.0);
    // The first point whose cumulative count reaches `floor(n / 4)`, and the first whose
    // cumulative count exceeds `floor(3n / 4)`.
    let (q1_count, q3_count) = ((total / 4.0).floor(), (total * 3.0 / 4.0).floor());
    let mut cumulative = 0.0;
    let (mut q1, mut q3) = (None, None);
    for (i, &(_, c)) in occupied.iter().enumerate() {
        cumulative += c;
        if q1.is_none() && cumulative >= q1_count {
            q1 = Some(i);
        }
        if q3.is_none() && cumulative > q3_count {
            q3 = Some(i);
        }
    }
    let last = occupied.len() - 1;
    let iqr = occupied[q3.unwrap_or(last).min(last)].0 - occupied[q1.unwrap_or(last)].0;
    let scott = 1.059 * (iqr / 1.34).min(variance.sqrt()) * total.powf(-0.2);
    scott.max(MIN_BANDWIDTH)
}

/// A mixture of categorical kernels, one per observed choice (weighted by its count) and a
/// uniform prior; each observed kernel is `1` on its choice plus `1 / (kernels)` on every
/// choice, normalised.
fn categorical_density(counts: &[u32]) -> Vec<f64> {
    let choices = counts.len() as f64;
    let total: f64 = counts.iter().map(|&c| f64::from(c)).sum();
    let kernels = counts.iter().filter(|&&c| c > 0).count() as f64 + 1.0;
    let smoothing = PRIOR_WEIGHT / kernels;
    let weight_sum = total + PRIOR_WEIGHT;
    counts
        .iter()
        .map(|&c| {
            let observed = (total * smoothing + f64::from(c)) / (1.0 + choices * smoothing);
            (observed + PRIOR_WEIGHT / choices) / weight_sum
        })
        .collect()
}

/// The standard normal's mass on `[a, b]`, computed from the nearer tail so that a cell far
/// from a kernel's centre keeps its (tiny) mass instead of cancelling to 0.
fn gauss_mass(a: f64, b: f64) -> f64 {
    let upper = |z: f64| 0.5 * erfc(z / SQRT_2);
    let mass = if a >= 0.0 {
        upper(a) - upper(b)
    } else if b <= 0.0 {
        upper(-b) - upper(-a)
    } else {
        1.0 - upper(-a) - upper(b)
    };
    mass.max(0.0)
}

/// The complementary error function to about 1e-15 relative error: `1 - erf(x)` by its
/// power series below 1.5 (where erfc is above 0.03, so the subtraction loses little), Lentz's
/// continued fraction above (slow to converge nearer 0). (`f64::erfc` is not stable yet, and the 1e-7 fit in `optimize::tpe` would
/// put its error into the comparison with Optuna.)
fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        x
    } else if x < 0.0 {
        2.0 - erfc(-x)
    } else if x < 1.5 {
        1.0 - erf_series(x)
    } else if x < 27.3 {
        erfc_continued_fraction(x)
    } else {
        0.0 // below the smallest positive f64
    }
}

/// `erf(x) = 2/√π e^(-x²) Σ 2ⁿ x^(2n+1) / (1·3·…·(2n+1))`: every term positive, so nothing
/// cancels; about 30 terms at x = 1.5.
fn erf_series(x: f64) -> f64 {
    let two_x2 = 2.0 * x * x;
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= two_x2 / f64::from(2 * n + 1);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    2.0 / PI.sqrt() * (-x * x).exp() * sum
}

/// `erfc(x) = e^(-x²) / √π · 1 / (x + (1/2) / (x + 1 / (x + (3/2) / (x + …))))`, by the modified
/// Lentz method; about 90 terms at x = 1.5, fewer further out.
fn erfc_continued_fraction(x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut f = x;
    let (mut c, mut d) = (x, 0.0);
    for n in 1..500 {
        let a = f64::from(n) / 2.0;
        d = x + a * d;
        d = if d == 0.0 { TINY } else { d };
        c = x + a / c;
        c = if c == 0.0 { TINY } else { c };
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / (PI.sqrt() * f)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// A spec with these parameters (a JSON object's body).
    fn spec_with(parameters: &str) -> SweepSpec {
        let text = format!(
            r#"{{"name": "imp", "command": "run {{args}}", "max_trials": 100,
                "objective": {{"metric": "loss"}}, "parameters": {{{parameters}}}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    fn params(pairs: &[(&str, ParamValue)]) -> Params {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    fn names(result: &[(String, f64)]) -> Vec<&str> {
        result.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn assert_sums_to_one(result: &[(String, f64)]) {
        let sum: f64 = result.iter().map(|(_, v)| v).sum();
        assert!((sum - 1.0).abs() < 1e-9, "sum {sum}: {result:?}");
        assert!(
            result.iter().all(|(_, v)| (0.0..=1.0 + 1e-12).contains(v)),
            "{result:?}"
        );
    }

    const FIVE: &str = r#"
        "x":      {"type": "float", "low": -5, "high": 5},
        "lr":     {"type": "float", "low": 1e-5, "high": 0.1, "log": true},
        "layers": {"type": "int", "low": 1, "high": 8},
        "opt":    {"type": "categorical", "choices": ["sgd", "adam", "lion"]},
        "noise":  {"type": "float", "low": 0, "high": 1}"#;

    /// `n` uniform draws of [`FIVE`]'s parameters with `f`'s value.
    fn five_trials(seed: u64, n: usize, f: impl Fn(f64, f64, i64, &str, f64) -> f64) -> Vec<(Params, f64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let opts = ["sgd", "adam", "lion"];
        (0..n)
            .map(|_| {
                let x = rng.random_range(-5.0..5.0);
                let lr = 10f64.powf(rng.random_range(-5.0..-1.0));
                let layers = rng.random_range(1..=8);
                let opt = opts[rng.random_range(0..3)];
                let noise = rng.random_range(0.0..1.0);
                let p = params(&[
                    ("x", ParamValue::Float(x)),
                    ("lr", ParamValue::Float(lr)),
                    ("layers", ParamValue::Int(layers)),
                    ("opt", ParamValue::Str(opt.into())),
                    ("noise", ParamValue::Float(noise)),
                ]);
                (p, f(x, lr, layers, opt, noise))
            })
            .collect()
    }

    #[test]
    fn parameters_the_objective_ignores_rank_last() {
        let spec = spec_with(FIVE);
        for seed in 0..5 {
            // Depends on x, lr and opt; ignores layers and noise.
            let trials = five_trials(seed, 200, |x, lr, _, opt, _| {
                (x - 1.0).powi(2) + 4.0 * (lr.log10() + 3.0).powi(2) + if opt == "adam" { 0.0 } else { 6.0 }
            });
            let result = ped_anova(&spec, &trials);
            assert_sums_to_one(&result);
            let mut last_two = names(&result)[3..].to_vec();
            last_two.sort_unstable();
            assert_eq!(last_two, ["layers", "noise"], "seed {seed}: {result:?}");
        }
    }

    #[test]
    fn a_categorical_choice_that_decides_everything_ranks_first() {
        let spec = spec_with(FIVE);
        // Every lion trial ties for best, so the good trials are exactly the lion ones (a
        // tie-break on another parameter would make that one matter too).
        let trials = five_trials(7, 200, |_, _, _, opt, _| if opt == "lion" { 0.0 } else { 10.0 });
        let result = ped_anova(&spec, &trials);
        assert_eq!(result[0].0, "opt", "{result:?}");
        assert!(result[0].1 > 0.5, "{result:?}");
    }

    #[test]
    fn a_log_parameter_is_binned_by_its_logarithm() {
        // The best trials have lr near 1e-4: on a linear grid from 1e-5 to 0.1 they would all
        // fall in the first cell, among a third of all trials; on the log grid they stand out.
        let spec = spec_with(FIVE);
        let trials = five_trials(11, 300, |_, lr, _, _, noise| {
            (lr.log10() + 4.0).abs() + 0.1 * noise
        });
        let result = ped_anova(&spec, &trials);
        assert_eq!(result[0].0, "lr", "{result:?}");
        assert!(result[0].1 > 0.8, "{result:?}");
    }

    #[test]
    fn a_conditional_parameter_counts_only_where_it_is_active() {
        let spec = spec_with(
            r#"
            "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
            "mom": {"type": "float", "low": 0.0, "high": 1.0, "when": {"opt": "sgd"}},
            "x":   {"type": "float", "low": 0.0, "high": 1.0}"#,
        );
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let trials: Vec<(Params, f64)> = (0..300)
            .map(|_| {
                let x: f64 = rng.random_range(0.0..1.0);
                if rng.random_bool(0.5) {
                    let mom: f64 = rng.random_range(0.0..1.0);
                    let p = params(&[
                        ("opt", ParamValue::Str("sgd".into())),
                        ("mom", ParamValue::Float(mom)),
                        ("x", ParamValue::Float(x)),
                    ]);
                    (p, (mom - 0.9).abs() * 4.0 + 0.01 * x)
                } else {
                    let p = params(&[
                        ("opt", ParamValue::Str("adam".into())),
                        ("x", ParamValue::Float(x)),
                    ]);
                    (p, 1.0 + 0.01 * x)
                }
            })
            .collect();
        let result = ped_anova(&spec, &trials);
        assert_sums_to_one(&result);
        // Good trials are sgd with mom near 0.9: both matter, x hardly.
        assert_eq!(result[2].0, "x", "{result:?}");
        assert!(
            result.iter().find(|(n, _)| n == "mom").unwrap().1 > 0.2,
            "{result:?}"
        );

        // Active in a single trial: no importance, but still reported.
        let mut one = trials.clone();
        for (p, _) in one.iter_mut().skip(1) {
            p.shift_remove("mom");
        }
        let result = ped_anova(&spec, &one);
        assert_eq!(
            result.iter().find(|(n, _)| n == "mom").unwrap().1,
            0.0,
            "{result:?}"
        );

        // Never present: not reported.
        for (p, _) in &mut one {
            p.shift_remove("mom");
        }
        assert_eq!(names(&ped_anova(&spec, &one)).len(), 2);
    }

    #[test]
    fn degenerate_inputs_give_empty_or_equal_shares() {
        let spec = spec_with(FIVE);
        let trials = five_trials(1, 20, |x, _, _, _, _| x);
        assert!(ped_anova(&spec, &[]).is_empty());
        assert!(ped_anova(&spec, &trials[..1]).is_empty());
        // Non-finite values are left out: one finite trial is too few.
        let mut bad = trials[..3].to_vec();
        bad[0].1 = f64::NAN;
        bad[1].1 = f64::INFINITY;
        assert!(ped_anova(&spec, &bad).is_empty());
        // Every value tied: the good trials are all of them, no divergence, equal shares.
        let tied: Vec<_> = trials.iter().map(|(p, _)| (p.clone(), 1.0)).collect();
        let result = ped_anova(&spec, &tied);
        assert_eq!(result.len(), 5);
        assert!(result.iter().all(|(_, v)| (*v - 0.2).abs() < 1e-12), "{result:?}");
        // A spec without parameters.
        assert!(ped_anova(&spec_with(""), &trials).is_empty());
    }

    #[test]
    fn single_valued_and_unplaceable_parameters_get_nothing() {
        let spec = spec_with(
            r#"
            "x":     {"type": "float", "low": 0, "high": 1},
            "fixed": {"type": "float", "low": 2, "high": 2},
            "tiny":  {"type": "int", "low": 0, "high": 2, "step": 3},
            "one":   {"type": "categorical", "choices": ["only"]},
            "same":  {"type": "float", "low": 0, "high": 1},
            "odd":   {"type": "float", "low": 0, "high": 1}"#,
        );
        let trials: Vec<(Params, f64)> = (0..50)
            .map(|i| {
                let x = f64::from(i) / 49.0;
                let p = params(&[
                    ("x", ParamValue::Float(x)),
                    ("fixed", ParamValue::Float(2.0)),
                    ("tiny", ParamValue::Int(0)),
                    ("one", ParamValue::Str("only".into())),
                    ("same", ParamValue::Float(0.5)),
                    ("odd", ParamValue::Str("not a number".into())),
                ]);
                (p, x)
            })
            .collect();
        let result = ped_anova(&spec, &trials);
        assert_sums_to_one(&result);
        // Optuna 5.0.0 on the same trials: `same` scores although every trial holds 0.5, as
        // the prior kernel weighs more among 5 good trials than among 50.
        assert_eq!(names(&result)[..2], ["x", "same"], "{result:?}");
        assert!((result[0].1 - 0.8615232841063867).abs() < 1e-12, "{result:?}");
        assert!((result[1].1 - 0.1384767158936132).abs() < 1e-12, "{result:?}");
        assert!(result[2..].iter().all(|(_, v)| *v == 0.0), "{result:?}");
    }

    #[test]
    fn ties_at_the_cutoff_are_all_good() {
        let region: Vec<(Params, f64)> = [3.0, 1.0, 1.0, 1.0, 2.0]
            .iter()
            .map(|&v| (Params::new(), v))
            .collect();
        let refs: Vec<&(Params, f64)> = region.iter().collect();
        assert_eq!(good_trials(&refs), [false, true, true, true, false]);
        // ceil(0.1 n): 3 of 25, 1 of 2.
        let region: Vec<(Params, f64)> = (0..25).map(|i| (Params::new(), f64::from(i))).collect();
        let refs: Vec<&(Params, f64)> = region.iter().collect();
        assert_eq!(good_trials(&refs), (0..25).map(|i| i < 3).collect::<Vec<_>>());
        assert_eq!(good_trials(&refs[..2]), [true, false]);
    }

    #[test]
    fn erfc_matches_known_values() {
        // Python's math.erfc.
        for (x, want) in [
            (0.0, 1.0),
            (0.3, 0.6713732405408726),
            (1.0, 0.15729920705028513),
            (2.4, 0.0006885138966450786),
            (2.6, 0.000_236_034_416_529_349_2),
            (4.0, 1.541725790028002e-08),
            (10.0, 2.088487583762545e-45),
            (26.0, 5.663192408856143e-296),
            (-1.5, 1.9661051464753108),
        ] {
            let got = erfc(x);
            assert!(
                (got - want).abs() <= 1e-14 * want,
                "erfc({x}) = {got:e}, want {want:e}"
            );
        }
        assert_eq!(erfc(30.0), 0.0);
        assert_eq!(erfc(f64::NEG_INFINITY), 2.0);
    }

    /// A fixed history of eight parameters of every kind: float, log float, int, categorical,
    /// a conditional float, log int, stepped float, stepped int. The value ignores `batch` and
    /// `drop`, but these regular sequences alias: `drop` scores in Optuna too.
    fn fixed_history() -> (SweepSpec, Vec<(Params, f64)>) {
        let spec = spec_with(
            r#"
            "x":      {"type": "float", "low": -5, "high": 5},
            "lr":     {"type": "float", "low": 1e-5, "high": 0.1, "log": true},
            "layers": {"type": "int", "low": 1, "high": 8},
            "opt":    {"type": "categorical", "choices": ["sgd", "adam", "lion"]},
            "mom":    {"type": "float", "low": 0.8, "high": 0.99, "when": {"opt": "sgd"}},
            "width":  {"type": "int", "low": 16, "high": 1024, "log": true},
            "drop":   {"type": "float", "low": 0, "high": 0.5, "step": 0.1},
            "batch":  {"type": "int", "low": 64, "high": 512, "step": 64}"#,
        );
        let opts = ["sgd", "adam", "lion"];
        let trials = (0..80i64)
            .map(|i| {
                let x = ((i * 37) % 61) as f64 / 60.0 * 10.0 - 5.0;
                let lr = 10f64.powf(-5.0 + 4.0 * ((i * 13) % 59) as f64 / 58.0);
                let layers = 1 + (i * 7) % 8;
                let opt = opts[((i * 5) % 7 % 3) as usize];
                let width = 16 + (i * 97) % 1009;
                let drop = (i % 6) as f64 * 0.1;
                let batch = 64 + 64 * ((i * 3) % 8);
                let mut p = params(&[
                    ("x", ParamValue::Float(x)),
                    ("lr", ParamValue::Float(lr)),
                    ("layers", ParamValue::Int(layers)),
                    ("opt", ParamValue::Str(opt.into())),
                ]);
                let mut value =
                    (x - 1.0).powi(2) + 3.0 * (lr.log10() + 3.0).powi(2) + (layers as f64 - 4.0).abs();
                if opt == "sgd" {
                    let mom = 0.8 + 0.19 * ((i * 11) % 17) as f64 / 16.0;
                    p.insert("mom".into(), ParamValue::Float(mom));
                    value += 8.0 * (mom - 0.95).abs();
                } else if opt == "lion" {
                    value += 2.0;
                }
                value += 0.5 * ((width as f64).log2() - 8.0).abs();
                p.insert("width".into(), ParamValue::Int(width));
                p.insert("drop".into(), ParamValue::Float(drop));
                p.insert("batch".into(), ParamValue::Int(batch));
                (p, value)
            })
            .collect();
        (spec, trials)
    }

    #[test]
    fn matches_optuna_on_a_fixed_history() {
        // `optuna.importance.get_param_importances(study,
        // evaluator=PedAnovaImportanceEvaluator())` on the same 80 trials, Optuna 5.0.0
        // (`test_fixed_history_matches_optuna` in tests/e2e/test_importance.py builds the same
        // trials in Python).
        let optuna = [
            ("x", 0.4238039304592164),
            ("lr", 0.27664560009408956),
            ("drop", 0.15091560438726942),
            ("mom", 0.07523770060451852),
            ("layers", 0.041019919312132384),
            ("width", 0.014729140664315717),
            ("opt", 0.010712053248584255),
            ("batch", 0.006936051229873726),
        ];
        // They agree to 1e-15; 1e-12 leaves room for another machine's `ln` and `powf`.
        let (spec, trials) = fixed_history();
        let result = ped_anova(&spec, &trials);
        assert_eq!(result.len(), optuna.len(), "{result:?}");
        for (name, want) in optuna {
            let got = result.iter().find(|(n, _)| n == name).unwrap().1;
            assert!(
                (got - want).abs() <= 1e-12,
                "{name}: {got} vs Optuna's {want}\n{result:?}"
            );
        }
    }

    /// The time of 10,000 trials of 8 parameters; `cargo test -p spotsweep-core --release
    /// importance -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing, for release builds"]
    fn ten_thousand_trials_of_eight_parameters_time() {
        let (spec, base) = fixed_history();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let trials: Vec<(Params, f64)> = (0..10_000)
            .map(|i| {
                let (p, v) = &base[i % base.len()];
                (p.clone(), v + rng.random_range(0.0..1.0))
            })
            .collect();
        let started = std::time::Instant::now();
        let runs = 20;
        for _ in 0..runs {
            std::hint::black_box(ped_anova(&spec, std::hint::black_box(&trials)));
        }
        let per_call = started.elapsed() / runs;
        println!("ped_anova: 10,000 trials x 8 parameters in {per_call:?}");
        assert!(per_call.as_millis() < 100, "{per_call:?}");
    }

    fn any_value() -> impl Strategy<Value = ParamValue> {
        prop_oneof![
            any::<bool>().prop_map(ParamValue::Bool),
            (-5i64..2000).prop_map(ParamValue::Int),
            prop_oneof![
                -10.0..10.0,
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(0.0),
                Just(-0.0)
            ]
            .prop_map(ParamValue::Float),
            prop_oneof![Just("sgd"), Just("adam"), Just("other")].prop_map(|s| ParamValue::Str(s.into())),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_sums_to_one(
            rows in prop::collection::vec(
                (prop::collection::vec(prop::option::of(any_value()), 6),
                 prop_oneof![-1e3..1e3, Just(f64::NAN), Just(f64::NEG_INFINITY), Just(0.0)]),
                0..60,
            )
        ) {
            let spec = spec_with(
                r#"
                "a": {"type": "float", "low": -1, "high": 1},
                "b": {"type": "float", "low": 0.001, "high": 10, "log": true},
                "c": {"type": "int", "low": 1, "high": 1000, "log": true},
                "d": {"type": "int", "low": 0, "high": 10, "step": 3},
                "e": {"type": "categorical", "choices": ["sgd", "adam", true, 3]},
                "f": {"type": "float", "low": 0.5, "high": 0.5}"#,
            );
            let keys = ["a", "b", "c", "d", "e", "f"];
            let trials: Vec<(Params, f64)> = rows
                .into_iter()
                .map(|(values, v)| {
                    let p = keys.iter().zip(values).filter_map(|(k, v)| Some(((*k).to_owned(), v?))).collect();
                    (p, v)
                })
                .collect();
            let result = ped_anova(&spec, &trials);
            let finite = trials.iter().filter(|(_, v)| v.is_finite()).count();
            if finite < 2 || result.is_empty() {
                prop_assert!(result.is_empty());
            } else {
                let sum: f64 = result.iter().map(|(_, v)| v).sum();
                prop_assert!((sum - 1.0).abs() < 1e-9, "sum {}: {:?}", sum, result);
                prop_assert!(result.iter().all(|(_, v)| v.is_finite() && *v >= 0.0));
                prop_assert!(result.windows(2).all(|w| w[0].1 >= w[1].1));
            }
        }
    }
}
