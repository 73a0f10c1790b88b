//! The request path after the handler, written once for every vendor and every kind of
//! call: resolve the model (and its fallback chain), admit on a deployment (breaker,
//! concurrency cap), let the vendor's adapter build the upstream call, send it from the
//! request's own task (never in a mailbox), retry retryable failures on the next
//! deployment or fallback until something answers, the attempts run out or the deadline
//! passes, then hand back a canonical answer (or stream) and account for it once.
//!
//! The relay is built once at startup and shared; it knows no HTTP types of the client's
//! side and no vendor: a `Call` (chat, embeddings) says what one attempt is.

mod accounting;
mod chat;
mod embeddings;
mod images;
mod scripted;
mod stream;
pub mod tools;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::web::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;
use ring::rand::{SecureRandom, SystemRandom};
use tracing::Instrument;

use accounting::{Accounting, Prompt};
pub use accounting::{CLIENT_CLOSED, RequestInfo, UpstreamClock};
pub use chat::{ChatBody, Relayed};
pub use embeddings::EmbeddingsRequest;
pub use images::{ImageCall, ImageEvent, interrupt as interrupt_comfyui};

use crate::actors::ASK_TIMEOUT;
use crate::actors::provider::{AdmitError, AdmitPermit, admit};
use crate::actors::quota::{Admit, QuotaActor, Reservation};
use crate::actors::router::{
    Resolve, Route, RouteError, RouterActor, RoutingSnapshot, thread_random,
};
use crate::actors::store::UsageInbox;
use crate::config::{LimitSettings, RoutingSettings};
use crate::domain::breaker::CallResult;
use crate::domain::quota::{CallerLimits, Demand};
use crate::error::{ApiError, ErrorKind};
use crate::providers::{FailureClass, Target, UpstreamFailure, UpstreamRequest};
use crate::scripts::Scripts;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otel;

/// Which deployment answered, after how many attempts (sent as `x-lowart-*` headers).
#[derive(Debug, Clone)]
pub struct ServedBy {
    pub model: String,
    pub deployment_id: String,
    pub attempts: u32,
}

/// An answer and who served it.
pub struct Reply<T> {
    pub body: T,
    pub served: ServedBy,
}

/// The upstream's body as a stream of byte chunks, failures already classified.
type UpstreamBody = LocalBoxStream<'static, Result<Bytes, UpstreamFailure>>;

/// What bounds one attempt's answer, from `[routing]` and the deployment.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Longest silence between two stream chunks.
    idle: Duration,
    /// Longest a committed stream may run.
    stream: Duration,
    max_response_bytes: usize,
    max_event_bytes: usize,
}

impl Limits {
    fn of(routing: &RoutingSettings, route: &Route) -> Self {
        Self {
            idle: route
                .idle_timeout
                .unwrap_or(Duration::from_millis(routing.idle_timeout_ms)),
            stream: Duration::from_millis(routing.stream_timeout_ms),
            max_response_bytes: routing.max_response_bytes,
            max_event_bytes: routing.max_event_bytes,
        }
    }
}

/// One kind of upstream call (a chat completion, embeddings): what a deployment must
/// offer to serve it, and one attempt on a deployment up to an answer that can be
/// committed to the client.
trait Call {
    type Answer;

    /// Whether `route`'s vendor can serve this call at all.
    fn serves(&self, route: &Route) -> bool;

    /// Tokens the call may use at most, for admission: its prompt, counted, and the most
    /// it may produce (`reserve_completion` when the request sets no maximum).
    fn demand_tokens(&self, route: &Route, reserve_completion: u64) -> (u64, u64);

    /// The client's input, for the gateway to count if no vendor reports usage.
    fn prompt(&self) -> Prompt;

    /// The longest the call may take, retries included.
    fn deadline(&self, routing: &RoutingSettings) -> Duration {
        Duration::from_millis(routing.deadline_ms)
    }

    async fn attempt(
        &self,
        acc: &mut Accounting,
        route: &Arc<Route>,
        deadline: Instant,
        limits: Limits,
        scripts: &Scripts,
    ) -> Result<Self::Answer, UpstreamFailure>;
}

/// An answer that won: the attempt's deployment still holds its permit until the answer
/// has been delivered.
struct Admitted<A> {
    acc: Accounting,
    route: Arc<Route>,
    permit: AdmitPermit,
    answer: A,
    limits: Limits,
}

impl<A> Admitted<A> {
    fn served(&self) -> ServedBy {
        ServedBy {
            model: self.route.deployment.config.model_id.clone(),
            deployment_id: self.route.deployment.id.clone(),
            attempts: self.acc.attempts(),
        }
    }
}

