//! MLflow 3's traces on PostgreSQL: one row each with its tags and metadata. The spans never
//! pass through the database: the client uploads them as `traces.json` to the artifact location
//! this store assigns (the tag `mlflow.artifactLocation`).
//!
//! A trace keeps the experiment it was first written to, even when two daemons write it at once
//! (the upsert only updates a row of the same experiment); traces are read with their tags and
//! metadata in one snapshot ([`PgStore::snapshot`]).

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres};

use super::models::active_experiment;
use super::{PgStore, commit, map_err};
use crate::model_search_sql::trace_search_sql;
use crate::rows::{TRACE_COLUMNS, TraceRow};
use crate::shared_models::{
    ARTIFACT_LOCATION_TAG, trace_in_other_experiment, trace_not_found, trace_tag_not_found,
};
use crate::{KeyValue, Result, TraceDeletion, TraceInfo, TraceQuery, TraceStore};

/// Locks a trace's row for a change of its tags; `NotFound` when there is none.
async fn lock_trace(conn: &mut PgConnection, trace_id: &str) -> Result<()> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT 1::BIGINT FROM traces WHERE trace_id = $1 FOR UPDATE")
        .bind(trace_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.map(|_| ()).ok_or_else(|| trace_not_found(trace_id))
}

/// Sets (inserts or overwrites) one row of `trace_tags` or `trace_metadata`.
async fn put(conn: &mut PgConnection, table: Table, trace_id: &str, kv: &KeyValue) -> Result<()> {
    let sql = match table {
        Table::Tags => {
            "INSERT INTO trace_tags (trace_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (trace_id, key) DO UPDATE SET value = excluded.value"
        }
        Table::Metadata => {
            "INSERT INTO trace_metadata (trace_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (trace_id, key) DO UPDATE SET value = excluded.value"
        }
    };
    sqlx::query(sql)
        .bind(trace_id)
        .bind(&kv.key)
        .bind(&kv.value)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// A trace's key-value tables.
#[derive(Clone, Copy)]
enum Table {
    Tags,
    Metadata,
}

/// The traces of these rows with their metadata and tags (two queries for any number).
async fn with_tags(conn: &mut PgConnection, rows: Vec<TraceRow>) -> Result<Vec<TraceInfo>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows.iter().map(|r| r.trace_id.clone()).collect();
    let mut read = async |sql: &'static str| -> Result<HashMap<String, Vec<KeyValue>>> {
        let found: Vec<(String, String, String)> = sqlx::query_as(sql)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        let mut by_trace: HashMap<String, Vec<KeyValue>> = HashMap::new();
        for (trace_id, key, value) in found {
            by_trace
                .entry(trace_id)
                .or_default()
                .push(KeyValue { key, value });
        }
        Ok(by_trace)
    };
    let mut metadata =
        read("SELECT trace_id, key, value FROM trace_metadata WHERE trace_id = ANY($1) ORDER BY key").await?;
    let mut tags =
        read("SELECT trace_id, key, value FROM trace_tags WHERE trace_id = ANY($1) ORDER BY key").await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let metadata = metadata.remove(&row.trace_id).unwrap_or_default();
            let tags = tags.remove(&row.trace_id).unwrap_or_default();
            row.into_trace(metadata, tags)
        })
        .collect())
}

/// One trace with its metadata and tags, as the caller's transaction sees it.
async fn read_trace(conn: &mut PgConnection, trace_id: &str) -> Result<TraceInfo> {
    let row: Option<TraceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TRACE_COLUMNS} FROM traces t WHERE t.trace_id = $1"
    )))
    .bind(trace_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    let row = row.ok_or_else(|| trace_not_found(trace_id))?;
    with_tags(conn, vec![row])
        .await?
        .pop()
        .ok_or_else(|| trace_not_found(trace_id))
}

#[async_trait]
impl TraceStore for PgStore {
    async fn upsert_trace(&self, info: TraceInfo) -> Result<TraceInfo> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let location = active_experiment(&mut tx, info.experiment_id).await?;
        // A trace sent again (the client does, when it ends) keeps its experiment: the update
        // applies only to a row of the same one, so no row back means another experiment's.
        let written: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO traces (trace_id, experiment_id, client_request_id, request_time_ms, \
             execution_duration_ms, state, request_preview, response_preview) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (trace_id) DO UPDATE SET client_request_id = excluded.client_request_id, \
             request_time_ms = excluded.request_time_ms, execution_duration_ms = excluded.execution_duration_ms, \
             state = excluded.state, request_preview = excluded.request_preview, \
             response_preview = excluded.response_preview \
             WHERE traces.experiment_id = excluded.experiment_id RETURNING experiment_id",
        )
        .bind(&info.trace_id)
        .bind(info.experiment_id)
        .bind(&info.client_request_id)
        .bind(info.request_time_ms)
        .bind(info.execution_duration_ms)
        .bind(&info.state)
        .bind(&info.request_preview)
        .bind(&info.response_preview)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if written.is_none() {
            return Err(trace_in_other_experiment(&info.trace_id));
        }
        for kv in &info.metadata {
            put(&mut tx, Table::Metadata, &info.trace_id, kv).await?;
        }
        for kv in &info.tags {
            put(&mut tx, Table::Tags, &info.trace_id, kv).await?;
        }
        let location = KeyValue {
            key: ARTIFACT_LOCATION_TAG.into(),
            value: format!(
                "{}/traces/{}/artifacts",
                location.trim_end_matches('/'),
                info.trace_id
            ),
        };
        put(&mut tx, Table::Tags, &info.trace_id, &location).await?;
        let trace = read_trace(&mut tx, &info.trace_id).await?;
        commit(tx).await?;
        Ok(trace)
    }

    async fn get_trace(&self, trace_id: &str) -> Result<TraceInfo> {
        let mut tx = self.snapshot().await?;
        read_trace(&mut tx, trace_id).await
    }

    async fn search_traces(&self, query: TraceQuery) -> Result<(Vec<TraceInfo>, bool)> {
        if query.experiment_ids.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut tx = self.snapshot().await?;
        let mut rows: Vec<TraceRow> = trace_search_sql::<Postgres>(&query)
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        Ok((with_tags(&mut tx, rows).await?, more))
    }

    async fn set_trace_tag(&self, trace_id: &str, key: &str, value: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_trace(&mut tx, trace_id).await?;
        put(
            &mut tx,
            Table::Tags,
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_trace(&mut tx, trace_id).await?;
        let done = sqlx::query("DELETE FROM trace_tags WHERE trace_id = $1 AND key = $2")
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // One statement each: tags and metadata go with their traces (ON DELETE CASCADE). A
        // trace another daemon deletes meanwhile is counted by one of the two.
        let done = match which {
            TraceDeletion::Ids(ids) => {
                sqlx::query("DELETE FROM traces WHERE experiment_id = $1 AND trace_id = ANY($2)")
                    .bind(experiment_id)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?
            }
            TraceDeletion::OlderThan {
                max_timestamp_ms,
                max,
            } => sqlx::query(
                "DELETE FROM traces WHERE trace_id IN (SELECT trace_id FROM traces \
                 WHERE experiment_id = $1 AND request_time_ms <= $2 ORDER BY request_time_ms, trace_id LIMIT $3)",
            )
            .bind(experiment_id)
            .bind(max_timestamp_ms)
            .bind(i64::from(max))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?,
        };
        commit(tx).await?;
        Ok(done.rows_affected())
    }
}
