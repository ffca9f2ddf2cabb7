//! Bearer tokens. Secrets are random 256-bit values shown once; the database keeps only their
//! SHA-256, and the daemon keeps the set of live hashes in memory so that checking a request
//! costs one hash and one set lookup, not a database read. Only this daemon creates and revokes
//! tokens, so the in-memory set is updated in the same place as the database.
//!
//! A VM of a gce pool gets a token of its own (in its instance metadata) that is good for its
//! agent's work only: the agent binary, leases of its pool's trials under its own name,
//! heartbeats and completions of those leases, and the MLflow runs of the trials it holds. It
//! dies with the VM.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::RngExt;
use sha2::{Digest, Sha256};
use spotsweep_store::{StoreError, TokenStore};

/// Checks bearer tokens against the live set.
#[derive(Debug)]
pub struct Auth {
    /// False with `--no-auth` (loopback only): every request passes.
    pub enabled: bool,
    /// SHA-256 (hex) of every live token.
    live: RwLock<HashSet<String>>,
    /// SHA-256 (hex) of every live VM's token, and what it may do.
    vms: RwLock<HashMap<String, VmScope>>,
}

/// What a VM's token is good for: the work of the agent named after the VM, in its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmScope {
    /// The VM's name, which its agent registers under.
    pub name: String,
    /// Its pool.
    pub pool: String,
}

/// What a live token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything (an API token).
    Full,
    /// A VM's agent work only.
    Vm(VmScope),
}

/// The VM a request comes from, for the handlers that narrow what it may do.
#[derive(Debug, Clone)]
pub struct VmPrincipal(pub VmScope);

