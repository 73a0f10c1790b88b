//! A finished job's webhook: its final state POSTed to the job's `webhook_url`, signed as
//! Standard Webhooks sign (`webhook-id`, `webhook-timestamp`, `webhook-signature`) with
//! the submitting key's secret, retried with a doubling backoff until a 2xx answer.

use std::time::Duration;

use serde_json::json;

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
    /// Delivers `job`'s final state; answers whether a 2xx answer came.
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
        let mut pause = Duration::from_secs(1);
        for attempt in 1..=self.attempts {
            let timestamp = chrono::Utc::now().timestamp();
            let signature = webhook_signature(&secret, &id, timestamp, body.as_bytes());
            let sent = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(res) if res.status().is_success() => return true,
                Ok(res) => {
                    tracing::info!(job = %job.id, attempt, status = res.status().as_u16(), "webhook refused")
                }
                Err(e) => {
                    tracing::info!(job = %job.id, attempt, error = %e, "webhook not delivered")
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
        false
    }
}
