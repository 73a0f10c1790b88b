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
    /// The cost of `usage` in micro-dollars (a price in USD per million tokens is a price
    /// in micro-dollars per token): `round(prompt × input + completion × output)`.
    /// `Unpriced` when the deployment has no price, `Unknown` when there are no token
    /// figures. An unset price of a priced deployment counts as 0.
    pub fn cost(&self, usage: Option<TokenUsage>) -> (Option<i64>, CostStatus) {
        let Some(u) = usage else {
            return (None, CostStatus::Unknown);
        };
        match (self.input_per_mtok, self.output_per_mtok) {
            (None, None) => (None, CostStatus::Unpriced),
            (i, o) => {
                let micros =
                    u.prompt as f64 * i.unwrap_or(0.0) + u.completion as f64 * o.unwrap_or(0.0);
                // `as` saturates: an absurd price cannot wrap a cost into a negative one.
                (Some(micros.round() as i64), CostStatus::Priced)
            }
        }
    }
}

/// Micro-dollars as US dollars, for answers and metrics (the stored figure is the integer).
pub fn micros_to_usd(micros: i64) -> f64 {
    micros as f64 / 1e6
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
    /// The cost in micro-dollars (`None` unless `cost_status` is `priced`). Spill lines
    /// written before it existed carry `cost_usd` instead (see `spill.rs`).
    #[serde(default)]
    pub cost_micros: Option<i64>,
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
    /// Request body bytes sent upstream (passthrough routes only).
    #[serde(default)]
    pub request_bytes: Option<i64>,
    /// Answer body bytes relayed to the client (passthrough routes only).
    #[serde(default)]
    pub response_bytes: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(prompt: i64, completion: i64) -> Option<TokenUsage> {
        Some(TokenUsage {
            prompt,
            completion,
            total: prompt + completion,
            ..TokenUsage::default()
        })
    }

    #[test]
    fn cost_is_tokens_times_price_to_the_micro_dollar() {
        let prices = Prices {
            input_per_mtok: Some(2.50),
            output_per_mtok: Some(10.0),
        };
        // 1,234 × 2.5 + 567 × 10 = 3,085 + 5,670 µ$.
        assert_eq!(
            prices.cost(tokens(1_234, 567)),
            (Some(8_755), CostStatus::Priced)
        );
        let cheap = Prices {
            input_per_mtok: Some(0.15),
            output_per_mtok: Some(0.5),
        };
        // 1,000 × 0.15 = 150.000…03 in binary floating point: rounds to 150.
        assert_eq!(
            cheap.cost(tokens(1_000, 0)),
            (Some(150), CostStatus::Priced)
        );
        // Half a micro-dollar rounds away from zero.
        assert_eq!(cheap.cost(tokens(0, 3)), (Some(2), CostStatus::Priced));
        assert_eq!(micros_to_usd(8_755), 0.008755);
    }

    #[test]
    fn cost_is_unpriced_without_prices_and_unknown_without_tokens() {
        let prices = Prices {
            input_per_mtok: Some(2.0),
            output_per_mtok: None,
        };
        assert_eq!(prices.cost(tokens(10, 99)), (Some(20), CostStatus::Priced));
        assert_eq!(
            Prices::default().cost(tokens(10, 5)),
            (None, CostStatus::Unpriced)
        );
        assert_eq!(prices.cost(None), (None, CostStatus::Unknown));
    }
}
