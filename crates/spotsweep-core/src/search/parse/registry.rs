//! The model registry's search grammar (`registered-models/search`, `model-versions/search`):
//! the same lexer and clause syntax as runs and experiments, with its own small set of keys.
//!
//! * Registered models: the attribute `name` (`= != LIKE ILIKE IN NOT IN`) and tags (`tag.` or
//!   `tags.`, `= != LIKE ILIKE`); `order_by` on `name`, `timestamp` or `last_updated_timestamp`.
//! * Model versions: `name` and `run_id` (string comparisons and lists), `source_path` (string
//!   comparisons), `version_number` (numeric, an integer) and tags; `order_by` on `name`,
//!   `version_number`, `creation_timestamp` or `last_updated_timestamp`.
//!
//! A tag comparison needs the tag to exist, except for the prompt tag
//! ([`PROMPT_TAG_KEY`](crate::registry::PROMPT_TAG_KEY)): the MLflow client adds
//! ``tag.`mlflow.prompt.is_prompt` != 'true'`` to every model search, meaning "models, not
//! prompts", which must match the models that have no such tag. So clauses on that tag are not
//! comparisons: they choose whether the search returns prompts ([`RegistryFilter::exclude_prompts`]).

use super::{Clause, Value, err, list_negation, parse_clauses, parse_order_entry, shown};
use crate::registry::PROMPT_TAG_KEY;
use crate::search::{NumOp, SearchError, StrOp};

/// One `AND`-ed clause of a `registered-models/search` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisteredModelPredicate {
    /// `name op 'value'`
    Name {
        /// The comparison.
        op: StrOp,
        /// The right-hand side.
        value: String,
    },
    /// `name [NOT] IN ('a', 'b')`
    NameIn {
        /// `NOT IN` when true.
        negated: bool,
        /// The listed names.
        values: Vec<String>,
    },
    /// `tags.key op 'value'`: true when the tag exists and its value compares true.
    Tag {
        /// The tag key.
        key: String,
        /// The comparison.
        op: StrOp,
        /// The right-hand side.
        value: String,
    },
}

/// The string attributes of a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelVersionAttribute {
    /// `name`: the registered model's name.
    Name,
    /// `run_id`
    RunId,
    /// `source_path`: the version's `source`.
    SourcePath,
}

/// One `AND`-ed clause of a `model-versions/search` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelVersionPredicate {
    /// `attribute op 'value'`
    Attribute {
        /// The attribute.
        attr: ModelVersionAttribute,
        /// The comparison.
        op: StrOp,
        /// The right-hand side.
        value: String,
    },
    /// `name [NOT] IN (...)` or `run_id [NOT] IN (...)`
    AttributeIn {
        /// `Name` or `RunId`.
        attr: ModelVersionAttribute,
        /// `NOT IN` when true.
        negated: bool,
        /// The listed values.
        values: Vec<String>,
    },
    /// `version_number op N`
    VersionNumber {
        /// The comparison.
        op: NumOp,
        /// The right-hand side.
        value: i64,
    },
    /// `tags.key op 'value'`: true when the tag exists and its value compares true.
    Tag {
        /// The tag key.
        key: String,
        /// The comparison.
        op: StrOp,
        /// The right-hand side.
        value: String,
    },
}

/// A parsed registry filter: the clauses to apply, and whether prompts are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryFilter<P> {
    /// The `AND`-ed clauses, without those on the prompt tag unless the filter asks for prompts.
    pub predicates: Vec<P>,
    /// Leave out entities tagged `mlflow.prompt.is_prompt = 'true'` (every search that does not
    /// ask for prompts).
    pub exclude_prompts: bool,
}

/// What a registered-models `order_by` entry sorts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisteredModelOrderKey {
    /// `name`
    Name,
    /// `last_updated_timestamp` (also `timestamp`).
    LastUpdatedTimestamp,
}

/// One registered-models sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegisteredModelOrderBy {
    /// The key.
    pub key: RegisteredModelOrderKey,
    /// `ASC` (the default) or `DESC`.
    pub ascending: bool,
}

/// What a model-versions `order_by` entry sorts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelVersionOrderKey {
    /// `name`
    Name,
    /// `version_number`
    VersionNumber,
    /// `creation_timestamp`
    CreationTimestamp,
    /// `last_updated_timestamp`
    LastUpdatedTimestamp,
}

