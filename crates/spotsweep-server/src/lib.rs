//! The spotsweep daemon: configuration, authentication, the `/api/v1` routes and their OpenAPI
//! document, and the assembly of everything (MLflow tracking included) into one HTTP server
//! with a graceful shutdown.
//!
//! `main` only parses flags and sets up logging; tests start the same [`run`] on `127.0.0.1:0`.
//! This crate may use every library crate; nothing but the CLI may use it.

pub mod api;
pub mod auth;
pub mod code;
pub mod config;
pub mod dashboard;
pub mod events;
pub mod fleet;
pub mod leadership;
pub mod local;
pub mod pools;
pub mod pools_api;
pub mod replicas;
pub mod sweeps;
pub mod tokens;
pub mod ui;
mod wire;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use spotsweep_mlflow::{ArtifactRepo, MlflowState};
use spotsweep_store::{
    FleetStore, LeaderStore, ModelStore, PgOptions, PgStore, RegistryStore, SqliteOptions, SqliteStore,
    SweepStore, TokenStore, TraceStore, TrackingStore,
};
use tokio::net::TcpListener;

pub use config::{Config, ConfigError, LogFormat, Overrides};

use crate::auth::Auth;

/// The daemon's version, as `/version` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the `/api/v1` handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// API token records.
    pub tokens: Arc<dyn TokenStore>,
    /// The live token set that requests are checked against.
    pub auth: Arc<Auth>,
    /// Sweeps, trials and leases.
    pub sweeps: Arc<dyn SweepStore>,
    /// MLflow's records (the dashboard reads trials' metric histories).
    pub tracking: Arc<dyn spotsweep_store::TrackingStore>,
    /// Wake-ups between handlers and background loops.
    pub signals: Arc<sweeps::Signals>,
    /// The fleet's records.
    pub fleet: Arc<dyn FleetStore>,
    /// The configured pools.
    pub pools: Arc<std::collections::BTreeMap<String, pools::Pool>>,
    /// The executable VMs download and run as their agent.
    pub agent_binary: Arc<std::path::PathBuf>,
    /// Pools whose budget allows no new lease (set by the fleet).
    pub budget_blocked: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Zones backed off after a stockout: pool, then zone, then until when (ms since the epoch).
    pub zone_backoffs: Arc<std::sync::Mutex<ZoneBackoffs>>,
    /// The daemon's secret, from which VM and trial tokens are derived and browser sessions
    /// signed.
    pub daemon_secret: Arc<String>,
    /// MLflow's web UI, where it was found.
    pub mlflow_ui: Arc<ui::MlflowUi>,
    /// Whether session cookies are marked Secure (the daemon is reached over HTTPS).
    pub secure_cookies: bool,
    /// Code snapshots (`<data-dir>/code`).
    pub code: Arc<code::CodeStore>,
    /// The artifact store behind the MLflow proxy (the daemon logs sweep runs' artifacts).
    pub artifacts: Arc<ArtifactRepo>,
    /// Which of the loops that must run once this daemon runs.
    pub leadership: Arc<leadership::Leadership>,
    /// With other daemons on the database: reads the tokens they made.
    pub reloader: Option<Arc<auth::Reloader>>,
}

/// Zones backed off after a stockout: pool, then zone, then until when (ms since the epoch).
pub type ZoneBackoffs = std::collections::HashMap<String, std::collections::BTreeMap<String, i64>>;

async fn not_found() -> impl IntoResponse {
    spotsweep_mlflow::MlflowError {
        error_code: spotsweep_mlflow::ErrorCode::EndpointNotFound,
        message: "No such endpoint. The MLflow API is under /api/2.0/mlflow, spotsweep's own under /api/v1 \
                  (see /api/v1/openapi.json)."
            .into(),
    }
}

