//! What both backends' trial queues share: the rows they read (decoded the same way from
//! SQLite's and PostgreSQL's rows), and the pure steps between reading and writing that are not
//! rules of the queue (those live in `spotsweep_core::queue`): the MLflow tags of a sweep's and a
//! trial's runs, a sweep's counts, the sampler's history and the pruner's curves as read from
//! rows. A backend differs in its statements and its locking, not in what it makes of a row.

use rand::RngExt;
use spotsweep_core::optimize::prune::{Curve, Point};
use spotsweep_core::optimize::{History, Observed};
use spotsweep_core::queue::{self, LeaseStanding, observed};
use spotsweep_core::sweep::{Params, SamplerKind, SweepSpec, grid_points};

use spotsweep_core::queue::LeaseOutcome;

use crate::{
    KeyValue, NewExperiment, Result, StoreError, Stored, SweepState, Trial, TrialCounts, TrialState,
};

/// The artifact root of experiments created for sweeps: behind the daemon's artifact proxy.
pub(crate) const SWEEP_ARTIFACT_ROOT: &str = "mlflow-artifacts:";

/// The columns of [`TrialRow`], from `trials t JOIN runs r ON r.id = t.run_id`.
pub(crate) const TRIAL_COLUMNS: &str = "t.id, t.sweep_id, t.number, t.params, t.seed, r.run_uuid, r.experiment_id, r.artifact_uri, t.state, \
     t.attempt, t.failures, t.value, t.reason, t.agent_id, t.created_at, t.started_at, t.finished_at, t.pruned_step, \
     t.rerun_of, t.pool";

/// A trial as stored, with its run's id, experiment and artifact root.
#[derive(sqlx::FromRow)]
pub(crate) struct TrialRow {
    id: i64,
    sweep_id: i64,
    number: i64,
    params: String,
    seed: i64,
    run_uuid: String,
    experiment_id: i64,
    artifact_uri: String,
    state: Stored<TrialState>,
    attempt: i64,
    failures: i64,
    value: Option<f64>,
    reason: Option<String>,
    agent_id: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    pruned_step: Option<i64>,
    rerun_of: Option<i64>,
    pool: Option<String>,
}

impl TrialRow {
    /// The trial; a stored state or parameters this build cannot read are an error, never a
    /// default.
    pub(crate) fn into_trial(self) -> Result<Trial> {
        let damaged = |what: &str| {
            StoreError::Incompatible(format!(
                "trial {} of sweep {} has {what}; the database is damaged or from a newer spotsweep",
                self.number, self.sweep_id
            ))
        };
        let params = serde_json::from_str(&self.params).map_err(|_| damaged("unreadable parameters"))?;
        Ok(Trial {
            id: self.id,
            sweep_id: self.sweep_id,
            number: self.number,
            params,
            seed: self.seed as u64,
            run_id: self.run_uuid,
            experiment_id: self.experiment_id,
            artifact_uri: self.artifact_uri,
            state: self.state.0,
            attempt: self.attempt,
            failures: self.failures,
            value: self.value,
            reason: self.reason,
            agent_id: self.agent_id,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            pruned_step: self.pruned_step,
            rerun_of: self.rerun_of,
            pool: self.pool,
        })
    }
}

/// A sweep as stored: the columns of [`SWEEP_COLUMNS`].
#[derive(sqlx::FromRow)]
pub(crate) struct SweepRow {
    pub(crate) id: i64,
    pub(crate) spec: String,
    pub(crate) seed: i64,
    pub(crate) experiment_id: i64,
    pub(crate) state: Stored<SweepState>,
    pub(crate) trials_created: i64,
    pub(crate) created_at: i64,
    pub(crate) finished_at: Option<i64>,
    pub(crate) run_uuid: Option<String>,
}

/// The columns of [`SweepRow`].
pub(crate) const SWEEP_COLUMNS: &str =
    "id, spec, seed, experiment_id, state, trials_created, created_at, finished_at, run_uuid";

