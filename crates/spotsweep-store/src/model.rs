//! Domain types of the tracking store, independent of any wire format.

use spotsweep_core::search::{ExperimentOrderBy, ExperimentPredicate, RunOrderBy, RunPredicate};

mod registry;

pub use registry::*;
pub use spotsweep_core::fleet::VmState;
pub use spotsweep_core::queue::{GpuFree, GpuShare, HeartbeatAction, Outcome, SweepState, TrialState};

/// Whether an experiment or run is visible (`active`) or soft-deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleStage {
    /// Visible.
    Active,
    /// Soft-deleted: hidden from default searches, refuses writes.
    Deleted,
}

spotsweep_core::words!(LifecycleStage, "lifecycle stage",
    Active => "active",
    Deleted => "deleted",
);

/// Which lifecycle stages a search returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ViewType {
    /// Active only (the default).
    #[default]
    ActiveOnly,
    /// Deleted only.
    DeletedOnly,
    /// Both.
    All,
}

/// A run's status, as MLflow spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Running.
    Running,
    /// Scheduled.
    Scheduled,
    /// Finished.
    Finished,
    /// Failed.
    Failed,
    /// Killed.
    Killed,
}

spotsweep_core::words!(RunStatus, "run status",
    Running => "RUNNING",
    Scheduled => "SCHEDULED",
    Finished => "FINISHED",
    Failed => "FAILED",
    Killed => "KILLED",
);

/// A key and a string value (params, tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// One metric point.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// The metric key.
    pub key: String,
    /// The value; NaN is preserved, ±infinity is stored as ±`f64::MAX` like the reference.
    pub value: f64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The step.
    pub step: i64,
}

/// An experiment with its tags.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// Numeric id (the wire sends it as a decimal string).
    pub experiment_id: i64,
    /// Unique name.
    pub name: String,
    /// Where its runs' artifacts live.
    pub artifact_location: String,
    /// Active or deleted.
    pub lifecycle_stage: LifecycleStage,
    /// Milliseconds since the epoch.
    pub creation_time: i64,
    /// Milliseconds since the epoch.
    pub last_update_time: i64,
    /// Tags, by key.
    pub tags: Vec<KeyValue>,
}

/// What `create_experiment` needs.
#[derive(Debug, Clone)]
pub struct NewExperiment {
    /// Unique name.
    pub name: String,
    /// Explicit artifact location, or `None` for `<artifact_root>/<id>`.
    pub artifact_location: Option<String>,
    /// Default artifact root (e.g. `mlflow-artifacts:`), used when no location is given.
    pub artifact_root: String,
    /// Initial tags.
    pub tags: Vec<KeyValue>,
    /// Creation time in ms.
    pub now: i64,
}

/// A run's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// 32 lowercase hex characters.
    pub run_id: String,
    /// The experiment's id.
    pub experiment_id: i64,
    /// The run's name.
    pub run_name: String,
    /// The user, or "".
    pub user_id: String,
    /// Status.
    pub status: RunStatus,
    /// Milliseconds since the epoch.
    pub start_time: i64,
    /// Milliseconds since the epoch, once ended.
    pub end_time: Option<i64>,
    /// Where its artifacts live.
    pub artifact_uri: String,
    /// Active or deleted.
    pub lifecycle_stage: LifecycleStage,
}

/// A dataset input of a run (`runs/log-inputs`).
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInput {
    /// Dataset name.
    pub name: String,
    /// Dataset digest.
    pub digest: String,
    /// Source type (e.g. `local`).
    pub source_type: String,
    /// Source (JSON text).
    pub source: String,
    /// Schema (JSON text).
    pub schema: Option<String>,
    /// Profile (JSON text).
    pub profile: Option<String>,
    /// Input tags (e.g. `mlflow.data.context`).
    pub tags: Vec<KeyValue>,
}

impl DatasetInput {
    /// The `mlflow.data.context` input tag, which `datasets.context` filters on.
    pub fn context(&self) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.key == "mlflow.data.context")
            .map(|t| t.value.as_str())
    }
}

