//! The sweep spec: what a researcher submits (YAML through the CLI, the same structure as JSON
//! over REST), and its validation. Every error names the field and says what is wrong, so the
//! server can answer a 400 a person can act on.

use std::collections::BTreeMap;
use std::fmt;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// A value a parameter can take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// A boolean choice.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string choice.
    Str(String),
}

impl fmt::Display for ParamValue {
    /// The value written so that it parses back to exactly this value: Rust's shortest
    /// round-trip float formatting, with a `.0` kept on integral floats so that the type
    /// survives too (`1.0`, not `1`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 => write!(f, "{x:.1}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

/// When a parameter is active: every named parameter must have one of the listed values.
pub type Condition = BTreeMap<String, OneOrMany>;

/// One value or a list of values (`{opt: sgd}` or `{opt: [sgd, adam]}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A list: any of these.
    Many(Vec<ParamValue>),
    /// A single value.
    One(ParamValue),
}

impl OneOrMany {
    /// Whether `value` is among the listed values.
    pub fn contains(&self, value: &ParamValue) -> bool {
        match self {
            Self::One(v) => v == value,
            Self::Many(vs) => vs.contains(value),
        }
    }
}

/// A parameter's distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Distribution {
    /// A real number in `[low, high]`.
    Float {
        /// Lower bound (inclusive).
        low: f64,
        /// Upper bound (inclusive).
        high: f64,
        /// Sample log-uniformly (needs `low > 0`).
        #[serde(default)]
        log: bool,
        /// Quantise to `low + k * step`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<f64>,
        /// Only when these conditions hold.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        when: Option<Condition>,
    },
    /// An integer in `[low, high]`.
    Int {
        /// Lower bound (inclusive).
        low: i64,
        /// Upper bound (inclusive).
        high: i64,
        /// Sample log-uniformly (needs `low >= 1`).
        #[serde(default)]
        log: bool,
        /// Only `low + k * step` (default 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<i64>,
        /// Only when these conditions hold.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        when: Option<Condition>,
    },
    /// One of a list of choices.
    Categorical {
        /// The choices (strings, numbers or booleans).
        choices: Vec<ParamValue>,
        /// Only when these conditions hold.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        when: Option<Condition>,
    },
}

impl Distribution {
    /// The activation condition, if any.
    pub fn when(&self) -> Option<&Condition> {
        match self {
            Self::Float { when, .. } | Self::Int { when, .. } | Self::Categorical { when, .. } => {
                when.as_ref()
            }
        }
    }
}

/// Whether the objective is minimised or maximised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Lower is better.
    #[default]
    Minimize,
    /// Higher is better.
    Maximize,
}

/// How a trial's metric history becomes its objective value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Summary {
    /// The latest value (MLflow's latest-metric rule).
    #[default]
    Last,
    /// The minimum over the history.
    Min,
    /// The maximum over the history.
    Max,
}

/// What the sweep optimises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// The MLflow metric key.
    pub metric: String,
    /// Minimise or maximise.
    #[serde(default)]
    pub goal: Goal,
    /// How the history is summarised.
    #[serde(default)]
    pub summary: Summary,
}

impl Objective {
    /// Whether `a` is better than `b`.
    pub fn better(&self, a: f64, b: f64) -> bool {
        match self.goal {
            Goal::Minimize => a < b,
            Goal::Maximize => a > b,
        }
    }
}

/// Which sampler proposes trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Independent uniform (or log-uniform) draws.
    #[default]
    Random,
    /// Every combination of the parameters' values, in order (or shuffled by the seed).
    Grid,
    /// Scrambled Sobol points: a quasi-random sequence that covers the space evenly.
    Qmc,
    /// Tree-structured Parzen estimator (Bayesian optimisation), after QMC startup trials.
    Tpe,
}

/// The sampler section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    /// The sampler.
    #[serde(rename = "type", default)]
    pub kind: SamplerKind,
    /// The sweep seed; drawn and recorded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// TPE: trials drawn by QMC before the model takes over (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_trials: Option<u32>,
    /// TPE: candidates drawn from the good-trial model per suggestion (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<u32>,
    /// Grid: visit the points in an order shuffled by the seed instead of in order.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shuffle: bool,
}