/// Every route of the daemon, behind the token check.
pub fn router(state: AppState, mlflow: MlflowState) -> Router {
    let (models, traces) = (mlflow.models.clone(), mlflow.traces.clone());
    let (api, _) = api::router().split_for_parts();
    let openapi = api::openapi_json();
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .route("/version", get(|| async { VERSION }))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        // The dashboard reads whole tables: compressed for browsers that take it (fastest level;
        // the event stream is never compressed, so that each event leaves at once; nor are code
        // snapshots, which are gzip already).
        .merge(api.with_state(state.clone()).layer({
            use tower_http::compression::predicate::{NotForContentType, Predicate};
            tower_http::compression::CompressionLayer::new()
                .quality(tower_http::CompressionLevel::Fastest)
                .compress_when(
                    tower_http::compression::DefaultPredicate::new()
                        .and(NotForContentType::const_new("application/gzip")),
                )
        }))
        .merge(ui::router().with_state(state.clone()))
        .merge(dashboard::router().with_state(state.clone()))
        .merge(spotsweep_mlflow::router(mlflow))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            auth::AuthState {
                auth: state.auth.clone(),
                fleet: state.fleet.clone(),
                models,
                traces,
                daemon_secret: state.daemon_secret.clone(),
                reloader: state.reloader.clone(),
            },
            auth::require_token,
        ))
        // Inside the trace layer, so that a panic is logged in the request's span.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Runs one round of a background task, catching a panic: it is logged with `what` and the
