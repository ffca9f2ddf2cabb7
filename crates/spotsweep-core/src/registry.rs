//! The MLflow model registry's rules, with no I/O: model version stages and statuses, which
//! model names and aliases are valid, what the `source` of a new model version may be and which
//! request fields it needs, and how version references (`models:/name/3`, `models:/name@champ`,
//! `models:/name/Production`, `models:/name/latest`) read.
//!
//! The store looks things up (a run's artifact root, a logged model, a referenced version) and
//! asks these functions what the request means; nothing here knows about SQL or HTTP. Every error
//! is a [`RuleError`] whose message is sent back in a `400 INVALID_PARAMETER_VALUE`.

use std::fmt;

/// A request that breaks one of the registry's rules. The message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

fn rule_error(message: impl Into<String>) -> RuleError {
    RuleError(message.into())
}

/// A model version's deployment stage (deprecated in MLflow in favour of aliases, still served).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// `None`: the stage of every new version.
    None,
    /// `Staging`
    Staging,
    /// `Production`
    Production,
    /// `Archived`
    Archived,
}

impl Stage {
    /// Every stage, in MLflow's order (the order `get-latest-versions` knows them in).
    pub const ALL: [Stage; 4] = [Stage::None, Stage::Staging, Stage::Production, Stage::Archived];

    /// The canonical spelling, as stored and sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Staging => "Staging",
            Self::Production => "Production",
            Self::Archived => "Archived",
        }
    }

    /// A stage as the client writes it: case-insensitive (`production`, `STAGING`).
    ///
    /// # Errors
    ///
    /// The reference's message listing the four stages, for anything else.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                rule_error(format!(
                    "Invalid Model Version stage: {text}. Value must be one of None, Staging, Production, Archived."
                ))
            })
    }

    /// A stored stage (the canonical spelling only); `None` for anything else.
    pub fn from_stored(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Staging and Production: the stages whose other versions a transition may archive.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Staging | Self::Production)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a transition's `archive_existing_versions` flag: only a move to an active stage may
/// archive the versions already there.
///
/// # Errors
///
/// When the flag is set and `stage` is `None` or `Archived` (the reference answers this with a
/// 500; it is the caller's mistake, so here it is a 400).
pub fn check_archive_existing(stage: Stage, archive_existing_versions: bool) -> Result<(), RuleError> {
    if archive_existing_versions && !stage.is_active() {
        return Err(rule_error(format!(
            "Model version transition cannot archive existing model versions because '{stage}' is not an \
             Active stage. Valid stages are ['Staging', 'Production']"
        )));
    }
    Ok(())
}

/// Whether a model version's files are in place. This server registers versions whose files
/// already exist, so every version it creates is `Ready`; the other states exist in the protocol
/// (and may come from an imported database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionStatus {
    /// `PENDING_REGISTRATION`: the client polls until it changes.
    PendingRegistration,
    /// `FAILED_REGISTRATION`
    FailedRegistration,
    /// `READY`
    Ready,
}

