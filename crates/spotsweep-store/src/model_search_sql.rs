//! The search translation of the model registry, logged models and traces, shared by both
//! backends: the typed predicates of [`spotsweep_core::search`] as SQL with bound parameters,
//! built from the pieces of [`crate::search_sql`] (comparisons, lists, the backend's
//! [`Dialect`]). Text sorts by bytes on both backends: PostgreSQL's columns of these tables are
//! `COLLATE "C"` (migration 0004). Every user-supplied value is a bound parameter; the only text
//! spliced into a statement is chosen here from fixed column names and operators.

use sqlx::QueryBuilder;

use spotsweep_core::search::{
    ModelAttribute, ModelOrderKey, ModelPredicate, ModelVersionAttribute, ModelVersionOrderKey,
    ModelVersionPredicate, RegisteredModelOrderKey, RegisteredModelPredicate, StrOp, TraceAttribute,
    TracePredicate,
};

use crate::rows::{LOGGED_MODEL_COLUMNS, REGISTERED_MODEL_COLUMNS, TRACE_COLUMNS, VERSION_COLUMNS, VERSIONS};
use crate::search_sql::{Dialect, num_op, push_kv_condition, push_str_cmp};
use crate::{LoggedModelQuery, LoggedModelStatus, ModelVersionQuery, RegisteredModelQuery, TraceQuery};

/// `<column> [NOT] IN (<values>)`, the values bound as one list. An empty list matches nothing
/// (`IN`) or everything (`NOT IN`).
fn push_in<DB: Dialect>(qb: &mut QueryBuilder<DB>, column: &str, negated: bool, values: &[String]) {
    qb.push(column).push(if negated { " NOT IN " } else { " IN " });
    DB::push_text_list(qb, values);
}

/// `m.status [NOT] IN (<numbers>)` for status names.
fn push_status_in<DB: Dialect>(qb: &mut QueryBuilder<DB>, negated: bool, values: &[String]) {
    qb.push("m.status")
        .push(if negated { " NOT IN " } else { " IN " });
    let numbers: Vec<i64> = values.iter().map(|v| status_number(v)).collect();
    DB::push_int_list(qb, &numbers);
}

/// ` LIMIT ? OFFSET ?` for a page of `limit` and one row more (that row says whether more
/// follow).
fn push_page<DB: Dialect>(qb: &mut QueryBuilder<DB>, limit: u32, offset: u64) {
    DB::bind_int(qb.push(" LIMIT "), i64::from(limit) + 1);
    DB::bind_int(qb.push(" OFFSET "), i64::try_from(offset).unwrap_or(i64::MAX));
}

// ---------------------------------------------------------------------------------------------
// The model registry

fn registered_model_order_column(key: RegisteredModelOrderKey) -> &'static str {
    match key {
        RegisteredModelOrderKey::Name => "m.name",
        RegisteredModelOrderKey::LastUpdatedTimestamp => "m.last_updated_timestamp",
    }
}

fn model_version_column(attr: ModelVersionAttribute) -> &'static str {
    match attr {
        ModelVersionAttribute::Name => "m.name",
        ModelVersionAttribute::RunId => "v.run_id",
        ModelVersionAttribute::SourcePath => "v.source",
    }
}

fn model_version_order_column(key: ModelVersionOrderKey) -> &'static str {
    match key {
        ModelVersionOrderKey::Name => "m.name",
        ModelVersionOrderKey::VersionNumber => "v.version",
        ModelVersionOrderKey::CreationTimestamp => "v.creation_timestamp",
        ModelVersionOrderKey::LastUpdatedTimestamp => "v.last_updated_timestamp",
    }
}

/// `EXISTS (SELECT 1 FROM <rows> AND x.key = ? AND x.value op ?)`: the tag must exist.
fn push_tag<DB: Dialect>(qb: &mut QueryBuilder<DB>, rows: &str, key: &str, op: StrOp, value: &str) {
    qb.push("EXISTS (SELECT 1 FROM ").push(rows).push(" AND x.key = ");
    DB::bind_text(qb, key);
    qb.push(" AND ");
    push_str_cmp(qb, "x.value", op, value);
    qb.push(")");
}

