//! Bearer tokens. Secrets are random 256-bit values shown once; the database keeps only their
//! SHA-256, and the daemon keeps the live tokens in memory so that checking a request costs one
//! hash and one map lookup, not a database read. A daemon alone on its database creates and
//! revokes every token itself, so the in-memory set is updated in the same place as the
//! database. Daemons sharing a PostgreSQL database also [`Reloader::reload`] what the others
//! made or revoked: when one announces it, and before refusing a token they do not know.
//!
//! Four kinds, least privilege first:
//! - a **trial's** token (`sstr_`), handed to each leased trial as `MLFLOW_TRACKING_TOKEN`: its
//!   own run (reads and writes, artifacts included), its sweep's experiment (reads) and its own
//!   lease. It dies with the lease.
//! - an **agent's** token: a VM of a gce pool (in its instance metadata) or a local agent (in
//!   its environment): the agent binary, leases of its pool's trials under its own name,
//!   heartbeats and completions of those leases, the MLflow runs of the trials it holds, and
//!   the code snapshots of its pool's sweeps.
//! - a **user** API token: the whole API; it may create, list and revoke user tokens.
//! - the **admin** token (`admin.token`, written at first start): a user's rights, and it cannot
//!   be revoked through the API, only replaced offline with `spotsweep token reset-admin`.
//!
//! API tokens may expire (`expires_in`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::RngExt;
use sha2::{Digest, Sha256};
use spotsweep_store::{ApiToken, NewToken, StoreError, TokenRole, TokenScope, TokenStore};

/// Checks bearer tokens against the live set.
#[derive(Debug)]
pub struct Auth {
    /// False with `--no-auth` (loopback only): every request passes.
    pub enabled: bool,
    /// Every live API token's record, by the SHA-256 (hex) of its secret.
    live: RwLock<HashMap<String, ApiToken>>,
    /// Every live agent token (VMs and local agents), by hash, and what it may do.
    agents: RwLock<HashMap<String, VmScope>>,
    /// Every open lease's trial token, by hash, and what it may do.
    trials: RwLock<HashMap<String, TrialScope>>,
}

/// What an agent's token is good for: the work of the agent named after the VM (or the local
/// agent), in its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmScope {
    /// The VM's (or local agent's) name, which its agent registers under.
    pub name: String,
    /// Its pool.
    pub pool: String,
}

/// What a trial's token is good for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialScope {
    /// The lease the trial runs under.
    pub lease_id: String,
    /// Its MLflow run.
    pub run_id: String,
    /// Its sweep's experiment.
    pub experiment_id: String,
    /// When the token was made live (ms since the epoch): a sync that read the open leases
    /// before that keeps it.
    pub issued_at: i64,
}

/// What a live token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// An API token (user or admin).
    Api(ApiToken),
    /// An agent's work only.
    Vm(VmScope),
    /// One trial's run, experiment and lease only.
    Trial(TrialScope),
}

/// The VM a request comes from, for the handlers that narrow what it may do.
#[derive(Debug, Clone)]
pub struct VmPrincipal(pub VmScope);

/// A VM's token, derived from the daemon's secret and the VM's record, so that it can be made
/// again after a restart (an insert sent again must carry the same token).
pub fn vm_token(daemon_secret: &str, vm_id: i64, request_id: &str) -> String {
    derived(
        "ssvm_",
        &format!("spotsweep-vm-token\n{daemon_secret}\n{vm_id}\n{request_id}"),
    )
}

/// A trial's token, derived from the daemon's secret and the lease, so that a restarted daemon
/// knows the tokens of the trials still running.
pub fn trial_token(daemon_secret: &str, lease_id: &str) -> String {
    derived(
        "sstr_",
        &format!("spotsweep-trial-token\n{daemon_secret}\n{lease_id}"),
    )
}

