//! The SQLite store against a real file: lifecycle, latest-metric rule, param immutability,
//! search translation, persistence across reopen, and the newer-schema refusal.

use spotsweep_core::search::{parse_run_filter, parse_run_order_by};
use std::collections::HashMap;
use std::future::Future;

use spotsweep_store::*;

#[macro_use]
mod common;
use common::{Backend, Close, Tracking};

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&SqliteOptions::new(dir.path().join("t.db")))
        .await
        .unwrap()
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
    }
}

fn metric(k: &str, value: f64, timestamp: i64, step: i64) -> Metric {
    Metric {
        key: k.into(),
        value,
        timestamp,
        step,
    }
}

async fn new_run(store: &impl Tracking, exp: i64, id: &str, start: i64) {
    store
        .create_run(NewRun {
            experiment_id: exp,
            run_id: id.into(),
            run_name: format!("run-{id}"),
            user_id: "u".into(),
            start_time: start,
            tags: vec![kv("mlflow.runName", &format!("run-{id}"))],
        })
        .await
        .unwrap();
}

async fn new_experiment(store: &impl Tracking, name: &str) -> i64 {
    store
        .create_experiment(NewExperiment {
            name: name.into(),
            artifact_location: None,
            artifact_root: "mlflow-artifacts:".into(),
            tags: vec![],
            now: 1,
        })
        .await
        .unwrap()
}

/// Logs metric points alone (the group-committed path).
async fn log_metrics(store: &impl Tracking, run_id: &str, metrics: Vec<Metric>) {
    store
        .log_batch(
            run_id,
            Batch {
                metrics,
                ..Batch::default()
            },
        )
        .await
        .unwrap();
}

async fn experiments_and_runs_round_trip<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let store = db.open().await;
    let default = store.get_experiment(0).await.unwrap();
    assert_eq!(default.name, "Default");
    let id = new_experiment(&store, "e1").await;
    assert!(id > 0);
    let e = store.get_experiment_by_name("e1").await.unwrap();
    assert_eq!(e.artifact_location, format!("mlflow-artifacts:/{id}"));
    assert!(matches!(
        store
            .create_experiment(NewExperiment {
                name: "e1".into(),
                artifact_location: None,
                artifact_root: "x".into(),
                tags: vec![],
                now: 1
            })
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    new_run(&store, id, "r1", 10).await;
    let run = store.get_run("r1").await.unwrap();
    assert_eq!(
        run.info.artifact_uri,
        format!("mlflow-artifacts:/{id}/r1/artifacts")
    );
    assert_eq!(run.info.status, RunStatus::Running);
    assert!(matches!(
        store.get_run("nope").await,
        Err(StoreError::NotFound(_))
    ));

    store
        .set_experiment_lifecycle(id, LifecycleStage::Deleted)
        .await
        .unwrap();
    assert_eq!(
        store.get_run("r1").await.unwrap().info.lifecycle_stage,
        LifecycleStage::Deleted
    );
    assert!(matches!(
        store
            .log_batch(
                "r1",
                Batch {
                    tags: vec![kv("a", "b")],
                    ..Batch::default()
                }
            )
            .await,
        Err(StoreError::Invalid(_))
    ));
    store
        .set_experiment_lifecycle(id, LifecycleStage::Active)
        .await
        .unwrap();
    store
        .log_batch(
            "r1",
            Batch {
                tags: vec![kv("a", "b")],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
}

async fn latest_metric_is_max_step_then_timestamp_then_value<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let store = db.open().await;
    new_run(&store, 0, "r", 1).await;
    let batch = |m: Vec<Metric>| Batch {
        metrics: m,
        ..Batch::default()
    };
    store
        .log_batch("r", batch(vec![metric("loss", 5.0, 100, 3)]))
        .await
        .unwrap();
    // A later write at a lower step does not become the latest.
    store
        .log_batch("r", batch(vec![metric("loss", 1.0, 200, 2)]))
        .await
        .unwrap();
    assert_eq!(store.get_run("r").await.unwrap().metrics[0].value, 5.0);
    // Same step, later timestamp wins; same step and timestamp, larger value wins.
    store
        .log_batch(
            "r",
            batch(vec![metric("loss", 4.0, 150, 3), metric("loss", 4.5, 150, 3)]),
        )
        .await
        .unwrap();
    let latest = store.get_run("r").await.unwrap().metrics[0].clone();
    assert_eq!((latest.value, latest.timestamp, latest.step), (4.5, 150, 3));
    // Duplicate points are stored once; NaN and infinity survive as NaN and f64::MAX.
    store
        .log_batch("r", batch(vec![metric("loss", 1.0, 200, 2)]))
        .await
        .unwrap();
    store
        .log_batch(
            "r",
            batch(vec![
                metric("n", f64::NAN, 1, 0),
                metric("i", f64::INFINITY, 1, 0),
            ]),
        )
        .await
        .unwrap();
    let history = store.metric_history("r", "loss", 0, 100).await.unwrap();
    assert_eq!(history.items.len(), 4);
    assert_eq!(
        history.items.iter().map(|m| m.timestamp).collect::<Vec<_>>(),
        vec![100, 150, 150, 200]
    );
    let run = store.get_run("r").await.unwrap();
    let n = run.metrics.iter().find(|m| m.key == "n").unwrap();
    assert!(n.value.is_nan());
    assert_eq!(run.metrics.iter().find(|m| m.key == "i").unwrap().value, f64::MAX);
    // Paging.
    let p1 = store.metric_history("r", "loss", 0, 3).await.unwrap();
    assert_eq!((p1.items.len(), p1.next_offset), (3, Some(3)));
    let p2 = store.metric_history("r", "loss", 3, 3).await.unwrap();
    assert_eq!((p2.items.len(), p2.next_offset), (1, None));
    assert!(
        store
            .metric_history("unknown", "loss", 0, 3)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

async fn params_are_immutable_and_a_bad_batch_writes_nothing<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let store = db.open().await;
    new_run(&store, 0, "r", 1).await;
    store
        .log_batch(
            "r",
            Batch {
                params: vec![kv("lr", "0.1")],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    store
        .log_batch(
            "r",
            Batch {
                params: vec![kv("lr", "0.1")],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    let err = store
        .log_batch(
            "r",
            Batch {
                params: vec![kv("lr", "0.2")],
                metrics: vec![metric("m", 1.0, 1, 0)],
                tags: vec![kv("t", "v")],
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Changing param values is not allowed"),
        "{err}"
    );
    let run = store.get_run("r").await.unwrap();
    assert!(run.metrics.is_empty());
    assert!(!run.tags.iter().any(|t| t.key == "t"));
}

async fn search_filters_orders_and_pages<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let store = db.open().await;
    let exp = new_experiment(&store, "s").await;
    for i in 0..20i64 {
        let id = format!("run{i:02}");
        new_run(&store, exp, &id, 1000 + i).await;
        let mut batch = Batch {
            metrics: vec![metric("acc", i as f64 / 20.0, 1, 0)],
            params: vec![kv("opt", if i % 2 == 0 { "adam" } else { "sgd" })],
            tags: vec![],
        };
        if i % 5 == 0 {
            batch.tags.push(kv("special", "Yes"));
        }
        store.log_batch(&id, batch).await.unwrap();
    }
    let query = |filter: &str, order: &[&str], limit: u32, offset: u64| RunQuery {
        experiment_ids: vec![exp],
        filter: parse_run_filter(filter).unwrap(),
        order_by: order.iter().map(|o| parse_run_order_by(o).unwrap()).collect(),
        view: ViewType::ActiveOnly,
        limit,
        offset,
    };
    let page = store
        .search_runs(&query("metrics.acc > 0.5 AND params.opt = 'adam'", &[], 100, 0))
        .await
        .unwrap();
    let ids: Vec<_> = page.items.iter().map(|r| r.info.run_id.as_str()).collect();
    // Default order: start_time DESC.
    assert_eq!(ids, vec!["run18", "run16", "run14", "run12"]);
    let page = store
        .search_runs(&query("tags.special LIKE 'Y%'", &["metrics.acc ASC"], 100, 0))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 4);
    assert_eq!(
        store
            .search_runs(&query("tags.special LIKE 'y%'", &[], 100, 0))
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    assert_eq!(
        store
            .search_runs(&query("tags.special ILIKE 'y%'", &[], 100, 0))
            .await
            .unwrap()
            .items
            .len(),
        4
    );
    assert_eq!(
        store
            .search_runs(&query("tags.special IS NULL", &[], 100, 0))
            .await
            .unwrap()
            .items
            .len(),
        16
    );
    // Missing sort keys last in both directions.
    for dir in ["ASC", "DESC"] {
        let page = store
            .search_runs(&query("", &[&format!("tags.special {dir}")], 100, 0))
            .await
            .unwrap();
        assert!(
            page.items[..4]
                .iter()
                .all(|r| r.tags.iter().any(|t| t.key == "special")),
            "{dir}"
        );
    }
    // Paging covers everything exactly once.
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let page = store
            .search_runs(&query("", &["metrics.acc DESC"], 7, offset))
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|r| r.info.run_id.clone()));
        match page.next_offset {
            Some(next) => offset = next,
            None => break,
        }
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(seen[0], "run19");
    let run_in = query("attributes.run_id IN ('run01', 'run02')", &[], 100, 0);
    assert_eq!(store.search_runs(&run_in).await.unwrap().items.len(), 2);
    store
        .set_run_lifecycle("run01", LifecycleStage::Deleted)
        .await
        .unwrap();
    assert_eq!(store.search_runs(&run_in).await.unwrap().items.len(), 1);
    let deleted = RunQuery {
        view: ViewType::DeletedOnly,
        ..query("", &[], 100, 0)
    };
    assert_eq!(store.search_runs(&deleted).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn writes_survive_reopen_and_newer_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir).await;
        new_run(&store, 0, "r", 1).await;
        store
            .log_batch(
                "r",
                Batch {
                    metrics: vec![metric("m", 2.0, 1, 1)],
                    ..Batch::default()
                },
            )
            .await
            .unwrap();
        store.close().await;
    }
    let store = open(&dir).await;
    assert_eq!(store.get_run("r").await.unwrap().metrics[0].value, 2.0);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    store.close().await;
    let err = SqliteStore::open(&SqliteOptions::new(dir.path().join("t.db")))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("newer than this spotsweep binary"),
        "{err}"
    );
}

/// History order and de-duplication as the reference's row-per-point table gives them.
fn expected_history(points: &[(i64, i64, f64)]) -> Vec<(i64, i64, u64)> {
    let key = |v: f64| if v.is_nan() { (0.0, 1) } else { (v, 0) };
    let mut sorted: Vec<(i64, i64, f64)> = points
        .iter()
        .map(|&(t, s, v)| (t, s, if v.is_infinite() { v.signum() * f64::MAX } else { v }))
        .collect();
    sorted.sort_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then(key(a.2).partial_cmp(&key(b.2)).unwrap())
    });
    sorted.dedup_by(|a, b| (a.0, a.1, key(a.2)) == (b.0, b.1, key(b.2)));
    sorted.iter().map(|&(t, s, v)| (t, s, v.to_bits())).collect()
}

async fn whole_history(store: &impl Tracking, run: &str, key: &str) -> Vec<(i64, i64, u64)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = store.metric_history(run, key, offset, 97).await.unwrap();
        out.extend(
            page.items
                .iter()
                .map(|m| (m.timestamp, m.step, m.value.to_bits())),
        );
        match page.next_offset {
            Some(next) => offset = next,
            None => return out,
        }
    }
}

