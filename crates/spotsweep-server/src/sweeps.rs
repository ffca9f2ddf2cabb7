//! `/api/v1` routes of sweeps, trials and leases: the researcher's side (create, watch, pause,
//! cancel), the agents' side (lease with long polling, heartbeat, complete), and ask-and-tell
//! for any other worker (a lease on a named sweep, completed with a value).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use spotsweep_api::{
    BestTrial, CompleteRequest, EnqueueTrialRequest, GpuShare, HeartbeatRequest, HeartbeatResponse,
    LeaseBody, LeaseRequestBody, LeaseResponse, NotebookBody, RerunRequest, SweepBody, SweepList, TrialBody,
    TrialCountsBody, TrialLaunchBody, TrialList,
};
use spotsweep_core::sweep::{Goal, ParamValue, Params, SweepSpec, render_command, validate_params};
use spotsweep_store::{
    GpuFree, LeaseRequest, LeasedTrial, Outcome, Sweep, SweepState, Trial, TrialState, VmState, VmUpdate,
};
use tokio::sync::Notify;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api::{ApiBody, ApiError, ApiPath, ApiQuery};
use crate::auth::{TrialScope, trial_token};

/// The routes of sweeps, their trials, and the leases agents take on them.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_sweep, list_sweeps))
        .routes(routes!(get_sweep))
        .routes(routes!(pause_sweep))
        .routes(routes!(resume_sweep))
        .routes(routes!(cancel_sweep))
        .routes(routes!(list_trials, enqueue_trial))
        .routes(routes!(get_trial))
        .routes(routes!(rerun_trial))
        .routes(routes!(trial_launch))
        .routes(routes!(lease_trials))
        .routes(routes!(heartbeat))
        .routes(routes!(complete_trial))
}

/// Default lease time to live: an agent that misses heartbeats this long loses the trial.
pub const DEFAULT_LEASE_TTL_MS: i64 = 60_000;
/// Longest long poll of `POST /api/v1/leases`.
pub const MAX_WAIT_MS: u64 = 30_000;

