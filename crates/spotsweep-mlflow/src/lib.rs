//! The MLflow tracking protocol as the MLflow 3.x Python client uses it: wire types, request
//! parsing, validation, and the axum routes for `/api/2.0/mlflow` (tracking and the model
//! registry), its `/ajax-api` twin, the artifact proxy (`/api/2.0/mlflow-artifacts`) and
//! `/api/3.0/mlflow/server-info`.
//!
//! Depends on the store (through its traits) and on the core's search grammar; must not know
//! about authentication, sweeps or the daemon's own `/api/v1` (the server wraps these routes).

pub mod artifacts;
pub mod error;
pub mod extract;
pub mod graphql;
pub mod models;
mod names;
pub mod registry;
pub mod traces;
pub mod tracking;
pub mod ui;
pub mod validation;
pub mod wire;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post};
use spotsweep_store::{ModelStore, RegistryStore, TraceStore, TrackingStore};

pub use artifacts::ArtifactRepo;
pub use error::{ErrorCode, MlflowError};

/// What the MLflow handlers share. Cheap to clone.
#[derive(Clone)]
pub struct MlflowState {
    /// Experiments, runs and metrics.
    pub store: Arc<dyn TrackingStore>,
    /// Logged models (MLflow 3).
    pub models: Arc<dyn ModelStore>,
    /// Traces (MLflow 3).
    pub traces: Arc<dyn TraceStore>,
    /// Registered models and their versions.
    pub registry: Arc<dyn RegistryStore>,
    /// Where artifact bytes live (local disk or a bucket).
    pub artifacts: Arc<ArtifactRepo>,
    /// The artifact root new experiments get (`mlflow-artifacts:`, so the client uploads
    /// through this server's proxy).
    pub default_artifact_root: String,
}

impl MlflowState {
    /// State with the proxy's artifact root, as `mlflow server --serve-artifacts` has it.
    pub fn new<S: TrackingStore + ModelStore + TraceStore + RegistryStore>(
        store: Arc<S>,
        artifacts: Arc<ArtifactRepo>,
    ) -> Self {
        Self {
            store: store.clone(),
            models: store.clone(),
            registry: store.clone(),
            traces: store,
            artifacts,
            default_artifact_root: "mlflow-artifacts:".into(),
        }
    }
}

/// The tracking endpoints, relative to `/api/2.0/mlflow` (and `/ajax-api/2.0/mlflow`).
fn tracking_routes() -> Router<MlflowState> {
    use tracking::*;
    Router::new()
        .route("/experiments/create", post(create_experiment))
        .route("/experiments/get", get(get_experiment))
        .route("/experiments/get-by-name", get(get_experiment_by_name))
        .route(
            "/experiments/search",
            get(search_experiments).post(search_experiments),
        )
        .route("/experiments/update", post(update_experiment))
        .route("/experiments/delete", post(delete_experiment))
        .route("/experiments/restore", post(restore_experiment))
        .route("/experiments/set-experiment-tag", post(set_experiment_tag))
        .route("/experiments/delete-experiment-tag", post(delete_experiment_tag))
        .route("/runs/create", post(create_run))
        .route("/runs/get", get(get_run))
        .route("/runs/update", post(update_run))
        .route("/runs/delete", post(delete_run))
        .route("/runs/restore", post(restore_run))
        .route("/runs/log-metric", post(log_metric))
        .route("/runs/log-parameter", post(log_param))
        .route("/runs/set-tag", post(set_tag))
        .route("/runs/delete-tag", post(delete_tag))
        .route("/runs/log-batch", post(log_batch))
        .route("/runs/log-inputs", post(log_inputs))
        .route("/runs/search", post(search_runs).get(search_runs))
        .route("/metrics/get-history", get(get_metric_history))
        .route(
            "/metrics/get-history-bulk-interval",
            get(get_history_bulk_interval),
        )
        .route("/artifacts/list", get(artifacts::list_run_artifacts))
        .route("/traces", get(traces::search_traces_v2))
        .route("/traces/{id}/info", get(traces::get_trace_v2))
        .route(
            "/traces/{id}/tags",
            patch(traces::set_trace_tag).delete(traces::delete_trace_tag),
        )
        .route("/traces/delete-traces", post(traces::delete_traces))
        .route("/runs/outputs", post(models::log_outputs))
        .route("/logged-models", post(models::create_logged_model))
        .route("/logged-models/search", post(models::search_logged_models))
        .route(
            "/logged-models/{id}",
            get(models::get_logged_model)
                .patch(models::finalize_logged_model)
                .delete(models::delete_logged_model),
        )
        .route(
            "/logged-models/{id}/params",
            post(models::log_logged_model_params),
        )
        .route("/logged-models/{id}/tags", patch(models::set_logged_model_tags))
        .route(
            "/logged-models/{id}/tags/{key}",
            delete(models::delete_logged_model_tag),
        )
        .route(
            "/logged-models/{id}/artifacts/directories",
            get(models::list_logged_model_artifacts),
        )
        .merge(registry_routes())
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
}

