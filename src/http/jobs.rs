//! Async jobs at the edge: submitting one (`"async": true` on chat completions, messages
//! or images, 202 with its id), reading it (`GET /v1/jobs/{id}`, its artifacts, its
//! events as SSE), listing and cancelling the caller's own, and `GET /admin/jobs`. A job
//! belongs to the user whose key submitted it: anyone else gets 404.

use std::time::Duration;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_lab::sse;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::IntoParams;

use crate::actors::ASK_TIMEOUT;
use crate::actors::jobs::{Cancel, Poke, Watch};
use crate::actors::store::{CancelJob, CreateJob, GetArtifact, GetJob, ListJobs, NewJob};
use crate::domain::jobs::{
    JobKind, JobRecord, JobState, JobStatus, webhook_secret, webhook_secret_text,
};
use crate::domain::records::KeyGrant;
use crate::error::{ApiError, ErrorKind};
use crate::http::AppState;
use crate::http::admin::usage::query;
use crate::http::extract::{AdminReader, Caller};
use crate::http::openapi::responses::{AdminAuth, ClientAuth};
use crate::relay::Relay;

/// The job fields of a request body, taken out of it (they are not the vendor's):
/// whether it is a job, and its webhook.
pub struct JobFields {
    pub is_async: bool,
    pub webhook_url: Option<String>,
}

impl JobFields {
    pub fn take(body: &mut Map<String, Value>) -> Result<Self, ApiError> {
        let is_async = match body.remove("async") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(ApiError::invalid("async", "`async` must be a boolean")),
        };
        let webhook_url = match body.remove("webhook_url") {
            None | Some(Value::Null) => None,
            Some(Value::String(url)) => Some(url),
            Some(_) => {
                return Err(ApiError::invalid(
                    "webhook_url",
                    "`webhook_url` must be a string",
                ));
            }
        };
        if webhook_url.is_some() && !is_async {
            return Err(ApiError::invalid(
                "webhook_url",
                "`webhook_url` is for async jobs: send `\"async\": true` with it",
            ));
        }
        Ok(Self {
            is_async,
            webhook_url,
        })
    }
}

/// Queues a job for `caller` and tells this instance's job actor. The model must exist
/// and be the key's, as for a request (404, 403).
pub async fn submit(
    state: &AppState,
    relay: &Relay,
    caller: &KeyGrant,
    kind: JobKind,
    model: String,
    request: Map<String, Value>,
    webhook_url: Option<String>,
) -> Result<JobRecord, ApiError> {
    if let Some(url) = &webhook_url {
        state
            .upstream_hosts
            .check_url("webhook_url", url)
            .map_err(|message| ApiError::invalid("webhook_url", message))?;
    }
    let known = relay.routing_table.borrow().routes.contains_key(&model);
    if !known {
        return Err(ApiError::new(
            ErrorKind::ModelNotFound,
            format!("the model `{model}` does not exist"),
        ));
    }
    if !caller.permits_model(&model) {
        return Err(ApiError::new(
            ErrorKind::ModelNotPermitted,
            format!("this key may not use the model `{model}`"),
        ));
    }
    let job = state
        .store
        .send(CreateJob(NewJob {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: caller.user_id.clone(),
            key_id: caller.key_id.clone(),
            kind,
            model,
            request: Value::Object(request),
            webhook_url,
        }))
        .timeout(ASK_TIMEOUT)
        .await??;
    state.jobs.do_send(Poke);
    Ok(job)
}

/// The answer to an async submission: 202 `{"status":"async_started","job_id","model"}`.
pub fn started(job: &JobRecord) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((LOCATION, format!("/v1/jobs/{}", job.id)))
        .json(json!({
            "status": "async_started",
            "job_id": job.id,
            "model": job.model,
        }))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no job `{id}`"))
}

async fn own_job(state: &AppState, caller: &KeyGrant, id: String) -> Result<JobRecord, ApiError> {
    state
        .store
        .send(GetJob {
            id: id.clone(),
            user_id: Some(caller.user_id.clone()),
        })
        .timeout(ASK_TIMEOUT)
        .await??
        .ok_or_else(|| not_found(&id))
}

/// A job of the caller's: status, progress, result or error, artifacts.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "Jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = Object), ClientAuth,
        (status = 404, description = "No such job of this key's user")))]
pub async fn get_job(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = own_job(&state, &caller.0, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(job.to_json()))
}

const DEFAULT_LIMIT: u64 = 20;
const MAX_LIMIT: u64 = 100;

/// Filters and paging of a job list (newest first; `before`: the last id of a page).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    status: Option<String>,
    model: Option<String>,
    kind: Option<String>,
    user_id: Option<String>,
    limit: Option<u64>,
    before: Option<String>,
}

