//! Group commit for metric writes. Every `log-metric` would otherwise be its own SQLite
//! transaction, paying for its own WAL frames; under concurrent loggers one task takes all the
//! metric writes waiting at that moment and commits them together with multi-row INSERTs, then
//! answers each caller. Nobody is answered before the commit that holds their points.
//!
//! Ownership: the store holds the only `Sender`; this task owns the `Receiver` and ends when the
//! store is dropped. It borrows the single writer connection from the writer pool per group, so
//! it takes its turn with every other write.

use std::sync::Arc;

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::history_cache::HistoryCache;
use super::metric_blocks::{self, LooseBlocks};
use super::tracking::run_key_for_write;
use super::{RunKeys, abandon, catch_panic, map_err, note_written};
use crate::{Metric, Result, StoreError};

/// Most jobs committed together.
const MAX_GROUP: usize = 64;

/// One caller's points, and where its answer goes.
pub(crate) struct MetricJob {
    run_id: String,
    metrics: Vec<Metric>,
    done: oneshot::Sender<Result<()>>,
}

/// Starts the writer task; returns the handle the store submits through.
pub(crate) fn start(
    writer: SqlitePool,
    keys: RunKeys,
    loose: LooseBlocks,
    history: Arc<HistoryCache>,
) -> mpsc::Sender<MetricJob> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(writer, keys, loose, history, rx));
    tx
}

/// Submits points of one run and waits until they are committed.
pub(crate) async fn submit(jobs: &mpsc::Sender<MetricJob>, run_id: &str, metrics: Vec<Metric>) -> Result<()> {
    let (done, answer) = oneshot::channel();
    let job = MetricJob {
        run_id: run_id.to_owned(),
        metrics,
        done,
    };
    jobs.send(job).await.map_err(|_| StoreError::Busy)?;
    answer.await.map_err(|_| StoreError::Busy)?
}

async fn run(
    writer: SqlitePool,
    keys: RunKeys,
    loose: LooseBlocks,
    history: Arc<HistoryCache>,
    mut rx: mpsc::Receiver<MetricJob>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        // Alone in the queue: let the request tasks that are ready run first, so that their
        // writes join this group instead of each waiting for a commit of its own (measured with
        // 16 concurrent loggers: 22,700 instead of 16,000 requests/s, p99 2.9 instead of 3.6 ms).
        if rx.is_empty() {
            tokio::task::yield_now().await;
        }
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut conn = match writer.acquire().await {
            Ok(c) => c,
            Err(e) => {
                for job in jobs {
                    let _ = job.done.send(Err(map_err(sqlx::Error::PoolClosed)));
                }
                tracing::debug!(error = %e, "metric writer cannot get the writer connection");
                continue;
            }
        };
        // Unknown or deleted runs are answered now; the rest go into one commit.
        let mut ready = Vec::with_capacity(jobs.len());
        for job in jobs {
            match run_key_for_write(&keys, &mut conn, &job.run_id).await {
                Ok(key) => ready.push((key, job)),
                Err(e) => {
                    let _ = job.done.send(Err(e));
                }
            }
        }
        if ready.is_empty() {
            continue;
        }
        let rows: Vec<(i64, &Metric)> = ready
            .iter()
            .flat_map(|(k, j)| j.metrics.iter().map(move |m| (*k, m)))
            .collect();
        let together = catch_panic("writing metrics", metric_blocks::commit(&mut conn, &loose, &rows)).await;
        drop(rows);
        let mut merges = Vec::new();
        match together {
            Ok(due) => {
                note_written();
                merges = due;
                for (_, job) in ready {
                    history.invalidate(&job.run_id);
                    let _ = job.done.send(Ok(()));
                }
            }
            // A group failed as a whole: commit each job on its own so that one bad job fails
            // alone.
            Err(_) => {
                abandon(&mut conn).await;
                for (key, job) in ready {
                    let rows: Vec<(i64, &Metric)> = job.metrics.iter().map(|m| (key, m)).collect();
                    let result =
                        catch_panic("writing metrics", metric_blocks::commit(&mut conn, &loose, &rows)).await;
                    drop(rows);
                    match &result {
                        Ok(_) => {
                            note_written();
                            history.invalidate(&job.run_id);
                        }
                        Err(_) => abandon(&mut conn).await,
                    }
                    let _ = job.done.send(result.map(|due| merges.extend(due)));
                }
            }
        }
        // Compactions only reorganise what is committed: they run after the writers have their
        // answers, before the next group.
        merges.sort_unstable();
        merges.dedup();
        for run in merges {
            let compacted = catch_panic(
                "compacting metric writes",
                metric_blocks::compact_alone(&mut conn, &loose, run),
            )
            .await;
            if let Err(e) = compacted {
                abandon(&mut conn).await;
                tracing::debug!(error = %e, run, "compacting metric writes failed; the rows stay as they are");
            }
        }
    }
}
