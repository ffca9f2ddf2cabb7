//! Sweeps, trials and leases on SQLite: the durable trial queue.
//!
//! Every state change is one write transaction on the single writer connection, so leasing is
//! naturally serialised: two agents can never lease the same trial, and `trials_created` is
//! compared with `max_trials` and incremented in the same transaction as the trial insert, so a
//! sweep never overshoots.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use spotsweep_core::optimize::prune::{self, Curve, Decision, Point};
use spotsweep_core::optimize::{History, Observed, sample_qmc, suggest};
use spotsweep_core::sweep::{
    Goal, Params, PrunerKind, SamplerKind, Summary, SweepSpec, grid_sequence, sample_random,
};
use sqlx::SqliteConnection;

use super::latest_fold;
use super::metric_blocks::{self, Point as MetricPoint};
use super::tracking::insert_experiment;
use super::{SqliteStore, commit, map_err, now_ms, queue_writer, words_sql};
use crate::shared_queue::{
    Candidate, HistoryRow, LeaseRow, NewLease, Rerun, SWEEP_COLUMNS, SweepRef, SweepRow, TRIAL_COLUMNS,
    TrialRow, curve_of, history_of, lease_columns, max_trials_of, new_lease_id, parse_spec, runnable_spec,
    sweep_experiment, sweep_of, sweep_run_tags_and_params, trial_run,
};
use crate::{
    AgentSummary, Attempt, HeartbeatAction, LeaseRequest, LeasedTrial, Outcome, Result, StoreError, Stored,
    Sweep, SweepBest, SweepQuery, SweepState, SweepStore, Trial, TrialState, TrialSummary,
};
use spotsweep_core::queue::{
    self, Beat, LeaseOutcome, Pulse, RunEnd, SweepProgress, Verdict, observed, place,
};
use spotsweep_core::words::Word;

/// Trial `number` of a sweep; `NotFound` saying whether the sweep or the trial is missing.
async fn trial_by_number(conn: &mut SqliteConnection, sweep_id: i64, number: i64) -> Result<Trial> {
    let sql = format!(
        "SELECT {TRIAL_COLUMNS} FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.sweep_id = ? AND t.number = ?"
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
    let sweep: Option<(i64,)> = sqlx::query_as("SELECT id FROM sweeps WHERE id = ?")
        .bind(sweep_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    Err(StoreError::NotFound(match sweep {
        Some(_) => format!("sweep {sweep_id} has no trial {number}"),
        None => format!("no sweep with id {sweep_id}"),
    }))
}

async fn trial_by_id(conn: &mut SqliteConnection, id: i64) -> Result<Trial> {
    let sql = format!("SELECT {TRIAL_COLUMNS} FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.id = ?");
    sqlx::query_as::<_, TrialRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?
        .ok_or_else(|| StoreError::NotFound(format!("no trial with id {id}")))?
        .into_trial()
}

/// A sweep's experiment, for trials created outside a lease (the columns of [`SweepRef`]).
const SWEEP_REF: &str = "SELECT s.id, s.seed, s.experiment_id, e.artifact_location, \
     e.lifecycle_stage AS experiment_stage, s.run_uuid FROM sweeps s JOIN experiments e ON e.experiment_id = s.experiment_id \
     WHERE s.id = ?";

// The hot paths of the queue send a batch of statements to the writer at once: one round trip
// instead of one per statement. sqlx binds numbered parameters in a batch correctly only when
// each statement uses ?1..?k without a gap, so each batch takes its arguments as one JSON object
// (?1), its fields read as `?1 ->> 'name'`.

/// Inserts a trial's run with its tags and params, the trial, and its first lease when a
/// `lease_id` is given; counts the trial on its sweep; returns the trial's id. (Rows come from
/// the last statement: sqlx ends a batch after the statement that returned rows.)
const INSERT_TRIAL: &str = "\
    INSERT INTO runs (run_uuid, experiment_id, name, user_id, status, start_time, artifact_uri, lifecycle_stage) \
        VALUES (?1 ->> 'run_uuid', ?1 ->> 'experiment_id', ?1 ->> 'run_name', '', 'RUNNING', ?1 ->> 'now', \
                ?1 ->> 'artifact_uri', 'active'); \
    INSERT INTO tags (run_id, key, value) \
        SELECT (SELECT id FROM runs WHERE run_uuid = ?1 ->> 'run_uuid'), key, value FROM json_each(?1, '$.tags'); \
    INSERT INTO params (run_id, key, value) \
        SELECT (SELECT id FROM runs WHERE run_uuid = ?1 ->> 'run_uuid'), key, value FROM json_each(?1, '$.params'); \
    INSERT INTO trials (sweep_id, number, params, seed, run_id, state, attempt, agent_id, created_at, started_at, \
                        rerun_of, pool) \
        SELECT ?1 ->> 'sweep_id', ?1 ->> 'number', ?1 ->> 'params_json', ?1 ->> 'seed', \
               (SELECT id FROM runs WHERE run_uuid = ?1 ->> 'run_uuid'), \
               IIF(leased, 'running', 'queued'), leased, ?1 ->> 'agent_id', ?1 ->> 'now', IIF(leased, ?1 ->> 'now', NULL), \
               ?1 ->> 'rerun_of', ?1 ->> 'pool' \
        FROM (SELECT ?1 ->> 'lease_id' IS NOT NULL AS leased); \
    INSERT INTO leases (id, trial_id, attempt, agent_id, created_at, expires_at) \
        SELECT ?1 ->> 'lease_id', id, 1, ?1 ->> 'agent_id', ?1 ->> 'now', ?1 ->> 'expires_at' FROM trials \
        WHERE ?1 ->> 'lease_id' IS NOT NULL AND sweep_id = ?1 ->> 'sweep_id' AND number = ?1 ->> 'number'; \
    UPDATE sweeps SET trials_created = trials_created + 1 WHERE id = ?1 ->> 'sweep_id' AND ?1 ->> 'rerun_of' IS NULL; \
    SELECT id FROM trials WHERE sweep_id = ?1 ->> 'sweep_id' AND number = ?1 ->> 'number'";

/// Inserts a sweep's own run with its tags and params, and names it on the sweep.
const INSERT_SWEEP_RUN: &str = "\
    INSERT INTO runs (run_uuid, experiment_id, name, user_id, status, start_time, artifact_uri, lifecycle_stage) \
        SELECT ?1 ->> 'run_uuid', experiment_id, ?1 ->> 'run_name', '', 'RUNNING', ?1 ->> 'now', \
               rtrim(artifact_location, '/') || '/' || (?1 ->> 'run_uuid') || '/artifacts', 'active' \
        FROM experiments WHERE experiment_id = ?1 ->> 'experiment_id'; \
    INSERT INTO tags (run_id, key, value) \
        SELECT (SELECT id FROM runs WHERE run_uuid = ?1 ->> 'run_uuid'), key, value FROM json_each(?1, '$.tags'); \
    INSERT INTO params (run_id, key, value) \
        SELECT (SELECT id FROM runs WHERE run_uuid = ?1 ->> 'run_uuid'), key, value FROM json_each(?1, '$.params'); \
    UPDATE sweeps SET run_uuid = ?1 ->> 'run_uuid' WHERE id = ?1 ->> 'sweep_id'";

/// Creates sweep `id`'s own MLflow run, named after it, in its experiment: the parent of its
/// trials' runs, with the spec summarised as params and the code version as tags.
async fn insert_sweep_run(
    conn: &mut SqliteConnection,
    id: i64,
    experiment_id: i64,
    spec: &SweepSpec,
    now: i64,
) -> Result<()> {
    let (tags, params) = sweep_run_tags_and_params(id, spec);
    let args = serde_json::json!({
        "run_uuid": uuid::Uuid::new_v4().simple().to_string(),
        "run_name": spec.name,
        "experiment_id": experiment_id,
        "now": now,
        "tags": tags,
        "params": params,
        "sweep_id": id,
    });
    sqlx::query(INSERT_SWEEP_RUN)
        .bind(args.to_string())
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Starts the next attempt of a waiting trial under a new lease: the trial, the lease, the run's
/// attempt tag and status; returns the trial.
static LEASE_WAITING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE trials SET state = 'running', attempt = attempt + 1, agent_id = ?1 ->> 'agent_id', \
           started_at = ?1 ->> 'now', stop_requested = 0 WHERE id = ?1 ->> 'trial_id'; \
         INSERT INTO leases (id, trial_id, attempt, agent_id, created_at, expires_at) \
           SELECT ?1 ->> 'lease_id', id, attempt, agent_id, started_at, ?1 ->> 'expires_at' FROM trials \
           WHERE id = ?1 ->> 'trial_id'; \
         UPDATE tags SET value = (SELECT CAST(attempt AS TEXT) FROM trials WHERE id = ?1 ->> 'trial_id') \
           WHERE run_id = (SELECT run_id FROM trials WHERE id = ?1 ->> 'trial_id') AND key = 'spotsweep.attempt'; \
         UPDATE runs SET status = 'RUNNING', end_time = NULL \
           WHERE id = (SELECT run_id FROM trials WHERE id = ?1 ->> 'trial_id'); \
         SELECT {TRIAL_COLUMNS} FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.id = ?1 ->> 'trial_id'"
    )
});

