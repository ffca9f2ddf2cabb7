//! The sweep dashboard: its pages, embedded in the binary and served under `/dashboard/`, and
//! the JSON they read beyond the rest of `/api/v1` (a sweep's trials as one compact table,
//! parameter importance, learning curves, every attempt for the timeline, who the caller is).
//!
//! The page files are the hand-written ones in `dashboard/`, served as they are; the chart
//! library is Apache ECharts from the npm registry at a pinned version (see `build.rs`). Each
//! file is gzipped once, at first use, and answered with an ETag so that a reload costs a 304.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json};
use sha2::{Digest, Sha256};
use spotsweep_api::{
    AttemptBody, AttemptList, Curve, CurvesBody, ImportanceBody, MeBody, ParamImportance, TrialColumns,
    TrialTable,
};
use spotsweep_core::sweep::{Goal, Params};
use spotsweep_store::{TokenRole, TrialState};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api::{ApiError, ApiPath, ApiQuery};
use crate::auth::Caller;

/// The routes of the dashboard's views.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(table))
        .routes(routes!(importance))
        .routes(routes!(curves))
        .routes(routes!(attempts))
}

mod assets {
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

/// The chart library's files, served under `/dashboard/vendor/`.
#[cfg(echarts)]
const VENDOR: &[(&str, &[u8])] = &[
    (
        "vendor/echarts.min.js",
        include_bytes!(concat!(
            env!("SPOTSWEEP_ECHARTS_DIR"),
            "/package/dist/echarts.min.js"
        )),
    ),
    (
        "vendor/echarts-LICENSE.txt",
        include_bytes!(concat!(env!("SPOTSWEEP_ECHARTS_DIR"), "/package/LICENSE")),
    ),
    (
        "vendor/echarts-NOTICE.txt",
        include_bytes!(concat!(env!("SPOTSWEEP_ECHARTS_DIR"), "/package/NOTICE")),
    ),
    (
        "vendor/echarts-LICENSE-d3.txt",
        include_bytes!(concat!(
            env!("SPOTSWEEP_ECHARTS_DIR"),
            "/package/licenses/LICENSE-d3"
        )),
    ),
];
#[cfg(not(echarts))]
const VENDOR: &[(&str, &[u8])] = &[];

/// Why the binary has no chart library (`None`: it has one).
fn missing_charts() -> Option<&'static str> {
    option_env!("SPOTSWEEP_ECHARTS_MISSING")
}

/// A file ready to serve: as is and gzipped, with its ETag.
struct Asset {
    raw: &'static [u8],
    gzip: Vec<u8>,
    etag: String,
    mime: &'static str,
}

static ASSETS: LazyLock<HashMap<&'static str, Asset>> = LazyLock::new(|| {
    assets::ASSETS
        .iter()
        .chain(VENDOR)
        .map(|&(name, raw)| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let gzip = std::io::Write::write_all(&mut gz, raw)
                .and_then(|()| gz.finish())
                .unwrap_or_default();
            let etag = format!("\"{}\"", &hex::encode(Sha256::digest(raw))[..32]);
            (
                name,
                Asset {
                    raw,
                    gzip,
                    etag,
                    mime: mime_of(name),
                },
            )
        })
        .collect()
});

fn mime_of(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

/// The page routes: `/dashboard/` and its files.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(|| async { Redirect::permanent("/dashboard/") }))
        .route("/dashboard/", get(index))
        .route("/dashboard/{*path}", get(file))
}

async fn index(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !crate::ui::signed_in(&s, &headers) {
        return Redirect::to("/signin?next=/dashboard/").into_response();
    }
    if let Some(why) = missing_charts() {
        return crate::ui::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The dashboard's chart library is missing",
            &format!(
                "<p>This spotsweep binary was built without Apache ECharts, which the dashboard draws with: \
                 {}.</p><p>Rebuild it on a machine where <code>npm</code> reaches its registry \
                 (<code>cargo build --release</code>), or set <code>SPOTSWEEP_ECHARTS_TGZ</code> to the \
                 package's tarball when building. The API and MLflow's UI work without it.</p>",
                crate::ui::html_escape(why)
            ),
        );
    }
    serve("index.html", &headers)
}

