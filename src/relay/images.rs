//! Image generations on the relay: an OpenAI-compatible images API (one call; `url`
//! answers fetched), the in-process mock, or ComfyUI (the workflow filled from the
//! request, submitted to `/prompt`, followed over `/ws` with `/history` polled beside it,
//! its outputs fetched from `/view`). Every image is fetched here, within
//! `jobs.max_artifact_bytes`, so a job stores what the vendor made.
//!
//! A ComfyUI prompt the upstream accepted is never submitted twice: a failure after that
//! is the request's answer (`ImagesAnswer::Failed`), not a reason to try another
//! deployment. A job taken over after a restart re-attaches to its prompt (`attach`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::accounting::{Accounting, Prompt};
use super::{
    Admitted, Call, Limits, Relay, Reply, RequestInfo, attempt_timeout, read_answer, send, target,
    transport_failure,
};
use crate::actors::router::Route;
use crate::domain::breaker::CallResult;
use crate::domain::images::{
    GeneratedImage, ImageData, ImageRequest, VendorImage, sniff_content_type,
};
use crate::domain::jobs::Submitted;
use crate::error::ApiError;
use crate::providers::comfyui::{self, HistoryState, OutputFile, WsEvent};
use crate::providers::{FailureClass, UpstreamFailure, Vendor};
use crate::scripts::{Hook, Scripts};

/// What an image generation tells its job as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageEvent {
    /// The upstream accepted the work under this id (persisted, to re-attach).
    Submitted(Submitted),
    /// Fraction done, 0 to 1.
    Progress(f64),
}

/// An image generation for the relay.
pub struct ImageCall<'a> {
    pub req: &'a ImageRequest,
    /// A ComfyUI prompt this job already submitted: follow it, do not submit again.
    pub attach: Option<&'a Submitted>,
    pub events: &'a dyn Fn(ImageEvent),
    /// Longest the generation may take, retries included.
    pub timeout: Duration,
    /// Largest image accepted.
    pub max_bytes: usize,
}

pub(super) enum ImagesAnswer {
    Images(Vec<GeneratedImage>),
    /// The upstream took the work and then failed: final, no other deployment is tried.
    Failed(UpstreamFailure),
}

impl Call for ImageCall<'_> {
    type Answer = ImagesAnswer;

    fn serves(&self, route: &Route) -> bool {
        match self.attach {
            Some(submitted) => route.deployment.id == submitted.deployment_id,
            None => route.vendor.serves_images(),
        }
    }

    fn demand_tokens(&self, _: &Route, _: u64) -> (u64, u64) {
        (0, 0)
    }

    fn prompt(&self) -> Prompt {
        Prompt::Image
    }

    fn deadline(&self, _: &crate::config::RoutingSettings) -> Duration {
        self.timeout
    }

    async fn attempt(
        &self,
        acc: &mut Accounting,
        route: &Arc<Route>,
        deadline: Instant,
        limits: Limits,
        scripts: &Scripts,
    ) -> Result<ImagesAnswer, UpstreamFailure> {
        if let Some(images) = route.vendor.local_images(self.req) {
            return Ok(ImagesAnswer::Images(
                self.fetch_all(acc, route, images, deadline).await?,
            ));
        }
        match &route.vendor {
            Vendor::ComfyUI(settings) => {
                self.comfyui(acc, route, settings, deadline, scripts).await
            }
            _ => {
                let url = route.images_url.as_ref().ok_or_else(|| {
                    UpstreamFailure::new(FailureClass::Connect, "deployment has no base_url")
                })?;
                let request =
                    crate::providers::openai::images_request(url, target(route), &self.req.body)?;
                let timeout = attempt_timeout(route, deadline);
                let response = send(acc, route, request, timeout).await?;
                let bytes =
                    read_answer(acc, route, response, timeout, limits.max_response_bytes).await?;
                let (images, usage) = crate::providers::openai::decode_images(&bytes)?;
                acc.usage = usage;
                Ok(ImagesAnswer::Images(
                    self.fetch_all(acc, route, images, deadline).await?,
                ))
            }
        }
    }
}

