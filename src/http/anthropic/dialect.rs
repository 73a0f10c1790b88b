//! The Anthropic Messages dialect at the gateway's edge: a client's body parsed into the
//! canonical request (the body itself is kept as `native`, so an Anthropic vendor gets it
//! untouched but for the model), and canonical answers, streams and errors written back
//! in Anthropic's shapes. Pure: no I/O.

use actix_web_lab::sse;
use serde_json::{Map, Value, json};

use crate::domain::canonical::{
    self, ChatEvent, ChatRequest, ChatResponse, Dialect, FinishReason, ImageSource, Message,
    Native, Part, Role, Tool, ToolChoice,
};
use crate::domain::usage::TokenUsage;
use crate::error::ApiError;

/// Parses and validates a Messages API body.
pub fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let body = crate::http::json_object(bytes)?;
    let model = canonical::model_name(body.get("model"))?;
    let max_tokens = match body.get("max_tokens") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("max_tokens", "`max_tokens` is required"));
        }
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::invalid(
                    "max_tokens",
                    "`max_tokens` must be an integer from 1 to 4294967295",
                )
            })?,
    };
    let mut messages = Vec::new();
    if let Some(system) = system(body.get("system"))? {
        messages.push(system);
    }
    let turns = match body.get("messages") {
        Some(Value::Array(turns)) if !turns.is_empty() => turns,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages", "`messages` is required"));
        }
        Some(_) => {
            return Err(ApiError::invalid("messages", "`messages` must be an array"));
        }
    };
    for (i, turn) in turns.iter().enumerate() {
        parse_turn(i, turn, &mut messages)?;
    }
    let tools = tools(body.get("tools"))?;
    let tool_choice = tool_choice(body.get("tool_choice"))?;
    let temperature = number(&body, "temperature")?;
    let top_p = number(&body, "top_p")?;
    let stop = match body.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(
                        format!("stop_sequences[{i}]"),
                        "each stop sequence must be a string",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop_sequences",
                "`stop_sequences` must be an array of strings",
            ));
        }
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream", "`stream` must be a boolean")),
    };
    Ok(ChatRequest {
        model,
        messages,
        tools,
        tool_choice,
        max_tokens: Some(max_tokens),
        temperature,
        top_p,
        stop,
        stream,
        include_usage: true,
        native: Native {
            dialect: Dialect::Anthropic,
            body,
        },
    })
}

fn number(body: &Map<String, Value>, field: &str) -> Result<Option<f64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be a number"))),
    }
}

/// A required string field of `value`; `param` names it in the error.
fn string<'a>(value: &'a Value, field: &str, param: &str) -> Result<&'a str, ApiError> {
    value
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(param, format!("`{param}` must be a string")))
}

/// `system`: a string or an array of text blocks, as one leading System message.
fn system(system: Option<&Value>) -> Result<Option<Message>, ApiError> {
    let parts = match system {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![Part::Text(s.clone())],
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                let param = format!("system[{i}]");
                if !block.is_object() {
                    return Err(ApiError::invalid(
                        param,
                        "each system block must be an object",
                    ));
                }
                if block.get("type").and_then(Value::as_str) == Some("text") {
                    parts.push(Part::Text(
                        string(block, "text", &format!("{param}.text"))?.to_string(),
                    ));
                }
            }
            parts
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "system",
                "`system` must be a string or an array of text blocks",
            ));
        }
    };
    Ok((!parts.is_empty()).then_some(Message {
        role: Role::System,
        content: parts,
    }))
}

/// One turn of `messages`, appended to `out`. In a user turn, `tool_result` blocks become
/// `Role::Tool` messages and the other blocks `Role::User` ones, in the order they came.
fn parse_turn(i: usize, turn: &Value, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let param = format!("messages[{i}]");
    if !turn.is_object() {
        return Err(ApiError::invalid(param, "each message must be an object"));
    }
    let role = match turn.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        _ => {
            return Err(ApiError::invalid(
                format!("{param}.role"),
                "`role` must be \"user\" or \"assistant\"",
            ));
        }
    };
    let content_param = format!("{param}.content");
    let blocks = match turn.get("content") {
        Some(Value::String(s)) => {
            out.push(Message {
                role,
                content: vec![Part::Text(s.clone())],
            });
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(ApiError::invalid(
                content_param,
                "`content` must be a string or an array of content blocks",
            ));
        }
    };
    let first = out.len();
    for (j, block) in blocks.iter().enumerate() {
        let Some(part) = content_block(block, &format!("{content_param}[{j}]"))? else {
            continue;
        };
        let placed = match (role, &part) {
            (Role::User, Part::ToolResult { .. }) => Role::Tool,
            (Role::User, Part::Text(_) | Part::Image(_)) => Role::User,
            (Role::Assistant, Part::Text(_) | Part::ToolCall { .. }) => Role::Assistant,
            // A call in a user turn, a result or an image in an assistant turn: not
            // something Anthropic accepts; left to the vendor (it has the native body).
            _ => continue,
        };
        let in_turn = out.len() > first;
        match out.last_mut() {
            Some(last) if in_turn && last.role == placed => last.content.push(part),
            _ => out.push(Message {
                role: placed,
                content: vec![part],
            }),
        }
    }
    Ok(())
}

