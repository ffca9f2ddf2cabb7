//! Sweeps, trials and leases on PostgreSQL: the durable trial queue, shared by every daemon on
//! the database.
//!
//! The rules (what an outcome does, fair share, GPU placement, when a sweep is done) are
//! `spotsweep_core::queue`'s; this module reads, locks and writes. Transactions run at READ
//! COMMITTED, so everything that two daemons could race on is decided under a row lock:
//!
//! - **A sweep's row lock** (`SELECT ... FROM sweeps ... FOR UPDATE`) guards its trials: every
//!   transaction that counts or changes them takes it first (leasing, completing, expiring,
//!   cancelling, enqueueing, rerunning). Under it the counts of running trials and
//!   `trials_created` are exact, so two daemons leasing at once never overshoot `parallelism`
//!   or `max_trials`, and the last two completions of a sweep cannot both miss that it is done.
//! - **Trial rows** are claimed with `FOR UPDATE SKIP LOCKED` (a waiting trial, a rerun), and a
//!   lease with its trial with `FOR UPDATE` before a completion or an expiry judges it: a
//!   completion and an expiry of one lease, or two completions, are applied one after the other,
//!   the second seeing what the first did.
//! - **Lock order**: a sweep before its trials and leases, always. A transaction waits for a
//!   sweep's lock only while it holds no other sweep's lock, or, when it must hold several
//!   (an expiry of many leases), takes them in sweep id order; a lease request that already holds
//!   one sweep passes over a sweep another transaction holds (`SKIP LOCKED`) rather than wait. So
//!   no two transactions wait on each other.
//! - **A retried lease request** (same request id) takes a transaction-level advisory lock on
//!   its id first: a retry sent while the first try is still running waits for it and then
//!   answers with its leases.
//!
//! Nothing that can change is cached: each proposal of the TPE sampler reads the sweep's trials
//! in the transaction that holds the sweep's lock, so that daemons taking turns on a sweep
//! suggest exactly what one daemon alone would. Specs and grids never change once stored and are
//! kept.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use spotsweep_core::optimize::prune::{self, Decision, Point};
use spotsweep_core::optimize::{sample_qmc, suggest};
use spotsweep_core::queue::{self, Beat, LeaseOutcome, Pulse, RunEnd, SweepProgress, Verdict, place};
use spotsweep_core::sweep::{
    Goal, Params, PrunerKind, SamplerKind, Summary, SweepSpec, grid_sequence, sample_random,
};
use sqlx::PgConnection;

use super::tracking::insert_experiment;
use super::{PgStore, commit, map_err};
use crate::shared_queue::{
    Candidate, HistoryRow, LeaseRow, NewLease, Rerun, SWEEP_COLUMNS, SweepRef, SweepRow, TRIAL_COLUMNS,
    TrialRow, curve_of, history_of, keys_and_values, lease_columns, max_trials_of, new_lease_id, parse_spec,
    runnable_spec, sweep_experiment, sweep_of, sweep_run_tags_and_params, trial_run,
};
use crate::{
    AgentSummary, Attempt, HeartbeatAction, LeaseRequest, LeasedTrial, NewExperiment, Outcome, Result,
    StoreError, Stored, Sweep, SweepBest, SweepQuery, SweepState, SweepStore, Trial, TrialState,
    TrialSummary, now_ms,
};

/// What the queue keeps of each sweep: its parsed spec and, for a grid, its points. Neither
/// changes once the sweep is stored, so every daemon may keep them.
#[derive(Debug, Clone, Default)]
pub(super) struct Specs {
    specs: Arc<Mutex<HashMap<i64, Arc<SweepSpec>>>>,
    grids: Arc<Mutex<HashMap<i64, Arc<Vec<Params>>>>>,
}

impl Specs {
    fn cached(&self, sweep_id: i64) -> Option<Arc<SweepSpec>> {
        self.specs.lock().ok().and_then(|m| m.get(&sweep_id).cloned())
    }

