//! Handlers of the MLflow model registry (`registered-models/*`, `model-versions/*`) and the UI's
//! `/model-versions/get-artifact`, with their wire types.
//!
//! The wire follows the reference server: a version number is a string, empty repeated fields
//! are left out, an empty result is `{}`, a version's `description` is `""` until an update
//! without one clears it, and an unknown alias is a 400 (not a 404). The registry's rules live in
//! [`spotsweep_core::registry`] and its grammar in [`spotsweep_core::search`]; the store resolves
//! what a version's source names.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use spotsweep_core::registry::{
    self as rules, RuleError, Stage, VersionRef, check_archive_existing, is_latest_alias, parse_source,
    parse_version, validate_alias, validate_model_name, validate_new_alias,
};
use spotsweep_core::search::{
    SearchError, parse_model_version_filter, parse_model_version_order_by, parse_registered_model_filter,
    parse_registered_model_order_by,
};
use spotsweep_store::{
    KeyValue, ModelAlias, ModelVersion, ModelVersionQuery, NewModelVersion, NewRegisteredModel,
    RegisteredModel, RegisteredModelQuery,
};

use crate::MlflowState;
use crate::artifacts::{download, safe_segments};
use crate::error::{MlflowError, MlflowResult};
use crate::extract::{Mlflow, lenient_i64, lenient_string, one_or_many};
use crate::tracking::{Paged, decode_page_token, empty, required};
use crate::validation::{KeyKind, validate_key};
use crate::wire::KeyValueJson;

type JsonResult = MlflowResult<Json<Value>>;

/// Longest value of a registered model or model version tag (rejected, not truncated).
pub const MAX_TAG_VALUE_LEN: usize = 100_000;
/// `registered-models/search` page size when the request names none.
const DEFAULT_MODELS_PAGE: i64 = 100;
/// The largest `registered-models/search` page.
const MAX_MODELS_PAGE: i64 = 1000;
/// `model-versions/search` page size when the request names none.
const DEFAULT_VERSIONS_PAGE: i64 = 10_000;
/// The largest `model-versions/search` page.
const MAX_VERSIONS_PAGE: i64 = 200_000;

impl From<RuleError> for MlflowError {
    fn from(e: RuleError) -> Self {
        MlflowError::invalid(e.0)
    }
}

fn search_error(e: SearchError) -> MlflowError {
    MlflowError::invalid(e.0)
}

// ---------------------------------------------------------------------------------------------
// Wire types

/// A model version as answered.
#[derive(Debug, Clone, Serialize)]
pub struct ModelVersionJson {
    /// The registered model's name.
    pub name: String,
    /// The version number, as a decimal string.
    pub version: String,
    /// Milliseconds since the epoch.
    pub creation_timestamp: i64,
    /// Milliseconds since the epoch.
    pub last_updated_timestamp: i64,
    /// `None`, `Staging`, `Production` or `Archived`.
    pub current_stage: &'static str,
    /// Left out once an update cleared it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The source as registered.
    pub source: String,
    /// The run that produced it, `""` for none.
    pub run_id: String,
    /// `READY`, `PENDING_REGISTRATION` or `FAILED_REGISTRATION`.
    pub status: &'static str,
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<KeyValueJson>,
    /// A link to the run, `""` for none.
    pub run_link: String,
    /// The aliases pointing at it (single-version answers only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl From<&ModelVersion> for ModelVersionJson {
    fn from(v: &ModelVersion) -> Self {
        Self {
            name: v.name.clone(),
            version: v.version.to_string(),
            creation_timestamp: v.creation_timestamp,
            last_updated_timestamp: v.last_updated_timestamp,
            current_stage: v.current_stage.as_str(),
            description: v.description.clone(),
            source: v.source.clone(),
            run_id: v.run_id.clone(),
            status: v.status.as_str(),
            tags: v.tags.iter().map(Into::into).collect(),
            run_link: v.run_link.clone(),
            aliases: v.aliases.clone(),
        }
    }
}

/// An alias of a registered model as answered.
#[derive(Debug, Clone, Serialize)]
pub struct RegisteredModelAliasJson {
    /// The alias.
    pub alias: String,
    /// The version it points at, as a decimal string.
    pub version: String,
}

