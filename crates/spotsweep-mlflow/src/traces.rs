//! MLflow 3's traces: what `@mlflow.trace`, `mlflow.start_span`, `mlflow.search_traces` and
//! the web UI's Traces tab send. The client starts (and, when the trace ends, sends again) a
//! trace's record, then uploads its spans as `traces.json` to the location this server answers
//! in the tag `mlflow.artifactLocation`; search and get read the records, the spans come back
//! through the artifact proxy.
//!
//! The client exports spans over OTLP (`/v1/traces`) only to servers whose `/version` is 3.4 or
//! newer; this one answers its own version, so the record-and-artifact path is the one used.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use spotsweep_core::search::{TraceOrderBy, parse_trace_filter, parse_trace_order_by};
use spotsweep_store::{KeyValue, TraceDeletion, TraceInfo, TraceQuery};

use crate::MlflowState;
use crate::artifacts::download_under;
use crate::error::{MlflowError, MlflowResult};
use crate::extract::{Mlflow, lenient_i64, lenient_string, one_or_many};
use crate::tracking::{decode_page_token, encode_page_token};
use crate::validation::parse_experiment_id;

type JsonResult = MlflowResult<Json<Value>>;

/// Most traces one search page may return, as the reference.
const MAX_TRACE_RESULTS: i64 = 500;

// ---------------------------------------------------------------------------------------------
// Time on the wire: protobuf's Timestamp (RFC 3339) and Duration (`1.5s`) in JSON.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if month <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        month,
        day,
    )
}

/// Milliseconds since the epoch of an RFC 3339 timestamp (`2026-12-07T05:35:22.363Z`, or with an
/// offset); `None` when it is not one.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (year, month, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let (clock, offset_minutes) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':')?;
        (
            clock,
            sign * (h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?),
        )
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':');
    let (h, m, s): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if h > 23 || m > 59 || s > 60 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    let seconds = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s - offset_minutes * 60;
    seconds.checked_mul(1000)?.checked_add(millis)
}

