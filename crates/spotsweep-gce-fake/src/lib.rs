//! A fake of the Compute Engine v1 API on loopback, for tests and the fleet simulation.
//!
//! It speaks the real wire format and is strict about it: every request is routed by the
//! discovery document's method paths, its parameters are checked against their patterns and
//! types, and its body is walked through its schema (unknown fields, wrong types, `int64`
//! written as numbers and unknown enum values are 400s, as on the real API); every response it
//! sends is checked against its schema too. On top of the schema it enforces the rules the real
//! service checks for an instance insert (one boot disk, a network, `TERMINATE` on host
//! maintenance for GPU machines, Spot without automatic restart, label and metadata limits).
//!
//! Emulated: `instances.{insert, get, delete, list, aggregatedList, setLabels}` and
//! `zoneOperations.{get, wait, list}`, with instances that go PROVISIONING → STAGING →
//! RUNNING and operations that go PENDING → RUNNING → DONE over configurable delays, and
//! `requestId` idempotency. Faults are scripted through [`FakeCompute`]: a stockout per zone
//! (an HTTP 503 or an error inside a DONE operation), quota errors, rate limits and 5xx storms
//! for the next requests, and preemption of an instance (a `compute.instances.preempted`
//! operation, then its termination action). It also serves an OAuth token endpoint, so that a
//! service-account key file whose `token_uri` points here runs the real `gcp_auth` flow; the
//! Compute routes accept only tokens it issued.

mod guest;
pub mod schema;

pub use guest::Boot;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, State as AxumState};
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use rand::RngExt;
use regex::Regex;
use serde_json::{Map, Value, json};

/// A fresh 2048-bit RSA private key (PKCS#8 PEM) for a throw-away service account, made with
/// the `openssl` command (the fake does not check signatures; `gcp_auth` needs a real key to
/// sign with).
pub fn new_private_key() -> std::io::Result<String> {
    let out = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    String::from_utf8(out.stdout).map_err(std::io::Error::other)
}

/// Timing of the fake's state changes.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// From an insert or delete to its operation being DONE (half of it PENDING, half RUNNING).
    pub op_delay: Duration,
    /// From an insert to the instance RUNNING (half of it PROVISIONING, half STAGING).
    pub boot_delay: Duration,
    /// The longest `zoneOperations.wait` holds a request (the real API: 2 minutes).
    pub wait_cap: Duration,
    /// From a preemption notice to the instance's end (the real cloud: 30 s); `None`: the
    /// operation delay.
    pub preempt_grace: Option<Duration>,
    /// Run each RUNNING instance's startup script on this machine, with a metadata server of
    /// its own; `None`: instances have no guest.
    pub boot: Option<Boot>,
    /// How long the answer to an insert takes after the insert is done (a slow network): a
    /// window in which a client can die between sending an insert and hearing of it.
    pub insert_answer_delay: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            op_delay: Duration::from_millis(200),
            boot_delay: Duration::from_millis(300),
            wait_cap: Duration::from_secs(2),
            preempt_grace: None,
            boot: None,
            insert_answer_delay: Duration::ZERO,
        }
    }
}

/// How a zone is out of capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stockout {
    /// The insert is refused at once: HTTP 503 `ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS`.
    Immediate,
    /// The insert is accepted and its operation ends DONE with a
    /// `ZONE_RESOURCE_POOL_EXHAUSTED` error; no instance is left.
    InOperation,
}

/// A quota that inserts in a zone run into (HTTP 403 `quotaExceeded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quota {
    /// A regional quota, such as `NVIDIA_A100_GPUS` or `CPUS`.
    Regional(String),
    /// The project-wide `GPUS_ALL_REGIONS`.
    GpusAllRegions,
}

/// A fault for one of the next requests to the Compute routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 403 `rateLimitExceeded`.
    RateLimit,
    /// HTTP 503 `backendError`.
    ServerError,
}

/// An instance as the fake holds it, for tests to inspect.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeInstance {
    /// Its project.
    pub project: String,
    /// Its zone (`us-central1-a`).
    pub zone: String,
    /// Its name.
    pub name: String,
    /// Its status now (`PROVISIONING`, `STAGING`, `RUNNING`, `STOPPING`, `TERMINATED`).
    pub status: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The insert request's body as received.
    pub body: Value,
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The HTTP method.
    pub method: String,
    /// The path after the service path, with the query.
    pub path: String,
    /// The HTTP status of the answer.
    pub status: u16,
}

/// The running fake: a loopback HTTP server and its state.
pub struct FakeCompute {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCompute {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const SERVICE_PATH: &str = "/compute/v1/";

impl FakeCompute {
    /// Starts the fake on an ephemeral loopback port.
    pub async fn start(config: FakeConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::new(config, format!("http://{addr}"))));
        let app = Router::new()
            .route("/token", post(token))
            .fallback(compute)
            .with_state(state.clone());
        // Time moves on without requests too: guests boot and power off on schedule.
        let ticker = state.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app);
            let tick = async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ticker
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .tick(Instant::now());
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = tick => {}
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The Compute base URL to give a client: `http://127.0.0.1:PORT/compute/v1/`.
    pub fn base_url(&self) -> String {
        format!("http://{}{SERVICE_PATH}", self.addr)
    }

