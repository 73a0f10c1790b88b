//! Prometheus metrics (`prometheus-client`, no global registry: each app owns one). Label
//! values are bounded: routes are matched patterns, methods a fixed set, models the
//! admin-registered names, sources and classes closed vocabularies. No user ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::domain::usage::{CostStatus, UsageRecord, micros_to_usd};

/// The route label of a request that no route pattern matched but a handler served (a
/// passthrough route, labelled by its prefix): the handler puts it in the request's
/// extensions, and the request is counted under it instead of `unmatched`.
#[derive(Clone, Debug)]
pub struct RouteLabel(pub Arc<str>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub server: String,
    pub tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolOutcomeLabels {
    pub server: String,
    pub tool: String,
    /// `ok`, `tool_error` (the tool answered an error), `timeout`, `unavailable`, `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub model: String,
    pub class: String,
}

/// Latency buckets from 100 µs to ~52 s.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 20,
    ))
}

/// Overhead buckets from 10 µs to ~0.65 s.
fn overhead_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00001, 2.0, 17,
    ))
}

/// A money counter kept in integer micro-dollars and shown in dollars, so the exported
/// figure is exactly the sum of the usage rows' `cost_micros` over 10⁶.
#[derive(Debug, Default, Clone)]
pub struct MicrosCounter(Arc<AtomicU64>);

