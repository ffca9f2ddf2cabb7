//! The samplers' properties: suggestions lie inside their distributions and respect
//! conditions, the same seed and history give the same suggestion, discrete spaces get no
//! repeats while unseen points remain, and TPE learns.

use proptest::prelude::*;

use super::*;
use crate::sweep::validate_params;

/// Every kind of parameter: float, log float, stepped float, int, log int, stepped int,
/// categorical, and conditional ones.
fn mixed(kind: &str) -> SweepSpec {
    let text = format!(
        r#"{{"name": "mixed", "command": "run {{args}}", "max_trials": 100,
            "objective": {{"metric": "loss"}},
            "sampler": {{"type": "{kind}"}},
            "parameters": {{
              "x":     {{"type": "float", "low": -5, "high": 10}},
              "lr":    {{"type": "float", "low": 1e-5, "high": 0.1, "log": true}},
              "drop":  {{"type": "float", "low": 0, "high": 0.5, "step": 0.1}},
              "layers":{{"type": "int", "low": 1, "high": 8}},
              "width": {{"type": "int", "low": 16, "high": 1024, "log": true}},
              "batch": {{"type": "int", "low": 64, "high": 512, "step": 64}},
              "opt":   {{"type": "categorical", "choices": ["sgd", "adamw", "lion"]}},
              "mom":   {{"type": "float", "low": 0.8, "high": 0.99, "when": {{"opt": "sgd"}}}},
              "nest":  {{"type": "categorical", "choices": [true, false], "when": {{"opt": "sgd"}}}},
              "beta":  {{"type": "float", "low": 0.9, "high": 0.999, "when": {{"opt": ["adamw", "lion"]}}}}
            }}}}"#
    );
    let spec: SweepSpec = serde_json::from_str(&text).unwrap();
    spec.validate().unwrap();
    spec
}

/// A made-up objective over the mixed space, lower is better.
fn objective(p: &Params) -> f64 {
    let num = |k: &str| match p.get(k) {
        Some(ParamValue::Float(x)) => *x,
        Some(ParamValue::Int(i)) => *i as f64,
        _ => 0.0,
    };
    let opt_penalty = match p.get("opt") {
        Some(ParamValue::Str(s)) if s == "adamw" => 0.0,
        _ => 1.0,
    };
    (num("x") - 2.0).powi(2) + (num("lr").log10() + 3.0).powi(2) + (num("layers") - 4.0).abs() + opt_penalty
}

/// A history of `n` trials of a sweep, run one after the other with `objective`.
fn run(spec: &SweepSpec, seed: u64, n: u64) -> Vec<Observation> {
    let mut history = Vec::new();
    for number in 0..n {
        let params = suggest(spec, seed, number, &History::from_observations(spec, &history));
        let value = objective(&params);
        history.push(Observation {
            number,
            params,
            outcome: Observed::Completed(value),
        });
    }
    history
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn suggestions_fit_their_distributions_and_conditions(seed in any::<u64>(), n in 0u64..40, pending in 0usize..4) {
        for kind in ["tpe", "qmc"] {
            let spec = mixed(kind);
            let mut history = run(&spec, seed, n);
            // Some trials still running, one failed, one pruned: all shapes of history.
            for h in history.iter_mut().rev().take(pending) {
                h.outcome = Observed::Pending;
            }
            if let Some(h) = history.first_mut() {
                h.outcome = Observed::Failed;
            }
            if let Some(h) = history.get_mut(1) {
                h.outcome = Observed::Pruned(Some(50.0));
            }
            let params = suggest(&spec, seed, n, &History::from_observations(&spec, &history));
            prop_assert!(validate_params(&spec, &params).is_ok(), "{kind}: {params:?}: {:?}", validate_params(&spec, &params));
            for (name, value) in &params {
                match (&spec.parameters[name], value) {
                    (Distribution::Float { low, step: Some(step), .. }, ParamValue::Float(x)) => {
                        let k = (x - low) / step;
                        prop_assert!((k - k.round()).abs() < 1e-6, "{name}={x}");
                    }
                    (Distribution::Int { low, step, .. }, ParamValue::Int(i)) => {
                        prop_assert_eq!((i - low) % step.unwrap_or(1), 0);
                    }
                    (Distribution::Float { .. }, ParamValue::Float(_)) | (Distribution::Categorical { .. }, _) => {}
                    (dist, value) => prop_assert!(false, "{name}: {value:?} for {dist:?}"),
                }
            }
        }
    }

    #[test]
    fn the_same_seed_and_history_give_the_same_suggestion(seed in any::<u64>(), n in 0u64..30) {
        let spec = mixed("tpe");
        let history = run(&spec, seed, n);
        let encoded = History::from_observations(&spec, &history);
        prop_assert_eq!(suggest(&spec, seed, n, &encoded), suggest(&spec, seed, n, &encoded));
        prop_assert_eq!(run(&spec, seed, n), history);
    }
}

