//! Passthrough routes (SPEC §9): a request no other route matched, under a route's prefix,
//! goes to the route's upstream with its body streamed both ways untouched (SSE
//! included). The caller authenticates with a Lowart key (`Authorization` or the route's
//! `token_header`); hop-by-hop and credential headers stay behind, `inject_headers` are
//! set; the route's RPM per key (`PassthroughActor`, only when set) and concurrency cap
//! (its semaphore, held until the answer's last byte) apply; one usage row per request.
//!
//! Timeouts: `connect_timeout_ms` (the route's client); `request_timeout_ms` to the
//! upstream's headers and, for an answer that is not `text/event-stream`, to its last
//! byte; for SSE `idle_timeout_ms` between chunks. Before the headers a timeout is a 504
//! `upstream_timeout`; after them it can only end the body early (the row says
//! `upstream_timeout`).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::auth_throttle::AuthThrottle;
use super::extract::{authenticate, bearer_token, note_caller, presented_key};
use super::{AppState, not_found, request_id, upstream_clock};
use crate::actors::ASK_TIMEOUT;
use crate::actors::passthrough::{AdmitRoute, LiveRoute};
use crate::actors::store::UsageInbox;
use crate::domain::now_ms;
use crate::domain::passthrough::{
    StreamUsage, connection_tokens, forwards_response_header, rest_is_safe, usage_of,
};
use crate::domain::quota::retry_after_secs;
use crate::domain::records::KeyGrant;
use crate::domain::sse::SseParser;
use crate::domain::usage::{CostStatus, Prices, TokenUsage, UsageRecord, UsageSource};
use crate::error::{ApiError, ErrorKind};
use crate::providers::FailureClass;
use crate::relay::{Relay, UpstreamClock};
use crate::telemetry::metrics::{Metrics, RouteLabel};

/// A JSON answer is read for its `usage` only up to this size (a copy, beside the relay).
const MAX_USAGE_BODY_BYTES: usize = 1024 * 1024;
/// Request body chunks in flight between the client's connection and the upstream's.
const BODY_QUEUE: usize = 8;

/// The default service: a passthrough route's request, or 404 `route_not_found`.
pub async fn serve(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(not_found(req).await);
    };
    let table = state.passthrough.borrow().clone();
    if table.is_empty() {
        return Ok(not_found(req).await);
    }
    let Some((route, rest)) = table.find(req.path()) else {
        return Ok(not_found(req).await);
    };
    let rest = rest.to_string();
    req.extensions_mut().insert(RouteLabel(route.label.clone()));
    let key = route
        .spec
        .token_header
        .as_deref()
        .and_then(|h| req.headers().get(h))
        .and_then(|v| v.to_str().ok())
        .map(|v| bearer_token(v).unwrap_or(v).trim().to_string())
        .filter(|v| !v.is_empty())
        .or_else(|| presented_key(&req));
    let client = AuthThrottle::client_of(req.peer_addr());
    let grant = authenticate(state.clone(), key, client).await?;
    note_caller(&req, &state, &grant);
    let relay = req.app_data::<web::Data<Relay>>().cloned();
    let Some(relay) = relay else {
        return Err(ApiError::internal());
    };
    let mut usage = Recorder::new(&req, &relay, grant.clone(), &route);
    match forward(&req, payload, &state, &route, &rest, &grant, &mut usage).await {
        Ok(upstream) => Ok(respond(upstream, usage, &route)),
        Err(e) => {
            usage.end(e.kind.status().as_u16(), Some(e.code()));
            Err(e)
        }
    }
}

/// An upstream answer with its headers in, and what the body must keep alive.
struct Upstream {
    response: reqwest::Response,
    permit: Option<OwnedSemaphorePermit>,
    started: Instant,
}

