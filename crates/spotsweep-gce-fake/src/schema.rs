//! The Compute v1 formats (methods and schemas of the discovery document, descriptions
//! stripped: `schema/compute.v1.json`) and a strict validator over them: routes with their
//! path-parameter patterns, query-parameter types, and request bodies walked through their
//! schema (types, `int64` as strings, enums, unknown fields, required annotations).

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

/// The stripped discovery subset, embedded.
static DOC: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../schema/compute.v1.json")).expect("the embedded schema parses")
});

/// One method of the API.
#[derive(Debug)]
pub struct Method {
    /// `instances.insert`, ...
    pub id: String,
    /// `GET`, `POST`, ...
    pub http_method: String,
    /// Path segments; `{name}` for a parameter.
    segments: Vec<String>,
    parameters: serde_json::Map<String, Value>,
    /// The request body's schema name.
    pub request: Option<String>,
    /// The response's schema name.
    pub response: Option<String>,
    patterns: HashMap<String, Regex>,
}

static METHODS: LazyLock<Vec<Method>> = LazyLock::new(|| {
    DOC["methods"]
        .as_object()
        .expect("methods")
        .iter()
        .map(|(id, m)| {
            let parameters = m["parameters"].as_object().cloned().unwrap_or_default();
            let patterns = parameters
                .iter()
                .filter_map(|(name, p)| {
                    let pattern = p["pattern"].as_str()?;
                    Some((
                        name.clone(),
                        Regex::new(&format!("^(?:{pattern})$")).expect("a valid pattern"),
                    ))
                })
                .collect();
            Method {
                id: id.clone(),
                http_method: m["httpMethod"].as_str().unwrap_or_default().to_string(),
                segments: m["path"]
                    .as_str()
                    .unwrap_or_default()
                    .split('/')
                    .map(str::to_string)
                    .collect(),
                parameters,
                request: m["request"].as_str().map(str::to_string),
                response: m["response"].as_str().map(str::to_string),
                patterns,
            }
        })
        .collect()
});

/// A request matched to a method: its path parameters by name.
#[derive(Debug)]
pub struct Matched {
    /// The method.
    pub method: &'static Method,
    /// Its path parameters by name, decoded.
    pub path: HashMap<String, String>,
}

/// The method a request is for, by HTTP method and the path after the service path
/// (`projects/p/zones/z/instances`); `None` when no method has that path.
pub fn route(http_method: &str, path: &str) -> Option<Matched> {
    let parts: Vec<&str> = path.split('/').collect();
    METHODS.iter().find_map(|m| {
        if m.http_method != http_method || m.segments.len() != parts.len() {
            return None;
        }
        let mut params = HashMap::new();
        for (seg, part) in m.segments.iter().zip(&parts) {
            match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    params.insert(name.to_string(), percent_decode(part));
                }
                None if seg == part => {}
                None => return None,
            }
        }
        Some(Matched {
            method: m,
            path: params,
        })
    })
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl Method {
    /// Checks path parameters against their patterns and query parameters against their
    /// types; the message names the parameter.
    pub fn check_parameters(
        &self,
        path: &HashMap<String, String>,
        query: &[(String, String)],
    ) -> Result<(), String> {
        for (name, value) in path {
            if let Some(re) = self.patterns.get(name)
                && !re.is_match(value)
            {
                return Err(format!(
                    "Invalid value for field '{name}': '{value}'. Must be a match of regex '{}'",
                    self.parameters[name]["pattern"].as_str().unwrap_or_default()
                ));
            }
        }
        for (name, value) in query {
            // Standard system parameters (alt, prettyPrint, fields, ...) are accepted as is.
            let Some(p) = self.parameters.get(name) else {
                if STANDARD_QUERY.contains(&name.as_str()) {
                    continue;
                }
                return Err(format!(
                    "Invalid JSON payload received. Unknown name \"{name}\": Cannot bind query parameter."
                ));
            };
            let ok = match p["type"].as_str() {
                Some("integer") => value.parse::<i64>().is_ok(),
                Some("boolean") => value == "true" || value == "false",
                _ => true,
            };
            if !ok {
                return Err(format!(
                    "Invalid value at '{name}' ({}): \"{value}\"",
                    p["type"].as_str().unwrap_or("")
                ));
            }
        }
        Ok(())
    }
}

const STANDARD_QUERY: &[&str] = &[
    "alt",
    "fields",
    "prettyPrint",
    "quotaUser",
    "userIp",
    "key",
    "$.xgafv",
];

/// Validates a request body against schema `name`: every field known (unknown names are
/// rejected, as the real API does), of its type, enums respected, and the fields the schema
/// annotates as required by `method_id` present. Output-only fields are accepted and ignored.
pub fn check_request(name: &str, body: &Value, method_id: &str) -> Result<(), String> {
    check(
        &DOC["schemas"][name],
        body,
        &lower_first(name),
        &format!("compute.{method_id}"),
        true,
    )
}

