//! spotsweep's domain, with no I/O: the MLflow search grammar (runs and experiments) as typed
//! predicates; the sweep spec, its validation, the random and grid samplers and trial seeds;
//! the optimizer (QMC and TPE samplers, and the pruners).
//!
//! Must not depend on tokio, sqlx, HTTP or anything else that does I/O: everything here is a
//! plain function of its inputs, so it can be property-tested and replayed.

pub mod optimize;
pub mod search;
pub mod sweep;