/// A VM's token, derived from the daemon's secret and the VM's record, so that it can be made
/// again after a restart (an insert sent again must carry the same token).
pub fn vm_token(daemon_secret: &str, vm_id: i64, request_id: &str) -> String {
    let digest =
        Sha256::digest(format!("spotsweep-vm-token\n{daemon_secret}\n{vm_id}\n{request_id}").as_bytes());
    format!(
        "ssvm_{}",
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
    /// Loads the live token hashes.
    pub async fn load(store: &dyn TokenStore, enabled: bool) -> Result<Self, StoreError> {
        let live = store.live_token_hashes().await?.into_iter().collect();
        Ok(Self {
            enabled,
            live: RwLock::new(live),
            vms: RwLock::new(HashMap::new()),
        })
    }

    /// Whether `token` is live.
    pub fn accepts(&self, token: &str) -> bool {
        let hash = hash_token(token);
        self.live.read().map(|set| set.contains(&hash)).unwrap_or(false)
    }

    /// Records a newly created token.
    pub fn add(&self, hash: String) {
        if let Ok(mut set) = self.live.write() {
            set.insert(hash);
        }
    }

    /// Replaces the live set (after a revocation).
    pub fn replace(&self, hashes: Vec<String>) {
        if let Ok(mut set) = self.live.write() {
            *set = hashes.into_iter().collect();
        }
    }

    /// Records a live VM's token hash.
    pub fn add_vm(&self, hash: String, scope: VmScope) {
        if let Ok(mut m) = self.vms.write() {
            m.insert(hash, scope);
        }
    }

    /// Forgets a VM's token (the VM ended).
    pub fn remove_vm(&self, hash: &str) {
        if let Ok(mut m) = self.vms.write() {
            m.remove(hash);
        }
    }

    /// What `token` may do (one hash, then the live sets); `None` when it is not live.
    pub fn access(&self, token: &str) -> Option<Access> {
        let hash = hash_token(token);
        if self.live.read().is_ok_and(|set| set.contains(&hash)) {
            return Some(Access::Full);
        }
        self.vms.read().ok()?.get(&hash).cloned().map(Access::Vm)
    }

    /// Whether any token exists yet.
    pub fn is_empty(&self) -> bool {
        self.live.read().map(|s| s.is_empty()).unwrap_or(true)
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
    store.create_token("admin", &hash).await?;
    auth.add(hash);
    Ok(true)
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
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
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What the token check needs: the live tokens, and the fleet's records to check what a VM's
/// token reaches.
#[derive(Clone)]
pub struct AuthState {
    /// The live tokens.
    pub auth: Arc<Auth>,
    /// Leases and runs by agent.
    pub fleet: Arc<dyn spotsweep_store::FleetStore>,
}

/// Middleware: every route except `/health` and `/version` needs a live bearer token. The
/// refusal is MLflow's error envelope, which the MLflow client shows as is.
pub async fn require_token(State(state): State<AuthState>, req: Request, next: Next) -> Response {
    let auth = &state.auth;
    let path = req.uri().path();
    if !auth.enabled || path == "/health" || path == "/version" {
        return next.run(req).await;
    }
    let message = match bearer(&req).map(|t| auth.access(t)) {
        Some(Some(Access::Full)) => return next.run(req).await,
        Some(Some(Access::Vm(vm))) => return vm_request(&state, vm, req, next).await,
        Some(None) => {
            "The bearer token is not valid (unknown or revoked). Use the token in <data-dir>/admin.token \
                    or create one with POST /api/v1/tokens."
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

fn forbidden(message: String) -> Response {
    let body = serde_json::json!({ "error_code": "PERMISSION_DENIED", "message": message });
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// The MLflow write and read routes a VM's agent and its trials use, all naming a run.
const VM_MLFLOW_ROUTES: &[&str] = &[
    "/api/2.0/mlflow/runs/log-batch",
    "/api/2.0/mlflow/runs/log-metric",
    "/api/2.0/mlflow/runs/log-parameter",
    "/api/2.0/mlflow/runs/set-tag",
    "/api/2.0/mlflow/runs/delete-tag",
    "/api/2.0/mlflow/runs/update",
    "/api/2.0/mlflow/runs/log-inputs",
    "/api/2.0/mlflow/runs/get",
    "/api/2.0/mlflow/metrics/get-history",
];

/// A request with a VM's token: only the agent's work, on its own trials.
async fn vm_request(state: &AuthState, vm: VmScope, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let deny = |what: &str| {
        forbidden(format!(
            "this token belongs to VM {} of pool {}: it can lease, heartbeat and report that pool's trials and \
             write to their runs, not {what}",
            vm.name, vm.pool
        ))
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut req = req;
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v1", "agent", "binary"])
        | ("POST", ["api", "v1", "leases"])
        | ("GET", ["api", "2.0", "mlflow", "experiments", "get"]) => {}
        ("POST", ["api", "v1", "leases", lease, "heartbeat" | "complete"]) => {
            match state.fleet.lease_agent_name(lease).await {
                Ok(Some(name)) if name == vm.name => {}
                Ok(_) => return deny("another agent's lease"),
                Err(e) => return forbidden(format!("cannot check the lease: {e}")),
            }
        }
        // A listing: ?path=<experiment>/<run>/artifacts/...
        ("GET", ["api", "2.0", "mlflow-artifacts", "artifacts"]) => {
            let listed = req.uri().query().and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == "path")
                    .map(|(_, v)| {
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
            });
            let run = listed
                .as_deref()
                .and_then(|p| p.trim_start_matches('/').split('/').nth(1).map(str::to_owned));
            match run {
                Some(run) if owns_run(state, &vm, &run).await => {}
                _ => return deny("a listing outside its trials' runs"),
            }
        }
        // Artifacts: /api/2.0/mlflow-artifacts/artifacts/<experiment>/<run>/artifacts/...
        (_, ["api", "2.0", "mlflow-artifacts", "artifacts", _, _, ..]) => {
            // The handler sees the path decoded: so must this check (an encoded `/` in the
            // experiment segment would otherwise shift the run segment).
            let decoded = percent_encoding::percent_decode_str(&path).decode_utf8_lossy();
            let run = decoded
                .trim_start_matches('/')
                .split('/')
                .nth(5)
                .unwrap_or_default();
            if !owns_run(state, &vm, run).await {
                return deny("another run's artifacts");
            }
        }
        _ if VM_MLFLOW_ROUTES.contains(&path.as_str()) => {
            let run = if method == axum::http::Method::GET {
                req.uri().query().and_then(|q| {
                    q.split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .find(|(k, _)| *k == "run_id" || *k == "run_uuid")
                        .map(|(_, v)| v.to_string())
                })
            } else {
                let (parts, body) = req.into_parts();
                let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
                    return deny("a request body over 64 MiB");
                };
                let run = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| {
                        v.get("run_id")
                            .or_else(|| v.get("run_uuid"))
                            .and_then(|r| r.as_str())
                            .map(str::to_string)
                    });
                req = Request::from_parts(parts, axum::body::Body::from(bytes));
                run
            };
            match run {
                Some(run) if owns_run(state, &vm, &run).await => {}
                _ => return deny("a run of a trial it does not hold"),
            }
        }
        _ => return deny(&format!("{method} {path}")),
    }
    req.extensions_mut().insert(VmPrincipal(vm));
    next.run(req).await
}

async fn owns_run(state: &AuthState, vm: &VmScope, run: &str) -> bool {
    state.fleet.agent_runs_trial(&vm.name, run).await.unwrap_or(false)
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