/// A run with its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Metadata.
    pub info: RunInfo,
    /// The latest value of each metric.
    pub metrics: Vec<Metric>,
    /// Params.
    pub params: Vec<KeyValue>,
    /// Tags.
    pub tags: Vec<KeyValue>,
    /// Dataset inputs.
    pub inputs: Vec<DatasetInput>,
}

/// What `create_run` needs.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The experiment to create it in.
    pub experiment_id: i64,
    /// 32 lowercase hex characters, chosen by the caller.
    pub run_id: String,
    /// The name (already resolved from the request, the tag or a generated one).
    pub run_name: String,
    /// The user, or "".
    pub user_id: String,
    /// Start time in ms.
    pub start_time: i64,
    /// Initial tags (already including `mlflow.runName`).
    pub tags: Vec<KeyValue>,
}

/// What `update_run` may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct RunUpdate {
    /// New status.
    pub status: Option<RunStatus>,
    /// New end time.
    pub end_time: Option<i64>,
    /// New name (also rewrites the `mlflow.runName` tag).
    pub run_name: Option<String>,
}

/// A validated batch of writes to one run.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Metric points.
    pub metrics: Vec<Metric>,
    /// Params (immutable once logged).
    pub params: Vec<KeyValue>,
    /// Tags (last write wins).
    pub tags: Vec<KeyValue>,
}

/// A page of results and where the next one starts.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The offset of the next page, `None` on the last page.
    pub next_offset: Option<u64>,
}

/// A runs search.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// Experiments to search in.
    pub experiment_ids: Vec<i64>,
    /// AND-ed predicates.
    pub filter: Vec<RunPredicate>,
    /// Sort keys, before the implicit `start_time DESC, run_id ASC`.
    pub order_by: Vec<RunOrderBy>,
    /// Lifecycle stages to include.
    pub view: ViewType,
    /// Page size.
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
}

/// An experiments search.
#[derive(Debug, Clone, Default)]
pub struct ExperimentQuery {
    /// AND-ed predicates.
    pub filter: Vec<ExperimentPredicate>,
    /// Sort keys; empty means `creation_time DESC, experiment_id ASC`.
    pub order_by: Vec<ExperimentOrderBy>,
    /// Lifecycle stages to include.
    pub view: ViewType,
    /// Page size.
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
}

/// An API token's record (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Stable id, used to revoke it.
    pub id: String,
    /// A label chosen by whoever created it.
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
    /// Whether it may change anything.
    pub scope: TokenScope,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When it stops working, ms since the epoch; `None`: never.
    pub expires_at: Option<i64>,
}

/// A token to store.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    /// Its label.
    pub name: &'a str,
    /// The SHA-256 (hex) of its secret.
    pub hash: &'a str,
    /// What it may do.
    pub role: TokenRole,
    /// Whether it may change anything.
    pub scope: TokenScope,
    /// When it stops working, ms since the epoch.
    pub expires_at: Option<i64>,
}

/// Whether an API token may change state, or only look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenScope {
    /// Every page and every read; refused (403) on anything that changes state.
    Read,
    /// Everything its role allows.
    Write,
}

impl TokenScope {
    /// The name stored and shown on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }

    /// Parses a stored or requested scope; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            _ => None,
        }
    }
}

/// What an API token may do. Ordered by rights: a token never touches one above its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenRole {
    /// The whole API, tokens included, except revoking the admin token.
    User,
    /// The token written to `admin.token` at first start: everything a user may do, and it
    /// cannot be revoked through the API (`spotsweep token reset-admin` replaces it).
    Admin,
}

impl TokenRole {
    /// The name stored and shown on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    /// Parses a stored or requested role; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// A dataset used by runs of an experiment (the UI's dataset dropdown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSummary {
    /// The experiment.
    pub experiment_id: i64,
    /// Dataset name.
    pub name: String,
    /// Dataset digest.
    pub digest: String,
    /// The input's context (`training`, `eval`, ...).
    pub context: Option<String>,
}