impl From<&ModelAlias> for RegisteredModelAliasJson {
    fn from(a: &ModelAlias) -> Self {
        Self {
            alias: a.alias.clone(),
            version: a.version.to_string(),
        }
    }
}

/// A registered model as answered.
#[derive(Debug, Clone, Serialize)]
pub struct RegisteredModelJson {
    /// The name.
    pub name: String,
    /// Milliseconds since the epoch.
    pub creation_timestamp: i64,
    /// Milliseconds since the epoch.
    pub last_updated_timestamp: i64,
    /// Left out when never set or cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The highest version in each stage.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latest_versions: Vec<ModelVersionJson>,
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<KeyValueJson>,
    /// Aliases.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<RegisteredModelAliasJson>,
}

impl From<&RegisteredModel> for RegisteredModelJson {
    fn from(m: &RegisteredModel) -> Self {
        Self {
            name: m.name.clone(),
            creation_timestamp: m.creation_timestamp,
            last_updated_timestamp: m.last_updated_timestamp,
            description: m.description.clone(),
            latest_versions: m.latest_versions.iter().map(Into::into).collect(),
            tags: m.tags.iter().map(Into::into).collect(),
            aliases: m.aliases.iter().map(Into::into).collect(),
        }
    }
}

fn model_response(model: &RegisteredModel) -> JsonResult {
    Ok(Json(
        json!({ "registered_model": RegisteredModelJson::from(model) }),
    ))
}

fn version_response(version: &ModelVersion) -> JsonResult {
    Ok(Json(json!({ "model_version": ModelVersionJson::from(version) })))
}

// ---------------------------------------------------------------------------------------------
// Request fields

/// A boolean that may arrive as JSON `true`/`false`, a string (`"true"`, from a query string) or
/// a number; absent means false.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") || s == "1" => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") || s == "0" || s.is_empty() => Ok(false),
        Some(Value::Number(n)) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        Some(other) => Err(D::Error::custom(format!("expected a boolean, got {other}"))),
    }
}

/// The registered model's name, required and valid.
fn model_name<'a>(name: &'a Option<String>, field: &str) -> MlflowResult<&'a str> {
    let name = required(name, field)?;
    validate_model_name(name, field)?;
    Ok(name)
}

/// The version number, required and an integer.
fn version_number(version: &Option<String>) -> MlflowResult<i64> {
    Ok(parse_version(required(version, "version")?)?)
}

/// A tag key and value of a registry entity.
fn registry_tag(key: Option<String>, value: Option<String>) -> MlflowResult<KeyValue> {
    let key = key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| MlflowError::missing("key"))?;
    validate_key(KeyKind::Tag, &key)?;
    let value = value.unwrap_or_default();
    let len = value.chars().count();
    if len > MAX_TAG_VALUE_LEN {
        return Err(MlflowError::invalid(format!(
            "Tag '{key}' has a value {len} characters long; the limit is {MAX_TAG_VALUE_LEN}."
        )));
    }
    Ok(KeyValue { key, value })
}

fn registry_tags(tags: Vec<KeyValueJson>) -> MlflowResult<Vec<KeyValue>> {
    tags.into_iter().map(|t| registry_tag(t.key, t.value)).collect()
}

/// A search page size: the default when absent, at least 1, at most `max`.
fn page_size(value: Option<i64>, default: i64, max: i64) -> MlflowResult<u32> {
    let value = value.unwrap_or(default);
    if value < 1 {
        return Err(MlflowError::invalid(format!(
            "Invalid value for request parameter max_results. It must be a positive integer, but got {value}"
        )));
    }
    if value > max {
        return Err(MlflowError::invalid(format!(
            "Invalid value for request parameter max_results. It must be at most {max}, but got value {value}"
        )));
    }
    Ok(value as u32)
}

// ---------------------------------------------------------------------------------------------
// Registered models

/// `registered-models/create`
#[derive(Deserialize)]
pub struct CreateRegisteredModel {
    name: Option<String>,
    #[serde(default)]
    tags: Vec<KeyValueJson>,
    description: Option<String>,
}

/// Creates a registered model.
pub async fn create_registered_model(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<CreateRegisteredModel>,
) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let model = s
        .registry
        .create_registered_model(NewRegisteredModel {
            name: name.to_owned(),
            description: req.description,
            tags: registry_tags(req.tags)?,
        })
        .await?;
    model_response(&model)
}

