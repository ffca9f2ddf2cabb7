//! The durable trial queue on a real SQLite file: leasing, parallelism, max_trials, fairness,
//! expiry and retries, idempotent requests and completions, objective reading.

use spotsweep_core::sweep::SweepSpec;
use spotsweep_store::*;

#[macro_use]
mod common;
use common::{Backend, Close, Queue, TrackedQueue};

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&SqliteOptions::new(dir.path().join("t.db")))
        .await
        .unwrap()
}

fn spec(name: &str, max_trials: u32, parallelism: u32, max_retries: u32) -> SweepSpec {
    serde_json::from_str(&format!(
        r#"{{"name": "{name}", "command": "run {{x}}",
            "parameters": {{"x": {{"type": "float", "low": 0, "high": 1}}}},
            "objective": {{"metric": "loss"}}, "max_trials": {max_trials},
            "parallelism": {parallelism}, "max_retries": {max_retries}}}"#
    ))
    .unwrap()
}

fn request(agent: &str, slots: u32) -> LeaseRequest {
    LeaseRequest {
        agent_id: agent.into(),
        request_id: None,
        slots,
        pool: Some("local".into()),
        sweep_id: None,
        ttl_ms: 60_000,
        gpus: Vec::new(),
        gpu_overhead_mib: 0,
    }
}

async fn leases_respect_parallelism_max_trials_and_share_fairly<B: Backend<Store: Queue>>() {
    let db = B::start().await;
    let store = db.open().await;
    let a = store.create_sweep(spec("a", 3, 2, 0), 1).await.unwrap();
    let b = store.create_sweep(spec("b", 3, 2, 0), 2).await.unwrap();
    let leased = store.lease_trials(&request("agent", 8)).await.unwrap();
    // Two per sweep (parallelism), interleaved fairly.
    assert_eq!(leased.len(), 4);
    let per = |id| leased.iter().filter(|l| l.trial.sweep_id == id).count();
    assert_eq!((per(a.id), per(b.id)), (2, 2));
    assert!(store.lease_trials(&request("agent", 8)).await.unwrap().is_empty());
    // Finishing frees a slot; max_trials = 3 is never overshot.
    for l in &leased {
        store
            .complete_trial(&l.lease_id, Outcome::Succeeded(Some(1.0)))
            .await
            .unwrap();
    }
    let more = store.lease_trials(&request("agent", 8)).await.unwrap();
    assert_eq!(more.len(), 2);
    for l in &more {
        store
            .complete_trial(&l.lease_id, Outcome::Succeeded(Some(0.5)))
            .await
            .unwrap();
    }
    assert!(store.lease_trials(&request("agent", 8)).await.unwrap().is_empty());
    let a = store.get_sweep(a.id).await.unwrap();
    assert_eq!(a.state, SweepState::Completed);
    assert_eq!(a.counts.get(TrialState::Completed), 3);
    assert_eq!(a.best.as_ref().map(|b| b.1), Some(0.5));
    assert_eq!(store.list_trials(a.id).await.unwrap().len(), 3);
}

async fn expired_leases_requeue_the_same_trial_until_retries_run_out<B: Backend<Store: Queue>>() {
    let db = B::start().await;
    let store = db.open().await;
    let s = store.create_sweep(spec("e", 1, 1, 1), 3).await.unwrap();
    let first = store.lease_trials(&request("a1", 1)).await.unwrap().remove(0);
    assert_eq!(store.expire_leases(now_ms() + 120_000).await.unwrap(), 1);
    let second = store.lease_trials(&request("a2", 1)).await.unwrap().remove(0);
    assert_eq!(second.trial.number, first.trial.number);
    assert_eq!(second.trial.run_id, first.trial.run_id);
    assert_eq!(second.trial.params, first.trial.params);
    assert_eq!(second.trial.attempt, 2);
    // The first agent comes back late: its lease is gone, and the trial is someone else's.
    assert_eq!(
        store.heartbeat(&first.lease_id, 60_000).await.unwrap(),
        HeartbeatAction::Stop
    );
    assert!(matches!(
        store
            .complete_trial(&first.lease_id, Outcome::Succeeded(Some(1.0)))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // A second expiry exceeds max_retries = 1: failed for good.
    store.expire_leases(now_ms() + 120_000).await.unwrap();
    let t = store.list_trials(s.id).await.unwrap().remove(0);
    assert_eq!(t.state, TrialState::Failed);
    assert!(t.reason.unwrap().contains("expired"));
    assert_eq!(store.get_sweep(s.id).await.unwrap().state, SweepState::Completed);
}

async fn late_results_of_untouched_trials_are_kept<B: Backend<Store: Queue>>() {
    let db = B::start().await;
    let store = db.open().await;
    store.create_sweep(spec("late", 1, 1, 3), 4).await.unwrap();
    let lease = store.lease_trials(&request("a1", 1)).await.unwrap().remove(0);
    store.expire_leases(now_ms() + 120_000).await.unwrap();
    let t = store
        .complete_trial(&lease.lease_id, Outcome::Succeeded(Some(2.0)))
        .await
        .unwrap();
    assert_eq!(
        (t.state, t.value, t.failures),
        (TrialState::Completed, Some(2.0), 0)
    );
    // Completions are idempotent.
    let again = store
        .complete_trial(&lease.lease_id, Outcome::Succeeded(Some(2.0)))
        .await
        .unwrap();
    assert_eq!(again.state, TrialState::Completed);
}

async fn retried_lease_requests_get_the_same_trials<B: Backend<Store: Queue>>() {
    let db = B::start().await;
    let store = db.open().await;
    store.create_sweep(spec("r", 10, 10, 0), 5).await.unwrap();
    let mut req = request("a", 3);
    req.request_id = Some("req-1".into());
    let first: Vec<String> = store
        .lease_trials(&req)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.lease_id)
        .collect();
    let again: Vec<String> = store
        .lease_trials(&req)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.lease_id)
        .collect();
    assert_eq!(first.len(), 3);
    assert_eq!(first, again);
}