impl JobsQuery {
    fn into_list(self, user_id: Option<String>) -> Result<ListJobs, ApiError> {
        let status = match self.status.as_deref() {
            None => None,
            Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    "`status` must be queued, running, succeeded, failed or cancelled",
                )
            })?),
        };
        let kind = match self.kind.as_deref() {
            None => None,
            Some(k) => Some(JobKind::parse(k).ok_or_else(|| {
                ApiError::invalid("kind", "`kind` must be chat_completion, message or image")
            })?),
        };
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::invalid(
                "limit",
                format!("`limit` must be from 1 to {MAX_LIMIT}"),
            ));
        }
        Ok(ListJobs {
            user_id: user_id.or(self.user_id),
            status,
            model: self.model,
            kind,
            before: self.before,
            limit: limit + 1,
        })
    }
}

/// A page of jobs; `list.limit` asks for one more than the page (see `into_list`).
async fn list(state: &AppState, list: ListJobs) -> Result<HttpResponse, ApiError> {
    let limit = list.limit - 1;
    let mut jobs = state.store.send(list).timeout(ASK_TIMEOUT).await??;
    let has_more = jobs.len() as u64 > limit;
    jobs.truncate(limit as usize);
    let next = has_more
        .then(|| jobs.last().map(|j| j.id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": jobs.iter().map(JobRecord::to_json).collect::<Vec<_>>(),
        "has_more": has_more,
        "next_before": next,
    })))
}

/// The caller's jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "Jobs", params(JobsQuery),
    responses((status = 200, description = "`{object: list, data, has_more, next_before}`", body = Object), ClientAuth))]
pub async fn list_jobs(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q: JobsQuery = query(&req)?;
    if q.user_id.is_some() {
        return Err(ApiError::invalid(
            "user_id",
            "`user_id` is for `GET /admin/jobs`; this list is the caller's own",
        ));
    }
    list(&state, q.into_list(Some(caller.0.user_id.clone()))?).await
}

/// Every job, with filters (`user_id`, `status`, `model`, `kind`).
#[utoipa::path(get, path = "/admin/jobs", tag = "Admin", params(JobsQuery),
    description = "Every user's jobs, newest first, filtered by `user_id`, `status`, `model`, `kind`; \
        `limit` (at most 100) and `before` (the `next_before` of the previous page). Role: admin, operator or viewer.",
    responses((status = 200, description = "`{object: list, data, has_more, next_before}`", body = Object), AdminAuth))]
pub async fn admin_list_jobs(
    state: web::Data<AppState>,
    _reader: AdminReader,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q: JobsQuery = query(&req)?;
    list(&state, q.into_list(None)?).await
}

/// One stored output of a job (an image), with its content type.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts/{n}", tag = "Jobs",
    params(("id" = String, Path, description = "The job's id"), ("n" = i32, Path, description = "The artifact's index, from 0")),
    responses((status = 200, description = "The bytes", content_type = "application/octet-stream"), ClientAuth,
        (status = 404, description = "No such job of this key's user, or no such artifact (or it expired)")))]
pub async fn job_artifact(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, i32)>,
) -> Result<HttpResponse, ApiError> {
    let (id, index) = path.into_inner();
    let artifact = state
        .store
        .send(GetArtifact {
            job_id: id.clone(),
            index,
            user_id: Some(caller.0.user_id.clone()),
        })
        .timeout(ASK_TIMEOUT)
        .await??
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("no artifact {index} of job `{id}`"),
            )
        })?;
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, artifact.content_type))
        .insert_header((CACHE_CONTROL, "private, max-age=86400, immutable"))
        .body(artifact.bytes))
}

/// Cancels a job: a queued one at once; a running one is stopped (ComfyUI is asked to
/// `/interrupt`) and ends `cancelled`. A finished job is answered as it is.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "Jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job after the cancellation (a job running on another instance shows `cancel_requested` until that instance stops it)", body = Object),
        ClientAuth, (status = 404, description = "No such job of this key's user")))]
pub async fn cancel_job(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let job = state
        .store
        .send(CancelJob {
            id: id.clone(),
            user_id: Some(caller.0.user_id.clone()),
        })
        .timeout(ASK_TIMEOUT)
        .await??
        .ok_or_else(|| not_found(&id))?;
    if job.status != JobStatus::Running {
        return Ok(HttpResponse::Ok().json(job.to_json()));
    }
    let (mut changes, _) = state
        .jobs
        .send(Watch { id: id.clone() })
        .timeout(ASK_TIMEOUT)
        .await?;
    let here = state
        .jobs
        .send(Cancel { id: id.clone() })
        .timeout(ASK_TIMEOUT)
        .await?;
    if here {
        // It runs here: answer once it has stopped (the upstream told first).
        let _ = tokio::time::timeout(ASK_TIMEOUT, async {
            while let Ok(state) = changes.recv().await {
                if state.status.is_final() {
                    break;
                }
            }
        })
        .await;
    }
    let job = own_job(&state, &caller.0, id).await?;
    Ok(HttpResponse::Ok().json(job.to_json()))
}

