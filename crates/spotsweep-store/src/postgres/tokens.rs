//! API token records on PostgreSQL.

use async_trait::async_trait;

use super::{PgStore, commit, map_err};
use crate::rows::TokenRow;
use crate::{ApiToken, NewToken, Result, StoreError, TokenRole, TokenStore, now_ms};

/// The live tokens (neither revoked nor expired at `$1`).
const LIVE: &str = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)";

async fn insert(conn: &mut sqlx::PgConnection, new: NewToken<'_>) -> Result<ApiToken> {
    let token = ApiToken {
        id: uuid::Uuid::new_v4().simple().to_string(),
        name: new.name.to_owned(),
        role: new.role,
        scope: new.scope,
        created_at: now_ms(),
        expires_at: new.expires_at,
    };
    sqlx::query(
        "INSERT INTO api_tokens (id, name, token_hash, role, scope, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
impl TokenStore for PgStore {
    async fn create_token(&self, new: NewToken<'_>) -> Result<ApiToken> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        insert(&mut conn, new).await
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        let rows: Vec<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, name, role, scope, created_at, expires_at FROM api_tokens WHERE {LIVE} \
             ORDER BY created_at, id"
        )))
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.into_iter().map(ApiToken::try_from).collect()
    }

    async fn get_token(&self, id: &str) -> Result<ApiToken> {
        let row: Option<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, name, role, scope, created_at, expires_at FROM api_tokens WHERE {LIVE} AND id = $2"
        )))
        .bind(now_ms())
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.ok_or_else(|| StoreError::NotFound(format!("no live token with id '{id}'")))?
            .try_into()
    }

    async fn revoke_token(&self, id: &str) -> Result<()> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no live token with id '{id}'")));
        }
        Ok(())
    }

    async fn live_tokens(&self) -> Result<Vec<(String, ApiToken)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            token_hash: String,
            #[sqlx(flatten)]
            token: TokenRow,
        }
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT token_hash, id, name, role, scope, created_at, expires_at FROM api_tokens WHERE {LIVE} \
             ORDER BY created_at, id"
        )))
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|r| Ok((r.token_hash, ApiToken::try_from(r.token)?)))
            .collect()
    }

    async fn reset_admin_token(&self, token_hash: &str) -> Result<ApiToken> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE role = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(TokenRole::Admin.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let token = insert(
            &mut tx,
            NewToken {
                name: "admin",
                hash: token_hash,
                role: TokenRole::Admin,
                scope: crate::TokenScope::Write,
                expires_at: None,
            },
        )
        .await?;
        commit(tx).await?;
        Ok(token)
    }
}
