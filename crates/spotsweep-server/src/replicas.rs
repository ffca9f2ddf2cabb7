//! Several daemons on one PostgreSQL database: what one tells the others, and what it does when
//! told.
//!
//! A daemon alone on its database wakes its own long polls, expiry loop, dashboard streams and
//! token set in memory ([`crate::sweeps::Signals`]). With replicas, the change may have been made
//! on another daemon, so each change is also [`News`] for the others: handlers and loops say it
//! on [`crate::events::Changes::tell`], a sender task gathers what was said meanwhile into one
//! `NOTIFY` (delivered to every listening daemon at commit), and a listener task applies what
//! the others said. PostgreSQL forgets what a lost connection missed, so after a reconnect the
//! listener acts as if everything changed, and every few seconds it wakes the waiters anyway
//! (a lost `NOTIFY` costs a few seconds, never a stuck long poll). Whatever is woken looks at
//! the database again: news only says where to look.
//!
//! Who owns what: the sender task owns the receiving end of the news channel (its sending end
//! lives in `Changes`, set once at start); the listener task owns the `LISTEN` connection. Both
//! end when the daemon's loops are told to stop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use spotsweep_store::PgStore;
use tokio::sync::{mpsc, watch};

use crate::AppState;
use crate::auth::Reloader;
use crate::events::Change;

/// Something another daemon should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum News {
    /// Work may be available: long polls look again.
    Work,
    /// A lease was taken or ended: the expiry loop recomputes its deadline, trial tokens change.
    Leases,
    /// An API token was created or revoked.
    Tokens,
    /// A VM was created or ended (its agent's token).
    Vms,
    /// A sweep's state or trials changed (dashboard streams).
    Sweep(i64),
    /// A VM or an agent changed (dashboard streams).
    Fleet,
    /// Trials of sweeps not named changed (dashboard streams).
    Any,
}

/// More sweeps than this in one announcement are sent as `any` (a NOTIFY's payload is small).
const MAX_SWEEPS: usize = 200;

/// How often waiters are woken without news, in case some was lost.
const LOOK_AGAIN_EVERY: Duration = Duration::from_secs(5);

impl News {
    pub(crate) fn word(self) -> String {
        match self {
            Self::Work => "work".into(),
            Self::Leases => "leases".into(),
            Self::Tokens => "tokens".into(),
            Self::Vms => "vms".into(),
            Self::Sweep(id) => format!("sweep:{id}"),
            Self::Fleet => "fleet".into(),
            Self::Any => "any".into(),
        }
    }

    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "work" => Self::Work,
            "leases" => Self::Leases,
            "tokens" => Self::Tokens,
            "vms" => Self::Vms,
            "fleet" => Self::Fleet,
            "any" => Self::Any,
            _ => Self::Sweep(word.strip_prefix("sweep:")?.parse().ok()?),
        })
    }
}

/// An announcement's payload: the sender, then its news (`holder work sweep:3 fleet`).
fn encode(from: &str, news: &BTreeSet<News>) -> String {
    let sweeps = news.iter().filter(|n| matches!(n, News::Sweep(_))).count();
    let mut payload = from.to_owned();
    for n in news {
        if matches!(n, News::Sweep(_)) && sweeps > MAX_SWEEPS {
            continue;
        }
        payload.push(' ');
        payload.push_str(&n.word());
    }
    if sweeps > MAX_SWEEPS {
        payload.push_str(" any");
    }
    payload
}

/// The sender and the news of a payload; words this build does not know are skipped (a newer
/// daemon may say more).
fn decode(payload: &str) -> Option<(&str, BTreeSet<News>)> {
    let mut words = payload.split_ascii_whitespace();
    let from = words.next()?;
    Some((from, words.filter_map(News::parse).collect()))
}

/// Starts telling the other daemons on `store` this daemon's news and applying theirs; `me` is
/// this daemon's name among them (its leadership holder). The tasks end when `stop` changes.
pub fn start(
    store: Arc<PgStore>,
    state: &AppState,
    reloader: Arc<Reloader>,
    me: String,
    stop: watch::Receiver<bool>,
) -> [tokio::task::JoinHandle<()>; 2] {
    let (tx, rx) = mpsc::unbounded_channel();
    state.signals.changes.connect_peers(tx);
    [
        tokio::spawn(send(store.clone(), me.clone(), rx, stop.clone())),
        tokio::spawn(listen(store, state.clone(), reloader, me, stop)),
    ]
}