impl ImageCall<'_> {
    /// The bytes of each image: as answered, or fetched from its URL.
    async fn fetch_all(
        &self,
        acc: &mut Accounting,
        route: &Route,
        images: Vec<VendorImage>,
        deadline: Instant,
    ) -> Result<Vec<GeneratedImage>, UpstreamFailure> {
        let mut out = Vec::with_capacity(images.len());
        for image in images {
            let (bytes, content_type) = match image.data {
                ImageData::Bytes(bytes) => {
                    if bytes.len() > self.max_bytes {
                        return Err(too_large(self.max_bytes));
                    }
                    let content_type = sniff_content_type(&bytes).to_string();
                    (Bytes::from(bytes), content_type)
                }
                ImageData::Url(url) => {
                    let url = reqwest::Url::parse(&url).map_err(|_| {
                        UpstreamFailure::new(
                            FailureClass::MalformedResponse,
                            "an image URL does not parse",
                        )
                    })?;
                    // The vendor's own storage: no key is sent there.
                    fetch(acc, &route.client, url, deadline, self.max_bytes).await?
                }
            };
            out.push(GeneratedImage {
                bytes,
                content_type,
                revised_prompt: image.revised_prompt,
            });
        }
        Ok(out)
    }

    /// A ComfyUI generation: submit (or re-attach), follow, fetch.
    async fn comfyui(
        &self,
        acc: &mut Accounting,
        route: &Route,
        settings: &comfyui::ComfyUiSettings,
        deadline: Instant,
        scripts: &Scripts,
    ) -> Result<ImagesAnswer, UpstreamFailure> {
        let base = route.deployment.config.base_url.clone().ok_or_else(|| {
            UpstreamFailure::new(FailureClass::Connect, "deployment has no base_url")
        })?;
        let submitted = match self.attach {
            Some(submitted) => submitted.clone(),
            // A failure to submit ran nothing upstream: another deployment may be tried.
            None => {
                self.submit(acc, route, settings, &base, deadline, scripts)
                    .await?
            }
        };
        Ok(self
            .finish(acc, route, settings, &base, &submitted, deadline)
            .await)
    }

    /// Follows a submitted prompt and fetches its outputs; any failure is final.
    async fn finish(
        &self,
        acc: &mut Accounting,
        route: &Route,
        settings: &comfyui::ComfyUiSettings,
        base: &str,
        submitted: &Submitted,
        deadline: Instant,
    ) -> ImagesAnswer {
        let wait = settings
            .options
            .timeout_ms
            .map(Duration::from_millis)
            .map_or(deadline, |t| deadline.min(Instant::now() + t));
        let poll = Duration::from_millis(settings.options.poll_interval_ms.unwrap_or(1000).max(50));
        let started = Instant::now();
        let followed = follow(route, base, submitted, wait, poll, self.events).await;
        acc.waited(started.elapsed());
        let outputs = match followed {
            Ok(outputs) => outputs,
            Err(failure) => {
                if failure.class == FailureClass::Timeout {
                    // Free the upstream for other work.
                    interrupt(route, base, &submitted.prompt_id).await;
                }
                return ImagesAnswer::Failed(failure);
            }
        };
        if outputs.is_empty() {
            return ImagesAnswer::Failed(UpstreamFailure {
                vendor_message: Some(format!(
                    "ComfyUI finished prompt {} without an output file",
                    submitted.prompt_id
                )),
                ..UpstreamFailure::new(FailureClass::MalformedResponse, "no outputs in history")
            });
        }
        let mut images = Vec::with_capacity(outputs.len());
        for file in outputs {
            let url = match comfyui::view_url(base, &file) {
                Ok(url) => url,
                Err(failure) => return ImagesAnswer::Failed(failure),
            };
            match fetch(acc, &route.client, url, deadline, self.max_bytes).await {
                Ok((bytes, content_type)) => {
                    let content_type = if content_type == "application/octet-stream" {
                        comfyui::content_type(&file.filename).to_string()
                    } else {
                        content_type
                    };
                    images.push(GeneratedImage {
                        bytes,
                        content_type,
                        revised_prompt: None,
                    });
                }
                Err(failure) => return ImagesAnswer::Failed(failure),
            }
        }
        ImagesAnswer::Images(images)
    }

    async fn submit(
        &self,
        acc: &mut Accounting,
        route: &Route,
        settings: &comfyui::ComfyUiSettings,
        base: &str,
        deadline: Instant,
        scripts: &Scripts,
    ) -> Result<Submitted, UpstreamFailure> {
        let workflow = match &route.deployment.config.request_script {
            None => comfyui::fill_workflow(&settings.workflow, &placeholders(self.req)),
            Some(name) => scripted_workflow(name, scripts, self.req, &settings.workflow).await?,
        };
        let client_id = uuid::Uuid::new_v4().to_string();
        let request = comfyui::prompt_request(base, workflow, &client_id)?;
        let timeout = attempt_timeout(route, deadline);
        let response = send(acc, route, request, timeout).await?;
        let status = response.status().as_u16();
        let body = super::read_capped(response, 1024 * 1024).await?;
        let prompt_id = comfyui::decode_submitted(status, &body)?;
        let submitted = Submitted {
            deployment_id: route.deployment.id.clone(),
            prompt_id,
            client_id,
        };
        (self.events)(ImageEvent::Submitted(submitted.clone()));
        Ok(submitted)
    }
}

