//! MLflow 3's logged models: what `mlflow.<flavor>.log_model` and `load_model` send. A model
//! is created PENDING with its own artifact root (`<experiment>/models/<id>/artifacts`), its
//! files are uploaded through the artifact proxy, and it is finalized READY. `runs:/<run>/<name>`
//! URIs are resolved by the client with a search on the model's name.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spotsweep_core::search::{parse_model_filter, parse_model_order_by};
use spotsweep_store::{
    KeyValue, LoggedModel, LoggedModelQuery, LoggedModelStatus, ModelDirection, ModelMetric, ModelOrderBy,
    NewLoggedModel,
};

use crate::MlflowState;
use crate::artifacts::{download_under, list_under};
use crate::error::{MlflowError, MlflowResult};
use crate::extract::{Mlflow, RunRef, lenient_i64, lenient_string, one_or_many};
use crate::tracking::{decode_page_token, encode_page_token};
use crate::validation::{
    KeyKind, MAX_PARAM_VALUE_LEN, MAX_TAG_VALUE_LEN, parse_experiment_id, truncate, validate_key,
};
use crate::wire::{KeyValueJson, serialize_metric_value};

type JsonResult = MlflowResult<Json<Value>>;

/// Characters a model name may not contain (the reference's rule: they would break the
/// `models:/` URI and paths).
const BAD_NAME_CHARS: &[char] = &['/', ':', '.', '%', '"', '\''];

fn now_ms() -> i64 {
    spotsweep_store::now_ms()
}

/// A logged model on the wire.
#[derive(Serialize)]
pub struct LoggedModelJson {
    info: LoggedModelInfoJson,
    data: LoggedModelDataJson,
}

#[derive(Serialize)]
struct LoggedModelInfoJson {
    model_id: String,
    experiment_id: String,
    name: String,
    creation_timestamp_ms: i64,
    last_updated_timestamp_ms: i64,
    artifact_uri: String,
    status: &'static str,
    model_type: String,
    source_run_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<KeyValueJson>,
}

#[derive(Serialize)]
struct LoggedModelDataJson {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    params: Vec<KeyValueJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    metrics: Vec<ModelMetricJson>,
}

#[derive(Serialize)]
struct ModelMetricJson {
    key: String,
    #[serde(serialize_with = "serialize_metric_value")]
    value: f64,
    timestamp: i64,
    step: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataset_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataset_digest: Option<String>,
    model_id: String,
    run_id: String,
}

impl From<&LoggedModel> for LoggedModelJson {
    fn from(m: &LoggedModel) -> Self {
        Self {
            info: LoggedModelInfoJson {
                model_id: m.model_id.clone(),
                experiment_id: m.experiment_id.to_string(),
                name: m.name.clone(),
                creation_timestamp_ms: m.creation_timestamp_ms,
                last_updated_timestamp_ms: m.last_updated_timestamp_ms,
                artifact_uri: m.artifact_uri.clone(),
                status: m.status.as_str(),
                model_type: m.model_type.clone(),
                source_run_id: m.source_run_id.clone(),
                tags: m.tags.iter().map(Into::into).collect(),
            },
            data: LoggedModelDataJson {
                params: m.params.iter().map(Into::into).collect(),
                metrics: m
                    .metrics
                    .iter()
                    .map(|x| ModelMetricJson {
                        key: x.key.clone(),
                        value: x.value,
                        timestamp: x.timestamp,
                        step: x.step,
                        dataset_name: x.dataset_name.clone(),
                        dataset_digest: x.dataset_digest.clone(),
                        model_id: m.model_id.clone(),
                        run_id: x.run_id.clone(),
                    })
                    .collect(),
            },
        }
    }
}

fn model_json(m: &LoggedModel) -> JsonResult {
    Ok(Json(json!({ "model": LoggedModelJson::from(m) })))
}