async fn file(ApiPath(path): ApiPath<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.get(name) else {
        return (StatusCode::NOT_FOUND, "no such dashboard file").into_response();
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == asset.etag));
    let gzip = !asset.gzip.is_empty()
        && headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gzip {
        let mut r = asset.gzip.clone().into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        asset.raw.into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    // Same URL, new content after an upgrade: the browser asks again each time (a 304).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(tag) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, tag);
    }
    response
}

/// Who the caller is and whether it may act (the page hides its buttons for read tokens).
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "dashboard",
    responses((status = 200, description = "The caller", body = MeBody), (status = 401, description = "No valid token")),
    security(("bearer" = []))
)]
pub async fn me(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
) -> Result<Json<MeBody>, ApiError> {
    let mlflow_ui = matches!(s.mlflow_ui.as_ref(), crate::ui::MlflowUi::Found(_));
    match caller {
        Some(Extension(Caller(token))) => Ok(Json(MeBody {
            name: token.name,
            role: match token.role {
                TokenRole::Admin => spotsweep_api::TokenRole::Admin,
                TokenRole::User => spotsweep_api::TokenRole::User,
            },
            scope: crate::tokens::scope_on_wire(token.scope),
            auth: true,
            mlflow_ui,
        })),
        None if !s.auth.enabled => Ok(Json(MeBody {
            name: "anonymous".into(),
            role: spotsweep_api::TokenRole::User,
            scope: spotsweep_api::TokenScope::Write,
            auth: false,
            mlflow_ui,
        })),
        None => Err(ApiError::forbidden(
            "this is an agent's or a trial's token: it has no user to show",
        )),
    }
}

/// The longest failure reason the table carries (the trial's own page has all of it).
const TABLE_REASON_CHARS: u32 = 300;

/// Every trial of a sweep as one compact table, by column: state, objective, parameters (in
/// spec order), attempts, preemptions, agent, times, cost and run.
#[utoipa::path(
    get,
    path = "/api/v1/sweeps/{id}/table",
    tag = "dashboard",
    params(("id" = i64, Path, description = "Sweep id")),
    responses((status = 200, description = "The trials", body = TrialTable), (status = 404, description = "No such sweep", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = []))
)]
pub async fn table(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<TrialTable>, ApiError> {
    let sweep = s.sweeps.get_sweep(id).await?;
    let trials = s.sweeps.trial_summaries(id, TABLE_REASON_CHARS).await?;
    let mut cost: HashMap<i64, f64> = HashMap::new();
    for l in s.fleet.lease_costs(None, Some(id)).await? {
        *cost.entry(l.trial_number).or_default() += l.usd;
    }
    let names: Vec<String> = sweep.spec.parameters.keys().cloned().collect();
    let n = trials.len();
    let mut c = TrialColumns {
        p: vec![Vec::with_capacity(n); names.len()],
        ..TrialColumns::default()
    };
    for t in trials {
        let params: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&t.params_json).unwrap_or_default();
        for (column, name) in c.p.iter_mut().zip(&names) {
            column.push(params.get(name).map_or(serde_json::Value::Null, shown_param));
        }
        c.n.push(t.number);
        c.state.push(crate::wire::trial_state(t.state));
        c.value.push(t.value);
        c.attempts.push(t.attempts);
        c.preemptions.push(t.preemptions);
        c.agent.push(t.agent);
        c.started_at.push(t.started_at);
        c.finished_at.push(t.finished_at);
        // To the micro-dollar: an estimate from billed seconds, and a shorter number.
        c.cost_usd
            .push((cost.get(&t.number).copied().unwrap_or(0.0) * 1e6).round() / 1e6);
        c.run_id.push(t.run_id);
        c.pruned_step.push(t.pruned_step);
        c.reason.push(t.reason);
        c.rerun_of.push(t.rerun_of);
    }
    Ok(Json(TrialTable {
        sweep_id: id,
        params: names,
        columns: c,
    }))
}

/// Significant digits of a float parameter in the table: more than any plot or cell shows, and
/// about half the compressed size of a float's full 17 (10,000 trials of 8 float parameters then
/// fit in 1 MB). The run's params and `GET /api/v1/sweeps/{id}/trials` have the exact values.
const TABLE_DIGITS: usize = 10;

