//! Token usage and cost: what a request consumed and what it cost, with where the figures
//! came from, so no row is ever a silent zero.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Tokens of one request. `prompt` counts every input token, cached or not (Anthropic
/// reports cache reads and writes apart from `input_tokens`; they are added in);
/// `cache_read` and `cache_write` say how many of them were cache hits and writes, when
/// the vendor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt: i64,
    pub completion: i64,
    pub total: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<i64>,
}

impl TokenUsage {
    /// Reads an OpenAI `usage` object; `None` when absent or not numeric.
    pub fn from_openai(usage: &Value) -> Option<Self> {
        let prompt = usage.get("prompt_tokens")?.as_i64()?;
        let completion = usage.get("completion_tokens")?.as_i64()?;
        let total = usage
            .get("total_tokens")
            .and_then(Value::as_i64)
            .unwrap_or(prompt + completion);
        let cache_read = usage
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_i64);
        Some(Self {
            prompt,
            completion,
            total,
            cache_read,
            cache_write: None,
        })
    }
}

/// Where a usage row's token figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// The vendor's own figures (a zero it reports stays a zero).
    Reported,
    /// The request completed without figures from the vendor: the gateway counted the
    /// prompt and the answer with its tokenizer.
    Counted,
    /// The client went away: the gateway counted the prompt and what had been streamed to
    /// the client (unless the vendor had already reported figures).
    Partial,
    /// Nothing can be known: the request failed, or the client left, before any figures.
    Missing,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reported => "reported",
            Self::Counted => "counted",
            Self::Partial => "partial",
            Self::Missing => "missing",
        }
    }
}

/// Why a price is refused (see `Prices::valid`).
pub const INVALID_PRICE: &str = "must be a finite number, not negative";

/// Prices of one deployment, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prices {
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
}

impl Prices {
    /// A price the gateway accepts: unset, or finite and not negative (a negative price
    /// would make a cost, and a counter, go down).
    pub fn valid(price: Option<f64>) -> bool {
        price.is_none_or(|p| p.is_finite() && p >= 0.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostStatus {
    Priced,
    Unpriced,
    Unknown,
}

impl CostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Priced => "priced",
            Self::Unpriced => "unpriced",
            Self::Unknown => "unknown",
        }
    }
}

impl Prices {
    /// The cost of `usage`; `Unpriced` when the deployment has no price, `Unknown` when
    /// there are no token figures.
    pub fn cost(&self, usage: Option<TokenUsage>) -> (Option<f64>, CostStatus) {
        let Some(u) = usage else {
            return (None, CostStatus::Unknown);
        };
        match (self.input_per_mtok, self.output_per_mtok) {
            (None, None) => (None, CostStatus::Unpriced),
            (i, o) => {
                let cost = u.prompt as f64 * i.unwrap_or(0.0) / 1e6
                    + u.completion as f64 * o.unwrap_or(0.0) / 1e6;
                (Some(cost), CostStatus::Priced)
            }
        }
    }
}

/// One usage row on its way to the store (and, when the database is down, one line of
/// the usage spill file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub user_id: Option<String>,
    pub key_id: Option<String>,
    pub model: String,
    pub deployment_id: Option<String>,
    pub usage: Option<TokenUsage>,
    pub cost_usd: Option<f64>,
    pub cost_status: CostStatus,
    pub status: u16,
    pub error_class: Option<String>,
    pub latency_ms: i64,
    pub overhead_ms: f64,
    pub ttft_ms: Option<i64>,
    pub stream: bool,
    pub usage_source: UsageSource,
    pub created_at: i64,
    /// Upstream attempts behind the row (0 when rejected before any).
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_priced_per_million_tokens_and_unpriced_without_prices() {
        let usage = Some(TokenUsage {
            prompt: 1_000,
            completion: 500,
            total: 1_500,
            ..TokenUsage::default()
        });
        let prices = Prices {
            input_per_mtok: Some(2.0),
            output_per_mtok: Some(8.0),
        };
        let (cost, status) = prices.cost(usage);
        assert_eq!(status, CostStatus::Priced);
        assert!((cost.unwrap_or_default() - 0.006).abs() < 1e-12);
        assert_eq!(Prices::default().cost(usage), (None, CostStatus::Unpriced));
        assert_eq!(prices.cost(None), (None, CostStatus::Unknown));
    }
}