    /// The spec of a sweep a sampler may run (`Invalid` when it no longer validates).
    async fn spec_of(&self, conn: &mut PgConnection, sweep_id: i64) -> Result<Arc<SweepSpec>> {
        if let Some(spec) = self.cached(sweep_id) {
            return Ok(spec);
        }
        let (text,): (String,) = sqlx::query_as("SELECT spec FROM sweeps WHERE id = $1")
            .bind(sweep_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no sweep with id {sweep_id}")))?;
        let spec = Arc::new(runnable_spec(sweep_id, &text)?);
        if let Ok(mut m) = self.specs.lock() {
            m.insert(sweep_id, spec.clone());
        }
        Ok(spec)
    }

    /// A grid sweep's points in the order its trials take them.
    fn grid(&self, sweep_id: i64, spec: &SweepSpec, seed: u64) -> Result<Arc<Vec<Params>>> {
        if let Some(g) = self.grids.lock().ok().and_then(|m| m.get(&sweep_id).cloned()) {
            return Ok(g);
        }
        let g = Arc::new(grid_sequence(spec, seed).map_err(|e| StoreError::Invalid(e.to_string()))?);
        if let Ok(mut m) = self.grids.lock() {
            m.insert(sweep_id, g.clone());
        }
        Ok(g)
    }
}

/// Takes sweep `sweep_id`'s row lock for this transaction (see the module documentation):
/// waiting for it when `held` is empty or already has it, else only if it is free. Returns
/// whether the lock is held now (false: no such sweep, or another transaction holds it).
async fn lock_sweep(conn: &mut PgConnection, held: &mut Vec<i64>, sweep_id: i64) -> Result<bool> {
    if held.contains(&sweep_id) {
        // Held since an earlier statement of this transaction (a group's earlier job).
        return Ok(true);
    }
    let wait = held.is_empty();
    // Its experiment share-locked too, as [`LOCKED_CANDIDATE`] does: a held sweep's new trials
    // may be inserted without reading the candidate again.
    let sql = if wait {
        "SELECT s.id FROM sweeps s JOIN experiments e ON e.experiment_id = s.experiment_id WHERE s.id = $1 \
         FOR UPDATE OF s FOR SHARE OF e"
    } else {
        "SELECT s.id FROM sweeps s JOIN experiments e ON e.experiment_id = s.experiment_id WHERE s.id = $1 \
         FOR UPDATE OF s SKIP LOCKED FOR SHARE OF e SKIP LOCKED"
    };
    let row: Option<(i64,)> = sqlx::query_as(sql)
        .bind(sweep_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    if row.is_some() && !held.contains(&sweep_id) {
        held.push(sweep_id);
    }
    Ok(row.is_some())
}

/// Takes sweep `sweep_id`'s row lock, waiting for it: for a transaction that locks one sweep.
/// `NotFound` when there is no such sweep.
async fn lock_one_sweep(conn: &mut PgConnection, sweep_id: i64) -> Result<()> {
    if lock_sweep(conn, &mut Vec::new(), sweep_id).await? {
        Ok(())
    } else {
        Err(StoreError::NotFound(format!("no sweep with id {sweep_id}")))
    }
}

/// Trial `number` of a sweep; `NotFound` saying whether the sweep or the trial is missing.
async fn trial_by_number(conn: &mut PgConnection, sweep_id: i64, number: i64) -> Result<Trial> {
    let sql = format!(
        "SELECT {TRIAL_COLUMNS} FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.sweep_id = $1 AND t.number = $2"
    );
    let row = sqlx::query_as::<_, TrialRow>(sqlx::AssertSqlSafe(sql))
        .bind(sweep_id)
        .bind(number)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    if let Some(row) = row {
        return row.into_trial();
    }
    let sweep: Option<(i64,)> = sqlx::query_as("SELECT id FROM sweeps WHERE id = $1")
        .bind(sweep_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    Err(StoreError::NotFound(match sweep {
        Some(_) => format!("sweep {sweep_id} has no trial {number}"),
        None => format!("no sweep with id {sweep_id}"),
    }))
}

async fn trial_by_id(conn: &mut PgConnection, id: i64) -> Result<Trial> {
    let sql = format!("SELECT {TRIAL_COLUMNS} FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.id = $1");
    sqlx::query_as::<_, TrialRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::NotFound(format!("no trial with id {id}")))?
        .into_trial()
}

/// A sweep's experiment, for a new trial (the columns of [`SweepRef`]). The experiment's row is
/// share-locked, as for any new run: it cannot be deleted until the trial's run is in.
const SWEEP_REF: &str = "SELECT s.id, s.seed, s.experiment_id, e.artifact_location, \
     e.lifecycle_stage AS experiment_stage, s.run_uuid FROM sweeps s JOIN experiments e ON e.experiment_id = s.experiment_id \
     WHERE s.id = $1 FOR SHARE OF e";

/// The running sweeps an agent may get a trial of, with their loads (the columns of
/// [`Candidate`]): of pool `$1` and sweep `$2` when given, or only sweep `$3`.
const CANDIDATES: &str = "SELECT s.id, s.seed, s.experiment_id, e.artifact_location, \
       e.lifecycle_stage AS experiment_stage, s.run_uuid, s.parallelism, s.max_trials, s.trials_created, \
       (SELECT COUNT(*) FROM trials t WHERE t.sweep_id = s.id AND t.state = 'running' \
          AND t.rerun_of IS NULL) AS running, \
       (SELECT MIN(t.number) FROM trials t WHERE t.sweep_id = s.id AND t.state IN ('queued', 'preempted') \
          AND t.rerun_of IS NULL) AS next_waiting \
     FROM sweeps s JOIN experiments e ON e.experiment_id = s.experiment_id \
     WHERE s.state = 'running' AND ($1::TEXT IS NULL OR s.pool = $1) AND ($2::BIGINT IS NULL OR s.id = $2) \
       AND ($3::BIGINT IS NULL OR s.id = $3)";

/// [`CANDIDATES`] for the sweep a lease request has locked, its experiment share-locked (see
/// [`SWEEP_REF`]).
static LOCKED_CANDIDATE: LazyLock<String> = LazyLock::new(|| format!("{CANDIDATES} FOR SHARE OF e"));

/// The experiment a sweep runs in: `new`, or the experiment of that name if there is one
/// (`Invalid` when it is deleted). Two daemons creating sweeps of a new experiment at once both
/// get the one inserted first.
async fn sweep_experiment_id(conn: &mut PgConnection, new: NewExperiment) -> Result<i64> {
    let name = new.name.clone();
    if let Some(id) = insert_experiment(conn, new).await? {
        return Ok(id);
    }
    let (id, stage): (i64, String) =
        sqlx::query_as("SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = $1")
            .bind(&name)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?;
    if stage != "active" {
        return Err(StoreError::Invalid(format!(
            "experiment: '{name}' is deleted; restore it or choose another experiment name"
        )));
    }
    Ok(id)
}

/// Creates sweep `id`'s own MLflow run in its experiment (the parent of its trials' runs) with
/// its tags and params, and names it on the sweep: one statement.
async fn insert_sweep_run(
    conn: &mut PgConnection,
    id: i64,
    experiment_id: i64,
    spec: &SweepSpec,
    now: i64,
) -> Result<()> {
    let (tags, params) = sweep_run_tags_and_params(id, spec);
    let (tag_keys, tag_values) = keys_and_values(&tags);
    let (param_keys, param_values) = keys_and_values(&params);
    sqlx::query(
        "WITH run AS ( \
           INSERT INTO runs (run_uuid, experiment_id, name, user_id, status, start_time, artifact_uri, lifecycle_stage) \
           SELECT $1, experiment_id, $2, '', 'RUNNING', $3, \
                  rtrim(artifact_location, '/') || '/' || $1 || '/artifacts', 'active' \
           FROM experiments WHERE experiment_id = $4 RETURNING id), \
         tg AS (INSERT INTO tags (run_id, key, value) \
           SELECT run.id, k, v FROM run, UNNEST($5::TEXT[], $6::TEXT[]) AS x(k, v)), \
         pr AS (INSERT INTO params (run_id, key, value) \
           SELECT run.id, k, v FROM run, UNNEST($7::TEXT[], $8::TEXT[]) AS x(k, v)) \
         UPDATE sweeps SET run_uuid = $1 WHERE id = $9",
    )
    .bind(uuid::Uuid::new_v4().simple().to_string())
    .bind(&spec.name)
    .bind(now)
    .bind(experiment_id)
    .bind(tag_keys)
    .bind(tag_values)
    .bind(param_keys)
    .bind(param_values)
    .bind(id)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Ends the run of sweep `sweep_id`, now in `state`, if the sweep has ended (see
/// [`SweepState::run_end`]), once.
async fn end_sweep_run(conn: &mut PgConnection, sweep_id: i64, state: SweepState) -> Result<()> {
    let Some(run_end) = state.run_end() else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE runs SET status = $1, end_time = $2 \
         WHERE run_uuid = (SELECT run_uuid FROM sweeps WHERE id = $3) AND status = 'RUNNING'",
    )
    .bind(Stored(run_end))
    .bind(now_ms())
    .bind(sweep_id)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// The best completed trial of a sweep, reruns aside: (number, value, run id), through
/// `trials_best`.
async fn best_trial<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    sweep_id: i64,
    goal: Goal,
) -> Result<Option<(i64, f64, String)>> {
    let sql = match goal {
        Goal::Minimize => {
            "SELECT t.number, t.value, r.run_uuid FROM trials t JOIN runs r ON r.id = t.run_id \
             WHERE t.sweep_id = $1 AND t.state = 'completed' AND t.rerun_of IS NULL \
             ORDER BY t.value ASC, t.number ASC LIMIT 1"
        }
        Goal::Maximize => {
            "SELECT t.number, t.value, r.run_uuid FROM trials t JOIN runs r ON r.id = t.run_id \
             WHERE t.sweep_id = $1 AND t.state = 'completed' AND t.rerun_of IS NULL \
             ORDER BY t.value DESC, t.number ASC LIMIT 1"
        }
    };
    sqlx::query_as(sql)
        .bind(sweep_id)
        .fetch_optional(exec)
        .await
        .map_err(map_err)
}

/// The words of the trial states that are not over, as a text array.
fn unfinished() -> Vec<&'static str> {
    TrialState::UNFINISHED.iter().map(|s| s.as_str()).collect()
}

impl PgStore {
    /// The parameters of trial `number`: from the sweep's sampler and, for TPE, the trials so
    /// far as the database holds them now (the caller holds the sweep's lock). `None` when a
    /// grid is exhausted.
    async fn propose(
        &self,
        conn: &mut PgConnection,
        sweep_id: i64,
        seed: u64,
        number: i64,
    ) -> Result<Option<Params>> {
        let spec = self.specs.spec_of(conn, sweep_id).await?;
        match spec.sampler.kind {
            SamplerKind::Random => Ok(Some(sample_random(&spec, seed, number as u64))),
            SamplerKind::Qmc => Ok(Some(sample_qmc(&spec, seed, number as u64))),
            SamplerKind::Tpe => {
                let history = self.history(conn, sweep_id, &spec).await?;
                Ok(Some(suggest(&spec, seed, number as u64, &history)))
            }
            SamplerKind::Grid => Ok(self
                .specs
                .grid(sweep_id, &spec, seed)?
                .get(number as usize)
                .cloned()),
        }
    }

    /// What the sampler knows of a sweep's trials, read from the database.
    async fn history(
        &self,
        conn: &mut PgConnection,
        sweep_id: i64,
        spec: &SweepSpec,
    ) -> Result<spotsweep_core::optimize::History> {
        type Row = (
            i64,
            Stored<TrialState>,
            Option<f64>,
            Option<f64>,
            Option<bool>,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT t.number, t.state, t.value, lm.value, lm.is_nan, t.params \
             FROM trials t LEFT JOIN latest_metrics lm ON lm.run_id = t.run_id AND lm.key = $2 \
             WHERE t.sweep_id = $1 AND t.rerun_of IS NULL ORDER BY t.number",
        )
        .bind(sweep_id)
        .bind(&spec.objective.metric)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        let rows = rows
            .into_iter()
            .map(|(number, Stored(state), value, last, is_nan, params)| {
                let params: Params = serde_json::from_str(&params).map_err(|_| {
                    StoreError::Incompatible(format!(
                        "trial {number} of sweep {sweep_id} has unreadable parameters; the database is \
                         damaged or from a newer spotsweep"
                    ))
                })?;
                let last = last.filter(|_| is_nan != Some(true));
                Ok((number as u64, state, value, last, params))
            })
            .collect::<Result<Vec<HistoryRow>>>()?;
        Ok(history_of(spec, rows))
    }

    /// A trial's objective, read from its run's metrics by the spec's summary rule (NaN and
    /// missing are `None`).
    async fn objective_of(
        &self,
        conn: &mut PgConnection,
        trial: &Trial,
        spec: &SweepSpec,
    ) -> Result<Option<f64>> {
        let sql = match spec.objective.summary {
            Summary::Last => {
                "SELECT lm.value FROM trials t JOIN latest_metrics lm ON lm.run_id = t.run_id AND lm.key = $2 \
                 WHERE t.id = $1 AND NOT lm.is_nan"
            }
            Summary::Min => {
                "SELECT MIN(m.value) FROM trials t JOIN metrics m ON m.run_id = t.run_id AND m.key = $2 \
                 WHERE t.id = $1 AND NOT m.is_nan"
            }
            Summary::Max => {
                "SELECT MAX(m.value) FROM trials t JOIN metrics m ON m.run_id = t.run_id AND m.key = $2 \
                 WHERE t.id = $1 AND NOT m.is_nan"
            }
        };
        let row: Option<(Option<f64>,)> = sqlx::query_as(sql)
            .bind(trial.id)
            .bind(&spec.objective.metric)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
        Ok(row.and_then(|r| r.0).filter(|v| !v.is_nan()))
    }

    /// The pruner's decision on a running trial, from the objective metric's points of every
    /// trial of its sweep that has some.
    async fn prune_decision(&self, spec: &SweepSpec, sweep_id: i64, number: u64) -> Result<Decision> {
        type Row = (i64, bool, i64, i64, f64, bool);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT t.number, t.state = 'completed', m.step, m.timestamp, m.value, m.is_nan \
             FROM trials t JOIN metrics m ON m.run_id = t.run_id AND m.key = $2 \
             WHERE t.sweep_id = $1 AND t.state IN ('completed', 'pruned', 'running') AND t.rerun_of IS NULL \
             ORDER BY t.number, m.step, m.timestamp, m.value, m.is_nan",
        )
        .bind(sweep_id)
        .bind(&spec.objective.metric)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let curves: Vec<_> = rows
            .chunk_by(|a, b| a.0 == b.0)
            .map(|points| {
                curve_of(
                    points[0].0 as u64,
                    points[0].1,
                    points
                        .iter()
                        .map(|&(_, _, step, timestamp, value, is_nan)| Point {
                            step,
                            value: if is_nan { f64::NAN } else { value },
                            timestamp,
                        }),
                )
            })
            .collect();
        let Some(mine) = curves.iter().find(|c| c.number == number) else {
            return Ok(Decision::Continue);
        };
        Ok(prune::decide(&spec.pruner, spec.objective.goal, mine, &curves))
    }

    /// Creates trial `number` of a sweep with its MLflow run (params = the hyperparameters,
    /// tags = sweep, trial number, attempt, seed): leased at once when `lease` is given, queued
    /// otherwise; a rerun when `rerun` is given. One statement. The caller holds the sweep's
    /// lock.
    #[allow(clippy::too_many_arguments)]
    async fn insert_trial(
        &self,
        conn: &mut PgConnection,
        sweep: &SweepRef,
        number: i64,
        params: &Params,
        lease: Option<&NewLease<'_>>,
        gpus: Option<&str>,
        rerun: Option<&Rerun<'_>>,
    ) -> Result<Trial> {
        sweep.check_active()?;
        let spec = self.specs.spec_of(conn, sweep.id).await?;
        let attempt = i64::from(lease.is_some());
        let run = trial_run(sweep, &spec, number, params, attempt, rerun);
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let artifact_uri = format!(
            "{}/{run_id}/artifacts",
            sweep.artifact_location.trim_end_matches('/')
        );
        let (tag_keys, tag_values) = keys_and_values(&run.tags);
        let (param_keys, param_values) = keys_and_values(&run.params);
        let params_json = serde_json::to_string(params).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let now = now_ms();
        let (id,): (i64,) = sqlx::query_as(
            "WITH run AS ( \
               INSERT INTO runs (run_uuid, experiment_id, name, user_id, status, start_time, artifact_uri, \
                                 lifecycle_stage) \
               VALUES ($1, $2, $3, '', 'RUNNING', $4, $5, 'active') RETURNING id), \
             tg AS (INSERT INTO tags (run_id, key, value) \
               SELECT run.id, k, v FROM run, UNNEST($6::TEXT[], $7::TEXT[]) AS x(k, v)), \
             pr AS (INSERT INTO params (run_id, key, value) \
               SELECT run.id, k, v FROM run, UNNEST($8::TEXT[], $9::TEXT[]) AS x(k, v)), \
             tr AS ( \
               INSERT INTO trials (sweep_id, number, params, seed, run_id, state, attempt, agent_id, created_at, \
                                   started_at, rerun_of, pool) \
               SELECT $10, $11, $12, $13, run.id, \
                      CASE WHEN $14::TEXT IS NULL THEN 'queued' ELSE 'running' END, $15, $16, $4, \
                      CASE WHEN $14::TEXT IS NULL THEN NULL ELSE $4::BIGINT END, $17, $18 \
               FROM run RETURNING id), \
             ls AS ( \
               INSERT INTO leases (id, trial_id, attempt, agent_id, created_at, expires_at, gpus) \
               SELECT $14, tr.id, 1, $16, $4, $19, $20 FROM tr WHERE $14::TEXT IS NOT NULL), \
             sw AS (UPDATE sweeps SET trials_created = trials_created + 1 \
                    WHERE id = $10 AND $17::BIGINT IS NULL) \
             SELECT id FROM tr",
        )
        .bind(&run_id)
        .bind(sweep.experiment_id)
        .bind(&run.name)
        .bind(now)
        .bind(&artifact_uri)
        .bind(tag_keys)
        .bind(tag_values)
        .bind(param_keys)
        .bind(param_values)
        .bind(sweep.id)
        .bind(number)
        .bind(&params_json)
        .bind(run.seed as i64)
        .bind(lease.map(|l| l.id))
        .bind(attempt)
        .bind(lease.map(|l| l.agent_id))
        .bind(rerun.map(|r| r.of))
        .bind(rerun.and_then(|r| r.pool))
        .bind(lease.map(|l| l.expires_at))
        .bind(gpus)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(Trial {
            id,
            sweep_id: sweep.id,
            number,
            params: params.clone(),
            seed: run.seed,
            run_id,
            experiment_id: sweep.experiment_id,
            artifact_uri,
            state: if lease.is_some() {
                TrialState::Running
            } else {
                TrialState::Queued
            },
            attempt,
            failures: 0,
            value: None,
            reason: None,
            agent_id: lease.map(|l| l.agent_id.to_owned()),
            created_at: now,
            started_at: lease.map(|_| now),
            finished_at: None,
            pruned_step: None,
            rerun_of: rerun.map(|r| r.of),
            pool: rerun.and_then(|r| r.pool.map(str::to_owned)),
        })
    }

    /// Leases a waiting (queued or preempted) trial, which the caller has claimed: the next
    /// attempt of the same run, its attempt tag and status updated. One statement.
    async fn lease_waiting(
        &self,
        conn: &mut PgConnection,
        trial_id: i64,
        lease: &NewLease<'_>,
        gpus: Option<&str>,
    ) -> Result<LeasedTrial> {
        let sql = format!(
            "WITH t AS ( \
               UPDATE trials SET state = 'running', attempt = attempt + 1, agent_id = $2, started_at = $3, \
                 stop_requested = FALSE WHERE id = $1 RETURNING *), \
             ls AS (INSERT INTO leases (id, trial_id, attempt, agent_id, created_at, expires_at, gpus) \
               SELECT $4, id, attempt, $2, $3, $5, $6 FROM t), \
             tg AS (UPDATE tags SET value = (SELECT attempt::TEXT FROM t) \
               WHERE run_id = (SELECT run_id FROM t) AND key = 'spotsweep.attempt'), \
             st AS (UPDATE runs SET status = 'RUNNING', end_time = NULL WHERE id = (SELECT run_id FROM t)) \
             SELECT {TRIAL_COLUMNS} FROM t JOIN runs r ON r.id = t.run_id"
        );
        let trial = sqlx::query_as::<_, TrialRow>(sqlx::AssertSqlSafe(sql))
            .bind(trial_id)
            .bind(lease.agent_id)
            .bind(now_ms())
            .bind(lease.id)
            .bind(lease.expires_at)
            .bind(gpus)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no trial with id {trial_id}")))?
            .into_trial()?;
        let spec = self.specs.spec_of(conn, trial.sweep_id).await?;
        Ok(LeasedTrial {
            lease_id: lease.id.to_owned(),
            expires_at: lease.expires_at,
            trial,
            spec,
            gpus: None,
        })
    }

    /// Ends lease `lease_id` of `trial` (recording `lease_outcome` on it, and the time unless it
    /// already ended) and applies `outcome` to the trial, its run and its sweep. The caller
    /// holds the sweep's lock and the lease's and trial's rows. Returns the trial as it now is.
    async fn end_lease(
        &self,
        conn: &mut PgConnection,
        lease_id: &str,
        lease_outcome: LeaseOutcome,
        mut trial: Trial,
        outcome: &Outcome,
    ) -> Result<Trial> {
        let spec = self.specs.spec_of(conn, trial.sweep_id).await?;
        let objective = match outcome {
            Outcome::Succeeded(None) => self.objective_of(conn, &trial, &spec).await?,
            _ => None,
        };
        let update = queue::decide(
            outcome,
            trial.failures,
            spec.max_retries,
            &spec.objective.metric,
            objective,
        );
        let now = now_ms();
        let finished_at = update.state.is_terminal().then_some(now);
        // Whether every trial the sweep may propose exists (under the sweep's lock, exact): only
        // then can this trial be its last.
        let (all_created,): (bool,) = sqlx::query_as(
            "WITH t AS ( \
               UPDATE trials SET state = $2, value = $3, reason = $4, failures = $5, finished_at = $6, \
                 ooms = ooms + $7 WHERE id = $1 RETURNING run_id), \
             l AS (UPDATE leases SET ended_at = COALESCE(ended_at, $8), outcome = $9 WHERE id = $10), \
             rn AS (UPDATE runs SET status = $11, end_time = $8 \
               WHERE $11::TEXT IS NOT NULL AND id = (SELECT run_id FROM t)) \
             SELECT trials_created >= max_trials FROM sweeps WHERE id = $12",
        )
        .bind(trial.id)
        .bind(Stored(update.state))
        .bind(update.value)
        .bind(&update.reason)
        .bind(update.failures)
        .bind(finished_at)
        .bind(i64::from(update.more_memory))
        .bind(now)
        .bind(Stored(lease_outcome))
        .bind(lease_id)
        .bind(update.run_end.map(RunEnd::as_str))
        .bind(trial.sweep_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
        let mut reason = update.reason.clone();
        if matches!(outcome, Outcome::SetupFailed(_)) {
            // Pause the sweep once its setup failed on enough machines (by agent name: a
            // restarted agent is the same machine; see `setup_failures_to_pause`).
            let (machines, pool): (i64, String) = sqlx::query_as(
                "SELECT (SELECT COUNT(DISTINCT COALESCE(a.name, l.agent_id)) FROM leases l \
                   JOIN trials t ON t.id = l.trial_id LEFT JOIN agents a ON a.id = l.agent_id \
                   WHERE t.sweep_id = $1 AND l.outcome = 'setup_failed'), pool \
                 FROM sweeps WHERE id = $1",
            )
            .bind(trial.sweep_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?;
            if let Some(paused) = queue::setup_pause(&pool, machines, update.reason.as_deref()) {
                let changed = sqlx::query("UPDATE sweeps SET state = $1 WHERE id = $2 AND state = $3")
                    .bind(Stored(SweepState::Paused))
                    .bind(trial.sweep_id)
                    .bind(Stored(SweepState::Running))
                    .execute(&mut *conn)
                    .await
                    .map_err(map_err)?
                    .rows_affected();
                if changed > 0 {
                    sqlx::query("UPDATE trials SET reason = $1 WHERE id = $2")
                        .bind(&paused)
                        .bind(trial.id)
                        .execute(&mut *conn)
                        .await
                        .map_err(map_err)?;
                    reason = Some(paused);
                    tracing::warn!(
                        sweep = trial.sweep_id,
                        machines,
                        "setup failed on too many machines: sweep paused"
                    );
                }
            }
        }
        // Only a trial that ended for good, once every trial exists, can be a sweep's last.
        if update.state.is_terminal() && all_created {
            complete_sweep_if_done(conn, trial.sweep_id).await?;
        }
        trial.state = update.state;
        trial.value = update.value;
        trial.reason = reason;
        trial.failures = update.failures;
        trial.finished_at = finished_at;
        Ok(trial)
    }

    /// Completes a lease inside the caller's transaction, which holds the lock of the lease's
    /// sweep or takes it here (the sweep first, see the lock order, then the lease and its
    /// trial).
    pub(super) async fn complete(
        &self,
        tx: &mut PgConnection,
        lease_id: &str,
        outcome: Outcome,
        locked: bool,
    ) -> Result<Trial> {
        // `locked`: the caller's group locked the lease's sweep already.
        if !locked {
            let sweep: Option<(i64,)> = sqlx::query_as(
                "SELECT id FROM sweeps WHERE id = \
                   (SELECT t.sweep_id FROM leases l JOIN trials t ON t.id = l.trial_id WHERE l.id = $1) \
                 FOR UPDATE",
            )
            .bind(lease_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            if sweep.is_none() {
                return Err(StoreError::NotFound(format!("no lease with id '{lease_id}'")));
            }
        }
        let row = self
            .lock_lease(tx, lease_id, None)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no lease with id '{lease_id}'")))?;
        let (lease, stop_reason, mut trial) = row.standing(lease_id)?;
        let outcome = queue::reported(outcome, stop_reason);
        match queue::judge(&lease, &outcome) {
            Verdict::Apply => {}
            Verdict::Repeat => return Ok(trial),
            // The expiry counted a failure that did not happen.
            Verdict::ApplyLate => trial.failures = (trial.failures - 1).max(0),
            Verdict::Refuse(why) => return Err(StoreError::Conflict(format!("lease '{lease_id}' {why}"))),
        }
        self.end_lease(tx, lease_id, outcome.lease_outcome(), trial, &outcome)
            .await
    }

    /// Leases up to `request.slots` trials inside the caller's transaction, which holds the
    /// locks of the sweeps in `held` (and adds those it takes).
    pub(super) async fn lease(
        &self,
        tx: &mut PgConnection,
        request: &LeaseRequest,
        held: &mut Vec<i64>,
    ) -> Result<Vec<LeasedTrial>> {
        if let Some(request_id) = &request.request_id {
            // A retry sent while the first try still runs waits here for it to commit.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(request_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            let earlier: Option<(String, String)> =
                sqlx::query_as("SELECT response, agent_id FROM lease_requests WHERE request_id = $1")
                    .bind(request_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
            if let Some((response, agent)) = earlier {
                if agent != request.agent_id {
                    // Another agent's request id: its leases are not this agent's to see.
                    return Err(StoreError::Conflict(format!(
                        "request_id '{request_id}' was used by another agent: use a fresh id for each new request"
                    )));
                }
                // A retried request: answer with the same leases, as they are now.
                return self.leases_again(tx, &response).await;
            }
        }
        let mut fill = Filling {
            held: std::mem::take(held),
            gpus: request.gpus.clone(),
            passed: Vec::new(),
            reruns_passed: Vec::new(),
        };
        let leased = self.fill(tx, request, &mut fill).await;
        *held = fill.held;
        leased
    }

    /// Fills the slots of a lease request (see [`PgStore::lease`]).
    async fn fill(
        &self,
        tx: &mut PgConnection,
        request: &LeaseRequest,
        fill: &mut Filling,
    ) -> Result<Vec<LeasedTrial>> {
        let mut leased: Vec<LeasedTrial> = Vec::new();
        while leased.len() < request.slots as usize {
            // Reruns first: each was asked for by hand, and runs on its own pool whatever its
            // sweep's state (unless paused), outside the sweep's parallelism.
            match self.lease_rerun(tx, request, fill).await? {
                Step::Leased(trial) => leased.push(*trial),
                Step::Passed => {}
                Step::Nothing => match self.lease_of_sweeps(tx, request, fill).await? {
                    Step::Leased(trial) => leased.push(*trial),
                    Step::Passed => {}
                    Step::Nothing => break,
                },
            }
        }
        // Only a request that leased something is remembered: an empty answer leases nothing
        // twice, and a long poll asks again with the same id until work comes.
        if let Some(request_id) = request.request_id.as_ref().filter(|_| !leased.is_empty()) {
            let ids: Vec<&str> = leased.iter().map(|l| l.lease_id.as_str()).collect();
            sqlx::query(
                "INSERT INTO lease_requests (request_id, agent_id, response, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(request_id)
            .bind(&request.agent_id)
            .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        Ok(leased)
    }

    /// The next waiting rerun of the request's pool (or sweep), leased; `Passed` when the one
    /// looked at cannot be leased now (another transaction holds its sweep, it was taken, it does
    /// not fit); `Nothing` when no rerun waits.
    async fn lease_rerun(
        &self,
        tx: &mut PgConnection,
        request: &LeaseRequest,
        fill: &mut Filling,
    ) -> Result<Step> {
        let rerun: Option<(i64, i64)> = sqlx::query_as(
            "SELECT t.id, t.sweep_id FROM trials t JOIN sweeps s ON s.id = t.sweep_id \
             WHERE t.rerun_of IS NOT NULL AND t.state IN ('queued', 'preempted') AND s.state <> 'paused' \
               AND ($1::TEXT IS NULL OR COALESCE(t.pool, s.pool) = $1) AND ($2::BIGINT IS NULL OR s.id = $2) \
               AND NOT (t.id = ANY($3)) \
             ORDER BY t.id LIMIT 1",
        )
        .bind(&request.pool)
        .bind(request.sweep_id)
        .bind(&fill.reruns_passed)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some((trial_id, sweep_id)) = rerun else {
            return Ok(Step::Nothing);
        };
        fill.reruns_passed.push(trial_id);
        if !lock_sweep(tx, &mut fill.held, sweep_id).await? {
            return Ok(Step::Passed);
        }
        // Under the sweep's lock: still waiting, its sweep still not paused.
        let claimed: Option<(i64,)> = sqlx::query_as(
            "SELECT t.ooms FROM trials t JOIN sweeps s ON s.id = t.sweep_id \
             WHERE t.id = $1 AND t.state IN ('queued', 'preempted') AND s.state <> 'paused' \
             FOR UPDATE OF t SKIP LOCKED",
        )
        .bind(trial_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some((ooms,)) = claimed else {
            return Ok(Step::Passed);
        };
        let Ok(spec) = self.specs.spec_of(tx, sweep_id).await else {
            return Ok(Step::Passed);
        };
        let placement = match &spec.resources {
            None => None,
            Some(resources) => {
                match place(
                    resources,
                    &mut fill.gpus,
                    request.gpu_overhead_mib,
                    ooms.clamp(0, 32) as u32,
                ) {
                    Some(shares) => Some(shares),
                    None => return Ok(Step::Passed),
                }
            }
        };
        let lease_id = new_lease_id();
        let lease = NewLease {
            id: &lease_id,
            agent_id: &request.agent_id,
            expires_at: now_ms() + request.ttl_ms,
        };
        let gpus_json = gpus_json(placement.as_ref());
        let mut trial = self
            .lease_waiting(tx, trial_id, &lease, gpus_json.as_deref())
            .await?;
        trial.gpus = placement;
        Ok(Step::Leased(Box::new(trial)))
    }

    /// A trial of the sweep that fair share picks, leased: its next waiting trial or a new one
    /// from its sampler. `Passed` when the picked sweep is passed over (see [`Filling`]);
    /// `Nothing` when no sweep wants a slot.
    async fn lease_of_sweeps(
        &self,
        tx: &mut PgConnection,
        request: &LeaseRequest,
        fill: &mut Filling,
    ) -> Result<Step> {
        let candidates: Vec<Candidate> = sqlx::query_as(CANDIDATES)
            .bind(&request.pool)
            .bind(request.sweep_id)
            .bind(None::<i64>)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        // Fair share (see `next_sweep`), on loads read without locks: the pick is then
        // locked and read again, and passed over if it no longer wants a slot.
        let loads: Vec<queue::SweepLoad> = candidates.iter().map(Candidate::load).collect();
        let Some(picked) = queue::next_sweep(&loads, &fill.passed).map(|i| candidates[i].sweep.id) else {
            return Ok(Step::Nothing);
        };
        // Read under this transaction's lock already (an earlier job of its group took it):
        // the candidate as read is exact.
        let read_locked = fill.held.contains(&picked);
        if !lock_sweep(tx, &mut fill.held, picked).await? {
            fill.passed.push(picked);
            return Ok(Step::Passed);
        }
        let candidate: Option<Candidate> = if read_locked {
            candidates.into_iter().find(|c| c.sweep.id == picked)
        } else {
            sqlx::query_as(sqlx::AssertSqlSafe(LOCKED_CANDIDATE.as_str()))
                .bind(&request.pool)
                .bind(request.sweep_id)
                .bind(picked)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?
        };
        let Some(candidate) = candidate.filter(|c| c.load().wants_a_slot()) else {
            fill.passed.push(picked);
            return Ok(Step::Passed);
        };
        let spec = match self.specs.spec_of(tx, picked).await {
            Ok(spec) => spec,
            Err(StoreError::Invalid(reason)) => {
                sqlx::query("UPDATE sweeps SET state = 'paused' WHERE id = $1 AND state = 'running'")
                    .bind(picked)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tracing::warn!(sweep = picked, %reason, "sweep paused");
                fill.passed.push(picked);
                return Ok(Step::Passed);
            }
            Err(e) => return Err(e),
        };
        // A retried trial goes first; its out-of-memory exits say how much it needs.
        let waiting: Option<(i64, i64)> = match candidate.next_waiting {
            Some(_) => sqlx::query_as(
                "SELECT id, ooms FROM trials WHERE sweep_id = $1 AND state IN ('queued', 'preempted') \
                   AND rerun_of IS NULL ORDER BY number LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .bind(picked)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?,
            None => None,
        };
        if waiting.is_none() && candidate.trials_created >= candidate.max_trials {
            fill.passed.push(picked);
            return Ok(Step::Passed);
        }
        let placement = match &spec.resources {
            None => None,
            Some(resources) => {
                let ooms = waiting.map_or(0, |(_, ooms)| ooms.clamp(0, 32) as u32);
                match place(resources, &mut fill.gpus, request.gpu_overhead_mib, ooms) {
                    Some(shares) => Some(shares),
                    None => {
                        // Waits for a GPU with room; other sweeps may still fit.
                        fill.passed.push(picked);
                        return Ok(Step::Passed);
                    }
                }
            }
        };
        let gpus_json = gpus_json(placement.as_ref());
        let lease_id = new_lease_id();
        let lease = NewLease {
            id: &lease_id,
            agent_id: &request.agent_id,
            expires_at: now_ms() + request.ttl_ms,
        };
        if let Some((trial_id, _)) = waiting {
            let mut trial = self
                .lease_waiting(tx, trial_id, &lease, gpus_json.as_deref())
                .await?;
            trial.gpus = placement;
            return Ok(Step::Leased(Box::new(trial)));
        }
        let sweep = &candidate.sweep;
        let number = candidate.trials_created;
        let Some(params) = self.propose(tx, sweep.id, sweep.seed as u64, number).await? else {
            // An exhausted grid: no more trials (and nothing placed).
            for share in placement.iter().flatten() {
                if let Some(g) = fill.gpus.iter_mut().find(|g| g.id == share.id) {
                    g.free_mib += share.memory_mib;
                }
            }
            sqlx::query("UPDATE sweeps SET max_trials = trials_created WHERE id = $1")
                .bind(sweep.id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            return Ok(Step::Passed);
        };
        let trial = self
            .insert_trial(
                tx,
                sweep,
                number,
                &params,
                Some(&lease),
                gpus_json.as_deref(),
                None,
            )
            .await?;
        Ok(Step::Leased(Box::new(LeasedTrial {
            lease_id: lease_id.clone(),
            expires_at: lease.expires_at,
            spec,
            trial,
            gpus: placement,
        })))
    }

    /// The leases of an earlier answer (`response`: their ids as JSON) that are still open.
    async fn leases_again(&self, tx: &mut PgConnection, response: &str) -> Result<Vec<LeasedTrial>> {
        let lease_ids: Vec<String> = serde_json::from_str(response).unwrap_or_default();
        let mut out = Vec::new();
        for lease_id in lease_ids {
            let row: Option<(i64, i64, Option<i64>, Option<String>)> =
                sqlx::query_as("SELECT trial_id, expires_at, ended_at, gpus FROM leases WHERE id = $1")
                    .bind(&lease_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
            if let Some((trial_id, expires_at, None, gpus)) = row {
                let trial = trial_by_id(tx, trial_id).await?;
                let spec = self.specs.spec_of(tx, trial.sweep_id).await?;
                out.push(LeasedTrial {
                    lease_id,
                    expires_at,
                    trial,
                    spec,
                    gpus: gpus.and_then(|g| serde_json::from_str(&g).ok()),
                });
            }
        }
        Ok(out)
    }

    /// A lease with its trial, both locked (the caller holds their sweep's lock); `None` when
    /// there is no such lease or `open_before` is given and the lease is not open and past it.
    async fn lock_lease(
        &self,
        conn: &mut PgConnection,
        lease_id: &str,
        open_before: Option<i64>,
    ) -> Result<Option<LeaseRow>> {
        let sql = format!(
            "SELECT {} FROM leases l JOIN trials t ON t.id = l.trial_id JOIN runs r ON r.id = t.run_id \
             WHERE l.id = $1 AND ($2::BIGINT IS NULL OR (l.ended_at IS NULL AND l.expires_at < $2)) \
             FOR UPDATE OF l, t",
            lease_columns()
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(lease_id)
            .bind(open_before)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)
    }

    async fn load_sweep<'e>(&self, exec: impl sqlx::PgExecutor<'e> + Copy, row: SweepRow) -> Result<Sweep> {
        let spec = parse_spec(&row.spec)?;
        let counts: Vec<(Stored<TrialState>, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM trials WHERE sweep_id = $1 GROUP BY state")
                .bind(row.id)
                .fetch_all(exec)
                .await
                .map_err(map_err)?;
        let best = best_trial(exec, row.id, spec.objective.goal).await?;
        Ok(sweep_of(row, spec, counts, best))
    }

    async fn load_sweeps(&self, rows: Vec<SweepRow>) -> Result<Vec<Sweep>> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.load_sweep(&self.pool, row).await?);
        }
        Ok(out)
    }
}

/// A lease request as it fills its slots.
struct Filling {
    /// The sweeps whose lock this transaction holds.
    held: Vec<i64>,
    /// The agent's GPUs as this request fills them.
    gpus: Vec<crate::GpuFree>,
    /// Sweeps passed over: their next trial does not fit, another transaction holds them, or
    /// they want no slot after all.
    passed: Vec<i64>,
    /// Reruns looked at already.
    reruns_passed: Vec<i64>,
}

/// What one step of filling a lease request did.
enum Step {
    /// Leased a trial.
    Leased(Box<LeasedTrial>),
    /// Passed over a rerun or a sweep; look again.
    Passed,
    /// Found nothing to look at.
    Nothing,
}

/// The GPUs a lease holds, as stored (JSON).
fn gpus_json(placement: Option<&Vec<crate::GpuShare>>) -> Option<String> {
    placement.map(|p| serde_json::to_string(p).unwrap_or_else(|_| "[]".into()))
}

/// Completes sweep `sweep_id` and ends its run if it is done (see [`queue::sweep_done`]). The
/// caller holds the sweep's lock, so the count of trials not over is exact.
async fn complete_sweep_if_done(conn: &mut PgConnection, sweep_id: i64) -> Result<()> {
    let (Stored(state), trials_created, max_trials, unfinished_trials): (Stored<SweepState>, i64, i64, i64) =
        sqlx::query_as(
            "SELECT state, trials_created, max_trials, \
               (SELECT COUNT(*) FROM trials WHERE sweep_id = $1 AND state = ANY($2)) \
             FROM sweeps WHERE id = $1",
        )
        .bind(sweep_id)
        .bind(unfinished())
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    let progress = SweepProgress {
        state,
        trials_created,
        max_trials,
        unfinished: unfinished_trials,
    };
    if !queue::sweep_done(progress) {
        return Ok(());
    }
    sqlx::query("UPDATE sweeps SET state = $1, finished_at = $2 WHERE id = $3")
        .bind(Stored(SweepState::Completed))
        .bind(now_ms())
        .bind(sweep_id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    end_sweep_run(conn, sweep_id, SweepState::Completed).await
}

#[async_trait]
impl SweepStore for PgStore {
    async fn create_sweep(&self, spec: SweepSpec, seed: u64) -> Result<Sweep> {
        let max_trials = max_trials_of(&spec)?;
        let now = now_ms();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let experiment_id =
            sweep_experiment_id(&mut tx, sweep_experiment(spec.experiment_name().to_owned(), now)).await?;
        let text = serde_json::to_string(&spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO sweeps (name, spec, seed, experiment_id, pool, state, max_trials, parallelism, max_retries, \
                                 created_at) \
             VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8, $9) RETURNING id",
        )
        .bind(&spec.name)
        .bind(&text)
        .bind(seed as i64)
        .bind(experiment_id)
        .bind(&spec.pool)
        .bind(max_trials)
        .bind(i64::from(spec.parallelism))
        .bind(i64::from(spec.max_retries))
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_sweep_run(&mut tx, id, experiment_id, &spec, now).await?;
        commit(tx).await?;
        self.get_sweep(id).await
    }

    async fn get_sweep(&self, id: i64) -> Result<Sweep> {
        let sql = format!("SELECT {SWEEP_COLUMNS} FROM sweeps WHERE id = $1");
        let row = sqlx::query_as::<_, SweepRow>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no sweep with id {id}")))?;
        self.load_sweep(&self.pool, row).await
    }

    async fn list_sweeps(&self) -> Result<Vec<Sweep>> {
        let sql = format!("SELECT {SWEEP_COLUMNS} FROM sweeps ORDER BY id DESC LIMIT 1000");
        let rows = sqlx::query_as::<_, SweepRow>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        self.load_sweeps(rows).await
    }

    async fn sweeps_page(&self, query: &SweepQuery) -> Result<(Vec<Sweep>, bool)> {
        // `strpos` takes the name filter literally: no LIKE wildcards to escape.
        let sql = format!(
            "SELECT {SWEEP_COLUMNS} FROM sweeps \
             WHERE ($1::TEXT IS NULL OR state = $1) AND ($2::TEXT IS NULL OR strpos(lower(name), lower($2)) > 0) \
               AND ($3::BIGINT IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4"
        );
        let limit = query.limit.clamp(1, 1000);
        let mut rows = sqlx::query_as::<_, SweepRow>(sqlx::AssertSqlSafe(sql))
            .bind(query.state.map(SweepState::as_str))
            .bind(query.name_contains.as_deref())
            .bind(query.before_id)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Ok((self.load_sweeps(rows).await?, more))
    }

    async fn trial_summaries(&self, sweep_id: i64, reason_chars: u32) -> Result<Vec<TrialSummary>> {
        type Row = (
            i64,
            Stored<TrialState>,
            Option<f64>,
            String,
            i64,
            i64,
            Option<String>,
            String,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<i64>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT t.number, t.state, t.value, t.params, t.attempt, \
                    (SELECT COUNT(*) FROM leases l WHERE l.trial_id = t.id AND l.outcome = 'preempted'), \
                    (SELECT COALESCE(a.name, l.agent_id) FROM leases l LEFT JOIN agents a ON a.id = l.agent_id \
                      WHERE l.trial_id = t.id ORDER BY l.created_at DESC LIMIT 1), \
                    r.run_uuid, t.started_at, t.finished_at, t.pruned_step, substr(t.reason, 1, $2), t.rerun_of \
             FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.sweep_id = $1 ORDER BY t.number",
        )
        .bind(sweep_id)
        .bind(i32::try_from(reason_chars).unwrap_or(i32::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    number,
                    state,
                    value,
                    params_json,
                    attempts,
                    preemptions,
                    agent,
                    run_id,
                    started_at,
                    finished_at,
                    pruned_step,
                    reason,
                    rerun_of,
                )| TrialSummary {
                    number,
                    state: state.0,
                    value,
                    params_json,
                    attempts,
                    preemptions,
                    agent,
                    run_id,
                    started_at,
                    finished_at,
                    pruned_step,
                    reason,
                    rerun_of,
                },
            )
            .collect())
    }

    async fn sweep_attempts(&self, sweep_id: i64) -> Result<Vec<Attempt>> {
        let rows: Vec<(i64, i64, Option<String>, String, i64, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT t.number, l.attempt, a.name, l.agent_id, l.created_at, l.ended_at, l.outcome \
             FROM trials t JOIN leases l ON l.trial_id = t.id LEFT JOIN agents a ON a.id = l.agent_id \
             WHERE t.sweep_id = $1 ORDER BY l.created_at, t.number",
        )
        .bind(sweep_id)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(
                |(trial_number, attempt, name, agent_id, started_at, ended_at, outcome)| Attempt {
                    trial_number,
                    attempt,
                    agent_name: name.unwrap_or(agent_id),
                    started_at,
                    ended_at,
                    outcome,
                },
            )
            .collect())
    }

    async fn agent_summaries(&self, pool: Option<&str>) -> Result<Vec<AgentSummary>> {
        let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT a.name, a.pool, \
                    (SELECT slots FROM agents b WHERE b.name = a.name ORDER BY b.last_seen_at DESC LIMIT 1), \
                    MAX(a.last_seen_at), \
                    COUNT(l.id) FILTER (WHERE l.ended_at IS NULL), COUNT(l.id), \
                    COUNT(l.id) FILTER (WHERE l.outcome = 'preempted') \
             FROM agents a LEFT JOIN leases l ON l.agent_id = a.id \
             WHERE $1::TEXT IS NULL OR a.pool = $1 GROUP BY a.name, a.pool ORDER BY a.name",
        )
        .bind(pool)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(
                |(name, pool, slots, last_seen_at, running, attempts, preemptions)| AgentSummary {
                    name,
                    pool,
                    slots,
                    last_seen_at,
                    running,
                    attempts,
                    preemptions,
                },
            )
            .collect())
    }

    async fn set_sweep_state(&self, id: i64, state: SweepState) -> Result<Sweep> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let current: Option<(Stored<SweepState>,)> =
            sqlx::query_as("SELECT state FROM sweeps WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let current = current
            .ok_or_else(|| StoreError::NotFound(format!("no sweep with id {id}")))?
            .0
            .0;
        current
            .change_to(state)
            .map_err(|why| StoreError::Invalid(format!("sweep {id} {why}")))?;
        let now = now_ms();
        match state {
            SweepState::Running | SweepState::Paused => {
                sqlx::query("UPDATE sweeps SET state = $1 WHERE id = $2")
                    .bind(Stored(state))
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                if state == SweepState::Running {
                    complete_sweep_if_done(&mut tx, id).await?;
                }
            }
            SweepState::Cancelled => {
                sqlx::query(
                    "WITH s AS (UPDATE sweeps SET state = 'cancelled', finished_at = $1 WHERE id = $2), \
                     w AS (UPDATE trials SET state = 'cancelled', reason = 'sweep cancelled', finished_at = $1 \
                           WHERE sweep_id = $2 AND state IN ('queued', 'preempted')) \
                     UPDATE trials SET stop_requested = TRUE WHERE sweep_id = $2 AND state = 'running'",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                end_sweep_run(&mut tx, id, SweepState::Cancelled).await?;
            }
            // `change_to` refuses it; a completed sweep asked to complete changes nothing.
            SweepState::Completed => {}
        }
        commit(tx).await?;
        self.get_sweep(id).await
    }

    async fn sweep_best(&self, sweep_id: i64) -> Result<SweepBest> {
        let spec = match self.specs.cached(sweep_id) {
            Some(spec) => spec,
            None => {
                let mut conn = self.pool.acquire().await.map_err(map_err)?;
                self.specs.spec_of(&mut conn, sweep_id).await?
            }
        };
        let (run_id,): (Option<String>,) = sqlx::query_as("SELECT run_uuid FROM sweeps WHERE id = $1")
            .bind(sweep_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no sweep with id {sweep_id}")))?;
        Ok(SweepBest {
            run_id,
            metric: spec.objective.metric.clone(),
            best: best_trial(&self.pool, sweep_id, spec.objective.goal).await?,
        })
    }

    async fn list_trials(&self, sweep_id: i64) -> Result<Vec<Trial>> {
        let sql = format!(
            "SELECT {TRIAL_COLUMNS} FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.sweep_id = $1 \
             ORDER BY t.number"
        );
        let rows = sqlx::query_as::<_, TrialRow>(sqlx::AssertSqlSafe(sql))
            .bind(sweep_id)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.into_iter().map(TrialRow::into_trial).collect()
    }

    async fn enqueue_trial(&self, sweep_id: i64, params: Params) -> Result<Trial> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let row: Option<(String, i64, i64)> =
            sqlx::query_as("SELECT state, trials_created, max_trials FROM sweeps WHERE id = $1 FOR UPDATE")
                .bind(sweep_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let (state, created, max) =
            row.ok_or_else(|| StoreError::NotFound(format!("no sweep with id {sweep_id}")))?;
        if state == "completed" || state == "cancelled" {
            return Err(StoreError::Invalid(format!(
                "sweep {sweep_id} is {state}; it takes no more trials"
            )));
        }
        if created >= max {
            return Err(StoreError::Invalid(format!(
                "sweep {sweep_id} already has max_trials = {max} trials; it takes no more"
            )));
        }
        let sweep: SweepRef = sqlx::query_as(SWEEP_REF)
            .bind(sweep_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let trial = self
            .insert_trial(&mut tx, &sweep, created, &params, None, None, None)
            .await?;
        commit(tx).await?;
        Ok(trial)
    }

    async fn get_trial(&self, sweep_id: i64, number: i64) -> Result<Trial> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        trial_by_number(&mut conn, sweep_id, number).await
    }

    async fn rerun_trial(&self, sweep_id: i64, number: i64, pool: Option<&str>) -> Result<Trial> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_one_sweep(&mut tx, sweep_id).await?;
        let original = trial_by_number(&mut tx, sweep_id, number).await?;
        if !original.state.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "trial {number} of sweep {sweep_id} is {}: rerun it once it has ended",
                original.state.as_str()
            )));
        }
        let sweep: SweepRef = sqlx::query_as(SWEEP_REF)
            .bind(sweep_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        // After every number the sweep can still propose (its max_trials only ever shrinks) and
        // every rerun so far.
        let (next,): (i64,) = sqlx::query_as(
            "SELECT GREATEST(s.max_trials, COALESCE((SELECT MAX(number) + 1 FROM trials WHERE sweep_id = s.id), 0)) \
             FROM sweeps s WHERE s.id = $1",
        )
        .bind(sweep_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let spec = self.specs.spec_of(&mut tx, sweep_id).await?;
        let rerun = Rerun {
            of: number,
            seed: original.seed,
            run_id: &original.run_id,
            pool: pool.filter(|p| *p != spec.pool),
        };
        let trial = self
            .insert_trial(&mut tx, &sweep, next, &original.params, None, None, Some(&rerun))
            .await?;
        commit(tx).await?;
        Ok(trial)
    }

    async fn pool_uses_code(&self, pool: &str, code: &str) -> Result<bool> {
        let (uses,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM sweeps s WHERE (s.spec::JSONB ->> 'code') = $2 AND ( \
               (s.state IN ('running', 'paused') AND s.pool = $1) \
               OR EXISTS (SELECT 1 FROM trials t WHERE t.sweep_id = s.id AND t.rerun_of IS NOT NULL \
                            AND t.state IN ('queued', 'running', 'preempted') AND COALESCE(t.pool, s.pool) = $1)))",
        )
        .bind(pool)
        .bind(code)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(uses)
    }

    async fn register_agent(&self, id: &str, name: &str, pool: &str, slots: u32) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO agents (id, name, pool, slots, registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, pool = excluded.pool, slots = excluded.slots, \
               last_seen_at = excluded.last_seen_at",
        )
        .bind(id)
        .bind(name)
        .bind(pool)
        .bind(i64::from(slots))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn lease_trials(&self, request: &LeaseRequest) -> Result<Vec<LeasedTrial>> {
        match &self.queue_jobs {
            Some(jobs) => super::queue_writer::lease(jobs, request.clone()).await,
            None => {
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                let leased = self.lease(&mut tx, request, &mut Vec::new()).await?;
                commit(tx).await?;
                Ok(leased)
            }
        }
    }

    async fn heartbeat(&self, lease_id: &str, ttl_ms: i64) -> Result<HeartbeatAction> {
        // Two statements, each its own transaction: the read after the extension sees it, and
        // an expiry that ended the lease meanwhile.
        sqlx::query("UPDATE leases SET expires_at = $2 WHERE id = $1 AND ended_at IS NULL")
            .bind(lease_id)
            .bind(now_ms() + ttl_ms)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        type Row = (Option<i64>, bool, Stored<SweepState>, i64, i64, i64, bool);
        let row: Option<Row> = sqlx::query_as(
            "SELECT l.ended_at, t.stop_requested, s.state, t.id, t.sweep_id, t.number, t.rerun_of IS NOT NULL \
             FROM leases l JOIN trials t ON t.id = l.trial_id JOIN sweeps s ON s.id = t.sweep_id WHERE l.id = $1",
        )
        .bind(lease_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let (ended_at, stop_requested, Stored(sweep), trial_id, sweep_id, number, rerun) =
            row.ok_or_else(|| StoreError::NotFound(format!("no lease with id '{lease_id}'")))?;
        let pulse = Pulse {
            ended: ended_at.is_some(),
            stop_requested,
            sweep,
            rerun,
        };
        match queue::heartbeat(pulse) {
            Beat::Stop => return Ok(HeartbeatAction::Stop),
            Beat::Continue => return Ok(HeartbeatAction::Continue),
            Beat::AskPruner => {}
        }
        let spec = match self.specs.cached(sweep_id) {
            Some(spec) => spec,
            None => {
                let mut conn = self.pool.acquire().await.map_err(map_err)?;
                self.specs.spec_of(&mut conn, sweep_id).await?
            }
        };
        if spec.pruner.kind == PrunerKind::None {
            return Ok(HeartbeatAction::Continue);
        }
        let decision = match self.prune_decision(&spec, sweep_id, number as u64).await {
            Ok(d) => d,
            Err(e) => {
                // The lease was extended; a pruner that cannot read the history lets it run.
                tracing::warn!(sweep = sweep_id, trial = number, error = %e, "pruner skipped");
                Decision::Continue
            }
        };
        match decision {
            Decision::Continue => Ok(HeartbeatAction::Continue),
            Decision::Prune { step, reason } => {
                sqlx::query(
                    "UPDATE trials SET stop_requested = TRUE, stop_reason = $1, pruned_step = $2 \
                     WHERE id = $3 AND state = $4",
                )
                .bind(&reason)
                .bind(step)
                .bind(trial_id)
                .bind(Stored(TrialState::Running))
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                tracing::info!(sweep = sweep_id, trial = number, %reason, "trial pruned");
                Ok(HeartbeatAction::Prune)
            }
        }
    }

    async fn complete_trial(&self, lease_id: &str, outcome: Outcome) -> Result<Trial> {
        match &self.queue_jobs {
            Some(jobs) => super::queue_writer::complete(jobs, lease_id.to_owned(), outcome).await,
            None => {
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                let trial = self.complete(&mut tx, lease_id, outcome, false).await?;
                commit(tx).await?;
                Ok(trial)
            }
        }
    }

    async fn expire_leases(&self, now: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // In sweep order, so that two daemons expiring at once take the sweeps' locks in the
        // same order; each lease is looked at again under its lock, and one that another daemon
        // expired (or a heartbeat extended) meanwhile is left alone.
        let expired: Vec<(String, i64)> = sqlx::query_as(
            "SELECT l.id, t.sweep_id FROM leases l JOIN trials t ON t.id = l.trial_id \
             WHERE l.ended_at IS NULL AND l.expires_at < $1 ORDER BY t.sweep_id, l.id LIMIT 1000",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut held = Vec::new();
        let mut ended = 0;
        for (lease_id, sweep_id) in &expired {
            if !held.contains(sweep_id) {
                // Waits even while holding others: expiries take them in this order, and a lease
                // request never waits while it holds one.
                sqlx::query("SELECT id FROM sweeps WHERE id = $1 FOR UPDATE")
                    .bind(sweep_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                held.push(*sweep_id);
            }
            let Some(row) = self.lock_lease(&mut tx, lease_id, Some(now)).await? else {
                continue;
            };
            let (_, _, trial) = row.standing(lease_id)?;
            let expiry = queue::expiry(trial.attempt);
            self.end_lease(&mut tx, lease_id, LeaseOutcome::Expired, trial, &expiry)
                .await?;
            ended += 1;
        }
        commit(tx).await?;
        Ok(ended)
    }

    async fn next_lease_expiry(&self) -> Result<Option<i64>> {
        let (next,): (Option<i64>,) =
            sqlx::query_as("SELECT MIN(expires_at) FROM leases WHERE ended_at IS NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(next)
    }
}