async fn objective_comes_from_the_run_and_preemption_is_free<B: Backend<Store: TrackedQueue>>() {
    let db = B::start().await;
    let store = db.open().await;
    let s = store.create_sweep(spec("o", 2, 2, 0), 6).await.unwrap();
    let leases = store.lease_trials(&request("a", 2)).await.unwrap();
    let (l0, l1) = (&leases[0], &leases[1]);
    let point = |value, step| Metric {
        key: "loss".into(),
        value,
        timestamp: 1,
        step,
    };
    store
        .log_batch(
            &l0.trial.run_id,
            Batch {
                metrics: vec![point(3.0, 0), point(1.5, 1)],
                ..Batch::default()
            },
        )
        .await
        .unwrap();
    let t0 = store
        .complete_trial(&l0.lease_id, Outcome::Succeeded(None))
        .await
        .unwrap();
    assert_eq!(t0.value, Some(1.5));
    assert_eq!(
        store.get_run(&t0.run_id).await.unwrap().info.status,
        RunStatus::Finished
    );
    // Preempted: back in line without a failure (max_retries = 0 would otherwise fail it).
    let t1 = store
        .complete_trial(&l1.lease_id, Outcome::Preempted)
        .await
        .unwrap();
    assert_eq!((t1.state, t1.failures), (TrialState::Preempted, 0));
    let l1b = store.lease_trials(&request("b", 1)).await.unwrap().remove(0);
    assert_eq!(l1b.trial.number, l1.trial.number);
    // Exit 0 without the metric: failed, saying so.
    let t1 = store
        .complete_trial(&l1b.lease_id, Outcome::Succeeded(None))
        .await
        .unwrap();
    assert_eq!(t1.state, TrialState::Failed);
    assert!(
        t1.reason
            .unwrap()
            .contains("without logging the objective metric 'loss'")
    );
    assert_eq!(store.get_sweep(s.id).await.unwrap().state, SweepState::Completed);
}

async fn cancel_stops_everything_and_is_final<B: Backend<Store: Queue>>() {
    let db = B::start().await;
    let store = db.open().await;
    let s = store.create_sweep(spec("c", 5, 1, 0), 7).await.unwrap();
    let lease = store.lease_trials(&request("a", 1)).await.unwrap().remove(0);
    store
        .enqueue_trial(s.id, lease.trial.params.clone())
        .await
        .unwrap();
    let s = store.set_sweep_state(s.id, SweepState::Cancelled).await.unwrap();
    assert_eq!(s.counts.get(TrialState::Cancelled), 1);
    assert_eq!(
        store.heartbeat(&lease.lease_id, 60_000).await.unwrap(),
        HeartbeatAction::Stop
    );
    store
        .complete_trial(&lease.lease_id, Outcome::Cancelled)
        .await
        .unwrap();
    assert!(matches!(
        store.set_sweep_state(s.id, SweepState::Running).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store.lease_trials(&request("a", 1)).await.unwrap().is_empty());
}

/// Many workers leasing and completing at once: their transactions are committed in groups, and
/// a job that fails (an unknown lease, a conflicting second outcome) fails alone without taking
/// its group's leases and completions with it.
async fn concurrent_workers_lose_nothing_and_bad_jobs_fail_alone<B: Backend<Store: Queue>>() {
    let db = B::start().await;
    let store = db.open().await;
    let sweep = store.create_sweep(spec("busy", 300, 64, 0), 3).await.unwrap();
    let mut workers = Vec::new();
    for w in 0..64 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let leased = store.lease_trials(&request(&format!("w{w}"), 1)).await.unwrap();
                let Some(lease) = leased.into_iter().next() else {
                    break;
                };
                if w % 8 == 0 {
                    let err = store
                        .complete_trial("ls_unknown", Outcome::Succeeded(Some(1.0)))
                        .await;
                    assert!(matches!(err, Err(StoreError::NotFound(_))), "{err:?}");
                }
                let value = lease.trial.number as f64;
                let trial = store
                    .complete_trial(&lease.lease_id, Outcome::Succeeded(Some(value)))
                    .await
                    .unwrap();
                assert_eq!(trial.state, TrialState::Completed);
                if w % 8 == 1 {
                    let err = store.complete_trial(&lease.lease_id, Outcome::Preempted).await;
                    assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
                }
                done.push(lease.trial.number);
            }
            done
        }));
    }
    let mut numbers = Vec::new();
    for w in workers {
        numbers.extend(w.await.unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..300).collect::<Vec<i64>>(),
        "every trial leased and completed once"
    );
    let trials = store.list_trials(sweep.id).await.unwrap();
    assert_eq!(trials.len(), 300);
    for t in &trials {
        assert_eq!(
            (t.state, t.attempt, t.value),
            (TrialState::Completed, 1, Some(t.number as f64))
        );
    }
    let sweep = store.get_sweep(sweep.id).await.unwrap();
    assert_eq!(sweep.state, SweepState::Completed);
    assert_eq!(
        sweep.counts.by_state[TrialState::ALL
            .iter()
            .position(|s| *s == TrialState::Completed)
            .unwrap()],
        300
    );
}

