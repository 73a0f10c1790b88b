//! The change listener (PostgreSQL only): `LISTEN lowart_changes` on a connection of its
//! own, and each change another instance committed announced to this instance's feed.
//! On every reconnect (and a first connect that startup stopped waiting for) it announces
//! `All`: changes may have been committed while nothing listened. A connection lost after a steady while is replaced at once; failures in a row
//! wait a doubling backoff. A quiet connection is pinged, so one that died without a word
//! is noticed too.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::oneshot;

use super::changes::ANNOUNCE_TIMEOUT;
use crate::actors::feed::{Announce, Change};
use crate::domain::bus::{BUS_CHANNEL, BusNotice, decode_bus_notice};
use crate::domain::change::{CHANNEL, decode_notice};

/// The listener's connection shows under this name in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "lowart-change-listener";
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A connection that lasted this long was steady: losing it starts the backoff afresh.
const STEADY: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection silent for this long is pinged; one that does not answer is replaced.
const HEARTBEAT: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Notices read (and de-duplicated) at most before they are announced.
const MAX_BATCH: usize = 64;

pub(super) struct ChangeListener {
    pub(super) options: PgConnectOptions,
    /// This instance's id: its own notices are skipped (it announced them already).
    pub(super) origin: Arc<str>,
    pub(super) feed: Recipient<Announce>,
    /// Where the bus's notices go (`lowart_bus`), once the bus follows them.
    pub(super) bus: Arc<OnceLock<Recipient<BusNotice>>>,
}

/// A listening connection. sqlx hands a dropped listener's connection to a new task,
/// which panics when the runtime is already gone (a task dropped as its runtime shuts
/// down: a test's, or the process's at exit); then the connection is left to the end of
/// the process instead.
struct Listening(Option<PgListener>);

impl Drop for Listening {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            std::mem::forget(self.0.take());
        }
    }
}

/// The wait after `previous`: the first retry soon, then doubling up to `MAX_BACKOFF`.
fn next_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(FIRST_RETRY, |b| b.saturating_mul(2).min(MAX_BACKOFF))
}

/// Why following the channel ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl ChangeListener {
    /// Listens until `stop` fires (or its sender is dropped). The first time it listens it
    /// tells `listening`; if startup still waits for that, the copies load after this and
    /// miss nothing, so there is no `All` to announce.
    pub(super) async fn run(self, listening: oneshot::Sender<()>, mut stop: oneshot::Receiver<()>) {
        let mut first = Some(listening);
        let mut backoff: Option<Duration> = None;
        loop {
            if let Some(wait) = backoff {
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            let connected = tokio::select! {
                _ = &mut stop => return,
                connected = self.connect() => connected,
            };
            let mut listening = match connected {
                Ok(listening) => listening,
                Err(e) => {
                    let wait = next_backoff(backoff);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                        "the change listener cannot connect to PostgreSQL");
                    backoff = Some(wait);
                    continue;
                }
            };
            let connected_at = Instant::now();
            let awaited = first
                .take()
                .is_some_and(|listening| listening.send(()).is_ok());
            if !awaited {
                self.deliver(vec![Change::All]).await;
            }
            let Some(listener) = listening.0.as_mut() else {
                continue;
            };
            match self.follow(listener, &mut stop).await {
                Ended::Stopped => return,
                Ended::Lost(cause) => {
                    tracing::warn!(%cause, "the change listener lost its connection; reconnecting");
                }
            }
            backoff = (connected_at.elapsed() < STEADY).then(|| next_backoff(backoff));
        }
    }

    /// A connection of its own (not one of the store's pool), listening on the channel.
    async fn connect(&self) -> Result<Listening, sea_orm::sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(self.options.clone().application_name(APPLICATION_NAME));
        let mut listening = Listening(Some(PgListener::connect_with(&pool).await?));
        if let Some(listener) = listening.0.as_mut() {
            // A lost connection ends `follow`, which reconnects (and announces `All`).
            listener.eager_reconnect(false);
            listener.listen_all([CHANNEL, BUS_CHANNEL]).await?;
        }
        Ok(listening)
    }

    async fn follow(&self, listener: &mut PgListener, stop: &mut oneshot::Receiver<()>) -> Ended {
        loop {
            let received = tokio::select! {
                _ = &mut *stop => return Ended::Stopped,
                received = listener.try_recv() => received,
                () = tokio::time::sleep(HEARTBEAT) => {
                    let ping = sea_orm::sqlx::query("SELECT 1").execute(&mut *listener);
                    match tokio::time::timeout(PING_TIMEOUT, ping).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => return Ended::Lost(e.to_string()),
                        Err(_) => return Ended::Lost("no answer to a ping".into()),
                    }
                }
            };
            let first = match received {
                Ok(Some(notification)) => notification,
                Ok(None) => return Ended::Lost("the connection closed".into()),
                Err(e) => return Ended::Lost(e.to_string()),
            };
            let mut changes: Vec<Change> = Vec::new();
            let mut next = Some(first);
            let mut read = 0;
            while let Some(notification) = next.take() {
                if notification.channel() == BUS_CHANNEL {
                    // The bus's notices go straight on: they are not changes.
                    if let (Some(bus), Some(notice)) = (
                        self.bus.get(),
                        decode_bus_notice(notification.payload(), &self.origin),
                    ) {
                        bus.do_send(notice);
                    }
                } else {
                    changes.extend(decode_notice(notification.payload(), &self.origin));
                }
                read += 1;
                if read < MAX_BATCH {
                    next = listener.next_buffered();
                }
            }
            if !changes.is_empty() {
                self.deliver(changes).await;
            }
        }
    }

    /// Announces `changes` (duplicates once; only `All` if it is among them).
    async fn deliver(&self, mut changes: Vec<Change>) {
        if changes.contains(&Change::All) {
            changes = vec![Change::All];
        }
        let mut delivered: Vec<Change> = Vec::with_capacity(changes.len());
        for change in changes {
            if delivered.contains(&change) {
                continue;
            }
            tracing::debug!(?change, "a change from another instance");
            match self
                .feed
                .send(Announce(change.clone()))
                .timeout(ANNOUNCE_TIMEOUT)
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(?change, error = %e,
                    "a change from another instance was not applied"),
                Err(e) => tracing::warn!(?change, error = %e,
                    "the change feed did not take a change from another instance"),
            }
            delivered.push(change);
        }
    }
}
