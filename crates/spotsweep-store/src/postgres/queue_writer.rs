//! Group commit for the trial queue on PostgreSQL. Every lease and completion of a sweep takes
//! the sweep's row lock (see `sweeps`), so one busy sweep is served one transaction at a time
//! across all daemons; with dozens of agents per daemon, most of that time went to handing the
//! lock from one waiting transaction to the next and to a commit each. One task per daemon takes
//! the leases and completions waiting at that moment and runs them one after the other in one
//! transaction: the sweep's lock is taken once per group and the group commits once. Nobody is
//! answered before the commit that holds their writes.
//!
//! Lock order (see `sweeps`): the group first locks, in sweep id order, the sweeps of its
//! completions, waiting for each; its lease requests then wait only for sweeps it holds and
//! pass over the others another transaction holds. So two daemons' groups never wait on each
//! other in a cycle.
//!
//! When a job of a group fails (a refused late completion, a lost race), the group is rolled
//! back and each job runs again in a transaction of its own, so that one bad job fails alone
//! and leaves nothing half-written.
//!
//! Ownership: the store's clones hold the `Sender`; this task owns the `Receiver` and a store
//! without one (so that it does not keep itself alive), and ends when the last clone is dropped.

use sqlx::PgConnection;
use tokio::sync::{mpsc, oneshot};

use super::{PgStore, map_err};
use crate::sqlite::catch_panic;
use crate::{LeaseRequest, LeasedTrial, Outcome, Result, StoreError, Trial};

/// Most jobs committed together.
const MAX_GROUP: usize = 64;

/// One caller's lease or completion, and where its answer goes.
pub(crate) enum QueueJob {
    Lease(LeaseRequest, oneshot::Sender<Result<Vec<LeasedTrial>>>),
    Complete(String, Outcome, oneshot::Sender<Result<Trial>>),
}

/// A job's result, held until its group commits.
enum Answer {
    Leased(Result<Vec<LeasedTrial>>),
    Completed(Box<Result<Trial>>),
}

impl Answer {
    fn is_err(&self) -> bool {
        match self {
            Self::Leased(r) => r.is_err(),
            Self::Completed(r) => r.is_err(),
        }
    }
}

impl QueueJob {
    /// Runs the job in the group's transaction; `locked`: the leases whose sweeps the group
    /// locked at its start.
    async fn run(
        &self,
        store: &PgStore,
        tx: &mut PgConnection,
        held: &mut Vec<i64>,
        locked: &[String],
    ) -> Answer {
        match self {
            Self::Lease(request, _) => {
                Answer::Leased(catch_panic("leasing trials", store.lease(tx, request, held)).await)
            }
            Self::Complete(lease_id, outcome, _) => Answer::Completed(Box::new(
                catch_panic(
                    "completing a lease",
                    store.complete(tx, lease_id, outcome.clone(), locked.contains(lease_id)),
                )
                .await,
            )),
        }
    }

    /// The answer of this kind of job when it could not run.
    fn error(&self, error: StoreError) -> Answer {
        match self {
            Self::Lease(..) => Answer::Leased(Err(error)),
            Self::Complete(..) => Answer::Completed(Box::new(Err(error))),
        }
    }

    /// Sends the answer; a caller that went away is no error (a retried lease request gets the
    /// same leases by its request id).
    fn answer(self, answer: Answer) {
        match (self, answer) {
            (Self::Lease(_, done), Answer::Leased(r)) => {
                let _ = done.send(r);
            }
            (Self::Complete(_, _, done), Answer::Completed(r)) => {
                let _ = done.send(*r);
            }
            (job, _) => {
                let answer = job.error(StoreError::Busy);
                job.answer(answer);
            }
        }
    }
}

/// Starts the task for `store` (a store without a sender of its own); returns the sender.
pub(super) fn start(store: PgStore) -> mpsc::Sender<QueueJob> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(store, rx));
    tx
}

/// Leases trials and waits until the leases are committed.
pub(super) async fn lease(jobs: &mpsc::Sender<QueueJob>, request: LeaseRequest) -> Result<Vec<LeasedTrial>> {
    let (done, answer) = oneshot::channel();
    jobs.send(QueueJob::Lease(request, done))
        .await
        .map_err(|_| StoreError::Busy)?;
    answer.await.map_err(|_| StoreError::Busy)?
}

/// Completes a lease and waits until the outcome is committed.
pub(super) async fn complete(
    jobs: &mpsc::Sender<QueueJob>,
    lease_id: String,
    outcome: Outcome,
) -> Result<Trial> {
    let (done, answer) = oneshot::channel();
    jobs.send(QueueJob::Complete(lease_id, outcome, done))
        .await
        .map_err(|_| StoreError::Busy)?;
    answer.await.map_err(|_| StoreError::Busy)?
}

async fn run(store: PgStore, mut rx: mpsc::Receiver<QueueJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let answers = if jobs.len() == 1 {
            None
        } else {
            match run_group(&store, &jobs).await {
                Ok(answers) => Some(answers),
                Err(e) => {
                    tracing::debug!(jobs = jobs.len(), error = %e, "a queue group failed; running its jobs one by one");
                    None
                }
            }
        };
        match answers {
            Some(answers) => {
                for (job, answer) in jobs.into_iter().zip(answers) {
                    job.answer(answer);
                }
            }
            None => {
                for job in jobs {
                    let answer = run_alone(&store, &job).await;
                    job.answer(answer);
                }
            }
        }
    }
}

/// Runs every job in one transaction and commits it; `Err` (rolled back) when any job or the
/// commit failed.
async fn run_group(store: &PgStore, jobs: &[QueueJob]) -> Result<Vec<Answer>> {
    let mut tx = store.pool.begin().await.map_err(map_err)?;
    // The completions' sweeps first, in id order (see the module documentation), with their
    // experiments share-locked as every held sweep's is (see `sweeps::lock_sweep`).
    let completing: Vec<&str> = jobs
        .iter()
        .filter_map(|j| match j {
            QueueJob::Complete(lease_id, ..) => Some(lease_id.as_str()),
            QueueJob::Lease(..) => None,
        })
        .collect();
    let locks: Vec<(i64, String)> = if completing.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT s.id, l.id FROM leases l JOIN trials t ON t.id = l.trial_id JOIN sweeps s ON s.id = t.sweep_id \
               JOIN experiments e ON e.experiment_id = s.experiment_id \
             WHERE l.id = ANY($1) ORDER BY s.id FOR UPDATE OF s FOR SHARE OF e",
        )
        .bind(&completing)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?
    };
    let mut held: Vec<i64> = locks.iter().map(|(sweep, _)| *sweep).collect();
    held.dedup();
    let locked: Vec<String> = locks.into_iter().map(|(_, lease)| lease).collect();
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        let answer = job.run(store, &mut tx, &mut held, &locked).await;
        if answer.is_err() {
            // Dropping the transaction rolls it back.
            return Err(StoreError::Conflict("a job of the group failed".into()));
        }
        answers.push(answer);
    }
    tx.commit().await.map_err(map_err)?;
    Ok(answers)
}

/// Runs one job in a transaction of its own: committed when it succeeded, rolled back otherwise.
async fn run_alone(store: &PgStore, job: &QueueJob) -> Answer {
    let mut tx = match store.pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return job.error(map_err(e)),
    };
    let answer = job.run(store, &mut tx, &mut Vec::new(), &[]).await;
    if answer.is_err() {
        return answer;
    }
    match tx.commit().await {
        Ok(()) => answer,
        Err(e) => job.error(map_err(e)),
    }
}