impl VersionStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingRegistration => "PENDING_REGISTRATION",
            Self::FailedRegistration => "FAILED_REGISTRATION",
            Self::Ready => "READY",
        }
    }

    /// A stored status; `None` for anything else.
    pub fn from_stored(text: &str) -> Option<Self> {
        [Self::PendingRegistration, Self::FailedRegistration, Self::Ready]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// The longest alias the reference accepts.
pub const MAX_ALIAS_LEN: usize = 255;

/// The tag that marks a registered model (and its versions) as a prompt rather than a model.
/// Searches leave prompts out unless the filter asks for them.
pub const PROMPT_TAG_KEY: &str = "mlflow.prompt.is_prompt";

/// Checks a registered model's name: not blank, no `/` or `:` (they would read as a path or a
/// URI), and not one that a file system would read as another name (`.`, `..x`).
///
/// # Errors
///
/// A [`RuleError`] naming the problem; a blank name reads as a missing parameter.
pub fn validate_model_name(name: &str, field: &str) -> Result<(), RuleError> {
    if name.trim().is_empty() {
        return Err(rule_error(format!(
            "Missing value for required parameter '{field}'. See the API docs for more information about \
             request parameters."
        )));
    }
    if name.contains(['/', ':']) {
        return Err(rule_error(format!(
            "Invalid model name '{name}'. Names cannot contain '/' or ':'."
        )));
    }
    // Without `/`, the only names a path normalisation changes are `.` and those starting with
    // `..`, which it reads as the current or a parent directory.
    if name == "." || name.starts_with("..") {
        return Err(rule_error(format!(
            "Invalid value '{name}' for parameter '{field}' supplied: names may be treated as files in \
             certain cases, and must not resolve to other names when treated as such."
        )));
    }
    Ok(())
}

/// Whether an alias is the reserved `latest` (any case), which always means the highest version.
pub fn is_latest_alias(alias: &str) -> bool {
    alias.eq_ignore_ascii_case("latest")
}

/// Checks an alias's spelling: not empty, at most [`MAX_ALIAS_LEN`] characters of letters,
/// digits, `_` and `-` (Python's `\w` and `-`, so letters of any script).
///
/// # Errors
///
/// A [`RuleError`] saying what is wrong.
pub fn validate_alias(alias: &str) -> Result<(), RuleError> {
    if alias.is_empty() {
        return Err(rule_error("Registered model alias name cannot be empty."));
    }
    if !alias.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') {
        return Err(rule_error(format!(
            "Invalid alias name: '{alias}'. Names may only contain alphanumerics, underscores (_), and \
             dashes (-)."
        )));
    }
    let len = alias.chars().count();
    if len > MAX_ALIAS_LEN {
        return Err(rule_error(format!(
            "Registered model alias name '{}...' is {len} characters long; the limit is {MAX_ALIAS_LEN}.",
            alias.chars().take(20).collect::<String>()
        )));
    }
    Ok(())
}

/// Checks an alias that is about to be pointed at a version: spelled as [`validate_alias`]
/// wants, and not one of the names that already mean something in a `models:/` URI (`latest`,
/// and `v<digits>`, which reads as a version number).
///
/// # Errors
///
/// A [`RuleError`] saying which rule the alias breaks.
pub fn validate_new_alias(alias: &str) -> Result<(), RuleError> {
    validate_alias(alias)?;
    if is_latest_alias(alias) {
        return Err(rule_error("'latest' alias name (case insensitive) is reserved."));
    }
    let mut chars = alias.chars();
    if matches!(chars.next(), Some('v' | 'V'))
        && !chars.as_str().is_empty()
        && chars.all(|c| c.is_ascii_digit())
    {
        return Err(rule_error(format!("Version alias name '{alias}' is reserved.")));
    }
    Ok(())
}

/// Reads a version number as sent on the wire (a decimal string).
///
/// # Errors
///
/// The reference's message for anything that is not an integer.
pub fn parse_version(text: &str) -> Result<i64, RuleError> {
    text.trim()
        .parse::<i64>()
        .map_err(|_| rule_error(format!("Parameter 'version' must be an integer, got '{text}'.")))
}

/// Which version of a registered model a reference means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef {
    /// A version number (`models:/name/3`).
    Number(i64),
    /// The highest live version (`models:/name/latest`, alias `latest`).
    Latest,
    /// The highest live version in a stage (`models:/name/Production`).
    Stage(Stage),
    /// The version an alias points at (`models:/name@champion`).
    Alias(String),
}

/// What a new model version's `source` is, read from its URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `models:/<model_id>`: a logged model; the version's files are the model's artifacts.
    LoggedModel(String),
    /// `models:/<name>/<version|stage|latest>` or `models:/<name>@<alias>`: the files of another
    /// registered version.
    RegisteredVersion {
        /// The registered model's name.
        name: String,
        /// Which of its versions.
        version: VersionRef,
    },
    /// `runs:/<run_id>/<path>`: a path inside a run's artifacts.
    Run {
        /// The run named by the URI.
        run_id: String,
        /// The path inside the run's artifact root (may be empty).
        path: String,
    },
    /// `mlflow-artifacts:/<path>`: a location behind this server's artifact proxy.
    Proxied,
    /// A path on the server's disk (no scheme, or `file:`).
    Local,
    /// Any other URI (`s3://`, `gs://`, `dbfs:/`, ...): the server stores it as given and never
    /// reads from it.
    External,
}

