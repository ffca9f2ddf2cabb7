//! The typed HTTP client of `/api/v1` (feature `client`): one method per call, the request
//! and answer types of this crate, and one error type that says whether trying again can help.
//! The CLI, the agent and the tests use it; none of them builds URLs or reads error bodies by
//! hand.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    CodeSnapshotBody, CompleteRequest, CostReport, HeartbeatRequest, HeartbeatResponse, LeaseRequestBody,
    LeaseResponse, PoolList, RerunRequest, SweepBody, SweepList, TrialBody, TrialLaunchBody, TrialList,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon answered with an error status; `message` is its `ApiErrorBody` message (or
    /// the body as text when it sent none).
    #[error("{status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// What the daemon said.
        message: String,
    },
    /// No answer: the daemon is down, unreachable, or the connection broke.
    #[error("cannot reach the daemon: {0}")]
    Unreachable(String),
    /// An answer this client cannot read (a daemon of another version?).
    #[error("unexpected answer from the daemon: {0}")]
    Unreadable(String),
}

impl Error {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the same call may succeed later: the daemon was away, busy (408, 429, 503) or
    /// failed (5xx). A refusal of the request itself (4xx) will not get better by retrying.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Refused { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            Self::Unreadable(_) => false,
        }
    }
}

/// The result of a call.
pub type Result<T> = std::result::Result<T, Error>;

/// A daemon's `/api/v1` (and the few MLflow calls an agent makes on a trial's run).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of the daemon at `base` (`http://host:port`), with a bearer token.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self::with_http(reqwest::Client::new(), base, token)
    }

    /// The same, with `http` (its timeouts, its TLS roots).
    pub fn with_http(http: reqwest::Client, base: &str, token: Option<String>) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// The daemon's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token sent, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A request to `path` (from the root: `/api/v1/...`) with the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends `request` and reads its answer as `T`.
    pub async fn send<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T> {
        let r = request
            .send()
            .await
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        let status = r.status();
        let text = r.text().await.map_err(|e| Error::Unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(refusal(status.as_u16(), text));
        }
        serde_json::from_str(&text).map_err(|e| Error::Unreadable(format!("{e}: {}", clip(&text))))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Self::send(self.request(reqwest::Method::GET, path)).await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        Self::send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    // --- sweeps -------------------------------------------------------------------------------

    /// Submits a sweep spec (as JSON: the daemon validates it and says what is wrong).
    pub async fn submit_sweep(&self, spec: &serde_json::Value) -> Result<SweepBody> {
        self.post("/api/v1/sweeps", spec).await
    }

    /// One sweep.
    pub async fn sweep(&self, id: i64) -> Result<SweepBody> {
        self.get(&format!("/api/v1/sweeps/{id}")).await
    }

    /// The first page of sweeps, newest first.
    pub async fn sweeps(&self) -> Result<SweepList> {
        self.get("/api/v1/sweeps").await
    }

    /// A sweep's trials.
    pub async fn trials(&self, sweep: i64) -> Result<TrialList> {
        self.get(&format!("/api/v1/sweeps/{sweep}/trials")).await
    }

    /// One trial of a sweep.
    pub async fn trial(&self, sweep: i64, number: i64) -> Result<TrialBody> {
        self.get(&format!("/api/v1/sweeps/{sweep}/trials/{number}")).await
    }

    /// Queues a rerun of a finished trial (on `pool`, or the sweep's).
    pub async fn rerun(&self, sweep: i64, number: i64, pool: Option<&str>) -> Result<TrialBody> {
        let body = RerunRequest {
            pool: pool.map(str::to_owned),
        };
        self.post(&format!("/api/v1/sweeps/{sweep}/trials/{number}/rerun"), &body)
            .await
    }

    /// How a trial was launched: its command, environment and code.
    pub async fn launch(&self, sweep: i64, number: i64) -> Result<TrialLaunchBody> {
        self.get(&format!("/api/v1/sweeps/{sweep}/trials/{number}/launch"))
            .await
    }

    // --- fleet --------------------------------------------------------------------------------

    /// The pools, their agents and VMs.
    pub async fn pools(&self) -> Result<PoolList> {
        self.get("/api/v1/pools").await
    }

    /// What the fleet has cost (one sweep's trials too, with `sweep_id`).
    pub async fn cost(&self, sweep_id: Option<i64>) -> Result<CostReport> {
        match sweep_id {
            Some(id) => self.get(&format!("/api/v1/cost?sweep_id={id}")).await,
            None => self.get("/api/v1/cost").await,
        }
    }

    // --- code snapshots -----------------------------------------------------------------------

    /// Whether the daemon has code snapshot `id`.
    pub async fn has_code(&self, id: &str) -> Result<bool> {
        let r = self
            .request(reqwest::Method::HEAD, &format!("/api/v1/code/{id}"))
            .send()
            .await
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        match r.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s => Err(Error::Refused {
                status: s.as_u16(),
                message: format!("the daemon cannot say whether it has code snapshot {id}"),
            }),
        }
    }

    /// Uploads code snapshot `id`, a gzipped tarball of `size` bytes, streamed from `body`.
    pub async fn put_code(&self, id: &str, body: reqwest::Body, size: u64) -> Result<CodeSnapshotBody> {
        Self::send(
            self.request(reqwest::Method::PUT, &format!("/api/v1/code/{id}"))
                .header(reqwest::header::CONTENT_TYPE, "application/gzip")
                .header(reqwest::header::CONTENT_LENGTH, size)
                .body(body),
        )
        .await
    }

    // --- agents -------------------------------------------------------------------------------

    /// Asks for work (a long poll of up to `request.wait_ms`).
    pub async fn lease(&self, request: &LeaseRequestBody) -> Result<LeaseResponse> {
        self.post("/api/v1/leases", request).await
    }

    /// Extends a lease, and hears whether to go on.
    pub async fn heartbeat(&self, lease_id: &str, request: &HeartbeatRequest) -> Result<HeartbeatResponse> {
        self.post(&format!("/api/v1/leases/{lease_id}/heartbeat"), request)
            .await
    }

    /// Reports how a leased trial ended; answers the trial as it now is.
    pub async fn complete(&self, lease_id: &str, outcome: &CompleteRequest) -> Result<TrialBody> {
        self.post(&format!("/api/v1/leases/{lease_id}/complete"), outcome)
            .await
    }

    /// Sets tags on an MLflow run (`runs/log-batch`).
    pub async fn set_run_tags(&self, run_id: &str, tags: &[(&str, String)]) -> Result<()> {
        let body = serde_json::json!({
            "run_id": run_id,
            "tags": tags.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect::<Vec<_>>(),
        });
        let _: serde_json::Value = self.post("/api/2.0/mlflow/runs/log-batch", &body).await?;
        Ok(())
    }

    /// Whether `/health` answers.
    pub async fn healthy(&self) -> bool {
        matches!(self.http.get(format!("{}/health", self.base)).send().await, Ok(r) if r.status().is_success())
    }
}