/// Logs a fixed pseudo-random sequence of points of `loss` to run `r`: out-of-order steps,
/// repeated points, NaN and infinities, mostly single points, sometimes a batch, several writes
/// in flight at once (SQLite's writer commits them in groups). Returns every point logged, as
/// (timestamp, step, value), and how many writes there were.
async fn log_a_mixed_history(store: &impl Tracking) -> (Vec<(i64, i64, f64)>, usize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut logged: Vec<(i64, i64, f64)> = Vec::new();
    let mut writes = 0;
    let mut pending = Vec::new();
    let mut in_flight = Vec::new();
    for i in 0..1500 {
        let point = match next(20) {
            0 if !logged.is_empty() => logged[next(logged.len() as u64) as usize],
            1 => (i, i % 50, f64::NAN),
            2 => (i, i % 50, f64::NEG_INFINITY),
            _ => (next(400) as i64, next(300) as i64, next(1000) as f64 / 7.0),
        };
        logged.push(point);
        pending.push(metric("loss", point.2, point.0, point.1));
        if next(10) == 0 || pending.len() > 1 || i % 3 == 0 {
            let batch = Batch {
                metrics: std::mem::take(&mut pending),
                ..Batch::default()
            };
            writes += 1;
            let store = store.clone();
            in_flight.push(tokio::spawn(
                async move { store.log_batch("r", batch).await.unwrap() },
            ));
            if in_flight.len() == 8 {
                for write in in_flight.drain(..) {
                    write.await.unwrap();
                }
            }
        }
        if i % 250 == 0 {
            let batch: Vec<Metric> = (0..120)
                .map(|j| metric("loss", j as f64, 10_000 + j, j))
                .collect();
            logged.extend(batch.iter().map(|m| (m.timestamp, m.step, m.value)));
            writes += 1;
            store
                .log_batch(
                    "r",
                    Batch {
                        metrics: batch,
                        ..Batch::default()
                    },
                )
                .await
                .unwrap();
        }
    }
    let last = Batch {
        metrics: pending,
        ..Batch::default()
    };
    store.log_batch("r", last).await.unwrap();
    for write in in_flight {
        write.await.unwrap();
    }
    (logged, writes)
}

