//! Chat completions on the relay: one attempt builds the vendor's request from the
//! canonical one, and reads a blocking answer or a stream up to its first event that
//! commits it (so a stream failing before then can still move to another deployment).

use std::sync::Arc;
use std::time::Instant;

use actix_web::web::Bytes;
use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;

use super::accounting::{Accounting, Prompt};
use super::{
    Admitted, Call, Limits, Relay, Reply, RequestInfo, UpstreamBody, attempt_timeout, read_answer,
    scripted, send, stream, target, timeout_failure,
};
use crate::actors::router::Route;
use crate::domain::breaker::CallResult;
use crate::domain::canonical::{ChatEvent, ChatRequest, ChatResponse, StreamDecoder};
use crate::domain::sse::{SseEvent, SseParser};
use crate::domain::tokens::Encoding;
use crate::error::ApiError;
use crate::providers::{FailureClass, LocalAnswer, UpstreamFailure};
use crate::scripts::{Hook, Scripts};

/// A chat answer for the client's dialect to encode.
pub enum ChatBody {
    /// A complete answer; `raw` is the vendor's own bytes when the vendor speaks the
    /// client's dialect (sent as they are).
    Complete {
        response: ChatResponse,
        raw: Option<Bytes>,
    },
    /// A committed stream.
    Stream(LocalBoxStream<'static, Relayed>),
}

/// One step of a relayed stream.
pub enum Relayed {
    /// What one upstream event said; `raw` is the event itself when the vendor speaks the
    /// client's dialect (relayed as it is).
    Event {
        raw: Option<SseEvent>,
        events: Vec<ChatEvent>,
    },
    /// The stream failed after commit, or the gateway is closing: the last item.
    Failed(ApiError),
}

/// A stream that has produced its first event that commits it: the events read so far,
/// and the rest still upstream.
pub(super) struct OpenStream {
    pub upstream: UpstreamBody,
    pub parser: SseParser,
    pub decoder: Box<dyn StreamDecoder>,
    pub first: Vec<(SseEvent, Vec<ChatEvent>)>,
}

enum ChatAnswer {
    Complete(ChatResponse, Bytes),
    Stream(OpenStream),
}

struct ChatCall<'a> {
    req: &'a Arc<ChatRequest>,
}

impl Call for ChatCall<'_> {
    type Answer = ChatAnswer;

    fn serves(&self, route: &Route) -> bool {
        route.vendor.serves_chat()
    }

    fn demand_tokens(&self, route: &Route, reserve_completion: u64) -> (u64, u64) {
        let encoding = Encoding::for_route(&route.upstream_model, &self.req.model);
        let completion = self.req.max_tokens.map_or(reserve_completion, u64::from);
        (encoding.prompt_tokens(self.req), completion)
    }

    fn prompt(&self) -> Prompt {
        Prompt::Chat(self.req.clone())
    }

    async fn attempt(
        &self,
        acc: &mut Accounting,
        route: &Arc<Route>,
        deadline: Instant,
        limits: Limits,
        scripts: &Scripts,
    ) -> Result<ChatAnswer, UpstreamFailure> {
        let req: &ChatRequest = self.req;
        let timeout = attempt_timeout(route, deadline);
        // A vendor answering in-process still answers in its wire format, decoded as an
        // upstream's would be.
        match route.vendor.local_chat(req, acc.info().created_at / 1000) {
            Some(LocalAnswer::Frames(frames)) => {
                let body: UpstreamBody =
                    futures_util::stream::iter(frames.map(|f| Ok(Bytes::from(f)))).boxed_local();
                let body = scripted::events(route, scripts, body, limits.max_event_bytes);
                return open_stream(acc, route, body, limits, timeout).await;
            }
            Some(LocalAnswer::Complete(bytes)) => {
                let bytes = scripted::answer(route, scripts, Bytes::from(bytes)).await?;
                return decode(acc, route, bytes);
            }
            None => {}
        }
        let url = route.chat_url.as_ref().ok_or_else(|| {
            UpstreamFailure::new(FailureClass::Connect, "deployment has no base_url")
        })?;
        let mut request = route.vendor.chat_request(url, target(route), req)?;
        if let Some(name) = &route.deployment.config.request_script
            && let Some(body) = scripts
                .transform(name, Hook::OnRequest, &request.body)
                .await?
        {
            request.body = body;
        }
        let response = send(acc, route, request, timeout).await?;
        if req.stream && response.status().is_success() {
            let body: UpstreamBody = response
                .bytes_stream()
                .map(|chunk| chunk.map_err(|e| super::transport_failure(&e)))
                .boxed_local();
            let body = scripted::events(route, scripts, body, limits.max_event_bytes);
            let remaining = deadline.saturating_duration_since(Instant::now());
            return open_stream(acc, route, body, limits, remaining).await;
        }
        let bytes = read_answer(acc, route, response, timeout, limits.max_response_bytes).await?;
        let bytes = scripted::answer(route, scripts, bytes).await?;
        decode(acc, route, bytes)
    }
}

