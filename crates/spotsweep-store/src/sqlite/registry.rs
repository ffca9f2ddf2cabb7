//! The model registry tables: registered models, model versions, their tags and aliases.
//!
//! Every write is one transaction on the writer; reads that take several queries (a model with
//! its versions, tags and aliases) run in one read transaction, so they see one snapshot. What a
//! request means (stages, aliases, which sources are allowed) is decided by
//! [`spotsweep_core::registry`]; this file only reads and writes rows.

use std::collections::HashMap;

use async_trait::async_trait;
use spotsweep_core::registry::{Stage, VersionRef, VersionStatus};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::{SqliteStore, commit, map_err, now_ms};
use crate::model_search_sql::{model_version_search_sql, registered_model_search_sql};
use crate::rows::page;
use crate::rows::{
    REGISTERED_MODEL_COLUMNS as MODEL_COLUMNS, RegisteredModelRow as ModelRow, VERSION_COLUMNS, VERSIONS,
    VersionRow,
};
use crate::shared_models::{
    ReferencedVersion, SourceLookups, alias_not_found, last_value_per_key, latest_version_not_found,
    logged_model_not_found, registered_model_exists, registered_model_not_found as model_not_found,
    resolve_source, stage_version_not_found, version_not_found,
};
use crate::{
    KeyValue, ModelAlias, ModelVersion, ModelVersionQuery, NewModelVersion, NewRegisteredModel, Page,
    RegisteredModel, RegisteredModelQuery, RegistryStore, Result, StoreError,
};

/// The registered model of this name.
async fn model_row(conn: &mut SqliteConnection, name: &str) -> Result<ModelRow> {
    let sql = format!("SELECT {MODEL_COLUMNS} FROM registered_models m WHERE m.name = ?");
    sqlx::query_as::<_, ModelRow>(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .ok_or_else(|| model_not_found(name))
}

/// A live version of a registered model.
async fn version_row(conn: &mut SqliteConnection, model: &ModelRow, version: i64) -> Result<VersionRow> {
    let sql =
        format!("SELECT {VERSION_COLUMNS} FROM {VERSIONS} AND v.registered_model_id = ? AND v.version = ?");
    sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(sql))
        .bind(model.id)
        .bind(version)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .ok_or_else(|| version_not_found(&model.name, version))
}

/// The live version a reference means.
async fn resolve_row(
    conn: &mut SqliteConnection,
    model: &ModelRow,
    reference: &VersionRef,
) -> Result<VersionRow> {
    let highest = |stage: Option<Stage>| {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {VERSION_COLUMNS} FROM {VERSIONS}"));
        qb.push(" AND v.registered_model_id = ").push_bind(model.id);
        if let Some(stage) = stage {
            qb.push(" AND v.current_stage = ").push_bind(stage.as_str());
        }
        qb.push(" ORDER BY v.version DESC LIMIT 1");
        qb
    };
    match reference {
        VersionRef::Number(n) => version_row(conn, model, *n).await,
        VersionRef::Latest => highest(None)
            .build_query_as::<VersionRow>()
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?
            .ok_or_else(|| latest_version_not_found(&model.name)),
        VersionRef::Stage(stage) => highest(Some(*stage))
            .build_query_as::<VersionRow>()
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?
            .ok_or_else(|| stage_version_not_found(&model.name, *stage)),
        VersionRef::Alias(alias) => {
            let version: Option<(i64,)> = sqlx::query_as(
                "SELECT version FROM registered_model_aliases WHERE registered_model_id = ? AND alias = ?",
            )
            .bind(model.id)
            .bind(alias)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
            let (version,) = version.ok_or_else(|| alias_not_found(alias))?;
            version_row(conn, model, version).await
        }
    }
}

/// `[[model key, version], ...]` as JSON, to pass a set of versions as one bound parameter.
fn json_version_keys(rows: &[VersionRow]) -> String {
    let keys: Vec<[i64; 2]> = rows.iter().map(|r| [r.registered_model_id, r.version]).collect();
    serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into())
}