/// One content block; `None` for the kinds the canonical model does not carry
/// (`thinking`, `document`, …).
fn content_block(block: &Value, param: &str) -> Result<Option<Part>, ApiError> {
    let Some(kind) = block.get("type").and_then(Value::as_str) else {
        return Err(ApiError::invalid(
            param,
            "each content block must be an object with a string `type`",
        ));
    };
    let part = match kind {
        "text" => Part::Text(string(block, "text", &format!("{param}.text"))?.to_string()),
        "image" => {
            let source = block
                .get("source")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("{param}.source"),
                        "an image block needs a `source` object",
                    )
                })?;
            let source_param = format!("{param}.source");
            match source.get("type").and_then(Value::as_str) {
                Some("base64") => Part::Image(ImageSource::Base64 {
                    media_type: string(
                        source,
                        "media_type",
                        &format!("{source_param}.media_type"),
                    )?
                    .to_string(),
                    data: string(source, "data", &format!("{source_param}.data"))?.to_string(),
                }),
                Some("url") => Part::Image(ImageSource::Url(
                    string(source, "url", &format!("{source_param}.url"))?.to_string(),
                )),
                // `file` and later kinds: only an Anthropic vendor can use them.
                Some(_) => return Ok(None),
                None => {
                    return Err(ApiError::invalid(
                        format!("{source_param}.type"),
                        "`source.type` must be a string",
                    ));
                }
            }
        }
        "tool_use" => Part::ToolCall {
            id: string(block, "id", &format!("{param}.id"))?.to_string(),
            name: string(block, "name", &format!("{param}.name"))?.to_string(),
            arguments: block
                .get("input")
                .filter(|i| !i.is_null())
                .map_or_else(|| "{}".to_string(), Value::to_string),
        },
        "tool_result" => {
            let content = match block.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(items)) => {
                    let mut texts = Vec::new();
                    for (k, item) in items.iter().enumerate() {
                        if item.get("type").and_then(Value::as_str) == Some("text") {
                            texts.push(string(
                                item,
                                "text",
                                &format!("{param}.content[{k}].text"),
                            )?);
                        }
                    }
                    texts.join("\n")
                }
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("{param}.content"),
                        "a tool result's `content` must be a string or an array of blocks",
                    ));
                }
            };
            let is_error = match block.get("is_error") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("{param}.is_error"),
                        "`is_error` must be a boolean",
                    ));
                }
            };
            Part::ToolResult {
                call_id: string(block, "tool_use_id", &format!("{param}.tool_use_id"))?.to_string(),
                content,
                is_error,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(part))
}

/// `tools`: the client's own tools. Anthropic's server tools (a `type` other than
/// `custom`, such as `web_search_20250305`) run at Anthropic only and are not carried.
fn tools(tools: Option<&Value>) -> Result<Vec<Tool>, ApiError> {
    let items = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be an array")),
    };
    let mut tools = Vec::new();
    for (i, tool) in items.iter().enumerate() {
        let param = format!("tools[{i}]");
        if !tool.is_object() {
            return Err(ApiError::invalid(param, "each tool must be an object"));
        }
        if tool
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "custom")
        {
            continue;
        }
        let name = string(tool, "name", &format!("{param}.name"))?;
        if name.is_empty() {
            return Err(ApiError::invalid(
                format!("{param}.name"),
                "a tool's `name` must not be empty",
            ));
        }
        let description = match tool.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{param}.description"),
                    "`description` must be a string",
                ));
            }
        };
        let parameters = match tool.get("input_schema") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(schema @ Value::Object(_)) => schema.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{param}.input_schema"),
                    "`input_schema` must be an object",
                ));
            }
        };
        tools.push(Tool {
            name: name.to_string(),
            description,
            parameters,
        });
    }
    Ok(tools)
}

