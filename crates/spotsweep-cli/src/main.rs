//! The one `spotsweep` binary: `serve` runs the daemon, `agent` runs trials for it, `submit`,
//! `status`, `watch` and `run` drive sweeps, `openapi` prints the API document. Thin on
//! purpose: it parses flags, sets up logging and calls into the library crates.

mod client;
mod code;
mod notebook;
mod rerun;
mod source;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use client::{Daemon, read_spec};
use spotsweep_api::SweepBody;
use spotsweep_server::{Config, LogFormat, Overrides};

#[derive(Parser)]
#[command(
    name = "spotsweep",
    version,
    about = "Hyperparameter sweeps on spot GPUs, with an MLflow-compatible tracking server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: the MLflow-compatible tracking server, the sweep queue and spotsweep's API.
    Serve(ServeArgs),
    /// Run trials for a daemon.
    Agent(AgentArgs),
    /// Submit a sweep spec (YAML or JSON) to a running daemon; prints the sweep id.
    Submit(SubmitArgs),
    /// Show sweeps (all, or one with its trials).
    Status(StatusArgs),
    /// Follow a sweep with a progress bar until it ends.
    Watch(WatchArgs),
    /// All in one: an embedded daemon, local agents, the sweep, a progress bar, the best trial.
    Run(RunArgs),
    /// A notebook sweep in one line, all in one as `run`: each trial runs the notebook through
    /// papermill with its parameters, e.g. `spotsweep notebook Test.ipynb -o 'out/Test.{run_id}.ipynb'
    /// -p parameters.yml -j 8`.
    Notebook(NotebookArgs),
    /// Run a finished trial again, with the same parameters, seed and code snapshot, as a new
    /// trial of its sweep (on another pool with --pool).
    Rerun(RerunArgs),
    /// Write a trial's code, parameters and command line into a new directory, to run it by
    /// hand: DIR/spotsweep-trial.sh runs it as its agent did.
    Checkout(CheckoutArgs),
    /// Print the OpenAPI document of /api/v1.
    Openapi,
    /// Manage tokens offline.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Revoke the admin token and write a new one to <data-dir>/admin.token (mode 0600).
    /// Other tokens keep working. On the SQLite file, with the daemon stopped; on PostgreSQL
    /// (--database-url) the daemons may run.
    ResetAdmin {
        /// The daemon's data dir.
        #[arg(long, env = "SPOTSWEEP_DATA_DIR", default_value = "spotsweep-data")]
        data_dir: PathBuf,
        /// The daemons' PostgreSQL database, if they use one.
        #[arg(long, env = "SPOTSWEEP_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML config file; flags and SPOTSWEEP_* variables override it.
    #[arg(long, env = "SPOTSWEEP_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, env = "SPOTSWEEP_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for spotsweep.db, artifacts/ and admin.token [default: ./spotsweep-data].
    #[arg(long, env = "SPOTSWEEP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL database instead of the SQLite file, shared by every daemon of a lab:
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE [default: <data-dir>/spotsweep.db].
    #[arg(long, env = "SPOTSWEEP_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where artifacts are stored: a directory or gs://bucket/prefix [default: <data-dir>/artifacts].
    #[arg(long, env = "SPOTSWEEP_ARTIFACTS_DESTINATION")]
    artifacts_destination: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "SPOTSWEEP_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// MLflow's web UI at /: `off`, or the path of a built UI [default: the installed mlflow package's].
    #[arg(long, env = "SPOTSWEEP_MLFLOW_UI")]
    mlflow_ui: Option<String>,
    /// Accept requests without a token (only allowed on a loopback address).
    #[arg(long, env = "SPOTSWEEP_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    no_auth: Option<bool>,
    /// Agents of the local pool to run on this machine [default: 0].
    #[arg(long, env = "SPOTSWEEP_LOCAL_AGENTS")]
    local_agents: Option<u32>,
}

