//! `RouterActor`: owns the routing table (public model name → its deployments) and the
//! supervised `ProviderActor` of every deployment. The table is rebuilt from the store on
//! start, on restart, and on every change of deployments or fallbacks the change feed
//! delivers (before the admin's answer, so edits apply to the next request).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::feed::{Changed, NotApplied};
use super::provider::{Configure, ProviderActor, ProviderHandle};
use super::store::{LoadDeployments, LoadFallbacks, StoreActor, StoreError};
use crate::config::Secret;
use crate::domain::deployment::DeploymentConfig;
use crate::domain::fallbacks;
use crate::domain::records::{Deployment, DeploymentWithSecret};
use crate::domain::usage::Prices;
use crate::providers::Vendor;
use crate::telemetry::metrics::Metrics;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Everything the request task needs to call one deployment, immutable once built.
#[derive(Clone)]
pub struct Route {
    pub deployment: Deployment,
    /// The vendor with its settings: builds, decodes and classifies this route's calls.
    pub vendor: Vendor,
    pub upstream_model: String,
    /// The vendor's chat endpoint under `base_url`, parsed once.
    pub chat_url: Option<reqwest::Url>,
    /// The vendor's embeddings endpoint, for vendors that have one.
    pub embeddings_url: Option<reqwest::Url>,
    /// The vendor's OpenAI images endpoint, for vendors that have one.
    pub images_url: Option<reqwest::Url>,
    pub api_key: Option<Secret>,
    pub prices: Prices,
    pub request_timeout: Duration,
    /// Longest silence between two chunks of a stream.
    pub idle_timeout: Option<Duration>,
    /// One HTTP client per deployment: its own pool and connect timeout.
    pub client: reqwest::Client,
    pub provider: ProviderHandle,
}

/// An immutable view of the routing table, published by the router after every change so
/// that request tasks route without a round trip to the actor.
#[derive(Default)]
pub struct RoutingSnapshot {
    pub routes: HashMap<String, Vec<Arc<Route>>>,
    pub fallbacks: HashMap<String, Vec<String>>,
}

impl RoutingSnapshot {
    /// The deployments of `model` and then of its fallback chain, best first (empty for an
    /// unknown model); `None` when a provider actor is gone and the router must repair it.
    pub fn resolve(
        &self,
        model: &str,
        random: &mut impl FnMut() -> u64,
    ) -> Option<Vec<Arc<Route>>> {
        let mut ordered = Vec::new();
        for name in fallbacks::chain(&self.fallbacks, model) {
            let candidates = self
                .routes
                .get(&name)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if candidates.iter().any(|r| !r.provider.connected()) {
                return None;
            }
            ordered.extend(rank(candidates, random));
        }
        Some(ordered)
    }
}

/// Lower `priority` first; within a tier, a weighted random order (Efraimidis–Spirakis:
/// sort by u^(1/w) descending). Weight-0 deployments only serve when alone.
pub fn rank(candidates: &[Arc<Route>], random: &mut impl FnMut() -> u64) -> Vec<Arc<Route>> {
    let mut keyed: Vec<(i32, f64, Arc<Route>)> = candidates
        .iter()
        .filter(|r| r.deployment.config.weight > 0 || candidates.len() == 1)
        .map(|r| {
            let u = (random() >> 11) as f64 / (1u64 << 53) as f64;
            let w = f64::from(r.deployment.config.weight.max(1));
            (r.deployment.config.priority, -u.powf(1.0 / w), r.clone())
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    keyed.into_iter().map(|(_, _, r)| r).collect()
}

/// A deployment's concurrency cap for its provider actor.
fn max_concurrency(config: &DeploymentConfig) -> Option<usize> {
    config.max_concurrency.and_then(|c| usize::try_from(c).ok())
}

/// xorshift64*: plenty for spreading load, not for secrets.
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// A per-thread random stream for request tasks.
pub fn thread_random() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(seed());
    }
    STATE.with(|cell| {
        let mut state = cell.get();
        let value = xorshift(&mut state);
        cell.set(state);
        value
    })
}

/// A non-zero seed; `RandomState` carries per-process random keys.
fn seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now()) | 1
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    #[error("the store did not answer")]
    StoreUnavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// From a chat handler: the deployments that may serve `model`, best first, then those of
/// its fallback chain in order.
#[derive(Message)]
#[rtype(result = "Result<Vec<Arc<Route>>, RouteError>")]
pub struct Resolve {
    pub model: String,
}

/// From `/v1/models`: every routable public model name, sorted.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct ListModels;

/// At startup and on restart: rebuild the table from the store. Answers how many
/// deployments are routable. (Deployments and fallbacks are read in two queries; a change
/// between them is picked up by the reload that change's announcement triggers.)
#[derive(Message)]
#[rtype(result = "Result<usize, RouteError>")]
pub struct Reload;

/// From the admin API: every routable deployment's provider actor.
#[derive(Message)]
#[rtype(result = "Vec<(String, Addr<ProviderActor>)>")]
pub struct ListProviders;

