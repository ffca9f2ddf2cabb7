//! Sweep specs, validation messages, samplers and command rendering.

use proptest::prelude::*;
use spotsweep_core::sweep::*;

fn spec(json: serde_json::Value) -> SweepSpec {
    serde_json::from_value(json).unwrap()
}

fn demo() -> SweepSpec {
    spec(serde_json::json!({
        "name": "branin-demo",
        "command": "python train.py --x {x} --lr {lr} --opt {opt}",
        "parameters": {
            "x": {"type": "float", "low": -5, "high": 10},
            "lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": true},
            "layers": {"type": "int", "low": 1, "high": 8},
            "batch": {"type": "int", "low": 64, "high": 512, "step": 64},
            "width": {"type": "int", "low": 16, "high": 1024, "log": true},
            "opt": {"type": "categorical", "choices": ["sgd", "adamw"]},
            "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"opt": "sgd"}}
        },
        "objective": {"metric": "loss", "goal": "minimize"},
        "sampler": {"type": "random", "seed": 7},
        "max_trials": 40,
        "parallelism": 4
    }))
}

#[test]
fn the_issue_example_is_valid() {
    let s = demo();
    s.validate().unwrap();
    assert_eq!(s.max_retries, 3);
    assert_eq!(s.pool, "local");
    assert_eq!(s.experiment_name(), "branin-demo");
}

#[test]
fn validation_names_the_field() {
    let cases = [
        (
            serde_json::json!({"lr": {"type": "float", "low": 0, "high": 1, "log": true}}),
            "parameters.lr.low must be > 0 when log is true",
        ),
        (
            serde_json::json!({"n": {"type": "int", "low": 5, "high": 1}}),
            "parameters.n.low must be <= high (5 > 1)",
        ),
        (
            serde_json::json!({"c": {"type": "categorical", "choices": []}}),
            "parameters.c.choices must list at least one choice",
        ),
        (
            serde_json::json!({"m": {"type": "float", "low": 0, "high": 1, "when": {"opt": "sgd"}}}),
            "parameters.m.when refers to 'opt', which is not a parameter",
        ),
    ];
    for (parameters, message) in cases {
        let mut s = demo();
        s.command = Some("run".into());
        s.parameters = serde_json::from_value(parameters).unwrap();
        assert_eq!(s.validate().unwrap_err().to_string(), message);
    }
    let mut s = demo();
    s.command = Some("python t.py {nope}".into());
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .starts_with("command uses {nope}")
    );
    let mut s = demo();
    s.max_trials = 0;
    assert_eq!(s.validate().unwrap_err().field, "max_trials");
    let mut s = demo();
    s.parameters.insert(
        "late".into(),
        serde_json::from_value(
            serde_json::json!({"type": "categorical", "choices": ["a"], "when": {"opt": "rmsprop"}}),
        )
        .unwrap(),
    );
    assert_eq!(
        s.validate().unwrap_err().to_string(),
        "parameters.late.when.opt rmsprop is not one of the choices of 'opt'"
    );
    // Unknown fields are refused at parse time.
    assert!(serde_json::from_value::<SweepSpec>(serde_json::json!({"name": "x", "paramters": {}})).is_err());
}

#[test]
fn same_seed_same_parameters_and_conditions_hold() {
    let s = demo();
    for trial in 0..200 {
        let a = sample_random(&s, 7, trial);
        assert_eq!(a, sample_random(&s, 7, trial));
        assert_eq!(
            a.contains_key("momentum"),
            a["opt"] == ParamValue::Str("sgd".into()),
            "{a:?}"
        );
    }
    assert_ne!(sample_random(&s, 7, 0), sample_random(&s, 8, 0));
    assert_ne!(trial_seed(7, 0), trial_seed(7, 1));
}

#[test]
fn rendering_writes_values_that_parse_back() {
    let s = demo();
    let p = sample_random(&s, 7, 3);
    let cmd = render_command(s.command.as_deref().unwrap(), &p, 3);
    let x = match &p["x"] {
        ParamValue::Float(x) => *x,
        other => panic!("{other:?}"),
    };
    let written = cmd.split_whitespace().nth(3).unwrap();
    assert_eq!(written.parse::<f64>().unwrap(), x);
    let mut q = Params::new();
    q.insert("a".into(), ParamValue::Float(1.0));
    q.insert("b".into(), ParamValue::Str("two words".into()));
    assert_eq!(
        render_command("run {a} {b} {missing} #{trial} {args}", &q, 9),
        "run 1.0 'two words'  #9 --a 1.0 --b 'two words'"
    );
}

#[test]
fn grid_enumerates_each_distinct_point_once() {
    let s = spec(serde_json::json!({
        "name": "g", "command": "run {args}",
        "parameters": {
            "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
            "m": {"type": "float", "low": 0.8, "high": 1.0, "step": 0.1, "when": {"opt": "sgd"}},
            "n": {"type": "int", "low": 1, "high": 3}
        },
        "objective": {"metric": "loss"}, "sampler": {"type": "grid"}, "max_trials": 100
    }));
    s.validate().unwrap();
    let points = grid_points(&s).unwrap();
    // sgd: 3 momenta x 3 n; adam: 3 n.
    assert_eq!(points.len(), 12);
    assert_eq!(points[0]["m"], ParamValue::Float(0.8));
    assert_eq!(points[2]["m"], ParamValue::Float(0.8));
    assert_eq!(points[3]["m"], ParamValue::Float(0.9));
    assert!(points[9..].iter().all(|p| !p.contains_key("m")));
    let mut float_grid = s.clone();
    float_grid.parameters.insert(
        "f".into(),
        serde_json::from_value(serde_json::json!({"type": "float", "low": 0, "high": 1})).unwrap(),
    );
    assert!(
        float_grid
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs a step")
    );
}

proptest! {
    #[test]
    fn random_draws_stay_inside_their_distribution(seed in any::<u64>(), trial in 0u64..10_000) {
        let s = demo();
        let p = sample_random(&s, seed, trial);
        for (name, value) in &p {
            match (&s.parameters[name], value) {
                (Distribution::Float { low, high, step, .. }, ParamValue::Float(x)) => {
                    prop_assert!(*low <= *x && *x <= *high, "{name}={x}");
                    if let Some(step) = step {
                        let k = (x - low) / step;
                        prop_assert!((k - k.round()).abs() < 1e-6);
                    }
                }
                (Distribution::Int { low, high, step, .. }, ParamValue::Int(i)) => {
                    prop_assert!(*low <= *i && *i <= *high, "{name}={i}");
                    prop_assert_eq!((i - low) % step.unwrap_or(1), 0);
                }
                (Distribution::Categorical { choices, .. }, v) => prop_assert!(choices.contains(v)),
                (d, v) => prop_assert!(false, "{name}: {v:?} does not fit {d:?}"),
            }
        }
    }
}