/// Records the GPUs a lease holds (JSON), so that a retried request answers the same.
async fn set_lease_gpus(conn: &mut SqliteConnection, lease_id: &str, gpus: Option<&str>) -> Result<()> {
    if gpus.is_some() {
        sqlx::query("UPDATE leases SET gpus = ? WHERE id = ?")
            .bind(gpus)
            .bind(lease_id)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// Ends the run of sweep `sweep_id`, now in `state`, if the sweep has ended (see
/// [`SweepState::run_end`]), once.
async fn end_sweep_run(conn: &mut SqliteConnection, sweep_id: i64, state: SweepState) -> Result<()> {
    let Some(run_end) = state.run_end() else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE runs SET status = ?1, end_time = ?2 \
         WHERE run_uuid = (SELECT run_uuid FROM sweeps WHERE id = ?3) AND status = 'RUNNING'",
    )
    .bind(Stored(run_end))
    .bind(now_ms())
    .bind(sweep_id)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// The best completed trial of a sweep, reruns aside: (number, value, run id). Read through
/// `trials_best` without touching the sweep's other trials.
pub(crate) const BEST_TRIAL_MIN: &str = "SELECT t.number, t.value, r.run_uuid FROM trials t \
     JOIN runs r ON r.id = t.run_id WHERE t.sweep_id = ?1 AND t.state = 'completed' AND t.rerun_of IS NULL \
     ORDER BY t.value ASC, t.number ASC LIMIT 1";
/// [`BEST_TRIAL_MIN`] for a sweep that maximizes.
pub(crate) const BEST_TRIAL_MAX: &str = "SELECT t.number, t.value, r.run_uuid FROM trials t \
     JOIN runs r ON r.id = t.run_id WHERE t.sweep_id = ?1 AND t.state = 'completed' AND t.rerun_of IS NULL \
     ORDER BY t.value DESC, t.number ASC LIMIT 1";

async fn best_trial(
    pool: &sqlx::SqlitePool,
    sweep_id: i64,
    goal: Goal,
) -> Result<Option<(i64, f64, String)>> {
    let sql = match goal {
        Goal::Minimize => BEST_TRIAL_MIN,
        Goal::Maximize => BEST_TRIAL_MAX,
    };
    sqlx::query_as(sql)
        .bind(sweep_id)
        .fetch_optional(pool)
        .await
        .map_err(map_err)
}

/// Where sweep `?1` stands for [`queue::sweep_done`]: its state, trials proposed, budget of
/// trials, and trials not ended. Built once: it is read at every trial's end.
static SWEEP_PROGRESS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT state, trials_created, max_trials, \
           (SELECT COUNT(*) FROM trials WHERE sweep_id = ?1 AND state IN ({})) \
         FROM sweeps WHERE id = ?1",
        words_sql(&TrialState::UNFINISHED)
    )
});

/// Ends a lease (its end time kept if it already ended) with the outcome it records, and sets
/// its trial's state, value (?2, a real: a float through JSON text could change), reason and
/// failures, and its run's status when the trial's story ends.
const END_LEASE: &str = "UPDATE trials SET state = ?1 ->> 'state', value = ?2, reason = ?1 ->> 'reason', \
       failures = ?1 ->> 'failures', finished_at = ?1 ->> 'finished_at', \
       ooms = ooms + (?1 ->> 'more_memory') WHERE id = ?1 ->> 'trial_id'; \
     UPDATE leases SET ended_at = COALESCE(ended_at, ?1 ->> 'now'), outcome = ?1 ->> 'lease_outcome' \
       WHERE id = ?1 ->> 'lease_id'; \
     UPDATE runs SET status = ?1 ->> 'run_status', end_time = ?1 ->> 'now' \
       WHERE ?1 ->> 'run_status' IS NOT NULL AND id = (SELECT run_id FROM trials WHERE id = ?1 ->> 'trial_id')";

