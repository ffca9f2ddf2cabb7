//! The fleet simulation: a sweep of 200 trials of 1 to 3 s on a gce pool of 4 one-slot VMs,
//! against the fake Compute API. Every fake VM boots the real startup script, which downloads
//! the agent (the release `spotsweep`) from the daemon and runs it; the first zone is stocked
//! out; VMs take a boot delay to reach RUNNING; each trial attempt has a 10% chance that its VM
//! is preempted while it runs. Prints the figures as JSON. Run by `bench/fleet.sh`:
//!
//!     cargo run --release -p spotsweep-cli --example fleet_sim -- target/release/spotsweep
//!
//! Billed VM-seconds run from RUNNING to the end of each VM (the daemon's records); useful
//! trial-slot-seconds are the durations of the attempts that completed.
//!
//! With `--checkpoints` (run by `bench/checkpoints.sh`) it is the checkpoint benchmark instead:
//! the same 20 trials of 8 to 16 s twice, first saving a checkpoint every quarter second and
//! resuming from it, then starting over after every preemption; every fifth attempt to start is
//! preempted at a random point of the work it has left.
//! Trial-seconds spent are every attempt's lease time (the daemon's `slot_seconds`), needed are
//! the trials' own lengths.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use spotsweep_gce_fake::{Boot, FakeCompute, FakeConfig, Stockout};

const TRIALS: u32 = 200;
const VMS: u32 = 4;
const PREEMPT_CHANCE: f64 = 0.10;
const BUDGET_USD: f64 = 2.0;
const PRICE: f64 = 1.80;

