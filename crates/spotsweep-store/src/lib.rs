//! Persistence for spotsweep: the MLflow tracking tables and the daemon's API tokens (later:
//! sweeps, trials, leases, agents, pools, VMs and the cost ledger).
//!
//! The API is two object-safe traits, [`TrackingStore`] and [`TokenStore`], over plain domain
//! types ([`model`]); [`SqliteStore`] implements both on one SQLite file in WAL mode, and a
//! PostgreSQL backend can implement the same traits later. Every acknowledged write is one
//! transaction. Filters arrive as the typed predicates of [`spotsweep_core::search`] and are
//! translated into SQL with bound parameters only.
//!
//! Must not depend on axum or on the MLflow wire format: validation of the protocol's rules
//! (key syntax, lengths) belongs to the mlflow crate, which calls this one.

pub mod model;
mod model_search_sql;
mod points;
mod postgres;
mod rows;
mod search_sql;
mod shared_models;
mod shared_queue;
mod sqlite;
pub mod stored;

use async_trait::async_trait;

pub use model::*;
pub use postgres::{Announcements, PgOptions, PgStore};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use stored::Stored;

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    sqlite::now_ms()
}

/// What can go wrong in the store. `NotFound`, `AlreadyExists` and `Invalid` carry messages
/// meant for the API's caller; `Busy` means "try again"; `Internal` is logged, not shown.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The addressed entity does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A unique name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request conflicts with stored state (e.g. changing an immutable param, writing to a
    /// deleted run).
    #[error("{0}")]
    Invalid(String),
    /// The request lost a race with another actor (e.g. completing a lease that expired and was
    /// given to another agent).
    #[error("{0}")]
    Conflict(String),
    /// The database is overloaded or locked; the caller may retry.
    #[error("the database is busy, retry shortly")]
    Busy,
    /// The database refuses to open (e.g. written by a newer spotsweep).
    #[error("{0}")]
    Incompatible(String),
    /// The disk (or the database's size limit) is full: nothing was written. Writes succeed
    /// again by themselves once space is freed.
    #[error(
        "the disk holding the database is full, so nothing was written; free some space and writes resume \
         by themselves"
    )]
    Full,
    /// The request hit a bug (a panic, caught): nothing it did was committed, and later requests
    /// are unaffected.
    #[error("internal error while {0}; nothing was written")]
    Panicked(String),
    /// Anything else (I/O, corruption, a bug).
    #[error("database error: {0}")]
    Internal(#[from] sqlx::Error),
}

/// Shorthand for this crate's results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// MLflow 3's logged models, and the models a run consumed or produced.
#[async_trait]
pub trait ModelStore: Send + Sync + 'static {
    /// Creates a PENDING model in an active experiment; `NotFound` for an unknown experiment,
    /// `Invalid` for a deleted one.
    async fn create_logged_model(&self, new: NewLoggedModel) -> Result<LoggedModel>;
    /// A model with its params, tags and metric rows; `NotFound` when unknown, or deleted and
    /// `allow_deleted` is false.
    async fn get_logged_model(&self, model_id: &str, allow_deleted: bool) -> Result<LoggedModel>;
    /// Soft-deletes a model.
    async fn delete_logged_model(&self, model_id: &str, now: i64) -> Result<()>;
    /// Sets a model's status (finalize), returning it.
    async fn set_logged_model_status(
        &self,
        model_id: &str,
        status: LoggedModelStatus,
        now: i64,
    ) -> Result<LoggedModel>;
    /// Adds params (a key logged again keeps its first value, as for runs).
    async fn log_logged_model_params(&self, model_id: &str, params: Vec<KeyValue>) -> Result<()>;
    /// Sets tags (last value wins).
    async fn set_logged_model_tags(&self, model_id: &str, tags: Vec<KeyValue>) -> Result<()>;
    /// Deletes a tag; `NotFound` when the model or the tag does not exist.
    async fn delete_logged_model_tag(&self, model_id: &str, key: &str) -> Result<()>;
    /// One page of models and whether more follow.
    async fn search_logged_models(&self, query: LoggedModelQuery) -> Result<(Vec<LoggedModel>, bool)>;
    /// Stores metric rows logged with a model id (identical rows once); `NotFound` when a
    /// model does not exist.
    async fn log_model_metrics(&self, rows: Vec<(String, ModelMetric)>) -> Result<()>;
    /// Records models a run consumed or produced (each once).
    async fn add_run_models(
        &self,
        run_id: &str,
        direction: ModelDirection,
        models: Vec<(String, i64)>,
    ) -> Result<()>;
    /// A run's model inputs and outputs.
    async fn run_models(&self, run_id: &str) -> Result<RunModels>;
}