/// Schemes whose artifact repositories connect to the host named in the URI. A registered
/// source that names another host would make whoever downloads the model connect there, so such
/// sources are refused (as the reference does when the operator has not allowed the scheme).
const HOST_ADDRESSED_SCHEMES: [&str; 10] = [
    "ftp",
    "sftp",
    "hdfs",
    "viewfs",
    "http",
    "https",
    "mlflow-artifacts",
    "r2",
    "b2",
    "abfss",
];

/// Decodes `%XX` escapes once; a malformed escape stays as written.
fn percent_decode_once(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes `%XX` escapes (and `+`) until nothing changes, so that `%252e%252e` cannot hide a
/// `..` from a check that looks at one decoding.
fn fully_decoded(text: &str) -> String {
    let mut current = text.to_owned();
    // Each round shortens the text, so this ends; the bound only guards against a bug.
    for _ in 0..text.len() + 1 {
        let next = percent_decode_once(&current.replace('+', " "));
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// The URI scheme (lower-cased) and what follows its colon, or `None` for a plain path.
fn split_scheme(uri: &str) -> Option<(String, &str)> {
    let (scheme, rest) = uri.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| (scheme.to_ascii_lowercase(), rest))
}

/// The message for a source whose form is wrong.
fn invalid_source(source: &str, why: &str) -> RuleError {
    rule_error(format!("Invalid model version source: '{source}'. {why}"))
}

/// Reads the part of a `models:` URI after `models:`.
fn parse_models_uri(source: &str, rest: &str) -> Result<ModelSource, RuleError> {
    const FORMS: &str = "A models URI is models:/<model_id>, models:/<name>/<version>, \
                         models:/<name>/<stage>, models:/<name>/latest or models:/<name>@<alias>.";
    let path = rest
        .strip_prefix('/')
        .filter(|p| !p.starts_with('/') && !p.is_empty())
        .ok_or_else(|| invalid_source(source, FORMS))?;
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [name, suffix] if !name.trim().is_empty() && !suffix.trim().is_empty() => {
            let version = if suffix.bytes().all(|b| b.is_ascii_digit()) {
                VersionRef::Number(
                    suffix
                        .parse()
                        .map_err(|_| invalid_source(source, "The version number is too large."))?,
                )
            } else if suffix.eq_ignore_ascii_case("latest") {
                VersionRef::Latest
            } else {
                VersionRef::Stage(Stage::parse(suffix)?)
            };
            Ok(ModelSource::RegisteredVersion {
                name: (*name).to_owned(),
                version,
            })
        }
        [one] if !one.trim().is_empty() => match one.rsplit_once('@') {
            Some((name, alias)) if !name.is_empty() && !alias.trim().is_empty() => {
                Ok(ModelSource::RegisteredVersion {
                    name: name.to_owned(),
                    version: if is_latest_alias(alias) {
                        VersionRef::Latest
                    } else {
                        VersionRef::Alias(alias.to_owned())
                    },
                })
            }
            Some(_) => Err(invalid_source(source, FORMS)),
            None => Ok(ModelSource::LoggedModel((*one).to_owned())),
        },
        _ => Err(invalid_source(source, FORMS)),
    }
}

/// Reads a new version's `source`.
///
/// # Errors
///
/// A [`RuleError`] for a source with a `..` segment or a NUL (however percent-encoded), a
/// `models:` or `runs:` URI of the wrong shape or naming a host, and a URI whose scheme makes its
/// reader connect to the host it names (`http://elsewhere/...`).
pub fn parse_source(source: &str) -> Result<ModelSource, RuleError> {
    let decoded = fully_decoded(source);
    if decoded.contains('\0') || decoded.split(['/', '\\']).any(|segment| segment == "..") {
        return Err(invalid_source(
            source,
            "A source must be an absolute location without '..' segments or NUL characters.",
        ));
    }
    let Some((scheme, rest)) = split_scheme(source) else {
        return Ok(ModelSource::Local);
    };
    match scheme.as_str() {
        "models" => parse_models_uri(source, rest),
        "runs" => {
            let path = rest
                .strip_prefix('/')
                .filter(|p| !p.starts_with('/'))
                .ok_or_else(|| {
                    invalid_source(source, "A runs URI is runs:/<run_id>/<path>, without a host.")
                })?;
            let (run_id, path) = path.split_once('/').unwrap_or((path, ""));
            if run_id.is_empty() {
                return Err(invalid_source(source, "A runs URI is runs:/<run_id>/<path>."));
            }
            Ok(ModelSource::Run {
                run_id: run_id.to_owned(),
                path: path.trim_matches('/').to_owned(),
            })
        }
        "mlflow-artifacts" if !rest.starts_with("//") => Ok(ModelSource::Proxied),
        "file" => Ok(ModelSource::Local),
        scheme if HOST_ADDRESSED_SCHEMES.contains(&scheme) => Err(rule_error(format!(
            "'source' cannot use the '{scheme}' scheme with a host: the model would be fetched from the host \
             named in the URI. Register files stored through this server (mlflow-artifacts:/...), a run's \
             artifacts (runs:/...) or a logged model (models:/...)."
        ))),
        _ => Ok(ModelSource::External),
    }
}

/// Splits a URI or path into (scheme, authority, decoded non-empty path segments), with local
/// paths and `file:` URIs as scheme `""`, so that `/a/b` and `file:///a/b` compare equal.
fn uri_parts(uri: &str) -> (String, String, Vec<String>) {
    let (scheme, rest) = match split_scheme(uri) {
        Some((scheme, rest)) if scheme == "file" => (String::new(), rest),
        Some((scheme, rest)) => (scheme, rest),
        None => (String::new(), uri),
    };
    let (authority, path) = match rest.strip_prefix("//") {
        Some(after) => {
            let (authority, path) = after.split_once('/').unwrap_or((after, ""));
            (authority.to_ascii_lowercase(), path)
        }
        None => (String::new(), rest),
    };
    // `file://localhost/x` is the local `/x`.
    let authority = if scheme.is_empty() && authority == "localhost" {
        String::new()
    } else {
        authority
    };
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .map(fully_decoded)
        .collect();
    (scheme, authority, segments)
}

/// Whether `source` lies inside `root` (the same scheme and host, and `root`'s path segments
/// are a prefix of `source`'s). A root with no path contains nothing, so that a bare
/// `mlflow-artifacts:` root does not vouch for everything behind the proxy.
pub fn uri_within_root(source: &str, root: &str) -> bool {
    let (source_scheme, source_authority, source_segments) = uri_parts(source);
    let (root_scheme, root_authority, root_segments) = uri_parts(root);
    source_scheme == root_scheme
        && source_authority == root_authority
        && !root_segments.is_empty()
        && source_segments.starts_with(&root_segments)
}

/// Whether an artifact root is on the server's disk (a path or a `file:` URI).
fn is_local(uri: &str) -> bool {
    split_scheme(uri).is_none_or(|(scheme, _)| scheme == "file")
}

/// What the store found about the resources a create request names, for [`check_source`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceContext<'a> {
    /// The artifact root of the run named by `run_id`, when it exists.
    pub run_artifact_root: Option<&'a str>,
    /// The artifact root of the logged model named by `model_id`, when it exists.
    pub model_artifact_root: Option<&'a str>,
}