/// Sends what was said, one announcement for whatever gathered while the last was sent.
async fn send(
    store: Arc<PgStore>,
    me: String,
    mut rx: mpsc::UnboundedReceiver<News>,
    mut stop: watch::Receiver<bool>,
) {
    let mut news = BTreeSet::new();
    loop {
        tokio::select! {
            first = rx.recv() => match first {
                Some(n) => news.insert(n),
                None => return,
            },
            _ = stop.changed() => return,
        };
        while let Ok(n) = rx.try_recv() {
            news.insert(n);
        }
        if let Err(e) = store.announce(&encode(&me, &news)).await {
            // The others look again within LOOK_AGAIN_EVERY.
            tracing::warn!(error = %e, "cannot tell the other daemons what changed");
        }
        news.clear();
    }
}

/// Applies the other daemons' news.
async fn listen(
    store: Arc<PgStore>,
    state: AppState,
    reloader: Arc<Reloader>,
    me: String,
    mut stop: watch::Receiver<bool>,
) {
    let everything: BTreeSet<News> = [News::Work, News::Leases, News::Tokens, News::Vms, News::Any].into();
    let mut announcements = loop {
        match store.announcements().await {
            Ok(a) => break a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen to the other daemons; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    // What was said before the LISTEN began is in the database: look once.
    let mut reload = wake(&state, &everything);
    let mut last_reload = tokio::time::Instant::now() - NEWS_TOKEN_READS_EVERY;
    let mut look_again = tokio::time::interval(LOOK_AGAIN_EVERY);
    look_again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Token reloads are gathered: under load a daemon hears of leases hundreds of times a
        // second, and one read of the tokens serves all the news heard meanwhile.
        let reload_at = last_reload + NEWS_TOKEN_READS_EVERY;
        let next = tokio::select! {
            next = announcements.next() => next,
            _ = tokio::time::sleep_until(reload_at), if reload => {
                reload_tokens(&state, &reloader).await;
                (reload, last_reload) = (false, tokio::time::Instant::now());
                continue;
            }
            _ = look_again.tick() => {
                reload |= wake(&state, &[News::Work, News::Leases].into());
                continue;
            }
            _ = stop.changed() => return,
        };
        match next {
            Ok(Some(payload)) => match decode(&payload) {
                Some((from, news)) if from != me => reload |= wake(&state, &news),
                _ => {}
            },
            Ok(None) => {
                tracing::info!(
                    "the connection for the other daemons' news was made again; looking at everything"
                );
                reload |= wake(&state, &everything);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear the other daemons; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
                reload |= wake(&state, &everything);
            }
        }
    }
}

/// Reads of the tokens other daemons made, for their news, happen at most this often (a
/// request with an unknown token has its own limit: `auth::RELOAD_AT_MOST_EVERY`).
const NEWS_TOKEN_READS_EVERY: Duration = Duration::from_millis(50);

/// Wakes what the news concerns, here only (never told back to the others); true when the
/// tokens should be read again.
fn wake(state: &AppState, news: &BTreeSet<News>) -> bool {
    let mut reload = false;
    for n in news {
        match *n {
            News::Work => state.signals.work.notify_waiters(),
            News::Leases => {
                state.signals.leases.notify_one();
                reload = true;
            }
            News::Tokens | News::Vms => reload = true,
            News::Sweep(id) => state.signals.changes.local(Change::Sweep(id)),
            News::Fleet => state.signals.changes.local(Change::Fleet),
            News::Any => state.signals.changes.local(Change::Any),
        }
    }
    reload && state.auth.enabled
}

/// Reads the tokens other daemons made or revoked.
async fn reload_tokens(state: &AppState, reloader: &Reloader) {
    if let Some(Err(e)) = crate::caught("reading other daemons' tokens", reloader.reload(&state.auth)).await {
        tracing::warn!(error = %e, "cannot read the tokens other daemons made; will retry at their next news");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_goes_through_a_payload_and_too_many_sweeps_become_any() {
        let news: BTreeSet<News> = [News::Work, News::Sweep(7), News::Leases, News::Fleet].into();
        let payload = encode("d1", &news);
        assert_eq!(payload, "d1 work leases sweep:7 fleet");
        assert_eq!(decode(&payload), Some(("d1", news)));
        // Words of a newer daemon are skipped, not fatal.
        assert_eq!(decode("d2 work shiny sweep:x"), Some(("d2", [News::Work].into())));
        let many: BTreeSet<News> = (0..1000).map(News::Sweep).chain([News::Vms]).collect();
        let payload = encode("d1", &many);
        assert!(payload.len() < 8000, "{} bytes", payload.len());
        assert_eq!(decode(&payload).unwrap().1, [News::Vms, News::Any].into());
    }
}
