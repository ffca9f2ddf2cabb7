//! What the queue makes of what agents say and of silence: a report on a lease that has already
//! ended (a retry, or a result that arrives after the lease expired), a heartbeat, an expiry,
//! and when a sweep is done.

use super::state::{LeaseOutcome, Outcome, SweepState, TrialState};

/// What an agent reports, read against its trial: a trial it was told to stop reports
/// "cancelled"; when the pruner told it to stop (`stop_reason`), it was pruned.
pub fn reported(outcome: Outcome, stop_reason: Option<String>) -> Outcome {
    match (outcome, stop_reason) {
        (Outcome::Cancelled, Some(verdict)) => Outcome::Pruned(verdict),
        (outcome, _) => outcome,
    }
}

/// A lease as a report finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseStanding {
    /// How it ended, if it has.
    pub ended: Option<LeaseOutcome>,
    /// The attempt it was.
    pub attempt: i64,
    /// Its trial's state now.
    pub trial_state: TrialState,
    /// Its trial's attempt now (a later lease raised it).
    pub trial_attempt: i64,
}

/// What to do with a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The lease is open: apply the outcome.
    Apply,
    /// The same report again (its answer was lost): answer with the trial as it is.
    Repeat,
    /// The lease expired while its agent was away, and nobody has taken the trial since: the
    /// result is still the latest word on the trial, so apply it, taking back the failure the
    /// expiry counted.
    ApplyLate,
    /// The lease ended otherwise, or the trial has moved on: refuse, saying why.
    Refuse(String),
}

/// Judges `report` on `lease`.
pub fn judge(lease: &LeaseStanding, report: &Outcome) -> Verdict {
    let Some(ended) = lease.ended else {
        return Verdict::Apply;
    };
    if ended == report.lease_outcome() {
        return Verdict::Repeat;
    }
    let untouched = ended == LeaseOutcome::Expired
        && lease.trial_attempt == lease.attempt
        && matches!(lease.trial_state, TrialState::Queued | TrialState::Preempted);
    if untouched {
        Verdict::ApplyLate
    } else {
        Verdict::Refuse(format!(
            "already ended ({ended}); the trial is now {}",
            lease.trial_state
        ))
    }
}

/// The failure an expired lease records against its trial.
pub fn expiry(attempt: i64) -> Outcome {
    Outcome::Failed(format!(
        "the lease of attempt {attempt} expired: its agent stopped heartbeating"
    ))
}

/// A lease as a heartbeat finds it (after extending it if it was open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulse {
    /// The lease has ended (expired, or completed).
    pub ended: bool,
    /// The trial was told to stop (cancelled, or pruned).
    pub stop_requested: bool,
    /// Its sweep's state.
    pub sweep: SweepState,
    /// The trial reruns an earlier one.
    pub rerun: bool,
}

/// What a heartbeat answers, before any pruner is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Stop the trial.
    Stop,
    /// Go on; no pruner judges this trial.
    Continue,
    /// Go on unless the sweep's pruner (if it has one) says otherwise.
    AskPruner,
}

/// The heartbeat rule. An ended lease stops its trial (it went back to the queue, or it was
/// completed), and so does a stop request or a cancelled sweep. A rerun reproduces a trial: it
/// runs even in a cancelled sweep (one running when the sweep was cancelled was told to stop
/// then), and no pruner stops it.
pub fn heartbeat(pulse: Pulse) -> Beat {
    if pulse.ended || pulse.stop_requested || (pulse.sweep == SweepState::Cancelled && !pulse.rerun) {
        Beat::Stop
    } else if pulse.rerun {
        Beat::Continue
    } else {
        Beat::AskPruner
    }
}

/// Where a sweep stands, for [`sweep_done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepProgress {
    /// Its state.
    pub state: SweepState,
    /// Trials proposed so far (reruns not counted).
    pub trials_created: i64,
    /// Its budget of trials.
    pub max_trials: i64,
    /// Trials in one of [`TrialState::UNFINISHED`].
    pub unfinished: i64,
}