/// The request path: one per HTTP worker, built by the app factory on the worker's thread
/// (where its quota actor lives).
pub struct Relay {
    /// Where usage rows go (the store drains it in batches).
    pub usage: UsageInbox,
    /// This worker's quota actor (`QuotaShards`).
    pub quota: Addr<QuotaActor>,
    /// `[limits]`: defaults for users without limits of their own.
    pub limits: LimitSettings,
    pub router: Addr<RouterActor>,
    pub routing_table: tokio::sync::watch::Receiver<Arc<RoutingSnapshot>>,
    pub metrics: Arc<Metrics>,
    pub routing: RoutingSettings,
    /// Turns true when the shutdown grace period is about to end: open streams end with
    /// an error event instead of being cut.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Deployments' transform scripts (read only when a deployment names one).
    pub scripts: Scripts,
}

impl Relay {
    /// The MCP servers `model`'s own deployments are configured with (sorted, no repeats).
    pub fn mcp_servers_of(&self, model: &str) -> Vec<String> {
        let snapshot = self.routing_table.borrow().clone();
        let mut servers: Vec<String> = snapshot
            .routes
            .get(model)
            .into_iter()
            .flatten()
            .flat_map(|r| r.deployment.config.mcp_servers.iter().cloned())
            .collect();
        servers.sort();
        servers.dedup();
        servers
    }

    /// Routes `call` and tries deployments until one answers; every outcome, success or
    /// failure, leaves one usage row.
    async fn serve<C: Call>(
        &self,
        info: RequestInfo,
        call: &C,
    ) -> Result<Admitted<C::Answer>, ApiError> {
        let mut acc = Accounting::new(self.usage.clone(), self.metrics.clone(), info);
        acc.keep_prompt(call.prompt());
        let routes = match self
            .resolve(acc.info())
            .instrument(tracing::info_span!("route", gen_ai.request.model = %acc.info().model))
            .await
        {
            Ok(routes) => routes,
            Err(e) => return Err(reject(&mut acc, e)),
        };
        let mut routes = routes;
        let had_routes = !routes.is_empty();
        routes.retain(|r| call.serves(r));
        if had_routes && routes.is_empty() {
            let error = ApiError::invalid(
                "model",
                format!(
                    "the model `{}` has no deployment that serves this endpoint",
                    acc.info().model
                ),
            );
            return Err(reject(&mut acc, error));
        }
        if let Err(error) = self.admit(&mut acc, &routes, call).await {
            return Err(reject(&mut acc, error));
        }
        self.attempt_all(acc, &routes, call).await
    }

    /// Admission against the caller's limits: no message at all when none apply; else
    /// one round trip to this worker's `QuotaActor` (on this thread), which reserves the call's worst case (tokens,
    /// and their cost at the dearest candidate) until the usage row settles it.
    async fn admit<C: Call>(
        &self,
        acc: &mut Accounting,
        routes: &[Arc<Route>],
        call: &C,
    ) -> Result<(), ApiError> {
        let info = acc.info();
        let limits = CallerLimits::of(&info.caller, &self.limits);
        if limits.is_unlimited() {
            return Ok(());
        }
        let demand = if limits.counts_tokens() {
            demand(routes, call, self.limits.reserve_completion_tokens)
        } else {
            Demand::default()
        };
        let admit = Admit {
            user_id: info.caller.user_id.clone(),
            key_id: info.caller.key_id.clone(),
            limits,
            demand,
        };
        match self.quota.send(admit).timeout(ASK_TIMEOUT).await? {
            Ok(admission) => {
                acc.info().rate.set(admission.headers);
                acc.hold(Reservation::new(self.quota.clone(), admission.holds));
                Ok(())
            }
            Err(refusal) => {
                acc.info().rate.set(refusal.headers);
                Err(refusal.into())
            }
        }
    }

    async fn resolve(&self, info: &RequestInfo) -> Result<Vec<Arc<Route>>, ApiError> {
        // The published table serves the hot path; the router itself only when it must
        // first re-create a provider actor that has gone.
        let snapshot = self.routing_table.borrow().clone();
        let mut routes = match snapshot.resolve(&info.model, &mut thread_random) {
            Some(routes) if routes.is_empty() => {
                return Err(RouteError::UnknownModel(info.model.clone()).into());
            }
            Some(routes) => routes,
            None => {
                self.router
                    .send(Resolve {
                        model: info.model.clone(),
                    })
                    .timeout(ASK_TIMEOUT)
                    .await??
            }
        };
        // A model that does not exist is 404 for every key; one that exists but is not
        // this key's is 403.
        if !info.caller.permits_model(&info.model) {
            return Err(ApiError::new(
                ErrorKind::ModelNotPermitted,
                format!("this key may not use the model `{}`", info.model),
            ));
        }
        // A fallback chain may lead to models this key may not use: those are skipped.
        if info.caller.models.is_some() {
            routes.retain(|r| info.caller.permits_model(&r.deployment.config.model_id));
        }
        Ok(routes)
    }

