//! The fleet against the fake Compute API: the real daemon, a pool of Spot VMs that follows the
//! work, fails over on stockouts, replaces preempted VMs, deletes idle ones and orphans, keeps
//! within its budget, and adopts its VMs after a restart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};
use spotsweep_gce_fake::{FakeCompute, FakeConfig, Stockout};
use spotsweep_server::fleet::FleetTiming;
use spotsweep_server::pools::{GcePool, Pool};

const ZONES: [&str; 3] = ["us-central1-a", "us-central1-b", "us-central1-c"];

struct Setup {
    fake: FakeCompute,
    key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn fake() -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = FakeCompute::start(FakeConfig {
        op_delay: Duration::from_millis(40),
        boot_delay: Duration::from_millis(60),
        wait_cap: Duration::from_millis(50),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("sa.json");
    std::fs::write(
        &key_file,
        fake.service_account_json(&spotsweep_gce_fake::new_private_key().unwrap()),
    )
    .unwrap();
    Setup {
        fake,
        key_file,
        _dir: dir,
    }
}

fn pool(s: &Setup, change: impl FnOnce(&mut GcePool)) -> Pool {
    let mut g = GcePool {
        project: "fake-project".into(),
        zones: ZONES.iter().map(|z| z.to_string()).collect(),
        machine_type: "a2-highgpu-1g".into(),
        accelerators: Vec::new(),
        image: "projects/deeplearning-platform-release/global/images/family/pytorch-latest-gpu".into(),
        disk_gb: 150,
        slots_per_vm: 2,
        max_vms: 2,
        idle_timeout: Duration::from_millis(600),
        max_vm_lifetime: Duration::from_secs(3600),
        spot_price_per_hour: 1.80,
        budget_usd: None,
        credentials: Some(s.key_file.clone()),
        compute_endpoint: s.fake.base_url(),
        service_account: None,
        scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
        network: "global/networks/default".into(),
        labels: Default::default(),
        setup: None,
    };
    change(&mut g);
    Pool::Gce(Box::new(g))
}

fn timing() -> FleetTiming {
    FleetTiming {
        tick: Duration::from_millis(50),
        reconcile: Duration::from_millis(200),
        zone_backoff: Duration::from_secs(60),
        retry: spotsweep_gce::Retry {
            attempts: 3,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            request_timeout: Duration::from_secs(5),
        },
    }
}

async fn start(_s: &Setup, data_dir: std::path::PathBuf, pool: Pool) -> TestServer {
    TestServer::start_with(data_dir, false, |c| {
        c.pools.insert("a100".into(), pool);
        c.fleet = timing();
    })
    .await
}

async fn create_sweep(server: &TestServer, parallelism: u32) -> i64 {
    let spec = json!({"name": "fleet", "command": "true", "pool": "a100", "max_trials": 20,
                      "parallelism": parallelism, "objective": {"metric": "loss"},
                      "parameters": {"x": {"type": "float", "low": 0, "high": 1}}});
    let r = server.post("/api/v1/sweeps", spec).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

async fn vms(server: &TestServer) -> Vec<Value> {
    let pools: Value = server
        .get("/api/v1/pools")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "a100")
        .map(|p| p["vms"].as_array().unwrap().clone())
        .unwrap_or_default()
}

/// Waits (up to 10 s) until `check` holds of the pool's VMs.
async fn until(server: &TestServer, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..400 {
        let v = vms(server).await;
        if check(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}: {:#?}", vms(server).await);
}

fn count(vms: &[Value], state: &str, zone: Option<&str>) -> usize {
    vms.iter()
        .filter(|v| v["state"] == state && zone.is_none_or(|z| v["zone"] == z))
        .count()
}

#[tokio::test]
async fn a_pool_follows_its_work_across_stockouts_preemptions_and_idleness() {
    let s = fake().await;
    // The first zone is out of A100s: inserts there fail inside their operation.
    s.fake.set_stockout(ZONES[0], Some(Stockout::InOperation));
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&s, dir.path().to_path_buf(), pool(&s, |_| {})).await;
    let sweep = create_sweep(&server, 4).await;

    // 4 trials, 2 slots per VM: 2 VMs, in the second zone after the first one's stockout.
    let v = until(&server, "2 VMs running in the second zone", |v| {
        count(v, "booting", Some(ZONES[1])) == 2
    })
    .await;
    // Both first requests went to the first zone before its stockout showed in their operations.
    assert_eq!(count(&v, "failed", Some(ZONES[0])), 2, "{v:#?}");
    assert_eq!(count(&v, "failed", None), 2, "{v:#?}");
    let failed = v.iter().find(|v| v["state"] == "failed").unwrap();
    assert!(
        failed["reason"].as_str().unwrap().contains("no capacity"),
        "{failed}"
    );
    let instances = s.fake.instances();
    assert_eq!(instances.len(), 2);
    assert!(instances.iter().all(|i| i.zone == ZONES[1]));
    // Every VM is Spot, deletes itself when preempted, has the fuse, and is labelled.
    for i in &instances {
        let sched = &i.body["scheduling"];
        assert_eq!(sched["provisioningModel"], "SPOT");
        assert_eq!(sched["instanceTerminationAction"], "DELETE");
        assert_eq!(sched["onHostMaintenance"], "TERMINATE");
        assert_eq!(sched["automaticRestart"], false);
        assert_eq!(sched["maxRunDuration"]["seconds"], "3600");
        assert_eq!(i.labels["managed-by"], "spotsweep");
        assert_eq!(i.labels["spotsweep-pool"], "a100");
        assert!(i.labels.contains_key("spotsweep-daemon"));
        let items = i.body["metadata"]["items"].as_array().unwrap();
        assert!(items.iter().any(|m| m["key"] == "startup-script"));
        assert!(
            items
                .iter()
                .any(|m| m["key"] == "spotsweep-server" && m["value"] == server.url.as_str())
        );
    }

    // A preemption: the VM is marked preempted and replaced (in the second zone again).
    let victim = instances[0].name.clone();
    assert!(s.fake.preempt(ZONES[1], &victim));
    let v = until(&server, "the preempted VM replaced", |v| {
        v.iter()
            .any(|x| x["name"] == victim.as_str() && x["state"] == "preempted")
            && count(v, "booting", None) == 2
    })
    .await;
    assert_eq!(count(&v, "booting", Some(ZONES[1])), 2, "{v:#?}");

    // No more work: the VMs go once idle past the timeout, and nothing is left at the cloud.
    let r = server
        .post(&format!("/api/v1/sweeps/{sweep}/cancel"), json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = until(&server, "every VM deleted", |v| count(v, "deleted", None) == 2).await;
    for _ in 0..100 {
        if s.fake.instances().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.fake.instances().is_empty(), "{:?}", s.fake.instances());
    // What it cost: billed seconds at the pool's price.
    for vm in v.iter().filter(|v| v["running_at"].is_i64()) {
        let billed = vm["billed_seconds"].as_f64().unwrap();
        assert!(billed > 0.0, "{vm}");
        assert!(
            (vm["cost_usd"].as_f64().unwrap() - billed / 3600.0 * 1.80).abs() < 1e-9,
            "{vm}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn orphans_are_deleted_and_a_restart_adopts_live_vms() {
    let s = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&s, dir.path().to_path_buf(), pool(&s, |p| p.slots_per_vm = 1)).await;
    create_sweep(&server, 1).await;
    until(&server, "one VM running", |v| count(v, "booting", None) == 1).await;
    let ours = s.fake.instances().remove(0);

    // An instance with this daemon's labels that no record owns (a VM from a lost insert).
    let token = gcp_token(&s).await;
    let mut orphan = ours.body.clone();
    orphan["name"] = json!("ss-a100-999");
    orphan["labels"] = json!(ours.labels);
    let r = reqwest::Client::new()
        .post(format!(
            "{}projects/fake-project/zones/{}/instances",
            s.fake.base_url(),
            ZONES[2]
        ))
        .bearer_auth(&token)
        .json(&orphan)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for _ in 0..200 {
        if s.fake.instances().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let left: Vec<String> = s.fake.instances().into_iter().map(|i| i.name).collect();
    assert_eq!(left, vec![ours.name], "the orphan is deleted, our VM kept");

    // A restart adopts the running VM: no new insert, the same VM.
    let inserts = s.fake.inserts_executed();
    server.stop().await;
    let mut server = start(&s, dir.path().to_path_buf(), pool(&s, |p| p.slots_per_vm = 1)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let v = vms(&server).await;
    assert_eq!(count(&v, "booting", None), 1, "{v:#?}");
    assert_eq!(s.fake.inserts_executed(), inserts);
    assert_eq!(s.fake.instances().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn an_insert_cut_short_by_a_crash_is_sent_again_and_creates_one_vm() {
    use spotsweep_store::{FleetStore, NewVm, SqliteOptions, SqliteStore};
    let s = fake().await;
    let dir = tempfile::tempdir().unwrap();
    // The daemon recorded the VM and sent its insert, then was killed before it recorded the
    // answer: the record says "requested", the cloud has the instance.
    let request_id = uuid::Uuid::new_v4().to_string();
    {
        let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("spotsweep.db")))
            .await
            .unwrap();
        let daemon = store.daemon_id().await.unwrap();
        let vm = store
            .create_vm(&NewVm {
                pool: "a100".into(),
                zone: ZONES[0].into(),
                request_id: request_id.clone(),
                price_per_hour: 1.8,
                slots: 1,
            })
            .await
            .unwrap();
        let token = gcp_token(&s).await;
        let body = json!({
            "name": vm.name,
            "machineType": format!("zones/{}/machineTypes/a2-highgpu-1g", ZONES[0]),
            "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                           "onHostMaintenance": "TERMINATE", "automaticRestart": false},
            "disks": [{"boot": true, "autoDelete": true, "initializeParams": {"sourceImage": "x", "diskSizeGb": "150"}}],
            "networkInterfaces": [{"network": "global/networks/default"}],
            "labels": {"managed-by": "spotsweep", "spotsweep-daemon": daemon, "spotsweep-pool": "a100"}
        });
        let r = reqwest::Client::new()
            .post(format!(
                "{}projects/fake-project/zones/{}/instances?requestId={request_id}",
                s.fake.base_url(),
                ZONES[0]
            ))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        store.close().await;
    }
    let mut server = start(&s, dir.path().to_path_buf(), pool(&s, |p| p.slots_per_vm = 1)).await;
    create_sweep(&server, 1).await;
    let v = until(&server, "the recorded VM running", |v| {
        count(v, "booting", None) == 1
    })
    .await;
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(s.fake.inserts_executed(), 1);
    assert_eq!(s.fake.instances().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_budget_caps_the_vms_started() {
    let s = fake().await;
    let dir = tempfile::tempdir().unwrap();
    // $5 at $1.80 an hour: two VMs fit an hour each, a third does not.
    let mut server = start(
        &s,
        dir.path().to_path_buf(),
        pool(&s, |p| {
            p.slots_per_vm = 1;
            p.max_vms = 4;
            p.budget_usd = Some(5.0);
        }),
    )
    .await;
    create_sweep(&server, 4).await;
    until(&server, "two VMs", |v| count(v, "booting", None) == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = vms(&server).await;
    assert_eq!(v.len(), 2, "{v:#?}");
    assert_eq!(s.fake.instances().len(), 2);
    server.stop().await;
}

/// A token from the fake, for requests made around the daemon.
async fn gcp_token(s: &Setup) -> String {
    use gcp_auth::TokenProvider;
    let account =
        gcp_auth::CustomServiceAccount::from_json(&std::fs::read_to_string(&s.key_file).unwrap()).unwrap();
    let account: Arc<dyn TokenProvider> = Arc::new(account);
    account
        .token(&[spotsweep_gce::SCOPE])
        .await
        .unwrap()
        .as_str()
        .to_string()
}

#[tokio::test]
async fn a_vms_token_reaches_its_agents_work_and_nothing_else() {
    let s = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&s, dir.path().to_path_buf(), pool(&s, |p| p.slots_per_vm = 1)).await;
    let sweep = create_sweep(&server, 1).await;
    until(&server, "one VM running", |v| count(v, "booting", None) == 1).await;
    let instance = s.fake.instances().remove(0);
    let items = instance.body["metadata"]["items"].as_array().unwrap();
    let token = items.iter().find(|m| m["key"] == "spotsweep-token").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", server.url))
            .bearer_auth(&token)
    };
    // Admin routes and other APIs: refused, saying why.
    let r = call(reqwest::Method::GET, "/api/v1/sweeps").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains(&instance.name));
    assert_eq!(
        call(reqwest::Method::POST, "/api/v1/tokens")
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        call(
            reqwest::Method::GET,
            "/api/2.0/mlflow/experiments/search?max_results=5"
        )
        .send()
        .await
        .unwrap()
        .status(),
        403
    );
    // The agent binary.
    let r = call(reqwest::Method::GET, "/api/v1/agent/binary")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(r.bytes().await.unwrap().len() > 1000);
    // Leases only under its own name, of its own pool's trials.
    let lease_body = |agent: &str| json!({"agent_id": agent, "slots": 1, "pool": "local", "wait_ms": 0});
    let r = call(reqwest::Method::POST, "/api/v1/leases")
        .json(&lease_body("someone-else-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = call(reqwest::Method::POST, "/api/v1/leases")
        .json(&lease_body(&format!("{}-abc", instance.name)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let leased: Value = r.json().await.unwrap();
    let lease = &leased["leases"][0];
    assert_eq!(lease["trial"]["sweep_id"], sweep, "{leased}");
    let lease_id = lease["lease_id"].as_str().unwrap();
    let run_id = lease["trial"]["run_id"].as_str().unwrap();
    let r = call(
        reqwest::Method::POST,
        &format!("/api/v1/leases/{lease_id}/heartbeat"),
    )
    .json(&json!({}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // Its trial's run takes metrics; another run does not.
    let metric = |run: &str| json!({"run_id": run, "key": "loss", "value": 0.5, "timestamp": 1, "step": 0});
    let r = call(reqwest::Method::POST, "/api/2.0/mlflow/runs/log-metric")
        .json(&metric(run_id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, other) = server
        .mlflow(
            "runs/create",
            json!({"experiment_id": "0", "run_name": "not-the-vms"}),
        )
        .await;
    let other_run = other["run"]["info"]["run_id"].as_str().unwrap();
    let r = call(reqwest::Method::POST, "/api/2.0/mlflow/runs/log-metric")
        .json(&metric(other_run))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Its trial's checkpoints can be listed (to restore them); another run's cannot.
    let exp = lease["trial"]["experiment_id"].as_str().unwrap();
    let list = |run: &str| {
        format!("/api/2.0/mlflow-artifacts/artifacts?path={exp}%2F{run}%2Fartifacts%2Fcheckpoints")
    };
    let r = call(reqwest::Method::GET, &list(run_id)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = call(reqwest::Method::GET, &list(other_run)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = call(reqwest::Method::GET, "/api/2.0/mlflow-artifacts/artifacts")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Its own run id further down another run's path, behind an encoded `/`: refused.
    let sneaky =
        format!("/api/2.0/mlflow-artifacts/artifacts/{exp}%2F{other_run}%2Fartifacts/{run_id}/x.txt");
    let r = call(reqwest::Method::PUT, &sneaky)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let own = format!("/api/2.0/mlflow-artifacts/artifacts/{exp}/{run_id}/artifacts/x.txt");
    let r = call(reqwest::Method::PUT, &own).body("x").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Once the VM is gone, its token is dead and its trial is requeued.
    let r = server
        .post(&format!("/api/v1/sweeps/{sweep}/cancel"), json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(s.fake.preempt(ZONES[0], &instance.name));
    until(&server, "the VM preempted", |v| count(v, "preempted", None) == 1).await;
    let r = call(reqwest::Method::GET, "/api/v1/agent/binary")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn server_error_and_rate_limit_storms_are_ridden_out() {
    let s = fake().await;
    let dir = tempfile::tempdir().unwrap();
    // 30 failed calls in a row, more than one call's retries: ticks fail, the next ones go on.
    s.fake.fail_next(20, spotsweep_gce_fake::Fault::ServerError);
    s.fake.fail_next(10, spotsweep_gce_fake::Fault::RateLimit);
    let mut server = start(&s, dir.path().to_path_buf(), pool(&s, |_| {})).await;
    create_sweep(&server, 4).await;
    let v = until(&server, "2 VMs running after the storm", |v| {
        count(v, "booting", None) == 2
    })
    .await;
    // Unanswered inserts were sent again with their request ids: no VM failed, none doubled.
    assert_eq!(v.len(), 2, "{v:#?}");
    assert_eq!(s.fake.instances().len(), 2, "{v:#?}");
    assert_eq!(s.fake.inserts_executed(), 2);
    let statuses: Vec<u16> = s.fake.requests().iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().filter(|s| **s == 503).count() == 20
            && statuses.iter().filter(|s| **s == 403).count() == 10
    );
    server.stop().await;
}
