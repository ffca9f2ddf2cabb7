//! The reference server's validation rules for names and values (MLflow's `validation.py`),
//! restated from the protocol brief.

use crate::error::{MlflowError, MlflowResult};

/// Longest key of a param, metric or tag.
pub const MAX_KEY_LEN: usize = 250;
/// Longest param value; longer values are truncated, not rejected.
pub const MAX_PARAM_VALUE_LEN: usize = 6000;
/// Longest run tag value; longer values are truncated.
pub const MAX_TAG_VALUE_LEN: usize = 8000;
/// Longest experiment name.
pub const MAX_EXPERIMENT_NAME_LEN: usize = 500;
/// Longest experiment tag value.
pub const MAX_EXPERIMENT_TAG_VALUE_LEN: usize = 20000;
/// `log-batch` limits.
pub const MAX_BATCH_METRICS: usize = 1000;
/// `log-batch` limit on params.
pub const MAX_BATCH_PARAMS: usize = 100;
/// `log-batch` limit on tags.
pub const MAX_BATCH_TAGS: usize = 100;
/// `log-batch` limit on all entities together.
pub const MAX_BATCH_TOTAL: usize = 1000;
/// Most results a search page may hold.
pub const MAX_SEARCH_RESULTS: i64 = 50000;

/// The kind of key being validated, for messages.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    /// A metric key.
    Metric,
    /// A param key.
    Param,
    /// A tag key.
    Tag,
}

impl KeyKind {
    fn noun(self) -> &'static str {
        match self {
            Self::Metric => "metric",
            Self::Param => "param",
            Self::Tag => "tag",
        }
    }
}

/// Python's `\w` (Unicode word characters) approximated by Unicode alphanumerics and `_`.
fn allowed_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '/' | '.' | '-' | ' ' | ':')
}

/// Checks a param, metric or tag key: `^[/\w.\- :]*$`, at most 250 characters, and a path that
/// normalises to itself (no empty, `.` or `..` segment, no leading or trailing `/`).
pub fn validate_key(kind: KeyKind, key: &str) -> MlflowResult<()> {
    let noun = kind.noun();
    if !key.chars().all(allowed_char) {
        return Err(MlflowError::invalid(format!(
            "Invalid {noun} name: '{key}'. Names may only contain alphanumerics, underscores (_), \
             dashes (-), periods (.), spaces ( ), colon(:) and slashes (/)."
        )));
    }
    if key.is_empty()
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(MlflowError::invalid(format!(
            "Invalid {noun} name: '{key}'. Names cannot be empty, contain '.' or '..' path segments, \
             or start, end or repeat '/'."
        )));
    }
    if key.chars().count() > MAX_KEY_LEN {
        return Err(MlflowError::invalid(format!(
            "'{noun}' name '{}...' is {} characters long; the limit is {MAX_KEY_LEN}.",
            key.chars().take(20).collect::<String>(),
            key.chars().count()
        )));
    }
    Ok(())
}

/// Truncates to at most `max` characters (not bytes), as the reference server does silently.
pub fn truncate(mut value: String, max: usize) -> String {
    if let Some((idx, _)) = value.char_indices().nth(max) {
        value.truncate(idx);
    }
    value
}

/// Checks an experiment name.
pub fn validate_experiment_name(name: &str) -> MlflowResult<()> {
    if name.trim().is_empty() {
        return Err(MlflowError::invalid(
            "Invalid experiment name: ''. An experiment name must be a non-empty string.",
        ));
    }
    if name.chars().count() > MAX_EXPERIMENT_NAME_LEN {
        return Err(MlflowError::invalid(format!(
            "Experiment name is {} characters long; the limit is {MAX_EXPERIMENT_NAME_LEN}.",
            name.chars().count()
        )));
    }
    Ok(())
}

/// Parses an experiment id (a decimal string on the wire).
pub fn parse_experiment_id(id: &str) -> MlflowResult<i64> {
    id.trim().parse::<i64>().map_err(|_| {
        MlflowError::invalid(format!(
            "Invalid experiment ID: '{id}'. Experiment IDs are decimal integers."
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["a", "a/b", "loss val", "ünï", "実験", "a.b-c:d_e", "..a"] {
            assert!(validate_key(KeyKind::Param, ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a//b", "../x", "/abs", "a/../b", "a/", "x*", "a?", ".", "a/./b", "q=1",
        ] {
            assert!(validate_key(KeyKind::Metric, bad).is_err(), "{bad}");
        }
        assert!(validate_key(KeyKind::Tag, &"k".repeat(251)).is_err());
        assert!(validate_key(KeyKind::Tag, &"k".repeat(250)).is_ok());
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("ééé".into(), 2), "éé");
        assert_eq!(truncate("ab".into(), 5), "ab");
    }
}