/// The later of two latest points (see `Point::is_later_than`).
fn later(a: Option<MetricPoint>, b: Option<MetricPoint>) -> Option<MetricPoint> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.is_later_than(&a) { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The queue's transactions, and what they cache: specs and grids never change once stored.
/// The store runs them in its own transactions or, for leases and completions, in the group
/// commits of the queue writer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Queue {
    /// Parsed sweep specs by sweep id.
    specs: Arc<Mutex<HashMap<i64, Arc<SweepSpec>>>>,
    /// Enumerated grid points by sweep id, for grid sweeps.
    grids: Arc<Mutex<HashMap<i64, Arc<Vec<Params>>>>>,
    /// What the TPE sampler knows of each sweep's trials (see `with_history`).
    histories: Arc<Mutex<HashMap<i64, History>>>,
}

impl Queue {
    /// A sweep's spec if it was parsed already.
    fn cached_spec(&self, sweep_id: i64) -> Option<Arc<SweepSpec>> {
        self.specs.lock().ok().and_then(|m| m.get(&sweep_id).cloned())
    }

    /// The parsed spec of a sweep; specs never change, so they are parsed once.
    async fn spec_of(&self, conn: &mut SqliteConnection, sweep_id: i64) -> Result<Arc<SweepSpec>> {
        if let Some(spec) = self.cached_spec(sweep_id) {
            return Ok(spec);
        }
        let (text,): (String,) = sqlx::query_as("SELECT spec FROM sweeps WHERE id = ?")
            .bind(sweep_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no sweep with id {sweep_id}")))?;
        // A spec that no longer validates pauses its sweep (see `lease`).
        let spec = Arc::new(runnable_spec(sweep_id, &text)?);
        if let Ok(mut m) = self.specs.lock() {
            m.insert(sweep_id, spec.clone());
        }
        Ok(spec)
    }

    /// The parameters of trial `number`: from the sweep's sampler and, for TPE, the trials so
    /// far. `None` when a grid is exhausted.
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
            SamplerKind::Qmc => Ok(Some(sample_qmc(&spec, seed, number as u64))),
            SamplerKind::Tpe => {
                let params = self
                    .with_history(conn, sweep_id, &spec, |history| {
                        suggest(&spec, seed, number as u64, history)
                    })
                    .await?;
                Ok(Some(params))
            }
            SamplerKind::Grid => {
                let cached = self.grids.lock().ok().and_then(|m| m.get(&sweep_id).cloned());
                let grid = match cached {
                    Some(g) => g,
                    None => {
                        let points =
                            grid_sequence(&spec, seed).map_err(|e| StoreError::Invalid(e.to_string()))?;
                        let g = Arc::new(points);
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

    /// Runs `f` on what the sampler knows of a sweep's trials: read from the database once
    /// (one row, the trials as a JSON array) and encoded, then kept up to date by this queue's
    /// own writes, which are the only ones. A write transaction that fails forgets every history
    /// (see `forget_histories`).
    async fn with_history<T>(
        &self,
        conn: &mut SqliteConnection,
        sweep_id: i64,
        spec: &SweepSpec,
        f: impl FnOnce(&History) -> T,
    ) -> Result<T> {
        {
            let histories = self.histories.lock();
            if let Some(history) = histories.as_ref().ok().and_then(|h| h.get(&sweep_id)) {
                return Ok(f(history));
            }
        }
        let (json,): (String,) = sqlx::query_as(
            "SELECT json_group_array(json_array(t.number, t.state, t.value, t.run_id, lm.timestamp, lm.step, \
                                                lm.value, lm.is_nan, json(t.params))) \
             FROM (SELECT * FROM trials WHERE sweep_id = ?1 AND rerun_of IS NULL ORDER BY number) t \
             LEFT JOIN latest_metrics lm ON lm.run_id = t.run_id AND lm.key = ?2",
        )
        .bind(sweep_id)
        .bind(&spec.objective.metric)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
        // Writes not yet folded into `latest_metrics` (see `latest_fold`).
        let listed: Vec<(i64, Vec<u8>)> = sqlx::query_as(latest_fold::LISTED_OF_SWEEP)
            .bind(sweep_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        let listed = latest_fold::latest_of_writes(&listed)?;
        type Row = (
            u64,
            String,
            Option<f64>,
            i64,
            Option<i64>,
            Option<i64>,
            Option<f64>,
            Option<i64>,
            Params,
        );
        let rows: Vec<Row> = serde_json::from_str(&json)
            .map_err(|e| StoreError::Incompatible(format!("unreadable trial history: {e}")))?;
        let mut history_rows: Vec<HistoryRow> = Vec::with_capacity(rows.len());
        for (number, state, value, run, timestamp, step, last, is_nan, params) in rows {
            let stored = match (timestamp, step, last) {
                (Some(timestamp), Some(step), Some(v)) => Some(MetricPoint {
                    timestamp,
                    step,
                    value: if is_nan == Some(1) { f64::NAN } else { v },
                }),
                _ => None,
            };
            let latest = later(
                stored,
                listed.get(&(run, spec.objective.metric.as_str())).copied(),
            );
            let state = TrialState::parse(&state).ok_or_else(|| {
                StoreError::Incompatible(format!(
                    "trial {number} of sweep {sweep_id}: {}",
                    <TrialState as Word>::unknown(&state)
                ))
            })?;
            history_rows.push((
                number,
                state,
                value,
                latest.map(|p| p.value).filter(|v| !v.is_nan()),
                params,
            ));
        }
        let history = history_of(spec, history_rows);
        let out = f(&history);
        if let Ok(mut h) = self.histories.lock() {
            h.insert(sweep_id, history);
        }
        Ok(out)
    }

    /// Records a change of a trial in its sweep's cached history, if there is one: a new trial
    /// (`number` one past the end) or a new outcome.
    fn observe(&self, sweep_id: i64, number: i64, params: Option<&Params>, outcome: Observed) {
        let spec = params.and(self.cached_spec(sweep_id));
        let Ok(mut histories) = self.histories.lock() else {
            return;
        };
        let Some(history) = histories.get_mut(&sweep_id) else {
            return;
        };
        let number = number as usize;
        match (params, spec) {
            (None, _) if history.set_outcome(number, outcome) => {}
            (Some(p), Some(spec)) if number == history.len() => history.push(&spec, p, outcome),
            // Out of step: read it again next time.
            _ => {
                histories.remove(&sweep_id);
            }
        }
    }

    /// Forgets a sweep's cached history (after a change made outside the queue's writes).
    pub(crate) fn forget_history(&self, sweep_id: i64) {
        if let Ok(mut h) = self.histories.lock() {
            h.remove(&sweep_id);
        }
    }

    fn has_history(&self, sweep_id: i64) -> bool {
        self.histories.lock().is_ok_and(|h| h.contains_key(&sweep_id))
    }

    /// A trial's objective metric's latest value (NaN and missing are `None`).
    async fn last_value(
        &self,
        conn: &mut SqliteConnection,
        trial: &Trial,
        spec: &SweepSpec,
    ) -> Result<Option<f64>> {
        let key = spec.objective.metric.as_str();
        let (run,): (i64,) = sqlx::query_as("SELECT run_id FROM trials WHERE id = ?")
            .bind(trial.id)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?;
        let stored: Option<(i64, i64, f64, bool)> = sqlx::query_as(
            "SELECT timestamp, step, value, is_nan FROM latest_metrics WHERE run_id = ? AND key = ?",
        )
        .bind(run)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
        let stored = stored.map(|(timestamp, step, value, is_nan)| MetricPoint {
            timestamp,
            step,
            value: if is_nan { f64::NAN } else { value },
        });
        // Writes not yet folded into `latest_metrics` (see `latest_fold`).
        let listed: Vec<(i64, Vec<u8>)> = sqlx::query_as(latest_fold::LISTED_OF_RUNS)
            .bind(super::tracking::json_ids(&[run]))
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        let listed = latest_fold::latest_of_writes(&listed)?.get(&(run, key)).copied();
        Ok(later(stored, listed).map(|p| p.value).filter(|v| !v.is_nan()))
    }

    /// Forgets every cached history: a write transaction failed, and the cache may hold changes
    /// that were rolled back.
    pub(crate) fn forget_histories(&self) {
        if let Ok(mut h) = self.histories.lock() {
            h.clear();
        }
    }

    /// The pruner's decision on a running trial, from the objective metric's history of every
    /// trial of its sweep that has one.
    pub(crate) async fn prune_decision(
        &self,
        reader: &sqlx::SqlitePool,
        spec: &SweepSpec,
        sweep_id: i64,
        number: u64,
    ) -> Result<Decision> {
        // Each trial's blocks of the metric, and its run's write rows (see `metric_blocks`).
        let rows: Vec<(i64, bool, bool, Vec<u8>)> = sqlx::query_as(
            "SELECT t.number, t.state = 'completed', 0, b.data \
             FROM trials t JOIN metric_blocks b ON b.run_id = t.run_id AND b.key = ?2 \
             WHERE t.sweep_id = ?1 AND t.state IN ('completed', 'pruned', 'running') AND t.rerun_of IS NULL \
             UNION ALL \
             SELECT t.number, t.state = 'completed', 1, w.data \
             FROM trials t JOIN metric_writes w ON w.run_id = t.run_id \
             WHERE t.sweep_id = ?1 AND t.state IN ('completed', 'pruned', 'running') AND t.rerun_of IS NULL \
             ORDER BY 1",
        )
        .bind(sweep_id)
        .bind(&spec.objective.metric)
        .fetch_all(reader)
        .await
        .map_err(map_err)?;
        let mut curves: Vec<Curve> = Vec::new();
        let mut points = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let (n, completed) = (rows[i].0, rows[i].1);
            points.clear();
            while i < rows.len() && rows[i].0 == n {
                metric_blocks::decode_row_into(rows[i].2, &rows[i].3, &spec.objective.metric, &mut points)?;
                i += 1;
            }
            metric_blocks::sort_dedup(&mut points, metric_blocks::Point::step_order);
            if points.is_empty() {
                // Write rows of its run, none of them with this metric.
                continue;
            }
            let curve = curve_of(
                n as u64,
                completed,
                points.iter().map(|p| Point {
                    step: p.step,
                    value: p.value,
                    timestamp: p.timestamp,
                }),
            );
            curves.push(curve);
        }
        let Some(mine) = curves.iter().find(|c| c.number == number) else {
            return Ok(Decision::Continue);
        };
        Ok(prune::decide(&spec.pruner, spec.objective.goal, mine, &curves))
    }

    /// Creates trial `number` of a sweep with its MLflow run (params = the hyperparameters,
    /// tags = sweep, trial number, attempt, seed): leased at once when `lease` is given, queued
    /// otherwise; a rerun when `rerun` is given. One statement batch, so one round trip to the
    /// writer.
    async fn insert_trial(
        &self,
        conn: &mut SqliteConnection,
        sweep: &SweepRef,
        number: i64,
        params: &Params,
        lease: Option<&NewLease<'_>>,
        rerun: Option<&Rerun<'_>>,
    ) -> Result<Trial> {
        sweep.check_active()?;
        let spec = self.spec_of(conn, sweep.id).await?;
        let attempt = i64::from(lease.is_some());
        let run = trial_run(sweep, &spec, number, params, attempt, rerun);
        let seed = run.seed;
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let artifact_uri = format!(
            "{}/{run_id}/artifacts",
            sweep.artifact_location.trim_end_matches('/')
        );
        let params_json = serde_json::to_string(params).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let now = now_ms();
        let args = serde_json::json!({
            "run_uuid": run_id,
            "experiment_id": sweep.experiment_id,
            "run_name": run.name,
            "now": now,
            "artifact_uri": artifact_uri,
            "tags": run.tags,
            "params": run.params,
            "sweep_id": sweep.id,
            "number": number,
            "params_json": params_json,
            "seed": seed as i64,
            "lease_id": lease.map(|l| l.id),
            "agent_id": lease.map(|l| l.agent_id),
            "expires_at": lease.map(|l| l.expires_at),
            "rerun_of": rerun.map(|r| r.of),
            "pool": rerun.and_then(|r| r.pool),
        });
        let (id,): (i64,) = sqlx::query_as(INSERT_TRIAL)
            .bind(args.to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Internal(sqlx::Error::RowNotFound))?;
        if rerun.is_none() {
            self.observe(sweep.id, number, Some(params), Observed::Pending);
        }
        Ok(Trial {
            id,
            sweep_id: sweep.id,
            number,
            params: params.clone(),
            seed,
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

    /// Leases a waiting (queued or preempted) trial to an agent: the next attempt of the same run.
    async fn lease_waiting(
        &self,
        conn: &mut SqliteConnection,
        trial_id: i64,
        lease: &NewLease<'_>,
    ) -> Result<LeasedTrial> {
        let row = sqlx::query_as::<_, TrialRow>(sqlx::AssertSqlSafe(LEASE_WAITING.as_str()))
            .bind(
                serde_json::json!({
                    "trial_id": trial_id,
                    "agent_id": lease.agent_id,
                    "now": now_ms(),
                    "lease_id": lease.id,
                    "expires_at": lease.expires_at,
                })
                .to_string(),
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound(format!("no trial with id {trial_id}")))?;
        let trial = row.into_trial()?;
        let spec = self.spec_of(conn, trial.sweep_id).await?;
        Ok(LeasedTrial {
            lease_id: lease.id.to_owned(),
            expires_at: lease.expires_at,
            trial,
            spec,
            gpus: None,
        })
    }

    /// Reads a trial's objective from its run's metrics, by the spec's summary rule.
    async fn objective_of(
        &self,
        conn: &mut SqliteConnection,
        trial: &Trial,
        spec: &SweepSpec,
    ) -> Result<Option<f64>> {
        let points = match spec.objective.summary {
            Summary::Last => return self.last_value(conn, trial, spec).await,
            Summary::Min | Summary::Max => {
                metric_blocks::load(&mut *conn, &trial.run_id, &spec.objective.metric).await?
            }
        };
        let values = points.iter().map(|p| p.value).filter(|v| !v.is_nan());
        Ok(match spec.objective.summary {
            Summary::Max => values.reduce(f64::max),
            _ => values.reduce(f64::min),
        })
    }

    /// Ends lease `lease_id` of `trial` (recording `lease_outcome` on it, and the time unless it
    /// already ended) and applies `outcome` to the trial, its run and its sweep. Returns the
    /// trial as it now is.
    async fn end_lease(
        &self,
        conn: &mut SqliteConnection,
        lease_id: &str,
        lease_outcome: LeaseOutcome,
        mut trial: Trial,
        outcome: &Outcome,
    ) -> Result<Trial> {
        let spec = self.spec_of(conn, trial.sweep_id).await?;
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
        sqlx::query(END_LEASE)
            .bind(
                serde_json::json!({
                    "lease_id": lease_id,
                    "now": now,
                    "lease_outcome": lease_outcome.as_str(),
                    "trial_id": trial.id,
                    "state": update.state.as_str(),
                    "reason": update.reason,
                    "failures": update.failures,
                    "finished_at": finished_at,
                    "run_status": update.run_end.map(RunEnd::as_str),
                    "more_memory": i64::from(update.more_memory),
                })
                .to_string(),
            )
            .bind(update.value)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        let mut reason = update.reason.clone();
        if matches!(outcome, Outcome::SetupFailed(_)) {
            // Pause the sweep once its setup failed on enough machines (by agent name: a restarted
            // agent is the same machine; see `setup_failures_to_pause`).
            let (machines,): (i64,) = sqlx::query_as(
                "SELECT COUNT(DISTINCT COALESCE(a.name, l.agent_id)) FROM leases l \
                 JOIN trials t ON t.id = l.trial_id LEFT JOIN agents a ON a.id = l.agent_id \
                 WHERE t.sweep_id = ? AND l.outcome = 'setup_failed'",
            )
            .bind(trial.sweep_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?;
            let (pool,): (String,) = sqlx::query_as("SELECT pool FROM sweeps WHERE id = ?")
                .bind(trial.sweep_id)
                .fetch_one(&mut *conn)
                .await
                .map_err(map_err)?;
            if let Some(paused) = queue::setup_pause(&pool, machines, update.reason.as_deref()) {
                let changed = sqlx::query("UPDATE sweeps SET state = ?1 WHERE id = ?2 AND state = ?3")
                    .bind(Stored(SweepState::Paused))
                    .bind(trial.sweep_id)
                    .bind(Stored(SweepState::Running))
                    .execute(&mut *conn)
                    .await
                    .map_err(map_err)?
                    .rows_affected();
                if changed > 0 {
                    sqlx::query("UPDATE trials SET reason = ? WHERE id = ?")
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
        // Only a trial that ended for good can be a sweep's last.
        if update.state.is_terminal() {
            self.complete_sweep_if_done(conn, trial.sweep_id).await?;
        }
        // A rerun is no evidence for the sampler: its point was already tried.
        if trial.rerun_of.is_none() {
            let last_value = if update.state == TrialState::Pruned && self.has_history(trial.sweep_id) {
                self.last_value(conn, &trial, &spec).await?
            } else {
                None
            };
            self.observe(
                trial.sweep_id,
                trial.number,
                None,
                observed(update.state, update.value, last_value),
            );
        }
        trial.state = update.state;
        trial.value = update.value;
        trial.reason = reason;
        trial.failures = update.failures;
        trial.finished_at = finished_at;
        Ok(trial)
    }

    /// Completes sweep `sweep_id` and ends its run if it is done (see [`queue::sweep_done`]).
    async fn complete_sweep_if_done(&self, conn: &mut SqliteConnection, sweep_id: i64) -> Result<()> {
        let (Stored(state), trials_created, max_trials, unfinished): (Stored<SweepState>, i64, i64, i64) =
            sqlx::query_as(sqlx::AssertSqlSafe(SWEEP_PROGRESS.as_str()))
                .bind(sweep_id)
                .fetch_one(&mut *conn)
                .await
                .map_err(map_err)?;
        let progress = SweepProgress {
            state,
            trials_created,
            max_trials,
            unfinished,
        };
        if !queue::sweep_done(progress) {
            return Ok(());
        }
        sqlx::query("UPDATE sweeps SET state = ?1, finished_at = ?2 WHERE id = ?3")
            .bind(Stored(SweepState::Completed))
            .bind(now_ms())
            .bind(sweep_id)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        end_sweep_run(conn, sweep_id, SweepState::Completed).await
    }

    /// Leases up to `request.slots` trials, inside the caller's write transaction.
    pub(crate) async fn lease(
        &self,
        tx: &mut SqliteConnection,
        request: &LeaseRequest,
    ) -> Result<Vec<LeasedTrial>> {
        if let Some(request_id) = &request.request_id {
            let earlier: Option<(String, String)> =
                sqlx::query_as("SELECT response, agent_id FROM lease_requests WHERE request_id = ?")
                    .bind(request_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
            if let Some((_, agent)) = &earlier
                && *agent != request.agent_id
            {
                // Another agent's request id: its leases are not this agent's to see.
                return Err(StoreError::Conflict(format!(
                    "request_id '{request_id}' was used by another agent: use a fresh id for each new request"
                )));
            }
            if let Some((response, _)) = earlier {
                // A retried request: answer with the same leases, as they are now.
                let lease_ids: Vec<String> = serde_json::from_str(&response).unwrap_or_default();
                let mut out = Vec::new();
                for lease_id in lease_ids {
                    let row: Option<(i64, i64, Option<i64>, Option<String>)> = sqlx::query_as(
                        "SELECT trial_id, expires_at, ended_at, gpus FROM leases WHERE id = ?",
                    )
                    .bind(&lease_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    if let Some((trial_id, expires_at, None, gpus)) = row {
                        let trial = trial_by_id(tx, trial_id).await?;
                        let spec = self.spec_of(tx, trial.sweep_id).await?;
                        out.push(LeasedTrial {
                            lease_id,
                            expires_at,
                            trial,
                            spec,
                            gpus: gpus.and_then(|g| serde_json::from_str(&g).ok()),
                        });
                    }
                }
                return Ok(out);
            }
        }
        let mut leased: Vec<LeasedTrial> = Vec::new();
        // The agent's GPUs as this request fills them, and sweeps whose next trial does not fit.
        let mut gpus = request.gpus.clone();
        let mut do_not_fit: Vec<i64> = Vec::new();
        // Reruns whose sweep is unreadable or that do not fit this agent's GPUs now.
        let mut reruns_passed: Vec<i64> = Vec::new();
        while leased.len() < request.slots as usize {
            // Reruns first: each was asked for by hand, and runs on its own pool whatever its
            // sweep's state (unless paused), outside the sweep's parallelism.
            let rerun: Option<(i64, i64, i64)> = sqlx::query_as(
                "SELECT t.id, t.ooms, t.sweep_id FROM trials t JOIN sweeps s ON s.id = t.sweep_id \
                 WHERE t.rerun_of IS NOT NULL AND t.state IN ('queued', 'preempted') AND s.state != 'paused' \
                   AND (?1 IS NULL OR COALESCE(t.pool, s.pool) = ?1) AND (?2 IS NULL OR s.id = ?2) \
                   AND t.id NOT IN (SELECT value FROM json_each(?3)) \
                 ORDER BY t.id LIMIT 1",
            )
            .bind(&request.pool)
            .bind(request.sweep_id)
            .bind(serde_json::to_string(&reruns_passed).unwrap_or_else(|_| "[]".into()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            if let Some((trial_id, ooms, sweep_id)) = rerun {
                reruns_passed.push(trial_id);
                let Ok(spec) = self.spec_of(tx, sweep_id).await else {
                    continue;
                };
                let placement = match &spec.resources {
                    None => None,
                    Some(resources) => {
                        match place(
                            resources,
                            &mut gpus,
                            request.gpu_overhead_mib,
                            ooms.clamp(0, 32) as u32,
                        ) {
                            Some(shares) => Some(shares),
                            None => continue,
                        }
                    }
                };
                let lease_id = new_lease_id();
                let lease = NewLease {
                    id: &lease_id,
                    agent_id: &request.agent_id,
                    expires_at: now_ms() + request.ttl_ms,
                };
                let mut trial = self.lease_waiting(tx, trial_id, &lease).await?;
                let gpus_json = placement
                    .as_ref()
                    .map(|p| serde_json::to_string(p).unwrap_or_else(|_| "[]".into()));
                set_lease_gpus(tx, &lease_id, gpus_json.as_deref()).await?;
                trial.gpus = placement;
                leased.push(trial);
                continue;
            }
            let candidates: Vec<Candidate> = sqlx::query_as(
                "SELECT s.id, s.seed, s.experiment_id, e.artifact_location, e.lifecycle_stage AS experiment_stage, \
                   s.run_uuid, s.parallelism, s.max_trials, s.trials_created, \
                   (SELECT COUNT(*) FROM trials t WHERE t.sweep_id = s.id AND t.state = 'running' \
                      AND t.rerun_of IS NULL) AS running, \
                   (SELECT MIN(t.number) FROM trials t WHERE t.sweep_id = s.id AND t.state IN ('queued', 'preempted') \
                      AND t.rerun_of IS NULL) AS next_waiting \
                 FROM sweeps s JOIN experiments e ON e.experiment_id = s.experiment_id \
                 WHERE s.state = 'running' AND (?1 IS NULL OR s.pool = ?1) AND (?2 IS NULL OR s.id = ?2)",
            )
            .bind(&request.pool)
            .bind(request.sweep_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            // Fair share (see `next_sweep`); waiting (retried) trials before new ones within a
            // sweep.
            let loads: Vec<queue::SweepLoad> = candidates.iter().map(Candidate::load).collect();
            let pick = queue::next_sweep(&loads, &do_not_fit).map(|i| &candidates[i]);
            let Some(candidate) = pick else { break };
            let spec = match self.spec_of(tx, candidate.sweep.id).await {
                Ok(spec) => spec,
                Err(StoreError::Invalid(reason)) => {
                    sqlx::query("UPDATE sweeps SET state = 'paused' WHERE id = ? AND state = 'running'")
                        .bind(candidate.sweep.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    tracing::warn!(sweep = candidate.sweep.id, %reason, "sweep paused");
                    continue;
                }
                Err(e) => return Err(e),
            };
            // A retried trial goes first; its out-of-memory exits say how much it needs.
            let waiting: Option<(i64, i64)> = match candidate.next_waiting {
                Some(number) => Some(
                    sqlx::query_as("SELECT id, ooms FROM trials WHERE sweep_id = ? AND number = ?")
                        .bind(candidate.sweep.id)
                        .bind(number)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?,
                ),
                None => None,
            };
            let placement = match &spec.resources {
                None => None,
                Some(resources) => {
                    let ooms = waiting.map_or(0, |(_, ooms)| ooms.clamp(0, 32) as u32);
                    match place(resources, &mut gpus, request.gpu_overhead_mib, ooms) {
                        Some(shares) => Some(shares),
                        None => {
                            // Waits for a GPU with room; other sweeps may still fit.
                            do_not_fit.push(candidate.sweep.id);
                            continue;
                        }
                    }
                }
            };
            let gpus_json = placement
                .as_ref()
                .map(|p| serde_json::to_string(p).unwrap_or_else(|_| "[]".into()));
            let lease_id = new_lease_id();
            let lease = NewLease {
                id: &lease_id,
                agent_id: &request.agent_id,
                expires_at: now_ms() + request.ttl_ms,
            };
            let sweep = &candidate.sweep;
            if let Some((trial_id, _)) = waiting {
                let mut trial = self.lease_waiting(tx, trial_id, &lease).await?;
                set_lease_gpus(tx, &lease_id, gpus_json.as_deref()).await?;
                trial.gpus = placement;
                leased.push(trial);
                continue;
            }
            let number = candidate.trials_created;
            let Some(params) = self.propose(tx, sweep.id, sweep.seed as u64, number).await? else {
                // An exhausted grid: no more trials (and nothing placed).
                for share in placement.iter().flatten() {
                    if let Some(g) = gpus.iter_mut().find(|g| g.id == share.id) {
                        g.free_mib += share.memory_mib;
                    }
                }
                sqlx::query("UPDATE sweeps SET max_trials = trials_created WHERE id = ?")
                    .bind(sweep.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                continue;
            };
            let trial = self
                .insert_trial(tx, sweep, number, &params, Some(&lease), None)
                .await?;
            set_lease_gpus(tx, &lease_id, gpus_json.as_deref()).await?;
            leased.push(LeasedTrial {
                lease_id: lease_id.clone(),
                expires_at: lease.expires_at,
                spec,
                trial,
                gpus: placement,
            });
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
        Ok(leased)
    }

    /// Ends a lease with its agent's outcome, inside the caller's write transaction.
    pub(crate) async fn complete(
        &self,
        tx: &mut SqliteConnection,
        lease_id: &str,
        outcome: Outcome,
    ) -> Result<Trial> {
        let sql = format!(
            "SELECT {} FROM leases l JOIN trials t ON t.id = l.trial_id JOIN runs r ON r.id = t.run_id \
             WHERE l.id = ?",
            lease_columns()
        );
        let row: LeaseRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(lease_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
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
        let trial = self
            .end_lease(tx, lease_id, outcome.lease_outcome(), trial, &outcome)
            .await?;
        Ok(trial)
    }
}

impl SqliteStore {
    async fn load_sweep(&self, row: SweepRow) -> Result<Sweep> {
        let spec = parse_spec(&row.spec)?;
        let counts_rows: Vec<(Stored<TrialState>, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM trials WHERE sweep_id = ? GROUP BY state")
                .bind(row.id)
                .fetch_all(&self.reader)
                .await
                .map_err(map_err)?;
        let best = best_trial(&self.reader, row.id, spec.objective.goal).await?;
        Ok(sweep_of(row, spec, counts_rows, best))
    }
}

#[async_trait]
impl SweepStore for SqliteStore {
    async fn create_sweep(&self, spec: SweepSpec, seed: u64) -> Result<Sweep> {
        let max_trials = max_trials_of(&spec)?;
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
            None => insert_experiment(&mut tx, sweep_experiment(name.clone(), now)).await?,
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
        insert_sweep_run(&mut tx, id, experiment_id, &spec, now).await?;
        let committed = commit(tx).await;
        // Cancelling changes trials outside the queue's own writes.
        self.queue.forget_history(id);
        committed?;
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
        let current: Option<(Stored<SweepState>,)> = sqlx::query_as("SELECT state FROM sweeps WHERE id = ?")
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
                sqlx::query("UPDATE sweeps SET state = ? WHERE id = ?")
                    .bind(state.as_str())
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                if state == SweepState::Running {
                    self.queue.complete_sweep_if_done(&mut tx, id).await?;
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
                end_sweep_run(&mut tx, id, SweepState::Cancelled).await?;
            }
            // `change_to` refuses it; a completed sweep asked to complete changes nothing.
            SweepState::Completed => {}
        }
        let committed = commit(tx).await;
        // Cancelling changes trials outside the queue's own writes.
        self.queue.forget_history(id);
        committed?;
        self.get_sweep(id).await
    }

    async fn sweep_best(&self, sweep_id: i64) -> Result<SweepBest> {
        let spec = match self.queue.cached_spec(sweep_id) {
            Some(spec) => spec,
            None => {
                self.queue
                    .spec_of(&mut *self.reader.acquire().await?, sweep_id)
                    .await?
            }
        };
        let (run_id,): (Option<String>,) = sqlx::query_as("SELECT run_uuid FROM sweeps WHERE id = ?")
            .bind(sweep_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("no sweep with id {sweep_id}")))?;
        Ok(SweepBest {
            run_id,
            metric: spec.objective.metric.clone(),
            best: best_trial(&self.reader, sweep_id, spec.objective.goal).await?,
        })
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
        rows.into_iter().map(TrialRow::into_trial).collect()
    }

    async fn enqueue_trial(&self, sweep_id: i64, params: Params) -> Result<Trial> {
        let mut tx = self.begin_write().await?;
        let row: Option<(String, i64, i64)> =
            sqlx::query_as("SELECT state, trials_created, max_trials FROM sweeps WHERE id = ?")
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
            .queue
            .insert_trial(&mut tx, &sweep, created, &params, None, None)
            .await?;
        if let Err(e) = commit(tx).await {
            self.queue.forget_history(sweep_id);
            return Err(e);
        }
        Ok(trial)
    }

    async fn get_trial(&self, sweep_id: i64, number: i64) -> Result<Trial> {
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
        trial_by_number(&mut conn, sweep_id, number).await
    }

    async fn rerun_trial(&self, sweep_id: i64, number: i64, pool: Option<&str>) -> Result<Trial> {
        let mut tx = self.begin_write().await?;
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
            "SELECT MAX(s.max_trials, COALESCE((SELECT MAX(number) + 1 FROM trials WHERE sweep_id = s.id), 0)) \
             FROM sweeps s WHERE s.id = ?",
        )
        .bind(sweep_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let spec = self.queue.spec_of(&mut tx, sweep_id).await?;
        let rerun = Rerun {
            of: number,
            seed: original.seed,
            run_id: &original.run_id,
            pool: pool.filter(|p| *p != spec.pool),
        };
        let trial = self
            .queue
            .insert_trial(&mut tx, &sweep, next, &original.params, None, Some(&rerun))
            .await?;
        commit(tx).await?;
        Ok(trial)
    }

    async fn pool_uses_code(&self, pool: &str, code: &str) -> Result<bool> {
        let (uses,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM sweeps s WHERE json_extract(s.spec, '$.code') = ?2 AND ( \
               (s.state IN ('running', 'paused') AND s.pool = ?1) \
               OR EXISTS (SELECT 1 FROM trials t WHERE t.sweep_id = s.id AND t.rerun_of IS NOT NULL \
                            AND t.state IN ('queued', 'running', 'preempted') AND COALESCE(t.pool, s.pool) = ?1)))",
        )
        .bind(pool)
        .bind(code)
        .fetch_one(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(uses)
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
        commit(tx).await?;
        Ok(())
    }

    async fn lease_trials(&self, request: &LeaseRequest) -> Result<Vec<LeasedTrial>> {
        queue_writer::lease(&self.queue_jobs, request.clone()).await
    }

    async fn heartbeat(&self, lease_id: &str, ttl_ms: i64) -> Result<HeartbeatAction> {
        // One statement batch, no transaction: each statement commits by itself, and the read
        // after the extension sees it.
        type Row = (Option<i64>, bool, Stored<SweepState>, i64, i64, i64, bool);
        let row: Option<Row> = sqlx::query_as(
            "UPDATE leases SET expires_at = ?2 WHERE id = ?1 AND ended_at IS NULL; \
             SELECT l.ended_at, t.stop_requested, s.state, t.id, t.sweep_id, t.number, t.rerun_of IS NOT NULL \
             FROM leases l JOIN trials t ON t.id = l.trial_id JOIN sweeps s ON s.id = t.sweep_id WHERE l.id = ?1",
        )
        .bind(lease_id)
        .bind(now_ms() + ttl_ms)
        .fetch_all(&self.writer)
        .await
        .map_err(map_err)?
        .into_iter()
        .next();
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
        // Every heartbeat asks whether the sweep prunes: a connection only when the spec is not
        // parsed yet.
        let spec = match self.queue.cached_spec(sweep_id) {
            Some(spec) => spec,
            None => {
                self.queue
                    .spec_of(&mut *self.reader.acquire().await?, sweep_id)
                    .await?
            }
        };
        if spec.pruner.kind == PrunerKind::None {
            return Ok(HeartbeatAction::Continue);
        }
        let decision = match self
            .queue
            .prune_decision(&self.reader, &spec, sweep_id, number as u64)
            .await
        {
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
                    "UPDATE trials SET stop_requested = 1, stop_reason = ?, pruned_step = ? \
                     WHERE id = ? AND state = ?",
                )
                .bind(&reason)
                .bind(step)
                .bind(trial_id)
                .bind(Stored(TrialState::Running))
                .execute(&self.writer)
                .await
                .map_err(map_err)?;
                tracing::info!(sweep = sweep_id, trial = number, %reason, "trial pruned");
                Ok(HeartbeatAction::Prune)
            }
        }
    }

    async fn complete_trial(&self, lease_id: &str, outcome: Outcome) -> Result<Trial> {
        queue_writer::complete(&self.queue_jobs, lease_id.to_owned(), outcome).await
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
        let ended = async {
            for (lease_id, trial_id) in &expired {
                let trial = trial_by_id(&mut tx, *trial_id).await?;
                let expiry = queue::expiry(trial.attempt);
                self.queue
                    .end_lease(&mut tx, lease_id, LeaseOutcome::Expired, trial, &expiry)
                    .await?;
            }
            commit(tx).await
        }
        .await;
        if ended.is_err() {
            // The cached histories may hold outcomes that were rolled back.
            self.queue.forget_histories();
        }
        ended?;
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

    async fn sweeps_page(&self, query: &SweepQuery) -> Result<(Vec<Sweep>, bool)> {
        // `instr` takes the name filter literally: no LIKE wildcards to escape.
        let sql = format!(
            "SELECT {SWEEP_COLUMNS} FROM sweeps \
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR instr(lower(name), lower(?2)) > 0) \
               AND (?3 IS NULL OR id < ?3) \
             ORDER BY id DESC LIMIT ?4"
        );
        let limit = query.limit.clamp(1, 1000);
        let rows = sqlx::query_as::<_, SweepRow>(sqlx::AssertSqlSafe(sql))
            .bind(query.state.map(SweepState::as_str))
            .bind(query.name_contains.as_deref())
            .bind(query.before_id)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        let more = rows.len() > limit as usize;
        let mut out = Vec::with_capacity(rows.len().min(limit as usize));
        for row in rows.into_iter().take(limit as usize) {
            out.push(self.load_sweep(row).await?);
        }
        Ok((out, more))
    }

    async fn trial_summaries(&self, sweep_id: i64, reason_chars: u32) -> Result<Vec<TrialSummary>> {
        // One query, the latest attempt's agent and the preemptions by correlated subqueries on
        // `leases_by_trial`: a third of the time of reading the trials and their leases apart.
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
                    r.run_uuid, t.started_at, t.finished_at, t.pruned_step, substr(t.reason, 1, ?2), t.rerun_of \
             FROM trials t JOIN runs r ON r.id = t.run_id WHERE t.sweep_id = ?1 ORDER BY t.number",
        )
        .bind(sweep_id)
        .bind(i64::from(reason_chars))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.into_iter()
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
                )| {
                    Ok(TrialSummary {
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
                    })
                },
            )
            .collect()
    }

    async fn sweep_attempts(&self, sweep_id: i64) -> Result<Vec<Attempt>> {
        let rows: Vec<(i64, i64, Option<String>, String, i64, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT t.number, l.attempt, a.name, l.agent_id, l.created_at, l.ended_at, l.outcome \
             FROM trials t JOIN leases l ON l.trial_id = t.id LEFT JOIN agents a ON a.id = l.agent_id \
             WHERE t.sweep_id = ? ORDER BY l.created_at, t.number",
        )
        .bind(sweep_id)
        .fetch_all(&self.reader)
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
                    COALESCE(SUM(l.ended_at IS NULL AND l.id IS NOT NULL), 0), COUNT(l.id), \
                    COALESCE(SUM(l.outcome = 'preempted'), 0) \
             FROM agents a LEFT JOIN leases l ON l.agent_id = a.id \
             WHERE ?1 IS NULL OR a.pool = ?1 GROUP BY a.name, a.pool ORDER BY a.name",
        )
        .bind(pool)
        .fetch_all(&self.reader)
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
}
