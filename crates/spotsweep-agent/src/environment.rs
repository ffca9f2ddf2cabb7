//! The environment a machine runs trials in: agent version, OS, the Python a trial's command
//! finds on its PATH with its `pip freeze`, and the GPUs' model, driver and CUDA version.
//! Probed once per machine (per PATH), then referenced from every run: short facts as tags,
//! `spotsweep.environment` = the sha256 of the full record, which is the run's
//! `environment.json` artifact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::process::Command;

/// How long one probe (`pip freeze`, `nvidia-smi`) may take: a slow one is left out, never
/// waited on by every trial.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// A probed environment.
#[derive(Debug)]
pub struct Environment {
    /// The full record, as JSON.
    pub json: String,
    /// The tags every run gets.
    pub tags: Vec<(&'static str, String)>,
}

/// Environments probed on this machine, by PATH: shared by its trials.
#[derive(Clone, Default)]
pub struct Environments(Arc<tokio::sync::Mutex<HashMap<String, Arc<Environment>>>>);

impl Environments {
    /// The environment a command with `path` as its PATH runs in, probed the first time.
    pub async fn get(&self, path: &str) -> Arc<Environment> {
        let mut known = self.0.lock().await;
        if let Some(env) = known.get(path) {
            return env.clone();
        }
        let env = Arc::new(probe(path).await);
        known.insert(path.to_owned(), env.clone());
        env
    }
}

/// Runs `program args` with PATH = `path`; its stdout when it succeeds within the timeout.
async fn output(path: &str, program: &str, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE_TIMEOUT, cmd.output())
        .await
        .ok()?
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The CUDA version in `nvidia-smi`'s header (`... CUDA Version: 12.4 |`).
fn cuda_version(header: &str) -> Option<String> {
    let rest = &header[header.find("CUDA Version:")? + "CUDA Version:".len()..];
    let version: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!version.is_empty()).then_some(version)
}

async fn probe(path: &str) -> Environment {
    let os_release = std::fs::read_to_string("/etc/os-release").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
    });
    let os = match os_release {
        Some(name) => format!("{} {} ({name})", std::env::consts::OS, std::env::consts::ARCH),
        None => format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
    };
    let mut python = None;
    for program in ["python3", "python"] {
        let script = "import platform, sys; print(platform.python_version()); print(sys.executable)";
        if let Some(out) = output(path, program, &["-c", script]).await {
            let mut lines = out.lines();
            let version = lines.next().unwrap_or_default().trim().to_owned();
            let executable = lines.next().unwrap_or_default().trim().to_owned();
            python = Some((program, version, executable));
            break;
        }
    }
    let freeze = match &python {
        Some((program, ..)) => output(path, program, &["-m", "pip", "freeze"]).await,
        None => None,
    };
    let gpus: Vec<(String, String)> = output(
        path,
        "nvidia-smi",
        &["--query-gpu=name,driver_version", "--format=csv,noheader"],
    )
    .await
    .map(|out| {
        out.lines()
            .filter_map(|l| l.split_once(','))
            .map(|(name, driver)| (name.trim().to_owned(), driver.trim().to_owned()))
            .collect()
    })
    .unwrap_or_default();
    let cuda = if gpus.is_empty() {
        None
    } else {
        output(path, "nvidia-smi", &[])
            .await
            .and_then(|h| cuda_version(&h))
    };
    let record = serde_json::json!({
        "agent_version": env!("CARGO_PKG_VERSION"),
        "os": os,
        "python": python.as_ref().map(|(_, version, executable)| serde_json::json!({
            "version": version, "executable": executable,
        })),
        "pip_freeze": freeze.as_deref().map(|f| f.lines().collect::<Vec<_>>()),
        "gpus": gpus.iter().map(|(name, driver)| serde_json::json!({"name": name, "driver": driver})).collect::<Vec<_>>(),
        "cuda_version": cuda,
    });
    let json = serde_json::to_string_pretty(&record).unwrap_or_default();
    let mut tags = vec![
        (
            "spotsweep.environment",
            hex::encode(Sha256::digest(json.as_bytes())),
        ),
        ("spotsweep.agent.version", env!("CARGO_PKG_VERSION").to_owned()),
        ("spotsweep.os", os),
    ];
    if let Some((_, version, _)) = &python {
        tags.push(("spotsweep.python.version", version.clone()));
    }
    if let Some((name, driver)) = gpus.first() {
        tags.push(("spotsweep.gpu", format!("{} x {name}", gpus.len())));
        tags.push(("spotsweep.gpu.driver", driver.clone()));
    }
    if let Some(cuda) = cuda {
        tags.push(("spotsweep.cuda.version", cuda));
    }
    Environment { json, tags }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cuda_version_is_read_from_nvidia_smis_header() {
        let header = "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4     |";
        assert_eq!(cuda_version(header).as_deref(), Some("12.4"));
        assert_eq!(cuda_version("no gpu here"), None);
    }
}