/// Checks that a new version's `source` lies inside the run or logged model the request names,
/// so that a client cannot register (and later have the server serve) files it does not own:
///
/// * with a `model_id`: a `models:/<id>` source must be that model, an `mlflow-artifacts:` or
///   local source must lie under the model's artifact root, a `runs:/` source is refused;
/// * otherwise: a `runs:/<run>/...` source needs `run_id` = that run, an `mlflow-artifacts:` or
///   local source must lie under the artifact root of the run named by `run_id`, and a
///   `models:/<id>` source needs the `model_id`;
/// * another registered version and external URIs (`s3://...`) are accepted as they are.
///
/// # Errors
///
/// A [`RuleError`] naming the field that must identify the source's owner.
pub fn check_source(
    source: &str,
    parsed: &ModelSource,
    run_id: Option<&str>,
    model_id: Option<&str>,
    context: SourceContext<'_>,
) -> Result<(), RuleError> {
    let owner = |field: &str| {
        invalid_source(
            source,
            &format!("The {field} request parameter must identify the resource that contains the source."),
        )
    };
    let local_inside = |root: Option<&str>, field: &str, owner_kind: &str| match root {
        Some(root) if is_local(root) && uri_within_root(source, root) => Ok(()),
        _ => Err(invalid_source(
            source,
            &format!(
                "To use a local path as a model version source, the {field} request parameter has to be \
                 specified and the local path has to be contained within the artifact directory of the \
                 {owner_kind} specified by the {field}."
            ),
        )),
    };
    let model_id = model_id.filter(|m| !m.is_empty());
    let run_id = run_id.filter(|r| !r.is_empty());
    match (parsed, model_id) {
        (ModelSource::Local, Some(_)) => local_inside(context.model_artifact_root, "model_id", "model"),
        (ModelSource::Local, None) => local_inside(context.run_artifact_root, "run_id", "run"),
        (ModelSource::LoggedModel(id), Some(model_id)) if id == model_id => Ok(()),
        (ModelSource::LoggedModel(_), _) => Err(owner("model_id")),
        (ModelSource::Run { .. }, Some(_)) => Err(owner("model_id")),
        (
            ModelSource::Run {
                run_id: source_run, ..
            },
            None,
        ) if run_id == Some(source_run.as_str()) => Ok(()),
        (ModelSource::Run { .. }, None) => Err(owner("run_id")),
        (ModelSource::Proxied, Some(_)) => match context.model_artifact_root {
            Some(root) if uri_within_root(source, root) => Ok(()),
            _ => Err(owner("model_id")),
        },
        (ModelSource::Proxied, None) => match context.run_artifact_root {
            Some(root) if run_id.is_some() && uri_within_root(source, root) => Ok(()),
            _ => Err(owner("run_id")),
        },
        (ModelSource::RegisteredVersion { .. } | ModelSource::External, _) => Ok(()),
    }
}

