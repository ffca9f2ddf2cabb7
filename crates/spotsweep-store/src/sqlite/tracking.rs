//! The tracking tables: experiments, runs, params, tags, metrics and dataset inputs.

use std::collections::HashMap;

use async_trait::async_trait;
use spotsweep_core::search::{RunOrderKey, RunPredicate};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::latest_fold;
use super::metric_blocks::{self, Point};
use super::search::{experiment_search_sql, order_metric, run_search_by_order_sql, run_search_sql};
use super::{RunKeys, SqliteStore, commit, map_err, now_ms};
use crate::{
    Batch, DatasetInput, DatasetSummary, Experiment, ExperimentQuery, KeyValue, LifecycleStage, Metric,
    NewExperiment, NewRun, Page, Result, Run, RunInfo, RunQuery, RunStatus, RunUpdate, StoreError,
    TrackingStore,
};

/// Runs a search ordered by a metric reads in that order before it falls back to the general
/// plan (a few milliseconds of index walk when the filter matches rarely).
const ORDER_CANDIDATES: u32 = 10_000;
/// The deepest page (offset + limit) answered by walking a metric's order.
const MAX_ORDER_WALK_ROWS: u64 = 2_000;

pub(super) use crate::points::sample_rows;
pub(super) use crate::rows::{EXPERIMENT_COLUMNS, ExperimentRow, RUN_COLUMNS, RunRow, page};

/// NaN cannot live in a REAL column: `latest_metrics` stores it as 0 with `is_nan = 1`.
fn loaded_value(value: f64, is_nan: bool) -> f64 {
    if is_nan { f64::NAN } else { value }
}

/// Row counts for multi-row INSERT statements. A batch is split greedily into chunks of these
/// sizes, so at most a handful of distinct statements exist (each prepared once and cached) and
/// a 1000-point batch takes 4 statements instead of 1000.
const CHUNKS: [usize; 6] = [250, 50, 10, 5, 2, 1];

pub(super) fn split_chunks(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for size in CHUNKS {
        while n >= size {
            out.push(size);
            n -= size;
        }
    }
    out
}

