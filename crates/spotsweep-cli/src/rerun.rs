//! `spotsweep rerun` (a finished trial again, on the daemon's agents) and `spotsweep checkout`
//! (a trial's code, parameters and command line in a directory, to run it by hand).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use spotsweep_api::{TrialBody, TrialLaunchBody};

use crate::client::Daemon;

/// The files `checkout` writes beside the trial's code.
const TRIAL_JSON: &str = "spotsweep-trial.json";
const TRIAL_SCRIPT: &str = "spotsweep-trial.sh";

/// Queues a rerun of trial `number` of sweep `sweep`; with `wait`, follows it until it ends.
/// Returns the new trial as it last stood.
pub async fn rerun(
    daemon: &Daemon,
    sweep: i64,
    number: i64,
    pool: Option<&str>,
    wait: bool,
) -> anyhow::Result<TrialBody> {
    let mut trial = daemon.rerun(sweep, number, pool).await?;
    let on = trial
        .pool
        .as_deref()
        .map(|p| format!(" on pool {p}"))
        .unwrap_or_default();
    println!(
        "trial {} of sweep {sweep} queued{on}: a rerun of trial {number} (same parameters, seed {} and code); run {}",
        trial.number, trial.seed, trial.run_id
    );
    if !wait {
        return Ok(trial);
    }
    while !matches!(
        trial.state.as_str(),
        "completed" | "failed" | "pruned" | "cancelled"
    ) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        trial = daemon.trial(sweep, trial.number).await?;
    }
    let original = daemon.trial(sweep, number).await?;
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v}"));
    println!(
        "trial {} {}: {} (trial {number}: {})",
        trial.number,
        trial.state,
        show(trial.value),
        show(original.value)
    );
    if let Some(reason) = &trial.reason {
        println!("{reason}");
    }
    Ok(trial)
}

/// Writes trial `number` of sweep `sweep` into `dir` (new or empty): its code snapshot,
/// `spotsweep-trial.json` (parameters, seed, command, environment, code version) and
/// `spotsweep-trial.sh`, which runs it as its agent did.
pub async fn checkout(daemon: &Daemon, sweep: i64, number: i64, dir: &Path) -> anyhow::Result<()> {
    let launch = daemon.launch(sweep, number).await?;
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: checkout writes into a new or empty directory",
                    dir.display()
                );
            }
            std::fs::remove_dir(dir).with_context(|| format!("cannot use {}", dir.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
    match &launch.code {
        Some(code) => {
            let bytes = spotsweep_agent::download_snapshot(daemon.base(), daemon.token(), code, dir)
                .await
                .map_err(anyhow::Error::msg)?;
            eprintln!("code snapshot {code}: {bytes} bytes of files");
            for name in [TRIAL_JSON, TRIAL_SCRIPT] {
                if dir.join(name).exists() {
                    bail!(
                        "the trial's code has a file named {name}, which checkout writes: the code is in {}, \
                         without the trial's parameters and command",
                        dir.display()
                    );
                }
            }
        }
        None => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            eprintln!("{}", without_snapshot(&launch));
        }
    }
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "sweep_id": sweep,
        "trial": launch.trial.number,
        "rerun_of": launch.trial.rerun_of,
        "run_id": launch.trial.run_id,
        "experiment_id": launch.trial.experiment_id,
        "params": launch.trial.params,
        "seed": launch.trial.seed,
        "command": launch.command,
        "notebook": launch.notebook,
        "env": launch.env,
        "setup": launch.setup,
        "code": launch.code,
        "source": launch.source,
        "sweep_run_id": launch.sweep_run_id,
    }))?;
    std::fs::write(dir.join(TRIAL_JSON), json + "\n")?;
    let script_path = dir.join(TRIAL_SCRIPT);
    let mut file = std::fs::File::create(&script_path)?;
    file.write_all(script(sweep, &launch)?.as_bytes())?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    println!(
        "trial {number} of sweep {sweep} is in {}: run {} (the parameters are in {TRIAL_JSON})",
        dir.display(),
        script_path.display()
    );
    Ok(())
}

/// What a checkout of a sweep without a code snapshot can say about its code.
fn without_snapshot(launch: &TrialLaunchBody) -> String {
    let field = |key: &str| {
        launch
            .source
            .as_ref()
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let mut text = "the sweep has no code snapshot (its spec had no workdir): the directory gets the \
                    parameters and the command, not the code"
        .to_owned();
    if let Some(commit) = field("commit") {
        let repo = field("repo_url").map(|r| format!(" of {r}")).unwrap_or_default();
        text.push_str(&format!("; the code was commit {commit}{repo}"));
        if launch
            .source
            .as_ref()
            .and_then(|s| s.get("dirty"))
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            text.push_str(" with uncommitted changes (diff.patch among the artifacts of the sweep's run");
            if let Some(run) = &launch.sweep_run_id {
                text.push_str(&format!(" {run}"));
            }
            text.push(')');
        }
    }
    text
}

/// Quotes a word for `sh`.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The script that runs the trial by hand, as its agent ran it.
fn script(sweep: i64, launch: &TrialLaunchBody) -> anyhow::Result<String> {
    let t = &launch.trial;
    let mut s = String::new();
    s.push_str("#!/bin/sh\n");
    s.push_str(&format!(
        "# Trial {} of sweep {sweep} (MLflow run {}), as its agent ran it.\n",
        t.number, t.run_id
    ));
    s.push_str(
        "# It logs wherever MLFLOW_TRACKING_URI points (./mlruns when unset), to a new run unless\n\
         # MLFLOW_RUN_ID names one.\n",
    );
    if let Some(setup) = &launch.setup {
        s.push_str("# The sweep's setup ran once per machine before it (staging data):\n");
        for line in setup.lines() {
            s.push_str(&format!("#   {line}\n"));
        }
    }
    s.push_str("set -e\ncd \"$(dirname \"$0\")\"\n");
    if launch.code.is_some() {
        s.push_str("export SPOTSWEEP_CODE_DIR=\"$PWD\"\n");
    }
    for (key, value) in &launch.env {
        if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        s.push_str(&format!("export {key}={}\n", sh_quote(value)));
    }
    match (&launch.command, &launch.notebook) {
        (Some(command), _) => s.push_str(&format!("exec sh -c {}\n", sh_quote(command))),
        (None, Some(nb)) => {
            let out = Path::new(&nb.output)
                .parent()
                .filter(|p| !p.as_os_str().is_empty());
            if let Some(out) = out {
                s.push_str(&format!("mkdir -p {}\n", sh_quote(&out.to_string_lossy())));
            }
            s.push_str(&format!(
                "exec papermill {} {} -y {}\n",
                sh_quote(&nb.input),
                sh_quote(&nb.output),
                sh_quote(&t.params.to_string())
            ));
        }
        (None, None) => bail!("trial {} has neither a command nor a notebook", t.number),
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_dollars() {
        let word = "it's $HOME `x`";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote(word)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
    }
}