/// A trial.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Internal id.
    pub id: i64,
    /// The sweep.
    pub sweep_id: i64,
    /// 0-based number within the sweep.
    pub number: i64,
    /// Hyperparameters, in spec order (inactive conditional ones absent).
    pub params: spotsweep_core::sweep::Params,
    /// The trial's seed, derived from the sweep seed and the number.
    pub seed: u64,
    /// Its MLflow run.
    pub run_id: String,
    /// Its MLflow experiment.
    pub experiment_id: i64,
    /// Its run's artifact root.
    pub artifact_uri: String,
    /// State.
    pub state: TrialState,
    /// How many times it was leased.
    pub attempt: i64,
    /// Failures so far (preemptions not counted).
    pub failures: i64,
    /// The objective value, once completed.
    pub value: Option<f64>,
    /// Why it failed, was pruned or cancelled.
    pub reason: Option<String>,
    /// The agent of the latest lease.
    pub agent_id: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When its latest lease started.
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// The step at which a pruner stopped it.
    pub pruned_step: Option<i64>,
    /// For a rerun, the number of the trial it runs again.
    pub rerun_of: Option<i64>,
    /// The pool it runs on, when not its sweep's (a rerun elsewhere).
    pub pool: Option<String>,
}

/// Trials of a sweep by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrialCounts {
    /// Count per state, in [`TrialState::ALL`] order.
    pub by_state: [i64; 7],
}

impl TrialCounts {
    /// The count of one state.
    pub fn get(&self, state: TrialState) -> i64 {
        self.by_state[TrialState::ALL.iter().position(|s| *s == state).unwrap_or(0)]
    }
}

/// A sweep with its progress.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Id.
    pub id: i64,
    /// The validated spec, seed included.
    pub spec: spotsweep_core::sweep::SweepSpec,
    /// The sweep seed.
    pub seed: u64,
    /// Its MLflow experiment.
    pub experiment_id: i64,
    /// State.
    pub state: SweepState,
    /// Trials proposed so far.
    pub trials_created: i64,
    /// Trials by state.
    pub counts: TrialCounts,
    /// The best completed trial so far: (number, value, run id).
    pub best: Option<(i64, f64, String)>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When it completed or was cancelled.
    pub finished_at: Option<i64>,
    /// Its own MLflow run (its trials' runs are the run's children); none for sweeps created
    /// before sweeps had runs.
    pub run_id: Option<String>,
}

/// A sweep's best completed trial (reruns aside), with the sweep's own run and objective metric.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepBest {
    /// The sweep's parent run, where its best value is logged (`None` for a sweep from before
    /// sweeps had one).
    pub run_id: Option<String>,
    /// The objective metric.
    pub metric: String,
    /// (number, value, run id) of the best trial so far.
    pub best: Option<(i64, f64, String)>,
}

/// Which sweeps a page of the list holds.
#[derive(Debug, Clone, Default)]
pub struct SweepQuery {
    /// Only sweeps in this state.
    pub state: Option<SweepState>,
    /// Only sweeps whose name contains this (case-insensitive, taken literally).
    pub name_contains: Option<String>,
    /// Only sweeps older than this id (the previous page's last).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

/// One lease of a trial: an attempt to run it on an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The trial's number.
    pub trial_number: i64,
    /// 1 for the first lease.
    pub attempt: i64,
    /// The name of the agent that held it (a VM's name on a fleet pool).
    pub agent_name: String,
    /// When the lease started.
    pub started_at: i64,
    /// When it ended; `None` while it runs.
    pub ended_at: Option<i64>,
    /// How it ended: the agent's outcome, or `expired`; `None` while it runs.
    pub outcome: Option<String>,
}

/// A trial as the dashboard's table shows it: read in one query.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialSummary {
    /// 0-based number within the sweep.
    pub number: i64,
    /// State.
    pub state: TrialState,
    /// The objective value, once completed.
    pub value: Option<f64>,
    /// Hyperparameters as stored (a JSON object).
    pub params_json: String,
    /// Times leased.
    pub attempts: i64,
    /// Attempts lost to a preemption.
    pub preemptions: i64,
    /// The agent (by name) of the latest attempt.
    pub agent: Option<String>,
    /// Its MLflow run.
    pub run_id: String,
    /// When its latest lease started.
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// The step at which a pruner stopped it.
    pub pruned_step: Option<i64>,
    /// Why it failed, was pruned or cancelled: its first `reason_chars` characters.
    pub reason: Option<String>,
    /// For a rerun, the number of the trial it runs again.
    pub rerun_of: Option<i64>,
}

