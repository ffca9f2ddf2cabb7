//! Suggestion latency of the TPE sampler through the durable store: a 6-parameter sweep on a
//! SQLite file in a temp dir, filled with finished trials, then timed leases of new trials (each
//! one reads the sweep's history from the database and runs TPE) at 100, 1,000 and 5,000
//! finished trials, beside the same lease on a random-sampler sweep (the store's own cost).
//! Prints one JSON object. Run by `bench/hpo.sh`:
//!
//!     cargo run --release -p spotsweep-store --example suggest_latency

use std::time::Instant;

use spotsweep_core::optimize::{History, Observed, suggest};
use spotsweep_core::sweep::{ParamValue, SweepSpec, sample_random};
use spotsweep_store::{LeaseRequest, Outcome, SqliteOptions, SqliteStore, SweepStore};

const CHECKPOINTS: [usize; 3] = [100, 1_000, 5_000];
const SAMPLES: usize = 15;

fn spec(sampler: &str) -> SweepSpec {
    let text = format!(
        r#"{{"name": "latency-{sampler}", "command": "true", "pool": "bench", "max_trials": 6000, "parallelism": 1,
            "objective": {{"metric": "loss"}}, "sampler": {{"type": "{sampler}", "seed": 1}},
            "parameters": {{"x1": {{"type": "float", "low": 0, "high": 1}},
                           "x2": {{"type": "float", "low": 0, "high": 1}},
                           "lr": {{"type": "float", "low": 1e-5, "high": 1e-1, "log": true}},
                           "layers": {{"type": "int", "low": 1, "high": 8}},
                           "batch": {{"type": "int", "low": 16, "high": 512, "step": 16}},
                           "opt": {{"type": "categorical", "choices": ["sgd", "adam", "adamw"]}}}}}}"#
    );
    serde_json::from_str(&text).expect("a valid spec")
}

fn value(params: &spotsweep_core::sweep::Params) -> f64 {
    params
        .values()
        .map(|v| match v {
            ParamValue::Float(x) => *x,
            ParamValue::Int(i) => *i as f64 / 100.0,
            _ => 0.5,
        })
        .sum()
}

fn request(sweep_id: i64) -> LeaseRequest {
    LeaseRequest {
        agent_id: "bench".into(),
        request_id: None,
        slots: 1,
        pool: None,
        sweep_id: Some(sweep_id),
        ttl_ms: 60_000,
        gpus: Vec::new(),
        gpu_overhead_mib: 0,
    }
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("latency.db")))
        .await
        .expect("the store opens");
    let mut out = serde_json::Map::new();
    for sampler in ["tpe", "random"] {
        let spec = spec(sampler);
        let sweep = store.create_sweep(spec.clone(), 1).await.expect("sweep");
        let mut finished = 0usize;
        let mut rows = Vec::new();
        for target in CHECKPOINTS {
            // Finished trials with random params, enqueued so that no sampler runs for them.
            while finished < target {
                let params = sample_random(&spec, 99, finished as u64);
                let v = value(&params);
                store.enqueue_trial(sweep.id, params).await.expect("enqueue");
                let lease = store
                    .lease_trials(&request(sweep.id))
                    .await
                    .expect("lease")
                    .remove(0);
                store
                    .complete_trial(&lease.lease_id, Outcome::Succeeded(Some(v)))
                    .await
                    .expect("complete");
                finished += 1;
            }
            let mut times = Vec::new();
            for _ in 0..SAMPLES {
                let t0 = Instant::now();
                let lease = store
                    .lease_trials(&request(sweep.id))
                    .await
                    .expect("lease")
                    .remove(0);
                times.push(t0.elapsed().as_secs_f64() * 1000.0);
                let v = value(&lease.trial.params);
                store
                    .complete_trial(&lease.lease_id, Outcome::Succeeded(Some(v)))
                    .await
                    .expect("complete");
                finished += 1;
            }
            // The sampler alone, on the same history held in memory.
            let mut history = History::new(&spec);
            for t in store.list_trials(sweep.id).await.expect("trials") {
                history.push(
                    &spec,
                    &t.params,
                    t.value.map_or(Observed::Failed, Observed::Completed),
                );
            }
            let mut core_times = Vec::new();
            for i in 0..SAMPLES {
                let t0 = Instant::now();
                std::hint::black_box(suggest(&spec, 1, (history.len() + i) as u64, &history));
                core_times.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            rows.push(serde_json::json!({
                "finished": target,
                "sampler_only_median_ms": median_ms(core_times),
                "median_ms": median_ms(times.clone()),
                "max_ms": times.iter().copied().fold(0.0, f64::max),
                "samples": SAMPLES,
            }));
        }
        out.insert(sampler.into(), rows.into());
    }
    println!("{}", serde_json::Value::Object(out));
}