async fn history_is_the_same_whether_logged_one_by_one_or_in_batches<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let store = db.open().await;
    new_run(&store, 0, "r", 1).await;
    let (logged, _) = log_a_mixed_history(&store).await;
    let want = expected_history(&logged);
    assert_eq!(whole_history(&store, "r", "loss").await, want);

    // Charts see the same points in step order.
    let chart = store
        .metric_history_bulk_interval(&["r".to_owned()], "loss", None, None, 100_000)
        .await
        .unwrap();
    assert_eq!(chart.len(), want.len());
    assert!(
        chart
            .windows(2)
            .all(|w| (w[0].1.step, w[0].1.timestamp) <= (w[1].1.step, w[1].1.timestamp))
    );

    // The latest value is the reference's rule over everything logged.
    let latest = store.get_run("r").await.unwrap().metrics[0].clone();
    let top = want
        .iter()
        .max_by(|a, b| {
            let v = |bits: u64| {
                let v = f64::from_bits(bits);
                if v.is_nan() { 0.0 } else { v }
            };
            (a.1, a.0)
                .cmp(&(b.1, b.0))
                .then(v(a.2).partial_cmp(&v(b.2)).unwrap())
        })
        .unwrap();
    assert_eq!((latest.step, latest.timestamp), (top.1, top.0));

    store.close().await;
    let store = db.open().await;
    assert_eq!(whole_history(&store, "r", "loss").await, want);
}

#[tokio::test]
async fn small_metric_writes_are_merged_into_few_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    new_run(&store, 0, "r", 1).await;
    let (logged, writes) = log_a_mixed_history(&store).await;
    assert_eq!(
        whole_history(&store, "r", "loss").await,
        expected_history(&logged)
    );
    // Small writes were merged: far fewer blocks than writes.
    let db = dir.path().join("t.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let (blocks,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM metric_blocks")
        .fetch_one(&pool)
        .await
        .unwrap();
    // (About 1,000 writes in groups of up to 8: some 130 blocks unmerged, about 30 merged.)
    assert!(
        (blocks as usize) * 20 < writes,
        "{blocks} blocks for {writes} writes"
    );
    pool.close().await;
}

/// `t.db` in `dir` as the migrations before `first_missing` (`"0005"`) left it, with run 7 (`r`);
/// the connection to fill it with.
async fn database_before(dir: &tempfile::TempDir, first_missing: &str) -> sqlx::SqlitePool {
    let old = tempfile::tempdir().unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/sqlite");
    for entry in std::fs::read_dir(&migrations).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.as_str() < first_missing {
            std::fs::copy(&path, old.path().join(&name)).unwrap();
        }
    }
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("t.db"))
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO runs (id, run_uuid, experiment_id, name, status, start_time, artifact_uri) \
         VALUES (7, 'r', 0, 'old', 'RUNNING', 1, 'mlflow-artifacts:/0/r/artifacts')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool
}

#[tokio::test]
async fn a_row_per_point_database_is_converted_to_blocks() {
    let dir = tempfile::tempdir().unwrap();
    // A database as schema version 4 left it, built with the migrations of that time.
    let pool = database_before(&dir, "0005").await;
    let mut logged = Vec::new();
    for i in 0..3000_i64 {
        let value = if i == 5 { f64::NAN } else { (i * 37 % 101) as f64 };
        logged.push((i * 7 % 2000, i % 40, value));
    }
    for (t, s, v) in &logged {
        sqlx::query("INSERT OR IGNORE INTO metrics (run_id, key, timestamp, step, value, is_nan) VALUES (7, 'acc', ?, ?, ?, ?)")
            .bind(t)
            .bind(s)
            .bind(if v.is_nan() { 0.0 } else { *v })
            .bind(v.is_nan())
            .execute(&pool)
            .await
            .unwrap();
    }
    let (latest_before,): (f64,) = sqlx::query_as("SELECT value FROM latest_metrics WHERE run_id = 7")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = open(&dir).await;
    assert_eq!(whole_history(&store, "r", "acc").await, expected_history(&logged));
    assert_eq!(store.get_run("r").await.unwrap().metrics[0].value, latest_before);
    // New points land next to the converted ones.
    store
        .log_batch(
            "r",
            Batch {
                metrics: vec![metric("acc", 0.25, 5000, 40)],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(store.get_run("r").await.unwrap().metrics[0].value, 0.25);
    assert_eq!(
        whole_history(&store, "r", "acc").await.len(),
        expected_history(&logged).len() + 1
    );
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    let legacy: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE name = 'metrics_legacy'")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert!(legacy.is_none());
    pool.close().await;
}

/// The keys of the wide-batch tests: per-class accuracies.
fn wide_keys() -> Vec<String> {
    (0..300).map(|k| format!("acc/class_{k}")).collect()
}

/// Logs 150 wide batches to run `w`: every key at one step, some twice (a retried request), one
/// a NaN, one an infinity; some steps also carry a long run of one key (`loss`). `after_write`
/// is called after each, with its step. Returns every point logged per key.
async fn log_wide_batches<F: Future<Output = ()>>(
    store: &impl Tracking,
    keys: &[String],
    mut after_write: impl FnMut(i64) -> F,
) -> HashMap<String, Vec<(i64, i64, f64)>> {
    let mut logged: HashMap<String, Vec<(i64, i64, f64)>> = Default::default();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for step in 0..150i64 {
        let mut metrics: Vec<Metric> = Vec::new();
        for (k, key) in keys.iter().enumerate() {
            let value = match next(50) {
                0 => f64::NAN,
                1 => f64::INFINITY,
                _ => (k as f64) + step as f64 / 1000.0,
            };
            let ts = 1_000 + step * 10 + next(3) as i64;
            metrics.push(metric(key, value, ts, step));
            if next(20) == 0 {
                metrics.push(metric(key, value, ts, step));
            }
        }
        if step % 40 == 0 {
            for j in 0..100 {
                metrics.push(metric("loss", j as f64, 50_000 + step * 100 + j, step * 100 + j));
            }
        }
        for m in &metrics {
            logged
                .entry(m.key.clone())
                .or_default()
                .push((m.timestamp, m.step, m.value));
        }
        store
            .log_batch(
                "w",
                Batch {
                    metrics,
                    ..Batch::default()
                },
            )
            .await
            .unwrap();
        after_write(step).await;
    }
    logged
}

/// Every key of run `w` has exactly its logged history and the rule's latest point, and a
/// search sees the latest values at once.
async fn check_wide_run(
    store: &impl Tracking,
    keys: &[String],
    logged: &HashMap<String, Vec<(i64, i64, f64)>>,
) {
    for key in keys.iter().chain(std::iter::once(&"loss".to_owned())) {
        assert_eq!(
            whole_history(store, "w", key).await,
            expected_history(&logged[key]),
            "{key}"
        );
    }
    // The latest of each key, from the reference's rule (step, then timestamp, then value).
    let run = store.get_run("w").await.unwrap();
    assert_eq!(run.metrics.len(), keys.len() + 1);
    for m in &run.metrics {
        let top = logged[&m.key]
            .iter()
            .map(|&(t, s, v)| (s, t, if v.is_nan() { 0.0 } else { v }))
            .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)))
            .unwrap();
        assert_eq!((m.step, m.timestamp), (top.0, top.1), "{}", m.key);
    }
    // Searches see the latest values at once.
    let latest = run.metrics.iter().find(|m| m.key == "acc/class_7").unwrap().value;
    let filter = format!(
        "metrics.`acc/class_7` >= {}",
        if latest.is_nan() { 0.0 } else { latest - 1e-9 }
    );
    let found = store
        .search_runs(&RunQuery {
            experiment_ids: vec![0],
            filter: spotsweep_core::search::parse_run_filter(&filter).unwrap(),
            view: ViewType::ActiveOnly,
            limit: 10,
            ..RunQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(found.items.len(), usize::from(!latest.is_nan()), "{filter}");
}

async fn wide_batches_keep_every_keys_exact_history<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let store = db.open().await;
    new_run(&store, 0, "w", 1).await;
    let keys = wide_keys();
    let logged = log_wide_batches(&store, &keys, |_| async {}).await;
    check_wide_run(&store, &keys, &logged).await;
    // And after a restart.
    store.close().await;
    let store = db.open().await;
    for key in ["acc/class_0", "acc/class_299", "loss"] {
        assert_eq!(
            whole_history(&store, "w", key).await,
            expected_history(&logged[key]),
            "{key}"
        );
    }
}

