//! MCP tools on the client API: a chat request that names `mcp_servers` (or whose model
//! is configured with them) runs the tool loop (`relay::tools`); an answer waiting for a
//! person is a normal completion with `finish_reason: "tool_calls"` plus `status:
//! "require_confirmation"`, `session_id` and `pending_calls`. `POST /v1/tools/confirm`
//! continues it; `GET /v1/tools/sessions` lists the caller's pending sessions.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::messages::{ListToolSessions, TakeToolSession, TakenSession};
use crate::domain::canonical::{ChatEvent, ChatRequest};
use crate::domain::mcp::{SessionKind, SessionView, ToolSession};
use crate::domain::now_ms;
use crate::error::{ApiError, ErrorKind};
use crate::http::anthropic::messages::AnthropicMessages;
use crate::http::chat::ChatDialect;
use crate::http::extract::Caller;
use crate::http::openai::chat_completions::OpenAiChat;
use crate::http::openapi::responses::{ClientAuth, JsonBody, NotFound, Upstream};
use crate::http::{AppState, read_json, served_headers, sse_response};
use crate::relay::tools::{
    Conversation, LoopEnd, LoopReply, StepInfo, ToolLoop, offer, offered_tools,
};
use crate::relay::{Relay, Relayed, RequestInfo};

/// Takes `mcp_servers` (names, or objects with a `name`) out of a chat body: the gateway's
/// field, never sent to a vendor.
pub fn take_mcp_servers(body: &mut Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "mcp_servers",
            "`mcp_servers` must be an array of MCP server names",
        )
    };
    match body.remove("mcp_servers") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= 64 => items
            .into_iter()
            .map(|item| match item {
                Value::String(name) => Ok(name),
                Value::Object(mut o) => match o.remove("name") {
                    Some(Value::String(name)) => Ok(name),
                    _ => Err(bad()),
                },
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn tool_loop<'a>(state: &'a AppState, relay: &'a Relay) -> ToolLoop<'a> {
    ToolLoop {
        relay,
        catalog: state.mcp_catalog.borrow().clone(),
        store: &state.store,
        bus: &state.bus,
        settings: &state.settings.mcp,
        metrics: &state.metrics,
    }
}

fn step_info(info: &RequestInfo) -> StepInfo {
    StepInfo {
        request_id: info.request_id.clone(),
        clock: info.clock.clone(),
        caller: info.caller.clone(),
    }
}

/// A chat request with MCP tools: offer them, run the loop, answer in the dialect.
pub async fn start_loop<D: ChatDialect>(
    state: &AppState,
    relay: &Relay,
    req: &HttpRequest,
    info: RequestInfo,
    chat: ChatRequest,
    servers: &[String],
) -> Result<HttpResponse, ApiError> {
    let tools = tool_loop(state, relay);
    let offered = offered_tools(&tools.catalog, servers)?;
    let mut body = chat.native.body.clone();
    offer(D::SESSION.dialect(), &mut body, &offered);
    let created = info.created_at / 1000;
    let conv = Conversation {
        kind: D::SESSION,
        parse: D::parse,
        body,
        model: chat.model.clone(),
        stream: chat.stream,
        step: 0,
    };
    let reply = tools.run(&step_info(&info), conv).await?;
    Ok(respond::<D>(req, reply, &chat, created))
}

/// The fields that say an answer waits for a person.
fn confirmation_fields(session: &ToolSession) -> Value {
    json!({
        "status": "require_confirmation",
        "session_id": session.id,
        "pending_calls": session.pending,
        "expires_at": session.expires_at,
    })
}

/// A loop's answer in the dialect `D`, blocking or (as `asked` wants) as a stream of the
/// answer; `created`: Unix seconds of the request.
fn respond<D: ChatDialect>(
    req: &HttpRequest,
    reply: LoopReply,
    asked: &ChatRequest,
    created: i64,
) -> HttpResponse {
    let LoopReply { end, served } = reply;
    let (response, fields) = match end {
        LoopEnd::Answer(response) => (response, None),
        LoopEnd::Confirm { response, session } => {
            let fields = confirmation_fields(&session);
            (response, Some(fields))
        }
    };
    let mut res = if asked.stream {
        let mut encoder = D::encoder(asked, created);
        let mut out = Vec::new();
        D::encode(
            &mut encoder,
            Relayed::Event {
                raw: None,
                events: response.events(),
            },
            &mut out,
        );
        if let Some(fields) = &fields {
            out.push(D::confirmation_event(&response, created, fields));
        }
        D::encode(
            &mut encoder,
            Relayed::Event {
                raw: None,
                events: vec![ChatEvent::Done],
            },
            &mut out,
        );
        let items = futures_util::StreamExt::boxed_local(futures_util::stream::iter(out));
        sse_response(req, items, |event, out| out.push(event))
    } else {
        let mut body = D::encode_response(&response, created);
        if let (Some(Value::Object(fields)), Value::Object(body)) = (fields, &mut body) {
            body.extend(fields);
        }
        HttpResponse::Ok().json(body)
    };
    served_headers(&mut res, served);
    res
}

/// `POST /v1/tools/confirm`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    pub session_id: String,
    /// The pending calls a person approved; the others are denied.
    #[serde(default)]
    pub approved_ids: Vec<String>,
    /// Answer as a stream (default: as the original request asked).
    pub stream: Option<bool>,
}

#[utoipa::path(
    post,
    path = "/v1/tools/confirm",
    tag = "Tools",
    description = "Confirms a tool session once: runs the approved calls (if their approval still holds: same arguments, same policy version), tells the model the others were denied, and continues the loop, answering in the original request's dialect, blocking or streamed. An `/mcp` session is marked approved for the MCP client's next identical call.",
    request_body = ConfirmBody,
    responses(
        (status = 200, description = "The completion (or `{session_id, status: \"approved\"}` for an `/mcp` session)"),
        (status = 409, description = "`session_already_confirmed`"),
        (status = 410, description = "`session_expired`"),
        ClientAuth,
        JsonBody,
        (status = 404, response = NotFound),
        Upstream,
    )
)]
pub async fn confirm(
    state: web::Data<AppState>,
    relay: web::Data<Relay>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body: ConfirmBody = read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    let taken = state
        .store
        .send(TakeToolSession {
            id: body.session_id.clone(),
            user_id: caller.0.user_id.clone(),
            approved_ids: body.approved_ids.clone(),
            now: now_ms(),
        })
        .timeout(ASK_TIMEOUT)
        .await??;
    let session = match taken {
        TakenSession::Taken(session) => session,
        TakenSession::NotFound => {
            return Err(ApiError::not_found(format!(
                "no tool session `{}`",
                body.session_id
            )));
        }
        TakenSession::AlreadyConfirmed => {
            return Err(ApiError::new(
                ErrorKind::SessionAlreadyConfirmed,
                "this tool session was confirmed already; a session is confirmed once",
            ));
        }
        TakenSession::Expired => {
            return Err(ApiError::new(
                ErrorKind::SessionExpired,
                "this tool session expired; send the request again",
            ));
        }
    };
    let tools = tool_loop(&state, &relay);
    if session.kind == SessionKind::Mcp {
        crate::relay::tools::announce(
            &state.bus,
            &session.user_id,
            json!({"type": "approval.resolved", "session_id": session.id,
                "approved_ids": body.approved_ids}),
        );
        return Ok(HttpResponse::Ok().json(json!({
            "session_id": session.id,
            "status": "approved",
            "approved_ids": body.approved_ids,
        })));
    }
    let stream = body.stream.unwrap_or(session.stream);
    let info = crate::http::request_info(&req, caller, session.model.clone(), stream, started);
    let created = info.created_at / 1000;
    match session.kind {
        SessionKind::AnthropicChat => {
            resume::<AnthropicMessages>(&req, &tools, &info, session, &body, stream, created).await
        }
        SessionKind::OpenaiChat | SessionKind::Mcp => {
            resume::<OpenAiChat>(&req, &tools, &info, session, &body, stream, created).await
        }
    }
}

