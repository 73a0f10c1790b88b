//! `Accounting`: follows one client request through its upstream attempts to its end and
//! writes exactly one usage row, whether the request succeeds, fails, or is dropped because
//! the client went away. Each attempt gets its own GenAI CLIENT span.
//!
//! Where the row's tokens come from (`UsageSource`, SPEC §5) is decided in one place,
//! `write`: the vendor's figures whenever it sent any (`reported`, a zero included); else,
//! for a request that completed, the gateway's count of the prompt and of the answer
//! (`counted`); for a client that went away after the request reached an upstream, the
//! count of the prompt and of what was streamed to it (`partial`); else `missing`. The
//! prompt is kept (shared, not copied) and counted only when a row needs it; what is
//! streamed is buffered a few KiB at a time and tokenized only past that, so a stream
//! whose vendor reports usage costs a copy of its text into a small buffer.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actors::quota::Reservation;
use crate::actors::router::Route;
use crate::actors::store::UsageInbox;
use crate::domain::canonical::{ChatEvent, ChatRequest, ChatResponse, FinishReason};
use crate::domain::now_ms;
use crate::domain::quota::RateNote;
use crate::domain::records::KeyGrant;
use crate::domain::tokens::{Encoding, StreamCounter};
use crate::domain::usage::{CostStatus, TokenUsage, UsageRecord, UsageSource};
use crate::relay::EmbeddingsRequest;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otel;

/// Status recorded for a request whose client disconnected (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

/// Time this request spent waiting on upstreams so far, shared with the HTTP middleware
/// that turns it into `x-lowart-overhead-ms`.
#[derive(Clone, Debug, Default)]
pub struct UpstreamClock(Rc<Cell<Duration>>);

impl UpstreamClock {
    pub fn add(&self, d: Duration) {
        self.0.set(self.0.get() + d);
    }

    pub fn get(&self) -> Duration {
        self.0.get()
    }
}

/// Who asked for what, and when: the part of a usage row known before routing.
#[derive(Clone)]
pub struct RequestInfo {
    pub clock: UpstreamClock,
    /// Admission's rate limits, for the answer's `x-ratelimit-*` headers.
    pub rate: RateNote,
    pub request_id: String,
    pub caller: Arc<KeyGrant>,
    pub model: String,
    pub stream: bool,
    pub started: Instant,
    pub created_at: i64,
}

impl RequestInfo {
    pub fn new(
        request_id: String,
        clock: UpstreamClock,
        caller: Arc<KeyGrant>,
        model: String,
        stream: bool,
        started: Instant,
    ) -> Self {
        Self {
            clock,
            rate: RateNote::default(),
            request_id,
            caller,
            model,
            stream,
            started,
            created_at: now_ms(),
        }
    }
}

/// What the client sent, kept to count its tokens when no vendor reports them.
pub enum Prompt {
    Chat(Arc<ChatRequest>),
    Embeddings(Arc<EmbeddingsRequest>),
    /// An image request: its tokens are the vendor's to report, never counted.
    Image,
}

/// The gateway's count of what was answered, for when the vendor reports no usage.
enum Answered {
    Nothing,
    /// A committed stream: what has been handed to the client so far.
    Streamed(StreamCounter),
    /// A complete answer's content.
    Complete(u64),
}

/// How a request ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    Failed,
    /// The client went away first.
    Dropped,
}

pub struct Accounting {
    usage_inbox: UsageInbox,
    metrics: Arc<Metrics>,
    info: RequestInfo,
    /// The deployment of the current (last) attempt.
    route: Option<Arc<Route>>,
    attempts: u32,
    /// The GenAI CLIENT span of the current attempt.
    pub span: tracing::Span,
    upstream_wait: Duration,
    ttft: Option<Duration>,
    written: bool,
    /// Usage reported so far (a stream reports it in its last chunk).
    pub usage: Option<TokenUsage>,
    /// What admission reserved against the caller's limits, settled when the row is written.
    reservation: Option<Reservation>,
    prompt: Option<Prompt>,
    answered: Answered,
}