/// A request naming a registered model (`get`, `delete`).
#[derive(Deserialize)]
pub struct ModelRef {
    name: Option<String>,
}

/// Gets a registered model with its latest versions, tags and aliases.
pub async fn get_registered_model(State(s): State<MlflowState>, Mlflow(req): Mlflow<ModelRef>) -> JsonResult {
    let model = s
        .registry
        .get_registered_model(model_name(&req.name, "name")?)
        .await?;
    model_response(&model)
}

/// `registered-models/update`
#[derive(Deserialize)]
pub struct UpdateRegisteredModel {
    name: Option<String>,
    description: Option<String>,
}

/// Replaces a registered model's description; leaving it out clears it.
pub async fn update_registered_model(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<UpdateRegisteredModel>,
) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let model = s.registry.update_registered_model(name, req.description).await?;
    model_response(&model)
}

/// `registered-models/rename`
#[derive(Deserialize)]
pub struct RenameRegisteredModel {
    name: Option<String>,
    new_name: Option<String>,
}

/// Renames a registered model.
pub async fn rename_registered_model(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<RenameRegisteredModel>,
) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let new_name = model_name(&req.new_name, "new_name")?;
    let model = s.registry.rename_registered_model(name, new_name).await?;
    model_response(&model)
}

/// Deletes a registered model with its versions, tags and aliases.
pub async fn delete_registered_model(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<ModelRef>,
) -> JsonResult {
    s.registry
        .delete_registered_model(model_name(&req.name, "name")?)
        .await?;
    empty()
}

/// `registered-models/search` and `model-versions/search`.
#[derive(Deserialize)]
pub struct SearchRegistry {
    filter: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_results: Option<i64>,
    #[serde(default, deserialize_with = "one_or_many")]
    order_by: Vec<String>,
    page_token: Option<String>,
}

/// Searches registered models.
pub async fn search_registered_models(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<SearchRegistry>,
) -> MlflowResult<Json<Paged<RegisteredModelJson>>> {
    let limit = page_size(req.max_results, DEFAULT_MODELS_PAGE, MAX_MODELS_PAGE)?;
    let filter = parse_registered_model_filter(req.filter.as_deref().unwrap_or("")).map_err(search_error)?;
    let order_by = parse_registered_model_order_by(&req.order_by).map_err(search_error)?;
    let page = s
        .registry
        .search_registered_models(&RegisteredModelQuery {
            filter: filter.predicates,
            exclude_prompts: filter.exclude_prompts,
            order_by,
            limit,
            offset: decode_page_token(req.page_token.as_deref())?,
        })
        .await?;
    let items = page.items.iter().map(Into::into).collect();
    Ok(Json(Paged::new("registered_models", items, page.next_offset)))
}

/// `registered-models/get-latest-versions`
#[derive(Deserialize)]
pub struct GetLatestVersions {
    name: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    stages: Vec<String>,
}

/// The highest version in each requested stage (every stage when none is named).
pub async fn get_latest_versions(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<GetLatestVersions>,
) -> MlflowResult<Json<Paged<ModelVersionJson>>> {
    let name = model_name(&req.name, "name")?;
    let stages = req
        .stages
        .iter()
        .map(|stage| Stage::parse(stage))
        .collect::<Result<Vec<_>, _>>()?;
    let versions = s.registry.latest_versions(name, &stages).await?;
    let items = versions.iter().map(Into::into).collect();
    Ok(Json(Paged::new("model_versions", items, None)))
}

/// `registered-models/set-tag`
#[derive(Deserialize)]
pub struct SetRegisteredModelTag {
    name: Option<String>,
    key: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    value: Option<String>,
}

/// Sets a registered model's tag.
pub async fn set_registered_model_tag(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<SetRegisteredModelTag>,
) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let tag = registry_tag(req.key, req.value)?;
    s.registry
        .set_registered_model_tag(name, &tag.key, &tag.value)
        .await?;
    empty()
}

/// `registered-models/delete-tag`
#[derive(Deserialize)]
pub struct DeleteRegisteredModelTag {
    name: Option<String>,
    key: Option<String>,
}

/// Deletes a registered model's tag (a missing key is not an error).
pub async fn delete_registered_model_tag(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<DeleteRegisteredModelTag>,
) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let key = required(&req.key, "key")?;
    s.registry.delete_registered_model_tag(name, key).await?;
    empty()
}

