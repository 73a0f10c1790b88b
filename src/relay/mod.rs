//! The chat request path after the handler: resolve the model (and its fallback chain),
//! admit on a deployment (breaker, concurrency cap), call the upstream in the request's own
//! task (never in a mailbox), retry retryable failures on the next deployment or fallback
//! until something answers, the attempts run out or the deadline passes, then relay the
//! answer and account for it once.

mod accounting;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::web::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;
use ring::rand::{SecureRandom, SystemRandom};
use tracing::Instrument;

use accounting::Accounting;
pub use accounting::{CLIENT_CLOSED, RequestInfo, UpstreamClock};

use crate::actors::ASK_TIMEOUT;
use crate::actors::provider::{AdmitError, AdmitPermit, admit};
use crate::actors::router::{
    Resolve, Route, RouteError, RouterActor, RoutingSnapshot, thread_random,
};
use crate::actors::store::StoreActor;
use crate::config::RoutingSettings;
use crate::domain::breaker::CallResult;
use crate::domain::chat::ChatRequest;
use crate::domain::sse::SseParser;
use crate::domain::usage::TokenUsage;
use crate::error::{ApiError, ErrorKind};
use crate::providers::{FailureClass, UpstreamFailure, VendorType, mock, openai};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otel;

/// Which deployment answered, after how many attempts (sent as `x-lowart-*` headers).
#[derive(Debug, Clone)]
pub struct ServedBy {
    pub model: String,
    pub deployment_id: String,
    pub attempts: u32,
}

/// What the handler sends back: a JSON body, or a stream of SSE events.
pub enum ChatBody {
    Json(Bytes),
    Stream(LocalBoxStream<'static, actix_web_lab::sse::Event>),
}

pub struct ChatReply {
    pub body: ChatBody,
    pub served: ServedBy,
}

/// The upstream's body as a stream of byte chunks, failures already classified.
type UpstreamBody = LocalBoxStream<'static, Result<Bytes, UpstreamFailure>>;

/// A stream that has produced its first content event and may now be committed to the
/// client: the events read so far, and the rest still upstream.
struct OpenStream {
    upstream: UpstreamBody,
    parser: SseParser,
    first: Vec<stream::UpstreamEvent>,
}

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

enum Answer {
    Json(Bytes),
    Stream(OpenStream),
}

pub struct Relay {
    pub store: Addr<StoreActor>,
    pub router: Addr<RouterActor>,
    pub routing_table: tokio::sync::watch::Receiver<Arc<RoutingSnapshot>>,
    pub metrics: Arc<Metrics>,
    pub routing: RoutingSettings,
    /// Turns true when the shutdown grace period is about to end: open streams end with
    /// an error event and `[DONE]` instead of being cut.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

impl Relay {
    /// Serves one chat completion; every outcome, success or failure, leaves one usage row.
    pub async fn chat(&self, info: RequestInfo, req: ChatRequest) -> Result<ChatReply, ApiError> {
        let mut acc = Accounting::new(self.store.clone(), self.metrics.clone(), info);
        let routes = match self
            .resolve(acc.info())
            .instrument(tracing::info_span!("route", gen_ai.request.model = %acc.info().model))
            .await
        {
            Ok(routes) => routes,
            Err(e) => return Err(reject(&mut acc, e)),
        };
        self.attempt_all(acc, &routes, &req).await
    }

    async fn resolve(&self, info: &RequestInfo) -> Result<Vec<Arc<Route>>, ApiError> {
        if !info.caller.permits_model(&info.model) {
            return Err(ApiError::new(
                ErrorKind::ModelNotPermitted,
                format!("this key may not use the model `{}`", info.model),
            ));
        }
        // The published table serves the hot path; the router itself only when it must
        // first re-create a provider actor that has gone.
        let snapshot = self.routing_table.borrow().clone();
        let mut routes = match snapshot.resolve(&info.model, &mut thread_random) {
            Some(routes) if routes.is_empty() => return Err(unknown_model(&info.model)),
            Some(routes) => routes,
            None => self
                .router
                .send(Resolve {
                    model: info.model.clone(),
                })
                .timeout(ASK_TIMEOUT)
                .await?
                .map_err(|e| match e {
                    RouteError::UnknownModel(m) => unknown_model(&m),
                    RouteError::StoreUnavailable | RouteError::Store(_) => ApiError::unavailable(),
                })?,
        };
        // A fallback chain may lead to models this key may not use: those are skipped.
        if info.caller.models.is_some() {
            routes.retain(|r| info.caller.permits_model(&r.deployment.config.model_id));
        }
        Ok(routes)
    }

