//! `POST /v1/chat/completions`: blocking JSON or SSE.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, Responder, web};
use actix_web_lab::sse::Sse;

use crate::domain::chat::ChatRequest;
use crate::error::ApiError;
use crate::http::extract::Caller;
use crate::http::{AppState, read_body, request_id, upstream_clock};
use crate::relay::{ChatReply, Relay, RequestInfo};

pub async fn chat_completions(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let chat = ChatRequest::parse(&body)?;
    let info = RequestInfo::new(
        request_id(&req),
        upstream_clock(&req),
        caller.0,
        chat.model.clone(),
        chat.stream,
        started,
    );
    let relay = Relay {
        store: state.store.clone(),
        router: state.router.clone(),
        metrics: state.metrics.clone(),
    };
    match relay.chat(info, chat).await? {
        ChatReply::Json(bytes) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(bytes)),
        ChatReply::Stream(events) => Ok(Sse::from_infallible_stream(events)
            .respond_to(&req)
            .map_into_boxed_body()),
    }
}
