//! Rows read the same way from every backend: each type decodes from SQLite's and
//! PostgreSQL's rows alike (sqlx's `FromRow` is generic over the row), so a backend differs in
//! its statements, not in how it reads a record.

use crate::{
    ApiToken, Experiment, KeyValue, LeaseCost, LifecycleStage, Result, RunInfo, RunStatus, StoreError,
    Stored, TokenRole, TokenScope, Vm, VmState,
};

/// A token as stored (`id, name, role, scope, created_at, expires_at`).
#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    id: String,
    name: String,
    role: String,
    scope: String,
    created_at: i64,
    expires_at: Option<i64>,
}

impl TryFrom<TokenRow> for ApiToken {
    type Error = StoreError;

    fn try_from(row: TokenRow) -> Result<Self> {
        let role = TokenRole::parse(&row.role).ok_or_else(|| {
            StoreError::Incompatible(format!("token {} has an unknown role '{}'", row.id, row.role))
        })?;
        let scope = TokenScope::parse(&row.scope).ok_or_else(|| {
            StoreError::Incompatible(format!("token {} has an unknown scope '{}'", row.id, row.scope))
        })?;
        Ok(Self {
            id: row.id,
            name: row.name,
            role,
            scope,
            created_at: row.created_at,
            expires_at: row.expires_at,
        })
    }
}

/// A VM as stored: the columns of [`VM_COLUMNS`].
pub(crate) type VmRow = (
    i64,
    String,
    String,
    String,
    Stored<VmState>,
    String,
    Option<String>,
    Option<String>,
    f64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

pub(crate) const VM_COLUMNS: &str = "id, pool, name, zone, state, request_id, operation, token_hash, price_per_hour, \
                          slots, created_at, running_at, busy_at, ended_at, reason";

pub(crate) fn vm_of(r: VmRow) -> Vm {
    Vm {
        id: r.0,
        pool: r.1,
        name: r.2,
        zone: r.3,
        state: r.4.0,
        request_id: r.5,
        operation: r.6,
        token_hash: r.7,
        price_per_hour: r.8,
        slots: r.9.max(1) as u32,
        created_at: r.10,
        running_at: r.11,
        busy_at: r.12,
        ended_at: r.13,
        reason: r.14,
    }
}

/// A lease on a fleet VM as read for its cost: the VM's pool, the trial's sweep and number, the
/// lease's outcome, start and end (now for an open one), the VM's price and slots.
pub(crate) type LeaseCostRow = (String, i64, i64, Option<String>, i64, i64, f64, i64);

/// What a lease cost: its time on the VM at the VM's price per slot.
pub(crate) fn lease_cost_of(row: LeaseCostRow) -> LeaseCost {
    let (pool, sweep_id, trial_number, outcome, start, end, price, slots) = row;
    let seconds = (end - start).max(0) as f64 / 1000.0;
    LeaseCost {
        pool,
        sweep_id,
        trial_number,
        outcome,
        seconds,
        usd: seconds / 3600.0 * price / slots.max(1) as f64,
    }
}

/// The columns of `runs` that make a [`RunInfo`], plus the internal key, in [`RunRow`] order.
pub(crate) const RUN_COLUMNS: &str = "r.id, r.run_uuid, r.experiment_id, r.name, r.user_id, r.status, \
     r.start_time, r.end_time, r.artifact_uri, r.lifecycle_stage";

/// A run as stored (its [`RUN_COLUMNS`]): its internal key and its [`RunInfo`].
#[derive(sqlx::FromRow)]
pub(crate) struct RunRow {
    id: i64,
    run_uuid: String,
    experiment_id: i64,
    name: String,
    user_id: String,
    status: Stored<RunStatus>,
    start_time: i64,
    end_time: Option<i64>,
    artifact_uri: String,
    lifecycle_stage: Stored<LifecycleStage>,
}

impl RunRow {
    #[cfg(test)]
    pub(crate) fn run_uuid(&self) -> &str {
        &self.run_uuid
    }

    pub(crate) fn into_info(self) -> (i64, RunInfo) {
        let info = RunInfo {
            run_id: self.run_uuid,
            experiment_id: self.experiment_id,
            run_name: self.name,
            user_id: self.user_id,
            status: self.status.0,
            start_time: self.start_time,
            end_time: self.end_time,
            artifact_uri: self.artifact_uri,
            lifecycle_stage: self.lifecycle_stage.0,
        };
        (self.id, info)
    }
}

/// An experiment as stored (its [`EXPERIMENT_COLUMNS`]), without its tags.
#[derive(sqlx::FromRow)]
pub(crate) struct ExperimentRow {
    pub(crate) experiment_id: i64,
    name: String,
    pub(crate) artifact_location: String,
    pub(crate) lifecycle_stage: Stored<LifecycleStage>,
    creation_time: i64,
    last_update_time: i64,
}

impl ExperimentRow {
    pub(crate) fn into_experiment(self, tags: Vec<KeyValue>) -> Experiment {
        Experiment {
            experiment_id: self.experiment_id,
            name: self.name,
            artifact_location: self.artifact_location,
            lifecycle_stage: self.lifecycle_stage.0,
            creation_time: self.creation_time,
            last_update_time: self.last_update_time,
            tags,
        }
    }
}

pub(crate) const EXPERIMENT_COLUMNS: &str =
    "experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time";

/// Queries fetch `limit + 1` rows: the extra row only says whether another page exists.
pub(crate) fn page<T>(mut rows: Vec<T>, limit: u32, offset: u64) -> (Vec<T>, Option<u64>) {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        (rows, Some(offset + u64::from(limit)))
    } else {
        (rows, None)
    }
}