/// A sweep with its trials' counts by state and its best trial.
pub(crate) fn sweep_of(
    row: SweepRow,
    spec: SweepSpec,
    counts: Vec<(Stored<TrialState>, i64)>,
    best: Option<(i64, f64, String)>,
) -> crate::Sweep {
    let mut by_state = TrialCounts::default();
    for (Stored(state), n) in counts {
        by_state.by_state[TrialState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or_default()] = n;
    }
    crate::Sweep {
        id: row.id,
        spec,
        seed: row.seed as u64,
        experiment_id: row.experiment_id,
        state: row.state.0,
        trials_created: row.trials_created,
        counts: by_state,
        best,
        created_at: row.created_at,
        finished_at: row.finished_at,
        run_id: row.run_uuid,
    }
}

/// The sweep a new trial joins, as the writing transaction sees it.
#[derive(sqlx::FromRow)]
pub(crate) struct SweepRef {
    pub(crate) id: i64,
    pub(crate) seed: i64,
    pub(crate) experiment_id: i64,
    pub(crate) artifact_location: String,
    pub(crate) experiment_stage: String,
    /// The sweep's own run (the trials' parent), when it has one.
    pub(crate) run_uuid: Option<String>,
}

impl SweepRef {
    /// A deleted experiment takes no more runs.
    pub(crate) fn check_active(&self) -> Result<()> {
        if self.experiment_stage != "active" {
            return Err(StoreError::Invalid(format!(
                "the experiment {} of sweep {} is deleted; restore it to run more trials",
                self.experiment_id, self.id
            )));
        }
        Ok(())
    }
}

/// A sweep that may get a trial now, as seen inside the leasing transaction.
#[derive(sqlx::FromRow)]
pub(crate) struct Candidate {
    #[sqlx(flatten)]
    pub(crate) sweep: SweepRef,
    pub(crate) parallelism: i64,
    pub(crate) max_trials: i64,
    pub(crate) trials_created: i64,
    pub(crate) running: i64,
    pub(crate) next_waiting: Option<i64>,
}

impl Candidate {
    /// What fair share weighs of it.
    pub(crate) fn load(&self) -> queue::SweepLoad {
        queue::SweepLoad {
            sweep_id: self.sweep.id,
            running: self.running,
            parallelism: self.parallelism,
            has_waiting: self.next_waiting.is_some(),
            trials_created: self.trials_created,
            max_trials: self.max_trials,
        }
    }
}

/// A lease with its trial, as a completion finds them.
#[derive(sqlx::FromRow)]
pub(crate) struct LeaseRow {
    pub(crate) lease_attempt: i64,
    /// A pruner's verdict, when one told the trial to stop.
    pub(crate) stop_reason: Option<String>,
    pub(crate) lease_ended_at: Option<i64>,
    pub(crate) lease_outcome: Option<Stored<LeaseOutcome>>,
    #[sqlx(flatten)]
    pub(crate) trial: TrialRow,
}

impl LeaseRow {
    /// The lease as [`queue::judge`] weighs it, and its trial.
    pub(crate) fn standing(self, lease_id: &str) -> Result<(LeaseStanding, Option<String>, Trial)> {
        let trial = self.trial.into_trial()?;
        let ended = match (self.lease_ended_at, self.lease_outcome) {
            (None, _) => None,
            (Some(_), Some(Stored(how))) => Some(how),
            (Some(_), None) => {
                return Err(StoreError::Incompatible(format!(
                    "lease '{lease_id}' ended without an outcome; the database is damaged"
                )));
            }
        };
        let standing = LeaseStanding {
            ended,
            attempt: self.lease_attempt,
            trial_state: trial.state,
            trial_attempt: trial.attempt,
        };
        Ok((standing, self.stop_reason, trial))
    }
}

/// The columns of [`LeaseRow`], from `leases l JOIN trials t ON t.id = l.trial_id JOIN runs r ON
/// r.id = t.run_id`.
pub(crate) fn lease_columns() -> String {
    format!(
        "l.attempt AS lease_attempt, l.ended_at AS lease_ended_at, l.outcome AS lease_outcome, t.stop_reason, \
         {TRIAL_COLUMNS}"
    )
}

