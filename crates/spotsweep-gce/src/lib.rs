//! The Compute Engine v1 client of the spot fleet: instances (insert, get, delete, list,
//! aggregatedList, setLabels) and zone operations (get, wait, list), over reqwest with tokens
//! from `gcp_auth`.
//!
//! Every failure is classified from Google's error envelope, or from the error inside a DONE
//! operation, into a [`ComputeError`] the fleet can act on: a stockout moves to another zone, a
//! quota stops the region (or every region for `GPUS_ALL_REGIONS`), rate limits and transient
//! errors are retried here with exponential backoff and full jitter, the rest are surfaced.
//! Mutating calls take a `requestId`, which a retry sends again, so that the server runs the
//! request at most once.

mod types;

use std::sync::Arc;
use std::time::Duration;

use gcp_auth::TokenProvider;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rand::RngExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use types::*;

/// The OAuth scope the client asks for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The production base URL (`rootUrl` + `servicePath` of the discovery document).
pub const DEFAULT_ENDPOINT: &str = "https://compute.googleapis.com/compute/v1/";

/// How the client retries rate limits and transient errors.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Tries in all (1: no retry).
    pub attempts: u32,
    /// The first backoff; each retry doubles it, up to `max_delay`; the sleep is uniform in
    /// `[0, backoff]` (full jitter).
    pub base_delay: Duration,
    /// The longest backoff.
    pub max_delay: Duration,
    /// The longest a single HTTP request may take.
    pub request_timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// What went wrong, in the terms the fleet acts on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ComputeError {
    /// The zone has no capacity for the shape (the `*RESOURCE_POOL_EXHAUSTED*` family and the
    /// other stockout codes): try another zone, back off this one.
    #[error("no capacity in {}: {message}", zone.as_deref().unwrap_or("the zone"))]
    Stockout {
        /// The zone, when the error names it.
        zone: Option<String>,
        /// Zones the error suggests instead.
        zones_available: Vec<String>,
        /// Google's message.
        message: String,
    },
    /// A quota is exhausted: no retry in the region, or anywhere when `global`.
    #[error("quota {metric} exceeded{}: {message}", region.as_deref().map(|r| format!(" in {r}")).unwrap_or_default())]
    Quota {
        /// The quota's metric (`NVIDIA_A100_GPUS`, `CPUS`, `GPUS_ALL_REGIONS`).
        metric: String,
        /// The region, for a regional quota.
        region: Option<String>,
        /// A project-wide quota (`GPUS_ALL_REGIONS`).
        global: bool,
        /// Google's message.
        message: String,
    },
    /// An API rate limit (retried with backoff).
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The resource does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A fingerprint was stale (HTTP 412).
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// A resource with that name exists (HTTP 409).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A server error, a timeout or a dropped connection (retried with backoff).
    #[error("transient: {0}")]
    Transient(String),
    /// The credentials were refused or no token could be had.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// Anything else (invalid request, permission denied, a missing image): a configuration
    /// error that a retry will not fix.
    #[error("rejected: {0}")]
    Rejected(String),
}

impl ComputeError {
    /// Whether the client retries it by itself.
    pub fn is_retried(&self) -> bool {
        matches!(self, Self::RateLimited(_) | Self::Transient(_))
    }
}

