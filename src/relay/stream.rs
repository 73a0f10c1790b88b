//! Relaying an upstream SSE stream to the client, event by event: usage is taken from the
//! usage chunk (and hidden unless the client asked for it), the first content chunk stamps
//! the time to first token, and an upstream failure after the first byte ends the stream
//! with a well-formed error event and `[DONE]`, never a silent truncation.

use std::collections::VecDeque;
use std::time::Instant;

use actix_web_lab::sse::{Data, Event};
use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;
use serde_json::Value;

use super::{Accounting, UpstreamBody, upstream_failed};
use crate::domain::sse::SseParser;
use crate::domain::usage::TokenUsage;
use crate::providers::{FailureClass, UpstreamFailure};

struct StreamRelay {
    upstream: UpstreamBody,
    parser: SseParser,
    out: VecDeque<Event>,
    include_usage: bool,
    acc: Accounting,
    /// `[DONE]` or an error was queued: nothing more goes to the client.
    finished: bool,
    /// The first chunk's model has been recorded on the span.
    observed: bool,
    /// "stream" span, child of the chat span: open for as long as the relay runs.
    _span: tracing::Span,
}

pub(super) fn relay(
    acc: Accounting,
    upstream: UpstreamBody,
    include_usage: bool,
) -> LocalBoxStream<'static, Event> {
    let span = tracing::info_span!(parent: &acc.span, "stream");
    let state = StreamRelay {
        observed: false,
        _span: span,
        upstream,
        parser: SseParser::default(),
        out: VecDeque::new(),
        include_usage,
        acc,
        finished: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.out.pop_front() {
                return Some((event, s));
            }
            if s.finished {
                drain(&mut s.upstream).await;
                return None;
            }
            let waited = Instant::now();
            let next = s.upstream.next().await;
            s.acc.waited(waited.elapsed());
            match next {
                Some(Ok(bytes)) => s.on_bytes(&bytes),
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

/// Reads what the upstream still sends after `[DONE]` so its connection can be reused.
async fn drain(upstream: &mut UpstreamBody) {
    while let Some(Ok(_)) = upstream.next().await {}
}

impl StreamRelay {
    fn on_bytes(&mut self, bytes: &[u8]) {
        for event in self.parser.push(bytes) {
            if self.finished {
                return;
            }
            if event.data == "[DONE]" {
                self.acc.succeed();
                self.out.push_back(Event::Data(Data::new("[DONE]")));
                self.finished = true;
                return;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
                self.on_failure(UpstreamFailure::new(
                    FailureClass::MalformedResponse,
                    "stream event is not JSON",
                ));
                return;
            };
            if let Some(error) = chunk.get("error").filter(|e| e.is_object()) {
                let detail = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.on_failure(UpstreamFailure::new(FailureClass::Upstream5xx, detail));
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
        let error = upstream_failed(&mut self.acc, failure);
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
