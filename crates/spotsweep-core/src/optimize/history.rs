//! What the TPE sampler knows of a sweep's trials, encoded once per trial: each parameter as a
//! number in the model's internal scale, one column per parameter, plus each column's active
//! trials in value order. The daemon keeps one per sweep and appends to it as trials are
//! created and finish, so a suggestion reads flat columns instead of every trial's parameters,
//! and never sorts them.

use super::{Observation, Observed, bounds, to_internal};
use crate::sweep::{Distribution, Params, SweepSpec};

/// A sweep's trials as the sampler sees them, in trial-number order (trial `n` is row `n`).
#[derive(Debug, Clone)]
pub struct History {
    /// Per parameter (spec order), per trial: the internal-scale value (log for log
    /// parameters; a categorical's choice index, [`UNKNOWN_CHOICE`] for a value that is not
    /// one of the choices), or NaN where the parameter was inactive.
    columns: Vec<Vec<f64>>,
    /// Per parameter, its active trials ordered by value (ties by trial number).
    sorted: Vec<Vec<u32>>,
    /// Per trial, how it stands.
    outcomes: Vec<Observed>,
}

/// Equal when every trial has the same values (NaN, inactive, equals itself) and outcome.
impl PartialEq for History {
    fn eq(&self, other: &Self) -> bool {
        let same_bits = |a: &Vec<f64>, b: &Vec<f64>| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        self.outcomes == other.outcomes
            && self.sorted == other.sorted
            && self.columns.len() == other.columns.len()
            && self
                .columns
                .iter()
                .zip(&other.columns)
                .all(|(a, b)| same_bits(a, b))
    }
}

/// A categorical value that is none of the parameter's choices (a trial enqueued by hand with
/// another value): its kernel spreads evenly over the choices.
pub(super) const UNKNOWN_CHOICE: f64 = -1.0;

impl History {
    /// No trials yet, for a sweep with this spec.
    pub fn new(spec: &SweepSpec) -> Self {
        let d = spec.parameters.len();
        Self {
            columns: vec![Vec::new(); d],
            sorted: vec![Vec::new(); d],
            outcomes: Vec::new(),
        }
    }

    /// The history of these observations, which must be trials `0..n` in order (sorted here
    /// if they are not).
    pub fn from_observations(spec: &SweepSpec, observations: &[Observation]) -> Self {
        let mut history = Self::new(spec);
        let mut order: Vec<&Observation> = observations.iter().collect();
        order.sort_by_key(|o| o.number);
        for o in order {
            history.push(spec, &o.params, o.outcome);
        }
        history
    }

    /// The number of trials.
    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Whether there are no trials.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// Adds the next trial (its number is [`History::len`]).
    pub fn push(&mut self, spec: &SweepSpec, params: &Params, outcome: Observed) {
        let row = self.outcomes.len() as u32;
        for (i, x) in encode(spec, params).into_iter().enumerate() {
            self.columns[i].push(x);
            if !x.is_nan() {
                let column = &self.columns[i];
                let sorted = &mut self.sorted[i];
                // After every trial with a lower value, or an equal one (they have lower numbers).
                let at = sorted.partition_point(|&r| column[r as usize] <= x);
                sorted.insert(at, row);
            }
        }
        self.outcomes.push(outcome);
    }

    /// Records trial `number`'s new outcome; false when there is no such trial.
    pub fn set_outcome(&mut self, number: usize, outcome: Observed) -> bool {
        match self.outcomes.get_mut(number) {
            Some(o) => {
                *o = outcome;
                true
            }
            None => false,
        }
    }

    /// Each trial's outcome, by number.
    pub fn outcomes(&self) -> &[Observed] {
        &self.outcomes
    }

    /// Parameter `i`'s values by trial (NaN: inactive).
    pub(super) fn column(&self, i: usize) -> &[f64] {
        &self.columns[i]
    }

    /// Parameter `i`'s active trials ordered by value.
    pub(super) fn sorted(&self, i: usize) -> &[u32] {
        &self.sorted[i]
    }
}