impl SamplerSpec {
    /// TPE startup trials.
    pub fn startup_trials(&self) -> u32 {
        self.startup_trials.unwrap_or(10)
    }

    /// TPE candidates per suggestion.
    pub fn candidates(&self) -> u32 {
        self.candidates.unwrap_or(24)
    }
}

/// Which pruner stops hopeless trials early, reading the objective metric's history by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrunerKind {
    /// Never prune.
    #[default]
    None,
    /// Prune when the best value so far is worse than the median of finished trials at the
    /// same step.
    Median,
    /// Like median, at a chosen percentile.
    Percentile,
    /// Asynchronous successive halving: at rungs of `min_steps * reduction_factor^k` steps,
    /// only the top `1 / reduction_factor` go on.
    Asha,
    /// Several ASHA brackets with different first rungs; trials are spread over them.
    Hyperband,
}

/// The pruner section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PrunerSpec {
    /// The pruner.
    #[serde(rename = "type", default)]
    pub kind: PrunerKind,
    /// Median and percentile: no decision before this step (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<i64>,
    /// Median and percentile: no decision before this many trials have completed (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_trials: Option<u32>,
    /// Percentile: the percentile to beat, 0 to 100 (default 25; lower prunes more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// ASHA and hyperband: the first rung, in steps (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_steps: Option<i64>,
    /// ASHA and hyperband: 1 in `reduction_factor` trials goes on at each rung (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduction_factor: Option<u32>,
    /// Hyperband: the steps of a full trial, which set the number of brackets (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<i64>,
}

impl PrunerSpec {
    /// Median and percentile warm-up steps.
    pub fn warmup_steps(&self) -> i64 {
        self.warmup_steps.unwrap_or(0)
    }
    /// Median and percentile startup trials.
    pub fn startup_trials(&self) -> u32 {
        self.startup_trials.unwrap_or(5)
    }
    /// The percentile of the percentile pruner (50 for median).
    pub fn percentile(&self) -> f64 {
        match self.kind {
            PrunerKind::Median => 50.0,
            _ => self.percentile.unwrap_or(25.0),
        }
    }
    /// ASHA and hyperband first rung.
    pub fn min_steps(&self) -> i64 {
        self.min_steps.unwrap_or(1)
    }
    /// ASHA and hyperband reduction factor.
    pub fn reduction_factor(&self) -> u32 {
        self.reduction_factor.unwrap_or(3)
    }

    fn validate(&self) -> Result<(), SpecError> {
        let field = |f: &str| format!("pruner.{f}");
        if self.warmup_steps.is_some_and(|w| w < 0) {
            return Err(err(field("warmup_steps"), "must be 0 or more"));
        }
        if let Some(p) = self.percentile
            && !(0.0..=100.0).contains(&p)
        {
            return Err(err(field("percentile"), "must be between 0 and 100"));
        }
        if self.min_steps.is_some_and(|m| m < 1) {
            return Err(err(field("min_steps"), "must be at least 1"));
        }
        if self.reduction_factor.is_some_and(|r| r < 2) {
            return Err(err(field("reduction_factor"), "must be at least 2"));
        }
        match (self.kind, self.max_steps) {
            (PrunerKind::Hyperband, None) => Err(err(
                field("max_steps"),
                "is required for hyperband: the steps of a trial that runs to the end",
            )),
            (PrunerKind::Hyperband, Some(max)) if max < self.min_steps() => Err(err(
                field("max_steps"),
                format!("must be at least min_steps ({})", self.min_steps()),
            )),
            _ => Ok(()),
        }
    }
}

/// A notebook run through papermill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotebookSpec {
    /// The notebook to execute.
    pub input: String,
    /// Where the executed notebook goes; `{trial}` and `{run_id}` are replaced.
    pub output: String,
}

/// What one trial needs of an agent's GPUs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// GPUs per trial: a whole number, or a fraction of one GPU's memory (`0.25`: four trials
    /// share a GPU). `0`: none (`CUDA_VISIBLE_DEVICES` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<f64>,
    /// GPU memory a trial needs on each of its GPUs, in GB (GiB, as `nvidia-smi` counts); the
    /// agent adds each process's CUDA context. Implies `gpus: 1` when `gpus` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_gb: Option<f64>,
}