    /// Tries the candidates in order (cycling while attempts and time remain) until one
    /// answers. A deployment tried before in this request is retried after a backoff.
    async fn attempt_all<C: Call>(
        &self,
        mut acc: Accounting,
        routes: &[Arc<Route>],
        call: &C,
    ) -> Result<Admitted<C::Answer>, ApiError> {
        let deadline = acc.info().started + call.deadline(&self.routing);
        let max_attempts = self.routing.max_attempts.max(1);
        let mut tried: Vec<(String, Option<Duration>)> = Vec::new();
        let mut last_failure: Option<UpstreamFailure> = None;
        let (mut saw_open, mut saw_saturated) = (false, false);
        'passes: loop {
            let mut admitted_this_pass = false;
            for route in routes {
                if acc.attempts() >= max_attempts || Instant::now() >= deadline {
                    break 'passes;
                }
                if let Some((_, retry_after)) =
                    tried.iter().find(|(id, _)| *id == route.deployment.id)
                {
                    let pause = self.backoff(acc.attempts(), *retry_after);
                    if Instant::now() + pause >= deadline {
                        break 'passes;
                    }
                    tokio::time::sleep(pause).await;
                }
                let permit = match admit(&route.provider).await {
                    Ok(permit) => permit,
                    Err(AdmitError::Open) => {
                        saw_open = true;
                        continue;
                    }
                    Err(AdmitError::Saturated) => {
                        saw_saturated = true;
                        continue;
                    }
                };
                admitted_this_pass = true;
                acc.begin_attempt(route.clone());
                let span = acc.span.clone();
                let limits = Limits::of(&self.routing, route);
                let result = call
                    .attempt(&mut acc, route, deadline, limits, &self.scripts)
                    .instrument(span)
                    .await;
                match result {
                    Ok(answer) => {
                        return Ok(Admitted {
                            acc,
                            route: route.clone(),
                            permit,
                            answer,
                            limits,
                        });
                    }
                    Err(failure) => {
                        acc.attempt_failed(failure.class.as_str());
                        let health = if failure.class.is_final() {
                            CallResult::Ignored
                        } else {
                            CallResult::Failure
                        };
                        permit.finish(health);
                        tracing::info!(deployment = %route.deployment.id, class = failure.class.as_str(),
                            attempt = acc.attempts(), detail = %failure.detail, "upstream attempt failed");
                        if failure.class.is_final() {
                            return Err(fail(&mut acc, failure));
                        }
                        tried.retain(|(id, _)| *id != route.deployment.id);
                        tried.push((route.deployment.id.clone(), failure.retry_after));
                        last_failure = Some(failure);
                    }
                }
            }
            if !admitted_this_pass {
                break;
            }
        }
        let error = match last_failure {
            Some(failure) => return Err(fail(&mut acc, failure)),
            None if saw_saturated => ApiError::new(
                ErrorKind::UpstreamConcurrencyExceeded,
                format!(
                    "every deployment of `{}` is at its concurrency limit",
                    acc.info().model
                ),
            ),
            None if saw_open => ApiError::new(
                ErrorKind::NoHealthyDeployment,
                format!(
                    "no healthy deployment for `{}`: every circuit breaker is open",
                    acc.info().model
                ),
            ),
            None => ApiError::new(
                ErrorKind::Upstream(FailureClass::Timeout),
                "the request deadline passed",
            ),
        };
        Err(reject(&mut acc, error))
    }

    /// Exponential backoff with full jitter, at least the upstream's `Retry-After`.
    fn backoff(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .routing
            .backoff_initial_ms
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
        let cap = exp.min(self.routing.backoff_max_ms);
        let mut bytes = [0u8; 8];
        let random = match SystemRandom::new().fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => cap / 2,
        };
        let jitter = Duration::from_millis(if cap == 0 { 0 } else { random % (cap + 1) });
        jitter.max(retry_after.unwrap_or_default())
    }
}

