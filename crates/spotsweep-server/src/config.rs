//! The daemon's configuration: defaults, then a TOML file, then `SPOTSWEEP_*` environment
//! variables and flags (the CLI merges those two through clap and hands them over as
//! [`Overrides`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" | "human" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format '{other}': use 'text' or 'json'")),
        }
    }
}

/// A PostgreSQL URL (`postgres://user:password@host/db`). Its `Debug` and `Display` hide the
/// password: configurations are logged, secrets never are.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Checks the scheme; anything but PostgreSQL is refused with what to write instead.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self(url.to_owned()))
        } else {
            Err(format!(
                "database URL '{}' is not a PostgreSQL URL: write postgres://USER:PASSWORD@HOST:PORT/DATABASE, \
                 or leave it out for the SQLite file in the data dir",
                Self(url.to_owned())
            ))
        }
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // scheme://user:password@rest -> scheme://user:***@rest
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
        match rest.split_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                write!(f, "{scheme}://{user}:***@{host}")
            }
            _ => f.write_str(&self.0),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// The resolved configuration of `spotsweep serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on (default `127.0.0.1:5000`).
    pub listen: SocketAddr,
    /// A PostgreSQL database shared by several daemons; `None`: the SQLite file
    /// `<data_dir>/spotsweep.db`.
    pub database_url: Option<DatabaseUrl>,
    /// Holds `spotsweep.db`, `artifacts/` and `admin.token` (default `./spotsweep-data`).
    pub data_dir: PathBuf,
    /// Where artifact bytes go: a directory or `gs://bucket/prefix` (default
    /// `<data_dir>/artifacts`).
    pub artifacts_destination: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Serve without tokens; only allowed on a loopback address.
    pub no_auth: bool,
    /// Agents of the `local` pool to run on this machine (default 0).
    pub local_agents: u32,
    /// The daemon's URL as agents on VMs reach it (default: the listen address).
    pub public_url: Option<String>,
    /// The pools of the `[pools.NAME]` tables.
    pub pools: std::collections::BTreeMap<String, crate::pools::Pool>,
    /// How often the fleet acts (`[fleet]`: `tick`, `reconcile`, `zone_backoff`).
    pub fleet: crate::fleet::FleetTiming,
    /// The executable VMs run as their agent (default: this daemon's own).
    pub agent_binary: Option<PathBuf>,
    /// MLflow's web UI: `off`, the path of a built UI, or `None` to find the installed `mlflow`
    /// package's.
    pub mlflow_ui: Option<String>,
    /// The largest code snapshot the daemon takes, in bytes (`code_max_mb`, default 512 MiB).
    pub code_max_bytes: u64,
}

/// Default `code_max_mb`: well above the CLI's 200 MiB packing limit, so that a snapshot the CLI
/// packs is taken.
pub const DEFAULT_CODE_MAX_MB: u64 = 512;

/// The TOML file's shape: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    artifacts_destination: Option<String>,
    log_format: Option<LogFormat>,
    no_auth: Option<bool>,
    local_agents: Option<u32>,
    public_url: Option<String>,
    pools: Option<toml::Table>,
    fleet: Option<FleetFile>,
    agent_binary: Option<PathBuf>,
    mlflow_ui: Option<String>,
    code_max_mb: Option<u64>,
}

/// `[fleet]`: timings, for tests and simulations mostly.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    tick: Option<String>,
    reconcile: Option<String>,
    zone_backoff: Option<String>,
}

/// Values from flags or the environment; `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen` / `SPOTSWEEP_LISTEN`
    pub listen: Option<SocketAddr>,
    /// `--data-dir` / `SPOTSWEEP_DATA_DIR`
    pub data_dir: Option<PathBuf>,
    /// `--database-url` / `SPOTSWEEP_DATABASE_URL`
    pub database_url: Option<String>,
    /// `--artifacts-destination` / `SPOTSWEEP_ARTIFACTS_DESTINATION`
    pub artifacts_destination: Option<String>,
    /// `--log-format` / `SPOTSWEEP_LOG_FORMAT`
    pub log_format: Option<LogFormat>,
    /// `--no-auth` / `SPOTSWEEP_NO_AUTH`
    pub no_auth: Option<bool>,
    /// `--local-agents` / `SPOTSWEEP_LOCAL_AGENTS`
    pub local_agents: Option<u32>,
    /// `--mlflow-ui` / `SPOTSWEEP_MLFLOW_UI`
    pub mlflow_ui: Option<String>,
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config file {0}: {1}")]
    Parse(PathBuf, String),
    /// `--no-auth` on a non-loopback address.
    #[error(
        "refusing to serve without authentication on {0}: --no-auth is only allowed on a loopback address \
         (127.0.0.1 or ::1); drop --no-auth and use the admin token, or listen on loopback"
    )]
    NoAuthOffLoopback(SocketAddr),
    /// The database URL is not one the daemon can use.
    #[error("{0}")]
    Database(String),
}

