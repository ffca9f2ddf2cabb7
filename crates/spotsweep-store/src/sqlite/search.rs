//! SQLite's own search plan: a search of one experiment ordered by a metric walks the runs in
//! that metric's order (`metric_order`). The general translation is shared with PostgreSQL
//! (`crate::search_sql`); its pieces are re-exported here for the other SQLite searches.

use sqlx::{QueryBuilder, Sqlite};

use spotsweep_core::search::{RunOrderBy, RunOrderKey, RunPredicate};

use crate::RunQuery;
pub(crate) use crate::search_sql::{
    experiment_search_sql, num_op, push_kv_condition, push_str_cmp, run_search_sql,
};
use crate::search_sql::{
    is_kv_equality, joinable, joins, push_join_condition, push_order, push_run_conditions, push_sort_joins,
};

/// The first sort key's metric and direction, when it is a metric: a search can then walk the
/// runs in its order (see [`run_search_by_order_sql`]).
pub(super) fn order_metric(query: &RunQuery) -> Option<(&String, bool)> {
    match query.order_by.first() {
        Some(RunOrderBy {
            key: RunOrderKey::Metric(key),
            ascending,
        }) => Some((key, *ascending)),
        _ => None,
    }
}

/// The same search, for a query of one experiment whose first sort key is a metric
/// ([`order_metric`]), walking the runs that have that metric (a number, not NaN) in its order
/// (`metric_order`, which the caller brings up to date first), down to `bound` (up to, when
/// ascending) when given, and stopping at the first `need` rows that match. Every run in the
/// bound is considered, so when it finds `need` rows they are exactly the search's first
/// `need` (any run outside sorts after them). This is what keeps a search ordered by a metric
/// as fast on 100,000 runs as on 10,000: it reads a few thousand runs in order instead of every
/// run that matches the filter. The conditions are checked per candidate before its run (the
/// loops run in the order written: CROSS JOIN).
pub(super) fn run_search_by_order_sql(
    query: &RunQuery,
    columns: &str,
    bound: Option<f64>,
    need: u32,
) -> QueryBuilder<Sqlite> {
    let (Some((key, ascending)), [experiment]) = (order_metric(query), query.experiment_ids.as_slice())
    else {
        return run_search_sql(query, columns);
    };
    let (joined_sorts, joined_filters) = joins(query);
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
    qb.push(columns).push(" FROM metric_order o0");
    // Each candidate is checked against the conditions in turn, so the usually most selective
    // come first: equalities on params and tags (a tenth of the runs in the benchmark, where a
    // metric comparison keeps half), then the others as written.
    let mut checks: Vec<(usize, &RunPredicate)> = query.filter.iter().enumerate().collect();
    checks.sort_by_key(|(_, p)| !is_kv_equality(p));
    for (i, predicate) in checks {
        if let (true, Some(table)) = (joined_filters[i], joinable(predicate)) {
            qb.push(format!(
                " CROSS JOIN {table} f{i} ON f{i}.run_id = o0.run_id AND "
            ));
            push_join_condition(&mut qb, &format!("f{i}"), predicate);
        }
    }
    qb.push(" CROSS JOIN runs r ON r.id = o0.run_id");
    push_sort_joins(&mut qb, query, &joined_sorts, 1);
    qb.push(" WHERE o0.experiment_id = ")
        .push_bind(experiment)
        .push(" AND o0.key = ")
        .push_bind(key.clone())
        .push(" AND o0.is_nan = 0");
    if let Some(bound) = bound {
        qb.push(if ascending {
            " AND o0.value <= "
        } else {
            " AND o0.value >= "
        })
        .push_bind(bound);
    }
    qb.push(" AND ");
    push_run_conditions(&mut qb, query, &joined_filters);
    qb.push(" ORDER BY ");
    push_order(&mut qb, query, &joined_sorts, true);
    qb.push("LIMIT ").push_bind(i64::from(need));
    qb
}

#[cfg(test)]
mod tests {
    use spotsweep_core::search::{parse_run_filter, parse_run_order_by};

    use super::*;
    use crate::ViewType;
    use crate::search_sql::run_search_sql_after;
    use crate::sqlite::tracking::RUN_COLUMNS;
    use crate::{Batch, KeyValue, Metric, NewExperiment, NewRun, SqliteOptions, SqliteStore, TrackingStore};

    /// The plan SQLite picks for a search, one line per step.
    async fn plan(store: &SqliteStore, filter: &str, order: &[&str]) -> Vec<String> {
        let query = RunQuery {
            experiment_ids: vec![1],
            filter: parse_run_filter(filter).unwrap(),
            order_by: order.iter().map(|o| parse_run_order_by(o).unwrap()).collect(),
            view: ViewType::ActiveOnly,
            limit: 100,
            offset: 0,
        };
        let mut qb = run_search_sql_after("EXPLAIN QUERY PLAN SELECT ", &query, RUN_COLUMNS);
        let rows: Vec<(i64, i64, i64, String)> = qb.build_query_as().fetch_all(&store.reader).await.unwrap();
        rows.into_iter().map(|r| r.3).collect()
    }