fn derived(prefix: &str, input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// The hex SHA-256 of a token, as stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh secret: `ss_` and 43 URL-safe base64 characters (256 random bits).
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!(
        "ss_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl Auth {
    /// Loads the live API tokens.
    pub async fn load(store: &dyn TokenStore, enabled: bool) -> Result<Self, StoreError> {
        let live = store.live_tokens().await?.into_iter().collect();
        Ok(Self {
            enabled,
            live: RwLock::new(live),
            agents: RwLock::new(HashMap::new()),
            trials: RwLock::new(HashMap::new()),
        })
    }

    /// Records a newly created API token.
    pub fn add(&self, hash: String, token: ApiToken) {
        if let Ok(mut live) = self.live.write() {
            live.insert(hash, token);
        }
    }

    /// Forgets a revoked API token.
    pub fn remove(&self, id: &str) {
        if let Ok(mut live) = self.live.write() {
            live.retain(|_, t| t.id != id);
        }
    }

    /// Records a live agent's token hash.
    pub fn add_vm(&self, hash: String, scope: VmScope) {
        if let Ok(mut m) = self.agents.write() {
            m.insert(hash, scope);
        }
    }

    /// Forgets an agent's token (the VM ended).
    pub fn remove_vm(&self, hash: &str) {
        if let Ok(mut m) = self.agents.write() {
            m.remove(hash);
        }
    }

    /// Records an open lease's trial token.
    pub fn add_trial(&self, token: &str, scope: TrialScope) {
        if let Ok(mut m) = self.trials.write() {
            m.insert(hash_token(token), scope);
        }
    }

    /// Forgets the trial tokens of leases that are no longer open.
    pub fn retain_trials(&self, open: impl Fn(&str) -> bool) {
        if let Ok(mut m) = self.trials.write() {
            m.retain(|_, scope| open(&scope.lease_id));
        }
    }

    /// Keeps the trial tokens of the open leases read at `read_at`, and those made live since
    /// (their leases were committed after the read).
    pub fn retain_trials_open_at(&self, open: &std::collections::HashSet<&str>, read_at: i64) {
        if let Ok(mut m) = self.trials.write() {
            m.retain(|_, scope| scope.issued_at >= read_at || open.contains(scope.lease_id.as_str()));
        }
    }

    /// What `token` may do (one hash, then the live maps); `None` when it is unknown, revoked
    /// or expired.
    pub fn access(&self, token: &str) -> Option<Access> {
        let hash = hash_token(token);
        if let Some(api) = self.live.read().ok()?.get(&hash) {
            let expired = api.expires_at.is_some_and(|at| at <= spotsweep_store::now_ms());
            return (!expired).then(|| Access::Api(api.clone()));
        }
        if let Some(trial) = self.trials.read().ok()?.get(&hash) {
            return Some(Access::Trial(trial.clone()));
        }
        self.agents.read().ok()?.get(&hash).cloned().map(Access::Vm)
    }

    /// The live (unexpired) API token with this id.
    pub fn api_token(&self, id: &str) -> Option<ApiToken> {
        let now = spotsweep_store::now_ms();
        self.live
            .read()
            .ok()?
            .values()
            .find(|t| t.id == id && t.expires_at.is_none_or(|at| at > now))
            .cloned()
    }

    /// Whether `token` is a live API token.
    pub fn accepts(&self, token: &str) -> bool {
        matches!(self.access(token), Some(Access::Api(_)))
    }

    /// Replaces the live API tokens with those read from the database.
    fn replace_api(&self, live: HashMap<String, ApiToken>) {
        if let Ok(mut m) = self.live.write() {
            *m = live;
        }
    }

    /// Replaces the VMs' tokens with those read from the database; the local agents' tokens
    /// (this daemon's own, never stored) stay.
    fn replace_vms(&self, vms: impl IntoIterator<Item = (String, VmScope)>) {
        if let Ok(mut m) = self.agents.write() {
            m.retain(|_, scope| scope.pool == crate::local::POOL);
            m.extend(vms);
        }
    }

    /// Makes the trial tokens of the open leases read at `read_at` live and forgets those of
    /// leases that ended (a token made live after the read stays: its lease is newer).
    pub fn sync_trials(&self, daemon_secret: &str, open: &[(String, String, i64)], read_at: i64) {
        let ids: std::collections::HashSet<&str> = open.iter().map(|(lease, _, _)| lease.as_str()).collect();
        self.retain_trials_open_at(&ids, read_at);
        for (lease_id, run_id, experiment_id) in open {
            self.add_trial(
                &trial_token(daemon_secret, lease_id),
                TrialScope {
                    lease_id: lease_id.clone(),
                    run_id: run_id.clone(),
                    experiment_id: experiment_id.to_string(),
                    issued_at: read_at,
                },
            );
        }
    }

    /// Whether any API token exists yet.
    pub fn is_empty(&self) -> bool {
        self.live.read().map(|s| s.is_empty()).unwrap_or(true)
    }
}

/// Reads the tokens that other daemons on the same database made or revoked: API tokens, the
/// VMs' tokens (the fleet's leader makes them) and the trial tokens of leases taken elsewhere.
pub struct Reloader {
    tokens: Arc<dyn TokenStore>,
    fleet: Arc<dyn spotsweep_store::FleetStore>,
    daemon_secret: Arc<String>,
    /// When the latest reload began. Held while reloading, so that reloads run one at a time
    /// and requests waiting on one share it.
    began: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// Reloads for unknown tokens run at most this often: a stream of bad tokens costs the database
/// ten reads a second, not one per request.
const RELOAD_AT_MOST_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Reloader {
    /// A reloader reading these stores.
    pub fn new(
        tokens: Arc<dyn TokenStore>,
        fleet: Arc<dyn spotsweep_store::FleetStore>,
        daemon_secret: Arc<String>,
    ) -> Self {
        Self {
            tokens,
            fleet,
            daemon_secret,
            began: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads every kind of token again (another daemon announced a change, or the
    /// announcements were interrupted).
    pub async fn reload(&self, auth: &Auth) -> Result<(), StoreError> {
        let mut began = self.began.lock().await;
        *began = Some(std::time::Instant::now());
        self.read(auth).await
    }

    /// For a request with a token unknown here that arrived at `arrived`: reloads, unless a
    /// reload began after it arrived (that one saw every token committed before the request).
    async fn reload_for(&self, auth: &Auth, arrived: std::time::Instant) -> Result<(), StoreError> {
        let mut began = self.began.lock().await;
        if began.is_some_and(|at| at >= arrived) {
            return Ok(());
        }
        if let Some(at) = *began {
            tokio::time::sleep_until((at + RELOAD_AT_MOST_EVERY).into()).await;
        }
        *began = Some(std::time::Instant::now());
        self.read(auth).await
    }

    async fn read(&self, auth: &Auth) -> Result<(), StoreError> {
        let read_at = spotsweep_store::now_ms();
        let api = self.tokens.live_tokens().await?;
        let vms = self.fleet.list_vms(None, false).await?;
        let open = self.fleet.open_lease_runs().await?;
        auth.replace_api(api.into_iter().collect());
        auth.replace_vms(vms.into_iter().filter_map(|vm| {
            let hash = vm.token_hash?;
            Some((
                hash,
                VmScope {
                    name: vm.name,
                    pool: vm.pool,
                },
            ))
        }));
        auth.sync_trials(&self.daemon_secret, &open, read_at);
        Ok(())
    }
}

/// On first start (no token at all), creates the admin token and writes it to `path` with mode
/// 0600. Returns whether a token was written. The secret itself is never logged.
pub async fn bootstrap_admin_token(store: &dyn TokenStore, auth: &Auth, path: &Path) -> anyhow::Result<bool> {
    if !auth.is_empty() {
        return Ok(false);
    }
    let secret = new_secret();
    let hash = hash_token(&secret);
    write_private(path, &format!("{secret}\n"))?;
    let token = store
        .create_token(NewToken {
            name: "admin",
            hash: &hash,
            role: TokenRole::Admin,
            scope: TokenScope::Write,
            expires_at: None,
        })
        .await?;
    auth.add(hash, token);
    Ok(true)
}

/// `spotsweep token reset-admin`: with the daemon stopped, revokes the admin token and writes a
/// new one to `path` (mode 0600).
pub async fn reset_admin_token(store: &dyn TokenStore, path: &Path) -> anyhow::Result<()> {
    let secret = new_secret();
    // The file first: if writing it fails, the old token still works.
    let tmp = path.with_extension("token.new");
    write_private(&tmp, &format!("{secret}\n"))?;
    store.reset_admin_token(&hash_token(&secret)).await?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(unix)]
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("token.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// The bearer token of a request, if it sends one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The name of the browser session cookie.
pub const SESSION_COOKIE: &str = "spotsweep_session";

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// A session cookie's value: the API token it stands for and when it ends, signed with the
/// daemon's secret (so it survives a restart and cannot be forged or extended).
pub fn session_cookie(daemon_secret: &str, token_id: &str, expires_at: i64) -> String {
    let payload = format!("{token_id}.{expires_at}");
    let mac = hmac_sha256(
        daemon_secret.as_bytes(),
        format!("spotsweep-session\n{payload}").as_bytes(),
    );
    format!("{payload}.{}", hex::encode(mac))
}

/// The live API token a request's session cookie stands for: signed by this daemon, not expired,
/// and its token still live.
pub fn session_token(auth: &Auth, daemon_secret: &str, headers: &axum::http::HeaderMap) -> Option<ApiToken> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)?;
    let (payload, mac) = value.rsplit_once('.')?;
    let (token_id, expires_at) = payload.split_once('.')?;
    let expires_at: i64 = expires_at.parse().ok()?;
    let expected = hmac_sha256(
        daemon_secret.as_bytes(),
        format!("spotsweep-session\n{payload}").as_bytes(),
    );
    let given = hex::decode(mac).ok()?;
    // Constant time: a forger learns nothing from how long the comparison took.
    let equal = given.len() == expected.len()
        && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !equal || expires_at <= spotsweep_store::now_ms() {
        return None;
    }
    auth.api_token(token_id)
}

/// The API token a request was authenticated with (bearer or browser session), for handlers
/// that bound what it may do (a token never makes one that outlives it).
#[derive(Debug, Clone)]
pub struct Caller(pub ApiToken);

fn cross_site_refused() -> Response {
    forbidden(
        "cross-site request refused: a request that changes something must come from this daemon's own pages \
         (its Origin does not match)"
            .into(),
    )
}

/// Whether a browser says the request comes from another site: an `Origin` that is not this
/// host, or `Sec-Fetch-Site: cross-site`/`same-site`. Requests that say nothing (not from a
/// browser) are not.
fn from_another_site(headers: &axum::http::HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).is_some();
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    (origin || fetch_site.is_some_and(|v| v == "cross-site" || v == "same-site")) && !same_origin(headers)
}

/// Whether a request comes from a page of this daemon: its `Origin` names this host, or, when a
/// browser sends no `Origin`, `Sec-Fetch-Site` says same-origin. Cookie-authenticated requests
/// that change state must (the cookie's SameSite=Strict is the first line, this the second).
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) => {
            let origin_host = origin.split_once("://").map(|(_, rest)| rest);
            origin_host.is_some() && origin_host == host
        }
        None => headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "same-origin" || v == "none"),
    }
}