pub struct RouterActor {
    store: Addr<StoreActor>,
    published: tokio::sync::watch::Sender<Arc<RoutingSnapshot>>,
    metrics: Arc<Metrics>,
    fallbacks: HashMap<String, Vec<String>>,
    routes: HashMap<String, Vec<Arc<Route>>>,
    by_id: HashMap<String, Arc<Route>>,
    /// Reloads may finish out of order; only a newer one replaces the table.
    reloads_started: u64,
    reload_applied: u64,
    rng: u64,
}

impl RouterActor {
    pub fn new(
        store: Addr<StoreActor>,
        metrics: Arc<Metrics>,
        published: tokio::sync::watch::Sender<Arc<RoutingSnapshot>>,
    ) -> Self {
        Self {
            store,
            published,
            metrics,
            fallbacks: HashMap::new(),
            routes: HashMap::new(),
            by_id: HashMap::new(),
            reloads_started: 0,
            reload_applied: 0,
            rng: seed(),
        }
    }

    /// Publishes the current table for request tasks.
    fn publish(&self) {
        self.published.send_replace(Arc::new(RoutingSnapshot {
            routes: self.routes.clone(),
            fallbacks: self.fallbacks.clone(),
        }));
    }

    fn build_route(&self, d: DeploymentWithSecret) -> Option<Arc<Route>> {
        let dep = d.deployment;
        let config = &dep.config;
        let vendor = match config.vendor() {
            Ok(vendor) => vendor,
            Err((param, message)) => {
                tracing::error!(deployment = %dep.id, %param, %message, "invalid vendor settings; deployment skipped");
                return None;
            }
        };
        let max_concurrency = max_concurrency(config);
        let breaker = config.breaker;
        let provider = match self.by_id.get(&dep.id) {
            Some(old) if old.provider.connected() => {
                old.provider.addr.do_send(Configure {
                    max_concurrency,
                    breaker,
                });
                old.provider.clone()
            }
            _ => self.start_provider(&dep.id, max_concurrency, breaker),
        };
        let ms = |v: Option<i64>| {
            v.and_then(|v| u64::try_from(v).ok())
                .map(Duration::from_millis)
        };
        let client = match reqwest::Client::builder()
            .connect_timeout(ms(config.connect_timeout_ms).unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            .tcp_nodelay(true)
            // A peer that vanished without a FIN is noticed even while a stream is idle.
            .tcp_keepalive(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(deployment = %dep.id, error = %e, "cannot build an HTTP client; deployment skipped");
                return None;
            }
        };
        let parse = |url: Option<String>| match url.map(|u| reqwest::Url::parse(&u)) {
            None => Ok(None),
            Some(Ok(url)) => Ok(Some(url)),
            Some(Err(e)) => Err(e),
        };
        let base = config.base_url.as_deref();
        let urls = parse(base.and_then(|b| vendor.chat_url(b))).and_then(|chat| {
            Ok((
                chat,
                parse(base.and_then(|b| vendor.embeddings_url(b)))?,
                parse(base.and_then(|b| vendor.images_url(b)))?,
            ))
        });
        let (chat_url, embeddings_url, images_url) = match urls {
            Ok(urls) => urls,
            Err(e) => {
                tracing::error!(deployment = %dep.id, error = %e, "invalid base_url; deployment skipped");
                return None;
            }
        };
        Some(Arc::new(Route {
            chat_url,
            embeddings_url,
            images_url,
            upstream_model: config
                .upstream_model
                .clone()
                .unwrap_or_else(|| config.model_id.clone()),
            prices: config.prices(),
            request_timeout: ms(config.request_timeout_ms).unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            idle_timeout: ms(config.idle_timeout_ms),
            vendor,
            api_key: d.api_key,
            client,
            provider,
            deployment: dep,
        }))
    }

    fn rebuild(&mut self, deployments: Vec<DeploymentWithSecret>) -> usize {
        let mut routes: HashMap<String, Vec<Arc<Route>>> = HashMap::new();
        let mut by_id = HashMap::new();
        for d in deployments {
            let reuse = self.by_id.get(&d.deployment.id).filter(|old| {
                old.deployment == d.deployment
                    && old.api_key == d.api_key
                    && old.provider.connected()
            });
            let route = match reuse {
                Some(old) => Some(old.clone()),
                None => self.build_route(d),
            };
            if let Some(route) = route {
                by_id.insert(route.deployment.id.clone(), route.clone());
                routes
                    .entry(route.deployment.config.model_id.clone())
                    .or_default()
                    .push(route);
            }
        }
        self.routes = routes;
        self.by_id = by_id;
        self.publish();
        self.by_id.len()
    }

