//! spotsweep's domain, with no I/O: the MLflow search grammar (runs, experiments, the model
//! registry) as typed predicates; the model registry's rules (stages, aliases, version
//! sources); the sweep spec, its validation, the random and grid samplers and trial seeds; the
//! optimizer (QMC and TPE samplers, and the pruners); the trial queue's rules (states, outcomes,
//! GPU placement); a fleet VM's states and names.
//!
//! Must not depend on tokio, sqlx, HTTP or anything else that does I/O: everything here is a
//! plain function of its inputs, so it can be property-tested and replayed.

pub mod fleet;
pub mod importance;
pub mod leader;
pub mod optimize;
pub mod queue;
pub mod registry;
pub mod search;
pub mod sweep;
pub mod words;
