//! The tool loop: a chat request offered MCP servers' tools runs here, step by step. Each
//! step is one chat call through the relay (routing, breakers, quotas and one usage row,
//! as any request); the model's calls are run (`auto`), refused (`block`) or held for a
//! person (`confirm`: the session is stored, announced on the bus, and the loop stops
//! until `POST /v1/tools/confirm`).
//!
//! The conversation is kept as the client's own body in its dialect (the offered tools
//! and each step's turns appended with the dialect's encoder) and parsed again for each
//! step, so a vendor that speaks the client's dialect gets every field the client sent.

use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use futures_util::future::join_all;
use serde_json::{Map, Value, json};

use super::{ChatBody, Relay, RequestInfo, ServedBy, UpstreamClock};
use crate::actors::bus::{BusActor, Publish};
use crate::actors::mcp::{McpCatalog, result_text};
use crate::actors::store::StoreActor;
use crate::actors::store::messages::{CreateToolSession, FinishToolSession};
use crate::config::McpSettings;
use crate::domain::bus::BusCaller;
use crate::domain::canonical::{
    ChatRequest, ChatResponse, Dialect, FinishReason, Message, Part, Role, Tool,
};
use crate::domain::mcp::{
    PendingCall, SessionKind, ToolInfo, ToolOutput, ToolPolicy, ToolSession, call_digest,
    parse_arguments, split_prefixed,
};
use crate::domain::records::{KeyGrant, Role as UserRole};
use crate::error::{ApiError, ErrorKind};
use crate::telemetry::metrics::Metrics;

/// Parses a body in the client's dialect.
pub type ParseFn = fn(&[u8]) -> Result<ChatRequest, ApiError>;

/// What the loop needs around it.
pub struct ToolLoop<'a> {
    pub relay: &'a Relay,
    pub catalog: Arc<McpCatalog>,
    pub store: &'a Addr<StoreActor>,
    pub bus: &'a Addr<BusActor>,
    pub settings: &'a McpSettings,
    pub metrics: &'a Metrics,
}

/// A conversation on its way through the loop.
pub struct Conversation {
    pub kind: SessionKind,
    pub parse: ParseFn,
    /// The client's body in its dialect: offered tools and every turn so far.
    pub body: Map<String, Value>,
    pub model: String,
    /// The client asked for a stream (the steps themselves do not stream).
    pub stream: bool,
    /// Model calls made so far.
    pub step: u32,
}

/// How a loop ended.
pub enum LoopEnd {
    /// The model's answer: final, or calling tools the client offered itself.
    Answer(ChatResponse),
    /// The model called `confirm` tools: the session waits for a person.
    Confirm {
        response: ChatResponse,
        session: Box<ToolSession>,
    },
}

pub struct LoopReply {
    pub end: LoopEnd,
    pub served: ServedBy,
}

/// The request's identity, for each step's usage row.
pub struct StepInfo {
    pub request_id: String,
    pub clock: UpstreamClock,
    pub caller: Arc<KeyGrant>,
}

impl SessionKind {
    pub fn dialect(self) -> Dialect {
        match self {
            SessionKind::AnthropicChat => Dialect::Anthropic,
            SessionKind::OpenaiChat | SessionKind::Mcp => Dialect::OpenAI,
        }
    }
}

/// The tools of `servers` (sorted, deduplicated), server by server, each server's tools by
/// name: a deterministic list, so vendors' prompt caches hit. An unknown server is a 400,
/// one that is not running a 503.
pub fn offered_tools(catalog: &McpCatalog, servers: &[String]) -> Result<Vec<ToolInfo>, ApiError> {
    let mut names: Vec<&String> = servers.iter().collect();
    names.sort();
    names.dedup();
    let mut tools = Vec::new();
    for name in names {
        let server = catalog.server(name).ok_or_else(|| {
            ApiError::invalid("mcp_servers", format!("there is no MCP server `{name}`"))
        })?;
        if server.handle.is_none() {
            return Err(ApiError::new(
                ErrorKind::McpServerUnavailable,
                format!(
                    "MCP server `{name}` is not running{}; retry shortly",
                    server
                        .error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            ));
        }
        tools.extend(server.tools.iter().cloned());
    }
    Ok(tools)
}

/// Adds `tools` to the body's `tools`, in the dialect's shape.
pub fn offer(dialect: Dialect, body: &mut Map<String, Value>, tools: &[ToolInfo]) {
    let canonical: Vec<Tool> = tools
        .iter()
        .map(|t| Tool {
            name: t.prefixed.clone(),
            description: t.description.clone(),
            parameters: t.input_schema.clone(),
        })
        .collect();
    let encoded = match dialect {
        Dialect::OpenAI => crate::providers::openai::tools_json(&canonical),
        Dialect::Anthropic => crate::providers::anthropic::tools_json(&canonical),
    };
    let list = body
        .entry("tools")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        list.extend(encoded);
    } else {
        *list = Value::Array(encoded);
    }
}

