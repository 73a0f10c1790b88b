//! One run of one job, on the job actor's thread: the key that submitted it is looked up
//! again (a revoked key's jobs fail), then the job goes through the same relay as a
//! request — routing, breakers, quotas, one usage row (its request id is the job id).

use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use serde_json::{Value, json};

use crate::actors::store::{LookupKey, NewArtifact, StoreActor};
use crate::config::JobSettings;
use crate::domain::images::{ImageFormat, ImageRequest};
use crate::domain::jobs::{JobError, JobKind, JobRecord, JobStatus, artifact_path};
use crate::domain::now_ms;
use crate::error::{ApiError, ErrorKind};
use crate::http::anthropic::messages::AnthropicMessages;
use crate::http::chat::ChatDialect;
use crate::http::openai::chat_completions::OpenAiChat;
use crate::relay::{ChatBody, ImageCall, ImageEvent, Relay, RequestInfo, UpstreamClock};

/// How a run ended.
pub enum Outcome {
    Finished {
        status: JobStatus,
        result: Option<Value>,
        error: Option<JobError>,
        artifacts: Vec<NewArtifact>,
    },
    /// Not now: back to the queue, due at `run_after` (a rate limit, no healthy deployment).
    Requeue { run_after: i64 },
}

/// A job claimed this many times is failed instead of waiting again.
const MAX_CLAIMS: i32 = 20;

impl Outcome {
    fn failed(code: &str, message: impl Into<String>) -> Self {
        Outcome::Finished {
            status: JobStatus::Failed,
            result: None,
            error: Some(JobError::new(code, message)),
            artifacts: Vec::new(),
        }
    }

    fn succeeded(result: Value, artifacts: Vec<NewArtifact>) -> Self {
        Outcome::Finished {
            status: JobStatus::Succeeded,
            result: Some(result),
            error: None,
            artifacts,
        }
    }

    /// A request's error as the job's: waited out when it says to wait, else final.
    fn from_error(job: &JobRecord, error: ApiError) -> Self {
        let wait_ms = match (error.kind, error.retry_after) {
            (ErrorKind::RateLimited, Some(secs)) => Some(secs.max(1) * 1000),
            (ErrorKind::NoHealthyDeployment | ErrorKind::UpstreamConcurrencyExceeded, _) => {
                Some(2000)
            }
            _ => None,
        };
        match wait_ms {
            Some(ms) if job.attempts < MAX_CLAIMS => Outcome::Requeue {
                run_after: now_ms() + ms as i64,
            },
            _ => {
                tracing::info!(job = %job.id, code = error.code(), detail = ?error.detail, "job failed");
                Outcome::failed(error.code(), error.message)
            }
        }
    }
}

pub async fn run(
    relay: &Relay,
    store: &Addr<StoreActor>,
    settings: &JobSettings,
    job: &JobRecord,
    events: &dyn Fn(ImageEvent),
) -> Outcome {
    let grant = match store.send(LookupKey::Id(job.key_id.clone())).await {
        Ok(Ok(Some(grant))) => grant,
        Ok(Ok(None)) => {
            return Outcome::failed(
                "invalid_api_key",
                "the API key that submitted this job was revoked",
            );
        }
        Ok(Err(e)) => {
            tracing::warn!(job = %job.id, error = %e, "job waits: its key could not be read");
            return Outcome::Requeue {
                run_after: now_ms() + 2000,
            };
        }
        Err(_) => {
            return Outcome::Requeue {
                run_after: now_ms() + 2000,
            };
        }
    };
    if grant.expires_at.is_some_and(|t| t <= now_ms()) {
        return Outcome::failed("key_expired", "the API key that submitted this job expired");
    }
    if grant.user_disabled {
        return Outcome::failed("invalid_api_key", "the user of this job is disabled");
    }
    let info = RequestInfo::new(
        job.id.clone(),
        UpstreamClock::default(),
        Arc::new(grant),
        job.model.clone(),
        false,
        Instant::now(),
    );
    match job.kind {
        JobKind::ChatCompletion => chat::<OpenAiChat>(relay, info, job).await,
        JobKind::Message => chat::<AnthropicMessages>(relay, info, job).await,
        JobKind::Image => image(relay, settings, info, job, events).await,
    }
}

async fn chat<D: ChatDialect>(relay: &Relay, info: RequestInfo, job: &JobRecord) -> Outcome {
    let bytes = job.request.to_string();
    let req = match D::parse(bytes.as_bytes()) {
        Ok(req) => Arc::new(req),
        Err(e) => return Outcome::from_error(job, e),
    };
    let created = info.created_at / 1000;
    match relay.chat(info, &req).await {
        Ok(reply) => match reply.body {
            ChatBody::Complete { raw: Some(raw), .. } => match serde_json::from_slice(&raw) {
                Ok(value) => Outcome::succeeded(value, Vec::new()),
                Err(_) => Outcome::failed("malformed_response", "the upstream answer is not JSON"),
            },
            ChatBody::Complete { response, .. } => {
                Outcome::succeeded(D::encode_response(&response, created), Vec::new())
            }
            ChatBody::Stream(_) => Outcome::failed("internal_error", "a job cannot stream"),
        },
        Err(e) => Outcome::from_error(job, e),
    }
}

async fn image(
    relay: &Relay,
    settings: &JobSettings,
    info: RequestInfo,
    job: &JobRecord,
    events: &dyn Fn(ImageEvent),
) -> Outcome {
    let Value::Object(body) = job.request.clone() else {
        return Outcome::failed("invalid_request", "the job's request is not an object");
    };
    let req = match ImageRequest::parse(body) {
        Ok(req) => req,
        Err(e) => return Outcome::from_error(job, e),
    };
    let call = ImageCall {
        req: &req,
        attach: job.submitted.as_ref(),
        events,
        timeout: std::time::Duration::from_millis(settings.timeout_ms),
        max_bytes: settings.max_artifact_bytes,
    };
    let created = info.created_at / 1000;
    match relay.images(info, &call).await {
        Ok(reply) => {
            let data: Vec<Value> = reply
                .body
                .iter()
                .enumerate()
                .map(|(i, image)| {
                    let mut item = json!({ "url": artifact_path(&job.id, i as i32) });
                    if let Some(revised) = &image.revised_prompt {
                        item["revised_prompt"] = Value::String(revised.clone());
                    }
                    item
                })
                .collect();
            let artifacts = reply
                .body
                .into_iter()
                .map(|image| NewArtifact {
                    content_type: image.content_type,
                    bytes: image.bytes,
                })
                .collect();
            let format = match req.response_format {
                ImageFormat::Url => "url",
                ImageFormat::B64Json => "b64_json",
            };
            Outcome::succeeded(
                json!({ "created": created, "data": data, "response_format": format }),
                artifacts,
            )
        }
        Err(e) => Outcome::from_error(job, e),
    }
}