/// An RFC 3339 timestamp in UTC with milliseconds, as the reference writes them.
pub fn format_timestamp(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Milliseconds of a protobuf Duration in JSON (`0.033s`, `2s`).
pub fn parse_duration(text: &str) -> Option<i64> {
    let seconds: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    (0.0..1e12)
        .contains(&seconds)
        .then(|| (seconds * 1000.0).round() as i64)
}

/// A protobuf Duration in JSON: `0.033s`, or `2s` for whole seconds.
pub fn format_duration(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

// ---------------------------------------------------------------------------------------------
// Wire shapes

fn map_of(list: &[KeyValue]) -> Map<String, Value> {
    list.iter().map(|kv| (kv.key.clone(), json!(kv.value))).collect()
}

fn list_of(map: Option<&Value>) -> Vec<KeyValue> {
    map.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(key, value)| KeyValue {
                    key: key.clone(),
                    value: value.as_str().map_or_else(|| value.to_string(), str::to_owned),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A trace's record as v3 answers it.
fn info_v3(t: &TraceInfo) -> Value {
    let mut out = Map::new();
    out.insert("trace_id".into(), json!(t.trace_id));
    if let Some(id) = &t.client_request_id {
        out.insert("client_request_id".into(), json!(id));
    }
    out.insert(
        "trace_location".into(),
        json!({"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": t.experiment_id.to_string()}}),
    );
    if let Some(p) = &t.request_preview {
        out.insert("request_preview".into(), json!(p));
    }
    if let Some(p) = &t.response_preview {
        out.insert("response_preview".into(), json!(p));
    }
    out.insert("request_time".into(), json!(format_timestamp(t.request_time_ms)));
    if let Some(d) = t.execution_duration_ms {
        out.insert("execution_duration".into(), json!(format_duration(d)));
    }
    out.insert("state".into(), json!(t.state));
    if !t.metadata.is_empty() {
        out.insert("trace_metadata".into(), Value::Object(map_of(&t.metadata)));
    }
    if !t.tags.is_empty() {
        out.insert("tags".into(), Value::Object(map_of(&t.tags)));
    }
    Value::Object(out)
}

/// A trace's record as v2 (and the UI's experiment probe) answers it.
fn info_v2(t: &TraceInfo) -> Value {
    let status = match t.state.as_str() {
        "OK" | "ERROR" | "IN_PROGRESS" => t.state.as_str(),
        _ => "TRACE_STATUS_UNSPECIFIED",
    };
    let pairs = |list: &[KeyValue]| -> Vec<Value> {
        list.iter()
            .map(|kv| json!({"key": kv.key, "value": kv.value}))
            .collect()
    };
    let mut out = Map::new();
    out.insert("request_id".into(), json!(t.trace_id));
    out.insert("experiment_id".into(), json!(t.experiment_id.to_string()));
    out.insert("timestamp_ms".into(), json!(t.request_time_ms));
    if let Some(d) = t.execution_duration_ms {
        out.insert("execution_time_ms".into(), json!(d));
    }
    out.insert("status".into(), json!(status));
    if !t.metadata.is_empty() {
        out.insert("request_metadata".into(), json!(pairs(&t.metadata)));
    }
    if !t.tags.is_empty() {
        out.insert("tags".into(), json!(pairs(&t.tags)));
    }
    Value::Object(out)
}

/// A trace's state from the wire (v3 `state` or v2 `status` names).
fn state_of(value: Option<&Value>) -> String {
    match value.and_then(Value::as_str) {
        Some(s @ ("OK" | "ERROR" | "IN_PROGRESS")) => s.to_owned(),
        Some("1") => "OK".into(),
        Some("2") => "ERROR".into(),
        Some("3") => "IN_PROGRESS".into(),
        _ => "STATE_UNSPECIFIED".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// `POST /api/3.0/mlflow/traces`: a trace's record, created or replaced.
#[derive(Deserialize)]
pub struct StartTrace {
    trace: Option<Value>,
}

/// Creates or replaces a trace's record; the answer says where its spans go.
pub async fn start_trace(State(s): State<MlflowState>, Mlflow(req): Mlflow<StartTrace>) -> JsonResult {
    let trace = req.trace.ok_or_else(|| MlflowError::missing("trace"))?;
    let info = trace
        .get("trace_info")
        .ok_or_else(|| MlflowError::missing("trace.trace_info"))?;
    let text = |name: &str| info.get(name).and_then(Value::as_str).filter(|v| !v.is_empty());
    let trace_id = text("trace_id").ok_or_else(|| MlflowError::missing("trace_id"))?;
    if trace_id.len() > 256 || trace_id.contains(['/', '\\']) || trace_id.contains("..") {
        return Err(MlflowError::invalid(format!("Invalid trace id '{trace_id}'")));
    }
    let experiment = info
        .pointer("/trace_location/mlflow_experiment/experiment_id")
        .and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        })
        .ok_or_else(|| MlflowError::missing("trace_location.mlflow_experiment.experiment_id"))?;
    let request_time_ms = match text("request_time") {
        None => spotsweep_store::now_ms(),
        Some(t) => parse_timestamp(t)
            .ok_or_else(|| MlflowError::invalid(format!("Invalid request_time '{t}': expected RFC 3339")))?,
    };
    let execution_duration_ms = match text("execution_duration") {
        None => None,
        Some(d) => Some(parse_duration(d).ok_or_else(|| {
            MlflowError::invalid(format!("Invalid execution_duration '{d}': expected e.g. 1.5s"))
        })?),
    };
    let stored = s
        .traces
        .upsert_trace(TraceInfo {
            trace_id: trace_id.to_owned(),
            experiment_id: parse_experiment_id(&experiment)?,
            client_request_id: text("client_request_id").map(str::to_owned),
            request_time_ms,
            execution_duration_ms,
            state: state_of(info.get("state")),
            request_preview: text("request_preview").map(str::to_owned),
            response_preview: text("response_preview").map(str::to_owned),
            metadata: list_of(info.get("trace_metadata")),
            tags: list_of(info.get("tags")),
        })
        .await?;
    Ok(Json(json!({ "trace": { "trace_info": info_v3(&stored) } })))
}

/// Gets a trace's record (v3).
pub async fn get_trace_v3(State(s): State<MlflowState>, Path(id): Path<String>) -> JsonResult {
    let info = s.traces.get_trace(&id).await?;
    Ok(Json(json!({ "trace": { "trace_info": info_v3(&info) } })))
}

/// Gets a trace's record (v2).
pub async fn get_trace_v2(State(s): State<MlflowState>, Path(id): Path<String>) -> JsonResult {
    let info = s.traces.get_trace(&id).await?;
    Ok(Json(json!({ "trace_info": info_v2(&info) })))
}

/// `POST /api/3.0/mlflow/traces/search`
#[derive(Deserialize)]
pub struct SearchTracesV3 {
    locations: Option<Vec<Value>>,
    filter: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_results: Option<i64>,
    #[serde(default, deserialize_with = "one_or_many")]
    order_by: Vec<String>,
    page_token: Option<String>,
}

/// The query of a search: its experiments, filter, order and page.
fn trace_query(
    experiment_ids: Vec<i64>,
    filter: Option<&str>,
    max_results: Option<i64>,
    order_by: &[String],
    page_token: Option<&str>,
) -> MlflowResult<TraceQuery> {
    let limit = max_results.unwrap_or(100);
    if !(1..=MAX_TRACE_RESULTS).contains(&limit) {
        return Err(MlflowError::invalid(format!(
            "Invalid value {limit} for parameter 'max_results': it must be between 1 and {MAX_TRACE_RESULTS}"
        )));
    }
    let filter = parse_trace_filter(filter.unwrap_or("")).map_err(|e| MlflowError::invalid(e.0))?;
    let order_by = order_by
        .iter()
        .filter(|o| !o.trim().is_empty())
        .map(|o| parse_trace_order_by(o).map_err(|e| MlflowError::invalid(e.0)))
        .collect::<MlflowResult<Vec<TraceOrderBy>>>()?;
    Ok(TraceQuery {
        experiment_ids,
        filter,
        order_by,
        offset: decode_page_token(page_token)?,
        limit: limit as u32,
    })
}

/// One page of a search, each trace written by `render` (v2 or v3), `{}` when empty.
async fn search_page(s: &MlflowState, query: TraceQuery, render: fn(&TraceInfo) -> Value) -> JsonResult {
    let offset = query.offset;
    let (traces, more) = s.traces.search_traces(query).await?;
    let mut out = Map::new();
    if !traces.is_empty() {
        out.insert("traces".into(), traces.iter().map(render).collect());
    }
    if more {
        let next = offset + traces.len() as u64;
        out.insert("next_page_token".into(), json!(encode_page_token(next)));
    }
    Ok(Json(Value::Object(out)))
}

/// Searches traces of experiments (v3: the client's `search_traces` and the UI's Traces tab).
pub async fn search_traces_v3(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<SearchTracesV3>,
) -> JsonResult {
    let locations = req.locations.ok_or_else(|| MlflowError::missing("locations"))?;
    let experiment_ids = locations
        .iter()
        .map(|l| {
            l.pointer("/mlflow_experiment/experiment_id")
                .and_then(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .or_else(|| v.as_i64().map(|n| n.to_string()))
                })
                .ok_or_else(|| MlflowError::invalid("Each location must name an MLflow experiment"))
                .and_then(|id| parse_experiment_id(&id))
        })
        .collect::<MlflowResult<Vec<i64>>>()?;
    let query = trace_query(
        experiment_ids,
        req.filter.as_deref(),
        req.max_results,
        &req.order_by,
        req.page_token.as_deref(),
    )?;
    search_page(&s, query, info_v3).await
}

/// `GET /api/2.0/mlflow/traces?experiment_ids=...`
#[derive(Deserialize)]
pub struct SearchTracesV2 {
    #[serde(default, deserialize_with = "one_or_many")]
    experiment_ids: Vec<String>,
    filter: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_results: Option<i64>,
    #[serde(default, deserialize_with = "one_or_many")]
    order_by: Vec<String>,
    page_token: Option<String>,
}

/// Searches traces (v2: what the UI asks to tell a GenAI experiment from a training one).
pub async fn search_traces_v2(
    State(s): State<MlflowState>,
    Mlflow(req): Mlflow<SearchTracesV2>,
) -> JsonResult {
    let experiment_ids = req
        .experiment_ids
        .iter()
        .map(|id| parse_experiment_id(id))
        .collect::<MlflowResult<Vec<i64>>>()?;
    let query = trace_query(
        experiment_ids,
        req.filter.as_deref(),
        req.max_results,
        &req.order_by,
        req.page_token.as_deref(),
    )?;
    search_page(&s, query, info_v2).await
}

/// `PATCH` / `DELETE .../traces/{id}/tags`
#[derive(Deserialize)]
pub struct TraceTag {
    key: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    value: Option<String>,
}

/// Sets a trace's tag.
pub async fn set_trace_tag(
    State(s): State<MlflowState>,
    Path(id): Path<String>,
    Mlflow(req): Mlflow<TraceTag>,
) -> JsonResult {
    let key = req
        .key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| MlflowError::missing("key"))?;
    s.traces
        .set_trace_tag(&id, &key, &req.value.unwrap_or_default())
        .await?;
    Ok(Json(json!({})))
}

/// Deletes a trace's tag; the key comes in the body or the query string.
pub async fn delete_trace_tag(
    State(s): State<MlflowState>,
    Path(id): Path<String>,
    Query(query): Query<TraceTagQuery>,
    Mlflow(req): Mlflow<TraceTag>,
) -> JsonResult {
    let key = req
        .key
        .or(query.key)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| MlflowError::missing("key"))?;
    s.traces.delete_trace_tag(&id, &key).await?;
    Ok(Json(json!({})))
}