fn tool_choice(choice: Option<&Value>) -> Result<Option<ToolChoice>, ApiError> {
    let choice = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(choice @ Value::Object(_)) => choice,
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` must be an object",
            ));
        }
    };
    Ok(Some(match choice.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => ToolChoice::Tool(string(choice, "name", "tool_choice.name")?.to_string()),
        _ => {
            return Err(ApiError::invalid(
                "tool_choice.type",
                "`tool_choice.type` must be one of \"auto\", \"any\", \"tool\", \"none\"",
            ));
        }
    }))
}

/// An Anthropic message id: the vendor's own when it is one, else prefixed.
fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_string()
    } else if id.is_empty() {
        format!("msg_{}", uuid::Uuid::new_v4().simple())
    } else {
        format!("msg_{}", id.trim_start_matches("chatcmpl-"))
    }
}

/// A tool call's arguments as the `input` object (`{}` when they are not JSON).
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// Anthropic's `usage`: `input_tokens` excludes cache reads and writes, which are
/// reported apart.
fn usage_json(usage: Option<&TokenUsage>, always_input: bool) -> Map<String, Value> {
    let mut out = Map::new();
    match usage {
        Some(u) => {
            let cached = u
                .cache_read
                .unwrap_or(0)
                .saturating_add(u.cache_write.unwrap_or(0));
            out.insert(
                "input_tokens".into(),
                u.prompt.saturating_sub(cached).max(0).into(),
            );
            if let Some(n) = u.cache_read {
                out.insert("cache_read_input_tokens".into(), n.into());
            }
            if let Some(n) = u.cache_write {
                out.insert("cache_creation_input_tokens".into(), n.into());
            }
            out.insert("output_tokens".into(), u.completion.max(0).into());
        }
        None => {
            if always_input {
                out.insert("input_tokens".into(), 0.into());
            }
            out.insert("output_tokens".into(), 0.into());
        }
    }
    out
}

/// A blocking answer as a Messages API response.
pub fn encode_response(resp: &ChatResponse) -> Value {
    let content: Vec<Value> = resp
        .content
        .iter()
        .filter_map(|part| match part {
            Part::Text(t) if !t.is_empty() => Some(json!({"type": "text", "text": t})),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(json!({
                "type": "tool_use",
                "id": id,
                "name": name,
                "input": tool_input(arguments),
            })),
            _ => None,
        })
        .collect();
    json!({
        "id": message_id(&resp.id),
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": resp.finish.map_or("end_turn", FinishReason::anthropic),
        "stop_sequence": null,
        "usage": usage_json(resp.usage.as_ref(), true),
    })
}

/// The Anthropic error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An error in Anthropic's shape: `{"type":"error","error":{"type","message"}}`.
pub fn error_body(err: &ApiError) -> Value {
    json!({
        "type": "error",
        "error": {
            "type": error_type(err.kind.status().as_u16()),
            "message": err.message,
        },
    })
}

/// The content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(usize),
    /// Tool call `tool` in content block `block`.
    Tool {
        tool: usize,
        block: usize,
    },
}

/// Writes a canonical stream as Anthropic's events: `message_start`, then per content
/// block `content_block_start`, deltas and `content_block_stop`, then `message_delta`
/// (stop reason and usage) and `message_stop`. `message_delta` waits for `Done`, since
/// OpenAI upstreams send usage after the finish reason.
#[derive(Debug)]
pub struct StreamEncoder {
    fallback_model: String,
    started: bool,
    /// `message_stop` or an error went out: nothing more is written.
    ended: bool,
    next_block: usize,
    open: Option<Open>,
    stop_reason: Option<FinishReason>,
    usage: Option<TokenUsage>,
}

/// One event before it becomes SSE: its name and data.
type Frame = (&'static str, Value);

impl StreamEncoder {
    pub fn new(fallback_model: String) -> Self {
        Self {
            fallback_model,
            started: false,
            ended: false,
            next_block: 0,
            open: None,
            stop_reason: None,
            usage: None,
        }
    }

    /// Appends the Anthropic events for `event` to `out`.
    pub fn encode(&mut self, event: &ChatEvent, out: &mut Vec<sse::Event>) {
        let mut frames = Vec::new();
        self.frames(event, &mut frames);
        out.extend(frames.into_iter().map(to_sse));
    }

    /// Appends an `error` event for `err`; the stream ends there.
    pub fn error(&mut self, err: &ApiError, out: &mut Vec<sse::Event>) {
        if let Some(frame) = self.error_frame(err) {
            out.push(to_sse(frame));
        }
    }

    fn error_frame(&mut self, err: &ApiError) -> Option<Frame> {
        if self.ended {
            return None;
        }
        self.ended = true;
        Some(("error", error_body(err)))
    }

    fn frames(&mut self, event: &ChatEvent, out: &mut Vec<Frame>) {
        if self.ended {
            return;
        }
        match event {
            ChatEvent::Start { id, model } => self.start(id, model, out),
            ChatEvent::Text(text) => {
                if text.is_empty() {
                    return;
                }
                self.start("", "", out);
                let index = match self.open {
                    Some(Open::Text(index)) => index,
                    _ => {
                        self.close(out);
                        let index = self.open_block(json!({"type": "text", "text": ""}), out);
                        self.open = Some(Open::Text(index));
                        index
                    }
                };
                out.push((
                    "content_block_delta",
                    json!({
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": text},
                    }),
                ));
            }
            ChatEvent::ToolCallStart { index, id, name } => {
                self.start("", "", out);
                self.close(out);
                let block = self.open_block(
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
                self.open = Some(Open::Tool {
                    tool: *index,
                    block,
                });
            }
            ChatEvent::ToolCallArguments { index, delta } => {
                // Anthropic streams one block at a time: arguments of a call whose block
                // is closed cannot be written any more.
                if let Some(Open::Tool { tool, block }) = self.open
                    && tool == *index
                    && !delta.is_empty()
                {
                    out.push((
                        "content_block_delta",
                        json!({
                            "type": "content_block_delta",
                            "index": block,
                            "delta": {"type": "input_json_delta", "partial_json": delta},
                        }),
                    ));
                }
            }
            ChatEvent::Finish(reason) => {
                self.close(out);
                self.stop_reason = Some(*reason);
            }
            ChatEvent::Usage(usage) => self.usage = Some(*usage),
            ChatEvent::Done => {
                self.start("", "", out);
                self.close(out);
                out.push((
                    "message_delta",
                    json!({
                        "type": "message_delta",
                        "delta": {
                            "stop_reason": self.stop_reason.map_or("end_turn", FinishReason::anthropic),
                            "stop_sequence": null,
                        },
                        "usage": usage_json(self.usage.as_ref(), false),
                    }),
                ));
                out.push(("message_stop", json!({"type": "message_stop"})));
                self.ended = true;
            }
        }
    }

    /// `message_start`, once.
    fn start(&mut self, id: &str, model: &str, out: &mut Vec<Frame>) {
        if self.started {
            return;
        }
        self.started = true;
        let model = if model.is_empty() {
            self.fallback_model.as_str()
        } else {
            model
        };
        let input = self.usage.as_ref().map_or(0, |u| {
            let cached = u
                .cache_read
                .unwrap_or(0)
                .saturating_add(u.cache_write.unwrap_or(0));
            u.prompt.saturating_sub(cached).max(0)
        });
        out.push((
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": message_id(id),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": input, "output_tokens": 0},
                },
            }),
        ));
    }

    fn open_block(&mut self, content_block: Value, out: &mut Vec<Frame>) -> usize {
        let index = self.next_block;
        self.next_block += 1;
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        ));
        index
    }

    fn close(&mut self, out: &mut Vec<Frame>) {
        let index = match self.open.take() {
            Some(Open::Text(index) | Open::Tool { block: index, .. }) => index,
            None => return,
        };
        out.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
}

fn to_sse((name, data): Frame) -> sse::Event {
    sse::Data::new(data.to_string()).event(name).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn parse_json(body: Value) -> Result<ChatRequest, ApiError> {
        parse(body.to_string().as_bytes())
    }

    fn param_of(body: Value) -> Option<String> {
        parse_json(body).unwrap_err().param
    }

    fn text(t: &str) -> Part {
        Part::Text(t.into())
    }

    /// Runs `events` through a fresh encoder and returns its frames.
    fn encode_all(events: &[ChatEvent]) -> Vec<Frame> {
        let mut encoder = StreamEncoder::new("public-model".into());
        let mut frames = Vec::new();
        for event in events {
            encoder.frames(event, &mut frames);
        }
        frames
    }

    fn names(frames: &[Frame]) -> Vec<&'static str> {
        frames.iter().map(|(name, _)| *name).collect()
    }

    fn usage() -> TokenUsage {
        TokenUsage {
            prompt: 130,
            completion: 15,
            total: 145,
            cache_read: Some(100),
            cache_write: Some(20),
        }
    }

    #[test]
    fn the_documented_request_parses() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "You are a helpful assistant.",
            "messages": [
                {"role": "user", "content": "Hello, Claude"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                    {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
                    {"type": "text", "text": "What is in these images?"}
                ]}
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["\n\nHuman:"],
            "metadata": {"user_id": "u-1"},
            "stream": true
        });
        let req = parse_json(body.clone()).unwrap();
        assert_eq!(req.model, "claude-sonnet-4-5");
        assert_eq!(req.max_tokens, Some(1024));
        assert_eq!(req.temperature, Some(0.2));
        assert_eq!(req.top_p, Some(0.9));
        assert_eq!(req.stop, vec!["\n\nHuman:".to_string()]);
        assert!(req.stream && req.include_usage);
        assert_eq!(req.native.dialect, Dialect::Anthropic);
        assert_eq!(Value::Object(req.native.body.clone()), body);
        assert_eq!(
            req.messages,
            vec![
                Message {
                    role: Role::System,
                    content: vec![text("You are a helpful assistant.")]
                },
                Message {
                    role: Role::User,
                    content: vec![text("Hello, Claude")]
                },
                Message {
                    role: Role::Assistant,
                    content: vec![text("Hello!")]
                },
                Message {
                    role: Role::User,
                    content: vec![
                        Part::Image(ImageSource::Base64 {
                            media_type: "image/jpeg".into(),
                            data: "/9j/4AAQ".into()
                        }),
                        Part::Image(ImageSource::Url("https://example.com/a.png".into())),
                        text("What is in these images?"),
                    ]
                },
            ]
        );
        assert!(req.tools.is_empty() && req.tool_choice.is_none());
    }

    #[test]
    fn a_tool_conversation_parses_with_results_in_place() {
        let req = parse_json(json!({
            "model": "m",
            "max_tokens": 10,
            "system": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Use tools."}
            ],
            "tools": [
                {"name": "get_weather", "description": "Get the weather",
                 "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
                {"name": "noop"},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "Weather in SF?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "San Francisco, CA"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"},
                    {"type": "tool_result", "tool_use_id": "toolu_01B", "is_error": true,
                     "content": [{"type": "text", "text": "line 1"}, {"type": "image", "source": {}}, {"type": "text", "text": "line 2"}]},
                    {"type": "text", "text": "Thanks"},
                    {"type": "tool_result", "tool_use_id": "toolu_01C"}
                ]}
            ]
        }))
        .unwrap();
        assert_eq!(
            req.messages,
            vec![
                Message {
                    role: Role::System,
                    content: vec![text("Be brief."), text("Use tools.")]
                },
                Message {
                    role: Role::User,
                    content: vec![text("Weather in SF?")]
                },
                Message {
                    role: Role::Assistant,
                    content: vec![
                        text("Checking."),
                        Part::ToolCall {
                            id: "toolu_01A".into(),
                            name: "get_weather".into(),
                            arguments: r#"{"location":"San Francisco, CA"}"#.into()
                        }
                    ]
                },
                Message {
                    role: Role::Tool,
                    content: vec![
                        Part::ToolResult {
                            call_id: "toolu_01A".into(),
                            content: "15 degrees".into(),
                            is_error: false
                        },
                        Part::ToolResult {
                            call_id: "toolu_01B".into(),
                            content: "line 1\nline 2".into(),
                            is_error: true
                        }
                    ]
                },
                Message {
                    role: Role::User,
                    content: vec![text("Thanks")]
                },
                Message {
                    role: Role::Tool,
                    content: vec![Part::ToolResult {
                        call_id: "toolu_01C".into(),
                        content: String::new(),
                        is_error: false
                    }]
                },
            ]
        );
        assert_eq!(
            req.tools,
            vec![
                Tool {
                    name: "get_weather".into(),
                    description: Some("Get the weather".into()),
                    parameters: json!({"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}),
                },
                Tool {
                    name: "noop".into(),
                    description: None,
                    parameters: json!({"type": "object"}),
                },
            ]
        );
        assert_eq!(req.tool_choice, Some(ToolChoice::Required));
        assert!(!req.stream);
    }

    #[test]
    fn consecutive_turns_of_one_role_stay_separate_messages() {
        let req = parse_json(json!({"model": "m", "max_tokens": 1, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}]},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "only"}]}
        ]}))
        .unwrap();
        assert_eq!(req.messages.len(), 2);
        assert!(req.messages.iter().all(|m| m.role == Role::User));
    }

    #[test]
    fn tool_choices_parse() {
        for (choice, expected) in [
            (json!({"type": "auto"}), ToolChoice::Auto),
            (json!({"type": "any"}), ToolChoice::Required),
            (json!({"type": "none"}), ToolChoice::None),
            (
                json!({"type": "tool", "name": "get_weather"}),
                ToolChoice::Tool("get_weather".into()),
            ),
        ] {
            let req = parse_json(json!({"model": "m", "max_tokens": 1,
                "messages": [{"role": "user", "content": "x"}], "tool_choice": choice}))
            .unwrap();
            assert_eq!(req.tool_choice, Some(expected));
        }
    }

    #[test]
    fn wrong_shapes_name_their_param() {
        let ok = || json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]});
        let with = |field: &str, value: Value| {
            let mut body = ok();
            body[field] = value;
            body
        };
        let without = |field: &str| {
            let mut body = ok();
            body.as_object_mut().unwrap().remove(field);
            body
        };
        let cases: Vec<(Value, &str)> = vec![
            (without("model"), "model"),
            (with("model", json!("")), "model"),
            (with("model", json!(3)), "model"),
            (with("model", json!("a\u{7}b")), "model"),
            (with("model", json!("x".repeat(257))), "model"),
            (without("max_tokens"), "max_tokens"),
            (with("max_tokens", json!(0)), "max_tokens"),
            (with("max_tokens", json!(-1)), "max_tokens"),
            (with("max_tokens", json!(1.5)), "max_tokens"),
            (with("max_tokens", json!("10")), "max_tokens"),
            (with("max_tokens", json!(5_000_000_000u64)), "max_tokens"),
            (without("messages"), "messages"),
            (with("messages", json!([])), "messages"),
            (with("messages", json!({})), "messages"),
            (with("messages", json!(["hi"])), "messages[0]"),
            (
                with("messages", json!([{"role": "system", "content": "x"}])),
                "messages[0].role",
            ),
            (
                with("messages", json!([{"role": "user"}])),
                "messages[0].content",
            ),
            (
                with("messages", json!([{"role": "user", "content": 3}])),
                "messages[0].content",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text"}]}]),
                ),
                "messages[1].content[0].text",
            ),
            (
                with("messages", json!([{"role": "user", "content": ["x"]}])),
                "messages[0].content[0]",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": [{"type": "image"}]}]),
                ),
                "messages[0].content[0].source",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]),
                ),
                "messages[0].content[0].source.media_type",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": [{"type": "image", "source": {"type": "url"}}]}]),
                ),
                "messages[0].content[0].source.url",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]),
                ),
                "messages[0].content[0].id",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]),
                ),
                "messages[0].content[0].tool_use_id",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}]),
                ),
                "messages[0].content[0].content",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}]}]),
                ),
                "messages[0].content[0].is_error",
            ),
            (with("system", json!(5)), "system"),
            (with("system", json!([{"type": "text"}])), "system[0].text"),
            (with("system", json!(["x"])), "system[0]"),
            (with("tools", json!({})), "tools"),
            (
                with("tools", json!([{"description": "x"}])),
                "tools[0].name",
            ),
            (with("tools", json!([{"name": ""}])), "tools[0].name"),
            (
                with("tools", json!([{"name": "f", "input_schema": "x"}])),
                "tools[0].input_schema",
            ),
            (
                with("tools", json!([{"name": "f", "description": 1}])),
                "tools[0].description",
            ),
            (with("tool_choice", json!("auto")), "tool_choice"),
            (
                with("tool_choice", json!({"type": "required"})),
                "tool_choice.type",
            ),
            (
                with("tool_choice", json!({"type": "tool"})),
                "tool_choice.name",
            ),
            (with("temperature", json!("hot")), "temperature"),
            (with("top_p", json!([])), "top_p"),
            (with("stop_sequences", json!("END")), "stop_sequences"),
            (with("stop_sequences", json!(["a", 1])), "stop_sequences[1]"),
            (with("stream", json!("yes")), "stream"),
        ];
        for (body, param) in cases {
            let err = parse_json(body.clone()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidRequest, "{body}");
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
        }
        assert_eq!(param_of(json!([1])), None);
        assert!(parse_json(ok()).is_ok());
    }

    #[test]
    fn broken_json_is_invalid_json_and_nothing_panics() {
        for bytes in [
            &b"<html><body>hi</body></html>"[..],
            b"",
            br#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"#,
            b"\xff\xfe",
        ] {
            let err = parse(bytes).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidJson, "{bytes:?}");
        }
        for body in ["null", "[]", "3", "\"x\"", "{}"] {
            let err = parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidRequest, "{body}");
        }
    }

    #[test]
    fn a_response_encodes_in_anthropic_shape() {
        let resp = ChatResponse {
            id: "chatcmpl-123".into(),
            model: "gpt-4o-mini".into(),
            content: vec![
                text(""),
                text("Let me check."),
                Part::ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"location":"Paris"}"#.into(),
                },
                Part::ToolCall {
                    id: "call_2".into(),
                    name: "broken".into(),
                    arguments: "{not json".into(),
                },
            ],
            finish: Some(FinishReason::ToolCalls),
            usage: Some(usage()),
        };
        assert_eq!(
            encode_response(&resp),
            json!({
                "id": "msg_123",
                "type": "message",
                "role": "assistant",
                "model": "gpt-4o-mini",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "broken", "input": {}}
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {"input_tokens": 10, "cache_read_input_tokens": 100,
                          "cache_creation_input_tokens": 20, "output_tokens": 15}
            })
        );
        let plain = ChatResponse {
            id: "msg_01X".into(),
            model: "claude".into(),
            content: vec![text("Hi")],
            finish: None,
            usage: Some(TokenUsage {
                prompt: 5,
                completion: 2,
                total: 7,
                cache_read: Some(9),
                cache_write: None,
            }),
        };
        let body = encode_response(&plain);
        assert_eq!(body["id"], "msg_01X");
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(
            body["usage"],
            json!({"input_tokens": 0, "cache_read_input_tokens": 9, "output_tokens": 2})
        );
        let bare = ChatResponse {
            usage: None,
            ..plain
        };
        assert_eq!(
            encode_response(&bare)["usage"],
            json!({"input_tokens": 0, "output_tokens": 0})
        );
    }

    #[test]
    fn a_text_stream_encodes_in_the_documented_order() {
        let frames = encode_all(&[
            ChatEvent::Start {
                id: "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY".into(),
                model: "claude-3-5-sonnet-20241022".into(),
            },
            ChatEvent::Text("Hello".into()),
            ChatEvent::Text("!".into()),
            ChatEvent::Finish(FinishReason::Stop),
            ChatEvent::Usage(TokenUsage {
                prompt: 25,
                completion: 15,
                total: 40,
                cache_read: None,
                cache_write: None,
            }),
            ChatEvent::Done,
            ChatEvent::Text("late".into()),
            ChatEvent::Done,
        ]);
        let expected = vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {
                "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant",
                "model": "claude-3-5-sonnet-20241022", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"input_tokens": 25, "output_tokens": 15}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        assert_eq!(frames, expected);
    }

    #[test]
    fn a_tool_stream_encodes_in_the_documented_order() {
        let frames = encode_all(&[
            ChatEvent::Start {
                id: "msg_014p7gG3wDgGV9EUtLvnow3U".into(),
                model: "claude-opus-4-6".into(),
            },
            ChatEvent::Text("Okay, let's check the weather:".into()),
            ChatEvent::ToolCallStart {
                index: 0,
                id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                name: "get_weather".into(),
            },
            ChatEvent::ToolCallArguments {
                index: 0,
                delta: String::new(),
            },
            ChatEvent::ToolCallArguments {
                index: 0,
                delta: "{\"location\":".into(),
            },
            ChatEvent::ToolCallArguments {
                index: 0,
                delta: " \"San Francisco, CA\"}".into(),
            },
            ChatEvent::ToolCallStart {
                index: 1,
                id: "toolu_2".into(),
                name: "get_time".into(),
            },
            ChatEvent::ToolCallArguments {
                index: 0,
                delta: "stray".into(),
            },
            ChatEvent::ToolCallArguments {
                index: 1,
                delta: "{}".into(),
            },
            ChatEvent::Usage(usage()),
            ChatEvent::Finish(FinishReason::ToolCalls),
            ChatEvent::Done,
        ]);
        assert_eq!(
            names(&frames),
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(
            frames[4].1,
            json!({"type": "content_block_start", "index": 1, "content_block":
                {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}})
        );
        assert_eq!(
            frames[5].1,
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}})
        );
        assert_eq!(
            frames[7].1,
            json!({"type": "content_block_stop", "index": 1})
        );
        assert_eq!(frames[8].1["index"], 2);
        assert_eq!(frames[9].1["delta"]["partial_json"], "{}");
        assert_eq!(
            frames[11].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "output_tokens": 15}})
        );
    }

    #[test]
    fn an_openai_ordered_stream_puts_usage_in_message_delta() {
        // OpenAI upstreams: role chunk, text, finish chunk, usage chunk, [DONE].
        let frames = encode_all(&[
            ChatEvent::Start {
                id: "chatcmpl-abc".into(),
                model: String::new(),
            },
            ChatEvent::Text("Hi".into()),
            ChatEvent::Finish(FinishReason::Length),
            ChatEvent::Usage(TokenUsage {
                prompt: 9,
                completion: 3,
                total: 12,
                cache_read: Some(4),
                cache_write: None,
            }),
            ChatEvent::Done,
        ]);
        assert_eq!(
            names(&frames),
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(frames[0].1["message"]["id"], "msg_abc");
        assert_eq!(frames[0].1["message"]["model"], "public-model");
        assert_eq!(
            frames[4].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                "usage": {"input_tokens": 5, "cache_read_input_tokens": 4, "output_tokens": 3}})
        );
    }

    #[test]
    fn a_stream_without_start_or_finish_still_has_the_documented_frame() {
        let frames = encode_all(&[ChatEvent::Text("x".into()), ChatEvent::Done]);
        assert_eq!(
            names(&frames),
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert!(
            frames[0].1["message"]["id"]
                .as_str()
                .unwrap()
                .starts_with("msg_")
        );
        assert_eq!(frames[0].1["message"]["model"], "public-model");
        assert_eq!(frames[4].1["delta"]["stop_reason"], "end_turn");
        assert_eq!(frames[4].1["usage"], json!({"output_tokens": 0}));
        // Nothing but Done: still a whole message.
        assert_eq!(
            names(&encode_all(&[ChatEvent::Done])),
            vec!["message_start", "message_delta", "message_stop"]
        );
        // A second Start is not a second message_start.
        let frames = encode_all(&[
            ChatEvent::Text("x".into()),
            ChatEvent::Start {
                id: "msg_late".into(),
                model: "m".into(),
            },
        ]);
        assert_eq!(
            names(&frames)
                .iter()
                .filter(|n| **n == "message_start")
                .count(),
            1
        );
    }

    #[test]
    fn errors_end_the_stream() {
        let mut encoder = StreamEncoder::new("m".into());
        let mut frames = Vec::new();
        encoder.frames(
            &ChatEvent::Start {
                id: "msg_1".into(),
                model: "m".into(),
            },
            &mut frames,
        );
        encoder.frames(&ChatEvent::Text("partial".into()), &mut frames);
        let err = ApiError::new(
            ErrorKind::Upstream(crate::providers::FailureClass::Overloaded),
            "the upstream provider is overloaded",
        );
        frames.extend(encoder.error_frame(&err));
        encoder.frames(&ChatEvent::Text("more".into()), &mut frames);
        encoder.frames(&ChatEvent::Done, &mut frames);
        frames.extend(encoder.error_frame(&err));
        assert_eq!(
            names(&frames),
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "error"
            ]
        );
        // UpstreamError is a 502: Anthropic's `api_error`.
        assert_eq!(
            frames[3].1,
            json!({"type": "error", "error": {"type": "api_error", "message": "the upstream provider is overloaded"}})
        );
        // Nothing after message_stop either.
        let mut encoder = StreamEncoder::new("m".into());
        let mut frames = Vec::new();
        encoder.frames(&ChatEvent::Done, &mut frames);
        assert!(encoder.error_frame(&err).is_none());
    }

    #[test]
    fn the_public_encoder_names_its_events() {
        let mut encoder = StreamEncoder::new("m".into());
        let mut out = Vec::new();
        encoder.encode(&ChatEvent::Text("hi".into()), &mut out);
        encoder.encode(&ChatEvent::Done, &mut out);
        encoder.error(&ApiError::new(ErrorKind::RateLimited, "slow"), &mut out);
        let debug: Vec<String> = out.iter().map(|e| format!("{e:?}")).collect();
        assert_eq!(debug.len(), 6);
        assert!(
            debug[0].contains(r#"event: Some("message_start")"#),
            "{}",
            debug[0]
        );
        assert!(debug[2].contains(r#"event: Some("content_block_delta")"#));
        assert!(debug[2].contains("text_delta"));
        assert!(debug[5].contains(r#"event: Some("message_stop")"#));
        let mut encoder = StreamEncoder::new("m".into());
        let mut out = Vec::new();
        encoder.error(&ApiError::new(ErrorKind::RateLimited, "slow"), &mut out);
        assert_eq!(out.len(), 1);
        assert!(format!("{:?}", out[0]).contains(r#"event: Some("error")"#));
        assert!(format!("{:?}", out[0]).contains("rate_limit_error"));
    }

    #[test]
    fn error_types_and_bodies_follow_anthropic() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (405, "invalid_request_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "api_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(error_type(status), kind, "{status}");
        }
        let err = ApiError::invalid("messages", "`messages` must not be empty");
        assert_eq!(
            error_body(&err),
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "`messages` must not be empty"}})
        );
        let err = ApiError::new(ErrorKind::NoHealthyDeployment, "no deployment");
        assert_eq!(error_body(&err)["error"]["type"], "overloaded_error");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn block() -> impl Strategy<Value = Value> {
            let kind = prop_oneof![
                Just("text"),
                Just("image"),
                Just("tool_use"),
                Just("tool_result"),
                Just("thinking"),
                Just("x"),
            ];
            let junk = prop_oneof![
                Just(Value::Null),
                Just(json!(1)),
                Just(json!("s")),
                Just(json!([])),
                Just(json!({})),
                Just(json!([{"type": "text", "text": "t"}])),
                Just(json!({"type": "base64", "media_type": "image/png", "data": "x"})),
                Just(json!({"type": "url"})),
            ];
            (kind, junk.clone(), junk.clone(), junk).prop_map(|(kind, a, b, c)| {
                json!({"type": kind, "text": a, "source": b, "content": c, "id": "i",
                       "name": "n", "tool_use_id": "t", "input": a})
            })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                if let Err(e) = parse(&bytes) {
                    prop_assert!(matches!(e.kind, ErrorKind::InvalidJson | ErrorKind::InvalidRequest));
                }
            }

            #[test]
            fn arbitrary_turns_parse_or_name_a_param(
                turns in proptest::collection::vec(
                    (prop_oneof![Just("user"), Just("assistant"), Just("tool")],
                     proptest::collection::vec(block(), 0..4)),
                    1..5),
            ) {
                let messages: Vec<Value> = turns
                    .iter()
                    .map(|(role, blocks)| json!({"role": role, "content": blocks}))
                    .collect();
                let body = json!({"model": "m", "max_tokens": 8, "messages": messages});
                match parse_json(body) {
                    Ok(req) => {
                        prop_assert!(req.messages.iter().all(|m| !m.content.is_empty()));
                        let mut encoder = StreamEncoder::new("m".into());
                        let resp = ChatResponse {
                            id: String::new(),
                            model: req.model.clone(),
                            content: req.messages.iter().flat_map(|m| m.content.clone()).collect(),
                            finish: None,
                            usage: None,
                        };
                        prop_assert_eq!(&encode_response(&resp)["type"], "message");
                        let mut out = Vec::new();
                        encoder.encode(&ChatEvent::Done, &mut out);
                        prop_assert_eq!(out.len(), 3);
                    }
                    Err(e) => prop_assert!(e.param.is_some_and(|p| p.starts_with("messages[")), "{}", e.message),
                }
            }
        }
    }
}