/// What the token check needs: the live tokens, and the fleet's records to check what a VM's
/// token reaches.
#[derive(Clone)]
pub struct AuthState {
    /// The live tokens.
    pub auth: Arc<Auth>,
    /// Leases and runs by agent.
    pub fleet: Arc<dyn spotsweep_store::FleetStore>,
    /// Logged models, to check which run logged one.
    pub models: Arc<dyn spotsweep_store::ModelStore>,
    /// Traces, to check which experiment one is in.
    pub traces: Arc<dyn spotsweep_store::TraceStore>,
    /// The daemon's secret, which signs browser sessions.
    pub daemon_secret: Arc<String>,
    /// With other daemons on the database: where to look for a token this one does not know.
    pub reloader: Option<Arc<Reloader>>,
}

/// Middleware: every route except `/health` and `/version` needs a live bearer token. The
/// refusal is MLflow's error envelope, which the MLflow client shows as is.
pub async fn require_token(State(state): State<AuthState>, req: Request, next: Next) -> Response {
    let arrived = std::time::Instant::now();
    let auth = &state.auth;
    let path = req.uri().path();
    if !auth.enabled || path == "/health" || path == "/version" || crate::ui::is_public(path) {
        // Without tokens, a page of another site in the user's browser could still post here
        // (a `no-cors` fetch needs no preflight): browsers say where such a request comes from,
        // the CLI and the MLflow client say nothing.
        let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe && bearer(req.headers()).is_none() && from_another_site(req.headers()) {
            return cross_site_refused();
        }
        return next.run(req).await;
    }
    // A browser signed in with a cookie: the same rights as the token it stands for, and state
    // changes only from this daemon's own pages.
    if bearer(req.headers()).is_none()
        && let Some(token) = session_token(auth, &state.daemon_secret, req.headers())
    {
        let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe && !same_origin(req.headers()) {
            return cross_site_refused();
        }
        if let Some(refusal) = read_only_refusal(&token, &req) {
            return refusal;
        }
        let mut req = req;
        req.extensions_mut().insert(Caller(token));
        return next.run(req).await;
    }
    let mut access = bearer(req.headers()).map(|t| auth.access(t));
    // A token another daemon made a moment ago (a trial's lease taken there, a new API token):
    // look in the database before refusing it.
    if let (Some(None), Some(reloader), Some(token)) = (&access, &state.reloader, bearer(req.headers())) {
        match reloader.reload_for(auth, arrived).await {
            Ok(()) => access = Some(auth.access(token)),
            Err(e) => tracing::warn!(error = %e, "cannot read the tokens other daemons made"),
        }
    }
    let message = match access {
        Some(Some(Access::Api(token))) => {
            if let Some(refusal) = read_only_refusal(&token, &req) {
                return refusal;
            }
            let mut req = req;
            req.extensions_mut().insert(Caller(token));
            return next.run(req).await;
        }
        Some(Some(Access::Vm(vm))) => return scoped_request(&state, Scoped::Vm(vm), req, next).await,
        Some(Some(Access::Trial(trial))) => {
            return scoped_request(&state, Scoped::Trial(trial), req, next).await;
        }
        Some(None) => {
            "The bearer token is not valid (unknown, revoked or expired). Use the token in \
             <data-dir>/admin.token or create one with POST /api/v1/tokens."
        }
        None => {
            "Authentication required: send 'Authorization: Bearer <token>' (for the MLflow client, set \
                 MLFLOW_TRACKING_TOKEN). The first admin token is in <data-dir>/admin.token."
        }
    };
    let body = serde_json::json!({ "error_code": "UNAUTHENTICATED", "message": message });
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The MLflow routes that take a POST only to carry a query: a read token may call them.
const READ_ONLY_POSTS: &[&str] = &[
    "mlflow/experiments/search",
    "mlflow/experiments/search-datasets",
    "mlflow/runs/search",
    "mlflow/logged-models/search",
    "mlflow/traces/search",
    "mlflow/traces/metrics",
    "mlflow/datasets/search",
    "mlflow/registered-models/get-latest-versions",
    "mlflow/ui-telemetry",
];

/// Whether a POST only reads: a search, the UI's GraphQL queries (the schema served here has no
/// mutations), or signing out.
fn reads_only(path: &str) -> bool {
    if path == "/graphql" || path == "/signout" {
        return true;
    }
    let rest = ["/api/2.0/", "/api/3.0/", "/ajax-api/2.0/", "/ajax-api/3.0/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix));
    rest.is_some_and(|rest| READ_ONLY_POSTS.contains(&rest))
}

/// A read token's refusal of anything that changes state (`None`: the request may go on).
fn read_only_refusal(token: &ApiToken, req: &Request) -> Option<Response> {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if token.scope != TokenScope::Read || safe || reads_only(req.uri().path()) {
        return None;
    }
    Some(forbidden(format!(
        "token '{}' is read-only (scope read): it can see every page and read everything, but not {} {}. \
         Use a token with scope write (POST /api/v1/tokens with \"scope\": \"write\") to change anything.",
        token.name,
        req.method(),
        req.uri().path()
    )))
}

fn forbidden(message: String) -> Response {
    let body = serde_json::json!({ "error_code": "PERMISSION_DENIED", "message": message });
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// The MLflow write and read routes an agent and a trial use, all naming a run.
const RUN_ROUTES: &[&str] = &[
    "/api/2.0/mlflow/runs/log-batch",
    "/api/2.0/mlflow/runs/log-metric",
    "/api/2.0/mlflow/runs/log-parameter",
    "/api/2.0/mlflow/runs/set-tag",
    "/api/2.0/mlflow/runs/delete-tag",
    "/api/2.0/mlflow/runs/update",
    "/api/2.0/mlflow/runs/log-inputs",
    "/api/2.0/mlflow/runs/outputs",
    "/api/2.0/mlflow/runs/get",
    "/api/2.0/mlflow/metrics/get-history",
    "/api/2.0/mlflow/artifacts/list",
];

/// A token narrower than an API token: an agent's or a trial's.
enum Scoped {
    Vm(VmScope),
    Trial(TrialScope),
}

impl Scoped {
    /// What the token is, for refusals.
    fn describe(&self) -> String {
        match self {
            Self::Vm(vm) => format!(
                "this token belongs to agent {} of pool {}: it can lease, heartbeat and report that pool's \
                 trials and write to their runs",
                vm.name, vm.pool
            ),
            Self::Trial(t) => format!(
                "this token belongs to the trial of lease {}: it can write to run {}, read experiment {} and \
                 heartbeat or complete its lease",
                t.lease_id, t.run_id, t.experiment_id
            ),
        }
    }

    async fn owns_run(&self, state: &AuthState, run: &str) -> bool {
        match self {
            Self::Vm(vm) => state.fleet.agent_runs_trial(&vm.name, run).await.unwrap_or(false),
            Self::Trial(t) => t.run_id == run,
        }
    }

    /// Whether the logged model was logged by one of its runs.
    async fn owns_model(&self, state: &AuthState, model_id: &str) -> bool {
        match state.models.get_logged_model(model_id, true).await {
            Ok(model) => self.owns_run(state, &model.source_run_id).await,
            Err(_) => false,
        }
    }

    /// Whether the trace is in its own experiment (a trial's; agents write no traces).
    async fn owns_trace(&self, state: &AuthState, trace_id: &str) -> bool {
        match (self, state.traces.get_trace(trace_id).await) {
            (Self::Trial(t), Ok(trace)) => trace.experiment_id.to_string() == t.experiment_id,
            _ => false,
        }
    }

    /// Whether `experiment` is a trial's own (agents read any experiment).
    fn reads_experiment(&self, experiment: &str) -> bool {
        match self {
            Self::Vm(_) => true,
            Self::Trial(t) => t.experiment_id == experiment,
        }
    }

    async fn owns_lease(&self, state: &AuthState, lease: &str) -> bool {
        match self {
            Self::Vm(vm) => matches!(state.fleet.lease_agent_name(lease).await, Ok(Some(n)) if n == vm.name),
            Self::Trial(t) => t.lease_id == lease,
        }
    }
}

/// The value of `key` in a query string, percent-decoded.
fn query_value(req: &Request, key: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    })
}

/// Reads a request's JSON body (for a rule that depends on it) and gives back the request with
/// the same bytes for the handler; `None` for a body over 64 MiB. A body that is not JSON reads
/// as `null`, which no rule accepts.
async fn json_body(req: Request) -> Option<(Request, serde_json::Value)> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20).await.ok()?;
    let value = serde_json::from_slice(&bytes).unwrap_or_default();
    Some((Request::from_parts(parts, axum::body::Body::from(bytes)), value))
}

