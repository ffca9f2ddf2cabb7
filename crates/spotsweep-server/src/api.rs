//! The daemon's own `/api/v1` routes (tokens for now), documented with utoipa.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use spotsweep_api::{
    ApiErrorBody, CostReport, CreateTokenRequest, CreatedToken, PoolCost, PoolInfo, PoolList, SweepCost,
    TokenInfo, TokenList, TrialCost, VmInfo,
};
use spotsweep_store::{NewToken, StoreError, TokenRole, TokenScope};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{hash_token, new_secret};
use crate::pools::Pool;

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
    tracing::info!(%id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
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

/// The agent binary, for the startup script of a VM: this daemon's own executable (or the
/// config's `agent_binary`), so that agents always speak the daemon's version of the protocol.
#[utoipa::path(
    get,
    path = "/api/v1/agent/binary",
    tag = "pools",
    responses(
        (status = 200, description = "The executable", content_type = "application/octet-stream"),
        (status = 401, description = "No valid bearer token"),
    ),
    security(("bearer" = []))
)]
pub async fn agent_binary(State(s): State<AppState>) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(&*s.agent_binary).await.map_err(|e| {
        tracing::error!(path = %s.agent_binary.display(), error = %e, "cannot open the agent binary");
        ApiError::not_found(format!("the agent binary is not readable on the daemon: {e}"))
    })?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        headers.insert(axum::http::header::CONTENT_LENGTH, len.into());
    }
    Ok(response)
}

/// `GET /api/v1/cost` query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct CostQuery {
    /// One sweep's trials too.
    pub sweep_id: Option<i64>,
}

/// What the fleet has cost: each pool's billed VM time (idle and boot included), each sweep's
/// share (its trials' time on VMs at the VM's price per slot, attempts lost to preemption
/// counted apart), and with `sweep_id` each trial's.
#[utoipa::path(
    get,
    path = "/api/v1/cost",
    tag = "pools",
    params(CostQuery),
    responses((status = 200, description = "Costs in USD", body = CostReport), (status = 401, description = "No valid bearer token")),
    security(("bearer" = []))
)]
pub async fn cost(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<CostQuery>,
) -> Result<Json<CostReport>, ApiError> {
    let now = spotsweep_store::now_ms();
    let mut pools: std::collections::BTreeMap<String, PoolCost> = Default::default();
    for (name, pool) in s.pools.iter() {
        if let Pool::Gce(g) = pool {
            pools.insert(
                name.clone(),
                PoolCost {
                    pool: name.clone(),
                    spent_usd: 0.0,
                    budget_usd: g.budget_usd,
                    vm_seconds: 0.0,
                },
            );
        }
    }
    for vm in s.fleet.list_vms(None, true).await? {
        let p = pools.entry(vm.pool.clone()).or_insert_with(|| PoolCost {
            pool: vm.pool.clone(),
            spent_usd: 0.0,
            budget_usd: None,
            vm_seconds: 0.0,
        });
        p.spent_usd += vm.cost(now);
        p.vm_seconds += vm.billed_seconds(now);
    }
    let mut sweeps: std::collections::BTreeMap<i64, SweepCost> = Default::default();
    let mut trials: std::collections::BTreeMap<i64, TrialCost> = Default::default();
    for l in s.fleet.lease_costs(None, None).await? {
        let lost = if l.outcome.as_deref() == Some("preempted") {
            l.usd
        } else {
            0.0
        };
        let sc = sweeps.entry(l.sweep_id).or_insert(SweepCost {
            sweep_id: l.sweep_id,
            cost_usd: 0.0,
            lost_to_preemption_usd: 0.0,
            slot_seconds: 0.0,
        });
        sc.cost_usd += l.usd;
        sc.lost_to_preemption_usd += lost;
        sc.slot_seconds += l.seconds;
        if q.sweep_id == Some(l.sweep_id) {
            let t = trials.entry(l.trial_number).or_insert(TrialCost {
                number: l.trial_number,
                cost_usd: 0.0,
                lost_to_preemption_usd: 0.0,
                attempts: 0,
            });
            t.cost_usd += l.usd;
            t.lost_to_preemption_usd += lost;
            t.attempts += 1;
        }
    }
    Ok(Json(CostReport {
        pools: pools.into_values().collect(),
        sweeps: sweeps.into_values().collect(),
        trials: trials.into_values().collect(),
    }))
}