    /// The OAuth token endpoint: `http://127.0.0.1:PORT/token`.
    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// A service-account key file whose `token_uri` is this fake's, around a PKCS#8 RSA private
    /// key made by the caller (the fake does not check the signature).
    pub fn service_account_json(&self, private_key_pem: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": "fake-project",
            "private_key_id": "fake-key",
            "private_key": private_key_pem,
            "client_email": "daemon@fake-project.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": self.token_uri(),
        })
        .to_string()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `zone` out of capacity (or gives it back with `None`).
    pub fn set_stockout(&self, zone: &str, stockout: Option<Stockout>) {
        let mut s = self.lock();
        match stockout {
            Some(k) => s.stockouts.insert(zone.to_string(), k),
            None => s.stockouts.remove(zone),
        };
    }

    /// Makes inserts in `zone` exceed a quota (or not, with `None`).
    pub fn set_quota_exceeded(&self, zone: &str, quota: Option<Quota>) {
        let mut s = self.lock();
        match quota {
            Some(q) => s.quotas.insert(zone.to_string(), q),
            None => s.quotas.remove(zone),
        };
    }

    /// The next `n` Compute requests fail with `fault`.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        self.lock().faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Changes the operation delay from now on.
    pub fn set_op_delay(&self, delay: Duration) {
        self.lock().config.op_delay = delay;
    }

    /// Preempts an instance: a `compute.instances.preempted` operation, then its termination
    /// action (deleted, or stopped to TERMINATED) after the operation delay. False when there is
    /// no such running instance.
    pub fn preempt(&self, zone: &str, name: &str) -> bool {
        let mut s = self.lock();
        let now = Instant::now();
        s.tick(now);
        let until = now + s.config.preempt_grace.unwrap_or(s.config.op_delay);
        let Some(i) = s
            .instances
            .values_mut()
            .find(|i| i.zone == zone && i.name == name)
        else {
            return false;
        };
        if !matches!(i.phase, Phase::Booting) {
            return false;
        }
        if let Some(g) = &i.guest {
            g.preempt();
        }
        let delete = i.body["scheduling"]["instanceTerminationAction"].as_str() != Some("STOP");
        i.phase = Phase::Stopping {
            until,
            then_delete: delete,
        };
        let (project, target, id) = (i.project.clone(), i.self_link.clone(), i.id);
        let op = s.new_op(
            &project,
            zone,
            "compute.instances.preempted",
            &target,
            id,
            None,
            now,
        );
        if let Some(o) = s.operations.get_mut(&op) {
            o.done_at = now;
            o.status_message = Some("Instance was preempted.".into());
        }
        true
    }

    /// Every instance the fake holds, deleted ones excepted.
    pub fn instances(&self) -> Vec<FakeInstance> {
        let mut s = self.lock();
        let now = Instant::now();
        s.tick(now);
        s.instances
            .values()
            .map(|i| FakeInstance {
                project: i.project.clone(),
                zone: i.zone.clone(),
                name: i.name.clone(),
                status: i.status(now, s.config.boot_delay).into(),
                labels: i.labels.clone(),
                body: i.body.clone(),
            })
            .collect()
    }

    /// How many inserts created an instance (a repeated `requestId` does not count).
    pub fn inserts_executed(&self) -> usize {
        self.lock().inserts_executed
    }

    /// Every request answered on the Compute routes, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }
}

/// What an instance is doing.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Created: PROVISIONING, STAGING, then RUNNING as time passes.
    Booting,
    /// STOPPING until `until`, then deleted or TERMINATED.
    Stopping {
        until: Instant,
        then_delete: bool,
    },
    Terminated,
}

#[derive(Debug)]
struct Instance {
    project: String,
    zone: String,
    name: String,
    id: u64,
    self_link: String,
    body: Value,
    labels: BTreeMap<String, String>,
    label_fingerprint: String,
    created: Instant,
    created_ts: String,
    phase: Phase,
    /// Its guest, once it has booted (with [`FakeConfig::boot`]).
    guest: Option<guest::Guest>,
    booted: bool,
}

impl Instance {
    fn status(&self, now: Instant, boot: Duration) -> &'static str {
        match self.phase {
            Phase::Booting if now < self.created + boot / 2 => "PROVISIONING",
            Phase::Booting if now < self.created + boot => "STAGING",
            Phase::Booting => "RUNNING",
            Phase::Stopping { .. } => "STOPPING",
            Phase::Terminated => "TERMINATED",
        }
    }
}