/// `POST registered-models/alias`
#[derive(Deserialize)]
pub struct SetAlias {
    name: Option<String>,
    alias: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    version: Option<String>,
}

/// Points an alias at a version.
pub async fn set_alias(State(s): State<MlflowState>, Mlflow(req): Mlflow<SetAlias>) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let alias = required(&req.alias, "alias")?;
    validate_new_alias(alias)?;
    let version = version_number(&req.version)?;
    s.registry.set_alias(name, alias, version).await?;
    empty()
}

/// `DELETE` and `GET registered-models/alias`
#[derive(Deserialize)]
pub struct AliasRef {
    name: Option<String>,
    alias: Option<String>,
}

/// Removes an alias (a missing alias is not an error).
pub async fn delete_alias(State(s): State<MlflowState>, Mlflow(req): Mlflow<AliasRef>) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let alias = required(&req.alias, "alias")?;
    validate_alias(alias)?;
    s.registry.delete_alias(name, alias).await?;
    empty()
}

/// The version an alias points at; `latest` (any case) is the highest version.
pub async fn get_version_by_alias(State(s): State<MlflowState>, Mlflow(req): Mlflow<AliasRef>) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let alias = required(&req.alias, "alias")?;
    validate_alias(alias)?;
    let reference = if is_latest_alias(alias) {
        VersionRef::Latest
    } else {
        VersionRef::Alias(alias.to_owned())
    };
    let version = s.registry.resolve_version(name, &reference).await?;
    version_response(&version)
}

// ---------------------------------------------------------------------------------------------
// Model versions

/// `model-versions/create`
#[derive(Deserialize)]
pub struct CreateModelVersion {
    name: Option<String>,
    source: Option<String>,
    run_id: Option<String>,
    model_id: Option<String>,
    #[serde(default)]
    tags: Vec<KeyValueJson>,
    run_link: Option<String>,
    description: Option<String>,
}

/// Creates the next version of a registered model. Answered `READY` at once: the files are
/// already where the source says, so the client does not poll.
pub async fn create_model_version(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<CreateModelVersion>,
) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let source = required(&req.source, "source")?;
    let parsed_source = parse_source(source)?;
    let version = s
        .registry
        .create_model_version(NewModelVersion {
            name: name.to_owned(),
            source: source.to_owned(),
            parsed_source,
            run_id: req.run_id,
            model_id: req.model_id,
            run_link: req.run_link,
            // The reference stores "" for a version created without a description.
            description: Some(req.description.unwrap_or_default()),
            tags: registry_tags(req.tags)?,
        })
        .await?;
    version_response(&version)
}

/// A request naming a version (`get`, `delete`, `get-download-uri`).
#[derive(Deserialize)]
pub struct VersionRefRequest {
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    version: Option<String>,
}

impl VersionRefRequest {
    fn parts(&self) -> MlflowResult<(&str, i64)> {
        Ok((model_name(&self.name, "name")?, version_number(&self.version)?))
    }
}

/// Gets a version with its tags and aliases.
pub async fn get_model_version(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<VersionRefRequest>,
) -> JsonResult {
    let (name, version) = req.parts()?;
    let version = s
        .registry
        .resolve_version(name, &VersionRef::Number(version))
        .await?;
    version_response(&version)
}

/// `model-versions/update`
#[derive(Deserialize)]
pub struct UpdateModelVersion {
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    version: Option<String>,
    description: Option<String>,
}

/// Replaces a version's description; leaving it out clears it.
pub async fn update_model_version(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<UpdateModelVersion>,
) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let version = version_number(&req.version)?;
    let version = s
        .registry
        .update_model_version(name, version, req.description)
        .await?;
    version_response(&version)
}

/// `model-versions/transition-stage`
#[derive(Deserialize)]
pub struct TransitionStage {
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    version: Option<String>,
    stage: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    archive_existing_versions: bool,
}

/// Moves a version to a stage, optionally archiving the versions already there.
pub async fn transition_model_version_stage(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<TransitionStage>,
) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let version = version_number(&req.version)?;
    let stage = Stage::parse(required(&req.stage, "stage")?)?;
    check_archive_existing(stage, req.archive_existing_versions)?;
    let version = s
        .registry
        .transition_model_version_stage(name, version, stage, req.archive_existing_versions)
        .await?;
    version_response(&version)
}

