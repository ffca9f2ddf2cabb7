//! The tracking tables on PostgreSQL: experiments, runs, params, tags, metrics and dataset
//! inputs.
//!
//! Metrics are plain rows (`metrics`, one per point, in the order they were acknowledged) and
//! each (run, key)'s latest point is upserted into `latest_metrics` in the same transaction as
//! the points: PostgreSQL takes concurrent writers (and other replicas) itself, so none of
//! SQLite's group-commit, block or fold machinery is needed. A batch is a handful of
//! statements whatever its size: the points go in as arrays (`UNNEST`), and the latest points,
//! reduced in Rust to one per key first, in one upsert that only replaces a stored point by a
//! later one, which stays right when another replica writes the same run at the same time.
//!
//! Lock order, so that concurrent writers queue rather than deadlock: the experiment row, then
//! the run row, then the run's rows by key (every multi-row statement here lists its keys
//! sorted).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres};

use super::{PgStore, commit, map_err};
use crate::points::{Point, sample_rows};
use crate::rows::{EXPERIMENT_COLUMNS, ExperimentRow, RUN_COLUMNS, RunRow, page};
use crate::search_sql::{experiment_search_sql, run_search_sql};
use crate::{
    Batch, DatasetInput, DatasetSummary, Experiment, ExperimentQuery, KeyValue, LifecycleStage, Metric,
    NewExperiment, NewRun, Page, Result, Run, RunInfo, RunQuery, RunStatus, RunUpdate, StoreError,
    TrackingStore, now_ms,
};

/// How a row lock is taken on an experiment or a run before writing under it.
#[derive(Clone, Copy)]
enum Lock {
    /// `FOR SHARE`: writes under the row (a run in an experiment, points in a run) go on side by
    /// side, and its lifecycle cannot change until they commit.
    Share,
    /// `FOR NO KEY UPDATE`: the row itself changes (not its key, so rows referring to it may
    /// still be inserted meanwhile, e.g. a trial's by the queue).
    Update,
}

impl Lock {
    fn sql(self) -> &'static str {
        match self {
            Lock::Share => " FOR SHARE",
            Lock::Update => " FOR NO KEY UPDATE",
        }
    }
}

/// An experiment's row, locked; `NotFound` when there is none.
async fn experiment_row(
    conn: &mut PgConnection,
    experiment_id: i64,
    lock: Option<Lock>,
) -> Result<ExperimentRow> {
    let sql = format!(
        "SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE experiment_id = $1{}",
        lock.map_or("", Lock::sql)
    );
    sqlx::query_as::<_, ExperimentRow>(sqlx::AssertSqlSafe(sql))
        .bind(experiment_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::NotFound(format!("No Experiment with id={experiment_id} exists")))
}

/// The key of an active run, its row locked; `NotFound` for an unknown run, `Invalid` for a
/// deleted one (as SQLite's `run_key_for_write`).
async fn run_key_for_write(conn: &mut PgConnection, run_id: &str, lock: Lock) -> Result<i64> {
    let sql = format!(
        "SELECT id, lifecycle_stage FROM runs WHERE run_uuid = $1{}",
        lock.sql()
    );
    let row: Option<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    match row {
        None => Err(StoreError::NotFound(format!("Run with id={run_id} not found"))),
        Some((_, stage)) if stage != "active" => Err(StoreError::Invalid(format!(
            "The run {run_id} must be in the 'active' state. Current state is {stage}."
        ))),
        Some((id, _)) => Ok(id),
    }
}

