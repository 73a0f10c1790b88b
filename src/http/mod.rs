//! The HTTP edge: `configure()` lists every route; handlers are thin (extract, ask an
//! actor or the relay, answer). Errors leave through `ApiError` only.

pub mod admin;
pub mod anthropic;
pub mod auth_throttle;
pub mod bus;
pub mod chat;
pub mod dto;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod key_cache;
pub mod mcp_server;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod passthrough;
pub mod tools;
pub mod ui;

pub use auth_throttle::AuthThrottle;
pub use key_cache::{KeyCache, KeyCacheFollower};

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use futures_util::{FutureExt, StreamExt};
use std::pin::Pin;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::actors::router::RouterActor;
use crate::actors::store::StoreActor;
use crate::config::Settings;
use crate::domain::quota::RateNote;
use crate::error::{ApiError, ErrorKind};
use crate::relay::{RequestInfo, ServedBy, UpstreamClock};
use crate::telemetry::metrics::{Metrics, RouteLabel, method_label};

/// What every handler can reach: actor addresses, the key cache and the auth throttle,
/// immutable settings.
/// (The request path to upstreams, `Relay`, is app data of its own: one per worker.)
pub struct AppState {
    /// The global cap on requests handled at once (`server.max_concurrency`).
    pub downstream: Option<Arc<Semaphore>>,
    pub store: Addr<StoreActor>,
    pub router: Addr<RouterActor>,
    pub keys: Arc<KeyCache>,
    pub auth_throttle: AuthThrottle,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub jobs: Addr<crate::actors::jobs::JobActor>,
    pub bus: Addr<crate::actors::bus::BusActor>,
    pub mcp: Addr<crate::actors::mcp::McpSupervisor>,
    /// The MCP servers as their supervisor last published them.
    pub mcp_catalog: tokio::sync::watch::Receiver<Arc<crate::actors::mcp::McpCatalog>>,
    /// True once a graceful stop began: bus connections close (`going away`).
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// The root of every key's webhook secret (from the master key).
    pub webhook_root: [u8; 32],
    /// `security.upstream_hosts`: where deployments and webhooks may point.
    pub upstream_hosts: Arc<crate::domain::upstream_hosts::UpstreamHosts>,
    /// Every worker's `/metrics/summary` counts (each worker writes its own shard).
    pub summary: Arc<crate::telemetry::summary::Summary>,
    /// The passthrough routes as their actor last published them.
    pub passthrough:
        tokio::sync::watch::Receiver<Arc<crate::actors::passthrough::PassthroughTable>>,
    /// Per-key per-route request windows (asked only for a route with `rpm_limit`).
    pub passthrough_limits: Addr<crate::actors::passthrough::PassthroughActor>,
    /// Transform scripts: the sandbox and the published compiled scripts.
    pub scripts: crate::scripts::Scripts,
}

/// The request id of the current request (inbound `x-request-id` if sane, else a UUIDv7).
/// Sane: 1 to 128 characters of `A-Z a-z 0-9 - _ . :` — it is stored, logged and echoed.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const OVERHEAD: HeaderName = HeaderName::from_static("x-lowart-overhead-ms");

/// A resource for a path with one route per method (`get => handler`, …); any other
/// method answers 405 `method_not_allowed` with an `Allow` header naming these.
macro_rules! resource {
    ($path:expr, $($method:ident => $handler:expr),+ $(,)?) => {
        actix_web::web::resource($path)
            $(.route(actix_web::web::$method().to($handler)))+
            .default_service(actix_web::web::to(|req: actix_web::HttpRequest| {
                $crate::http::method_not_allowed(req, &[$(stringify!($method)),+])
            }))
    };
}
pub(crate) use resource;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource!("/healthz", get => health::healthz))
        .service(resource!("/metrics", get => metrics::metrics))
        .service(resource!("/metrics/summary", get => metrics::summary))
        .service(resource!("/readyz", get => health::readyz))
        .service(resource!("/openapi.json", get => openapi::openapi_json))
        .service(
            web::scope("/v1")
                .service(resource!(
                    "/chat/completions",
                    post => openai::chat_completions::chat_completions,
                ))
                .service(resource!("/models", get => openai::models::list_models))
                .service(resource!("/embeddings", post => openai::embeddings::embeddings))
                .service(resource!(
                    "/images/generations",
                    post => openai::images::generations,
                ))
                .service(resource!("/jobs", get => jobs::list_jobs))
                .service(resource!(
                    "/jobs/{id}",
                    get => jobs::get_job,
                    delete => jobs::cancel_job,
                ))
                .service(resource!("/jobs/{id}/events", get => jobs::job_events))
                .service(resource!("/jobs/{id}/artifacts/{n}", get => jobs::job_artifact))
                .service(resource!("/webhook_secret", get => jobs::own_webhook_secret))
                .service(resource!("/bus/ws", get => bus::bus_ws))
                .service(resource!("/bus/topics", get => bus::topics))
                .service(resource!("/bus/topics/{topic}/messages", post => bus::publish))
                .service(resource!("/usage", get => openai::usage::own_usage))
                .service(resource!(
                    "/usage/summary",
                    get => openai::usage::own_usage_summary,
                ))
                .service(resource!("/keys", get => openai::usage::own_keys))
                .service(resource!("/tools/confirm", post => tools::confirm))
                .service(resource!("/tools/sessions", get => tools::sessions))
                .service(resource!(
                    "/messages",
                    post => anthropic::messages::messages,
                )),
        )
        .service(resource!("/mcp", post => mcp_server::mcp))
        .configure(ui::configure)
        .service(web::scope("/admin").configure(admin::configure));
}