/// One model-versions sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelVersionOrderBy {
    /// The key.
    pub key: ModelVersionOrderKey,
    /// `ASC` (the default) or `DESC`.
    pub ascending: bool,
}

const REGISTERED_MODEL_KEYS: &str = "'{'name'}'";
const MODEL_VERSION_KEYS: &str = "'{'name', 'run_id', 'source_path', 'version_number'}'";
const TAG_COMPARATORS: &str = "['=', '!=', 'LIKE', 'ILIKE']";
const NAME_COMPARATORS: &str = "['=', '!=', 'LIKE', 'ILIKE', 'IN', 'NOT IN']";
const SOURCE_COMPARATORS: &str = "['=', '!=', 'LIKE', 'ILIKE']";
const NUMERIC_COMPARATORS: &str = "['=', '!=', '<', '<=', '>', '>=']";

/// What an identifier names in a registry filter.
enum RegistryEntity {
    Attribute,
    Tag,
}

/// Resolves the entity of a registry identifier: a bare name or `attribute(s).x` is an
/// attribute, `tag(s).x` a tag; nothing else exists here (no metrics or params).
fn registry_entity(clause_ident: &super::Ident<'_>) -> Result<RegistryEntity, SearchError> {
    match clause_ident.entity.as_deref() {
        None | Some("attribute" | "attributes" | "attr") => Ok(RegistryEntity::Attribute),
        Some("tag" | "tags") => Ok(RegistryEntity::Tag),
        Some(other) => Err(err(format!(
            "Invalid entity type '{}' in '{}'. Valid values are ['attribute', 'tag'] (or a bare attribute \
             name; entity names are case-sensitive)",
            shown(other),
            shown(clause_ident.text),
        ))),
    }
}

/// A tag clause: `= != LIKE ILIKE` against a quoted string.
fn tag_clause(clause: &Clause<'_>) -> Result<(String, StrOp, String), SearchError> {
    let what = format!("tag '{}'", shown(&clause.ident.key));
    let op = clause.str_op(&what, TAG_COMPARATORS)?;
    let value = clause.quoted_string(&what, "my-value")?;
    Ok((clause.ident.key.clone(), op, value))
}

/// What a string attribute clause compares with.
enum StringClause {
    /// `op 'value'`
    Compare(StrOp, String),
    /// `[NOT] IN (...)`
    List { negated: bool, values: Vec<String> },
}

/// A string attribute clause; `lists` says whether `IN` / `NOT IN` are allowed.
fn string_clause(clause: &Clause<'_>, lists: bool, valid: &str) -> Result<StringClause, SearchError> {
    let key = &clause.ident.key;
    let what = format!("attribute '{}'", shown(key));
    if let Some(negated) = list_negation(clause.cmp) {
        if !lists {
            return Err(clause.invalid_comparator(&what, valid));
        }
        return Ok(StringClause::List {
            negated,
            values: clause.string_list(&what)?,
        });
    }
    if matches!(clause.value, Value::List(_)) {
        return Err(err(format!(
            "Comparator '{}' cannot compare '{}' with a list; use IN or NOT IN",
            shown(clause.cmp_text),
            shown(clause.ident.text),
        )));
    }
    let op = clause.str_op(&what, valid)?;
    Ok(StringClause::Compare(
        op,
        clause.quoted_string(&what, "my-value")?,
    ))
}

/// What a clause means in a registered-models filter.
fn registered_model_predicate(clause: Clause<'_>) -> Result<RegisteredModelPredicate, SearchError> {
    if let RegistryEntity::Tag = registry_entity(&clause.ident)? {
        let (key, op, value) = tag_clause(&clause)?;
        return Ok(RegisteredModelPredicate::Tag { key, op, value });
    }
    if clause.ident.key != "name" {
        return Err(err(format!(
            "Invalid attribute key '{}' specified. Valid keys are {REGISTERED_MODEL_KEYS}",
            shown(&clause.ident.key)
        )));
    }
    Ok(match string_clause(&clause, true, NAME_COMPARATORS)? {
        StringClause::Compare(op, value) => RegisteredModelPredicate::Name { op, value },
        StringClause::List { negated, values } => RegisteredModelPredicate::NameIn { negated, values },
    })
}