pub(super) async fn run_key_for_write(
    keys: &RunKeys,
    conn: &mut SqliteConnection,
    run_id: &str,
) -> Result<i64> {
    if let Some(key) = keys.get(run_id) {
        return Ok(key);
    }
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT id, lifecycle_stage FROM runs WHERE run_uuid = ?")
            .bind(run_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
    match row {
        None => Err(StoreError::NotFound(format!("Run with id={run_id} not found"))),
        Some((_, stage)) if stage != "active" => Err(StoreError::Invalid(format!(
            "The run {run_id} must be in the 'active' state. Current state is {stage}."
        ))),
        Some((id, _)) => {
            keys.insert(run_id, id);
            Ok(id)
        }
    }
}

pub(super) async fn experiment_row(conn: &mut SqliteConnection, experiment_id: i64) -> Result<ExperimentRow> {
    let sql = format!("SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE experiment_id = ?");
    sqlx::query_as::<_, ExperimentRow>(sqlx::AssertSqlSafe(sql))
        .bind(experiment_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::NotFound(format!("No Experiment with id={experiment_id} exists")))
}

async fn touch_experiment(conn: &mut SqliteConnection, experiment_id: i64) -> Result<()> {
    sqlx::query("UPDATE experiments SET last_update_time = ? WHERE experiment_id = ?")
        .bind(now_ms())
        .bind(experiment_id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

async fn upsert_tags(
    conn: &mut SqliteConnection,
    run_key: i64,
    tags: &[KeyValue],
    sync_name: bool,
) -> Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    // A key repeated in one request: the last value wins, as if written one after the other
    // (one statement may not upsert the same row twice).
    let mut last: Vec<&KeyValue> = Vec::with_capacity(tags.len());
    for tag in tags {
        match last.iter_mut().find(|t| t.key == tag.key) {
            Some(slot) => *slot = tag,
            None => last.push(tag),
        }
    }
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO tags (run_id, key, value) ");
    qb.push_values(&last, |mut row, tag| {
        row.push_bind(run_key)
            .push_bind(tag.key.as_str())
            .push_bind(tag.value.as_str());
    });
    qb.push(" ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value");
    qb.build()
        .persistent(true)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    // The run's name and its mlflow.runName tag are one fact stored twice. A new run is inserted
    // with its name already.
    if !sync_name {
        return Ok(());
    }
    if let Some(name) = last.iter().find(|t| t.key == "mlflow.runName") {
        sqlx::query("UPDATE runs SET name = ? WHERE id = ?")
            .bind(&name.value)
            .bind(run_key)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

pub(super) async fn insert_params(
    conn: &mut SqliteConnection,
    run_key: i64,
    run_id: &str,
    params: &[KeyValue],
) -> Result<()> {
    if params.is_empty() {
        return Ok(());
    }
    let keys = serde_json::to_string(&params.iter().map(|p| p.key.as_str()).collect::<Vec<_>>())
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let existing: Vec<(String, String)> = sqlx::query_as(
        "SELECT key, value FROM params WHERE run_id = ? AND key IN (SELECT value FROM json_each(?))",
    )
    .bind(run_key)
    .bind(keys)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let existing: HashMap<String, String> = existing.into_iter().collect();
    for p in params {
        if let Some(old) = existing.get(&p.key)
            && *old != p.value
        {
            return Err(StoreError::Invalid(format!(
                "Changing param values is not allowed. Param with key='{}' was already logged with \
                 value='{}' for run ID='{}'. Attempted logging new value '{}'.",
                p.key, old, run_id, p.value
            )));
        }
    }
    insert_new_params(conn, run_key, params).await
}

/// Inserts params known not to exist yet (a run created in the same transaction).
async fn insert_new_params(conn: &mut SqliteConnection, run_key: i64, params: &[KeyValue]) -> Result<()> {
    let mut rest = params;
    for size in split_chunks(params.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT OR IGNORE INTO params (run_id, key, value) ");
        qb.push_values(chunk, |mut row, p| {
            row.push_bind(run_key)
                .push_bind(p.key.as_str())
                .push_bind(p.value.as_str());
        });
        qb.build()
            .persistent(true)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

const PARAMS_OF_RUNS: &str = "SELECT json_group_array(json_array(run_id, key, value) ORDER BY run_id, key) \
     FROM params WHERE run_id IN (SELECT value FROM json_each(?))";
const TAGS_OF_RUNS: &str = "SELECT json_group_array(json_array(run_id, key, value) ORDER BY run_id, key) \
     FROM tags WHERE run_id IN (SELECT value FROM json_each(?))";

/// Inserts an experiment with its tags; `AlreadyExists` when the name is taken.
pub(super) async fn insert_experiment(conn: &mut SqliteConnection, new: NewExperiment) -> Result<i64> {
    let taken: Option<(i64,)> = sqlx::query_as("SELECT experiment_id FROM experiments WHERE name = ?")
        .bind(&new.name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    if taken.is_some() {
        return Err(StoreError::AlreadyExists(format!(
            "Experiment '{}' already exists.",
            new.name
        )));
    }
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, last_update_time) \
             VALUES (?, '', 'active', ?, ?) RETURNING experiment_id",
    )
    .bind(&new.name)
    .bind(new.now)
    .bind(new.now)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)?;
    let location = new
        .artifact_location
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| format!("{}/{id}", new.artifact_root.trim_end_matches('/')));
    sqlx::query("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?")
        .bind(location)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    for tag in &new.tags {
        sqlx::query(
            "INSERT INTO experiment_tags (experiment_id, key, value) VALUES (?, ?, ?) \
                 ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(id)
        .bind(&tag.key)
        .bind(&tag.value)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    }
    Ok(id)
}

/// Inserts a run with its tags into an active experiment; returns its key and artifact URI.
async fn insert_run(conn: &mut SqliteConnection, new: &NewRun) -> Result<(i64, String)> {
    let exp = experiment_row(conn, new.experiment_id).await?;
    if exp.lifecycle_stage.0 != LifecycleStage::Active {
        return Err(StoreError::Invalid(format!(
            "The experiment {} must be in the 'active' state. Current state is {}.",
            new.experiment_id, exp.lifecycle_stage.0
        )));
    }
    let artifact_uri = format!(
        "{}/{}/artifacts",
        exp.artifact_location.trim_end_matches('/'),
        new.run_id
    );
    let (key,): (i64,) = sqlx::query_as(
            "INSERT INTO runs (run_uuid, experiment_id, name, user_id, status, start_time, artifact_uri, lifecycle_stage) \
             VALUES (?, ?, ?, ?, 'RUNNING', ?, ?, 'active') RETURNING id",
        )
        .bind(&new.run_id)
        .bind(new.experiment_id)
        .bind(&new.run_name)
        .bind(&new.user_id)
        .bind(new.start_time)
        .bind(&artifact_uri)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    upsert_tags(conn, key, &new.tags, false).await?;
    Ok((key, artifact_uri))
}

impl SqliteStore {
    async fn experiment_tags(&self, ids: &[i64]) -> Result<HashMap<i64, Vec<KeyValue>>> {
        let mut out: HashMap<i64, Vec<KeyValue>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT experiment_id, key, value FROM experiment_tags \
             WHERE experiment_id IN (SELECT value FROM json_each(?)) ORDER BY experiment_id, key",
        )
        .bind(json_ids(ids))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        for (id, key, value) in rows {
            out.entry(id).or_default().push(KeyValue { key, value });
        }
        Ok(out)
    }

    /// `(run, key, value)` rows of one of the `*_OF_RUNS` queries for a JSON list of run keys.
    /// Rows of params or tags of runs, fetched as one JSON array (a row each costs a hand-off
    /// between threads in sqlx; a search page has a thousand of them).
    async fn key_values_of_runs(
        &self,
        sql: &'static str,
        ids_json: &str,
    ) -> Result<Vec<(i64, String, String)>> {
        let (json,): (String,) = sqlx::query_as(sql)
            .bind(ids_json)
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        serde_json::from_str(&json)
            .map_err(|e| StoreError::Incompatible(format!("unreadable params or tags: {e}")))
    }

    /// Loads the data (latest metrics, params, tags, inputs) of runs, keyed by internal id.
    /// A search whose first sort key is a metric, answered by walking the runs in that metric's
    /// order (see `run_search_by_order_sql`): its page (`limit + 1` rows, the offset skipped), or
    /// `None` when the walk did not find enough matching runs among the first
    /// [`ORDER_CANDIDATES`] (and the ones that tie with the last of them), or the page is too deep,
    /// and the general plan must answer.
    async fn search_by_order(&self, query: &RunQuery) -> Result<Option<Vec<RunRow>>> {
        self.search_by_order_among(query, ORDER_CANDIDATES).await
    }

    /// Has the writer fold every listed write first when `query` filters or sorts on metrics,
    /// which it reads from `latest_metrics` in SQL (see `latest_fold`). When that fails (a full
    /// disk: a fold is a write), reads go on: the search filters and sorts on the values folded
    /// so far (the newest values of the writes still listed may be missed until space is free),
    /// and the runs on its page still show every value.
    pub(super) async fn fold_for(&self, query: &RunQuery) {
        let reads_metrics = query
            .filter
            .iter()
            .any(|p| matches!(p, RunPredicate::Metric { .. }))
            || query
                .order_by
                .iter()
                .any(|o| matches!(o.key, RunOrderKey::Metric(_)));
        if reads_metrics
            && self.latest_fold.is_unfolded()
            && let Err(e) = super::metrics_writer::latest_up_to_date(&self.metric_jobs).await
        {
            tracing::debug!(error = %e, "searching before the latest metric values could be folded");
        }
    }

    /// [`SqliteStore::search_by_order`] reading the runs down to the `candidates`-th value.
    pub(super) async fn search_by_order_among(
        &self,
        query: &RunQuery,
        candidates: u32,
    ) -> Result<Option<Vec<RunRow>>> {
        let Some((key, ascending)) = order_metric(query) else {
            return Ok(None);
        };
        let need = query.offset + u64::from(query.limit) + 1;
        if need > MAX_ORDER_WALK_ROWS {
            return Ok(None);
        }
        // The walk reads one experiment's entries of `metric_order`; across experiments the
        // general plan answers.
        let [experiment] = query.experiment_ids.as_slice() else {
            return Ok(None);
        };
        // When the order cannot be brought up to date (a full disk: it is a write), the
        // general plan answers, from the latest values themselves: reads go on.
        if self.metric_order.is_pending()
            && super::metrics_writer::order_up_to_date(&self.metric_jobs, key)
                .await
                .is_err()
        {
            return Ok(None);
        }
        // One snapshot for the bound and the search.
        let mut tx = self.reader.begin().await.map_err(map_err)?;
        // The `candidates`-th value in the metric's order (none: fewer runs have it).
        let sql = if ascending {
            "SELECT value FROM metric_order WHERE experiment_id = ? AND key = ? AND is_nan = 0 \
             ORDER BY value ASC LIMIT 1 OFFSET ?"
        } else {
            "SELECT value FROM metric_order WHERE experiment_id = ? AND key = ? AND is_nan = 0 \
             ORDER BY value DESC LIMIT 1 OFFSET ?"
        };
        let bound: Option<(f64,)> = sqlx::query_as(sql)
            .bind(experiment)
            .bind(key)
            .bind(i64::from(candidates.max(1)) - 1)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let mut qb = run_search_by_order_sql(query, RUN_COLUMNS, bound.map(|b| b.0), need as u32);
        let mut rows: Vec<RunRow> = qb.build_query_as().fetch_all(&mut *tx).await.map_err(map_err)?;
        // Fewer than needed: runs beyond the bound may match, and runs whose value is NaN or
        // missing come after the numbers.
        if (rows.len() as u64) < need {
            return Ok(None);
        }
        rows.drain(..(query.offset as usize).min(rows.len()));
        Ok(Some(rows))
    }

    pub(super) async fn load_runs(&self, rows: Vec<RunRow>) -> Result<Vec<Run>> {
        let infos: Vec<(i64, RunInfo)> = rows.into_iter().map(RunRow::into_info).collect();
        let ids: Vec<i64> = infos.iter().map(|(id, _)| *id).collect();
        let ids_json = json_ids(&ids);
        type InputRow = (
            i64,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
        );
        // Four reads on four of the pool's connections at once: a page of 100 runs waits for
        // the slowest, not for the sum (about 2.5 ms of a 6 ms search on one connection).
        // Latest metrics as one JSON row, like params and tags (see `latest_metrics_json`).
        // Writes listed for a fold (see `latest_fold`) are read in the same snapshot and merged.
        let metrics = async {
            let (json, listed) = if self.latest_fold.is_unfolded() {
                let mut tx = self.reader.begin().await.map_err(map_err)?;
                let json = latest_metrics_json(&mut *tx, &ids_json).await?;
                let listed: Vec<(i64, Vec<u8>)> = sqlx::query_as(latest_fold::LISTED_OF_RUNS)
                    .bind(&ids_json)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                (json, listed)
            } else {
                (latest_metrics_json(&self.reader, &ids_json).await?, vec![])
            };
            let rows: Vec<(i64, String, i64, i64, String, u8)> = serde_json::from_str(&json)
                .map_err(|e| StoreError::Incompatible(format!("unreadable latest metrics: {e}")))?;
            let rows = rows
                .into_iter()
                .map(|(id, key, timestamp, step, value, is_nan)| {
                    let value: f64 = value.parse().map_err(|e| {
                        StoreError::Incompatible(format!("unreadable latest value {value:?}: {e}"))
                    })?;
                    Ok((id, key, timestamp, step, value, is_nan != 0))
                })
                .collect::<Result<Vec<_>>>()?;
            if listed.is_empty() {
                return Ok(rows);
            }
            let mut latest: HashMap<(i64, String), Point> = rows
                .into_iter()
                .map(|(id, key, timestamp, step, value, is_nan)| {
                    let value = loaded_value(value, is_nan);
                    (
                        (id, key),
                        Point {
                            timestamp,
                            step,
                            value,
                        },
                    )
                })
                .collect();
            latest_fold::merge_into(&mut latest, &listed)?;
            let mut rows: Vec<_> = latest
                .into_iter()
                .map(|((id, key), p)| {
                    let (value, is_nan) = p.stored();
                    (id, key, p.timestamp, p.step, value, is_nan)
                })
                .collect();
            rows.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            Ok::<_, StoreError>(rows)
        };
        let inputs = async {
            sqlx::query_as::<_, InputRow>(
                "SELECT run_id, name, digest, source_type, source, schema, profile, tags FROM run_inputs \
                 WHERE run_id IN (SELECT value FROM json_each(?)) ORDER BY run_id, name, digest",
            )
            .bind(&ids_json)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)
        };
        let (metrics, params, tags, inputs) = tokio::try_join!(
            metrics,
            self.key_values_of_runs(PARAMS_OF_RUNS, &ids_json),
            self.key_values_of_runs(TAGS_OF_RUNS, &ids_json),
            inputs,
        )?;

        let mut by_id: HashMap<i64, Run> = HashMap::with_capacity(infos.len());
        let mut order = Vec::with_capacity(infos.len());
        for (id, info) in infos {
            order.push(id);
            by_id.insert(
                id,
                Run {
                    info,
                    metrics: vec![],
                    params: vec![],
                    tags: vec![],
                    inputs: vec![],
                },
            );
        }
        for (id, key, timestamp, step, value, is_nan) in metrics {
            if let Some(run) = by_id.get_mut(&id) {
                run.metrics.push(Metric {
                    key,
                    value: loaded_value(value, is_nan),
                    timestamp,
                    step,
                });
            }
        }
        for (id, key, value) in params {
            if let Some(run) = by_id.get_mut(&id) {
                run.params.push(KeyValue { key, value });
            }
        }
        for (id, key, value) in tags {
            if let Some(run) = by_id.get_mut(&id) {
                run.tags.push(KeyValue { key, value });
            }
        }
        for (id, name, digest, source_type, source, schema, profile, tags) in inputs {
            if let Some(run) = by_id.get_mut(&id) {
                let tags: Vec<(String, String)> = serde_json::from_str(&tags).unwrap_or_default();
                let tags = tags
                    .into_iter()
                    .map(|(key, value)| KeyValue { key, value })
                    .collect();
                run.inputs.push(DatasetInput {
                    name,
                    digest,
                    source_type,
                    source,
                    schema,
                    profile,
                    tags,
                });
            }
        }
        Ok(order.into_iter().filter_map(|id| by_id.remove(&id)).collect())
    }
}

/// The latest metrics of the runs of a JSON list, as one JSON row. SQLite writes a REAL in JSON
/// with 15 digits, so each value goes as text with 17 significant digits, which reads back
/// exactly.
async fn latest_metrics_json<'e, E>(exec: E, ids_json: &str) -> Result<String>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let (json,): (String,) = sqlx::query_as(
        "SELECT json_group_array(json_array(run_id, key, timestamp, step, \
             printf('%!.17g', value), is_nan) ORDER BY run_id, key) \
         FROM latest_metrics WHERE run_id IN (SELECT value FROM json_each(?))",
    )
    .bind(ids_json)
    .fetch_one(exec)
    .await
    .map_err(map_err)?;
    Ok(json)
}

