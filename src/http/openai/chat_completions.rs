//! `POST /v1/chat/completions`: the OpenAI chat dialect on the shared chat handler.

use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_lab::sse;
use serde_json::Value;

use crate::domain::canonical::{ChatEvent, ChatRequest, ChatResponse};
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::chat::{ChatDialect, serve};
use crate::http::extract::Caller;
use crate::http::openai::dialect::{self, StreamEncoder};
use crate::http::openapi::responses::{ClientAuth, Upstream};
use crate::http::openapi::vendor::{ChatCompletion, ChatCompletionRequest};
use crate::relay::Relay;
use crate::relay::Relayed;

pub struct OpenAiChat;

/// An OpenAI chat completion, routed to the model's deployments (any vendor), blocking or
/// streamed.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "OpenAI",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion; with `stream: true`, server-sent events (`data: {chat.completion.chunk}` … `data: [DONE]`). `x-lowart-model`, `x-lowart-deployment` and `x-lowart-attempts` say who served it.",
            content((ChatCompletion = "application/json"), (String = "text/event-stream"))),
        ClientAuth,
        Upstream,
    )
)]
pub async fn chat_completions(
    state: web::Data<AppState>,
    relay: web::Data<Relay>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    serve::<OpenAiChat>(state, relay, caller, req, payload).await
}

/// A stream's encoder, and whether the client asked for the usage chunk.
pub struct Encoder {
    events: StreamEncoder,
    include_usage: bool,
}

impl ChatDialect for OpenAiChat {
    const JOB: crate::domain::jobs::JobKind = crate::domain::jobs::JobKind::ChatCompletion;

    const SESSION: crate::domain::mcp::SessionKind = crate::domain::mcp::SessionKind::OpenaiChat;

    type Encoder = Encoder;

    fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        dialect::parse(bytes)
    }

    fn encode_response(response: &ChatResponse, created: i64) -> Value {
        dialect::encode_response(response, created)
    }

    fn encoder(req: &ChatRequest, created: i64) -> Encoder {
        Encoder {
            events: StreamEncoder::new(req.model.clone(), created, req.include_usage),
            include_usage: req.include_usage,
        }
    }

    fn encode(encoder: &mut Encoder, item: Relayed, out: &mut Vec<sse::Event>) {
        match item {
            Relayed::Event {
                raw: Some(raw),
                events,
            } => {
                // The usage-only chunk was asked for by the gateway; the client sees it
                // only when it asked too.
                let usage_only = matches!(events.as_slice(), [ChatEvent::Usage(_)]);
                if encoder.include_usage || !usage_only {
                    out.push(sse::Event::Data(sse::Data::new(raw.data)));
                }
            }
            Relayed::Event { raw: None, events } => {
                for event in &events {
                    encoder.events.encode(event, out);
                }
            }
            Relayed::Failed(error) => encoder.events.error(&error, out),
        }
    }

    /// A chunk with no choices carrying the confirmation fields, before `[DONE]`.
    fn confirmation_event(response: &ChatResponse, created: i64, fields: &Value) -> sse::Event {
        let chunk = crate::http::tools::with_fields(
            serde_json::json!({"id": response.id, "object": "chat.completion.chunk",
                "created": created, "model": response.model, "choices": []}),
            fields,
        );
        sse::Event::Data(sse::Data::new(chunk.to_string()))
    }
}