/// A complete answer, decoded by the vendor's adapter; its usage is recorded.
fn decode(
    acc: &mut Accounting,
    route: &Route,
    bytes: Bytes,
) -> Result<ChatAnswer, UpstreamFailure> {
    let response = route.vendor.decode_answer(&bytes)?;
    acc.observe_response(&response);
    Ok(ChatAnswer::Complete(response, bytes))
}

impl Relay {
    /// Serves one chat completion, in whatever dialect it came. The request is shared with
    /// the usage row, which counts its prompt if no vendor reports usage.
    pub async fn chat(
        &self,
        info: RequestInfo,
        req: &Arc<ChatRequest>,
    ) -> Result<Reply<ChatBody>, ApiError> {
        let admitted = self.serve(info, &ChatCall { req }).await?;
        let served = admitted.served();
        Ok(Reply {
            body: self.deliver(admitted, req),
            served,
        })
    }

    fn deliver(&self, admitted: Admitted<ChatAnswer>, req: &ChatRequest) -> ChatBody {
        let Admitted {
            mut acc,
            route,
            permit,
            answer,
            limits,
        } = admitted;
        let passthrough = route.vendor.dialect() == req.native.dialect;
        match answer {
            ChatAnswer::Complete(response, bytes) => {
                permit.finish(CallResult::Success);
                acc.succeed();
                ChatBody::Complete {
                    response,
                    raw: passthrough.then_some(bytes),
                }
            }
            ChatAnswer::Stream(open) => {
                let options = stream::RelayOptions {
                    passthrough,
                    idle: limits.idle,
                    total: limits.stream,
                    closing: self.closing.clone(),
                };
                ChatBody::Stream(stream::relay(acc, permit, open, options))
            }
        }
    }
}

/// Reads a stream until its first event that commits it (content, a tool call, a finish
/// reason, usage or the end), so that a stream failing before then (after a role-only
/// first chunk, say) can still move to another deployment. An error event, or one the
/// vendor's decoder cannot read, fails the attempt.
async fn open_stream(
    acc: &mut Accounting,
    route: &Route,
    mut upstream: UpstreamBody,
    limits: Limits,
    limit: std::time::Duration,
) -> Result<ChatAnswer, UpstreamFailure> {
    let mut parser = SseParser::new(limits.max_event_bytes);
    let mut decoder = route.vendor.stream_decoder();
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
        let mut events = parser.push(&bytes).map_err(stream::oversized)?.into_iter();
        while let Some(event) = events.next() {
            let mut decoded = Vec::new();
            decoder.decode(&event, &mut decoded)?;
            let commit = decoded.iter().any(ChatEvent::commits);
            held += event.data.len();
            first.push((event, decoded));
            // Waiting is bounded too: past one event's worth of preamble, commit anyway.
            if commit || held > limits.max_event_bytes {
                // The rest of this read is decoded by the relay, in order.
                for event in events {
                    let mut decoded = Vec::new();
                    decoder.decode(&event, &mut decoded)?;
                    first.push((event, decoded));
                }
                return Ok(ChatAnswer::Stream(OpenStream {
                    upstream,
                    parser,
                    decoder,
                    first,
                }));
            }
        }
    }
}