/// A JSON array of integers, bound as one parameter and expanded with `json_each` (integers are
/// exact in JSON, and one bound list keeps the SQL text fixed).
pub(super) fn json_ids(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}

pub(super) fn json_strings(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".into())
}

#[async_trait]
impl TrackingStore for SqliteStore {
    async fn create_experiment(&self, new: NewExperiment) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let id = insert_experiment(&mut tx, new).await?;
        commit(tx).await?;
        Ok(id)
    }

    async fn get_experiment(&self, experiment_id: i64) -> Result<Experiment> {
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
        let row = experiment_row(&mut conn, experiment_id).await?;
        drop(conn);
        let mut tags = self.experiment_tags(&[experiment_id]).await?;
        Ok(row.into_experiment(tags.remove(&experiment_id).unwrap_or_default()))
    }

    async fn get_experiment_by_name(&self, name: &str) -> Result<Experiment> {
        let sql = format!("SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE name = ?");
        let row = sqlx::query_as::<_, ExperimentRow>(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("Could not find experiment with name '{name}'")))?;
        let id = row.experiment_id;
        let mut tags = self.experiment_tags(&[id]).await?;
        Ok(row.into_experiment(tags.remove(&id).unwrap_or_default()))
    }

    async fn rename_experiment(&self, experiment_id: i64, new_name: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let row = experiment_row(&mut tx, experiment_id).await?;
        if row.lifecycle_stage.0 != LifecycleStage::Active {
            return Err(StoreError::Invalid(format!(
                "Cannot rename a non-active experiment {experiment_id}. Restore it first."
            )));
        }
        let taken: Option<(i64,)> =
            sqlx::query_as("SELECT experiment_id FROM experiments WHERE name = ? AND experiment_id != ?")
                .bind(new_name)
                .bind(experiment_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        if taken.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "Experiment '{new_name}' already exists."
            )));
        }
        sqlx::query("UPDATE experiments SET name = ?, last_update_time = ? WHERE experiment_id = ?")
            .bind(new_name)
            .bind(now_ms())
            .bind(experiment_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await?;
        Ok(())
    }

    async fn set_experiment_lifecycle(&self, experiment_id: i64, stage: LifecycleStage) -> Result<()> {
        let mut tx = self.begin_write().await?;
        experiment_row(&mut tx, experiment_id).await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE experiments SET lifecycle_stage = ?, last_update_time = ? WHERE experiment_id = ?",
        )
        .bind(stage.as_str())
        .bind(now)
        .bind(experiment_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let deleted_time = (stage == LifecycleStage::Deleted).then_some(now);
        self.forget_run_keys();
        sqlx::query("UPDATE runs SET lifecycle_stage = ?, deleted_time = ? WHERE experiment_id = ?")
            .bind(stage.as_str())
            .bind(deleted_time)
            .bind(experiment_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await?;
        Ok(())
    }

    async fn set_experiment_tag(&self, experiment_id: i64, key: &str, value: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let row = experiment_row(&mut tx, experiment_id).await?;
        if row.lifecycle_stage.0 != LifecycleStage::Active {
            return Err(StoreError::Invalid(format!(
                "The experiment {experiment_id} must be in the 'active' state. Current state is {}.",
                row.lifecycle_stage.0
            )));
        }
        sqlx::query(
            "INSERT INTO experiment_tags (experiment_id, key, value) VALUES (?, ?, ?) \
             ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(experiment_id)
        .bind(key)
        .bind(value)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        touch_experiment(&mut tx, experiment_id).await?;
        commit(tx).await?;
        Ok(())
    }

    async fn delete_experiment_tag(&self, experiment_id: i64, key: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        experiment_row(&mut tx, experiment_id).await?;
        let done = sqlx::query("DELETE FROM experiment_tags WHERE experiment_id = ? AND key = ?")
            .bind(experiment_id)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "No tag with name: {key} in experiment with id {experiment_id}"
            )));
        }
        touch_experiment(&mut tx, experiment_id).await?;
        commit(tx).await?;
        Ok(())
    }

    async fn search_experiments(&self, query: &ExperimentQuery) -> Result<Page<Experiment>> {
        let mut qb = experiment_search_sql(query, EXPERIMENT_COLUMNS);
        let rows: Vec<ExperimentRow> = qb
            .build_query_as()
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        let (rows, next_offset) = page(rows, query.limit, query.offset);
        let ids: Vec<i64> = rows.iter().map(|r| r.experiment_id).collect();
        let mut tags = self.experiment_tags(&ids).await?;
        let items = rows
            .into_iter()
            .map(|r| {
                let t = tags.remove(&r.experiment_id).unwrap_or_default();
                r.into_experiment(t)
            })
            .collect();
        Ok(Page { items, next_offset })
    }

    async fn create_run(&self, new: NewRun) -> Result<Run> {
        let mut tx = self.begin_write().await?;
        let (_, artifact_uri) = insert_run(&mut tx, &new).await?;
        commit(tx).await?;
        let mut tags = new.tags;
        tags.sort_by(|a, b| a.key.cmp(&b.key));
        tags.dedup_by(|b, a| {
            // Keep the last write of a repeated key, as the upsert did.
            if a.key == b.key {
                a.value = std::mem::take(&mut b.value);
                true
            } else {
                false
            }
        });
        Ok(Run {
            info: RunInfo {
                run_id: new.run_id,
                experiment_id: new.experiment_id,
                run_name: tags
                    .iter()
                    .find(|t| t.key == "mlflow.runName")
                    .map(|t| t.value.clone())
                    .unwrap_or(new.run_name),
                user_id: new.user_id,
                status: RunStatus::Running,
                start_time: new.start_time,
                end_time: None,
                artifact_uri,
                lifecycle_stage: LifecycleStage::Active,
            },
            metrics: vec![],
            params: vec![],
            tags,
            inputs: vec![],
        })
    }

    async fn get_run(&self, run_id: &str) -> Result<Run> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.run_uuid = ?");
        let row = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(sql))
            .bind(run_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("Run with id={run_id} not found")))?;
        let mut runs = self.load_runs(vec![row]).await?;
        runs.pop()
            .ok_or_else(|| StoreError::NotFound(format!("Run with id={run_id} not found")))
    }

    async fn update_run(&self, run_id: &str, update: RunUpdate) -> Result<RunInfo> {
        let mut tx = self.begin_write().await?;
        let key = run_key_for_write(&self.run_keys, &mut tx, run_id).await?;
        if let Some(status) = update.status {
            sqlx::query("UPDATE runs SET status = ? WHERE id = ?")
                .bind(status.as_str())
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        if let Some(end_time) = update.end_time {
            sqlx::query("UPDATE runs SET end_time = ? WHERE id = ?")
                .bind(end_time)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        if let Some(name) = update.run_name.filter(|n| !n.is_empty()) {
            upsert_tags(
                &mut tx,
                key,
                &[KeyValue {
                    key: "mlflow.runName".into(),
                    value: name,
                }],
                true,
            )
            .await?;
        }
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = ?");
        let row = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await?;
        Ok(row.into_info().1)
    }

    async fn set_run_lifecycle(&self, run_id: &str, stage: LifecycleStage) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let deleted_time = (stage == LifecycleStage::Deleted).then(now_ms);
        self.forget_run_keys();
        let done = sqlx::query("UPDATE runs SET lifecycle_stage = ?, deleted_time = ? WHERE run_uuid = ?")
            .bind(stage.as_str())
            .bind(deleted_time)
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("Run with id={run_id} not found")));
        }
        commit(tx).await?;
        Ok(())
    }

    async fn log_batch(&self, run_id: &str, batch: Batch) -> Result<()> {
        // Metric-only batches (every log-metric, most log-batch calls) are group-committed
        // with the other metric writes waiting at the same moment.
        if batch.params.is_empty() && batch.tags.is_empty() {
            return super::metrics_writer::submit(&self.metric_jobs, run_id, batch.metrics).await;
        }
        let mut tx = self.begin_write().await?;
        let key = run_key_for_write(&self.run_keys, &mut tx, run_id).await?;
        // Params first: an immutability conflict rejects the whole batch before anything else
        // is written (and the transaction is dropped, i.e. rolled back, on any error).
        insert_params(&mut tx, key, run_id, &batch.params).await?;
        let mut listed = 0;
        if !batch.metrics.is_empty() {
            let rows: Vec<(i64, &Metric)> = batch.metrics.iter().map(|m| (key, m)).collect();
            listed = metric_blocks::append(&mut tx, &self.loose_blocks, &rows).await?;
        }
        upsert_tags(&mut tx, key, &batch.tags, true).await?;
        commit(tx).await?;
        if listed > 0 {
            self.latest_fold.note_unfolded();
        }
        if !batch.metrics.is_empty() {
            self.metric_order.note_pending();
            // A full queue already has the writer task busy, and so scheduling.
            let _ = self.metric_jobs.try_send(super::metrics_writer::Job::Written);
            self.history.invalidate(run_id);
        }
        Ok(())
    }

    async fn delete_run_tag(&self, run_id: &str, key: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let run_key = run_key_for_write(&self.run_keys, &mut tx, run_id).await?;
        let done = sqlx::query("DELETE FROM tags WHERE run_id = ? AND key = ?")
            .bind(run_key)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "No tag with name: {key} in run with id {run_id}"
            )));
        }
        commit(tx).await?;
        Ok(())
    }

    async fn log_inputs(&self, run_id: &str, inputs: Vec<DatasetInput>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let key = run_key_for_write(&self.run_keys, &mut tx, run_id).await?;
        for input in &inputs {
            let tags: Vec<(&str, &str)> = input
                .tags
                .iter()
                .map(|t| (t.key.as_str(), t.value.as_str()))
                .collect();
            sqlx::query(
                "INSERT INTO run_inputs (run_id, name, digest, source_type, source, schema, profile, tags, context) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (run_id, name, digest) DO UPDATE SET source_type = excluded.source_type, \
                   source = excluded.source, schema = excluded.schema, profile = excluded.profile, \
                   tags = excluded.tags, context = excluded.context",
            )
            .bind(key)
            .bind(&input.name)
            .bind(&input.digest)
            .bind(&input.source_type)
            .bind(&input.source)
            .bind(&input.schema)
            .bind(&input.profile)
            .bind(serde_json::to_string(&tags).unwrap_or_else(|_| "[]".into()))
            .bind(input.context())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        commit(tx).await?;
        Ok(())
    }

    async fn dataset_summaries(&self, experiment_ids: &[i64]) -> Result<Vec<DatasetSummary>> {
        let rows: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
            "SELECT DISTINCT r.experiment_id, d.name, d.digest, d.context FROM run_inputs d \
             JOIN runs r ON r.id = d.run_id \
             WHERE r.experiment_id IN (SELECT value FROM json_each(?)) AND r.lifecycle_stage = 'active' \
             ORDER BY r.experiment_id, d.name, d.digest, d.context LIMIT 1000",
        )
        .bind(json_ids(experiment_ids))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|(experiment_id, name, digest, context)| DatasetSummary {
                experiment_id,
                name,
                digest,
                context,
            })
            .collect())
    }

    async fn search_runs(&self, query: &RunQuery) -> Result<Page<Run>> {
        if query.experiment_ids.is_empty() {
            return Ok(Page {
                items: vec![],
                next_offset: None,
            });
        }
        self.fold_for(query).await;
        let rows = match self.search_by_order(query).await? {
            Some(rows) => rows,
            None => {
                let mut qb = run_search_sql(query, RUN_COLUMNS);
                qb.build_query_as()
                    .fetch_all(&self.reader)
                    .await
                    .map_err(map_err)?
            }
        };
        let (rows, next_offset) = page(rows, query.limit, query.offset);
        let items = self.load_runs(rows).await?;
        Ok(Page { items, next_offset })
    }

    async fn metric_history(&self, run_id: &str, key: &str, offset: u64, limit: u32) -> Result<Page<Metric>> {
        let points = match self.history.get(run_id, key) {
            Some(points) => points,
            None => {
                let epoch = self.history.epoch();
                let mut points = metric_blocks::load(&self.reader, run_id, key).await?;
                metric_blocks::sort_dedup(&mut points, Point::history_order);
                let points = std::sync::Arc::new(points);
                // Kept for the next pages when there will be some.
                if points.len() > limit as usize {
                    self.history.put(run_id, key, points.clone(), epoch);
                }
                points
            }
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(points.len());
        let end = start.saturating_add(limit as usize).min(points.len());
        let items = points[start..end].iter().map(|p| p.to_metric(key)).collect();
        let next_offset = (end < points.len()).then_some(end as u64);
        if next_offset.is_none() && start > 0 {
            self.history.remove(run_id, key);
        }
        Ok(Page { items, next_offset })
    }

    async fn metric_history_bulk_interval(
        &self,
        run_ids: &[String],
        key: &str,
        start_step: Option<i64>,
        end_step: Option<i64>,
        max_results: usize,
    ) -> Result<Vec<(String, Metric)>> {
        let start = start_step.unwrap_or(i64::MIN);
        let end = end_step.unwrap_or(i64::MAX);
        let mut out = Vec::new();
        // Each run is sampled on its own points, so a short run next to a long one keeps its shape.
        for run_id in run_ids {
            let mut points = metric_blocks::load(&self.reader, run_id, key).await?;
            points.retain(|p| (start..=end).contains(&p.step));
            metric_blocks::sort_dedup(&mut points, Point::step_order);
            for i in sample_rows(points.len(), max_results) {
                out.push((run_id.clone(), points[i].to_metric(key)));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_any_count() {
        for n in 0..1200 {
            assert_eq!(split_chunks(n).iter().sum::<usize>(), n);
            assert!(split_chunks(n).len() <= 4 + 4 + 4 + 9 + n / 250);
        }
    }
}