/// An agent (a VM's or a local one, by name) and the work it has done.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSummary {
    /// Its name (a VM's name on a fleet pool).
    pub name: String,
    /// Its pool.
    pub pool: String,
    /// Trial slots it declared last.
    pub slots: i64,
    /// When it was last recorded (ms since the epoch; recorded at most once a minute).
    pub last_seen_at: i64,
    /// Leases open now.
    pub running: i64,
    /// Leases it ever held.
    pub attempts: i64,
    /// Of those, lost to a preemption.
    pub preemptions: i64,
}

/// What an agent asks for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The agent.
    pub agent_id: String,
    /// Makes a retried request idempotent: the same id gets the same answer.
    pub request_id: Option<String>,
    /// How many trials it can take.
    pub slots: u32,
    /// Only sweeps of this pool (agents); `None` for ask-and-tell workers.
    pub pool: Option<String>,
    /// Only this sweep (ask-and-tell).
    pub sweep_id: Option<i64>,
    /// Lease time to live, in ms.
    pub ttl_ms: i64,
    /// The agent's GPUs, for sweeps that declare `resources`.
    pub gpus: Vec<GpuFree>,
    /// MiB each process's CUDA context takes.
    pub gpu_overhead_mib: u64,
}

/// A leased trial.
#[derive(Debug, Clone)]
pub struct LeasedTrial {
    /// The lease id: heartbeat and complete with it.
    pub lease_id: String,
    /// When the lease expires without a heartbeat, ms since the epoch.
    pub expires_at: i64,
    /// The trial.
    pub trial: Trial,
    /// Its sweep's spec (command, env, objective).
    pub spec: std::sync::Arc<spotsweep_core::sweep::SweepSpec>,
    /// For a sweep with `resources`: the GPUs given to it (maybe none).
    pub gpus: Option<Vec<GpuShare>>,
}

/// A VM of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    /// Id.
    pub id: i64,
    /// Its pool.
    pub pool: String,
    /// The instance name.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// Where it is in its life.
    pub state: VmState,
    /// The insert's requestId.
    pub request_id: String,
    /// The operation being waited for.
    pub operation: Option<String>,
    /// The SHA-256 of its token.
    pub token_hash: Option<String>,
    /// USD per hour while RUNNING.
    pub price_per_hour: f64,
    /// Trials it runs at once.
    pub slots: u32,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When it became RUNNING (billing starts).
    pub running_at: Option<i64>,
    /// The last moment it had a running trial.
    pub busy_at: Option<i64>,
    /// When it ended.
    pub ended_at: Option<i64>,
    /// Why it failed or ended.
    pub reason: Option<String>,
}

impl Vm {
    /// Seconds billed up to `now` (milliseconds since the epoch): from RUNNING to its end.
    pub fn billed_seconds(&self, now: i64) -> f64 {
        match self.running_at {
            Some(start) => (self.ended_at.unwrap_or(now) - start).max(0) as f64 / 1000.0,
            None => 0.0,
        }
    }

    /// Its cost up to `now`, in USD.
    pub fn cost(&self, now: i64) -> f64 {
        self.billed_seconds(now) / 3600.0 * self.price_per_hour
    }
}

/// A VM to record before it is requested.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVm {
    /// Its pool.
    pub pool: String,
    /// Its zone.
    pub zone: String,
    /// The insert's requestId.
    pub request_id: String,
    /// USD per hour while RUNNING.
    pub price_per_hour: f64,
    /// Trials it runs at once.
    pub slots: u32,
}

