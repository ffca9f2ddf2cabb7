//! Domain types of the model registry: registered models, their versions, tags and aliases.

use spotsweep_core::registry::{ModelSource, Stage, VersionStatus};
use spotsweep_core::search::{
    ModelVersionOrderBy, ModelVersionPredicate, RegisteredModelOrderBy, RegisteredModelPredicate,
};

use super::KeyValue;

/// An alias of a registered model and the version it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelAlias {
    /// The alias (`champion`).
    pub alias: String,
    /// The version number it points at.
    pub version: i64,
}

/// A registered model.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisteredModel {
    /// Unique name.
    pub name: String,
    /// Milliseconds since the epoch.
    pub creation_timestamp: i64,
    /// Milliseconds since the epoch; bumped by updates, renames and version changes.
    pub last_updated_timestamp: i64,
    /// `None` when never set, or cleared by an update without one.
    pub description: Option<String>,
    /// The highest live version in each stage that has one, by version number (without their
    /// aliases).
    pub latest_versions: Vec<ModelVersion>,
    /// Tags, by key.
    pub tags: Vec<KeyValue>,
    /// Aliases, by alias.
    pub aliases: Vec<ModelAlias>,
}

/// A (live) model version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelVersion {
    /// The registered model's name.
    pub name: String,
    /// The version number, from 1; never reused within a registered model.
    pub version: i64,
    /// Milliseconds since the epoch.
    pub creation_timestamp: i64,
    /// Milliseconds since the epoch.
    pub last_updated_timestamp: i64,
    /// The stage.
    pub current_stage: Stage,
    /// `None` after an update without a description.
    pub description: Option<String>,
    /// The source as registered.
    pub source: String,
    /// Where its files are (what `get-download-uri` answers).
    pub storage_location: String,
    /// The run that produced it, `""` for none.
    pub run_id: String,
    /// The logged model it was registered from, if any.
    pub model_id: Option<String>,
    /// A link to the run, `""` for none.
    pub run_link: String,
    /// Whether its files are in place.
    pub status: VersionStatus,
    /// Tags, by key.
    pub tags: Vec<KeyValue>,
    /// The aliases pointing at it, by alias; filled by single-version reads only (the
    /// reference leaves them out of searches and of a registered model's latest versions).
    pub aliases: Vec<String>,
}

/// A registered model to create.
#[derive(Debug, Clone)]
pub struct NewRegisteredModel {
    /// Unique name (validated by the caller).
    pub name: String,
    /// Optional description.
    pub description: Option<String>,
    /// Tags (validated by the caller); a repeated key keeps its last value.
    pub tags: Vec<KeyValue>,
}

/// A model version to create.
#[derive(Debug, Clone)]
pub struct NewModelVersion {
    /// The registered model's name.
    pub name: String,
    /// The source as the client sent it.
    pub source: String,
    /// What the source is (see [`spotsweep_core::registry::parse_source`]).
    pub parsed_source: ModelSource,
    /// The run that produced it; defaults to the logged model's source run.
    pub run_id: Option<String>,
    /// The logged model it is registered from.
    pub model_id: Option<String>,
    /// A link to the run.
    pub run_link: Option<String>,
    /// The description.
    pub description: Option<String>,
    /// Tags (validated by the caller); a repeated key keeps its last value.
    pub tags: Vec<KeyValue>,
}

/// A `registered-models/search`.
#[derive(Debug, Clone, Default)]
pub struct RegisteredModelQuery {
    /// AND-ed predicates.
    pub filter: Vec<RegisteredModelPredicate>,
    /// Leave out models tagged as prompts.
    pub exclude_prompts: bool,
    /// The full sort order (the parser appends the tie-breakers).
    pub order_by: Vec<RegisteredModelOrderBy>,
    /// Page size.
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
}

/// A `model-versions/search` (live versions only).
#[derive(Debug, Clone, Default)]
pub struct ModelVersionQuery {
    /// AND-ed predicates.
    pub filter: Vec<ModelVersionPredicate>,
    /// Leave out versions of models tagged as prompts.
    pub exclude_prompts: bool,
    /// The full sort order (the parser appends the tie-breakers).
    pub order_by: Vec<ModelVersionOrderBy>,
    /// Page size.
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
}