/// MLflow 3's traces: their records and tags (the spans are an artifact).
#[async_trait]
pub trait TraceStore: Send + Sync + 'static {
    /// Creates or replaces a trace's record (the client sends it again when the trace ends),
    /// adding the tag `mlflow.artifactLocation` (where the client puts the spans); `NotFound`
    /// for an unknown experiment, `Invalid` for a deleted one.
    async fn upsert_trace(&self, info: TraceInfo) -> Result<TraceInfo>;
    /// A trace's record; `NotFound` when unknown.
    async fn get_trace(&self, trace_id: &str) -> Result<TraceInfo>;
    /// One page of traces and whether more follow.
    async fn search_traces(&self, query: TraceQuery) -> Result<(Vec<TraceInfo>, bool)>;
    /// Sets a tag; `NotFound` for an unknown trace.
    async fn set_trace_tag(&self, trace_id: &str, key: &str, value: &str) -> Result<()>;
    /// Deletes a tag; `NotFound` for an unknown trace or tag.
    async fn delete_trace_tag(&self, trace_id: &str, key: &str) -> Result<()>;
    /// Deletes traces of an experiment; returns how many.
    async fn delete_traces(&self, experiment_id: i64, which: TraceDeletion) -> Result<u64>;
}

/// Experiments, runs, params, metrics, tags and dataset inputs: what the MLflow protocol needs.
#[async_trait]
pub trait TrackingStore: Send + Sync + 'static {
    /// Creates an experiment; its `artifact_location` defaults to `<default_root>/<id>`.
    async fn create_experiment(&self, new: NewExperiment) -> Result<i64>;
    /// One experiment with its tags.
    async fn get_experiment(&self, experiment_id: i64) -> Result<Experiment>;
    /// One experiment by exact name, deleted ones included.
    async fn get_experiment_by_name(&self, name: &str) -> Result<Experiment>;
    /// Renames an experiment; the new name must be free.
    async fn rename_experiment(&self, experiment_id: i64, new_name: &str) -> Result<()>;
    /// Soft-deletes or restores an experiment together with all its runs.
    async fn set_experiment_lifecycle(&self, experiment_id: i64, stage: LifecycleStage) -> Result<()>;
    /// Sets (inserts or overwrites) an experiment tag.
    async fn set_experiment_tag(&self, experiment_id: i64, key: &str, value: &str) -> Result<()>;
    /// Deletes an experiment tag; `NotFound` when the key is absent.
    async fn delete_experiment_tag(&self, experiment_id: i64, key: &str) -> Result<()>;
    /// Experiments matching a filter, ordered and paged.
    async fn search_experiments(&self, query: &ExperimentQuery) -> Result<Page<Experiment>>;

    /// Creates a run in an active experiment.
    async fn create_run(&self, new: NewRun) -> Result<Run>;
    /// One run with its latest metrics, params, tags and inputs (deleted runs too).
    async fn get_run(&self, run_id: &str) -> Result<Run>;
    /// Changes a run's status, end time or name.
    async fn update_run(&self, run_id: &str, update: RunUpdate) -> Result<RunInfo>;
    /// Soft-deletes or restores a run.
    async fn set_run_lifecycle(&self, run_id: &str, stage: LifecycleStage) -> Result<()>;
    /// Logs metrics, params and tags to an active run, all or nothing.
    async fn log_batch(&self, run_id: &str, batch: Batch) -> Result<()>;
    /// Deletes a run tag; `NotFound` when the key is absent.
    async fn delete_run_tag(&self, run_id: &str, key: &str) -> Result<()>;
    /// Records dataset inputs of a run.
    async fn log_inputs(&self, run_id: &str, inputs: Vec<DatasetInput>) -> Result<()>;
    /// The distinct (experiment, dataset name, digest, context) used by runs of the experiments.
    async fn dataset_summaries(&self, experiment_ids: &[i64]) -> Result<Vec<DatasetSummary>>;
    /// Runs matching a filter, ordered and paged.
    async fn search_runs(&self, query: &RunQuery) -> Result<Page<Run>>;
    /// One page of a metric's history in history order; an unknown run or key is empty.
    async fn metric_history(&self, run_id: &str, key: &str, offset: u64, limit: u32) -> Result<Page<Metric>>;
    /// Metric points of several runs in a step range, each run down-sampled to at most
    /// `max_results` points that always include its first and last. Returns `(run_id, metric)`
    /// in the order of `run_ids`, then step.
    async fn metric_history_bulk_interval(
        &self,
        run_ids: &[String],
        key: &str,
        start_step: Option<i64>,
        end_step: Option<i64>,
        max_results: usize,
    ) -> Result<Vec<(String, Metric)>>;
}

