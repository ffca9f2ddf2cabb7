//! The daemon's own `/api/v1`: its errors and extractors, its OpenAPI document, and the router
//! assembled from each resource's routes (tokens, sweeps and trials, leases, pools, code
//! snapshots, the dashboard's views, live events).

use axum::Json;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use spotsweep_api::ApiErrorBody;
use spotsweep_store::StoreError;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// An `/api/v1` error: logged in full when internal, shown as a code and a clean message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }

    /// `403 forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
        }
    }

    /// `500 internal`: a bug; the message is logged.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(%message, "internal error");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
        }
    }

    /// Any status, with its stable code.
    pub fn with_status(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// `400 invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self {
                status: StatusCode::NOT_FOUND,
                code: "not_found",
                message: m,
            },
            StoreError::AlreadyExists(m) => Self {
                status: StatusCode::CONFLICT,
                code: "already_exists",
                message: m,
            },
            StoreError::Invalid(m) => Self::invalid(m),
            StoreError::Conflict(m) => Self {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message: m,
            },
            StoreError::Busy => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "busy",
                message: "the database is busy; retry shortly".into(),
            },
            // Logged once by the store, when it starts and when it ends.
            full @ StoreError::Full => Self {
                status: StatusCode::INSUFFICIENT_STORAGE,
                code: "disk_full",
                message: full.to_string(),
            },
            // Logged where it was caught.
            panicked @ StoreError::Panicked(_) => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal",
                message: panicked.to_string(),
            },
            other => {
                tracing::error!(error = %other, "internal error");
                Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal",
                    message: "internal error; see the daemon's log".into(),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiErrorBody {
                code: self.code.into(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

/// `Path`, with a malformed value refused in `/api/v1`'s JSON error (400 naming the value), not
/// axum's plain text.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::invalid(e.body_text())),
        }
    }
}

/// `Query`, with a malformed query refused in `/api/v1`'s JSON error (400 naming the field).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::invalid(e.body_text())),
        }
    }
}

/// A request's body as bytes, with a body over the size limit (or cut off) refused in
/// `/api/v1`'s JSON error (413 naming the limit), not axum's plain text.
#[derive(Debug)]
pub struct ApiBody(pub Bytes);

impl<S> axum::extract::FromRequest<S> for ApiBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "too_large",
                message: "the request body is over the daemon's limit of 2 MiB: send less (a sweep spec's \
                          categorical choices, a batch of metrics in several requests)"
                    .into(),
            }),
            Err(e) => Err(ApiError::invalid(format!(
                "cannot read the request body: {}",
                e.body_text()
            ))),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "spotsweep", description = "The spotsweep daemon's own API. MLflow's tracking API is served beside it under /api/2.0/mlflow."),
    modifiers(&BearerAuth),
    tags(
        (name = "tokens", description = "API tokens"),
        (name = "sweeps", description = "Sweeps and their trials"),
        (name = "leases", description = "Agents and ask-and-tell workers lease, heartbeat and complete trials"),
        (name = "pools", description = "Where trials run: the local pool and Spot VM pools, their VMs and cost"),
        (name = "code", description = "Code snapshots: a sweep's working directory, packed by the CLI, run by agents"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The `/api/v1` routes and their OpenAPI document, one resource after another.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::tokens::routes())
        .merge(crate::sweeps::routes())
        .merge(crate::pools_api::routes())
        .merge(crate::code::routes())
        .merge(crate::dashboard::routes())
        .merge(crate::events::routes())
}

/// The OpenAPI document as committed in `openapi/openapi.json` (pretty JSON, trailing newline).
pub fn openapi_json() -> String {
    let (_, mut doc) = router().split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut text = doc.to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}