#[derive(Debug)]
struct Op {
    project: String,
    zone: String,
    name: String,
    id: u64,
    op_type: String,
    target_link: String,
    target_id: u64,
    created: Instant,
    done_at: Instant,
    insert_ts: String,
    client_operation_id: Option<String>,
    /// `(code, message, details)` of the error a DONE operation carries, and its HTTP status.
    error: Option<(String, String, Value, u16)>,
    status_message: Option<String>,
}

impl Op {
    fn status(&self, now: Instant) -> &'static str {
        if now >= self.done_at {
            "DONE"
        } else if now < self.created + (self.done_at - self.created) / 2 {
            "PENDING"
        } else {
            "RUNNING"
        }
    }
}

struct State {
    config: FakeConfig,
    origin: String,
    tokens: HashSet<String>,
    /// By (project, zone, name).
    instances: BTreeMap<(String, String, String), Instance>,
    operations: HashMap<String, Op>,
    /// (project, requestId) → operation name.
    request_ids: HashMap<(String, String), String>,
    stockouts: HashMap<String, Stockout>,
    quotas: HashMap<String, Quota>,
    faults: VecDeque<Fault>,
    next_id: u64,
    inserts_executed: usize,
    log: Vec<Logged>,
}

impl State {
    fn new(config: FakeConfig, origin: String) -> Self {
        Self {
            config,
            origin,
            tokens: HashSet::new(),
            instances: BTreeMap::new(),
            operations: HashMap::new(),
            request_ids: HashMap::new(),
            stockouts: HashMap::new(),
            quotas: HashMap::new(),
            faults: VecDeque::new(),
            next_id: 1000,
            inserts_executed: 0,
            log: Vec::new(),
        }
    }

    fn url(&self, rest: &str) -> String {
        format!("{}{SERVICE_PATH}{rest}", self.origin)
    }