#[derive(Args)]
struct AgentArgs {
    /// The daemon's URL.
    #[arg(long, env = "SPOTSWEEP_SERVER")]
    server: String,
    /// A token of the daemon.
    #[arg(long, env = "SPOTSWEEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trials at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// GPU ids, e.g. 0,1, or `none` [default: what nvidia-smi lists, with the memory not in use].
    /// Sweeps with `resources` are packed onto them by memory; with ids given, other trials get
    /// CUDA_VISIBLE_DEVICES=gpus[slot % n], else they see every GPU.
    #[arg(long, value_delimiter = ',')]
    gpus: Vec<String>,
    /// GB (GiB) of memory trials may use on each GPU [default: from nvidia-smi].
    #[arg(long)]
    gpu_memory_gb: Option<f64>,
    /// GB each trial's CUDA context takes on a GPU, added to the sweep's gpu_memory_gb.
    #[arg(long, default_value_t = 0.5)]
    gpu_overhead_gb: f64,
    /// `I/N`: this is agent I of N on the machine (the local pool): it takes its share of the
    /// GPUs (every Nth, or a part of one GPU's memory when there are fewer GPUs than agents).
    #[arg(long, hide = true, value_parser = parse_share)]
    gpu_share: Option<(u32, u32)>,
    /// The pool whose sweeps it serves.
    #[arg(long, default_value = "local")]
    pool: String,
    /// A label for people [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Where trial logs are kept [default: ./spotsweep-agent].
    #[arg(long, default_value = "./spotsweep-agent")]
    work_dir: PathBuf,
    /// Seconds between SIGTERM and SIGKILL when a trial is stopped.
    #[arg(long, default_value_t = 10)]
    grace_seconds: u64,
    /// Lease time to live in ms: how soon a trial of a vanished agent is requeued [default: the
    /// daemon's, 60000].
    #[arg(long, env = "SPOTSWEEP_LEASE_TTL_MS", value_parser = clap::value_parser!(u64).range(5_000..=3_600_000))]
    lease_ttl_ms: Option<u64>,
    /// At most this many ms between syncs of a trial's SPOTSWEEP_CHECKPOINT_DIR to its run's
    /// artifacts while the trial keeps writing it (a directory that goes quiet syncs sooner, and
    /// a stopped trial's at once): the most work a machine lost without warning can cost.
    #[arg(long, env = "SPOTSWEEP_CHECKPOINT_INTERVAL_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    checkpoint_interval_ms: u64,
    /// Stop (as on SIGTERM) when the parent process dies: local agents of a daemon that was
    /// killed do not linger as orphans.
    #[arg(long, hide = true)]
    exit_with_parent: bool,
    /// On a Compute Engine VM: watch the metadata server for a preemption notice and stop as on
    /// SIGTERM (the trials are reported preempted inside the 30-second window).
    #[arg(long, env = "SPOTSWEEP_WATCH_PREEMPTION")]
    watch_preemption: bool,
    /// Where code snapshots are kept, unpacked once per machine [default: <work-dir>/code].
    /// Agents on one machine may share it.
    #[arg(long, env = "SPOTSWEEP_CODE_CACHE")]
    code_cache: Option<PathBuf>,
    /// GB of unpacked code snapshots kept; beyond it the least recently used go.
    #[arg(long, env = "SPOTSWEEP_CODE_CACHE_GB", default_value_t = 10.0)]
    code_cache_gb: f64,
}

#[derive(Args)]
struct DaemonArgs {
    /// The daemon's URL [default: from <data-dir>/server.url].
    #[arg(long, env = "SPOTSWEEP_SERVER")]
    server: Option<String>,
    /// A token [default: <data-dir>/admin.token].
    #[arg(long, env = "SPOTSWEEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The daemon's data dir, to find its URL and token.
    #[arg(long, env = "SPOTSWEEP_DATA_DIR", default_value = "./spotsweep-data")]
    data_dir: PathBuf,
}

impl DaemonArgs {
    fn daemon(&self) -> anyhow::Result<Daemon> {
        client::locate(self.server.clone(), self.token.clone(), &self.data_dir)
    }
}

#[derive(Clone, Copy, ValueEnum, Default, PartialEq)]
enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Args)]
struct SubmitArgs {
    /// The sweep spec (YAML or JSON). With `workdir: DIR` (relative to the spec file), DIR is
    /// packed (the files git would see, and not those in .spotsweepignore) and uploaded once, and
    /// each trial runs in its own copy of it.
    spec: PathBuf,
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(flatten)]
    code: CodeArgs,
}