/// `?key=` of a tag deletion.
#[derive(Deserialize)]
pub struct TraceTagQuery {
    key: Option<String>,
}

/// `POST .../traces/delete-traces`
#[derive(Deserialize)]
pub struct DeleteTraces {
    #[serde(default, deserialize_with = "lenient_string")]
    experiment_id: Option<String>,
    #[serde(default)]
    request_ids: Option<Vec<String>>,
    #[serde(default)]
    trace_ids: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_timestamp_millis: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    max_traces: Option<i64>,
}

/// Deletes traces of an experiment, by id or by age.
pub async fn delete_traces(State(s): State<MlflowState>, Mlflow(req): Mlflow<DeleteTraces>) -> JsonResult {
    let experiment = req
        .experiment_id
        .filter(|e| !e.is_empty())
        .ok_or_else(|| MlflowError::missing("experiment_id"))?;
    let ids = req.request_ids.or(req.trace_ids).filter(|ids| !ids.is_empty());
    let which = match (ids, req.max_timestamp_millis) {
        (Some(_), Some(_)) => {
            return Err(MlflowError::invalid(
                "Only one of `max_timestamp_millis` and `trace_ids` can be specified.",
            ));
        }
        (None, None) => {
            return Err(MlflowError::invalid(
                "Either `max_timestamp_millis` or `trace_ids` must be specified.",
            ));
        }
        (Some(ids), None) => TraceDeletion::Ids(ids),
        (None, Some(max_timestamp_ms)) => TraceDeletion::OlderThan {
            max_timestamp_ms,
            max: req
                .max_traces
                .unwrap_or(i64::from(u32::MAX))
                .clamp(0, i64::from(u32::MAX)) as u32,
        },
    };
    let deleted = s
        .traces
        .delete_traces(parse_experiment_id(&experiment)?, which)
        .await?;
    Ok(Json(json!({ "traces_deleted": deleted })))
}

