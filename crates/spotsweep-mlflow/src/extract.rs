//! Reading MLflow requests: a `GET` carries its message in the query string (repeated keys for
//! repeated fields), anything else in a JSON body. Both are turned into one JSON object and
//! deserialized with the lenient field rules of proto3 JSON: numbers may come as strings, a
//! repeated field may come as a single value, unknown fields are ignored.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::error::{MlflowError, MlflowResult};

/// The largest JSON body accepted on tracking routes. The reference caps `log-batch` at 1 MB;
/// the margin allows for escaping.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// An MLflow request message of type `T`, from the query string or the JSON body.
pub struct Mlflow<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Mlflow<T> {
    type Rejection = MlflowError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if req.method() == Method::GET {
            let value = query_to_json(req.uri().query().unwrap_or(""));
            return serde_json::from_value(value)
                .map(Mlflow)
                .map_err(|e| MlflowError::invalid(format!("Invalid request: {e}")));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| MlflowError::invalid(format!("could not read the request body: {e}")))?;
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &body
        };
        // Straight from the bytes into the message type: no intermediate JSON tree on the hot
        // logging path.
        serde_json::from_slice(body).map(Mlflow).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                MlflowError {
                    error_code: crate::ErrorCode::BadRequest,
                    message: format!("Malformed JSON body: {e}"),
                }
            } else {
                MlflowError::invalid(format!("Invalid request: {e}"))
            }
        })
    }
}

/// `a=1&b=x&b=y` becomes `{"a": "1", "b": ["x", "y"]}`.
pub fn query_to_json(query: &str) -> Value {
    let mut map = Map::new();
    for (k, v) in form_urlencoded_pairs(query) {
        match map.get_mut(&k) {
            None => {
                map.insert(k, Value::String(v));
            }
            Some(Value::Array(items)) => items.push(Value::String(v)),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::String(v)]);
            }
        }
    }
    Value::Object(map)
}

fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(k), decode_component(v))
    })
}

fn decode_component(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

/// A JSON number or a numeric string, as an `i64` (proto3 JSON sends int64 as strings).
pub fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected an integer, got {n}"))),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("expected an integer, got '{s}'"))),
        Some(other) => Err(D::Error::custom(format!("expected an integer, got {other}"))),
    }
}

/// A metric value: a JSON number, a numeric string, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
pub fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => match s.trim() {
            "NaN" | "nan" => Ok(Some(f64::NAN)),
            "Infinity" | "inf" | "+Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" | "-inf" => Ok(Some(f64::NEG_INFINITY)),
            t => t
                .parse::<f64>()
                .map(Some)
                .map_err(|_| D::Error::custom(format!("expected a number, got '{s}'"))),
        },
        Some(other) => Err(D::Error::custom(format!("expected a number, got {other}"))),
    }
}

/// A repeated string field that may arrive as one string (a single query-string key).
pub fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(D::Error::custom(format!("expected a string, got {other}"))),
            })
            .collect(),
        Some(Value::Number(n)) => Ok(vec![n.to_string()]),
        Some(other) => Err(D::Error::custom(format!(
            "expected a list of strings, got {other}"
        ))),
    }
}

/// A string field that may arrive as a JSON number (ids such as `experiment_id`).
pub fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(other) => Err(D::Error::custom(format!("expected a string, got {other}"))),
    }
}

/// Any request that names a run by `run_id` or the legacy `run_uuid`.
#[derive(Deserialize)]
pub struct RunRef {
    /// The run id.
    pub run_id: Option<String>,
    /// The same, under its legacy name.
    pub run_uuid: Option<String>,
}

impl RunRef {
    /// The id, from whichever field carries it; a 400 when neither does.
    pub fn id(&self) -> MlflowResult<&str> {
        self.run_id
            .as_deref()
            .filter(|v| !v.is_empty())
            .or(self.run_uuid.as_deref().filter(|v| !v.is_empty()))
            .ok_or_else(|| MlflowError::missing("run_id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_query_keys_become_arrays() {
        let v = query_to_json("run_ids=a&run_ids=b&metric_key=loss%20x&max_results=10");
        assert_eq!(v["run_ids"], serde_json::json!(["a", "b"]));
        assert_eq!(v["metric_key"], "loss x");
        assert_eq!(v["max_results"], "10");
    }
}
