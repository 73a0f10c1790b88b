//! `POST /v1/messages`: the Anthropic Messages dialect on the shared chat handler. Errors
//! leave in Anthropic's shape (see `request_context`).

use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_lab::sse;
use serde_json::Value;

use crate::domain::canonical::{ChatRequest, ChatResponse};
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::anthropic::dialect::{self, StreamEncoder};
use crate::http::chat::{ChatDialect, serve};
use crate::http::extract::Caller;
use crate::http::openapi::schemas::AnthropicError;
use crate::http::openapi::vendor::{MessagesRequest, MessagesResponse};
use crate::relay::Relay;
use crate::relay::Relayed;

pub struct AnthropicMessages;

/// An Anthropic Messages request, routed to the model's deployments (any vendor), blocking
/// or streamed. Errors take Anthropic's shape.
#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "Anthropic",
    request_body = MessagesRequest,
    responses(
        (status = 200, description = "The message; with `stream: true`, Anthropic's server-sent events (`message_start`, `content_block_start`/`_delta`/`_stop`, `message_delta`, `message_stop`).",
            content((MessagesResponse = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "Malformed request (`invalid_request_error`)", body = AnthropicError),
        (status = 401, description = "Missing, unknown, revoked or expired key (`authentication_error`)", body = AnthropicError),
        (status = 403, description = "The key may not use this model (`permission_error`)", body = AnthropicError),
        (status = 404, description = "No such model (`not_found_error`)", body = AnthropicError),
        (status = 413, description = "Body too large (`request_too_large`)", body = AnthropicError),
        (status = 429, description = "Rate limited (`rate_limit_error`)", body = AnthropicError),
        (status = 500, description = "The gateway failed (`api_error`)", body = AnthropicError),
        (status = 502, description = "The upstream failed (`api_error`)", body = AnthropicError),
        (status = 503, description = "No healthy deployment or busy (`overloaded_error`)", body = AnthropicError),
        (status = 504, description = "The upstream timed out (`api_error`)", body = AnthropicError),
    )
)]
pub async fn messages(
    state: web::Data<AppState>,
    relay: web::Data<Relay>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    serve::<AnthropicMessages>(state, relay, caller, req, payload).await
}

impl ChatDialect for AnthropicMessages {
    const JOB: crate::domain::jobs::JobKind = crate::domain::jobs::JobKind::Message;

    const SESSION: crate::domain::mcp::SessionKind = crate::domain::mcp::SessionKind::AnthropicChat;

    type Encoder = StreamEncoder;

    fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        dialect::parse(bytes)
    }

    fn encode_response(response: &ChatResponse, _created: i64) -> Value {
        dialect::encode_response(response)
    }

    fn encoder(req: &ChatRequest, _created: i64) -> StreamEncoder {
        StreamEncoder::new(req.model.clone())
    }

    fn encode(encoder: &mut StreamEncoder, item: Relayed, out: &mut Vec<sse::Event>) {
        match item {
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
        }
    }

    /// A `message_delta` repeating the stop reason and output tokens, carrying the
    /// confirmation fields (SDKs read the delta and keep the message's figures).
    fn confirmation_event(response: &ChatResponse, _created: i64, fields: &Value) -> sse::Event {
        let output_tokens = response.usage.map_or(0, |u| u.completion);
        let delta = crate::http::tools::with_fields(
            serde_json::json!({"type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": output_tokens}}),
            fields,
        );
        sse::Event::Data(sse::Data::new(delta.to_string()).event("message_delta"))
    }
}
