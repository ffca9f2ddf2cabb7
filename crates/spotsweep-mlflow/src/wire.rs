//! MLflow's JSON shapes, with MLflow's field names. Responses omit empty repeated fields and
//! unset optional fields, emit int64 as JSON numbers and NaN as the string `"NaN"`, as the
//! reference server does.

use serde::{Deserialize, Serialize, Serializer};
use spotsweep_store::{DatasetInput, Experiment, KeyValue, Metric, Run, RunInfo};

use crate::extract::{lenient_f64, lenient_i64};

/// `{key, value}` for params and tags, in both directions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyValueJson {
    /// The key.
    #[serde(default)]
    pub key: Option<String>,
    /// The value.
    #[serde(default, deserialize_with = "crate::extract::lenient_string")]
    pub value: Option<String>,
}

impl From<&KeyValue> for KeyValueJson {
    fn from(kv: &KeyValue) -> Self {
        Self {
            key: Some(kv.key.clone()),
            value: Some(kv.value.clone()),
        }
    }
}

/// A metric point as sent by the client.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricIn {
    /// The key.
    #[serde(default)]
    pub key: Option<String>,
    /// The value (number, numeric string, NaN, ±Infinity).
    #[serde(default, deserialize_with = "lenient_f64")]
    pub value: Option<f64>,
    /// Milliseconds since the epoch.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub timestamp: Option<i64>,
    /// The step (default 0).
    #[serde(default, deserialize_with = "lenient_i64")]
    pub step: Option<i64>,
    /// The logged model the point is about (MLflow 3); the point is also stored with it.
    #[serde(default)]
    pub model_id: Option<String>,
    /// The dataset the value was computed on (kept with the model's copy).
    #[serde(default)]
    pub dataset_name: Option<String>,
    /// That dataset's digest.
    #[serde(default)]
    pub dataset_digest: Option<String>,
}

pub(crate) fn serialize_metric_value<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    if value.is_nan() {
        s.serialize_str("NaN")
    } else if value.is_infinite() {
        s.serialize_str(if *value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(*value)
    }
}

/// A metric point as answered.
#[derive(Debug, Clone, Serialize)]
pub struct MetricJson {
    /// The key.
    pub key: String,
    /// The value; NaN as `"NaN"`.
    #[serde(serialize_with = "serialize_metric_value")]
    pub value: f64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The step.
    pub step: i64,
    /// The run, in bulk-history answers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl From<&Metric> for MetricJson {
    fn from(m: &Metric) -> Self {
        Self {
            key: m.key.clone(),
            value: m.value,
            timestamp: m.timestamp,
            step: m.step,
            run_id: None,
        }
    }
}

/// An experiment.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentJson {
    /// Decimal string.
    pub experiment_id: String,
    /// The name.
    pub name: String,
    /// Where its runs' artifacts live.
    pub artifact_location: String,
    /// `active` or `deleted`.
    pub lifecycle_stage: &'static str,
    /// Milliseconds since the epoch.
    pub last_update_time: i64,
    /// Milliseconds since the epoch.
    pub creation_time: i64,
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<KeyValueJson>,
}

impl From<&Experiment> for ExperimentJson {
    fn from(e: &Experiment) -> Self {
        Self {
            experiment_id: e.experiment_id.to_string(),
            name: e.name.clone(),
            artifact_location: e.artifact_location.clone(),
            lifecycle_stage: e.lifecycle_stage.as_str(),
            last_update_time: e.last_update_time,
            creation_time: e.creation_time,
            tags: e.tags.iter().map(Into::into).collect(),
        }
    }
}

/// A run's metadata, with both `run_id` and the legacy `run_uuid`.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfoJson {
    /// The run id.
    pub run_id: String,
    /// The same id, under its legacy name.
    pub run_uuid: String,
    /// The name.
    pub run_name: String,
    /// Decimal string.
    pub experiment_id: String,
    /// The user.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    /// `RUNNING`, `FINISHED`, ...
    pub status: &'static str,
    /// Milliseconds since the epoch.
    pub start_time: i64,
    /// Milliseconds since the epoch, once ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    /// Where its artifacts live.
    pub artifact_uri: String,
    /// `active` or `deleted`.
    pub lifecycle_stage: &'static str,
}