/// round answers `None`, so that the loop goes on to its next round instead of dying silently.
pub(crate) async fn caught<T>(what: &str, round: impl Future<Output = T>) -> Option<T> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(round).catch_unwind().await {
        Ok(done) => Some(done),
        Err(panic) => {
            tracing::error!(panic = %panic_message(panic.as_ref()), "a bug while {what}; carrying on");
            None
        }
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// The answer to a request whose handler panicked: logged inside the request's span (method
/// and path), answered once as a 500 in both error envelopes; the next request is unaffected.
fn panic_response(panic: Box<dyn std::any::Any + Send>) -> axum::response::Response {
    tracing::error!(panic = %panic_message(panic.as_ref()), "a handler panicked; answered 500");
    let body = serde_json::json!({
        "error_code": "INTERNAL_ERROR",
        "code": "internal",
        "message": "internal error: a bug in the daemon (see its log); nothing of this request was written",
    });
    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

/// Database upkeep off the request path: a WAL checkpoint four times a second, so that writes
/// never pay for one (see `SqliteStore::checkpoint`), and fresh planner statistics every ten
/// seconds.
async fn checkpoint_loop(store: Arc<SqliteStore>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(Err(e)) = caught("checkpointing the WAL", store.checkpoint()).await {
                    tracing::debug!(error = %e, "background checkpoint failed; will retry");
                }
                if n % 40 == 39
                    && let Some(Err(e)) = caught("refreshing planner statistics", store.optimize()).await
                {
                    tracing::debug!(error = %e, "refreshing planner statistics failed; will retry");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// The tokens of the local agents, one each: an agent's scope (its pool's leases under its own
/// name, its trials' runs), never an API token. Fresh at every start: the agents start with the
/// daemon.
fn local_agent_tokens(state: &AppState, agents: u32) -> Vec<String> {
    (0..agents)
        .map(|i| {
            let token = auth::new_secret();
            state.auth.add_vm(
                auth::hash_token(&token),
                auth::VmScope {
                    name: local::agent_name(i),
                    pool: local::POOL.into(),
                },
            );
            token
        })
        .collect()
}

/// An exclusive lock on a data dir (`<data-dir>/spotsweep.lock`), held while a daemon or an
/// offline command uses it: two daemons on one database would each believe they own its leases
/// and VMs. The operating system releases it when the process ends, even on `kill -9`.
pub struct DataDirLock(#[allow(dead_code)] std::fs::File);

impl DataDirLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = data_dir.join("spotsweep.lock");
        let file = open_private(&path).with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self(file)),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another spotsweep daemon (or command) is using {}: stop it first (it holds {})",
                data_dir.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

/// Opens (creating) a file readable by its owner only.
fn open_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Makes the database files readable by their owner only (they hold every run and the token
/// hashes); SQLite creates them with the process's umask.
fn restrict_database_files(database: &std::path::Path) {
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut path = database.as_os_str().to_owned();
        path.push(suffix);
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = ?path, error = %e, "cannot make a database file private");
        }
    }
}

/// `spotsweep token reset-admin`: revokes the admin token and writes a new one to
/// `<data-dir>/admin.token`. Returns that path. On the SQLite file, with no daemon on
/// `data_dir`; on PostgreSQL the daemons may run: they hear of it and drop the old token.
pub async fn reset_admin_token(
    data_dir: &std::path::Path,
    database_url: Option<&config::DatabaseUrl>,
) -> anyhow::Result<std::path::PathBuf> {
    let path = data_dir.join("admin.token");
    if let Some(url) = database_url {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let store = PgStore::open(&PgOptions::new(url.expose()))
            .await
            .with_context(|| format!("cannot open database {url}"))?;
        let done = auth::reset_admin_token(&store, &path).await;
        if done.is_ok() {
            // Live daemons read the tokens again (any name but theirs will do as the sender).
            let _ = store
                .announce(&format!("reset-admin {}", replicas::News::Tokens.word()))
                .await;
        }
        store.close().await;
        done?;
        return Ok(path);
    }
    let _lock = DataDirLock::acquire(data_dir)?;
    let database = data_dir.join("spotsweep.db");
    anyhow::ensure!(
        database.exists(),
        "no spotsweep database in {} (is it the daemon's --data-dir?)",
        data_dir.display()
    );
    let store = SqliteStore::open(&SqliteOptions::new(&database))
        .await
        .with_context(|| format!("cannot open database {}", database.display()))?;
    let done = auth::reset_admin_token(&store, &path).await;
    store.close().await;
    done?;
    Ok(path)
}

/// Several replicas share one database but not their data dirs: artifacts written under one
/// replica's data dir are missing on the others. Says so at start when another daemon is live
/// on the database (it holds a role) and the artifact root is the default one.
async fn warn_if_artifacts_are_local_to_a_replica(config: &Config, store: &dyn LeaderStore, me: &str) {
    let default_root = config.data_dir.join("artifacts").display().to_string();
    if config.artifacts_destination != default_root {
        return;
    }
    // The first daemon on a database takes `expiry` at once: its holder is live.
    if let Ok(Some(other)) = store.leader("expiry").await
        && other != me
    {
        tracing::warn!(
            other_daemon = %other,
            artifacts = %default_root,
            "other daemons are live on this database, and artifacts go to this daemon's own data dir: \
             runs logged through one daemon will miss their artifacts on the others; give every daemon the \
             same --artifacts-destination (gs://BUCKET/PREFIX, or a directory they all mount)"
        );
    }
}

/// Starts a manager per Compute Engine pool; their tasks end when `stop` changes.
async fn start_fleet(
    config: &Config,
    state: &AppState,
    url: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let gce: Vec<(&String, &pools::GcePool)> = config
        .pools
        .iter()
        .filter_map(|(name, p)| match p {
            pools::Pool::Gce(g) => Some((name, g.as_ref())),
            pools::Pool::Local { .. } => None,
        })
        .collect();
    if gce.is_empty() {
        return Ok(tasks);
    }
    let public_url = config.public_url.clone().unwrap_or_else(|| url.to_string());
    for (name, pool) in gce {
        let tokens: Arc<dyn gcp_auth::TokenProvider> = match &pool.credentials {
            Some(path) => Arc::new(
                gcp_auth::CustomServiceAccount::from_file(path)
                    .with_context(|| format!("pools.{name}.credentials: cannot use {}", path.display()))?,
            ),
            None => gcp_auth::provider().await.with_context(|| {
                format!("pools.{name}: no Google credentials (set credentials = \"key.json\")")
            })?,
        };
        let manager = fleet::PoolManager::new(
            name,
            pool.clone(),
            tokens,
            state,
            &public_url,
            config.fleet.clone(),
        )
        .await?;
        tracing::info!(pool = %name, project = %pool.project, zones = ?pool.zones, "managing a Compute Engine pool");
        tasks.push(tokio::spawn(manager.run(stop.clone())));
    }
    Ok(tasks)
}

/// Every store the daemon uses: what a database it can run on implements.
pub trait Backend:
    TrackingStore + SweepStore + FleetStore + TokenStore + RegistryStore + ModelStore + TraceStore + LeaderStore
{
}

impl<S> Backend for S where
    S: TrackingStore
        + SweepStore
        + FleetStore
        + TokenStore
        + RegistryStore
        + ModelStore
        + TraceStore
        + LeaderStore
{
}

/// The database the daemon runs on, for what only one kind of database needs.
enum Database {
    /// The SQLite file in the data dir: this daemon alone, its WAL kept small by a loop.
    Sqlite(Arc<SqliteStore>),
    /// A PostgreSQL database that other daemons may share: news goes between them.
    Postgres(Arc<PgStore>),
}

/// Runs the daemon on `listener` until `shutdown` completes, then lets in-flight requests
/// finish and closes the database cleanly.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    match &config.database_url {
        None => {
            let store = Arc::new(
                SqliteStore::open(&SqliteOptions::new(config.database_path()))
                    .await
                    .with_context(|| format!("cannot open database {}", config.database_path().display()))?,
            );
            restrict_database_files(&config.database_path());
            serve(config, listener, shutdown, store.clone(), Database::Sqlite(store)).await
        }
        Some(url) => {
            let store = Arc::new(
                PgStore::open(&PgOptions::new(url.expose()))
                    .await
                    .with_context(|| format!("cannot open database {url}"))?,
            );
            serve(
                config,
                listener,
                shutdown,
                store.clone(),
                Database::Postgres(store),
            )
            .await
        }
    }
}