/// A parameter's value as the table carries it: floats to [`TABLE_DIGITS`] significant digits.
fn shown_param(value: &serde_json::Value) -> serde_json::Value {
    match value.as_f64() {
        Some(f) if value.is_f64() && f.is_finite() => format!("{f:.prec$e}", prec = TABLE_DIGITS - 1)
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| value.clone(), serde_json::Value::Number),
        _ => value.clone(),
    }
}

/// Importances by sweep, with the count of completed trials they were computed from: computed
/// again only when another trial completes.
static IMPORTANCE_CACHE: LazyLock<Mutex<HashMap<i64, (i64, ImportanceBody)>>> =
    LazyLock::new(Default::default);

/// How much each parameter matters to the objective, by PED-ANOVA over the completed trials
/// (the best 10% against all; computed by the daemon, cached per count of completed trials).
#[utoipa::path(
    get,
    path = "/api/v1/sweeps/{id}/importance",
    tag = "dashboard",
    params(("id" = i64, Path, description = "Sweep id")),
    responses((status = 200, description = "Parameter importances", body = ImportanceBody), (status = 404, description = "No such sweep", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = []))
)]
pub async fn importance(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ImportanceBody>, ApiError> {
    let sweep = s.sweeps.get_sweep(id).await?;
    let completed = sweep.counts.get(TrialState::Completed);
    if let Ok(cache) = IMPORTANCE_CACHE.lock()
        && let Some((count, body)) = cache.get(&id)
        && *count == completed
    {
        return Ok(Json(body.clone()));
    }
    let sign = match sweep.spec.objective.goal {
        Goal::Minimize => 1.0,
        Goal::Maximize => -1.0,
    };
    let observed: Vec<(Params, f64)> = s
        .sweeps
        .list_trials(id)
        .await?
        .into_iter()
        // A rerun repeats a point already counted.
        .filter(|t| t.state == TrialState::Completed && t.rerun_of.is_none())
        .filter_map(|t| t.value.filter(|v| v.is_finite()).map(|v| (t.params, sign * v)))
        .collect();
    let spec = sweep.spec.clone();
    let trials = observed.len();
    // Pure computation over every trial: off the async threads.
    let ranked = tokio::task::spawn_blocking(move || spotsweep_core::importance::ped_anova(&spec, &observed))
        .await
        .map_err(|e| ApiError::internal(format!("computing importance failed: {e}")))?;
    let body = ImportanceBody {
        method: "ped-anova".into(),
        trials,
        importances: ranked
            .into_iter()
            .map(|(param, importance)| ParamImportance { param, importance })
            .collect(),
    };
    if let Ok(mut cache) = IMPORTANCE_CACHE.lock() {
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(id, (completed, body.clone()));
    }
    Ok(Json(body))
}

/// `GET /api/v1/sweeps/{id}/curves` query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct CurvesQuery {
    /// How many of the best completed trials, and of the latest pruned ones (1 to 500, default
    /// 20). Running trials are always included.
    pub top: Option<usize>,
}

/// Most points per curve (down-sampled evenly, first and last kept).
const CURVE_POINTS: usize = 500;

