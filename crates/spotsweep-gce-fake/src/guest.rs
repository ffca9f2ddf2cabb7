//! The "guest" of a fake instance: when the instance is RUNNING, its real startup script runs
//! on this machine in a process group of its own, with `GCE_METADATA_HOST` pointing at a
//! metadata server for that instance alone (its name, id, zone, metadata attributes, and
//! `instance/preempted`, which can be long-polled as on a real VM). A preemption turns
//! `instance/preempted` to TRUE and sends SIGTERM (the ACPI soft-off), and the end of the
//! instance SIGKILLs whatever is left (the hard off).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

/// Where guests run, and what they get in their environment beside `GCE_METADATA_HOST`.
#[derive(Debug, Clone, Default)]
pub struct Boot {
    /// Each instance gets `<dir>/<name>/`: `SPOTSWEEP_ROOT` for the script, and its
    /// `console.log` (the serial console).
    pub dir: PathBuf,
    /// Extra environment for the startup script.
    pub env: Vec<(String, String)>,
}

/// A running guest.
#[derive(Debug)]
pub(crate) struct Guest {
    /// Its disk (`SPOTSWEEP_ROOT`), deleted with it as a boot disk with autoDelete is.
    root: PathBuf,
    pgid: Option<i32>,
    preempted: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

/// What the instance's metadata server answers.
struct Meta {
    name: String,
    id: u64,
    zone: String,
    project: String,
    attributes: HashMap<String, String>,
    preempted: watch::Receiver<bool>,
}

impl Guest {
    /// Starts the instance's metadata server and runs its startup script (if it has one).
    pub(crate) fn start(
        boot: &Boot,
        project: &str,
        zone: &str,
        name: &str,
        id: u64,
        attributes: HashMap<String, String>,
    ) -> std::io::Result<Self> {
        let (preempted, preempted_rx) = watch::channel(false);
        let script = attributes.get("startup-script").cloned();
        let meta = Arc::new(Meta {
            name: name.to_string(),
            id,
            zone: zone.to_string(),
            project: project.to_string(),
            attributes,
            preempted: preempted_rx,
        });
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let host = listener.local_addr()?.to_string();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = Router::new()
            .route("/computeMetadata/v1/instance/attributes/{key}", get(attribute))
            .route("/computeMetadata/v1/instance/{field}", get(field))
            .with_state(meta);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let root = boot.dir.join(name);
        std::fs::create_dir_all(&root)?;
        let pgid = match script {
            Some(script) => {
                let log = std::fs::File::create(root.join("console.log"))?;
                let mut cmd = tokio::process::Command::new("bash");
                cmd.arg("-c")
                    .arg(script)
                    .env("GCE_METADATA_HOST", &host)
                    .env("SPOTSWEEP_ROOT", &root)
                    .env("SPOTSWEEP_NO_SYSTEMD", "1")
                    .envs(boot.env.iter().map(|(k, v)| (k, v)))
                    .stdin(std::process::Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .process_group(0);
                let child = cmd.spawn()?;
                // The child is reaped by the runtime when it exits; the group is what we signal.
                child.id().map(|p| p as i32)
            }
            None => None,
        };
        Ok(Self {
            root,
            pgid,
            preempted,
            server,
        })
    }

    /// The preemption notice: `instance/preempted` turns TRUE, and the guest gets SIGTERM.
    pub(crate) fn preempt(&self) {
        let _ = self.preempted.send(true);
        self.signal(Signal::SIGTERM);
    }

    /// An orderly shutdown begins (the instance is being deleted).
    pub(crate) fn shut_down(&self) {
        self.signal(Signal::SIGTERM);
    }

    fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(Pid::from_raw(pgid), sig);
        }
    }
}

impl Drop for Guest {
    /// The power goes: every process of the guest is killed, its metadata server stops.
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        self.server.abort();
        // The console log stays for the curious; the rest of the disk goes.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten().filter(|e| e.file_name() != "console.log") {
                let _ = if e.path().is_dir() {
                    std::fs::remove_dir_all(e.path())
                } else {
                    std::fs::remove_file(e.path())
                };
            }
        }
    }
}

fn flavor_ok(headers: &HeaderMap) -> bool {
    headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) == Some("Google")
}

fn missing_flavor() -> Response {
    (StatusCode::FORBIDDEN, "Missing Metadata-Flavor:Google header.\n").into_response()
}

async fn attribute(State(meta): State<Arc<Meta>>, Path(key): Path<String>, headers: HeaderMap) -> Response {
    if !flavor_ok(&headers) {
        return missing_flavor();
    }
    match meta.attributes.get(&key) {
        Some(v) => v.clone().into_response(),
        None => (StatusCode::NOT_FOUND, "Not Found\n").into_response(),
    }
}

async fn field(
    State(meta): State<Arc<Meta>>,
    Path(field): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !flavor_ok(&headers) {
        return missing_flavor();
    }
    match field.as_str() {
        "name" => meta.name.clone().into_response(),
        "id" => meta.id.to_string().into_response(),
        "zone" => format!("projects/{}/zones/{}", meta.project, meta.zone).into_response(),
        "preempted" => {
            let mut rx = meta.preempted.clone();
            let etag = |p: bool| if p { "preempted-1" } else { "preempted-0" };
            if q.get("wait_for_change").is_some_and(|v| v == "true") {
                let current = etag(*rx.borrow());
                // Answer at once if the caller's view is stale, else when the value changes
                // or the timeout passes.
                if q.get("last_etag").is_none_or(|e| e == current) {
                    let secs = q
                        .get("timeout_sec")
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(60u64)
                        .min(3600);
                    let _ = tokio::time::timeout(Duration::from_secs(secs), rx.changed()).await;
                }
            }
            let now = *rx.borrow();
            ([("etag", etag(now))], if now { "TRUE" } else { "FALSE" }).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "Not Found\n").into_response(),
    }
}