/// `?request_id=` of the UI's trace artifact route.
#[derive(Deserialize)]
pub struct TraceArtifactQuery {
    request_id: Option<String>,
    trace_id: Option<String>,
}

/// The spans of a trace (`traces.json`), for the UI.
pub async fn get_trace_artifact(
    State(s): State<MlflowState>,
    Query(q): Query<TraceArtifactQuery>,
) -> Response {
    let result = async {
        let id = q
            .request_id
            .or(q.trace_id)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| MlflowError::missing("request_id"))?;
        let info = s.traces.get_trace(&id).await?;
        let location = info
            .tags
            .iter()
            .find(|t| t.key == "mlflow.artifactLocation")
            .map(|t| t.value.clone())
            .ok_or_else(|| MlflowError::not_found(format!("Trace with ID {id} has no stored spans.")))?;
        download_under(&s, &location, "traces.json").await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_durations_round_trip_as_the_reference_writes_them() {
        let ms = parse_timestamp("2026-12-07T05:35:22.363Z").unwrap();
        assert_eq!(format_timestamp(ms), "2026-12-07T05:35:22.363Z");
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_timestamp("2026-01-01T00:00:00Z")
                .map(format_timestamp)
                .unwrap(),
            "2026-01-01T00:00:00.000Z"
        );
        assert_eq!(parse_timestamp("2026-12-07T06:35:22.363+01:00"), Some(ms));
        assert_eq!(
            parse_timestamp("2000-02-29T12:00:00.5Z")
                .map(format_timestamp)
                .unwrap(),
            "2000-02-29T12:00:00.500Z"
        );
        assert_eq!(parse_timestamp("1969-12-31T23:59:59.999Z"), Some(-1));
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "yesterday",
            "2026-01-01",
            "2026-01-01T25:00:00Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert_eq!(parse_duration("0.033s"), Some(33));
        assert_eq!(parse_duration("2s"), Some(2000));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(format_duration(33), "0.033s");
        assert_eq!(format_duration(1500), "1.500s");
        assert_eq!(format_duration(0), "0s");
    }
}
