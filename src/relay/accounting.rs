//! `Accounting`: follows one admitted request to its end and writes exactly one usage row
//! and one provider outcome, whether the request succeeds, fails, or is dropped because
//! the client went away.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;

use crate::actors::provider::{AdmitPermit, Outcome};
use crate::actors::router::Route;
use crate::actors::store::{RecordUsage, StoreActor};
use crate::domain::now_ms;
use crate::domain::records::KeyGrant;
use crate::domain::usage::{CostStatus, Prices, TokenUsage, UsageRecord, UsageSource};
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

    /// The row of a request that ended before reaching any deployment.
    pub fn rejected(&self, status: u16, error_code: &str) -> UsageRecord {
        self.record(
            None,
            None,
            Prices::default(),
            status,
            Some(error_code.to_string()),
            UsageSource::Missing,
            Duration::ZERO,
            None,
        )
    }

    #[expect(clippy::too_many_arguments, reason = "one row, assembled in one place")]
    fn record(
        &self,
        deployment_id: Option<String>,
        usage: Option<TokenUsage>,
        prices: Prices,
        status: u16,
        error_class: Option<String>,
        usage_source: UsageSource,
        upstream_wait: Duration,
        ttft: Option<Duration>,
    ) -> UsageRecord {
        let latency = self.started.elapsed();
        let (cost_usd, cost_status) = match usage {
            Some(_) => prices.cost(usage),
            None => (None, CostStatus::Unknown),
        };
        UsageRecord {
            request_id: self.request_id.clone(),
            user_id: Some(self.caller.user_id.clone()),
            key_id: Some(self.caller.key_id.clone()),
            model: self.model.clone(),
            deployment_id,
            usage,
            cost_usd,
            cost_status,
            status,
            error_class,
            latency_ms: latency.as_millis() as i64,
            overhead_ms: latency.saturating_sub(upstream_wait).as_secs_f64() * 1e3,
            ttft_ms: ttft.map(|t| t.as_millis() as i64),
            stream: self.stream,
            usage_source,
            created_at: self.created_at,
        }
    }
}

pub struct Accounting {
    store: Addr<StoreActor>,
    metrics: Arc<Metrics>,
    /// The GenAI CLIENT span of the upstream call; it ends when the accounting does.
    pub span: tracing::Span,
    info: RequestInfo,
    route: Arc<Route>,
    permit: Option<AdmitPermit>,
    upstream_wait: Duration,
    ttft: Option<Duration>,
    /// Usage reported so far (a stream reports it in its last chunk).
    pub usage: Option<TokenUsage>,
}

impl Accounting {
    pub fn new(
        store: Addr<StoreActor>,
        metrics: Arc<Metrics>,
        info: RequestInfo,
        route: Arc<Route>,
        permit: AdmitPermit,
    ) -> Self {
        let span = otel::chat_span(
            route.vendor.provider_name(),
            &route.upstream_model,
            &route.deployment.id,
            info.stream,
        );
        Self {
            store,
            metrics,
            span,
            info,
            route,
            permit: Some(permit),
            upstream_wait: Duration::ZERO,
            ttft: None,
            usage: None,
        }
    }

    pub fn route(&self) -> &Route {
        &self.route
    }

    pub fn info(&self) -> &RequestInfo {
        &self.info
    }

    /// Adds time spent waiting on the upstream (excluded from the gateway's overhead).
    pub fn waited(&mut self, d: Duration) {
        self.upstream_wait += d;
        self.info.clock.add(d);
    }

    /// Records what an answer (or a stream chunk) says about itself on the span: the
    /// responding model and the finish reason.
    pub fn observe(&self, answer: &serde_json::Value) {
        if let Some(model) = answer.get("model").and_then(serde_json::Value::as_str) {
            self.span.record("gen_ai.response.model", model);
        }
        let finish = answer
            .get("choices")
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("finish_reason"))
            .and_then(serde_json::Value::as_str);
        if let Some(reason) = finish {
            self.span.record("gen_ai.response.finish_reasons", reason);
        }
    }

    /// Marks the first content sent to the client, once.
    pub fn first_content(&mut self) {
        if self.ttft.is_none() {
            self.ttft = Some(self.info.started.elapsed());
        }
    }

    fn write(
        &mut self,
        status: u16,
        error_class: Option<String>,
        source: UsageSource,
        outcome: Outcome,
    ) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        permit.finish(outcome);
        let usage = if source == UsageSource::Missing {
            None
        } else {
            self.usage
        };
        let record = self.info.record(
            Some(self.route.deployment.id.clone()),
            usage,
            self.route.prices,
            status,
            error_class,
            source,
            self.upstream_wait,
            self.ttft,
        );
        if let Some(u) = record.usage {
            self.span.record("gen_ai.usage.input_tokens", u.prompt);
            self.span.record("gen_ai.usage.output_tokens", u.completion);
        }
        if let Some(class) = &record.error_class {
            self.span.record("error.type", class.as_str());
            self.span.record("otel.status_code", "ERROR");
        }
        self.metrics.record_usage(&record, Some(self.upstream_wait));
        self.store.do_send(RecordUsage(record));
    }

    /// The request completed: usage is `reported` when the upstream gave figures.
    pub fn succeed(&mut self) {
        let source = if self.usage.is_some() {
            UsageSource::Reported
        } else {
            UsageSource::Missing
        };
        self.write(200, None, source, Outcome::Success);
    }

    /// The request failed with `status`; `health` says whether it counts against the
    /// deployment.
    pub fn fail(&mut self, status: u16, class: &str, outcome: Outcome) {
        let source = if self.usage.is_some() {
            UsageSource::Reported
        } else {
            UsageSource::Missing
        };
        self.write(status, Some(class.to_string()), source, outcome);
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if self.permit.is_some() {
            let source = if self.usage.is_some() {
                UsageSource::Reported
            } else {
                UsageSource::Partial
            };
            self.write(
                CLIENT_CLOSED,
                Some("client_closed".into()),
                source,
                Outcome::Neutral,
            );
        }
    }
}