    /// Applies the state changes that are due.
    fn tick(&mut self, now: Instant) {
        // Instances that end go, their guests powered off.
        self.instances.retain(|_, i| match i.phase {
            Phase::Stopping { until, then_delete } if now >= until => {
                i.guest = None;
                if then_delete {
                    false
                } else {
                    i.phase = Phase::Terminated;
                    true
                }
            }
            _ => true,
        });
        // Instances that reach RUNNING boot their guest.
        let Some(boot) = self.config.boot.clone() else {
            return;
        };
        let boot_delay = self.config.boot_delay;
        for i in self.instances.values_mut() {
            if i.booted || i.status(now, boot_delay) != "RUNNING" {
                continue;
            }
            i.booted = true;
            let attributes: HashMap<String, String> = i.body["metadata"]["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|m| {
                            Some((m["key"].as_str()?.to_string(), m["value"].as_str()?.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            match guest::Guest::start(&boot, &i.project, &i.zone, &i.name, i.id, attributes) {
                Ok(g) => i.guest = Some(g),
                Err(e) => tracing::error!(instance = %i.name, error = %e, "the fake cannot boot the guest"),
            }
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id * 7_919 + 1_000_000_000_000
    }

    #[allow(clippy::too_many_arguments)]
    fn new_op(
        &mut self,
        project: &str,
        zone: &str,
        op_type: &str,
        target_link: &str,
        target_id: u64,
        request_id: Option<&str>,
        now: Instant,
    ) -> String {
        let id = self.id();
        let name = format!("operation-{id}-{}", op_type.replace('.', "-"));
        let op = Op {
            project: project.into(),
            zone: zone.into(),
            name: name.clone(),
            id,
            op_type: op_type.into(),
            target_link: target_link.into(),
            target_id,
            created: now,
            done_at: now + self.config.op_delay,
            insert_ts: rfc3339(SystemTime::now()),
            client_operation_id: request_id.map(str::to_string),
            error: None,
            status_message: None,
        };
        self.operations.insert(name.clone(), op);
        if let Some(r) = request_id {
            self.request_ids
                .insert((project.to_string(), r.to_string()), name.clone());
        }
        name
    }

    fn op_json(&self, op: &Op, now: Instant) -> Value {
        let status = op.status(now);
        let mut v = json!({
            "kind": "compute#operation",
            "id": op.id.to_string(),
            "name": op.name,
            "zone": self.url(&format!("projects/{}/zones/{}", op.project, op.zone)),
            "operationType": op.op_type,
            "targetLink": op.target_link,
            "targetId": op.target_id.to_string(),
            "status": status,
            "user": "daemon@fake-project.iam.gserviceaccount.com",
            "progress": if status == "DONE" { 100 } else { 0 },
            "insertTime": op.insert_ts,
            "selfLink": self.url(&format!("projects/{}/zones/{}/operations/{}", op.project, op.zone, op.name)),
        });
        if status != "PENDING" {
            v["startTime"] = json!(op.insert_ts);
        }
        if let Some(id) = &op.client_operation_id {
            v["clientOperationId"] = json!(id);
        }
        if let Some(m) = &op.status_message {
            v["statusMessage"] = json!(m);
        }
        if status == "DONE" {
            v["endTime"] = json!(rfc3339(SystemTime::now()));
            if let Some((code, message, details, http)) = &op.error {
                let mut e = json!({"code": code, "message": message});
                if !details.is_null() {
                    e["errorDetails"] = details.clone();
                }
                v["error"] = json!({"errors": [e]});
                v["httpErrorStatusCode"] = json!(http);
                v["httpErrorMessage"] = json!(if *http == 503 {
                    "SERVICE UNAVAILABLE"
                } else {
                    "FORBIDDEN"
                });
            }
        }
        v
    }

    fn instance_json(&self, i: &Instance, now: Instant) -> Value {
        let mut v = match &i.body {
            Value::Object(m) => Value::Object(m.clone()),
            _ => json!({}),
        };
        let machine = i.body["machineType"].as_str().unwrap_or_default();
        let machine = machine.rsplit('/').next().unwrap_or(machine);
        v["kind"] = json!("compute#instance");
        v["id"] = json!(i.id.to_string());
        v["name"] = json!(i.name);
        v["zone"] = json!(self.url(&format!("projects/{}/zones/{}", i.project, i.zone)));
        v["machineType"] = json!(self.url(&format!(
            "projects/{}/zones/{}/machineTypes/{machine}",
            i.project, i.zone
        )));
        v["status"] = json!(i.status(now, self.config.boot_delay));
        v["selfLink"] = json!(i.self_link);
        v["creationTimestamp"] = json!(i.created_ts);
        v["labels"] = json!(i.labels);
        v["labelFingerprint"] = json!(i.label_fingerprint);
        v
    }
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000-00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn fingerprint() -> String {
    let bytes: [u8; 8] = rand::rng().random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An error as the API sends it: HTTP status, reason and message, in Google's JSON envelope.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: String,
    message: String,
}

fn api_error(code: u16, reason: &str, message: &str) -> ApiError {
    ApiError {
        code,
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": {"code": self.code, "message": self.message,
                                    "errors": [{"domain": "global", "reason": self.reason, "message": self.message}]}});
        (status, axum::Json(body)).into_response()
    }
}

// ------------------------------------------------------------------------------ OAuth

/// `POST /token`: the JWT-bearer grant of a service account. The assertion's claims are read
/// (not verified): its audience must be this endpoint and its scope must reach Compute.
async fn token(AxumState(state): AxumState<Arc<Mutex<State>>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url_form(&body);
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let claims = form
        .get("assertion")
        .and_then(|jwt| jwt.split('.').nth(1))
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Some(claims) = claims else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": "bad assertion"})),
        )
            .into_response();
    };
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let want_aud = format!("{}/token", s.origin);
    let scope = claims["scope"].as_str().unwrap_or_default();
    let reaches_compute = scope
        .split(' ')
        .any(|sc| sc.ends_with("/auth/cloud-platform") || sc.ends_with("/auth/compute"));
    if claims["aud"].as_str() != Some(&want_aud) || !reaches_compute || claims["iss"].as_str().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": "invalid_grant", "error_description": "wrong audience, issuer or scope"}),
            ),
        )
            .into_response();
    }
    let token = format!("fake-token-{}", s.id());
    s.tokens.insert(token.clone());
    axum::Json(json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})).into_response()
}

fn url_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Some((dec(k), dec(v)))
        })
        .collect()
}

// ------------------------------------------------------------------------------ Compute

async fn compute(
    AxumState(state): AxumState<Arc<Mutex<State>>>,
    method: HttpMethod,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().strip_prefix(SERVICE_PATH).unwrap_or("").to_string();
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| url_form(q.as_bytes()).into_iter().collect())
        .unwrap_or_default();
    let logged_path = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    // zoneOperations.wait holds the request without the lock.
    let response = if method == HttpMethod::POST && path.ends_with("/wait") {
        wait(&state, &path, &headers).await
    } else {
        let (response, delay) = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let delay = if method == HttpMethod::POST && path.ends_with("/instances") {
                s.config.insert_answer_delay
            } else {
                Duration::ZERO
            };
            (
                handle(&mut s, method.as_str(), &path, &query, &headers, &body),
                delay,
            )
        };
        tokio::time::sleep(delay).await;
        response
    };
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.log.push(Logged {
        method: method.to_string(),
        path: logged_path,
        status: response.status().as_u16(),
    });
    response
}

