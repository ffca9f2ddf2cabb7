//! Whatever spec validates, every sampler can sample: no panic, and every value inside its
//! distribution and finite. Specs are drawn with the extreme numbers a user (or an attacker)
//! may send: the ends of the float and integer ranges, tiny and huge steps, zero widths.

use proptest::prelude::*;
use spotsweep_core::optimize::{History, Observed, suggest};
use spotsweep_core::sweep::*;

/// Numbers near every edge: ordinary ones, the float range's ends, subnormals, 2^53.
fn edgy_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e3f64..1e3,
        Just(0.0),
        Just(-0.0),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(f64::MIN_POSITIVE),
        Just(5e-324),
        Just(1e308),
        Just(-1e308),
        Just(1e154),
        Just(9_007_199_254_740_992.0),
        Just(1e-300),
        any::<f64>(),
    ]
}

fn edgy_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        -1000i64..1000,
        Just(i64::MIN),
        Just(i64::MAX),
        Just(1 << 53),
        Just(-(1 << 53)),
        Just((1 << 53) + 1),
        Just(0),
        Just(1),
        any::<i64>(),
    ]
}

fn distribution() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (
            edgy_float(),
            edgy_float(),
            any::<bool>(),
            proptest::option::of(edgy_float())
        )
            .prop_map(|(low, high, log, step)| {
                let mut d = serde_json::json!({"type": "float", "low": low, "high": high, "log": log});
                if let Some(step) = step {
                    d["step"] = serde_json::json!(step);
                }
                d
            }),
        (
            edgy_int(),
            edgy_int(),
            any::<bool>(),
            proptest::option::of(edgy_int())
        )
            .prop_map(|(low, high, log, step)| {
                let mut d = serde_json::json!({"type": "int", "low": low, "high": high, "log": log});
                if let Some(step) = step {
                    d["step"] = serde_json::json!(step);
                }
                d
            }),
        proptest::collection::vec(
            prop_oneof![
                edgy_float().prop_map(|x| serde_json::json!(x)),
                edgy_int().prop_map(|i| serde_json::json!(i)),
                "[a-c]{1,2}".prop_map(|s| serde_json::json!(s)),
                any::<bool>().prop_map(|b| serde_json::json!(b)),
            ],
            1..5
        )
        .prop_map(|choices| serde_json::json!({"type": "categorical", "choices": choices})),
    ]
}

fn sampler() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("random"), Just("grid"), Just("qmc"), Just("tpe")]
}

/// A spec of one to three parameters; the first, when categorical, may condition the second.
fn spec() -> impl Strategy<Value = (SweepSpec, u64)> {
    (
        proptest::collection::vec(distribution(), 1..4),
        sampler(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_filter_map("not a spec", |(dists, kind, conditional, seed)| {
            let mut parameters = serde_json::Map::new();
            for (i, mut d) in dists.into_iter().enumerate() {
                if i == 1 && conditional && parameters["p0"]["type"] == "categorical" {
                    d["when"] = serde_json::json!({"p0": parameters["p0"]["choices"][0].clone()});
                }
                parameters.insert(format!("p{i}"), d);
            }
            let spec = serde_json::json!({
                "name": "edge", "command": "run {args}", "max_trials": 50,
                "objective": {"metric": "loss"},
                "sampler": {"type": kind, "startup_trials": if kind == "tpe" { Some(3) } else { None }},
                "parameters": parameters,
            });
            // Numbers that JSON cannot carry (NaN, infinities) are no spec at all.
            serde_json::from_value::<SweepSpec>(spec).ok().map(|s| (s, seed))
        })
}

/// Every value is finite and inside its distribution.
fn check_inside(spec: &SweepSpec, params: &Params) -> Result<(), TestCaseError> {
    for (name, value) in params {
        match (&spec.parameters[name], value) {
            (Distribution::Float { low, high, .. }, ParamValue::Float(x)) => {
                prop_assert!(x.is_finite() && *low <= *x && *x <= *high, "{name} = {x}");
            }
            (Distribution::Int { low, high, .. }, ParamValue::Int(i)) => {
                prop_assert!(*low <= *i && *i <= *high, "{name} = {i}");
            }
            (Distribution::Categorical { choices, .. }, v) => prop_assert!(choices.contains(v)),
            (d, v) => prop_assert!(false, "{name}: {v:?} does not fit {d:?}"),
        }
    }
    prop_assert!(validate_params(spec, params).is_ok(), "{params:?}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn every_spec_that_validates_can_be_sampled_by_every_sampler((spec, seed) in spec()) {
        if spec.validate().is_err() {
            return Ok(());
        }
        if spec.sampler.kind == SamplerKind::Grid {
            let small = spec
                .parameters
                .iter()
                .map(|(n, d)| grid_values(n, d).map(|v| v.len()))
                .try_fold(1usize, |acc, n| n.ok().map(|n| acc.saturating_mul(n)))
                .is_some_and(|total| total <= 10_000);
            if small {
                for params in grid_sequence(&spec, seed).unwrap() {
                    check_inside(&spec, &params)?;
                }
            }
        }
        // Random, QMC and TPE, with a history long enough for TPE to take over: completed,
        // pruned, pending and failed trials, objective values of every magnitude.
        let mut history = History::new(&spec);
        for number in 0..12u64 {
            let params = suggest(&spec, seed, number, &history);
            check_inside(&spec, &params)?;
            let outcome = match number % 4 {
                0 => Observed::Completed(number as f64 * 1e300),
                1 => Observed::Pruned(Some(-(number as f64))),
                2 => Observed::Pending,
                _ => Observed::Completed(0.5),
            };
            history.push(&spec, &params, outcome);
        }
    }
}

#[test]
fn the_specs_that_broke_the_daemon_are_refused_with_the_field_named() {
    let refused = |parameter: serde_json::Value| {
        let spec: SweepSpec = serde_json::from_value(serde_json::json!({
            "name": "x", "command": "run {args}", "objective": {"metric": "loss"}, "max_trials": 10,
            "parameters": {"x": parameter},
        }))
        .unwrap();
        spec.validate().unwrap_err().to_string()
    };
    let wide = refused(serde_json::json!({"type": "float", "low": -1e308, "high": 1e308}));
    assert!(
        wide.contains("parameters.x.high") && wide.contains("wider"),
        "{wide}"
    );
    let int = refused(serde_json::json!({"type": "int", "low": i64::MIN, "high": i64::MAX}));
    assert!(int.contains("parameters.x.low") && int.contains("2^53"), "{int}");
    let tiny_step = refused(serde_json::json!({"type": "float", "low": 0, "high": 1e300, "step": 1e-300}));
    assert!(tiny_step.contains("parameters.x.step"), "{tiny_step}");
    let huge_step = refused(serde_json::json!({"type": "int", "low": 0, "high": 1, "step": i64::MAX}));
    assert!(huge_step.contains("parameters.x.step"), "{huge_step}");
}

#[test]
fn a_hundred_thousand_choices_validate_in_linear_time() {
    let choices: Vec<String> = (0..160_000).map(|i| format!("c{i}")).collect();
    let spec: SweepSpec = serde_json::from_value(serde_json::json!({
        "name": "x", "command": "run {args}", "objective": {"metric": "loss"}, "max_trials": 10,
        "parameters": {"x": {"type": "categorical", "choices": choices}},
    }))
    .unwrap();
    // Quadratic, this took a minute of a core; linear, a few milliseconds. The bound is loose
    // on purpose (debug build, shared CI machine): it fails only on the quadratic scan.
    let started = std::time::Instant::now();
    spec.validate().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
