//! What an agent's report does to a trial, how a trial stands for the sampler, and when a
//! failing setup pauses its sweep: the queue's rules, for every backend.

use super::state::{Outcome, TrialState};
use crate::optimize::Observed;

/// How a trial's MLflow run ends when the trial's story ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Completed with an objective value.
    Finished,
    /// Failed for good.
    Failed,
    /// Stopped: pruned or cancelled.
    Killed,
}

crate::words!(RunEnd, "run status",
    Finished => "FINISHED",
    Failed => "FAILED",
    Killed => "KILLED",
);

/// What an outcome does to a trial.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeUpdate {
    /// The trial's new state.
    pub state: TrialState,
    /// The objective value, for a completed trial.
    pub value: Option<f64>,
    /// Why it failed, was requeued, pruned or cancelled.
    pub reason: Option<String>,
    /// Failures so far, this one included.
    pub failures: i64,
    /// How its run ends, when the trial's story ends here (`None`: it is requeued).
    pub run_end: Option<RunEnd>,
    /// It ran out of GPU memory: its next attempt asks for twice the memory (see
    /// [`super::place`], which doubles per out-of-memory exit).
    pub more_memory: bool,
}

/// Applies an agent's `outcome` to a trial that failed `failures` times so far, in a sweep that
/// allows `max_retries` and optimizes `metric`; `objective` is the value read from the run's
/// metrics when the outcome carries none.
pub fn decide(
    outcome: &Outcome,
    failures: i64,
    max_retries: u32,
    metric: &str,
    objective: Option<f64>,
) -> OutcomeUpdate {
    let update = |state, value, reason: Option<String>, failures, run_end| OutcomeUpdate {
        state,
        value,
        reason,
        failures,
        run_end,
        more_memory: matches!(outcome, Outcome::OutOfMemory(_)),
    };
    match outcome {
        Outcome::Succeeded(value) => match value.or(objective) {
            Some(v) if v.is_finite() => update(
                TrialState::Completed,
                Some(v),
                None,
                failures,
                Some(RunEnd::Finished),
            ),
            Some(v) => update(
                TrialState::Failed,
                None,
                Some(format!("the objective metric '{metric}' is {v}")),
                failures,
                Some(RunEnd::Failed),
            ),
            None => update(
                TrialState::Failed,
                None,
                Some(format!(
                    "the command exited 0 without logging the objective metric '{metric}' to its MLflow run"
                )),
                failures,
                Some(RunEnd::Failed),
            ),
        },
        Outcome::Failed(reason) => {
            let failures = failures + 1;
            if failures > i64::from(max_retries) {
                update(
                    TrialState::Failed,
                    None,
                    Some(reason.clone()),
                    failures,
                    Some(RunEnd::Failed),
                )
            } else {
                update(TrialState::Queued, None, Some(reason.clone()), failures, None)
            }
        }
        // Neither is the trial's fault: requeued without counting (another machine, twice the
        // GPU memory).
        Outcome::SetupFailed(reason) | Outcome::OutOfMemory(reason) => {
            update(TrialState::Queued, None, Some(reason.clone()), failures, None)
        }
        Outcome::Preempted => update(
            TrialState::Preempted,
            None,
            Some("preempted".into()),
            failures,
            None,
        ),
        Outcome::Pruned(reason) => update(
            TrialState::Pruned,
            None,
            Some(reason.clone()),
            failures,
            Some(RunEnd::Killed),
        ),
        Outcome::Cancelled => update(
            TrialState::Cancelled,
            None,
            Some("cancelled".into()),
            failures,
            Some(RunEnd::Killed),
        ),
    }
}

/// How a trial in `state` stands for the sampler; `last_value` is its objective metric's latest
/// value (what a pruned trial reached).
pub fn observed(state: TrialState, value: Option<f64>, last_value: Option<f64>) -> Observed {
    match state {
        TrialState::Completed => value.map_or(Observed::Failed, Observed::Completed),
        TrialState::Pruned => Observed::Pruned(last_value),
        TrialState::Queued | TrialState::Running | TrialState::Preempted => Observed::Pending,
        TrialState::Failed | TrialState::Cancelled => Observed::Failed,
    }
}

/// On how many machines a sweep's setup must have failed before the sweep is paused: a setup
/// that fails everywhere would burn machine after machine. The local pool is one machine.
pub fn setup_failures_to_pause(pool: &str) -> i64 {
    if pool == "local" { 1 } else { 3 }
}

