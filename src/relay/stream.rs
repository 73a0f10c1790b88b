//! Relaying a committed upstream SSE stream to the client, event by event: usage is taken
//! from the usage chunk (and hidden unless the client asked for it), the first content
//! chunk stamps the time to first token, and an upstream failure after commit (broken
//! connection, idle timeout, the stream's total time, an oversized event, an error event,
//! missing `[DONE]`) or the end of the shutdown grace period ends the stream with a
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
use crate::error::{ApiError, ErrorKind};
use crate::providers::{FailureClass, UpstreamFailure};

/// How a committed stream is relayed.
pub(super) struct RelayOptions {
    /// The client asked for the usage chunk.
    pub include_usage: bool,
    /// Longest silence between two upstream chunks.
    pub idle: Duration,
    /// Longest the whole stream may run.
    pub total: Duration,
    /// Turns true when the shutdown grace period is about to end.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

struct StreamRelay {
    upstream: UpstreamBody,
    parser: SseParser,
    out: VecDeque<Event>,
    include_usage: bool,
    idle: Duration,
    /// When the stream must end, whatever the upstream does.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    closing: tokio::sync::watch::Receiver<bool>,
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

/// One upstream stream event, its JSON parsed once for everything the relay asks of it.
pub(super) enum UpstreamEvent {
    Done,
    /// A JSON chunk: the text as received (relayed as is) and its parsed value.
    Chunk(String, Value),
    NotJson,
}

impl UpstreamEvent {
    pub(super) fn parse(event: SseEvent) -> Self {
        if event.data == "[DONE]" {
            return Self::Done;
        }
        match serde_json::from_str(&event.data) {
            Ok(chunk) => Self::Chunk(event.data, chunk),
            Err(_) => Self::NotJson,
        }
    }

    /// The size of the event's data, as the parser held it.
    pub(super) fn data_len(&self) -> usize {
        match self {
            Self::Chunk(data, _) => data.len(),
            Self::Done | Self::NotJson => 0,
        }
    }

    /// An upstream error event (`{"error": {...}}`) as a failure.
    pub(super) fn failure(&self) -> Option<UpstreamFailure> {
        let Self::Chunk(_, chunk) = self else {
            return None;
        };
        let error = chunk.get("error").filter(|e| e.is_object())?;
        let detail = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Some(UpstreamFailure::new(FailureClass::Upstream5xx, detail))
    }

    /// Whether the event commits a stream: it carries content, a tool call, a finish
    /// reason or usage, or it is `[DONE]` (a role-only first chunk does not). An event
    /// that is not JSON commits too, so that the relay reports it as malformed.
    pub(super) fn says_something(&self) -> bool {
        let Self::Chunk(_, chunk) = self else {
            return true;
        };
        has_content(chunk) || chunk.get("usage").is_some_and(|u| !u.is_null()) || finishing(chunk)
    }
}

/// An event too large to hold, as a failure of the attempt.
pub(super) fn oversized(e: crate::domain::sse::EventTooLarge) -> UpstreamFailure {
    UpstreamFailure::new(
        FailureClass::MalformedResponse,
        format!("{e} (routing.max_event_bytes)"),
    )
}

/// Resolves once the shutdown grace period is about to end (never, if nobody can say so).
async fn closing(rx: &mut tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What ended the wait for the next upstream chunk.
enum Next {
    Chunk(Option<Result<actix_web::web::Bytes, UpstreamFailure>>),
    Closing,
}

pub(super) fn relay(
    acc: Accounting,
    permit: AdmitPermit,
    open: OpenStream,
    options: RelayOptions,
) -> LocalBoxStream<'static, Event> {
    let span = tracing::info_span!(parent: &acc.span, "stream");
    let mut state = StreamRelay {
        upstream: open.upstream,
        parser: open.parser,
        out: VecDeque::new(),
        include_usage: options.include_usage,
        idle: options.idle,
        deadline: Box::pin(tokio::time::sleep(options.total)),
        closing: options.closing,
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
            let next = tokio::select! {
                biased;
                () = closing(&mut s.closing) => Next::Closing,
                () = s.deadline.as_mut() => Next::Chunk(Some(Err(UpstreamFailure::new(
                    FailureClass::Timeout,
                    "the stream ran longer than routing.stream_timeout_ms",
                )))),
                next = tokio::time::timeout(s.idle, s.upstream.next()) => {
                    Next::Chunk(next.unwrap_or_else(|_| {
                        Some(Err(UpstreamFailure::new(
                            FailureClass::Timeout,
                            "idle_timeout_ms passed between two chunks",
                        )))
                    }))
                }
            };
            s.acc.waited(waited.elapsed());
            match next {
                Next::Chunk(Some(Ok(bytes))) => match s.parser.push(&bytes) {
                    Ok(events) => s.on_events(events.into_iter().map(UpstreamEvent::parse)),
                    Err(e) => s.on_failure(oversized(e)),
                },
                Next::Chunk(Some(Err(failure))) => s.on_failure(failure),
                Next::Chunk(None) => s.on_failure(UpstreamFailure::new(
                    FailureClass::MalformedResponse,
                    "stream ended without [DONE]",
                )),
                Next::Closing => s.on_closing(),
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
    fn on_events(&mut self, events: impl IntoIterator<Item = UpstreamEvent>) {
        for event in events {
            if self.finished {
                return;
            }
            if let Some(failure) = event.failure() {
                self.on_failure(failure);
                return;
            }
            let (data, chunk) = match event {
                UpstreamEvent::Done => {
                    if let Some(permit) = self.permit.take() {
                        permit.finish(CallResult::Success);
                    }
                    self.acc.succeed();
                    self.out.push_back(Event::Data(Data::new("[DONE]")));
                    self.finished = true;
                    self.succeeded = true;
                    return;
                }
                UpstreamEvent::NotJson => {
                    self.on_failure(UpstreamFailure::new(
                        FailureClass::MalformedResponse,
                        "stream event is not JSON",
                    ));
                    return;
                }
                UpstreamEvent::Chunk(data, chunk) => (data, chunk),
            };
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
            if !self.observed || finishing(&chunk) {
                self.acc.observe(&chunk);
                self.observed = true;
            }
            if has_content(&chunk) {
                self.acc.first_content();
            }
            self.out.push_back(Event::Data(Data::new(data)));
        }
    }

    /// The upstream failed: the stream ends with an OpenAI-shaped error chunk.
    fn on_failure(&mut self, failure: UpstreamFailure) {
        self.acc.attempt_failed(failure.class.as_str());
        let class = failure.class.as_str();
        self.end_with(ApiError::from(failure), class, CallResult::Failure);
    }

    /// The gateway is stopping and its grace period is ending: not the upstream's fault.
    fn on_closing(&mut self) {
        let error = ApiError::new(
            ErrorKind::ShuttingDown,
            "the gateway is shutting down; the stream was ended before its grace period ran out",
        );
        self.end_with(error, ErrorKind::ShuttingDown.as_str(), CallResult::Ignored);
    }

    /// Ends the stream with `error` as its last chunk and `[DONE]`; the usage row keeps
    /// `class`.
    fn end_with(&mut self, error: ApiError, class: &str, health: CallResult) {
        if let Some(permit) = self.permit.take() {
            permit.finish(health);
        }
        self.acc.fail(error.kind.status().as_u16(), class);
        self.out
            .push_back(Event::Data(Data::new(error.body().to_string())));
        self.out.push_back(Event::Data(Data::new("[DONE]")));
        self.finished = true;
    }
}

/// The chunk's first choice has a finish reason.
fn finishing(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("finish_reason"))
        .is_some_and(|f| !f.is_null())
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