async fn forward(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    route: &Arc<LiveRoute>,
    rest: &str,
    grant: &KeyGrant,
    usage: &mut Recorder,
) -> Result<Upstream, ApiError> {
    let spec = &route.spec;
    if !rest_is_safe(rest) {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "the path may not hold `.` or `..` segments",
        ));
    }
    // A key limited to some models reaches only the routes its list names by prefix.
    if let Some(models) = &grant.models
        && !models.iter().any(|m| m == &spec.prefix)
    {
        return Err(ApiError::new(
            ErrorKind::ModelNotPermitted,
            format!("this API key may not use the route `{}`", spec.prefix),
        ));
    }
    if let Some(limit) = spec.rpm_limit {
        let admitted = state
            .passthrough_limits
            .send(AdmitRoute {
                key_id: grant.key_id.clone(),
                route_id: route.id.clone(),
                limit,
            })
            .timeout(ASK_TIMEOUT)
            .await?;
        if let Err(ms) = admitted {
            return Err(ApiError {
                retry_after: Some(retry_after_secs(ms)),
                ..ApiError::new(
                    ErrorKind::RateLimited,
                    format!(
                        "rate limit of {limit} requests per minute on `{}` reached for this key",
                        spec.prefix
                    ),
                )
            });
        }
    }
    let permit = match &route.slots {
        None => None,
        Some(slots) => Some(slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                ErrorKind::UpstreamConcurrencyExceeded,
                format!(
                    "the route `{}` is at its concurrency limit; retry shortly",
                    spec.prefix
                ),
            )
        })?),
    };
    let limit = state.settings.server.max_body_bytes;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let url = spec.upstream_url(rest, req.query_string());
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| ApiError::new(ErrorKind::InvalidRequest, "unsupported method"))?;
    let mut upstream = route.client.request(method, &url);
    let tokens = connection_tokens(
        req.headers()
            .get_all(actix_web::http::header::CONNECTION)
            .filter_map(|v| v.to_str().ok()),
    );
    for (name, value) in req.headers() {
        if spec.forwards_request_header(name.as_str(), &tokens)
            && !spec
                .inject_headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case(name.as_str()))
        {
            upstream = upstream.header(name.as_str(), value.as_bytes());
        }
    }
    for (name, value) in &spec.inject_headers {
        upstream = upstream.header(name.as_str(), value.expose());
    }
    let chunked = req
        .headers()
        .contains_key(actix_web::http::header::TRANSFER_ENCODING);
    let body_state = BodyState::default();
    if chunked || declared.is_some_and(|n| n > 0) {
        upstream = upstream.body(pump(payload, limit, body_state.clone()));
    }
    usage.request_bytes = Some(body_state.bytes.clone());
    let started = Instant::now();
    let timeout = Duration::from_millis(spec.request_timeout_ms());
    let sent = tokio::time::timeout(timeout, upstream.send()).await;
    let waited = started.elapsed();
    usage.waited(waited);
    let response = match sent {
        Err(_) => return Err(upstream_error(FailureClass::Timeout, "no answer in time")),
        Ok(Err(_)) if body_state.too_large.load(Ordering::Acquire) => {
            return Err(too_large(limit));
        }
        Ok(Err(_)) if body_state.broken.load(Ordering::Acquire) => {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "could not read the request body",
            ));
        }
        Ok(Err(e)) if e.is_timeout() => {
            return Err(upstream_error(FailureClass::Timeout, e));
        }
        Ok(Err(e)) => return Err(upstream_error(FailureClass::Connect, e)),
        Ok(Ok(response)) => response,
    };
    Ok(Upstream {
        response,
        permit,
        started,
    })
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

fn upstream_error(class: FailureClass, detail: impl std::fmt::Display) -> ApiError {
    ApiError {
        detail: Some(detail.to_string()),
        ..ApiError::new(ErrorKind::Upstream(class), class.client_message())
    }
}

/// What the request body's pump tells the request task.
#[derive(Clone, Default)]
struct BodyState {
    bytes: Arc<AtomicU64>,
    too_large: Arc<AtomicBool>,
    broken: Arc<AtomicBool>,
}

