//! The wire contract of the daemon's own `/api/v1`: request and response types with their
//! OpenAPI schemas. One place defines each JSON shape; the server, the CLI and the agent all
//! use these types, and the agent and the CLI never depend on the server.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[cfg(feature = "client")]
pub mod client;

/// Every `/api/v1` error: a stable machine-readable code and a message for a person.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// Stable code, e.g. `not_found`, `invalid_request`, `unauthenticated`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// `POST /api/v1/tokens`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A label for the token (who or what uses it), 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Seconds until the token stops working (1 to 315,360,000, ten years); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 315_360_000)]
    pub expires_in: Option<i64>,
    /// `write` (default: everything) or `read` (every page and every read; anything that
    /// changes state is refused with a 403, creating tokens included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
}

/// Whether a token may change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Every page and every read; refused (403) on anything that changes state.
    Read,
    /// Everything its role allows.
    Write,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// The whole API; it may create and revoke user tokens.
    User,
    /// The token written to `admin.token` at first start: a user's rights, and it cannot be
    /// revoked through the API (`spotsweep token reset-admin` replaces it, offline).
    Admin,
}

/// A sweep's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SweepState {
    /// Trials are proposed and leased.
    Running,
    /// No new leases; running trials go on.
    Paused,
    /// Every trial has ended.
    Completed,
    /// Stopped by a person.
    Cancelled,
}

/// A trial's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// Waiting for an agent.
    Queued,
    /// Leased to an agent.
    Running,
    /// Finished with an objective value.
    Completed,
    /// Failed for good.
    Failed,
    /// Stopped early by the pruner.
    Pruned,
    /// Lost to a preemption; waits to be leased again.
    Preempted,
    /// Cancelled by a person.
    Cancelled,
}

/// What a heartbeat tells the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatAction {
    /// Keep going; the lease was extended.
    Continue,
    /// Stop the trial (cancelled, pruned, or the lease was lost).
    Stop,
}

/// How a leased trial ended, as its agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Exited successfully.
    Succeeded,
    /// Failed (non-zero exit, crash); retried up to the sweep's `max_retries`.
    Failed,
    /// Lost to a preemption; retried without counting as a failure.
    Preempted,
    /// Stopped by the pruner.
    Pruned,
    /// Stopped because the sweep or trial was cancelled.
    Cancelled,
    /// A trial that shared a GPU ran out of its memory: requeued with twice the memory, not a
    /// failure.
    OutOfMemory,
    /// The machine's setup failed: the trial is requeued for another machine, and a VM of the
    /// fleet is replaced.
    SetupFailed,
}

/// A fleet VM's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Recorded; the insert is being sent.
    Requested,
    /// Compute Engine is creating it.
    Provisioning,
    /// Running; its agent has not asked for work yet.
    Booting,
    /// Its agent asks for work.
    Ready,
    /// Idle or over budget: its agent finishes its trials, then the VM goes.
    Draining,
    /// Its delete is being sent.
    Deleting,
    /// Gone.
    Deleted,
    /// Stopped by Compute Engine.
    Preempted,
    /// Could not be created, or broke.
    Failed,
}