/// A `registered-models/search` page (and one row more), as rows of
/// [`REGISTERED_MODEL_COLUMNS`].
pub(crate) fn registered_model_search_sql<DB: Dialect>(query: &RegisteredModelQuery) -> QueryBuilder<DB> {
    let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!(
        "SELECT {REGISTERED_MODEL_COLUMNS} FROM registered_models m WHERE 1 = 1"
    ));
    for predicate in &query.filter {
        qb.push(" AND ");
        match predicate {
            RegisteredModelPredicate::Name { op, value } => push_str_cmp(&mut qb, "m.name", *op, value),
            RegisteredModelPredicate::NameIn { negated, values } => {
                push_in(&mut qb, "m.name", *negated, values)
            }
            RegisteredModelPredicate::Tag { key, op, value } => push_tag(
                &mut qb,
                "registered_model_tags x WHERE x.registered_model_id = m.id",
                key,
                *op,
                value,
            ),
        }
    }
    if query.exclude_prompts {
        qb.push(
            " AND NOT EXISTS (SELECT 1 FROM registered_model_tags p WHERE p.registered_model_id = m.id AND p.key = ",
        );
        DB::bind_text(&mut qb, spotsweep_core::registry::PROMPT_TAG_KEY);
        qb.push(" AND p.value = 'true')");
    }
    qb.push(" ORDER BY ");
    for order in &query.order_by {
        qb.push(registered_model_order_column(order.key))
            .push(if order.ascending { " ASC, " } else { " DESC, " });
    }
    // Names are unique, so this only makes the statement well-formed after the trailing comma.
    qb.push("m.id ASC");
    push_page(&mut qb, query.limit, query.offset);
    qb
}

/// A `model-versions/search` page (and one row more) of live versions, as rows of
/// [`VERSION_COLUMNS`].
pub(crate) fn model_version_search_sql<DB: Dialect>(query: &ModelVersionQuery) -> QueryBuilder<DB> {
    let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!("SELECT {VERSION_COLUMNS} FROM {VERSIONS}"));
    for predicate in &query.filter {
        qb.push(" AND ");
        match predicate {
            ModelVersionPredicate::Attribute { attr, op, value } => {
                push_str_cmp(&mut qb, model_version_column(*attr), *op, value)
            }
            ModelVersionPredicate::AttributeIn {
                attr,
                negated,
                values,
            } => push_in(&mut qb, model_version_column(*attr), *negated, values),
            ModelVersionPredicate::VersionNumber { op, value } => {
                qb.push("v.version").push(num_op(*op));
                DB::bind_int(&mut qb, *value);
            }
            ModelVersionPredicate::Tag { key, op, value } => push_tag(
                &mut qb,
                "model_version_tags x WHERE x.registered_model_id = v.registered_model_id AND x.version = v.version",
                key,
                *op,
                value,
            ),
        }
    }
    if query.exclude_prompts {
        // As the reference: a model any of whose versions is tagged as a prompt is a prompt.
        qb.push(
            " AND NOT EXISTS (SELECT 1 FROM model_version_tags p WHERE p.registered_model_id = v.registered_model_id \
             AND p.key = ",
        );
        DB::bind_text(&mut qb, spotsweep_core::registry::PROMPT_TAG_KEY);
        qb.push(" AND p.value = 'true')");
    }
    qb.push(" ORDER BY ");
    for order in &query.order_by {
        qb.push(model_version_order_column(order.key))
            .push(if order.ascending { " ASC, " } else { " DESC, " });
    }
    qb.push("v.registered_model_id ASC, v.version DESC");
    push_page(&mut qb, query.limit, query.offset);
    qb
}

// ---------------------------------------------------------------------------------------------
// Logged models

