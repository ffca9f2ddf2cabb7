//! The states of sweeps and trials, what an agent reports and what a heartbeat answers: the
//! words stored in the database and sent on the wire, parsed strictly (an unknown word is an
//! error for the caller to report, never a default).

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

impl SweepState {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "paused" => Self::Paused,
            "completed" => Self::Completed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
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

impl TrialState {
    /// All states, in display order.
    pub const ALL: [TrialState; 7] = [
        Self::Queued,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Pruned,
        Self::Preempted,
        Self::Cancelled,
    ];

    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Pruned => "pruned",
            Self::Preempted => "preempted",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

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
    /// The word stored on the lease.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Succeeded(_) => "succeeded",
            Self::Failed(_) => "failed",
            Self::Preempted => "preempted",
            Self::Pruned(_) => "pruned",
            Self::Cancelled => "cancelled",
            Self::OutOfMemory(_) => "out_of_memory",
            Self::SetupFailed(_) => "setup_failed",
        }
    }
}

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
