//! Rows read the same way from every backend: each type decodes from SQLite's and
//! PostgreSQL's rows alike (sqlx's `FromRow` is generic over the row), so a backend differs in
//! its statements, not in how it reads a record.

use spotsweep_core::registry::{Stage, VersionStatus};

use crate::{
    ApiToken, Experiment, KeyValue, LeaseCost, LifecycleStage, LoggedModel, LoggedModelStatus, ModelMetric,
    ModelVersion, Result, RunInfo, RunStatus, StoreError, Stored, TokenRole, TokenScope, TraceInfo, Vm,
    VmState,
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

/// A `registered_models m` row, selected with [`REGISTERED_MODEL_COLUMNS`].
#[derive(sqlx::FromRow)]
pub(crate) struct RegisteredModelRow {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub creation_timestamp: i64,
    pub last_updated_timestamp: i64,
}

pub(crate) const REGISTERED_MODEL_COLUMNS: &str =
    "m.id, m.name, m.description, m.creation_timestamp, m.last_updated_timestamp";

/// A `model_versions` row with its model's name, selected with [`VERSION_COLUMNS`] from
/// [`VERSIONS`].
#[derive(sqlx::FromRow)]
pub(crate) struct VersionRow {
    pub registered_model_id: i64,
    pub name: String,
    pub version: i64,
    pub creation_timestamp: i64,
    pub last_updated_timestamp: i64,
    pub description: Option<String>,
    pub source: String,
    pub storage_location: String,
    pub run_id: String,
    pub model_id: Option<String>,
    pub run_link: String,
    pub current_stage: String,
    pub status: String,
}

pub(crate) const VERSION_COLUMNS: &str = "v.registered_model_id, m.name, v.version, v.creation_timestamp, \
     v.last_updated_timestamp, v.description, v.source, v.storage_location, v.run_id, v.model_id, v.run_link, \
     v.current_stage, v.status";

/// Live versions joined with their model, for [`VERSION_COLUMNS`] (more conditions follow with
/// `AND`).
pub(crate) const VERSIONS: &str = "model_versions v JOIN registered_models m ON m.id = v.registered_model_id WHERE v.deleted_timestamp IS NULL";

impl VersionRow {
    /// The version without tags or aliases; a stage or status this binary does not know is an
    /// error rather than a guess.
    pub(crate) fn into_version(self) -> Result<ModelVersion> {
        let unknown = |what: &str, value: &str| {
            StoreError::Incompatible(format!(
                "model version {} of '{}' has an unknown {what} '{value}'",
                self.version, self.name
            ))
        };
        let current_stage =
            Stage::from_stored(&self.current_stage).ok_or_else(|| unknown("stage", &self.current_stage))?;
        let status =
            VersionStatus::from_stored(&self.status).ok_or_else(|| unknown("status", &self.status))?;
        Ok(ModelVersion {
            name: self.name,
            version: self.version,
            creation_timestamp: self.creation_timestamp,
            last_updated_timestamp: self.last_updated_timestamp,
            current_stage,
            description: self.description,
            source: self.source,
            storage_location: self.storage_location,
            run_id: self.run_id,
            model_id: self.model_id,
            run_link: self.run_link,
            status,
            tags: vec![],
            aliases: vec![],
        })
    }
}

/// The columns of [`LoggedModelRow`], read from `logged_models m`.
pub(crate) const LOGGED_MODEL_COLUMNS: &str = "m.model_id, m.experiment_id, m.name, m.model_type, \
     m.source_run_id, m.status, m.artifact_uri, m.lifecycle_stage, m.creation_timestamp_ms, \
     m.last_updated_timestamp_ms";

/// A logged model as stored (without its params, tags and metrics).
#[derive(sqlx::FromRow)]
pub(crate) struct LoggedModelRow {
    model_id: String,
    experiment_id: i64,
    name: String,
    model_type: String,
    source_run_id: String,
    status: i64,
    artifact_uri: String,
    pub lifecycle_stage: Stored<LifecycleStage>,
    creation_timestamp_ms: i64,
    last_updated_timestamp_ms: i64,
}

impl From<LoggedModelRow> for LoggedModel {
    fn from(r: LoggedModelRow) -> Self {
        Self {
            model_id: r.model_id,
            experiment_id: r.experiment_id,
            name: r.name,
            model_type: r.model_type,
            source_run_id: r.source_run_id,
            status: LoggedModelStatus::from_number(r.status),
            artifact_uri: r.artifact_uri,
            lifecycle_stage: r.lifecycle_stage.0,
            creation_timestamp_ms: r.creation_timestamp_ms,
            last_updated_timestamp_ms: r.last_updated_timestamp_ms,
            params: Vec::new(),
            tags: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

/// A metric row of a logged model: `key, value, timestamp, step, run_id, dataset_name,
/// dataset_digest`, the value NULL for NaN.
pub(crate) type ModelMetricRow = (
    String,
    Option<f64>,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
);

pub(crate) fn model_metric_of(row: ModelMetricRow) -> ModelMetric {
    let (key, value, timestamp, step, run_id, dataset_name, dataset_digest) = row;
    ModelMetric {
        key,
        // NULL stands for NaN (see the migrations).
        value: value.unwrap_or(f64::NAN),
        timestamp,
        step,
        run_id,
        dataset_name,
        dataset_digest,
    }
}

/// The columns of [`TraceRow`], read from `traces t`.
pub(crate) const TRACE_COLUMNS: &str = "t.trace_id, t.experiment_id, t.client_request_id, t.request_time_ms, \
     t.execution_duration_ms, t.state, t.request_preview, t.response_preview";

/// A trace as stored (without its tags and metadata).
#[derive(sqlx::FromRow)]
pub(crate) struct TraceRow {
    pub trace_id: String,
    experiment_id: i64,
    client_request_id: Option<String>,
    request_time_ms: i64,
    execution_duration_ms: Option<i64>,
    state: String,
    request_preview: Option<String>,
    response_preview: Option<String>,
}

impl TraceRow {
    /// The trace with its metadata and tags.
    pub(crate) fn into_trace(self, metadata: Vec<KeyValue>, tags: Vec<KeyValue>) -> TraceInfo {
        TraceInfo {
            trace_id: self.trace_id,
            experiment_id: self.experiment_id,
            client_request_id: self.client_request_id,
            request_time_ms: self.request_time_ms,
            execution_duration_ms: self.execution_duration_ms,
            state: self.state,
            request_preview: self.request_preview,
            response_preview: self.response_preview,
            metadata,
            tags,
        }
    }
}
