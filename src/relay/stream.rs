//! Relaying a committed upstream SSE stream to the client, event by event: usage is taken
//! from the usage chunk (and hidden unless the client asked for it), the first content
//! chunk stamps the time to first token, and an upstream failure after commit (broken
//! connection, idle timeout, error event, missing `[DONE]`) ends the stream with a
//! well-formed error event and `[DONE]`, never a silent truncation. Dropping the stream
//! (client gone) drops the upstream connection with it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix_web_lab::sse::{Data, Event};
use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;
use serde_json::Value;

use super::{Accounting, OpenStream, UpstreamBody};
use crate::actors::provider::AdmitPermit;
use crate::domain::breaker::CallResult;
use crate::domain::sse::{SseEvent, SseParser};
use crate::domain::usage::TokenUsage;
use crate::error::ApiError;
use crate::providers::{FailureClass, UpstreamFailure};

struct StreamRelay {
    upstream: UpstreamBody,
    parser: SseParser,
    out: VecDeque<Event>,
    include_usage: bool,
    idle: Option<Duration>,
    acc: Accounting,
    permit: Option<AdmitPermit>,
    /// `[DONE]` or an error was queued: nothing more goes to the client.
    finished: bool,
    /// The upstream sent `[DONE]`.
    succeeded: bool,
    /// The first chunk's model has been recorded on the span.
    observed: bool,
    /// "stream" span, child of the chat span: open for as long as the relay runs.
    _span: tracing::Span,
}

/// An upstream error event (`{"error": {...}}`) as a failure.
pub(super) fn error_event(event: &SseEvent) -> Option<UpstreamFailure> {
    let chunk: Value = serde_json::from_str(&event.data).ok()?;
    let error = chunk.get("error").filter(|e| e.is_object())?;
    let detail = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Some(UpstreamFailure::new(FailureClass::Upstream5xx, detail))
}

pub(super) fn relay(
    acc: Accounting,
    permit: AdmitPermit,
    open: OpenStream,
    include_usage: bool,
    idle: Option<Duration>,
) -> LocalBoxStream<'static, Event> {
    let span = tracing::info_span!(parent: &acc.span, "stream");
    let mut state = StreamRelay {
        upstream: open.upstream,
        parser: open.parser,
        out: VecDeque::new(),
        include_usage,
        idle,
        acc,
        permit: Some(permit),
        finished: false,
        succeeded: false,
        observed: false,
        _span: span,
    };
    state.on_events(open.first);
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.out.pop_front() {
                return Some((event, s));
            }
            if s.finished {
                if s.succeeded {
                    // Read the upstream's last bytes off the client's path so the upstream
                    // connection can be reused; a stalled upstream is dropped after a while.
                    let upstream = std::mem::replace(
                        &mut s.upstream,
                        futures_util::stream::empty().boxed_local(),
                    );
                    actix::spawn(drain(upstream));
                }
                return None;
            }
            let waited = Instant::now();
            let next = match s.idle {
                Some(idle) => tokio::time::timeout(idle, s.upstream.next())
                    .await
                    .unwrap_or_else(|_| {
                        Some(Err(UpstreamFailure::new(
                            FailureClass::Timeout,
                            "idle_timeout_ms passed between two chunks",
                        )))
                    }),
                None => s.upstream.next().await,
            };
            s.acc.waited(waited.elapsed());
            match next {
                Some(Ok(bytes)) => {
                    let events = s.parser.push(&bytes);
                    s.on_events(events);
                }
                Some(Err(failure)) => s.on_failure(failure),
                None => s.on_failure(UpstreamFailure::new(
                    FailureClass::MalformedResponse,
                    "stream ended without [DONE]",
                )),
            }
        }
    })
    .boxed_local()
}

const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Reads what the upstream still sends after `[DONE]` so its connection can be reused.
async fn drain(mut upstream: UpstreamBody) {
    let _ = tokio::time::timeout(DRAIN_LIMIT, async {
        while let Some(Ok(_)) = upstream.next().await {}
    })
    .await;
}

impl StreamRelay {
    fn on_events(&mut self, events: Vec<SseEvent>) {
        for event in events {
            if self.finished {
                return;
            }
            if event.data == "[DONE]" {
                if let Some(permit) = self.permit.take() {
                    permit.finish(CallResult::Success);
                }
                self.acc.succeed();
                self.out.push_back(Event::Data(Data::new("[DONE]")));
                self.finished = true;
                self.succeeded = true;
                return;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
                self.on_failure(UpstreamFailure::new(
                    FailureClass::MalformedResponse,
                    "stream event is not JSON",
                ));
                return;
            };
            if let Some(failure) = error_event(&event) {
                self.on_failure(failure);
                return;
            }
            let usage = chunk.get("usage").and_then(TokenUsage::from_openai);
            if usage.is_some() {
                self.acc.usage = usage;
            }
            let choices_empty = chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
            if usage.is_some() && choices_empty && !self.include_usage {
                continue;
            }
            let finishing = chunk
                .get("choices")
                .and_then(|c| c.get(0))
                .and_then(|c| c.get("finish_reason"))
                .is_some_and(|f| !f.is_null());
            if !self.observed || finishing {
                self.acc.observe(&chunk);
                self.observed = true;
            }
            if has_content(&chunk) {
                self.acc.first_content();
            }
            self.out.push_back(Event::Data(Data::new(event.data)));
        }
    }

    /// Ends the stream with an OpenAI-shaped error chunk and `[DONE]`.
    fn on_failure(&mut self, failure: UpstreamFailure) {
        self.acc.attempt_failed(failure.class.as_str());
        if let Some(permit) = self.permit.take() {
            permit.finish(CallResult::Failure);
        }
        let class = failure.class.as_str();
        let error = ApiError::from(failure);
        self.acc.fail(error.kind.status().as_u16(), class);
        self.out
            .push_back(Event::Data(Data::new(error.body().to_string())));
        self.out.push_back(Event::Data(Data::new("[DONE]")));
        self.finished = true;
    }
}

fn has_content(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("delta"))
        .is_some_and(|d| {
            d.get("content")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
                || d.get("tool_calls").is_some_and(|t| !t.is_null())
        })
}
