//! What the usage API answers and how it is asked: filters, the newest-first cursor,
//! usage rows, summaries read from the hourly rollups, a caller's own totals. Costs are
//! integer micro-dollars, shown as both `cost_usd` and `cost_micros`.

use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::domain::usage::micros_to_usd;
use crate::domain::usage_rollup::{LatencyHistogram, percentile};

/// A time given as Unix milliseconds or as RFC 3339 (`2026-12-02T10:00:00Z`).
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The UTC day of `ms` as `YYYY-MM-DD`.
pub fn day_label(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d").to_string())
}

/// Which statuses a listing keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Below 400.
    Ok,
    /// 400 and above (including 499, a client that went away).
    Error,
    Is(u16),
}

impl StatusFilter {
    /// `ok`, `error` or an HTTP status (100–599).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ok" => Some(Self::Ok),
            "error" => Some(Self::Error),
            _ => text
                .parse::<u16>()
                .ok()
                .filter(|s| (100..=599).contains(s))
                .map(Self::Is),
        }
    }
}

/// Which usage rows `GET /admin/usage` lists; `since` inclusive, `until` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    pub user_id: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub status: Option<StatusFilter>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// Where a newest-first page ends: the next page holds rows strictly older than this
/// (`created_at`, then `id`). Clients treat its text as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageCursor {
    pub created_at: i64,
    pub id: i64,
}

impl UsageCursor {
    pub fn parse(text: &str) -> Option<Self> {
        let (created_at, id) = text.split_once('.')?;
        Some(Self {
            created_at: created_at.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

impl std::fmt::Display for UsageCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created_at, self.id)
    }
}

/// A cost in micro-dollars (`None`: not priced), answered as `cost_usd` and `cost_micros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost(pub Option<i64>);

impl Serialize for Cost {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut cost = s.serialize_struct("Cost", 2)?;
        cost.serialize_field("cost_usd", &self.0.map(micros_to_usd))?;
        cost.serialize_field("cost_micros", &self.0)?;
        cost.end()
    }
}

/// One usage row as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    pub id: i64,
    pub request_id: String,
    pub created_at: i64,
    pub user_id: Option<String>,
    pub key_id: Option<String>,
    pub model: String,
    pub deployment_id: Option<String>,
    pub status: i32,
    pub error_class: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_write_tokens: Option<i64>,
    pub usage_source: String,
    pub cost_status: String,
    #[serde(flatten)]
    pub cost: Cost,
    pub latency_ms: i64,
    pub overhead_ms: f64,
    pub ttft_ms: Option<i64>,
    pub stream: bool,
    pub attempts: i32,
    /// Body bytes a passthrough route moved each way (absent for other requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<i64>,
}

/// A newest-first page of usage rows; `next` is the cursor of the following page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsagePage {
    pub data: Vec<UsageRow>,
    pub next: Option<String>,
}

/// What a summary groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    User,
    Key,
    /// The UTC day.
    Day,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "model" => Some(Self::Model),
            "user" => Some(Self::User),
            "key" => Some(Self::Key),
            "day" => Some(Self::Day),
            _ => None,
        }
    }
}

/// Which usage a summary adds up, from the rollups: `since` counts from the start of its
/// hour, `until` up to the end of its hour (an hour is in when it starts before `until`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupFilter {
    pub user_id: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// Requests, errors, tokens and cost of some usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct UsageTotals {
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    #[serde(flatten)]
    pub cost: Cost,
}

impl UsageTotals {
    /// No usage (costing nothing, rather than unpriced).
    pub fn zero() -> Self {
        Self {
            cost: Cost(Some(0)),
            ..Self::default()
        }
    }

    pub fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cost = Cost(Some(self.cost.0.unwrap_or(0) + other.cost.0.unwrap_or(0)));
    }
}

/// Latency percentiles in milliseconds, estimated from the rollups' histogram.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LatencyPercentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

impl LatencyPercentiles {
    pub fn of(histogram: &LatencyHistogram) -> Self {
        Self {
            p50: percentile(histogram, 0.50),
            p95: percentile(histogram, 0.95),
        }
    }
}

/// One group of a summary. `group` is the model, user id, key id or `YYYY-MM-DD` (UTC);
/// `null` for usage recorded without a user or key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    pub group: Option<String>,
    #[serde(flatten)]
    pub totals: UsageTotals,
    pub latency_ms: LatencyPercentiles,
}

/// A user's spend over all time, for quotas and budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserSpend {
    pub tokens: i64,
    pub cost_micros: i64,
}

/// Totals over all time and over the current UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PeriodTotals {
    pub all_time: UsageTotals,
    pub today: UsageTotals,
}

/// A key holder's own usage: its user's and its key's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallerUsage {
    /// The current UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub user: PeriodTotals,
    pub key: PeriodTotals,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_milliseconds_or_rfc3339() {
        assert_eq!(parse_time("1764669600000"), Some(1_764_669_600_000));
        assert_eq!(parse_time("2025-12-02T10:00:00Z"), Some(1_764_669_600_000));
        assert_eq!(
            parse_time("2025-12-02T11:00:00.5+01:00"),
            Some(1_764_669_600_500)
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(day_label(1_764_669_600_000), "2025-12-02");
    }

    #[test]
    fn status_filters_are_ok_error_or_a_status() {
        assert_eq!(StatusFilter::parse("ok"), Some(StatusFilter::Ok));
        assert_eq!(StatusFilter::parse("error"), Some(StatusFilter::Error));
        assert_eq!(StatusFilter::parse("429"), Some(StatusFilter::Is(429)));
        assert_eq!(StatusFilter::parse("42"), None);
        assert_eq!(StatusFilter::parse("OK"), None);
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = UsageCursor {
            created_at: 1_764_669_600_000,
            id: 42,
        };
        assert_eq!(UsageCursor::parse(&cursor.to_string()), Some(cursor));
        assert_eq!(UsageCursor::parse("42"), None);
        assert_eq!(UsageCursor::parse("a.b"), None);
    }

    #[test]
    fn costs_show_dollars_and_micro_dollars() {
        let totals = UsageTotals {
            requests: 1,
            cost: Cost(Some(8_755)),
            ..UsageTotals::default()
        };
        let json = serde_json::to_value(totals).unwrap();
        assert_eq!(json["cost_micros"], 8_755);
        assert_eq!(json["cost_usd"], 0.008755);
        let unpriced = serde_json::to_value(Cost(None)).unwrap();
        assert_eq!(
            unpriced,
            serde_json::json!({"cost_usd": null, "cost_micros": null})
        );
    }
}
