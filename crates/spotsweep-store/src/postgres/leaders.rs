//! Leader leases on PostgreSQL, timed by the database's clock (daemons' clocks may differ). An
//! upsert takes the role's row lock, so of daemons that try at once one wins.

use async_trait::async_trait;

use super::{PgStore, map_err};
use crate::{LeaderStore, Result};

/// The database's time, in milliseconds since the epoch.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

#[async_trait]
impl LeaderStore for PgStore {
    async fn lead(&self, role: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let row: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO leaders (role, holder, expires_at) VALUES ($1, $2, {NOW_MS} + $3) \
             ON CONFLICT (role) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
             WHERE leaders.holder = EXCLUDED.holder OR leaders.expires_at <= {NOW_MS} \
             RETURNING holder"
        )))
        .bind(role)
        .bind(holder)
        .bind(ttl_ms.max(0))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(row.is_some())
    }

    async fn resign(&self, role: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leaders WHERE role = $1 AND holder = $2")
            .bind(role)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn leader(&self, role: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT holder FROM leaders WHERE role = $1 AND expires_at > {NOW_MS}"
        )))
        .bind(role)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(row.map(|r| r.0))
    }
}