/// Sweeps, trials and leases: the durable queue.
#[async_trait]
pub trait SweepStore: Send + Sync + 'static {
    /// Stores a validated sweep (its seed set), creating or reusing its MLflow experiment.
    async fn create_sweep(&self, spec: spotsweep_core::sweep::SweepSpec, seed: u64) -> Result<Sweep>;
    /// One sweep with its progress.
    async fn get_sweep(&self, id: i64) -> Result<Sweep>;
    /// Every sweep, newest first.
    async fn list_sweeps(&self) -> Result<Vec<Sweep>>;
    /// A page of sweeps, newest first, and whether more follow.
    async fn sweeps_page(&self, query: &SweepQuery) -> Result<(Vec<Sweep>, bool)>;
    /// A sweep's trials by number as the dashboard's table shows them (reasons cut to
    /// `reason_chars` characters), in one query.
    async fn trial_summaries(&self, sweep_id: i64, reason_chars: u32) -> Result<Vec<TrialSummary>>;
    /// Every lease of a sweep's trials, oldest first.
    async fn sweep_attempts(&self, sweep_id: i64) -> Result<Vec<Attempt>>;
    /// The agents of a pool (of every pool with `None`), by name, with their leases.
    async fn agent_summaries(&self, pool: Option<&str>) -> Result<Vec<AgentSummary>>;
    /// Pauses, resumes or cancels a sweep. Cancelling cancels queued trials and asks running
    /// ones to stop; a finished sweep cannot change.
    async fn set_sweep_state(&self, id: i64, state: SweepState) -> Result<Sweep>;
    /// A sweep's best completed trial and where to log it, without the counts `get_sweep`
    /// reads (every completion asks).
    async fn sweep_best(&self, sweep_id: i64) -> Result<SweepBest>;
    /// A sweep's trials by number.
    async fn list_trials(&self, sweep_id: i64) -> Result<Vec<Trial>>;
    /// Queues a trial with fixed parameters (counts towards `max_trials`).
    async fn enqueue_trial(&self, sweep_id: i64, params: spotsweep_core::sweep::Params) -> Result<Trial>;
    /// Trial `number` of a sweep.
    async fn get_trial(&self, sweep_id: i64, number: i64) -> Result<Trial>;
    /// Queues a rerun of finished trial `number`: a new trial with its parameters and seed, on
    /// `pool` (default: the sweep's), numbered after every trial the sweep can propose. It does
    /// not count towards `max_trials` and is no evidence for the sampler, the pruner or the
    /// sweep's best. A finished sweep runs it too; a paused one holds it until resumed.
    async fn rerun_trial(&self, sweep_id: i64, number: i64, pool: Option<&str>) -> Result<Trial>;
    /// Whether agents of `pool` may read code snapshot `code`: a running or paused sweep of the
    /// pool runs in it, or a rerun waiting or running on the pool does.
    async fn pool_uses_code(&self, pool: &str, code: &str) -> Result<bool>;
    /// Records an agent (or refreshes it).
    async fn register_agent(&self, id: &str, name: &str, pool: &str, slots: u32) -> Result<()>;
    /// Leases up to `slots` trials in one transaction: requeued trials first, then new ones
    /// proposed by each sweep's sampler, sharing slots fairly between sweeps. Empty when there
    /// is no work.
    async fn lease_trials(&self, request: &LeaseRequest) -> Result<Vec<LeasedTrial>>;
    /// Extends a lease and says whether to go on.
    async fn heartbeat(&self, lease_id: &str, ttl_ms: i64) -> Result<HeartbeatAction>;
    /// Ends a lease with the agent's outcome; idempotent for the same outcome.
    async fn complete_trial(&self, lease_id: &str, outcome: Outcome) -> Result<Trial>;
    /// Requeues (or fails, past `max_retries`) the trials whose leases expired before `now`.
    /// Returns how many leases expired.
    async fn expire_leases(&self, now: i64) -> Result<u64>;
    /// When the next open lease expires, if any.
    async fn next_lease_expiry(&self) -> Result<Option<i64>>;
}