/// The client's body as a `Send` stream for reqwest: a task on this worker reads the
/// payload (which is not `Send`) into a small queue, counting it; past `limit` bytes, or
/// on a broken body, it ends the stream with an error, which aborts the upstream request.
fn pump(mut payload: web::Payload, limit: usize, state: BodyState) -> reqwest::Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(BODY_QUEUE);
    actix_web::rt::spawn(async move {
        let mut total = 0u64;
        while let Some(chunk) = payload.next().await {
            let item = match chunk {
                Ok(chunk) => {
                    total += chunk.len() as u64;
                    state.bytes.store(total, Ordering::Release);
                    if total > limit as u64 {
                        state.too_large.store(true, Ordering::Release);
                        Err(io::Error::other("request body over the limit"))
                    } else {
                        Ok(chunk)
                    }
                }
                Err(e) => {
                    state.broken.store(true, Ordering::Release);
                    Err(io::Error::other(e.to_string()))
                }
            };
            let stop = item.is_err();
            // The upstream request ended (failed or answered early): stop reading.
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    reqwest::Body::wrap_stream(stream)
}

/// The client's answer: the upstream's status and end-to-end headers, and its body as it
/// arrives, chunk by chunk.
fn respond(upstream: Upstream, mut usage: Recorder, route: &LiveRoute) -> HttpResponse {
    let Upstream {
        response,
        permit,
        started,
    } = upstream;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut res = HttpResponse::build(status);
    let tokens = connection_tokens(
        response
            .headers()
            .get_all(reqwest::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    for (name, value) in response.headers() {
        if forwards_response_header(name.as_str(), &tokens) {
            res.append_header((name.as_str(), value.as_bytes()));
        }
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let sse = content_type.starts_with("text/event-stream");
    let json = content_type.contains("json");
    usage.status = status.as_u16();
    usage.stream = sse;
    let spec = &route.spec;
    let timing = if sse {
        Timing::Idle(Duration::from_millis(spec.idle_timeout_ms()))
    } else {
        let total = Duration::from_millis(spec.request_timeout_ms());
        Timing::Deadline(tokio::time::Instant::from_std(started + total))
    };
    let body = Body {
        chunks: response.bytes_stream().boxed(),
        timing,
        usage,
        reader: if sse {
            Reader::Sse(SseParser::default(), StreamUsage::default())
        } else if json {
            Reader::Json(Vec::new())
        } else {
            Reader::None
        },
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        let next = match body.timing {
            Timing::Idle(idle) => tokio::time::timeout(idle, body.chunks.next()).await,
            Timing::Deadline(at) => tokio::time::timeout_at(at, body.chunks.next()).await,
        };
        match next {
            Ok(Some(Ok(chunk))) => {
                body.observe(&chunk);
                Some((Ok(chunk), Some(body)))
            }
            Ok(None) => {
                body.finish(None);
                None
            }
            Ok(Some(Err(e))) => {
                body.finish(Some(FailureClass::Connect.as_str()));
                Some((Err(io::Error::other(e.to_string())), None))
            }
            Err(_) => {
                body.finish(Some("upstream_timeout"));
                Some((
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "upstream timed out",
                    )),
                    None,
                ))
            }
        }
    });
    res.streaming(stream)
}

enum Timing {
    /// SSE: the longest pause between chunks.
    Idle(Duration),
    /// Anything else: the whole answer by then.
    Deadline(tokio::time::Instant),
}

/// How the answer is read for its token usage, beside the relay and bounded.
enum Reader {
    None,
    /// A copy of a JSON answer, dropped past `MAX_USAGE_BODY_BYTES`.
    Json(Vec<u8>),
    /// Events parsed as they pass (each bounded by the parser); usage taken from those that
    /// carry it.
    Sse(SseParser, StreamUsage),
    /// Unreadable for usage (too large, a broken event).
    GaveUp,
}

struct Body {
    chunks: BoxStream<'static, reqwest::Result<Bytes>>,
    timing: Timing,
    usage: Recorder,
    reader: Reader,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Body {
    fn observe(&mut self, chunk: &Bytes) {
        self.usage.response_bytes += chunk.len() as u64;
        self.usage.first_byte();
        match &mut self.reader {
            Reader::None | Reader::GaveUp => {}
            Reader::Json(copy) => {
                if copy.len() + chunk.len() > MAX_USAGE_BODY_BYTES {
                    self.reader = Reader::GaveUp;
                } else {
                    copy.extend_from_slice(chunk);
                }
            }
            Reader::Sse(parser, seen) => match parser.push(chunk) {
                Ok(events) => {
                    for event in events {
                        if event.data.contains("\"usage\"")
                            && let Ok(value) = serde_json::from_str(&event.data)
                        {
                            seen.observe(&value);
                        }
                    }
                }
                Err(_) => self.reader = Reader::GaveUp,
            },
        }
    }

    fn finish(&mut self, error: Option<&'static str>) {
        self.usage.tokens = match &self.reader {
            Reader::Json(copy) => serde_json::from_slice(copy)
                .ok()
                .as_ref()
                .and_then(usage_of),
            Reader::Sse(_, seen) => seen.tokens(),
            Reader::None | Reader::GaveUp => None,
        };
        let status = self.usage.status;
        self.usage.end(status, error);
    }
}

/// One passthrough request's usage row, written once: when the answer ends, when the
/// request fails, or (dropped) when the client went away.
struct Recorder {
    inbox: UsageInbox,
    metrics: Arc<Metrics>,
    clock: UpstreamClock,
    request_id: String,
    caller: Arc<KeyGrant>,
    model: String,
    started: Instant,
    created_at: i64,
    upstream_wait: Duration,
    ttft: Option<Duration>,
    stream: bool,
    status: u16,
    request_bytes: Option<Arc<AtomicU64>>,
    response_bytes: u64,
    tokens: Option<(i64, i64)>,
    written: bool,
}

impl Recorder {
    fn new(req: &HttpRequest, relay: &Relay, caller: Arc<KeyGrant>, route: &LiveRoute) -> Self {
        Self {
            inbox: relay.usage.clone(),
            metrics: relay.metrics.clone(),
            clock: upstream_clock(req),
            request_id: request_id(req),
            caller,
            model: route.spec.prefix.clone(),
            started: Instant::now(),
            created_at: now_ms(),
            upstream_wait: Duration::ZERO,
            ttft: None,
            stream: false,
            status: 200,
            request_bytes: None,
            response_bytes: 0,
            tokens: None,
            written: false,
        }
    }

    fn waited(&mut self, d: Duration) {
        self.upstream_wait += d;
        self.clock.add(d);
    }

    fn first_byte(&mut self) {
        if self.ttft.is_none() {
            self.ttft = Some(self.started.elapsed());
        }
    }

    fn end(&mut self, status: u16, error: Option<&str>) {
        if self.written {
            return;
        }
        self.written = true;
        let usage = self.tokens.map(|(prompt, completion)| TokenUsage {
            prompt,
            completion,
            total: prompt.saturating_add(completion),
            cache_read: None,
            cache_write: None,
        });
        let (cost_micros, cost_status) = match usage {
            Some(_) => Prices::default().cost(usage),
            None => (None, CostStatus::Unknown),
        };
        let latency = self.started.elapsed();
        let as_ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let record = UsageRecord {
            request_id: self.request_id.clone(),
            user_id: Some(self.caller.user_id.clone()),
            key_id: Some(self.caller.key_id.clone()),
            model: self.model.clone(),
            deployment_id: None,
            usage,
            cost_micros,
            cost_status,
            status,
            error_class: error.map(str::to_string),
            latency_ms: as_ms(latency),
            overhead_ms: latency.saturating_sub(self.upstream_wait).as_secs_f64() * 1e3,
            ttft_ms: self.ttft.map(as_ms),
            stream: self.stream,
            usage_source: if usage.is_some() {
                UsageSource::Reported
            } else {
                UsageSource::Missing
            },
            created_at: self.created_at,
            attempts: u32::from(self.request_bytes.is_some()),
            request_bytes: self
                .request_bytes
                .as_ref()
                .map(|b| i64::try_from(b.load(Ordering::Acquire)).unwrap_or(i64::MAX)),
            response_bytes: self
                .request_bytes
                .as_ref()
                .map(|_| i64::try_from(self.response_bytes).unwrap_or(i64::MAX)),
        };
        self.metrics.record_usage(&record, Some(self.upstream_wait));
        self.inbox.record(record);
    }
}

impl Drop for Recorder {
    /// The client went away before the answer ended.
    fn drop(&mut self) {
        self.end(crate::relay::CLIENT_CLOSED, Some("client_closed"));
    }
}