/// `as_str` (the wire word, as serde spells it) and `Display` for a wire enum.
macro_rules! wire_words {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

wire_words!(SweepState { Running => "running", Paused => "paused", Completed => "completed", Cancelled => "cancelled" });
wire_words!(TrialState {
    Queued => "queued",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Pruned => "pruned",
    Preempted => "preempted",
    Cancelled => "cancelled",
});
wire_words!(HeartbeatAction { Continue => "continue", Stop => "stop" });
wire_words!(OutcomeKind {
    Succeeded => "succeeded",
    Failed => "failed",
    Preempted => "preempted",
    Pruned => "pruned",
    Cancelled => "cancelled",
    OutOfMemory => "out_of_memory",
    SetupFailed => "setup_failed",
});
wire_words!(VmState {
    Requested => "requested",
    Provisioning => "provisioning",
    Booting => "booting",
    Ready => "ready",
    Draining => "draining",
    Deleting => "deleting",
    Deleted => "deleted",
    Preempted => "preempted",
    Failed => "failed",
});

/// A token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Stable id, used to revoke the token.
    pub id: String,
    /// The label given at creation.
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
    /// Whether it may change anything.
    pub scope: TokenScope,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When it stops working, milliseconds since the Unix epoch; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// A newly created token: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// Stable id, used to revoke the token.
    pub id: String,
    /// The label given at creation.
    pub name: String,
    /// What it may do (always `user`: the admin token is made at first start only).
    pub role: TokenRole,
    /// Whether it may change anything.
    pub scope: TokenScope,
    /// The secret, to send as `Authorization: Bearer <token>` (or `MLFLOW_TRACKING_TOKEN`).
    /// Only its hash is stored: it cannot be shown again.
    pub token: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When it stops working, milliseconds since the Unix epoch; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// `GET /api/v1/tokens`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// Live (not revoked) tokens, oldest first.
    pub tokens: Vec<TokenInfo>,
}

/// Trials of a sweep by state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TrialCountsBody {
    /// Waiting for an agent.
    pub queued: i64,
    /// Leased and running.
    pub running: i64,
    /// Finished with a value.
    pub completed: i64,
    /// Failed for good.
    pub failed: i64,
    /// Stopped early by the pruner.
    pub pruned: i64,
    /// Lost to a preemption, waiting to run again.
    pub preempted: i64,
    /// Cancelled.
    pub cancelled: i64,
}

/// The best completed trial so far.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BestTrial {
    /// Its number.
    pub number: i64,
    /// Its objective value.
    pub value: f64,
    /// Its MLflow run.
    pub run_id: String,
}

/// A sweep and its progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SweepBody {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Its state.
    pub state: SweepState,
    /// The MLflow experiment holding its runs.
    pub experiment_id: String,
    /// The pool whose agents run it.
    pub pool: String,
    /// The sweep seed (drawn and recorded when the spec gave none).
    pub seed: u64,
    /// Trials to run at most.
    pub max_trials: i64,
    /// Trials proposed so far.
    pub trials_created: i64,
    /// Trials by state.
    pub counts: TrialCountsBody,
    /// The objective metric.
    pub objective_metric: String,
    /// `minimize` or `maximize`.
    pub goal: String,
    /// The best completed trial so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestTrial>,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
    /// When it completed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Milliseconds from creation to the end (or to now).
    pub elapsed_ms: i64,
    /// What its trials have cost on fleet VMs so far, in USD (0 on the local pool).
    #[serde(default)]
    pub cost_usd: f64,
    /// The sweep's own MLflow run: its trials' runs are its children (`mlflow.parentRunId`).
    /// Absent for sweeps created before sweeps had runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The stored spec (seed included); absent in the list (`GET /api/v1/sweeps/{id}` has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub spec: Option<serde_json::Value>,
}

/// `GET /api/v1/sweeps`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SweepList {
    /// Sweeps, newest first.
    pub sweeps: Vec<SweepBody>,
    /// Pass as `page_token` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A trial of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrialBody {
    /// 0-based number in the sweep.
    pub number: i64,
    /// The sweep.
    pub sweep_id: i64,
    /// Hyperparameters (inactive conditional ones absent).
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Its state.
    pub state: TrialState,
    /// The objective value, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// How many times it was leased.
    pub attempts: i64,
    /// Failures so far (preemptions excluded).
    pub failures: i64,
    /// Its MLflow run.
    pub run_id: String,
    /// Its MLflow experiment.
    pub experiment_id: String,
    /// The trial's seed.
    pub seed: u64,
    /// The agent of its latest lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Why it failed, was pruned or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
    /// When its latest lease started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// The step at which a pruner stopped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_step: Option<i64>,
    /// For a rerun: the number of the trial it runs again (same parameters, seed and code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<i64>,
    /// The pool it runs on, when not its sweep's (a rerun elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// `POST /api/v1/sweeps/{id}/trials/{number}/rerun`: run a finished trial again.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// The pool to run it on (default: the sweep's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// `GET /api/v1/sweeps/{id}/trials/{number}/launch`: what the trial's agent ran, to run it by