#[derive(Args)]
struct CodeArgs {
    /// The most a spec's workdir may hold, in MiB (before compression): beyond it, the CLI
    /// refuses to pack it and names its largest files.
    #[arg(long, env = "SPOTSWEEP_CODE_LIMIT_MB", default_value_t = code::DEFAULT_LIMIT_MB)]
    code_limit_mb: u64,
}

#[derive(Args)]
struct StatusArgs {
    /// A sweep id; all sweeps when absent.
    id: Option<i64>,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// table or json.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args)]
struct RerunArgs {
    /// The sweep id.
    sweep: i64,
    /// The trial's number.
    trial: i64,
    /// The pool to run it on [default: the sweep's].
    #[arg(long)]
    pool: Option<String>,
    /// Wait until it ends and print its value beside the original's.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Args)]
struct CheckoutArgs {
    /// The sweep id.
    sweep: i64,
    /// The trial's number.
    trial: i64,
    /// A new (or empty) directory.
    dir: PathBuf,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Args)]
struct WatchArgs {
    /// The sweep id.
    id: i64,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Args)]
struct RunArgs {
    /// The sweep spec (YAML or JSON).
    spec: PathBuf,
    /// Local agents to run [default: the spec's parallelism].
    #[arg(long)]
    agents: Option<u32>,
    /// Data directory of the embedded daemon.
    #[arg(long, env = "SPOTSWEEP_DATA_DIR", default_value = "./spotsweep-data")]
    data_dir: PathBuf,
    /// table or json (the final sweep).
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    code: CodeArgs,
}

#[derive(Args)]
struct NotebookArgs {
    /// The notebook.
    notebook: PathBuf,
    /// Where each executed copy goes; `{trial}` and `{run_id}` are replaced.
    #[arg(short = 'o', long)]
    output: String,
    /// The parameters (YAML): names to lists of values, fixed values or distributions; or a sweep
    /// spec fragment with a `parameters` key.
    #[arg(short = 'p', long)]
    parameters: PathBuf,
    /// Trials at once (local agents).
    #[arg(short = 'j', long, default_value_t = 1)]
    jobs: u32,
    /// The objective metric the notebook logs (unless the parameters file names one).
    #[arg(long, default_value = "loss")]
    metric: String,
    /// minimize or maximize.
    #[arg(long, default_value = "minimize")]
    goal: String,
    /// Trials in all [default: the grid's size, or 20 for a search].
    #[arg(short = 'n', long)]
    max_trials: Option<u32>,
    /// Data directory of the embedded daemon.
    #[arg(long, env = "SPOTSWEEP_DATA_DIR", default_value = "./spotsweep-data")]
    data_dir: PathBuf,
    /// table or json (the final sweep).
    #[arg(long, value_enum, default_value_t)]
    format: Output,
    /// A directory to pack as the trials' code (each trial runs in its own copy of it); the
    /// notebook must be inside it. The parameters file may say `workdir:` instead (relative to it).
    #[arg(long)]
    workdir: Option<PathBuf>,
    #[command(flatten)]
    code: CodeArgs,
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPOTSWEEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colour only for a person at a terminal, never in files or pipes.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        database_url: args.database_url,
        artifacts_destination: args.artifacts_destination,
        log_format: args.log_format,
        no_auth: args.no_auth,
        local_agents: args.local_agents,
        mlflow_ui: args.mlflow_ui,
    };
    let config = Config::load(args.config.as_deref(), overrides)?;
    init_logging(config.log_format, "info");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    spotsweep_server::run(config, listener, shutdown_signal()).await
}

/// The agent's GPUs: `--gpus` ids (or none), else what nvidia-smi lists; memory from
/// `--gpu-memory-gb`, else from nvidia-smi.
fn agent_gpus(ids: &[String], memory_gb: Option<f64>) -> Vec<spotsweep_agent::Gpu> {
    if ids.iter().any(|id| id == "none") {
        return Vec::new();
    }
    let detected = spotsweep_agent::detect_gpus();
    let mut gpus = if ids.is_empty() {
        detected
    } else {
        ids.iter()
            .map(|id| spotsweep_agent::Gpu {
                id: id.clone(),
                memory_mib: detected.iter().find(|g| &g.id == id).and_then(|g| g.memory_mib),
            })
            .collect()
    };
    if let Some(gb) = memory_gb {
        for g in &mut gpus {
            g.memory_mib = Some((gb * 1024.0).floor() as u64);
        }
    }
    gpus
}

