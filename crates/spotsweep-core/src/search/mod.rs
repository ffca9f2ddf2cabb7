//! The MLflow search grammar for `runs/search`, `experiments/search` and the model registry's
//! searches, as typed predicates.
//!
//! The parser ([`parse_run_filter`] and friends) turns the user's filter and `order_by` strings
//! into these types; the store translates them into SQL with bound parameters. Nothing here is
//! ever spliced into SQL as text except the fixed column names the store chooses per variant.
//!
//! The grammar (see the MLflow protocol brief, section 6): clauses joined by `AND` only,
//! `entity.key op value`, `entity.key IS [NOT] NULL`, keys bare, back-ticked or double-quoted.

mod parse;

pub use parse::registry::{
    ModelVersionAttribute, ModelVersionOrderBy, ModelVersionOrderKey, ModelVersionPredicate,
    RegisteredModelOrderBy, RegisteredModelOrderKey, RegisteredModelPredicate, RegistryFilter,
    parse_model_version_filter, parse_model_version_order_by, parse_registered_model_filter,
    parse_registered_model_order_by,
};
pub use parse::{
    parse_experiment_filter, parse_experiment_order_by, parse_model_filter, parse_model_order_by,
    parse_run_filter, parse_run_order_by, parse_trace_filter, parse_trace_order_by,
};

/// A filter or `order_by` string the grammar rejects. The message is meant for the person who
/// wrote it and is sent back verbatim in a `400 INVALID_PARAMETER_VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SearchError(pub String);

/// Numeric comparison operators (`metrics.*`, time attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NumOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// String comparison operators (`params.*`, `tags.*`, string attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrOp {
    /// `=`, exact and case-sensitive.
    Eq,
    /// `!=`
    Ne,
    /// `LIKE`: SQL wildcards `%` and `_`, case-sensitive.
    Like,
    /// `ILIKE`: SQL wildcards, case-insensitive.
    ILike,
}

/// A condition on a string-valued key that may be absent (params and tags).
#[derive(Debug, Clone, PartialEq)]
pub enum StringCondition {
    /// The key exists and its value compares true.
    Compare(StrOp, String),
    /// The key is absent.
    IsNull,
    /// The key is present, whatever its value.
    IsNotNull,
}

/// Run attributes that can be filtered and sorted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunAttribute {
    /// `run_id` (also `run_uuid`).
    RunId,
    /// `status`
    Status,
    /// `run_name` (also `` `Run name` ``, `` `Run Name` ``, `run name`).
    RunName,
    /// `user_id`
    UserId,
    /// `artifact_uri`
    ArtifactUri,
    /// `start_time` (also `created`, `Created`).
    StartTime,
    /// `end_time`
    EndTime,
}

impl RunAttribute {
    /// Whether the attribute is numeric (milliseconds) rather than a string.
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::StartTime | Self::EndTime)
    }
}

/// Dataset fields (`datasets.name`, `datasets.digest`, `datasets.context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetField {
    /// The dataset's name.
    Name,
    /// The dataset's digest.
    Digest,
    /// The input's context tag (`mlflow.data.context`, e.g. `training`).
    Context,
}