/// Appends the assistant's turn (its text and calls) and the calls' results.
fn append_turn(
    dialect: Dialect,
    body: &mut Map<String, Value>,
    assistant: &[Part],
    outputs: &[ToolOutput],
) -> Result<(), ApiError> {
    let mut turn = Vec::new();
    if !assistant.is_empty() {
        turn.push(Message {
            role: Role::Assistant,
            content: assistant.to_vec(),
        });
    }
    if !outputs.is_empty() {
        turn.push(Message {
            role: Role::Tool,
            content: outputs
                .iter()
                .map(|o| Part::ToolResult {
                    call_id: o.call_id.clone(),
                    content: o.content.clone(),
                    is_error: o.is_error,
                })
                .collect(),
        });
    }
    let encoded = match dialect {
        Dialect::OpenAI => crate::providers::openai::messages_json(&turn),
        Dialect::Anthropic => crate::providers::anthropic::turns(&turn)
            .map_err(|f| ApiError::invalid("messages", f.detail))?,
    };
    match body.get_mut("messages") {
        Some(Value::Array(messages)) => messages.extend(encoded),
        _ => return Err(ApiError::invalid("messages", "`messages` must be an array")),
    }
    Ok(())
}

/// One call the model made, as the loop sees it.
struct ModelCall {
    id: String,
    name: String,
    arguments: String,
}

fn calls_of(response: &ChatResponse) -> Vec<ModelCall> {
    response
        .content
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(ModelCall {
                id: id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            }),
            _ => None,
        })
        .collect()
}

