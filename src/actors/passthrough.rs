//! `PassthroughActor`: owns the passthrough route table (the `[[routes]]` of the config
//! and the routes stored through `/admin/routes`) and the per-key per-route request
//! windows. It publishes the table as an immutable `PassthroughTable` over a watch
//! channel (request tasks read it, no message), rebuilt from the store on each change that
//! touches it; an unchanged route keeps its HTTP client and its concurrency semaphore
//! across rebuilds. A request on a route with `rpm_limit` asks it once (`AdmitRoute`);
//! routes without one never message it. One per instance: the windows are this
//! instance's (the README states the N-instance bound).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::Semaphore;

use super::feed::{Changed, NotApplied};
use super::store::{ListPassthroughRoutes, StoreActor, StoreError};
use crate::domain::now_ms;
use crate::domain::passthrough::{RouteSpec, longest_match};
use crate::domain::quota::SlidingWindow;

/// How often windows that emptied are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// One route as request tasks use it.
#[derive(Debug)]
pub struct LiveRoute {
    /// `config-<n>` for the n-th `[[routes]]` entry (from 1), else the stored id.
    pub id: String,
    pub from_config: bool,
    pub spec: RouteSpec,
    /// The route's metric label (its prefix).
    pub label: Arc<str>,
    /// With the route's connect timeout.
    pub client: reqwest::Client,
    /// `max_concurrency` permits, held by a request until its answer's last byte.
    pub slots: Option<Arc<Semaphore>>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// The routes, as last published.
#[derive(Debug, Default)]
pub struct PassthroughTable {
    pub routes: Vec<Arc<LiveRoute>>,
}

impl PassthroughTable {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route with the longest prefix `path` lies under, and the rest of the path.
    pub fn find<'p>(&self, path: &'p str) -> Option<(Arc<LiveRoute>, &'p str)> {
        longest_match(&self.routes, |r| &r.spec, path).map(|(r, rest)| (r.clone(), rest))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("the store did not answer")]
    StoreUnavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// At startup (and on a restart): load the stored routes and publish the table. Answers
/// how many routes it holds.
#[derive(Message)]
#[rtype(result = "Result<usize, PassthroughError>")]
pub struct ReloadRoutes;

/// From a request on a route with `rpm_limit`: counts it in the key's window of the route
/// if it fits; else the milliseconds until it would.
#[derive(Message)]
#[rtype(result = "Result<(), u64>")]
pub struct AdmitRoute {
    pub key_id: String,
    pub route_id: String,
    pub limit: u64,
}

pub struct PassthroughActor {
    store: Addr<StoreActor>,
    config: Vec<RouteSpec>,
    published: tokio::sync::watch::Sender<Arc<PassthroughTable>>,
    windows: HashMap<(String, String), SlidingWindow>,
    /// Reloads may finish out of order; only a newer one replaces the table.
    reloads_started: u64,
    reload_applied: u64,
}

impl PassthroughActor {
    pub fn new(
        store: Addr<StoreActor>,
        config: Vec<RouteSpec>,
        published: tokio::sync::watch::Sender<Arc<PassthroughTable>>,
    ) -> Self {
        Self {
            store,
            config,
            published,
            windows: HashMap::new(),
            reloads_started: 0,
            reload_applied: 0,
        }
    }

