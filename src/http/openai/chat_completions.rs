//! `POST /v1/chat/completions`: blocking JSON or SSE.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, Responder, web};
use actix_web_lab::sse::Sse;

use crate::domain::chat::ChatRequest;
use crate::error::ApiError;
use crate::http::extract::Caller;
use crate::http::{AppState, read_body, request_id, upstream_clock};
use crate::relay::{ChatBody, ChatReply, Relay, RequestInfo};
use actix_web::http::header::{HeaderName, HeaderValue};

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
        routing_table: state.routing_table.clone(),
        metrics: state.metrics.clone(),
        routing: state.settings.routing,
        closing: state.closing.clone(),
    };
    let ChatReply { body, served } = relay.chat(info, chat).await?;
    let mut res = match body {
        ChatBody::Json(bytes) => HttpResponse::Ok()
            .content_type("application/json")
            .body(bytes),
        ChatBody::Stream(events) => Sse::from_infallible_stream(events)
            .respond_to(&req)
            .map_into_boxed_body(),
    };
    let headers = res.headers_mut();
    for (name, value) in [
        ("x-lowart-model", served.model),
        ("x-lowart-deployment", served.deployment_id),
        ("x-lowart-attempts", served.attempts.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    Ok(res)
}