/// Deletes a version; its number is never given to another.
pub async fn delete_model_version(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<VersionRefRequest>,
) -> JsonResult {
    let (name, version) = req.parts()?;
    s.registry.delete_model_version(name, version).await?;
    empty()
}

/// Searches live versions.
pub async fn search_model_versions(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<SearchRegistry>,
) -> MlflowResult<Json<Paged<ModelVersionJson>>> {
    let limit = page_size(req.max_results, DEFAULT_VERSIONS_PAGE, MAX_VERSIONS_PAGE)?;
    let filter = parse_model_version_filter(req.filter.as_deref().unwrap_or("")).map_err(search_error)?;
    let order_by = parse_model_version_order_by(&req.order_by).map_err(search_error)?;
    let page = s
        .registry
        .search_model_versions(&ModelVersionQuery {
            filter: filter.predicates,
            exclude_prompts: filter.exclude_prompts,
            order_by,
            limit,
            offset: decode_page_token(req.page_token.as_deref())?,
        })
        .await?;
    let items = page.items.iter().map(Into::into).collect();
    Ok(Json(Paged::new("model_versions", items, page.next_offset)))
}

/// Where a version's files are: a logged model's artifact root, a run's `runs:/` URI, or the
/// source itself.
pub async fn get_model_version_download_uri(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<VersionRefRequest>,
) -> JsonResult {
    let (name, version) = req.parts()?;
    let version = s
        .registry
        .resolve_version(name, &VersionRef::Number(version))
        .await?;
    Ok(Json(json!({ "artifact_uri": version.storage_location })))
}

/// `model-versions/set-tag`
#[derive(Deserialize)]
pub struct SetModelVersionTag {
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    version: Option<String>,
    key: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    value: Option<String>,
}

/// Sets a version's tag.
pub async fn set_model_version_tag(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<SetModelVersionTag>,
) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let version = version_number(&req.version)?;
    let tag = registry_tag(req.key, req.value)?;
    s.registry
        .set_model_version_tag(name, version, &tag.key, &tag.value)
        .await?;
    empty()
}

/// `model-versions/delete-tag`
#[derive(Deserialize)]
pub struct DeleteModelVersionTag {
    name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    version: Option<String>,
    key: Option<String>,
}

/// Deletes a version's tag (a missing key is not an error).
pub async fn delete_model_version_tag(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<DeleteModelVersionTag>,
) -> JsonResult {
    let name = model_name(&req.name, "name")?;
    let version = version_number(&req.version)?;
    let key = required(&req.key, "key")?;
    s.registry.delete_model_version_tag(name, version, key).await?;
    empty()
}

// ---------------------------------------------------------------------------------------------
// The UI's file route

/// `?name=&version=&path=` of `/model-versions/get-artifact`.
#[derive(Deserialize)]
pub struct VersionArtifactQuery {
    name: Option<String>,
    version: Option<String>,
    path: Option<String>,
}

/// The segments, inside the artifact proxy's store, of a version's storage location: an
/// `mlflow-artifacts:` location directly, a `runs:/<run>/<path>` one through the run's artifact
/// root. Anything else is stored elsewhere and is not served here.
async fn proxied_location(s: &MlflowState, version: &ModelVersion) -> MlflowResult<Vec<String>> {
    let location = &version.storage_location;
    let elsewhere = || {
        MlflowError::invalid(format!(
            "The files of version {} of model '{}' are at {location}, not behind this server's artifact proxy",
            version.version, version.name
        ))
    };
    let owned = |segments: Vec<&str>| segments.into_iter().map(str::to_owned).collect::<Vec<_>>();
    if let Some(rest) = location.strip_prefix("mlflow-artifacts:") {
        if rest.starts_with("//") {
            return Err(elsewhere());
        }
        return Ok(owned(safe_segments(rest.trim_start_matches('/'))?));
    }
    if let rules::ModelSource::Run { run_id, path } = parse_source(location).map_err(|_| elsewhere())? {
        let run = s.store.get_run(&run_id).await?;
        let root = run
            .info
            .artifact_uri
            .strip_prefix("mlflow-artifacts:")
            .filter(|r| !r.starts_with("//"))
            .ok_or_else(elsewhere)?;
        let mut segments = owned(safe_segments(root.trim_start_matches('/'))?);
        segments.extend(owned(safe_segments(&path)?));
        return Ok(segments);
    }
    Err(elsewhere())
}