/// Checks a version registered from another version (`models:/name/...`): a `run_id` or
/// `model_id` the request gives must be the referenced version's, so that a copy cannot claim
/// another lineage than its original. Absent ones are inherited by the caller.
///
/// # Errors
///
/// A [`RuleError`] when either differs.
pub fn check_inherited_lineage(
    source: &str,
    requested_run_id: Option<&str>,
    requested_model_id: Option<&str>,
    referenced_run_id: &str,
    referenced_model_id: Option<&str>,
) -> Result<(), RuleError> {
    let differs = |requested: Option<&str>, referenced: &str| requested.is_some_and(|r| r != referenced);
    if differs(requested_run_id, referenced_run_id)
        || differs(requested_model_id, referenced_model_id.unwrap_or(""))
    {
        return Err(invalid_source(
            source,
            "The run_id and model_id request parameters must match the referenced model version.",
        ));
    }
    Ok(())
}

/// The `source` stored for a version registered from another version: the reference resolved
/// to a number, so that a later move of the alias or stage does not change what was registered.
pub fn registered_version_uri(name: &str, version: i64) -> String {
    format!("models:/{name}/{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_case_insensitively_and_print_canonically() {
        assert_eq!(Stage::parse("production"), Ok(Stage::Production));
        assert_eq!(Stage::parse("STAGING"), Ok(Stage::Staging));
        assert_eq!(Stage::parse("none").map(Stage::as_str), Ok("None"));
        let e = Stage::parse("bogus").unwrap_err().0;
        assert_eq!(
            e,
            "Invalid Model Version stage: bogus. Value must be one of None, Staging, Production, Archived."
        );
        assert_eq!(Stage::from_stored("production"), None);
        assert_eq!(Stage::from_stored("Archived"), Some(Stage::Archived));
    }

    #[test]
    fn only_active_stages_archive_existing_versions() {
        assert!(check_archive_existing(Stage::Production, true).is_ok());
        assert!(check_archive_existing(Stage::Staging, true).is_ok());
        assert!(check_archive_existing(Stage::None, false).is_ok());
        assert!(check_archive_existing(Stage::None, true).is_err());
        assert!(check_archive_existing(Stage::Archived, true).is_err());
    }

    #[test]
    fn aliases_reserve_latest_and_version_names() {
        for ok in ["champion", "a-b_c", "v1a", "vv1", "v", "ünïcode", "V_2"] {
            assert!(validate_new_alias(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            validate_new_alias("LaTeSt").unwrap_err().0,
            "'latest' alias name (case insensitive) is reserved."
        );
        assert_eq!(
            validate_new_alias("v12").unwrap_err().0,
            "Version alias name 'v12' is reserved."
        );
        assert!(validate_new_alias("V3").is_err());
        for bad in ["", "a b", "a.b", "a/b", "a@b"] {
            assert!(validate_alias(bad).is_err(), "{bad:?}");
        }
        assert!(validate_alias(&"a".repeat(255)).is_ok());
        assert!(validate_alias(&"a".repeat(256)).is_err());
        // Reading an alias only checks its spelling.
        assert!(validate_alias("latest").is_ok());
    }

    #[test]
    fn model_names_cannot_look_like_paths() {
        for ok in ["reg", "my model", "a.b", "x..y", "é"] {
            assert!(validate_model_name(ok, "name").is_ok(), "{ok}");
        }
        for bad in ["", "  ", "a/b", "a:b", ".", "..", "..x"] {
            assert!(validate_model_name(bad, "name").is_err(), "{bad:?}");
        }
        assert!(
            validate_model_name("", "new_name")
                .unwrap_err()
                .0
                .contains("'new_name'")
        );
    }

    #[test]
    fn versions_are_integers() {
        assert_eq!(parse_version("12"), Ok(12));
        assert_eq!(
            parse_version("abc").unwrap_err().0,
            "Parameter 'version' must be an integer, got 'abc'."
        );
        assert!(parse_version("1.5").is_err());
    }

    #[test]
    fn sources_are_classified_by_their_uri() {
        let registered = |name: &str, version| ModelSource::RegisteredVersion {
            name: name.into(),
            version,
        };
        assert_eq!(
            parse_source("models:/m-0123abc"),
            Ok(ModelSource::LoggedModel("m-0123abc".into()))
        );
        assert_eq!(
            parse_source("models:/reg/3"),
            Ok(registered("reg", VersionRef::Number(3)))
        );
        assert_eq!(
            parse_source("models:/reg/LATEST"),
            Ok(registered("reg", VersionRef::Latest))
        );
        assert_eq!(
            parse_source("models:/reg/production"),
            Ok(registered("reg", VersionRef::Stage(Stage::Production)))
        );
        assert_eq!(
            parse_source("models:/reg@champ"),
            Ok(registered("reg", VersionRef::Alias("champ".into())))
        );
        assert_eq!(
            parse_source("models:/reg@latest"),
            Ok(registered("reg", VersionRef::Latest))
        );
        assert_eq!(
            parse_source("runs:/abc/model/sub"),
            Ok(ModelSource::Run {
                run_id: "abc".into(),
                path: "model/sub".into()
            })
        );
        assert_eq!(
            parse_source("runs:/abc"),
            Ok(ModelSource::Run {
                run_id: "abc".into(),
                path: String::new()
            })
        );
        assert_eq!(
            parse_source("mlflow-artifacts:/1/abc/artifacts/model"),
            Ok(ModelSource::Proxied)
        );
        assert_eq!(parse_source("/tmp/model"), Ok(ModelSource::Local));
        assert_eq!(parse_source("file:///tmp/model"), Ok(ModelSource::Local));
        assert_eq!(parse_source("s3://bucket/key"), Ok(ModelSource::External));
        assert_eq!(parse_source("gs://bucket/key"), Ok(ModelSource::External));
        for bad in [
            "models:/",
            "models://host/reg/1",
            "models:/a/b/c",
            "models:/reg/bogus",
            "models:/@x",
            "models:/reg@",
            "runs://host/abc/model",
            "runs:/",
            "s3://b/../k",
            "s3://b/%2e%2e/k",
            "s3://b/%252e%252e/k",
            "/tmp/a\0b",
            "http://elsewhere/model",
            "https://elsewhere/api/2.0/mlflow-artifacts/artifacts/x",
            "mlflow-artifacts://elsewhere/x",
            "ftp://host/x",
        ] {
            assert!(parse_source(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_copied_version_keeps_its_originals_lineage() {
        let check = |run, model| check_inherited_lineage("models:/reg/1", run, model, "r1", Some("m-1"));
        assert!(check(None, None).is_ok());
        assert!(check(Some("r1"), Some("m-1")).is_ok());
        assert!(check(Some("r2"), None).is_err());
        assert!(check(None, Some("m-2")).is_err());
        assert!(check_inherited_lineage("models:/reg/1", Some("r1"), None, "", None).is_err());
    }

    #[test]
    fn roots_contain_what_is_under_them() {
        assert!(uri_within_root(
            "mlflow-artifacts:/1/abc/artifacts/model",
            "mlflow-artifacts:/1/abc/artifacts"
        ));
        assert!(uri_within_root(
            "mlflow-artifacts:/1/abc/artifacts",
            "mlflow-artifacts:/1/abc/artifacts"
        ));
        assert!(!uri_within_root(
            "mlflow-artifacts:/1/abcd/artifacts",
            "mlflow-artifacts:/1/abc"
        ));
        assert!(!uri_within_root(
            "mlflow-artifacts:/1/other",
            "mlflow-artifacts:/1/abc/artifacts"
        ));
        assert!(!uri_within_root(
            "mlflow-artifacts:/anything",
            "mlflow-artifacts:"
        ));
        assert!(!uri_within_root(
            "s3://b/1/abc/artifacts",
            "mlflow-artifacts:/1/abc/artifacts"
        ));
        assert!(uri_within_root(
            "/data/1/abc/artifacts/m",
            "file:///data/1/abc/artifacts"
        ));
        assert!(uri_within_root("file:///data/x/m", "/data/x"));
        assert!(uri_within_root(
            "mlflow-artifacts:/1/a%20b/artifacts/m",
            "mlflow-artifacts:/1/a b/artifacts"
        ));
    }

    #[test]
    fn sources_must_lie_inside_the_named_run_or_model() {
        let run_root = "mlflow-artifacts:/1/r1/artifacts";
        let model_root = "mlflow-artifacts:/1/models/m-1/artifacts";
        let ctx = SourceContext {
            run_artifact_root: Some(run_root),
            model_artifact_root: None,
        };
        let check = |source: &str, run: Option<&str>, model: Option<&str>, ctx| {
            check_source(source, &parse_source(source).unwrap(), run, model, ctx)
        };
        assert!(check("runs:/r1/model", Some("r1"), None, ctx).is_ok());
        let e = check("runs:/r1/model", None, None, ctx).unwrap_err().0;
        assert_eq!(
            e,
            "Invalid model version source: 'runs:/r1/model'. The run_id request parameter must identify \
             the resource that contains the source."
        );
        assert!(check("runs:/r1/model", Some("r2"), None, ctx).is_err());
        assert!(check("runs:/r1/model", Some("r1"), Some("m-1"), ctx).is_err());
        assert!(check("mlflow-artifacts:/1/r1/artifacts/model", Some("r1"), None, ctx).is_ok());
        assert!(check("mlflow-artifacts:/1/r2/artifacts/model", Some("r1"), None, ctx).is_err());
        assert!(check("mlflow-artifacts:/1/r1/artifacts/model", None, None, ctx).is_err());
        assert!(check("/tmp/model", Some("r1"), None, ctx).is_err());
        let local = SourceContext {
            run_artifact_root: Some("/data/1/r1/artifacts"),
            model_artifact_root: None,
        };
        assert!(check("/data/1/r1/artifacts/model", Some("r1"), None, local).is_ok());
        assert!(check("/data/1/r2/artifacts/model", Some("r1"), None, local).is_err());
        assert!(check("s3://b/k", None, None, ctx).is_ok());
        assert!(check("models:/reg/1", None, None, ctx).is_ok());
        assert!(check("models:/m-1", None, None, ctx).is_err());
        assert!(check("models:/m-1", None, Some("m-2"), ctx).is_err());
        let with_model = SourceContext {
            run_artifact_root: None,
            model_artifact_root: Some(model_root),
        };
        assert!(check("models:/m-1", None, Some("m-1"), with_model).is_ok());
        assert!(
            check(
                "mlflow-artifacts:/1/models/m-1/artifacts/x",
                None,
                Some("m-1"),
                with_model
            )
            .is_ok()
        );
        assert!(
            check(
                "mlflow-artifacts:/1/r1/artifacts/x",
                Some("r1"),
                Some("m-1"),
                with_model
            )
            .is_err()
        );
        assert!(check("s3://b/k", None, Some("m-1"), with_model).is_ok());
    }
}