/// The error of an answer with `status`: the message of its `ApiErrorBody` (or MLflow's
/// `{"message": ...}`), else its text.
fn refusal(status: u16, text: String) -> Error {
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| clip(&text).to_owned());
    Error::Refused { status, message }
}

/// At most the first 500 bytes of `s` (at a character boundary), for error messages.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(500);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_daemon_s_message_and_say_whether_to_retry() {
        let e = refusal(
            404,
            r#"{"code":"not_found","message":"no sweep with id 7"}"#.into(),
        );
        assert_eq!(e.to_string(), "404: no sweep with id 7");
        assert_eq!(e.status(), Some(404));
        assert!(!e.is_transient());
        let e = refusal(503, "busy".into());
        assert_eq!(e.to_string(), "503: busy");
        assert!(e.is_transient());
        assert!(refusal(429, String::new()).is_transient());
        assert!(refusal(408, String::new()).is_transient());
        assert!(!refusal(409, String::new()).is_transient());
        assert!(Error::Unreachable("refused".into()).is_transient());
        assert!(!Error::Unreadable("x".into()).is_transient());
    }

    #[test]
    fn long_bodies_are_clipped_at_a_character_boundary() {
        let text = "é".repeat(400);
        let Error::Refused { message, .. } = refusal(500, text) else {
            unreachable!()
        };
        assert!(message.len() <= 500 && message.chars().all(|c| c == 'é'));
    }
}