impl From<&RunInfo> for RunInfoJson {
    fn from(i: &RunInfo) -> Self {
        Self {
            run_id: i.run_id.clone(),
            run_uuid: i.run_id.clone(),
            run_name: i.run_name.clone(),
            experiment_id: i.experiment_id.to_string(),
            user_id: i.user_id.clone(),
            status: i.status.as_str(),
            start_time: i.start_time,
            end_time: i.end_time,
            artifact_uri: i.artifact_uri.clone(),
            lifecycle_stage: i.lifecycle_stage.as_str(),
        }
    }
}

/// A run's data.
#[derive(Debug, Clone, Serialize)]
pub struct RunDataJson {
    /// Latest value per metric key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricJson>,
    /// Params.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<KeyValueJson>,
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<KeyValueJson>,
}

/// A dataset as it appears in a run's inputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetJson {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Digest.
    #[serde(default)]
    pub digest: Option<String>,
    /// Source type.
    #[serde(default)]
    pub source_type: Option<String>,
    /// Source (JSON text).
    #[serde(default)]
    pub source: Option<String>,
    /// Schema (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Profile (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// One dataset input of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInputJson {
    /// Input tags (e.g. `mlflow.data.context`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<KeyValueJson>,
    /// The dataset.
    #[serde(default)]
    pub dataset: Option<DatasetJson>,
}

impl From<&DatasetInput> for DatasetInputJson {
    fn from(d: &DatasetInput) -> Self {
        Self {
            tags: d.tags.iter().map(Into::into).collect(),
            dataset: Some(DatasetJson {
                name: Some(d.name.clone()),
                digest: Some(d.digest.clone()),
                source_type: Some(d.source_type.clone()),
                source: Some(d.source.clone()),
                schema: d.schema.clone(),
                profile: d.profile.clone(),
            }),
        }
    }
}

/// A run's inputs.
#[derive(Debug, Clone, Serialize)]
pub struct RunInputsJson {
    /// Dataset inputs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dataset_inputs: Vec<DatasetInputJson>,
    /// Logged models the run consumed (MLflow 3).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_inputs: Vec<ModelInputJson>,
}

/// A logged model a run consumed.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInputJson {
    /// The model.
    pub model_id: String,
}

/// A logged model a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct ModelOutputJson {
    /// The model.
    pub model_id: String,
    /// The step it was logged at.
    pub step: i64,
}

/// A run's outputs.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutputsJson {
    /// Logged models the run produced (MLflow 3).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_outputs: Vec<ModelOutputJson>,
}

/// A run.
#[derive(Debug, Clone, Serialize)]
pub struct RunJson {
    /// Metadata.
    pub info: RunInfoJson,
    /// Data.
    pub data: RunDataJson,
    /// Inputs.
    pub inputs: RunInputsJson,
    /// Outputs.
    pub outputs: RunOutputsJson,
}

impl RunJson {
    /// With the models the run consumed and produced (MLflow 3), which `runs/get` shows.
    pub fn with_models(mut self, models: spotsweep_store::RunModels) -> Self {
        self.inputs.model_inputs = models
            .inputs
            .into_iter()
            .map(|model_id| ModelInputJson { model_id })
            .collect();
        self.outputs.model_outputs = models
            .outputs
            .into_iter()
            .map(|(model_id, step)| ModelOutputJson { model_id, step })
            .collect();
        self
    }
}

impl From<&Run> for RunJson {
    fn from(r: &Run) -> Self {
        Self {
            info: (&r.info).into(),
            data: RunDataJson {
                metrics: r.metrics.iter().map(Into::into).collect(),
                params: r.params.iter().map(Into::into).collect(),
                tags: r.tags.iter().map(Into::into).collect(),
            },
            inputs: RunInputsJson {
                dataset_inputs: r.inputs.iter().map(Into::into).collect(),
                model_inputs: Vec::new(),
            },
            outputs: RunOutputsJson {
                model_outputs: Vec::new(),
            },
        }
    }
}