/// Signals shared by the handlers and the background loops.
#[derive(Debug, Default)]
pub struct Signals {
    /// Work may have become available (a sweep created or resumed, a trial requeued or ended,
    /// freeing parallelism): long-polling lease requests try again.
    pub work: Notify,
    /// A lease was created: the expiry loop recomputes its next deadline.
    pub leases: Notify,
    /// What changed, for the dashboard's live updates.
    pub changes: crate::events::Changes,
    /// Each agent's GPUs, by name, as its latest lease request said (for the fleet page).
    pub agent_gpus: std::sync::Mutex<std::collections::HashMap<String, Vec<spotsweep_api::GpuBody>>>,
    /// When each agent was last recorded in the database.
    agents_seen: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Signals {
    /// Work may have become available, here or (told) on the other daemons.
    pub fn more_work(&self) {
        self.work.notify_waiters();
        self.changes.tell(crate::replicas::News::Work);
    }

    /// A lease was taken or ended: the expiry loop (wherever it runs) looks at the deadlines
    /// again, and the other daemons learn its trial token.
    pub fn leases_changed(&self) {
        self.leases.notify_one();
        self.changes.tell(crate::replicas::News::Leases);
    }

    /// Whether an agent should be recorded now (first seen, or not for a minute).
    fn should_record_agent(&self, agent_id: &str) -> bool {
        let Ok(mut seen) = self.agents_seen.lock() else {
            return true;
        };
        let now = std::time::Instant::now();
        match seen.get(agent_id) {
            Some(at) if now.duration_since(*at) < Duration::from_secs(60) => false,
            _ => {
                if seen.len() > 10_000 {
                    seen.clear();
                }
                seen.insert(agent_id.to_owned(), now);
                true
            }
        }
    }
}

fn trial_body(t: &Trial) -> TrialBody {
    TrialBody {
        number: t.number,
        sweep_id: t.sweep_id,
        params: serde_json::to_value(&t.params).unwrap_or_default(),
        state: crate::wire::trial_state(t.state),
        value: t.value,
        attempts: t.attempt,
        failures: t.failures,
        run_id: t.run_id.clone(),
        experiment_id: t.experiment_id.to_string(),
        seed: t.seed,
        agent_id: t.agent_id.clone(),
        reason: t.reason.clone(),
        created_at: t.created_at,
        started_at: t.started_at,
        finished_at: t.finished_at,
        pruned_step: t.pruned_step,
        rerun_of: t.rerun_of,
        pool: t.pool.clone(),
    }
}

pub(crate) fn sweep_body(s: &Sweep) -> SweepBody {
    let c = |state| s.counts.get(state);
    SweepBody {
        id: s.id,
        name: s.spec.name.clone(),
        state: crate::wire::sweep_state(s.state),
        experiment_id: s.experiment_id.to_string(),
        pool: s.spec.pool.clone(),
        seed: s.seed,
        max_trials: i64::from(s.spec.max_trials),
        trials_created: s.trials_created,
        counts: TrialCountsBody {
            queued: c(TrialState::Queued),
            running: c(TrialState::Running),
            completed: c(TrialState::Completed),
            failed: c(TrialState::Failed),
            pruned: c(TrialState::Pruned),
            preempted: c(TrialState::Preempted),
            cancelled: c(TrialState::Cancelled),
        },
        objective_metric: s.spec.objective.metric.clone(),
        goal: match s.spec.objective.goal {
            Goal::Minimize => "minimize".into(),
            Goal::Maximize => "maximize".into(),
        },
        best: s.best.as_ref().map(|(number, value, run_id)| BestTrial {
            number: *number,
            value: *value,
            run_id: run_id.clone(),
        }),
        created_at: s.created_at,
        finished_at: s.finished_at,
        elapsed_ms: s.finished_at.unwrap_or_else(spotsweep_store::now_ms) - s.created_at,
        cost_usd: 0.0,
        run_id: s.run_id.clone(),
        spec: Some(serde_json::to_value(&s.spec).unwrap_or_default()),
    }
}

/// The trial's own token for a lease, recorded as live until the lease ends.
fn issue_trial_token(s: &AppState, l: &LeasedTrial) -> String {
    let token = trial_token(&s.daemon_secret, &l.lease_id);
    s.auth.add_trial(
        &token,
        TrialScope {
            lease_id: l.lease_id.clone(),
            run_id: l.trial.run_id.clone(),
            experiment_id: l.trial.experiment_id.to_string(),
            issued_at: spotsweep_store::now_ms(),
        },
    );
    token
}

/// Makes the trial tokens of the open leases live (at start: trials that ran through a restart
/// keep their tokens) and forgets those of leases that ended.
pub async fn sync_trial_tokens(s: &AppState) -> Result<(), spotsweep_store::StoreError> {
    if !s.auth.enabled {
        return Ok(());
    }
    // A lease committed while this reads has its token added meanwhile: keep those (a snapshot
    // older than a token says nothing about it).
    let read_at = spotsweep_store::now_ms();
    let open = s.fleet.open_lease_runs().await?;
    s.auth.sync_trials(&s.daemon_secret, &open, read_at);
    Ok(())
}

fn lease_body(l: &LeasedTrial, ttl_ms: i64, pool_setup: Option<&str>) -> LeaseBody {
    let number = l.trial.number as u64;
    let spec = &l.spec;
    LeaseBody {
        lease_id: l.lease_id.clone(),
        expires_at: l.expires_at,
        heartbeat_interval_ms: (ttl_ms / 4).clamp(1_000, 30_000),
        trial: trial_body(&l.trial),
        command: spec
            .command
            .as_deref()
            .map(|c| render_command(c, &l.trial.params, number)),
        notebook: spec.notebook.as_ref().map(|n| NotebookBody {
            input: n.input.clone(),
            output: n
                .output
                .replace("{trial}", &number.to_string())
                .replace("{run_id}", &l.trial.run_id),
        }),
        env: spec.env.clone(),
        artifact_uri: l.trial.artifact_uri.clone(),
        objective_metric: spec.objective.metric.clone(),
        trial_token: None,
        setup: pool_setup
            .into_iter()
            .chain(spec.setup.as_deref())
            .map(str::to_owned)
            .collect(),
        code: spec.code.clone(),
        gpus: l.gpus.as_ref().map(|shares| {
            shares
                .iter()
                .map(|g| GpuShare {
                    id: g.id.clone(),
                    memory_mib: g.memory_mib,
                })
                .collect()
        }),
    }
}

/// Parses a spec, naming the field of a type or shape error (`objective.goal: unknown variant
/// `up`, expected `minimize` or `maximize``).
fn parse_spec(body: &[u8]) -> Result<SweepSpec, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::invalid(format!("invalid sweep spec: {inner}"))
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })
}

