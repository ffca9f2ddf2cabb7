//! MLflow 3's logged models: their records, params, tags and metric rows, their search, and a
//! run's model inputs and outputs.

use async_trait::async_trait;
use rand::RngExt;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use spotsweep_core::search::{ModelAttribute, ModelOrderKey, ModelPredicate, StrOp};

use super::search::{num_op, push_kv_condition, push_str_cmp};
use super::tracking::experiment_row;
use super::{SqliteStore, commit, map_err};
use crate::Stored;
use crate::{
    KeyValue, LifecycleStage, LoggedModel, LoggedModelQuery, LoggedModelStatus, ModelDirection, ModelMetric,
    ModelStore, NewLoggedModel, Result, RunModels, StoreError,
};

/// The columns of [`ModelRow`], read from `logged_models m`.
const COLUMNS: &str = "m.model_id, m.experiment_id, m.name, m.model_type, m.source_run_id, m.status, \
     m.artifact_uri, m.lifecycle_stage, m.creation_timestamp_ms, m.last_updated_timestamp_ms";

#[derive(sqlx::FromRow)]
struct ModelRow {
    model_id: String,
    experiment_id: i64,
    name: String,
    model_type: String,
    source_run_id: String,
    status: i64,
    artifact_uri: String,
    lifecycle_stage: Stored<LifecycleStage>,
    creation_timestamp_ms: i64,
    last_updated_timestamp_ms: i64,
}

impl From<ModelRow> for LoggedModel {
    fn from(r: ModelRow) -> Self {
        Self {
            model_id: r.model_id,
            experiment_id: r.experiment_id,
            name: r.name,
            model_type: r.model_type,
            source_run_id: r.source_run_id,
            status: LoggedModelStatus::from_number(r.status),
            artifact_uri: r.artifact_uri,
            lifecycle_stage: r.lifecycle_stage.0,
            creation_timestamp_ms: r.creation_timestamp_ms,
            last_updated_timestamp_ms: r.last_updated_timestamp_ms,
            params: Vec::new(),
            tags: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

/// A fresh model id: `m-` and 32 hex digits (a uuid4, as the reference's).
fn new_model_id() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("m-{}", hex::encode(b))
}

fn not_found(model_id: &str) -> StoreError {
    StoreError::NotFound(format!("Logged model with ID '{model_id}' not found."))
}

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
            #[allow(clippy::type_complexity)]
            let metrics: Vec<(
                String,
                Option<f64>,
                i64,
                i64,
                String,
                Option<String>,
                Option<String>,
            )> = sqlx::query_as(
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
            model.metrics = metrics
                .into_iter()
                .map(
                    |(key, value, timestamp, step, run_id, dataset_name, dataset_digest)| ModelMetric {
                        key,
                        // NULL stands for NaN (see the migration).
                        value: value.unwrap_or(f64::NAN),
                        timestamp,
                        step,
                        run_id,
                        dataset_name,
                        dataset_digest,
                    },
                )
                .collect();
            out.push(model);
        }
        Ok(out)
    }
}

fn model_attr_column(attr: ModelAttribute) -> &'static str {
    match attr {
        ModelAttribute::Name => "m.name",
        ModelAttribute::ModelId => "m.model_id",
        ModelAttribute::ModelType => "m.model_type",
        ModelAttribute::Status => "m.status",
        ModelAttribute::SourceRunId => "m.source_run_id",
        ModelAttribute::CreationTime => "m.creation_timestamp_ms",
        ModelAttribute::LastUpdatedTime => "m.last_updated_timestamp_ms",
    }
}

/// `status` is stored as its number but compared by name: `status = 'READY'` means ready.
fn status_number(value: &str) -> i64 {
    LoggedModelStatus::parse(value).map_or(-1, LoggedModelStatus::number)
}

