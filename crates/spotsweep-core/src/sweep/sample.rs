//! Proposing a trial's parameters: random and grid sampling, seeds, and command rendering.

use indexmap::IndexMap;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::spec::{Distribution, ParamValue, SpecError, SweepSpec, grid_values, quantize};

/// A trial's parameters, in spec order; inactive conditional parameters are absent.
pub type Params = IndexMap<String, ParamValue>;

/// A trial's seed, derived from the sweep seed and the trial number (SplitMix64 of both), so
/// that trials are independent streams and any trial can be re-derived alone.
pub fn trial_seed(sweep_seed: u64, trial_number: u64) -> u64 {
    let mut z = sweep_seed ^ trial_number.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which parameters are active given a value for every parameter: a parameter is active when
/// each parameter its condition names is active and has one of the listed values. Validation
/// rules out cycles, so the recursion ends.
pub fn activity(spec: &SweepSpec, values: &[ParamValue]) -> Vec<bool> {
    fn resolve(spec: &SweepSpec, values: &[ParamValue], i: usize, memo: &mut [Option<bool>]) -> bool {
        if let Some(known) = memo[i] {
            return known;
        }
        memo[i] = Some(false); // guards against a cycle in an unvalidated spec
        let active = spec.parameters[i].when().is_none_or(|when| {
            when.iter().all(|(other, allowed)| {
                spec.parameters
                    .get_index_of(other)
                    .is_some_and(|j| resolve(spec, values, j, memo) && allowed.contains(&values[j]))
            })
        });
        memo[i] = Some(active);
        active
    }
    let mut memo = vec![None; values.len()];
    (0..values.len())
        .map(|i| resolve(spec, values, i, &mut memo))
        .collect()
}

/// The parameters of a full assignment (one value per parameter, in spec order) that are
/// active under it.
pub fn keep_active(spec: &SweepSpec, values: Vec<ParamValue>) -> Params {
    let active = activity(spec, &values);
    spec.parameters
        .keys()
        .zip(values)
        .zip(active)
        .filter(|(_, a)| *a)
        .map(|((k, v), _)| (k.clone(), v))
        .collect()
}

/// One draw from a distribution: uniform, or log-uniform when `log` is set.
pub fn draw(dist: &Distribution, rng: &mut ChaCha8Rng) -> ParamValue {
    match dist {
        Distribution::Float {
            low, high, log, step, ..
        } => {
            if low == high {
                return ParamValue::Float(*low);
            }
            let x = if *log {
                (rng.random_range(low.ln()..=high.ln())).exp().clamp(*low, *high)
            } else {
                rng.random_range(*low..=*high)
            };
            match step {
                Some(step) => {
                    let q = quantize(x, *low, *step);
                    // Quantising may round past `high` when (high - low) is not a multiple.
                    ParamValue::Float(if q > *high {
                        quantize(q - step, *low, *step)
                    } else {
                        q
                    })
                }
                None => ParamValue::Float(x),
            }
        }
        Distribution::Int {
            low, high, log, step, ..
        } => {
            let step = step.unwrap_or(1);
            if *log {
                let x = rng
                    .random_range((*low as f64).ln()..=((*high as f64) + 0.999_999).ln())
                    .exp();
                ParamValue::Int((x.floor() as i64).clamp(*low, *high))
            } else {
                let k = rng.random_range(0..=(high - low) / step);
                ParamValue::Int(low + k * step)
            }
        }
        Distribution::Categorical { choices, .. } => choices[rng.random_range(0..choices.len())].clone(),
    }
}

/// The parameters of trial `trial_number` of a random sweep: independent draws from a stream
/// seeded by [`trial_seed`], parameter by parameter in spec order.
pub fn sample_random(spec: &SweepSpec, sweep_seed: u64, trial_number: u64) -> Params {
    let mut rng = ChaCha8Rng::seed_from_u64(trial_seed(sweep_seed, trial_number));
    // Draw every parameter, active or not, so that a condition never shifts the stream of the
    // parameters after it.
    let values: Vec<ParamValue> = spec.parameters.values().map(|d| draw(d, &mut rng)).collect();
    keep_active(spec, values)
}

/// The points of a grid sweep in the order its trials get them: in order, or shuffled by the
/// sweep seed when the spec says `shuffle`.
pub fn grid_sequence(spec: &SweepSpec, sweep_seed: u64) -> Result<Vec<Params>, SpecError> {
    let mut points = grid_points(spec)?;
    if spec.sampler.shuffle {
        points.shuffle(&mut ChaCha8Rng::seed_from_u64(sweep_seed));
    }
    Ok(points)
}

/// Most points a grid sweep may have.
pub const MAX_GRID_POINTS: usize = 1_000_000;

/// Every distinct point of a grid sweep, in order (the last parameter varies fastest). A point
/// where a conditional parameter is inactive appears once, not once per unused value.
pub fn grid_points(spec: &SweepSpec) -> Result<Vec<Params>, SpecError> {
    // The values of each parameter, in spec order.
    let axes: Vec<Vec<ParamValue>> = spec
        .parameters
        .iter()
        .map(|(name, dist)| grid_values(name, dist))
        .collect::<Result<_, _>>()?;
    let total = axes
        .iter()
        .try_fold(1usize, |acc, v| acc.checked_mul(v.len().max(1)));
    if total.is_none_or(|t| t > MAX_GRID_POINTS) {
        return Err(SpecError {
            field: "parameters".into(),
            problem: format!(
                "span more than {MAX_GRID_POINTS} grid points; narrow the grid or use sampler: random"
            ),
        });
    }
    let mut points = Vec::new();
    let mut index = vec![0usize; axes.len()];
    'outer: loop {
        let values: Vec<ParamValue> = axes.iter().zip(&index).map(|(v, &i)| v[i].clone()).collect();
        let active = activity(spec, &values);
        // A point where an inactive axis is not at its first value repeats one already listed.
        if active.iter().zip(&index).all(|(&a, &i)| a || i == 0) {
            points.push(keep_active(spec, values));
        }
        for axis in (0..axes.len()).rev() {
            index[axis] += 1;
            if index[axis] < axes[axis].len() {
                continue 'outer;
            }
            index[axis] = 0;
        }
        break;
    }
    Ok(points)
}

/// Quotes a value for `sh` when it holds anything but plainly safe characters.
fn shell_word(value: &str) -> String {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/=+@%".contains(c))
    {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// The trial's command line: `{name}` is the parameter's value (written to parse back to the
/// exact value recorded on the run; empty when the parameter is inactive), `{args}` is
/// `--name value` for every active parameter, `{trial}` is the trial number. Values that the
/// shell would split or interpret are single-quoted.
pub fn render_command(template: &str, params: &Params, trial_number: u64) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &after[..close];
        match name {
            "args" => {
                let args: Vec<String> = params
                    .iter()
                    .map(|(k, v)| format!("--{k} {}", shell_word(&v.to_string())))
                    .collect();
                out.push_str(&args.join(" "));
            }
            "trial" => out.push_str(&trial_number.to_string()),
            _ => match params.get(name) {
                Some(v) => out.push_str(&shell_word(&v.to_string())),
                None if name.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c)) => {}
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}