/// The workflow a deployment's script builds with `workflow(req)` from the request's
/// values (the template's placeholders, with their defaults, plus `n`, `model` and the
/// `template`); it must be API-format JSON, as a template must.
async fn scripted_workflow(
    name: &str,
    scripts: &Scripts,
    req: &ImageRequest,
    template: &Value,
) -> Result<Value, UpstreamFailure> {
    let mut input = placeholders(req);
    input.insert("template".into(), template.clone());
    input.insert("n".into(), Value::from(req.n));
    input.insert("model".into(), Value::String(req.model.clone()));
    let workflow = scripts
        .run(name, Hook::Workflow.name(), Value::Object(input))
        .await?;
    comfyui::check_workflow(&workflow).map_err(|why| {
        UpstreamFailure::from(crate::scripts::ScriptError {
            script: name.to_string(),
            reason: format!("`workflow` returned no usable workflow: {why}"),
        })
    })?;
    Ok(workflow)
}

/// The six placeholders of a ComfyUI template, every one with a value: the request's, or
/// a default (1024×1024, 20 steps, a random seed, an empty negative prompt).
fn placeholders(req: &ImageRequest) -> Map<String, Value> {
    let (width, height) = req.size.unwrap_or((1024, 1024));
    let seed = req.seed.unwrap_or_else(|| {
        // ComfyUI's seeds are at most 2^53 in its UI: keep random ones JSON-safe.
        u64::from_le_bytes(
            *uuid::Uuid::new_v4()
                .as_bytes()
                .first_chunk()
                .unwrap_or(&[0; 8]),
        ) >> 11
    });
    let mut values = Map::new();
    values.insert("prompt".into(), Value::String(req.prompt.clone()));
    values.insert(
        "negative_prompt".into(),
        Value::String(req.negative_prompt.clone().unwrap_or_default()),
    );
    values.insert("width".into(), Value::from(width));
    values.insert("height".into(), Value::from(height));
    values.insert("seed".into(), Value::from(seed));
    values.insert("steps".into(), Value::from(req.steps.unwrap_or(20)));
    values
}

/// Follows a prompt to its end: progress over `/ws` (when the base is plain http), and
/// `/history/{id}` asked every `poll` (the source of truth for the outputs, and the only
/// one when the WebSocket cannot be used). Ends by `wait`.
async fn follow(
    route: &Route,
    base: &str,
    submitted: &Submitted,
    wait: Instant,
    poll: Duration,
    events: &dyn Fn(ImageEvent),
) -> Result<Vec<OutputFile>, UpstreamFailure> {
    let prompt_id = submitted.prompt_id.as_str();
    let mut socket = match comfyui::ws_url(base, &submitted.client_id) {
        Some(url) => {
            match tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::connect_async(url),
            )
            .await
            {
                Ok(Ok((socket, _))) => Some(socket),
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "ComfyUI /ws unavailable; polling /history");
                    None
                }
                Err(_) => None,
            }
        }
        None => None,
    };
    let history_url = comfyui::history_url(base, prompt_id);
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::Instant::from_std(wait);
    loop {
        let frame = async {
            match socket.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                return Err(UpstreamFailure {
                    vendor_message: Some(format!(
                        "ComfyUI did not finish prompt {prompt_id} in time"
                    )),
                    ..UpstreamFailure::new(FailureClass::Timeout, "ComfyUI prompt timed out")
                });
            }
            frame = frame => match frame {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                    match comfyui::decode_ws(text.as_str(), prompt_id)? {
                        WsEvent::Progress { value, max } if max > 0 => {
                            events(ImageEvent::Progress((value as f64 / max as f64).clamp(0.0, 1.0)));
                        }
                        WsEvent::Failed(message) => return Err(execution_failed(message)),
                        WsEvent::Interrupted => {
                            return Err(execution_failed(format!("ComfyUI interrupted prompt {prompt_id}")));
                        }
                        // The end: the history has the outputs.
                        WsEvent::Succeeded | WsEvent::Finished => ticker.reset_immediately(),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                // The socket went: the history still tells the end.
                Some(Err(_)) | None => socket = None,
            },
            _ = ticker.tick() => {
                let response = route
                    .client
                    .get(&history_url)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .map_err(|e| transport_failure(&e))?;
                let status = response.status().as_u16();
                let body = super::read_capped(response, 16 * 1024 * 1024).await?;
                if !(200..300).contains(&status) {
                    return Err(comfyui::classify(status, &body));
                }
                match comfyui::decode_history(&body, prompt_id)? {
                    HistoryState::Pending => {}
                    HistoryState::Succeeded(outputs) => {
                        events(ImageEvent::Progress(1.0));
                        return Ok(outputs);
                    }
                    HistoryState::Failed(message) => return Err(execution_failed(message)),
                }
            }
        }
    }
}