impl Resources {
    /// How many GPUs a trial takes (a fraction takes part of one).
    pub fn gpu_count(&self) -> u32 {
        match (self.gpus, self.gpu_memory_gb) {
            (Some(g), _) if g >= 1.0 => g as u32,
            (Some(g), _) if g > 0.0 => 1,
            (Some(_), _) => 0,
            (None, Some(_)) => 1,
            (None, None) => 0,
        }
    }

    /// MiB a trial reserves on each of its GPUs, for a GPU with `capacity_mib` to share, a CUDA
    /// context of `overhead_mib` per process, after `ooms` out-of-memory exits (each one doubles
    /// it, up to the whole GPU). `None` when the GPU is too small for the trial at all.
    pub fn memory_mib(&self, capacity_mib: u64, overhead_mib: u64, ooms: u32) -> Option<u64> {
        let base = match (self.gpus, self.gpu_memory_gb) {
            (_, Some(gb)) => ((gb * 1024.0).ceil() as u64).saturating_add(overhead_mib),
            // Rounded down so that four quarters fill a GPU exactly.
            (Some(g), None) if g < 1.0 => (g * capacity_mib as f64).floor() as u64,
            _ => capacity_mib,
        };
        (base > 0 && base <= capacity_mib)
            .then(|| base.saturating_mul(1u64 << ooms.min(32)).min(capacity_mib))
    }

    fn validate(&self) -> Result<(), SpecError> {
        if let Some(g) = self.gpus
            && (!g.is_finite() || !(0.0..=64.0).contains(&g) || (g > 1.0 && g.fract() != 0.0))
        {
            return Err(err(
                "resources.gpus",
                "must be a whole number of GPUs (0 to 64) or a fraction of one below 1, like 0.25",
            ));
        }
        if let Some(m) = self.gpu_memory_gb {
            if !m.is_finite() || m <= 0.0 || m > 4096.0 {
                return Err(err("resources.gpu_memory_gb", "must be a number of GB above 0"));
            }
            if self.gpus.is_some_and(|g| g > 0.0 && g < 1.0) {
                return Err(err(
                    "resources.gpu_memory_gb",
                    "and a fractional gpus both say how much of a GPU a trial takes: give one",
                ));
            }
            if self.gpus == Some(0.0) {
                return Err(err("resources.gpu_memory_gb", "needs gpus above 0"));
            }
        }
        Ok(())
    }
}

/// A whole sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// A name for people.
    pub name: String,
    /// The MLflow experiment (created if missing); the sweep's name by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// The command run per trial, with `{param}` and `{args}` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Or a notebook run through papermill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebook: Option<NotebookSpec>,
    /// The search space, in order; `when` conditions may refer to any other parameter, without
    /// cycles.
    pub parameters: IndexMap<String, Distribution>,
    /// What to optimise.
    pub objective: Objective,
    /// The sampler.
    #[serde(default)]
    pub sampler: SamplerSpec,
    /// The pruner (none by default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub pruner: PrunerSpec,
    /// Trials to run at most.
    pub max_trials: u32,
    /// Trials running at once at most.
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
    /// Retries of a failed trial (preemptions do not count).
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// The pool whose agents run the trials.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Extra environment for the command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// What a trial needs of the agent's GPUs: agents pack trials onto GPUs by memory. Without
    /// it, an agent hands its GPUs to its slots in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// A shell command each agent runs once, before its first trial of the sweep (copying a
    /// dataset to local disk, say); a machine where it fails takes no more trials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    /// The code snapshot trials run in, `sha256:<hex>` of a tar.gz the daemon holds (the CLI
    /// packs a spec's `workdir` into one and uploads it); each trial runs in its own copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Where the trials' code came from (the CLI reads it from git); every trial's MLflow run
    /// carries it as `mlflow.source.*` tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// The version of the code a sweep runs, as the CLI found it when submitting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The git commit (`HEAD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The branch checked out (none on a detached head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The `origin` remote's URL, without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_url: Option<String>,
    /// Whether the working tree differed from the commit.
    #[serde(default)]
    pub dirty: bool,
    /// What was launched (`mlflow.source.name`): the spec file or the notebook, relative to the
    /// repository's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The notebook's sha256 (hex), for notebook sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebook_sha256: Option<String>,
    /// `git diff HEAD` of a dirty tree. The daemon keeps it as the sweep run's `diff.patch`
    /// artifact and drops it from the stored spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The diff was cut at the CLI's size limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diff_truncated: bool,
}