/// The checkpoint benchmark's sweeps.
const CKPT_TRIALS: u32 = 20;
/// Every fifth attempt is preempted: a 20% preemption rate.
const CKPT_PREEMPT_EVERY: u32 = 5;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let agent = std::env::args()
        .nth(1)
        .expect("usage: fleet_sim <path to the release spotsweep binary> [--checkpoints]");
    let checkpoints = std::env::args().any(|a| a == "--checkpoints");
    let agent = std::fs::canonicalize(agent).expect("the agent binary");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let fake = FakeCompute::start(FakeConfig {
        op_delay: Duration::from_millis(500),
        boot_delay: Duration::from_secs(2),
        wait_cap: Duration::from_millis(500),
        // The notice window; a real one is 30 s.
        preempt_grace: Some(Duration::from_secs(if checkpoints { 5 } else { 2 })),
        boot: Some(Boot {
            dir: work.path().join("guests"),
            env: Vec::new(),
        }),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    fake.set_stockout("us-central1-a", Some(Stockout::InOperation));
    let key = work.path().join("sa.json");
    std::fs::write(
        &key,
        fake.service_account_json(&spotsweep_gce_fake::new_private_key().unwrap()),
    )
    .unwrap();
    let config_file = work.path().join("spotsweep.toml");
    std::fs::write(
        &config_file,
        format!(
            "agent_binary = \"{}\"\n[pools.sim]\nprovider = \"gce\"\nproject = \"fake-project\"\n\
             zones = [\"us-central1-a\", \"us-central1-b\", \"us-central1-c\"]\nmachine_type = \"a2-highgpu-1g\"\n\
             image_family = \"projects/p/global/images/family/f\"\nslots_per_vm = 1\nmax_vms = {VMS}\n\
             idle_timeout = \"1s\"\nspot_price_per_hour = {PRICE}\nbudget_usd = {budget}\n\
             credentials = \"{}\"\ncompute_endpoint = \"{}\"\n[fleet]\ntick = \"200ms\"\nreconcile = \"5s\"\n",
            agent.display(),
            key.display(),
            fake.base_url(),
            budget = if checkpoints { 10.0 } else { BUDGET_USD },
        ),
    )
    .unwrap();
    let data_dir = work.path().join("data");
    let overrides = spotsweep_server::Overrides {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(data_dir.clone()),
        log_format: Some(spotsweep_server::LogFormat::Text),
        ..Default::default()
    };
    let config = spotsweep_server::Config::load(Some(&config_file), overrides).unwrap();
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(spotsweep_server::run(config, listener, async {
        let _ = stopped.await;
    }));
    let token_file = data_dir.join("admin.token");
    while !token_file.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    let http = reqwest::Client::new();
    let get = async |path: &str| -> Value {
        http.get(format!("{url}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };

    let create_sweep = async |spec: Value| -> i64 {
        let r = http
            .post(format!("{url}/api/v1/sweeps"))
            .bearer_auth(&token)
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    };

    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/fleet_trial.py");
    if checkpoints {
        let script = script.canonicalize().unwrap();
        let mut results = Vec::new();
        for resume in ["checkpoint", "scratch"] {
            let spec = json!({
                "name": format!("ckpt-{resume}"), "pool": "sim", "max_trials": CKPT_TRIALS, "parallelism": VMS,
                "command": format!("python3 {} --seconds {{seconds}} --resume {resume}", script.display()),
                "objective": {"metric": "loss"}, "sampler": {"type": "random", "seed": 11},
                "parameters": {"seconds": {"type": "float", "low": 8, "high": 16}}
            });
            let started = Instant::now();
            let sweep = create_sweep(spec).await;
            let mut seen: HashSet<(i64, i64)> = HashSet::new();
            // (when, VM, trial, attempt, work it will have done)
            let mut pending: Vec<(Instant, String, i64, i64, f64)> = Vec::new();
            let mut done: HashMap<i64, f64> = HashMap::new();
            let (mut attempts, mut preemptions) = (0u32, 0u32);
            let trials = loop {
                let trials = get(&format!("/api/v1/sweeps/{sweep}/trials")).await;
                if get(&format!("/api/v1/sweeps/{sweep}")).await["state"] == "completed" {
                    break trials;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(900),
                    "the simulation is stuck"
                );
                let list = trials["trials"].as_array().unwrap();
                for t in list {
                    let (number, attempt) = (t["number"].as_i64().unwrap(), t["attempts"].as_i64().unwrap());
                    if t["state"] != "running" || !seen.insert((number, attempt)) {
                        continue;
                    }
                    attempts += 1;
                    // Exactly one attempt in five (the rate), at a random point of its work.
                    let mut rng =
                        rand_chacha::ChaCha8Rng::seed_from_u64(((number as u64) << 16) | attempt as u64);
                    if attempts % CKPT_PREEMPT_EVERY == 0 {
                        let seconds = t["params"]["seconds"].as_f64().unwrap();
                        let left = match resume {
                            "checkpoint" => (seconds - done.get(&number).copied().unwrap_or(0.0)).max(1.0),
                            _ => seconds,
                        };
                        let after = rng.random_range(0.1..0.9) * left;
                        let agent = t["agent_id"].as_str().unwrap_or_default();
                        if let Some((vm, _)) = agent.rsplit_once('-') {
                            let when = Instant::now() + Duration::from_secs_f64(after);
                            pending.push((when, vm.to_string(), number, attempt, after));
                        }
                    }
                }
                let now = Instant::now();
                let due: Vec<_> = pending.iter().filter(|p| p.0 <= now).cloned().collect();
                pending.retain(|p| p.0 > now);
                for (_, vm, number, attempt, after) in due {
                    let still = list.iter().any(|t| {
                        t["number"] == number && t["attempts"] == attempt && t["state"] == "running"
                    });
                    if still
                        && let Some(i) = fake.instances().into_iter().find(|i| i.name == vm)
                        && fake.preempt(&i.zone, &vm)
                    {
                        preemptions += 1;
                        *done.entry(number).or_default() += after;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let cost = get(&format!("/api/v1/cost?sweep_id={sweep}")).await;
            let spent = cost["sweeps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["sweep_id"] == sweep)
                .unwrap()["slot_seconds"]
                .as_f64()
                .unwrap();
            let needed: f64 = trials["trials"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["params"]["seconds"].as_f64().unwrap())
                .sum();
            let completed = trials["trials"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["state"] == "completed")
                .count();
            results.push(json!({
                "resume": resume, "spent_trial_seconds": spent, "needed_trial_seconds": needed,
                "ratio": spent / needed, "attempts": attempts, "preemptions": preemptions,
                "completed": completed, "sweep_seconds": started.elapsed().as_secs_f64(),
            }));
        }
        println!(
            "{}",
            json!({"trials": CKPT_TRIALS, "vms": VMS, "preempt_every": CKPT_PREEMPT_EVERY, "sweeps": results})
        );
        let _ = stop.send(());
        daemon.await.unwrap().unwrap();
        return;
    }
    let spec = json!({
        "name": "fleet-sim", "pool": "sim", "max_trials": TRIALS, "parallelism": VMS,
        "command": format!("python3 {} --seconds {{seconds}}", script.canonicalize().unwrap().display()),
        "objective": {"metric": "loss"}, "sampler": {"type": "random", "seed": 11},
        "parameters": {"seconds": {"type": "float", "low": 1, "high": 3}}
    });
    let started = Instant::now();
    let sweep = create_sweep(spec).await;

    // Watch attempts start; preempt the VM of one in ten, a moment into it.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut seen: HashSet<(i64, i64)> = HashSet::new();
    let mut pending: Vec<(Instant, String, i64, i64)> = Vec::new();
    let mut preempted_at: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut back_after_ms: Vec<i64> = Vec::new();
    let mut preemptions = 0;
    loop {
        let s = get(&format!("/api/v1/sweeps/{sweep}")).await;
        if s["state"] == "completed" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the simulation is stuck: {s}"
        );
        let trials = get(&format!("/api/v1/sweeps/{sweep}/trials")).await;
        for t in trials["trials"].as_array().unwrap() {
            let (number, attempts) = (t["number"].as_i64().unwrap(), t["attempts"].as_i64().unwrap());
            if t["state"] != "running" || !seen.insert((number, attempts)) {
                continue;
            }
            if let Some((at, attempt)) = preempted_at.get(&number)
                && attempts > *attempt
            {
                back_after_ms.push(t["started_at"].as_i64().unwrap_or_else(now_ms) - at);
                preempted_at.remove(&number);
            }
            if rng.random::<f64>() < PREEMPT_CHANCE {
                let agent = t["agent_id"].as_str().unwrap_or_default();
                if let Some((vm, _)) = agent.rsplit_once('-') {
                    let when = Instant::now() + Duration::from_millis(rng.random_range(200..900));
                    pending.push((when, vm.to_string(), number, attempts));
                }
            }
        }
        let due: Vec<_> = pending
            .iter()
            .filter(|p| p.0 <= Instant::now())
            .cloned()
            .collect();
        pending.retain(|p| p.0 > Instant::now());
        for (_, vm, number, attempts) in due {
            if let Some(i) = fake.instances().into_iter().find(|i| i.name == vm)
                && fake.preempt(&i.zone, &vm)
            {
                preemptions += 1;
                preempted_at.insert(number, (now_ms(), attempts));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sweep_seconds = started.elapsed().as_secs_f64();
    // Idle VMs go after the idle timeout; the figures are taken once every VM has ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    let pools = loop {
        let pools = get("/api/v1/pools").await;
        let vms = pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "sim")
            .unwrap()["vms"]
            .clone();
        let live = vms
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| !["deleted", "preempted", "failed"].contains(&v["state"].as_str().unwrap()))
            .count();
        if live == 0 || Instant::now() > deadline {
            break pools;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(6)).await; // a reconcile round after the last delete
    let orphans = fake.instances().len();
    let pool = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sim")
        .unwrap()
        .clone();
    let vms = pool["vms"].as_array().unwrap();
    let billed: f64 = vms.iter().map(|v| v["billed_seconds"].as_f64().unwrap()).sum();
    let trials = get(&format!("/api/v1/sweeps/{sweep}/trials")).await;
    let completed: Vec<&Value> = trials["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "completed")
        .collect();
    let useful: f64 = completed
        .iter()
        .map(|t| (t["finished_at"].as_i64().unwrap() - t["started_at"].as_i64().unwrap()) as f64 / 1000.0)
        .sum();
    let cost = get("/api/v1/cost").await;
    back_after_ms.sort();
    let median_back = back_after_ms.get(back_after_ms.len() / 2).copied();
    let count = |state: &str| vms.iter().filter(|v| v["state"] == state).count();
    let out = json!({
        "trials": TRIALS, "completed": completed.len(), "vms_max": VMS, "preempt_chance": PREEMPT_CHANCE,
        "preemptions": preemptions, "vms_created": vms.len(), "vms_preempted": count("preempted"),
        "vms_failed_stockout": vms.iter().filter(|v| v["state"] == "failed" && v["zone"] == "us-central1-a").count(),
        "billed_vm_seconds": billed, "useful_slot_seconds": useful, "ratio": billed / useful,
        "median_preemption_to_running_ms": median_back, "preemptions_measured": back_after_ms.len(),
        "orphans": orphans, "spent_usd": pool["spent_usd"], "budget_usd": BUDGET_USD,
        "budget_overrun_usd": (pool["spent_usd"].as_f64().unwrap() - BUDGET_USD).max(0.0),
        "sweep_seconds": sweep_seconds, "cost": cost,
    });
    println!("{out}");
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
}