#[test]
fn a_discrete_space_gets_no_repeats_until_it_is_exhausted() {
    let spec: SweepSpec = serde_json::from_str(
        r#"{"name": "small", "command": "run", "max_trials": 30, "objective": {"metric": "loss"},
            "sampler": {"type": "tpe", "startup_trials": 3},
            "parameters": {"a": {"type": "int", "low": 0, "high": 3},
                           "b": {"type": "categorical", "choices": ["x", "y", "z"]}}}"#,
    )
    .unwrap();
    let mut history: Vec<Observation> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for number in 0..12 {
        let params = suggest(&spec, 5, number, &History::from_observations(&spec, &history));
        assert!(
            seen.insert(format!("{params:?}")),
            "trial {number} repeats {params:?}"
        );
        let value = match params["a"] {
            ParamValue::Int(a) => a as f64,
            _ => 0.0,
        };
        history.push(Observation {
            number,
            params,
            outcome: Observed::Completed(value),
        });
    }
    assert_eq!(seen.len(), 12, "all 4 x 3 points visited once");
}

#[test]
fn qmc_points_spread_over_the_space() {
    // 64 QMC points of one float: exactly one in each 1/64 of the range.
    let spec: SweepSpec = serde_json::from_str(
        r#"{"name": "q", "command": "run", "max_trials": 64, "objective": {"metric": "loss"},
            "sampler": {"type": "qmc", "seed": 3},
            "parameters": {"x": {"type": "float", "low": 0, "high": 64}}}"#,
    )
    .unwrap();
    let mut cells = [0; 64];
    for n in 0..64 {
        match sample_qmc(&spec, 3, n)["x"] {
            ParamValue::Float(x) => cells[x as usize] += 1,
            ref other => panic!("{other:?}"),
        }
    }
    assert!(cells.iter().all(|&c| c == 1), "{cells:?}");
}

#[test]
fn tpe_beats_random_search_on_the_mixed_space() {
    // Median over seeds of the best value after 60 trials.
    let best = |kind: &str, seed: u64| {
        run(&mixed(kind), seed, 60)
            .iter()
            .filter_map(|o| match o.outcome {
                Observed::Completed(v) => Some(v),
                _ => None,
            })
            .fold(f64::INFINITY, f64::min)
    };
    let median = |kind: &str| {
        let mut v: Vec<f64> = (0..9).map(|s| best(kind, s)).collect();
        v.sort_by(f64::total_cmp);
        v[4]
    };
    let (tpe, random) = (median("tpe"), median("random"));
    assert!(tpe < random, "TPE median best {tpe} vs random {random}");
}

#[test]
fn pending_trials_push_parallel_suggestions_apart() {
    // With the same finished trials, a suggestion made while another is pending differs from
    // that pending one (the constant liar) — with the same seed and number, only the history
    // differs.
    let spec = mixed("tpe");
    let history = run(&spec, 11, 20);
    let first = suggest(&spec, 11, 20, &History::from_observations(&spec, &history));
    let mut with_pending = history.clone();
    with_pending.push(Observation {
        number: 20,
        params: first.clone(),
        outcome: Observed::Pending,
    });
    let second = suggest(&spec, 11, 21, &History::from_observations(&spec, &with_pending));
    assert_ne!(first, second);
}