/// What makes a new trial a rerun: the original's number, seed and run, and the pool it runs
/// on when not the sweep's.
pub(crate) struct Rerun<'a> {
    pub(crate) of: i64,
    pub(crate) seed: u64,
    pub(crate) run_id: &'a str,
    pub(crate) pool: Option<&'a str>,
}

/// A lease about to be granted.
pub(crate) struct NewLease<'a> {
    pub(crate) id: &'a str,
    pub(crate) agent_id: &'a str,
    pub(crate) expires_at: i64,
}

/// A fresh lease id.
pub(crate) fn new_lease_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    format!("ls_{}", hex::encode(bytes))
}

/// A stored spec.
pub(crate) fn parse_spec(text: &str) -> Result<SweepSpec> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Incompatible(format!("stored sweep spec is unreadable: {e}")))
}

/// A stored spec that a sampler may run: validation has grown stricter over time, and a spec
/// stored by an older daemon that no longer validates could make a sampler fail; such a sweep
/// is paused when it is leased from (`Invalid`).
pub(crate) fn runnable_spec(sweep_id: i64, text: &str) -> Result<SweepSpec> {
    let spec = parse_spec(text)?;
    if let Err(e) = spec.validate() {
        return Err(StoreError::Invalid(format!(
            "sweep {sweep_id}'s stored spec is no longer valid ({e}); it is paused: cancel it and submit \
             a corrected spec"
        )));
    }
    Ok(spec)
}

/// A new sweep's budget of trials: a grid never has more trials than points.
pub(crate) fn max_trials_of(spec: &SweepSpec) -> Result<i64> {
    Ok(match spec.sampler.kind {
        SamplerKind::Grid => {
            let points = grid_points(spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
            i64::from(spec.max_trials).min(points.len() as i64)
        }
        SamplerKind::Random | SamplerKind::Qmc | SamplerKind::Tpe => i64::from(spec.max_trials),
    })
}

/// The experiment a sweep creates when its experiment name is free.
pub(crate) fn sweep_experiment(name: String, now: i64) -> NewExperiment {
    NewExperiment {
        name,
        artifact_location: None,
        artifact_root: SWEEP_ARTIFACT_ROOT.into(),
        // A sweep trains models: MLflow's UI opens such an experiment on its training-runs
        // views (runs table, charts) rather than guessing.
        tags: vec![KeyValue {
            key: "mlflow.experimentKind".into(),
            value: "custom_model_development".into(),
        }],
        now,
    }
}

/// The tags and params of sweep `id`'s own run: named after it, the spec summarised as params,
/// the code version as tags.
pub(crate) fn sweep_run_tags_and_params(id: i64, spec: &SweepSpec) -> (JsonMap, JsonMap) {
    let mut tags = JsonMap::new();
    let mut tag = |k: &str, v: String| {
        tags.insert(k.to_owned(), v.into());
    };
    tag("mlflow.runName", spec.name.clone());
    tag("spotsweep.sweep_id", id.to_string());
    tag("spotsweep.sweep", spec.name.clone());
    tag("spotsweep.role", "sweep".into());
    if let Some(code) = &spec.code {
        tag("spotsweep.code", code.as_str().into());
    }
    for (key, value) in spec.source.iter().flat_map(|s| s.tags(spec.notebook.is_some())) {
        tag(key, value);
    }
    let params = spec
        .run_params()
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    (tags, params)
}

/// A JSON object of string values: a run's tags or params.
pub(crate) type JsonMap = serde_json::Map<String, serde_json::Value>;

/// What a new trial's run is: its name, tags (sweep, trial number, attempt, seed, parent run,
/// code version, what it reruns) and params (the hyperparameters).
pub(crate) struct TrialRun {
    pub(crate) seed: u64,
    pub(crate) name: String,
    pub(crate) tags: JsonMap,
    pub(crate) params: JsonMap,
}

/// The run of trial `number` of `sweep` with `params`, on attempt `attempt`.
pub(crate) fn trial_run(
    sweep: &SweepRef,
    spec: &SweepSpec,
    number: i64,
    params: &Params,
    attempt: i64,
    rerun: Option<&Rerun<'_>>,
) -> TrialRun {
    let seed = rerun.map_or_else(
        || spotsweep_core::sweep::trial_seed(sweep.seed as u64, number as u64),
        |r| r.seed,
    );
    let name = format!("{}-{number}", spec.name);
    let mut tags = JsonMap::new();
    let mut tag = |k: &str, v: String| {
        tags.insert(k.to_owned(), v.into());
    };
    tag("mlflow.runName", name.clone());
    tag("spotsweep.sweep_id", sweep.id.to_string());
    tag("spotsweep.sweep", spec.name.clone());
    tag("spotsweep.trial", number.to_string());
    tag("spotsweep.attempt", attempt.to_string());
    tag("spotsweep.seed", seed.to_string());
    // MLflow's UI folds a run under the run its `mlflow.parentRunId` names, and shows the code
    // version from the `mlflow.source.*` tags.
    if let Some(parent) = &sweep.run_uuid {
        tag("mlflow.parentRunId", parent.clone());
    }
    if let Some(code) = &spec.code {
        tag("spotsweep.code", code.as_str().into());
    }
    for (key, value) in spec.source.iter().flat_map(|s| s.tags(spec.notebook.is_some())) {
        tag(key, value);
    }
    if let Some(r) = rerun {
        tag("spotsweep.rerun_of", r.of.to_string());
        tag("spotsweep.rerun_of_run", r.run_id.to_owned());
        if let Some(pool) = r.pool {
            tag("spotsweep.pool", pool.to_owned());
        }
    }
    let params = params
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string().into()))
        .collect();
    TrialRun {
        seed,
        name,
        tags,
        params,
    }
}