/// A running or paused sweep whose every trial was proposed and has ended is completed.
pub fn sweep_done(p: SweepProgress) -> bool {
    matches!(p.state, SweepState::Running | SweepState::Paused)
        && p.trials_created >= p.max_trials
        && p.unfinished == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ended: Option<LeaseOutcome>, trial_state: TrialState, trial_attempt: i64) -> LeaseStanding {
        LeaseStanding {
            ended,
            attempt: 2,
            trial_state,
            trial_attempt,
        }
    }

    #[test]
    fn a_cancel_after_a_prune_is_a_prune() {
        assert_eq!(
            reported(Outcome::Cancelled, Some("below the median".into())),
            Outcome::Pruned("below the median".into())
        );
        assert_eq!(reported(Outcome::Cancelled, None), Outcome::Cancelled);
        assert_eq!(
            reported(Outcome::Succeeded(Some(1.0)), Some("late verdict".into())),
            Outcome::Succeeded(Some(1.0))
        );
    }

    #[test]
    fn a_report_on_an_open_lease_applies_and_the_same_report_again_repeats() {
        let ok = Outcome::Succeeded(Some(1.0));
        assert_eq!(judge(&lease(None, TrialState::Running, 2), &ok), Verdict::Apply);
        assert_eq!(
            judge(
                &lease(Some(LeaseOutcome::Succeeded), TrialState::Completed, 2),
                &ok
            ),
            Verdict::Repeat
        );
    }

    #[test]
    fn a_result_after_an_expiry_counts_while_nobody_has_taken_the_trial() {
        let ok = Outcome::Succeeded(Some(1.0));
        for waiting in [TrialState::Queued, TrialState::Preempted] {
            assert_eq!(
                judge(&lease(Some(LeaseOutcome::Expired), waiting, 2), &ok),
                Verdict::ApplyLate
            );
        }
        // Another agent took it (a later attempt), or it ended meanwhile.
        let taken = judge(&lease(Some(LeaseOutcome::Expired), TrialState::Running, 3), &ok);
        assert!(
            matches!(&taken, Verdict::Refuse(m) if m.contains("(expired)") && m.contains("now running")),
            "{taken:?}"
        );
        assert!(matches!(
            judge(&lease(Some(LeaseOutcome::Expired), TrialState::Cancelled, 2), &ok),
            Verdict::Refuse(_)
        ));
        // A different report on a lease that ended by a report is refused.
        assert!(matches!(
            judge(&lease(Some(LeaseOutcome::Failed), TrialState::Queued, 2), &ok),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn an_expiry_is_a_failure_that_names_its_attempt() {
        assert!(
            matches!(expiry(4), Outcome::Failed(m) if m.contains("attempt 4") && m.contains("heartbeating"))
        );
    }

    #[test]
    fn heartbeats_stop_ended_stopped_and_cancelled_trials_and_reruns_skip_the_pruner() {
        let pulse = |ended, stop_requested, sweep, rerun| Pulse {
            ended,
            stop_requested,
            sweep,
            rerun,
        };
        use SweepState::*;
        assert_eq!(heartbeat(pulse(false, false, Running, false)), Beat::AskPruner);
        assert_eq!(heartbeat(pulse(false, false, Paused, false)), Beat::AskPruner);
        assert_eq!(heartbeat(pulse(true, false, Running, false)), Beat::Stop);
        assert_eq!(heartbeat(pulse(false, true, Running, true)), Beat::Stop);
        assert_eq!(heartbeat(pulse(false, false, Cancelled, false)), Beat::Stop);
        assert_eq!(heartbeat(pulse(false, false, Cancelled, true)), Beat::Continue);
        assert_eq!(heartbeat(pulse(false, false, Completed, true)), Beat::Continue);
        assert_eq!(heartbeat(pulse(true, false, Cancelled, true)), Beat::Stop);
    }

    #[test]
    fn a_sweep_is_done_when_every_trial_was_proposed_and_ended() {
        let p = |state, trials_created, unfinished| SweepProgress {
            state,
            trials_created,
            max_trials: 10,
            unfinished,
        };
        use SweepState::*;
        assert!(sweep_done(p(Running, 10, 0)));
        assert!(sweep_done(p(Paused, 10, 0)));
        assert!(!sweep_done(p(Running, 9, 0)));
        assert!(!sweep_done(p(Running, 10, 1)));
        assert!(!sweep_done(p(Cancelled, 10, 0)));
        assert!(!sweep_done(p(Completed, 10, 0)));
    }
}
