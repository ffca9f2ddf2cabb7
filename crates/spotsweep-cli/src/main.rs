//! The one `spotsweep` binary: `serve` runs the daemon, `openapi` prints its API document.
//! Thin on purpose: it parses flags, sets up logging and calls into the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
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
    /// Run the daemon: the MLflow-compatible tracking server and spotsweep's API.
    Serve(ServeArgs),
    /// Print the OpenAPI document of /api/v1.
    Openapi,
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
    /// Where artifacts are stored: a directory or gs://bucket/prefix [default: <data-dir>/artifacts].
    #[arg(long, env = "SPOTSWEEP_ARTIFACTS_DESTINATION")]
    artifacts_destination: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "SPOTSWEEP_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Accept requests without a token (only allowed on a loopback address).
    #[arg(long, env = "SPOTSWEEP_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    no_auth: Option<bool>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPOTSWEEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        artifacts_destination: args.artifacts_destination,
        log_format: args.log_format,
        no_auth: args.no_auth,
    };
    let config = Config::load(args.config.as_deref(), overrides)?;
    init_logging(config.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    spotsweep_server::run(config, listener, shutdown_signal()).await
}

fn main() -> anyhow::Result<()> {
    // reqwest (GCS artifacts, the Compute API) uses rustls with ring; install it once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            print!("{}", spotsweep_server::api::openapi_json());
            Ok(())
        }
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(args))
        }
    }
}
