//! `spotsweep notebook NB -o OUT -p parameters.yml -j N`: a notebook sweep from a parameters
//! file, in one line.
//!
//! The parameters file is YAML: either a sweep spec fragment with a `parameters` key (and any
//! other spec keys: `objective`, `sampler`, `max_trials`, `name`, ...), or just the parameters.
//! Each parameter is a distribution as in a sweep spec (`{type: float, low: 0, high: 1}`), a list
//! of values to try, or one fixed value. When every parameter is a list or a fixed value and no
//! sampler is given, the sweep is the grid of them all.

use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value, json};

/// What the command line says beside the parameters file.
#[derive(Debug, Clone)]
pub struct NotebookJob<'a> {
    /// The notebook to run.
    pub input: &'a Path,
    /// Where each executed copy goes; `{trial}` and `{run_id}` are replaced.
    pub output: &'a str,
    /// Trials at once.
    pub jobs: u32,
    /// The objective metric (unless the file names one).
    pub metric: &'a str,
    /// `minimize` or `maximize` (unless the file says).
    pub goal: &'a str,
    /// Trials in all (default: the grid's size, or 20 for a search).
    pub max_trials: Option<u32>,
}

/// The sweep spec for `job` with the parameters file's contents.
pub fn spec(job: &NotebookJob<'_>, parameters_yaml: &str) -> anyhow::Result<Value> {
    let doc: Value =
        serde_yaml::from_str(parameters_yaml).context("the parameters file is not valid YAML")?;
    let Value::Object(doc) = doc else {
        anyhow::bail!(
            "the parameters file must be a mapping: parameter names to values, lists or distributions"
        );
    };
    let mut spec: Map<String, Value> = if doc.contains_key("parameters") {
        doc
    } else {
        let mut m = Map::new();
        m.insert("parameters".into(), Value::Object(doc));
        m
    };
    let Some(Value::Object(params)) = spec.remove("parameters") else {
        anyhow::bail!("`parameters` must be a mapping of parameter names");
    };
    let mut grid = true;
    let mut grid_size: u64 = 1;
    let mut space = Map::new();
    for (name, value) in params {
        let dist = match value {
            Value::Object(d) if d.contains_key("type") => {
                grid = false;
                Value::Object(d)
            }
            Value::Array(choices) => {
                if choices.is_empty() {
                    anyhow::bail!("parameter '{name}': the list of values is empty");
                }
                grid_size = grid_size.saturating_mul(choices.len() as u64);
                json!({"type": "categorical", "choices": choices})
            }
            Value::Object(_) => anyhow::bail!(
                "parameter '{name}': a mapping needs a `type` (float, int or categorical), as in {{type: float, low: 0, high: 1}}"
            ),
            Value::Null => anyhow::bail!("parameter '{name}' has no value"),
            fixed => json!({"type": "categorical", "choices": [fixed]}),
        };
        space.insert(name, dist);
    }
    spec.insert("parameters".into(), Value::Object(space));
    let stem = job
        .input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "notebook".into());
    spec.entry("name").or_insert_with(|| json!(stem));
    let input = std::path::absolute(job.input).context("the notebook's path")?;
    let output = std::path::absolute(job.output).context("the output path")?;
    spec.insert(
        "notebook".into(),
        json!({"input": input.display().to_string(), "output": output.display().to_string()}),
    );
    spec.entry("objective")
        .or_insert_with(|| json!({"metric": job.metric, "goal": job.goal}));
    let grid = grid && !spec.contains_key("sampler");
    if grid {
        spec.insert("sampler".into(), json!({"type": "grid"}));
    }
    let default_trials = if grid {
        grid_size.min(u64::from(u32::MAX)) as u32
    } else {
        20
    };
    let max_trials = job.max_trials.unwrap_or(default_trials);
    spec.entry("max_trials").or_insert_with(|| json!(max_trials));
    spec.insert("parallelism".into(), json!(job.jobs.max(1)));
    Ok(Value::Object(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(max_trials: Option<u32>) -> NotebookJob<'static> {
        NotebookJob {
            input: Path::new("/nb/Test.ipynb"),
            output: "/out/Test.{run_id}.ipynb",
            jobs: 8,
            metric: "loss",
            goal: "minimize",
            max_trials,
        }
    }

    #[test]
    fn lists_and_fixed_values_make_a_grid() {
        let s = spec(&job(None), "lr: [0.1, 0.01]\nlayers: [1, 2, 3]\nepochs: 5\n").unwrap();
        assert_eq!(s["sampler"]["type"], "grid");
        assert_eq!(s["max_trials"], 6);
        assert_eq!(s["parallelism"], 8);
        assert_eq!(s["name"], "Test");
        assert_eq!(
            s["parameters"]["epochs"],
            json!({"type": "categorical", "choices": [5]})
        );
        assert_eq!(s["notebook"]["output"], "/out/Test.{run_id}.ipynb");
        assert_eq!(s["objective"], json!({"metric": "loss", "goal": "minimize"}));
        // The spec is valid as the daemon will check it.
        let parsed: spotsweep_core::sweep::SweepSpec = serde_json::from_value(s).unwrap();
        parsed.validate().unwrap();
    }

    #[test]
    fn distributions_make_a_search_and_a_fragment_keeps_its_keys() {
        let s = spec(
            &job(Some(12)),
            "x: {type: float, low: 0, high: 1}\nopt: [sgd, adam]\n",
        )
        .unwrap();
        assert!(s.get("sampler").is_none());
        assert_eq!(s["max_trials"], 12);
        let s = spec(
            &job(None),
            "name: mine\nobjective: {metric: acc, goal: maximize}\nsampler: {type: tpe}\nparameters:\n  a: [1, 2]\n",
        )
        .unwrap();
        assert_eq!(s["name"], "mine");
        assert_eq!(s["objective"]["metric"], "acc");
        assert_eq!(s["sampler"]["type"], "tpe");
        assert_eq!(s["max_trials"], 20);
    }

    #[test]
    fn mistakes_are_named() {
        assert!(
            spec(&job(None), "- a\n- b\n")
                .unwrap_err()
                .to_string()
                .contains("mapping")
        );
        assert!(
            spec(&job(None), "a: []\n")
                .unwrap_err()
                .to_string()
                .contains("'a'")
        );
        assert!(
            spec(&job(None), "a: {low: 1}\n")
                .unwrap_err()
                .to_string()
                .contains("`type`")
        );
        assert!(spec(&job(None), "a:\n").unwrap_err().to_string().contains("'a'"));
        assert!(
            spec(&job(None), "a: [1\n")
                .unwrap_err()
                .to_string()
                .contains("YAML")
        );
    }
}
