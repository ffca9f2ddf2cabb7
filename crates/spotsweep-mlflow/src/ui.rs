//! Routes only MLflow's web UI calls, for features this server does not have (the AI
//! assistant, the AI gateway, GenAI trace dashboards, usage telemetry). Each answers what the
//! reference answers when the feature is not set up, so the UI shows an empty panel instead of an
//! error.

use axum::Json;
use serde_json::{Value, json};

/// `GET /ajax-api/3.0/mlflow/assistant/config`: no assistant configured.
pub async fn assistant_config() -> Json<Value> {
    Json(json!({"providers": {}, "projects": {}, "remote_access_allowed": false}))
}

/// `GET /ajax-api/3.0/mlflow/assistant/providers`: none.
pub async fn assistant_providers() -> Json<Value> {
    Json(json!({"providers": [], "resolved": null, "gateway_vendor_options": {}}))
}

/// `/ajax-api/2.0/mlflow/gateway-proxy`: the reference's answer with no gateway configured.
pub async fn gateway_proxy() -> Json<Value> {
    Json(json!({"endpoints": []}))
}

/// `POST /ajax-api/3.0/mlflow/traces/metrics`: the GenAI overview's charts; this server keeps no
/// token counts or costs, so there are no data points.
pub async fn trace_metrics() -> Json<Value> {
    Json(json!({}))
}

/// `/ajax-api/3.0/mlflow/ui-telemetry`: accepted and dropped; nothing is sent anywhere.
pub async fn ui_telemetry() -> Json<Value> {
    Json(json!({}))
}

/// `POST /ajax-api/3.0/mlflow/datasets/search`: GenAI evaluation datasets, which this server
/// does not keep (training datasets are run inputs, shown on runs).
pub async fn evaluation_datasets() -> Json<Value> {
    Json(json!({}))
}
