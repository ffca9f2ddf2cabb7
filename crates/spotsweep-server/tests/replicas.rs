//! Several daemons on one PostgreSQL database (`SPOTSWEEP_TEST_DATABASE_URL`, which
//! `scripts/test` sets to a throw-away cluster): any daemon answers any request, work taken on
//! one is never taken on another, a long poll on one wakes when another gets work, a token made
//! on one works on the others at once, and a TPE sweep suggests the same whichever daemon
//! serves it.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::json;
use spotsweep_api::client::Client;
use spotsweep_api::{CompleteRequest, LeaseRequestBody, OutcomeKind, SweepState, TrialState};

/// A fresh database on the test server, as a URL.
async fn fresh_database() -> String {
    use sqlx::Connection;
    let admin = std::env::var("SPOTSWEEP_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "SPOTSWEEP_TEST_DATABASE_URL is not set: run scripts/test (it starts a throw-away PostgreSQL), \
             or point it at a server where these tests may create databases"
        )
    });
    let (server, _) = admin.rsplit_once('/').expect("the URL ends with /DATABASE");
    let name = format!("r_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    format!("{server}/{name}")
}

/// `n` daemons on one fresh database, each with a data dir of its own; the admin token is the
/// first one's (the first start writes it).
async fn replicas(n: usize) -> (Vec<TestServer>, String) {
    let url = fresh_database().await;
    let mut daemons = vec![TestServer::start_on_database(&url, None).await];
    let token = daemons[0].token.clone();
    for _ in 1..n {
        daemons.push(TestServer::start_on_database(&url, Some(&token)).await);
    }
    (daemons, url)
}

