//! The loops that must run once run where their role's leader lease is held: a daemon expires
//! leases only while it leads `expiry`, takes the role when its holder lets go, and gives its
//! roles up when it stops.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::json;
use spotsweep_api::{LeaseRequestBody, TrialState};
use spotsweep_store::{FleetStore, LeaderStore, SqliteOptions, SqliteStore};

async fn wait_for<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_only_on_the_daemon_that_leads_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteOptions::new(dir.path().join("spotsweep.db"));
    // Another daemon (as a PostgreSQL deployment would have) holds `expiry` when this one starts.
    let other = SqliteStore::open(&db).await.unwrap();
    assert!(other.lead("expiry", "another-daemon", 60_000).await.unwrap());

    let mut server = TestServer::start_in(dir.path().to_path_buf(), false).await;
    let api = server.api();
    let spec = json!({"name": "lead", "command": "true", "max_trials": 1, "parallelism": 1, "max_retries": 2,
                      "objective": {"metric": "loss"},
                      "parameters": {"x": {"type": "float", "low": 0, "high": 1}}});
    let sweep = api.submit_sweep(&spec).await.unwrap();
    let leased = api
        .lease(&LeaseRequestBody {
            agent_id: "gone".into(),
            agent_name: None,
            request_id: None,
            slots: 1,
            pool: None,
            sweep_id: Some(sweep.id),
            wait_ms: 0,
            ttl_ms: Some(5_000),
            gpus: Vec::new(),
            gpu_overhead_mib: None,
        })
        .await
        .unwrap();
    assert_eq!(leased.leases.len(), 1);
    let state = || async { api.trial(sweep.id, 0).await.unwrap().state };

    // Past the lease's end, nobody here expires it: this daemon does not lead `expiry`.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    assert_eq!(state().await, TrialState::Running);

    // Its holder lets go: this daemon takes the role at its next try and requeues the trial.
    other.resign("expiry", "another-daemon").await.unwrap();
    wait_for("the lease to expire", Duration::from_secs(10), || async {
        state().await == TrialState::Queued
    })
    .await;
    let me = other.daemon_id().await.unwrap();
    assert_eq!(
        other.leader("expiry").await.unwrap().as_deref(),
        Some(me.as_str())
    );

    // A daemon that stops gives its roles up at once.
    server.stop().await;
    assert_eq!(other.leader("expiry").await.unwrap(), None);
    other.close().await;
}