fn tpe_spec() -> SweepSpec {
    serde_json::from_str(
        r#"{"name": "tpe", "command": "run {x}", "max_trials": 40, "parallelism": 1,
            "objective": {"metric": "loss"}, "sampler": {"type": "tpe", "seed": 9, "startup_trials": 5},
            "parameters": {"x": {"type": "float", "low": -5, "high": 5},
                           "k": {"type": "int", "low": 1, "high": 20, "log": true},
                           "c": {"type": "categorical", "choices": ["a", "b"]}}}"#,
    )
    .unwrap()
}

/// Leases and completes `n` trials of the only sweep, the value a function of the params.
async fn run_trials(store: &impl Queue, n: usize) -> Vec<spotsweep_core::sweep::Params> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let lease = store.lease_trials(&request("a", 1)).await.unwrap().remove(0);
        let p = &lease.trial.params;
        let x = match p["x"] {
            spotsweep_core::sweep::ParamValue::Float(x) => x,
            _ => unreachable!(),
        };
        store
            .complete_trial(&lease.lease_id, Outcome::Succeeded(Some((x - 1.0).powi(2))))
            .await
            .unwrap();
        seen.push(p.clone());
    }
    seen
}

async fn tpe_suggests_the_same_after_a_restart<B: Backend<Store: Queue>>() {
    let (d1, d2) = (B::start().await, B::start().await);
    // Without a restart: 16 trials.
    let store = d1.open().await;
    store.create_sweep(tpe_spec(), 9).await.unwrap();
    let straight = run_trials(&store, 16).await;
    // With a restart after 12: the 13th to 16th come from the history in the database.
    let store = d2.open().await;
    store.create_sweep(tpe_spec(), 9).await.unwrap();
    let mut restarted = run_trials(&store, 12).await;
    store.close().await;
    drop(store);
    let store = d2.open().await;
    restarted.extend(run_trials(&store, 4).await);
    assert_eq!(straight, restarted);
    // The model took over after the 5 startup trials and moved x towards 1.
    let xs: Vec<f64> = straight
        .iter()
        .map(|p| match p["x"] {
            spotsweep_core::sweep::ParamValue::Float(x) => x,
            _ => unreachable!(),
        })
        .collect();
    let best_late = xs[8..]
        .iter()
        .map(|x| (x - 1.0).abs())
        .fold(f64::INFINITY, f64::min);
    assert!(best_late < 1.0, "{xs:?}");
}

async fn trials_are_packed_onto_gpus_by_memory_and_an_oom_doubles_the_next_placement<
    B: Backend<Store: Queue>,
