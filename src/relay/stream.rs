//! Relaying a committed upstream stream, event by event, as canonical events (and the
//! upstream's own events when it speaks the client's dialect): usage is taken from the
//! usage event (what goes to the client is counted, for when there is none), the first
//! content stamps the time to first token, and an upstream failure
//! after commit (broken connection, idle timeout, the stream's total time, an oversized
//! or undecodable event, an error event, a missing end) or the end of the shutdown grace
//! period ends the stream with a `Failed` item that the client's dialect renders as its
//! error event, never a silent truncation. Dropping the stream (client gone) drops the
//! upstream connection with it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;

use super::chat::{OpenStream, Relayed};
use super::{Accounting, UpstreamBody};
use crate::actors::provider::AdmitPermit;
use crate::domain::breaker::CallResult;
use crate::domain::canonical::{ChatEvent, StreamDecoder};
use crate::domain::sse::{SseEvent, SseParser};
use crate::error::{ApiError, ErrorKind};
use crate::providers::{FailureClass, UpstreamFailure};

/// How a committed stream is relayed.
pub(super) struct RelayOptions {
    /// The vendor speaks the client's dialect: its events go along as they are.
    pub passthrough: bool,
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
    decoder: Box<dyn StreamDecoder>,
    out: VecDeque<Relayed>,
    passthrough: bool,
    idle: Duration,
    /// When the stream must end, whatever the upstream does.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    closing: tokio::sync::watch::Receiver<bool>,
    acc: Accounting,
    permit: Option<AdmitPermit>,
    /// The end or an error was queued: nothing more goes to the client.
    finished: bool,
    /// The upstream ended the stream properly.
    succeeded: bool,
    /// "stream" span, child of the chat span: open for as long as the relay runs.
    _span: tracing::Span,
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
) -> LocalBoxStream<'static, Relayed> {
    let span = tracing::info_span!(parent: &acc.span, "stream");
    let mut state = StreamRelay {
        upstream: open.upstream,
        parser: open.parser,
        decoder: open.decoder,
        out: VecDeque::new(),
        passthrough: options.passthrough,
        idle: options.idle,
        deadline: Box::pin(tokio::time::sleep(options.total)),
        closing: options.closing,
        acc,
        permit: Some(permit),
        finished: false,
        succeeded: false,
        _span: span,
    };
    state.on_events(open.first);
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(item) = s.out.pop_front() {
                s.delivering(&item);
                return Some((item, s));
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
                    Ok(events) => s.on_upstream(events),
                    Err(e) => s.on_failure(oversized(e)),
                },
                Next::Chunk(Some(Err(failure))) => s.on_failure(failure),
                Next::Chunk(None) => s.on_failure(UpstreamFailure::new(
                    FailureClass::MalformedResponse,
                    "the stream ended before its end event",
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
    /// Decodes upstream events and relays them.
    fn on_upstream(&mut self, events: Vec<SseEvent>) {
        for event in events {
            if self.finished {
                return;
            }
            let mut decoded = Vec::new();
            match self.decoder.decode(&event, &mut decoded) {
                Ok(()) => self.on_events(std::iter::once((event, decoded))),
                Err(failure) => self.on_failure(failure),
            }
        }
    }

    fn on_events(&mut self, events: impl IntoIterator<Item = (SseEvent, Vec<ChatEvent>)>) {
        for (raw, decoded) in events {
            if self.finished {
                return;
            }
            for event in &decoded {
                self.acc.observe(event);
            }
            if decoded.contains(&ChatEvent::Done) {
                if let Some(permit) = self.permit.take() {
                    permit.finish(CallResult::Success);
                }
                // The row is written when this last item goes to the client (`delivering`).
                self.finished = true;
                self.succeeded = true;
            }
            self.out.push_back(Relayed::Event {
                raw: self.passthrough.then_some(raw),
                events: decoded,
            });
        }
    }

    /// An item is handed to the client: what it streams is counted, and with the end the
    /// request is accounted for, before the end goes out (a client that saw it can rely
    /// on the usage row being queued).
    fn delivering(&mut self, item: &Relayed) {
        if let Relayed::Event { events, .. } = item {
            self.acc.streamed(events);
            if self.succeeded && self.out.is_empty() {
                self.acc.succeed();
            }
        }
    }

    /// The upstream failed: the stream ends with an error.
    fn on_failure(&mut self, failure: UpstreamFailure) {
        self.acc.attempt_failed(failure.class.as_str());
        let class = failure.class.as_str();
        let health = if failure.class.is_final() {
            CallResult::Ignored
        } else {
            CallResult::Failure
        };
        self.end_with(ApiError::from(failure), class, health);
    }

    /// The gateway is stopping and its grace period is ending: not the upstream's fault.
    fn on_closing(&mut self) {
        let error = ApiError::new(
            ErrorKind::ShuttingDown,
            "the gateway is shutting down; the stream was ended before its grace period ran out",
        );
        self.end_with(error, ErrorKind::ShuttingDown.as_str(), CallResult::Ignored);
    }

    /// Ends the stream with `error`; the usage row keeps `class`.
    fn end_with(&mut self, error: ApiError, class: &str, health: CallResult) {
        if let Some(permit) = self.permit.take() {
            permit.finish(health);
        }
        self.acc.fail(error.kind.status().as_u16(), class);
        error.log();
        self.out.push_back(Relayed::Failed(error));
        self.finished = true;
    }
}
