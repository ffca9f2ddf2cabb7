//! Handlers of the tracking API: experiments, runs, metrics.

use axum::Json;
use axum::extract::State;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use spotsweep_core::search::{
    RunOrderBy, parse_experiment_filter, parse_experiment_order_by, parse_run_filter, parse_run_order_by,
};
use spotsweep_store::{
    Batch, DatasetInput, ExperimentQuery, KeyValue, LifecycleStage, Metric, NewExperiment, NewRun, RunQuery,
    RunStatus, RunUpdate, ViewType,
};

use crate::MlflowState;
use crate::error::{MlflowError, MlflowResult};
use crate::extract::{Mlflow, RunRef, lenient_i64, lenient_string, one_or_many};
use crate::validation::*;
use crate::wire::*;

type JsonResult = MlflowResult<Json<Value>>;

pub(crate) fn required<'a>(value: &'a Option<String>, field: &str) -> MlflowResult<&'a str> {
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| MlflowError::missing(field))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn empty() -> JsonResult {
    Ok(Json(json!({})))
}

/// One page of results, serialised straight from the wire structs: `{"<field>": [...],
/// "next_page_token": "..."}`, each key omitted when empty, as the reference does.
pub struct Paged<T> {
    field: &'static str,
    items: Vec<T>,
    next_page_token: Option<String>,
}

impl<T> Paged<T> {
    pub(crate) fn new(field: &'static str, items: Vec<T>, next_offset: Option<u64>) -> Self {
        Self {
            field,
            items,
            next_page_token: next_offset.map(encode_page_token),
        }
    }
}

impl<T: serde::Serialize> serde::Serialize for Paged<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if !self.items.is_empty() {
            map.serialize_entry(self.field, &self.items)?;
        }
        if let Some(token) = &self.next_page_token {
            map.serialize_entry("next_page_token", token)?;
        }
        map.end()
    }
}

/// Page tokens are opaque to clients: base64 of `{"offset": N}`, like the reference's.
pub(crate) fn encode_page_token(offset: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(json!({ "offset": offset }).to_string())
}

pub(crate) fn decode_page_token(token: Option<&str>) -> MlflowResult<u64> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(0);
    };
    let bad = || {
        MlflowError::invalid(format!(
            "Invalid page token '{token}': pass back a next_page_token as received."
        ))
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    value.get("offset").and_then(Value::as_u64).ok_or_else(bad)
}

fn view_type(value: Option<&str>) -> ViewType {
    match value {
        Some("DELETED_ONLY") | Some("2") => ViewType::DeletedOnly,
        Some("ALL") | Some("3") => ViewType::All,
        _ => ViewType::ActiveOnly,
    }
}

fn max_results(value: Option<i64>, default: Option<i64>) -> MlflowResult<u32> {
    let value = match value.or(default) {
        Some(v) => v,
        None => {
            return Err(MlflowError::invalid(
                "Invalid value 0 for parameter 'max_results' supplied: it must be a positive integer",
            ));
        }
    };
    if value <= 0 {
        return Err(MlflowError::invalid(format!(
            "Invalid value {value} for parameter 'max_results' supplied: it must be a positive integer"
        )));
    }
    if value > MAX_SEARCH_RESULTS {
        return Err(MlflowError::invalid(format!(
            "Invalid value {value} for parameter 'max_results' supplied. It must be at most {MAX_SEARCH_RESULTS}"
        )));
    }
    Ok(value as u32)
}