fn fleet_timing(f: FleetFile) -> Result<crate::fleet::FleetTiming, String> {
    let mut t = crate::fleet::FleetTiming::default();
    let d = |field: &str, v: Option<String>, into: &mut std::time::Duration| -> Result<(), String> {
        if let Some(v) = v {
            *into = crate::pools::parse_duration(&v).map_err(|m| format!("fleet.{field}: {m}"))?;
        }
        Ok(())
    };
    d("tick", f.tick, &mut t.tick)?;
    d("reconcile", f.reconcile, &mut t.reconcile)?;
    d("zone_backoff", f.zone_backoff, &mut t.zone_backoff)?;
    Ok(t)
}

impl Config {
    /// Resolves defaults < file < overrides, and checks the result.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let from_file = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::Parse(path.to_owned(), e.to_string()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = overrides
            .data_dir
            .or(from_file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./spotsweep-data"));
        let artifacts_destination = overrides
            .artifacts_destination
            .or(from_file.artifacts_destination)
            .unwrap_or_else(|| data_dir.join("artifacts").display().to_string());
        let database_url = match overrides.database_url.or(from_file.database_url) {
            Some(url) if !url.trim().is_empty() => {
                Some(DatabaseUrl::parse(&url).map_err(ConfigError::Database)?)
            }
            _ => None,
        };
        let config = Self {
            listen: overrides
                .listen
                .or(from_file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5000))),
            database_url,
            data_dir,
            artifacts_destination,
            log_format: overrides.log_format.or(from_file.log_format).unwrap_or_default(),
            no_auth: overrides.no_auth.or(from_file.no_auth).unwrap_or(false),
            local_agents: overrides.local_agents.or(from_file.local_agents).unwrap_or(0),
            public_url: from_file.public_url,
            pools: match (from_file.pools, file) {
                (Some(raw), Some(path)) => {
                    crate::pools::resolve(raw).map_err(|m| ConfigError::Parse(path.to_owned(), m))?
                }
                _ => Default::default(),
            },
            agent_binary: from_file.agent_binary,
            mlflow_ui: overrides.mlflow_ui.or(from_file.mlflow_ui),
            code_max_bytes: from_file
                .code_max_mb
                .unwrap_or(DEFAULT_CODE_MAX_MB)
                .saturating_mul(1 << 20),
            fleet: fleet_timing(from_file.fleet.unwrap_or_default())
                .map_err(|m| ConfigError::Parse(file.map(Path::to_owned).unwrap_or_default(), m))?,
        };
        if config.no_auth && !config.listen.ip().is_loopback() {
            return Err(ConfigError::NoAuthOffLoopback(config.listen));
        }
        Ok(config)
    }

    /// The SQLite database file (used when no `database_url` is set).
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("spotsweep.db")
    }

    /// Where the first admin token is written.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_defaults_file_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\ndata_dir = \"/tmp/x\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.artifacts_destination, "/tmp/x/artifacts");
        let c = Config::load(
            Some(&file),
            Overrides {
                listen: Some("127.0.0.1:8000".parse().unwrap()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 8000);
        let d = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(d.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(d.data_dir, PathBuf::from("./spotsweep-data"));
    }

    #[test]
    fn a_database_url_must_be_postgres_and_never_shows_its_password() {
        let o = |url: &str| Overrides {
            database_url: Some(url.into()),
            ..Overrides::default()
        };
        let c = Config::load(None, o("postgres://lab:s3cret@db.internal:5432/spotsweep")).unwrap();
        let url = c.database_url.clone().unwrap();
        assert_eq!(url.expose(), "postgres://lab:s3cret@db.internal:5432/spotsweep");
        assert_eq!(url.to_string(), "postgres://lab:***@db.internal:5432/spotsweep");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(Config::load(None, o("postgresql:///spotsweep?host=/run/postgresql")).is_ok());
        assert!(Config::load(None, o("")).unwrap().database_url.is_none());
        let Err(ConfigError::Database(why)) = Config::load(None, o("mysql://root:pw@h/db")) else {
            panic!("a MySQL URL was accepted");
        };
        assert!(why.contains("postgres://") && !why.contains(":pw@"), "{why}");
    }

    #[test]
    fn no_auth_needs_loopback_and_unknown_keys_fail() {
        let o = Overrides {
            listen: Some("0.0.0.0:5000".parse().unwrap()),
            no_auth: Some(true),
            ..Overrides::default()
        };
        assert!(matches!(
            Config::load(None, o),
            Err(ConfigError::NoAuthOffLoopback(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listn = \"127.0.0.1:7000\"\n").unwrap();
        assert!(matches!(
            Config::load(Some(&file), Overrides::default()),
            Err(ConfigError::Parse(..))
        ));
    }
}