>() {
    let db = B::start().await;
    let store = db.open().await;
    let mut packed = spec("packed", 6, 6, 0);
    packed.resources = Some(spotsweep_core::sweep::Resources {
        gpus: None,
        gpu_memory_gb: Some(8.0),
    });
    let sweep = store.create_sweep(packed, 1).await.unwrap();
    let gpu = |free_mib| GpuFree {
        id: "0".into(),
        memory_mib: 40 * 1024,
        free_mib,
    };
    let ask = |free_mib, request_id: &str| LeaseRequest {
        request_id: Some(request_id.into()),
        gpus: vec![gpu(free_mib)],
        gpu_overhead_mib: 512,
        ..request("agent", 10)
    };
    let share = 8 * 1024 + 512;
    let leased = store.lease_trials(&ask(40 * 1024, "r1")).await.unwrap();
    assert_eq!(leased.len(), 4, "four of 8.5 GB fit in 40 GB, a fifth does not");
    for l in &leased {
        assert_eq!(
            l.gpus,
            Some(vec![GpuShare {
                id: "0".into(),
                memory_mib: share
            }])
        );
    }
    // A retried request answers with the same placements.
    let again = store.lease_trials(&ask(40 * 1024, "r1")).await.unwrap();
    let ids = |v: &[LeasedTrial]| {
        v.iter()
            .map(|l| (l.lease_id.clone(), l.gpus.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&again), ids(&leased));
    // What is left (6 GB) fits nothing; an agent without GPUs gets nothing of this sweep.
    assert!(
        store
            .lease_trials(&ask(40 * 1024 - 4 * share, "r2"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.lease_trials(&request("cpu", 4)).await.unwrap().is_empty());
    // Out of memory: back in the queue, not a failure, and it asks for twice as much next time.
    let t = store
        .complete_trial(
            &leased[0].lease_id,
            Outcome::OutOfMemory("CUDA out of memory".into()),
        )
        .await
        .unwrap();
    assert_eq!((t.state, t.failures), (TrialState::Queued, 0));
    let retried = store
        .lease_trials(&ask(40 * 1024 - 3 * share, "r3"))
        .await
        .unwrap();
    assert!(retried.is_empty(), "17 GB do not fit in the 14.5 GB left");
    let retried = store.lease_trials(&ask(40 * 1024, "r4")).await.unwrap();
    assert_eq!(retried[0].trial.number, leased[0].trial.number);
    assert_eq!(retried[0].trial.sweep_id, sweep.id);
    assert_eq!(retried[0].gpus.as_ref().unwrap()[0].memory_mib, 2 * share);
}

/// A sweep has its own run, named after it, holding its spec's summary as params; its trials'
/// runs are its children and carry its source tags; the run ends with the sweep: FINISHED when
/// it completes, KILLED when it is cancelled.
async fn a_sweep_is_the_parent_run_of_its_trials_and_ends_with_them<B: Backend<Store: TrackedQueue>>() {
    let db = B::start().await;
    let store = db.open().await;
    let mut with_source = spec("parent", 2, 2, 0);
    with_source.source = Some(spotsweep_core::sweep::Source {
        commit: Some("abc123".into()),
        branch: Some("main".into()),
        dirty: true,
        ..Default::default()
    });
    let s = store.create_sweep(with_source, 7).await.unwrap();
    let parent_id = s.run_id.clone().expect("a new sweep has a run");
    let parent = store.get_run(&parent_id).await.unwrap();
    assert_eq!(parent.info.status, RunStatus::Running);
    let params: std::collections::HashMap<_, _> = parent
        .params
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(params["max_trials"], "2");
    assert_eq!(params["goal"], "minimize");
    let leases = store.lease_trials(&request("a", 2)).await.unwrap();
    for lease in &leases {
        let run = store.get_run(&lease.trial.run_id).await.unwrap();
        let tags: std::collections::HashMap<_, _> = run
            .tags
            .iter()
            .map(|t| (t.key.as_str(), t.value.as_str()))
            .collect();
        assert_eq!(tags["mlflow.parentRunId"], parent_id);
        assert_eq!(tags["mlflow.source.git.commit"], "abc123");
        assert_eq!(tags["mlflow.source.git.branch"], "main");
        assert_eq!(tags["mlflow.source.type"], "PROJECT");
        assert_eq!(tags["spotsweep.source.dirty"], "true");
    }
    for lease in &leases {
        store
            .complete_trial(&lease.lease_id, Outcome::Succeeded(Some(1.0)))
            .await
            .unwrap();
    }
    assert_eq!(store.get_sweep(s.id).await.unwrap().state, SweepState::Completed);
    assert_eq!(
        store.get_run(&parent_id).await.unwrap().info.status,
        RunStatus::Finished
    );

    let cancelled = store
        .create_sweep(spec("parent-cancelled", 5, 1, 0), 7)
        .await
        .unwrap();
    store
        .set_sweep_state(cancelled.id, SweepState::Cancelled)
        .await
        .unwrap();
    let run = store.get_run(cancelled.run_id.as_deref().unwrap()).await.unwrap();
    assert_eq!(run.info.status, RunStatus::Killed);
}

async fn a_rerun_repeats_a_finished_trial_outside_the_search_on_its_own_pool<B: Backend<Store: Queue>>() {
    let db = B::start().await;
    let store = db.open().await;
    // TPE from the second trial on, so that its proposals depend on the history.
    let mut tpe = serde_json::to_value(tpe_spec()).unwrap();
    tpe["max_trials"] = 3.into();
    tpe["sampler"]["startup_trials"] = 1.into();
    let tpe: SweepSpec = serde_json::from_value(tpe).unwrap();
    let s = store.create_sweep(tpe.clone(), 11).await.unwrap();
    let first = store.lease_trials(&request("a", 1)).await.unwrap().remove(0);
    // Only a finished trial can run again, and only one that exists.
    let err = store.rerun_trial(s.id, 0, None).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(matches!(
        store.rerun_trial(s.id, 7, None).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.rerun_trial(999, 0, None).await,
        Err(StoreError::NotFound(_))
    ));
    store
        .complete_trial(&first.lease_id, Outcome::Succeeded(Some(0.25)))
        .await
        .unwrap();

    // The rerun of trial 0, asked for on another pool: numbered after the search, same
    // parameters and seed, not counted in trials_created, and the pool's demand.
    let rerun = store.rerun_trial(s.id, 0, Some("gpu")).await.unwrap();
    assert_eq!(
        (rerun.number, rerun.rerun_of, rerun.pool.as_deref()),
        (3, Some(0), Some("gpu"))
    );
    assert_eq!(
        (rerun.params.clone(), rerun.seed),
        (first.trial.params.clone(), first.trial.seed)
    );
    assert_ne!(rerun.run_id, first.trial.run_id);
    assert_eq!(store.get_sweep(s.id).await.unwrap().trials_created, 1);
    assert_eq!(store.pool_demand("gpu").await.unwrap().waiting, 1);
    // The sweep's own pool still gets its next proposal (trial 1), never the rerun.
    let next = store.lease_trials(&request("a", 4)).await.unwrap();
    assert_eq!(next.iter().map(|l| l.trial.number).collect::<Vec<_>>(), vec![1]);
    let mut gpu = request("g", 4);
    gpu.pool = Some("gpu".into());
    let again = store.lease_trials(&gpu).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].trial.number, 3);
    // Never pruned, and a better value does not make it the sweep's best.
    assert_eq!(
        store.heartbeat(&again[0].lease_id, 60_000).await.unwrap(),
        HeartbeatAction::Continue
    );
    store
        .complete_trial(&again[0].lease_id, Outcome::Succeeded(Some(0.0)))
        .await
        .unwrap();
    store
        .complete_trial(&next[0].lease_id, Outcome::Succeeded(Some(0.5)))
        .await
        .unwrap();
    let sweep = store.get_sweep(s.id).await.unwrap();
    assert_eq!(sweep.best.as_ref().map(|b| (b.0, b.1)), Some((0, 0.25)));
    // The search goes on to its last trial (after a restart, which reads the sampler's history
    // from the database): the history ignores the rerun.
    drop(store);
    let store = db.open().await;
    let last = store.lease_trials(&request("a", 4)).await.unwrap();
    assert_eq!(last.iter().map(|l| l.trial.number).collect::<Vec<_>>(), vec![2]);
    store
        .complete_trial(&last[0].lease_id, Outcome::Succeeded(Some(1.0)))
        .await
        .unwrap();
    assert_eq!(store.get_sweep(s.id).await.unwrap().state, SweepState::Completed);
    // The same sweep without the rerun proposes the same trials.
    let twin_db = B::start().await;
    let twin = twin_db.open().await;
    twin.create_sweep(tpe, 11).await.unwrap();
    let mut twin_params = Vec::new();
    for value in [0.25, 0.5, 1.0] {
        let l = twin.lease_trials(&request("a", 1)).await.unwrap().remove(0);
        twin_params.push(l.trial.params.clone());
        twin.complete_trial(&l.lease_id, Outcome::Succeeded(Some(value)))
            .await
            .unwrap();
    }
    let params: Vec<_> = [&first, &next[0], &last[0]]
        .iter()
        .map(|l| l.trial.params.clone())
        .collect();
    assert_eq!(params, twin_params);

    // A completed sweep still runs a rerun (on its own pool by default), numbered after the
    // last, and stays completed.
    let late = store.rerun_trial(s.id, 3, None).await.unwrap();
    assert_eq!(
        (late.number, late.rerun_of, late.pool.clone()),
        (4, Some(3), None)
    );
    assert!(store.pool_uses_code("local", "sha256:none").await.is_ok());
    let leased = store.lease_trials(&request("a", 4)).await.unwrap();
    assert_eq!(leased.len(), 1);
    store
        .complete_trial(&leased[0].lease_id, Outcome::Succeeded(Some(0.25)))
        .await
        .unwrap();
    let sweep = store.get_sweep(s.id).await.unwrap();
    assert_eq!(sweep.state, SweepState::Completed);
    assert_eq!(sweep.counts.get(TrialState::Completed), 5);

    // A cancelled sweep: a rerun asked for afterwards runs; one of a paused sweep waits.
    let c = store.create_sweep(spec("c", 2, 1, 0), 5).await.unwrap();
    let l = store.lease_trials(&request("a", 1)).await.unwrap().remove(0);
    store
        .complete_trial(&l.lease_id, Outcome::Succeeded(Some(1.0)))
        .await
        .unwrap();
    store.set_sweep_state(c.id, SweepState::Paused).await.unwrap();
    store.rerun_trial(c.id, 0, None).await.unwrap();
    assert!(store.lease_trials(&request("a", 4)).await.unwrap().is_empty());
    assert_eq!(store.pool_demand("local").await.unwrap().waiting, 0);
    store.set_sweep_state(c.id, SweepState::Cancelled).await.unwrap();
    let r = store.rerun_trial(c.id, 0, None).await.unwrap();
    assert_eq!(store.pool_demand("local").await.unwrap().waiting, 1);
    let l = store.lease_trials(&request("a", 4)).await.unwrap().remove(0);
    assert_eq!(l.trial.number, r.number);
    assert_eq!(
        store.heartbeat(&l.lease_id, 60_000).await.unwrap(),
        HeartbeatAction::Continue
    );
}

async fn the_objective_of_a_wide_write_is_read_before_it_is_folded<B: Backend<Store: TrackedQueue>>() {
    let db = B::start().await;
    let store = db.open().await;
    store.create_sweep(spec("w", 1, 1, 0), 6).await.unwrap();
    let lease = store.lease_trials(&request("a", 1)).await.unwrap().remove(0);
    // Forty keys in one write: its latest values are folded later (see `latest_fold`); the
    // trial completes at once, before any fold.
    for (step, loss) in [(0, 3.0), (1, 1.25)] {
        let mut metrics: Vec<Metric> = (0..40)
            .map(|k| Metric {
                key: format!("class_{k}"),
                value: k as f64,
                timestamp: 1,
                step,
            })
            .collect();
        metrics.push(Metric {
            key: "loss".into(),
            value: loss,
            timestamp: 1,
            step,
        });
        store
            .log_batch(
                &lease.trial.run_id,
                Batch {
                    metrics,
                    ..Batch::default()
                },
            )
            .await
            .unwrap();
    }
    let t = store
        .complete_trial(&lease.lease_id, Outcome::Succeeded(None))
        .await
        .unwrap();
    assert_eq!((t.state, t.value), (TrialState::Completed, Some(1.25)));
}

/// Two daemons on one database (two stores, each with its own connections), sixteen workers
/// split between them leasing one trial at a time and completing it, sometimes twice (the second
/// time through the other daemon, as a retry that lands elsewhere): every trial is proposed,
/// leased and completed exactly once, `max_trials` is met exactly, and never more trials run at
/// once than the sweep's parallelism.
async fn two_daemons_on_one_database_run_every_trial_once_within_parallelism<B: Backend<Store: Queue>>() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    let db = B::start().await;
    let stores = [db.open().await, db.open().await];
    let (total, parallelism) = (240, 6);
    let sweep = stores[0]
        .create_sweep(spec("shared", total, parallelism, 0), 8)
        .await
        .unwrap();
    // Leases held by the workers now: taken after a lease commits and given back before the
    // completion commits, so never more than the trials the database has running.
    let holding = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let mut workers = Vec::new();
    for w in 0..16 {
        let (mine, other) = (stores[w % 2].clone(), stores[(w + 1) % 2].clone());
        let (holding, most) = (holding.clone(), most.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut empty = 0;
            // A worker stops after a few empty answers in a row: at the end of the sweep, or
            // while the other workers hold every slot.
            while empty < 20 {
                let leased = mine.lease_trials(&request(&format!("w{w}"), 1)).await.unwrap();
                let Some(lease) = leased.into_iter().next() else {
                    empty += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                };
                empty = 0;
                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                holding.fetch_sub(1, Ordering::SeqCst);
                let outcome = Outcome::Succeeded(Some(lease.trial.number as f64));
                let trial = mine
                    .complete_trial(&lease.lease_id, outcome.clone())
                    .await
                    .unwrap();
                assert_eq!(trial.state, TrialState::Completed);
                if w % 4 == 0 {
                    let again = other.complete_trial(&lease.lease_id, outcome).await.unwrap();
                    assert_eq!((again.state, again.value), (TrialState::Completed, trial.value));
                }
                done.push(lease.trial.number);
            }
            done
        }));
    }
    let mut numbers = Vec::new();
    for w in workers {
        numbers.extend(w.await.unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..i64::from(total)).collect::<Vec<i64>>(),
        "every trial leased and completed once"
    );
    let most = most.load(Ordering::SeqCst);
    assert!(most <= i64::from(parallelism), "{most} trials ran at once");
    let trials = stores[1].list_trials(sweep.id).await.unwrap();
    assert_eq!(trials.len(), total as usize);
    for t in &trials {
        assert_eq!(
            (t.state, t.attempt, t.value),
            (TrialState::Completed, 1, Some(t.number as f64))
        );
    }
    let sweep = stores[1].get_sweep(sweep.id).await.unwrap();
    assert_eq!(
        (
            sweep.state,
            sweep.trials_created,
            sweep.counts.get(TrialState::Completed)
        ),
        (SweepState::Completed, i64::from(total), i64::from(total))
    );
}