/// Turns rows into versions with their tags, and with their aliases when `with_aliases`.
async fn load_versions(
    conn: &mut SqliteConnection,
    rows: Vec<VersionRow>,
    with_aliases: bool,
) -> Result<Vec<ModelVersion>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let keys = json_version_keys(&rows);
    let tag_rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "SELECT t.registered_model_id, t.version, t.key, t.value FROM json_each(?) k \
         JOIN model_version_tags t ON t.registered_model_id = k.value ->> 0 AND t.version = k.value ->> 1 \
         ORDER BY t.key",
    )
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let mut tags: HashMap<(i64, i64), Vec<KeyValue>> = HashMap::new();
    for (model, version, key, value) in tag_rows {
        tags.entry((model, version))
            .or_default()
            .push(KeyValue { key, value });
    }
    let mut aliases: HashMap<(i64, i64), Vec<String>> = HashMap::new();
    if with_aliases {
        let alias_rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT a.registered_model_id, a.version, a.alias FROM json_each(?) k \
             JOIN registered_model_aliases a ON a.registered_model_id = k.value ->> 0 AND a.version = k.value ->> 1 \
             ORDER BY a.alias",
        )
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        for (model, version, alias) in alias_rows {
            aliases.entry((model, version)).or_default().push(alias);
        }
    }
    rows.into_iter()
        .map(|row| {
            let key = (row.registered_model_id, row.version);
            let mut version = row.into_version()?;
            version.tags = tags.remove(&key).unwrap_or_default();
            version.aliases = aliases.remove(&key).unwrap_or_default();
            Ok(version)
        })
        .collect()
}

/// One version with its tags and aliases.
async fn load_version(conn: &mut SqliteConnection, row: VersionRow) -> Result<ModelVersion> {
    load_versions(conn, vec![row], true)
        .await?
        .pop()
        .ok_or_else(|| StoreError::NotFound("the model version disappeared".into()))
}

/// The highest live version in each stage of the given models, by model then version number.
async fn latest_version_rows(conn: &mut SqliteConnection, model_ids: &[i64]) -> Result<Vec<VersionRow>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM {VERSIONS} \
         AND v.registered_model_id IN (SELECT value FROM json_each(?)) \
         AND v.version = (SELECT MAX(w.version) FROM model_versions w \
             WHERE w.registered_model_id = v.registered_model_id AND w.current_stage = v.current_stage \
             AND w.deleted_timestamp IS NULL) \
         ORDER BY v.registered_model_id, v.version"
    );
    sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(sql))
        .bind(serde_json::to_string(model_ids).unwrap_or_else(|_| "[]".into()))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)
}

/// Turns model rows into registered models with their latest versions, tags and aliases.
async fn load_models(conn: &mut SqliteConnection, rows: Vec<ModelRow>) -> Result<Vec<RegisteredModel>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let ids_json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
    let mut latest: HashMap<i64, Vec<ModelVersion>> = HashMap::new();
    let latest_rows = latest_version_rows(conn, &ids).await?;
    let model_of: Vec<i64> = latest_rows.iter().map(|r| r.registered_model_id).collect();
    for (model, version) in model_of
        .into_iter()
        .zip(load_versions(conn, latest_rows, false).await?)
    {
        latest.entry(model).or_default().push(version);
    }
    let tag_rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT registered_model_id, key, value FROM registered_model_tags \
         WHERE registered_model_id IN (SELECT value FROM json_each(?)) ORDER BY registered_model_id, key",
    )
    .bind(&ids_json)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let mut tags: HashMap<i64, Vec<KeyValue>> = HashMap::new();
    for (model, key, value) in tag_rows {
        tags.entry(model).or_default().push(KeyValue { key, value });
    }
    let alias_rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT registered_model_id, alias, version FROM registered_model_aliases \
         WHERE registered_model_id IN (SELECT value FROM json_each(?)) ORDER BY registered_model_id, alias",
    )
    .bind(&ids_json)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let mut aliases: HashMap<i64, Vec<ModelAlias>> = HashMap::new();
    for (model, alias, version) in alias_rows {
        aliases
            .entry(model)
            .or_default()
            .push(ModelAlias { alias, version });
    }
    Ok(rows
        .into_iter()
        .map(|row| RegisteredModel {
            latest_versions: latest.remove(&row.id).unwrap_or_default(),
            tags: tags.remove(&row.id).unwrap_or_default(),
            aliases: aliases.remove(&row.id).unwrap_or_default(),
            name: row.name,
            creation_timestamp: row.creation_timestamp,
            last_updated_timestamp: row.last_updated_timestamp,
            description: row.description,
        })
        .collect())
}

async fn load_model(conn: &mut SqliteConnection, row: ModelRow) -> Result<RegisteredModel> {
    load_models(conn, vec![row])
        .await?
        .pop()
        .ok_or_else(|| StoreError::NotFound("the registered model disappeared".into()))
}