impl MicrosCounter {
    pub fn inc_by(&self, micros: u64) {
        self.0.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for MicrosCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for MicrosCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let micros = i64::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        encoder.encode_counter::<NoLabelSet, _, u64>(&micros_to_usd(micros), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    inflight: Gauge,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabels, MicrosCounter>,
    unpriced: Family<ModelLabels, Counter>,
    usage_records: Family<SourceLabels, Counter>,
    upstream_failures: Family<FailureLabels, Counter>,
    upstream_duration: Family<ModelLabels, Histogram>,
    ttft: Family<ModelLabels, Histogram>,
    overhead: Histogram,
    breaker_state: Family<DeploymentLabels, Gauge>,
    jobs: Family<StatusLabels, Gauge>,
    bus_messages: Family<OpLabels, Counter>,
    bus_clients: Gauge,
    bus_pending: Gauge,
    retries: Family<ModelLabels, Counter>,
    tool_calls: Family<ToolOutcomeLabels, Counter>,
    tool_duration: Family<ToolLabels, Histogram>,
    mcp_restarts: Family<ServerLabels, Counter>,
    usage_rows_spilled: Counter,
    usage_rows_replayed: Counter,
    usage_rows_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to the response head (streams: until the first byte is ready)",
            Unit::Seconds,
            http_duration.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "gateway_inflight_requests",
            "Requests being handled now",
            inflight.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "gateway_tokens",
            "Tokens by model and type (prompt, completion; cache_read, cache_write when reported)",
            tokens.clone(),
        );
        let cost = Family::<ModelLabels, MicrosCounter>::default();
        registry.register(
            "gateway_cost",
            "Cost in USD of priced requests (the usage rows' cost_micros / 10^6)",
            cost.clone(),
        );
        let unpriced = Family::<ModelLabels, Counter>::default();
        registry.register(
            "gateway_unpriced_requests",
            "Requests with token counts on a deployment without prices",
            unpriced.clone(),
        );
        let usage_records = Family::<SourceLabels, Counter>::default();
        registry.register(
            "gateway_usage_records",
            "Usage rows by usage_source",
            usage_records.clone(),
        );
        let upstream_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "gateway_request_failures",
            "Routed requests that failed, by model and class (upstream classes, client_closed)",
            upstream_failures.clone(),
        );
        let upstream_duration = Family::<ModelLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "gateway_upstream_duration",
            "Time spent waiting on the upstream per request",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let ttft = Family::<ModelLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "gateway_time_to_first_token",
            "Time from request to the first content chunk of a stream",
            Unit::Seconds,
            ttft.clone(),
        );
        let overhead = overhead_histogram();
        registry.register_with_unit(
            "gateway_overhead",
            "Time the gateway added: total minus time waiting on the upstream",
            Unit::Seconds,
            overhead.clone(),
        );
        let jobs = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "gateway_jobs",
            "Async jobs in the database by status (all instances)",
            jobs.clone(),
        );
        let bus_messages = Family::<OpLabels, Counter>::default();
        registry.register(
            "gateway_bus_messages",
            "Agent bus frames by op (publish, deliver, redeliver, ack, dead_letter)",
            bus_messages.clone(),
        );
        let bus_clients = Gauge::default();
        registry.register(
            "gateway_bus_clients",
            "Agent bus WebSocket connections on this instance",
            bus_clients.clone(),
        );
        let bus_pending = Gauge::default();
        registry.register(
            "gateway_bus_pending",
            "Group messages waiting or unacked (all instances)",
            bus_pending.clone(),
        );
        let breaker_state = Family::<DeploymentLabels, Gauge>::default();
        registry.register(
            "gateway_breaker_state",
            "Circuit breaker per deployment: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let retries = Family::<ModelLabels, Counter>::default();
        registry.register(
            "gateway_upstream_retries",
            "Upstream attempts beyond the first (retries and fallbacks), by requested model",
            retries.clone(),
        );
        let tool_calls = Family::<ToolOutcomeLabels, Counter>::default();
        registry.register(
            "gateway_mcp_tool_calls",
            "MCP tool calls by server, tool and outcome (ok, tool_error, timeout, unavailable, failed)",
            tool_calls.clone(),
        );
        let tool_duration = Family::<ToolLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "gateway_mcp_tool_call_duration",
            "MCP tool call latency by server and tool",
            Unit::Seconds,
            tool_duration.clone(),
        );
        let mcp_restarts = Family::<ServerLabels, Counter>::default();
        registry.register(
            "gateway_mcp_server_restarts",
            "MCP servers restarted after their process or connection ended",
            mcp_restarts.clone(),
        );
        let usage_rows_spilled = Counter::default();
        registry.register(
            "gateway_usage_rows_spilled",
            "Usage rows appended to the spill file because the database did not take them",
            usage_rows_spilled.clone(),
        );
        let usage_rows_replayed = Counter::default();
        registry.register(
            "gateway_usage_rows_replayed",
            "Usage rows moved from the spill file into the database",
            usage_rows_replayed.clone(),
        );
        let usage_rows_dropped = Counter::default();
        registry.register(
            "gateway_usage_rows_dropped",
            "Usage rows lost: neither the database nor the spill file took them (should stay 0)",
            usage_rows_dropped.clone(),
        );
        Self {
            tool_calls,
            tool_duration,
            mcp_restarts,
            usage_rows_spilled,
            usage_rows_replayed,
            usage_rows_dropped,
            breaker_state,
            jobs,
            bus_messages,
            bus_clients,
            bus_pending,
            retries,
            registry,
            http_requests,
            http_duration,
            inflight,
            tokens,
            cost,
            unpriced,
            usage_records,
            upstream_failures,
            upstream_duration,
            ttft,
            overhead,
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts a request in flight; answers how many are now.
    pub fn request_started(&self) -> i64 {
        self.inflight.inc() + 1
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> i64 {
        self.inflight.get()
    }

    /// The request's last byte went out, or the request was dropped.
    pub fn request_ended(&self) {
        self.inflight.dec();
    }

    pub fn request_finished(
        &self,
        route: &str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method,
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method,
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn bus_message(&self, op: &'static str) {
        self.bus_messages.get_or_create(&OpLabels { op }).inc();
    }

    /// One MCP tool call: its outcome and how long it took.
    pub fn record_tool_call(
        &self,
        server: &str,
        tool: &str,
        outcome: &'static str,
        took: Duration,
    ) {
        let labels = ToolLabels {
            server: server.to_string(),
            tool: tool.to_string(),
        };
        self.tool_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.tool_calls
            .get_or_create(&ToolOutcomeLabels {
                server: labels.server,
                tool: labels.tool,
                outcome,
            })
            .inc();
    }

    pub fn mcp_server_restarted(&self, server: &str) {
        self.mcp_restarts
            .get_or_create(&ServerLabels {
                server: server.to_string(),
            })
            .inc();
    }

    pub fn set_bus_clients(&self, n: usize) {
        self.bus_clients.set(n as i64);
    }

    pub fn set_bus_pending(&self, n: i64) {
        self.bus_pending.set(n);
    }

    /// `gateway_jobs{status}`: every status, zeros included.
    pub fn set_jobs(&self, counts: &[(crate::domain::jobs::JobStatus, i64)]) {
        for status in crate::domain::jobs::JobStatus::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n);
            self.jobs
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(n);
        }
    }

    pub fn set_breaker_state(&self, deployment: &str, state: crate::domain::breaker::BreakerState) {
        self.breaker_state
            .get_or_create(&DeploymentLabels {
                deployment: deployment.to_string(),
            })
            .set(state.as_gauge());
    }

    /// Everything a usage row says, as metrics; called once per row, beside `RecordUsage`.
    pub fn record_usage(&self, row: &UsageRecord, upstream_wait: Option<Duration>) {
        self.usage_records
            .get_or_create(&SourceLabels {
                source: row.usage_source.as_str(),
            })
            .inc();
        if row.deployment_id.is_none() {
            return;
        }
        if row.attempts > 1 {
            self.retries
                .get_or_create(&ModelLabels {
                    model: row.model.clone(),
                })
                .inc_by(u64::from(row.attempts - 1));
        }
        let model = ModelLabels {
            model: row.model.clone(),
        };
        if let Some(u) = row.usage {
            let counts = [
                ("prompt", Some(u.prompt)),
                ("completion", Some(u.completion)),
                ("cache_read", u.cache_read),
                ("cache_write", u.cache_write),
            ];
            for (kind, count) in counts {
                let Some(count) = count else { continue };
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: row.model.clone(),
                        r#type: kind,
                    })
                    .inc_by(u64::try_from(count).unwrap_or(0));
            }
        }
        match (row.cost_micros, row.cost_status) {
            (Some(micros), _) => {
                self.cost
                    .get_or_create(&model)
                    .inc_by(u64::try_from(micros).unwrap_or(0));
            }
            (None, CostStatus::Unpriced) => {
                self.unpriced.get_or_create(&model).inc();
            }
            _ => {}
        }
        if let Some(class) = &row.error_class {
            self.upstream_failures
                .get_or_create(&FailureLabels {
                    model: row.model.clone(),
                    class: class.clone(),
                })
                .inc();
        }
        if let Some(wait) = upstream_wait {
            self.upstream_duration
                .get_or_create(&model)
                .observe(wait.as_secs_f64());
        }
        if let Some(ttft) = row.ttft_ms {
            self.ttft.get_or_create(&model).observe(ttft as f64 / 1e3);
        }
        self.overhead.observe(row.overhead_ms / 1e3);
    }
}

impl Metrics {
    pub fn usage_rows_spilled(&self, rows: usize) {
        self.usage_rows_spilled.inc_by(rows as u64);
    }

    pub fn usage_rows_replayed(&self, rows: u64) {
        self.usage_rows_replayed.inc_by(rows);
    }

    pub fn usage_rows_dropped(&self, rows: usize) {
        self.usage_rows_dropped.inc_by(rows as u64);
    }
}

/// A bounded method label.
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}
