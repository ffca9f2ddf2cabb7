//! The wire contract of the daemon's own `/api/v1`: request and response types with their
//! OpenAPI schemas. One place defines each JSON shape; the server, the CLI and the agent all
//! use these types, and the agent and the CLI never depend on the server.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every `/api/v1` error: a stable machine-readable code and a message for a person.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// Stable code, e.g. `not_found`, `invalid_request`, `unauthenticated`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// `POST /api/v1/tokens`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A label for the token (who or what uses it), 1 to 100 characters.
    pub name: String,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Stable id, used to revoke the token.
    pub id: String,
    /// The label given at creation.
    pub name: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// A newly created token: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// Stable id, used to revoke the token.
    pub id: String,
    /// The label given at creation.
    pub name: String,
    /// The secret, to send as `Authorization: Bearer <token>` (or `MLFLOW_TRACKING_TOKEN`).
    /// Only its hash is stored: it cannot be shown again.
    pub token: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// `GET /api/v1/tokens`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// Live (not revoked) tokens, oldest first.
    pub tokens: Vec<TokenInfo>,
}