/// Around every request: stamps `x-request-id`, `x-lowart-overhead-ms` (total time
/// minus time waiting on upstreams) and the caller's `x-ratelimit-*` when limits apply, counts it in the HTTP metrics, and turns a handler
/// panic into an OpenAI-shaped 500.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let method = method_label(req.method());
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_request_id(v))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string);
    let clock = UpstreamClock::default();
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(clock.clone());
    // The console's files (`/ui`) are not traffic either.
    let exempt = matches!(
        req.path(),
        "/healthz" | "/readyz" | "/metrics" | "/metrics/summary"
    ) || req.path() == "/ui"
        || req.path().starts_with("/ui/");
    // This worker's summary counts (absent when metrics are off).
    let summary = req
        .app_data::<web::Data<crate::telemetry::summary::Shard>>()
        .filter(|_| !exempt)
        .cloned();
    // The Anthropic surface answers errors in Anthropic's shape.
    let anthropic = is_anthropic_path(req.path());
    // In flight until the response's last byte, or until the request is dropped (a client
    // that hangs up before the headers): the guard is dropped either way. Probes and
    // scrapes are not counted.
    let inflight = metrics
        .clone()
        .filter(|_| !exempt)
        .map(|m| InflightGuard::new(m, summary.as_deref().map(|s| &**s)));
    let downstream = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.downstream.clone())
        .filter(|_| !exempt);
    let (permit, over_cap) = match downstream.map(Semaphore::try_acquire_owned) {
        None => (None, false),
        Some(Ok(permit)) => (Some(permit), false),
        Some(Err(_)) => (None, true),
    };
    let result = if over_cap {
        let error = ApiError::new(
            ErrorKind::DownstreamConcurrencyExceeded,
            "the gateway is at its concurrency limit; retry shortly",
        );
        Ok(req.error_response(error).map_into_right_body())
    } else {
        match AssertUnwindSafe(next.call(req)).catch_unwind().await {
            Ok(result) => result.map(ServiceResponse::map_into_left_body),
            Err(_) => {
                tracing::error!(request_id = %id, "handler panicked");
                let error: actix_web::Error = ApiError::internal().into();
                if anthropic {
                    // No request is left to answer with: the error carries its response.
                    let body = anthropic::render_error(&error);
                    let res = HttpResponse::InternalServerError()
                        .content_type("application/json")
                        .body(body);
                    Err(
                        actix_web::error::InternalError::from_response("handler panicked", res)
                            .into(),
                    )
                } else {
                    Err(error)
                }
            }
        }
    };
    let elapsed = started.elapsed();
    let (route, status) = match &result {
        Ok(res) => (
            res.request()
                .match_pattern()
                .or_else(|| {
                    let extensions = res.request().extensions();
                    extensions.get::<RouteLabel>().map(|l| l.0.to_string())
                })
                .unwrap_or_else(|| "unmatched".into()),
            res.status().as_u16(),
        ),
        Err(e) => (
            "unmatched".into(),
            e.as_response_error().status_code().as_u16(),
        ),
    };
    if let Some(m) = &metrics {
        m.request_finished(&route, method, status, elapsed);
    }
    if let Some(shard) = &summary {
        match &result {
            Ok(res) => {
                let extensions = res.request().extensions();
                let caller = extensions
                    .get::<extract::CallerKey>()
                    .map(|c| (c.0.key_id.as_str(), c.0.user_id.as_str()));
                shard.request_finished(&route, caller);
            }
            Err(_) => shard.request_finished(&route, None),
        }
    }
    let mut res = result?;
    if anthropic && let Some(error) = res.response().error() {
        let body = anthropic::render_error(error);
        res = res.map_body(|_, _| EitherBody::right(BoxBody::new(body)));
    }
    let overhead = elapsed.saturating_sub(clock.get()).as_secs_f64() * 1e3;
    let rate = res
        .request()
        .extensions()
        .get::<RateNote>()
        .and_then(RateNote::get);
    let headers = res.headers_mut();
    if let Some(rate) = rate {
        for (name, value) in rate.pairs() {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("{overhead:.3}")) {
        headers.insert(OVERHEAD, value);
    }
    // The permit and the in-flight count live as long as the body: a stream holds its
    // slot until it ends.
    Ok(res.map_body(|_, body| match (permit, inflight) {
        (None, None) => EitherBody::left(body),
        (permit, inflight) => EitherBody::right(GuardedBody {
            body: BoxBody::new(body),
            _permit: permit,
            _inflight: inflight,
        }),
    }))
}

