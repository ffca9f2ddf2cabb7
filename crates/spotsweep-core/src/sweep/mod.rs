//! Sweeps: the spec a researcher submits, the random and grid samplers, seeds, and the command
//! line of a trial. Pure and deterministic: the same spec, seed and trial number give the same
//! parameters, on any machine.

mod sample;
mod spec;

pub use sample::{
    MAX_GRID_POINTS, Params, activity, draw, grid_points, grid_sequence, keep_active, render_command,
    sample_random, trial_seed,
};
pub use spec::{
    Condition, Distribution, Goal, NotebookSpec, Objective, OneOrMany, ParamValue, PrunerKind, PrunerSpec,
    Resources, SamplerKind, SamplerSpec, Source, SpecError, Summary, SweepSpec, code_digest, grid_values,
    placeholders, quantize, validate_params,
};