fn parse_share(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("'{text}' is not I/N with I < N, as in 0/4");
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let (i, n): (u32, u32) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// Agent `index` of `of` on one machine: every `of`th GPU, or, with fewer GPUs than agents, one
/// GPU with its memory split between the agents that share it.
fn share_gpus(gpus: Vec<spotsweep_agent::Gpu>, index: u32, of: u32) -> Vec<spotsweep_agent::Gpu> {
    let count = gpus.len() as u32;
    if of <= 1 || count == 0 {
        return gpus;
    }
    if count >= of {
        return gpus
            .into_iter()
            .enumerate()
            .filter(|(k, _)| *k as u32 % of == index)
            .map(|(_, g)| g)
            .collect();
    }
    let mine = index % count;
    let sharers = (0..of).filter(|j| j % count == mine).count() as u64;
    let mut gpu = gpus[mine as usize].clone();
    gpu.memory_mib = gpu.memory_mib.map(|m| m / sharers);
    vec![gpu]
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Text, "info");
    if args.exit_with_parent {
        let parent = nix::unistd::getppid();
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
        // The parent may have died before the line above: then nobody would send the signal.
        if nix::unistd::getppid() != parent {
            anyhow::bail!("the parent daemon is gone");
        }
    }
    let name = args.name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "agent".into())
    });
    if let Some(gb) = args.gpu_memory_gb
        && !(gb.is_finite() && gb > 0.0)
    {
        anyhow::bail!("--gpu-memory-gb must be a number of GB above 0, not {gb}");
    }
    let mut gpus = agent_gpus(&args.gpus, args.gpu_memory_gb);
    if let Some((index, of)) = args.gpu_share {
        gpus = share_gpus(gpus, index, of);
    }
    if !gpus.is_empty() {
        let listed: Vec<String> = gpus
            .iter()
            .map(|g| match g.memory_mib {
                Some(m) => format!("{} ({:.1} GB)", g.id, m as f64 / 1024.0),
                None => format!("{} (memory unknown)", g.id),
            })
            .collect();
        tracing::info!(gpus = %listed.join(", "), "GPUs");
    }
    let config = spotsweep_agent::AgentConfig {
        server: args.server,
        token: args.token,
        slots: args.slots.max(1),
        gpus_by_slot: !args.gpus.is_empty(),
        gpus,
        gpu_overhead_mib: (args.gpu_overhead_gb.max(0.0) * 1024.0).round() as u64,
        pool: args.pool,
        name,
        code_cache: args.code_cache.unwrap_or_else(|| args.work_dir.join("code")),
        code_cache_bytes: (args.code_cache_gb.max(0.0) * (1u64 << 30) as f64) as u64,
        work_dir: args.work_dir,
        grace: Duration::from_secs(args.grace_seconds),
        lease_ttl: args.lease_ttl_ms.map(Duration::from_millis),
        checkpoint_interval: Duration::from_millis(args.checkpoint_interval_ms),
    };
    let watch = args.watch_preemption;
    let shutdown = async move {
        if watch {
            let host = std::env::var("GCE_METADATA_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "metadata.google.internal".into());
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = spotsweep_agent::preemption_notice(&host) => {}
            }
        } else {
            shutdown_signal().await;
        }
    };
    spotsweep_agent::run(config, shutdown).await
}

