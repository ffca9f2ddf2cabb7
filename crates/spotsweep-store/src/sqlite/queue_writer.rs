//! Group commit for the trial queue. Each lease and each completion is a short write
//! transaction, and under many agents and ask-and-tell workers their `BEGIN`/`COMMIT` round
//! trips to the single writer connection would cost more than their work. One task takes the
//! leases and completions waiting at that moment, runs them one after the other in one
//! transaction (each sees the ones before it, so leasing stays serialised and `max_trials` is
//! never overshot), commits, then answers each caller. Nobody is answered before the commit that
//! holds their writes.
//!
//! When any job of a group fails, the group is rolled back and each job runs again in a
//! transaction of its own, so that one bad job fails alone and leaves nothing half-written. A
//! job that panics fails the same way (the panic is caught and logged): the task goes on, and
//! the connection never stays inside the failed transaction (see `abandon`).
//!
//! Ownership: the store holds the only `Sender`; this task owns the `Receiver` and ends when the
//! store is dropped. It borrows the writer connection from the writer pool per group, so it takes
//! its turn with every other write.

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::sweeps::Queue;
use super::{abandon, catch_panic, map_err, note_written};
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
    async fn run(&self, queue: &Queue, conn: &mut SqliteConnection) -> Answer {
        match self {
            Self::Lease(request, _) => {
                Answer::Leased(catch_panic("leasing trials", queue.lease(conn, request)).await)
            }
            Self::Complete(lease_id, outcome, _) => Answer::Completed(Box::new(
                catch_panic(
                    "completing a lease",
                    queue.complete(conn, lease_id, outcome.clone()),
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
            // `run` and `error` answer each job in kind; a mismatch would be a bug here.
            (job, _) => {
                let answer = job.error(StoreError::Busy);
                job.answer(answer);
            }
        }
    }
}

/// Starts the writer task; returns the handle the store submits through.
pub(crate) fn start(writer: SqlitePool, queue: Queue) -> mpsc::Sender<QueueJob> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(writer, queue, rx));
    tx
}

/// Leases trials and waits until the leases are committed.
pub(crate) async fn lease(jobs: &mpsc::Sender<QueueJob>, request: LeaseRequest) -> Result<Vec<LeasedTrial>> {
    let (done, answer) = oneshot::channel();
    jobs.send(QueueJob::Lease(request, done))
        .await
        .map_err(|_| StoreError::Busy)?;
    answer.await.map_err(|_| StoreError::Busy)?
}

/// Completes a lease and waits until the outcome is committed.
pub(crate) async fn complete(
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

async fn run(writer: SqlitePool, queue: Queue, mut rx: mpsc::Receiver<QueueJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut conn = match writer.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "queue writer cannot get the writer connection");
                for job in jobs {
                    let answer = job.error(map_err(sqlx::Error::PoolClosed));
                    job.answer(answer);
                }
                continue;
            }
        };
        match run_group(&queue, &mut conn, &jobs).await {
            Ok(answers) => {
                for (job, answer) in jobs.into_iter().zip(answers) {
                    job.answer(answer);
                }
            }
            Err(()) => {
                tracing::debug!(
                    jobs = jobs.len(),
                    "a queue group failed; running its jobs one by one"
                );
                for job in jobs {
                    let answer = run_alone(&queue, &mut conn, &job).await;
                    job.answer(answer);
                }
            }
        }
    }
}

/// Runs every job in one transaction and commits it; `Err` (rolled back) when any job or the
/// commit failed.
async fn run_group(
    queue: &Queue,
    conn: &mut PoolConnection<Sqlite>,
    jobs: &[QueueJob],
) -> Result<Vec<Answer>, ()> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut **conn)
        .await
        .map_err(|e| drop(map_err(e)))?;
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        let answer = job.run(queue, conn).await;
        if answer.is_err() {
            abandon(conn).await;
            // The cached histories may hold the group's rolled-back trials.
            queue.forget_histories();
            return Err(());
        }
        answers.push(answer);
    }
    if let Err(e) = sqlx::query("COMMIT").execute(&mut **conn).await {
        drop(map_err(e));
        abandon(conn).await;
        queue.forget_histories();
        return Err(());
    }
    note_written();
    Ok(answers)
}

/// Runs one job in a transaction of its own: committed when it succeeded, rolled back otherwise.
async fn run_alone(queue: &Queue, conn: &mut PoolConnection<Sqlite>, job: &QueueJob) -> Answer {
    if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut **conn).await {
        return job.error(map_err(e));
    }
    let answer = job.run(queue, conn).await;
    if answer.is_err() {
        abandon(conn).await;
        queue.forget_histories();
        return answer;
    }
    match sqlx::query("COMMIT").execute(&mut **conn).await {
        Ok(_) => {
            note_written();
            answer
        }
        Err(e) => {
            abandon(conn).await;
            queue.forget_histories();
            job.error(map_err(e))
        }
    }
}