/// hand (`spotsweep checkout`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrialLaunchBody {
    /// The trial.
    pub trial: TrialBody,
    /// The command line as the agent ran it with `sh -c` (parameters substituted), for command
    /// sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The notebook, for notebook sweeps (papermill, the parameters as YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebook: Option<NotebookBody>,
    /// The environment the command got that does not depend on the machine: the spec's `env`
    /// and `SPOTSWEEP_PARAMS`, `SPOTSWEEP_SEED`, `SPOTSWEEP_SWEEP_ID`, `SPOTSWEEP_TRIAL_NUMBER`,
    /// `SPOTSWEEP_TRIAL_ID`.
    pub env: std::collections::BTreeMap<String, String>,
    /// The code snapshot it ran in (`GET /api/v1/code/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The sweep's `setup` (staging data; run before the trial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    /// The code's version when the sweep was submitted (commit, branch, remote, dirty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub source: Option<serde_json::Value>,
    /// The sweep's MLflow run (its `diff.patch` artifact has a dirty tree's changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_run_id: Option<String>,
}

/// `GET /api/v1/sweeps/{id}/trials`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrialList {
    /// Trials by number.
    pub trials: Vec<TrialBody>,
}

/// `POST /api/v1/sweeps/{id}/trials`: a trial with fixed parameters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueTrialRequest {
    /// A value for every active parameter.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
}

/// `POST /api/v1/leases`: an agent (or any worker) asks for trials.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequestBody {
    /// A stable id the worker chose for itself (1 to 200 characters, not only spaces).
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub agent_id: String,
    /// A label for people (host name, slot layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    /// Unique per request and reused on retries, so a retried request leases nothing twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Free slots: trials it can take now (1 to 256).
    #[schema(minimum = 1, maximum = 256)]
    pub slots: u32,
    /// Only sweeps of this pool (default `local`); ignored when `sweep_id` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Only this sweep (ask-and-tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_id: Option<i64>,
    /// Long poll: wait up to this long for work (0 to 30000 ms, default 0).
    #[serde(default)]
    #[schema(maximum = 30000)]
    pub wait_ms: u64,
    /// Lease time to live without a heartbeat (5000 to 3600000 ms, default 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 5000, maximum = 3_600_000)]
    pub ttl_ms: Option<i64>,
    /// The agent's GPUs and their free memory: trials of sweeps that declare `resources` are
    /// leased only when they fit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 64)]
    pub gpus: Vec<GpuBody>,
    /// MiB of GPU memory each process's CUDA context takes, added to a trial's `gpu_memory_gb`
    /// (default 512, at most 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 65536)]
    pub gpu_overhead_mib: Option<u64>,
}

/// One of an agent's GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuBody {
    /// Its id for `CUDA_VISIBLE_DEVICES`.
    pub id: String,
    /// MiB trials may use on it in all.
    pub memory_mib: u64,
    /// MiB not held by the agent's running trials.
    pub free_mib: u64,
}

/// A GPU given to a trial and the memory held for it there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuShare {
    /// The GPU's id.
    pub id: String,
    /// MiB held for the trial on it.
    pub memory_mib: u64,
}

/// A notebook trial: run the input through papermill into the output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotebookBody {
    /// The notebook to execute.
    pub input: String,
    /// Where the executed notebook goes (placeholders already replaced).
    pub output: String,
}