/// The most a call may use: its tokens (counted once, with the first candidate's
/// encoding), and their cost in micro-dollars at the dearest candidate (a price per
/// million tokens is micro-dollars per token).
fn demand<C: Call>(routes: &[Arc<Route>], call: &C, reserve_completion: u64) -> Demand {
    let Some(first) = routes.first() else {
        return Demand::default();
    };
    let (prompt, completion) = call.demand_tokens(first, reserve_completion);
    let price = |p: Option<f64>, tokens: u64| (p.unwrap_or(0.0) * tokens as f64).ceil();
    let micros = routes
        .iter()
        .map(|r| {
            price(r.prices.input_per_mtok, prompt) + price(r.prices.output_per_mtok, completion)
        })
        .fold(0.0, f64::max);
    Demand {
        tokens: prompt + completion,
        micros: micros.min(u64::MAX as f64) as u64,
    }
}

/// Records a request that never reached an upstream, and answers its error.
fn reject(acc: &mut Accounting, error: ApiError) -> ApiError {
    acc.fail(error.kind.status().as_u16(), error.code());
    error
}

/// Records a failed request and turns its last upstream failure into the client's error.
/// The usage row keeps the failure class; the client gets its error.
fn fail(acc: &mut Accounting, failure: UpstreamFailure) -> ApiError {
    let class = failure.class.as_str();
    let error = ApiError::from(failure);
    acc.fail(error.kind.status().as_u16(), class);
    error
}

/// Sends an adapter's request with the deployment's client and trace context, within
/// `timeout` (time to headers).
async fn send(
    acc: &mut Accounting,
    route: &Route,
    request: UpstreamRequest,
    timeout: Duration,
) -> Result<reqwest::Response, UpstreamFailure> {
    let mut headers = request.headers;
    otel::inject_trace_context(&acc.span, &mut headers);
    let call = route
        .client
        .post(request.url)
        .headers(headers)
        .body(request.body);
    let started = Instant::now();
    let sent = tokio::time::timeout(timeout, call.send()).await;
    acc.waited(started.elapsed());
    match sent {
        Err(_) => Err(timeout_failure()),
        Ok(Err(e)) => Err(transport_failure(&e)),
        Ok(Ok(r)) => Ok(r),
    }
}

/// Reads a whole answer within what is left of `timeout`; a non-2xx answer is classified
/// by the deployment's vendor.
async fn read_answer(
    acc: &mut Accounting,
    route: &Route,
    response: reqwest::Response,
    timeout: Duration,
    limit: usize,
) -> Result<Bytes, UpstreamFailure> {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let started = Instant::now();
    let remaining = timeout.saturating_sub(started.saturating_duration_since(acc.info().started));
    let read = tokio::time::timeout(
        remaining.max(Duration::from_millis(1)),
        read_capped(response, limit),
    )
    .await;
    acc.waited(started.elapsed());
    let bytes = match read {
        Err(_) => return Err(timeout_failure()),
        Ok(result) => result?,
    };
    if !status.is_success() {
        let mut failure = route.vendor.classify(status.as_u16(), &bytes);
        failure.retry_after = retry_after;
        return Err(failure);
    }
    Ok(bytes)
}

/// Whom `route` calls, as whom.
fn target(route: &Route) -> Target<'_> {
    Target {
        upstream_model: &route.upstream_model,
        api_key: route.api_key.as_ref().map(|k| k.expose()),
    }
}

/// The time an attempt may take to its answer's headers.
fn attempt_timeout(route: &Route, deadline: Instant) -> Duration {
    route
        .request_timeout
        .min(deadline.saturating_duration_since(Instant::now()))
}

/// Reads a blocking answer, at most `limit` bytes (a larger one is malformed, and is not
/// read further).
async fn read_capped(response: reqwest::Response, limit: usize) -> Result<Bytes, UpstreamFailure> {
    let too_large = || {
        UpstreamFailure::new(
            FailureClass::MalformedResponse,
            format!("the upstream answer exceeds routing.max_response_bytes ({limit})"),
        )
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut chunks = response.bytes_stream();
    // Most answers arrive in one chunk: keep it as it is, copy only when there are more.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| transport_failure(&e))?;
        let held = first.as_ref().map_or(0, Bytes::len) + joined.len();
        if held + chunk.len() > limit {
            return Err(too_large());
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            earlier => {
                if let Some(earlier) = earlier {
                    joined.extend_from_slice(&earlier);
                }
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

fn timeout_failure() -> UpstreamFailure {
    UpstreamFailure::new(FailureClass::Timeout, "the upstream did not answer in time")
}

/// Classifies a transport error (connect, timeout, broken body).
fn transport_failure(e: &reqwest::Error) -> UpstreamFailure {
    let class = if e.is_timeout() {
        FailureClass::Timeout
    } else if e.is_connect() {
        FailureClass::Connect
    } else {
        FailureClass::Upstream5xx
    };
    // reqwest's own message is short ("error sending request"); the causes say why.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    UpstreamFailure::new(class, detail)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by model vendors).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}
