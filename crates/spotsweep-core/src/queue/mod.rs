//! The trial queue's rules, for every store backend: trial and sweep states, what an agent's
//! report does to a trial, late and repeated reports, heartbeats, when a sweep is done, which
//! sweep an agent's slot goes to, and where a trial goes on an agent's GPUs. A backend reads and
//! writes; it decides nothing of this itself.

mod outcome;
mod placement;
mod report;
mod share;
mod state;

pub use outcome::{OutcomeUpdate, RunEnd, decide, observed, setup_failures_to_pause, setup_pause};
pub use placement::{GpuFree, GpuShare, place};
pub use report::{
    Beat, LeaseStanding, Pulse, SweepProgress, Verdict, expiry, heartbeat, judge, reported, sweep_done,
};
pub use share::{SweepLoad, next_sweep};
pub use state::{HeartbeatAction, LeaseOutcome, Outcome, SweepState, TrialState};
