//! The agent: leases trials from the daemon, runs each as a child process (a command through
//! `sh -c`, or a notebook through papermill) in its own process group, heartbeats, stops it when
//! told, uploads its logs as run artifacts and reports how it ended.
//!
//! Talks to the daemon only over HTTP with the api crate's types; must not depend on the server
//! or the store. Who owns what: the main loop owns the free slots; each trial task owns its
//! child process and gives its slot back through the `done` channel when the daemon has the
//! trial's outcome (or the agent is shutting down).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rand::RngExt;
use sha2::{Digest, Sha256};
use spotsweep_api::client::{Client, Error as ApiError};
use spotsweep_api::{
    CompleteRequest, GpuBody, HeartbeatAction, HeartbeatRequest, LeaseBody, LeaseRequestBody, OutcomeKind,
};
use tokio::sync::{mpsc, oneshot, watch};

mod checkpoint;
mod code;
mod environment;

pub use code::download_snapshot;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The daemon's base URL, e.g. `http://127.0.0.1:5000`.
    pub server: String,
    /// A bearer token (trials get their own, from the lease; only a daemon without auth hands
    /// none, and then trials get this one).
    pub token: Option<String>,
    /// Trials run at once.
    pub slots: u32,
    /// The GPUs. A sweep with `resources` gets trials packed onto them by memory.
    pub gpus: Vec<Gpu>,
    /// MiB each trial's CUDA context takes on a GPU, on top of its `gpu_memory_gb`.
    pub gpu_overhead_mib: u64,
    /// For sweeps without `resources`: slot `i` gets `gpus[i % len]` (the GPUs were named with
    /// `--gpus`); otherwise such a trial sees every GPU. Either way it holds what it may use.
    pub gpus_by_slot: bool,
    /// The pool whose sweeps it serves.
    pub pool: String,
    /// A label for people.
    pub name: String,
    /// Where trial logs are written before upload.
    pub work_dir: PathBuf,
    /// Seconds between SIGTERM and SIGKILL when a trial is stopped.
    pub grace: Duration,
    /// Lease time to live asked for (the daemon's default when `None`): how long a trial of a
    /// vanished agent waits before it is requeued.
    pub lease_ttl: Option<Duration>,
    /// At most this long between checkpoint syncs while a trial keeps writing its checkpoint
    /// directory (a quiet directory syncs sooner): the most work a lost machine can cost.
    pub checkpoint_interval: Duration,
    /// Where code snapshots are kept, unpacked, once per machine (agents on one machine may
    /// share it).
    pub code_cache: PathBuf,
    /// Unpacked snapshots beyond this many bytes are evicted, least recently used first.
    pub code_cache_bytes: u64,
}

/// One of the agent's GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    /// Its `CUDA_VISIBLE_DEVICES` id (an index or a UUID).
    pub id: String,
    /// MiB trials may use on it; unknown GPUs take only sweeps without `resources`.
    pub memory_mib: Option<u64>,
}

/// The machine's GPUs as `nvidia-smi` sees them, with the memory not already in use; none
/// when it is not installed or fails.
pub fn detect_gpus() -> Vec<Gpu> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,memory.total,memory.used",
            "--format=csv,noheader,nounits",
        ])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)),
        Ok(o) => {
            tracing::warn!(status = %o.status, "nvidia-smi failed: no GPUs detected");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// `index, memory.total, memory.used` lines (MiB) into GPUs with the memory left for trials.
fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, total, used] = fields[..] else {
                return None;
            };
            let total: u64 = total.parse().ok()?;
            let used: u64 = used.parse().unwrap_or(0);
            Some(Gpu {
                id: index.to_owned(),
                memory_mib: Some(total.saturating_sub(used)),
            })
        })
        .collect()
}

/// Whether a trial's last lines of stderr say it ran out of GPU memory (PyTorch, CUDA, cuBLAS,
/// JAX/XLA, TensorFlow).
fn out_of_gpu_memory(stderr_tail: &str) -> bool {
    const SIGNS: &[&str] = &[
        "CUDA out of memory",
        "torch.OutOfMemoryError",
        "torch.cuda.OutOfMemoryError",
        "CUDA_ERROR_OUT_OF_MEMORY",
        "cudaErrorMemoryAllocation",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "RESOURCE_EXHAUSTED: Out of memory",
        "ResourceExhaustedError: OOM",
    ];
    SIGNS.iter().any(|s| stderr_tail.contains(s))
}