fn push_predicate(qb: &mut QueryBuilder<Sqlite>, p: &ModelPredicate) {
    match p {
        ModelPredicate::Metric { key, op, value } => {
            qb.push(
                "EXISTS (SELECT 1 FROM logged_model_metrics x WHERE x.model_id = m.model_id AND x.key = ",
            )
            .push_bind(key.clone())
            .push(" AND x.value")
            .push(num_op(*op))
            .push_bind(*value)
            .push(")");
        }
        ModelPredicate::Param { key, cond } => {
            push_kv_condition(
                qb,
                "logged_model_params x WHERE x.model_id = m.model_id",
                key,
                cond,
            );
        }
        ModelPredicate::Tag { key, cond } => {
            push_kv_condition(qb, "logged_model_tags x WHERE x.model_id = m.model_id", key, cond);
        }
        ModelPredicate::AttributeString {
            attr: ModelAttribute::Status,
            op,
            value,
        } => {
            let cmp = if *op == StrOp::Ne { " != " } else { " = " };
            qb.push("m.status").push(cmp).push_bind(status_number(value));
        }
        ModelPredicate::AttributeString { attr, op, value } => {
            push_str_cmp(qb, model_attr_column(*attr), *op, value);
        }
        ModelPredicate::AttributeIn {
            attr,
            negated,
            values,
        } => {
            qb.push(model_attr_column(*attr));
            qb.push(if *negated { " NOT IN (" } else { " IN (" });
            let mut list = qb.separated(", ");
            for v in values {
                if *attr == ModelAttribute::Status {
                    list.push_bind(status_number(v));
                } else {
                    list.push_bind(v.clone());
                }
            }
            if values.is_empty() {
                list.push("NULL");
            }
            qb.push(")");
        }
        ModelPredicate::AttributeNumber { attr, op, value } => {
            qb.push(model_attr_column(*attr))
                .push(num_op(*op))
                .push_bind(*value);
        }
    }
}

/// The SQL of the sort value of a metric: its latest row (by timestamp, then step), of the
/// named dataset when one is given.
fn push_metric_sort_value(
    qb: &mut QueryBuilder<Sqlite>,
    key: &str,
    name: Option<&str>,
    digest: Option<&str>,
) {
    qb.push("(SELECT x.value FROM logged_model_metrics x WHERE x.model_id = m.model_id AND x.key = ")
        .push_bind(key.to_owned());
    if let Some(name) = name {
        qb.push(" AND x.dataset_name = ").push_bind(name.to_owned());
    }
    if let Some(digest) = digest {
        qb.push(" AND x.dataset_digest = ").push_bind(digest.to_owned());
    }
    qb.push(" ORDER BY x.timestamp DESC, x.step DESC, x.id DESC LIMIT 1)");
}

#[async_trait]
impl ModelStore for SqliteStore {
    async fn create_logged_model(&self, new: NewLoggedModel) -> Result<LoggedModel> {
        let mut tx = self.begin_write().await?;
        let experiment = experiment_row(&mut tx, new.experiment_id).await?;
        if experiment.lifecycle_stage.0 != LifecycleStage::Active {
            return Err(StoreError::Invalid(format!(
                "The experiment {} must be in the 'active' state. Current state is {}.",
                new.experiment_id, experiment.lifecycle_stage.0
            )));
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
            return Err(StoreError::NotFound(format!(
                "No tag with key '{key}' found for model with ID '{model_id}'."
            )));
        }
        commit(tx).await
    }

    async fn search_logged_models(&self, query: LoggedModelQuery) -> Result<(Vec<LoggedModel>, bool)> {
        if query.experiment_ids.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {COLUMNS} FROM logged_models m WHERE m.lifecycle_stage = 'active' AND m.experiment_id IN ("
        ));
        let mut ids = qb.separated(", ");
        for id in &query.experiment_ids {
            ids.push_bind(*id);
        }
        qb.push(")");
        for p in &query.filter {
            qb.push(" AND ");
            push_predicate(&mut qb, p);
        }
        qb.push(" ORDER BY ");
        for o in &query.order_by {
            let dir = if o.ascending { " ASC" } else { " DESC" };
            match &o.key {
                ModelOrderKey::Attribute(attr) => {
                    qb.push(model_attr_column(*attr)).push(dir).push(", ");
                }
                // Models without the metric sort last in both directions.
                ModelOrderKey::Metric {
                    key,
                    dataset_name,
                    dataset_digest,
                } => {
                    push_metric_sort_value(&mut qb, key, dataset_name.as_deref(), dataset_digest.as_deref());
                    qb.push(" IS NULL, ");
                    push_metric_sort_value(&mut qb, key, dataset_name.as_deref(), dataset_digest.as_deref());
                    qb.push(dir).push(", ");
                }
            }
        }
        qb.push("m.creation_timestamp_ms DESC, m.model_id ASC LIMIT ")
            .push_bind(i64::from(query.limit) + 1)
            .push(" OFFSET ")
            .push_bind(i64::try_from(query.offset).unwrap_or(i64::MAX));
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
            return Err(StoreError::NotFound(format!("Run with id={run_id} not found")));
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