fn key_values(list: Vec<KeyValueJson>, kind: KeyKind, max_value: usize) -> MlflowResult<Vec<KeyValue>> {
    list.into_iter()
        .map(|kv| {
            let key = kv.key.unwrap_or_default();
            validate_key(kind, &key)?;
            Ok(KeyValue {
                key,
                value: truncate(kv.value.unwrap_or_default(), max_value),
            })
        })
        .collect()
}

/// `POST logged-models`
#[derive(Deserialize)]
pub struct CreateLoggedModel {
    #[serde(default, deserialize_with = "lenient_string")]
    experiment_id: Option<String>,
    name: Option<String>,
    model_type: Option<String>,
    source_run_id: Option<String>,
    #[serde(default)]
    params: Vec<KeyValueJson>,
    #[serde(default)]
    tags: Vec<KeyValueJson>,
}

/// Creates a PENDING model.
pub async fn create_logged_model(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<CreateLoggedModel>,
) -> JsonResult {
    let experiment_id = req
        .experiment_id
        .as_deref()
        .filter(|e| !e.is_empty())
        .ok_or_else(|| MlflowError::missing("experiment_id"))?;
    let experiment_id = parse_experiment_id(experiment_id)?;
    let name = match req.name.filter(|n| !n.is_empty()) {
        Some(name) if name.contains(BAD_NAME_CHARS) => {
            return Err(MlflowError::invalid(format!(
                "Invalid model name ('{name}') provided. Model name must not contain any of the following \
                 characters: / : . % \" '"
            )));
        }
        Some(name) => name,
        None => crate::names::random_run_name(),
    };
    let model = s
        .models
        .create_logged_model(NewLoggedModel {
            experiment_id,
            name,
            model_type: req.model_type.unwrap_or_default(),
            source_run_id: req.source_run_id.unwrap_or_default(),
            params: key_values(req.params, KeyKind::Param, MAX_PARAM_VALUE_LEN)?,
            tags: key_values(req.tags, KeyKind::Tag, MAX_TAG_VALUE_LEN)?,
            now: now_ms(),
        })
        .await?;
    model_json(&model)
}

/// `?allow_deleted=` of `GET logged-models/{id}`.
#[derive(Deserialize)]
pub struct GetLoggedModel {
    #[serde(default)]
    allow_deleted: Option<String>,
}

/// Gets a model with its params, tags and metrics.
pub async fn get_logged_model(
    State(s): State<MlflowState>,
    Path(id): Path<String>,
    Query(q): Query<GetLoggedModel>,
) -> JsonResult {
    let allow_deleted = q.allow_deleted.as_deref() == Some("true");
    model_json(&s.models.get_logged_model(&id, allow_deleted).await?)
}

/// Soft-deletes a model.
pub async fn delete_logged_model(State(s): State<MlflowState>, Path(id): Path<String>) -> JsonResult {
    s.models.delete_logged_model(&id, now_ms()).await?;
    Ok(Json(json!({})))
}

/// `PATCH logged-models/{id}`
#[derive(Deserialize)]
pub struct FinalizeLoggedModel {
    #[serde(default, deserialize_with = "lenient_string")]
    status: Option<String>,
}

/// Sets a model's status: READY once its files are uploaded, UPLOAD_FAILED when saving raised.
/// An unknown status name is stored as unspecified, as the reference does.
pub async fn finalize_logged_model(
    State(s): State<MlflowState>,
    Path(id): Path<String>,
    Mlflow(req): Mlflow<FinalizeLoggedModel>,
) -> JsonResult {
    let status = req
        .status
        .as_deref()
        .filter(|st| !st.is_empty())
        .ok_or_else(|| MlflowError::missing("status"))?;
    let status = LoggedModelStatus::parse(status).unwrap_or(LoggedModelStatus::Unspecified);
    model_json(&s.models.set_logged_model_status(&id, status, now_ms()).await?)
}

/// `POST logged-models/{id}/params`
#[derive(Deserialize)]
pub struct LogModelParams {
    #[serde(default)]
    params: Vec<KeyValueJson>,
}