/// Validates a response the fake is about to send against schema `name` (the same walk, so the
/// fake cannot drift from the wire format).
pub fn check_response(name: &str, body: &Value) -> Result<(), String> {
    check(&DOC["schemas"][name], body, &lower_first(name), "", false)
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

fn check(schema: &Value, value: &Value, at: &str, method_id: &str, input: bool) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        return check(&DOC["schemas"][r], value, at, method_id, input);
    }
    let ty = schema["type"].as_str().unwrap_or("any");
    let bad = |want: &str| Err(format!("Invalid value at '{at}' ({want}), {value}"));
    match ty {
        "string" => {
            let Some(s) = value.as_str() else {
                return bad("TYPE_STRING");
            };
            match schema["format"].as_str() {
                Some("int64") if s.parse::<i64>().is_err() => return bad("TYPE_INT64"),
                Some("uint64") if s.parse::<u64>().is_err() => return bad("TYPE_UINT64"),
                _ => {}
            }
            if let Some(values) = schema["enum"].as_array()
                && !values.iter().any(|e| e.as_str() == Some(s))
            {
                return Err(format!("Invalid value at '{at}' (TYPE_ENUM), \"{s}\""));
            }
            Ok(())
        }
        "integer" => match value.as_i64().or_else(|| value.as_u64().map(|u| u as i64)) {
            Some(_) => Ok(()),
            // Integers may also be written as strings.
            None if value.as_str().is_some_and(|s| s.parse::<i64>().is_ok()) => Ok(()),
            None => bad("TYPE_INT32"),
        },
        "number" => match value {
            Value::Number(_) => Ok(()),
            Value::String(s) if s.parse::<f64>().is_ok() => Ok(()),
            _ => bad("TYPE_DOUBLE"),
        },
        "boolean" => match value {
            Value::Bool(_) => Ok(()),
            _ => bad("TYPE_BOOL"),
        },
        "array" => {
            let Some(items) = value.as_array() else {
                return bad("TYPE_ARRAY");
            };
            for (i, item) in items.iter().enumerate() {
                check(&schema["items"], item, &format!("{at}[{i}]"), method_id, input)?;
            }
            Ok(())
        }
        "object" => {
            let Some(obj) = value.as_object() else {
                return bad("TYPE_MESSAGE");
            };
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in obj {
                    let Some(p) = props.get(k) else {
                        return Err(format!(
                            "Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field."
                        ));
                    };
                    if v.is_null() {
                        continue;
                    }
                    check(p, v, &format!("{at}.{k}"), method_id, input)?;
                }
                if input && !method_id.is_empty() {
                    for (k, p) in props {
                        let required = p["annotations"]["required"]
                            .as_array()
                            .is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(method_id)));
                        if required && obj.get(k).is_none_or(Value::is_null) {
                            return Err(format!("Required field '{at}.{k}' not specified"));
                        }
                    }
                }
            } else if schema.get("additionalProperties").is_some() {
                for (k, v) in obj {
                    check(
                        &schema["additionalProperties"],
                        v,
                        &format!("{at}[{k}]"),
                        method_id,
                        input,
                    )?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_match_paths_and_patterns() {
        let m = route("POST", "projects/p1/zones/us-central1-a/instances").unwrap();
        assert_eq!(m.method.id, "instances.insert");
        assert_eq!(m.path["zone"], "us-central1-a");
        let m = route("GET", "projects/p1/zones/us-central1-a/instances/vm-1").unwrap();
        assert_eq!(m.method.id, "instances.get");
        assert!(m.method.check_parameters(&m.path, &[]).is_ok());
        let m = route("GET", "projects/p1/zones/us-central1-a/instances/Bad_Name").unwrap();
        assert!(
            m.method
                .check_parameters(&m.path, &[])
                .unwrap_err()
                .contains("'instance'")
        );
        assert!(route("PUT", "projects/p1/zones/z/instances").is_none());
        let m = route("GET", "projects/p1/aggregated/instances").unwrap();
        assert!(
            m.method
                .check_parameters(&m.path, &[("maxResults".into(), "x".into())])
                .is_err()
        );
        assert!(
            m.method
                .check_parameters(&m.path, &[("maxResults".into(), "5".into())])
                .is_ok()
        );
    }

    #[test]
    fn bodies_are_checked_strictly() {
        let ok = json!({"name": "vm-1", "machineType": "zones/z/machineTypes/a2-highgpu-1g",
                        "scheduling": {"provisioningModel": "SPOT", "maxRunDuration": {"seconds": "3600"}},
                        "labels": {"managed-by": "spotsweep"}});
        check_request("Instance", &ok, "instances.insert").unwrap();
        let unknown = json!({"name": "vm-1", "schedulng": {}});
        assert!(
            check_request("Instance", &unknown, "instances.insert")
                .unwrap_err()
                .contains("Unknown name \"schedulng\"")
        );
        let bad_enum = json!({"name": "vm-1", "scheduling": {"provisioningModel": "CHEAP"}});
        assert!(
            check_request("Instance", &bad_enum, "instances.insert")
                .unwrap_err()
                .contains("TYPE_ENUM")
        );
        let int64_as_number = json!({"name": "vm-1", "scheduling": {"maxRunDuration": {"seconds": 3600}}});
        assert!(
            check_request("Instance", &int64_as_number, "instances.insert")
                .unwrap_err()
                .contains("TYPE_STRING")
        );
        let no_name = json!({"machineType": "x"});
        assert!(
            check_request("Instance", &no_name, "instances.insert")
                .unwrap_err()
                .contains("instance.name")
        );
        let label_not_string = json!({"name": "vm-1", "labels": {"a": 1}});
        assert!(check_request("Instance", &label_not_string, "instances.insert").is_err());
    }
}