/// Authentication, scripted faults, routing and parameter checks; `Ok` with the matched method
/// and the parsed body.
fn admit(
    s: &mut State,
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(schema::Matched, Value), ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| s.tokens.contains(t)) {
        return Err(api_error(
            401,
            "required",
            "Request is missing required authentication credential. Expected OAuth 2 access token.",
        ));
    }
    if let Some(fault) = s.faults.pop_front() {
        return Err(match fault {
            Fault::RateLimit => api_error(403, "rateLimitExceeded", "Rate Limit Exceeded"),
            Fault::ServerError => api_error(503, "backendError", "Backend Error"),
        });
    }
    let Some(matched) = schema::route(method, path) else {
        return Err(api_error(
            404,
            "notFound",
            &format!("The requested URL /compute/v1/{path} was not found."),
        ));
    };
    if let Err(m) = matched.method.check_parameters(&matched.path, query) {
        return Err(api_error(400, "invalid", &m));
    }
    let parsed = match &matched.method.request {
        Some(name) => {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| api_error(400, "parseError", &format!("Invalid JSON payload received. {e}")))?;
            schema::check_request(name, &v, &matched.method.id).map_err(|m| api_error(400, "invalid", &m))?;
            v
        }
        None => Value::Null,
    };
    Ok((matched, parsed))
}

fn handle(
    s: &mut State,
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let now = Instant::now();
    s.tick(now);
    let (matched, body) = match admit(s, method, path, query, headers, body) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let p = |k: &str| matched.path.get(k).cloned().unwrap_or_default();
    let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (project, zone) = (p("project"), p("zone"));
    let result = match matched.method.id.as_str() {
        "instances.insert" => insert(s, &project, &zone, body, q("requestId"), now),
        "instances.get" => match s.instances.get(&(project.clone(), zone.clone(), p("instance"))) {
            Some(i) => Ok(s.instance_json(i, now)),
            None => Err(not_found(&format!(
                "projects/{project}/zones/{zone}/instances/{}",
                p("instance")
            ))),
        },
        "instances.delete" => delete(s, &project, &zone, &p("instance"), q("requestId"), now),
        "instances.list" => list(
            s,
            &project,
            Some(&zone),
            q("filter"),
            q("maxResults"),
            q("pageToken"),
            now,
        ),
        "instances.aggregatedList" => list(
            s,
            &project,
            None,
            q("filter"),
            q("maxResults"),
            q("pageToken"),
            now,
        ),
        "instances.setLabels" => set_labels(s, &project, &zone, &p("instance"), body, q("requestId"), now),
        "zoneOperations.get" => match s.operations.get(&p("operation")) {
            Some(op) if op.project == project && op.zone == zone => Ok(s.op_json(op, now)),
            _ => Err(not_found(&format!(
                "projects/{project}/zones/{zone}/operations/{}",
                p("operation")
            ))),
        },
        "zoneOperations.list" => list_operations(s, &project, &zone, q("filter"), now),
        other => Err(api_error(
            501,
            "notImplemented",
            &format!("the fake does not emulate {other}"),
        )),
    };
    match result {
        Ok(v) => {
            if let Some(name) = &matched.method.response
                && let Err(m) = schema::check_response(name, &v)
            {
                return api_error(
                    500,
                    "internalError",
                    &format!("the fake built an invalid {name}: {m}"),
                )
                .into_response();
            }
            axum::Json(v).into_response()
        }
        Err(r) => r.into_response(),
    }
}

fn not_found(resource: &str) -> ApiError {
    api_error(
        404,
        "notFound",
        &format!("The resource '{resource}' was not found"),
    )
}

/// The operation an earlier request with this `requestId` made, if any.
fn replay(s: &State, project: &str, request_id: &Option<String>, now: Instant) -> Option<Value> {
    let name = s.request_ids.get(&(project.to_string(), request_id.clone()?))?;
    s.operations.get(name).map(|op| s.op_json(op, now))
}

