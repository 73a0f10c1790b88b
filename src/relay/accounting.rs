//! `Accounting`: follows one admitted request to its end and writes exactly one usage row
//! and one provider outcome, whether the request succeeds, fails, or is dropped because
//! the client went away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;

use crate::actors::provider::{AdmitPermit, Outcome};
use crate::actors::router::Route;
use crate::actors::store::{RecordUsage, StoreActor};
use crate::domain::now_ms;
use crate::domain::records::KeyGrant;
use crate::domain::usage::{CostStatus, Prices, TokenUsage, UsageRecord, UsageSource};

/// Status recorded for a request whose client disconnected (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

/// Who asked for what, and when: the part of a usage row known before routing.
#[derive(Clone)]
pub struct RequestInfo {
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
        caller: Arc<KeyGrant>,
        model: String,
        stream: bool,
        started: Instant,
    ) -> Self {
        Self {
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
        info: RequestInfo,
        route: Arc<Route>,
        permit: AdmitPermit,
    ) -> Self {
        Self {
            store,
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
