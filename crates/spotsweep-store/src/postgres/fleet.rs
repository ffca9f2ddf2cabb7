//! The fleet's records on PostgreSQL: VMs, the work per pool, the daemon's install id.

use async_trait::async_trait;
use spotsweep_core::fleet::{sweep_waiting_demand, vm_name};

use super::{PgStore, commit, map_err};
use crate::rows::{LeaseCostRow, VM_COLUMNS, VmRow, lease_cost_of, vm_of};
use crate::{
    FleetStore, LeaseCost, NewVm, PoolDemand, Result, StoreError, Stored, Vm, VmState, VmUpdate, now_ms,
};

impl PgStore {
    /// The setting `key`, made by `fresh` at the first call and the same ever after (also when
    /// several daemons ask at once: the first insert wins).
    async fn setting(&self, key: &str, fresh: String) -> Result<String> {
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(fresh)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        let (value,): (String,) = sqlx::query_as("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(value)
    }
}

#[async_trait]
impl FleetStore for PgStore {
    async fn daemon_id(&self) -> Result<String> {
        let fresh = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        self.setting("daemon_id", fresh).await
    }

    async fn daemon_secret(&self) -> Result<String> {
        let fresh: [u8; 32] = rand::random();
        self.setting("daemon_secret", hex::encode(fresh)).await
    }

    async fn lease_agent_name(&self, lease_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT a.name FROM leases l JOIN agents a ON a.id = l.agent_id WHERE l.id = $1")
                .bind(lease_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(row.map(|r| r.0))
    }

    async fn agent_runs_trial(&self, agent_name: &str, run_uuid: &str) -> Result<bool> {
        let row: Option<(i32,)> = sqlx::query_as(
            "SELECT 1 FROM runs r JOIN trials t ON t.run_id = r.id \
             JOIN leases l ON l.trial_id = t.id AND l.ended_at IS NULL \
             JOIN agents a ON a.id = l.agent_id \
             WHERE r.run_uuid = $1 AND a.name = $2 LIMIT 1",
        )
        .bind(run_uuid)
        .bind(agent_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(row.is_some())
    }

    async fn open_lease_runs(&self) -> Result<Vec<(String, String, i64)>> {
        sqlx::query_as(
            "SELECT l.id, r.run_uuid, r.experiment_id FROM leases l JOIN trials t ON t.id = l.trial_id \
             JOIN runs r ON r.id = t.run_id WHERE l.ended_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)
    }

    async fn open_leases_of_agent(&self, agent_name: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT l.id FROM leases l JOIN agents a ON a.id = l.agent_id WHERE l.ended_at IS NULL AND a.name = $1",
        )
        .bind(agent_name)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn lease_costs(&self, pool: Option<&str>, sweep_id: Option<i64>) -> Result<Vec<LeaseCost>> {
        let now = now_ms();
        let rows: Vec<LeaseCostRow> = sqlx::query_as(
            "SELECT v.pool, t.sweep_id, t.number, l.outcome, l.created_at, COALESCE(l.ended_at, $2), \
                    v.price_per_hour, v.slots \
             FROM leases l JOIN trials t ON t.id = l.trial_id \
             JOIN agents a ON a.id = l.agent_id JOIN vms v ON v.name = a.name \
             WHERE ($1::BIGINT IS NULL OR t.sweep_id = $1) AND ($3::TEXT IS NULL OR v.pool = $3) \
             ORDER BY t.sweep_id, t.number, l.created_at",
        )
        .bind(sweep_id)
        .bind(now)
        .bind(pool)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(lease_cost_of).collect())
    }

    async fn pool_demand(&self, pool: &str) -> Result<PoolDemand> {
        let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT s.parallelism, s.max_trials - s.trials_created, \
               (SELECT COUNT(*) FROM trials t WHERE t.sweep_id = s.id AND t.state = 'running' AND t.rerun_of IS NULL), \
               (SELECT COUNT(*) FROM trials t WHERE t.sweep_id = s.id AND t.state IN ('queued', 'preempted') \
                  AND t.rerun_of IS NULL) \
             FROM sweeps s WHERE s.state = 'running' AND s.pool = $1",
        )
        .bind(pool)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut demand = PoolDemand::default();
        for (parallelism, unproposed, running, waiting) in rows {
            demand.running += running.max(0) as u64;
            demand.waiting += sweep_waiting_demand(parallelism, unproposed, running, waiting);
        }
        // Reruns on this pool, whatever their sweep's pool and state (a paused sweep holds its
        // waiting ones).
        let (running, waiting): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE t.state = 'running'), \
                    COUNT(*) FILTER (WHERE t.state <> 'running' AND s.state <> 'paused') \
             FROM trials t JOIN sweeps s ON s.id = t.sweep_id \
             WHERE t.rerun_of IS NOT NULL AND t.state IN ('queued', 'running', 'preempted') \
               AND COALESCE(t.pool, s.pool) = $1",
        )
        .bind(pool)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        demand.running += running.max(0) as u64;
        demand.waiting += waiting.max(0) as u64;
        Ok(demand)
    }

    async fn create_vm(&self, vm: &NewVm) -> Result<Vm> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO vms (pool, name, zone, state, request_id, price_per_hour, slots, created_at) \
             VALUES ($1, 'pending-' || $2, $3, $4, $2, $5, $6, $7) RETURNING id",
        )
        .bind(&vm.pool)
        .bind(&vm.request_id)
        .bind(&vm.zone)
        .bind(Stored(VmState::Requested))
        .bind(vm.price_per_hour)
        .bind(i64::from(vm.slots.max(1)))
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let row: VmRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE vms SET name = $1 WHERE id = $2 RETURNING {VM_COLUMNS}"
        )))
        .bind(vm_name(&vm.pool, id))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        commit(tx).await?;
        Ok(vm_of(row))
    }

    async fn update_vm(&self, id: i64, u: &VmUpdate) -> Result<Vm> {
        let (operation_set, operation) = match &u.operation {
            Some(op) => (true, op.clone()),
            None => (false, None),
        };
        let row: Option<VmRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE vms SET state = COALESCE($2, state), \
                            operation = CASE WHEN $3 THEN $4 ELSE operation END, \
                            token_hash = COALESCE($5, token_hash), \
                            running_at = COALESCE(running_at, $6), \
                            busy_at = GREATEST(COALESCE(busy_at, 0), COALESCE($7, 0)), \
                            ended_at = COALESCE(ended_at, $8), \
                            reason = COALESCE($9, reason) \
             WHERE id = $1 RETURNING {VM_COLUMNS}"
        )))
        .bind(id)
        .bind(u.state.map(Stored))
        .bind(operation_set)
        .bind(operation)
        .bind(&u.token_hash)
        .bind(u.running_at)
        .bind(u.busy_at)
        .bind(u.ended_at)
        .bind(&u.reason)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(vm_of(row.ok_or_else(|| {
            StoreError::NotFound(format!("no VM with id {id}"))
        })?))
    }

    async fn list_vms(&self, pool: Option<&str>, include_ended: bool) -> Result<Vec<Vm>> {
        let rows: Vec<VmRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {VM_COLUMNS} FROM vms WHERE ($1::TEXT IS NULL OR pool = $1) \
             AND ($2 OR state NOT IN ('deleted', 'preempted', 'failed')) ORDER BY id"
        )))
        .bind(pool)
        .bind(include_ended)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(vm_of).collect())
    }
}
