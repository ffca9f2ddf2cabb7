//! MLflow 3's logged models: their records, params, tags and metric rows, their search, and a
//! run's model inputs and outputs.

use async_trait::async_trait;
use sqlx::{Sqlite, SqliteConnection};

use super::tracking::experiment_row;
use super::{SqliteStore, commit, map_err};
use crate::model_search_sql::logged_model_search_sql;
use crate::rows::{
    LOGGED_MODEL_COLUMNS as COLUMNS, LoggedModelRow as ModelRow, ModelMetricRow, model_metric_of,
};
use crate::shared_models::{
    experiment_not_active, logged_model_not_found as not_found, logged_model_tag_not_found, new_model_id,
    run_not_found,
};
use crate::{
    KeyValue, LifecycleStage, LoggedModel, LoggedModelQuery, LoggedModelStatus, ModelDirection, ModelMetric,
    ModelStore, NewLoggedModel, Result, RunModels,
};

/// The model's row, which must exist and be active (for writes).
async fn active_model(conn: &mut SqliteConnection, model_id: &str) -> Result<ModelRow> {
    let row: Option<ModelRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM logged_models m WHERE m.model_id = ?"
    )))
    .bind(model_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    match row {
        Some(r) if r.lifecycle_stage.0 == LifecycleStage::Active => Ok(r),
        _ => Err(not_found(model_id)),
    }
}

async fn insert_params(conn: &mut SqliteConnection, model_id: &str, params: &[KeyValue]) -> Result<()> {
    for p in params {
        sqlx::query(
            "INSERT INTO logged_model_params (model_id, key, value, position) \
             VALUES (?1, ?2, ?3, (SELECT COUNT(*) FROM logged_model_params WHERE model_id = ?1)) \
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

async fn upsert_tags(conn: &mut SqliteConnection, model_id: &str, tags: &[KeyValue]) -> Result<()> {
    for t in tags {
        sqlx::query(
            "INSERT INTO logged_model_tags (model_id, key, value) VALUES (?, ?, ?) \
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

impl SqliteStore {
    /// Fills in params, tags and metric rows of models read from their table.
    async fn with_children(&self, rows: Vec<ModelRow>) -> Result<Vec<LoggedModel>> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut model = LoggedModel::from(row);
            let id = model.model_id.clone();
            let params: Vec<(String, String)> = sqlx::query_as(
                "SELECT key, value FROM logged_model_params WHERE model_id = ? ORDER BY position, key",
            )
            .bind(&id)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
            let tags: Vec<(String, String)> =
                sqlx::query_as("SELECT key, value FROM logged_model_tags WHERE model_id = ? ORDER BY key")
                    .bind(&id)
                    .fetch_all(&self.reader)
                    .await
                    .map_err(map_err)?;
            let metrics: Vec<ModelMetricRow> = sqlx::query_as(
                "SELECT key, value, timestamp, step, run_id, dataset_name, dataset_digest \
                     FROM logged_model_metrics WHERE model_id = ? ORDER BY id",
            )
            .bind(&id)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
            model.params = params
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect();
            model.tags = tags
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect();
            model.metrics = metrics.into_iter().map(model_metric_of).collect();
            out.push(model);
        }
        Ok(out)
    }
}

#[async_trait]
impl ModelStore for SqliteStore {
    async fn create_logged_model(&self, new: NewLoggedModel) -> Result<LoggedModel> {
        let mut tx = self.begin_write().await?;
        let experiment = experiment_row(&mut tx, new.experiment_id).await?;
        if experiment.lifecycle_stage.0 != LifecycleStage::Active {
            return Err(experiment_not_active(
                new.experiment_id,
                experiment.lifecycle_stage.0,
            ));
        }
        let model_id = new_model_id();
        let artifact_uri = format!(
            "{}/models/{model_id}/artifacts",
            experiment.artifact_location.trim_end_matches('/')
        );
        sqlx::query(
            "INSERT INTO logged_models (model_id, experiment_id, name, model_type, source_run_id, status, \
             artifact_uri, creation_timestamp_ms, last_updated_timestamp_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&model_id)
        .bind(new.experiment_id)
        .bind(&new.name)
        .bind(&new.model_type)
        .bind(&new.source_run_id)
        .bind(LoggedModelStatus::Pending.number())
        .bind(&artifact_uri)
        .bind(new.now)
        .bind(new.now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_params(&mut tx, &model_id, &new.params).await?;
        upsert_tags(&mut tx, &model_id, &new.tags).await?;
        commit(tx).await?;
        self.get_logged_model(&model_id, false).await
    }

    async fn get_logged_model(&self, model_id: &str, allow_deleted: bool) -> Result<LoggedModel> {
        let row: Option<ModelRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM logged_models m WHERE m.model_id = ?"
        )))
        .bind(model_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        let row = match row {
            Some(r) if allow_deleted || r.lifecycle_stage.0 == LifecycleStage::Active => r,
            _ => return Err(not_found(model_id)),
        };
        Ok(self.with_children(vec![row]).await?.remove(0))
    }

    async fn delete_logged_model(&self, model_id: &str, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        active_model(&mut tx, model_id).await?;
        sqlx::query(
            "UPDATE logged_models SET lifecycle_stage = 'deleted', last_updated_timestamp_ms = ? WHERE model_id = ?",
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
        let mut tx = self.begin_write().await?;
        active_model(&mut tx, model_id).await?;
        sqlx::query("UPDATE logged_models SET status = ?, last_updated_timestamp_ms = ? WHERE model_id = ?")
            .bind(status.number())
            .bind(now)
            .bind(model_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await?;
        self.get_logged_model(model_id, false).await
    }

    async fn log_logged_model_params(&self, model_id: &str, params: Vec<KeyValue>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        active_model(&mut tx, model_id).await?;
        insert_params(&mut tx, model_id, &params).await?;
        commit(tx).await
    }

    async fn set_logged_model_tags(&self, model_id: &str, tags: Vec<KeyValue>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        active_model(&mut tx, model_id).await?;
        upsert_tags(&mut tx, model_id, &tags).await?;
        commit(tx).await
    }

    async fn delete_logged_model_tag(&self, model_id: &str, key: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        active_model(&mut tx, model_id).await?;
        let done = sqlx::query("DELETE FROM logged_model_tags WHERE model_id = ? AND key = ?")
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
        let mut qb = logged_model_search_sql::<Sqlite>(&query);
        let mut rows: Vec<ModelRow> = qb
            .build_query_as()
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        Ok((self.with_children(rows).await?, more))
    }

    async fn log_model_metrics(&self, rows: Vec<(String, ModelMetric)>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let mut known: Vec<&str> = Vec::new();
        for (model_id, m) in &rows {
            if !known.contains(&model_id.as_str()) {
                active_model(&mut tx, model_id).await?;
                known.push(model_id);
            }
            sqlx::query(
                "INSERT INTO logged_model_metrics \
                 (model_id, key, value, timestamp, step, run_id, dataset_name, dataset_digest) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(model_id)
            .bind(&m.key)
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
        let mut tx = self.begin_write().await?;
        let run: Option<(i64,)> = sqlx::query_as("SELECT id FROM runs WHERE run_uuid = ?")
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
                 VALUES (?1, ?2, ?3, ?4, (SELECT COUNT(*) FROM run_models WHERE run_id = ?1)) \
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
             WHERE r.run_uuid = ? ORDER BY x.position",
        )
        .bind(run_id)
        .fetch_all(&self.reader)
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