fn model_attr_column(attr: ModelAttribute) -> &'static str {
    match attr {
        ModelAttribute::Name => "m.name",
        ModelAttribute::ModelId => "m.model_id",
        ModelAttribute::ModelType => "m.model_type",
        ModelAttribute::Status => "m.status",
        ModelAttribute::SourceRunId => "m.source_run_id",
        ModelAttribute::CreationTime => "m.creation_timestamp_ms",
        ModelAttribute::LastUpdatedTime => "m.last_updated_timestamp_ms",
    }
}

/// `status` is stored as its number but compared by name: `status = 'READY'` means ready.
fn status_number(value: &str) -> i64 {
    LoggedModelStatus::parse(value).map_or(-1, LoggedModelStatus::number)
}

fn push_model_predicate<DB: Dialect>(qb: &mut QueryBuilder<DB>, p: &ModelPredicate) {
    match p {
        ModelPredicate::Metric { key, op, value } => {
            // A NaN row is stored as NULL, so it compares false with everything (as in IEEE).
            qb.push(
                "EXISTS (SELECT 1 FROM logged_model_metrics x WHERE x.model_id = m.model_id AND x.key = ",
            );
            DB::bind_text(qb, key);
            qb.push(" AND x.value").push(num_op(*op));
            DB::bind_float(qb, *value);
            qb.push(")");
        }
        ModelPredicate::Param { key, cond } => {
            push_kv_condition(
                qb,
                "logged_model_params x WHERE x.model_id = m.model_id",
                key,
                cond,
            );
        }
        ModelPredicate::Tag { key, cond } => {
            push_kv_condition(qb, "logged_model_tags x WHERE x.model_id = m.model_id", key, cond);
        }
        ModelPredicate::AttributeString {
            attr: ModelAttribute::Status,
            op,
            value,
        } => {
            let cmp = if *op == StrOp::Ne { " != " } else { " = " };
            qb.push("m.status").push(cmp);
            DB::bind_int(qb, status_number(value));
        }
        ModelPredicate::AttributeString { attr, op, value } => {
            push_str_cmp(qb, model_attr_column(*attr), *op, value);
        }
        ModelPredicate::AttributeIn {
            attr,
            negated,
            values,
        } => {
            if *attr == ModelAttribute::Status {
                push_status_in(qb, *negated, values);
            } else {
                push_in(qb, model_attr_column(*attr), *negated, values);
            }
        }
        ModelPredicate::AttributeNumber { attr, op, value } => {
            qb.push(model_attr_column(*attr)).push(num_op(*op));
            DB::bind_int(qb, *value);
        }
    }
}

/// The SQL of the sort value of a metric: its latest row (by timestamp, then step), of the
/// named dataset when one is given.
fn push_metric_sort_value<DB: Dialect>(
    qb: &mut QueryBuilder<DB>,
    key: &str,
    name: Option<&str>,
    digest: Option<&str>,
) {
    qb.push("(SELECT x.value FROM logged_model_metrics x WHERE x.model_id = m.model_id AND x.key = ");
    DB::bind_text(qb, key);
    if let Some(name) = name {
        qb.push(" AND x.dataset_name = ");
        DB::bind_text(qb, name);
    }
    if let Some(digest) = digest {
        qb.push(" AND x.dataset_digest = ");
        DB::bind_text(qb, digest);
    }
    qb.push(" ORDER BY x.timestamp DESC, x.step DESC, x.id DESC LIMIT 1)");
}

