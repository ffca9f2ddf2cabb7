//! Store-level cost of wide metric batches (no HTTP): `cargo run --release -p spotsweep-store
//! --example wide_batch -- KEYS STEPS REQUESTS CLIENTS`. Each request logs KEYS distinct keys at
//! STEPS steps (each a new step, with new values) to the runs in turn (`RUNS`, default 8);
//! prints metrics/s and latency percentiles.

use std::sync::Arc;
use std::time::Instant;

use spotsweep_store::*;

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (keys, steps, requests, clients) = (args[0], args[1], args[2], args[3]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&SqliteOptions::new(dir.path().join("w.db")))
            .await
            .unwrap(),
    );
    let exp = store
        .create_experiment(NewExperiment {
            name: "w".into(),
            artifact_location: None,
            artifact_root: "/tmp".into(),
            tags: vec![],
            now: 0,
        })
        .await
        .unwrap();
    let mut runs = Vec::new();
    let n_runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for i in 0..n_runs {
        let id = format!("{:032x}", i + 1);
        store
            .create_run(NewRun {
                experiment_id: exp,
                run_id: id.clone(),
                run_name: format!("r{i}"),
                user_id: String::new(),
                start_time: 0,
                tags: vec![],
            })
            .await
            .unwrap();
        runs.push(id);
    }
    // WAL upkeep as the daemon does it.
    {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let _ = store.checkpoint().await;
            }
        });
    }
    // BURST=n: each client sends n requests in a row to one run, then moves on (the HTTP
    // benchmark's pattern, which makes runs due for compaction); default 1 (runs in turn).
    let burst: usize = std::env::var("BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let names: Arc<Vec<String>> = Arc::new((0..keys).map(|k| format!("acc_class_{k}")).collect());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let store = store.clone();
        let runs = runs.clone();
        let names = names.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for r in 0..requests / clients {
                let step0 = (r * steps) as i64;
                let metrics: Vec<Metric> = (0..steps)
                    .flat_map(|s| {
                        names.iter().map(move |k| Metric {
                            key: k.clone(),
                            value: ((step0 as usize + s) * 7919 % 1000) as f64 / 1000.0,
                            timestamp: step0 + s as i64,
                            step: step0 + s as i64,
                        })
                    })
                    .collect();
                let t = Instant::now();
                store
                    .log_batch(
                        &runs[(c + (r / burst) * clients) % runs.len()],
                        Batch {
                            metrics,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                lat.push(t.elapsed().as_secs_f64());
            }
            lat
        }));
    }
    let mut lat: Vec<f64> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let el = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    println!(
        "{keys} keys x {steps} steps, {clients} clients: {:.0} metrics/s, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        (n * keys * steps) as f64 / el,
        n as f64 / el,
        lat[n / 2] * 1e3,
        lat[n * 99 / 100] * 1e3,
        lat[n - 1] * 1e3
    );
}