/// A leased trial: what to run and how to report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseBody {
    /// Heartbeat and complete with this id.
    pub lease_id: String,
    /// When the lease expires without a heartbeat, ms since the Unix epoch.
    pub expires_at: i64,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: i64,
    /// The trial.
    pub trial: TrialBody,
    /// The command line (parameters substituted), for command sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The notebook, for notebook sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebook: Option<NotebookBody>,
    /// Extra environment from the spec.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The run's artifact root (`mlflow-artifacts:/...`).
    pub artifact_uri: String,
    /// The objective metric the trial should log.
    pub objective_metric: String,
    /// The trial's own token, to hand it as `MLFLOW_TRACKING_TOKEN`: good for its run, its
    /// experiment (reads) and this lease only, until the lease ends. Absent without auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_token: Option<String>,
    /// For a sweep with `resources`: the GPUs given to the trial (its `CUDA_VISIBLE_DEVICES`;
    /// empty for none). Absent: the agent hands its GPUs to its slots in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<GpuShare>>,
    /// Commands the agent runs once (the pool's, then the sweep's) before its first trial that
    /// needs them; report `setup_failed` when one fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<String>,
    /// The code snapshot (`sha256:<hex>`) the trial runs in: the agent downloads it once per
    /// machine (`GET /api/v1/code/{id}`), checks its hash, and runs the trial with its own copy
    /// as working directory and `SPOTSWEEP_CODE_DIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `POST /api/v1/leases` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseResponse {
    /// Leased trials (empty when no work came within `wait_ms`).
    pub leases: Vec<LeaseBody>,
}

/// `POST /api/v1/leases/{id}/heartbeat` (an empty body is the same as `{}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// New time to live (default: 60000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<i64>,
}

/// `POST /api/v1/leases/{id}/heartbeat` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    /// Keep going, or stop.
    pub action: HeartbeatAction,
    /// Why to stop: `pruned` when the pruner stopped the trial (report it as `pruned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /api/v1/leases/{id}/complete`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// How it ended.
    pub outcome: OutcomeKind,
    /// The objective value; when absent on `succeeded`, it is read from the run's metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Why it failed (exit code, last lines of stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /api/v1/pools`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolList {
    /// Every pool of the config, by name (the `local` pool always).
    pub pools: Vec<PoolInfo>,
}

/// A pool, its VMs and what it has spent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolInfo {
    /// Its name, as sweeps give it.
    pub name: String,
    /// `local` or `gce`.
    pub provider: String,
    /// The project (gce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Zones in order of preference (gce).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// The machine type (gce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    /// Trials per VM (gce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots_per_vm: Option<u32>,
    /// At most this many VMs (gce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vms: Option<u32>,
    /// USD per VM-hour (gce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_price_per_hour: Option<f64>,
    /// The budget, if any (gce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// Spent so far over every VM the pool had, in USD.
    pub spent_usd: f64,
    /// Its VMs, live ones and ended ones, oldest first.
    pub vms: Vec<VmInfo>,
    /// Zones backed off after a stockout, and until when.
    #[serde(default)]
    pub backoffs: Vec<ZoneBackoff>,
    /// The agents that have leased its trials (local agents, VMs' agents), by name.
    #[serde(default)]
    pub agents: Vec<AgentInfo>,
}

/// A zone the fleet does not ask for VMs in for now (it had no capacity).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ZoneBackoff {
    /// The zone.
    pub zone: String,
    /// Until when, ms since the Unix epoch.
    pub until: i64,
}

/// An agent of a pool and its work.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentInfo {
    /// Its name (a VM's name on a fleet pool).
    pub name: String,
    /// Trial slots it declared last.
    pub slots: i64,
    /// When it last asked for work (recorded at most once a minute), ms since the Unix epoch.
    pub last_seen_at: i64,
    /// Trials running on it now.
    pub running: i64,
    /// Attempts it ran.
    pub attempts: i64,
    /// Of those, lost to a preemption.
    pub preemptions: i64,
    /// Its GPUs and their memory not held by its trials, as its latest lease request said (empty:
    /// none, or not heard from since the daemon started).
    #[serde(default)]
    pub gpus: Vec<GpuBody>,
}