/// Submits a sweep. The spec is validated; the seed is drawn when absent and recorded.
#[utoipa::path(
    post,
    path = "/api/v1/sweeps",
    tag = "sweeps",
    request_body(content = Object, description = "A sweep spec (see the README)"),
    responses(
        (status = 201, description = "The sweep, running", body = SweepBody),
        (status = 400, description = "The spec is invalid; the message names the field", body = spotsweep_api::ApiErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_sweep(
    State(s): State<AppState>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<SweepBody>), ApiError> {
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(&body)
        && fields.contains_key("workdir")
    {
        return Err(ApiError::invalid(
            "workdir: the spotsweep CLI packs a working directory (submit, run, notebook); over REST, upload its \
             tar.gz with PUT /api/v1/code/sha256:<hex> and send code: \"sha256:<hex>\" instead",
        ));
    }
    let mut spec: SweepSpec = parse_spec(&body)?;
    spec.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Some(code) = &spec.code {
        crate::code::check_exists(&s, code).await?;
    }
    let seed = spec.sampler.seed.unwrap_or_else(rand::random);
    spec.sampler.seed = Some(seed);
    // A dirty tree's diff is kept as an artifact of the sweep's run, not in the stored spec
    // (which every lease carries).
    let diff = spec.source.as_mut().and_then(|source| source.diff.take());
    if diff.as_ref().is_some_and(|d| d.len() > MAX_DIFF_BYTES) {
        return Err(ApiError::invalid(format!(
            "source.diff is over {} MiB: cut it (and say so with diff_truncated: true)",
            MAX_DIFF_BYTES >> 20
        )));
    }
    let sweep = s.sweeps.create_sweep(spec, seed).await?;
    tracing::info!(id = sweep.id, name = %sweep.spec.name, "sweep created");
    log_sweep_artifacts(&s, &sweep, diff).await;
    s.signals.more_work();
    s.signals.changes.sweep(sweep.id);
    Ok((StatusCode::CREATED, Json(sweep_body(&sweep))))
}

/// The largest `source.diff` a sweep may carry (the CLI cuts diffs at 1 MiB).
const MAX_DIFF_BYTES: usize = 4 << 20;

/// Logs a new sweep's spec (`spec.json`) and its code's diff (`diff.patch`) to its run. The
/// sweep stands without them (its spec is in the sweep itself): a failure is logged, not
/// answered.
async fn log_sweep_artifacts(s: &AppState, sweep: &Sweep, diff: Option<String>) {
    let Some(run_id) = &sweep.run_id else { return };
    let result = async {
        let run = s.tracking.get_run(run_id).await?;
        let root = &run.info.artifact_uri;
        let spec = serde_json::to_vec_pretty(&sweep.spec).unwrap_or_default();
        s.artifacts.put_under(root, "spec.json", spec).await?;
        if let Some(diff) = diff {
            s.artifacts
                .put_under(root, "diff.patch", diff.into_bytes())
                .await?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(sweep = sweep.id, error = %e, "cannot log the sweep run's artifacts");
    }
}

/// Logs the sweep's best value so far to its run (`best_<objective metric>`, at step = the
/// trial's number) when `trial` completed and is now the sweep's best: the metric's history is
/// the best value each improving trial reached, in the order they completed.
async fn log_best_value(s: &AppState, trial: &Trial) {
    if trial.state != TrialState::Completed || trial.value.is_none() {
        return;
    }
    let result = async {
        let best = s.sweeps.sweep_best(trial.sweep_id).await?;
        let (Some(run_id), Some((number, value, _))) = (&best.run_id, best.best) else {
            return anyhow::Ok(());
        };
        if number != trial.number {
            return Ok(());
        }
        let metric = spotsweep_store::Metric {
            key: format!("best_{}", best.metric),
            value,
            timestamp: spotsweep_store::now_ms(),
            step: number,
        };
        s.tracking
            .log_batch(
                run_id,
                spotsweep_store::Batch {
                    metrics: vec![metric],
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(sweep = trial.sweep_id, error = %e, "cannot log the sweep's best value");
    }
}

/// `GET /api/v1/sweeps` query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct SweepListQuery {
    /// Only sweeps in this state (`running`, `paused`, `completed`, `cancelled`).
    pub state: Option<String>,
    /// Only sweeps whose name contains this (case-insensitive).
    pub name: Option<String>,
    /// Sweeps per page, 1 to 1000 (default 100).
    pub max_results: Option<u32>,
    /// The previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// Lists sweeps, newest first, a page at a time, with their progress, best trial and cost (the
/// spec is left out: `GET /api/v1/sweeps/{id}` has it).
#[utoipa::path(get, path = "/api/v1/sweeps", tag = "sweeps", params(SweepListQuery),
    responses((status = 200, description = "Sweeps", body = SweepList),
              (status = 400, description = "A bad filter or page token", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn list_sweeps(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<SweepListQuery>,
) -> Result<Json<SweepList>, ApiError> {
    let state = match q.state.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(SweepState::parse(v).ok_or_else(|| {
            ApiError::invalid(format!(
                "state '{v}' is not a sweep state: use running, paused, completed or cancelled"
            ))
        })?),
    };
    let limit = q.max_results.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("max_results must be between 1 and 1000"));
    }
    let before_id = match q.page_token.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(t) => Some(t.parse::<i64>().map_err(|_| {
            ApiError::invalid("page_token is not one this daemon gave: pass next_page_token as it came")
        })?),
    };
    let query = spotsweep_store::SweepQuery {
        state,
        name_contains: q.name.filter(|n| !n.is_empty()),
        before_id,
        limit,
    };
    let (page, more) = s.sweeps.sweeps_page(&query).await?;
    let costs = sweep_costs(&s).await?;
    let sweeps = page
        .iter()
        .map(|sweep| {
            let mut body = sweep_body(sweep);
            body.spec = None;
            body.cost_usd = costs.get(&sweep.id).copied().unwrap_or(0.0);
            body
        })
        .collect();
    Ok(Json(SweepList {
        sweeps,
        next_page_token: more
            .then(|| page.last().map(|last| last.id.to_string()))
            .flatten(),
    }))
}

/// What each sweep's trials have cost on fleet VMs, in USD.
pub(crate) async fn sweep_costs(s: &AppState) -> Result<std::collections::HashMap<i64, f64>, ApiError> {
    let mut costs = std::collections::HashMap::new();
    for lease in s.fleet.lease_costs(None, None).await? {
        *costs.entry(lease.sweep_id).or_insert(0.0) += lease.usd;
    }
    Ok(costs)
}

/// One sweep: counts by state, best trial so far, elapsed time.
#[utoipa::path(get, path = "/api/v1/sweeps/{id}", tag = "sweeps",
    params(("id" = i64, Path, description = "Sweep id")),
    responses((status = 200, description = "The sweep", body = SweepBody), (status = 404, description = "No such sweep", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn get_sweep(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<SweepBody>, ApiError> {
    let mut body = sweep_body(&s.sweeps.get_sweep(id).await?);
    body.cost_usd = s
        .fleet
        .lease_costs(None, Some(id))
        .await?
        .iter()
        .map(|l| l.usd)
        .sum();
    Ok(Json(body))
}

async fn change_state(s: &AppState, id: i64, state: SweepState) -> Result<Json<SweepBody>, ApiError> {
    let sweep = s.sweeps.set_sweep_state(id, state).await?;
    tracing::info!(id, state = state.as_str(), "sweep state changed");
    s.signals.more_work();
    s.signals.changes.sweep(id);
    Ok(Json(sweep_body(&sweep)))
}

/// Pauses a sweep: no new leases; running trials go on.
#[utoipa::path(post, path = "/api/v1/sweeps/{id}/pause", tag = "sweeps",
    params(("id" = i64, Path, description = "Sweep id")),
    responses((status = 200, description = "The sweep", body = SweepBody), (status = 400, description = "Already finished", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn pause_sweep(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<SweepBody>, ApiError> {
    change_state(&s, id, SweepState::Paused).await
}

/// Resumes a paused sweep.
#[utoipa::path(post, path = "/api/v1/sweeps/{id}/resume", tag = "sweeps",
    params(("id" = i64, Path, description = "Sweep id")),
    responses((status = 200, description = "The sweep", body = SweepBody), (status = 400, description = "Already finished", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn resume_sweep(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<SweepBody>, ApiError> {
    change_state(&s, id, SweepState::Running).await
}

/// Cancels a sweep: queued trials are cancelled, running ones are told to stop.
#[utoipa::path(post, path = "/api/v1/sweeps/{id}/cancel", tag = "sweeps",
    params(("id" = i64, Path, description = "Sweep id")),
    responses((status = 200, description = "The sweep", body = SweepBody), (status = 400, description = "Already finished", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_sweep(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<SweepBody>, ApiError> {
    change_state(&s, id, SweepState::Cancelled).await
}

/// A sweep's trials by number.
#[utoipa::path(get, path = "/api/v1/sweeps/{id}/trials", tag = "sweeps",
    params(("id" = i64, Path, description = "Sweep id")),
    responses((status = 200, description = "Trials", body = TrialList), (status = 404, description = "No such sweep", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn list_trials(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<TrialList>, ApiError> {
    s.sweeps.get_sweep(id).await?;
    let trials = s.sweeps.list_trials(id).await?;
    Ok(Json(TrialList {
        trials: trials.iter().map(trial_body).collect(),
    }))
}

/// Queues a trial with fixed parameters (it counts towards `max_trials`).
#[utoipa::path(post, path = "/api/v1/sweeps/{id}/trials", tag = "sweeps",
    params(("id" = i64, Path, description = "Sweep id")),
    request_body = EnqueueTrialRequest,
    responses((status = 201, description = "The queued trial", body = TrialBody), (status = 400, description = "Bad parameters", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn enqueue_trial(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<TrialBody>), ApiError> {
    let req: EnqueueTrialRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("invalid body: {e}")))?;
    let given: Params = serde_json::from_value(req.params)
        .map_err(|e| ApiError::invalid(format!("params must map parameter names to values: {e}")))?;
    let sweep = s.sweeps.get_sweep(id).await?;
    validate_params(&sweep.spec, &given).map_err(|e| ApiError::invalid(e.to_string()))?;
    // In spec order, with integers given for float parameters written as floats.
    let params: Params = sweep
        .spec
        .parameters
        .iter()
        .filter_map(|(name, dist)| {
            given.get(name).map(|v| {
                let v = match (dist, v) {
                    (spotsweep_core::sweep::Distribution::Float { .. }, ParamValue::Int(i)) => {
                        ParamValue::Float(*i as f64)
                    }
                    _ => v.clone(),
                };
                (name.clone(), v)
            })
        })
        .collect();
    let trial = s.sweeps.enqueue_trial(id, params).await?;
    s.signals.more_work();
    s.signals.changes.sweep(id);
    Ok((StatusCode::CREATED, Json(trial_body(&trial))))
}

/// One trial of a sweep.
#[utoipa::path(get, path = "/api/v1/sweeps/{id}/trials/{number}", tag = "sweeps",
    params(("id" = i64, Path, description = "Sweep id"), ("number" = i64, Path, description = "Trial number")),
    responses((status = 200, description = "The trial", body = TrialBody),
              (status = 404, description = "No such sweep or trial", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn get_trial(
    State(s): State<AppState>,
    ApiPath((id, number)): ApiPath<(i64, i64)>,
) -> Result<Json<TrialBody>, ApiError> {
    Ok(Json(trial_body(&s.sweeps.get_trial(id, number).await?)))
}

/// Runs a finished trial again: a new trial of the sweep with the same parameters, seed and code
/// snapshot, linked to the original (`rerun_of`, and the run's `spotsweep.rerun_of` tags), on
/// the sweep's pool or the one given. It runs even when the sweep has ended (a paused sweep holds
/// it until resumed), does not count towards `max_trials`, is never pruned, and is no evidence
/// for the sampler or the sweep's best.
#[utoipa::path(post, path = "/api/v1/sweeps/{id}/trials/{number}/rerun", tag = "sweeps",
    params(("id" = i64, Path, description = "Sweep id"), ("number" = i64, Path, description = "The trial to run again")),
    request_body = RerunRequest,
    responses((status = 201, description = "The new trial, queued", body = TrialBody),
              (status = 400, description = "A bad pool name", body = spotsweep_api::ApiErrorBody),
              (status = 404, description = "No such sweep or trial", body = spotsweep_api::ApiErrorBody),
              (status = 409, description = "The trial has not ended yet", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn rerun_trial(
    State(s): State<AppState>,
    ApiPath((id, number)): ApiPath<(i64, i64)>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<TrialBody>), ApiError> {
    let req: RerunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RerunRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("invalid body: {e}")))?
    };
    if let Some(pool) = &req.pool
        && (pool.trim().is_empty() || pool.len() > 100 || pool.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "pool must be a pool's name: 1 to 100 characters, no control characters",
        ));
    }
    let trial = s.sweeps.rerun_trial(id, number, req.pool.as_deref()).await?;
    tracing::info!(
        sweep = id,
        trial = trial.number,
        rerun_of = number,
        "rerun queued"
    );
    s.signals.more_work();
    s.signals.changes.sweep(id);
    s.signals.changes.fleet();
    Ok((StatusCode::CREATED, Json(trial_body(&trial))))
}

/// What a trial's agent ran, to run it again by hand: the command line (or notebook), the
/// environment that does not depend on the machine, the code snapshot and the code's version.
#[utoipa::path(get, path = "/api/v1/sweeps/{id}/trials/{number}/launch", tag = "sweeps",
    params(("id" = i64, Path, description = "Sweep id"), ("number" = i64, Path, description = "Trial number")),
    responses((status = 200, description = "How the trial was launched", body = TrialLaunchBody),
              (status = 404, description = "No such sweep or trial", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn trial_launch(
    State(s): State<AppState>,
    ApiPath((id, number)): ApiPath<(i64, i64)>,
) -> Result<Json<TrialLaunchBody>, ApiError> {
    let sweep = s.sweeps.get_sweep(id).await?;
    let trial = s.sweeps.get_trial(id, number).await?;
    let spec = &sweep.spec;
    let n = trial.number as u64;
    let params = serde_json::to_value(&trial.params).unwrap_or_default();
    let mut env = spec.env.clone();
    env.insert("SPOTSWEEP_PARAMS".into(), params.to_string());
    env.insert("SPOTSWEEP_SEED".into(), trial.seed.to_string());
    env.insert("SPOTSWEEP_SWEEP_ID".into(), id.to_string());
    env.insert("SPOTSWEEP_TRIAL_NUMBER".into(), n.to_string());
    env.insert("SPOTSWEEP_TRIAL_ID".into(), format!("{id}-{n}"));
    Ok(Json(TrialLaunchBody {
        command: spec
            .command
            .as_deref()
            .map(|c| render_command(c, &trial.params, n)),
        notebook: spec.notebook.as_ref().map(|nb| NotebookBody {
            input: nb.input.clone(),
            output: nb
                .output
                .replace("{trial}", &n.to_string())
                .replace("{run_id}", &trial.run_id),
        }),
        env,
        code: spec.code.clone(),
        setup: spec.setup.clone(),
        source: spec
            .source
            .as_ref()
            .and_then(|src| serde_json::to_value(src).ok()),
        sweep_run_id: sweep.run_id.clone(),
        trial: trial_body(&trial),
    }))
}

/// Leases trials to an agent or worker, waiting up to `wait_ms` for work (long poll). Each
/// trial is proposed by its sweep's sampler now, so it sees every result so far.
#[utoipa::path(post, path = "/api/v1/leases", tag = "leases",
    request_body = LeaseRequestBody,
    responses((status = 200, description = "Leased trials (possibly none)", body = LeaseResponse), (status = 400, description = "Bad request", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn lease_trials(
    State(s): State<AppState>,
    vm: Option<axum::Extension<crate::auth::VmPrincipal>>,
    ApiBody(body): ApiBody,
) -> Result<Json<LeaseResponse>, ApiError> {
    let mut req: LeaseRequestBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("invalid lease request: {e}")))?;
    // A VM's agent leases its own pool's trials, under its own name.
    let vm_pool =
        match vm {
            Some(axum::Extension(crate::auth::VmPrincipal(scope))) => {
                if !req.agent_id.starts_with(&format!("{}-", scope.name)) {
                    return Err(ApiError::forbidden(format!(
                        "agent_id must start with '{}-': this token belongs to VM {}",
                        scope.name, scope.name
                    )));
                }
                req.agent_name = Some(scope.name.clone());
                req.pool = Some(scope.pool.clone());
                let blocked = s
                    .budget_blocked
                    .lock()
                    .map(|b| b.contains(&scope.pool))
                    .unwrap_or(false);
                // A VM being drained (its setup failed) takes no more trials, even from a restarted
                // agent.
                let draining =
                    s.fleet.list_vms(Some(&scope.pool), false).await?.iter().any(|v| {
                        v.name == scope.name && !matches!(v.state, VmState::Booting | VmState::Ready)
                    });
                if blocked || draining {
                    // The pool's budget allows no new trial, or the VM is on its way out: nothing to
                    // lease (after a pause, so that the agent does not spin).
                    tokio::time::sleep(Duration::from_millis(req.wait_ms.min(5_000))).await;
                    return Ok(Json(LeaseResponse { leases: Vec::new() }));
                }
                Some(scope.pool)
            }
            None => None,
        };
    if req.agent_id.trim().is_empty() || req.agent_id.len() > 200 {
        return Err(ApiError::invalid("agent_id must be 1 to 200 characters"));
    }
    if !(1..=256).contains(&req.slots) {
        return Err(ApiError::invalid("slots must be between 1 and 256"));
    }
    if req.gpu_overhead_mib.is_some_and(|m| m > 65_536) {
        return Err(ApiError::invalid(
            "gpu_overhead_mib must be at most 65536 (64 GiB)",
        ));
    }
    if req.gpus.len() > 64 {
        return Err(ApiError::invalid("gpus: at most 64 GPUs per agent"));
    }
    if let Some(g) = req.gpus.iter().find(|g| g.id.is_empty() || g.id.contains(',')) {
        return Err(ApiError::invalid(format!(
            "gpus: '{}' is not a GPU id (a CUDA device index or UUID, without commas)",
            g.id
        )));
    }
    if req.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::invalid(format!(
            "wait_ms must be at most {MAX_WAIT_MS}"
        )));
    }
    let ttl_ms = req.ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS);
    if !(5_000..=3_600_000).contains(&ttl_ms) {
        return Err(ApiError::invalid("ttl_ms must be between 5000 and 3600000"));
    }
    let pool = if vm_pool.is_some() {
        vm_pool
    } else if req.sweep_id.is_some() {
        None
    } else {
        Some(req.pool.clone().unwrap_or_else(|| "local".into()))
    };
    let agent_name = req.agent_name.as_deref().unwrap_or(&req.agent_id);
    if let Ok(mut gpus) = s.signals.agent_gpus.lock()
        && gpus.get(agent_name) != Some(&req.gpus)
    {
        if gpus.len() > 10_000 {
            gpus.clear();
        }
        gpus.insert(agent_name.to_owned(), req.gpus.clone());
    }
    // Recording the agent is a write of its own: once a minute per agent is plenty.
    if s.signals.should_record_agent(&req.agent_id) {
        s.sweeps
            .register_agent(
                &req.agent_id,
                req.agent_name.as_deref().unwrap_or(&req.agent_id),
                pool.as_deref().unwrap_or("-"),
                req.slots,
            )
            .await?;
        s.signals.changes.fleet();
    }
    let request = LeaseRequest {
        agent_id: req.agent_id.clone(),
        request_id: req.request_id.clone(),
        slots: req.slots,
        pool,
        sweep_id: req.sweep_id,
        ttl_ms,
        gpus: req
            .gpus
            .iter()
            .map(|g| GpuFree {
                id: g.id.clone(),
                memory_mib: g.memory_mib,
                free_mib: g.free_mib.min(g.memory_mib),
            })
            .collect(),
        gpu_overhead_mib: req.gpu_overhead_mib.unwrap_or(512),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms);
    loop {
        // Register interest before looking, so a notification between the look and the wait
        // is not lost.
        let notified = s.signals.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let leased = s.sweeps.lease_trials(&request).await?;
        if !leased.is_empty() {
            s.signals.leases_changed();
            // The trials run now, on an agent the fleet page shows busier.
            for l in &leased {
                s.signals.changes.sweep(l.trial.sweep_id);
            }
            s.signals.changes.fleet();
            return Ok(Json(LeaseResponse {
                leases: leased
                    .iter()
                    .map(|l| {
                        let pool = l.trial.pool.as_deref().unwrap_or(&l.spec.pool);
                        let pool_setup = s.pools.get(pool).and_then(|p| p.setup());
                        let mut body = lease_body(l, ttl_ms, pool_setup);
                        body.trial_token = s.auth.enabled.then(|| issue_trial_token(&s, l));
                        body
                    })
                    .collect(),
            }));
        }
        tokio::select! {
            _ = &mut notified => continue,
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(LeaseResponse { leases: vec![] })),
        }
    }
}

/// Extends a lease; answers `stop` when the trial was cancelled or pruned or the lease lost.
#[utoipa::path(post, path = "/api/v1/leases/{id}/heartbeat", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    request_body = HeartbeatRequest,
    responses((status = 200, description = "What to do", body = HeartbeatResponse), (status = 404, description = "No such lease", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub async fn heartbeat(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiBody(body): ApiBody,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let req: HeartbeatRequest = if body.is_empty() {
        HeartbeatRequest { ttl_ms: None }
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("invalid heartbeat: {e}")))?
    };
    let ttl = req.ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS).clamp(5_000, 3_600_000);
    let (action, reason) = crate::wire::heartbeat(s.sweeps.heartbeat(&id, ttl).await?);
    Ok(Json(HeartbeatResponse { action, reason }))
}

/// Ends a lease with its outcome. Idempotent: a retried completion gets the same answer. A
/// completion that arrives after its lease expired is still taken if nobody took the trial since.
#[utoipa::path(post, path = "/api/v1/leases/{id}/complete", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    request_body = CompleteRequest,
    responses(
        (status = 200, description = "The trial as it now is", body = TrialBody),
        (status = 404, description = "No such lease", body = spotsweep_api::ApiErrorBody),
        (status = 409, description = "The lease expired and the trial was leased again", body = spotsweep_api::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn complete_trial(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiBody(body): ApiBody,
) -> Result<Json<TrialBody>, ApiError> {
    let req: CompleteRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("invalid completion: {e}")))?;
    if req.outcome == spotsweep_api::OutcomeKind::Succeeded
        && let Some(v) = req.value
        && !v.is_finite()
    {
        return Err(ApiError::invalid("value must be a finite number"));
    }
    let outcome = crate::wire::outcome(req.outcome, req.value, req.reason.clone());
    let setup_failed = matches!(outcome, Outcome::SetupFailed(_));
    let agent = if setup_failed {
        s.fleet.lease_agent_name(&id).await?
    } else {
        None
    };
    let trial = s.sweeps.complete_trial(&id, outcome).await?;
    log_best_value(&s, &trial).await;
    s.auth.retain_trials(|lease| lease != id);
    // Its trial token dies on the other daemons too.
    s.signals.changes.tell(crate::replicas::News::Leases);
    if let Some(agent) = agent {
        drain_bad_vm(&s, &agent, &reason_of(&trial)).await?;
    }
    // The trial freed a slot of its sweep, or went back to the queue.
    s.signals.more_work();
    s.signals.changes.sweep(trial.sweep_id);
    s.signals.changes.fleet();
    Ok(Json(trial_body(&trial)))
}

fn reason_of(trial: &Trial) -> String {
    trial.reason.clone().unwrap_or_else(|| "setup failed".into())
}

/// A fleet VM whose setup failed takes no more trials: draining, it is deleted (and replaced if
/// work remains) once nothing runs on it.
async fn drain_bad_vm(s: &AppState, agent_name: &str, reason: &str) -> Result<(), ApiError> {
    let vms = s.fleet.list_vms(None, false).await?;
    if let Some(vm) = vms
        .iter()
        .find(|v| v.name == agent_name && matches!(v.state, VmState::Booting | VmState::Ready))
    {
        let first_line = reason.lines().next().unwrap_or(reason);
        tracing::warn!(pool = %vm.pool, vm = %vm.name, reason = %first_line, "setup failed on the VM: draining it");
        s.fleet
            .update_vm(
                vm.id,
                &VmUpdate {
                    state: Some(VmState::Draining),
                    reason: Some(format!("setup failed: {first_line}")),
                    ..VmUpdate::default()
                },
            )
            .await?;
    }
    Ok(())
}

/// The lease expiry loop, on the daemon that leads `expiry`: sleeps until the next lease's
/// deadline (or until a new lease may have an earlier one), requeues what expired, and wakes
/// long-polling agents when it did.
pub async fn expire_leases_loop(s: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    // One daemon expires leases (see `leadership`).
    let mut role = s.leadership.role("expiry").await;
    loop {
        if !crate::leadership::until_held(&mut role, &mut shutdown).await {
            return;
        }
        let next = match s.sweeps.next_lease_expiry().await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read lease deadlines; retrying in 1 s");
                Some(spotsweep_store::now_ms() + 1_000)
            }
        };
        let now = spotsweep_store::now_ms();
        // No open lease: sleep until one is created.
        let wait = next
            .map(|at| Duration::from_millis((at - now).max(0) as u64 + 1))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = s.signals.leases.notified() => continue,
            _ = shutdown.changed() => return,
        }
        let expired = crate::caught(
            "expiring leases",
            s.sweeps.expire_leases(spotsweep_store::now_ms()),
        )
        .await;
        match expired {
            Some(Ok(0)) | None => {}
            Some(Ok(n)) => {
                tracing::info!(expired = n, "leases expired; their trials are requeued or failed");
                s.signals.more_work();
                s.signals.changes.tell(crate::replicas::News::Leases);
                s.signals.changes.any();
            }
            Some(Err(e)) => tracing::warn!(error = %e, "expiring leases failed; will retry"),
        }
        // Each round: the tokens of leases that ended, however they ended, stop working.
        if let Some(Err(e)) = crate::caught("forgetting ended leases' tokens", sync_trial_tokens(&s)).await {
            tracing::warn!(error = %e, "cannot forget the tokens of ended leases; will retry");
        }
    }
}