/// One `AND`-ed clause of a runs filter.
#[derive(Debug, Clone, PartialEq)]
pub enum RunPredicate {
    /// `metrics.key op number`, compared against the run's latest value of the metric.
    Metric {
        /// The metric key.
        key: String,
        /// The comparison.
        op: NumOp,
        /// The right-hand side.
        value: f64,
    },
    /// `params.key ...`
    Param {
        /// The param key.
        key: String,
        /// The condition.
        cond: StringCondition,
    },
    /// `tags.key ...`
    Tag {
        /// The tag key.
        key: String,
        /// The condition.
        cond: StringCondition,
    },
    /// `attributes.<string attribute> op 'value'`
    AttributeString {
        /// A string attribute (never `StartTime` or `EndTime`).
        attr: RunAttribute,
        /// The comparison.
        op: StrOp,
        /// The right-hand side.
        value: String,
    },
    /// `attributes.<time attribute> op number` (milliseconds).
    AttributeNumber {
        /// `StartTime` or `EndTime`.
        attr: RunAttribute,
        /// The comparison.
        op: NumOp,
        /// The right-hand side.
        value: i64,
    },
    /// `attributes.run_id [NOT] IN ('a', 'b')`
    RunIdIn {
        /// `NOT IN` when true.
        negated: bool,
        /// The listed ids.
        values: Vec<String>,
    },
    /// `datasets.field op 'value'`, true when any dataset input of the run matches.
    Dataset {
        /// The dataset field.
        field: DatasetField,
        /// The condition; `IsNull`/`IsNotNull` are never produced here.
        cond: StringCondition,
    },
    /// `datasets.field [NOT] IN ('a', 'b')`
    DatasetIn {
        /// The dataset field.
        field: DatasetField,
        /// `NOT IN` when true.
        negated: bool,
        /// The listed values.
        values: Vec<String>,
    },
}

/// What a runs `order_by` entry sorts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunOrderKey {
    /// The run's latest value of a metric.
    Metric(String),
    /// A param's value (a string).
    Param(String),
    /// A tag's value (a string).
    Tag(String),
    /// A run attribute.
    Attribute(RunAttribute),
}

/// One runs `order_by` entry. Runs that lack the key sort last in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunOrderBy {
    /// The sort key.
    pub key: RunOrderKey,
    /// `ASC` (the default) or `DESC`.
    pub ascending: bool,
}

/// Experiment attributes that can be filtered and sorted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExperimentAttribute {
    /// `name`
    Name,
    /// `experiment_id`
    ExperimentId,
    /// `creation_time`
    CreationTime,
    /// `last_update_time`
    LastUpdateTime,
}

/// One `AND`-ed clause of an experiments filter.
#[derive(Debug, Clone, PartialEq)]
pub enum ExperimentPredicate {
    /// `name op 'value'`
    Name {
        /// The comparison.
        op: StrOp,
        /// The right-hand side.
        value: String,
    },
    /// `creation_time` or `last_update_time` compared with a number of milliseconds.
    Time {
        /// `CreationTime` or `LastUpdateTime`.
        attr: ExperimentAttribute,
        /// The comparison.
        op: NumOp,
        /// The right-hand side.
        value: i64,
    },
    /// `experiment_id op 'id'` with `=` or `!=`.
    ExperimentId {
        /// `Eq` or `Ne` only.
        op: StrOp,
        /// The id, as the decimal string the client sends.
        value: String,
    },
    /// `experiment_id [NOT] IN ('1', '2')`
    ExperimentIdIn {
        /// `NOT IN` when true.
        negated: bool,
        /// The listed ids.
        values: Vec<String>,
    },
    /// `tags.key ...`
    Tag {
        /// The tag key.
        key: String,
        /// The condition.
        cond: StringCondition,
    },
}

/// One experiments `order_by` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExperimentOrderBy {
    /// The sort key.
    pub key: ExperimentAttribute,
    /// `ASC` (the default) or `DESC`.
    pub ascending: bool,
}

/// Logged-model attributes that can be filtered and sorted on (MLflow 3's `logged-models/search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelAttribute {
    /// `name`
    Name,
    /// `model_id`
    ModelId,
    /// `model_type`
    ModelType,
    /// `status`, compared by name (`READY`, `LOGGED_MODEL_READY`, ...).
    Status,
    /// `source_run_id`
    SourceRunId,
    /// `creation_time` (also `creation_timestamp`, `creation_timestamp_ms`), milliseconds.
    CreationTime,
    /// `last_updated_timestamp` (also `last_updated_timestamp_ms`), milliseconds.
    LastUpdatedTime,
}

impl ModelAttribute {
    /// Whether the attribute is numeric (milliseconds) rather than a string.
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::CreationTime | Self::LastUpdatedTime)
    }
}