impl SweepSpec {
    /// The spec summarised as the params of the sweep's own MLflow run: its budget, sampler and
    /// objective. Few on purpose: MLflow's runs table shows the params of every run in the
    /// experiment as columns, and the trials' hyperparameters must stay in view; the whole spec
    /// is the run's `spec.json`.
    pub fn run_params(&self) -> Vec<(String, String)> {
        vec![
            ("max_trials".to_owned(), self.max_trials.to_string()),
            ("sampler".to_owned(), word(&self.sampler.kind)),
            ("objective".to_owned(), self.objective.metric.clone()),
            ("goal".to_owned(), word(&self.objective.goal)),
        ]
    }
}

/// The name an enum has in the spec (`tpe`, `minimize`).
fn word<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The longest value a source tag keeps (MLflow's tag values are bounded).
const MAX_SOURCE_TAG_CHARS: usize = 5000;

impl Source {
    /// The run tags MLflow's UI shows for a run's source (`mlflow.source.*`), and spotsweep's own
    /// (`spotsweep.source.dirty`, `spotsweep.notebook.sha256`). `notebook`: the sweep runs a
    /// notebook (`mlflow.source.type` NOTEBOOK; PROJECT for code in a git repository, LOCAL
    /// otherwise, as MLflow names them).
    pub fn tags(&self, notebook: bool) -> Vec<(&'static str, String)> {
        let kind = if notebook {
            "NOTEBOOK"
        } else if self.commit.is_some() {
            "PROJECT"
        } else {
            "LOCAL"
        };
        let mut tags = vec![("mlflow.source.type", kind.to_owned())];
        let mut push = |key: &'static str, value: &Option<String>| {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                tags.push((key, v.chars().take(MAX_SOURCE_TAG_CHARS).collect()));
            }
        };
        push("mlflow.source.name", &self.name);
        push("mlflow.source.git.commit", &self.commit);
        push("mlflow.source.git.branch", &self.branch);
        push("mlflow.source.git.repoURL", &self.repo_url);
        push("spotsweep.notebook.sha256", &self.notebook_sha256);
        if self.commit.is_some() {
            tags.push(("spotsweep.source.dirty", self.dirty.to_string()));
        }
        tags
    }
}

