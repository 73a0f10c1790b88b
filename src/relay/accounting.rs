//! `Accounting`: follows one client request through its upstream attempts to its end and
//! writes exactly one usage row, whether the request succeeds, fails, or is dropped because
//! the client went away. Each attempt gets its own GenAI CLIENT span.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;

use crate::actors::router::Route;
use crate::actors::store::{RecordUsage, StoreActor};
use crate::domain::canonical::{ChatEvent, ChatResponse, FinishReason};
use crate::domain::now_ms;
use crate::domain::records::KeyGrant;
use crate::domain::usage::{CostStatus, TokenUsage, UsageRecord, UsageSource};
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
            request_id,
            caller,
            model,
            stream,
            started,
            created_at: now_ms(),
        }
    }
}

pub struct Accounting {
    store: Addr<StoreActor>,
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
}

impl Accounting {
    pub fn new(store: Addr<StoreActor>, metrics: Arc<Metrics>, info: RequestInfo) -> Self {
        Self {
            store,
            metrics,
            info,
            route: None,
            attempts: 0,
            span: tracing::Span::none(),
            upstream_wait: Duration::ZERO,
            ttft: None,
            written: false,
            usage: None,
        }
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

    /// Takes in what a complete answer says (model, finish reason, usage).
    pub fn observe_response(&mut self, response: &ChatResponse) {
        self.observe_model(&response.model);
        if let Some(reason) = response.finish {
            self.observe_finish(reason);
        }
        self.usage = response.usage;
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

    fn write(&mut self, status: u16, error_class: Option<String>, source: UsageSource) {
        if self.written {
            return;
        }
        self.written = true;
        let usage = if source == UsageSource::Missing {
            None
        } else {
            self.usage
        };
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
        };
        if let Some(u) = record.usage {
            self.span.record("gen_ai.usage.input_tokens", u.prompt);
            self.span.record("gen_ai.usage.output_tokens", u.completion);
        }
        let wait = (self.attempts > 0).then_some(self.upstream_wait);
        self.metrics.record_usage(&record, wait);
        self.store.do_send(RecordUsage(record));
    }

    /// The request completed: usage is `reported` when the upstream gave figures.
    pub fn succeed(&mut self) {
        let source = if self.usage.is_some() {
            UsageSource::Reported
        } else {
            UsageSource::Missing
        };
        self.write(200, None, source);
    }

    /// The request failed with `status` and error `code`.
    pub fn fail(&mut self, status: u16, code: &str) {
        let source = if self.usage.is_some() {
            UsageSource::Reported
        } else {
            UsageSource::Missing
        };
        self.write(status, Some(code.to_string()), source);
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if !self.written {
            let source = if self.usage.is_some() {
                UsageSource::Reported
            } else {
                UsageSource::Partial
            };
            self.write(CLIENT_CLOSED, Some("client_closed".into()), source);
        }
    }
}
