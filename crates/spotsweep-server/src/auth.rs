//! Bearer tokens. Secrets are random 256-bit values shown once; the database keeps only their
//! SHA-256, and the daemon keeps the set of live hashes in memory so that checking a request
//! costs one hash and one set lookup, not a database read. Only this daemon creates and revokes
//! tokens, so the in-memory set is updated in the same place as the database.

use std::collections::HashSet;
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

/// Middleware: every route except `/health` and `/version` needs a live bearer token. The
/// refusal is MLflow's error envelope, which the MLflow client shows as is.
pub async fn require_token(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !auth.enabled || path == "/health" || path == "/version" {
        return next.run(req).await;
    }
    let message = match bearer(&req) {
        Some(token) if auth.accepts(token) => return next.run(req).await,
        Some(_) => {
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
