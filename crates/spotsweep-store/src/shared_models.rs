//! What both backends share of the model registry, logged models and traces apart from SQL:
//! the messages of their errors (the MLflow client shows them), fresh model ids, and how a new
//! model version's source is resolved (the lookups are the backend's, the rules are
//! [`spotsweep_core::registry`]'s).

use rand::RngExt;
use spotsweep_core::registry::{
    ModelSource, SourceContext, VersionRef, check_inherited_lineage, check_source, registered_version_uri,
};

use crate::{KeyValue, NewModelVersion, Result, StoreError};

/// The tag that tells the client where to put (and find) a trace's spans.
pub const ARTIFACT_LOCATION_TAG: &str = "mlflow.artifactLocation";

pub(crate) fn registered_model_not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!("Registered Model with name={name} not found"))
}

pub(crate) fn registered_model_exists(name: &str) -> StoreError {
    StoreError::AlreadyExists(format!("Registered Model (name={name}) already exists."))
}

pub(crate) fn version_not_found(name: &str, version: i64) -> StoreError {
    StoreError::NotFound(format!(
        "Model Version (name={name}, version={version}) not found"
    ))
}

pub(crate) fn latest_version_not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!("Latest version not found for model {name}."))
}

pub(crate) fn stage_version_not_found(name: &str, stage: spotsweep_core::registry::Stage) -> StoreError {
    StoreError::NotFound(format!(
        "No versions of model with name '{name}' and stage '{stage}' found"
    ))
}

/// An unknown alias is the caller's mistake in the reference (400), not a 404.
pub(crate) fn alias_not_found(alias: &str) -> StoreError {
    StoreError::Invalid(format!("Registered model alias {alias} not found."))
}

pub(crate) fn logged_model_not_found(model_id: &str) -> StoreError {
    StoreError::NotFound(format!("Logged model with ID '{model_id}' not found."))
}

pub(crate) fn logged_model_tag_not_found(model_id: &str, key: &str) -> StoreError {
    StoreError::NotFound(format!(
        "No tag with key '{key}' found for model with ID '{model_id}'."
    ))
}

pub(crate) fn trace_not_found(trace_id: &str) -> StoreError {
    StoreError::NotFound(format!("Trace with ID '{trace_id}' not found."))
}

pub(crate) fn trace_tag_not_found(trace_id: &str, key: &str) -> StoreError {
    StoreError::NotFound(format!(
        "No trace tag with key '{key}' for trace with ID '{trace_id}'"
    ))
}

pub(crate) fn trace_in_other_experiment(trace_id: &str) -> StoreError {
    StoreError::Invalid(format!("Trace '{trace_id}' belongs to another experiment"))
}

/// Logged models and traces are created in active experiments only.
pub(crate) fn experiment_not_active(experiment_id: i64, stage: crate::LifecycleStage) -> StoreError {
    StoreError::Invalid(format!(
        "The experiment {experiment_id} must be in the 'active' state. Current state is {stage}."
    ))
}

pub(crate) fn experiment_not_found(experiment_id: i64) -> StoreError {
    StoreError::NotFound(format!("No Experiment with id={experiment_id} exists"))
}

/// A run addressed by a model input or output does not exist.
pub(crate) fn run_not_found(run_id: &str) -> StoreError {
    StoreError::NotFound(format!("Run with id={run_id} not found"))
}

/// A fresh logged-model id: `m-` and 32 hex digits (a uuid4, as the reference's).
pub(crate) fn new_model_id() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("m-{}", hex::encode(b))
}

/// The tags of a request with a repeated key reduced to its last value, as if each were set in
/// turn (one statement may not upsert the same row twice).
pub(crate) fn last_value_per_key(tags: &[KeyValue]) -> Vec<&KeyValue> {
    let mut last: Vec<&KeyValue> = Vec::with_capacity(tags.len());
    for tag in tags {
        match last.iter_mut().find(|t| t.key == tag.key) {
            Some(slot) => *slot = tag,
            None => last.push(tag),
        }
    }
    last
}

/// A registered version another source refers to: its model's name and number, where its
/// files are, and its lineage.
pub(crate) struct ReferencedVersion {
    pub name: String,
    pub version: i64,
    pub storage_location: String,
    pub run_id: String,
    pub model_id: Option<String>,
}

/// What resolving a new version's source needs to read, inside the create transaction.
pub(crate) trait SourceLookups {
    /// An active logged model's artifact root and source run (`''` for none); `NotFound`
    /// ([`logged_model_not_found`]) otherwise.
    async fn logged_model(&mut self, model_id: &str) -> Result<(String, String)>;
    /// The live version a reference to a registered model means (as `resolve_version`).
    async fn registered_version(&mut self, name: &str, reference: &VersionRef) -> Result<ReferencedVersion>;
    /// A run's artifact root, if the run exists.
    async fn run_artifact_root(&mut self, run_id: &str) -> Result<Option<String>>;
}

/// Where a new version's files are, and the lineage it inherits, once its source is resolved.
pub(crate) struct ResolvedSource {
    pub source: String,
    pub storage_location: String,
    pub run_id: Option<String>,
    pub model_id: Option<String>,
}

/// Resolves a new version's source: looks up what it names, lets the core rule decide whether
/// the request may register it, and says where its files are.
pub(crate) async fn resolve_source(
    lookups: &mut impl SourceLookups,
    new: &NewModelVersion,
) -> Result<ResolvedSource> {
    let mut run_id = new.run_id.clone().filter(|r| !r.is_empty());
    let mut model_id = new.model_id.clone().filter(|m| !m.is_empty());
    let mut source = new.source.clone();
    let named_model = match &model_id {
        Some(id) => Some(lookups.logged_model(id).await?),
        None => None,
    };
    let mut storage_location = new.source.clone();
    if let ModelSource::RegisteredVersion { name, version } = &new.parsed_source {
        let referenced = lookups.registered_version(name, version).await?;
        check_inherited_lineage(
            &new.source,
            run_id.as_deref(),
            model_id.as_deref(),
            &referenced.run_id,
            referenced.model_id.as_deref(),
        )
        .map_err(|e| StoreError::Invalid(e.0))?;
        source = registered_version_uri(&referenced.name, referenced.version);
        storage_location = referenced.storage_location;
        run_id = run_id.or(Some(referenced.run_id).filter(|r| !r.is_empty()));
        model_id = model_id.or(referenced.model_id);
    }
    let run_root = match (&new.parsed_source, &run_id) {
        (ModelSource::Proxied | ModelSource::Local, Some(run)) => lookups.run_artifact_root(run).await?,
        _ => None,
    };
    let context = SourceContext {
        run_artifact_root: run_root.as_deref(),
        model_artifact_root: named_model.as_ref().map(|(root, _)| root.as_str()),
    };
    check_source(
        &new.source,
        &new.parsed_source,
        run_id.as_deref(),
        model_id.as_deref(),
        context,
    )
    .map_err(|e| StoreError::Invalid(e.0))?;
    if let (ModelSource::LoggedModel(_), Some((root, _))) = (&new.parsed_source, &named_model) {
        // check_source made sure the source names the model of `model_id`.
        storage_location = root.clone();
    }
    if run_id.is_none()
        && let Some((_, source_run)) = &named_model
        && !source_run.is_empty()
    {
        run_id = Some(source_run.clone());
    }
    Ok(ResolvedSource {
        source,
        storage_location,
        run_id,
        model_id,
    })
}
