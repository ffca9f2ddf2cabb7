//! MLflow 3's logged models on PostgreSQL: their records, params, tags and metric rows, their
//! search, and a run's model inputs and outputs.
//!
//! A write locks what it changes or appends to, so that two daemons writing at once take turns:
//! the model's row (`FOR UPDATE`) before its status, tags or params (whose positions count the
//! params before them); every model of a batch of metric rows at once, in id order (so that two
//! batches naming the same models never wait on each other in a cycle); the run's row (`FOR NO
//! KEY UPDATE`, which does not wait for metric writes to the run) before its model inputs and
//! outputs. A model is read with its children in one snapshot ([`PgStore::snapshot`]).

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres};

use super::{PgStore, commit, map_err};
use crate::model_search_sql::logged_model_search_sql;
use crate::rows::{LOGGED_MODEL_COLUMNS, LoggedModelRow, ModelMetricRow, model_metric_of};
use crate::shared_models::{
    experiment_not_active, experiment_not_found, logged_model_not_found, logged_model_tag_not_found,
    new_model_id, run_not_found,
};
use crate::{
    KeyValue, LifecycleStage, LoggedModel, LoggedModelQuery, LoggedModelStatus, ModelDirection, ModelMetric,
    ModelStore, NewLoggedModel, Result, RunModels, Stored,
};

/// A metric row with its model's id first (the rest as [`ModelMetricRow`]).
type ModelMetricOfModel = (
    String,
    String,
    Option<f64>,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
);

