//! The `local` pool: agents on the daemon's own machine, as child processes of the daemon
//! (`spotsweep agent ...`), restarted when they die, stopped before the daemon stops so that
//! they can report their trials as preempted while the daemon still answers.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The local pool's name.
pub const POOL: &str = "local";

/// How to start the local agents.
#[derive(Debug, Clone)]
pub struct LocalPool {
    /// How many agents (one slot each).
    pub agents: u32,
    /// The daemon's URL as the agents reach it.
    pub server: String,
    /// Their tokens, one per agent (an agent's scope); `None` with `--no-auth`.
    pub tokens: Option<Vec<String>>,
    /// Their work directories go under here.
    pub work_dir: PathBuf,
    /// The `spotsweep` executable.
    pub exe: PathBuf,
}

/// A running local pool; [`Supervisor::stop`] ends it.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Supervisor {
    /// Starts the agents, each watched by a task that restarts it (with back-off) if it exits.
    pub fn start(pool: LocalPool) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let tasks = (0..pool.agents)
            .map(|i| {
                let pool = pool.clone();
                let mut stop_rx = stop_rx.clone();
                tokio::spawn(async move {
                    let mut restarts = 0u32;
                    loop {
                        let mut child = match spawn_agent(&pool, i) {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::error!(agent = i, error = %e, "cannot start a local agent");
                                return;
                            }
                        };
                        tokio::select! {
                            status = child.wait() => {
                                restarts += 1;
                                let wait = Duration::from_millis(200 * u64::from(restarts.min(25)));
                                tracing::warn!(agent = i, ?status, restart_in = ?wait, "local agent exited; restarting");
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    _ = stop_rx.changed() => return,
                                }
                            }
                            _ = stop_rx.changed() => {
                                terminate(&mut child).await;
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops every agent (SIGTERM: they stop their trials and report them preempted) and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The name local agent `i` registers under (its token is scoped to it).
pub fn agent_name(i: u32) -> String {
    format!("local-{i}")
}

fn spawn_agent(pool: &LocalPool, i: u32) -> std::io::Result<Child> {
    let mut cmd = Command::new(&pool.exe);
    cmd.arg("agent")
        .arg("--server")
        .arg(&pool.server)
        .arg("--slots")
        .arg("1")
        .arg("--pool")
        .arg(POOL)
        .arg("--name")
        .arg(agent_name(i))
        .arg("--work-dir")
        .arg(pool.work_dir.join(format!("agent-{i}")))
        // One code cache for the machine: a snapshot is downloaded once for all its agents.
        .arg("--code-cache")
        .arg(pool.work_dir.join("code"))
        .arg("--exit-with-parent")
        // The machine's GPUs are split between the agents, so that they never pack trials onto
        // the same memory.
        .arg("--gpu-share")
        .arg(format!("{i}/{}", pool.agents))
        .kill_on_drop(true);
    // Agents under the daemon only speak up for problems, unless asked otherwise.
    if std::env::var_os("SPOTSWEEP_LOG").is_none() {
        cmd.env("SPOTSWEEP_LOG", "warn");
    }
    // The token travels in the environment, not on the command line that `ps` shows.
    match pool.tokens.as_ref().and_then(|t| t.get(i as usize)) {
        Some(t) => cmd.env("SPOTSWEEP_TOKEN", t),
        None => cmd.env_remove("SPOTSWEEP_TOKEN"),
    };
    cmd.spawn()
}

async fn terminate(child: &mut Child) {
    if let Some(id) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(id as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