    /// The route `id` with `spec`: the one already published when nothing changed (its
    /// client and semaphore, with the permits in use, carry on), else a new one.
    fn live(
        &self,
        current: &PassthroughTable,
        id: String,
        spec: RouteSpec,
        times: Option<(i64, i64)>,
    ) -> Option<Arc<LiveRoute>> {
        if let Some(same) = current.routes.iter().find(|r| r.id == id && r.spec == spec) {
            return Some(same.clone());
        }
        let client = match reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(spec.connect_timeout_ms()))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(90))
            // The client's redirects are the client's to follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(route = %spec.prefix, error = %e, "cannot build an HTTP client; route skipped");
                return None;
            }
        };
        Some(Arc::new(LiveRoute {
            from_config: times.is_none(),
            label: Arc::from(spec.prefix.as_str()),
            client,
            slots: spec
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            created_at: times.map(|t| t.0),
            updated_at: times.map(|t| t.1),
            id,
            spec,
        }))
    }

    fn rebuild(&mut self, stored: Vec<crate::domain::passthrough::StoredRoute>) -> usize {
        let current = self.published.borrow().clone();
        let mut routes = Vec::new();
        for (i, spec) in self.config.iter().enumerate() {
            routes.extend(self.live(&current, format!("config-{}", i + 1), spec.clone(), None));
        }
        for route in stored {
            // A config route owns its prefix (the admin API refuses the same prefix).
            if self.config.iter().any(|c| c.prefix == route.spec.prefix) {
                tracing::warn!(route = %route.id, prefix = %route.spec.prefix,
                    "a stored route has the prefix of a [[routes]] entry; the config's wins");
                continue;
            }
            routes.extend(self.live(
                &current,
                route.id,
                route.spec,
                Some((route.created_at, route.updated_at)),
            ));
        }
        let count = routes.len();
        self.published
            .send_replace(Arc::new(PassthroughTable { routes }));
        count
    }

    fn reload(&mut self) -> ResponseActFuture<Self, Result<usize, PassthroughError>> {
        self.reloads_started += 1;
        let generation = self.reloads_started;
        let store = self.store.clone();
        Box::pin(
            async move {
                store
                    .send(ListPassthroughRoutes)
                    .timeout(super::ASK_TIMEOUT)
                    .await
            }
            .into_actor(self)
            .map(move |stored, actor, _| {
                let stored = stored.map_err(|_| PassthroughError::StoreUnavailable)??;
                if generation < actor.reload_applied {
                    return Ok(actor.published.borrow().routes.len());
                }
                actor.reload_applied = generation;
                Ok(actor.rebuild(stored))
            }),
        )
    }
}

impl Actor for PassthroughActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(SWEEP_INTERVAL, |actor, _| {
            let now = now_ms();
            actor.windows.retain(|_, w| {
                w.expire(now);
                w.used(now) > 0
            });
        });
    }
}

impl Supervised for PassthroughActor {
    fn restarting(&mut self, ctx: &mut Self::Context) {
        tracing::warn!("passthrough routes restarting; reloading them");
        ctx.notify(ReloadRoutes);
    }
}

impl Handler<ReloadRoutes> for PassthroughActor {
    type Result = ResponseActFuture<Self, Result<usize, PassthroughError>>;

    fn handle(&mut self, _: ReloadRoutes, _: &mut Self::Context) -> Self::Result {
        self.reload()
    }
}

impl Handler<Changed> for PassthroughActor {
    type Result = ResponseActFuture<Self, Result<(), NotApplied>>;

    /// Reloads on a change of stored routes; a failed reload keeps the table it has.
    fn handle(&mut self, msg: Changed, _: &mut Self::Context) -> Self::Result {
        if !msg.0.touches_passthrough() {
            return Box::pin(fut::ready(Ok(())));
        }
        Box::pin(self.reload().map(|reloaded, _, _| {
            reloaded.map(drop).map_err(|e| NotApplied {
                subscriber: "passthrough routes",
                cause: e.to_string(),
            })
        }))
    }
}

impl Handler<AdmitRoute> for PassthroughActor {
    type Result = Result<(), u64>;

    fn handle(&mut self, msg: AdmitRoute, _: &mut Self::Context) -> Self::Result {
        let now = now_ms();
        let window = self.windows.entry((msg.key_id, msg.route_id)).or_default();
        match window.wait_for(now, 1, msg.limit) {
            Some(0) => {
                window.add(now, 1);
                Ok(())
            }
            Some(ms) => Err(ms),
            None => Err(60_000),
        }
    }
}