    /// Rebuilds the table from the store; of reloads that overlap, the newest wins.
    fn reload(&mut self) -> ResponseActFuture<Self, Result<usize, RouteError>> {
        self.reloads_started += 1;
        let generation = self.reloads_started;
        let store = self.store.clone();
        Box::pin(
            async move {
                let deployments = store
                    .send(LoadDeployments)
                    .timeout(super::ASK_TIMEOUT)
                    .await;
                let fallbacks = store.send(LoadFallbacks).timeout(super::ASK_TIMEOUT).await;
                (deployments, fallbacks)
            }
            .into_actor(self)
            .map(move |(deployments, fallbacks), router, _| {
                let deployments = deployments.map_err(|_| RouteError::StoreUnavailable)??;
                let fallbacks = fallbacks.map_err(|_| RouteError::StoreUnavailable)??;
                if generation < router.reload_applied {
                    return Ok(router.by_id.len());
                }
                router.reload_applied = generation;
                router.fallbacks = fallbacks;
                Ok(router.rebuild(deployments))
            }),
        )
    }

    /// Re-creates a deployment's provider actor that stopped (supervision does not catch
    /// panics, so a dead child is noticed here, on the next request that needs it).
    fn start_provider(
        &self,
        id: &str,
        max_concurrency: Option<usize>,
        breaker: crate::domain::breaker::BreakerConfig,
    ) -> ProviderHandle {
        ProviderHandle::start(
            id.to_string(),
            max_concurrency,
            breaker,
            self.metrics.clone(),
        )
    }

    fn replace_provider(&mut self, route: &Route) {
        tracing::warn!(deployment = %route.deployment.id, "provider actor gone; restarting it");
        let config = &route.deployment.config;
        let provider = self.start_provider(
            &route.deployment.id,
            max_concurrency(config),
            config.breaker,
        );
        let fresh = Arc::new(Route {
            provider,
            ..route.clone()
        });
        self.by_id
            .insert(fresh.deployment.id.clone(), fresh.clone());
        if let Some(list) = self.routes.get_mut(&fresh.deployment.config.model_id) {
            for slot in list
                .iter_mut()
                .filter(|s| s.deployment.id == fresh.deployment.id)
            {
                *slot = fresh.clone();
            }
        }
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;
}

impl Supervised for RouterActor {
    fn restarting(&mut self, ctx: &mut Self::Context) {
        tracing::warn!("router restarting; reloading the routing table");
        ctx.notify(Reload);
    }
}

impl Handler<Resolve> for RouterActor {
    type Result = Result<Vec<Arc<Route>>, RouteError>;

    fn handle(&mut self, msg: Resolve, _: &mut Self::Context) -> Self::Result {
        let stale: Vec<Arc<Route>> = fallbacks::chain(&self.fallbacks, &msg.model)
            .iter()
            .filter_map(|model| self.routes.get(model))
            .flatten()
            .filter(|r| !r.provider.connected())
            .cloned()
            .collect();
        for route in &stale {
            self.replace_provider(route);
        }
        if !stale.is_empty() {
            self.publish();
        }
        let snapshot = self.published.borrow().clone();
        let mut rng = self.rng;
        let ordered = snapshot.resolve(&msg.model, &mut || xorshift(&mut rng));
        self.rng = rng;
        match ordered {
            Some(ordered) if !ordered.is_empty() => Ok(ordered),
            _ => Err(RouteError::UnknownModel(msg.model)),
        }
    }
}

impl Handler<ListProviders> for RouterActor {
    type Result = MessageResult<ListProviders>;

    fn handle(&mut self, _: ListProviders, _: &mut Self::Context) -> Self::Result {
        let mut providers: Vec<(String, Addr<ProviderActor>)> = self
            .by_id
            .values()
            .map(|r| (r.deployment.id.clone(), r.provider.addr.clone()))
            .collect();
        providers.sort_by(|a, b| a.0.cmp(&b.0));
        MessageResult(providers)
    }
}

impl Handler<ListModels> for RouterActor {
    type Result = MessageResult<ListModels>;

    fn handle(&mut self, _: ListModels, _: &mut Self::Context) -> Self::Result {
        let mut names: Vec<String> = self.routes.keys().cloned().collect();
        names.sort();
        MessageResult(names)
    }
}

impl Handler<Reload> for RouterActor {
    type Result = ResponseActFuture<Self, Result<usize, RouteError>>;

    fn handle(&mut self, _: Reload, _: &mut Self::Context) -> Self::Result {
        self.reload()
    }
}

impl Handler<Changed> for RouterActor {
    type Result = ResponseActFuture<Self, Result<(), NotApplied>>;

    /// Reloads on a change of deployments or fallbacks; a failed reload keeps the table
    /// it has, and its cause reaches the admin's answer (logged there, once).
    fn handle(&mut self, msg: Changed, _: &mut Self::Context) -> Self::Result {
        if !msg.0.touches_routes() {
            return Box::pin(fut::ready(Ok(())));
        }
        Box::pin(self.reload().map(|reloaded, _, _| {
            reloaded.map(drop).map_err(|e| NotApplied {
                subscriber: "router",
                cause: e.to_string(),
            })
        }))
    }
}
