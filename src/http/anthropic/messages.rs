//! `POST /v1/messages`: Anthropic's Messages API, blocking JSON or SSE, routed to any model
//! of any vendor. Errors leave in Anthropic's shape (see `request_context`).

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_lab::sse;

use crate::error::ApiError;
use crate::http::anthropic::dialect::{self, StreamEncoder};
use crate::http::extract::Caller;
use crate::http::{AppState, read_body, request_id, served_headers, sse_response, upstream_clock};
use crate::relay::{ChatBody, Relayed, RequestInfo};

pub async fn messages(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let chat = dialect::parse(&body)?;
    let info = RequestInfo::new(
        request_id(&req),
        upstream_clock(&req),
        caller.0,
        chat.model.clone(),
        chat.stream,
        started,
    );
    let reply = state.relay.chat(info, &chat).await?;
    let mut res = match reply.body {
        ChatBody::Complete {
            raw: Some(bytes), ..
        } => HttpResponse::Ok()
            .content_type("application/json")
            .body(bytes),
        ChatBody::Complete { response, .. } => {
            HttpResponse::Ok().json(dialect::encode_response(&response))
        }
        ChatBody::Stream(items) => {
            let mut encoder = StreamEncoder::new(chat.model);
            sse_response(&req, items, move |item, out| match item {
                Relayed::Event { raw: Some(raw), .. } => {
                    let data = sse::Data::new(raw.data);
                    out.push(sse::Event::Data(match raw.event {
                        Some(name) => data.event(name),
                        None => data,
                    }));
                }
                Relayed::Event { raw: None, events } => {
                    for event in &events {
                        encoder.encode(event, out);
                    }
                }
                Relayed::Failed(error) => encoder.error(&error, out),
            })
        }
    };
    served_headers(&mut res, reply.served);
    Ok(res)
}