/// One `AND`-ed clause of a logged-models filter.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelPredicate {
    /// `metrics.key op number`: true when any of the model's rows of that metric compares true.
    Metric {
        /// The metric key.
        key: String,
        /// The comparison.
        op: NumOp,
        /// The right-hand side.
        value: f64,
    },
    /// `params.key ...`
    Param {
        /// The param key.
        key: String,
        /// The condition.
        cond: StringCondition,
    },
    /// `tags.key ...`
    Tag {
        /// The tag key.
        key: String,
        /// The condition.
        cond: StringCondition,
    },
    /// `<string attribute> op 'value'`
    AttributeString {
        /// A string attribute.
        attr: ModelAttribute,
        /// The comparison.
        op: StrOp,
        /// The right-hand side.
        value: String,
    },
    /// `<string attribute> [NOT] IN ('a', 'b')`
    AttributeIn {
        /// A string attribute.
        attr: ModelAttribute,
        /// `NOT IN` when true.
        negated: bool,
        /// The listed values.
        values: Vec<String>,
    },
    /// `<time attribute> op number` (milliseconds).
    AttributeNumber {
        /// `CreationTime` or `LastUpdatedTime`.
        attr: ModelAttribute,
        /// The comparison.
        op: NumOp,
        /// The right-hand side.
        value: i64,
    },
}

/// What a logged-models `order_by` entry sorts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelOrderKey {
    /// An attribute.
    Attribute(ModelAttribute),
    /// A metric's latest row (by timestamp, then step), of one dataset when one is named.
    Metric {
        /// The metric key.
        key: String,
        /// Only rows of this dataset name.
        dataset_name: Option<String>,
        /// Only rows of this dataset digest.
        dataset_digest: Option<String>,
    },
}

/// Trace attributes that can be filtered and sorted on (MLflow 3's `traces/search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceAttribute {
    /// `request_id` (also `trace_id`).
    TraceId,
    /// `client_request_id`
    ClientRequestId,
    /// `status` (also `state`): `OK`, `ERROR`, `IN_PROGRESS`, `STATE_UNSPECIFIED`.
    Status,
    /// `name`: the tag `mlflow.traceName`.
    Name,
    /// `run_id`: the metadata `mlflow.sourceRun`.
    RunId,
    /// `experiment_id` (sorting only).
    ExperimentId,
    /// `timestamp_ms` (also `timestamp`): the request time, milliseconds.
    Timestamp,
    /// `execution_time_ms` (also `execution_time`), milliseconds.
    ExecutionTime,
    /// `end_time_ms` (also `end_time`): request time plus execution time, milliseconds.
    EndTime,
}

impl TraceAttribute {
    /// Whether the attribute is numeric (milliseconds) rather than a string.
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Timestamp | Self::ExecutionTime | Self::EndTime)
    }
}

/// One `AND`-ed clause of a traces filter.
#[derive(Debug, Clone, PartialEq)]
pub enum TracePredicate {
    /// `tags.key ...`
    Tag {
        /// The tag key.
        key: String,
        /// The condition.
        cond: StringCondition,
    },
    /// `metadata.key ...` (also `request_metadata.`)
    Metadata {
        /// The metadata key.
        key: String,
        /// The condition.
        cond: StringCondition,
    },
    /// `<string attribute> op 'value'`
    AttributeString {
        /// A string attribute.
        attr: TraceAttribute,
        /// The comparison.
        op: StrOp,
        /// The right-hand side.
        value: String,
    },
    /// `<string attribute> [NOT] IN ('a', 'b')`
    AttributeIn {
        /// A string attribute.
        attr: TraceAttribute,
        /// `NOT IN` when true.
        negated: bool,
        /// The listed values.
        values: Vec<String>,
    },
    /// `<time attribute> op number` (milliseconds).
    AttributeNumber {
        /// A numeric attribute.
        attr: TraceAttribute,
        /// The comparison.
        op: NumOp,
        /// The right-hand side.
        value: i64,
    },
}

/// One traces `order_by` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceOrderBy {
    /// The attribute.
    pub attr: TraceAttribute,
    /// `ASC` (the default) or `DESC`.
    pub ascending: bool,
}