#[tokio::test]
async fn wide_batches_are_one_row_each_and_every_key_keeps_its_exact_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    new_run(&store, 0, "w", 1).await;
    let db = dir.path().join("t.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .unwrap();
            n
        }
    };
    let keys = wide_keys();
    let logged = log_wide_batches(&store, &keys, |step| {
        async move {
            if step == 0 {
                // The 300 small keys went into one write row; the 100-point key got a block.
                assert_eq!(
                    (count("metric_writes").await, count("metric_blocks").await),
                    (1, 1)
                );
            }
        }
    })
    .await;
    // 150 writes: compacted twice (at 64 rows), the rest still rows.
    assert_eq!(count("metric_writes").await, 150 - 128);
    check_wide_run(&store, &keys, &logged).await;
    // And after a restart, from the rows as from the blocks.
    store.close().await;
    let store = open(&dir).await;
    for key in ["acc/class_0", "acc/class_299", "loss"] {
        assert_eq!(
            whole_history(&store, "w", key).await,
            expected_history(&logged[key]),
            "{key}"
        );
    }
    pool.close().await;
}

#[tokio::test]
async fn a_database_of_schema_13_keeps_its_blocks_and_takes_wide_writes_after_migrating() {
    let dir = tempfile::tempdir().unwrap();
    // A database as schema version 13 left it (blocks, no write rows, the old metric index).
    let pool = database_before(&dir, "0014").await;
    // Two blocks of `acc` as that schema's writer made them (timestamp, step, value bits).
    let points: Vec<(i64, i64, f64)> = (0..200).map(|i| (1000 + i, i, (i % 17) as f64)).collect();
    for chunk in points.chunks(150) {
        let mut data = Vec::new();
        for (t, s, v) in chunk {
            data.extend_from_slice(&t.to_le_bytes());
            data.extend_from_slice(&s.to_le_bytes());
            data.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        sqlx::query("INSERT INTO metric_blocks (run_id, key, points, data) VALUES (7, 'acc', ?, ?)")
            .bind(chunk.len() as i64)
            .bind(data)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO latest_metrics (run_id, key, timestamp, step, value, is_nan) VALUES (7, 'acc', 1199, 199, 12.0, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = open(&dir).await;
    let mut logged = points.clone();
    assert_eq!(whole_history(&store, "r", "acc").await, expected_history(&logged));
    // Wide writes land next to the old blocks, and a search by the metric finds the run.
    for step in 200..210 {
        let metrics: Vec<Metric> = (0..50)
            .map(|k| {
                metric(
                    if k == 0 { "acc" } else { "other" },
                    f64::from(k) + 0.5,
                    2000 + step,
                    step,
                )
            })
            .chain((1..50).map(|k| metric(&format!("k{k}"), 1.0, 2000 + step, step)))
            .collect();
        logged.push((2000 + step, step, 0.5));
        store
            .log_batch(
                "r",
                Batch {
                    metrics,
                    ..Batch::default()
                },
            )
            .await
            .unwrap();
    }
    assert_eq!(whole_history(&store, "r", "acc").await, expected_history(&logged));
    let found = store
        .search_runs(&RunQuery {
            experiment_ids: vec![0],
            filter: parse_run_filter("metrics.acc < 1").unwrap(),
            order_by: vec![parse_run_order_by("metrics.acc DESC").unwrap()],
            view: ViewType::ActiveOnly,
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(
        found.items[0]
            .metrics
            .iter()
            .find(|m| m.key == "acc")
            .unwrap()
            .step,
        209
    );
}

/// The runs of `exp` ordered by `key` DESC, as search answers it (first `limit`).
async fn ordered_by(store: &impl Tracking, exp: i64, key: &str, filter: &str, limit: u32) -> Vec<String> {
    let query = RunQuery {
        experiment_ids: vec![exp],
        filter: parse_run_filter(filter).unwrap(),
        order_by: vec![parse_run_order_by(&format!("metrics.`{key}` DESC")).unwrap()],
        view: ViewType::ActiveOnly,
        limit,
        offset: 0,
    };
    let page = store.search_runs(&query).await.unwrap();
    page.items.into_iter().map(|r| r.info.run_id).collect()
}

/// What that order must be, from the latest values a test wrote: numbers by value (highest
/// first), then NaN, then runs without the key; ties by start time (latest first), then run id.
fn expected_order(
    latest: &HashMap<(String, String), f64>,
    runs: &[(String, i64)],
    key: &str,
    limit: usize,
) -> Vec<String> {
    let mut order: Vec<(u8, f64, i64, String)> = runs
        .iter()
        .map(|(id, start)| match latest.get(&(id.clone(), key.to_owned())) {
            Some(v) if v.is_nan() => (1, 0.0, *start, id.clone()),
            Some(v) => (0, *v, *start, id.clone()),
            None => (2, 0.0, *start, id.clone()),
        })
        .collect();
    order.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.total_cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then(a.3.cmp(&b.3))
    });
    order.into_iter().take(limit).map(|o| o.3).collect()
}

async fn a_search_by_metric_sees_every_write_acknowledged_before_it_even_mid_stream_and_after_a_restart<
    B: Backend<Store: Tracking>,
>() {
    let db = B::start().await;
    let store = db.open().await;
    let exp = new_experiment(&store, "order").await;
    let other = new_experiment(&store, "other").await;
    let mut runs = Vec::new();
    for i in 0..40i64 {
        let id = format!("run{i:02}");
        new_run(&store, exp, &id, i / 4).await;
        runs.push((id, i / 4));
        // Runs of another experiment with the same keys and higher values never show up.
        new_run(&store, other, &format!("x{i:02}"), 0).await;
        log_metrics(&store, &format!("x{i:02}"), vec![metric("acc", 100.0, 0, 0)]).await;
    }
    let mut latest: HashMap<(String, String), f64> = HashMap::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    // Every run starts with every key; once writes pause, the daemon brings the order up to
    // date by itself.
    for (i, (id, _)) in runs.iter().enumerate() {
        let metrics: Vec<Metric> = (0..60)
            .map(|k| {
                let value = ((i * 7 + k * 3) % 11) as f64;
                latest.insert((id.clone(), format!("k{k}")), value);
                metric(&format!("k{k}"), value, -1, -1)
            })
            .collect();
        log_metrics(&store, id, metrics).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for step in 0..30i64 {
        // A wide write to a few runs (metric-only: the group-committed path), and now and
        // then a batch with a param (the transactional path); values with ties and NaN, a
        // late point that must not replace the latest, and keys that appear late.
        for j in 0..4 {
            // Each write a later step than every earlier one: the last value written is the latest.
            let at = step * 4 + j;
            let (id, _) = &runs[next(40) as usize];
            let mut metrics = Vec::new();
            for k in 0..(if step > 20 { 60 } else { 30 }) {
                let key = format!("k{k}");
                let value = match next(25) {
                    0 => f64::NAN,
                    v => (v % 8) as f64 / 2.0,
                };
                metrics.push(metric(&key, value, at, at));
                latest.insert((id.clone(), key), value);
            }
            metrics.push(metric("k1", 99.0, at - 1000, at - 1000));
            let params = if next(5) == 0 {
                vec![kv(&format!("p{step}"), "x")]
            } else {
                vec![]
            };
            store
                .log_batch(
                    id,
                    Batch {
                        metrics,
                        params,
                        tags: vec![],
                    },
                )
                .await
                .unwrap();
        }
        for key in ["k1", "k7", "k45"] {
            assert_eq!(
                ordered_by(&store, exp, key, "", 15).await,
                expected_order(&latest, &runs, key, 15),
                "step {step} {key}"
            );
        }
    }
    // Writes that are still pending when the daemon stops are there after a restart.
    let (id, _) = &runs[3];
    log_metrics(&store, id, vec![metric("k2", 1e9, 1000, 1000)]).await;
    latest.insert((id.clone(), "k2".into()), 1e9);
    store.close().await;
    let store = db.open().await;
    for key in ["k1", "k2", "k45"] {
        assert_eq!(
            ordered_by(&store, exp, key, "", 40).await,
            expected_order(&latest, &runs, key, 40),
            "{key}"
        );
    }
    assert_eq!(
        ordered_by(&store, exp, "k2", "metrics.k2 > 1000", 5).await,
        vec![id.clone()]
    );
}

#[tokio::test]
async fn a_database_of_schema_15_orders_its_runs_by_metric_after_migrating() {
    let dir = tempfile::tempdir().unwrap();
    let pool = database_before(&dir, "0016").await;
    for (id, uuid, value, is_nan) in [(8, "a", 0.5, false), (9, "b", 0.0, true), (10, "c", 2.5, false)] {
        sqlx::query(
            "INSERT INTO runs (id, run_uuid, experiment_id, name, status, start_time, artifact_uri) \
             VALUES (?, ?, 0, 'old', 'RUNNING', 1, 'x')",
        )
        .bind(id)
        .bind(uuid)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO latest_metrics (run_id, key, timestamp, step, value, is_nan) VALUES (?, 'acc', 1, 1, ?, ?)",
        )
        .bind(id)
        .bind(value)
        .bind(is_nan)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let store = open(&dir).await;
    assert_eq!(ordered_by(&store, 0, "acc", "", 10).await, ["c", "a", "b", "r"]);
    // A later point moves a migrated run; a new run joins the order.
    log_metrics(&store, "a", vec![metric("acc", 7.0, 2, 2)]).await;
    log_metrics(&store, "r", vec![metric("acc", 1.0, 2, 2)]).await;
    assert_eq!(ordered_by(&store, 0, "acc", "", 10).await, ["a", "c", "r", "b"]);
}

async fn latest_values_read_back_bit_for_bit<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let store = db.open().await;
    let exp = new_experiment(&store, "bits").await;
    new_run(&store, exp, "b", 1).await;
    let values = [
        0.1,
        1.0 / 3.0,
        // (-0.0 is stored by SQLite as the integer 0, and reads back as 0, as in the reference.)
        5e-324,
        2.2250738585072014e-308,
        123_456_789.123_456_79,
        -1.7976931348623157e308,
        f64::INFINITY,
        1e22,
        9_007_199_254_740_993.0,
    ];
    let metrics: Vec<Metric> = values
        .iter()
        .enumerate()
        .map(|(i, v)| metric(&format!("m{i}"), *v, 1, 1))
        .collect();
    log_metrics(&store, "b", metrics).await;
    let query = RunQuery {
        experiment_ids: vec![exp],
        filter: vec![],
        order_by: vec![],
        view: ViewType::ActiveOnly,
        limit: 10,
        offset: 0,
    };
    let searched = store.search_runs(&query).await.unwrap().items.remove(0);
    for run in [store.get_run("b").await.unwrap(), searched] {
        for (i, v) in values.iter().enumerate() {
            let got = run
                .metrics
                .iter()
                .find(|m| m.key == format!("m{i}"))
                .unwrap()
                .value;
            // ±∞ come back as ±f64::MAX, as from the reference.
            let want = if v.is_infinite() {
                f64::MAX.copysign(*v)
            } else {
                *v
            };
            assert_eq!(got.to_bits(), want.to_bits(), "m{i}: {got:e} != {want:e}");
        }
    }
}

/// Points as (timestamp, step, value).
type Points = Vec<(i64, i64, f64)>;

/// A write row as `metric_blocks` packs it: per key, its name's length (u32), the name, its
/// point count (u32), then (timestamp, step, value bits) per point; little-endian.
fn write_row(keys: &[(&str, Points)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, points) in keys {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(points.len() as u32).to_le_bytes());
        for (ts, step, v) in points {
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&step.to_le_bytes());
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    out
}

fn metric_value(run: &Run, key: &str) -> Option<f64> {
    run.metrics.iter().find(|m| m.key == key).map(|m| m.value)
}

/// Wide writes leave their latest values to be folded later (`latest_fold`). Writes a crash
/// left unfolded are read by every reader: a run's metrics while the writer cannot fold (another
/// connection holds the write lock), then a search by metric, which waits for the fold.
#[tokio::test]
async fn latest_values_left_unfolded_by_a_crash_are_read_and_then_folded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(&dir).await;
    let exp = new_experiment(&store, "fold").await;
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        new_run(&store, exp, id, i as i64).await;
        log_metrics(
            &store,
            id,
            vec![metric("acc", 0.5, 10, 10), metric("loss", 1.0, 10, 10)],
        )
        .await;
    }
    store.close().await;

    // What a crash leaves: write rows listed in `latest_unfolded`, their values not in
    // `latest_metrics`. Run a: a later acc (two writes, the second later); b: an earlier step,
    // which must not replace the stored latest; c: NaN; d: +∞ (stored as f64::MAX).
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let pad: Vec<(String, Points)> = (0..40)
        .map(|k| (format!("w{k}"), vec![(20, 20, k as f64)]))
        .collect();
    let writes: Vec<(&str, Points)> = vec![
        ("a", vec![(11, 11, 0.7), (12, 12, 0.6)]),
        ("a", vec![(13, 13, 0.9)]),
        ("b", vec![(5, 5, 0.99)]),
        ("c", vec![(14, 14, f64::NAN)]),
        ("d", vec![(15, 15, f64::MAX)]),
    ];
    for (run, acc) in &writes {
        let mut keys: Vec<(&str, Points)> = vec![("acc", acc.clone())];
        keys.extend(pad.iter().map(|(k, p)| (k.as_str(), p.clone())));
        let data = write_row(&keys);
        let (id,): (i64,) = sqlx::query_as("SELECT id FROM runs WHERE run_uuid = ?")
            .bind(run)
            .fetch_one(&raw)
            .await
            .unwrap();
        let points = keys.iter().map(|(_, p)| p.len() as i64).sum::<i64>();
        let done = sqlx::query("INSERT INTO metric_writes (run_id, points, data) VALUES (?, ?, ?)")
            .bind(id)
            .bind(points)
            .bind(data)
            .execute(&raw)
            .await
            .unwrap();
        sqlx::query("INSERT INTO latest_unfolded (write_id, run_id) VALUES (?, ?)")
            .bind(done.last_insert_rowid())
            .bind(id)
            .execute(&raw)
            .await
            .unwrap();
    }

    // The writer cannot fold while this connection holds the write lock.
    let mut lock = raw.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *lock).await.unwrap();
    let store = open(&dir).await;
    let expected = [("a", 0.9), ("b", 0.5), ("c", f64::NAN), ("d", f64::MAX)];
    for (id, acc) in expected {
        let run = store.get_run(id).await.unwrap();
        let got = metric_value(&run, "acc").unwrap();
        assert_eq!(got.to_bits(), acc.to_bits(), "{id}: {got} != {acc}");
        assert_eq!(metric_value(&run, "w7"), Some(7.0), "{id}");
        assert_eq!(metric_value(&run, "loss"), Some(1.0), "{id}");
    }
    let all = RunQuery {
        experiment_ids: vec![exp],
        filter: vec![],
        order_by: vec![],
        view: ViewType::ActiveOnly,
        limit: 10,
        offset: 0,
    };
    let page = store.search_runs(&all).await.unwrap();
    assert_eq!(page.items.len(), 4);
    for run in &page.items {
        assert_eq!(metric_value(run, "w39"), Some(39.0), "{}", run.info.run_id);
    }
    let (unfolded,): (i64,) = sqlx::query_as("SELECT count(*) FROM latest_unfolded")
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    assert_eq!(unfolded, 5, "read without folding");

    // A search that filters and sorts on metrics waits for the fold, then sees it.
    let search = {
        let store = store.clone();
        tokio::spawn(async move { ordered_by(&store, exp, "acc", "metrics.acc > 0.55", 10).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    sqlx::query("COMMIT").execute(&mut *lock).await.unwrap();
    drop(lock);
    assert_eq!(search.await.unwrap(), ["d", "a"]);
    let (unfolded,): (i64,) = sqlx::query_as("SELECT count(*) FROM latest_unfolded")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(unfolded, 0, "folded");
    let folded: Vec<(String, f64, i64, i64)> = sqlx::query_as(
        "SELECT r.run_uuid, l.value, l.is_nan, l.step FROM latest_metrics l JOIN runs r ON r.id = l.run_id \
         WHERE l.key = 'acc' ORDER BY r.run_uuid",
    )
    .fetch_all(&raw)
    .await
    .unwrap();
    assert_eq!(
        folded,
        [
            ("a".into(), 0.9, 0, 13),
            ("b".into(), 0.5, 0, 10),
            ("c".into(), 0.0, 1, 14),
            ("d".into(), f64::MAX, 0, 15)
        ]
    );
    for (id, acc) in expected {
        let got = metric_value(&store.get_run(id).await.unwrap(), "acc").unwrap();
        assert_eq!(got.to_bits(), acc.to_bits(), "{id} after the fold");
    }
}

/// Two replicas (two stores on one database) write the same run at once, each batch's keys in
/// its own order: every point is kept, and each key's latest point is the rule's over all of
/// them, whichever replica committed last.
async fn two_replicas_writing_one_run_at_once_keep_every_point_and_the_latest<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let (a, b) = (db.open().await, db.open().await);
    let exp = new_experiment(&a, "replicas").await;
    new_run(&a, exp, "r", 1).await;
    let keys = ["k0", "k1", "k2", "k3", "k4"];
    let mut writes = Vec::new();
    let mut logged: HashMap<&str, Vec<(i64, i64, f64)>> = HashMap::new();
    for w in 0..40i64 {
        let mut metrics = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            // Steps and timestamps that tie across writes, so that values decide too.
            let point = (
                (w * 7 + i as i64) % 5,
                (w * 3) % 11,
                ((w * 13 + i as i64) % 17) as f64,
            );
            logged.entry(key).or_default().push(point);
            metrics.push(metric(key, point.2, point.0, point.1));
        }
        if w % 2 == 1 {
            metrics.reverse();
        }
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        writes.push(tokio::spawn(async move {
            store
                .log_batch(
                    "r",
                    Batch {
                        metrics,
                        ..Batch::default()
                    },
                )
                .await
                .unwrap()
        }));
    }
    for write in writes {
        write.await.unwrap();
    }
    for store in [&a, &b] {
        let run = store.get_run("r").await.unwrap();
        for key in keys {
            let points = &logged[key];
            let top = points
                .iter()
                .max_by(|x, y| (x.1, x.0).cmp(&(y.1, y.0)).then(x.2.partial_cmp(&y.2).unwrap()))
                .unwrap();
            let got = run.metrics.iter().find(|m| m.key == key).unwrap();
            assert_eq!(
                (got.step, got.timestamp, got.value),
                (top.1, top.0, top.2),
                "{key}"
            );
            assert_eq!(
                whole_history(store, "r", key).await,
                expected_history(points),
                "{key}"
            );
        }
    }
}

/// Two replicas log the same params with different values at once: for each key one of them
/// wins and the other is refused as a change of an immutable param, never both kept silently.
async fn two_replicas_logging_one_param_differently_keep_one_value_and_refuse_the_other<
    B: Backend<Store: Tracking>,
>() {
    let db = B::start().await;
    let (a, b) = (db.open().await, db.open().await);
    let exp = new_experiment(&a, "params").await;
    new_run(&a, exp, "r", 1).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        for (store, value) in [(a.clone(), "from-a"), (b.clone(), "from-b")] {
            tasks.push(tokio::spawn(async move {
                let result = store
                    .log_batch(
                        "r",
                        Batch {
                            params: vec![kv(&format!("p{i}"), value)],
                            ..Batch::default()
                        },
                    )
                    .await;
                (i, value, result)
            }));
        }
    }
    let mut winners: HashMap<String, &str> = HashMap::new();
    for task in tasks {
        let (i, value, result) = task.await.unwrap();
        match result {
            Ok(()) => assert!(
                winners.insert(format!("p{i}"), value).is_none(),
                "p{i} kept twice"
            ),
            Err(StoreError::Invalid(message)) => {
                assert!(
                    message.contains("Changing param values is not allowed"),
                    "{message}"
                )
            }
            Err(e) => panic!("p{i}: {e}"),
        }
    }
    let run = b.get_run("r").await.unwrap();
    assert_eq!(run.params.len(), 30);
    for p in &run.params {
        assert_eq!(winners.get(&p.key), Some(&p.value.as_str()), "{}", p.key);
    }
}