/// The sweeps table; `cost` is what each sweep's trials cost on fleet VMs.
fn print_sweeps(sweeps: &[SweepBody], cost: &std::collections::HashMap<i64, f64>) {
    println!(
        "{:>4}  {:<24} {:<10} {:>7} {:>7} {:>7} {:>7}  {:<14} {:>9} {:>9}",
        "ID", "NAME", "STATE", "DONE", "RUNNING", "FAILED", "TOTAL", "BEST", "ELAPSED", "COST"
    );
    for s in sweeps {
        let done = s.counts.completed + s.counts.pruned;
        let best = s
            .best
            .as_ref()
            .map(|b| format!("{:.6} (#{})", b.value, b.number))
            .unwrap_or_else(|| "-".into());
        let cost = cost
            .get(&s.id)
            .map(|c| format!("${c:.2}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>4}  {:<24} {:<10} {:>7} {:>7} {:>7} {:>7}  {:<14} {:>8.1}s {:>9}",
            s.id,
            truncate(&s.name, 24),
            s.state,
            done,
            s.counts.running,
            s.counts.failed,
            s.max_trials,
            best,
            s.elapsed_ms as f64 / 1000.0,
            cost
        );
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let daemon = args.daemon.daemon()?;
    let report = daemon.cost(args.id).await?;
    let cost: std::collections::HashMap<i64, f64> =
        report.sweeps.iter().map(|s| (s.sweep_id, s.cost_usd)).collect();
    match args.id {
        None => {
            let list = daemon.sweeps().await?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => {
                    print_sweeps(&list.sweeps, &cost);
                    for p in &report.pools {
                        let budget = p.budget_usd.map(|b| format!(" of ${b:.2}")).unwrap_or_default();
                        println!(
                            "pool {}: ${:.2}{budget} spent, {:.0} VM-seconds",
                            p.pool, p.spent_usd, p.vm_seconds
                        );
                    }
                }
            }
        }
        Some(id) => {
            let sweep = daemon.sweep(id).await?;
            let trials = daemon.trials(id).await?;
            match args.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"sweep": sweep, "trials": trials.trials})
                    )?
                ),
                Output::Table => {
                    print_sweeps(std::slice::from_ref(&sweep), &cost);
                    println!();
                    println!(
                        "{:>5}  {:<10} {:>14} {:>8}  {:<32}  PARAMS",
                        "TRIAL", "STATE", "VALUE", "ATTEMPTS", "RUN"
                    );
                    for t in &trials.trials {
                        let value = t.value.map(|v| format!("{v:.6}")).unwrap_or_else(|| "-".into());
                        println!(
                            "{:>5}  {:<10} {:>14} {:>8}  {:<32}  {}",
                            t.number, t.state, value, t.attempts, t.run_id, t.params
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Follows a sweep with a progress bar until it completes or is cancelled.
async fn follow(daemon: &Daemon, id: i64) -> anyhow::Result<SweepBody> {
    let first = daemon.sweep(id).await?;
    let bar = indicatif::ProgressBar::new(first.max_trials as u64);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} trials  {msg}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    loop {
        let s = daemon.sweep(id).await?;
        let ended = s.counts.completed + s.counts.failed + s.counts.pruned + s.counts.cancelled;
        bar.set_length(s.max_trials as u64);
        bar.set_position(ended as u64);
        let best = s
            .best
            .as_ref()
            .map(|b| format!("best {} = {:.6}", s.objective_metric, b.value))
            .unwrap_or_default();
        bar.set_message(format!(
            "{best}  running {}  failed {}",
            s.counts.running, s.counts.failed
        ));
        if matches!(
            s.state,
            spotsweep_api::SweepState::Completed | spotsweep_api::SweepState::Cancelled
        ) {
            bar.finish();
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_result(s: &SweepBody, tracking_uri: &str, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!(
        "sweep {} '{}' {}: {} completed, {} failed, {} pruned, {} cancelled in {:.1} s",
        s.id,
        s.name,
        s.state,
        s.counts.completed,
        s.counts.failed,
        s.counts.pruned,
        s.counts.cancelled,
        s.elapsed_ms as f64 / 1000.0
    );
    match &s.best {
        Some(b) => println!(
            "best: trial {} with {} = {} (MLflow run {} in experiment {} at {tracking_uri})",
            b.number, s.objective_metric, b.value, b.run_id, s.experiment_id
        ),
        None => println!("no trial completed"),
    }
    Ok(())
}

async fn run_all(args: RunArgs) -> anyhow::Result<bool> {
    init_logging(LogFormat::Text, "warn");
    let mut spec = read_spec(&args.spec)?;
    attach_source(&mut spec, spec_dir(&args.spec), &args.spec, None);
    let snapshot = code::pack_workdir(&spec, spec_dir(&args.spec), args.code.code_limit_mb)?;
    run_spec(spec, snapshot, args.agents, &args.data_dir, args.output).await
}

/// Records the git version of the code in the spec's `source`: of its workdir (relative to
/// `base`), else of `base`. `launched`: the spec file or notebook.
fn attach_source(
    spec: &mut serde_json::Value,
    base: &std::path::Path,
    launched: &std::path::Path,
    notebook: Option<&std::path::Path>,
) {
    let dir = match spec.get("workdir").and_then(|w| w.as_str()) {
        Some(workdir) => base.join(workdir),
        None => base.to_path_buf(),
    };
    source::attach(spec, &dir, launched, notebook);
}

/// The directory a spec file's relative paths start from.
fn spec_dir(spec: &std::path::Path) -> &std::path::Path {
    spec.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
}

/// With a `workdir`, the notebook's path becomes relative to it: trials run it in their copy.
fn notebook_in_workdir(spec: &mut serde_json::Value, base: &std::path::Path) -> anyhow::Result<()> {
    let Some(workdir) = spec.get("workdir").and_then(|w| w.as_str()) else {
        return Ok(());
    };
    let dir = base.join(workdir);
    let dir = dir
        .canonicalize()
        .with_context(|| format!("workdir {}", dir.display()))?;
    let input = spec["notebook"]["input"].as_str().unwrap_or_default().to_owned();
    let found = std::path::Path::new(&input)
        .canonicalize()
        .with_context(|| format!("the notebook {input}"))?;
    let inside = found.strip_prefix(&dir).map_err(|_| {
        anyhow::anyhow!(
            "the notebook {input} is not inside workdir {}: trials run in a copy of workdir, so it must be there",
            dir.display()
        )
    })?;
    spec["notebook"]["input"] = serde_json::Value::String(inside.display().to_string());
    Ok(())
}

async fn run_notebook(args: NotebookArgs) -> anyhow::Result<bool> {
    init_logging(LogFormat::Text, "warn");
    let text = std::fs::read_to_string(&args.parameters)
        .with_context(|| format!("cannot read the parameters file {}", args.parameters.display()))?;
    let job = notebook::NotebookJob {
        input: &args.notebook,
        output: &args.output,
        jobs: args.jobs,
        metric: &args.metric,
        goal: &args.goal,
        max_trials: args.max_trials,
    };
    let mut spec =
        notebook::spec(&job, &text).with_context(|| format!("in {}", args.parameters.display()))?;
    let mut base = spec_dir(&args.parameters).to_path_buf();
    if let Some(dir) = &args.workdir {
        spec["workdir"] = serde_json::Value::String(std::path::absolute(dir)?.display().to_string());
        base = std::env::current_dir()?;
    }
    attach_source(&mut spec, &base, &args.notebook, Some(&args.notebook));
    notebook_in_workdir(&mut spec, &base)?;
    let snapshot = code::pack_workdir(&spec, &base, args.code.code_limit_mb)?;
    run_spec(spec, snapshot, Some(args.jobs), &args.data_dir, args.format).await
}

/// Runs `spec` on an embedded daemon with local agents (the spec's parallelism by default),
/// following it to its end; true when it completed.
async fn run_spec(
    mut spec: serde_json::Value,
    snapshot: Option<code::Snapshot>,
    agents: Option<u32>,
    data_dir: &std::path::Path,
    output: Output,
) -> anyhow::Result<bool> {
    let parallelism = spec.get("parallelism").and_then(|p| p.as_u64()).unwrap_or(1) as u32;
    let overrides = Overrides {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        data_dir: Some(data_dir.to_path_buf()),
        local_agents: Some(agents.unwrap_or(parallelism).max(1)),
        // The all-in-one run prints its result; no browser needs the UI.
        mlflow_ui: Some("off".into()),
        ..Overrides::default()
    };
    let config = Config::load(None, overrides)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon_task = tokio::spawn(spotsweep_server::run(config, listener, async {
        let _ = stop_rx.await;
    }));
    let token_path = data_dir.join("admin.token");
    let mut daemon = Daemon::new(&url, None);
    for _ in 0..500 {
        if daemon.healthy().await && token_path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon = Daemon::new(
        &url,
        std::fs::read_to_string(&token_path)
            .ok()
            .map(|t| t.trim().to_owned()),
    );
    let result = async {
        code::attach(&daemon, &mut spec, snapshot).await?;
        let sweep = daemon.submit_sweep(&spec).await?;
        eprintln!("sweep {} '{}' submitted: {} trials, {} local agents", sweep.id, sweep.name, sweep.max_trials, parallelism.max(1));
        tokio::select! {
            s = follow(&daemon, sweep.id) => s,
            _ = shutdown_signal() => anyhow::bail!("interrupted; the sweep is stored and resumes with `spotsweep serve --local-agents N`"),
        }
    }
    .await;
    let _ = stop_tx.send(());
    daemon_task.await.context("the embedded daemon crashed")??;
    let sweep = result?;
    print_result(&sweep, &url, output)?;
    Ok(sweep.state == spotsweep_api::SweepState::Completed)
}

fn main() -> anyhow::Result<()> {
    // reqwest (agents, GCS artifacts, the Compute API) uses rustls with ring; install it once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Openapi => {
            print!("{}", spotsweep_server::api::openapi_json());
            Ok(())
        }
        Command::Token(TokenCommand::ResetAdmin {
            data_dir,
            database_url,
        }) => runtime.block_on(async {
            let url = match database_url.as_deref().map(str::trim) {
                Some(url) if !url.is_empty() => {
                    Some(spotsweep_server::config::DatabaseUrl::parse(url).map_err(anyhow::Error::msg)?)
                }
                _ => None,
            };
            let path = spotsweep_server::reset_admin_token(&data_dir, url.as_ref()).await?;
            eprintln!(
                "the admin token was replaced: the new one is in {} (the old one no longer works)",
                path.display()
            );
            Ok(())
        }),
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Agent(args) => runtime.block_on(agent(args)),
        Command::Submit(args) => runtime.block_on(async {
            let daemon = args.daemon.daemon()?;
            let mut spec = read_spec(&args.spec)?;
            attach_source(&mut spec, spec_dir(&args.spec), &args.spec, None);
            let snapshot = code::pack_workdir(&spec, spec_dir(&args.spec), args.code.code_limit_mb)?;
            code::attach(&daemon, &mut spec, snapshot).await?;
            let sweep = daemon.submit_sweep(&spec).await?;
            println!("{}", sweep.id);
            Ok(())
        }),
        Command::Status(args) => runtime.block_on(status(args)),
        Command::Rerun(args) => {
            let trial = runtime.block_on(async {
                let daemon = args.daemon.daemon()?;
                rerun::rerun(&daemon, args.sweep, args.trial, args.pool.as_deref(), args.wait).await
            })?;
            if args.wait && trial.state != spotsweep_api::TrialState::Completed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Checkout(args) => runtime.block_on(async {
            let daemon = args.daemon.daemon()?;
            rerun::checkout(&daemon, args.sweep, args.trial, &args.dir).await
        }),
        Command::Watch(args) => runtime.block_on(async {
            let daemon = args.daemon.daemon()?;
            let sweep = follow(&daemon, args.id).await?;
            print_result(&sweep, daemon.base(), Output::Table)
        }),
        Command::Run(args) => {
            let completed = runtime.block_on(run_all(args))?;
            std::process::exit(if completed { 0 } else { 1 });
        }
        Command::Notebook(args) => {
            let completed = runtime.block_on(run_notebook(args))?;
            std::process::exit(if completed { 0 } else { 1 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(n: usize) -> Vec<spotsweep_agent::Gpu> {
        (0..n)
            .map(|i| spotsweep_agent::Gpu {
                id: i.to_string(),
                memory_mib: Some(40_960),
            })
            .collect()
    }

    #[test]
    fn local_agents_share_the_gpus_without_overlap() {
        let ids =
            |v: Vec<spotsweep_agent::Gpu>| v.into_iter().map(|g| (g.id, g.memory_mib)).collect::<Vec<_>>();
        // More GPUs than agents: every other GPU each.
        assert_eq!(
            ids(share_gpus(gpus(4), 1, 2)),
            [("1".into(), Some(40_960)), ("3".into(), Some(40_960))]
        );
        // Fewer: agents 0 and 2 split GPU 0, agent 1 has GPU 1 to itself.
        assert_eq!(ids(share_gpus(gpus(2), 0, 3)), [("0".into(), Some(20_480))]);
        assert_eq!(ids(share_gpus(gpus(2), 2, 3)), [("0".into(), Some(20_480))]);
        assert_eq!(ids(share_gpus(gpus(2), 1, 3)), [("1".into(), Some(40_960))]);
        assert!(share_gpus(Vec::new(), 0, 4).is_empty());
        assert_eq!(parse_share("1/4"), Ok((1, 4)));
        assert!(parse_share("4/4").is_err() && parse_share("x").is_err());
    }
}
