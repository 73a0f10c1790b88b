//! The OpenAI chat-completions dialect: a body is validated (each field the gateway relies
//! on, with a precise `param`) and parsed into the canonical request, keeping the body
//! itself so that fields the gateway does not model reach an OpenAI upstream untouched;
//! canonical answers and stream events are encoded back into OpenAI's shapes.

use actix_web_lab::sse;
use serde_json::{Map, Value, json};

use crate::domain::canonical::{
    self, ChatEvent, ChatRequest, ChatResponse, Dialect, FinishReason, ImageSource, Message,
    Native, Part, Role, Tool, ToolChoice,
};
use crate::domain::usage::TokenUsage;
use crate::error::ApiError;

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Validates an OpenAI chat-completion body and parses it into the canonical request.
pub fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let body = crate::http::json_object(bytes)?;
    let model = canonical::model_name(body.get("model"))?;
    validate_messages(body.get("messages"))?;
    let stream = optional_bool(&body, "stream")?.unwrap_or(false);
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(opts)) => match opts.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "stream_options.include_usage",
                    "`stream_options.include_usage` must be a boolean",
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` must be an object",
            ));
        }
    };
    for field in ["max_tokens", "max_completion_tokens", "n"] {
        if let Some(v) = body.get(field).filter(|v| !v.is_null())
            && v.as_i64().is_none_or(|n| n < 1)
        {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` must be an integer greater than 0"),
            ));
        }
    }
    for field in [
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
    ] {
        if let Some(v) = body.get(field).filter(|v| !v.is_null())
            && !v.is_number()
        {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` must be a number"),
            ));
        }
    }
    if let Some(v) = body.get("tools").filter(|v| !v.is_null())
        && !v.is_array()
    {
        return Err(ApiError::invalid("tools", "`tools` must be an array"));
    }
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|f| body.get(*f).and_then(Value::as_u64))
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let stop = match body.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    Ok(ChatRequest {
        model,
        messages: messages(&body),
        tools: tools(&body),
        tool_choice: tool_choice(body.get("tool_choice")),
        max_tokens,
        temperature: body.get("temperature").and_then(Value::as_f64),
        top_p: body.get("top_p").and_then(Value::as_f64),
        stop,
        stream,
        include_usage,
        native: Native {
            dialect: Dialect::OpenAI,
            body,
        },
    })
}

/// The text of a `content` (a string, or the text of its parts).
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn str_field(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_string()
}

/// The (validated) messages in the canonical model.
fn messages(body: &Map<String, Value>) -> Vec<Message> {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Vec::new();
    };
    messages.iter().map(message).collect()
}

fn message(m: &Value) -> Message {
    let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
    let content = m.get("content");
    match role {
        "system" | "developer" => Message {
            role: Role::System,
            content: vec![Part::Text(text_of(content))],
        },
        "tool" | "function" => Message {
            role: Role::Tool,
            content: vec![Part::ToolResult {
                call_id: str_field(m.get("tool_call_id").or_else(|| m.get("name"))),
                content: text_of(content),
                is_error: false,
            }],
        },
        "assistant" => {
            let mut parts = Vec::new();
            let text = text_of(content);
            if !text.is_empty() {
                parts.push(Part::Text(text));
            }
            for call in m
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let function = call.get("function");
                parts.push(Part::ToolCall {
                    id: str_field(call.get("id")),
                    name: str_field(function.and_then(|f| f.get("name"))),
                    arguments: str_field(function.and_then(|f| f.get("arguments"))),
                });
            }
            Message {
                role: Role::Assistant,
                content: parts,
            }
        }
        _ => {
            let parts = match content {
                Some(Value::Array(parts)) => parts.iter().filter_map(user_part).collect(),
                other => vec![Part::Text(text_of(other))],
            };
            Message {
                role: Role::User,
                content: parts,
            }
        }
    }
}

/// A user content part: text or an image (a `data:` URL keeps its bytes as base64).
fn user_part(part: &Value) -> Option<Part> {
    match part.get("type").and_then(Value::as_str)? {
        "text" => Some(Part::Text(str_field(part.get("text")))),
        "image_url" => {
            let image = part.get("image_url")?;
            let url = image.get("url").unwrap_or(image).as_str()?;
            let source = url
                .strip_prefix("data:")
                .and_then(|rest| rest.split_once(";base64,"))
                .map_or_else(
                    || ImageSource::Url(url.to_string()),
                    |(media_type, data)| ImageSource::Base64 {
                        media_type: media_type.to_string(),
                        data: data.to_string(),
                    },
                );
            Some(Part::Image(source))
        }
        _ => None,
    }
}

fn tools(body: &Map<String, Value>) -> Vec<Tool> {
    let Some(Value::Array(tools)) = body.get("tools") else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|t| {
            let function = t.get("function")?;
            Some(Tool {
                name: str_field(function.get("name")),
                description: function
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                parameters: function.get("parameters").cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

fn tool_choice(choice: Option<&Value>) -> Option<ToolChoice> {
    match choice? {
        Value::String(s) => match s.as_str() {
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            _ => Some(ToolChoice::Auto),
        },
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Tool(name.to_string())),
        _ => None,
    }
}

fn usage_json(u: &TokenUsage) -> Value {
    let mut usage = json!({"prompt_tokens": u.prompt, "completion_tokens": u.completion,
        "total_tokens": u.total});
    if let Some(cached) = u.cache_read {
        usage["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    usage
}

/// The OpenAI id of an answer: the vendor's when it is OpenAI-like, else derived from it.
fn completion_id(id: &str) -> String {
    if id.starts_with("chatcmpl-") {
        id.to_string()
    } else {
        format!("chatcmpl-{}", id.trim_start_matches("msg_"))
    }
}

/// A canonical answer as a `chat.completion`.
pub fn encode_response(resp: &ChatResponse, created: i64) -> Value {
    let text: Vec<&str> = resp
        .content
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<Value> = resp
        .content
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(json!({"id": id, "type": "function",
                "function": {"name": name, "arguments": arguments}})),
            _ => None,
        })
        .collect();
    let content = if text.is_empty() {
        Value::Null
    } else {
        json!(text.concat())
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let mut answer = json!({
        "id": completion_id(&resp.id),
        "object": "chat.completion",
        "created": created,
        "model": resp.model,
        "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": resp.finish.unwrap_or(FinishReason::Stop).openai()}],
    });
    if let Some(u) = &resp.usage {
        answer["usage"] = usage_json(u);
    }
    answer
}

/// Encodes canonical stream events as `chat.completion.chunk`s, in OpenAI's order: a role
/// chunk, content and tool-call deltas, the finish chunk, the usage chunk (when the client
/// asked for it), `[DONE]`.
pub struct StreamEncoder {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    started: bool,
    ended: bool,
}

impl StreamEncoder {
    pub fn new(model: String, created: i64, include_usage: bool) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            model,
            created,
            include_usage,
            started: false,
            ended: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<FinishReason>) -> sse::Event {
        let chunk = json!({"id": self.id, "object": "chat.completion.chunk",
            "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null,
                "finish_reason": finish.map(FinishReason::openai)}]});
        sse::Event::Data(sse::Data::new(chunk.to_string()))
    }

    fn start(&mut self, out: &mut Vec<sse::Event>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
    }

    pub fn encode(&mut self, event: &ChatEvent, out: &mut Vec<sse::Event>) {
        if self.ended {
            return;
        }
        match event {
            ChatEvent::Start { model, .. } => {
                if !model.is_empty() {
                    self.model.clone_from(model);
                }
                self.start(out);
            }
            ChatEvent::Text(text) => {
                self.start(out);
                out.push(self.chunk(json!({"content": text}), None));
            }
            ChatEvent::ToolCallStart { index, id, name } => {
                self.start(out);
                out.push(self.chunk(
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                ));
            }
            ChatEvent::ToolCallArguments { index, delta } => {
                self.start(out);
                out.push(self.chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": delta}}]}),
                    None,
                ));
            }
            ChatEvent::Finish(reason) => {
                self.start(out);
                out.push(self.chunk(json!({}), Some(*reason)));
            }
            ChatEvent::Usage(usage) => {
                if self.include_usage {
                    let chunk = json!({"id": self.id, "object": "chat.completion.chunk",
                        "created": self.created, "model": self.model, "choices": [],
                        "usage": usage_json(usage)});
                    out.push(sse::Event::Data(sse::Data::new(chunk.to_string())));
                }
            }
            ChatEvent::Done => {
                self.ended = true;
                out.push(sse::Event::Data(sse::Data::new("[DONE]")));
            }
        }
    }

    /// A failure after commit: an error chunk, then `[DONE]`.
    pub fn error(&mut self, err: &ApiError, out: &mut Vec<sse::Event>) {
        if !self.ended {
            self.ended = true;
            out.push(sse::Event::Data(sse::Data::new(err.body().to_string())));
            out.push(sse::Event::Data(sse::Data::new("[DONE]")));
        }
    }
}

/// A client-supplied string as it may appear in an error message: at most 64 characters.
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("`{field}` must be a boolean"),
        )),
    }
}

fn validate_messages(messages: Option<&Value>) -> Result<(), ApiError> {
    let messages = match messages {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages", "`messages` is required"));
        }
        Some(Value::Array(m)) => m,
        Some(_) => return Err(ApiError::invalid("messages", "`messages` must be an array")),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(ApiError::invalid(
                format!("messages[{i}]"),
                "each message must be an object",
            ));
        };
        match message.get("role") {
            Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
            Some(Value::String(role)) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "unknown role `{}`; expected one of {}",
                        shown(role),
                        ROLES.join(", ")
                    ),
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    "each message needs a string `role`",
                ));
            }
        }
        match message.get("content") {
            None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    "`content` must be a string or an array of content parts",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn param_of(body: &str) -> Option<String> {
        parse(body.as_bytes()).err().and_then(|e| e.param)
    }

    #[test]
    fn a_valid_body_keeps_unknown_fields() -> Result<(), ApiError> {
        let req = parse(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
                "stream_options":{"include_usage":true},"tools":[],"x_vendor":1}"#,
        )?;
        assert!(req.stream && req.include_usage);
        assert_eq!(req.native.body.get("x_vendor"), Some(&Value::from(1)));
        assert_eq!(req.last_user_text(), "hi");
        Ok(())
    }

    #[test]
    fn invalid_bodies_name_the_offending_param() {
        assert_eq!(param_of(r#"{"messages":[]}"#).as_deref(), Some("model"));
        assert_eq!(param_of(r#"{"model":"m"}"#).as_deref(), Some("messages"));
        assert_eq!(
            param_of(r#"{"model":"m","messages":"hi"}"#).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"wizard"}]}"#).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#).as_deref(),
            Some("stream")
        );
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#).as_deref(),
            Some("max_tokens")
        );
        let not_json = parse(b"{nope").err().map(|e| e.kind);
        assert_eq!(not_json, Some(ErrorKind::InvalidJson));
    }

    #[test]
    fn a_huge_model_name_is_refused_without_being_echoed() {
        let body = format!(
            r#"{{"model":"{}","messages":[{{"role":"user"}}]}}"#,
            "m".repeat(1_000_000)
        );
        let err = parse(body.as_bytes()).err().unwrap();
        assert_eq!(err.param.as_deref(), Some("model"));
        assert!(err.message.len() < 100);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,20}".prop_map(Value::from),
                prop_oneof![Just("model"), Just("messages"), Just("role"), Just("user")]
                    .prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("model".to_string()),
                            Just("messages".to_string()),
                            Just("role".to_string()),
                            Just("content".to_string()),
                            Just("stream".to_string()),
                            Just("stream_options".to_string()),
                            Just("max_tokens".to_string()),
                            Just("tools".to_string()),
                            "[a-z_]{1,8}",
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_are_answered_not_panicked_on(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Err(e) = parse(&bytes) {
                    prop_assert!(matches!(e.kind, ErrorKind::InvalidJson | ErrorKind::InvalidRequest));
                }
            }

            #[test]
            fn arbitrary_json_is_validated_with_short_messages(value in json_value()) {
                match parse(value.to_string().as_bytes()) {
                    Ok(req) => {
                        prop_assert!(!req.model.is_empty() && req.model.len() <= canonical::MAX_MODEL_BYTES);
                        prop_assert!(req.native.body.get("messages").and_then(Value::as_array).is_some_and(|m| !m.is_empty()));
                    }
                    Err(e) => {
                        prop_assert_eq!(e.kind, ErrorKind::InvalidRequest);
                        prop_assert!(e.message.len() < 400, "{}", e.message);
                    }
                }
            }

            #[test]
            fn valid_requests_parse_and_keep_what_they_say(
                model in "[A-Za-z0-9._:/-]{1,256}",
                turns in proptest::collection::vec(
                    (prop_oneof![Just("system"), Just("user"), Just("assistant"), Just("tool")], ".{0,40}"),
                    1..8),
                stream in any::<bool>(),
                include_usage in any::<bool>(),
            ) {
                let messages: Vec<Value> = turns
                    .iter()
                    .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
                    .collect();
                let body = serde_json::json!({"model": model, "messages": messages, "stream": stream,
                    "stream_options": {"include_usage": include_usage}});
                let req = parse(body.to_string().as_bytes()).unwrap();
                prop_assert_eq!(&req.model, &model);
                prop_assert_eq!(req.stream, stream);
                prop_assert_eq!(req.include_usage, include_usage);
            }
        }
    }
}