/// What one replica changes, the other sees at once: a name taken, a run deleted or restored.
async fn a_replica_sees_the_other_replicas_names_and_deletions<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let (a, b) = (db.open().await, db.open().await);
    let exp = new_experiment(&a, "shared").await;
    new_run(&a, exp, "r", 1).await;
    log_metrics(&b, "r", vec![metric("m", 1.0, 1, 1)]).await;
    let taken = b
        .create_experiment(NewExperiment {
            name: "shared".into(),
            artifact_location: None,
            artifact_root: "mlflow-artifacts:".into(),
            tags: vec![],
            now: 1,
        })
        .await;
    assert!(matches!(taken, Err(StoreError::AlreadyExists(_))), "{taken:?}");
    a.set_run_lifecycle("r", LifecycleStage::Deleted).await.unwrap();
    let refused = b
        .log_batch(
            "r",
            Batch {
                metrics: vec![metric("m", 2.0, 2, 2)],
                ..Batch::default()
            },
        )
        .await;
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    a.set_run_lifecycle("r", LifecycleStage::Active).await.unwrap();
    log_metrics(&b, "r", vec![metric("m", 3.0, 3, 3)]).await;
    assert_eq!(metric_value(&a.get_run("r").await.unwrap(), "m"), Some(3.0));
}

