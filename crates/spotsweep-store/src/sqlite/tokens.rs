//! API token records.

use async_trait::async_trait;

use super::{SqliteStore, commit, map_err, now_ms};
use crate::{ApiToken, Result, StoreError, TokenStore};

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(&self, name: &str, token_hash: &str) -> Result<ApiToken> {
        let token = ApiToken {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: name.to_owned(),
            created_at: now_ms(),
        };
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO api_tokens (id, name, token_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(&token.id)
            .bind(&token.name)
            .bind(token_hash)
            .bind(token.created_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await?;
        Ok(token)
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT id, name, created_at FROM api_tokens WHERE revoked_at IS NULL ORDER BY created_at, id",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|(id, name, created_at)| ApiToken { id, name, created_at })
            .collect())
    }

    async fn revoke_token(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no live token with id '{id}'")));
        }
        commit(tx).await?;
        Ok(())
    }

    async fn live_token_hashes(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT token_hash FROM api_tokens WHERE revoked_at IS NULL")
                .fetch_all(&self.reader)
                .await
                .map_err(map_err)?;
        Ok(rows.into_iter().map(|(h,)| h).collect())
    }
}