async fn touch_model(conn: &mut SqliteConnection, model_id: i64, now: i64) -> Result<()> {
    sqlx::query("UPDATE registered_models SET last_updated_timestamp = ? WHERE id = ?")
        .bind(now)
        .bind(model_id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// An active logged model's artifact root and source run (`''` for none), straight from the
/// logged-models table.
async fn logged_model(conn: &mut SqliteConnection, model_id: &str) -> Result<(String, String)> {
    sqlx::query_as("SELECT artifact_uri, source_run_id FROM logged_models WHERE model_id = ? AND lifecycle_stage = 'active'")
        .bind(model_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .ok_or_else(|| logged_model_not_found(model_id))
}

/// A run's artifact root, if the run exists.
async fn run_artifact_root(conn: &mut SqliteConnection, run_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT artifact_uri FROM runs WHERE run_uuid = ?")
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(row.map(|(root,)| root))
}

impl SourceLookups for SqliteConnection {
    async fn logged_model(&mut self, model_id: &str) -> Result<(String, String)> {
        logged_model(self, model_id).await
    }

    async fn registered_version(&mut self, name: &str, reference: &VersionRef) -> Result<ReferencedVersion> {
        let model = model_row(self, name).await?;
        let row = resolve_row(self, &model, reference).await?;
        Ok(ReferencedVersion {
            name: model.name,
            version: row.version,
            storage_location: row.storage_location,
            run_id: row.run_id,
            model_id: row.model_id,
        })
    }

    async fn run_artifact_root(&mut self, run_id: &str) -> Result<Option<String>> {
        run_artifact_root(self, run_id).await
    }
}

#[async_trait]
impl RegistryStore for SqliteStore {
    async fn create_registered_model(&self, new: NewRegisteredModel) -> Result<RegisteredModel> {
        let mut tx = self.begin_write().await?;
        let taken: Option<(i64,)> = sqlx::query_as("SELECT id FROM registered_models WHERE name = ?")
            .bind(&new.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if taken.is_some() {
            return Err(registered_model_exists(&new.name));
        }
        let now = now_ms();
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO registered_models (name, description, creation_timestamp, last_updated_timestamp) \
             VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(&new.name)
        .bind(&new.description)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut tags: Vec<KeyValue> = last_value_per_key(&new.tags).into_iter().cloned().collect();
        for tag in &tags {
            sqlx::query(
                "INSERT INTO registered_model_tags (registered_model_id, key, value) VALUES (?, ?, ?)",
            )
            .bind(id)
            .bind(&tag.key)
            .bind(&tag.value)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        commit(tx).await?;
        tags.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(RegisteredModel {
            name: new.name,
            creation_timestamp: now,
            last_updated_timestamp: now,
            description: new.description,
            latest_versions: vec![],
            tags,
            aliases: vec![],
        })
    }

    async fn get_registered_model(&self, name: &str) -> Result<RegisteredModel> {
        let mut tx = self.reader.begin().await.map_err(map_err)?;
        let row = model_row(&mut tx, name).await?;
        load_model(&mut tx, row).await
    }

    async fn update_registered_model(
        &self,
        name: &str,
        description: Option<String>,
    ) -> Result<RegisteredModel> {
        let mut tx = self.begin_write().await?;
        let row = model_row(&mut tx, name).await?;
        sqlx::query("UPDATE registered_models SET description = ?, last_updated_timestamp = ? WHERE id = ?")
            .bind(&description)
            .bind(now_ms())
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let row = model_row(&mut tx, name).await?;
        let model = load_model(&mut tx, row).await?;
        commit(tx).await?;
        Ok(model)
    }

    async fn rename_registered_model(&self, name: &str, new_name: &str) -> Result<RegisteredModel> {
        let mut tx = self.begin_write().await?;
        let row = model_row(&mut tx, name).await?;
        if new_name != name {
            let taken: Option<(i64,)> = sqlx::query_as("SELECT id FROM registered_models WHERE name = ?")
                .bind(new_name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            if taken.is_some() {
                return Err(registered_model_exists(new_name));
            }
        }
        let now = now_ms();
        sqlx::query("UPDATE registered_models SET name = ?, last_updated_timestamp = ? WHERE id = ?")
            .bind(new_name)
            .bind(now)
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        // The reference counts a rename as an update of every version (their name changed).
        sqlx::query("UPDATE model_versions SET last_updated_timestamp = ? WHERE registered_model_id = ?")
            .bind(now)
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let row = model_row(&mut tx, new_name).await?;
        let model = load_model(&mut tx, row).await?;
        commit(tx).await?;
        Ok(model)
    }

    async fn delete_registered_model(&self, name: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let row = model_row(&mut tx, name).await?;
        // Versions, their tags and the aliases go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM registered_models WHERE id = ?")
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await
    }

    async fn search_registered_models(&self, query: &RegisteredModelQuery) -> Result<Page<RegisteredModel>> {
        let mut tx = self.reader.begin().await.map_err(map_err)?;
        let rows: Vec<ModelRow> = registered_model_search_sql::<Sqlite>(query)
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let (rows, next_offset) = page(rows, query.limit, query.offset);
        let items = load_models(&mut tx, rows).await?;
        Ok(Page { items, next_offset })
    }

    async fn set_registered_model_tag(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let row = model_row(&mut tx, name).await?;
        sqlx::query(
            "INSERT INTO registered_model_tags (registered_model_id, key, value) VALUES (?, ?, ?) \
             ON CONFLICT (registered_model_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(row.id)
        .bind(key)
        .bind(value)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        commit(tx).await
    }

    async fn delete_registered_model_tag(&self, name: &str, key: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let row = model_row(&mut tx, name).await?;
        sqlx::query("DELETE FROM registered_model_tags WHERE registered_model_id = ? AND key = ?")
            .bind(row.id)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await
    }

    async fn set_alias(&self, name: &str, alias: &str, version: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let model = model_row(&mut tx, name).await?;
        version_row(&mut tx, &model, version).await?;
        sqlx::query(
            "INSERT INTO registered_model_aliases (registered_model_id, alias, version) VALUES (?, ?, ?) \
             ON CONFLICT (registered_model_id, alias) DO UPDATE SET version = excluded.version",
        )
        .bind(model.id)
        .bind(alias)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        commit(tx).await
    }

    async fn delete_alias(&self, name: &str, alias: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let model = model_row(&mut tx, name).await?;
        sqlx::query("DELETE FROM registered_model_aliases WHERE registered_model_id = ? AND alias = ?")
            .bind(model.id)
            .bind(alias)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await
    }

    async fn resolve_version(&self, name: &str, reference: &VersionRef) -> Result<ModelVersion> {
        let mut tx = self.reader.begin().await.map_err(map_err)?;
        let model = model_row(&mut tx, name).await?;
        let row = resolve_row(&mut tx, &model, reference).await?;
        load_version(&mut tx, row).await
    }

    async fn latest_versions(&self, name: &str, stages: &[Stage]) -> Result<Vec<ModelVersion>> {
        let mut tx = self.reader.begin().await.map_err(map_err)?;
        let model = model_row(&mut tx, name).await?;
        let mut rows = latest_version_rows(&mut tx, &[model.id]).await?;
        if !stages.is_empty() {
            rows.retain(|r| Stage::from_stored(&r.current_stage).is_some_and(|s| stages.contains(&s)));
        }
        load_versions(&mut tx, rows, true).await
    }

    async fn create_model_version(&self, new: NewModelVersion) -> Result<ModelVersion> {
        let mut tx = self.begin_write().await?;
        let model = model_row(&mut tx, &new.name).await?;
        let resolved = resolve_source(&mut *tx, &new).await?;
        // Deleted versions keep their rows, so their numbers are never handed out again. The
        // single writer makes this read-then-insert safe.
        let (version,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE registered_model_id = ?",
        )
        .bind(model.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO model_versions (registered_model_id, version, creation_timestamp, last_updated_timestamp, \
             description, source, storage_location, run_id, model_id, run_link, current_stage, status) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(model.id)
        .bind(version)
        .bind(now)
        .bind(now)
        .bind(&new.description)
        .bind(&resolved.source)
        .bind(&resolved.storage_location)
        .bind(resolved.run_id.as_deref().unwrap_or(""))
        .bind(&resolved.model_id)
        .bind(new.run_link.as_deref().unwrap_or(""))
        .bind(Stage::None.as_str())
        .bind(VersionStatus::Ready.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        for tag in last_value_per_key(&new.tags) {
            sqlx::query("INSERT INTO model_version_tags (registered_model_id, version, key, value) VALUES (?, ?, ?, ?)")
                .bind(model.id)
                .bind(version)
                .bind(&tag.key)
                .bind(&tag.value)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        touch_model(&mut tx, model.id, now).await?;
        let row = version_row(&mut tx, &model, version).await?;
        let created = load_version(&mut tx, row).await?;
        commit(tx).await?;
        Ok(created)
    }

    async fn update_model_version(
        &self,
        name: &str,
        version: i64,
        description: Option<String>,
    ) -> Result<ModelVersion> {
        let mut tx = self.begin_write().await?;
        let model = model_row(&mut tx, name).await?;
        version_row(&mut tx, &model, version).await?;
        sqlx::query(
            "UPDATE model_versions SET description = ?, last_updated_timestamp = ? \
             WHERE registered_model_id = ? AND version = ?",
        )
        .bind(&description)
        .bind(now_ms())
        .bind(model.id)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let row = version_row(&mut tx, &model, version).await?;
        let updated = load_version(&mut tx, row).await?;
        commit(tx).await?;
        Ok(updated)
    }

    async fn transition_model_version_stage(
        &self,
        name: &str,
        version: i64,
        stage: Stage,
        archive_existing_versions: bool,
    ) -> Result<ModelVersion> {
        let mut tx = self.begin_write().await?;
        let model = model_row(&mut tx, name).await?;
        version_row(&mut tx, &model, version).await?;
        let now = now_ms();
        if archive_existing_versions {
            sqlx::query(
                "UPDATE model_versions SET current_stage = ?, last_updated_timestamp = ? \
                 WHERE registered_model_id = ? AND version != ? AND current_stage = ? AND deleted_timestamp IS NULL",
            )
            .bind(Stage::Archived.as_str())
            .bind(now)
            .bind(model.id)
            .bind(version)
            .bind(stage.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        sqlx::query(
            "UPDATE model_versions SET current_stage = ?, last_updated_timestamp = ? \
             WHERE registered_model_id = ? AND version = ?",
        )
        .bind(stage.as_str())
        .bind(now)
        .bind(model.id)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        touch_model(&mut tx, model.id, now).await?;
        let row = version_row(&mut tx, &model, version).await?;
        let moved = load_version(&mut tx, row).await?;
        commit(tx).await?;
        Ok(moved)
    }

    async fn delete_model_version(&self, name: &str, version: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let model = model_row(&mut tx, name).await?;
        version_row(&mut tx, &model, version).await?;
        let now = now_ms();
        sqlx::query("DELETE FROM registered_model_aliases WHERE registered_model_id = ? AND version = ?")
            .bind(model.id)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("DELETE FROM model_version_tags WHERE registered_model_id = ? AND version = ?")
            .bind(model.id)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        // The row stays as a tombstone that reserves the number; what it said is forgotten.
        sqlx::query(
            "UPDATE model_versions SET deleted_timestamp = ?1, last_updated_timestamp = ?1, description = NULL, \
             source = '', storage_location = '', run_id = '', model_id = NULL, run_link = '' \
             WHERE registered_model_id = ?2 AND version = ?3",
        )
        .bind(now)
        .bind(model.id)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        touch_model(&mut tx, model.id, now).await?;
        commit(tx).await
    }

    async fn search_model_versions(&self, query: &ModelVersionQuery) -> Result<Page<ModelVersion>> {
        let mut tx = self.reader.begin().await.map_err(map_err)?;
        let rows: Vec<VersionRow> = model_version_search_sql::<Sqlite>(query)
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let (rows, next_offset) = page(rows, query.limit, query.offset);
        let items = load_versions(&mut tx, rows, false).await?;
        Ok(Page { items, next_offset })
    }

    async fn set_model_version_tag(&self, name: &str, version: i64, key: &str, value: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let model = model_row(&mut tx, name).await?;
        version_row(&mut tx, &model, version).await?;
        sqlx::query(
            "INSERT INTO model_version_tags (registered_model_id, version, key, value) VALUES (?, ?, ?, ?) \
             ON CONFLICT (registered_model_id, version, key) DO UPDATE SET value = excluded.value",
        )
        .bind(model.id)
        .bind(version)
        .bind(key)
        .bind(value)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        commit(tx).await
    }

    async fn delete_model_version_tag(&self, name: &str, version: i64, key: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let model = model_row(&mut tx, name).await?;
        version_row(&mut tx, &model, version).await?;
        sqlx::query(
            "DELETE FROM model_version_tags WHERE registered_model_id = ? AND version = ? AND key = ?",
        )
        .bind(model.id)
        .bind(version)
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        commit(tx).await
    }
}