/// After a setup failure (`reason`), with the sweep's setup now failed on `machines` machines
/// of `pool`: the reason the trial and the person see when the sweep is to be paused, `None`
/// when it goes on.
pub fn setup_pause(pool: &str, machines: i64, reason: Option<&str>) -> Option<String> {
    (machines >= setup_failures_to_pause(pool)).then(|| {
        format!(
            "{}\nthe setup failed on {machines} machine(s): the sweep is paused; fix the setup \
             (or the machines) and resume it",
            reason.unwrap_or("setup failed")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide_with(outcome: Outcome, failures: i64, objective: Option<f64>) -> OutcomeUpdate {
        decide(&outcome, failures, 2, "loss", objective)
    }

    #[test]
    fn success_takes_the_reported_value_before_the_run_s_and_only_a_finite_one() {
        let u = decide_with(Outcome::Succeeded(Some(0.5)), 1, Some(9.0));
        assert_eq!(
            (u.state, u.value, u.failures, u.run_end),
            (TrialState::Completed, Some(0.5), 1, Some(RunEnd::Finished))
        );
        assert_eq!(
            decide_with(Outcome::Succeeded(None), 0, Some(9.0)).value,
            Some(9.0)
        );
        for v in [f64::NAN, f64::INFINITY] {
            let u = decide_with(Outcome::Succeeded(Some(v)), 0, None);
            assert_eq!((u.state, u.run_end), (TrialState::Failed, Some(RunEnd::Failed)));
            assert!(u.reason.unwrap().contains("'loss' is"));
        }
        let u = decide_with(Outcome::Succeeded(None), 0, None);
        assert_eq!(u.state, TrialState::Failed);
        assert!(
            u.reason
                .unwrap()
                .contains("without logging the objective metric 'loss'")
        );
    }

    #[test]
    fn failures_are_retried_up_to_max_retries_and_infrastructure_is_free() {
        let u = decide_with(Outcome::Failed("exit 1".into()), 1, None);
        assert_eq!((u.state, u.failures, u.run_end), (TrialState::Queued, 2, None));
        let u = decide_with(Outcome::Failed("exit 1".into()), 2, None);
        assert_eq!(
            (u.state, u.failures, u.run_end),
            (TrialState::Failed, 3, Some(RunEnd::Failed))
        );
        assert_eq!(u.reason.as_deref(), Some("exit 1"));
        for outcome in [
            Outcome::SetupFailed("pip".into()),
            Outcome::OutOfMemory("oom".into()),
            Outcome::Preempted,
        ] {
            let u = decide_with(outcome.clone(), 2, None);
            assert_eq!((u.failures, u.run_end), (2, None), "{outcome:?}");
            assert!(!u.state.is_terminal(), "{outcome:?}");
        }
    }

    #[test]
    fn pruned_and_cancelled_trials_end_their_runs_killed() {
        let u = decide_with(Outcome::Pruned("median".into()), 0, None);
        assert_eq!((u.state, u.run_end), (TrialState::Pruned, Some(RunEnd::Killed)));
        let u = decide_with(Outcome::Cancelled, 0, None);
        assert_eq!(
            (u.state, u.run_end),
            (TrialState::Cancelled, Some(RunEnd::Killed))
        );
    }

    #[test]
    fn the_sampler_sees_values_of_completed_trials_and_the_reach_of_pruned_ones() {
        assert!(
            matches!(observed(TrialState::Completed, Some(1.0), None), Observed::Completed(v) if v == 1.0)
        );
        assert!(matches!(
            observed(TrialState::Completed, None, None),
            Observed::Failed
        ));
        assert!(
            matches!(observed(TrialState::Pruned, None, Some(3.0)), Observed::Pruned(Some(v)) if v == 3.0)
        );
        for s in [TrialState::Queued, TrialState::Running, TrialState::Preempted] {
            assert!(matches!(observed(s, None, None), Observed::Pending));
        }
        for s in [TrialState::Failed, TrialState::Cancelled] {
            assert!(matches!(observed(s, Some(1.0), None), Observed::Failed));
        }
    }

    #[test]
    fn a_setup_pauses_after_one_local_machine_or_three_others() {
        assert_eq!(setup_failures_to_pause("local"), 1);
        assert_eq!(setup_failures_to_pause("a100-spot"), 3);
        assert_eq!(setup_pause("a100-spot", 2, Some("pip failed")), None);
        let why = setup_pause("a100-spot", 3, Some("pip failed")).unwrap();
        assert!(why.starts_with("pip failed\n"), "{why}");
        assert!(
            why.contains("on 3 machine(s)") && why.contains("resume it"),
            "{why}"
        );
        assert!(
            setup_pause("local", 1, None)
                .unwrap()
                .starts_with("setup failed\n")
        );
    }

    #[test]
    fn only_running_out_of_gpu_memory_asks_for_more_next_time() {
        assert!(decide_with(Outcome::OutOfMemory("CUDA out of memory".into()), 0, None).more_memory);
        for outcome in [
            Outcome::Failed("exit 1".into()),
            Outcome::SetupFailed("pip".into()),
            Outcome::Preempted,
            Outcome::Succeeded(Some(1.0)),
        ] {
            assert!(!decide_with(outcome.clone(), 0, None).more_memory, "{outcome:?}");
        }
    }
}