/// Two daemons lease from one sweep at once, many times over: between them they never hold
/// more trials than its parallelism, nor create more than `max_trials`.
async fn two_daemons_leasing_at_once_never_overshoot_parallelism_or_max_trials<B: Backend<Store: Queue>>() {
    let db = B::start().await;
    let stores = [db.open().await, db.open().await];
    for round in 0..10 {
        let sweep = stores[0]
            .create_sweep(spec(&format!("race{round}"), 5, 3, 0), round)
            .await
            .unwrap();
        let mut asks = Vec::new();
        for a in 0..8 {
            let store = stores[a % 2].clone();
            let mut ask = request(&format!("a{a}"), 2);
            ask.sweep_id = Some(sweep.id);
            asks.push(tokio::spawn(
                async move { store.lease_trials(&ask).await.unwrap() },
            ));
        }
        let mut leased = Vec::new();
        for a in asks {
            leased.extend(a.await.unwrap());
        }
        assert_eq!(leased.len(), 3, "round {round}: parallelism 3");
        let mut numbers: Vec<i64> = leased.iter().map(|l| l.trial.number).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, vec![0, 1, 2]);
        // Completing them all at once through both daemons frees the last two slots of five.
        let mut ends = Vec::new();
        for (i, l) in leased.into_iter().enumerate() {
            let store = stores[i % 2].clone();
            ends.push(tokio::spawn(async move {
                store
                    .complete_trial(&l.lease_id, Outcome::Succeeded(Some(1.0)))
                    .await
                    .unwrap()
            }));
        }
        for e in ends {
            e.await.unwrap();
        }
        let mut asks = Vec::new();
        for a in 0..8 {
            let store = stores[a % 2].clone();
            let mut ask = request(&format!("b{a}"), 3);
            ask.sweep_id = Some(sweep.id);
            asks.push(tokio::spawn(
                async move { store.lease_trials(&ask).await.unwrap() },
            ));
        }
        let mut leased = Vec::new();
        for a in asks {
            leased.extend(a.await.unwrap());
        }
        assert_eq!(leased.len(), 2, "round {round}: max_trials 5");
        // The last two end at once: the sweep completes (neither completion may miss it).
        let mut ends = Vec::new();
        for (i, l) in leased.into_iter().enumerate() {
            let store = stores[i % 2].clone();
            ends.push(tokio::spawn(async move {
                store
                    .complete_trial(&l.lease_id, Outcome::Succeeded(Some(1.0)))
                    .await
                    .unwrap()
            }));
        }
        for e in ends {
            e.await.unwrap();
        }
        let s = stores[1].get_sweep(sweep.id).await.unwrap();
        assert_eq!(
            (s.state, s.trials_created),
            (SweepState::Completed, 5),
            "round {round}"
        );
    }
}