/// What one lease of a trial cost: its time on a VM at the VM's price per slot (leases on
/// machines that are not the fleet's cost nothing here).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseCost {
    /// The VM's pool.
    pub pool: String,
    /// The trial's sweep.
    pub sweep_id: i64,
    /// The trial's number.
    pub trial_number: i64,
    /// How the lease ended (`None`: still running).
    pub outcome: Option<String>,
    /// Seconds leased.
    pub seconds: f64,
    /// USD.
    pub usd: f64,
}

/// A change to a VM's record; `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmUpdate {
    /// The new state.
    pub state: Option<VmState>,
    /// The operation now waited for (`Some(None)` clears it).
    pub operation: Option<Option<String>>,
    /// The SHA-256 of its token.
    pub token_hash: Option<String>,
    /// When it became RUNNING.
    pub running_at: Option<i64>,
    /// A moment it was busy.
    pub busy_at: Option<i64>,
    /// When it ended.
    pub ended_at: Option<i64>,
    /// Why.
    pub reason: Option<String>,
}

/// The work waiting for a pool: trials of its running sweeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolDemand {
    /// Queued (or requeued) trials, plus trials not proposed yet within each sweep's
    /// parallelism.
    pub waiting: u64,
    /// Running trials.
    pub running: u64,
}

/// A logged model's status (MLflow 3's `LoggedModelStatus`, by its wire number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoggedModelStatus {
    /// 0: not given.
    Unspecified,
    /// 1: created, files being uploaded.
    Pending,
    /// 2: files uploaded.
    Ready,
    /// 3: saving the files failed.
    UploadFailed,
}

impl LoggedModelStatus {
    /// The wire number.
    pub fn number(self) -> i64 {
        match self {
            Self::Unspecified => 0,
            Self::Pending => 1,
            Self::Ready => 2,
            Self::UploadFailed => 3,
        }
    }

    /// From the wire number; anything unknown is unspecified, as the reference stores it.
    pub fn from_number(n: i64) -> Self {
        match n {
            1 => Self::Pending,
            2 => Self::Ready,
            3 => Self::UploadFailed,
            _ => Self::Unspecified,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "LOGGED_MODEL_STATUS_UNSPECIFIED",
            Self::Pending => "LOGGED_MODEL_PENDING",
            Self::Ready => "LOGGED_MODEL_READY",
            Self::UploadFailed => "LOGGED_MODEL_UPLOAD_FAILED",
        }
    }

    /// From a wire name (`LOGGED_MODEL_READY`, or the short `READY`) or number; `None` otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        let upper = text.trim().to_ascii_uppercase();
        let short = upper.strip_prefix("LOGGED_MODEL_").unwrap_or(&upper);
        Some(match short {
            "STATUS_UNSPECIFIED" | "UNSPECIFIED" | "0" => Self::Unspecified,
            "PENDING" | "1" => Self::Pending,
            "READY" | "2" => Self::Ready,
            "UPLOAD_FAILED" | "FAILED" | "3" => Self::UploadFailed,
            _ => return None,
        })
    }
}

/// A metric row logged with a model id: every row is kept, not only the latest.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetric {
    /// The metric key.
    pub key: String,
    /// Its value (NaN allowed).
    pub value: f64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The step.
    pub step: i64,
    /// The run that logged it ('' for none).
    pub run_id: String,
    /// The dataset it was computed on, when given.
    pub dataset_name: Option<String>,
    /// That dataset's digest, when given.
    pub dataset_digest: Option<String>,
}

/// A logged model (MLflow 3): its files live under `artifact_uri`, its own root.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedModel {
    /// `m-` and 32 hex digits.
    pub model_id: String,
    /// Its experiment.
    pub experiment_id: i64,
    /// Its name (e.g. `model`).
    pub name: String,
    /// A free-form type ('' for none).
    pub model_type: String,
    /// The run that logged it ('' for none).
    pub source_run_id: String,
    /// Where its files are.
    pub status: LoggedModelStatus,
    /// `<experiment artifact location>/models/<model_id>/artifacts`.
    pub artifact_uri: String,
    /// Deleted models are hidden.
    pub lifecycle_stage: LifecycleStage,
    /// Milliseconds since the epoch.
    pub creation_timestamp_ms: i64,
    /// Milliseconds since the epoch.
    pub last_updated_timestamp_ms: i64,
    /// Params, in the order they were logged.
    pub params: Vec<KeyValue>,
    /// Tags, by key.
    pub tags: Vec<KeyValue>,
    /// Every metric row logged with this model.
    pub metrics: Vec<ModelMetric>,
}