/// A `logged-models/search` page (and one row more) of active models, as rows of
/// [`LOGGED_MODEL_COLUMNS`]; `query.experiment_ids` must not be empty.
pub(crate) fn logged_model_search_sql<DB: Dialect>(query: &LoggedModelQuery) -> QueryBuilder<DB> {
    let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!(
        "SELECT {LOGGED_MODEL_COLUMNS} FROM logged_models m WHERE m.lifecycle_stage = 'active' AND m.experiment_id IN "
    ));
    DB::push_int_list(&mut qb, &query.experiment_ids);
    for p in &query.filter {
        qb.push(" AND ");
        push_model_predicate(&mut qb, p);
    }
    qb.push(" ORDER BY ");
    for o in &query.order_by {
        let dir = if o.ascending { " ASC" } else { " DESC" };
        match &o.key {
            ModelOrderKey::Attribute(attr) => {
                qb.push(model_attr_column(*attr)).push(dir).push(", ");
            }
            // Models without the metric (or whose latest row is NaN) sort last in both
            // directions.
            ModelOrderKey::Metric {
                key,
                dataset_name,
                dataset_digest,
            } => {
                push_metric_sort_value(&mut qb, key, dataset_name.as_deref(), dataset_digest.as_deref());
                qb.push(" IS NULL, ");
                push_metric_sort_value(&mut qb, key, dataset_name.as_deref(), dataset_digest.as_deref());
                qb.push(dir).push(", ");
            }
        }
    }
    qb.push("m.creation_timestamp_ms DESC, m.model_id ASC");
    push_page(&mut qb, query.limit, query.offset);
    qb
}

// ---------------------------------------------------------------------------------------------
// Traces

fn trace_attr_column(attr: TraceAttribute) -> &'static str {
    match attr {
        TraceAttribute::TraceId => "t.trace_id",
        TraceAttribute::ClientRequestId => "t.client_request_id",
        TraceAttribute::Status => "t.state",
        TraceAttribute::Name => {
            "(SELECT x.value FROM trace_tags x WHERE x.trace_id = t.trace_id AND x.key = 'mlflow.traceName')"
        }
        TraceAttribute::RunId => {
            "(SELECT x.value FROM trace_metadata x WHERE x.trace_id = t.trace_id AND x.key = 'mlflow.sourceRun')"
        }
        TraceAttribute::ExperimentId => "t.experiment_id",
        TraceAttribute::Timestamp => "t.request_time_ms",
        TraceAttribute::ExecutionTime => "t.execution_duration_ms",
        TraceAttribute::EndTime => "(t.request_time_ms + t.execution_duration_ms)",
    }
}

fn push_trace_predicate<DB: Dialect>(qb: &mut QueryBuilder<DB>, p: &TracePredicate) {
    match p {
        TracePredicate::Tag { key, cond } => {
            push_kv_condition(qb, "trace_tags x WHERE x.trace_id = t.trace_id", key, cond);
        }
        TracePredicate::Metadata { key, cond } => {
            push_kv_condition(qb, "trace_metadata x WHERE x.trace_id = t.trace_id", key, cond);
        }
        TracePredicate::AttributeString { attr, op, value } => {
            push_str_cmp(qb, trace_attr_column(*attr), *op, value);
        }
        TracePredicate::AttributeIn {
            attr,
            negated,
            values,
        } => push_in(qb, trace_attr_column(*attr), *negated, values),
        TracePredicate::AttributeNumber { attr, op, value } => {
            qb.push(trace_attr_column(*attr)).push(num_op(*op));
            DB::bind_int(qb, *value);
        }
    }
}

/// A `traces/search` page (and one row more), as rows of [`TRACE_COLUMNS`];
/// `query.experiment_ids` must not be empty. A trace without the sort value (no client request
/// id, still in progress) sorts first going up and last going down, as SQLite orders NULL.
pub(crate) fn trace_search_sql<DB: Dialect>(query: &TraceQuery) -> QueryBuilder<DB> {
    let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!(
        "SELECT {TRACE_COLUMNS} FROM traces t WHERE t.experiment_id IN "
    ));
    DB::push_int_list(&mut qb, &query.experiment_ids);
    for p in &query.filter {
        qb.push(" AND ");
        push_trace_predicate(&mut qb, p);
    }
    qb.push(" ORDER BY ");
    for o in &query.order_by {
        qb.push(trace_attr_column(o.attr)).push(if o.ascending {
            " ASC NULLS FIRST, "
        } else {
            " DESC NULLS LAST, "
        });
    }
    qb.push("t.request_time_ms DESC, t.trace_id ASC");
    push_page(&mut qb, query.limit, query.offset);
    qb
}
