//! The CLI's view of a daemon: where it is and which token to use.

use std::path::Path;

use anyhow::Context;

/// A daemon to talk to: `spotsweep-api`'s typed client.
pub type Daemon = spotsweep_api::client::Client;

/// The daemon of flags or `SPOTSWEEP_SERVER`/`SPOTSWEEP_TOKEN`, else of the data dir's
/// `server.url` and `admin.token` (written by `spotsweep serve`).
pub fn locate(server: Option<String>, token: Option<String>, data_dir: &Path) -> anyhow::Result<Daemon> {
    let url = match server {
        Some(s) => s,
        None => std::fs::read_to_string(data_dir.join("server.url"))
            .map(|s| s.trim().to_owned())
            .with_context(|| {
                format!(
                    "no daemon given: pass --server URL, set SPOTSWEEP_SERVER, or run `spotsweep serve --data-dir {}`",
                    data_dir.display()
                )
            })?,
    };
    let token = token.or_else(|| {
        std::fs::read_to_string(data_dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_owned())
    });
    Ok(Daemon::new(&url, token))
}

/// Reads a spec file: YAML or JSON (JSON is YAML).
pub fn read_spec(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not valid YAML or JSON", path.display()))?;
    Ok(value)
}