/// A VM of a pool.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmInfo {
    /// The instance name.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// Its state.
    pub state: VmState,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When it became RUNNING (billing starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_at: Option<i64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    /// Billed seconds so far.
    pub billed_seconds: f64,
    /// Its cost so far, in USD.
    pub cost_usd: f64,
    /// Why it failed or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Trial attempts its agent ran.
    #[serde(default)]
    pub trials_run: i64,
    /// Of those, lost to a preemption.
    #[serde(default)]
    pub preemptions: i64,
}

/// `GET /api/v1/cost`: what the fleet has cost, by pool, by sweep and (for one sweep) by trial.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CostReport {
    /// Each pool: every VM-second billed, idle and boot time included.
    pub pools: Vec<PoolCost>,
    /// Each sweep that ran on the fleet: its trials' share of the VMs they ran on.
    pub sweeps: Vec<SweepCost>,
    /// With `sweep_id`: each trial of that sweep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trials: Vec<TrialCost>,
}

/// What a pool has cost.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolCost {
    /// The pool.
    pub pool: String,
    /// USD billed so far.
    pub spent_usd: f64,
    /// Its budget, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// VM-seconds billed.
    pub vm_seconds: f64,
}

/// What a sweep's trials have cost: their time on fleet VMs at each VM's price per slot.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SweepCost {
    /// The sweep.
    pub sweep_id: i64,
    /// USD, every attempt included.
    pub cost_usd: f64,
    /// The part spent on attempts lost to preemption.
    pub lost_to_preemption_usd: f64,
    /// Trial-slot-seconds on fleet VMs.
    pub slot_seconds: f64,
}

/// What a trial has cost.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrialCost {
    /// The trial's number.
    pub number: i64,
    /// USD, every attempt included.
    pub cost_usd: f64,
    /// The part spent on attempts lost to preemption.
    pub lost_to_preemption_usd: f64,
    /// Attempts on fleet VMs.
    pub attempts: u32,
}

/// `GET /api/v1/me`: who the caller is and whether it may act.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MeBody {
    /// The token's name (`anonymous` without auth).
    pub name: String,
    /// Its role.
    pub role: TokenRole,
    /// Whether it may change anything.
    pub scope: TokenScope,
    /// Whether the daemon checks tokens at all.
    pub auth: bool,
    /// Whether MLflow's web UI is served at `/` (a trial's run page is
    /// `/#/experiments/<experiment>/runs/<run>`).
    #[serde(default)]
    pub mlflow_ui: bool,
}

/// `GET /api/v1/sweeps/{id}/table`: every trial of a sweep for the dashboard's table and plots,
/// by column (trial `i` is the `i`-th entry of each column): a column of similar values
/// compresses to a quarter less than the same trials as objects.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrialTable {
    /// The sweep.
    pub sweep_id: i64,
    /// Parameter names in spec order: `columns.p[k]` holds parameter `params[k]`.
    pub params: Vec<String>,
    /// The trials, by number.
    pub columns: TrialColumns,
}

/// The dashboard's trial table, by column.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TrialColumns {
    /// Numbers.
    pub n: Vec<i64>,
    /// States.
    pub state: Vec<TrialState>,
    /// Objective values (null until completed).
    pub value: Vec<Option<f64>>,
    /// One column per parameter, in `params` order; null where inactive.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub p: Vec<Vec<serde_json::Value>>,
    /// Times leased.
    pub attempts: Vec<i64>,
    /// Attempts lost to a preemption.
    pub preemptions: Vec<i64>,
    /// The agent (a VM's name on a fleet pool) of the latest attempt.
    pub agent: Vec<Option<String>>,
    /// When the latest attempt started, ms since the Unix epoch.
    pub started_at: Vec<Option<i64>>,
    /// When the trial ended.
    pub finished_at: Vec<Option<i64>>,
    /// USD on fleet VMs, every attempt included.
    pub cost_usd: Vec<f64>,
    /// MLflow runs.
    pub run_id: Vec<String>,
    /// The step at which a pruner stopped it.
    pub pruned_step: Vec<Option<i64>>,
    /// Why it failed, was pruned or cancelled (at most 300 characters).
    pub reason: Vec<Option<String>>,
    /// For a rerun, the number of the trial it runs again (reruns are no part of the search:
    /// leave them out of its plots).
    pub rerun_of: Vec<Option<i64>>,
}

