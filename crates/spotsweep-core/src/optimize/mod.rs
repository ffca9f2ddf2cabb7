//! The optimizer: QMC and TPE samplers that propose a trial from the trials so far, and the
//! pruners that stop hopeless trials from their intermediate values. Pure and deterministic:
//! the same spec, seed, trial number and history give the same answer on any machine, so the
//! daemon rebuilds its state from the database after a restart and suggests exactly what it
//! would have suggested without it.

mod history;
pub mod prune;
mod sobol;
mod tpe;

pub use history::History;
pub use sobol::Sobol;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::sweep::{
    Distribution, Goal, ParamValue, Params, SamplerKind, SweepSpec, draw, keep_active, quantize,
    sample_random, trial_seed,
};

/// What the sampler knows of an earlier trial (see [`History`] for the encoded form the
/// sampler reads).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Its number in the sweep.
    pub number: u64,
    /// Its parameters.
    pub params: Params,
    /// How it stands.
    pub outcome: Observed,
}

/// How an earlier trial stands, for the sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observed {
    /// Finished with this objective value.
    Completed(f64),
    /// Stopped by the pruner; its last intermediate value, when it logged one.
    Pruned(Option<f64>),
    /// Queued or running: no result yet (TPE counts it as a bad result, the constant liar, so
    /// that parallel suggestions spread out).
    Pending,
    /// Failed, cancelled or preempted for good: not evidence about the objective.
    Failed,
}

/// The parameters of trial `number` of a random, QMC or TPE sweep, given the trials so far.
/// (Grid sweeps enumerate their points instead: [`crate::sweep::grid_points`].)
pub fn suggest(spec: &SweepSpec, sweep_seed: u64, number: u64, history: &History) -> Params {
    match spec.sampler.kind {
        SamplerKind::Random | SamplerKind::Grid => sample_random(spec, sweep_seed, number),
        SamplerKind::Qmc => sample_qmc(spec, sweep_seed, number),
        SamplerKind::Tpe => tpe::suggest(spec, sweep_seed, number, history),
    }
}

/// Point `number` of the sweep's scrambled Sobol sequence, one dimension per unconditional
/// parameter. Conditional parameters are drawn from the trial's random stream instead: the
/// trials where a condition holds are a subset picked by another coordinate, and the Sobol
/// coordinates of such a subset are far from evenly spread.
pub fn sample_qmc(spec: &SweepSpec, sweep_seed: u64, number: u64) -> Params {
    let dims = spec.parameters.values().filter(|d| d.when().is_none()).count();
    let mut point = Sobol::new(dims, sweep_seed).point(number, dims).into_iter();
    let mut rng = ChaCha8Rng::seed_from_u64(trial_seed(sweep_seed, number));
    let values = spec
        .parameters
        .values()
        .map(|dist| match dist.when() {
            None => match point.next() {
                Some(u) => from_unit(dist, u),
                None => draw(dist, &mut rng),
            },
            Some(_) => draw(dist, &mut rng),
        })
        .collect();
    keep_active(spec, values)
}

/// The value at quantile `u` in `(0, 1)` of a distribution: uniform in the parameter's own
/// scale (log for log parameters), each step or choice equally likely.
pub fn from_unit(dist: &Distribution, u: f64) -> ParamValue {
    let u = u.clamp(0.0, 1.0);
    match dist {
        Distribution::Categorical { choices, .. } => {
            choices[((u * choices.len() as f64) as usize).min(choices.len() - 1)].clone()
        }
        _ => {
            let (lo, hi) = bounds(dist);
            from_internal(dist, lo + u * (hi - lo))
        }
    }
}

/// A numeric parameter's range in the internal scale: log for log parameters, widened by half a
/// step on each side for integers and stepped floats so that every value has an equal share.
fn bounds(dist: &Distribution) -> (f64, f64) {
    match dist {
        Distribution::Float {
            low, high, log: true, ..
        } => (low.ln(), high.ln()),
        Distribution::Float {
            low,
            high,
            step: Some(step),
            ..
        } => (low - step / 2.0, high + step / 2.0),
        Distribution::Float { low, high, .. } => (*low, *high),
        Distribution::Int {
            low, high, log: true, ..
        } => ((*low as f64 - 0.5).max(0.5).ln(), (*high as f64 + 0.5).ln()),
        Distribution::Int { low, high, step, .. } => {
            let half = step.unwrap_or(1) as f64 / 2.0;
            (*low as f64 - half, *high as f64 + half)
        }
        Distribution::Categorical { .. } => (0.0, 1.0),
    }
}

/// A numeric parameter's value in the internal scale.
fn to_internal(dist: &Distribution, value: &ParamValue) -> Option<f64> {
    let x = match value {
        ParamValue::Int(i) => *i as f64,
        ParamValue::Float(f) => *f,
        _ => return None,
    };
    let log = matches!(
        dist,
        Distribution::Float { log: true, .. } | Distribution::Int { log: true, .. }
    );
    Some(if log { x.ln() } else { x })
}

/// The parameter value nearest to internal-scale `x`, inside the bounds and on the step.
fn from_internal(dist: &Distribution, x: f64) -> ParamValue {
    match dist {
        Distribution::Float {
            low, high, log, step, ..
        } => {
            let v = if *log { x.exp() } else { x };
            let v = v.clamp(*low, *high);
            match step {
                Some(step) => {
                    let q = quantize(v, *low, *step);
                    ParamValue::Float(if q > *high {
                        quantize(q - step, *low, *step)
                    } else {
                        q
                    })
                }
                None => ParamValue::Float(v),
            }
        }
        Distribution::Int {
            low, high, log, step, ..
        } => {
            let v = if *log { x.exp() } else { x };
            let step = step.unwrap_or(1);
            let k = ((v - *low as f64) / step as f64).round() as i64;
            let max_k = (high - low) / step;
            ParamValue::Int(low + k.clamp(0, max_k) * step)
        }
        Distribution::Categorical { choices, .. } => choices[0].clone(),
    }
}

/// `value` with its sign set so that lower is better.
fn loss(goal: Goal, value: f64) -> f64 {
    match goal {
        Goal::Minimize => value,
        Goal::Maximize => -value,
    }
}

#[cfg(test)]
mod tests;