/// Every pool of the config (and `local`), with its VMs and what it has spent.
#[utoipa::path(
    get,
    path = "/api/v1/pools",
    tag = "pools",
    responses((status = 200, description = "The pools", body = PoolList), (status = 401, description = "No valid bearer token")),
    security(("bearer" = []))
)]
pub async fn list_pools(State(s): State<AppState>) -> Result<Json<PoolList>, ApiError> {
    let now = spotsweep_store::now_ms();
    let mut by_pool: std::collections::BTreeMap<String, Vec<spotsweep_store::Vm>> = Default::default();
    for vm in s.fleet.list_vms(None, true).await? {
        by_pool.entry(vm.pool.clone()).or_default().push(vm);
    }
    let mut agents: std::collections::BTreeMap<String, Vec<spotsweep_store::AgentSummary>> =
        Default::default();
    for a in s.sweeps.agent_summaries(None).await? {
        agents.entry(a.pool.clone()).or_default().push(a);
    }
    let stats: std::collections::HashMap<String, (i64, i64)> = agents
        .values()
        .flatten()
        .map(|a| (a.name.clone(), (a.attempts, a.preemptions)))
        .collect();
    let mut backoffs = s.zone_backoffs.lock().map(|b| b.clone()).unwrap_or_default();
    let gpus = s.signals.agent_gpus.lock().map(|g| g.clone()).unwrap_or_default();
    let mut pools = (*s.pools).clone();
    pools
        .entry("local".to_string())
        .or_insert(Pool::Local { setup: None });
    let out = pools
        .into_iter()
        .map(|(name, pool)| {
            let vms = by_pool.remove(&name).unwrap_or_default();
            let spent_usd = vms.iter().map(|v| v.cost(now)).sum();
            let backoffs = backoffs
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, until)| *until > now)
                .map(|(zone, until)| spotsweep_api::ZoneBackoff { zone, until })
                .collect();
            let agents = agents
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .map(|a| spotsweep_api::AgentInfo {
                    gpus: gpus.get(&a.name).cloned().unwrap_or_default(),
                    name: a.name,
                    slots: a.slots,
                    last_seen_at: a.last_seen_at,
                    running: a.running,
                    attempts: a.attempts,
                    preemptions: a.preemptions,
                })
                .collect();
            let vms = vms
                .into_iter()
                .map(|v| VmInfo {
                    trials_run: stats.get(&v.name).map_or(0, |s| s.0),
                    preemptions: stats.get(&v.name).map_or(0, |s| s.1),
                    billed_seconds: v.billed_seconds(now),
                    cost_usd: v.cost(now),
                    name: v.name,
                    zone: v.zone,
                    state: crate::wire::vm_state(v.state),
                    created_at: v.created_at,
                    running_at: v.running_at,
                    ended_at: v.ended_at,
                    reason: v.reason,
                })
                .collect();
            match pool {
                Pool::Local { .. } => PoolInfo {
                    name,
                    provider: "local".into(),
                    project: None,
                    zones: Vec::new(),
                    machine_type: None,
                    slots_per_vm: None,
                    max_vms: None,
                    spot_price_per_hour: None,
                    budget_usd: None,
                    spent_usd,
                    vms,
                    backoffs,
                    agents,
                },
                Pool::Gce(g) => PoolInfo {
                    name,
                    provider: "gce".into(),
                    project: Some(g.project),
                    zones: g.zones,
                    machine_type: Some(g.machine_type),
                    slots_per_vm: Some(g.slots_per_vm),
                    max_vms: Some(g.max_vms),
                    spot_price_per_hour: Some(g.spot_price_per_hour),
                    budget_usd: g.budget_usd,
                    spent_usd,
                    vms,
                    backoffs,
                    agents,
                },
            }
        })
        .collect();
    Ok(Json(PoolList { pools: out }))
}

/// The `/api/v1` routes and their OpenAPI document.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(crate::sweeps::create_sweep, crate::sweeps::list_sweeps))
        .routes(routes!(crate::sweeps::get_sweep))
        .routes(routes!(crate::sweeps::pause_sweep))
        .routes(routes!(crate::sweeps::resume_sweep))
        .routes(routes!(crate::sweeps::cancel_sweep))
        .routes(routes!(crate::sweeps::list_trials, crate::sweeps::enqueue_trial))
        .routes(routes!(crate::sweeps::get_trial))
        .routes(routes!(crate::sweeps::rerun_trial))
        .routes(routes!(crate::sweeps::trial_launch))
        .routes(routes!(crate::sweeps::lease_trials))
        .routes(routes!(crate::sweeps::heartbeat))
        .routes(routes!(crate::sweeps::complete_trial))
        .routes(routes!(list_pools))
        .routes(routes!(agent_binary))
        .routes(routes!(cost))
        .routes(routes!(
            crate::code::get_code,
            crate::code::head_code,
            crate::code::put_code
        ))
        .routes(routes!(crate::dashboard::me))
        .routes(routes!(crate::dashboard::table))
        .routes(routes!(crate::dashboard::importance))
        .routes(routes!(crate::dashboard::curves))
        .routes(routes!(crate::dashboard::attempts))
        .routes(routes!(crate::events::events))
}

/// The OpenAPI document as committed in `openapi/openapi.json` (pretty JSON, trailing newline).
pub fn openapi_json() -> String {
    let (_, mut doc) = router().split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut text = doc.to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}
