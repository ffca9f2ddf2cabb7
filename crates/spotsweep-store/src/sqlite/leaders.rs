//! Leader leases on SQLite. One daemon owns a data dir, so it holds every role; the table
//! keeps the same contract as on PostgreSQL (and the conformance suite checks it with several
//! stores on one file).

use async_trait::async_trait;

use super::{SqliteStore, commit, map_err, now_ms};
use crate::{LeaderStore, Result};

#[async_trait]
impl LeaderStore for SqliteStore {
    async fn lead(&self, role: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        // The update applies only to the holder's own lease or one that ran out; otherwise no
        // row comes back.
        let row: Option<(String,)> = sqlx::query_as(
            "INSERT INTO leaders (role, holder, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leaders.holder = excluded.holder OR leaders.expires_at <= ?4 \
             RETURNING holder",
        )
        .bind(role)
        .bind(holder)
        .bind(now + ttl_ms.max(0))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        commit(tx).await?;
        Ok(row.is_some())
    }

    async fn resign(&self, role: &str, holder: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM leaders WHERE role = ? AND holder = ?")
            .bind(role)
            .bind(holder)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        commit(tx).await
    }

    async fn leader(&self, role: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT holder FROM leaders WHERE role = ? AND expires_at > ?")
                .bind(role)
                .bind(now_ms())
                .fetch_optional(&self.reader)
                .await
                .map_err(map_err)?;
        Ok(row.map(|r| r.0))
    }
}
