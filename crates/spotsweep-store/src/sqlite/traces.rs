//! MLflow 3's traces: one row each with its tags and metadata. The spans never pass through the
//! database: the client uploads them as `traces.json` to the artifact location this store
//! assigns (the tag `mlflow.artifactLocation`).

use async_trait::async_trait;
use sqlx::{Sqlite, SqliteConnection};

use super::tracking::experiment_row;
use super::{SqliteStore, commit, map_err};
use crate::model_search_sql::trace_search_sql;
use crate::rows::{TRACE_COLUMNS as COLUMNS, TraceRow};
use crate::shared_models::{
    ARTIFACT_LOCATION_TAG, experiment_not_active, trace_in_other_experiment, trace_not_found as not_found,
    trace_tag_not_found,
};
use crate::{KeyValue, LifecycleStage, Result, StoreError, TraceDeletion, TraceInfo, TraceQuery, TraceStore};

async fn exists(conn: &mut SqliteConnection, trace_id: &str) -> Result<()> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM traces WHERE trace_id = ?")
        .bind(trace_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.map(|_| ()).ok_or_else(|| not_found(trace_id))
}

async fn put(conn: &mut SqliteConnection, table: &str, trace_id: &str, kv: &KeyValue) -> Result<()> {
    // `table` is one of two fixed names chosen by this module.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (trace_id, key, value) VALUES (?, ?, ?) \
         ON CONFLICT (trace_id, key) DO UPDATE SET value = excluded.value"
    )))
    .bind(trace_id)
    .bind(&kv.key)
    .bind(&kv.value)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

impl SqliteStore {
    async fn with_tags(&self, rows: Vec<TraceRow>) -> Result<Vec<TraceInfo>> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let read = |table: &'static str| {
                let id = r.trace_id.clone();
                async move {
                    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT key, value FROM {table} WHERE trace_id = ? ORDER BY key"
                    )))
                    .bind(id)
                    .fetch_all(&self.reader)
                    .await
                    .map_err(map_err)?;
                    Ok::<_, StoreError>(
                        rows.into_iter()
                            .map(|(key, value)| KeyValue { key, value })
                            .collect::<Vec<_>>(),
                    )
                }
            };
            let metadata = read("trace_metadata").await?;
            let tags = read("trace_tags").await?;
            out.push(r.into_trace(metadata, tags));
        }
        Ok(out)
    }
}

#[async_trait]
impl TraceStore for SqliteStore {
    async fn upsert_trace(&self, info: TraceInfo) -> Result<TraceInfo> {
        let mut tx = self.begin_write().await?;
        let experiment = experiment_row(&mut tx, info.experiment_id).await?;
        if experiment.lifecycle_stage.0 != LifecycleStage::Active {
            return Err(experiment_not_active(
                info.experiment_id,
                experiment.lifecycle_stage.0,
            ));
        }
        // A trace sent again (the client does, when it ends) keeps its experiment.
        let earlier: Option<(i64,)> = sqlx::query_as("SELECT experiment_id FROM traces WHERE trace_id = ?")
            .bind(&info.trace_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if earlier.is_some_and(|(e,)| e != info.experiment_id) {
            return Err(trace_in_other_experiment(&info.trace_id));
        }
        sqlx::query(
            "INSERT INTO traces (trace_id, experiment_id, client_request_id, request_time_ms, \
             execution_duration_ms, state, request_preview, response_preview) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (trace_id) DO UPDATE SET client_request_id = excluded.client_request_id, \
             request_time_ms = excluded.request_time_ms, execution_duration_ms = excluded.execution_duration_ms, \
             state = excluded.state, request_preview = excluded.request_preview, \
             response_preview = excluded.response_preview",
        )
        .bind(&info.trace_id)
        .bind(info.experiment_id)
        .bind(&info.client_request_id)
        .bind(info.request_time_ms)
        .bind(info.execution_duration_ms)
        .bind(&info.state)
        .bind(&info.request_preview)
        .bind(&info.response_preview)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        for kv in &info.metadata {
            put(&mut tx, "trace_metadata", &info.trace_id, kv).await?;
        }
        for kv in &info.tags {
            put(&mut tx, "trace_tags", &info.trace_id, kv).await?;
        }
        let location = KeyValue {
            key: ARTIFACT_LOCATION_TAG.into(),
            value: format!(
                "{}/traces/{}/artifacts",
                experiment.artifact_location.trim_end_matches('/'),
                info.trace_id
            ),
        };
        put(&mut tx, "trace_tags", &info.trace_id, &location).await?;
        commit(tx).await?;
        self.get_trace(&info.trace_id).await
    }

    async fn get_trace(&self, trace_id: &str) -> Result<TraceInfo> {
        let row: Option<TraceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM traces t WHERE t.trace_id = ?"
        )))
        .bind(trace_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        let row = row.ok_or_else(|| not_found(trace_id))?;
        Ok(self.with_tags(vec![row]).await?.remove(0))
    }

    async fn search_traces(&self, query: TraceQuery) -> Result<(Vec<TraceInfo>, bool)> {
        if query.experiment_ids.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut qb = trace_search_sql::<Sqlite>(&query);
        let mut rows: Vec<TraceRow> = qb
            .build_query_as()
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        Ok((self.with_tags(rows).await?, more))
    }

    async fn set_trace_tag(&self, trace_id: &str, key: &str, value: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        exists(&mut tx, trace_id).await?;
        put(
            &mut tx,
            "trace_tags",
            trace_id,
            &KeyValue {
                key: key.to_owned(),
                value: value.to_owned(),
            },
        )
        .await?;
        commit(tx).await
    }

    async fn delete_trace_tag(&self, trace_id: &str, key: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        exists(&mut tx, trace_id).await?;
        let done = sqlx::query("DELETE FROM trace_tags WHERE trace_id = ? AND key = ?")
            .bind(trace_id)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(trace_tag_not_found(trace_id, key));
        }
        commit(tx).await
    }

    async fn delete_traces(&self, experiment_id: i64, which: TraceDeletion) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let ids: Vec<String> = match which {
            TraceDeletion::Ids(ids) => ids,
            TraceDeletion::OlderThan {
                max_timestamp_ms,
                max,
            } => {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT trace_id FROM traces WHERE experiment_id = ? AND request_time_ms <= ? \
                     ORDER BY request_time_ms, trace_id LIMIT ?",
                )
                .bind(experiment_id)
                .bind(max_timestamp_ms)
                .bind(i64::from(max))
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
                rows.into_iter().map(|(id,)| id).collect()
            }
        };
        let mut deleted = 0;
        for id in ids {
            // Tags and metadata go with it (ON DELETE CASCADE).
            let done = sqlx::query("DELETE FROM traces WHERE trace_id = ? AND experiment_id = ?")
                .bind(&id)
                .bind(experiment_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            deleted += done.rows_affected();
        }
        commit(tx).await?;
        Ok(deleted)
    }
}
