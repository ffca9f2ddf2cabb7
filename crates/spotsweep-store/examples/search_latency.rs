//! Store-level latency of run searches on an existing database (no HTTP):
//! `cargo run --release -p spotsweep-store --example search_latency -- DB EXPERIMENT_ID`.

use std::time::Instant;

use spotsweep_core::search::{parse_run_filter, parse_run_order_by};
use spotsweep_store::*;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let store = SqliteStore::open(&SqliteOptions::new(&args[0])).await.unwrap();
    store.optimize().await.unwrap();
    let exp: i64 = args[1].parse().unwrap();
    let shapes = [
        (
            "mixed",
            "metrics.m0 > 0.5 AND params.p0 = 'v3'",
            "metrics.m1 DESC",
        ),
        (
            "params",
            "params.p0 = 'v3' AND params.p1 = 'v5'",
            "metrics.m1 DESC",
        ),
        (
            "metrics",
            "metrics.m0 > 0.5 AND metrics.m2 < 0.3",
            "metrics.m1 DESC",
        ),
        (
            "byparam",
            "metrics.m0 > 0.5 AND params.p0 = 'v3'",
            "params.p1 ASC",
        ),
        (
            "byattr",
            "metrics.m0 > 0.5 AND params.p0 = 'v3'",
            "attributes.start_time DESC",
        ),
        ("nofilter", "", "metrics.m3 ASC"),
    ];
    let limit: u32 = args.get(2).map_or(100, |l| l.parse().unwrap());
    for (name, filter, order) in shapes {
        let query = RunQuery {
            experiment_ids: vec![exp],
            filter: parse_run_filter(filter).unwrap(),
            order_by: vec![parse_run_order_by(order).unwrap()],
            view: ViewType::ActiveOnly,
            limit,
            offset: 0,
        };
        let mut times = Vec::new();
        for _ in 0..40 {
            let t = Instant::now();
            let page = store.search_runs(&query).await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(page.items.len(), limit as usize);
        }
        times.sort_by(f64::total_cmp);
        println!("{name}: p50 {:.2} ms, p90 {:.2} ms", times[20], times[36]);
    }
}