/// A request with an agent's or a trial's token: only their work, on their own runs.
async fn scoped_request(state: &AuthState, who: Scoped, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let deny = |what: &str| forbidden(format!("{}, not {what}", who.describe()));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut req = req;
    match (&who, method.as_str(), segments.as_slice()) {
        (Scoped::Vm(_), "GET", ["api", "v1", "agent", "binary"])
        // The code snapshots of its pool's sweeps (the handler checks which, by its pool).
        | (Scoped::Vm(_), "GET", ["api", "v1", "code", _])
        | (Scoped::Vm(_), "POST", ["api", "v1", "leases"])
        | (Scoped::Vm(_), "GET", ["api", "2.0", "mlflow", "experiments", "get"]) => {}
        (Scoped::Trial(t), "GET", ["api", "2.0", "mlflow", "experiments", "get"]) => {
            if query_value(&req, "experiment_id").as_deref() != Some(t.experiment_id.as_str()) {
                return deny("another experiment");
            }
        }
        // Found by name: allowed when the answer is its own experiment.
        (Scoped::Trial(t), "GET", ["api", "2.0", "mlflow", "experiments", "get-by-name"]) => {
            let experiment = t.experiment_id.clone();
            let response = next.run(req).await;
            if !response.status().is_success() {
                return response;
            }
            let (parts, body) = response.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
                return deny("an experiment too large to check");
            };
            let found = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.pointer("/experiment/experiment_id")
                        .and_then(|id| id.as_str())
                        .map(str::to_owned)
                });
            if found.as_deref() != Some(experiment.as_str()) {
                return deny("another experiment");
            }
            return Response::from_parts(parts, axum::body::Body::from(bytes));
        }
        // An agent reports its trials; a trial may only keep its own lease alive (completing it,
        // as preempted or setup-failed, is the agent's word, not the trial's).
        (Scoped::Vm(_), "POST", ["api", "v1", "leases", lease, "heartbeat" | "complete"])
        | (Scoped::Trial(_), "POST", ["api", "v1", "leases", lease, "heartbeat"]) => {
            if !who.owns_lease(state, lease).await {
                return deny("another agent's lease");
            }
        }
        // A listing: ?path=<experiment>/<run>/artifacts/...
        (_, "GET", ["api", "2.0", "mlflow-artifacts", "artifacts"]) => {
            let listed = query_value(&req, "path");
            let run = listed
                .as_deref()
                .and_then(|p| p.trim_start_matches('/').split('/').nth(1).map(str::to_owned));
            match run {
                Some(run) if who.owns_run(state, &run).await => {}
                _ => return deny("a listing outside its runs"),
            }
        }
        // Artifacts: /api/2.0/mlflow-artifacts/artifacts/<experiment>/<run>/artifacts/..., or a
        // logged model's: <experiment>/models/<model>/artifacts/...
        (_, _, ["api", "2.0", "mlflow-artifacts", "artifacts", _, _, ..]) => {
            // The handler sees the path decoded: so must this check (an encoded `/` in the
            // experiment segment would otherwise shift the run segment).
            let decoded = percent_encoding::percent_decode_str(&path).decode_utf8_lossy();
            let parts: Vec<&str> = decoded.trim_start_matches('/').split('/').collect();
            let allowed = match parts.get(5..7) {
                Some(["models", model]) => who.owns_model(state, model).await,
                Some(["traces", trace]) => who.owns_trace(state, trace).await,
                _ => {
                    who.owns_run(state, parts.get(5).copied().unwrap_or_default())
                        .await
                }
            };
            if !allowed {
                return deny("another run's artifacts");
            }
        }
        // MLflow 3's logged models: a run creates its own and works on them.
        (_, "POST", ["api", "2.0", "mlflow", "logged-models"]) => {
            let Some((body, value)) = json_body(req).await else {
                return deny("a request body over 64 MiB");
            };
            req = body;
            let field = |name: &str| match value.get(name) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            if !who.reads_experiment(&field("experiment_id"))
                || !who.owns_run(state, &field("source_run_id")).await
            {
                return deny("a model of a run it does not hold");
            }
        }
        (_, "POST", ["api", "2.0", "mlflow", "logged-models", "search"]) => {
            let Some((body, value)) = json_body(req).await else {
                return deny("a request body over 64 MiB");
            };
            req = body;
            let ids = value
                .get("experiment_ids")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            if ids.is_empty()
                || !ids
                    .iter()
                    .all(|id| id.as_str().is_some_and(|id| who.reads_experiment(id)))
            {
                return deny("models of another experiment");
            }
        }
        (_, _, ["api", "2.0", "mlflow", "logged-models", model, ..]) => {
            if !who.owns_model(state, model).await {
                return deny("a model of a run it does not hold");
            }
        }
        (_, "GET", ["api", "3.0", "mlflow", "server-info"]) => {}
        // The registry, for a training script that registers what it trained
        // (`log_model(..., registered_model_name=...)`, `mlflow.register_model`): its reads, a
        // new name, and versions of its own run's models.
        (Scoped::Trial(_), "GET", ["api", "2.0", "mlflow", "registered-models" | "model-versions", ..])
        | (Scoped::Trial(_), "POST", ["api", "2.0", "mlflow", "registered-models", "create"]) => {}
        (Scoped::Trial(_), "POST", ["api", "2.0", "mlflow", "model-versions", "create"]) => {
            let Some((body, value)) = json_body(req).await else {
                return deny("a request body over 64 MiB");
            };
            req = body;
            let text = |name: &str| {
                value
                    .get(name)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            // Every run and model it names is its own, and it names one at least.
            let (run, model) = (text("run_id"), text("model_id"));
            let own = !(run.is_empty() && model.is_empty())
                && (run.is_empty() || who.owns_run(state, &run).await)
                && (model.is_empty() || who.owns_model(state, &model).await);
            if !own {
                return deny("a model version of a run it does not hold");
            }
        }
        // A trace of its own experiment (`@mlflow.trace` in training code).
        (Scoped::Trial(_), "POST", ["api", "3.0", "mlflow", "traces"]) => {
            let Some((body, value)) = json_body(req).await else {
                return deny("a request body over 64 MiB");
            };
            req = body;
            let experiment = value
                .pointer("/trace/trace_info/trace_location/mlflow_experiment/experiment_id")
                .and_then(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .or_else(|| v.as_i64().map(|n| n.to_string()))
                })
                .unwrap_or_default();
            if !who.reads_experiment(&experiment) {
                return deny("a trace in another experiment");
            }
        }
        _ if RUN_ROUTES.contains(&path.as_str()) => {
            let run = if method == Method::GET {
                query_value(&req, "run_id").or_else(|| query_value(&req, "run_uuid"))
            } else {
                let Some((body, value)) = json_body(req).await else {
                    return deny("a request body over 64 MiB");
                };
                req = body;
                value
                    .get("run_id")
                    .or_else(|| value.get("run_uuid"))
                    .and_then(|r| r.as_str())
                    .map(str::to_string)
            };
            match run {
                Some(run) if who.owns_run(state, &run).await => {}
                _ => return deny("a run it does not hold"),
            }
        }
        _ => return deny(&format!("{method} {path}")),
    }
    if let Scoped::Vm(vm) = who {
        req.extensions_mut().insert(VmPrincipal(vm));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_and_hash_stably() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("ss_") && a.len() == 46);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_eq!(hash_token(&a).len(), 64);
    }
}