/// `LIKE` has no escape character (a backslash matches itself, as on SQLite), and text sort
/// keys sort by bytes: upper case before lower case, punctuation by its code.
async fn like_has_no_escape_character_and_text_sorts_by_bytes<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let store = db.open().await;
    let exp = new_experiment(&store, "text").await;
    for (i, value) in ["a\\b", "a%b", "B", "b", "a_"].iter().enumerate() {
        let id = format!("t{i}");
        new_run(&store, exp, &id, 1).await;
        let batch = Batch {
            tags: vec![kv("t", value)],
            ..Batch::default()
        };
        store.log_batch(&id, batch).await.unwrap();
    }
    let search = |filter: &str, order: &str| RunQuery {
        experiment_ids: vec![exp],
        filter: parse_run_filter(filter).unwrap(),
        order_by: vec![parse_run_order_by(order).unwrap()],
        view: ViewType::ActiveOnly,
        limit: 100,
        offset: 0,
    };
    let ids = |page: Page<Run>| -> Vec<String> { page.items.into_iter().map(|r| r.info.run_id).collect() };
    let got = ids(store
        .search_runs(&search("tags.t LIKE 'a\\%'", "tags.t ASC"))
        .await
        .unwrap());
    assert_eq!(got, ["t0"]);
    let got = ids(store
        .search_runs(&search("tags.t LIKE 'a_'", "tags.t ASC"))
        .await
        .unwrap());
    assert_eq!(got, ["t4"]);
    let got = ids(store.search_runs(&search("", "tags.t ASC")).await.unwrap());
    assert_eq!(got, ["t2", "t1", "t0", "t4", "t3"]);
    let got = ids(store.search_runs(&search("", "tags.t DESC")).await.unwrap());
    assert_eq!(got, ["t3", "t4", "t0", "t1", "t2"]);
}