/// Two daemons expire the same leases at once: each lease expires once, its trial goes back to
/// the queue once with one failure counted, and a retried lease request answered by the other
/// daemon gets the same trials.
async fn two_daemons_expire_each_lease_once_and_answer_a_retried_request_alike<B: Backend<Store: Queue>>() {
    let db = B::start().await;
    let stores = [db.open().await, db.open().await];
    let sweep = stores[0]
        .create_sweep(spec("expire", 20, 20, 3), 4)
        .await
        .unwrap();
    let mut ask = request("a", 20);
    ask.request_id = Some("req-shared".into());
    // The same request sent to both daemons at once, as a retry after a timeout can be.
    let (first, second) = tokio::join!(stores[0].lease_trials(&ask), stores[1].lease_trials(&ask));
    let ids = |v: Vec<LeasedTrial>| {
        let mut ids: Vec<String> = v.into_iter().map(|l| l.lease_id).collect();
        ids.sort();
        ids
    };
    let (first, second) = (ids(first.unwrap()), ids(second.unwrap()));
    assert_eq!(first.len(), 20);
    assert_eq!(first, second);
    let later = now_ms() + 120_000;
    let (a, b) = tokio::join!(stores[0].expire_leases(later), stores[1].expire_leases(later));
    assert_eq!(a.unwrap() + b.unwrap(), 20);
    for t in stores[1].list_trials(sweep.id).await.unwrap() {
        assert_eq!((t.state, t.failures, t.attempt), (TrialState::Queued, 1, 1));
    }
    assert_eq!(stores[0].next_lease_expiry().await.unwrap(), None);
}

