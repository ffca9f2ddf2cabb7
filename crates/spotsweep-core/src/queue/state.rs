//! The states of sweeps and trials, what an agent reports and what a heartbeat answers: the
//! words stored in the database and sent on the wire, parsed strictly (an unknown word is an
//! error for the caller to report, never a default).

use super::outcome::RunEnd;

/// A sweep's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SweepState {
    /// Trials are proposed and leased.
    Running,
    /// No new leases; running trials go on.
    Paused,
    /// Every trial has ended.
    Completed,
    /// Stopped by a person: queued trials are cancelled, running ones are told to stop.
    Cancelled,
}

crate::words!(SweepState, "sweep state",
    Running => "running",
    Paused => "paused",
    Completed => "completed",
    Cancelled => "cancelled",
);

impl SweepState {
    /// Whether a sweep in this state may be set to `to`, and why not: running and paused go
    /// back and forth and may be cancelled; a completed or cancelled sweep stays as it is; a
    /// sweep completes by itself. Setting the state it has changes nothing.
    pub fn change_to(self, to: SweepState) -> Result<(), String> {
        match (self, to) {
            (from, to) if from == to => Ok(()),
            (Self::Completed | Self::Cancelled, _) => Err(format!("is {self}; it cannot change any more")),
            (_, Self::Completed) => Err("completes by itself when its trials end".into()),
            _ => Ok(()),
        }
    }

    /// How the sweep's own MLflow run ends once the sweep is in this state (`None`: it goes on).
    pub fn run_end(self) -> Option<RunEnd> {
        match self {
            Self::Running | Self::Paused => None,
            Self::Completed => Some(RunEnd::Finished),
            Self::Cancelled => Some(RunEnd::Killed),
        }
    }
}

/// A trial's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrialState {
    /// Waiting for an agent (new, or requeued after a retryable failure, expiry or preemption).
    Queued,
    /// Leased to an agent.
    Running,
    /// Finished with an objective value.
    Completed,
    /// Failed for good (retries exhausted, or no objective logged).
    Failed,
    /// Stopped early by the pruner.
    Pruned,
    /// Lost to an infrastructure preemption; retried without counting as a failure. Only
    /// visible while it waits to be leased again.
    Preempted,
    /// Cancelled by a person.
    Cancelled,
}

crate::words!(TrialState, "trial state",
    Queued => "queued",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Pruned => "pruned",
    Preempted => "preempted",
    Cancelled => "cancelled",
);

impl TrialState {
    /// The states of a trial that has not ended: a sweep with one of these is not done.
    pub const UNFINISHED: [TrialState; 3] = [Self::Queued, Self::Running, Self::Preempted];

    /// Whether the trial has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Pruned | Self::Cancelled
        )
    }
}

/// How a leased trial ended, as its agent reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Exited successfully; the value, or `None` to read the objective from the run's metrics.
    Succeeded(Option<f64>),
    /// Failed (non-zero exit, crash); retried up to `max_retries`.
    Failed(String),
    /// Lost to a preemption; retried without counting as a failure.
    Preempted,
    /// Stopped by the pruner.
    Pruned(String),
    /// Stopped because the sweep or trial was cancelled.
    Cancelled,
    /// Ran out of GPU memory while sharing its GPU: requeued with twice the memory, not a failure.
    OutOfMemory(String),
    /// The agent's setup failed before the trial started: requeued for another machine; once
    /// it failed on three machines (one, on the local pool), the sweep is paused.
    SetupFailed(String),
}

impl Outcome {
    /// What the lease records when its agent reports this.
    pub fn lease_outcome(&self) -> LeaseOutcome {
        match self {
            Self::Succeeded(_) => LeaseOutcome::Succeeded,
            Self::Failed(_) => LeaseOutcome::Failed,
            Self::Preempted => LeaseOutcome::Preempted,
            Self::Pruned(_) => LeaseOutcome::Pruned,
            Self::Cancelled => LeaseOutcome::Cancelled,
            Self::OutOfMemory(_) => LeaseOutcome::OutOfMemory,
            Self::SetupFailed(_) => LeaseOutcome::SetupFailed,
        }
    }

    /// The word stored on the lease.
    pub fn as_str(&self) -> &'static str {
        self.lease_outcome().as_str()
    }
}

/// How a lease ended, as stored on it: the outcome its agent reported, or its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseOutcome {
    /// See [`Outcome::Succeeded`].
    Succeeded,
    /// See [`Outcome::Failed`].
    Failed,
    /// See [`Outcome::Preempted`].
    Preempted,
    /// See [`Outcome::Pruned`].
    Pruned,
    /// See [`Outcome::Cancelled`].
    Cancelled,
    /// See [`Outcome::OutOfMemory`].
    OutOfMemory,
    /// See [`Outcome::SetupFailed`].
    SetupFailed,
    /// Its agent stopped heartbeating; the trial went back to the queue.
    Expired,
}

crate::words!(LeaseOutcome, "lease outcome",
    Succeeded => "succeeded",
    Failed => "failed",
    Preempted => "preempted",
    Pruned => "pruned",
    Cancelled => "cancelled",
    OutOfMemory => "out_of_memory",
    SetupFailed => "setup_failed",
    Expired => "expired",
);

/// What a heartbeat tells the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Keep going; the lease was extended.
    Continue,
    /// Stop the trial (cancelled, or the lease was lost).
    Stop,
    /// Stop the trial: the pruner judged it hopeless.
    Prune,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::words::assert_round_trips;

    #[test]
    fn every_state_has_one_spelling_that_parses_back() {
        assert_round_trips::<SweepState>();
        assert_round_trips::<TrialState>();
        assert_round_trips::<LeaseOutcome>();
    }

    #[test]
    fn the_unfinished_trial_states_are_the_ones_that_are_not_terminal() {
        let unfinished: Vec<_> = TrialState::ALL
            .iter()
            .copied()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(unfinished, TrialState::UNFINISHED);
    }

    #[test]
    fn running_and_paused_sweeps_change_and_ended_ones_stay() {
        use SweepState::*;
        for (from, to) in [
            (Running, Paused),
            (Paused, Running),
            (Running, Cancelled),
            (Paused, Cancelled),
        ] {
            assert_eq!(from.change_to(to), Ok(()), "{from} -> {to}");
        }
        for s in SweepState::ALL {
            assert_eq!(s.change_to(*s), Ok(()), "{s}");
        }
        for from in [Completed, Cancelled] {
            for to in [Running, Paused] {
                assert!(
                    from.change_to(to).unwrap_err().contains("cannot change"),
                    "{from} -> {to}"
                );
            }
        }
        assert!(Running.change_to(Completed).unwrap_err().contains("by itself"));
    }

    #[test]
    fn a_sweep_s_run_ends_with_it() {
        assert_eq!(SweepState::Running.run_end(), None);
        assert_eq!(SweepState::Paused.run_end(), None);
        assert_eq!(SweepState::Completed.run_end(), Some(RunEnd::Finished));
        assert_eq!(SweepState::Cancelled.run_end(), Some(RunEnd::Killed));
    }
}