/// Experiments: artifact locations, renames (a taken name, a deleted experiment), tags, and
/// searches by filter and view, ordered and paged.
async fn experiments_rename_carry_tags_and_search_by_filter_order_and_page<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let store = db.open().await;
    let mut ids = Vec::new();
    for i in 0..5i64 {
        let id = store
            .create_experiment(NewExperiment {
                name: format!("exp-{i}"),
                artifact_location: (i == 0).then(|| "gs://bucket/x".to_owned()),
                artifact_root: "root/".into(),
                tags: vec![
                    kv("team", if i % 2 == 0 { "a" } else { "b" }),
                    kv("team", "a-or-b"),
                    kv("team", if i % 2 == 0 { "a" } else { "b" }),
                ],
                now: 100 + i,
            })
            .await
            .unwrap();
        ids.push(id);
    }
    assert_eq!(
        store.get_experiment(ids[0]).await.unwrap().artifact_location,
        "gs://bucket/x"
    );
    assert_eq!(
        store.get_experiment(ids[1]).await.unwrap().artifact_location,
        format!("root/{}", ids[1])
    );
    let taken = store.rename_experiment(ids[1], "exp-2").await;
    assert!(matches!(taken, Err(StoreError::AlreadyExists(_))), "{taken:?}");
    store.rename_experiment(ids[1], "renamed").await.unwrap();
    assert_eq!(
        store
            .get_experiment_by_name("renamed")
            .await
            .unwrap()
            .experiment_id,
        ids[1]
    );
    assert!(matches!(
        store.get_experiment_by_name("exp-1").await,
        Err(StoreError::NotFound(_))
    ));

    store.set_experiment_tag(ids[0], "k", "v").await.unwrap();
    store.set_experiment_tag(ids[0], "k", "w").await.unwrap();
    let tags = store.get_experiment(ids[0]).await.unwrap().tags;
    assert_eq!(tags, vec![kv("k", "w"), kv("team", "a")]);
    store.delete_experiment_tag(ids[0], "k").await.unwrap();
    assert!(matches!(
        store.delete_experiment_tag(ids[0], "k").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_experiment_tag(12345, "k").await,
        Err(StoreError::NotFound(_))
    ));

    store
        .set_experiment_lifecycle(ids[4], LifecycleStage::Deleted)
        .await
        .unwrap();
    assert!(matches!(
        store.rename_experiment(ids[4], "gone").await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.set_experiment_tag(ids[4], "k", "v").await,
        Err(StoreError::Invalid(_))
    ));

    let search = |filter: &str, order: &[&str], view: ViewType, limit: u32, offset: u64| ExperimentQuery {
        filter: spotsweep_core::search::parse_experiment_filter(filter).unwrap(),
        order_by: order
            .iter()
            .map(|o| spotsweep_core::search::parse_experiment_order_by(o).unwrap())
            .collect(),
        view,
        limit,
        offset,
    };
    let names =
        |page: &Page<Experiment>| -> Vec<String> { page.items.iter().map(|e| e.name.clone()).collect() };
    // Default order: newest first.
    let page = store
        .search_experiments(&search("tags.team = 'a'", &[], ViewType::ActiveOnly, 10, 0))
        .await
        .unwrap();
    assert_eq!(names(&page), ["exp-2", "exp-0"]);
    assert_eq!(page.items[1].tags, vec![kv("team", "a")]);
    let page = store
        .search_experiments(&search("", &[], ViewType::DeletedOnly, 10, 0))
        .await
        .unwrap();
    assert_eq!(names(&page), ["exp-4"]);
    let first = store
        .search_experiments(&search(
            "name LIKE 'exp-%'",
            &["creation_time ASC"],
            ViewType::All,
            2,
            0,
        ))
        .await
        .unwrap();
    assert_eq!(
        (names(&first), first.next_offset),
        (vec!["exp-0".to_owned(), "exp-2".to_owned()], Some(2))
    );
    let second = store
        .search_experiments(&search(
            "name LIKE 'exp-%'",
            &["creation_time ASC"],
            ViewType::All,
            2,
            2,
        ))
        .await
        .unwrap();
    assert_eq!(
        (names(&second), second.next_offset),
        (vec!["exp-3".to_owned(), "exp-4".to_owned()], None)
    );
    let page = store
        .search_experiments(&search("", &["name DESC"], ViewType::ActiveOnly, 10, 0))
        .await
        .unwrap();
    assert_eq!(names(&page), ["renamed", "exp-3", "exp-2", "exp-0", "Default"]);
}