/// `GET /api/v1/sweeps/{id}/importance`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportanceBody {
    /// How it was computed: `ped-anova`.
    pub method: String,
    /// Completed trials it was computed from.
    pub trials: usize,
    /// By importance, highest first, summing to 1 (empty with fewer than 2 trials).
    pub importances: Vec<ParamImportance>,
}

/// One parameter's share of the objective's variation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ParamImportance {
    /// The parameter.
    pub param: String,
    /// Its share, 0 to 1.
    pub importance: f64,
}

/// `GET /api/v1/sweeps/{id}/curves`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CurvesBody {
    /// The objective metric.
    pub metric: String,
    /// One curve per trial shown.
    pub curves: Vec<Curve>,
}

/// A trial's objective metric by step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Curve {
    /// The trial's number.
    pub n: i64,
    /// Its state.
    pub state: TrialState,
    /// The step at which a pruner stopped it.
    pub pruned_step: Option<i64>,
    /// Steps, ascending.
    pub steps: Vec<i64>,
    /// The metric at each step.
    pub values: Vec<f64>,
}

/// `GET /api/v1/sweeps/{id}/attempts`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptList {
    /// Every lease of the sweep's trials, oldest first.
    pub attempts: Vec<AttemptBody>,
}

/// One lease of a trial.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptBody {
    /// The trial's number.
    pub n: i64,
    /// 1 for its first lease.
    pub attempt: i64,
    /// The agent (a VM's name on a fleet pool).
    pub agent: String,
    /// When it started.
    pub started_at: i64,
    /// When it ended; null while it runs.
    pub ended_at: Option<i64>,
    /// `succeeded`, `failed`, `preempted`, `pruned`, `cancelled`, `expired`, `out_of_memory` or
    /// `setup_failed`; null while it runs.
    pub outcome: Option<String>,
}

/// `PUT /api/v1/code/{id}` answer: the snapshot as the daemon now holds it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CodeSnapshotBody {
    /// Its id, `sha256:<hex>` of its bytes, as a spec's `code` names it.
    pub code: String,
    /// Its size in bytes (compressed, as stored).
    pub size_bytes: u64,
    /// False when the daemon already had it (nothing was written).
    pub created: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `as_str` spells every word as serde does.
    #[test]
    fn wire_words_are_serde_s() {
        fn check<T: Serialize + Copy + std::fmt::Display>(all: &[T]) {
            for v in all {
                assert_eq!(
                    serde_json::to_value(v).unwrap(),
                    serde_json::Value::String(v.to_string())
                );
            }
        }
        use TrialState as T;
        check(&[
            T::Queued,
            T::Running,
            T::Completed,
            T::Failed,
            T::Pruned,
            T::Preempted,
            T::Cancelled,
        ]);
        use SweepState as S;
        check(&[S::Running, S::Paused, S::Completed, S::Cancelled]);
        check(&[HeartbeatAction::Continue, HeartbeatAction::Stop]);
        use OutcomeKind as O;
        check(&[
            O::Succeeded,
            O::Failed,
            O::Preempted,
            O::Pruned,
            O::Cancelled,
            O::OutOfMemory,
            O::SetupFailed,
        ]);
        use VmState as V;
        check(&[
            V::Requested,
            V::Provisioning,
            V::Booting,
            V::Ready,
            V::Draining,
            V::Deleting,
            V::Deleted,
            V::Preempted,
            V::Failed,
        ]);
    }
}