/// A trial's parameters as the history stores them: per parameter in spec order, the
/// internal-scale value, or NaN when the parameter is absent.
pub(super) fn encode(spec: &SweepSpec, params: &Params) -> Vec<f64> {
    spec.parameters
        .iter()
        .map(|(name, dist)| match params.get(name) {
            None => f64::NAN,
            Some(value) => match dist {
                Distribution::Categorical { choices, .. } => choices
                    .iter()
                    .position(|c| c == value)
                    .map_or(UNKNOWN_CHOICE, |k| k as f64),
                _ => {
                    let (lo, hi) = bounds(dist);
                    to_internal(dist, value)
                        .filter(|x| !x.is_nan())
                        .unwrap_or((lo + hi) / 2.0)
                        .clamp(lo, hi)
                }
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::{ParamValue, sample_random};

    fn spec() -> SweepSpec {
        serde_json::from_str(
            r#"{"name": "h", "command": "run", "max_trials": 500, "objective": {"metric": "loss"},
                "parameters": {"x": {"type": "float", "low": 0, "high": 1, "step": 0.1},
                               "lr": {"type": "float", "low": 1e-4, "high": 1, "log": true},
                               "c": {"type": "categorical", "choices": ["a", "b", "c"]},
                               "y": {"type": "int", "low": 1, "high": 4, "when": {"c": "b"}}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn each_column_keeps_its_active_trials_in_value_order() {
        let spec = spec();
        let mut history = History::new(&spec);
        for n in 0..300 {
            history.push(&spec, &sample_random(&spec, 4, n), Observed::Pending);
        }
        for i in 0..spec.parameters.len() {
            let column = history.column(i);
            let mut want: Vec<u32> = (0..300u32).filter(|&r| !column[r as usize].is_nan()).collect();
            want.sort_by(|&a, &b| column[a as usize].total_cmp(&column[b as usize]).then(a.cmp(&b)));
            assert_eq!(history.sorted(i), want.as_slice(), "parameter {i}");
        }
        // y is active only where c is b.
        let inactive = history.column(3).iter().filter(|y| y.is_nan()).count();
        assert!(inactive > 150 && inactive < 250, "{inactive}");
    }

    #[test]
    fn observations_in_any_order_make_the_same_history() {
        let spec = spec();
        let observations: Vec<Observation> = (0..50)
            .map(|n| Observation {
                number: n,
                params: sample_random(&spec, 9, n),
                outcome: if n % 7 == 0 {
                    Observed::Failed
                } else {
                    Observed::Completed(n as f64)
                },
            })
            .collect();
        let mut reversed = observations.clone();
        reversed.reverse();
        let mut pushed = History::new(&spec);
        for o in &observations {
            pushed.push(&spec, &o.params, o.outcome);
        }
        assert_eq!(History::from_observations(&spec, &reversed), pushed);
        assert!(pushed.set_outcome(3, Observed::Pruned(Some(1.0))));
        assert_eq!(pushed.outcomes()[3], Observed::Pruned(Some(1.0)));
        assert!(!pushed.set_outcome(50, Observed::Pending));
    }

    #[test]
    fn values_outside_the_space_are_encoded_inside_it() {
        let spec = spec();
        let params: Params = [
            ("x".to_string(), ParamValue::Float(7.0)),
            ("lr".to_string(), ParamValue::Str("fast".into())),
            ("c".to_string(), ParamValue::Str("z".into())),
        ]
        .into_iter()
        .collect();
        let encoded = encode(&spec, &params);
        // x clamps to the top of its range (widened by half a step), lr takes the middle of
        // its log range, an unknown choice is marked, y is inactive.
        assert!((encoded[0] - 1.05).abs() < 1e-12, "{encoded:?}");
        assert!(
            (encoded[1] - (1e-4f64.ln() + 1f64.ln()) / 2.0).abs() < 1e-12,
            "{encoded:?}"
        );
        assert_eq!(encoded[2], UNKNOWN_CHOICE);
        assert!(encoded[3].is_nan());
    }
}