async fn resume<D: ChatDialect>(
    req: &HttpRequest,
    tools: &ToolLoop<'_>,
    info: &RequestInfo,
    mut session: ToolSession,
    body: &ConfirmBody,
    stream: bool,
    created: i64,
) -> Result<HttpResponse, ApiError> {
    session.stream = stream;
    // The request as first asked (its model, its stream options), streamed as asked now.
    let bytes = serde_json::to_vec(&session.body).map_err(|_| ApiError::internal())?;
    let mut asked = D::parse(&bytes)?;
    asked.stream = stream;
    let reply = tools
        .resume(&step_info(info), session, D::parse, &body.approved_ids)
        .await?;
    Ok(respond::<D>(req, reply, &asked, created))
}

#[utoipa::path(
    get,
    path = "/v1/tools/sessions",
    tag = "Tools",
    description = "The caller's tool sessions waiting for confirmation, newest first.",
    responses(
        (status = 200, description = "`{data: [session]}`", body = Vec<SessionView>),
        ClientAuth,
    )
)]
pub async fn sessions(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let sessions = state
        .store
        .send(ListToolSessions {
            user_id: caller.0.user_id.clone(),
            now: now_ms(),
            limit: 100,
        })
        .timeout(ASK_TIMEOUT)
        .await??;
    let data: Vec<SessionView> = sessions.iter().map(SessionView::from).collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

/// Shared by both dialects' confirmation events.
pub fn with_fields(mut object: Value, fields: &Value) -> Value {
    if let (Value::Object(o), Value::Object(f)) = (&mut object, fields) {
        o.extend(f.clone());
    }
    object
}
