//! Async jobs as plain data: what a job is (`JobRecord`), its states, what it produced,
//! and the Standard Webhooks signature of its final state. The store persists them, the
//! `JobActor` runs them, the HTTP edge shows them.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A job's state. `Queued` and `Running` are unfinished; the rest are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// What a job runs: the endpoint it was submitted to, whose dialect its result speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// `POST /v1/chat/completions`: the result is a `chat.completion`.
    ChatCompletion,
    /// `POST /v1/messages`: the result is an Anthropic Message.
    Message,
    /// `POST /v1/images/generations`: the result is an OpenAI images answer whose images
    /// are the job's artifacts.
    Image,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::ChatCompletion => "chat_completion",
            JobKind::Message => "message",
            JobKind::Image => "image",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [JobKind::ChatCompletion, JobKind::Message, JobKind::Image]
            .into_iter()
            .find(|kind| kind.as_str() == s)
    }
}

/// Why a job failed (or was cancelled): a stable `code` and a message for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

impl JobError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Where a job was handed to an upstream that runs it on its own (a ComfyUI prompt), so
/// an instance that takes the job over can follow it instead of submitting it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub deployment_id: String,
    pub prompt_id: String,
    pub client_id: String,
}

/// One stored output of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactMeta {
    pub index: i32,
    pub content_type: String,
    pub size: i64,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub user_id: String,
    pub key_id: String,
    pub kind: JobKind,
    pub model: String,
    pub status: JobStatus,
    pub progress: Option<f64>,
    /// The body as the client sent it.
    pub request: Value,
    pub result: Option<Value>,
    pub error: Option<JobError>,
    pub webhook_url: Option<String>,
    pub webhook_status: Option<String>,
    /// Deliveries of the webhook tried so far.
    pub webhook_attempts: i32,
    pub submitted: Option<Submitted>,
    /// Times the job was started (a job taken over after a restart starts again).
    pub attempts: i32,
    pub cancel_requested: bool,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub artifacts: Vec<ArtifactMeta>,
}

impl JobRecord {
    /// The job as its owner sees it (`GET /v1/jobs/{id}`, the events' final state, the
    /// webhook's body). Artifact URLs are relative to the gateway.
    pub fn to_json(&self) -> Value {
        let artifacts: Vec<Value> = self
            .artifacts
            .iter()
            .map(|a| {
                json!({
                    "index": a.index,
                    "content_type": a.content_type,
                    "size": a.size,
                    "url": artifact_path(&self.id, a.index),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "object": "job",
            "kind": self.kind.as_str(),
            "model": self.model,
            "status": self.status.as_str(),
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
            "artifacts": artifacts,
            "attempts": self.attempts,
            "cancel_requested": self.cancel_requested,
            "upstream": self.submitted.as_ref().map(|s| json!({
                "deployment_id": s.deployment_id,
                "prompt_id": s.prompt_id,
            })),
            "webhook": self.webhook_url.as_ref().map(|url| json!({
                "url": url,
                "status": self.webhook_status,
                "attempts": self.webhook_attempts,
            })),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        })
    }
}

/// The gateway path of a job's artifact.
pub fn artifact_path(job_id: &str, index: i32) -> String {
    format!("/v1/jobs/{job_id}/artifacts/{index}")
}

/// A job's state as its events stream tells it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobState {
    pub status: JobStatus,
    pub progress: Option<f64>,
}

/// The Standard Webhooks signature of `body`: `v1,` and the base64 HMAC-SHA256, keyed with
/// the secret's bytes, of `{id}.{timestamp}.{body}`.
pub fn webhook_signature(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// A key's webhook secret in the Standard Webhooks form (`whsec_` and base64), derived
/// from the gateway's webhook root key and the key's id: the same for a key as long as
/// the master key stays the same.
pub fn webhook_secret(root: &[u8], key_id: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, root);
    ring::hmac::sign(&key, key_id.as_bytes()).as_ref().to_vec()
}

pub fn webhook_secret_text(secret: &[u8]) -> String {
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(secret)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_kinds_read_back_what_they_write() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert!(JobStatus::Cancelled.is_final() && !JobStatus::Running.is_final());
        for kind in [JobKind::ChatCompletion, JobKind::Message, JobKind::Image] {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(JobStatus::parse("done"), None);
    }

    #[test]
    fn the_signature_is_standard_webhooks_v1() {
        // The example of the Standard Webhooks specification's reference libraries.
        use base64::Engine;
        let secret = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap_or_default();
        let body = br#"{"test": 2432232314}"#;
        let signature =
            webhook_signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