/// Adds params to a model.
pub async fn log_logged_model_params(
    State(s): State<MlflowState>,
    Path(id): Path<String>,
    Mlflow(req): Mlflow<LogModelParams>,
) -> JsonResult {
    let params = key_values(req.params, KeyKind::Param, MAX_PARAM_VALUE_LEN)?;
    s.models.log_logged_model_params(&id, params).await?;
    Ok(Json(json!({})))
}

/// `PATCH logged-models/{id}/tags`
#[derive(Deserialize)]
pub struct SetModelTags {
    #[serde(default)]
    tags: Vec<KeyValueJson>,
}

/// Sets tags on a model.
pub async fn set_logged_model_tags(
    State(s): State<MlflowState>,
    Path(id): Path<String>,
    Mlflow(req): Mlflow<SetModelTags>,
) -> JsonResult {
    let tags = key_values(req.tags, KeyKind::Tag, MAX_TAG_VALUE_LEN)?;
    s.models.set_logged_model_tags(&id, tags).await?;
    Ok(Json(json!({})))
}

/// Deletes a model's tag.
pub async fn delete_logged_model_tag(
    State(s): State<MlflowState>,
    Path((id, key)): Path<(String, String)>,
) -> JsonResult {
    s.models.delete_logged_model_tag(&id, &key).await?;
    Ok(Json(json!({})))
}

/// One `order_by` entry of `logged-models/search`.
#[derive(Deserialize)]
pub struct ModelOrderByJson {
    field_name: Option<String>,
    #[serde(default)]
    ascending: Option<bool>,
    dataset_name: Option<String>,
    dataset_digest: Option<String>,
}

/// `POST logged-models/search`
#[derive(Deserialize)]
pub struct SearchLoggedModels {
    #[serde(default, deserialize_with = "one_or_many")]
    experiment_ids: Vec<String>,
    filter: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_results: Option<i64>,
    #[serde(default)]
    order_by: Vec<ModelOrderByJson>,
    page_token: Option<String>,
}

/// Most models one search page may return.
const MAX_MODEL_RESULTS: i64 = 1000;

/// Searches models of some experiments: filter, order, pages.
pub async fn search_logged_models(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<SearchLoggedModels>,
) -> JsonResult {
    if req.experiment_ids.is_empty() {
        return Err(MlflowError::missing("experiment_ids"));
    }
    let experiment_ids = req
        .experiment_ids
        .iter()
        .map(|e| parse_experiment_id(e))
        .collect::<MlflowResult<Vec<i64>>>()?;
    let limit = req.max_results.unwrap_or(100);
    if !(1..=MAX_MODEL_RESULTS).contains(&limit) {
        return Err(MlflowError::invalid(format!(
            "Invalid value {limit} for parameter 'max_results': it must be between 1 and {MAX_MODEL_RESULTS}"
        )));
    }
    let filter = parse_model_filter(req.filter.as_deref().unwrap_or(""))
        .map_err(|e| MlflowError::invalid(format!("Invalid filter string: {}", e.0)))?;
    let order_by = req
        .order_by
        .into_iter()
        .map(|o| {
            let field = o
                .field_name
                .filter(|f| !f.is_empty())
                .ok_or_else(|| MlflowError::missing("order_by.field_name"))?;
            let key = parse_model_order_by(&field, o.dataset_name.as_deref(), o.dataset_digest.as_deref())
                .map_err(|e| MlflowError::invalid(e.0))?;
            Ok(ModelOrderBy {
                key,
                // proto2's default for an absent bool.
                ascending: o.ascending.unwrap_or(false),
            })
        })
        .collect::<MlflowResult<Vec<_>>>()?;
    let offset = decode_page_token(req.page_token.as_deref())?;
    let (models, more) = s
        .models
        .search_logged_models(LoggedModelQuery {
            experiment_ids,
            filter,
            order_by,
            offset,
            limit: limit as u32,
        })
        .await?;
    let mut out = serde_json::Map::new();
    if !models.is_empty() {
        let list: Vec<LoggedModelJson> = models.iter().map(Into::into).collect();
        out.insert("models".into(), json!(list));
    }
    if more {
        out.insert(
            "next_page_token".into(),
            json!(encode_page_token(offset + models.len() as u64)),
        );
    }
    Ok(Json(Value::Object(out)))
}

