//! Live updates for the dashboard: what changed, pushed as server-sent events.
//!
//! Handlers and loops that change a sweep's trials or the fleet say so on [`Changes`] (a
//! broadcast channel: sending costs nothing when nobody listens). Each open `/api/v1/events`
//! stream waits for a change, gathers what else changes in the next 100 ms, and sends one
//! `change` event naming the sweeps and whether the fleet changed; the page refetches what it
//! shows. A page with nothing changing costs the daemon nothing but a keep-alive comment every
//! 15 s.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::replicas::News;

/// The route of live events.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// How long a stream gathers changes after the first before it sends them as one event.
const GATHER: Duration = Duration::from_millis(100);

/// Something the dashboard shows changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A sweep's state or its trials.
    Sweep(i64),
    /// A VM or an agent of any pool.
    Fleet,
    /// Trials of sweeps not named (leases expired).
    Any,
}

/// Where changes are announced: to this daemon's streams, and to the other daemons on the same
/// database when there are (see `replicas`).
#[derive(Debug)]
pub struct Changes {
    tx: broadcast::Sender<Change>,
    /// Set when the daemon shuts down: every stream ends, so that the server can drain.
    closing: tokio::sync::watch::Sender<bool>,
    /// News for the other daemons, set once at start when the database is shared.
    peers: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<News>>,
}

impl Default for Changes {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(4096).0,
            closing: tokio::sync::watch::channel(false).0,
            peers: std::sync::OnceLock::new(),
        }
    }
}

impl Changes {
    /// A sweep's state or trials changed.
    pub fn sweep(&self, id: i64) {
        self.local(Change::Sweep(id));
        self.tell(News::Sweep(id));
    }

    /// The fleet changed.
    pub fn fleet(&self) {
        self.local(Change::Fleet);
        self.tell(News::Fleet);
    }

    /// Trials of some sweeps changed.
    pub fn any(&self) {
        self.local(Change::Any);
        self.tell(News::Any);
    }

    /// Tells this daemon's streams only (what another daemon announced).
    pub(crate) fn local(&self, change: Change) {
        let _ = self.tx.send(change);
    }

    /// Tells the other daemons on the database, if there are any; costs nothing otherwise.
    pub fn tell(&self, news: News) {
        if let Some(peers) = self.peers.get() {
            let _ = peers.send(news);
        }
    }

    /// Sends [`Changes::tell`]'s news to `peers` from now on.
    pub(crate) fn connect_peers(&self, peers: tokio::sync::mpsc::UnboundedSender<News>) {
        let _ = self.peers.set(peers);
    }

    /// Ends every stream (the daemon is shutting down).
    pub fn close(&self) {
        let _ = self.closing.send(true);
    }
}

/// One `change` event's data.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
struct Batch {
    /// The sweeps whose state or trials changed.
    sweeps: BTreeSet<i64>,
    /// Whether a VM or an agent changed.
    fleet: bool,
    /// Whether anything may have changed (refetch everything).
    all: bool,
}

impl Batch {
    fn add(&mut self, change: Result<Change, RecvError>) {
        match change {
            Ok(Change::Sweep(id)) => {
                self.sweeps.insert(id);
            }
            Ok(Change::Fleet) => self.fleet = true,
            // A stream that fell behind lost some: the page refetches everything.
            Ok(Change::Any) | Err(_) => self.all = true,
        }
    }
}

/// Waits for the next change and gathers what follows it briefly; `None` when the daemon is
/// shutting down.
async fn next_batch(
    rx: &mut broadcast::Receiver<Change>,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Batch> {
    let mut batch = Batch::default();
    tokio::select! {
        change = rx.recv() => {
            if matches!(change, Err(RecvError::Closed)) {
                return None;
            }
            batch.add(change);
        }
        _ = closing.wait_for(|closing| *closing) => return None,
    }
    let gather = tokio::time::sleep(GATHER);
    tokio::pin!(gather);
    loop {
        tokio::select! {
            _ = &mut gather => return Some(batch),
            change = rx.recv() => match change {
                Err(RecvError::Closed) => return Some(batch),
                change => batch.add(change),
            },
        }
    }
}

/// A stream of `change` events: `{"sweeps": [ids], "fleet": bool, "all": bool}` (see the module
/// docs). Browsers' `EventSource` reconnects on its own; after a reconnect the page refetches.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "dashboard",
    responses((status = 200, description = "Server-sent events, `change` with what changed", content_type = "text/event-stream")),
    security(("bearer" = []))
)]
pub async fn events(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.signals.changes.tx.subscribe();
    let closing = s.signals.changes.closing.subscribe();
    let stream = futures::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
        let batch = next_batch(&mut rx, &mut closing).await?;
        let data = serde_json::to_string(&batch).unwrap_or_else(|_| "{\"all\":true}".into());
        Some((Ok(Event::default().event("change").data(data)), (rx, closing)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_changes_is_one_event() {
        let changes = Changes::default();
        let mut rx = changes.tx.subscribe();
        let mut closing = changes.closing.subscribe();
        changes.sweep(2);
        changes.sweep(1);
        changes.sweep(2);
        changes.fleet();
        let batch = next_batch(&mut rx, &mut closing).await.expect("a batch");
        assert_eq!(
            batch,
            Batch {
                sweeps: [1, 2].into(),
                fleet: true,
                all: false
            }
        );
        changes.any();
        assert!(next_batch(&mut rx, &mut closing).await.expect("a batch").all);
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_refetches_everything() {
        let changes = Changes::default();
        let mut rx = changes.tx.subscribe();
        let mut closing = changes.closing.subscribe();
        for id in 0..5000 {
            changes.sweep(id);
        }
        let batch = next_batch(&mut rx, &mut closing).await.expect("a batch");
        assert!(batch.all, "lagged: {batch:?}");
    }

    #[tokio::test]
    async fn streams_end_when_the_daemon_closes() {
        let changes = Changes::default();
        let mut rx = changes.tx.subscribe();
        let mut closing = changes.closing.subscribe();
        changes.close();
        assert_eq!(next_batch(&mut rx, &mut closing).await, None);
    }
}