/// Two daemons create sweeps of one new experiment at once: both sweeps are made, in the one
/// experiment that was created, each with its own parent run.
async fn two_daemons_creating_sweeps_of_one_new_experiment_at_once_share_it<B: Backend<Store: Queue>>() {
    let db = B::start().await;
    let stores = [db.open().await, db.open().await];
    for round in 0..5 {
        let mut a = spec(&format!("one{round}"), 2, 1, 0);
        let mut b = spec(&format!("two{round}"), 2, 1, 0);
        a.experiment = Some(format!("shared-{round}"));
        b.experiment = a.experiment.clone();
        let (a, b) = tokio::join!(stores[0].create_sweep(a, 1), stores[1].create_sweep(b, 2));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.experiment_id, b.experiment_id, "round {round}");
        assert_ne!(a.id, b.id);
        assert!(a.run_id.is_some() && a.run_id != b.run_id);
    }
}

/// A TPE sweep whose trials are leased and completed through two daemons in turn proposes
/// exactly what it proposes through one: no daemon suggests from a history that the other has
/// moved on. (PostgreSQL only: SQLite serves one daemon, which keeps the history in memory; two
/// SQLite stores on one file each keep their own and fail this test, which is how it was checked
/// to catch a history cache that another daemon's writes leave stale.)
async fn a_tpe_sweep_served_by_two_daemons_in_turn_suggests_what_one_daemon_does<B: Backend<Store: Queue>>() {
    let (alone, shared) = (B::start().await, B::start().await);
    let store = alone.open().await;
    store.create_sweep(tpe_spec(), 9).await.unwrap();
    let straight = run_trials(&store, 14).await;
    let stores = [shared.open().await, shared.open().await];
    stores[0].create_sweep(tpe_spec(), 9).await.unwrap();
    let mut alternated = Vec::new();
    for i in 0..14 {
        // Each daemon leases after the other completed: it must see that trial's result.
        alternated.extend(run_trials(&stores[i % 2], 1).await);
    }
    assert_eq!(straight, alternated);
}

