//! A finished job's webhook: its final state POSTed to the job's `webhook_url`, signed as
//! Standard Webhooks sign (`webhook-id`, `webhook-timestamp`, `webhook-signature`) with
//! the submitting key's secret. Deliveries are an outbox in the jobs table: each attempt
//! is claimed by one instance, and a refused one is due again after a doubling backoff,
//! also after a restart or on another instance.

use std::time::Duration;

use serde_json::json;

use crate::actors::store::WebhookOutcome;
use crate::domain::jobs::{JobRecord, webhook_secret, webhook_signature};

/// What delivering webhooks needs.
#[derive(Clone)]
pub struct Webhooks {
    pub client: reqwest::Client,
    /// The root of every key's secret (from the master key).
    pub root: [u8; 32],
    pub attempts: u32,
}

impl Webhooks {
    /// One delivery of `job`'s final state; answers whether a 2xx answer came.
    pub async fn deliver(&self, job: &JobRecord) -> bool {
        let Some(url) = job.webhook_url.as_deref() else {
            return true;
        };
        let secret = webhook_secret(&self.root, &job.key_id);
        let body = json!({
            "type": format!("job.{}", job.status.as_str()),
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": job.to_json(),
        })
        .to_string();
        // One id for every retry of this message, as the specification asks.
        let id = format!("msg_{}", job.id);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = webhook_signature(&secret, &id, timestamp, body.as_bytes());
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(res) if res.status().is_success() => true,
            Ok(res) => {
                tracing::info!(job = %job.id, attempt = job.webhook_attempts, status = res.status().as_u16(), "webhook refused");
                false
            }
            Err(e) => {
                tracing::info!(job = %job.id, attempt = job.webhook_attempts, error = %e, "webhook not delivered");
                false
            }
        }
    }

    /// What becomes of a webhook after its `attempts`-th delivery failed: another try
    /// after a doubling backoff (1 s, 2 s, … at most a minute), or none left.
    pub fn after_failure(&self, attempts: i32, now_ms: i64) -> WebhookOutcome {
        if attempts >= self.attempts as i32 {
            return WebhookOutcome::GaveUp;
        }
        let pause = Duration::from_secs(1 << attempts.clamp(1, 7).saturating_sub(1))
            .min(Duration::from_secs(60));
        WebhookOutcome::RetryAt(now_ms + pause.as_millis() as i64)
    }
}