impl ToolLoop<'_> {
    /// Runs the loop from `conv` until an answer, a confirmation, or the step limit.
    pub async fn run(
        &self,
        info: &StepInfo,
        mut conv: Conversation,
    ) -> Result<LoopReply, ApiError> {
        let dialect = conv.kind.dialect();
        // The offered tools do not change between steps (only turns are appended).
        let offered: Vec<String> = self.offered_names(&conv.body, dialect);
        loop {
            if conv.step >= self.settings.max_steps {
                return Err(ApiError::new(
                    ErrorKind::ToolStepLimit,
                    format!(
                        "the model was still calling tools after {} steps (mcp.max_steps)",
                        conv.step
                    ),
                ));
            }
            let (response, served) = self.step(info, &mut conv).await?;
            let calls = calls_of(&response);
            if response.finish != Some(FinishReason::ToolCalls) || calls.is_empty() {
                return Ok(LoopReply {
                    end: LoopEnd::Answer(response),
                    served,
                });
            }
            // A call of a tool the client offered itself goes back to the client.
            if calls.iter().any(|c| !offered.contains(&c.name)) {
                return Ok(LoopReply {
                    end: LoopEnd::Answer(response),
                    served,
                });
            }
            // Results go back in the order of the calls.
            let order: Vec<String> = calls.iter().map(|c| c.id.clone()).collect();
            let mut outputs = Vec::new();
            let mut pending = Vec::new();
            let mut to_run = Vec::new();
            for call in calls {
                let Some((server, tool)) = split_prefixed(&call.name) else {
                    continue;
                };
                let arguments = match parse_arguments(&call.arguments) {
                    Ok(a) => a,
                    Err(why) => {
                        outputs.push(ToolOutput {
                            call_id: call.id,
                            content: format!("the call was not run: {why}"),
                            is_error: true,
                        });
                        continue;
                    }
                };
                let (policy, version) = self
                    .catalog
                    .policy(server, tool)
                    .unwrap_or((ToolPolicy::Block, 0));
                match policy {
                    ToolPolicy::Auto => {
                        to_run.push((call.id, server.to_string(), tool.to_string(), arguments))
                    }
                    ToolPolicy::Block => outputs.push(refused(call.id)),
                    ToolPolicy::Confirm => {
                        let arguments = Value::Object(arguments);
                        pending.push(PendingCall {
                            digest: call_digest(&call.name, &arguments),
                            id: call.id,
                            server: server.to_string(),
                            tool: tool.to_string(),
                            name: call.name,
                            arguments,
                            policy_version: version,
                        });
                    }
                }
            }
            outputs.extend(self.run_calls(to_run).await);
            let assistant: Vec<Part> = response.content.clone();
            if !pending.is_empty() {
                append_turn(dialect, &mut conv.body, &assistant, &[])?;
                let session = Box::new(self.hold(info, &conv, outputs, pending).await?);
                return Ok(LoopReply {
                    end: LoopEnd::Confirm { response, session },
                    served,
                });
            }
            outputs.sort_by_key(|o| order.iter().position(|id| *id == o.call_id));
            append_turn(dialect, &mut conv.body, &assistant, &outputs)?;
        }
    }

    /// Continues a confirmed session: runs the approved calls whose approval still holds
    /// (same arguments, same policy version, policy not `block`), tells the model the
    /// others were denied, and runs the loop on.
    pub async fn resume(
        &self,
        info: &StepInfo,
        session: ToolSession,
        parse: ParseFn,
        approved: &[String],
    ) -> Result<LoopReply, ApiError> {
        let mut outputs = session.outputs.clone();
        let mut to_run = Vec::new();
        for call in &session.pending {
            if !approved.contains(&call.id) {
                outputs.push(ToolOutput {
                    call_id: call.id.clone(),
                    content: "a person denied this tool call; it was not run".into(),
                    is_error: true,
                });
                continue;
            }
            match approval_holds(&self.catalog, call) {
                Ok(()) => {
                    let arguments = match &call.arguments {
                        Value::Object(map) => map.clone(),
                        _ => Map::new(),
                    };
                    to_run.push((
                        call.id.clone(),
                        call.server.clone(),
                        call.tool.clone(),
                        arguments,
                    ));
                }
                Err(why) => outputs.push(ToolOutput {
                    call_id: call.id.clone(),
                    content: format!("the approval no longer holds ({why}); the call was not run"),
                    is_error: true,
                }),
            }
        }
        outputs.extend(self.run_calls(to_run).await);
        let order: Vec<&String> = session.pending.iter().map(|c| &c.id).collect();
        let ran_before: Vec<String> = session.outputs.iter().map(|o| o.call_id.clone()).collect();
        outputs.sort_by_key(|o| {
            (
                !ran_before.contains(&o.call_id),
                order.iter().position(|id| **id == o.call_id),
            )
        });
        let Value::Object(mut body) = session.body.clone() else {
            return Err(ApiError::internal());
        };
        append_turn(session.kind.dialect(), &mut body, &[], &outputs)?;
        let _ = self
            .store
            .send(FinishToolSession {
                id: session.id.clone(),
            })
            .await;
        announce(
            self.bus,
            &session.user_id,
            json!({"type": "approval.resolved", "session_id": session.id, "approved_ids": approved}),
        );
        let conv = Conversation {
            kind: session.kind,
            parse,
            body,
            model: session.model.clone(),
            stream: session.stream,
            step: session.step,
        };
        self.run(info, conv).await
    }

    /// One model call: the body parsed in its dialect, asked without a stream.
    async fn step(
        &self,
        info: &StepInfo,
        conv: &mut Conversation,
    ) -> Result<(ChatResponse, ServedBy), ApiError> {
        // Each step is asked whole; the client's own stream settings stay in the body.
        let mut body = conv.body.clone();
        body.insert("stream".into(), Value::Bool(false));
        body.remove("stream_options");
        let bytes = serde_json::to_vec(&body).map_err(|_| ApiError::internal())?;
        let req = Arc::new((conv.parse)(&bytes)?);
        let request_id = if conv.step == 0 {
            info.request_id.clone()
        } else {
            format!("{}.{}", info.request_id, conv.step)
        };
        conv.step += 1;
        let step_info = RequestInfo::new(
            request_id,
            info.clock.clone(),
            info.caller.clone(),
            conv.model.clone(),
            false,
            Instant::now(),
        );
        let reply = self.relay.chat(step_info, &req).await?;
        match reply.body {
            ChatBody::Complete { response, .. } => Ok((response, reply.served)),
            ChatBody::Stream(_) => Err(ApiError::internal()),
        }
    }

    fn offered_names(&self, body: &Map<String, Value>, dialect: Dialect) -> Vec<String> {
        let Some(Value::Array(tools)) = body.get("tools") else {
            return Vec::new();
        };
        tools
            .iter()
            .filter_map(|t| match dialect {
                Dialect::OpenAI => t["function"]["name"].as_str(),
                Dialect::Anthropic => t["name"].as_str(),
            })
            .filter(|name| {
                split_prefixed(name).is_some_and(|(server, tool)| {
                    self.catalog
                        .server(server)
                        .is_some_and(|s| s.tools.iter().any(|t| t.name == tool))
                })
            })
            .map(str::to_string)
            .collect()
    }

    /// Runs `auto` calls side by side (each server bounds its own concurrency); a failure
    /// is the call's result, marked as an error, for the model to read.
    async fn run_calls(
        &self,
        calls: Vec<(String, String, String, Map<String, Value>)>,
    ) -> Vec<ToolOutput> {
        let max = self.settings.max_result_bytes;
        join_all(
            calls
                .into_iter()
                .map(|(id, server, tool, arguments)| async move {
                    match self
                        .catalog
                        .call(&server, &tool, arguments, &id, self.metrics)
                        .await
                    {
                        Ok(result) => ToolOutput {
                            content: result_text(&result, max),
                            is_error: result.is_error == Some(true),
                            call_id: id,
                        },
                        Err(e) => ToolOutput {
                            call_id: id,
                            content: e.to_string(),
                            is_error: true,
                        },
                    }
                }),
        )
        .await
    }

    /// Stores the session that waits for a person and announces it on the bus.
    async fn hold(
        &self,
        info: &StepInfo,
        conv: &Conversation,
        outputs: Vec<ToolOutput>,
        pending: Vec<PendingCall>,
    ) -> Result<ToolSession, ApiError> {
        let mut session = ToolSession::waiting(
            &info.caller,
            conv.kind,
            pending,
            self.settings.session_ttl_secs,
        );
        session.model.clone_from(&conv.model);
        session.stream = conv.stream;
        session.step = conv.step;
        session.body = Value::Object(conv.body.clone());
        session.outputs = outputs;
        hold_session(self.store, self.bus, &session).await?;
        Ok(session)
    }
}