fn insert(
    s: &mut State,
    project: &str,
    zone: &str,
    body: Value,
    request_id: Option<String>,
    now: Instant,
) -> Result<Value, ApiError> {
    if let Some(op) = replay(s, project, &request_id, now) {
        return Ok(op);
    }
    check_insert(&body).map_err(|m| api_error(400, "invalid", &m))?;
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let resource = format!("projects/{project}/zones/{zone}/instances/{name}");
    if s.instances
        .contains_key(&(project.into(), zone.into(), name.clone()))
    {
        return Err(api_error(
            409,
            "alreadyExists",
            &format!("The resource '{resource}' already exists"),
        ));
    }
    let region = zone.rsplit_once('-').map_or(zone, |(r, _)| r).to_string();
    match s.quotas.get(zone) {
        Some(Quota::Regional(metric)) => {
            return Err(api_error(
                403,
                "quotaExceeded",
                &format!("Quota '{metric}' exceeded.  Limit: 0.0 in region {region}."),
            ));
        }
        Some(Quota::GpusAllRegions) => {
            return Err(api_error(
                403,
                "quotaExceeded",
                "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 1.0 globally.",
            ));
        }
        None => {}
    }
    let machine = body["machineType"].as_str().unwrap_or_default();
    let machine = machine.rsplit('/').next().unwrap_or(machine).to_string();
    // The region's other zones that are not stocked out.
    let hint = ["a", "b", "c", "f"]
        .map(|suffix| format!("{region}-{suffix}"))
        .into_iter()
        .filter(|z| z != zone && !s.stockouts.contains_key(z))
        .collect::<Vec<_>>()
        .join(",");
    let stock_message = format!(
        "The zone '{}' does not have enough resources available to fulfill the request.  '(resource type:compute)'. (state:STOCKOUT)",
        format_args!("projects/{project}/zones/{zone}")
    );
    match s.stockouts.get(zone) {
        Some(Stockout::Immediate) => {
            return Err(api_error(
                503,
                "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
                &stock_message,
            ));
        }
        Some(Stockout::InOperation) => {
            let target = s.url(&resource);
            let op = s.new_op(project, zone, "insert", &target, 0, request_id.as_deref(), now);
            let details = json!([{"errorInfo": {"reason": "resource_availability", "domain": "compute.googleapis.com",
                                                 "metadatas": {"zone": zone, "vmType": machine, "zonesAvailable": hint}}}]);
            if let Some(o) = s.operations.get_mut(&op) {
                o.error = Some((
                    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS".into(),
                    stock_message,
                    details,
                    503,
                ));
            }
            return Ok(s.op_json(&s.operations[&op], now));
        }
        None => {}
    }
    let id = s.id();
    let self_link = s.url(&resource);
    let labels: BTreeMap<String, String> = body["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    s.instances.insert(
        (project.into(), zone.into(), name.clone()),
        Instance {
            project: project.into(),
            zone: zone.into(),
            name,
            id,
            self_link: self_link.clone(),
            body: strip_output_only(body),
            labels,
            label_fingerprint: fingerprint(),
            created: now,
            created_ts: rfc3339(SystemTime::now()),
            phase: Phase::Booting,
            guest: None,
            booted: false,
        },
    );
    s.inserts_executed += 1;
    let op = s.new_op(
        project,
        zone,
        "insert",
        &self_link,
        id,
        request_id.as_deref(),
        now,
    );
    Ok(s.op_json(&s.operations[&op], now))
}

/// An insert body without the fields the server fills (they are ignored on input).
fn strip_output_only(mut body: Value) -> Value {
    if let Some(m) = body.as_object_mut() {
        for k in [
            "id",
            "status",
            "selfLink",
            "creationTimestamp",
            "kind",
            "zone",
            "labelFingerprint",
            "statusMessage",
        ] {
            m.remove(k);
        }
    }
    body
}

static NAME: std::sync::LazyLock<Regex> =
    std::sync::LazyLock::new(|| Regex::new(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$").expect("regex"));
static LABEL_KEY: std::sync::LazyLock<Regex> =
    std::sync::LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9_-]{0,62}$").expect("regex"));
static LABEL_VALUE: std::sync::LazyLock<Regex> =
    std::sync::LazyLock::new(|| Regex::new(r"^[a-z0-9_-]{0,63}$").expect("regex"));
static METADATA_KEY: std::sync::LazyLock<Regex> =
    std::sync::LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_-]{1,128}$").expect("regex"));

/// The rules the real service applies to an instance insert beyond the schema.
fn check_insert(b: &Value) -> Result<(), String> {
    let name = b["name"].as_str().unwrap_or_default();
    if !NAME.is_match(name) {
        return Err(format!(
            "Invalid value for field 'resource.name': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'"
        ));
    }
    let machine = b["machineType"].as_str().unwrap_or_default();
    if machine.is_empty() {
        return Err(
            "Invalid value for field 'resource.machineType': ''. Machine type must be specified.".into(),
        );
    }
    let boot_disks = b["disks"]
        .as_array()
        .map_or(0, |d| d.iter().filter(|d| d["boot"] == json!(true)).count());
    if boot_disks != 1 {
        return Err(format!(
            "Invalid value for field 'resource.disks': exactly one boot disk is required, got {boot_disks}."
        ));
    }
    if b["networkInterfaces"].as_array().is_none_or(Vec::is_empty) {
        return Err("Invalid value for field 'resource.networkInterfaces': at least one network interface is required.".into());
    }
    let shape = machine.rsplit('/').next().unwrap_or(machine);
    let gpus = b["guestAccelerators"].as_array().is_some_and(|a| !a.is_empty())
        || ["a2-", "a3-", "g2-"].iter().any(|p| shape.starts_with(p));
    let sched = &b["scheduling"];
    if gpus && sched["onHostMaintenance"].as_str() != Some("TERMINATE") {
        return Err("Invalid value for field 'resource.scheduling.onHostMaintenance': 'MIGRATE'. Instances with guest accelerators do not support live migration.".into());
    }
    let spot = sched["provisioningModel"].as_str() == Some("SPOT");
    if spot && sched["automaticRestart"] == json!(true) {
        return Err("Invalid value for field 'resource.scheduling.automaticRestart': 'true'. Spot instances cannot be restarted automatically.".into());
    }
    if sched
        .get("instanceTerminationAction")
        .is_some_and(|v| !v.is_null())
        && !spot
        && sched.get("maxRunDuration").is_none_or(Value::is_null)
        && sched.get("terminationTime").is_none_or(Value::is_null)
    {
        return Err("Invalid value for field 'resource.scheduling.instanceTerminationAction': it applies only to Spot VMs or VMs with maxRunDuration or terminationTime.".into());
    }
    check_labels(&b["labels"])?;
    if let Some(items) = b["metadata"]["items"].as_array() {
        let mut total = 0;
        for item in items {
            let key = item["key"].as_str().unwrap_or_default();
            if !METADATA_KEY.is_match(key) {
                return Err(format!(
                    "Invalid value for field 'resource.metadata': metadata key '{key}' must match [a-zA-Z0-9-_]{{1,128}}."
                ));
            }
            let len = item["value"].as_str().map_or(0, str::len);
            if len > 256 * 1024 {
                return Err(format!(
                    "Invalid value for field 'resource.metadata': the value of '{key}' is over 256 KiB."
                ));
            }
            total += key.len() + len;
        }
        if total > 512 * 1024 {
            return Err(
                "Invalid value for field 'resource.metadata': metadata is over 512 KiB in total.".into(),
            );
        }
    }
    Ok(())
}