    #[tokio::test]
    async fn a_search_with_a_param_equality_starts_from_it_whatever_the_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("p.db")))
            .await
            .unwrap();
        let exp = store
            .create_experiment(NewExperiment {
                name: "plans".into(),
                artifact_location: None,
                artifact_root: "/tmp".into(),
                tags: vec![],
                now: 0,
            })
            .await
            .unwrap();
        assert_eq!(exp, 1);
        // 2,000 runs as the benchmark's: p0 = v0..v9, metrics uniform in [0, 1).
        for i in 0..2000u32 {
            let run_id = format!("{i:032x}");
            store
                .create_run(NewRun {
                    experiment_id: exp,
                    run_id: run_id.clone(),
                    run_name: format!("r{i}"),
                    user_id: String::new(),
                    start_time: i64::from(i),
                    tags: vec![],
                })
                .await
                .unwrap();
            let f = |k: u32| f64::from((i * 7919 + k * 104_729) % 1000) / 1000.0;
            store
                .log_batch(
                    &run_id,
                    Batch {
                        params: (0..3)
                            .map(|k| KeyValue {
                                key: format!("p{k}"),
                                value: format!("v{}", (i + k) % 10),
                            })
                            .collect(),
                        metrics: (0..3)
                            .map(|k| Metric {
                                key: format!("m{k}"),
                                value: f(k),
                                timestamp: 0,
                                step: 0,
                            })
                            .collect(),
                        tags: vec![],
                    },
                )
                .await
                .unwrap();
        }
        store.optimize().await.unwrap();
        let mixed = plan(
            &store,
            "metrics.m0 > 0.5 AND params.p0 = 'v3'",
            &["metrics.m1 DESC"],
        )
        .await;
        assert!(mixed[0].contains("params_by_key"), "{mixed:?}");
        let by_tag = plan(&store, "metrics.m0 < 0.1 AND tags.t = 'x'", &[]).await;
        assert!(by_tag[0].contains("tags_by_key"), "{by_tag:?}");
        // Metrics alone: the experiment's runs in the default order, each checked on its key.
        let metrics = plan(&store, "metrics.m0 > 0.99", &[]).await;
        assert!(metrics[0].contains("runs_by_experiment"), "{metrics:?}");
        assert!(
            metrics
                .iter()
                .any(|s| s.contains("f0 USING PRIMARY KEY (run_id=? AND key=?)")),
            "{metrics:?}"
        );
        no_scans(&metrics);

        // The walk of a metric's order starts from that metric's range of the experiment, and
        // checks each candidate by key.
        let query = RunQuery {
            experiment_ids: vec![exp],
            filter: parse_run_filter("metrics.m0 > 0.5 AND params.p0 = 'v3'").unwrap(),
            order_by: vec![parse_run_order_by("metrics.m1 DESC").unwrap()],
            view: ViewType::ActiveOnly,
            limit: 100,
            offset: 0,
        };
        let walk = explain(
            &store,
            run_search_by_order_sql(&query, RUN_COLUMNS, Some(0.5), 101)
                .sql()
                .as_str(),
        )
        .await;
        assert!(
            walk[0].contains("metric_order_walk (experiment_id=? AND key=? AND is_nan=? AND value>?)"),
            "{walk:?}"
        );
        no_scans(&walk);

        // Bringing the order up to date reads the pending runs' rows only.
        for sql in [
            crate::sqlite::metric_order::MOVE_RUNS,
            crate::sqlite::metric_order::ADD_RUNS,
            crate::sqlite::metric_order::LINK_RUNS,
            crate::sqlite::metric_order::FORGET_RUNS,
            crate::sqlite::metric_order::MOVE_KEY,
            crate::sqlite::metric_order::ADD_KEY,
            crate::sqlite::metric_order::LINK_KEY,
        ] {
            let steps = explain(&store, sql).await;
            assert!(
                steps
                    .iter()
                    .filter(|s| s.starts_with("SCAN"))
                    .all(|s| s.starts_with("SCAN p")
                        || s.contains("metric_order_pending")
                        || s.contains("json_each")),
                "{sql}: {steps:?}"
            );
        }

        // Folding and merging listed writes reads the listed rows of the runs at hand only.
        for sql in [
            crate::sqlite::latest_fold::LISTED_OF_RUNS,
            crate::sqlite::latest_fold::LISTED_OF_SWEEP,
            crate::sqlite::latest_fold::UNLIST_RUNS,
            crate::sqlite::latest_fold::WRITES,
            crate::sqlite::latest_fold::UNLIST_WRITES,
        ] {
            let steps = explain(&store, sql).await;
            assert!(
                steps
                    .iter()
                    .all(|s| !s.starts_with("SCAN") || s.starts_with("SCAN p") || s.contains("json_each")),
                "{sql}: {steps:?}"
            );
        }
        // A sweep's best trial (asked at every completion) is read from `trials_best`, its first
        // entry in order, not found among the sweep's trials.
        for sql in [
            crate::sqlite::sweeps::BEST_TRIAL_MIN,
            crate::sqlite::sweeps::BEST_TRIAL_MAX,
        ] {
            let steps = explain(&store, sql).await;
            assert!(
                steps.iter().any(|s| s.contains("INDEX trials_best"))
                    && !steps.iter().any(|s| s.starts_with("SCAN t")),
                "{sql}: {steps:?}"
            );
        }
        let listed = explain(&store, crate::sqlite::latest_fold::LISTED).await;
        assert!(
            listed
                .iter()
                .all(|s| !s.starts_with("SCAN") || s.contains("COVERING INDEX latest_unfolded_by_run"))
                && !listed.iter().any(|s| s.contains("TEMP B-TREE")),
            "{listed:?}"
        );
    }

    /// The plan of any statement with its parameters unbound (NULL).
    async fn explain(store: &SqliteStore, sql: &str) -> Vec<String> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(explain))
            .fetch_all(&store.writer)
            .await
            .unwrap();
        rows.into_iter().map(|r| r.3).collect()
    }

    /// No step of a plan reads a whole table or index.
    fn no_scans(plan: &[String]) {
        assert!(
            plan.iter()
                .all(|s| !s.starts_with("SCAN") || s.contains("json_each")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn walking_a_metrics_order_answers_exactly_as_the_general_plan() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("o.db")))
            .await
            .unwrap();
        // Two experiments (the walk meets the other's runs too); values with many ties, NaN,
        // infinities and missing keys; start times that tie as well.
        let mut x: u64 = 0x853c_49e6_748f_ea9b;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for e in 0..2 {
            let exp = store
                .create_experiment(NewExperiment {
                    name: format!("e{e}"),
                    artifact_location: None,
                    artifact_root: "/tmp".into(),
                    tags: vec![],
                    now: 0,
                })
                .await
                .unwrap();
            for i in 0..1500u32 {
                let run_id = format!("{e}{i:031x}");
                store
                    .create_run(NewRun {
                        experiment_id: exp,
                        run_id: run_id.clone(),
                        run_name: format!("r{i}"),
                        user_id: String::new(),
                        start_time: i64::from(i / 3),
                        tags: vec![],
                    })
                    .await
                    .unwrap();
                let mut metrics = Vec::new();
                for k in 0..3 {
                    let value = match next(40) {
                        0 => continue,
                        1 => f64::NAN,
                        2 => f64::INFINITY,
                        v => (v % 12) as f64 / 4.0,
                    };
                    metrics.push(Metric {
                        key: format!("m{k}"),
                        value,
                        timestamp: 0,
                        step: 0,
                    });
                }
                let params = vec![KeyValue {
                    key: "p".into(),
                    value: format!("v{}", next(if e == 0 { 4 } else { 40 })),
                }];
                store
                    .log_batch(
                        &run_id,
                        Batch {
                            metrics,
                            params,
                            tags: vec![],
                        },
                    )
                    .await
                    .unwrap();
            }
        }
        let mut walked = 0;
        let filters = [
            "",
            "params.p = 'v1'",
            "metrics.m0 > 1",
            "metrics.m2 != 0.5 AND params.p != 'v0'",
            "params.p = 'v39'",
        ];
        for exp in [1i64, 2] {
            for filter in filters {
                for order in [
                    &["metrics.m1 DESC"][..],
                    &["metrics.m1 ASC", "params.p DESC"],
                    &["metrics.m0 ASC"],
                ] {
                    for (limit, offset) in [(1u32, 0u64), (7, 0), (7, 14), (100, 0), (100, 100), (1000, 0)] {
                        let query = RunQuery {
                            experiment_ids: vec![exp],
                            filter: parse_run_filter(filter).unwrap(),
                            order_by: order.iter().map(|o| parse_run_order_by(o).unwrap()).collect(),
                            view: ViewType::ActiveOnly,
                            limit,
                            offset,
                        };
                        let general: Vec<String> = run_search_sql(&query, RUN_COLUMNS)
                            .build_query_as::<crate::sqlite::tracking::RunRow>()
                            .fetch_all(&store.reader)
                            .await
                            .unwrap()
                            .into_iter()
                            .map(|r| r.run_uuid().to_owned())
                            .collect();
                        // Few candidates (ties and matches beyond them), and plenty.
                        for candidates in [40, 400, 10_000] {
                            if let Some(rows) = store.search_by_order_among(&query, candidates).await.unwrap()
                            {
                                walked += 1;
                                let mine: Vec<String> =
                                    rows.iter().map(|r| r.run_uuid().to_owned()).collect();
                                assert_eq!(
                                    mine, general,
                                    "{exp} {filter} {order:?} {limit} {offset} {candidates}"
                                );
                            }
                        }
                        let page = store.search_runs(&query).await.unwrap();
                        let ids: Vec<&str> = page.items.iter().map(|r| r.info.run_id.as_str()).collect();
                        assert_eq!(
                            ids,
                            general
                                .iter()
                                .take(limit as usize)
                                .map(String::as_str)
                                .collect::<Vec<_>>()
                        );
                    }
                }
            }
        }
        // The walk answered most of these, and fell back for the rest.
        assert!((100..540).contains(&walked), "{walked}");
    }
}