/// A setup command's outcome, once it has run (its failure as the text to report).
type SetupOutcome = tokio::sync::OnceCell<Result<(), String>>;

/// The setup commands this agent has run, by their text and environment: each runs once
/// however many trials wait for it. A success is also remembered on disk (an agent restarted on the same machine
/// does not run it again); a failure makes the agent take no more trials.
#[derive(Clone, Default)]
struct Setups {
    runs: Arc<tokio::sync::Mutex<HashMap<String, Arc<SetupOutcome>>>>,
    /// Set when one failed: the main loop stops leasing.
    failed: Arc<AtomicBool>,
}

impl Setups {
    /// Runs `command` unless it already ran (or is running) here; its outcome.
    async fn ensure(
        &self,
        work_dir: &std::path::Path,
        command: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let key = setup_key(command, env);
        let cell = self.runs.lock().await.entry(key.clone()).or_default().clone();
        let outcome = cell
            .get_or_init(|| run_setup(work_dir.join("setup"), key, command.to_owned(), env.clone()))
            .await
            .clone();
        if outcome.is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
        outcome
    }
}

/// Kills a process group when dropped, unless disarmed.
struct KillGroup(Option<Pid>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// What identifies a setup: its command and the environment it runs with.
fn setup_key(command: &str, env: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(command.as_bytes());
    for (k, v) in env {
        hasher.update(b"\0");
        hasher.update(k.as_bytes());
        hasher.update(b"=");
        hasher.update(v.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Runs a setup command through `sh -c`, its output in `dir/<key>.log`; `dir/<key>.ok` records
/// a success.
async fn run_setup(
    dir: PathBuf,
    key: String,
    command: String,
    env: BTreeMap<String, String>,
) -> Result<(), String> {
    let done = dir.join(format!("{key}.ok"));
    if done.exists() {
        return Ok(());
    }
    let log = dir.join(format!("{key}.log"));
    let started = std::time::Instant::now();
    tracing::info!(%command, "running the setup command");
    let run = async {
        std::fs::create_dir_all(&dir)?;
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .envs(&env)
            .env("SPOTSWEEP_SETUP", "1")
            // The agent's token stays with the agent.
            .env_remove("SPOTSWEEP_TOKEN")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        // Given up half way (the waiting trial was stopped): everything it started goes too,
        // not only `sh`. Once it has ended, what it left running (a mount, say) stays.
        let mut group = KillGroup(child.id().map(|id| Pid::from_raw(id as i32)));
        let status = child.wait().await;
        group.0 = None;
        status
    };
    match run.await {
        Ok(status) if status.success() => {
            let _ = std::fs::write(&done, &command);
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "setup done");
            Ok(())
        }
        Ok(status) => {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            Err(format!(
                "the setup command `{command}` failed on this machine ({}); last lines of its output:\n{tail}",
                describe(status)
            ))
        }
        Err(e) => Err(format!("cannot run the setup command `{command}`: {e}")),
    }
}

/// Exponential back-off with jitter, capped: 0.5 s, 1 s, 2 s ... 30 s.
fn backoff(attempt: u32) -> Duration {
    let base = 500u64.saturating_mul(1 << attempt.min(6)).min(30_000);
    let jitter = rand::rng().random_range(0..=base / 4);
    Duration::from_millis(base + jitter)
}

/// Resolves when the VM's metadata server says the VM is being preempted
/// (`instance/preempted` turns `TRUE`), long-polling it. `host` is the metadata server
/// (`GCE_METADATA_HOST`, as Google's own libraries read it, else `metadata.google.internal`).
/// Errors are retried with back-off: a flaky metadata server must not stop the agent.
pub async fn preemption_notice(host: &str) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch for preemption");
            return std::future::pending().await;
        }
    };
    let url = format!("http://{host}/computeMetadata/v1/instance/preempted");
    let mut etag: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let this = match &etag {
            Some(e) => format!("{url}?wait_for_change=true&timeout_sec=60&last_etag={e}"),
            None => url.clone(),
        };
        match http.get(&this).header("Metadata-Flavor", "Google").send().await {
            Ok(r) if r.status().is_success() => {
                failures = 0;
                etag = r
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let value = r.text().await.unwrap_or_default();
                if value.trim().eq_ignore_ascii_case("TRUE") {
                    tracing::warn!("the metadata server says this VM is being preempted");
                    return;
                }
                if etag.is_none() {
                    // No etag to wait on: poll.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            other => {
                failures += 1;
                let wait = backoff(failures.min(6));
                tracing::warn!(?other, ?wait, "cannot read instance/preempted; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves; then stops its trials and reports them preempted.
pub async fn run(config: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let client = Client::with_http(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
        &config.server,
        config.token.clone(),
    );
    // Checkpoints may be gigabytes: no limit on a whole transfer, only on a silent connection.
    let transfers = Client::with_http(
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .build()?,
        &config.server,
        config.token.clone(),
    );
    std::fs::create_dir_all(&config.work_dir)
        .with_context(|| format!("cannot create work dir {}", config.work_dir.display()))?;
    let agent_id = format!("{}-{}", config.name, hex::encode(rand::rng().random::<[u8; 4]>()));
    tracing::info!(%agent_id, slots = config.slots, pool = %config.pool, server = %client.base(), "agent started");
    let mut free: Vec<usize> = (0..config.slots as usize).rev().collect();
    // MiB not held by running trials, per GPU of known memory.
    let mut gpu_free: Vec<u64> = config.gpus.iter().map(|g| g.memory_mib.unwrap_or(0)).collect();
    // Trial tasks send their slot and GPU memory back here when they are done.
    let (done_tx, mut done_rx) = mpsc::channel::<Freed>(config.slots as usize + 1);
    // Flipped to true on shutdown: every trial task stops its child and reports preemption.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = 0usize;
    let mut failures = 0u32;
    let mut request_id: Option<String> = None;
    let setups = Setups::default();
    let codes = code::CodeCache::new(config.code_cache.clone(), config.code_cache_bytes);
    let environments = environment::Environments::default();
    tokio::pin!(shutdown);
    loop {
        // After a failed setup: no more trials. The running ones finish, then the agent stops,
        // so that a supervisor (the daemon's local pool, systemd) may start a fresh one.
        let setup_failed = setups.failed.load(Ordering::SeqCst);
        if setup_failed && running == 0 {
            anyhow::bail!(
                "a setup command failed on this machine, so this agent takes no more trials \
                 (its output is in the trial's logs/setup.txt)"
            );
        }
        if setup_failed || free.is_empty() {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(freed) = done_rx.recv() => { freed.give_back(&mut free, &mut gpu_free); running -= 1; }
            }
            continue;
        }
        // One id per logical request, reused while it is retried, so a lost answer does not
        // lease twice.
        let rid = request_id
            .get_or_insert_with(|| hex::encode(rand::rng().random::<[u8; 12]>()))
            .clone();
        let body = LeaseRequestBody {
            agent_id: agent_id.clone(),
            agent_name: Some(config.name.clone()),
            request_id: Some(rid),
            slots: free.len() as u32,
            pool: Some(config.pool.clone()),
            sweep_id: None,
            wait_ms: 20_000,
            ttl_ms: config.lease_ttl.map(|t| t.as_millis() as i64),
            gpus: config
                .gpus
                .iter()
                .zip(&gpu_free)
                .filter_map(|(g, &free_mib)| {
                    g.memory_mib.map(|memory_mib| GpuBody {
                        id: g.id.clone(),
                        memory_mib,
                        free_mib,
                    })
                })
                .collect(),
            gpu_overhead_mib: Some(config.gpu_overhead_mib),
        };
        let lease = client.lease(&body);
        let answer = tokio::select! {
            _ = &mut shutdown => break,
            Some(freed) = done_rx.recv() => {
                // A slot came free while we waited: ask again with more slots (the pending
                // request may still lease; the same request id then returns the same trials).
                freed.give_back(&mut free, &mut gpu_free);
                running -= 1;
                continue;
            }
            r = lease => r,
        };
        let leases = match answer {
            Ok(l) => l.leases,
            Err(ApiError::Unreadable(e)) => {
                tracing::warn!(error = %e, "unreadable lease answer");
                vec![]
            }
            Err(e) if e.status() == Some(401) => {
                anyhow::bail!("the daemon refused the token (401): check --token / SPOTSWEEP_TOKEN");
            }
            // A refusal of the request itself (a bad option) will not get better by retrying.
            Err(e) if !e.is_transient() => {
                anyhow::bail!("the daemon refused the lease request ({e})");
            }
            Err(what) => {
                let wait = backoff(failures);
                failures += 1;
                tracing::warn!(error = %what, retry_in = ?wait, "cannot lease; the daemon may be away");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        failures = 0;
        request_id = None;
        for lease in leases {
            let Some(slot) = free.pop() else { break };
            running += 1;
            let mut held = Vec::new();
            let mut shared = false;
            let gpu = match &lease.gpus {
                // Packed by memory: the GPUs the daemon placed it on.
                Some(shares) => {
                    for share in shares {
                        if let Some(i) = config.gpus.iter().position(|g| g.id == share.id) {
                            let taken = share.memory_mib.min(gpu_free[i]);
                            gpu_free[i] -= taken;
                            held.push((i, taken));
                            shared |= config.gpus[i].memory_mib.is_some_and(|m| share.memory_mib < m);
                        }
                    }
                    Some(shares.iter().map(|g| g.id.as_str()).collect::<Vec<_>>().join(","))
                }
                // A trial that does not say what it needs may use all of the GPUs it sees:
                // nothing is packed next to it.
                None if config.gpus.is_empty() => None,
                None if config.gpus_by_slot => {
                    let i = slot % config.gpus.len();
                    held.push((i, std::mem::take(&mut gpu_free[i])));
                    Some(config.gpus[i].id.clone())
                }
                None => {
                    for (i, free_mib) in gpu_free.iter_mut().enumerate() {
                        held.push((i, std::mem::take(free_mib)));
                    }
                    None
                }
            };
            let task = TrialTask {
                client: client.clone(),
                transfers: transfers.clone(),
                config: config.clone(),
                lease,
                gpu,
                shared_gpu: shared,
                setups: setups.clone(),
                codes: codes.clone(),
                environments: environments.clone(),
                code_dir: None,
                stop: stop_rx.clone(),
            };
            let done = done_tx.clone();
            tokio::spawn(async move {
                task.run().await;
                let _ = done.send(Freed { slot, held }).await;
            });
        }
    }
    tracing::info!(
        running,
        "agent stopping: stopping trials and reporting them preempted"
    );
    let _ = stop_tx.send(true);
    while running > 0 {
        match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
            Ok(Some(_)) => running -= 1,
            _ => break,
        }
    }
    Ok(())
}

/// What a finished trial gives back: its slot and the GPU memory it held.
struct Freed {
    slot: usize,
    held: Vec<(usize, u64)>,
}

impl Freed {
    fn give_back(self, free: &mut Vec<usize>, gpu_free: &mut [u64]) {
        free.push(self.slot);
        for (i, mib) in self.held {
            gpu_free[i] += mib;
        }
    }
}

/// Why a child stopped.
enum Ending {
    Exited(std::process::ExitStatus),
    StoppedByServer,
    AgentShutdown,
}

struct TrialTask {
    client: Client,
    /// For checkpoint transfers (no whole-request timeout).
    transfers: Client,
    config: AgentConfig,
    lease: LeaseBody,
    /// Its `CUDA_VISIBLE_DEVICES`.
    gpu: Option<String>,
    /// It holds part of a GPU that other trials may use: running out of memory there means
    /// "pack it less tightly", not "it is broken".
    shared_gpu: bool,
    setups: Setups,
    /// The machine's code snapshots.
    codes: code::CodeCache,
    /// The machine's environments, probed once (per PATH).
    environments: environment::Environments,
    /// The trial's own copy of its code snapshot, once made: its working directory.
    code_dir: Option<PathBuf>,
    stop: watch::Receiver<bool>,
}

impl TrialTask {
    fn label(&self) -> String {
        format!(
            "sweep {} trial {}",
            self.lease.trial.sweep_id, self.lease.trial.number
        )
    }

    async fn run(mut self) {
        let label = self.label();
        match self.setup().await {
            Ok(None) => {}
            Ok(Some(stopped)) => {
                self.report(CompleteRequest {
                    outcome: stopped,
                    value: None,
                    reason: None,
                })
                .await;
                return;
            }
            Err(reason) => {
                tracing::error!(trial = %label, %reason, "setup failed: this agent takes no more trials");
                self.report(CompleteRequest {
                    outcome: OutcomeKind::SetupFailed,
                    value: None,
                    reason: Some(reason),
                })
                .await;
                return;
            }
        }
        if let Some(id) = self.lease.code.clone() {
            let dst = self.trial_dir().join("code");
            let (codes, transfers) = (self.codes.clone(), self.transfers.clone());
            let mut stop = self.stop.clone();
            let checkout = self.heartbeating(codes.checkout(&transfers, &id, &dst));
            let fetched = tokio::select! {
                fetched = checkout => Some(fetched),
                // The agent is stopping (a preemption): the trial goes back to the queue now,
                // not when a long download ends.
                _ = stop.changed() => None,
            };
            match fetched {
                None => {
                    self.report(CompleteRequest {
                        outcome: OutcomeKind::Preempted,
                        value: None,
                        reason: None,
                    })
                    .await;
                    return;
                }
                Some(Ok(())) => self.code_dir = std::path::absolute(&dst).ok(),
                Some(Err(reason)) => {
                    tracing::error!(trial = %label, %reason, "no code for the trial");
                    self.report(CompleteRequest {
                        outcome: OutcomeKind::Failed,
                        value: None,
                        reason: Some(reason),
                    })
                    .await;
                    return;
                }
            }
        }
        let outcome = match self.execute().await {
            Ok((ending, stderr_tail)) => match ending {
                Ending::Exited(status) if status.success() => CompleteRequest {
                    outcome: OutcomeKind::Succeeded,
                    value: None,
                    reason: None,
                },
                Ending::Exited(status) if self.shared_gpu && out_of_gpu_memory(&stderr_tail) => {
                    CompleteRequest {
                        outcome: OutcomeKind::OutOfMemory,
                        value: None,
                        reason: Some(format!(
                            "out of GPU memory on a shared GPU ({}): retried with twice the memory; last lines of \
                         stderr:\n{stderr_tail}",
                            describe(status)
                        )),
                    }
                }
                Ending::Exited(status) => CompleteRequest {
                    outcome: OutcomeKind::Failed,
                    value: None,
                    reason: Some(format!(
                        "{}; last lines of stderr:\n{stderr_tail}",
                        describe(status)
                    )),
                },
                Ending::StoppedByServer => CompleteRequest {
                    outcome: OutcomeKind::Cancelled,
                    value: None,
                    reason: None,
                },
                Ending::AgentShutdown => CompleteRequest {
                    outcome: OutcomeKind::Preempted,
                    value: None,
                    reason: None,
                },
            },
            Err(e) => CompleteRequest {
                outcome: OutcomeKind::Failed,
                value: None,
                reason: Some(format!("could not run the trial: {e:#}")),
            },
        };
        // The trial's copy of its code goes with it (what it wrote there that matters, it
        // logged as artifacts).
        if let Some(dir) = self.code_dir.take() {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        tracing::info!(trial = %label, outcome = %outcome.outcome, "trial ended");
        self.report(outcome).await;
    }

    /// Where the trial's logs (and its copy of the code) are.
    fn trial_dir(&self) -> PathBuf {
        self.config.work_dir.join(format!(
            "sweep{}-trial{}-attempt{}",
            self.lease.trial.sweep_id, self.lease.trial.number, self.lease.trial.attempts
        ))
    }

    /// A path of the lease (a notebook's), relative to the trial's code when it has one.
    fn in_code(&self, path: &str) -> PathBuf {
        match &self.code_dir {
            Some(dir) => dir.join(path),
            None => PathBuf::from(path),
        }
    }

    fn command(&self) -> anyhow::Result<tokio::process::Command> {
        let l = &self.lease;
        let mut cmd = if let Some(command) = &l.command {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(command);
            c
        } else if let Some(nb) = &l.notebook {
            if let Some(dir) = self
                .in_code(&nb.output)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)?;
            }
            let mut c = tokio::process::Command::new("papermill");
            // Parameters as YAML (JSON is YAML), so their types survive exactly.
            c.arg(&nb.input)
                .arg(&nb.output)
                .arg("-y")
                .arg(l.trial.params.to_string());
            c
        } else {
            anyhow::bail!("the lease has neither a command nor a notebook");
        };
        cmd.env("MLFLOW_TRACKING_URI", self.client.base())
            .env("MLFLOW_RUN_ID", &l.trial.run_id)
            .env("MLFLOW_EXPERIMENT_ID", &l.trial.experiment_id)
            .env(
                "SPOTSWEEP_TRIAL_ID",
                format!("{}-{}", l.trial.sweep_id, l.trial.number),
            )
            .env("SPOTSWEEP_SWEEP_ID", l.trial.sweep_id.to_string())
            .env("SPOTSWEEP_TRIAL_NUMBER", l.trial.number.to_string())
            .env("SPOTSWEEP_ATTEMPT", l.trial.attempts.to_string())
            .env("SPOTSWEEP_PARAMS", l.trial.params.to_string())
            .env("SPOTSWEEP_SEED", l.trial.seed.to_string())
            .env("SPOTSWEEP_LEASE_ID", &l.lease_id)
            .envs(&l.env);
        // The trial gets its own token (its run, its experiment, its lease), never the agent's:
        // a daemon without auth sends none, and then the agent's is all there is.
        cmd.env_remove("SPOTSWEEP_TOKEN");
        if let Some(token) = l.trial_token.as_deref().or(self.client.token()) {
            cmd.env("MLFLOW_TRACKING_TOKEN", token);
        }
        if let Some(gpu) = &self.gpu {
            cmd.env("CUDA_VISIBLE_DEVICES", gpu);
        }
        // A trial with a code snapshot runs in its own copy of it.
        match &self.code_dir {
            Some(dir) => {
                cmd.current_dir(dir).env("SPOTSWEEP_CODE_DIR", dir);
            }
            None => {
                cmd.env_remove("SPOTSWEEP_CODE_DIR");
            }
        }
        // Its own process group, so that stopping it stops everything it started.
        cmd.process_group(0).stdin(Stdio::null()).kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs the child to its end, heartbeating; returns how it ended and the tail of stderr.
    async fn execute(&mut self) -> anyhow::Result<(Ending, String)> {
        let dir = self.trial_dir();
        std::fs::create_dir_all(&dir)?;
        let stdout_path = dir.join("stdout.txt");
        let stderr_path = dir.join("stderr.txt");
        self.record_code_version().await;
        self.record_environment(&dir).await;
        let mut cmd = self.command()?;
        cmd.stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?);
        let (mirror, ckpt_dir) = self.checkpoints(&mut cmd).await?;
        let (last_sync, last_sync_rx) = oneshot::channel();
        let syncer = mirror.map(|m| tokio::spawn(m.run(self.config.checkpoint_interval, last_sync_rx)));
        let mut child = cmd.spawn().context("cannot start the trial's command")?;
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        let interval = self.heartbeat_interval();
        let mut beat = tokio::time::interval(interval);
        beat.tick().await;
        let ending = loop {
            tokio::select! {
                status = child.wait() => break Ending::Exited(status?),
                _ = beat.tick() => {
                    if self.heartbeat().await == Some(false) {
                        stop_group(&mut child, pgid, self.config.grace).await;
                        break Ending::StoppedByServer;
                    }
                }
                _ = self.stop.changed() => {
                    stop_group(&mut child, pgid, self.config.grace).await;
                    break Ending::AgentShutdown;
                }
            }
        };
        // The last sync: inside the preemption window when the agent is stopping.
        let _ = last_sync.send(());
        if let Some(mut syncer) = syncer {
            let limit = match ending {
                Ending::AgentShutdown => Duration::from_secs(20),
                _ => Duration::from_secs(300),
            };
            if self
                .heartbeating(tokio::time::timeout(limit, &mut syncer))
                .await
                .is_err()
            {
                // Stopped here: it must not go on once the directory is removed below.
                syncer.abort();
                tracing::warn!(trial = %self.label(), "the last checkpoint sync did not finish in {limit:?}");
            }
        }
        let _ = std::fs::remove_dir_all(&ckpt_dir);
        self.upload(&stdout_path, "logs/stdout.txt").await;
        self.upload(&stderr_path, "logs/stderr.txt").await;
        if let Some(nb) = self.lease.notebook.clone() {
            let out = self.in_code(&nb.output);
            let name = out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "notebook.ipynb".into());
            if out.exists() {
                self.upload(&out, &format!("notebooks/{name}")).await;
            }
        }
        let tail = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(20).collect();
        Ok((ending, tail.into_iter().rev().collect::<Vec<_>>().join("\n")))
    }

    /// Runs the lease's setup commands that have not run here yet, heartbeating meanwhile (a
    /// dataset copy may take minutes). `Ok(Some(outcome))` when the trial was stopped meanwhile
    /// (cancelled by the daemon, or preempted with the agent); the failure's text when one failed
    /// (its output becomes the run's `logs/setup.txt`).
    async fn setup(&mut self) -> Result<Option<OutcomeKind>, String> {
        for command in self.lease.setup.clone() {
            let interval = self.heartbeat_interval();
            let mut beat = tokio::time::interval(interval);
            beat.tick().await;
            let setups = self.setups.clone();
            let work_dir = self.config.work_dir.clone();
            let env = self.lease.env.clone();
            let ensure = setups.ensure(&work_dir, &command, &env);
            tokio::pin!(ensure);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut ensure => break outcome,
                    _ = beat.tick() => {
                        if self.heartbeat().await == Some(false) {
                            return Ok(Some(OutcomeKind::Cancelled));
                        }
                    }
                    _ = self.stop.changed() => return Ok(Some(OutcomeKind::Preempted)),
                }
            };
            if let Err(reason) = outcome {
                let log = work_dir
                    .join("setup")
                    .join(format!("{}.log", setup_key(&command, &env)));
                self.upload(&log, "logs/setup.txt").await;
                return Err(reason);
            }
        }
        Ok(None)
    }

    /// Prepares the trial's checkpoint directory, restoring the run's `checkpoints/` artifacts
    /// into it, and sets `SPOTSWEEP_CHECKPOINT_DIR` (and `SPOTSWEEP_RESUME=1` when something
    /// came back). No mirror when the run's artifacts are not behind the daemon's proxy.
    async fn checkpoints(
        &self,
        cmd: &mut tokio::process::Command,
    ) -> anyhow::Result<(Option<checkpoint::Mirror>, PathBuf)> {
        let dir = self.config.work_dir.join("checkpoints").join(format!(
            "sweep{}-trial{}",
            self.lease.trial.sweep_id, self.lease.trial.number
        ));
        // What the daemon has is the truth: a leftover of an earlier attempt here may be
        // newer or older than it, and the trial must see one consistent checkpoint.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the checkpoint dir {}", dir.display()))?;
        let dir = std::path::absolute(&dir)?;
        cmd.env("SPOTSWEEP_CHECKPOINT_DIR", &dir);
        let Some(root) = checkpoint::proxy_root(&self.lease.artifact_uri) else {
            tracing::warn!(
                artifact_uri = %self.lease.artifact_uri,
                "the run's artifacts are not behind the daemon's proxy: checkpoints are not kept"
            );
            return Ok((None, dir));
        };
        let mut mirror = checkpoint::Mirror::new(self.transfers.clone(), root, dir.clone());
        if self.lease.trial.attempts > 1 {
            // Starting over would overwrite the daemon's checkpoint with step 0 at the first
            // sync: retry, then give the attempt up rather than lose the work.
            let mut tries = 0u32;
            let restored = loop {
                match self.heartbeating(mirror.restore()).await {
                    Ok(n) => break n,
                    Err(e) if tries < 2 => {
                        tries += 1;
                        tracing::warn!(trial = %self.label(), error = %format!("{e:#}"), "cannot restore the checkpoint; retrying");
                        tokio::time::sleep(backoff(tries)).await;
                        mirror.clear()?;
                    }
                    Err(e) => return Err(e.context("cannot restore the trial's checkpoint (3 tries)")),
                }
            };
            if restored > 0 {
                tracing::info!(trial = %self.label(), files = restored, "checkpoint restored");
                cmd.env("SPOTSWEEP_RESUME", "1");
            }
        }
        Ok((Some(mirror), dir))
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.lease.heartbeat_interval_ms.max(500) as u64)
    }

    /// Runs `work` while keeping the lease alive (a checkpoint to restore or sync may take
    /// longer than the lease lives).
    async fn heartbeating<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        let interval = self.heartbeat_interval();
        let mut beat = tokio::time::interval(interval);
        beat.tick().await;
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = beat.tick() => { let _ = self.heartbeat().await; }
            }
        }
    }

    /// `Some(true)` to go on, `Some(false)` when told to stop, `None` when the daemon is away
    /// (the trial goes on; the lease may expire, and the result is still reported later).
    async fn heartbeat(&self) -> Option<bool> {
        let body = HeartbeatRequest {
            ttl_ms: self.config.lease_ttl.map(|ttl| ttl.as_millis() as i64),
        };
        match self.client.heartbeat(&self.lease.lease_id, &body).await {
            Ok(h) => Some(h.action != HeartbeatAction::Stop),
            Err(e) if e.status() == Some(404) => Some(false),
            Err(e @ ApiError::Refused { .. }) => {
                tracing::warn!(error = %e, "heartbeat refused");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed; the daemon may be away");
                None
            }
        }
    }

    /// Records the code version on the run: its code snapshot, or else the git commit and
    /// dirty flag of the working directory; and the notebook's sha256.
    async fn record_code_version(&self) {
        let mut tags = Vec::new();
        if let Some(nb) = &self.lease.notebook
            && let Ok(bytes) = std::fs::read(self.in_code(&nb.input))
        {
            tags.push(("spotsweep.notebook.sha256", hex::encode(Sha256::digest(&bytes))));
        }
        if let Some(code) = &self.lease.code {
            tags.push(("spotsweep.code", code.clone()));
        }
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .stderr(Stdio::null())
                .output()
        };
        if self.lease.code.is_none()
            && let Ok(out) = git(&["rev-parse", "HEAD"])
            && out.status.success()
        {
            tags.push((
                "mlflow.source.git.commit",
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            ));
            let dirty = git(&["status", "--porcelain"])
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            tags.push(("spotsweep.git.dirty", dirty.to_string()));
        }
        if tags.is_empty() {
            return;
        }
        if let Err(e) = self.client.set_run_tags(&self.lease.trial.run_id, &tags).await {
            tracing::warn!(error = %e, "cannot record the code version on the run");
        }
    }

    /// Records the machine's environment on the run: short facts as tags, the full record
    /// (with `pip freeze` of the Python on the trial's PATH) as `environment.json`.
    async fn record_environment(&self, dir: &std::path::Path) {
        let path = self
            .lease
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        let env = self.environments.get(&path).await;
        if let Err(e) = self
            .client
            .set_run_tags(&self.lease.trial.run_id, &env.tags)
            .await
        {
            tracing::warn!(error = %e, "cannot record the environment on the run");
        }
        let file = dir.join("environment.json");
        if std::fs::write(&file, &env.json).is_ok() {
            self.upload(&file, "environment.json").await;
        }
    }

    /// Uploads a file as a run artifact through the daemon's proxy (best effort).
    async fn upload(&self, file: &std::path::Path, artifact_path: &str) {
        let Some(root) = checkpoint::proxy_root(&self.lease.artifact_uri) else {
            return;
        };
        let Ok(bytes) = tokio::fs::read(file).await else {
            return;
        };
        let path = checkpoint::artifact_url(&format!("{root}/{artifact_path}"));
        if let Err(e) = self
            .client
            .request(reqwest::Method::PUT, &path)
            .body(bytes)
            .send()
            .await
        {
            tracing::warn!(error = %e, artifact = artifact_path, "artifact upload failed");
        }
    }

    /// Reports the outcome, retrying with back-off until the daemon has it: a finished trial's
    /// result is never dropped because the daemon was briefly away.
    async fn report(&self, outcome: CompleteRequest) {
        for attempt in 0u32.. {
            match self.client.complete(&self.lease.lease_id, &outcome).await {
                Ok(_) => return,
                Err(e) if !e.is_transient() => {
                    tracing::warn!(error = %e, "the daemon refused the trial's result");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "reporting the result failed; retrying"),
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended abnormally".into(),
    }
}

/// SIGTERM to the whole process group, SIGKILL after the grace period.
async fn stop_group(child: &mut tokio::process::Child, pgid: Option<Pid>, grace: Duration) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_become_gpus_with_their_free_memory() {
        let gpus = parse_nvidia_smi("0, 40960, 4\n1, 81920, 1024\nbogus\n");
        assert_eq!(
            gpus,
            vec![
                Gpu {
                    id: "0".into(),
                    memory_mib: Some(40956)
                },
                Gpu {
                    id: "1".into(),
                    memory_mib: Some(80896)
                },
            ]
        );
        assert!(parse_nvidia_smi("").is_empty());
    }

    #[test]
    fn out_of_memory_exits_are_recognised() {
        assert!(out_of_gpu_memory(
            "Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
        ));
        assert!(out_of_gpu_memory(
            "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying"
        ));
        assert!(!out_of_gpu_memory("ValueError: bad learning rate"));
        assert!(!out_of_gpu_memory("java.lang.OutOfMemoryError: Java heap space"));
    }
}