/// Learning curves: the objective metric by step of the best completed trials, every running
/// trial and the latest pruned ones (marked where the pruner stopped them).
#[utoipa::path(
    get,
    path = "/api/v1/sweeps/{id}/curves",
    tag = "dashboard",
    params(("id" = i64, Path, description = "Sweep id"), CurvesQuery),
    responses((status = 200, description = "Curves", body = CurvesBody), (status = 400, description = "A bad `top`", body = spotsweep_api::ApiErrorBody), (status = 404, description = "No such sweep", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = []))
)]
pub async fn curves(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<CurvesQuery>,
) -> Result<Json<CurvesBody>, ApiError> {
    let top = q.top.unwrap_or(20);
    if !(1..=500).contains(&top) {
        return Err(ApiError::invalid("top must be between 1 and 500"));
    }
    let sweep = s.sweeps.get_sweep(id).await?;
    // The table's lean read: the curves need no params. Reruns repeat curves of the search.
    let mut trials = s.sweeps.trial_summaries(id, 0).await?;
    trials.retain(|t| t.rerun_of.is_none());
    let better = |a: f64, b: f64| match sweep.spec.objective.goal {
        Goal::Minimize => a.total_cmp(&b),
        Goal::Maximize => b.total_cmp(&a),
    };
    let mut completed: Vec<_> = trials
        .iter()
        .filter(|t| t.state == TrialState::Completed && t.value.is_some())
        .collect();
    completed.sort_by(|a, b| better(a.value.unwrap_or(f64::NAN), b.value.unwrap_or(f64::NAN)));
    let mut pruned: Vec<_> = trials.iter().filter(|t| t.state == TrialState::Pruned).collect();
    pruned.sort_by_key(|t| std::cmp::Reverse(t.finished_at));
    let mut shown: Vec<_> = completed.into_iter().take(top).collect();
    shown.extend(pruned.into_iter().take(top));
    shown.extend(trials.iter().filter(|t| t.state == TrialState::Running));
    shown.sort_by_key(|t| t.number);
    let run_ids: Vec<String> = shown.iter().map(|t| t.run_id.clone()).collect();
    let metric = &sweep.spec.objective.metric;
    let points = s
        .tracking
        .metric_history_bulk_interval(&run_ids, metric, None, None, CURVE_POINTS)
        .await?;
    let mut by_run: HashMap<String, (Vec<i64>, Vec<f64>)> = HashMap::new();
    for (run, m) in points {
        let curve = by_run.entry(run).or_default();
        curve.0.push(m.step);
        curve.1.push(m.value);
    }
    let curves = shown
        .into_iter()
        .filter_map(|t| {
            let (steps, values) = by_run.remove(&t.run_id)?;
            Some(Curve {
                n: t.number,
                state: crate::wire::trial_state(t.state),
                pruned_step: t.pruned_step,
                steps,
                values,
            })
        })
        .collect();
    Ok(Json(CurvesBody {
        metric: metric.clone(),
        curves,
    }))
}

/// Every attempt (lease) of a sweep's trials, oldest first: the timeline, with preemptions and
/// retries.
#[utoipa::path(
    get,
    path = "/api/v1/sweeps/{id}/attempts",
    tag = "dashboard",
    params(("id" = i64, Path, description = "Sweep id")),
    responses((status = 200, description = "Attempts", body = AttemptList), (status = 404, description = "No such sweep", body = spotsweep_api::ApiErrorBody)),
    security(("bearer" = []))
)]
pub async fn attempts(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<AttemptList>, ApiError> {
    s.sweeps.get_sweep(id).await?;
    let attempts = s
        .sweeps
        .sweep_attempts(id)
        .await?
        .into_iter()
        .map(|a| AttemptBody {
            n: a.trial_number,
            attempt: a.attempt,
            agent: a.agent_name,
            started_at: a.started_at,
            ended_at: a.ended_at,
            outcome: a.outcome,
        })
        .collect();
    Ok(Json(AttemptList { attempts }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_floats_keep_ten_significant_digits_and_the_rest_as_is() {
        let shown = |v: serde_json::Value| shown_param(&v);
        assert_eq!(
            shown(serde_json::json!(0.042079870754771534)),
            serde_json::json!(0.04207987075)
        );
        assert_eq!(
            shown(serde_json::json!(3.2369844984589042e-6)),
            serde_json::json!(3.236984498e-6)
        );
        assert_eq!(shown(serde_json::json!(1e300)), serde_json::json!(1e300));
        assert_eq!(shown(serde_json::json!(0.5)), serde_json::json!(0.5));
        assert_eq!(shown(serde_json::json!(12)), serde_json::json!(12));
        assert_eq!(shown(serde_json::json!("adam")), serde_json::json!("adam"));
        assert_eq!(shown(serde_json::json!(true)), serde_json::json!(true));
        // Rounding never moves a value by more than its 10th digit.
        for f in [0.999_999_999_97_f64, 123_456.789_012_345, -7.000_000_000_4e-8] {
            let g = shown(serde_json::json!(f)).as_f64().unwrap();
            assert!(((g - f) / f).abs() <= 5e-10, "{f} -> {g}");
        }
    }
}
