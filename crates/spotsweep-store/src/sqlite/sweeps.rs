//! Sweeps, trials and leases on SQLite: the durable trial queue.
//!
//! Every state change is one write transaction on the single writer connection, so leasing is
//! naturally serialised: two agents can never lease the same trial, and `trials_created` is
//! compared with `max_trials` and incremented in the same transaction as the trial insert, so a
//! sweep never overshoots.

use std::sync::Arc;

use async_trait::async_trait;
use rand::RngExt;
use spotsweep_core::sweep::{
    Goal, Params, SamplerKind, Summary, SweepSpec, grid_points, sample_random, trial_seed,
};
use sqlx::SqliteConnection;

use super::tracking::{insert_experiment, insert_new_params, insert_run};
use super::{SqliteStore, map_err, now_ms};
use crate::{
    HeartbeatAction, KeyValue, LeaseRequest, LeasedTrial, NewExperiment, NewRun, Outcome, Result, StoreError,
    Sweep, SweepState, SweepStore, Trial, TrialCounts, TrialState,
};

/// The artifact root of experiments created for sweeps: behind the daemon's artifact proxy.
const SWEEP_ARTIFACT_ROOT: &str = "mlflow-artifacts:";

const TRIAL_COLUMNS: &str = "t.id, t.sweep_id, t.number, t.params, t.seed, r.run_uuid, r.experiment_id, r.artifact_uri, t.state, \
     t.attempt, t.failures, t.value, t.reason, t.agent_id, t.created_at, t.started_at, t.finished_at";

