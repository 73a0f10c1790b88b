//! The chat request path after the handler: route, admit, call the upstream in the
//! request's own task (never in a mailbox), relay the answer, and account for it.

mod accounting;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::web::Bytes;
use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;

use accounting::Accounting;
pub use accounting::{CLIENT_CLOSED, RequestInfo, UpstreamClock};

use crate::actors::ASK_TIMEOUT;
use crate::actors::provider::{Admit, AdmitPermit, Outcome};
use crate::actors::router::{Resolve, Route, RouteError, RouterActor};
use crate::actors::store::{RecordUsage, StoreActor};
use crate::domain::chat::ChatRequest;
use crate::domain::usage::TokenUsage;
use crate::error::{ApiError, ErrorKind};
use crate::providers::{FailureClass, UpstreamFailure, VendorType, mock, openai};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otel;
use tracing::Instrument;

/// What the handler sends back: a JSON body, or a stream of SSE events.
pub enum ChatReply {
    Json(Bytes),
    Stream(LocalBoxStream<'static, actix_web_lab::sse::Event>),
}

/// The upstream's body as a stream of byte chunks, failures already classified.
type UpstreamBody = LocalBoxStream<'static, Result<Bytes, UpstreamFailure>>;

pub struct Relay {
    pub store: Addr<StoreActor>,
    pub router: Addr<RouterActor>,
    pub metrics: Arc<Metrics>,
}

impl Relay {
    /// Serves one chat completion; every outcome, success or failure, leaves one usage row.
    pub async fn chat(&self, info: RequestInfo, req: ChatRequest) -> Result<ChatReply, ApiError> {
        let admitted = self
            .admit(&info)
            .instrument(tracing::info_span!("route", gen_ai.request.model = %info.model))
            .await;
        match admitted {
            Ok((route, permit)) => {
                let accounting = Accounting::new(
                    self.store.clone(),
                    self.metrics.clone(),
                    info,
                    route,
                    permit,
                );
                let span = accounting.span.clone();
                dispatch(accounting, req).instrument(span).await
            }
            Err(e) => {
                let record = info.rejected(e.kind.status().as_u16(), e.code());
                self.metrics.record_usage(&record, None);
                self.store.do_send(RecordUsage(record));
                Err(e)
            }
        }
    }