fn execution_failed(message: String) -> UpstreamFailure {
    UpstreamFailure {
        vendor_message: Some(message.clone()),
        ..UpstreamFailure::new(FailureClass::Upstream5xx, message)
    }
}

/// Asks ComfyUI to stop a prompt (running: `/interrupt`; queued: delete it from the
/// queue). Best effort: a failure is logged.
pub async fn interrupt(route: &Route, base: &str, prompt_id: &str) {
    for request in [
        comfyui::interrupt_request(base, prompt_id),
        comfyui::queue_delete_request(base, prompt_id),
    ] {
        let Ok(request) = request else { continue };
        let sent = route
            .client
            .post(request.url)
            .headers(request.headers)
            .body(request.body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, prompt_id, "could not ask ComfyUI to stop a prompt");
        }
    }
}

fn too_large(limit: usize) -> UpstreamFailure {
    UpstreamFailure {
        vendor_message: Some(format!(
            "an artifact is larger than jobs.max_artifact_bytes ({limit} bytes)"
        )),
        ..UpstreamFailure::new(FailureClass::MalformedResponse, "artifact too large")
    }
}

/// GETs one output, at most `limit` bytes; its content type from the answer.
async fn fetch(
    acc: &mut Accounting,
    client: &reqwest::Client,
    url: reqwest::Url,
    deadline: Instant,
    limit: usize,
) -> Result<(Bytes, String), UpstreamFailure> {
    let started = Instant::now();
    let remaining = deadline
        .saturating_duration_since(started)
        .max(Duration::from_millis(1));
    let fetched = tokio::time::timeout(remaining, async {
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|e| transport_failure(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(UpstreamFailure {
                status: Some(status.as_u16()),
                ..UpstreamFailure::new(FailureClass::Upstream5xx, "an output could not be fetched")
            });
        }
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "application/octet-stream".to_string(), str::to_string);
        let mut body = BytesMut::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| transport_failure(&e))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body.freeze(), content_type))
    })
    .await;
    acc.waited(started.elapsed());
    match fetched {
        Ok(result) => result,
        Err(_) => Err(super::timeout_failure()),
    }
}

impl Relay {
    /// Generates images; a failure after the upstream took the work is final.
    pub async fn images(
        &self,
        info: RequestInfo,
        call: &ImageCall<'_>,
    ) -> Result<Reply<Vec<GeneratedImage>>, ApiError> {
        let admitted = self.serve(info, call).await?;
        let served = admitted.served();
        let Admitted {
            mut acc,
            permit,
            answer,
            ..
        } = admitted;
        match answer {
            ImagesAnswer::Images(images) => {
                permit.finish(CallResult::Success);
                acc.succeed();
                Ok(Reply {
                    body: images,
                    served,
                })
            }
            ImagesAnswer::Failed(failure) => {
                permit.finish(if failure.class.is_final() {
                    CallResult::Ignored
                } else {
                    CallResult::Failure
                });
                let message = failure.vendor_message.clone();
                let mut error = super::fail(&mut acc, failure);
                if let Some(message) = message {
                    error.message = message;
                }
                Err(error)
            }
        }
    }
}