/// A JSON object of strings as two arrays (keys, values), for a backend that inserts them with
/// `UNNEST`.
pub(crate) fn keys_and_values(map: &JsonMap) -> (Vec<String>, Vec<String>) {
    map.iter()
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .unzip()
}

/// One trial of a sweep as the sampler's history reads it: number, state, value, its objective
/// metric's latest value (NaN and missing are `None`), parameters.
pub(crate) type HistoryRow = (u64, TrialState, Option<f64>, Option<f64>, Params);

/// What the TPE sampler knows of a sweep's trials (reruns left out), from its trials in number
/// order.
pub(crate) fn history_of(spec: &SweepSpec, rows: impl IntoIterator<Item = HistoryRow>) -> History {
    let mut history = History::new(spec);
    for (number, state, value, last_value, params) in rows {
        // Trial numbers are dense; were one missing, it would stand in as a failed trial, which
        // is no evidence, so that row `n` stays trial `n`.
        while (history.len() as u64) < number {
            history.push(spec, &Params::new(), Observed::Failed);
        }
        history.push(spec, &params, observed(state, value, last_value));
    }
    history
}

/// A trial's curve for the pruner from its objective metric's points in step order (step,
/// timestamp, value): the last value logged at a step (the latest timestamp) is the step's value.
pub(crate) fn curve_of(number: u64, completed: bool, step_ordered: impl IntoIterator<Item = Point>) -> Curve {
    let mut curve = Curve {
        number,
        completed,
        points: Vec::new(),
    };
    for point in step_ordered {
        match curve.points.last_mut() {
            Some(last) if last.step == point.step => *last = point,
            _ => curve.points.push(point),
        }
    }
    curve
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(step: i64, timestamp: i64, value: f64) -> Point {
        Point {
            step,
            value,
            timestamp,
        }
    }

    #[test]
    fn a_curve_keeps_the_last_value_of_each_step() {
        let c = curve_of(
            3,
            true,
            [
                p(0, 1, 5.0),
                p(0, 2, 4.0),
                p(1, 1, 3.0),
                p(2, 1, 2.0),
                p(2, 1, 2.5),
            ],
        );
        assert_eq!(c.number, 3);
        let steps: Vec<(i64, f64)> = c.points.iter().map(|p| (p.step, p.value)).collect();
        assert_eq!(steps, vec![(0, 4.0), (1, 3.0), (2, 2.5)]);
    }
}