async fn touch_experiment(conn: &mut PgConnection, experiment_id: i64) -> Result<()> {
    sqlx::query("UPDATE experiments SET last_update_time = $1 WHERE experiment_id = $2")
        .bind(now_ms())
        .bind(experiment_id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Tags with a repeated key reduced to its last value (as if written one after the other: one
/// statement may not upsert the same row twice), sorted by key (the lock order).
fn last_by_key(tags: &[KeyValue]) -> BTreeMap<&str, &str> {
    tags.iter().map(|t| (t.key.as_str(), t.value.as_str())).collect()
}

/// Upserts run tags; with `sync_name`, a `mlflow.runName` tag renames the run too (the name
/// and the tag are one fact stored twice; a new run is inserted with its name already).
async fn upsert_tags(
    conn: &mut PgConnection,
    run_key: i64,
    tags: &[KeyValue],
    sync_name: bool,
) -> Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let last = last_by_key(tags);
    let keys: Vec<&str> = last.keys().copied().collect();
    let values: Vec<&str> = last.values().copied().collect();
    sqlx::query(
        "INSERT INTO tags (run_id, key, value) SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS t (k, v) \
         ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
    )
    .bind(run_key)
    .bind(&keys)
    .bind(&values)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    if sync_name && let Some(name) = last.get("mlflow.runName") {
        sqlx::query("UPDATE runs SET name = $1 WHERE id = $2")
            .bind(*name)
            .bind(run_key)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// Inserts params; a key already logged with another value is `Invalid` (params are
/// immutable), with SQLite's message. A key repeated in the batch keeps its first value, as on
/// SQLite. The insert comes first and the conflicts are read after it: a replica logging the
/// same key at the same moment has committed by then (the insert waits for it), so a different
/// value it wrote is seen and refused rather than silently kept.
async fn insert_params(
    conn: &mut PgConnection,
    run_key: i64,
    run_id: &str,
    params: &[KeyValue],
) -> Result<()> {
    if params.is_empty() {
        return Ok(());
    }
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for p in params {
        first.entry(p.key.as_str()).or_insert(p.value.as_str());
    }
    let keys: Vec<&str> = first.keys().copied().collect();
    let values: Vec<&str> = first.values().copied().collect();
    let inserted: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO params (run_id, key, value) SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS p (k, v) \
         ON CONFLICT (run_id, key) DO NOTHING RETURNING key",
    )
    .bind(run_key)
    .bind(&keys)
    .bind(&values)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    if inserted.len() == keys.len() {
        return Ok(());
    }
    for (key,) in &inserted {
        first.remove(key.as_str());
    }
    let logged: Vec<&str> = first.keys().copied().collect();
    let existing: Vec<(String, String)> =
        sqlx::query_as("SELECT key, value FROM params WHERE run_id = $1 AND key = ANY($2) ORDER BY key")
            .bind(run_key)
            .bind(&logged)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
    let existing: HashMap<String, String> = existing.into_iter().collect();
    // In the batch's order, so that the error names the same param as SQLite's.
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
    Ok(())
}

/// Appends metric points in their order, and moves each key's latest point forward.
async fn insert_metrics(conn: &mut PgConnection, run_key: i64, metrics: &[Metric]) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    let n = metrics.len();
    let (mut keys, mut timestamps, mut steps, mut values, mut nans) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    // Each key's latest point of this batch: on a tie the first stays, as when written one by
    // one (a later point replaces only strictly).
    let mut latest: BTreeMap<&str, Point> = BTreeMap::new();
    for m in metrics {
        let point = Point::from_metric(m);
        let (value, is_nan) = point.stored();
        keys.push(m.key.as_str());
        timestamps.push(point.timestamp);
        steps.push(point.step);
        values.push(value);
        nans.push(is_nan);
        latest
            .entry(m.key.as_str())
            .and_modify(|current| {
                if point.is_later_than(current) {
                    *current = point;
                }
            })
            .or_insert(point);
    }
    // WITH ORDINALITY: `id` follows the batch's order.
    sqlx::query(
        "INSERT INTO metrics (run_id, key, timestamp, step, value, is_nan) \
         SELECT $1, k, t, s, v, n FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::float8[], $6::bool[]) \
         WITH ORDINALITY AS m (k, t, s, v, n, i) ORDER BY i",
    )
    .bind(run_key)
    .bind(&keys)
    .bind(&timestamps)
    .bind(&steps)
    .bind(&values)
    .bind(&nans)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;

    let n = latest.len();
    let (mut keys, mut timestamps, mut steps, mut values, mut nans) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (key, point) in &latest {
        let (value, is_nan) = point.stored();
        keys.push(*key);
        timestamps.push(point.timestamp);
        steps.push(point.step);
        values.push(value);
        nans.push(is_nan);
    }
    // The stored point is replaced only by a strictly later one (`Point::is_later_than`: step,
    // then timestamp, then value with NaN as its stored 0). ON CONFLICT locks the stored row
    // and checks the condition against its newest committed version, so two replicas writing
    // the same key at once end with the later point whichever commits first.
    sqlx::query(
        "INSERT INTO latest_metrics AS l (run_id, key, timestamp, step, value, is_nan) \
         SELECT $1, k, t, s, v, n FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::float8[], $6::bool[]) \
         AS m (k, t, s, v, n) \
         ON CONFLICT (run_id, key) DO UPDATE SET timestamp = excluded.timestamp, step = excluded.step, \
           value = excluded.value, is_nan = excluded.is_nan \
         WHERE (excluded.step, excluded.timestamp, excluded.value) > (l.step, l.timestamp, l.value)",
    )
    .bind(run_key)
    .bind(&keys)
    .bind(&timestamps)
    .bind(&steps)
    .bind(&values)
    .bind(&nans)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Inserts an experiment with its tags; `None` when its name is taken (also by a replica
/// inserting it at this moment: the unique name decides). The queue's sweeps create their
/// experiments through it too.
pub(super) async fn insert_experiment(conn: &mut PgConnection, new: NewExperiment) -> Result<Option<i64>> {
    let id: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, last_update_time) \
         VALUES ($1, '', 'active', $2, $2) ON CONFLICT (name) DO NOTHING RETURNING experiment_id",
    )
    .bind(&new.name)
    .bind(new.now)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    let Some((id,)) = id else {
        return Ok(None);
    };
    let location = new
        .artifact_location
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| format!("{}/{id}", new.artifact_root.trim_end_matches('/')));
    sqlx::query("UPDATE experiments SET artifact_location = $1 WHERE experiment_id = $2")
        .bind(location)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    if !new.tags.is_empty() {
        let last = last_by_key(&new.tags);
        let keys: Vec<&str> = last.keys().copied().collect();
        let values: Vec<&str> = last.values().copied().collect();
        sqlx::query(
            "INSERT INTO experiment_tags (experiment_id, key, value) \
             SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS t (k, v)",
        )
        .bind(id)
        .bind(&keys)
        .bind(&values)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    }
    Ok(Some(id))
}

/// Inserts a run with its tags into an active experiment; returns its artifact URI.
async fn insert_run(conn: &mut PgConnection, new: &NewRun) -> Result<String> {
    // Shared: runs may be created side by side, and the experiment cannot be deleted under them.
    let exp = experiment_row(conn, new.experiment_id, Some(Lock::Share)).await?;
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
         VALUES ($1, $2, $3, $4, 'RUNNING', $5, $6, 'active') RETURNING id",
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
    Ok(artifact_uri)
}

/// Whether an error is a unique violation (another writer took the name first).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// An input row: run key, name, digest, source type, source, schema, profile, tags (JSON).
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

impl PgStore {
    async fn experiment_tags(&self, ids: &[i64]) -> Result<HashMap<i64, Vec<KeyValue>>> {
        let mut out: HashMap<i64, Vec<KeyValue>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT experiment_id, key, value FROM experiment_tags WHERE experiment_id = ANY($1) \
             ORDER BY experiment_id, key COLLATE \"C\"",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        for (id, key, value) in rows {
            out.entry(id).or_default().push(KeyValue { key, value });
        }
        Ok(out)
    }

    /// The experiments of rows, with their tags, in the rows' order.
    async fn experiments_of(&self, rows: Vec<ExperimentRow>) -> Result<Vec<Experiment>> {
        let ids: Vec<i64> = rows.iter().map(|r| r.experiment_id).collect();
        let mut tags = self.experiment_tags(&ids).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let t = tags.remove(&r.experiment_id).unwrap_or_default();
                r.into_experiment(t)
            })
            .collect())
    }

    /// `(run, key, value)` rows of `params` or `tags` for the runs, by run and key.
    async fn key_values_of_runs(
        &self,
        table: KeyValueTable,
        ids: &[i64],
    ) -> Result<Vec<(i64, String, String)>> {
        let sql = match table {
            KeyValueTable::Params => {
                "SELECT run_id, key, value FROM params WHERE run_id = ANY($1) ORDER BY run_id, key COLLATE \"C\""
            }
            KeyValueTable::Tags => {
                "SELECT run_id, key, value FROM tags WHERE run_id = ANY($1) ORDER BY run_id, key COLLATE \"C\""
            }
        };
        sqlx::query_as(sql)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    /// The runs of rows with their latest metrics, params, tags and inputs, in the rows' order.
    pub(super) async fn load_runs(&self, rows: Vec<RunRow>) -> Result<Vec<Run>> {
        let infos: Vec<(i64, RunInfo)> = rows.into_iter().map(RunRow::into_info).collect();
        let ids: Vec<i64> = infos.iter().map(|(id, _)| *id).collect();
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let metrics = async {
            sqlx::query_as::<_, (i64, String, i64, i64, f64, bool)>(
                "SELECT run_id, key, timestamp, step, value, is_nan FROM latest_metrics \
                 WHERE run_id = ANY($1) ORDER BY run_id, key COLLATE \"C\"",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
        };
        let inputs = async {
            sqlx::query_as::<_, InputRow>(
                "SELECT run_id, name, digest, source_type, source, schema, profile, tags FROM run_inputs \
                 WHERE run_id = ANY($1) ORDER BY run_id, name COLLATE \"C\", digest COLLATE \"C\"",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
        };
        // Four reads on four connections at once: a page waits for the slowest, not the sum.
        let (metrics, params, tags, inputs) = tokio::try_join!(
            metrics,
            self.key_values_of_runs(KeyValueTable::Params, &ids),
            self.key_values_of_runs(KeyValueTable::Tags, &ids),
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
                run.metrics
                    .push(Point::from_stored(timestamp, step, value, is_nan).to_metric(&key));
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

/// The key-value tables of runs.
#[derive(Clone, Copy)]
enum KeyValueTable {
    Params,
    Tags,
}

#[async_trait]
impl TrackingStore for PgStore {
    async fn create_experiment(&self, new: NewExperiment) -> Result<i64> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let name = new.name.clone();
        let Some(id) = insert_experiment(&mut tx, new).await? else {
            return Err(StoreError::AlreadyExists(format!(
                "Experiment '{name}' already exists."
            )));
        };
        commit(tx).await?;
        Ok(id)
    }

    async fn get_experiment(&self, experiment_id: i64) -> Result<Experiment> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let row = experiment_row(&mut conn, experiment_id, None).await?;
        drop(conn);
        let mut experiments = self.experiments_of(vec![row]).await?;
        Ok(experiments.remove(0))
    }

    async fn get_experiment_by_name(&self, name: &str) -> Result<Experiment> {
        let sql = format!("SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE name = $1");
        let row = sqlx::query_as::<_, ExperimentRow>(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("Could not find experiment with name '{name}'")))?;
        let mut experiments = self.experiments_of(vec![row]).await?;
        Ok(experiments.remove(0))
    }

    async fn rename_experiment(&self, experiment_id: i64, new_name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let row = experiment_row(&mut tx, experiment_id, Some(Lock::Update)).await?;
        if row.lifecycle_stage.0 != LifecycleStage::Active {
            return Err(StoreError::Invalid(format!(
                "Cannot rename a non-active experiment {experiment_id}. Restore it first."
            )));
        }
        let taken = || StoreError::AlreadyExists(format!("Experiment '{new_name}' already exists."));
        let done =
            sqlx::query("UPDATE experiments SET name = $1, last_update_time = $2 WHERE experiment_id = $3")
                .bind(new_name)
                .bind(now_ms())
                .bind(experiment_id)
                .execute(&mut *tx)
                .await;
        match done {
            Err(e) if is_unique_violation(&e) => return Err(taken()),
            other => other.map_err(map_err)?,
        };
        commit(tx).await?;
        Ok(())
    }

    async fn set_experiment_lifecycle(&self, experiment_id: i64, stage: LifecycleStage) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        experiment_row(&mut tx, experiment_id, Some(Lock::Update)).await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE experiments SET lifecycle_stage = $1, last_update_time = $2 WHERE experiment_id = $3",
        )
        .bind(stage.as_str())
        .bind(now)
        .bind(experiment_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let deleted_time = (stage == LifecycleStage::Deleted).then_some(now);
        sqlx::query("UPDATE runs SET lifecycle_stage = $1, deleted_time = $2 WHERE experiment_id = $3")
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let row = experiment_row(&mut tx, experiment_id, Some(Lock::Update)).await?;
        if row.lifecycle_stage.0 != LifecycleStage::Active {
            return Err(StoreError::Invalid(format!(
                "The experiment {experiment_id} must be in the 'active' state. Current state is {}.",
                row.lifecycle_stage.0
            )));
        }
        sqlx::query(
            "INSERT INTO experiment_tags (experiment_id, key, value) VALUES ($1, $2, $3) \
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        experiment_row(&mut tx, experiment_id, Some(Lock::Update)).await?;
        let done = sqlx::query("DELETE FROM experiment_tags WHERE experiment_id = $1 AND key = $2")
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
        let mut qb = experiment_search_sql::<Postgres>(query, EXPERIMENT_COLUMNS);
        let rows: Vec<ExperimentRow> = qb.build_query_as().fetch_all(&self.pool).await.map_err(map_err)?;
        let (rows, next_offset) = page(rows, query.limit, query.offset);
        let items = self.experiments_of(rows).await?;
        Ok(Page { items, next_offset })
    }

    async fn create_run(&self, new: NewRun) -> Result<Run> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let artifact_uri = insert_run(&mut tx, &new).await?;
        commit(tx).await?;
        let tags: Vec<KeyValue> = last_by_key(&new.tags)
            .into_iter()
            .map(|(key, value)| KeyValue {
                key: key.to_owned(),
                value: value.to_owned(),
            })
            .collect();
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
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.run_uuid = $1");
        let row = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(sql))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("Run with id={run_id} not found")))?;
        let mut runs = self.load_runs(vec![row]).await?;
        runs.pop()
            .ok_or_else(|| StoreError::NotFound(format!("Run with id={run_id} not found")))
    }

    async fn update_run(&self, run_id: &str, update: RunUpdate) -> Result<RunInfo> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let key = run_key_for_write(&mut tx, run_id, Lock::Update).await?;
        if let Some(status) = update.status {
            sqlx::query("UPDATE runs SET status = $1 WHERE id = $2")
                .bind(status.as_str())
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        if let Some(end_time) = update.end_time {
            sqlx::query("UPDATE runs SET end_time = $1 WHERE id = $2")
                .bind(end_time)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        if let Some(name) = update.run_name.filter(|n| !n.is_empty()) {
            let tag = KeyValue {
                key: "mlflow.runName".into(),
                value: name,
            };
            upsert_tags(&mut tx, key, &[tag], true).await?;
        }
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = $1");
        let row = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await?;
        Ok(row.into_info().1)
    }

    async fn set_run_lifecycle(&self, run_id: &str, stage: LifecycleStage) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let deleted_time = (stage == LifecycleStage::Deleted).then(now_ms);
        let done = sqlx::query("UPDATE runs SET lifecycle_stage = $1, deleted_time = $2 WHERE run_uuid = $3")
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Shared: batches to one run go on side by side; deleting the run waits for them.
        let key = run_key_for_write(&mut tx, run_id, Lock::Share).await?;
        // Params first: an immutability conflict rejects the whole batch before anything else
        // is written (and the transaction is dropped, i.e. rolled back, on any error).
        insert_params(&mut tx, key, run_id, &batch.params).await?;
        insert_metrics(&mut tx, key, &batch.metrics).await?;
        upsert_tags(&mut tx, key, &batch.tags, true).await?;
        commit(tx).await
    }

    async fn delete_run_tag(&self, run_id: &str, key: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let run_key = run_key_for_write(&mut tx, run_id, Lock::Share).await?;
        let done = sqlx::query("DELETE FROM tags WHERE run_id = $1 AND key = $2")
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
        commit(tx).await
    }

    async fn log_inputs(&self, run_id: &str, inputs: Vec<DatasetInput>) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let key = run_key_for_write(&mut tx, run_id, Lock::Share).await?;
        // One statement per input, in the request's order: an input repeated in one request
        // ends as its last copy, as on SQLite.
        for input in &inputs {
            let tags: Vec<(&str, &str)> = input
                .tags
                .iter()
                .map(|t| (t.key.as_str(), t.value.as_str()))
                .collect();
            sqlx::query(
                "INSERT INTO run_inputs (run_id, name, digest, source_type, source, schema, profile, tags, context) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
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
        commit(tx).await
    }

    async fn dataset_summaries(&self, experiment_ids: &[i64]) -> Result<Vec<DatasetSummary>> {
        let rows: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
            "SELECT DISTINCT r.experiment_id, d.name COLLATE \"C\", d.digest COLLATE \"C\", \
               d.context COLLATE \"C\" FROM run_inputs d \
             JOIN runs r ON r.id = d.run_id \
             WHERE r.experiment_id = ANY($1) AND r.lifecycle_stage = 'active' \
             ORDER BY 1, 2, 3, 4 NULLS FIRST LIMIT 1000",
        )
        .bind(experiment_ids)
        .fetch_all(&self.pool)
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
        // Latest values are upserted with their points, so a search sees every write
        // acknowledged before it (on any replica) without waiting for anything.
        let mut qb = run_search_sql::<Postgres>(query, RUN_COLUMNS);
        let rows: Vec<RunRow> = qb.build_query_as().fetch_all(&self.pool).await.map_err(map_err)?;
        let (rows, next_offset) = page(rows, query.limit, query.offset);
        let items = self.load_runs(rows).await?;
        Ok(Page { items, next_offset })
    }

    async fn metric_history(&self, run_id: &str, key: &str, offset: u64, limit: u32) -> Result<Page<Metric>> {
        // History order (timestamp, step, value with NaN as 0 then NaN) with exact duplicates
        // dropped, as `Point::history_order` and `sort_dedup`: retried writes show once.
        let rows: Vec<(i64, i64, f64, bool)> = sqlx::query_as(
            "SELECT timestamp, step, value, is_nan FROM metrics \
             WHERE run_id = (SELECT id FROM runs WHERE run_uuid = $1) AND key = $2 \
             GROUP BY timestamp, step, value, is_nan ORDER BY timestamp, step, value, is_nan \
             LIMIT $3 OFFSET $4",
        )
        .bind(run_id)
        .bind(key)
        .bind(i64::from(limit) + 1)
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let (rows, next_offset) = page(rows, limit, offset);
        let items = rows
            .into_iter()
            .map(|(timestamp, step, value, is_nan)| {
                Point::from_stored(timestamp, step, value, is_nan).to_metric(key)
            })
            .collect();
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
        // Every run's points in the range, in step order (step, timestamp, value) without
        // exact duplicates; each run is then sampled on its own points, so a short run next to a
        // long one keeps its shape.
        let rows: Vec<(String, i64, i64, f64, bool)> = sqlx::query_as(
            "SELECT r.run_uuid, m.timestamp, m.step, m.value, m.is_nan FROM metrics m \
             JOIN runs r ON r.id = m.run_id \
             WHERE r.run_uuid = ANY($1) AND m.key = $2 AND m.step BETWEEN $3 AND $4 \
             GROUP BY r.run_uuid, m.step, m.timestamp, m.value, m.is_nan \
             ORDER BY r.run_uuid, m.step, m.timestamp, m.value, m.is_nan",
        )
        .bind(run_ids)
        .bind(key)
        .bind(start_step.unwrap_or(i64::MIN))
        .bind(end_step.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut by_run: HashMap<String, Vec<Point>> = HashMap::new();
        for (run, timestamp, step, value, is_nan) in rows {
            by_run
                .entry(run)
                .or_default()
                .push(Point::from_stored(timestamp, step, value, is_nan));
        }
        let mut out = Vec::new();
        for run_id in run_ids {
            let Some(points) = by_run.get(run_id) else {
                continue;
            };
            for i in sample_rows(points.len(), max_results) {
                out.push((run_id.clone(), points[i].to_metric(key)));
            }
        }
        Ok(out)
    }
}