/// Runs: updates (the name and its tag stay one fact), tag deletion, dataset inputs and their
/// summaries, paged histories and down-sampled charts.
async fn runs_update_inputs_summaries_histories_and_charts<B: Backend<Store: Tracking>>() {
    let db = B::start().await;
    let store = db.open().await;
    let exp = new_experiment(&store, "runs").await;
    new_run(&store, exp, "r", 5).await;
    new_run(&store, exp, "s", 6).await;
    let info = store
        .update_run(
            "r",
            RunUpdate {
                status: Some(RunStatus::Finished),
                end_time: Some(9),
                run_name: Some("renamed".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (info.status, info.end_time, info.run_name.as_str()),
        (RunStatus::Finished, Some(9), "renamed")
    );
    let run = store.get_run("r").await.unwrap();
    assert!(
        run.tags.contains(&kv("mlflow.runName", "renamed")),
        "{:?}",
        run.tags
    );
    store
        .log_batch(
            "r",
            Batch {
                tags: vec![kv("mlflow.runName", "again"), kv("x", "1")],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    let run = store.get_run("r").await.unwrap();
    assert_eq!(run.info.run_name, "again");
    assert_eq!(run.tags, vec![kv("mlflow.runName", "again"), kv("x", "1")]);
    store.delete_run_tag("r", "x").await.unwrap();
    assert!(matches!(
        store.delete_run_tag("r", "x").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.update_run("nope", RunUpdate::default()).await,
        Err(StoreError::NotFound(_))
    ));

    let input = |name: &str, digest: &str, context: Option<&str>| DatasetInput {
        name: name.into(),
        digest: digest.into(),
        source_type: "local".into(),
        source: "{\"uri\": \"/data\"}".into(),
        schema: Some("{}".into()),
        profile: None,
        tags: context
            .map(|c| vec![kv("mlflow.data.context", c)])
            .unwrap_or_default(),
    };
    store
        .log_inputs(
            "r",
            vec![input("d2", "b", None), input("d1", "a", Some("training"))],
        )
        .await
        .unwrap();
    store
        .log_inputs("s", vec![input("d1", "a", Some("training"))])
        .await
        .unwrap();
    let inputs = store.get_run("r").await.unwrap().inputs;
    assert_eq!(
        inputs,
        vec![input("d1", "a", Some("training")), input("d2", "b", None)]
    );
    let summary = |name: &str, digest: &str, context: Option<&str>| DatasetSummary {
        experiment_id: exp,
        name: name.into(),
        digest: digest.into(),
        context: context.map(str::to_owned),
    };
    let both = vec![summary("d1", "a", Some("training")), summary("d2", "b", None)];
    assert_eq!(store.dataset_summaries(&[exp]).await.unwrap(), both);
    store
        .set_run_lifecycle("r", LifecycleStage::Deleted)
        .await
        .unwrap();
    assert_eq!(
        store.dataset_summaries(&[exp]).await.unwrap(),
        vec![summary("d1", "a", Some("training"))]
    );
    assert!(matches!(
        store.log_inputs("r", vec![input("d3", "c", None)]).await,
        Err(StoreError::Invalid(_))
    ));
    store
        .set_run_lifecycle("r", LifecycleStage::Active)
        .await
        .unwrap();

    // 20 points and one repeated (a retried request): 20 in history, 7 a page.
    let mut points: Vec<Metric> = (0..20).map(|i| metric("c", i as f64, 100 + i, i)).collect();
    points.push(metric("c", 5.0, 105, 5));
    log_metrics(&store, "r", points).await;
    let mut pages = Vec::new();
    let mut offset = 0;
    loop {
        let page = store.metric_history("r", "c", offset, 7).await.unwrap();
        pages.push((page.items.len(), page.next_offset));
        match page.next_offset {
            Some(next) => offset = next,
            None => break,
        }
    }
    assert_eq!(pages, [(7, Some(7)), (7, Some(14)), (6, None)]);
    assert!(
        store
            .metric_history("nope", "c", 0, 7)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Steps 2 to 15 (14 points) in 5 samples: the first of each bucket, and the last.
    let chart = store
        .metric_history_bulk_interval(
            &["r".to_owned(), "s".to_owned(), "nope".to_owned()],
            "c",
            Some(2),
            Some(15),
            5,
        )
        .await
        .unwrap();
    let steps: Vec<(&str, i64)> = chart.iter().map(|(run, m)| (run.as_str(), m.step)).collect();
    assert_eq!(steps, [("r", 2), ("r", 5), ("r", 8), ("r", 11), ("r", 15)]);
}

conformance!(sqlite: crate::common::Sqlite;
    experiments_and_runs_round_trip,
    latest_metric_is_max_step_then_timestamp_then_value,
    params_are_immutable_and_a_bad_batch_writes_nothing,
    search_filters_orders_and_pages,
    a_search_by_metric_sees_every_write_acknowledged_before_it_even_mid_stream_and_after_a_restart,
    latest_values_read_back_bit_for_bit,
    history_is_the_same_whether_logged_one_by_one_or_in_batches,
    like_has_no_escape_character_and_text_sorts_by_bytes,
    wide_batches_keep_every_keys_exact_history,
    experiments_rename_carry_tags_and_search_by_filter_order_and_page,
    runs_update_inputs_summaries_histories_and_charts,
);

// The replica tests (two stores on one database) are PostgreSQL's only: SQLite has one daemon.
conformance!(postgres: crate::common::Postgres;
    experiments_and_runs_round_trip,
    latest_metric_is_max_step_then_timestamp_then_value,
    params_are_immutable_and_a_bad_batch_writes_nothing,
    search_filters_orders_and_pages,
    a_search_by_metric_sees_every_write_acknowledged_before_it_even_mid_stream_and_after_a_restart,
    latest_values_read_back_bit_for_bit,
    history_is_the_same_whether_logged_one_by_one_or_in_batches,
    like_has_no_escape_character_and_text_sorts_by_bytes,
    wide_batches_keep_every_keys_exact_history,
    experiments_rename_carry_tags_and_search_by_filter_order_and_page,
    runs_update_inputs_summaries_histories_and_charts,
    two_replicas_writing_one_run_at_once_keep_every_point_and_the_latest,
    two_replicas_logging_one_param_differently_keep_one_value_and_refuse_the_other,
    a_replica_sees_the_other_replicas_names_and_deletions,
);
