//! API token records.

use async_trait::async_trait;

use super::{SqliteStore, commit, map_err, now_ms};
use crate::rows::TokenRow;
use crate::{ApiToken, NewToken, Result, StoreError, TokenRole, TokenScope, TokenStore};

async fn insert(conn: &mut sqlx::SqliteConnection, new: NewToken<'_>) -> Result<ApiToken> {
    let token = ApiToken {
        id: uuid::Uuid::new_v4().simple().to_string(),
        name: new.name.to_owned(),
        role: new.role,
        scope: new.scope,
        created_at: now_ms(),
        expires_at: new.expires_at,
    };
    sqlx::query(
        "INSERT INTO api_tokens (id, name, token_hash, role, scope, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&token.id)
    .bind(&token.name)
    .bind(new.hash)
    .bind(token.role.as_str())
    .bind(token.scope.as_str())
    .bind(token.created_at)
    .bind(token.expires_at)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(token)
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(&self, new: NewToken<'_>) -> Result<ApiToken> {
        let mut tx = self.begin_write().await?;
        let token = insert(&mut tx, new).await?;
        commit(tx).await?;
        Ok(token)
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, name, role, scope, created_at, expires_at FROM api_tokens \
             WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1) ORDER BY created_at, id",
        )
        .bind(now_ms())
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.into_iter().map(ApiToken::try_from).collect()
    }

    async fn get_token(&self, id: &str) -> Result<ApiToken> {
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT id, name, role, scope, created_at, expires_at FROM api_tokens \
             WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1) AND id = ?2",
        )
        .bind(now_ms())
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        row.ok_or_else(|| StoreError::NotFound(format!("no live token with id '{id}'")))?
            .try_into()
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

    async fn live_tokens(&self) -> Result<Vec<(String, ApiToken)>> {
        #[derive(sqlx::FromRow)]
        struct Live {
            token_hash: String,
            #[sqlx(flatten)]
            token: TokenRow,
        }
        let rows: Vec<Live> = sqlx::query_as(
            "SELECT token_hash, id, name, role, scope, created_at, expires_at FROM api_tokens \
             WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1)",
        )
        .bind(now_ms())
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|r| Ok((r.token_hash, r.token.try_into()?)))
            .collect()
    }

    async fn reset_admin_token(&self, token_hash: &str) -> Result<ApiToken> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE role = 'admin' AND revoked_at IS NULL")
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let token = insert(
            &mut tx,
            NewToken {
                name: "admin",
                hash: token_hash,
                role: TokenRole::Admin,
                scope: TokenScope::Write,
                expires_at: None,
            },
        )
        .await?;
        commit(tx).await?;
        Ok(token)
    }
}