/// The bus message that says a session waits.
pub fn pending_notice(session: &ToolSession) -> Value {
    json!({
        "type": "approval.pending",
        "session_id": session.id,
        "kind": session.kind,
        "model": session.model,
        "pending_calls": session.pending,
        "expires_at": session.expires_at,
    })
}

/// Publishes on `approvals.<user_id>` as the gateway (best effort: the session is
/// stored either way; `/mcp` calls this from tasks outside actix, so no reply is awaited).
pub fn announce(bus: &Addr<BusActor>, user_id: &str, payload: Value) {
    bus.do_send(Publish {
        caller: BusCaller {
            user_id: "lowart".into(),
            role: UserRole::Admin,
            topics: None,
        },
        topic: format!("approvals.{user_id}"),
        payload,
        reply_to: None,
    });
}

/// Stores a session that waits for a person and announces it on `approvals.<user_id>`.
pub async fn hold_session(
    store: &Addr<StoreActor>,
    bus: &Addr<BusActor>,
    session: &ToolSession,
) -> Result<(), ApiError> {
    store
        .send(CreateToolSession(session.clone()))
        .await
        .map_err(|_| ApiError::unavailable())??;
    announce(bus, &session.user_id, pending_notice(session));
    Ok(())
}

/// Whether an approval given for `call` still holds: the server still has that tool under
/// the same policy version, and its policy is not `block`.
pub fn approval_holds(catalog: &McpCatalog, call: &PendingCall) -> Result<(), &'static str> {
    match catalog.policy(&call.server, &call.tool) {
        None => Err("the server is gone"),
        Some((_, version)) if version != call.policy_version => Err("the tool's policy changed"),
        Some((ToolPolicy::Block, _)) => Err("the tool is blocked"),
        Some(_) if call_digest(&call.name, &call.arguments) != call.digest => {
            Err("the arguments changed")
        }
        Some(_) => Ok(()),
    }
}

fn refused(call_id: String) -> ToolOutput {
    ToolOutput {
        call_id,
        content: "this tool is blocked by the gateway's policy; the call was refused".into(),
        is_error: true,
    }
}