/// An experiment's artifact location, which must be active for something to be created in it.
/// `FOR SHARE` holds off its deletion until the caller's transaction ends.
pub(super) async fn active_experiment(conn: &mut PgConnection, experiment_id: i64) -> Result<String> {
    let row: Option<(String, Stored<LifecycleStage>)> = sqlx::query_as(
        "SELECT artifact_location, lifecycle_stage FROM experiments WHERE experiment_id = $1 FOR SHARE",
    )
    .bind(experiment_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    match row {
        None => Err(experiment_not_found(experiment_id)),
        Some((_, Stored(stage))) if stage != LifecycleStage::Active => {
            Err(experiment_not_active(experiment_id, stage))
        }
        Some((location, _)) => Ok(location),
    }
}

/// The model's row, which must exist and be active, locked for the write at hand.
async fn lock_active_model(conn: &mut PgConnection, model_id: &str) -> Result<()> {
    let row: Option<(Stored<LifecycleStage>,)> =
        sqlx::query_as("SELECT lifecycle_stage FROM logged_models WHERE model_id = $1 FOR UPDATE")
            .bind(model_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
    match row {
        Some((Stored(LifecycleStage::Active),)) => Ok(()),
        _ => Err(logged_model_not_found(model_id)),
    }
}

async fn insert_params(conn: &mut PgConnection, model_id: &str, params: &[KeyValue]) -> Result<()> {
    for p in params {
        sqlx::query(
            "INSERT INTO logged_model_params (model_id, key, value, position) \
             VALUES ($1, $2, $3, (SELECT COUNT(*) FROM logged_model_params WHERE model_id = $1)) \
             ON CONFLICT (model_id, key) DO NOTHING",
        )
        .bind(model_id)
        .bind(&p.key)
        .bind(&p.value)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

async fn upsert_tags(conn: &mut PgConnection, model_id: &str, tags: &[KeyValue]) -> Result<()> {
    for t in tags {
        sqlx::query(
            "INSERT INTO logged_model_tags (model_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(model_id)
        .bind(&t.key)
        .bind(&t.value)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

/// Fills in params, tags and metric rows of models read from their table (three queries for
/// any number of models).
async fn with_children(conn: &mut PgConnection, rows: Vec<LoggedModelRow>) -> Result<Vec<LoggedModel>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut models: Vec<LoggedModel> = rows.into_iter().map(LoggedModel::from).collect();
    let ids: Vec<String> = models.iter().map(|m| m.model_id.clone()).collect();
    let params: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT model_id, key, value FROM logged_model_params WHERE model_id = ANY($1) ORDER BY position, key",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let tags: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT model_id, key, value FROM logged_model_tags WHERE model_id = ANY($1) ORDER BY key",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let metrics: Vec<ModelMetricOfModel> = sqlx::query_as(
        "SELECT model_id, key, value, timestamp, step, run_id, dataset_name, dataset_digest \
             FROM logged_model_metrics WHERE model_id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let index: HashMap<String, usize> = ids.into_iter().enumerate().map(|(i, id)| (id, i)).collect();
    for (model_id, key, value) in params {
        models[index[&model_id]].params.push(KeyValue { key, value });
    }
    for (model_id, key, value) in tags {
        models[index[&model_id]].tags.push(KeyValue { key, value });
    }
    for (model_id, key, value, timestamp, step, run_id, dataset_name, dataset_digest) in metrics {
        let row: ModelMetricRow = (key, value, timestamp, step, run_id, dataset_name, dataset_digest);
        models[index[&model_id]].metrics.push(model_metric_of(row));
    }
    Ok(models)
}

/// A model with its children, as the caller's transaction sees it.
async fn read_model(conn: &mut PgConnection, model_id: &str, allow_deleted: bool) -> Result<LoggedModel> {
    let row: Option<LoggedModelRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LOGGED_MODEL_COLUMNS} FROM logged_models m WHERE m.model_id = $1"
    )))
    .bind(model_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    let row = match row {
        Some(r) if allow_deleted || r.lifecycle_stage.0 == LifecycleStage::Active => r,
        _ => return Err(logged_model_not_found(model_id)),
    };
    with_children(conn, vec![row])
        .await?
        .pop()
        .ok_or_else(|| logged_model_not_found(model_id))
}

#[async_trait]
impl ModelStore for PgStore {
    async fn create_logged_model(&self, new: NewLoggedModel) -> Result<LoggedModel> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let location = active_experiment(&mut tx, new.experiment_id).await?;
        let model_id = new_model_id();
        let artifact_uri = format!("{}/models/{model_id}/artifacts", location.trim_end_matches('/'));
        sqlx::query(
            "INSERT INTO logged_models (model_id, experiment_id, name, model_type, source_run_id, status, \
             artifact_uri, creation_timestamp_ms, last_updated_timestamp_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(&model_id)
        .bind(new.experiment_id)
        .bind(&new.name)
        .bind(&new.model_type)
        .bind(&new.source_run_id)
        .bind(LoggedModelStatus::Pending.number())
        .bind(&artifact_uri)
        .bind(new.now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_params(&mut tx, &model_id, &new.params).await?;
        upsert_tags(&mut tx, &model_id, &new.tags).await?;
        let model = read_model(&mut tx, &model_id, false).await?;
        commit(tx).await?;
        Ok(model)
    }

    async fn get_logged_model(&self, model_id: &str, allow_deleted: bool) -> Result<LoggedModel> {
        let mut tx = self.snapshot().await?;
        read_model(&mut tx, model_id, allow_deleted).await
    }

    async fn delete_logged_model(&self, model_id: &str, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_active_model(&mut tx, model_id).await?;
        sqlx::query(
            "UPDATE logged_models SET lifecycle_stage = 'deleted', last_updated_timestamp_ms = $1 WHERE model_id = $2",
        )
        .bind(now)
        .bind(model_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        commit(tx).await
    }

    async fn set_logged_model_status(
        &self,
        model_id: &str,
        status: LoggedModelStatus,
        now: i64,
    ) -> Result<LoggedModel> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_active_model(&mut tx, model_id).await?;
        sqlx::query(
            "UPDATE logged_models SET status = $1, last_updated_timestamp_ms = $2 WHERE model_id = $3",
        )
        .bind(status.number())
        .bind(now)
        .bind(model_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let model = read_model(&mut tx, model_id, false).await?;
        commit(tx).await?;
        Ok(model)
    }

    async fn log_logged_model_params(&self, model_id: &str, params: Vec<KeyValue>) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_active_model(&mut tx, model_id).await?;
        insert_params(&mut tx, model_id, &params).await?;
        commit(tx).await
    }

    async fn set_logged_model_tags(&self, model_id: &str, tags: Vec<KeyValue>) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_active_model(&mut tx, model_id).await?;
        upsert_tags(&mut tx, model_id, &tags).await?;
        commit(tx).await
    }

    async fn delete_logged_model_tag(&self, model_id: &str, key: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_active_model(&mut tx, model_id).await?;
        let done = sqlx::query("DELETE FROM logged_model_tags WHERE model_id = $1 AND key = $2")
            .bind(model_id)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(logged_model_tag_not_found(model_id, key));
        }
        commit(tx).await
    }

    async fn search_logged_models(&self, query: LoggedModelQuery) -> Result<(Vec<LoggedModel>, bool)> {
        if query.experiment_ids.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut tx = self.snapshot().await?;
        let mut rows: Vec<LoggedModelRow> = logged_model_search_sql::<Postgres>(&query)
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        Ok((with_children(&mut tx, rows).await?, more))
    }

    async fn log_model_metrics(&self, rows: Vec<(String, ModelMetric)>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Every model named is locked at once, in one order (by id), so that two daemons
        // logging to the same models never wait on each other in a cycle.
        let mut ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let live: Vec<(String, Stored<LifecycleStage>)> = sqlx::query_as(
            "SELECT model_id, lifecycle_stage FROM logged_models WHERE model_id = ANY($1) \
             ORDER BY model_id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        for (model_id, _) in &rows {
            if !live
                .iter()
                .any(|(id, stage)| id == model_id && stage.0 == LifecycleStage::Active)
            {
                return Err(logged_model_not_found(model_id));
            }
        }
        for (model_id, m) in &rows {
            sqlx::query(
                "INSERT INTO logged_model_metrics \
                 (model_id, key, value, timestamp, step, run_id, dataset_name, dataset_digest) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(model_id)
            .bind(&m.key)
            // NULL stands for NaN (see the migration).
            .bind((!m.value.is_nan()).then_some(m.value))
            .bind(m.timestamp)
            .bind(m.step)
            .bind(&m.run_id)
            .bind(&m.dataset_name)
            .bind(&m.dataset_digest)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        commit(tx).await
    }

    async fn add_run_models(
        &self,
        run_id: &str,
        direction: ModelDirection,
        models: Vec<(String, i64)>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let run: Option<(i64,)> = sqlx::query_as("SELECT id FROM runs WHERE run_uuid = $1 FOR NO KEY UPDATE")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let Some((run,)) = run else {
            return Err(run_not_found(run_id));
        };
        let direction = match direction {
            ModelDirection::Input => "input",
            ModelDirection::Output => "output",
        };
        for (model_id, step) in &models {
            sqlx::query(
                "INSERT INTO run_models (run_id, direction, model_id, step, position) \
                 VALUES ($1, $2, $3, $4, (SELECT COUNT(*) FROM run_models WHERE run_id = $1)) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(run)
            .bind(direction)
            .bind(model_id)
            .bind(step)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        commit(tx).await
    }

    async fn run_models(&self, run_id: &str) -> Result<RunModels> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT x.direction, x.model_id, x.step FROM run_models x JOIN runs r ON r.id = x.run_id \
             WHERE r.run_uuid = $1 ORDER BY x.position",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut out = RunModels::default();
        for (direction, model_id, step) in rows {
            if direction == "input" {
                out.inputs.push(model_id);
            } else {
                out.outputs.push((model_id, step));
            }
        }
        Ok(out)
    }
}