/// The 3.0 endpoints, relative to `/api/3.0/mlflow` (and `/ajax-api/3.0/mlflow`): traces and
/// what the 3.x artifact client asks before uploads.
fn v3_routes() -> Router<MlflowState> {
    use traces::*;
    Router::new()
        .route("/server-info", get(tracking::server_info))
        .route("/traces", post(start_trace))
        .route("/traces/search", post(search_traces_v3))
        .route("/traces/delete-traces", post(delete_traces))
        .route("/traces/{id}", get(get_trace_v3))
        .route("/traces/{id}/tags", patch(set_trace_tag).delete(delete_trace_tag))
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
}

/// The model registry's endpoints, relative to `/api/2.0/mlflow` (and `/ajax-api/2.0/mlflow`).
fn registry_routes() -> Router<MlflowState> {
    use registry::*;
    Router::new()
        .route("/registered-models/create", post(create_registered_model))
        .route("/registered-models/get", get(get_registered_model))
        .route("/registered-models/update", patch(update_registered_model))
        .route("/registered-models/rename", post(rename_registered_model))
        .route("/registered-models/delete", delete(delete_registered_model))
        .route("/registered-models/search", get(search_registered_models))
        .route(
            "/registered-models/get-latest-versions",
            get(get_latest_versions).post(get_latest_versions),
        )
        .route("/registered-models/set-tag", post(set_registered_model_tag))
        .route(
            "/registered-models/delete-tag",
            delete(delete_registered_model_tag),
        )
        .route(
            "/registered-models/alias",
            post(set_alias).delete(delete_alias).get(get_version_by_alias),
        )
        .route("/model-versions/create", post(create_model_version))
        .route("/model-versions/get", get(get_model_version))
        .route("/model-versions/update", patch(update_model_version))
        .route(
            "/model-versions/transition-stage",
            post(transition_model_version_stage),
        )
        .route("/model-versions/delete", delete(delete_model_version))
        .route("/model-versions/search", get(search_model_versions))
        .route(
            "/model-versions/get-download-uri",
            get(get_model_version_download_uri),
        )
        .route("/model-versions/set-tag", post(set_model_version_tag))
        .route("/model-versions/delete-tag", delete(delete_model_version_tag))
}

/// The artifact proxy, relative to `/api/2.0/mlflow-artifacts`. Bodies stream: no size limit.
fn artifact_routes() -> Router<MlflowState> {
    use artifacts::*;
    Router::new().route("/artifacts", get(list_artifacts)).route(
        "/artifacts/{*path}",
        get(download_artifact)
            .put(upload_artifact)
            .delete(delete_artifact),
    )
}

/// Every MLflow route, under both the REST and the UI (`/ajax-api`) prefixes.
pub fn router(state: MlflowState) -> Router {
    let ui_only = Router::new()
        .route("/metrics/get-history-bulk", get(tracking::get_history_bulk))
        .route("/experiments/search-datasets", post(tracking::search_datasets))
        .route("/upload-artifact", post(artifacts::upload_run_artifact))
        .route(
            "/logged-models/{id}/artifacts/files",
            get(models::get_logged_model_artifact),
        )
        .route("/gateway-proxy", get(ui::gateway_proxy).post(ui::gateway_proxy));
    Router::new()
        .nest("/api/2.0/mlflow", tracking_routes())
        .nest("/ajax-api/2.0/mlflow", tracking_routes().merge(ui_only))
        .nest("/api/2.0/mlflow-artifacts", artifact_routes())
        .nest("/ajax-api/2.0/mlflow-artifacts", artifact_routes())
        .nest("/api/3.0/mlflow", v3_routes())
        .nest(
            "/ajax-api/3.0/mlflow",
            v3_routes()
                .route("/get-trace-artifact", get(traces::get_trace_artifact))
                .route("/assistant/config", get(ui::assistant_config))
                .route("/assistant/providers", get(ui::assistant_providers))
                .route("/traces/metrics", post(ui::trace_metrics))
                .route("/datasets/search", post(ui::evaluation_datasets))
                .route("/ui-telemetry", get(ui::ui_telemetry).post(ui::ui_telemetry)),
        )
        .route("/graphql", get(graphql::graphql).post(graphql::graphql))
        .route(
            "/ajax-api/2.0/mlflow/get-trace-artifact",
            get(traces::get_trace_artifact),
        )
        .route("/get-artifact", get(artifacts::get_run_artifact))
        .route(
            "/model-versions/get-artifact",
            get(registry::get_model_version_artifact),
        )
        .with_state(state)
}