#[tokio::test]
async fn a_stored_state_this_build_does_not_know_is_an_error_not_a_default() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let s = store.create_sweep(spec("u", 2, 1, 0), 3).await.unwrap();
    store.lease_trials(&request("a", 1)).await.unwrap();
    store.close().await;
    // What a damaged file may hold (the schema's CHECK constraints set aside to write it).
    use sqlx::Connection;
    let mut raw = sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("UPDATE trials SET state = 'suspended'")
        .execute(&mut raw)
        .await
        .unwrap();
    let store = open(&dir).await;
    let e = store.list_trials(s.id).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Incompatible(m) if m.contains("unknown trial state \"suspended\"")),
        "{e:?}"
    );
    // The sweep's counts by state read it too: not skipped, an error.
    let e = store.get_sweep(s.id).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Incompatible(m) if m.contains("unknown trial state \"suspended\"")),
        "{e:?}"
    );
    store.close().await;
    sqlx::query("UPDATE trials SET state = 'running'; UPDATE sweeps SET state = 'hibernating'")
        .execute(&mut raw)
        .await
        .unwrap();
    let store = open(&dir).await;
    let e = store.get_sweep(s.id).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Incompatible(m) if m.contains("unknown sweep state \"hibernating\"")),
        "{e:?}"
    );
    let e = store.set_sweep_state(s.id, SweepState::Paused).await.unwrap_err();
    assert!(matches!(e, StoreError::Incompatible(_)), "{e:?}");
}

/// PostgreSQL's reading of a stored state this build does not know (the SQLite test above):
/// an error naming it, not a default.
#[tokio::test]
async fn on_postgres_a_stored_state_this_build_does_not_know_is_an_error_not_a_default() {
    use sqlx::Connection;
    let db = common::Postgres::start().await;
    let store = db.open().await;
    let s = store.create_sweep(spec("u", 2, 1, 0), 3).await.unwrap();
    store.lease_trials(&request("a", 1)).await.unwrap();
    // What a damaged database may hold (the schema's CHECK constraints dropped to write it).
    let mut raw = sqlx::PgConnection::connect(db.url()).await.unwrap();
    for sql in [
        "ALTER TABLE trials DROP CONSTRAINT trials_state_check",
        "ALTER TABLE sweeps DROP CONSTRAINT sweeps_state_check",
        "UPDATE trials SET state = 'suspended'",
    ] {
        sqlx::query(sql).execute(&mut raw).await.unwrap();
    }
    let e = store.list_trials(s.id).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Incompatible(m) if m.contains("unknown trial state \"suspended\"")),
        "{e:?}"
    );
    let e = store.get_sweep(s.id).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Incompatible(m) if m.contains("unknown trial state \"suspended\"")),
        "{e:?}"
    );
    for sql in [
        "UPDATE trials SET state = 'running'",
        "UPDATE sweeps SET state = 'hibernating'",
    ] {
        sqlx::query(sql).execute(&mut raw).await.unwrap();
    }
    let e = store.get_sweep(s.id).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Incompatible(m) if m.contains("unknown sweep state \"hibernating\"")),
        "{e:?}"
    );
    let e = store.set_sweep_state(s.id, SweepState::Paused).await.unwrap_err();
    assert!(matches!(e, StoreError::Incompatible(_)), "{e:?}");
}

conformance!(sqlite: crate::common::Sqlite;
    leases_respect_parallelism_max_trials_and_share_fairly,
    expired_leases_requeue_the_same_trial_until_retries_run_out,
    late_results_of_untouched_trials_are_kept,
    retried_lease_requests_get_the_same_trials,
    objective_comes_from_the_run_and_preemption_is_free,
    cancel_stops_everything_and_is_final,
    concurrent_workers_lose_nothing_and_bad_jobs_fail_alone,
    tpe_suggests_the_same_after_a_restart,
    trials_are_packed_onto_gpus_by_memory_and_an_oom_doubles_the_next_placement,
    a_sweep_is_the_parent_run_of_its_trials_and_ends_with_them,
    a_rerun_repeats_a_finished_trial_outside_the_search_on_its_own_pool,
    the_objective_of_a_wide_write_is_read_before_it_is_folded,
    two_daemons_on_one_database_run_every_trial_once_within_parallelism,
    two_daemons_leasing_at_once_never_overshoot_parallelism_or_max_trials,
    two_daemons_expire_each_lease_once_and_answer_a_retried_request_alike,
    two_daemons_creating_sweeps_of_one_new_experiment_at_once_share_it,
);

conformance!(postgres: crate::common::Postgres;
    leases_respect_parallelism_max_trials_and_share_fairly,
    expired_leases_requeue_the_same_trial_until_retries_run_out,
    late_results_of_untouched_trials_are_kept,
    retried_lease_requests_get_the_same_trials,
    objective_comes_from_the_run_and_preemption_is_free,
    a_sweep_is_the_parent_run_of_its_trials_and_ends_with_them,
    the_objective_of_a_wide_write_is_read_before_it_is_folded,
    cancel_stops_everything_and_is_final,
    concurrent_workers_lose_nothing_and_bad_jobs_fail_alone,
    tpe_suggests_the_same_after_a_restart,
    trials_are_packed_onto_gpus_by_memory_and_an_oom_doubles_the_next_placement,
    a_rerun_repeats_a_finished_trial_outside_the_search_on_its_own_pool,
    two_daemons_on_one_database_run_every_trial_once_within_parallelism,
    two_daemons_leasing_at_once_never_overshoot_parallelism_or_max_trials,
    two_daemons_expire_each_lease_once_and_answer_a_retried_request_alike,
    two_daemons_creating_sweeps_of_one_new_experiment_at_once_share_it,
    a_tpe_sweep_served_by_two_daemons_in_turn_suggests_what_one_daemon_does,
);