fn tags_in(tags: Vec<KeyValueJson>, max_value: usize) -> MlflowResult<Vec<KeyValue>> {
    tags.into_iter()
        .map(|t| {
            let key = t.key.unwrap_or_default();
            validate_key(KeyKind::Tag, &key)?;
            Ok(KeyValue {
                key,
                value: truncate(t.value.unwrap_or_default(), max_value),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Experiments

/// `experiments/create`
#[derive(Deserialize)]
pub struct CreateExperiment {
    name: Option<String>,
    artifact_location: Option<String>,
    #[serde(default)]
    tags: Vec<KeyValueJson>,
}

/// Creates an experiment.
pub async fn create_experiment(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<CreateExperiment>,
) -> JsonResult {
    let name = required(&req.name, "name")?;
    validate_experiment_name(name)?;
    let mut tags = Vec::with_capacity(req.tags.len());
    for t in req.tags {
        let key = t.key.unwrap_or_default();
        validate_key(KeyKind::Tag, &key)?;
        let value = t.value.unwrap_or_default();
        if value.chars().count() > MAX_EXPERIMENT_TAG_VALUE_LEN {
            return Err(MlflowError::invalid(format!(
                "Experiment tag '{key}' has a value longer than {MAX_EXPERIMENT_TAG_VALUE_LEN} characters"
            )));
        }
        tags.push(KeyValue { key, value });
    }
    let id = s
        .store
        .create_experiment(NewExperiment {
            name: name.to_owned(),
            artifact_location: req.artifact_location,
            artifact_root: s.default_artifact_root.clone(),
            tags,
            now: now_ms(),
        })
        .await?;
    Ok(Json(json!({ "experiment_id": id.to_string() })))
}

/// `experiments/get`
#[derive(Deserialize)]
pub struct GetExperiment {
    #[serde(default, deserialize_with = "lenient_string")]
    experiment_id: Option<String>,
}

/// Gets an experiment by id.
pub async fn get_experiment(State(s): State<MlflowState>, Mlflow(req): Mlflow<GetExperiment>) -> JsonResult {
    let id = parse_experiment_id(required(&req.experiment_id, "experiment_id")?)?;
    let exp = s.store.get_experiment(id).await?;
    Ok(Json(json!({ "experiment": ExperimentJson::from(&exp) })))
}

/// `experiments/get-by-name`
#[derive(Deserialize)]
pub struct GetExperimentByName {
    experiment_name: Option<String>,
}

/// Gets an experiment by name (404 if absent, which the client takes as "create it").
pub async fn get_experiment_by_name(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<GetExperimentByName>,
) -> JsonResult {
    let name = required(&req.experiment_name, "experiment_name")?;
    let exp = s.store.get_experiment_by_name(name).await?;
    Ok(Json(json!({ "experiment": ExperimentJson::from(&exp) })))
}

/// `experiments/search`
#[derive(Deserialize)]
pub struct SearchExperiments {
    #[serde(default, deserialize_with = "lenient_i64")]
    max_results: Option<i64>,
    filter: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    order_by: Vec<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    view_type: Option<String>,
    page_token: Option<String>,
}

/// Searches experiments.
pub async fn search_experiments(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<SearchExperiments>,
) -> MlflowResult<Json<Paged<ExperimentJson>>> {
    let limit = max_results(req.max_results, None)?;
    let filter = parse_experiment_filter(req.filter.as_deref().unwrap_or(""))
        .map_err(|e| MlflowError::invalid(e.0))?;
    let mut order_by = Vec::new();
    for entry in &req.order_by {
        let o = parse_experiment_order_by(entry).map_err(|e| MlflowError::invalid(e.0))?;
        if order_by
            .iter()
            .any(|x: &spotsweep_core::search::ExperimentOrderBy| x.key == o.key)
        {
            return Err(MlflowError::invalid(format!(
                "`order_by` contains duplicate fields: '{entry}'"
            )));
        }
        order_by.push(o);
    }
    let page = s
        .store
        .search_experiments(&ExperimentQuery {
            filter,
            order_by,
            view: view_type(req.view_type.as_deref()),
            limit,
            offset: decode_page_token(req.page_token.as_deref())?,
        })
        .await?;
    let items: Vec<ExperimentJson> = page.items.iter().map(Into::into).collect();
    Ok(Json(Paged::new("experiments", items, page.next_offset)))
}

/// `experiments/update`
#[derive(Deserialize)]
pub struct UpdateExperiment {
    #[serde(default, deserialize_with = "lenient_string")]
    experiment_id: Option<String>,
    new_name: Option<String>,
}

/// Renames an experiment.
pub async fn update_experiment(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<UpdateExperiment>,
) -> JsonResult {
    let id = parse_experiment_id(required(&req.experiment_id, "experiment_id")?)?;
    if let Some(name) = req.new_name.as_deref().filter(|n| !n.is_empty()) {
        validate_experiment_name(name)?;
        s.store.rename_experiment(id, name).await?;
    }
    empty()
}

/// Soft-deletes an experiment and its runs.
pub async fn delete_experiment(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<GetExperiment>,
) -> JsonResult {
    let id = parse_experiment_id(required(&req.experiment_id, "experiment_id")?)?;
    s.store
        .set_experiment_lifecycle(id, LifecycleStage::Deleted)
        .await?;
    empty()
}

/// Restores an experiment and its runs.
pub async fn restore_experiment(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<GetExperiment>,
) -> JsonResult {
    let id = parse_experiment_id(required(&req.experiment_id, "experiment_id")?)?;
    s.store
        .set_experiment_lifecycle(id, LifecycleStage::Active)
        .await?;
    empty()
}

/// `experiments/set-experiment-tag` and `delete-experiment-tag`
#[derive(Deserialize)]
pub struct ExperimentTag {
    #[serde(default, deserialize_with = "lenient_string")]
    experiment_id: Option<String>,
    key: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    value: Option<String>,
}

/// Sets an experiment tag.
pub async fn set_experiment_tag(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<ExperimentTag>,
) -> JsonResult {
    let id = parse_experiment_id(required(&req.experiment_id, "experiment_id")?)?;
    let key = required(&req.key, "key")?;
    validate_key(KeyKind::Tag, key)?;
    let value = req.value.unwrap_or_default();
    if value.chars().count() > MAX_EXPERIMENT_TAG_VALUE_LEN {
        return Err(MlflowError::invalid(format!(
            "Experiment tag '{key}' has a value longer than {MAX_EXPERIMENT_TAG_VALUE_LEN} characters"
        )));
    }
    s.store.set_experiment_tag(id, key, &value).await?;
    empty()
}

/// Deletes an experiment tag.
pub async fn delete_experiment_tag(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<ExperimentTag>,
) -> JsonResult {
    let id = parse_experiment_id(required(&req.experiment_id, "experiment_id")?)?;
    let key = required(&req.key, "key")?;
    s.store.delete_experiment_tag(id, key).await?;
    empty()
}

// ---------------------------------------------------------------------------------------------
// Runs

/// `runs/create`
#[derive(Deserialize)]
pub struct CreateRun {
    #[serde(default, deserialize_with = "lenient_string")]
    experiment_id: Option<String>,
    user_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    start_time: Option<i64>,
    run_name: Option<String>,
    #[serde(default)]
    tags: Vec<KeyValueJson>,
}

/// Creates a run.
pub async fn create_run(State(s): State<MlflowState>, Mlflow(req): Mlflow<CreateRun>) -> JsonResult {
    let experiment_id = parse_experiment_id(req.experiment_id.as_deref().unwrap_or("0"))?;
    let mut tags = tags_in(req.tags, MAX_TAG_VALUE_LEN)?;
    let tag_name = tags
        .iter()
        .rev()
        .find(|t| t.key == "mlflow.runName")
        .map(|t| t.value.clone());
    let run_name = match (req.run_name.filter(|n| !n.is_empty()), tag_name) {
        (Some(name), Some(tagged)) if name != tagged => {
            return Err(MlflowError::invalid(format!(
                "Both 'run_name' argument and 'mlflow.runName' tag are specified, but with different \
                 values (run_name='{name}', mlflow.runName='{tagged}')."
            )));
        }
        (Some(name), _) => name,
        (None, Some(tagged)) => tagged,
        (None, None) => crate::names::random_run_name(),
    };
    tags.retain(|t| t.key != "mlflow.runName");
    tags.push(KeyValue {
        key: "mlflow.runName".into(),
        value: run_name.clone(),
    });
    let run = s
        .store
        .create_run(NewRun {
            experiment_id,
            run_id: uuid_hex(),
            run_name,
            user_id: req.user_id.unwrap_or_default(),
            start_time: req.start_time.unwrap_or_else(now_ms),
            tags,
        })
        .await?;
    Ok(Json(json!({ "run": RunJson::from(&run) })))
}

fn uuid_hex() -> String {
    use rand::RngExt;
    let bytes: [u8; 16] = rand::rng().random();
    let mut b = bytes;
    // Version 4, variant 1: the reference's run ids are uuid4 hex.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Gets a run (deleted runs too).
pub async fn get_run(State(s): State<MlflowState>, Mlflow(req): Mlflow<RunRef>) -> JsonResult {
    let id = req.id()?;
    let run = s.store.get_run(id).await?;
    let models = s.models.run_models(id).await?;
    Ok(Json(json!({ "run": RunJson::from(&run).with_models(models) })))
}

/// `runs/update`
#[derive(Deserialize)]
pub struct UpdateRun {
    #[serde(flatten)]
    run: RunRef,
    #[serde(default, deserialize_with = "lenient_string")]
    status: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    end_time: Option<i64>,
    run_name: Option<String>,
}

/// Updates a run's status, end time or name. An unknown status is ignored, as in the reference.
pub async fn update_run(State(s): State<MlflowState>, Mlflow(req): Mlflow<UpdateRun>) -> JsonResult {
    let status = req.status.as_deref().and_then(|st| {
        RunStatus::parse(st).or(match st {
            "1" => Some(RunStatus::Running),
            "2" => Some(RunStatus::Scheduled),
            "3" => Some(RunStatus::Finished),
            "4" => Some(RunStatus::Failed),
            "5" => Some(RunStatus::Killed),
            _ => None,
        })
    });
    let info = s
        .store
        .update_run(
            req.run.id()?,
            RunUpdate {
                status,
                end_time: req.end_time,
                run_name: req.run_name,
            },
        )
        .await?;
    Ok(Json(json!({ "run_info": RunInfoJson::from(&info) })))
}

/// Soft-deletes a run.
pub async fn delete_run(State(s): State<MlflowState>, Mlflow(req): Mlflow<RunRef>) -> JsonResult {
    s.store
        .set_run_lifecycle(req.id()?, LifecycleStage::Deleted)
        .await?;
    empty()
}

/// Restores a run.
pub async fn restore_run(State(s): State<MlflowState>, Mlflow(req): Mlflow<RunRef>) -> JsonResult {
    s.store
        .set_run_lifecycle(req.id()?, LifecycleStage::Active)
        .await?;
    empty()
}

fn metric_in(m: MetricIn) -> MlflowResult<Metric> {
    let key = m.key.ok_or_else(|| MlflowError::missing("key"))?;
    validate_key(KeyKind::Metric, &key)?;
    let value = m.value.ok_or_else(|| MlflowError::missing("value"))?;
    let timestamp = m.timestamp.ok_or_else(|| MlflowError::missing("timestamp"))?;
    if timestamp < 0 {
        return Err(MlflowError::invalid(format!(
            "Invalid timestamp {timestamp} for metric '{key}': it must be a non-negative number of milliseconds"
        )));
    }
    Ok(Metric {
        key,
        value,
        timestamp,
        step: m.step.unwrap_or(0),
    })
}

/// `runs/log-metric`
#[derive(Deserialize)]
pub struct LogMetric {
    #[serde(flatten)]
    run: RunRef,
    #[serde(flatten)]
    metric: MetricIn,
}

/// Logs one metric point.
pub async fn log_metric(State(s): State<MlflowState>, Mlflow(req): Mlflow<LogMetric>) -> JsonResult {
    let run_id = req.run.id()?.to_owned();
    let for_models = crate::models::model_metric_rows(&run_id, std::slice::from_ref(&req.metric));
    let metric = metric_in(req.metric)?;
    s.store
        .log_batch(
            &run_id,
            Batch {
                metrics: vec![metric],
                ..Batch::default()
            },
        )
        .await?;
    s.models.log_model_metrics(for_models).await?;
    empty()
}

/// `runs/log-parameter` and `runs/set-tag`
#[derive(Deserialize)]
pub struct LogKeyValue {
    #[serde(flatten)]
    run: RunRef,
    key: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    value: Option<String>,
}

/// Logs one param.
pub async fn log_param(State(s): State<MlflowState>, Mlflow(req): Mlflow<LogKeyValue>) -> JsonResult {
    let run_id = req.run.id()?;
    let key = required(&req.key, "key")?;
    validate_key(KeyKind::Param, key)?;
    let value = truncate(
        req.value.clone().ok_or_else(|| MlflowError::missing("value"))?,
        MAX_PARAM_VALUE_LEN,
    );
    s.store
        .log_batch(
            run_id,
            Batch {
                params: vec![KeyValue {
                    key: key.to_owned(),
                    value,
                }],
                ..Batch::default()
            },
        )
        .await?;
    empty()
}

/// Sets one run tag.
pub async fn set_tag(State(s): State<MlflowState>, Mlflow(req): Mlflow<LogKeyValue>) -> JsonResult {
    let run_id = req.run.id()?;
    let key = required(&req.key, "key")?;
    validate_key(KeyKind::Tag, key)?;
    let value = truncate(req.value.clone().unwrap_or_default(), MAX_TAG_VALUE_LEN);
    s.store
        .log_batch(
            run_id,
            Batch {
                tags: vec![KeyValue {
                    key: key.to_owned(),
                    value,
                }],
                ..Batch::default()
            },
        )
        .await?;
    empty()
}

/// `runs/delete-tag`
#[derive(Deserialize)]
pub struct DeleteTag {
    #[serde(flatten)]
    run: RunRef,
    key: Option<String>,
}

/// Deletes a run tag.
pub async fn delete_tag(State(s): State<MlflowState>, Mlflow(req): Mlflow<DeleteTag>) -> JsonResult {
    let key = required(&req.key, "key")?;
    s.store.delete_run_tag(req.run.id()?, key).await?;
    empty()
}

/// `runs/log-batch`
#[derive(Deserialize)]
pub struct LogBatch {
    #[serde(flatten)]
    run: RunRef,
    #[serde(default)]
    metrics: Vec<MetricIn>,
    #[serde(default)]
    params: Vec<KeyValueJson>,
    #[serde(default)]
    tags: Vec<KeyValueJson>,
}

/// Logs metrics, params and tags atomically, within the reference's batch limits.
pub async fn log_batch(State(s): State<MlflowState>, Mlflow(req): Mlflow<LogBatch>) -> JsonResult {
    let run_id = req.run.id()?.to_owned();
    let (nm, np, nt) = (req.metrics.len(), req.params.len(), req.tags.len());
    for (count, max, what) in [
        (nm, MAX_BATCH_METRICS, "metrics"),
        (np, MAX_BATCH_PARAMS, "params"),
        (nt, MAX_BATCH_TAGS, "tags"),
    ] {
        if count > max {
            return Err(MlflowError::invalid(format!(
                "A batch logging request can contain at most {max} {what}. Got {count} {what}. \
                 Please split up {what} across multiple requests and try again."
            )));
        }
    }
    if nm + np + nt > MAX_BATCH_TOTAL {
        return Err(MlflowError::invalid(format!(
            "A batch logging request can contain at most {MAX_BATCH_TOTAL} metrics, params and tags in total. \
             Got {} entities. Please split up the request and try again.",
            nm + np + nt
        )));
    }
    let for_models = crate::models::model_metric_rows(&run_id, &req.metrics);
    let metrics = req
        .metrics
        .into_iter()
        .map(metric_in)
        .collect::<MlflowResult<Vec<_>>>()?;
    let mut params = Vec::with_capacity(np);
    for p in req.params {
        let key = p.key.unwrap_or_default();
        validate_key(KeyKind::Param, &key)?;
        let value = truncate(
            p.value.ok_or_else(|| MlflowError::missing("value"))?,
            MAX_PARAM_VALUE_LEN,
        );
        params.push(KeyValue { key, value });
    }
    let mut seen = std::collections::HashSet::new();
    let dupes: Vec<&str> = params
        .iter()
        .filter(|p| !seen.insert(p.key.as_str()))
        .map(|p| p.key.as_str())
        .collect();
    if !dupes.is_empty() {
        return Err(MlflowError::invalid(format!(
            "Duplicate parameter keys have been submitted: {dupes:?}. Please ensure the request contains only one \
             param value per param key."
        )));
    }
    let tags = tags_in(req.tags, MAX_TAG_VALUE_LEN)?;
    s.store
        .log_batch(
            &run_id,
            Batch {
                metrics,
                params,
                tags,
            },
        )
        .await?;
    // The points that name a model are also the model's (MLflow 3 shows them with it).
    s.models.log_model_metrics(for_models).await?;
    empty()
}

/// `runs/log-inputs`
#[derive(Deserialize)]
pub struct LogInputs {
    #[serde(flatten)]
    run: RunRef,
    #[serde(default)]
    datasets: Vec<DatasetInputJson>,
    /// Models the run consumed (MLflow 3).
    #[serde(default)]
    models: Vec<crate::models::RunModelJson>,
}

/// Records a run's dataset inputs.
pub async fn log_inputs(State(s): State<MlflowState>, Mlflow(req): Mlflow<LogInputs>) -> JsonResult {
    let run_id = req.run.id()?.to_owned();
    let mut inputs = Vec::with_capacity(req.datasets.len());
    for d in req.datasets {
        let ds = d
            .dataset
            .ok_or_else(|| MlflowError::missing("datasets.dataset"))?;
        inputs.push(DatasetInput {
            name: ds.name.ok_or_else(|| MlflowError::missing("dataset.name"))?,
            digest: ds.digest.ok_or_else(|| MlflowError::missing("dataset.digest"))?,
            source_type: ds.source_type.unwrap_or_default(),
            source: ds.source.unwrap_or_default(),
            schema: ds.schema,
            profile: ds.profile,
            tags: d
                .tags
                .into_iter()
                .map(|t| KeyValue {
                    key: t.key.unwrap_or_default(),
                    value: t.value.unwrap_or_default(),
                })
                .collect(),
        });
    }
    let models = crate::models::run_models(req.models, -1)?;
    if !inputs.is_empty() || models.is_empty() {
        s.store.log_inputs(&run_id, inputs).await?;
    }
    if !models.is_empty() {
        s.models
            .add_run_models(&run_id, spotsweep_store::ModelDirection::Input, models)
            .await?;
    }
    empty()
}

/// `runs/search`
#[derive(Deserialize)]
pub struct SearchRuns {
    #[serde(default, deserialize_with = "one_or_many")]
    experiment_ids: Vec<String>,
    filter: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    run_view_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_results: Option<i64>,
    #[serde(default, deserialize_with = "one_or_many")]
    order_by: Vec<String>,
    page_token: Option<String>,
}

/// Searches runs.
pub async fn search_runs(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<SearchRuns>,
) -> MlflowResult<Json<Paged<RunJson>>> {
    let limit = max_results(req.max_results, Some(1000))?;
    let filter =
        parse_run_filter(req.filter.as_deref().unwrap_or("")).map_err(|e| MlflowError::invalid(e.0))?;
    let mut order_by: Vec<RunOrderBy> = Vec::new();
    for entry in &req.order_by {
        let o = parse_run_order_by(entry).map_err(|e| MlflowError::invalid(e.0))?;
        // The reference answers a duplicate key with a 500 that the client retries for minutes;
        // it is the caller's mistake, so say so.
        if order_by.iter().any(|x| x.key == o.key) {
            return Err(MlflowError::invalid(format!(
                "`order_by` contains duplicate fields: '{entry}'. Sort by each key at most once."
            )));
        }
        order_by.push(o);
    }
    // Unknown or malformed experiment ids match nothing rather than failing, like the reference.
    let experiment_ids: Vec<i64> = req
        .experiment_ids
        .iter()
        .filter_map(|id| id.trim().parse().ok())
        .collect();
    let page = s
        .store
        .search_runs(&RunQuery {
            experiment_ids,
            filter,
            order_by,
            view: view_type(req.run_view_type.as_deref()),
            limit,
            offset: decode_page_token(req.page_token.as_deref())?,
        })
        .await?;
    let items: Vec<RunJson> = page.items.iter().map(Into::into).collect();
    Ok(Json(Paged::new("runs", items, page.next_offset)))
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// `metrics/get-history`
#[derive(Deserialize)]
pub struct GetHistory {
    #[serde(flatten)]
    run: RunRef,
    metric_key: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_results: Option<i64>,
    page_token: Option<String>,
}

/// A metric's full history, paged when `max_results` is given. Unknown runs answer `{}`.
pub async fn get_metric_history(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<GetHistory>,
) -> MlflowResult<Json<Paged<MetricJson>>> {
    let run_id = req.run.id()?;
    let key = required(&req.metric_key, "metric_key")?;
    let limit = match req.max_results {
        Some(n) if n <= 0 => {
            return Err(MlflowError::invalid(format!(
                "Invalid value {n} for parameter 'max_results': it must be positive"
            )));
        }
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        None => u32::MAX - 1,
    };
    let page = s
        .store
        .metric_history(run_id, key, decode_page_token(req.page_token.as_deref())?, limit)
        .await?;
    let items: Vec<MetricJson> = page.items.iter().map(Into::into).collect();
    Ok(Json(Paged::new("metrics", items, page.next_offset)))
}

/// `metrics/get-history-bulk-interval`
#[derive(Deserialize)]
pub struct BulkInterval {
    #[serde(default, deserialize_with = "one_or_many")]
    run_ids: Vec<String>,
    metric_key: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    start_step: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    end_step: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_results: Option<i64>,
}

/// Down-sampled histories of several runs for charts.
pub async fn get_history_bulk_interval(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<BulkInterval>,
) -> JsonResult {
    const MAX_RUNS: usize = 100;
    const MAX_POINTS: i64 = 2500;
    let key = required(&req.metric_key, "metric_key")?;
    if req.run_ids.is_empty() {
        return Err(MlflowError::missing("run_ids"));
    }
    if req.run_ids.len() > MAX_RUNS {
        return Err(MlflowError::invalid(format!(
            "GetMetricHistoryBulkInterval request must specify at most {MAX_RUNS} run_ids. Received {} run_ids.",
            req.run_ids.len()
        )));
    }
    let max = req.max_results.unwrap_or(MAX_POINTS);
    if !(1..=MAX_POINTS).contains(&max) {
        return Err(MlflowError::invalid(format!(
            "max_results must be between 1 and {MAX_POINTS}, got {max}"
        )));
    }
    match (req.start_step, req.end_step) {
        (Some(a), Some(b)) if a > b => {
            return Err(MlflowError::invalid(format!(
                "end_step ({b}) must be greater than or equal to start_step ({a})"
            )));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(MlflowError::invalid(
                "If either start step or end step are specified, both must be specified.",
            ));
        }
        _ => {}
    }
    let points = s
        .store
        .metric_history_bulk_interval(&req.run_ids, key, req.start_step, req.end_step, max as usize)
        .await?;
    let metrics: Vec<MetricJson> = points
        .into_iter()
        .map(|(run_id, m)| MetricJson {
            run_id: Some(run_id),
            ..MetricJson::from(&m)
        })
        .collect();
    if metrics.is_empty() {
        return empty();
    }
    Ok(Json(json!({ "metrics": metrics })))
}

/// `metrics/get-history-bulk` (UI only): full histories of several runs.
#[derive(Deserialize)]
pub struct HistoryBulk {
    #[serde(default, deserialize_with = "one_or_many")]
    run_id: Vec<String>,
    metric_key: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_results: Option<i64>,
}

/// Full histories of several runs, capped at `max_results` points in total.
pub async fn get_history_bulk(State(s): State<MlflowState>, Mlflow(req): Mlflow<HistoryBulk>) -> JsonResult {
    let key = required(&req.metric_key, "metric_key")?;
    let cap = req.max_results.unwrap_or(25000).clamp(1, 25000) as u32;
    let mut metrics = Vec::new();
    for run_id in req.run_id.iter().take(100) {
        let page = s.store.metric_history(run_id, key, 0, cap).await?;
        metrics.extend(page.items.iter().map(|m| MetricJson {
            run_id: Some(run_id.clone()),
            ..MetricJson::from(m)
        }));
    }
    metrics.truncate(cap as usize);
    if metrics.is_empty() {
        return empty();
    }
    Ok(Json(json!({ "metrics": metrics })))
}

/// `experiments/search-datasets` (UI only)
#[derive(Deserialize)]
pub struct SearchDatasets {
    #[serde(default, deserialize_with = "one_or_many")]
    experiment_ids: Vec<String>,
}

/// The distinct datasets used by runs of the experiments, for the UI's dataset dropdown.
pub async fn search_datasets(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<SearchDatasets>,
) -> JsonResult {
    let ids: Vec<i64> = req
        .experiment_ids
        .iter()
        .filter_map(|id| id.trim().parse().ok())
        .collect();
    let summaries = s.store.dataset_summaries(&ids).await?;
    if summaries.is_empty() {
        return empty();
    }
    let items: Vec<Value> = summaries
        .into_iter()
        .map(|d| {
            let mut v =
                json!({ "experiment_id": d.experiment_id.to_string(), "name": d.name, "digest": d.digest });
            if let Some(context) = d.context {
                v["context"] = json!(context);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "dataset_summaries": items })))
}

/// `/api/3.0/mlflow/server-info`: what the 3.x artifact client asks before uploads.
pub async fn server_info() -> JsonResult {
    Ok(Json(json!({
        "store_type": "SqlStore",
        "workspaces_enabled": false,
        "multipart_uploads_enabled": false,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode_page_token(Some(&encode_page_token(42))).unwrap(), 42);
        assert_eq!(decode_page_token(None).unwrap(), 0);
        assert!(decode_page_token(Some("!!")).is_err());
        assert!(decode_page_token(Some("aGVsbG8=")).is_err());
    }

    #[test]
    fn run_ids_are_uuid4_hex() {
        let id = uuid_hex();
        assert_eq!(id.len(), 32);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(&id[12..13], "4");
    }
}
