//! The model registry on PostgreSQL: registered models, model versions, their tags and aliases.
//!
//! Several daemons may write one model at once, so every write locks the registered model's row
//! first (`SELECT ... FOR UPDATE`): writes to one model take turns, writes to different models
//! do not wait for each other. That is what makes "1 + the highest version ever" safe to hand
//! out, an alias never point at a version deleted meanwhile, and archiving the other versions
//! of a stage see every version. Reads of several statements run in one snapshot
//! ([`PgStore::snapshot`]). What a request means (stages, aliases, which sources are allowed)
//! is [`spotsweep_core::registry`]'s; the rows are read as SQLite's are ([`crate::rows`]).

use std::collections::HashMap;

use async_trait::async_trait;
use spotsweep_core::registry::{Stage, VersionRef, VersionStatus};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::{PgStore, commit, map_err};
use crate::model_search_sql::{model_version_search_sql, registered_model_search_sql};
use crate::rows::page;
use crate::rows::{REGISTERED_MODEL_COLUMNS, RegisteredModelRow, VERSION_COLUMNS, VERSIONS, VersionRow};
use crate::shared_models::{
    ReferencedVersion, SourceLookups, alias_not_found, last_value_per_key, latest_version_not_found,
    logged_model_not_found, registered_model_exists, registered_model_not_found, resolve_source,
    stage_version_not_found, version_not_found,
};
use crate::{
    KeyValue, ModelAlias, ModelVersion, ModelVersionQuery, NewModelVersion, NewRegisteredModel, Page,
    RegisteredModel, RegisteredModelQuery, RegistryStore, Result, StoreError, now_ms,
};

/// The registered model of this name; with `lock`, its row stays locked until the transaction
/// ends (every write takes it, see the module's doc).
async fn model_row(conn: &mut PgConnection, name: &str, lock: bool) -> Result<RegisteredModelRow> {
    let sql = format!(
        "SELECT {REGISTERED_MODEL_COLUMNS} FROM registered_models m WHERE m.name = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query_as::<_, RegisteredModelRow>(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .ok_or_else(|| registered_model_not_found(name))
}

/// A live version of a registered model.
async fn version_row(
    conn: &mut PgConnection,
    model: &RegisteredModelRow,
    version: i64,
) -> Result<VersionRow> {
    let sql =
        format!("SELECT {VERSION_COLUMNS} FROM {VERSIONS} AND v.registered_model_id = $1 AND v.version = $2");
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
    conn: &mut PgConnection,
    model: &RegisteredModelRow,
    reference: &VersionRef,
) -> Result<VersionRow> {
    let highest = |stage: Option<Stage>| {
        let mut qb: QueryBuilder<Postgres> =
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
                "SELECT version FROM registered_model_aliases WHERE registered_model_id = $1 AND alias = $2",
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

/// Turns rows into versions with their tags, and with their aliases when `with_aliases`.
async fn load_versions(
    conn: &mut PgConnection,
    rows: Vec<VersionRow>,
    with_aliases: bool,
) -> Result<Vec<ModelVersion>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    // The set of (model, version) keys as two arrays, unnested side by side.
    let models: Vec<i64> = rows.iter().map(|r| r.registered_model_id).collect();
    let versions: Vec<i64> = rows.iter().map(|r| r.version).collect();
    let tag_rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "SELECT t.registered_model_id, t.version, t.key, t.value \
         FROM unnest($1::BIGINT[], $2::BIGINT[]) AS k (registered_model_id, version) \
         JOIN model_version_tags t ON t.registered_model_id = k.registered_model_id AND t.version = k.version \
         ORDER BY t.key",
    )
    .bind(&models)
    .bind(&versions)
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
            "SELECT a.registered_model_id, a.version, a.alias \
             FROM unnest($1::BIGINT[], $2::BIGINT[]) AS k (registered_model_id, version) \
             JOIN registered_model_aliases a ON a.registered_model_id = k.registered_model_id AND a.version = k.version \
             ORDER BY a.alias",
        )
        .bind(&models)
        .bind(&versions)
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
async fn load_version(conn: &mut PgConnection, row: VersionRow) -> Result<ModelVersion> {
    load_versions(conn, vec![row], true)
        .await?
        .pop()
        .ok_or_else(|| StoreError::NotFound("the model version disappeared".into()))
}

/// The highest live version in each stage of the given models, by model then version number.
async fn latest_version_rows(conn: &mut PgConnection, model_ids: &[i64]) -> Result<Vec<VersionRow>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM {VERSIONS} \
         AND v.registered_model_id = ANY($1) \
         AND v.version = (SELECT MAX(w.version) FROM model_versions w \
             WHERE w.registered_model_id = v.registered_model_id AND w.current_stage = v.current_stage \
             AND w.deleted_timestamp IS NULL) \
         ORDER BY v.registered_model_id, v.version"
    );
    sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(sql))
        .bind(model_ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)
}

