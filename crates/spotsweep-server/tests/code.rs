#![allow(missing_docs)]
//! Code snapshots over real HTTP: who may read one (a VM's token only its pool's sweeps'
//! snapshots, a trial's token none, a read token any but may not upload) and the daemon's cap
//! on an upload.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use spotsweep_api::{CompleteRequest, LeaseRequestBody, OutcomeKind};
use spotsweep_gce_fake::{FakeCompute, FakeConfig};
use spotsweep_server::pools::{GcePool, Pool};

fn id_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

async fn upload(s: &TestServer, bytes: &[u8]) -> String {
    let id = id_of(bytes);
    let r = s
        .client
        .put(format!("{}/api/v1/code/{id}", s.url))
        .bearer_auth(&s.token)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    id
}

async fn create_sweep(s: &TestServer, pool: &str, code: &str) -> i64 {
    let spec = json!({"name": format!("on-{pool}"), "command": "python train.py", "pool": pool, "code": code,
                      "max_trials": 4, "parallelism": 1, "objective": {"metric": "loss"},
                      "parameters": {"x": {"type": "float", "low": 0, "high": 1}}});
    let r = s.post("/api/v1/sweeps", spec).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

/// A fake Compute API and a daemon with one gce pool, `a100`, of one VM on it.
async fn gce_daemon() -> (FakeCompute, tempfile::TempDir, TestServer) {
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
    let pool = GcePool {
        project: "fake-project".into(),
        zones: vec!["us-central1-a".into()],
        machine_type: "a2-highgpu-1g".into(),
        accelerators: Vec::new(),
        image: "projects/deeplearning-platform-release/global/images/family/pytorch-latest-gpu".into(),
        disk_gb: 150,
        slots_per_vm: 1,
        max_vms: 1,
        idle_timeout: Duration::from_secs(60),
        max_vm_lifetime: Duration::from_secs(3600),
        spot_price_per_hour: 1.80,
        budget_usd: None,
        credentials: Some(key_file),
        compute_endpoint: fake.base_url(),
        service_account: None,
        scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
        network: "global/networks/default".into(),
        labels: Default::default(),
        setup: None,
    };
    let server = TestServer::start_with(dir.path().join("data"), false, |c| {
        c.pools.insert("a100".into(), Pool::Gce(Box::new(pool)));
        c.fleet.tick = Duration::from_millis(50);
    })
    .await;
    (fake, dir, server)
}

/// The first VM of the fake once its pool's page shows it booting, and its token.
async fn booting_vm(server: &TestServer, fake: &FakeCompute) -> (spotsweep_gce_fake::FakeInstance, String) {
    for _ in 0..400 {
        let pools: Value = server
            .get("/api/v1/pools")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let booting = pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "a100")
            .flat_map(|p| p["vms"].as_array().unwrap())
            .any(|v| v["state"] == "booting");
        if booting && let Some(instance) = fake.instances().into_iter().next() {
            let items = instance.body["metadata"]["items"].as_array().unwrap();
            let token = items.iter().find(|m| m["key"] == "spotsweep-token").unwrap()["value"]
                .as_str()
                .unwrap()
                .to_string();
            return (instance, token);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no VM booted for the a100 pool");
}

#[tokio::test]
async fn a_vms_token_reads_its_pools_snapshots_only_and_a_trials_token_none() {
    let (fake, _dir, mut server) = gce_daemon().await;
    let ours = upload(&server, b"the a100 pool's code").await;
    let theirs = upload(&server, b"another pool's code").await;
    let unused = upload(&server, b"nobody's code").await;
    create_sweep(&server, "local", &theirs).await;
    create_sweep(&server, "a100", &ours).await;

    // The VM the sweep asks for, once it boots, and its token.
    let (instance, token) = booting_vm(&server, &fake).await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, id: &str, token: &str| {
        http.request(method, format!("{}/api/v1/code/{id}", server.url))
            .bearer_auth(token.to_owned())
    };

    // Its pool's snapshot: the bytes. Another pool's, or one no sweep uses: refused, saying why.
    let r = call(reqwest::Method::GET, &ours, &token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"the a100 pool's code");
    for other in [&theirs, &unused] {
        let r = call(reqwest::Method::GET, other, &token).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let text = r.text().await.unwrap();
        assert!(
            text.contains(&instance.name) && text.contains("pool a100"),
            "{text}"
        );
    }
    // It uploads nothing.
    let r = call(reqwest::Method::PUT, &id_of(b"x"), &token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A lease names the snapshot; the trial's own token reads no snapshot.
    let r = http
        .post(format!("{}/api/v1/leases", server.url))
        .bearer_auth(&token)
        .json(&json!({"agent_id": format!("{}-abc", instance.name), "slots": 1, "wait_ms": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let leased: Value = r.json().await.unwrap();
    let lease = &leased["leases"][0];
    assert_eq!(lease["code"], ours.as_str(), "{leased}");
    let trial_token = lease["trial_token"].as_str().unwrap();
    let r = call(reqwest::Method::GET, &ours, trial_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A read token reads any snapshot and uploads none.
    let r = server
        .post("/api/v1/tokens", json!({"name": "viewer", "scope": "read"}))
        .send()
        .await
        .unwrap();
    let viewer = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = call(reqwest::Method::GET, &theirs, &viewer).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = call(reqwest::Method::HEAD, &unused, &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = call(reqwest::Method::PUT, &id_of(b"y"), &viewer)
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    server.stop().await;
}

#[tokio::test]
async fn an_upload_over_the_daemons_cap_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        TestServer::start_with(dir.path().to_path_buf(), false, |c| c.code_max_bytes = 1000).await;
    let big = vec![7u8; 5000];
    let id = id_of(&big);
    let put = |body: reqwest::Body| {
        server
            .client
            .put(format!("{}/api/v1/code/{id}", server.url))
            .bearer_auth(&server.token)
            .body(body)
    };
    // Announced too large: refused before a byte is read.
    let r = put(big.clone().into()).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "too_large");
    assert!(body["message"].as_str().unwrap().contains("bucket"), "{body}");
    // Streamed without a length: cut off at the cap.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(512).map(|c| Ok(c.to_vec())).collect();
    let r = put(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("code")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // Within the cap: taken.
    let small = vec![1u8; 900];
    let r = server
        .client
        .put(format!("{}/api/v1/code/{}", server.url, id_of(&small)))
        .bearer_auth(&server.token)
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    server.stop().await;
}

#[tokio::test]
async fn a_rerun_on_a_gce_pool_gets_a_vm_that_reads_the_snapshot_while_the_rerun_needs_it() {
    let (fake, _dir, mut server) = gce_daemon().await;
    let code = upload(&server, b"the local sweep's code").await;
    let sweep = create_sweep(&server, "local", &code).await;
    // Trial 0 runs and ends on the local pool (by hand, as an ask-and-tell worker).
    let api = server.api();
    let leased = api
        .lease(&lease_request("laptop", Some("local"), 0))
        .await
        .unwrap();
    let lease_id = &leased.leases[0].lease_id;
    api.complete(lease_id, &succeeded(0.5)).await.unwrap();
    api.request(reqwest::Method::POST, &format!("/api/v1/sweeps/{sweep}/cancel"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(fake.instances().is_empty());

    // Its rerun on the a100 pool: a VM is created for it, and that VM's token reads the
    // sweep's snapshot and leases the rerun.
    let rerun = api.rerun(sweep, 0, Some("a100")).await.unwrap();
    assert_eq!((rerun.rerun_of, rerun.pool.as_deref()), (Some(0), Some("a100")));
    let (instance, token) = booting_vm(&server, &fake).await;
    let http = reqwest::Client::new();
    let read = || {
        http.get(format!("{}/api/v1/code/{code}", server.url))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(read().await.unwrap().status(), 200);
    let vm = server.api_as(&token);
    let leased = vm
        .lease(&lease_request(&format!("{}-abc", instance.name), None, 5000))
        .await
        .unwrap();
    let lease = &leased.leases[0];
    assert_eq!(lease.code.as_deref(), Some(code.as_str()), "{leased:?}");
    assert_eq!(lease.trial.rerun_of, Some(0), "{leased:?}");
    assert_eq!(lease.trial.number, rerun.number, "{leased:?}");
    vm.complete(&lease.lease_id, &succeeded(0.5)).await.unwrap();
    // A second, different report on the ended lease is refused with the daemon's reason.
    let e = vm
        .complete(
            &lease.lease_id,
            &CompleteRequest {
                outcome: OutcomeKind::Failed,
                value: None,
                reason: Some("late".into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("already ended (succeeded)"), "{e}");
    // Once the rerun has ended, the pool's VMs have no business with that code.
    assert_eq!(read().await.unwrap().status(), 403);
    server.stop().await;
}

fn lease_request(agent_id: &str, pool: Option<&str>, wait_ms: u64) -> LeaseRequestBody {
    LeaseRequestBody {
        agent_id: agent_id.into(),
        agent_name: None,
        request_id: None,
        slots: 1,
        pool: pool.map(str::to_owned),
        sweep_id: None,
        wait_ms,
        ttl_ms: None,
        gpus: Vec::new(),
        gpu_overhead_mib: None,
    }
}

fn succeeded(value: f64) -> CompleteRequest {
    CompleteRequest {
        outcome: OutcomeKind::Succeeded,
        value: Some(value),
        reason: None,
    }
}
