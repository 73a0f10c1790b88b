//! The chat handler, written once for every inbound dialect: read the body, parse it in
//! the dialect, run it through the relay, encode the answer (or each relayed stream
//! event) in the dialect. A dialect is a `ChatDialect`.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_lab::sse;
use serde_json::Value;

use crate::domain::canonical::{ChatRequest, ChatResponse};
use crate::error::ApiError;
use crate::http::extract::Caller;
use crate::http::jobs::{self, JobFields, submit};
use crate::http::{AppState, read_body, request_info, served_headers, sse_response};
use crate::relay::{ChatBody, Relay, Relayed};

/// An inbound chat dialect: how its requests parse and its answers encode.
pub trait ChatDialect: 'static {
    /// The kind of job this endpoint's `"async": true` makes.
    const JOB: crate::domain::jobs::JobKind;

    /// The kind of tool session this endpoint's tool loop stores.
    const SESSION: crate::domain::mcp::SessionKind;

    /// Encodes one relayed stream, from its first event to its end or error.
    type Encoder: 'static;

    fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError>;

    /// A complete canonical answer (`created`: Unix seconds of the request).
    fn encode_response(response: &ChatResponse, created: i64) -> Value;

    fn encoder(req: &ChatRequest, created: i64) -> Self::Encoder;

    /// Appends what `item` becomes in this dialect (when the upstream speaks it, `item`
    /// carries the upstream's own event).
    fn encode(encoder: &mut Self::Encoder, item: Relayed, out: &mut Vec<sse::Event>);

    /// The event that ends a streamed answer waiting for confirmation (before the
    /// stream's end), carrying `fields` (`status`, `session_id`, `pending_calls`).
    fn confirmation_event(response: &ChatResponse, created: i64, fields: &Value) -> sse::Event;
}

pub async fn serve<D: ChatDialect>(
    state: web::Data<AppState>,
    relay: web::Data<Relay>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let mut chat = D::parse(&body)?;
    // `async` and `webhook_url` are the gateway's: taken out before any vendor sees them.
    if chat.native.body.contains_key("async") || chat.native.body.contains_key("webhook_url") {
        let fields = JobFields::take(&mut chat.native.body)?;
        if fields.is_async {
            if chat.native.body.contains_key("mcp_servers") {
                return Err(ApiError::invalid(
                    "mcp_servers",
                    "an async job does not run MCP tools; send the request without `async`",
                ));
            }
            if chat.stream {
                return Err(ApiError::invalid(
                    "stream",
                    "an async job does not stream; follow it with `GET /v1/jobs/{id}/events`",
                ));
            }
            let job = submit(
                &state,
                &relay,
                &caller.0,
                D::JOB,
                chat.model.clone(),
                chat.native.body,
                fields.webhook_url,
            )
            .await?;
            return Ok(jobs::started(&job));
        }
    }
    // MCP tools named by the request or configured on the model: the tool loop.
    let named = crate::http::tools::take_mcp_servers(&mut chat.native.body)?;
    let configured = relay.mcp_servers_of(&chat.model);
    if !named.is_empty() || !configured.is_empty() {
        let servers: Vec<String> = named.into_iter().chain(configured).collect();
        let info = request_info(&req, caller, chat.model.clone(), chat.stream, started);
        return crate::http::tools::start_loop::<D>(&state, &relay, &req, info, chat, &servers)
            .await;
    }
    let chat = std::sync::Arc::new(chat);
    let info = request_info(&req, caller, chat.model.clone(), chat.stream, started);
    let created = info.created_at / 1000;
    let reply = relay.chat(info, &chat).await?;
    let mut res = match reply.body {
        ChatBody::Complete {
            raw: Some(bytes), ..
        } => HttpResponse::Ok()
            .content_type("application/json")
            .body(bytes),
        ChatBody::Complete { response, .. } => {
            HttpResponse::Ok().json(D::encode_response(&response, created))
        }
        ChatBody::Stream(items) => {
            let mut encoder = D::encoder(&chat, created);
            sse_response(&req, items, move |item, out| {
                D::encode(&mut encoder, item, out);
            })
        }
    };
    served_headers(&mut res, reply.served);
    Ok(res)
}