    async fn admit(&self, info: &RequestInfo) -> Result<(Arc<Route>, AdmitPermit), ApiError> {
        if !info.caller.permits_model(&info.model) {
            return Err(ApiError::new(
                ErrorKind::ModelNotPermitted,
                format!("this key may not use the model `{}`", info.model),
            ));
        }
        let routes = self
            .router
            .send(Resolve {
                model: info.model.clone(),
            })
            .timeout(ASK_TIMEOUT)
            .await?
            .map_err(|e| match e {
                RouteError::UnknownModel(m) => ApiError {
                    param: Some("model".into()),
                    ..ApiError::new(
                        ErrorKind::ModelNotFound,
                        format!("the model `{m}` does not exist"),
                    )
                },
                RouteError::StoreUnavailable | RouteError::Store(_) => ApiError::unavailable(),
            })?;
        for route in routes {
            if let Ok(Ok(())) = route.provider.send(Admit).timeout(ASK_TIMEOUT).await {
                let permit = AdmitPermit::new(route.provider.clone());
                return Ok((route, permit));
            }
        }
        Err(ApiError::new(
            ErrorKind::UpstreamConcurrencyExceeded,
            format!(
                "every deployment of `{}` is at its concurrency limit",
                info.model
            ),
        ))
    }
}

async fn dispatch(mut acc: Accounting, mut req: ChatRequest) -> Result<ChatReply, ApiError> {
    let vendor = acc.route().vendor;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = acc.info().created_at / 1000;
    match (vendor, req.stream) {
        (VendorType::Mock, false) => {
            let answer = mock::complete(&req, &id, created);
            finish_blocking(acc, Bytes::from(answer.to_string()))
        }
        (VendorType::Mock, true) => {
            let frames = mock::stream_frames(&req, &id, created);
            let body: UpstreamBody =
                futures_util::stream::iter(frames.into_iter().map(|f| Ok(Bytes::from(f))))
                    .boxed_local();
            Ok(ChatReply::Stream(stream::relay(
                acc,
                body,
                req.include_usage,
            )))
        }
        (VendorType::OpenAI, stream) => {
            let route = acc.route();
            let base_url = route.deployment.base_url.clone().unwrap_or_default();
            openai::prepare_chat_body(&mut req.body, &route.upstream_model, stream);
            let body = serde_json::to_vec(&req.body).map_err(|_| ApiError::internal())?;
            let mut call = route
                .client
                .post(openai::chat_url(&base_url))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            if let Some(key) = &route.api_key {
                call = call.bearer_auth(key.expose());
            }
            if stream {
                call = call.header(reqwest::header::ACCEPT, "text/event-stream");
            }
            let mut trace_headers = reqwest::header::HeaderMap::new();
            otel::inject_trace_context(&acc.span, &mut trace_headers);
            call = call.headers(trace_headers);
            let timeout = route.request_timeout;
            let waited = Instant::now();
            let sent = tokio::time::timeout(timeout, call.send()).await;
            acc.waited(waited.elapsed());
            let response = match sent {
                Err(_) => return Err(upstream_failed(&mut acc, timeout_failure())),
                Ok(Err(e)) => return Err(upstream_failed(&mut acc, transport_failure(&e))),
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            if stream && status.is_success() {
                let body: UpstreamBody = response
                    .bytes_stream()
                    .map(|chunk| chunk.map_err(|e| transport_failure(&e)))
                    .boxed_local();
                return Ok(ChatReply::Stream(stream::relay(
                    acc,
                    body,
                    req.include_usage,
                )));
            }
            let waited = Instant::now();
            let remaining = timeout.saturating_sub(acc.info().started.elapsed());
            let read =
                tokio::time::timeout(remaining.max(Duration::from_millis(1)), response.bytes())
                    .await;
            acc.waited(waited.elapsed());
            let bytes = match read {
                Err(_) => return Err(upstream_failed(&mut acc, timeout_failure())),
                Ok(Err(e)) => return Err(upstream_failed(&mut acc, transport_failure(&e))),
                Ok(Ok(b)) => b,
            };
            if !status.is_success() {
                return Err(upstream_failed(
                    &mut acc,
                    openai::classify(status.as_u16(), &bytes),
                ));
            }
            finish_blocking(acc, bytes)
        }
    }
}

/// Checks a complete answer, records its usage, and hands the upstream's bytes on as is.
fn finish_blocking(mut acc: Accounting, bytes: Bytes) -> Result<ChatReply, ApiError> {
    let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&bytes);
    match parsed {
        Ok(answer) if answer.is_object() => {
            acc.observe(&answer);
            acc.usage = answer.get("usage").and_then(TokenUsage::from_openai);
            acc.succeed();
            Ok(ChatReply::Json(bytes))
        }
        _ => Err(upstream_failed(
            &mut acc,
            UpstreamFailure::new(
                FailureClass::MalformedResponse,
                "answer is not a JSON object",
            ),
        )),
    }
}

/// Records a failed upstream call and turns it into the client's error.
fn upstream_failed(acc: &mut Accounting, failure: UpstreamFailure) -> ApiError {
    let outcome = if failure.class.is_client_fault() {
        Outcome::Neutral
    } else {
        Outcome::Failure
    };
    let error = ApiError::from(failure);
    acc.fail(error.kind.status().as_u16(), error.code(), outcome);
    error
}

fn timeout_failure() -> UpstreamFailure {
    UpstreamFailure::new(FailureClass::Timeout, "request_timeout_ms elapsed")
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
