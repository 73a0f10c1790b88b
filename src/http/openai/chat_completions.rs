//! `POST /v1/chat/completions`: blocking JSON or SSE, in the OpenAI dialect.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;
use crate::http::extract::Caller;
use crate::http::openai::dialect::{self, StreamEncoder};
use crate::http::{AppState, read_body, request_id, served_headers, sse_response, upstream_clock};
use crate::relay::{ChatBody, Relayed, RequestInfo};

pub async fn chat_completions(
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
    let created = info.created_at / 1000;
    let reply = state.relay.chat(info, &chat).await?;
    let mut res = match reply.body {
        ChatBody::Complete {
            raw: Some(bytes), ..
        } => HttpResponse::Ok()
            .content_type("application/json")
            .body(bytes),
        ChatBody::Complete { response, .. } => {
            HttpResponse::Ok().json(dialect::encode_response(&response, created))
        }
        ChatBody::Stream(items) => {
            let include_usage = chat.include_usage;
            let mut encoder = StreamEncoder::new(chat.model, created, include_usage);
            sse_response(&req, items, move |item, out| match item {
                Relayed::Event {
                    raw: Some(raw),
                    events,
                } => {
                    // The upstream's usage-only chunk is the gateway's; the client sees it
                    // only when it asked.
                    let usage_only = matches!(
                        events.as_slice(),
                        [crate::domain::canonical::ChatEvent::Usage(_)]
                    );
                    if include_usage || !usage_only {
                        out.push(actix_web_lab::sse::Event::Data(
                            actix_web_lab::sse::Data::new(raw.data),
                        ));
                    }
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