/// An integer version number: a bare integer or a quoted one (`version_number = '3'`).
fn version_number(clause: &Clause<'_>) -> Result<i64, SearchError> {
    let parsed = match &clause.value {
        Value::Number { text, integer: true } => text.parse().ok(),
        Value::Str(text) => text.trim().parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        err(format!(
            "Invalid value for numeric attribute 'version_number': {}",
            shown(clause.value_text)
        ))
    })
}

/// What a clause means in a model-versions filter.
fn model_version_predicate(clause: Clause<'_>) -> Result<ModelVersionPredicate, SearchError> {
    if let RegistryEntity::Tag = registry_entity(&clause.ident)? {
        let (key, op, value) = tag_clause(&clause)?;
        return Ok(ModelVersionPredicate::Tag { key, op, value });
    }
    let (attr, lists, valid) = match clause.ident.key.as_str() {
        "name" => (ModelVersionAttribute::Name, true, NAME_COMPARATORS),
        "run_id" => (ModelVersionAttribute::RunId, true, NAME_COMPARATORS),
        "source_path" => (ModelVersionAttribute::SourcePath, false, SOURCE_COMPARATORS),
        "version_number" => {
            let op = clause.cmp.num_op().ok_or_else(|| {
                clause.invalid_comparator("attribute 'version_number'", NUMERIC_COMPARATORS)
            })?;
            return Ok(ModelVersionPredicate::VersionNumber {
                op,
                value: version_number(&clause)?,
            });
        }
        other => {
            return Err(err(format!(
                "Invalid attribute key '{}' specified. Valid keys are {MODEL_VERSION_KEYS}",
                shown(other)
            )));
        }
    };
    Ok(match string_clause(&clause, lists, valid)? {
        StringClause::Compare(op, value) => ModelVersionPredicate::Attribute { attr, op, value },
        StringClause::List { negated, values } => ModelVersionPredicate::AttributeIn {
            attr,
            negated,
            values,
        },
    })
}

/// Whether the filter asks for prompts: its first clause on the prompt tag is `= 'true'` or
/// `!= 'false'` (values case-insensitive). Otherwise every clause on that tag is dropped and
/// prompts are left out, which is what the client's ``!= 'true'`` means.
fn scope_prompts<P>(
    predicates: Vec<P>,
    prompt_clause: impl Fn(&P) -> Option<(StrOp, &str)>,
) -> RegistryFilter<P> {
    let asks_for_prompts = predicates
        .iter()
        .find_map(&prompt_clause)
        .is_some_and(|(op, value)| {
            (op == StrOp::Eq && value.eq_ignore_ascii_case("true"))
                || (op == StrOp::Ne && value.eq_ignore_ascii_case("false"))
        });
    if asks_for_prompts {
        return RegistryFilter {
            predicates,
            exclude_prompts: false,
        };
    }
    RegistryFilter {
        predicates: predicates
            .into_iter()
            .filter(|p| prompt_clause(p).is_none())
            .collect(),
        exclude_prompts: true,
    }
}

/// Parses a `registered-models/search` filter; an empty filter has no clauses (and leaves
/// prompts out).
///
/// # Errors
///
/// A [`SearchError`] naming the offending token, or an attribute other than `name`.
pub fn parse_registered_model_filter(
    filter: &str,
) -> Result<RegistryFilter<RegisteredModelPredicate>, SearchError> {
    let predicates = parse_clauses(filter, registered_model_predicate)?;
    Ok(scope_prompts(predicates, |p| match p {
        RegisteredModelPredicate::Tag { key, op, value } if key == PROMPT_TAG_KEY => {
            Some((*op, value.as_str()))
        }
        _ => None,
    }))
}

/// Parses a `model-versions/search` filter; an empty filter has no clauses.
///
/// # Errors
///
/// A [`SearchError`] naming the offending token, an unknown attribute, or a `version_number`
/// that is not an integer.
pub fn parse_model_version_filter(
    filter: &str,
) -> Result<RegistryFilter<ModelVersionPredicate>, SearchError> {
    let predicates = parse_clauses(filter, model_version_predicate)?;
    Ok(scope_prompts(predicates, |p| match p {
        ModelVersionPredicate::Tag { key, op, value } if key == PROMPT_TAG_KEY => Some((*op, value.as_str())),
        _ => None,
    }))
}