/// A logged model to create.
#[derive(Debug, Clone)]
pub struct NewLoggedModel {
    /// Its experiment (must be active).
    pub experiment_id: i64,
    /// Its name.
    pub name: String,
    /// A free-form type.
    pub model_type: String,
    /// The run that logs it ('' for none).
    pub source_run_id: String,
    /// Its first params.
    pub params: Vec<KeyValue>,
    /// Its first tags.
    pub tags: Vec<KeyValue>,
    /// Creation time, ms since the epoch.
    pub now: i64,
}

/// One sort key of a logged-models search.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOrderBy {
    /// What to sort on.
    pub key: spotsweep_core::search::ModelOrderKey,
    /// Ascending or descending; models without the key sort last either way.
    pub ascending: bool,
}

/// A logged-models search.
#[derive(Debug, Clone)]
pub struct LoggedModelQuery {
    /// The experiments to search (active models only).
    pub experiment_ids: Vec<i64>,
    /// `AND`-ed clauses.
    pub filter: Vec<spotsweep_core::search::ModelPredicate>,
    /// Sort keys; then `creation_timestamp_ms DESC, model_id ASC`.
    pub order_by: Vec<ModelOrderBy>,
    /// Models to skip.
    pub offset: u64,
    /// Models to return.
    pub limit: u32,
}

/// Whether a run consumed a model or produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelDirection {
    /// `runs/log-inputs` `models`.
    Input,
    /// `runs/outputs`.
    Output,
}

/// A run's model inputs and outputs, as `runs/get` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunModels {
    /// Model ids the run consumed.
    pub inputs: Vec<String>,
    /// Model ids the run produced, with the step.
    pub outputs: Vec<(String, i64)>,
}

/// A trace's record (MLflow 3): what search needs. Its spans are a `traces.json` artifact under
/// `<experiment artifact location>/traces/<trace_id>/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceInfo {
    /// `tr-` and 32 hex digits, chosen by the client.
    pub trace_id: String,
    /// Its experiment.
    pub experiment_id: i64,
    /// The client's own id for the request, when it gave one.
    pub client_request_id: Option<String>,
    /// When the request came, ms since the epoch.
    pub request_time_ms: i64,
    /// How long it ran, ms; `None` while in progress.
    pub execution_duration_ms: Option<i64>,
    /// `OK`, `ERROR`, `IN_PROGRESS` or `STATE_UNSPECIFIED`.
    pub state: String,
    /// The start of the request, for lists.
    pub request_preview: Option<String>,
    /// The start of the response, for lists.
    pub response_preview: Option<String>,
    /// Trace metadata, by key.
    pub metadata: Vec<KeyValue>,
    /// Tags, by key.
    pub tags: Vec<KeyValue>,
}

/// A traces search.
#[derive(Debug, Clone)]
pub struct TraceQuery {
    /// The experiments to search.
    pub experiment_ids: Vec<i64>,
    /// `AND`-ed clauses.
    pub filter: Vec<spotsweep_core::search::TracePredicate>,
    /// Sort keys; then `request time DESC, trace_id ASC`.
    pub order_by: Vec<spotsweep_core::search::TraceOrderBy>,
    /// Traces to skip.
    pub offset: u64,
    /// Traces to return.
    pub limit: u32,
}

/// Which traces of an experiment to delete.
#[derive(Debug, Clone)]
pub enum TraceDeletion {
    /// These ids.
    Ids(Vec<String>),
    /// Those whose request came at or before this time (ms), oldest first, at most `max`.
    OlderThan {
        /// The time, ms since the epoch.
        max_timestamp_ms: i64,
        /// At most this many.
        max: u32,
    },
}
