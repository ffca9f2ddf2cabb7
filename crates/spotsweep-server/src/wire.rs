//! The store's states as the wire spells them (`spotsweep-api`'s enums, which the agent and
//! the CLI read without depending on the store), and an agent's report as the store's outcome.

use spotsweep_api as api;
use spotsweep_store as store;

/// A sweep's state on the wire.
pub(crate) fn sweep_state(s: store::SweepState) -> api::SweepState {
    match s {
        store::SweepState::Running => api::SweepState::Running,
        store::SweepState::Paused => api::SweepState::Paused,
        store::SweepState::Completed => api::SweepState::Completed,
        store::SweepState::Cancelled => api::SweepState::Cancelled,
    }
}

/// A trial's state on the wire.
pub(crate) fn trial_state(s: store::TrialState) -> api::TrialState {
    match s {
        store::TrialState::Queued => api::TrialState::Queued,
        store::TrialState::Running => api::TrialState::Running,
        store::TrialState::Completed => api::TrialState::Completed,
        store::TrialState::Failed => api::TrialState::Failed,
        store::TrialState::Pruned => api::TrialState::Pruned,
        store::TrialState::Preempted => api::TrialState::Preempted,
        store::TrialState::Cancelled => api::TrialState::Cancelled,
    }
}

/// A VM's state on the wire.
pub(crate) fn vm_state(s: store::VmState) -> api::VmState {
    match s {
        store::VmState::Requested => api::VmState::Requested,
        store::VmState::Provisioning => api::VmState::Provisioning,
        store::VmState::Booting => api::VmState::Booting,
        store::VmState::Ready => api::VmState::Ready,
        store::VmState::Draining => api::VmState::Draining,
        store::VmState::Deleting => api::VmState::Deleting,
        store::VmState::Deleted => api::VmState::Deleted,
        store::VmState::Preempted => api::VmState::Preempted,
        store::VmState::Failed => api::VmState::Failed,
    }
}

/// A heartbeat's answer on the wire: the action and, for a pruned trial, why.
pub(crate) fn heartbeat(a: store::HeartbeatAction) -> (api::HeartbeatAction, Option<String>) {
    match a {
        store::HeartbeatAction::Continue => (api::HeartbeatAction::Continue, None),
        store::HeartbeatAction::Stop => (api::HeartbeatAction::Stop, None),
        store::HeartbeatAction::Prune => (api::HeartbeatAction::Stop, Some("pruned".into())),
    }
}

/// An agent's report as the store's outcome; an empty reason gets a default one.
pub(crate) fn outcome(kind: api::OutcomeKind, value: Option<f64>, reason: Option<String>) -> store::Outcome {
    let reason = |default: &str| {
        reason
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| default.into())
    };
    match kind {
        api::OutcomeKind::Succeeded => store::Outcome::Succeeded(value),
        api::OutcomeKind::Failed => store::Outcome::Failed(reason("failed")),
        api::OutcomeKind::Preempted => store::Outcome::Preempted,
        api::OutcomeKind::Pruned => store::Outcome::Pruned(reason("pruned")),
        api::OutcomeKind::Cancelled => store::Outcome::Cancelled,
        api::OutcomeKind::SetupFailed => store::Outcome::SetupFailed(reason("the machine's setup failed")),
        api::OutcomeKind::OutOfMemory => store::Outcome::OutOfMemory(reason("out of GPU memory")),
    }
}
