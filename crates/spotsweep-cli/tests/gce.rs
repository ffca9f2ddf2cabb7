//! A sweep on a gce pool, end to end, with real binaries: the `spotsweep` daemon manages Spot
//! VMs on the fake Compute API; each fake VM runs the real startup script
//! (`deploy/gce/startup-script.sh`) against its own metadata server, which downloads the agent
//! binary from the daemon with the VM's token and runs it; a VM preempted in the middle of a
//! trial has the trial requeued, and it completes on another VM; idle VMs are deleted at the
//! end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spotsweep_gce_fake::{Boot, FakeCompute, FakeConfig};

struct Daemon {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Daemon {
    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }
}

async fn until<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A daemon (the real binary) with a gce pool `gpu` on the fake Compute API, whose VMs boot
/// the real startup script and agent; `pool` adds lines to the pool's table.
struct Fleet {
    fake: FakeCompute,
    daemon: Daemon,
    child: tokio::process::Child,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn fleet(max_vms: u32, pool: &str) -> Fleet {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let guests = tempfile::tempdir().unwrap();
    let fake = FakeCompute::start(FakeConfig {
        op_delay: Duration::from_millis(100),
        boot_delay: Duration::from_millis(200),
        wait_cap: Duration::from_millis(200),
        preempt_grace: Some(Duration::from_secs(3)),
        boot: Some(Boot {
            dir: guests.path().to_path_buf(),
            env: Vec::new(),
        }),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let key = data.path().join("sa.json");
    std::fs::write(
        &key,
        fake.service_account_json(&spotsweep_gce_fake::new_private_key().unwrap()),
    )
    .unwrap();
    let config = data.path().join("spotsweep.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pools.gpu]
provider = "gce"
project = "fake-project"
zones = ["us-central1-a", "us-central1-b"]
machine_type = "a2-highgpu-1g"
image_family = "projects/deeplearning-platform-release/global/images/family/pytorch-latest-gpu"
slots_per_vm = 2
max_vms = {max_vms}
idle_timeout = "2s"
credentials = "{}"
compute_endpoint = "{}"
{pool}

[fleet]
tick = "200ms"
reconcile = "2s"
"#,
            key.display(),
            fake.base_url()
        ),
    )
    .unwrap();
    let data_dir = data.path().join("data");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_spotsweep"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data_dir)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url_file = data_dir.join("server.url");
    let url = until("the daemon's URL", Duration::from_secs(20), async || {
        std::fs::read_to_string(&url_file)
            .ok()
            .map(|u| u.trim().to_string())
    })
    .await;
    let token = std::fs::read_to_string(data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let daemon = Daemon {
        url,
        token,
        http: reqwest::Client::new(),
    };
    Fleet {
        fake,
        daemon,
        child,
        _dirs: (guests, data),
    }
}

impl Fleet {
    async fn create_sweep(&self, spec: Value) -> i64 {
        let r = self
            .daemon
            .http
            .post(format!("{}/api/v1/sweeps", self.daemon.url))
            .bearer_auth(&self.daemon.token)
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    async fn vms(&self) -> Vec<Value> {
        let pools = self.daemon.get("/api/v1/pools").await;
        pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "gpu")
            .unwrap()["vms"]
            .as_array()
            .unwrap()
            .clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_runs_on_spot_vms_through_a_preemption() {
    let Fleet {
        fake,
        daemon,
        child,
        _dirs,
    } = fleet(2, "").await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/branin.py");
    let spec = json!({
        "name": "on-spot", "pool": "gpu", "max_trials": 8, "parallelism": 4,
        "command": format!("python3 {} --x1 {{x1}} --x2 {{x2}} --steps 40", script.display()),
        "objective": {"metric": "loss", "goal": "minimize"},
        "sampler": {"type": "random", "seed": 3},
        "parameters": {"x1": {"type": "float", "low": -5, "high": 10}, "x2": {"type": "float", "low": 0, "high": 15}}
    });
    let r = daemon
        .http
        .post(format!("{}/api/v1/sweeps", daemon.url))
        .bearer_auth(&daemon.token)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let sweep = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();

    // A trial running on a VM: preempt that VM.
    let trials_path = format!("/api/v1/sweeps/{sweep}/trials");
    let (number, agent) = until("a trial running on a VM", Duration::from_secs(60), async || {
        let trials = daemon.get(&trials_path).await;
        trials["trials"].as_array()?.iter().find_map(|t| {
            (t["state"] == "running").then(|| {
                (
                    t["number"].as_i64().unwrap(),
                    t["agent_id"].as_str().unwrap().to_string(),
                )
            })
        })
    })
    .await;
    let vm = agent.rsplit_once('-').unwrap().0.to_string();
    let zone = fake
        .instances()
        .into_iter()
        .find(|i| i.name == vm)
        .expect("the agent's VM")
        .zone;
    assert!(fake.preempt(&zone, &vm), "{vm} in {zone}");

    // The sweep completes anyway; the preempted trial ran again.
    until("the sweep to complete", Duration::from_secs(120), async || {
        let s = daemon.get(&format!("/api/v1/sweeps/{sweep}")).await;
        (s["state"] == "completed").then_some(())
    })
    .await;
    let trials = daemon.get(&trials_path).await;
    let trials = trials["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 8);
    assert!(
        trials
            .iter()
            .all(|t| t["state"] == "completed" && t["value"].is_f64()),
        "{trials:#?}"
    );
    let again = trials.iter().find(|t| t["number"] == number).unwrap();
    assert!(again["attempts"].as_i64().unwrap() >= 2, "{again}");
    assert_eq!(again["failures"], 0, "a preemption is not a failure: {again}");
    let pools = daemon.get("/api/v1/pools").await;
    let vms = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "gpu")
        .unwrap()["vms"]
        .clone();
    assert!(
        vms.as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == vm.as_str() && v["state"] == "preempted"),
        "{vms:#}"
    );

    // What it cost: the sweep's trials' share of their VMs, the lost attempt counted apart;
    // the pool paid for that and for boot and idle time.
    let cost = daemon.get(&format!("/api/v1/cost?sweep_id={sweep}")).await;
    let sweep_cost = &cost["sweeps"][0];
    assert_eq!(sweep_cost["sweep_id"], sweep, "{cost:#}");
    let (total, lost) = (
        sweep_cost["cost_usd"].as_f64().unwrap(),
        sweep_cost["lost_to_preemption_usd"].as_f64().unwrap(),
    );
    assert!(total > 0.0 && lost > 0.0 && lost < total, "{cost:#}");
    let trial_cost = cost["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["number"] == number)
        .unwrap();
    assert!(trial_cost["attempts"].as_u64().unwrap() >= 2, "{trial_cost}");
    assert!(
        trial_cost["lost_to_preemption_usd"].as_f64().unwrap() > 0.0,
        "{trial_cost}"
    );
    let spent = cost["pools"][0]["spent_usd"].as_f64().unwrap();
    assert!(spent >= total, "the pool paid {spent}, its trials {total}");

    // Idle VMs go; nothing is left at the cloud.
    until("every instance deleted", Duration::from_secs(30), async || {
        fake.instances().is_empty().then_some(())
    })
    .await;

    let pid = child.id().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut child = child;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_whose_setup_fails_is_replaced_and_no_trial_fails() {
    let marks = tempfile::tempdir().unwrap();
    // The pool's setup fails on the first VM that runs it and works on the next ones.
    let runs = marks.path().join("runs");
    let f = fleet(
        1,
        &format!(
            r#"setup = "n=$(cat {runs} 2>/dev/null || echo 0); echo $((n + 1)) > {runs}; [ $n -ge 1 ] || {{ echo no dataset >&2; exit 3; }}""#,
            runs = runs.display()
        ),
    )
    .await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/branin.py");
    let sweep = f
        .create_sweep(json!({
            "name": "staged", "pool": "gpu", "max_trials": 4, "parallelism": 2,
            "command": format!("python3 {} --x1 {{x1}} --x2 {{x2}} --steps 3", script.display()),
            "objective": {"metric": "loss"}, "sampler": {"type": "random", "seed": 3},
            "parameters": {"x1": {"type": "float", "low": -5, "high": 10}, "x2": {"type": "float", "low": 0, "high": 15}}
        }))
        .await;
    until("the sweep to complete", Duration::from_secs(120), async || {
        let s = f.daemon.get(&format!("/api/v1/sweeps/{sweep}")).await;
        (s["state"] == "completed").then_some(())
    })
    .await;
    let trials = f.daemon.get(&format!("/api/v1/sweeps/{sweep}/trials")).await;
    let trials = trials["trials"].as_array().unwrap();
    assert!(
        trials
            .iter()
            .all(|t| t["state"] == "completed" && t["failures"] == 0),
        "{trials:#?}"
    );
    // The first VM ran the setup, failed it and was deleted for it; the second ran it once
    // for all its trials.
    let vms = f.vms().await;
    assert!(vms.len() >= 2, "{vms:#?}");
    assert_eq!(vms[0]["state"], "deleted", "{vms:#?}");
    assert!(
        vms[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("setup failed"),
        "{vms:#?}"
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap().trim(), "2");
    until("every instance deleted", Duration::from_secs(30), async || {
        f.fake.instances().is_empty().then_some(())
    })
    .await;
    drop(f.child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_in_the_middle_of_an_insert_leaves_no_orphan_and_no_double_vm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Inserts are done at once but answered 3 s later: the daemon is killed in between.
    let fake = FakeCompute::start(FakeConfig {
        op_delay: Duration::from_millis(100),
        boot_delay: Duration::from_millis(200),
        wait_cap: Duration::from_millis(200),
        insert_answer_delay: Duration::from_secs(3),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let key = data.path().join("sa.json");
    std::fs::write(
        &key,
        fake.service_account_json(&spotsweep_gce_fake::new_private_key().unwrap()),
    )
    .unwrap();
    let config = data.path().join("spotsweep.toml");
    std::fs::write(
        &config,
        format!(
            "[pools.gpu]\nprovider = \"gce\"\nproject = \"fake-project\"\nzones = [\"us-central1-a\"]\n\
             machine_type = \"a2-highgpu-1g\"\nimage_family = \"projects/p/global/images/family/f\"\n\
             max_vms = 1\ncredentials = \"{}\"\ncompute_endpoint = \"{}\"\n[fleet]\ntick = \"100ms\"\nreconcile = \"500ms\"\n",
            key.display(),
            fake.base_url()
        ),
    )
    .unwrap();
    let data_dir = data.path().join("data");
    let serve = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_spotsweep"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data_dir)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut child = serve();
    let url_file = data_dir.join("server.url");
    let url = until("the daemon's URL", Duration::from_secs(20), async || {
        std::fs::read_to_string(&url_file)
            .ok()
            .map(|u| u.trim().to_string())
    })
    .await;
    let token = std::fs::read_to_string(data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let http = reqwest::Client::new();
    let spec = json!({"name": "k", "pool": "gpu", "max_trials": 2, "parallelism": 1, "command": "true",
                      "objective": {"metric": "loss"}, "parameters": {"x": {"type": "float", "low": 0, "high": 1}}});
    let r = http
        .post(format!("{url}/api/v1/sweeps"))
        .bearer_auth(&token)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    until(
        "the insert to be done at the cloud",
        Duration::from_secs(20),
        async || (fake.inserts_executed() == 1).then_some(()),
    )
    .await;
    // kill -9 while the daemon waits for the insert's answer.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    std::fs::remove_file(&url_file).unwrap();

    let mut child = serve();
    let url = until(
        "the restarted daemon's URL",
        Duration::from_secs(20),
        async || {
            std::fs::read_to_string(&url_file)
                .ok()
                .map(|u| u.trim().to_string())
        },
    )
    .await;
    let daemon = Daemon { url, token, http };
    let vms = until(
        "the VM adopted and running",
        Duration::from_secs(30),
        async || {
            let pools = daemon.get("/api/v1/pools").await;
            let vms = pools["pools"].as_array()?.iter().find(|p| p["name"] == "gpu")?["vms"]
                .as_array()?
                .clone();
            vms.iter().any(|v| v["state"] == "booting").then_some(vms)
        },
    )
    .await;
    assert_eq!(vms.len(), 1, "one VM record: {vms:#?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fake.inserts_executed(),
        1,
        "the insert was sent again with its request id, not doubled"
    );
    assert_eq!(fake.instances().len(), 1, "no orphan");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_with_a_workdir_runs_on_spot_vms_that_each_download_its_code_once() {
    let f = fleet(2, "").await;
    // The training script exists only in the submitted directory.
    let work = tempfile::tempdir().unwrap();
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/branin.py");
    std::fs::copy(&example, work.path().join("train.py")).unwrap();
    std::fs::write(work.path().join(".gitignore"), "data/\n").unwrap();
    std::fs::create_dir(work.path().join("data")).unwrap();
    std::fs::write(work.path().join("data").join("huge.bin"), vec![0u8; 1 << 20]).unwrap();
    let spec = work.path().join("sweep.yaml");
    std::fs::write(
        &spec,
        "name: coded\npool: gpu\nworkdir: .\nmax_trials: 8\nparallelism: 4\n\
         command: python3 train.py --x1 {x1} --x2 {x2} --steps 3\n\
         objective: {metric: loss}\nsampler: {type: random, seed: 5}\n\
         parameters:\n  x1: {type: float, low: -5, high: 10}\n  x2: {type: float, low: 0, high: 15}\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_spotsweep"))
        .arg("submit")
        .arg(&spec)
        .args(["--server", &f.daemon.url, "--token", &f.daemon.token])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("uploaded"), "{stderr}");
    let sweep: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    until("the sweep to complete", Duration::from_secs(120), async || {
        let s = f.daemon.get(&format!("/api/v1/sweeps/{sweep}")).await;
        (s["state"] == "completed").then_some(())
    })
    .await;
    let trials = f.daemon.get(&format!("/api/v1/sweeps/{sweep}/trials")).await;
    let trials = trials["trials"].as_array().unwrap();
    assert!(trials.iter().all(|t| t["state"] == "completed"), "{trials:#?}");
    // Each VM fetched the snapshot (with its own token) once for all the trials it ran.
    let mut per_vm: std::collections::BTreeMap<String, usize> = Default::default();
    for t in trials {
        let agent = t["agent_id"].as_str().unwrap();
        *per_vm
            .entry(agent.rsplit_once('-').unwrap().0.to_string())
            .or_default() += 1;
    }
    assert!(per_vm.values().any(|&n| n >= 2), "{per_vm:?}");
    for vm in per_vm.keys() {
        let console = std::fs::read_to_string(f._dirs.0.path().join(vm).join("console.log")).unwrap();
        let downloads = console.matches("code snapshot downloaded").count();
        assert_eq!(downloads, 1, "{vm}: {console}");
    }
    drop(f.child);
}