fn check_labels(labels: &Value) -> Result<(), String> {
    let Some(m) = labels.as_object() else {
        return Ok(());
    };
    if m.len() > 64 {
        return Err(format!(
            "Invalid value for field 'labels': {} labels, at most 64.",
            m.len()
        ));
    }
    for (k, v) in m {
        let v = v.as_str().unwrap_or_default();
        if !LABEL_KEY.is_match(k) || !LABEL_VALUE.is_match(v) {
            return Err(format!(
                "Invalid value for field 'labels': '{k}={v}'. Keys and values are lowercase letters, digits, '_' and '-', at most 63 characters; keys start with a letter."
            ));
        }
    }
    Ok(())
}

fn delete(
    s: &mut State,
    project: &str,
    zone: &str,
    name: &str,
    request_id: Option<String>,
    now: Instant,
) -> Result<Value, ApiError> {
    if let Some(op) = replay(s, project, &request_id, now) {
        return Ok(op);
    }
    let resource = format!("projects/{project}/zones/{zone}/instances/{name}");
    let until = now + s.config.op_delay;
    let Some(i) = s.instances.get_mut(&(project.into(), zone.into(), name.into())) else {
        return Err(not_found(&resource));
    };
    i.phase = Phase::Stopping {
        until,
        then_delete: true,
    };
    if let Some(g) = &i.guest {
        g.shut_down();
    }
    let (link, id) = (i.self_link.clone(), i.id);
    let op = s.new_op(project, zone, "delete", &link, id, request_id.as_deref(), now);
    Ok(s.op_json(&s.operations[&op], now))
}

#[allow(clippy::too_many_arguments)]
fn set_labels(
    s: &mut State,
    project: &str,
    zone: &str,
    name: &str,
    body: Value,
    request_id: Option<String>,
    now: Instant,
) -> Result<Value, ApiError> {
    if let Some(op) = replay(s, project, &request_id, now) {
        return Ok(op);
    }
    check_labels(&body["labels"]).map_err(|m| api_error(400, "invalid", &m))?;
    let resource = format!("projects/{project}/zones/{zone}/instances/{name}");
    let Some(i) = s.instances.get_mut(&(project.into(), zone.into(), name.into())) else {
        return Err(not_found(&resource));
    };
    if body["labelFingerprint"].as_str() != Some(i.label_fingerprint.as_str()) {
        return Err(api_error(
            412,
            "conditionNotMet",
            "Labels fingerprint either invalid or resource labels have changed",
        ));
    }
    i.labels = body["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    i.label_fingerprint = fingerprint();
    let (link, id) = (i.self_link.clone(), i.id);
    let op = s.new_op(project, zone, "setLabels", &link, id, request_id.as_deref(), now);
    if let Some(o) = s.operations.get_mut(&op) {
        o.done_at = now;
    }
    Ok(s.op_json(&s.operations[&op], now))
}

/// A filter of the form the API takes: terms such as `labels.managed-by = spotsweep`,
/// `labels.pool:*`, `name != x` or `status = RUNNING`, optionally in parentheses, all of which
/// must hold.
struct Filter(Vec<(String, String, String)>);

static TERM: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    Regex::new(r#"^\(?\s*([A-Za-z][A-Za-z0-9_.\-]*)\s*(!=|=|:)\s*"?([^"()\s]*)"?\s*\)?$"#).expect("regex")
});