/// The spot fleet's records: its VMs, the work waiting for each pool, the daemon's install id.
#[async_trait]
pub trait FleetStore: Send + Sync + 'static {
    /// The daemon's install id: made at the first call, the same ever after.
    async fn daemon_id(&self) -> Result<String>;
    /// A random secret made at the first call, the same ever after (VM tokens derive from it).
    async fn daemon_secret(&self) -> Result<String>;
    /// The name of the agent holding a lease (`None`: no such lease).
    async fn lease_agent_name(&self, lease_id: &str) -> Result<Option<String>>;
    /// Whether the MLflow run is a trial's that an agent of this name holds an open lease on.
    async fn agent_runs_trial(&self, agent_name: &str, run_uuid: &str) -> Result<bool>;
    /// The open leases of the agents of this name (a VM's agent).
    async fn open_leases_of_agent(&self, agent_name: &str) -> Result<Vec<String>>;
    /// Every open lease with its trial's MLflow run id and experiment id, for the per-trial
    /// tokens.
    async fn open_lease_runs(&self) -> Result<Vec<(String, String, i64)>>;
    /// What each lease on a fleet VM cost (on one pool's VMs, of one sweep, or all).
    async fn lease_costs(&self, pool: Option<&str>, sweep_id: Option<i64>) -> Result<Vec<LeaseCost>>;
    /// The work for a pool's VMs.
    async fn pool_demand(&self, pool: &str) -> Result<PoolDemand>;
    /// Records a VM before it is requested; its name is derived from the pool and its id.
    async fn create_vm(&self, vm: &NewVm) -> Result<Vm>;
    /// Changes a VM's record.
    async fn update_vm(&self, id: i64, update: &VmUpdate) -> Result<Vm>;
    /// The VMs of a pool (every pool with `None`), oldest first; ended ones only with
    /// `include_ended`.
    async fn list_vms(&self, pool: Option<&str>, include_ended: bool) -> Result<Vec<Vm>>;
}

/// Leader leases for the loops that must run on one daemon at a time (see
/// `spotsweep_core::leader`).
#[async_trait]
pub trait LeaderStore: Send + Sync + 'static {
    /// Takes or renews the lease of `role` for `holder` for `ttl_ms` from now: true when
    /// `holder` holds it now (it was free, had run out, or was already its own). Of daemons
    /// that try at once, one wins.
    async fn lead(&self, role: &str, holder: &str, ttl_ms: i64) -> Result<bool>;
    /// Gives up `role` if `holder` holds it, so that another daemon takes it at its next try.
    async fn resign(&self, role: &str, holder: &str) -> Result<()>;
    /// Who holds `role` now (`None`: nobody, or the lease ran out).
    async fn leader(&self, role: &str) -> Result<Option<String>>;
}

/// API tokens: stored as SHA-256 hashes, never as secrets.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Stores a new token's hash and returns its record.
    async fn create_token(&self, new: NewToken<'_>) -> Result<ApiToken>;
    /// Every live token (neither revoked nor expired), oldest first.
    async fn list_tokens(&self) -> Result<Vec<ApiToken>>;
    /// A live token's record; `NotFound` if it does not exist, is revoked or expired.
    async fn get_token(&self, id: &str) -> Result<ApiToken>;
    /// Revokes a token; `NotFound` if it does not exist or is already revoked.
    async fn revoke_token(&self, id: &str) -> Result<()>;
    /// Every live token with its hash (loaded at start to check requests from memory).
    async fn live_tokens(&self) -> Result<Vec<(String, ApiToken)>>;
    /// Revokes every admin token and stores `token_hash` as the new one, in one transaction
    /// (`spotsweep token reset-admin`, with the daemon stopped).
    async fn reset_admin_token(&self, token_hash: &str) -> Result<ApiToken>;
}