#[derive(sqlx::FromRow)]
struct TrialRow {
    id: i64,
    sweep_id: i64,
    number: i64,
    params: String,
    seed: i64,
    run_uuid: String,
    experiment_id: i64,
    artifact_uri: String,
    state: String,
    attempt: i64,
    failures: i64,
    value: Option<f64>,
    reason: Option<String>,
    agent_id: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

impl TrialRow {
    fn into_trial(self) -> Trial {
        Trial {
            id: self.id,
            sweep_id: self.sweep_id,
            number: self.number,
            params: serde_json::from_str(&self.params).unwrap_or_default(),
            seed: self.seed as u64,
            run_id: self.run_uuid,
            experiment_id: self.experiment_id,
            artifact_uri: self.artifact_uri,
            state: TrialState::parse(&self.state).unwrap_or(TrialState::Failed),
            attempt: self.attempt,
            failures: self.failures,
            value: self.value,
            reason: self.reason,
            agent_id: self.agent_id,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct SweepRow {
    id: i64,
    spec: String,
    seed: i64,
    experiment_id: i64,
    state: String,
    trials_created: i64,
    created_at: i64,
    finished_at: Option<i64>,
}

const SWEEP_COLUMNS: &str = "id, spec, seed, experiment_id, state, trials_created, created_at, finished_at";

async fn trial_by_id(conn: &mut SqliteConnection, id: i64) -> Result<Trial> {
    let sql = format!("SELECT {TRIAL_COLUMNS} FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.id = ?");
    sqlx::query_as::<_, TrialRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .map(TrialRow::into_trial)
        .ok_or_else(|| StoreError::NotFound(format!("no trial with id {id}")))
}

fn new_lease_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    format!("ls_{}", hex::encode(bytes))
}

fn parse_spec(text: &str) -> Result<SweepSpec> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Incompatible(format!("stored sweep spec is unreadable: {e}")))
}

/// A sweep that may get a trial now, as seen inside the leasing transaction.
#[derive(sqlx::FromRow)]
struct Candidate {
    id: i64,
    parallelism: i64,
    max_trials: i64,
    trials_created: i64,
    running: i64,
    next_waiting: Option<i64>,
}

impl SqliteStore {
    /// The parsed spec of a sweep; specs never change, so they are parsed once.
    async fn spec_of(&self, conn: &mut SqliteConnection, sweep_id: i64) -> Result<Arc<SweepSpec>> {
        if let Some(spec) = self
            .sweep_specs
            .lock()
            .ok()
            .and_then(|m| m.get(&sweep_id).cloned())
        {
            return Ok(spec);
        }
        let (text,): (String,) = sqlx::query_as("SELECT spec FROM sweeps WHERE id = ?")
            .bind(sweep_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no sweep with id {sweep_id}")))?;
        let spec = Arc::new(parse_spec(&text)?);
        if let Ok(mut m) = self.sweep_specs.lock() {
            m.insert(sweep_id, spec.clone());
        }
        Ok(spec)
    }

    /// The parameters of trial `number`: a random draw from the trial's own seed, or the
    /// `number`-th grid point. `None` when a grid is exhausted.
    async fn propose(
        &self,
        conn: &mut SqliteConnection,
        sweep_id: i64,
        seed: u64,
        number: i64,
    ) -> Result<Option<Params>> {
        let spec = self.spec_of(conn, sweep_id).await?;
        match spec.sampler.kind {
            SamplerKind::Random => Ok(Some(sample_random(&spec, seed, number as u64))),
            SamplerKind::Grid => {
                let cached = self.grids.lock().ok().and_then(|m| m.get(&sweep_id).cloned());
                let grid = match cached {
                    Some(g) => g,
                    None => {
                        let g = Arc::new(grid_points(&spec).map_err(|e| StoreError::Invalid(e.to_string()))?);
                        if let Ok(mut m) = self.grids.lock() {
                            m.insert(sweep_id, g.clone());
                        }
                        g
                    }
                };
                Ok(grid.get(number as usize).cloned())
            }
        }
    }

    /// Creates trial `number` of a sweep with its MLflow run (params = the hyperparameters,
    /// tags = sweep, trial number, attempt, seed), queued.
    async fn insert_trial(
        &self,
        conn: &mut SqliteConnection,
        sweep_id: i64,
        sweep_seed: u64,
        number: i64,
        params: &Params,
    ) -> Result<i64> {
        let spec = self.spec_of(conn, sweep_id).await?;
        let (experiment_id,): (i64,) = sqlx::query_as("SELECT experiment_id FROM sweeps WHERE id = ?")
            .bind(sweep_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?;
        let seed = trial_seed(sweep_seed, number as u64);
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let run_name = format!("{}-{number}", spec.name);
        let tag = |k: &str, v: String| KeyValue {
            key: k.into(),
            value: v,
        };
        let now = now_ms();
        let (run_key, _) = insert_run(
            conn,
            &NewRun {
                experiment_id,
                run_id: run_id.clone(),
                run_name: run_name.clone(),
                user_id: String::new(),
                start_time: now,
                tags: vec![
                    tag("mlflow.runName", run_name),
                    tag("spotsweep.sweep_id", sweep_id.to_string()),
                    tag("spotsweep.sweep", spec.name.clone()),
                    tag("spotsweep.trial", number.to_string()),
                    tag("spotsweep.attempt", "0".into()),
                    tag("spotsweep.seed", seed.to_string()),
                ],
            },
        )
        .await?;
        let as_params: Vec<KeyValue> = params
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: v.to_string(),
            })
            .collect();
        insert_new_params(conn, run_key, &as_params).await?;
        let params_json = serde_json::to_string(params).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO trials (sweep_id, number, params, seed, run_id, state, created_at) \
             VALUES (?, ?, ?, ?, ?, 'queued', ?) RETURNING id",
        )
        .bind(sweep_id)
        .bind(number)
        .bind(params_json)
        .bind(seed as i64)
        .bind(run_key)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
        sqlx::query("UPDATE sweeps SET trials_created = trials_created + 1 WHERE id = ?")
            .bind(sweep_id)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        Ok(id)
    }