/// Classifies one error: its HTTP status (0 inside an operation), its code or reason, and its
/// message; `details` are an operation error's `errorDetails`.
fn classify_one(status: u16, code: &str, message: &str, details: Option<&Value>) -> ComputeError {
    let message = message.to_string();
    let stockout = code.contains("RESOURCE_POOL_EXHAUSTED")
        || matches!(
            code,
            "GPU_STOCKOUT" | "insufficientCapacity" | "UNSUPPORTED_OPERATION"
        )
        || message.contains("(state:STOCKOUT");
    if stockout {
        let info = details
            .and_then(Value::as_array)
            .and_then(|d| d.iter().find_map(|e| e.get("errorInfo")))
            .map(|i| &i["metadatas"]);
        let zone = info
            .and_then(|m| m["zone"].as_str())
            .map(str::to_string)
            .or_else(|| zone_in(&message));
        let zones_available = info
            .and_then(|m| m["zonesAvailable"].as_str())
            .map(|z| {
                z.split(',')
                    .map(str::trim)
                    .filter(|z| !z.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        return ComputeError::Stockout {
            zone,
            zones_available,
            message,
        };
    }
    if matches!(code, "quotaExceeded" | "QUOTA_EXCEEDED") || message.contains("Quota '") {
        let metric = message
            .split_once("Quota '")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map_or_else(|| "unknown".to_string(), |(m, _)| m.to_string());
        let region = message.split_once(" in region ").map(|(_, r)| {
            r.trim_end_matches('.')
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        });
        return ComputeError::Quota {
            global: metric == "GPUS_ALL_REGIONS",
            metric,
            region,
            message,
        };
    }
    match (status, code) {
        (429, _)
        | (_, "rateLimitExceeded" | "userRateLimitExceeded" | "RESOURCE_OPERATION_RATE_EXCEEDED") => {
            ComputeError::RateLimited(message)
        }
        (404, _) | (_, "notFound" | "RESOURCE_NOT_FOUND") => ComputeError::NotFound(message),
        (412, _) | (_, "conditionNotMet") => ComputeError::PreconditionFailed(message),
        (409, _) | (_, "alreadyExists" | "RESOURCE_ALREADY_EXISTS") => ComputeError::AlreadyExists(message),
        (401, _) => ComputeError::Auth(message),
        (500..=599, _) | (_, "backendError" | "internalError" | "RESOURCE_NOT_READY") => {
            ComputeError::Transient(message)
        }
        _ => ComputeError::Rejected(format!("{code}: {message}")),
    }
}

/// The zone a stockout message names (`... zone 'projects/p/zones/us-central1-a' ...`).
fn zone_in(message: &str) -> Option<String> {
    let rest = message.split_once("zones/")?.1;
    let zone: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!zone.is_empty()).then_some(zone)
}

/// Classifies a synchronous failure: an HTTP status and Google's JSON error envelope (or any
/// other body).
pub fn classify_response(status: u16, body: &str) -> ComputeError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let err = &v["error"];
    let first = &err["errors"][0];
    let reason = first["reason"]
        .as_str()
        .or_else(|| err["status"].as_str())
        .unwrap_or("");
    let message = err["message"]
        .as_str()
        .or_else(|| first["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}: {}", body.chars().take(200).collect::<String>()));
    classify_one(status, reason, &message, None)
}

/// The error a DONE operation carries, classified; `None` when it succeeded.
pub fn classify_operation(op: &Operation) -> Option<ComputeError> {
    let first = op.error.as_ref()?.errors.first()?;
    Some(classify_one(
        0,
        &first.code,
        first.message.as_deref().unwrap_or(&first.code),
        first.error_details.as_ref(),
    ))
}

/// The client: one project, one base URL, one token source.
#[derive(Clone)]
pub struct ComputeClient {
    http: reqwest::Client,
    base: String,
    project: String,
    tokens: Arc<dyn TokenProvider>,
    retry: Retry,
}

impl std::fmt::Debug for ComputeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeClient")
            .field("base", &self.base)
            .field("project", &self.project)
            .finish_non_exhaustive()
    }
}

/// Everything but RFC 3986's unreserved characters is escaped in path segments and query values.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, ESCAPED).to_string()
}

impl ComputeClient {
    /// A client for `project` at `base` (ending in `/compute/v1/`; see [`DEFAULT_ENDPOINT`]).
    pub fn new(
        base: &str,
        project: &str,
        tokens: Arc<dyn TokenProvider>,
        retry: Retry,
    ) -> Result<Self, ComputeError> {
        let http = reqwest::Client::builder()
            .timeout(retry.request_timeout)
            .build()
            .map_err(|e| ComputeError::Rejected(format!("cannot build the HTTP client: {e}")))?;
        let base = if base.ends_with('/') {
            base.to_string()
        } else {
            format!("{base}/")
        };
        Ok(Self {
            http,
            base,
            project: project.to_string(),
            tokens,
            retry,
        })
    }

    /// The project.
    pub fn project(&self) -> &str {
        &self.project
    }

    fn url(&self, rest: &str) -> String {
        format!("{}projects/{}/{rest}", self.base, enc(&self.project))
    }