/// The MLflow model registry: registered models, their versions, tags, aliases and stages.
/// Names and versions are addressed as the protocol does (by name and version number); a
/// deleted version is invisible to every call but keeps its number from being reused.
#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// Creates a registered model; `AlreadyExists` when the name is taken.
    async fn create_registered_model(&self, new: NewRegisteredModel) -> Result<RegisteredModel>;
    /// One registered model with its latest versions, tags and aliases.
    async fn get_registered_model(&self, name: &str) -> Result<RegisteredModel>;
    /// Replaces a registered model's description (`None` clears it).
    async fn update_registered_model(
        &self,
        name: &str,
        description: Option<String>,
    ) -> Result<RegisteredModel>;
    /// Renames a registered model; its versions, tags and aliases follow.
    async fn rename_registered_model(&self, name: &str, new_name: &str) -> Result<RegisteredModel>;
    /// Deletes a registered model with everything it has; the name may be registered again.
    async fn delete_registered_model(&self, name: &str) -> Result<()>;
    /// Registered models matching a filter, ordered and paged.
    async fn search_registered_models(&self, query: &RegisteredModelQuery) -> Result<Page<RegisteredModel>>;
    /// Sets (inserts or overwrites) a registered model's tag.
    async fn set_registered_model_tag(&self, name: &str, key: &str, value: &str) -> Result<()>;
    /// Deletes a registered model's tag; a missing key is not an error.
    async fn delete_registered_model_tag(&self, name: &str, key: &str) -> Result<()>;
    /// Points an alias at a live version (moving it if it pointed elsewhere).
    async fn set_alias(&self, name: &str, alias: &str, version: i64) -> Result<()>;
    /// Removes an alias; a missing alias is not an error.
    async fn delete_alias(&self, name: &str, alias: &str) -> Result<()>;
    /// The live version a reference means, with its aliases: `NotFound` for an unknown model or
    /// a reference that names no version, `Invalid` for an unknown alias (as the reference).
    async fn resolve_version(
        &self,
        name: &str,
        reference: &spotsweep_core::registry::VersionRef,
    ) -> Result<ModelVersion>;
    /// The highest live version in each of `stages` (every stage when empty) that has one, by
    /// version number, with their aliases.
    async fn latest_versions(
        &self,
        name: &str,
        stages: &[spotsweep_core::registry::Stage],
    ) -> Result<Vec<ModelVersion>>;
    /// Creates the next version of a registered model from a source that the caller parsed.
    /// The source must lie inside the run or logged model the request names
    /// ([`spotsweep_core::registry::check_source`]); its storage location is resolved here.
    async fn create_model_version(&self, new: NewModelVersion) -> Result<ModelVersion>;
    /// Replaces a version's description (`None` clears it).
    async fn update_model_version(
        &self,
        name: &str,
        version: i64,
        description: Option<String>,
    ) -> Result<ModelVersion>;
    /// Moves a version to a stage, optionally archiving the other versions in that stage (the
    /// caller checks that the stage allows it).
    async fn transition_model_version_stage(
        &self,
        name: &str,
        version: i64,
        stage: spotsweep_core::registry::Stage,
        archive_existing_versions: bool,
    ) -> Result<ModelVersion>;
    /// Deletes a version: it disappears with its tags and aliases, and its number stays taken.
    async fn delete_model_version(&self, name: &str, version: i64) -> Result<()>;
    /// Live versions matching a filter, ordered and paged (without their aliases).
    async fn search_model_versions(&self, query: &ModelVersionQuery) -> Result<Page<ModelVersion>>;
    /// Sets (inserts or overwrites) a version's tag.
    async fn set_model_version_tag(&self, name: &str, version: i64, key: &str, value: &str) -> Result<()>;
    /// Deletes a version's tag; a missing key is not an error.
    async fn delete_model_version_tag(&self, name: &str, version: i64, key: &str) -> Result<()>;
}
