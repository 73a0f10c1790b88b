//! `POST /v1/images/generations`: OpenAI's images request, routed to image deployments
//! (OpenAI-compatible images APIs, ComfyUI, the mock). Every generation is a job: with
//! `"async": true` the answer is the job's id at once (202); without, the request waits
//! for the job and answers OpenAI's images shape — `url`s of the stored artifacts on the
//! gateway, or the bytes as `b64_json`. A client that leaves does not stop the job.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use serde_json::{Value, json};

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::GetArtifact;
use crate::domain::images::{ImageFormat, ImageRequest};
use crate::domain::jobs::{JobKind, JobRecord, JobStatus};
use crate::error::{ApiError, ErrorKind};
use crate::http::extract::Caller;
use crate::http::jobs::{JobFields, started, submit, wait_final};
use crate::http::openapi::responses::{ClientAuth, Upstream};
use crate::http::{AppState, json_object, read_body};
use crate::relay::Relay;

/// Generates images; `"async": true` makes it a job answered at once (202).
#[utoipa::path(post, path = "/v1/images/generations", tag = "OpenAI",
    request_body(content = Object, description = "OpenAI's images request: `model`, `prompt`, `n`, `size`, `response_format` (`url` or `b64_json`); extensions `seed`, `negative_prompt`, `steps`; job fields `async`, `webhook_url`"),
    responses(
        (status = 200, description = "`{created, data: [{url | b64_json, revised_prompt?}]}`; `url`s are the job's artifacts on the gateway (they take the same key). `x-lowart-job-id` names the job.", body = Object),
        (status = 202, description = "`{status: async_started, job_id, model}`", body = Object),
        ClientAuth, Upstream))]
pub async fn generations(
    state: web::Data<AppState>,
    relay: web::Data<Relay>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let bytes = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let mut body = json_object(&bytes)?;
    let fields = JobFields::take(&mut body)?;
    // Validated here (400 at once), stored as sent, read again when the job runs.
    let ImageRequest {
        model,
        response_format,
        body,
        ..
    } = ImageRequest::parse(body)?;
    let job = submit(
        &state,
        &relay,
        &caller.0,
        JobKind::Image,
        model,
        body,
        fields.webhook_url,
    )
    .await?;
    if fields.is_async {
        return Ok(started(&job));
    }
    let within = Duration::from_millis(state.settings.jobs.timeout_ms) + Duration::from_secs(30);
    let job = wait_final(&state, &job.id, within).await?;
    answer(&state, &req, &job, response_format).await
}

/// A finished image job as OpenAI's images answer (or its error).
async fn answer(
    state: &AppState,
    req: &HttpRequest,
    job: &JobRecord,
    format: ImageFormat,
) -> Result<HttpResponse, ApiError> {
    if job.status != JobStatus::Succeeded {
        let error = job.error.clone();
        let (code, message) = error.map_or_else(
            || {
                (
                    "internal_error".to_string(),
                    "the job ended without a result".to_string(),
                )
            },
            |e| (e.code, e.message),
        );
        let kind = ErrorKind::parse(&code).unwrap_or(ErrorKind::Internal);
        return Err(ApiError::new(kind, message));
    }
    let created = job
        .result
        .as_ref()
        .and_then(|r| r.get("created"))
        .cloned()
        .unwrap_or(Value::Null);
    let items = job
        .result
        .as_ref()
        .and_then(|r| r.get("data"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let origin = {
        let info = req.connection_info();
        format!("{}://{}", info.scheme(), info.host())
    };
    let mut data = Vec::with_capacity(items.len());
    for (index, mut item) in items.into_iter().enumerate() {
        let path = item.get("url").and_then(Value::as_str).map(str::to_string);
        let Some(path) = path else { continue };
        match format {
            ImageFormat::Url => item["url"] = Value::String(format!("{origin}{path}")),
            ImageFormat::B64Json => {
                let artifact = state
                    .store
                    .send(GetArtifact {
                        job_id: job.id.clone(),
                        index: index as i32,
                        user_id: None,
                    })
                    .timeout(ASK_TIMEOUT)
                    .await??
                    .ok_or_else(ApiError::internal)?;
                if let Value::Object(map) = &mut item {
                    map.remove("url");
                    map.insert(
                        "b64_json".into(),
                        Value::String(
                            base64::engine::general_purpose::STANDARD.encode(&artifact.bytes),
                        ),
                    );
                }
            }
        }
        data.push(item);
    }
    Ok(HttpResponse::Ok()
        .insert_header(("x-lowart-job-id", job.id.clone()))
        .json(json!({ "created": created, "data": data })))
}