/// The hex digest of a code snapshot id (`sha256:` and 64 lowercase hex digits), `None` when
/// `id` is not one.
pub fn code_digest(id: &str) -> Option<&str> {
    let hex = id.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_parallelism() -> u32 {
    1
}
fn default_retries() -> u32 {
    3
}
fn default_pool() -> String {
    "local".into()
}

/// A spec that cannot run: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct SpecError {
    /// The field's path, e.g. `parameters.lr.low`.
    pub field: String,
    /// What is wrong, e.g. `must be > 0 when log is true`.
    pub problem: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Most values a grid may enumerate for one parameter.
pub const MAX_GRID_VALUES: u64 = 100_000;

impl SweepSpec {
    /// The experiment name, defaulting to the sweep's name.
    pub fn experiment_name(&self) -> &str {
        self.experiment.as_deref().unwrap_or(&self.name)
    }

    /// Checks everything a sweep needs before it is stored. Returns the first problem found.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.trim().is_empty() {
            return Err(err("name", "must not be empty"));
        }
        match (&self.command, &self.notebook) {
            (Some(_), Some(_)) => return Err(err("command", "and notebook are exclusive: give one")),
            (None, None) => return Err(err("command", "is required (or notebook: {input, output})")),
            (Some(c), None) if c.trim().is_empty() => return Err(err("command", "must not be empty")),
            _ => {}
        }
        if self.parameters.is_empty() {
            return Err(err("parameters", "must define at least one parameter"));
        }
        for (index, (name, dist)) in self.parameters.iter().enumerate() {
            validate_parameter(name, dist, &self.parameters, index)?;
        }
        if let Some(command) = &self.command {
            for placeholder in placeholders(command) {
                if placeholder != "args"
                    && placeholder != "trial"
                    && !self.parameters.contains_key(placeholder)
                {
                    return Err(err(
                        "command",
                        format!(
                            "uses {{{placeholder}}}, which is not a parameter (nor {{args}} or {{trial}})"
                        ),
                    ));
                }
            }
        }
        if self.objective.metric.trim().is_empty() {
            return Err(err("objective.metric", "must name the MLflow metric to optimise"));
        }
        if self.max_trials == 0 {
            return Err(err("max_trials", "must be at least 1"));
        }
        if self.parallelism == 0 {
            return Err(err("parallelism", "must be at least 1"));
        }
        if self.pool.trim().is_empty() {
            return Err(err("pool", "must not be empty"));
        }
        if self.sampler.kind == SamplerKind::Grid {
            for (name, dist) in &self.parameters {
                grid_values(name, dist)?;
            }
        }
        if self.sampler.kind != SamplerKind::Tpe
            && (self.sampler.startup_trials.is_some() || self.sampler.candidates.is_some())
        {
            return Err(err(
                "sampler",
                "startup_trials and candidates apply to type: tpe only",
            ));
        }
        if self.sampler.shuffle && self.sampler.kind != SamplerKind::Grid {
            return Err(err("sampler.shuffle", "applies to type: grid only"));
        }
        if self.sampler.candidates == Some(0) || self.sampler.candidates.is_some_and(|c| c > 10_000) {
            return Err(err("sampler.candidates", "must be between 1 and 10000"));
        }
        if let Some(r) = &self.resources {
            r.validate()?;
        }
        if self.setup.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(err("setup", "is empty; remove it or give a shell command"));
        }
        if let Some(code) = &self.code
            && code_digest(code).is_none()
        {
            return Err(err(
                "code",
                "must be sha256:<64 lowercase hex digits>, the id of a snapshot uploaded with PUT /api/v1/code/{id}",
            ));
        }
        self.pruner.validate()
    }
}