/// Waits for a job's final state: its changes on this instance as they happen, and the
/// database every `jobs.poll_ms` (a job another instance runs).
pub async fn wait_final(
    state: &AppState,
    id: &str,
    within: Duration,
) -> Result<JobRecord, ApiError> {
    let (mut changes, _) = state
        .jobs
        .send(Watch { id: id.to_string() })
        .timeout(ASK_TIMEOUT)
        .await?;
    let poll = Duration::from_millis(state.settings.jobs.poll_ms);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let job = state
            .store
            .send(GetJob {
                id: id.to_string(),
                user_id: None,
            })
            .timeout(ASK_TIMEOUT)
            .await??
            .ok_or_else(|| not_found(id))?;
        if job.status.is_final() {
            return Ok(job);
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                return Err(ApiError::new(
                    ErrorKind::Upstream(crate::providers::FailureClass::Timeout),
                    format!("job `{id}` did not finish in time; follow it at /v1/jobs/{id}"),
                ));
            }
            _ = changes.recv() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Server-sent events of a job: `status` events (`{"status","progress"}`) as the job
/// changes, then one `done` event with the whole job, and the end.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "Jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "`event: status` with `{status, progress}` on each change, then `event: done` with the job", content_type = "text/event-stream"),
        ClientAuth, (status = 404, description = "No such job of this key's user")))]
pub async fn job_events(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<impl actix_web::Responder, ApiError> {
    let id = path.into_inner();
    let (mut changes, local) = state
        .jobs
        .send(Watch { id: id.clone() })
        .timeout(ASK_TIMEOUT)
        .await?;
    let first = own_job(&state, &caller.0, id.clone()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<sse::Event, std::convert::Infallible>>(8);
    let stream = sse::Sse::from_receiver(rx);
    let state = state.into_inner();
    actix::spawn(async move {
        let status_event = |s: JobState| {
            sse::Data::new_json(json!({"status": s.status.as_str(), "progress": s.progress}))
                .map(|d| Ok(sse::Event::Data(d.event("status"))))
        };
        let mut last = local.unwrap_or(JobState {
            status: first.status,
            progress: first.progress,
        });
        if let Ok(event) = status_event(last)
            && tx.send(event).await.is_err()
        {
            return;
        }
        let poll = Duration::from_millis(state.settings.jobs.poll_ms);
        let mut job = first;
        loop {
            if job.status.is_final() || last.status.is_final() {
                if !job.status.is_final() {
                    match state
                        .store
                        .send(GetJob {
                            id: id.clone(),
                            user_id: None,
                        })
                        .await
                    {
                        Ok(Ok(Some(found))) => job = found,
                        _ => return,
                    }
                }
                if let Ok(done) = sse::Data::new_json(job.to_json()) {
                    let _ = tx.send(Ok(sse::Event::Data(done.event("done")))).await;
                }
                return;
            }
            let next = tokio::select! {
                change = changes.recv() => match change {
                    Ok(s) => Some(s),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    // Nobody publishes here any more: the database tells.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep(poll).await;
                        None
                    }
                },
                () = tokio::time::sleep(poll) => None,
            };
            let next = match next {
                Some(s) => s,
                None => match state
                    .store
                    .send(GetJob {
                        id: id.clone(),
                        user_id: None,
                    })
                    .await
                {
                    Ok(Ok(Some(found))) => {
                        let s = JobState {
                            status: found.status,
                            progress: found.progress,
                        };
                        job = found;
                        s
                    }
                    _ => return,
                },
            };
            if next != last {
                last = next;
                if let Ok(event) = status_event(next)
                    && tx.send(event).await.is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(stream.with_keep_alive(Duration::from_secs(15)))
}

/// The caller key's webhook signing secret (`whsec_…`, Standard Webhooks): verify the
/// `webhook-signature` of a job's webhook with it.
#[utoipa::path(get, path = "/v1/webhook_secret", tag = "Jobs",
    responses((status = 200, description = "`{\"secret\": \"whsec_…\"}`", body = Object), ClientAuth))]
pub async fn own_webhook_secret(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let secret = webhook_secret(&state.webhook_root, &caller.0.key_id);
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(json!({ "secret": webhook_secret_text(&secret) })))
}
