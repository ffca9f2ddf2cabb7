//! The trial queue's rules, for every store backend: trial and sweep states, what an agent's
//! report does to a trial, which sweep an agent's slot goes to, and where a trial goes on an
//! agent's GPUs. A backend reads and
//! writes; it decides nothing of this itself.

mod outcome;
mod placement;
mod share;
mod state;

pub use outcome::{OutcomeUpdate, RunEnd, decide, observed, setup_failures_to_pause};
pub use placement::{GpuFree, GpuShare, place};
pub use share::{SweepLoad, next_sweep};
pub use state::{HeartbeatAction, Outcome, SweepState, TrialState};