/// [`run`] on an open store.
async fn serve<S: Backend>(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    store: Arc<S>,
    database: Database,
) -> anyhow::Result<()> {
    let auth = Arc::new(Auth::load(store.as_ref(), !config.no_auth).await?);
    let token_path = config.admin_token_path();
    if auth::bootstrap_admin_token(store.as_ref(), &auth, &token_path).await? {
        tracing::info!(path = %token_path.display(), "first start: wrote the admin token (mode 0600)");
    } else if auth.enabled {
        tracing::info!(path = %token_path.display(), "API tokens required; the admin token was written here at first start");
    }
    if !auth.enabled {
        tracing::warn!("--no-auth: every request is accepted without a token (loopback only)");
    }
    let artifacts = Arc::new(ArtifactRepo::open(&config.artifacts_destination)?);
    let daemon_secret = Arc::new(store.daemon_secret().await?);
    let (holder, reloader, database_name) = match &database {
        // One daemon owns a SQLite data dir (the lock above), so it leads under the install's
        // id: after a crash it takes its roles back at once instead of waiting out its old
        // leases.
        Database::Sqlite(_) => (
            store.daemon_id().await?,
            None,
            config.database_path().display().to_string(),
        ),
        // Replicas share the install's id: each start is a holder of its own, and after a
        // crash another replica (or this one, restarted) takes the roles within a lease.
        Database::Postgres(_) => {
            let url = config
                .database_url
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_default();
            let holder = format!(
                "{}/{}",
                listener.local_addr()?,
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            let reloader = auth::Reloader::new(store.clone(), store.clone(), daemon_secret.clone());
            (holder, Some(Arc::new(reloader)), url)
        }
    };
    let leadership = leadership::Leadership::new(store.clone(), holder.clone());
    tracing::info!(artifacts = artifacts.location(), database = %database_name, daemon = %holder, "storage ready");
    if let Database::Postgres(_) = &database {
        warn_if_artifacts_are_local_to_a_replica(&config, store.as_ref(), &holder).await;
    }

    let state = AppState {
        tokens: store.clone(),
        auth,
        sweeps: store.clone(),
        tracking: store.clone(),
        signals: Arc::default(),
        fleet: store.clone(),
        pools: Arc::new(config.pools.clone()),
        budget_blocked: Arc::default(),
        zone_backoffs: Arc::default(),
        daemon_secret,
        mlflow_ui: Arc::new(ui::locate(config.mlflow_ui.as_deref()).await),
        secure_cookies: config
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://")),
        code: Arc::new(
            code::CodeStore::open(code::dir_in(&config.data_dir), config.code_max_bytes)
                .with_context(|| format!("cannot open the code store in {}", config.data_dir.display()))?,
        ),
        artifacts: artifacts.clone(),
        leadership: leadership.clone(),
        reloader: reloader.clone(),
        agent_binary: Arc::new(match &config.agent_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("cannot find the spotsweep executable")?,
        }),
    };
    match state.mlflow_ui.as_ref() {
        ui::MlflowUi::Found(path) => tracing::info!(path = %path.display(), "serving MLflow's web UI at /"),
        ui::MlflowUi::Missing(why) => {
            tracing::info!(%why, "MLflow's web UI is not served (pip install mlflow, or --mlflow-ui PATH)")
        }
    }
    let mlflow = MlflowState::new(store.clone(), artifacts);
    let app = router(state.clone(), mlflow);
    // Background loops stop when this is notified, after the server has drained.
    let (stop_loops, loops_stopped) = tokio::sync::watch::channel(false);
    let expiry = tokio::spawn(sweeps::expire_leases_loop(state.clone(), loops_stopped.clone()));
    let loops_stopped_fleet = loops_stopped.clone();
    let mut upkeep = Vec::new();
    match &database {
        // The WAL upkeep is the SQLite file's own: one daemon per file, no role needed.
        Database::Sqlite(sqlite) => {
            upkeep.push(tokio::spawn(checkpoint_loop(
                sqlite.clone(),
                loops_stopped.clone(),
            )));
        }
        Database::Postgres(pg) => {
            let reloader = reloader.clone().expect("a shared database has a reloader");
            upkeep.extend(replicas::start(
                pg.clone(),
                &state,
                reloader,
                holder.clone(),
                loops_stopped.clone(),
            ));
        }
    }
    let leading = tokio::spawn(leadership.clone().run(loops_stopped));
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    // The CLI on this machine finds the daemon here.
    std::fs::write(config.data_dir.join("server.url"), format!("{url}\n"))?;
    // Trials that ran through a restart keep their tokens.
    sweeps::sync_trial_tokens(&state).await?;
    let local = if config.local_agents > 0 {
        let tokens = state
            .auth
            .enabled
            .then(|| local_agent_tokens(&state, config.local_agents));
        Some(local::Supervisor::start(local::LocalPool {
            agents: config.local_agents,
            server: url.clone(),
            tokens,
            work_dir: config.data_dir.join("agents"),
            exe: std::env::current_exe().context("cannot find the spotsweep executable for local agents")?,
        }))
    } else {
        None
    };
    let fleet = start_fleet(&config, &state, &url, loops_stopped_fleet).await?;
    tracing::info!(local_agents = config.local_agents, "listening on {url}");
    // On shutdown, local agents stop first (reporting their trials preempted while the server
    // still answers); then the server drains.
    let signals = state.signals.clone();
    let shutdown = async move {
        shutdown.await;
        // Live-update streams never end on their own: end them so that the server can drain.
        signals.changes.close();
        if let Some(local) = local {
            tracing::info!("stopping local agents");
            local.stop().await;
        }
    };
    // No Nagle: a response written in two segments would otherwise wait for the client's
    // delayed ACK (40 ms on Linux), which is most of a small request's tail latency.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("server error")?;
    tracing::info!("shutting down: requests drained, closing the database");
    let _ = stop_loops.send(true);
    let _ = expiry.await;
    for task in upkeep {
        let _ = task.await;
    }
    for f in fleet {
        let _ = f.await;
    }
    // Its roles pass to another daemon at once.
    let _ = leading.await;
    match database {
        Database::Sqlite(sqlite) => sqlite.close().await,
        Database::Postgres(pg) => pg.close().await,
    }
    Ok(())
}