/// `GET /model-versions/get-artifact?name=&version=&path=`: one file of a version, for the UI.
pub async fn get_model_version_artifact(
    State(s): State<MlflowState>,
    Query(q): Query<VersionArtifactQuery>,
) -> Response {
    let result = async {
        let name = model_name(&q.name, "name")?;
        let version = version_number(&q.version)?;
        let rel = q.path.as_deref().ok_or_else(|| MlflowError::missing("path"))?;
        let rel = safe_segments(rel)?;
        let version = s
            .registry
            .resolve_version(name, &VersionRef::Number(version))
            .await?;
        let mut segments = proxied_location(&s, &version).await?;
        segments.extend(rel.into_iter().map(str::to_owned));
        download(&s, &segments.join("/")).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotsweep_core::registry::VersionStatus;

    fn version() -> ModelVersion {
        ModelVersion {
            name: "reg".into(),
            version: 3,
            creation_timestamp: 1,
            last_updated_timestamp: 2,
            current_stage: Stage::Staging,
            description: Some(String::new()),
            source: "models:/m-1".into(),
            storage_location: "mlflow-artifacts:/1/models/m-1/artifacts".into(),
            run_id: String::new(),
            model_id: Some("m-1".into()),
            run_link: String::new(),
            status: VersionStatus::Ready,
            tags: vec![],
            aliases: vec![],
        }
    }

    #[test]
    fn versions_go_on_the_wire_as_the_reference_writes_them() {
        let json = serde_json::to_value(ModelVersionJson::from(&version())).unwrap();
        assert_eq!(
            json,
            json!({
                "name": "reg", "version": "3", "creation_timestamp": 1, "last_updated_timestamp": 2,
                "current_stage": "Staging", "description": "", "source": "models:/m-1", "run_id": "",
                "status": "READY", "run_link": ""
            })
        );
        let mut v = version();
        v.description = None;
        v.aliases = vec!["champ".into()];
        v.tags = vec![KeyValue {
            key: "k".into(),
            value: "v".into(),
        }];
        let json = serde_json::to_value(ModelVersionJson::from(&v)).unwrap();
        assert!(json.get("description").is_none());
        assert_eq!(json["aliases"], json!(["champ"]));
        assert_eq!(json["tags"], json!([{"key": "k", "value": "v"}]));
    }

    #[test]
    fn registered_models_leave_out_what_they_do_not_have() {
        let model = RegisteredModel {
            name: "reg".into(),
            creation_timestamp: 1,
            last_updated_timestamp: 1,
            description: None,
            latest_versions: vec![],
            tags: vec![],
            aliases: vec![],
        };
        assert_eq!(
            serde_json::to_value(RegisteredModelJson::from(&model)).unwrap(),
            json!({"name": "reg", "creation_timestamp": 1, "last_updated_timestamp": 1})
        );
        let model = RegisteredModel {
            aliases: vec![ModelAlias {
                alias: "champ".into(),
                version: 2,
            }],
            latest_versions: vec![version()],
            ..model
        };
        let json = serde_json::to_value(RegisteredModelJson::from(&model)).unwrap();
        assert_eq!(json["aliases"], json!([{"alias": "champ", "version": "2"}]));
        assert_eq!(json["latest_versions"][0]["version"], "3");
    }

    #[test]
    fn page_sizes_have_defaults_and_bounds() {
        assert_eq!(page_size(None, 100, 1000).unwrap(), 100);
        assert_eq!(page_size(Some(1000), 100, 1000).unwrap(), 1000);
        assert!(page_size(Some(1001), 100, 1000).is_err());
        assert!(page_size(Some(0), 100, 1000).is_err());
    }

    #[test]
    fn booleans_arrive_in_several_spellings() {
        #[derive(Deserialize)]
        struct B {
            #[serde(default, deserialize_with = "lenient_bool")]
            b: bool,
        }
        let read = |v: Value| serde_json::from_value::<B>(v).unwrap().b;
        assert!(read(json!({"b": true})));
        assert!(read(json!({"b": "True"})));
        assert!(!read(json!({"b": "false"})));
        assert!(!read(json!({})));
        assert!(serde_json::from_value::<B>(json!({"b": "maybe"})).is_err());
    }
}