fn lease_request(agent: &str, sweep_id: i64, wait_ms: u64) -> LeaseRequestBody {
    LeaseRequestBody {
        agent_id: agent.into(),
        agent_name: None,
        request_id: None,
        slots: 1,
        pool: None,
        sweep_id: Some(sweep_id),
        wait_ms,
        ttl_ms: Some(60_000),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_share_one_queue_and_every_trial_is_completed_once() {
    const TRIALS: i64 = 5_000;
    const WORKERS: usize = 64;
    let (mut daemons, _) = replicas(3).await;
    let apis: Vec<Client> = daemons.iter().map(TestServer::api).collect();
    let spec = json!({"name": "shared", "command": "true", "max_trials": TRIALS, "parallelism": WORKERS,
                      "objective": {"metric": "loss"},
                      "parameters": {"x": {"type": "float", "low": 0, "high": 1}}});
    let sweep = apis[1].submit_sweep(&spec).await.unwrap();

    // Each worker talks to one daemon, as agents behind a load balancer would; what each
    // completed is counted by trial number.
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let api = apis[w % apis.len()].clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let leased = api
                        .lease(&lease_request(&format!("worker-{w}"), sweep.id, 1_000))
                        .await
                        .unwrap();
                    if leased.leases.is_empty() {
                        let state = api.sweep(sweep.id).await.unwrap().state;
                        if state != SweepState::Running {
                            return done;
                        }
                        continue;
                    }
                    for lease in leased.leases {
                        let x = lease.trial.params["x"].as_f64().unwrap();
                        let trial = api.complete(&lease.lease_id, &succeeded(x)).await.unwrap();
                        assert_eq!(trial.state, TrialState::Completed);
                        done.push(trial.number);
                    }
                }
            })
        })
        .collect();
    let mut completed = BTreeMap::<i64, usize>::new();
    for w in workers {
        for number in w.await.unwrap() {
            *completed.entry(number).or_default() += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{TRIALS} trials, {WORKERS} workers over 3 daemons: {:.1} s ({:.0} trials/s; debug build)",
        elapsed.as_secs_f64(),
        TRIALS as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(completed.len(), TRIALS as usize, "every trial was completed");
    assert!(
        completed.values().all(|&n| n == 1),
        "no trial was completed twice"
    );
    assert_eq!(*completed.keys().last().unwrap(), TRIALS - 1);
    // Every daemon reads the same end.
    for api in &apis {
        let s = api.sweep(sweep.id).await.unwrap();
        assert_eq!(s.state, SweepState::Completed);
        let trials = api.trials(sweep.id).await.unwrap().trials;
        assert_eq!(trials.len(), TRIALS as usize);
        assert!(
            trials
                .iter()
                .all(|t| t.state == TrialState::Completed && t.attempts == 1)
        );
    }
    for d in &mut daemons {
        d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_one_daemon_wakes_when_another_gets_work() {
    let (mut daemons, _) = replicas(2).await;
    let (a, b) = (daemons[0].api(), daemons[1].api());
    let spec = json!({"name": "wake", "command": "true", "max_trials": 2, "parallelism": 2,
                      "objective": {"metric": "loss"},
                      "parameters": {"x": {"type": "float", "low": 0, "high": 1}}});
    let sweep = b.submit_sweep(&spec).await.unwrap();
    // Take the sweep's first trial and pause it, so that the poll below finds no work.
    let first = a.lease(&lease_request("w0", sweep.id, 0)).await.unwrap();
    assert_eq!(first.leases.len(), 1);
    b.request(
        reqwest::Method::POST,
        &format!("/api/v1/sweeps/{}/pause", sweep.id),
    )
    .send()
    .await
    .unwrap()
    .error_for_status()
    .unwrap();

    // A poll on daemon A, then work on daemon B: A's poll answers well before its 20 s, and
    // before A's fallback look every 5 s could have found it.
    let poll = tokio::spawn({
        let a = a.clone();
        async move {
            let asked = Instant::now();
            let leased = a.lease(&lease_request("w1", sweep.id, 20_000)).await.unwrap();
            (leased, asked.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resumed_at = Instant::now();
    b.request(
        reqwest::Method::POST,
        &format!("/api/v1/sweeps/{}/resume", sweep.id),
    )
    .send()
    .await
    .unwrap()
    .error_for_status()
    .unwrap();
    let (leased, waited) = poll.await.unwrap();
    let after_resume = resumed_at.elapsed();
    assert_eq!(leased.leases.len(), 1, "the poll got the resumed sweep's trial");
    assert!(
        waited >= Duration::from_millis(400),
        "the poll waited for the work ({waited:?})"
    );
    assert!(
        after_resume < Duration::from_millis(2_000),
        "the poll on A woke {after_resume:?} after B resumed the sweep"
    );
    for d in &mut daemons {
        d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_on_one_daemon_work_on_the_others_and_revoked_ones_stop() {
    let (mut daemons, _) = replicas(2).await;
    let (a, b) = (&daemons[0], &daemons[1]);
    let created: serde_json::Value = a
        .post("/api/v1/tokens", json!({"name": "lab"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    // At once on the other daemon.
    assert!(
        b.api_as(&secret).sweeps().await.is_ok(),
        "B accepts the token A made"
    );

    // A trial's token, handed out by A, works on B for its own run.
    let spec = json!({"name": "tok", "command": "true", "max_trials": 1, "parallelism": 1,
                      "objective": {"metric": "loss"},
                      "parameters": {"x": {"type": "float", "low": 0, "high": 1}}});
    let sweep = a.api().submit_sweep(&spec).await.unwrap();
    let lease = a
        .api()
        .lease(&lease_request("w", sweep.id, 0))
        .await
        .unwrap()
        .leases
        .remove(0);
    let trial_token = lease.trial_token.clone().expect("a trial token");
    b.api_as(&trial_token)
        .set_run_tags(&lease.trial.run_id, &[("from", "b".into())])
        .await
        .expect("B accepts the trial token A handed out");

    // Revoked on B: refused on A soon after (A hears of it).
    let revoked = b
        .client
        .delete(format!("{}/api/v1/tokens/{id}", b.url))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 204);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match a.api_as(&secret).sweeps().await {
            Err(e) if e.status() == Some(401) => break,
            _ => {
                assert!(Instant::now() < deadline, "A still accepts a token revoked on B");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for d in &mut daemons {
        d.stop().await;
    }
}

/// Runs a TPE sweep to its end, leasing each trial from `daemons[i % len]`, and returns the
/// parameters suggested, in order.
async fn tpe_suggestions(daemons: &[TestServer]) -> Vec<serde_json::Value> {
    let spec = json!({"name": "tpe", "command": "true", "max_trials": 16, "parallelism": 1,
                      "sampler": {"type": "tpe", "seed": 11, "startup_trials": 4},
                      "objective": {"metric": "loss", "goal": "minimize"},
                      "parameters": {"x": {"type": "float", "low": -5, "high": 5},
                                     "k": {"type": "categorical", "choices": ["a", "b", "c"]}}});
    let sweep = daemons[0].api().submit_sweep(&spec).await.unwrap();
    let mut suggested = Vec::new();
    for i in 0.. {
        let api = daemons[i % daemons.len()].api();
        let leased = api.lease(&lease_request("w", sweep.id, 0)).await.unwrap();
        let Some(lease) = leased.leases.into_iter().next() else {
            break;
        };
        let x = lease.trial.params["x"].as_f64().unwrap();
        let k = lease.trial.params["k"].as_str().unwrap();
        let loss = (x - 1.5).powi(2) + if k == "b" { 0.0 } else { 1.0 };
        // Completed on the other daemon than the one that leased it.
        let other = daemons[(i + 1) % daemons.len()].api();
        other.complete(&lease.lease_id, &succeeded(loss)).await.unwrap();
        suggested.push(lease.trial.params);
    }
    suggested
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpe_sweep_served_by_two_daemons_suggests_what_one_daemon_suggests() {
    let (mut one, _) = replicas(1).await;
    let alone = tpe_suggestions(&one).await;
    let (mut two, _) = replicas(2).await;
    let shared = tpe_suggestions(&two).await;
    assert_eq!(alone.len(), 16);
    assert_eq!(
        shared, alone,
        "the same suggestions, whichever daemon served them"
    );
    let distinct: HashSet<String> = alone.iter().map(|p| p.to_string()).collect();
    assert!(distinct.len() > 8, "TPE explored: {alone:?}");
    for d in one.iter_mut().chain(two.iter_mut()) {
        d.stop().await;
    }
}