fn validate_parameter(
    name: &str,
    dist: &Distribution,
    all: &IndexMap<String, Distribution>,
    index: usize,
) -> Result<(), SpecError> {
    let field = |f: &str| format!("parameters.{name}.{f}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(err(
            format!("parameters.{name}"),
            "has an invalid name: use letters, digits, '_', '-' and '.'",
        ));
    }
    if name == "args" || name == "trial" {
        return Err(err(
            format!("parameters.{name}"),
            "is a reserved name ({args} and {trial} are placeholders)",
        ));
    }
    match dist {
        Distribution::Float {
            low, high, log, step, ..
        } => {
            if !low.is_finite() || !high.is_finite() {
                return Err(err(field("low"), "and high must be finite numbers"));
            }
            if low > high {
                return Err(err(field("low"), format!("must be <= high ({low} > {high})")));
            }
            // Samplers work on the width and on values half a step outside the bounds.
            if !(high - low).is_finite() {
                return Err(err(
                    field("high"),
                    format!("- low must be a finite number; [{low}, {high}] is wider than a float can hold"),
                ));
            }
            if *log && *low <= 0.0 {
                return Err(err(field("low"), "must be > 0 when log is true"));
            }
            if let Some(step) = step {
                if !(step.is_finite() && *step > 0.0) {
                    return Err(err(field("step"), "must be a positive number"));
                }
                if *log {
                    return Err(err(field("step"), "cannot be combined with log: true"));
                }
                if !((high + step / 2.0) - (low - step / 2.0)).is_finite() {
                    return Err(err(
                        field("step"),
                        "is too large for a float next to these bounds",
                    ));
                }
                if (high - low) / step > MAX_EXACT_INT as f64 {
                    return Err(err(
                        field("step"),
                        format!("is too small: the range would have more than 2^53 steps ({MAX_EXACT_INT})"),
                    ));
                }
            }
        }
        Distribution::Int {
            low, high, log, step, ..
        } => {
            // Samplers compute in floats: beyond 2^53 integers are not exact there, and the
            // width of the range must fit an i64.
            for (name, value) in [("low", low), ("high", high)] {
                if value.unsigned_abs() > MAX_EXACT_INT as u64 {
                    return Err(err(
                        field(name),
                        format!(
                            "must be between -2^53 and 2^53 ({MAX_EXACT_INT}), the integers a float holds exactly"
                        ),
                    ));
                }
            }
            if low > high {
                return Err(err(field("low"), format!("must be <= high ({low} > {high})")));
            }
            if *log && *low < 1 {
                return Err(err(field("low"), "must be >= 1 when log is true"));
            }
            if let Some(step) = step {
                if *step < 1 || *step > MAX_EXACT_INT {
                    return Err(err(
                        field("step"),
                        format!("must be a positive integer up to 2^53 ({MAX_EXACT_INT})"),
                    ));
                }
                if *log && *step != 1 {
                    return Err(err(field("step"), "cannot be combined with log: true"));
                }
            }
        }
        Distribution::Categorical { choices, .. } => {
            if choices.is_empty() {
                return Err(err(field("choices"), "must list at least one choice"));
            }
            // A set, not a scan of the choices before each: a spec may list 100,000 of them.
            let mut seen = std::collections::HashSet::with_capacity(choices.len());
            for c in choices {
                if !seen.insert(choice_key(c)) {
                    return Err(err(field("choices"), format!("lists {c} twice")));
                }
                if matches!(c, ParamValue::Float(x) if !x.is_finite()) {
                    return Err(err(
                        field("choices"),
                        "must be finite numbers, strings or booleans",
                    ));
                }
            }
        }
    }
    if let Some(when) = dist.when() {
        if when.is_empty() {
            return Err(err(field("when"), "must name at least one parameter"));
        }
        for (other, values) in when {
            let Some(pos) = all.get_index_of(other) else {
                return Err(err(
                    field("when"),
                    format!("refers to '{other}', which is not a parameter"),
                ));
            };
            if depends_on(all, pos, index, &mut vec![false; all.len()]) {
                return Err(err(
                    field("when"),
                    format!("refers to '{other}', whose own condition depends on '{name}' (a cycle)"),
                ));
            }
            if let (Distribution::Categorical { choices, .. }, _) = (&all[pos], values) {
                let listed: Vec<&ParamValue> = match values {
                    OneOrMany::One(v) => vec![v],
                    OneOrMany::Many(vs) => vs.iter().collect(),
                };
                if let Some(missing) = listed.iter().find(|v| !choices.contains(v)) {
                    return Err(err(
                        format!("parameters.{name}.when.{other}"),
                        format!("{missing} is not one of the choices of '{other}'"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The largest integer magnitude a parameter may have: every integer up to 2^53 is exact in an
/// `f64`, which samplers compute in.
pub const MAX_EXACT_INT: i64 = 1 << 53;

/// What makes two choices equal (as `ParamValue`'s `==` does: `0.0 == -0.0`), hashable.
fn choice_key(c: &ParamValue) -> (u8, u64, &str) {
    match c {
        ParamValue::Bool(b) => (0, u64::from(*b), ""),
        ParamValue::Int(i) => (1, *i as u64, ""),
        ParamValue::Float(x) => (2, if *x == 0.0 { 0 } else { x.to_bits() }, ""),
        ParamValue::Str(s) => (3, 0, s),
    }
}

/// Whether parameter `from` is conditional, directly or through others, on parameter `target`.
fn depends_on(
    all: &IndexMap<String, Distribution>,
    from: usize,
    target: usize,
    seen: &mut Vec<bool>,
) -> bool {
    if from == target {
        return true;
    }
    if std::mem::replace(&mut seen[from], true) {
        return false;
    }
    all[from].when().is_some_and(|when| {
        when.keys()
            .filter_map(|k| all.get_index_of(k))
            .any(|next| depends_on(all, next, target, seen))
    })
}

/// Every value a grid takes for one parameter, in order.
pub fn grid_values(name: &str, dist: &Distribution) -> Result<Vec<ParamValue>, SpecError> {
    match dist {
        Distribution::Categorical { choices, .. } => Ok(choices.clone()),
        Distribution::Int { low, high, step, .. } => {
            let step = step.unwrap_or(1).max(1);
            let count = (high.saturating_sub(*low) / step)
                .unsigned_abs()
                .saturating_add(1);
            if count > MAX_GRID_VALUES {
                return Err(err(
                    format!("parameters.{name}"),
                    format!("has {count} grid values; a grid allows at most {MAX_GRID_VALUES}: add a step"),
                ));
            }
            Ok((0..count as i64)
                .map(|k| ParamValue::Int(low + k * step))
                .collect())
        }
        Distribution::Float {
            low,
            high,
            step: Some(step),
            ..
        } => {
            // `as u64` saturates (and maps NaN to 0): an unvalidated range cannot overflow here.
            let count = (((high - low) / step + 1e-9).floor() as u64).saturating_add(1);
            if count > MAX_GRID_VALUES {
                return Err(err(
                    format!("parameters.{name}.step"),
                    format!("gives {count} grid values; a grid allows at most {MAX_GRID_VALUES}"),
                ));
            }
            Ok((0..count)
                .map(|k| ParamValue::Float(quantize(low + k as f64 * step, *low, *step)))
                .collect())
        }
        Distribution::Float { .. } => Err(err(
            format!("parameters.{name}"),
            "is a float without step: a grid needs a step (or make it categorical)",
        )),
    }
}

/// `low + k * step` for the `k` nearest to `x`, rounded to the step's decimals so that
/// `0.1 + 2 * 0.1` is written `0.3`, not `0.30000000000000004`.
pub fn quantize(x: f64, low: f64, step: f64) -> f64 {
    let k = ((x - low) / step).round().max(0.0);
    let raw = low + k * step;
    let decimals = decimals_of(step).max(decimals_of(low));
    let scale = 10f64.powi(decimals as i32);
    let rounded = (raw * scale).round() / scale;
    // Near the top of the float range the scaled value overflows, and a `low` with more
    // decimals than 15 rounds below itself: keep the unrounded value then.
    if rounded.is_finite() && rounded >= low {
        rounded
    } else {
        raw
    }
}

fn decimals_of(x: f64) -> u32 {
    let text = format!("{x}");
    match text.split_once('.') {
        Some((_, frac)) if !text.contains('e') => frac.len() as u32,
        _ => 0,
    }
    .min(15)
}

/// The `{name}` placeholders of a command template.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c)) {
                    out.push(name);
                }
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    out
}

/// Checks parameters given by hand (an enqueued trial): every active parameter has a value
/// that fits its distribution, and nothing else is given.
pub fn validate_params(spec: &SweepSpec, params: &IndexMap<String, ParamValue>) -> Result<(), SpecError> {
    for name in params.keys() {
        if !spec.parameters.contains_key(name) {
            return Err(err(format!("params.{name}"), "is not a parameter of this sweep"));
        }
    }
    let values: Vec<Option<&ParamValue>> = spec.parameters.keys().map(|k| params.get(k)).collect();
    for (i, (name, dist)) in spec.parameters.iter().enumerate() {
        let active = dist.when().is_none_or(|when| {
            when.iter().all(|(other, allowed)| {
                spec.parameters
                    .get_index_of(other)
                    .and_then(|j| values[j])
                    .is_some_and(|v| allowed.contains(v))
            })
        });
        let field = format!("params.{name}");
        match (active, values[i]) {
            (true, None) => return Err(err(field, "is missing")),
            (false, Some(_)) => {
                return Err(err(
                    field,
                    "is given but inactive (its `when` condition does not hold)",
                ));
            }
            (false, None) => {}
            (true, Some(value)) => {
                let fits = match (dist, value) {
                    (Distribution::Float { low, high, .. }, ParamValue::Float(x)) => low <= x && x <= high,
                    (Distribution::Float { low, high, .. }, ParamValue::Int(x)) => {
                        *low <= *x as f64 && *x as f64 <= *high
                    }
                    (Distribution::Int { low, high, .. }, ParamValue::Int(x)) => low <= x && x <= high,
                    (Distribution::Categorical { choices, .. }, v) => choices.contains(v),
                    _ => false,
                };
                if !fits {
                    return Err(err(field, format!("= {value} is outside its distribution")));
                }
            }
        }
    }
    Ok(())
}