    /// Leases a waiting trial to an agent.
    async fn lease_one(
        &self,
        conn: &mut SqliteConnection,
        trial_id: i64,
        request: &LeaseRequest,
    ) -> Result<LeasedTrial> {
        let now = now_ms();
        let lease_id = new_lease_id();
        let expires_at = now + request.ttl_ms;
        let (attempt, run_key, sweep_id): (i64, i64, i64) = sqlx::query_as(
            "UPDATE trials SET state = 'running', attempt = attempt + 1, agent_id = ?, started_at = ?, \
             stop_requested = 0 WHERE id = ? RETURNING attempt, run_id, sweep_id",
        )
        .bind(&request.agent_id)
        .bind(now)
        .bind(trial_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO leases (id, trial_id, attempt, agent_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&lease_id)
        .bind(trial_id)
        .bind(attempt)
        .bind(&request.agent_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        sqlx::query("UPDATE tags SET value = ? WHERE run_id = ? AND key = 'spotsweep.attempt'")
            .bind(attempt.to_string())
            .bind(run_key)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        sqlx::query("UPDATE runs SET status = 'RUNNING', end_time = NULL WHERE id = ?")
            .bind(run_key)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        let trial = trial_by_id(conn, trial_id).await?;
        let spec = self.spec_of(conn, sweep_id).await?;
        Ok(LeasedTrial {
            lease_id,
            expires_at,
            trial,
            spec,
        })
    }

    /// Reads a trial's objective from its run's metrics, by the spec's summary rule.
    async fn objective_of(
        &self,
        conn: &mut SqliteConnection,
        trial: &Trial,
        spec: &SweepSpec,
    ) -> Result<Option<f64>> {
        let metric = &spec.objective.metric;
        let sql = match spec.objective.summary {
            Summary::Last => {
                "SELECT value FROM latest_metrics WHERE run_id = (SELECT id FROM runs WHERE run_uuid = ?) \
                 AND key = ? AND is_nan = 0"
            }
            Summary::Min => {
                "SELECT MIN(value) FROM metrics WHERE run_id = (SELECT id FROM runs WHERE run_uuid = ?) \
                 AND key = ? AND is_nan = 0"
            }
            Summary::Max => {
                "SELECT MAX(value) FROM metrics WHERE run_id = (SELECT id FROM runs WHERE run_uuid = ?) \
                 AND key = ? AND is_nan = 0"
            }
        };
        let row: Option<(Option<f64>,)> = sqlx::query_as(sql)
            .bind(&trial.run_id)
            .bind(metric)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
        Ok(row.and_then(|(v,)| v))
    }

    /// Applies an outcome to a trial whose lease just ended.
    async fn apply_outcome(
        &self,
        conn: &mut SqliteConnection,
        trial: &Trial,
        outcome: &Outcome,
    ) -> Result<()> {
        let spec = self.spec_of(conn, trial.sweep_id).await?;
        let now = now_ms();
        // (state, value, reason, failures, run status if final)
        let (state, value, reason, failures, run_status) = match outcome {
            Outcome::Succeeded(value) => {
                let value = match value {
                    Some(v) => Some(*v),
                    None => self.objective_of(conn, trial, &spec).await?,
                };
                match value {
                    Some(v) if v.is_finite() => (
                        TrialState::Completed,
                        Some(v),
                        None,
                        trial.failures,
                        Some("FINISHED"),
                    ),
                    Some(v) => (
                        TrialState::Failed,
                        None,
                        Some(format!("the objective metric '{}' is {v}", spec.objective.metric)),
                        trial.failures,
                        Some("FAILED"),
                    ),
                    None => (
                        TrialState::Failed,
                        None,
                        Some(format!(
                            "the command exited 0 without logging the objective metric '{}' to its MLflow run",
                            spec.objective.metric
                        )),
                        trial.failures,
                        Some("FAILED"),
                    ),
                }
            }
            Outcome::Failed(reason) => {
                let failures = trial.failures + 1;
                if failures > i64::from(spec.max_retries) {
                    (
                        TrialState::Failed,
                        None,
                        Some(reason.clone()),
                        failures,
                        Some("FAILED"),
                    )
                } else {
                    (TrialState::Queued, None, Some(reason.clone()), failures, None)
                }
            }
            Outcome::Preempted => (
                TrialState::Preempted,
                None,
                Some("preempted".into()),
                trial.failures,
                None,
            ),
            Outcome::Pruned(reason) => (
                TrialState::Pruned,
                None,
                Some(reason.clone()),
                trial.failures,
                Some("KILLED"),
            ),
            Outcome::Cancelled => (
                TrialState::Cancelled,
                None,
                Some("cancelled".into()),
                trial.failures,
                Some("KILLED"),
            ),
        };
        let finished_at = state.is_terminal().then_some(now);
        sqlx::query(
            "UPDATE trials SET state = ?, value = ?, reason = ?, failures = ?, finished_at = ? WHERE id = ?",
        )
        .bind(state.as_str())
        .bind(value)
        .bind(reason)
        .bind(failures)
        .bind(finished_at)
        .bind(trial.id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        if let Some(status) = run_status {
            sqlx::query("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?")
                .bind(status)
                .bind(now)
                .bind(&trial.run_id)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
        }
        self.complete_sweep_if_done(conn, trial.sweep_id).await
    }

    /// A running or paused sweep whose every trial was proposed and has ended is completed.
    async fn complete_sweep_if_done(&self, conn: &mut SqliteConnection, sweep_id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE sweeps SET state = 'completed', finished_at = ? WHERE id = ? AND state IN ('running', 'paused') \
             AND trials_created >= max_trials \
             AND NOT EXISTS (SELECT 1 FROM trials t WHERE t.sweep_id = sweeps.id \
                             AND t.state IN ('queued', 'running', 'preempted'))",
        )
        .bind(now_ms())
        .bind(sweep_id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn load_sweep(&self, row: SweepRow) -> Result<Sweep> {
        let spec = parse_spec(&row.spec)?;
        let counts_rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM trials WHERE sweep_id = ? GROUP BY state")
                .bind(row.id)
                .fetch_all(&self.reader)
                .await
                .map_err(map_err)?;
        let mut counts = TrialCounts::default();
        for (state, n) in counts_rows {
            if let Some(i) = TrialState::ALL.iter().position(|s| s.as_str() == state) {
                counts.by_state[i] = n;
            }
        }
        let best_sql = match spec.objective.goal {
            Goal::Minimize => {
                "SELECT t.number, t.value, r.run_uuid FROM trials t JOIN runs r ON r.id = t.run_id \
                 WHERE t.sweep_id = ? AND t.state = 'completed' ORDER BY t.value ASC, t.number LIMIT 1"
            }
            Goal::Maximize => {
                "SELECT t.number, t.value, r.run_uuid FROM trials t JOIN runs r ON r.id = t.run_id \
                 WHERE t.sweep_id = ? AND t.state = 'completed' ORDER BY t.value DESC, t.number LIMIT 1"
            }
        };
        let best: Option<(i64, f64, String)> = sqlx::query_as(best_sql)
            .bind(row.id)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(Sweep {
            id: row.id,
            spec,
            seed: row.seed as u64,
            experiment_id: row.experiment_id,
            state: SweepState::parse(&row.state).unwrap_or(SweepState::Cancelled),
            trials_created: row.trials_created,
            counts,
            best,
            created_at: row.created_at,
            finished_at: row.finished_at,
        })
    }
}

#[async_trait]
impl SweepStore for SqliteStore {
    async fn create_sweep(&self, spec: SweepSpec, seed: u64) -> Result<Sweep> {
        // A grid never has more trials than points.
        let max_trials = match spec.sampler.kind {
            SamplerKind::Grid => {
                let points = grid_points(&spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
                i64::from(spec.max_trials).min(points.len() as i64)
            }
            SamplerKind::Random => i64::from(spec.max_trials),
        };
        let mut tx = self.begin_write().await?;
        let name = spec.experiment_name().to_owned();
        let existing: Option<(i64, String)> =
            sqlx::query_as("SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = ?")
                .bind(&name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let now = now_ms();
        let experiment_id = match existing {
            Some((_, stage)) if stage != "active" => {
                return Err(StoreError::Invalid(format!(
                    "experiment: '{name}' is deleted; restore it or choose another experiment name"
                )));
            }
            Some((id, _)) => id,
            None => {
                insert_experiment(
                    &mut tx,
                    NewExperiment {
                        name: name.clone(),
                        artifact_location: None,
                        artifact_root: SWEEP_ARTIFACT_ROOT.into(),
                        tags: vec![],
                        now,
                    },
                )
                .await?
            }
        };
        let text = serde_json::to_string(&spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO sweeps (name, spec, seed, experiment_id, pool, state, max_trials, parallelism, max_retries, created_at) \
             VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?) RETURNING id",
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
        tx.commit().await.map_err(map_err)?;
        self.get_sweep(id).await
    }

    async fn get_sweep(&self, id: i64) -> Result<Sweep> {
        let sql = format!("SELECT {SWEEP_COLUMNS} FROM sweeps WHERE id = ?");
        let row = sqlx::query_as::<_, SweepRow>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no sweep with id {id}")))?;
        self.load_sweep(row).await
    }

    async fn list_sweeps(&self) -> Result<Vec<Sweep>> {
        let sql = format!("SELECT {SWEEP_COLUMNS} FROM sweeps ORDER BY id DESC LIMIT 1000");
        let rows = sqlx::query_as::<_, SweepRow>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.load_sweep(row).await?);
        }
        Ok(out)
    }

    async fn set_sweep_state(&self, id: i64, state: SweepState) -> Result<Sweep> {
        let mut tx = self.begin_write().await?;
        let current: Option<(String,)> = sqlx::query_as("SELECT state FROM sweeps WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let current = current
            .ok_or_else(|| StoreError::NotFound(format!("no sweep with id {id}")))?
            .0;
        let current = SweepState::parse(&current).unwrap_or(SweepState::Cancelled);
        if matches!(current, SweepState::Completed | SweepState::Cancelled) && current != state {
            return Err(StoreError::Invalid(format!(
                "sweep {id} is {}; it cannot change any more",
                current.as_str()
            )));
        }
        let now = now_ms();
        match state {
            SweepState::Running | SweepState::Paused => {
                sqlx::query("UPDATE sweeps SET state = ? WHERE id = ?")
                    .bind(state.as_str())
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                if state == SweepState::Running {
                    self.complete_sweep_if_done(&mut tx, id).await?;
                }
            }
            SweepState::Cancelled => {
                sqlx::query("UPDATE sweeps SET state = 'cancelled', finished_at = ? WHERE id = ?")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query(
                    "UPDATE trials SET state = 'cancelled', reason = 'sweep cancelled', finished_at = ? \
                     WHERE sweep_id = ? AND state IN ('queued', 'preempted')",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                sqlx::query("UPDATE trials SET stop_requested = 1 WHERE sweep_id = ? AND state = 'running'")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
            }
            SweepState::Completed => {
                return Err(StoreError::Invalid(
                    "a sweep completes by itself when its trials end".into(),
                ));
            }
        }
        tx.commit().await.map_err(map_err)?;
        self.get_sweep(id).await
    }

    async fn list_trials(&self, sweep_id: i64) -> Result<Vec<Trial>> {
        let sql = format!(
            "SELECT {TRIAL_COLUMNS} FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.sweep_id = ? ORDER BY t.number"
        );
        let rows = sqlx::query_as::<_, TrialRow>(sqlx::AssertSqlSafe(sql))
            .bind(sweep_id)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(rows.into_iter().map(TrialRow::into_trial).collect())
    }

    async fn enqueue_trial(&self, sweep_id: i64, params: Params) -> Result<Trial> {
        let mut tx = self.begin_write().await?;
        let row: Option<(String, i64, i64, i64)> =
            sqlx::query_as("SELECT state, seed, trials_created, max_trials FROM sweeps WHERE id = ?")
                .bind(sweep_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let (state, seed, created, max) =
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
        let id = self
            .insert_trial(&mut tx, sweep_id, seed as u64, created, &params)
            .await?;
        let trial = trial_by_id(&mut tx, id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(trial)
    }

    async fn register_agent(&self, id: &str, name: &str, pool: &str, slots: u32) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO agents (id, name, pool, slots, registered_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, pool = excluded.pool, slots = excluded.slots, \
               last_seen_at = excluded.last_seen_at",
        )
        .bind(id)
        .bind(name)
        .bind(pool)
        .bind(i64::from(slots))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(())
    }

    async fn lease_trials(&self, request: &LeaseRequest) -> Result<Vec<LeasedTrial>> {
        let mut tx = self.begin_write().await?;
        if let Some(request_id) = &request.request_id {
            let earlier: Option<(String,)> =
                sqlx::query_as("SELECT response FROM lease_requests WHERE request_id = ?")
                    .bind(request_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
            if let Some((response,)) = earlier {
                // A retried request: answer with the same leases, as they are now.
                let lease_ids: Vec<String> = serde_json::from_str(&response).unwrap_or_default();
                let mut out = Vec::new();
                for lease_id in lease_ids {
                    let row: Option<(i64, i64, Option<i64>)> =
                        sqlx::query_as("SELECT trial_id, expires_at, ended_at FROM leases WHERE id = ?")
                            .bind(&lease_id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(map_err)?;
                    if let Some((trial_id, expires_at, None)) = row {
                        let trial = trial_by_id(&mut tx, trial_id).await?;
                        let spec = self.spec_of(&mut tx, trial.sweep_id).await?;
                        out.push(LeasedTrial {
                            lease_id,
                            expires_at,
                            trial,
                            spec,
                        });
                    }
                }
                return Ok(out);
            }
        }
        let mut leased: Vec<LeasedTrial> = Vec::new();
        while leased.len() < request.slots as usize {
            let candidates: Vec<Candidate> = sqlx::query_as(
                "SELECT s.id, s.parallelism, s.max_trials, s.trials_created, \
                   (SELECT COUNT(*) FROM trials t WHERE t.sweep_id = s.id AND t.state = 'running') AS running, \
                   (SELECT MIN(t.number) FROM trials t WHERE t.sweep_id = s.id AND t.state IN ('queued', 'preempted')) \
                     AS next_waiting \
                 FROM sweeps s WHERE s.state = 'running' AND (?1 IS NULL OR s.pool = ?1) AND (?2 IS NULL OR s.id = ?2)",
            )
            .bind(&request.pool)
            .bind(request.sweep_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            // Fair share: the sweep with the fewest running trials goes first; waiting
            // (retried) trials before new ones within a sweep.
            let pick = candidates
                .iter()
                .filter(|c| {
                    c.running < c.parallelism && (c.next_waiting.is_some() || c.trials_created < c.max_trials)
                })
                .min_by_key(|c| (c.running, c.id));
            let Some(sweep) = pick else { break };
            let trial_id = match sweep.next_waiting {
                Some(number) => {
                    let (id,): (i64,) =
                        sqlx::query_as("SELECT id FROM trials WHERE sweep_id = ? AND number = ?")
                            .bind(sweep.id)
                            .bind(number)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(map_err)?;
                    id
                }
                None => {
                    let (seed,): (i64,) = sqlx::query_as("SELECT seed FROM sweeps WHERE id = ?")
                        .bind(sweep.id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    let Some(params) = self
                        .propose(&mut tx, sweep.id, seed as u64, sweep.trials_created)
                        .await?
                    else {
                        // An exhausted grid: no more trials.
                        sqlx::query("UPDATE sweeps SET max_trials = trials_created WHERE id = ?")
                            .bind(sweep.id)
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                        continue;
                    };
                    self.insert_trial(&mut tx, sweep.id, seed as u64, sweep.trials_created, &params)
                        .await?
                }
            };
            leased.push(self.lease_one(&mut tx, trial_id, request).await?);
        }
        // Only a request that leased something is remembered: an empty answer leases nothing
        // twice, and a long poll asks again with the same id until work comes.
        if let Some(request_id) = request.request_id.as_ref().filter(|_| !leased.is_empty()) {
            let ids: Vec<&str> = leased.iter().map(|l| l.lease_id.as_str()).collect();
            sqlx::query(
                "INSERT INTO lease_requests (request_id, agent_id, response, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(request_id)
            .bind(&request.agent_id)
            .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(leased)
    }

    async fn heartbeat(&self, lease_id: &str, ttl_ms: i64) -> Result<HeartbeatAction> {
        let mut tx = self.begin_write().await?;
        let row: Option<(Option<i64>, i64, String)> = sqlx::query_as(
            "SELECT l.ended_at, t.stop_requested, s.state FROM leases l JOIN trials t ON t.id = l.trial_id \
             JOIN sweeps s ON s.id = t.sweep_id WHERE l.id = ?",
        )
        .bind(lease_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let (ended_at, stop_requested, sweep_state) =
            row.ok_or_else(|| StoreError::NotFound(format!("no lease with id '{lease_id}'")))?;
        if ended_at.is_some() {
            // Expired (the trial went back to the queue) or already completed.
            return Ok(HeartbeatAction::Stop);
        }
        sqlx::query("UPDATE leases SET expires_at = ? WHERE id = ?")
            .bind(now_ms() + ttl_ms)
            .bind(lease_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(if stop_requested != 0 || sweep_state == "cancelled" {
            HeartbeatAction::Stop
        } else {
            HeartbeatAction::Continue
        })
    }

    async fn complete_trial(&self, lease_id: &str, outcome: Outcome) -> Result<Trial> {
        let mut tx = self.begin_write().await?;
        let row: Option<(i64, i64, Option<i64>, Option<String>)> =
            sqlx::query_as("SELECT trial_id, attempt, ended_at, outcome FROM leases WHERE id = ?")
                .bind(lease_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let (trial_id, attempt, ended_at, ended_as) =
            row.ok_or_else(|| StoreError::NotFound(format!("no lease with id '{lease_id}'")))?;
        let trial = trial_by_id(&mut tx, trial_id).await?;
        if ended_at.is_some() {
            let ended_as = ended_as.unwrap_or_default();
            if ended_as == outcome.as_str() {
                // A retried completion: answer as the first time.
                return Ok(trial);
            }
            // The lease expired while the agent was away, but nobody has taken the trial since:
            // its result is still the latest word on it, so keep it.
            let untouched = ended_as == "expired"
                && trial.attempt == attempt
                && matches!(trial.state, TrialState::Queued | TrialState::Preempted);
            if !untouched {
                return Err(StoreError::Conflict(format!(
                    "lease '{lease_id}' already ended ({ended_as}); the trial is now {}",
                    trial.state.as_str()
                )));
            }
            sqlx::query("UPDATE leases SET outcome = ? WHERE id = ?")
                .bind(outcome.as_str())
                .bind(lease_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            // The expiry counted a failure that did not happen.
            sqlx::query("UPDATE trials SET failures = MAX(failures - 1, 0) WHERE id = ?")
                .bind(trial_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        } else {
            sqlx::query("UPDATE leases SET ended_at = ?, outcome = ? WHERE id = ?")
                .bind(now_ms())
                .bind(outcome.as_str())
                .bind(lease_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let trial = trial_by_id(&mut tx, trial_id).await?;
        self.apply_outcome(&mut tx, &trial, &outcome).await?;
        let trial = trial_by_id(&mut tx, trial_id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(trial)
    }

    async fn expire_leases(&self, now: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let expired: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, trial_id FROM leases WHERE ended_at IS NULL AND expires_at < ? LIMIT 1000",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        for (lease_id, trial_id) in &expired {
            sqlx::query("UPDATE leases SET ended_at = ?, outcome = 'expired' WHERE id = ?")
                .bind(now)
                .bind(lease_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            let trial = trial_by_id(&mut tx, *trial_id).await?;
            let reason = format!(
                "the lease of attempt {} expired: its agent stopped heartbeating",
                trial.attempt
            );
            self.apply_outcome(&mut tx, &trial, &Outcome::Failed(reason))
                .await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(expired.len() as u64)
    }

    async fn next_lease_expiry(&self) -> Result<Option<i64>> {
        let (next,): (Option<i64>,) =
            sqlx::query_as("SELECT MIN(expires_at) FROM leases WHERE ended_at IS NULL")
                .fetch_one(&self.reader)
                .await
                .map_err(map_err)?;
        Ok(next)
    }
}