    /// One API call with the retry policy: rate limits and transient errors are retried with
    /// backoff; everything else is returned at once.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, ComputeError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call_once(method.clone(), url, query, body).await {
                Err(e) if e.is_retried() && attempt < self.retry.attempts => {
                    let backoff = self
                        .retry
                        .base_delay
                        .saturating_mul(1 << (attempt - 1).min(20))
                        .min(self.retry.max_delay);
                    let sleep = backoff.mul_f64(rand::rng().random::<f64>());
                    tracing::warn!(%method, url, attempt, error = %e, ?sleep, "compute call retried");
                    tokio::time::sleep(sleep).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, ComputeError> {
        let token = self
            .tokens
            .token(&[SCOPE])
            .await
            .map_err(|e| ComputeError::Auth(e.to_string()))?;
        let mut full = url.to_string();
        for (i, (k, v)) in query.iter().enumerate() {
            full.push(if i == 0 { '?' } else { '&' });
            full.push_str(k);
            full.push('=');
            full.push_str(&enc(v));
        }
        let mut req = self.http.request(method, &full).bearer_auth(token.as_str());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ComputeError::Transient(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| ComputeError::Transient(format!("{url}: reading the answer: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(classify_response(status, &text));
        }
        serde_json::from_str(&text)
            .map_err(|e| ComputeError::Rejected(format!("{url}: an answer this client cannot read: {e}")))
    }

    /// `instances.insert`: starts creating an instance; the operation tells how it ends.
    pub async fn insert_instance(
        &self,
        zone: &str,
        instance: &NewInstance,
        request_id: &str,
    ) -> Result<Operation, ComputeError> {
        let body = serde_json::to_value(instance).map_err(|e| ComputeError::Rejected(e.to_string()))?;
        let url = self.url(&format!("zones/{}/instances", enc(zone)));
        self.call(
            reqwest::Method::POST,
            &url,
            &[("requestId", request_id.to_string())],
            Some(&body),
        )
        .await
    }

    /// `instances.get`: `None` when there is no such instance.
    pub async fn get_instance(&self, zone: &str, name: &str) -> Result<Option<Instance>, ComputeError> {
        let url = self.url(&format!("zones/{}/instances/{}", enc(zone), enc(name)));
        match self.call(reqwest::Method::GET, &url, &[], None).await {
            Ok(i) => Ok(Some(i)),
            Err(ComputeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `instances.delete`: starts deleting an instance.
    pub async fn delete_instance(
        &self,
        zone: &str,
        name: &str,
        request_id: &str,
    ) -> Result<Operation, ComputeError> {
        let url = self.url(&format!("zones/{}/instances/{}", enc(zone), enc(name)));
        self.call(
            reqwest::Method::DELETE,
            &url,
            &[("requestId", request_id.to_string())],
            None,
        )
        .await
    }

    /// `instances.setLabels`, with the fingerprint of the labels being replaced.
    pub async fn set_labels(
        &self,
        zone: &str,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
        fingerprint: &str,
        request_id: &str,
    ) -> Result<Operation, ComputeError> {
        let url = self.url(&format!("zones/{}/instances/{}/setLabels", enc(zone), enc(name)));
        let body = serde_json::json!({"labels": labels, "labelFingerprint": fingerprint});
        self.call(
            reqwest::Method::POST,
            &url,
            &[("requestId", request_id.to_string())],
            Some(&body),
        )
        .await
    }

    /// `instances.list` in one zone, every page, optionally filtered
    /// (`labels.managed-by = spotsweep`).
    pub async fn list_instances(
        &self,
        zone: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Instance>, ComputeError> {
        let url = self.url(&format!("zones/{}/instances", enc(zone)));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("maxResults", "500".to_string())];
            if let Some(f) = filter {
                query.push(("filter", f.to_string()));
            }
            if let Some(t) = &token {
                query.push(("pageToken", t.clone()));
            }
            let page: InstanceList = self.call(reqwest::Method::GET, &url, &query, None).await?;
            out.extend(page.items);
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// `instances.aggregatedList`: the instances of every zone, every page, optionally
    /// filtered; each with its zone set.
    pub async fn aggregated_instances(&self, filter: Option<&str>) -> Result<Vec<Instance>, ComputeError> {
        let url = self.url("aggregated/instances");
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("maxResults", "500".to_string())];
            if let Some(f) = filter {
                query.push(("filter", f.to_string()));
            }
            if let Some(t) = &token {
                query.push(("pageToken", t.clone()));
            }
            let page: InstanceAggregatedList = self.call(reqwest::Method::GET, &url, &query, None).await?;
            for scoped in page.items.into_values() {
                out.extend(scoped.instances);
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// `zoneOperations.get`.
    pub async fn get_operation(&self, zone: &str, name: &str) -> Result<Operation, ComputeError> {
        let url = self.url(&format!("zones/{}/operations/{}", enc(zone), enc(name)));
        self.call(reqwest::Method::GET, &url, &[], None).await
    }

    /// `zoneOperations.list`, optionally filtered (`operationType = "compute.instances.preempted"`).
    pub async fn list_operations(
        &self,
        zone: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Operation>, ComputeError> {
        let url = self.url(&format!("zones/{}/operations", enc(zone)));
        let query: Vec<(&str, String)> = filter
            .map(|f| vec![("filter", f.to_string())])
            .unwrap_or_default();
        let list: OperationList = self.call(reqwest::Method::GET, &url, &query, None).await?;
        Ok(list.items)
    }

    /// Waits for an operation to be DONE (`zoneOperations.wait` again and again, as it may
    /// answer before), for at most `timeout`; then its error, classified, if it has one.
    pub async fn wait_operation(
        &self,
        zone: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Operation, ComputeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let url = self.url(&format!("zones/{}/operations/{}/wait", enc(zone), enc(name)));
        loop {
            let op: Operation = self.call(reqwest::Method::POST, &url, &[], None).await?;
            if op.is_done() {
                return match classify_operation(&op) {
                    Some(e) => Err(e),
                    None => Ok(op),
                };
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ComputeError::Transient(format!(
                    "operation {name} in {zone} not done after {timeout:?}"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stockouts_are_recognised_in_both_forms() {
        let sync = r#"{"error": {"code": 503, "message": "The zone 'projects/p/zones/us-central1-a' does not have enough resources available to fulfill the request.  '(resource type:compute)'.",
                       "errors": [{"domain": "global", "reason": "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "message": "x"}]}}"#;
        match classify_response(503, sync) {
            ComputeError::Stockout { zone, .. } => assert_eq!(zone.as_deref(), Some("us-central1-a")),
            other => panic!("{other:?}"),
        }
        let op: Operation = serde_json::from_str(
            r#"{"name": "op-1", "status": "DONE", "error": {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                "message": "no room", "errorDetails": [{"errorInfo": {"reason": "resource_availability",
                "metadatas": {"zone": "us-central1-b", "zonesAvailable": "us-central1-a,us-central1-f"}}}]}]}}"#,
        )
        .unwrap();
        assert_eq!(
            classify_operation(&op),
            Some(ComputeError::Stockout {
                zone: Some("us-central1-b".into()),
                zones_available: vec!["us-central1-a".into(), "us-central1-f".into()],
                message: "no room".into()
            })
        );
        for code in [
            "REGION_RESOURCE_POOL_EXHAUSTED",
            "RESOURCE_POOL_EXHAUSTED",
            "GPU_STOCKOUT",
        ] {
            assert!(
                matches!(classify_one(0, code, "m", None), ComputeError::Stockout { .. }),
                "{code}"
            );
        }
    }

    #[test]
    fn quotas_rate_limits_and_the_rest() {
        let quota = |m: &str| {
            classify_response(
                403,
                &format!(
                    r#"{{"error": {{"code": 403, "message": "{m}", "errors": [{{"reason": "quotaExceeded"}}]}}}}"#
                ),
            )
        };
        assert_eq!(
            quota("Quota 'NVIDIA_A100_GPUS' exceeded.  Limit: 0.0 in region us-central1."),
            ComputeError::Quota {
                metric: "NVIDIA_A100_GPUS".into(),
                region: Some("us-central1".into()),
                global: false,
                message: "Quota 'NVIDIA_A100_GPUS' exceeded.  Limit: 0.0 in region us-central1.".into()
            }
        );
        assert!(matches!(
            quota("Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 1.0 globally."),
            ComputeError::Quota { global: true, .. }
        ));
        let env = |status: u16, reason: &str| {
            classify_response(
                status,
                &format!(
                    r#"{{"error": {{"code": {status}, "message": "m", "errors": [{{"reason": "{reason}"}}]}}}}"#
                ),
            )
        };
        assert!(matches!(
            env(403, "rateLimitExceeded"),
            ComputeError::RateLimited(_)
        ));
        assert!(matches!(env(429, "x"), ComputeError::RateLimited(_)));
        assert!(matches!(env(503, "backendError"), ComputeError::Transient(_)));
        assert!(matches!(env(500, "internalError"), ComputeError::Transient(_)));
        assert!(matches!(env(404, "notFound"), ComputeError::NotFound(_)));
        assert!(matches!(
            env(412, "conditionNotMet"),
            ComputeError::PreconditionFailed(_)
        ));
        assert!(matches!(
            env(409, "alreadyExists"),
            ComputeError::AlreadyExists(_)
        ));
        assert!(matches!(env(403, "forbidden"), ComputeError::Rejected(_)));
        assert!(matches!(env(400, "invalid"), ComputeError::Rejected(_)));
        assert!(matches!(
            classify_response(502, "<html>bad gateway</html>"),
            ComputeError::Transient(_)
        ));
    }
}
