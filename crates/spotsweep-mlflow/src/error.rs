//! MLflow's error envelope: `{"error_code": "...", "message": "..."}` with the status the
//! reference server derives from the code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use spotsweep_store::StoreError;

/// MLflow's error codes that this server emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// A field is missing or malformed (400).
    InvalidParameterValue,
    /// The request is malformed (400).
    BadRequest,
    /// A unique name is taken (400, as in the reference).
    ResourceAlreadyExists,
    /// The addressed entity does not exist (404).
    ResourceDoesNotExist,
    /// No such route (404).
    EndpointNotFound,
    /// No valid token (401).
    Unauthenticated,
    /// The server is overloaded; the client retries (503).
    TemporarilyUnavailable,
    /// A bug or an I/O failure (500).
    InternalError,
}

impl ErrorCode {
    /// The HTTP status the reference server uses for the code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidParameterValue | Self::BadRequest | Self::ResourceAlreadyExists => {
                StatusCode::BAD_REQUEST
            }
            Self::ResourceDoesNotExist | Self::EndpointNotFound => StatusCode::NOT_FOUND,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answered in MLflow's envelope. The message is shown to the user by the client, so it
/// says what to change; internal details are logged instead.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{error_code:?}: {message}")]
pub struct MlflowError {
    /// The MLflow error code.
    pub error_code: ErrorCode,
    /// A message for the person calling.
    pub message: String,
}

impl MlflowError {
    /// `400 INVALID_PARAMETER_VALUE`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            error_code: ErrorCode::InvalidParameterValue,
            message: message.into(),
        }
    }

    /// `404 RESOURCE_DOES_NOT_EXIST`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            error_code: ErrorCode::ResourceDoesNotExist,
            message: message.into(),
        }
    }

    /// `400 INVALID_PARAMETER_VALUE` for a required field that is absent.
    pub fn missing(field: &str) -> Self {
        Self::invalid(format!(
            "Missing value for required parameter '{field}'. See the API docs for more information about request parameters."
        ))
    }

    /// For a failed write to artifact storage: `503 TEMPORARILY_UNAVAILABLE` naming the cause
    /// when the disk is full (the client retries, and the write succeeds once space is
    /// freed), else `500 INTERNAL_ERROR`.
    pub fn storage(cause: &(dyn std::error::Error + 'static)) -> Self {
        let mut source = Some(cause);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::StorageFull
            {
                return Self {
                    error_code: ErrorCode::TemporarilyUnavailable,
                    message: "the disk holding the artifacts is full, so the file was not stored; free some \
                              space and retry"
                        .into(),
                };
            }
            source = e.source();
        }
        Self::internal(&cause)
    }

    /// `500 INTERNAL_ERROR`, after logging the cause.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self {
            error_code: ErrorCode::InternalError,
            message: "internal server error; see the daemon's log".into(),
        }
    }
}

impl From<StoreError> for MlflowError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::not_found(m),
            StoreError::AlreadyExists(m) => Self {
                error_code: ErrorCode::ResourceAlreadyExists,
                message: m,
            },
            StoreError::Invalid(m) | StoreError::Conflict(m) => Self::invalid(m),
            StoreError::Busy => Self {
                error_code: ErrorCode::TemporarilyUnavailable,
                message: "the tracking database is busy; retry shortly".into(),
            },
            // 503, not 507: the MLflow client retries a 503 with back-off, so a training script
            // rides out a full disk that someone clears instead of crashing. Logged once by
            // the store.
            full @ StoreError::Full => Self {
                error_code: ErrorCode::TemporarilyUnavailable,
                message: full.to_string(),
            },
            // Logged where it was caught.
            panicked @ StoreError::Panicked(_) => Self {
                error_code: ErrorCode::InternalError,
                message: panicked.to_string(),
            },
            other => Self::internal(&other),
        }
    }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        (self.error_code.status(), Json(self)).into_response()
    }
}

/// Shorthand for handler results.
pub type MlflowResult<T> = Result<T, MlflowError>;