/// Turns model rows into registered models with their latest versions, tags and aliases.
async fn load_models(conn: &mut PgConnection, rows: Vec<RegisteredModelRow>) -> Result<Vec<RegisteredModel>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
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
         WHERE registered_model_id = ANY($1) ORDER BY registered_model_id, key",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let mut tags: HashMap<i64, Vec<KeyValue>> = HashMap::new();
    for (model, key, value) in tag_rows {
        tags.entry(model).or_default().push(KeyValue { key, value });
    }
    let alias_rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT registered_model_id, alias, version FROM registered_model_aliases \
         WHERE registered_model_id = ANY($1) ORDER BY registered_model_id, alias",
    )
    .bind(&ids)
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

async fn load_model(conn: &mut PgConnection, row: RegisteredModelRow) -> Result<RegisteredModel> {
    load_models(conn, vec![row])
        .await?
        .pop()
        .ok_or_else(|| StoreError::NotFound("the registered model disappeared".into()))
}

async fn touch_model(conn: &mut PgConnection, model_id: i64, now: i64) -> Result<()> {
    sqlx::query("UPDATE registered_models SET last_updated_timestamp = $1 WHERE id = $2")
        .bind(now)
        .bind(model_id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Whether a statement failed on a unique constraint: another daemon took the name between
/// the check and the write.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

impl SourceLookups for PgConnection {
    async fn logged_model(&mut self, model_id: &str) -> Result<(String, String)> {
        // FOR SHARE: the model cannot be deleted before this version that names it commits.
        sqlx::query_as(
            "SELECT artifact_uri, source_run_id FROM logged_models \
             WHERE model_id = $1 AND lifecycle_stage = 'active' FOR SHARE",
        )
        .bind(model_id)
        .fetch_optional(&mut *self)
        .await
        .map_err(map_err)?
        .ok_or_else(|| logged_model_not_found(model_id))
    }

    async fn registered_version(&mut self, name: &str, reference: &VersionRef) -> Result<ReferencedVersion> {
        let model = model_row(self, name, false).await?;
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
        let row: Option<(String,)> = sqlx::query_as("SELECT artifact_uri FROM runs WHERE run_uuid = $1")
            .bind(run_id)
            .fetch_optional(&mut *self)
            .await
            .map_err(map_err)?;
        Ok(row.map(|(root,)| root))
    }
}

#[async_trait]
impl RegistryStore for PgStore {
    async fn create_registered_model(&self, new: NewRegisteredModel) -> Result<RegisteredModel> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let now = now_ms();
        // ON CONFLICT DO NOTHING: a name taken now, or by a daemon whose insert commits while
        // this one waits on it, is the same answer.
        let id: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO registered_models (name, description, creation_timestamp, last_updated_timestamp) \
             VALUES ($1, $2, $3, $3) ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(&new.name)
        .bind(&new.description)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some((id,)) = id else {
            return Err(registered_model_exists(&new.name));
        };
        let mut tags: Vec<KeyValue> = last_value_per_key(&new.tags).into_iter().cloned().collect();
        for tag in &tags {
            sqlx::query(
                "INSERT INTO registered_model_tags (registered_model_id, key, value) VALUES ($1, $2, $3)",
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
        let mut tx = self.snapshot().await?;
        let row = model_row(&mut tx, name, false).await?;
        load_model(&mut tx, row).await
    }

    async fn update_registered_model(
        &self,
        name: &str,
        description: Option<String>,
    ) -> Result<RegisteredModel> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let row = model_row(&mut tx, name, true).await?;
        sqlx::query(
            "UPDATE registered_models SET description = $1, last_updated_timestamp = $2 WHERE id = $3",
        )
        .bind(&description)
        .bind(now_ms())
        .bind(row.id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let row = model_row(&mut tx, name, false).await?;
        let model = load_model(&mut tx, row).await?;
        commit(tx).await?;
        Ok(model)
    }

    async fn rename_registered_model(&self, name: &str, new_name: &str) -> Result<RegisteredModel> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let row = model_row(&mut tx, name, true).await?;
        if new_name != name {
            let taken: Option<(i64,)> = sqlx::query_as("SELECT id FROM registered_models WHERE name = $1")
                .bind(new_name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            if taken.is_some() {
                return Err(registered_model_exists(new_name));
            }
        }
        let now = now_ms();
        sqlx::query("UPDATE registered_models SET name = $1, last_updated_timestamp = $2 WHERE id = $3")
            .bind(new_name)
            .bind(now)
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                // The name was free when looked at, and taken by another daemon since.
                if is_unique_violation(&e) {
                    registered_model_exists(new_name)
                } else {
                    map_err(e)
                }
            })?;
        // The reference counts a rename as an update of every version (their name changed).
        sqlx::query("UPDATE model_versions SET last_updated_timestamp = $1 WHERE registered_model_id = $2")
            .bind(now)
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let row = model_row(&mut tx, new_name, false).await?;
        let model = load_model(&mut tx, row).await?;
        commit(tx).await?;
        Ok(model)
    }

    async fn delete_registered_model(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let row = model_row(&mut tx, name, true).await?;
        // Versions, their tags and the aliases go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM registered_models WHERE id = $1")
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await
    }

    async fn search_registered_models(&self, query: &RegisteredModelQuery) -> Result<Page<RegisteredModel>> {
        let mut tx = self.snapshot().await?;
        let rows: Vec<RegisteredModelRow> = registered_model_search_sql::<Postgres>(query)
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let (rows, next_offset) = page(rows, query.limit, query.offset);
        let items = load_models(&mut tx, rows).await?;
        Ok(Page { items, next_offset })
    }

    async fn set_registered_model_tag(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let row = model_row(&mut tx, name, true).await?;
        sqlx::query(
            "INSERT INTO registered_model_tags (registered_model_id, key, value) VALUES ($1, $2, $3) \
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let row = model_row(&mut tx, name, true).await?;
        sqlx::query("DELETE FROM registered_model_tags WHERE registered_model_id = $1 AND key = $2")
            .bind(row.id)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await
    }

    async fn set_alias(&self, name: &str, alias: &str, version: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let model = model_row(&mut tx, name, true).await?;
        version_row(&mut tx, &model, version).await?;
        sqlx::query(
            "INSERT INTO registered_model_aliases (registered_model_id, alias, version) VALUES ($1, $2, $3) \
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let model = model_row(&mut tx, name, true).await?;
        sqlx::query("DELETE FROM registered_model_aliases WHERE registered_model_id = $1 AND alias = $2")
            .bind(model.id)
            .bind(alias)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await
    }

    async fn resolve_version(&self, name: &str, reference: &VersionRef) -> Result<ModelVersion> {
        let mut tx = self.snapshot().await?;
        let model = model_row(&mut tx, name, false).await?;
        let row = resolve_row(&mut tx, &model, reference).await?;
        load_version(&mut tx, row).await
    }

    async fn latest_versions(&self, name: &str, stages: &[Stage]) -> Result<Vec<ModelVersion>> {
        let mut tx = self.snapshot().await?;
        let model = model_row(&mut tx, name, false).await?;
        let mut rows = latest_version_rows(&mut tx, &[model.id]).await?;
        if !stages.is_empty() {
            rows.retain(|r| Stage::from_stored(&r.current_stage).is_some_and(|s| stages.contains(&s)));
        }
        load_versions(&mut tx, rows, true).await
    }

    async fn create_model_version(&self, new: NewModelVersion) -> Result<ModelVersion> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // The lock makes "1 + the highest version ever" safe: another daemon creating a version
        // of this model waits here until this one commits, then counts it.
        let model = model_row(&mut tx, &new.name, true).await?;
        let resolved = resolve_source(&mut *tx, &new).await?;
        // Deleted versions keep their rows, so their numbers are never handed out again.
        let (version,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE registered_model_id = $1",
        )
        .bind(model.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO model_versions (registered_model_id, version, creation_timestamp, last_updated_timestamp, \
             description, source, storage_location, run_id, model_id, run_link, current_stage, status) \
             VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(model.id)
        .bind(version)
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
            sqlx::query(
                "INSERT INTO model_version_tags (registered_model_id, version, key, value) VALUES ($1, $2, $3, $4)",
            )
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let model = model_row(&mut tx, name, true).await?;
        version_row(&mut tx, &model, version).await?;
        sqlx::query(
            "UPDATE model_versions SET description = $1, last_updated_timestamp = $2 \
             WHERE registered_model_id = $3 AND version = $4",
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let model = model_row(&mut tx, name, true).await?;
        version_row(&mut tx, &model, version).await?;
        let now = now_ms();
        if archive_existing_versions {
            sqlx::query(
                "UPDATE model_versions SET current_stage = $1, last_updated_timestamp = $2 \
                 WHERE registered_model_id = $3 AND version != $4 AND current_stage = $5 \
                 AND deleted_timestamp IS NULL",
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
            "UPDATE model_versions SET current_stage = $1, last_updated_timestamp = $2 \
             WHERE registered_model_id = $3 AND version = $4",
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let model = model_row(&mut tx, name, true).await?;
        version_row(&mut tx, &model, version).await?;
        let now = now_ms();
        sqlx::query("DELETE FROM registered_model_aliases WHERE registered_model_id = $1 AND version = $2")
            .bind(model.id)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("DELETE FROM model_version_tags WHERE registered_model_id = $1 AND version = $2")
            .bind(model.id)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        // The row stays as a tombstone that reserves the number; what it said is forgotten.
        sqlx::query(
            "UPDATE model_versions SET deleted_timestamp = $1, last_updated_timestamp = $1, description = NULL, \
             source = '', storage_location = '', run_id = '', model_id = NULL, run_link = '' \
             WHERE registered_model_id = $2 AND version = $3",
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
        let mut tx = self.snapshot().await?;
        let rows: Vec<VersionRow> = model_version_search_sql::<Postgres>(query)
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let (rows, next_offset) = page(rows, query.limit, query.offset);
        let items = load_versions(&mut tx, rows, false).await?;
        Ok(Page { items, next_offset })
    }

    async fn set_model_version_tag(&self, name: &str, version: i64, key: &str, value: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let model = model_row(&mut tx, name, true).await?;
        version_row(&mut tx, &model, version).await?;
        sqlx::query(
            "INSERT INTO model_version_tags (registered_model_id, version, key, value) VALUES ($1, $2, $3, $4) \
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let model = model_row(&mut tx, name, true).await?;
        version_row(&mut tx, &model, version).await?;
        sqlx::query(
            "DELETE FROM model_version_tags WHERE registered_model_id = $1 AND version = $2 AND key = $3",
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