    /// Tries the candidates in order (cycling while attempts and time remain) until one
    /// answers. A deployment tried before in this request is retried after a backoff.
    async fn attempt_all(
        &self,
        mut acc: Accounting,
        routes: &[Arc<Route>],
        req: &ChatRequest,
    ) -> Result<ChatReply, ApiError> {
        let deadline = acc.info().started + Duration::from_millis(self.routing.deadline_ms);
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
                let result = attempt(&mut acc, route, req, deadline, limits)
                    .instrument(span)
                    .await;
                match result {
                    Ok(answer) => {
                        let options = stream::RelayOptions {
                            include_usage: req.include_usage,
                            idle: limits.idle,
                            total: limits.stream,
                            closing: self.closing.clone(),
                        };
                        return Ok(deliver(acc, route, permit, answer, options));
                    }
                    Err(failure) => {
                        acc.attempt_failed(failure.class.as_str());
                        let health = if failure.class.is_client_fault() {
                            CallResult::Ignored
                        } else {
                            CallResult::Failure
                        };
                        permit.finish(health);
                        tracing::warn!(deployment = %route.deployment.id, class = failure.class.as_str(),
                            attempt = acc.attempts(), "upstream attempt failed");
                        if failure.class.is_client_fault() {
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
            None => ApiError::new(ErrorKind::UpstreamTimeout, "the request deadline passed"),
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

fn unknown_model(model: &str) -> ApiError {
    ApiError {
        param: Some("model".into()),
        ..ApiError::new(
            ErrorKind::ModelNotFound,
            format!("the model `{model}` does not exist"),
        )
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

fn deliver(
    acc: Accounting,
    route: &Arc<Route>,
    permit: AdmitPermit,
    answer: Answer,
    options: stream::RelayOptions,
) -> ChatReply {
    let served = ServedBy {
        model: route.deployment.config.model_id.clone(),
        deployment_id: route.deployment.id.clone(),
        attempts: acc.attempts(),
    };
    let body = match answer {
        Answer::Json(bytes) => {
            let mut acc = acc;
            permit.finish(CallResult::Success);
            acc.succeed();
            ChatBody::Json(bytes)
        }
        Answer::Stream(open) => ChatBody::Stream(stream::relay(acc, permit, open, options)),
    };
    ChatReply { body, served }
}

/// One upstream attempt, up to an answer that can be committed to the client: a complete,
/// valid JSON answer, or a stream that has produced its first content event.
async fn attempt(
    acc: &mut Accounting,
    route: &Arc<Route>,
    req: &ChatRequest,
    deadline: Instant,
    limits: Limits,
) -> Result<Answer, UpstreamFailure> {
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = acc.info().created_at / 1000;
    let timeout = route
        .request_timeout
        .min(deadline.saturating_duration_since(Instant::now()));
    match (route.vendor, req.stream) {
        (VendorType::Mock, false) => {
            let answer = mock::complete(req, &id, created);
            check_json(acc, Bytes::from(answer.to_string()))
        }
        (VendorType::Mock, true) => {
            let frames = mock::stream_frames(req, &id, created);
            let body: UpstreamBody =
                futures_util::stream::iter(frames.map(|f| Ok(Bytes::from(f)))).boxed_local();
            open_stream(acc, body, limits, timeout).await
        }
        (VendorType::OpenAI, stream) => {
            let mut body = req.body.clone();
            openai::prepare_chat_body(&mut body, &route.upstream_model, stream);
            let bytes = serde_json::to_vec(&body)
                .map_err(|e| UpstreamFailure::new(FailureClass::InvalidRequest, e.to_string()))?;
            let url = route.chat_url.clone().ok_or_else(|| {
                UpstreamFailure::new(FailureClass::Connect, "deployment has no base_url")
            })?;
            let mut call = route
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
            if let Some(key) = &route.api_key {
                call = call.bearer_auth(key.expose());
            }
            if stream {
                call = call.header(reqwest::header::ACCEPT, "text/event-stream");
            }
            let mut trace_headers = reqwest::header::HeaderMap::new();
            otel::inject_trace_context(&acc.span, &mut trace_headers);
            call = call.headers(trace_headers);

            let started = Instant::now();
            let sent = tokio::time::timeout(timeout, call.send()).await;
            acc.waited(started.elapsed());
            let response = match sent {
                Err(_) => return Err(timeout_failure()),
                Ok(Err(e)) => return Err(transport_failure(&e)),
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            let retry_after = retry_after(response.headers());
            if stream && status.is_success() {
                let body: UpstreamBody = response
                    .bytes_stream()
                    .map(|chunk| chunk.map_err(|e| transport_failure(&e)))
                    .boxed_local();
                let remaining = deadline.saturating_duration_since(Instant::now());
                return open_stream(acc, body, limits, remaining).await;
            }
            let started = Instant::now();
            let remaining =
                timeout.saturating_sub(started.saturating_duration_since(acc.info().started));
            let read = tokio::time::timeout(
                remaining.max(Duration::from_millis(1)),
                read_capped(response, limits.max_response_bytes),
            )
            .await;
            acc.waited(started.elapsed());
            let bytes = match read {
                Err(_) => return Err(timeout_failure()),
                Ok(result) => result?,
            };
            if !status.is_success() {
                let mut failure = openai::classify(status.as_u16(), &bytes);
                failure.retry_after = retry_after;
                return Err(failure);
            }
            check_json(acc, bytes)
        }
    }
}

/// A complete answer must be a JSON object; its usage and model are recorded.
fn check_json(acc: &mut Accounting, bytes: Bytes) -> Result<Answer, UpstreamFailure> {
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(answer) if answer.is_object() => {
            acc.observe(&answer);
            acc.usage = answer.get("usage").and_then(TokenUsage::from_openai);
            Ok(Answer::Json(bytes))
        }
        _ => Err(UpstreamFailure::new(
            FailureClass::MalformedResponse,
            "answer is not a JSON object",
        )),
    }
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

/// Reads a stream until its first event that says something (content, a tool call, a
/// finish reason, usage or `[DONE]`), so that a stream failing before then (after a
/// role-only first chunk, say) can still move to another deployment. An error event
/// counts as a failure.
async fn open_stream(
    acc: &mut Accounting,
    mut upstream: UpstreamBody,
    limits: Limits,
    limit: Duration,
) -> Result<Answer, UpstreamFailure> {
    let mut parser = SseParser::new(limits.max_event_bytes);
    let mut first = Vec::new();
    let mut held = 0usize;
    let until = Instant::now() + limit;
    loop {
        let wait = limits
            .idle
            .min(until.saturating_duration_since(Instant::now()));
        let started = Instant::now();
        let next = tokio::time::timeout(wait, upstream.next()).await;
        acc.waited(started.elapsed());
        let bytes = match next {
            Err(_) => return Err(timeout_failure()),
            Ok(None) => {
                return Err(UpstreamFailure::new(
                    FailureClass::MalformedResponse,
                    "stream ended before any content",
                ));
            }
            Ok(Some(Err(failure))) => return Err(failure),
            Ok(Some(Ok(bytes))) => bytes,
        };
        let mut events = parser
            .push(&bytes)
            .map_err(stream::oversized)?
            .into_iter()
            .map(stream::UpstreamEvent::parse);
        while let Some(event) = events.next() {
            if let Some(error) = event.failure() {
                return Err(error);
            }
            let commit = event.says_something();
            held += event.data_len();
            first.push(event);
            // Waiting is bounded too: past one event's worth of preamble, commit anyway.
            if commit || held > limits.max_event_bytes {
                first.extend(events);
                return Ok(Answer::Stream(OpenStream {
                    upstream,
                    parser,
                    first,
                }));
            }
        }
    }
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
    UpstreamFailure::new(class, e.to_string())
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