impl Accounting {
    pub fn new(usage_inbox: UsageInbox, metrics: Arc<Metrics>, info: RequestInfo) -> Self {
        Self {
            usage_inbox,
            metrics,
            info,
            route: None,
            attempts: 0,
            span: tracing::Span::none(),
            upstream_wait: Duration::ZERO,
            ttft: None,
            written: false,
            usage: None,
            reservation: None,
            prompt: None,
            answered: Answered::Nothing,
        }
    }

    /// Holds the request's reservation until its usage row settles it.
    pub fn hold(&mut self, reservation: Reservation) {
        self.reservation = Some(reservation);
    }

    /// Keeps the request's input, to count it if the row needs it.
    pub fn keep_prompt(&mut self, prompt: Prompt) {
        self.prompt = Some(prompt);
    }

    pub fn info(&self) -> &RequestInfo {
        &self.info
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts an attempt on `route`: a new CLIENT span (the previous one ends).
    pub fn begin_attempt(&mut self, route: Arc<Route>) {
        self.attempts += 1;
        self.span = otel::chat_span(
            route.vendor.kind().provider_name(),
            &route.upstream_model,
            &route.deployment.id,
            self.info.stream,
        );
        self.route = Some(route);
        self.usage = None;
        self.answered = Answered::Nothing;
    }

    /// The encoding to count with: the deployment's upstream model's, else the model asked.
    fn encoding(&self) -> Encoding {
        let upstream = self
            .route
            .as_ref()
            .map_or("", |r| r.upstream_model.as_str());
        Encoding::for_route(upstream, &self.info.model)
    }

    /// Marks the current attempt's span as failed with `class`.
    pub fn attempt_failed(&self, class: &str) {
        self.span.record("error.type", class);
        self.span.record("otel.status_code", "ERROR");
    }

    /// Adds time spent waiting on the upstream (excluded from the gateway's overhead).
    pub fn waited(&mut self, d: Duration) {
        self.upstream_wait += d;
        self.info.clock.add(d);
    }

    /// Marks the first content sent to the client, once.
    fn first_content(&mut self) {
        if self.ttft.is_none() {
            self.ttft = Some(self.info.started.elapsed());
        }
    }

    /// Takes in what one canonical stream event says: the responding model and finish
    /// reason (on the span), the first content (time to first token), the usage.
    pub fn observe(&mut self, event: &ChatEvent) {
        match event {
            ChatEvent::Start { model, .. } => self.observe_model(model),
            ChatEvent::Text(_) | ChatEvent::ToolCallStart { .. } => self.first_content(),
            ChatEvent::Usage(usage) => self.usage = Some(*usage),
            ChatEvent::Finish(reason) => self.observe_finish(*reason),
            ChatEvent::ToolCallArguments { .. } | ChatEvent::Done => {}
        }
    }

    /// Takes in what a complete answer says (model, finish reason, usage); without usage,
    /// its content is counted.
    pub fn observe_response(&mut self, response: &ChatResponse) {
        self.observe_model(&response.model);
        if let Some(reason) = response.finish {
            self.observe_finish(reason);
        }
        self.usage = response.usage;
        if self.usage.is_none() {
            self.answered = Answered::Complete(self.encoding().content_tokens(&response.content));
        }
    }

    /// Takes in the events of one stream item as it goes to the client: their text and
    /// tool calls are counted (in bounded memory), unless the vendor has reported usage.
    pub fn streamed(&mut self, events: &[ChatEvent]) {
        if self.usage.is_some() {
            return;
        }
        for event in events {
            if matches!(
                event,
                ChatEvent::Text(_)
                    | ChatEvent::ToolCallStart { .. }
                    | ChatEvent::ToolCallArguments { .. }
            ) {
                if let Answered::Nothing | Answered::Complete(_) = self.answered {
                    self.answered = Answered::Streamed(StreamCounter::new(self.encoding()));
                }
                if let Answered::Streamed(counter) = &mut self.answered {
                    counter.observe(event);
                }
            }
        }
    }

    /// The row's tokens and their source, by how the request ended (SPEC §5).
    fn settle(&self, end: End) -> (Option<TokenUsage>, UsageSource) {
        if let Some(usage) = self.usage {
            return (Some(usage), UsageSource::Reported);
        }
        let source = match end {
            End::Completed => UsageSource::Counted,
            End::Dropped if self.attempts > 0 => UsageSource::Partial,
            // Nothing reached an upstream, or the upstream failed without figures.
            End::Dropped | End::Failed => return (None, UsageSource::Missing),
        };
        let Some(prompt) = &self.prompt else {
            return (None, UsageSource::Missing);
        };
        let encoding = self.encoding();
        let prompt = match prompt {
            Prompt::Chat(request) => encoding.prompt_tokens(request),
            Prompt::Embeddings(request) => request
                .body
                .get("input")
                .map_or(0, |input| encoding.embeddings_tokens(input)),
            Prompt::Image => return (None, UsageSource::Missing),
        };
        let completion = match &self.answered {
            Answered::Nothing => 0,
            Answered::Streamed(counter) => counter.total(),
            Answered::Complete(tokens) => *tokens,
        };
        let prompt = i64::try_from(prompt).unwrap_or(i64::MAX);
        let completion = i64::try_from(completion).unwrap_or(i64::MAX);
        let usage = TokenUsage {
            prompt,
            completion,
            total: prompt.saturating_add(completion),
            cache_read: None,
            cache_write: None,
        };
        (Some(usage), source)
    }

    fn observe_model(&self, model: &str) {
        if !model.is_empty() {
            self.span.record("gen_ai.response.model", model);
        }
    }

    /// The finish reason goes on the span in OpenAI's words.
    fn observe_finish(&self, reason: FinishReason) {
        self.span
            .record("gen_ai.response.finish_reasons", reason.openai());
    }

    fn write(&mut self, status: u16, error_class: Option<String>, end: End) {
        if self.written {
            return;
        }
        self.written = true;
        let (usage, source) = self.settle(end);
        let prices = self.route.as_ref().map(|r| r.prices).unwrap_or_default();
        let (cost_micros, cost_status) = match usage {
            Some(_) => prices.cost(usage),
            None => (None, CostStatus::Unknown),
        };
        let latency = self.info.started.elapsed();
        let record = UsageRecord {
            request_id: self.info.request_id.clone(),
            user_id: Some(self.info.caller.user_id.clone()),
            key_id: Some(self.info.caller.key_id.clone()),
            model: self.info.model.clone(),
            deployment_id: self.route.as_ref().map(|r| r.deployment.id.clone()),
            usage,
            cost_micros,
            cost_status,
            status,
            error_class,
            latency_ms: i64::try_from(latency.as_millis()).unwrap_or(i64::MAX),
            overhead_ms: latency.saturating_sub(self.upstream_wait).as_secs_f64() * 1e3,
            ttft_ms: self
                .ttft
                .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
            stream: self.info.stream,
            usage_source: source,
            created_at: self.info.created_at,
            attempts: self.attempts,
            request_bytes: None,
            response_bytes: None,
        };
        if let Some(u) = record.usage {
            self.span.record("gen_ai.usage.input_tokens", u.prompt);
            self.span.record("gen_ai.usage.output_tokens", u.completion);
        }
        if let Some(reservation) = self.reservation.take() {
            let tokens = record.usage.map_or(0, |u| u.total.max(0) as u64);
            let micros = record.cost_micros.map_or(0, |m| m.max(0) as u64);
            reservation.settle(tokens, micros);
        }
        let wait = (self.attempts > 0).then_some(self.upstream_wait);
        self.metrics.record_usage(&record, wait);
        self.usage_inbox.record(record);
    }

    /// The request completed: `reported` when the upstream gave figures, else `counted`.
    pub fn succeed(&mut self) {
        self.write(200, None, End::Completed);
    }

    /// The request failed with `status` and error `code`.
    pub fn fail(&mut self, status: u16, code: &str) {
        self.write(status, Some(code.to_string()), End::Failed);
    }
}

impl Drop for Accounting {
    /// The client went away: `partial` (or `reported`), or `missing` before any upstream.
    fn drop(&mut self) {
        if !self.written {
            self.write(CLIENT_CLOSED, Some("client_closed".into()), End::Dropped);
        }
    }
}