/// Reads `order_by` entries with `key_of`, refusing a field named twice.
fn parse_order_list<K: Copy + PartialEq, T>(
    entries: &[String],
    key_of: impl Fn(&str) -> Option<K>,
    valid: &str,
    make: impl Fn(K, bool) -> T,
) -> Result<(Vec<T>, Vec<K>), SearchError> {
    let mut out = Vec::with_capacity(entries.len());
    let mut seen: Vec<K> = Vec::with_capacity(entries.len());
    for entry in entries {
        let (ident, ascending) = parse_order_entry(entry)?;
        let key = match ident.entity.as_deref() {
            None | Some("attribute" | "attributes" | "attr") => key_of(&ident.key),
            Some(_) => None,
        }
        .ok_or_else(|| {
            err(format!(
                "Invalid order by key '{}' specified. Valid keys are {valid}",
                shown(ident.text)
            ))
        })?;
        if seen.contains(&key) {
            return Err(err(format!(
                "`order_by` contains duplicate fields: {}",
                shown(&entries.join(", "))
            )));
        }
        seen.push(key);
        out.push(make(key, ascending));
    }
    Ok((out, seen))
}

/// Parses `registered-models/search` `order_by` entries into the full sort order: the entries,
/// then `name ASC` unless they sort by name already (so the order is total).
///
/// # Errors
///
/// A [`SearchError`] for a malformed entry, a key other than `name`, `timestamp` and
/// `last_updated_timestamp`, or a field named twice (`timestamp` and `last_updated_timestamp`
/// are one field).
pub fn parse_registered_model_order_by(
    entries: &[String],
) -> Result<Vec<RegisteredModelOrderBy>, SearchError> {
    let (mut order, seen) = parse_order_list(
        entries,
        |key| match key {
            "name" => Some(RegisteredModelOrderKey::Name),
            "timestamp" | "last_updated_timestamp" => Some(RegisteredModelOrderKey::LastUpdatedTimestamp),
            _ => None,
        },
        "'{'name', 'timestamp'}'",
        |key, ascending| RegisteredModelOrderBy { key, ascending },
    )?;
    if !seen.contains(&RegisteredModelOrderKey::Name) {
        order.push(RegisteredModelOrderBy {
            key: RegisteredModelOrderKey::Name,
            ascending: true,
        });
    }
    Ok(order)
}

/// Parses `model-versions/search` `order_by` entries into the full sort order. No entries means
/// `last_updated_timestamp DESC, name ASC, version_number DESC`; otherwise the entries are
/// followed by `name ASC` and `version_number DESC` unless they sort by those already.
///
/// # Errors
///
/// A [`SearchError`] for a malformed entry, an unknown key, or a field named twice.
pub fn parse_model_version_order_by(entries: &[String]) -> Result<Vec<ModelVersionOrderBy>, SearchError> {
    use ModelVersionOrderKey as K;
    if entries.is_empty() {
        return Ok(vec![
            ModelVersionOrderBy {
                key: K::LastUpdatedTimestamp,
                ascending: false,
            },
            ModelVersionOrderBy {
                key: K::Name,
                ascending: true,
            },
            ModelVersionOrderBy {
                key: K::VersionNumber,
                ascending: false,
            },
        ]);
    }
    let (mut order, seen) = parse_order_list(
        entries,
        |key| match key {
            "name" => Some(K::Name),
            "version_number" => Some(K::VersionNumber),
            "creation_timestamp" => Some(K::CreationTimestamp),
            "last_updated_timestamp" => Some(K::LastUpdatedTimestamp),
            _ => None,
        },
        "'{'name', 'version_number', 'creation_timestamp', 'last_updated_timestamp'}'",
        |key, ascending| ModelVersionOrderBy { key, ascending },
    )?;
    for (key, ascending) in [(K::Name, true), (K::VersionNumber, false)] {
        if !seen.contains(&key) {
            order.push(ModelVersionOrderBy { key, ascending });
        }
    }
    Ok(order)
}