/// `?artifact_directory_path=` of the model's listing.
#[derive(Deserialize)]
pub struct ModelArtifactDirectory {
    #[serde(default)]
    artifact_directory_path: Option<String>,
}

/// One level of a model's files, paths relative to its root.
pub async fn list_logged_model_artifacts(
    State(s): State<MlflowState>,
    Path(id): Path<String>,
    Query(q): Query<ModelArtifactDirectory>,
) -> JsonResult {
    let model = s.models.get_logged_model(&id, false).await?;
    let rel = q.artifact_directory_path.unwrap_or_default();
    list_under(&s, &model.artifact_uri, rel.trim_matches('/')).await
}

/// `?artifact_file_path=` of the UI's model file route.
#[derive(Deserialize)]
pub struct ModelArtifactFile {
    #[serde(default)]
    artifact_file_path: Option<String>,
}

/// One of a model's files, for the UI.
pub async fn get_logged_model_artifact(
    State(s): State<MlflowState>,
    Path(id): Path<String>,
    Query(q): Query<ModelArtifactFile>,
) -> Response {
    let result = async {
        let path = q
            .artifact_file_path
            .filter(|p| !p.is_empty())
            .ok_or_else(|| MlflowError {
                error_code: crate::ErrorCode::BadRequest,
                message: "Request must include the \"artifact_file_path\" query parameter.".into(),
            })?;
        let model = s.models.get_logged_model(&id, false).await?;
        download_under(&s, &model.artifact_uri, &path).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// One model of `runs/outputs` or `runs/log-inputs`.
#[derive(Deserialize)]
pub struct RunModelJson {
    model_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    step: Option<i64>,
}

/// `runs/outputs`
#[derive(Deserialize)]
pub struct LogOutputs {
    #[serde(flatten)]
    run: RunRef,
    #[serde(default)]
    models: Vec<RunModelJson>,
}

/// Records the models a run produced.
pub async fn log_outputs(State(s): State<MlflowState>, Mlflow(req): Mlflow<LogOutputs>) -> JsonResult {
    let run_id = req.run.id()?.to_owned();
    let models = run_models(req.models, 0)?;
    s.models
        .add_run_models(&run_id, ModelDirection::Output, models)
        .await?;
    Ok(Json(json!({})))
}

/// The `(model_id, step)` pairs of a request's `models`.
pub(crate) fn run_models(models: Vec<RunModelJson>, default_step: i64) -> MlflowResult<Vec<(String, i64)>> {
    models
        .into_iter()
        .map(|m| {
            let id = m
                .model_id
                .filter(|id| !id.is_empty())
                .ok_or_else(|| MlflowError::missing("models.model_id"))?;
            Ok((id, m.step.unwrap_or(default_step)))
        })
        .collect()
}

/// The metric rows of a batch that name a model, to store with those models.
pub(crate) fn model_metric_rows(
    run_id: &str,
    metrics: &[crate::wire::MetricIn],
) -> Vec<(String, ModelMetric)> {
    metrics
        .iter()
        .filter_map(|m| {
            let model_id = m.model_id.clone().filter(|id| !id.is_empty())?;
            Some((
                model_id,
                ModelMetric {
                    key: m.key.clone()?,
                    value: m.value?,
                    timestamp: m.timestamp?,
                    step: m.step.unwrap_or(0),
                    run_id: run_id.to_owned(),
                    dataset_name: m.dataset_name.clone().filter(|d| !d.is_empty()),
                    dataset_digest: m.dataset_digest.clone().filter(|d| !d.is_empty()),
                },
            ))
        })
        .collect()
}
