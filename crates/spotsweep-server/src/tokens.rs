//! `/api/v1/tokens`: API tokens, made, listed and revoked.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use spotsweep_api::{ApiErrorBody, CreateTokenRequest, CreatedToken, TokenInfo, TokenList};
use spotsweep_store::{NewToken, TokenRole, TokenScope};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api::{ApiBody, ApiError, ApiPath};
use crate::auth::{hash_token, new_secret};

/// The routes of tokens.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
}

/// Longest `expires_in`: ten years.
const MAX_EXPIRES_IN_S: i64 = 315_360_000;

fn role_on_wire(role: TokenRole) -> spotsweep_api::TokenRole {
    match role {
        TokenRole::User => spotsweep_api::TokenRole::User,
        TokenRole::Admin => spotsweep_api::TokenRole::Admin,
    }
}

pub(crate) fn scope_on_wire(scope: TokenScope) -> spotsweep_api::TokenScope {
    match scope {
        TokenScope::Read => spotsweep_api::TokenScope::Read,
        TokenScope::Write => spotsweep_api::TokenScope::Write,
    }
}

/// Creates a user API token. Its secret is in this response only.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "The token, with its secret", body = CreatedToken),
        (status = 400, description = "Invalid name or expiry", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token"),
        (status = 403, description = "A trial's or an agent's token", body = ApiErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_token(
    State(s): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    // Any content type: `curl -d '{"name": "ci"}'` sends a form type and means JSON.
    let req: CreateTokenRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "invalid body: {e}; expected {{\"name\": \"...\", \"expires_in\": seconds (optional), \"scope\": \"read\" or \"write\" (optional)}}"
        ))
    })?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid("name must be 1 to 100 characters"));
    }
    let expires_at = match req.expires_in {
        None => None,
        Some(seconds) if (1..=MAX_EXPIRES_IN_S).contains(&seconds) => {
            Some(spotsweep_store::now_ms() + seconds * 1000)
        }
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "expires_in must be between 1 and {MAX_EXPIRES_IN_S} seconds (ten years), or absent for a token \
                 that does not expire"
            )));
        }
    };
    // A token that expires makes none that outlives it.
    let expires_at = match caller.and_then(|c| c.0.0.expires_at) {
        Some(limit) => Some(expires_at.map_or(limit, |at| at.min(limit))),
        None => expires_at,
    };
    let scope = match req.scope {
        Some(spotsweep_api::TokenScope::Read) => TokenScope::Read,
        Some(spotsweep_api::TokenScope::Write) | None => TokenScope::Write,
    };
    let secret = new_secret();
    let hash = hash_token(&secret);
    let record = s
        .tokens
        .create_token(NewToken {
            name,
            hash: &hash,
            role: TokenRole::User,
            scope,
            expires_at,
        })
        .await?;
    s.auth.add(hash, record.clone());
    s.signals.changes.tell(crate::replicas::News::Tokens);
    tracing::info!(id = %record.id, name = %record.name, "token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: record.id,
            name: record.name,
            role: role_on_wire(record.role),
            scope: scope_on_wire(record.scope),
            token: secret,
            created_at: record.created_at,
            expires_at: record.expires_at,
        }),
    ))
}

/// Lists live tokens (never their secrets).
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    responses((status = 200, description = "Live tokens", body = TokenList), (status = 401, description = "No valid bearer token")),
    security(("bearer" = []))
)]
pub async fn list_tokens(State(s): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    let tokens = s
        .tokens
        .list_tokens()
        .await?
        .into_iter()
        .map(|t| TokenInfo {
            id: t.id,
            name: t.name,
            role: role_on_wire(t.role),
            scope: scope_on_wire(t.scope),
            created_at: t.created_at,
            expires_at: t.expires_at,
        })
        .collect();
    Ok(Json(TokenList { tokens }))
}

/// Revokes a user token: it is refused from the next request on. The admin token cannot be
/// revoked here.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "The admin token, or a token with more rights than the caller's", body = ApiErrorBody),
        (status = 404, description = "No live token with that id", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token"),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_token(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    // The admin token has the most rights: no API token may revoke it, itself included (a lost
    // admin token is replaced offline). Users may revoke users: the same rights as their own.
    let target = s.tokens.get_token(&id).await?;
    if target.role == TokenRole::Admin {
        return Err(ApiError::forbidden(
            "the admin token cannot be revoked through the API; to replace it, stop the daemon and run \
             `spotsweep token reset-admin --data-dir DIR`",
        ));
    }
    s.tokens.revoke_token(&id).await?;
    s.auth.remove(&id);
    s.signals.changes.tell(crate::replicas::News::Tokens);
    tracing::info!(%id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