impl Filter {
    fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        let spaced = text.replace(") (", ")\u{1}(").replace(" AND ", "\u{1}");
        for part in spaced.split('\u{1}').map(str::trim).filter(|p| !p.is_empty()) {
            let c = TERM.captures(part).ok_or_else(|| {
                format!("Invalid value for field 'filter': '{text}'. Invalid list filter expression.")
            })?;
            terms.push((c[1].to_string(), c[2].to_string(), c[3].to_string()));
        }
        Ok(Self(terms))
    }

    fn matches(&self, fields: &dyn Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|(field, op, want)| {
            let have = fields(field);
            match op.as_str() {
                ":" if want == "*" => have.is_some(),
                ":" | "=" => have.as_deref() == Some(want.as_str()),
                _ => have.as_deref() != Some(want.as_str()),
            }
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn list(
    s: &mut State,
    project: &str,
    zone: Option<&str>,
    filter: Option<String>,
    max_results: Option<String>,
    page_token: Option<String>,
    now: Instant,
) -> Result<Value, ApiError> {
    let filter = Filter::parse(filter.as_deref().unwrap_or("")).map_err(|m| api_error(400, "invalid", &m))?;
    let max = max_results
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(500)
        .clamp(1, 500);
    let start = page_token.and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
    let boot = s.config.boot_delay;
    let matching: Vec<&Instance> = s
        .instances
        .values()
        .filter(|i| i.project == project && zone.is_none_or(|z| z == i.zone))
        .filter(|i| {
            filter.matches(&|field| match field {
                "name" => Some(i.name.clone()),
                "status" => Some(i.status(now, boot).to_string()),
                "zone" => Some(i.zone.clone()),
                f => f.strip_prefix("labels.").and_then(|k| i.labels.get(k).cloned()),
            })
        })
        .collect();
    let page: Vec<&Instance> = matching.iter().skip(start).take(max).copied().collect();
    let next = (start + page.len() < matching.len()).then(|| (start + page.len()).to_string());
    let mut v = match zone {
        Some(z) => json!({
            "kind": "compute#instanceList",
            "id": format!("projects/{project}/zones/{z}/instances"),
            "items": page.iter().map(|i| s.instance_json(i, now)).collect::<Vec<_>>(),
            "selfLink": s.url(&format!("projects/{project}/zones/{z}/instances")),
        }),
        None => {
            let mut items: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for i in &page {
                items
                    .entry(format!("zones/{}", i.zone))
                    .or_default()
                    .push(s.instance_json(i, now));
            }
            let items: Map<String, Value> = items
                .into_iter()
                .map(|(k, v)| (k, json!({"instances": v})))
                .collect();
            json!({
                "kind": "compute#instanceAggregatedList",
                "id": format!("projects/{project}/aggregated/instances"),
                "items": items,
                "selfLink": s.url(&format!("projects/{project}/aggregated/instances")),
            })
        }
    };
    if let Some(n) = next {
        v["nextPageToken"] = json!(n);
    }
    Ok(v)
}

fn list_operations(
    s: &State,
    project: &str,
    zone: &str,
    filter: Option<String>,
    now: Instant,
) -> Result<Value, ApiError> {
    let filter = Filter::parse(filter.as_deref().unwrap_or("")).map_err(|m| api_error(400, "invalid", &m))?;
    let mut ops: Vec<&Op> = s
        .operations
        .values()
        .filter(|o| o.project == project && o.zone == zone)
        .filter(|o| {
            filter.matches(&|field| match field {
                "operationType" => Some(o.op_type.clone()),
                "status" => Some(o.status(now).to_string()),
                "targetLink" => Some(o.target_link.clone()),
                _ => None,
            })
        })
        .collect();
    ops.sort_by_key(|o| o.id);
    Ok(json!({
        "kind": "compute#operationList",
        "id": format!("projects/{project}/zones/{zone}/operations"),
        "items": ops.iter().map(|o| s.op_json(o, now)).collect::<Vec<_>>(),
        "selfLink": s.url(&format!("projects/{project}/zones/{zone}/operations")),
    }))
}

/// `zoneOperations.wait`: answers when the operation is DONE or after the wait cap, whichever
/// comes first (the caller must be ready to wait again, as with the real API).
async fn wait(state: &Arc<Mutex<State>>, path: &str, headers: &HeaderMap) -> Response {
    let (matched, deadline) = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.tick(Instant::now());
        match admit(&mut s, "POST", path, &[], headers, b"") {
            Ok((m, _)) => (m, Instant::now() + s.config.wait_cap),
            Err(r) => return r.into_response(),
        }
    };
    let (project, zone, name) = (
        &matched.path["project"],
        &matched.path["zone"],
        &matched.path["operation"],
    );
    loop {
        let now = Instant::now();
        {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.tick(now);
            let Some(op) = s
                .operations
                .get(name)
                .filter(|o| &o.project == project && &o.zone == zone)
            else {
                return not_found(&format!("projects/{project}/zones/{zone}/operations/{name}"))
                    .into_response();
            };
            if op.status(now) == "DONE" || now >= deadline {
                let v = s.op_json(op, now);
                return axum::Json(v).into_response();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