fn is_sane_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Counts one request in `gateway_inflight_requests` for as long as it lives.
pub struct InflightGuard(Arc<Metrics>);

impl InflightGuard {
    fn new(metrics: Arc<Metrics>, summary: Option<&crate::telemetry::summary::Shard>) -> Self {
        let now = metrics.request_started();
        if let Some(shard) = summary {
            shard.request_started(now);
        }
        Self(metrics)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that holds a downstream-concurrency permit and the in-flight count
/// until it is done or dropped.
pub struct GuardedBody {
    body: BoxBody,
    _permit: Option<OwnedSemaphorePermit>,
    _inflight: Option<InflightGuard>,
}

impl MessageBody for GuardedBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// An SSE response whose events are `items`, each encoded by the client's dialect.
pub fn sse_response<T: 'static>(
    req: &HttpRequest,
    items: futures_util::stream::LocalBoxStream<'static, T>,
    mut encode: impl FnMut(T, &mut Vec<actix_web_lab::sse::Event>) + 'static,
) -> HttpResponse {
    use actix_web::Responder;
    let events = items.flat_map(move |item| {
        let mut out = Vec::new();
        encode(item, &mut out);
        futures_util::stream::iter(out)
    });
    actix_web_lab::sse::Sse::from_infallible_stream(events)
        .respond_to(req)
        .map_into_boxed_body()
}

/// `x-lowart-model`, `x-lowart-deployment` and `x-lowart-attempts`: who served a request.
pub fn served_headers(res: &mut HttpResponse, served: ServedBy) {
    let headers = res.headers_mut();
    for (name, value) in [
        ("x-lowart-model", served.model),
        ("x-lowart-deployment", served.deployment_id),
        ("x-lowart-attempts", served.attempts.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// The upstream clock of the current request (a detached one outside the middleware).
pub fn upstream_clock(req: &HttpRequest) -> UpstreamClock {
    req.extensions()
        .get::<UpstreamClock>()
        .cloned()
        .unwrap_or_default()
}

pub fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), |r| r.0.clone())
}

/// Unknown paths answer 404 `route_not_found`.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::from_error(ApiError::new(
        ErrorKind::RouteNotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

/// Whether `path` belongs to the Anthropic surface (its errors take Anthropic's shape).
fn is_anthropic_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// A known path with a method it has no route for: 405 with `Allow: <allowed>`.
pub async fn method_not_allowed(
    req: HttpRequest,
    allowed: &'static [&'static str],
) -> HttpResponse {
    let allow = allowed
        .iter()
        .map(|m| m.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(", ");
    let mut res = HttpResponse::from_error(ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "{} is not allowed on {}; allowed: {allow}",
            req.method(),
            req.path()
        ),
    ));
    if let Ok(value) = HeaderValue::from_str(&allow) {
        res.headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    res
}

/// Reads a request body up to `limit` bytes (413 beyond it, 400 on a broken body).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("could not read the body: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A request body that must be a JSON object: 400 `invalid_json` when it is not JSON,
/// 400 `invalid_request` when it is not an object.
pub fn json_object(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(body)) => Ok(body),
        Ok(_) => Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            ErrorKind::InvalidJson,
            format!("request body is not valid JSON: {e}"),
        )),
    }
}

/// Who asks for what, from this request: the usage row's start.
pub fn request_info(
    req: &HttpRequest,
    caller: extract::Caller,
    model: String,
    stream: bool,
    started: Instant,
) -> RequestInfo {
    let info = RequestInfo::new(
        request_id(req),
        upstream_clock(req),
        caller.0,
        model,
        stream,
        started,
    );
    // The middleware reads admission's rate limits from here for the answer's headers.
    req.extensions_mut().insert(info.rate.clone());
    info
}

/// Reads a JSON body of type `T` (call it once the caller is authenticated): 400 without
/// `Content-Type: application/json`, 413 above `limit`, 400 `invalid_json` on broken
/// JSON, 400 `invalid_request` with `param` naming the field on a wrong shape.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    use actix_web::mime;
    let is_json = req
        .mime_type()
        .ok()
        .flatten()
        .is_some_and(|m| m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON));
    if !is_json {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "expected Content-Type: application/json",
        ));
    }
    let body = read_body(req, payload, limit).await?;
    serde_json::from_slice(&body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::new(
                ErrorKind::InvalidJson,
                format!("request body is not valid JSON: {e}"),
            )
        } else {
            ApiError {
                param: field_of(&e.to_string()),
                ..ApiError::new(ErrorKind::InvalidRequest, format!("invalid body: {e}"))
            }
        }
    })
}

/// Maps actix's path and query extractor errors into `ApiError`s.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, _| {
        ApiError::new(ErrorKind::InvalidRequest, format!("invalid path: {err}")).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _| {
        ApiError::new(ErrorKind::InvalidRequest, format!("invalid query: {err}")).into()
    })
}

/// The field named in a serde message such as "missing field `user_id`".
fn field_of(message: &str) -> Option<String> {
    crate::domain::quoted_name(message).filter(|_| message.contains("field"))
}
