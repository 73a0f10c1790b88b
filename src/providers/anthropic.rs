//! Anthropic's Messages API (`/v1/messages`): the canonical request translated to its body
//! (or the client's own Anthropic body forwarded with only the model replaced), its
//! blocking answer and its stream decoded into canonical form, and its error answers
//! classified. Pure: no I/O.

use std::collections::HashMap;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{FailureClass, Target, UpstreamFailure, UpstreamRequest, VendorError};
use crate::domain::canonical::{
    ChatEvent, ChatRequest, ChatResponse, Dialect, FinishReason, ImageSource, Message, Part, Role,
    StreamDecoder, ToolChoice,
};
use crate::domain::sse::SseEvent;
use crate::domain::usage::TokenUsage;

/// The `anthropic-version` sent when the vendor's config names none.
pub const DEFAULT_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic; this is sent when the client gave none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

const API_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// An Anthropic vendor's typed configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnthropicSettings {
    /// The `anthropic-version` header.
    pub version: String,
    /// `max_tokens` for requests that do not say.
    pub default_max_tokens: u32,
}

impl Default for AnthropicSettings {
    fn default() -> Self {
        Self {
            version: DEFAULT_VERSION.to_string(),
            default_max_tokens: DEFAULT_MAX_TOKENS,
        }
    }
}

/// `{base_url}/v1/messages`, tolerant of a trailing slash; a base that already ends in
/// `/v1` gets `/messages` only.
pub fn messages_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

fn invalid(detail: impl Into<String>) -> UpstreamFailure {
    UpstreamFailure::new(FailureClass::InvalidRequest, detail)
}

fn malformed(detail: impl Into<String>) -> UpstreamFailure {
    UpstreamFailure::new(FailureClass::MalformedResponse, detail)
}

/// The HTTP request for `req` on `target`.
pub fn chat_request(
    url: &reqwest::Url,
    target: Target<'_>,
    settings: &AnthropicSettings,
    req: &ChatRequest,
) -> Result<UpstreamRequest, UpstreamFailure> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if req.stream {
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    }
    let version = HeaderValue::from_str(&settings.version)
        .map_err(|_| invalid("the configured anthropic-version is not a valid header value"))?;
    headers.insert(API_VERSION, version);
    if let Some(key) = target.api_key {
        let mut value = HeaderValue::from_str(key).map_err(|_| {
            UpstreamFailure::new(
                FailureClass::Auth,
                "the deployment's upstream key is not a valid header value",
            )
        })?;
        value.set_sensitive(true);
        headers.insert(API_KEY, value);
    }
    let body = if req.native.dialect == Dialect::Anthropic {
        let mut body = req.native.body.clone();
        body.insert("model".into(), Value::String(target.upstream_model.into()));
        body
    } else {
        translate(target.upstream_model, settings, req)?
    };
    let body = serde_json::to_vec(&body)
        .map_err(|e| invalid(format!("could not serialize the Anthropic body: {e}")))?;
    Ok(UpstreamRequest {
        url: url.clone(),
        headers,
        body,
    })
}

/// The canonical request as a Messages API body.
fn translate(
    model: &str,
    settings: &AnthropicSettings,
    req: &ChatRequest,
) -> Result<Map<String, Value>, UpstreamFailure> {
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    let system: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .flat_map(|m| m.content.iter())
        .filter_map(|p| match p {
            Part::Text(t) if !t.is_empty() => Some(t.as_str()),
            _ => None,
        })
        .collect();
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    body.insert("messages".into(), Value::Array(turns(&req.messages)?));
    body.insert(
        "max_tokens".into(),
        req.max_tokens.unwrap_or(settings.default_max_tokens).into(),
    );
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), number(t, "temperature")?);
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), number(p, "top_p")?);
    }
    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(req.stop));
    }
    if !req.tools.is_empty() {
        let tools = tools_json(&req.tools);
        body.insert("tools".into(), Value::Array(tools));
        // Anthropic refuses a `tool_choice` without tools, so it is only sent with them.
        if let Some(choice) = &req.tool_choice {
            let choice = match choice {
                ToolChoice::Auto => json!({"type": "auto"}),
                ToolChoice::Required => json!({"type": "any"}),
                ToolChoice::None => json!({"type": "none"}),
                ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
            };
            body.insert("tool_choice".into(), choice);
        }
    }
    body.insert("stream".into(), req.stream.into());
    Ok(body)
}

fn number(n: f64, field: &str) -> Result<Value, UpstreamFailure> {
    serde_json::Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| invalid(format!("`{field}` is not a finite number")))
}

/// The non-system messages as alternating Anthropic turns: tool calls become `tool_use`
/// blocks of the assistant, tool results `tool_result` blocks of a user turn, and
/// consecutive messages of the same resulting role are merged into one turn.
/// Canonical tools as Anthropic's `tools` entries.
pub fn tools_json(tools: &[crate::domain::canonical::Tool]) -> Vec<Value> {
    tools
        .iter()
        .map(|t| {
            let mut tool = Map::new();
            tool.insert("name".into(), t.name.clone().into());
            if let Some(d) = &t.description {
                tool.insert("description".into(), d.clone().into());
            }
            let schema = match &t.parameters {
                Value::Null => json!({"type": "object"}),
                schema => schema.clone(),
            };
            tool.insert("input_schema".into(), schema);
            Value::Object(tool)
        })
        .collect()
}

/// Canonical messages as Anthropic turns (system messages left out: they go to `system`).
pub fn turns(messages: &[Message]) -> Result<Vec<Value>, UpstreamFailure> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages {
        for part in &message.content {
            let placed = match (message.role, part) {
                (Role::System, _) => None,
                (
                    _,
                    Part::ToolResult {
                        call_id,
                        content,
                        is_error,
                    },
                ) => {
                    let mut block = json!({
                        "type": "tool_result",
                        "tool_use_id": call_id,
                        "content": content,
                    });
                    if *is_error {
                        block["is_error"] = Value::Bool(true);
                    }
                    Some(("user", block))
                }
                // Anthropic refuses empty text blocks.
                (_, Part::Text(t)) if t.is_empty() => None,
                (Role::Assistant, Part::Text(t)) => {
                    Some(("assistant", json!({"type": "text", "text": t})))
                }
                (
                    Role::Assistant,
                    Part::ToolCall {
                        id,
                        name,
                        arguments,
                    },
                ) => Some((
                    "assistant",
                    json!({"type": "tool_use", "id": id, "name": name, "input": tool_input(arguments)}),
                )),
                // Anthropic takes images from users only.
                (Role::Assistant, Part::Image(_)) => None,
                (Role::User | Role::Tool, Part::Text(t)) => {
                    Some(("user", json!({"type": "text", "text": t})))
                }
                (Role::User | Role::Tool, Part::Image(source)) => {
                    Some(("user", image_block(source)?))
                }
                // A call is the assistant's; anywhere else it has no Anthropic form.
                (Role::User | Role::Tool, Part::ToolCall { .. }) => None,
            };
            let Some((role, block)) = placed else {
                continue;
            };
            match turns.last_mut() {
                Some((last, blocks)) if *last == role => blocks.push(block),
                _ => turns.push((role, vec![block])),
            }
        }
    }
    Ok(turns
        .into_iter()
        .map(|(role, blocks)| {
            // In a user turn, tool results must come before anything else.
            let (mut results, rest): (Vec<Value>, Vec<Value>) =
                blocks.into_iter().partition(|b| b["type"] == "tool_result");
            results.extend(rest);
            json!({"role": role, "content": results})
        })
        .collect())
}

/// A tool call's JSON-text arguments as the object Anthropic wants (`{}` if they are
/// empty, unparsable or not an object).
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

fn image_block(source: &ImageSource) -> Result<Value, UpstreamFailure> {
    let source = match source {
        ImageSource::Base64 { media_type, data } => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        ImageSource::Url(url) => match url.strip_prefix("data:") {
            Some(rest) => {
                let (meta, data) = rest
                    .split_once(',')
                    .ok_or_else(|| invalid("an image data URL has no data"))?;
                let media_type = meta
                    .strip_suffix(";base64")
                    .ok_or_else(|| invalid("an image data URL is not base64"))?;
                json!({"type": "base64", "media_type": media_type, "data": data})
            }
            None => json!({"type": "url", "url": url}),
        },
    };
    Ok(json!({"type": "image", "source": source}))
}

/// Anthropic's `usage` object: `prompt` counts every input token, cache reads and writes
/// included. `None` without `input_tokens` and `output_tokens`.
fn usage_of(usage: &Value) -> Option<TokenUsage> {
    let input = usage.get("input_tokens")?.as_i64()?;
    let completion = usage.get("output_tokens")?.as_i64()?;
    let cache_read = usage.get("cache_read_input_tokens").and_then(Value::as_i64);
    let cache_write = usage
        .get("cache_creation_input_tokens")
        .and_then(Value::as_i64);
    Some(combine(input, cache_read, cache_write, completion))
}

fn combine(
    input: i64,
    cache_read: Option<i64>,
    cache_write: Option<i64>,
    completion: i64,
) -> TokenUsage {
    let prompt = input
        .saturating_add(cache_read.unwrap_or(0))
        .saturating_add(cache_write.unwrap_or(0));
    TokenUsage {
        prompt,
        completion,
        total: prompt.saturating_add(completion),
        cache_read,
        cache_write,
    }
}

/// Decodes a blocking Messages API answer.
pub fn decode_answer(bytes: &[u8]) -> Result<ChatResponse, UpstreamFailure> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("the Anthropic answer is not JSON: {e}")))?;
    let Value::Object(answer) = value else {
        return Err(malformed("the Anthropic answer is not a JSON object"));
    };
    if answer.get("type").and_then(Value::as_str) != Some("message") {
        return Err(malformed("the Anthropic answer is not of type `message`"));
    }
    let Some(Value::Array(blocks)) = answer.get("content") else {
        return Err(malformed("the Anthropic answer has no `content` array"));
    };
    let text = |v: &Value, name: &str| {
        v.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let field = |m: &Map<String, Value>, name: &str| {
        m.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut content = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => content.push(Part::Text(text(block, "text"))),
            Some("tool_use") => content.push(Part::ToolCall {
                id: text(block, "id"),
                name: text(block, "name"),
                arguments: block
                    .get("input")
                    .filter(|i| !i.is_null())
                    .map_or_else(|| "{}".to_string(), Value::to_string),
            }),
            // `thinking`, `redacted_thinking`, server tool blocks: not modelled.
            _ => {}
        }
    }
    Ok(ChatResponse {
        id: field(&answer, "id"),
        model: field(&answer, "model"),
        content,
        finish: answer
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(FinishReason::from_anthropic),
        usage: answer.get("usage").and_then(usage_of),
    })
}

/// Decodes an Anthropic stream one SSE event at a time.
#[derive(Debug, Default)]
pub struct AnthropicDecoder {
    /// Input figures from `message_start`.
    input: Option<i64>,
    cache_read: Option<i64>,
    cache_write: Option<i64>,
    /// The (intermediate) output count of `message_start`.
    output: Option<i64>,
    /// Content block index → tool call index.
    tools: HashMap<u64, usize>,
    tool_count: usize,
}

impl AnthropicDecoder {
    fn remember_input(&mut self, usage: &Value) {
        let field = |name: &str| usage.get(name).and_then(Value::as_i64);
        if let Some(n) = field("input_tokens") {
            self.input = Some(n);
        }
        if let Some(n) = field("cache_read_input_tokens") {
            self.cache_read = Some(n);
        }
        if let Some(n) = field("cache_creation_input_tokens") {
            self.cache_write = Some(n);
        }
        if let Some(n) = field("output_tokens") {
            self.output = Some(n);
        }
    }
}

impl StreamDecoder for AnthropicDecoder {
    fn decode(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<ChatEvent>,
    ) -> Result<(), UpstreamFailure> {
        let named_error = event.event.as_deref() == Some("error");
        if event.data.trim().is_empty() {
            return if named_error {
                Err(UpstreamFailure::new(
                    FailureClass::Upstream5xx,
                    "the Anthropic stream sent an empty error event",
                ))
            } else {
                Ok(())
            };
        }
        let data: Value = match serde_json::from_str(&event.data) {
            Ok(data) => data,
            Err(_) if named_error => {
                return Err(UpstreamFailure::new(
                    FailureClass::Upstream5xx,
                    "the Anthropic stream sent an error event that is not JSON",
                ));
            }
            Err(e) => {
                return Err(malformed(format!(
                    "an Anthropic stream event is not JSON: {e}"
                )));
            }
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();
        match kind {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                let field = |name: &str| {
                    message
                        .get(name)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                if let Some(usage) = message.get("usage") {
                    self.remember_input(usage);
                }
                out.push(ChatEvent::Start {
                    id: field("id"),
                    model: field("model"),
                });
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str)
                            && !text.is_empty()
                        {
                            out.push(ChatEvent::Text(text.to_string()));
                        }
                    }
                    Some("tool_use") => {
                        let (Some(id), Some(name)) = (
                            block.get("id").and_then(Value::as_str),
                            block.get("name").and_then(Value::as_str),
                        ) else {
                            return Err(malformed(
                                "an Anthropic tool_use block has no `id` or `name`",
                            ));
                        };
                        let index = self.tool_count;
                        self.tool_count += 1;
                        if let Some(block_index) = data.get("index").and_then(Value::as_u64) {
                            self.tools.insert(block_index, index);
                        }
                        out.push(ChatEvent::ToolCallStart {
                            index,
                            id: id.to_string(),
                            name: name.to_string(),
                        });
                        // Some servers send the whole input up front instead of deltas.
                        if let Some(input) = block.get("input").and_then(Value::as_object)
                            && !input.is_empty()
                        {
                            out.push(ChatEvent::ToolCallArguments {
                                index,
                                delta: Value::Object(input.clone()).to_string(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(text) = delta.get("text").and_then(Value::as_str)
                            && !text.is_empty()
                        {
                            out.push(ChatEvent::Text(text.to_string()));
                        }
                    }
                    Some("input_json_delta") => {
                        let tool = data
                            .get("index")
                            .and_then(Value::as_u64)
                            .and_then(|i| self.tools.get(&i));
                        if let (Some(&index), Some(partial)) =
                            (tool, delta.get("partial_json").and_then(Value::as_str))
                            && !partial.is_empty()
                        {
                            out.push(ChatEvent::ToolCallArguments {
                                index,
                                delta: partial.to_string(),
                            });
                        }
                    }
                    // thinking_delta, signature_delta, citations_delta: not modelled.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    out.push(ChatEvent::Finish(FinishReason::from_anthropic(reason)));
                }
                if let Some(usage) = data.get("usage").filter(|u| u.is_object()) {
                    let output = usage.get("output_tokens").and_then(Value::as_i64);
                    // Input figures in message_delta are the final ones: they win.
                    self.remember_input(usage);
                    let completion = output.or(self.output);
                    if let (Some(input), Some(completion)) = (self.input, completion) {
                        out.push(ChatEvent::Usage(combine(
                            input,
                            self.cache_read,
                            self.cache_write,
                            completion,
                        )));
                    }
                }
            }
            "content_block_stop" => {
                // Only open blocks are remembered: the map stays as small as the stream's
                // open blocks, however many a stream has.
                if let Some(block_index) = data.get("index").and_then(Value::as_u64) {
                    self.tools.remove(&block_index);
                }
            }
            "message_stop" => out.push(ChatEvent::Done),
            "error" => return Err(stream_error(&data)),
            // ping, and event types added later.
            _ if named_error => return Err(stream_error(&data)),
            _ => {}
        }
        Ok(())
    }
}

/// The failure an in-stream `error` event reports.
fn stream_error(data: &Value) -> UpstreamFailure {
    let error = VendorError::of(Some(data));
    let kind = error.kind.clone();
    let class = match kind.as_str() {
        "overloaded_error" => FailureClass::Overloaded,
        "rate_limit_error" => FailureClass::RateLimited,
        "authentication_error" | "permission_error" => FailureClass::Auth,
        "billing_error" => FailureClass::Billing,
        "invalid_request_error" => FailureClass::InvalidRequest,
        _ => FailureClass::Upstream5xx,
    };
    UpstreamFailure {
        vendor_message: error.vendor_message(),
        ..UpstreamFailure::new(class, format!("stream error {kind}").trim_end().to_string())
    }
}

/// Classifies a non-2xx answer by status and Anthropic's `error.type` and message.
pub fn classify(status: u16, body: &[u8]) -> UpstreamFailure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = VendorError::of(parsed.as_ref());
    let kind = error.kind.clone();
    let too_long = error
        .message
        .to_ascii_lowercase()
        .contains("prompt is too long")
        || kind == "request_too_large";
    let class = match status {
        _ if kind == "overloaded_error" => FailureClass::Overloaded,
        529 => FailureClass::Overloaded,
        429 => FailureClass::RateLimited,
        401 | 403 => FailureClass::Auth,
        402 => FailureClass::Billing,
        400..=499 if kind == "billing_error" => FailureClass::Billing,
        400..=499 if kind == "authentication_error" || kind == "permission_error" => {
            FailureClass::Auth
        }
        400 | 413 if too_long => FailureClass::ContextOverflow,
        400..=499 => FailureClass::InvalidRequest,
        503 => FailureClass::Overloaded,
        _ => FailureClass::Upstream5xx,
    };
    UpstreamFailure {
        class,
        status: Some(status),
        detail: format!("HTTP {status} {kind}").trim_end().to_string(),
        vendor_message: error.vendor_message(),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::canonical::{Native, Tool};

    fn request(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: "public".into(),
            messages,
            tools: Vec::new(),
            tool_choice: None,
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop: Vec::new(),
            stream: false,
            include_usage: false,
            native: Native {
                dialect: Dialect::OpenAI,
                body: Map::new(),
            },
        }
    }

    fn msg(role: Role, content: Vec<Part>) -> Message {
        Message { role, content }
    }

    fn text(t: &str) -> Part {
        Part::Text(t.into())
    }

    fn target() -> Target<'static> {
        Target {
            upstream_model: "claude-sonnet-4-5",
            api_key: Some("sk-ant-test"),
        }
    }

    fn url() -> reqwest::Url {
        reqwest::Url::parse("https://api.anthropic.com/v1/messages").unwrap()
    }

    fn body_of(req: &ChatRequest) -> Value {
        let built = chat_request(&url(), target(), &AnthropicSettings::default(), req).unwrap();
        serde_json::from_slice(&built.body).unwrap()
    }

    fn sse(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: Some(event.into()),
            data: data.into(),
        }
    }

    /// Decodes a recorded stream (`event:`/`data:` pairs), event by event.
    fn decode_all(events: &[(&str, &str)]) -> Vec<Vec<ChatEvent>> {
        let mut decoder = AnthropicDecoder::default();
        events
            .iter()
            .map(|(name, data)| {
                let mut out = Vec::new();
                decoder.decode(&sse(name, data), &mut out).unwrap();
                out
            })
            .collect()
    }

    #[test]
    fn settings_default_and_refuse_unknown_fields() {
        let s: AnthropicSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, AnthropicSettings::default());
        assert_eq!(s.version, "2023-06-01");
        assert_eq!(s.default_max_tokens, 4096);
        let s: AnthropicSettings = serde_json::from_str(r#"{"version":"2024-01-01"}"#).unwrap();
        assert_eq!(s.version, "2024-01-01");
        assert_eq!(s.default_max_tokens, 4096);
        assert!(serde_json::from_str::<AnthropicSettings>(r#"{"versoin":"x"}"#).is_err());
    }

    #[test]
    fn messages_url_accepts_bases_with_and_without_v1() {
        for base in [
            "https://api.anthropic.com",
            "https://api.anthropic.com/",
            "https://api.anthropic.com/v1",
            "https://api.anthropic.com/v1/",
        ] {
            assert_eq!(messages_url(base), "https://api.anthropic.com/v1/messages");
        }
        assert_eq!(
            messages_url("http://proxy:8080/anthropic"),
            "http://proxy:8080/anthropic/v1/messages"
        );
    }

    #[test]
    fn headers_carry_key_version_and_stream_accept() {
        let mut req = request(vec![msg(Role::User, vec![text("hi")])]);
        req.stream = true;
        let built = chat_request(&url(), target(), &AnthropicSettings::default(), &req).unwrap();
        assert_eq!(built.url.as_str(), "https://api.anthropic.com/v1/messages");
        assert_eq!(built.headers["content-type"], "application/json");
        assert_eq!(built.headers["x-api-key"], "sk-ant-test");
        assert!(built.headers["x-api-key"].is_sensitive());
        assert_eq!(built.headers["anthropic-version"], "2023-06-01");
        assert_eq!(built.headers["accept"], "text/event-stream");

        req.stream = false;
        let keyless = Target {
            api_key: None,
            ..target()
        };
        let built = chat_request(&url(), keyless, &AnthropicSettings::default(), &req).unwrap();
        assert!(!built.headers.contains_key("x-api-key"));
        assert!(!built.headers.contains_key("accept"));

        let bad_key = Target {
            api_key: Some("line\nbreak"),
            ..target()
        };
        let err = chat_request(&url(), bad_key, &AnthropicSettings::default(), &req).unwrap_err();
        assert_eq!(err.class, FailureClass::Auth);
    }

    #[test]
    fn a_native_anthropic_body_is_forwarded_with_only_the_model_replaced() {
        let native: Map<String, Value> = serde_json::from_value(json!({
            "model": "public",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "future_field": [1, 2]
        }))
        .unwrap();
        let mut req = request(vec![msg(Role::User, vec![text("ignored")])]);
        req.native = Native {
            dialect: Dialect::Anthropic,
            body: native.clone(),
        };
        let body = body_of(&req);
        let mut expected = Value::Object(native);
        expected["model"] = "claude-sonnet-4-5".into();
        assert_eq!(body, expected);
    }

    #[test]
    fn a_canonical_request_is_translated_with_hoisted_system_and_merged_turns() {
        let mut req = request(vec![
            msg(Role::System, vec![text("You are terse.")]),
            msg(Role::User, vec![text("What is the weather in Paris?")]),
            msg(Role::System, vec![text("Use tools.")]),
            msg(
                Role::Assistant,
                vec![
                    text("Let me check."),
                    Part::ToolCall {
                        id: "toolu_1".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"location":"Paris"}"#.into(),
                    },
                    Part::ToolCall {
                        id: "toolu_2".into(),
                        name: "get_time".into(),
                        arguments: String::new(),
                    },
                ],
            ),
            msg(
                Role::Tool,
                vec![Part::ToolResult {
                    call_id: "toolu_1".into(),
                    content: "15 degrees".into(),
                    is_error: false,
                }],
            ),
            msg(
                Role::Tool,
                vec![Part::ToolResult {
                    call_id: "toolu_2".into(),
                    content: "no clock".into(),
                    is_error: true,
                }],
            ),
            msg(Role::User, vec![text("Thanks"), text("")]),
        ]);
        req.tools = vec![
            Tool {
                name: "get_weather".into(),
                description: Some("Weather of a place".into()),
                parameters: json!({"type": "object", "properties": {"location": {"type": "string"}}}),
            },
            Tool {
                name: "get_time".into(),
                description: None,
                parameters: Value::Null,
            },
        ];
        req.tool_choice = Some(ToolChoice::Required);
        req.temperature = Some(0.5);
        req.top_p = Some(0.9);
        req.stop = vec!["END".into()];
        req.stream = true;
        assert_eq!(
            body_of(&req),
            json!({
                "model": "claude-sonnet-4-5",
                "system": "You are terse.\n\nUse tools.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris?"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "15 degrees"},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no clock", "is_error": true},
                        {"type": "text", "text": "Thanks"}
                    ]}
                ],
                "max_tokens": 4096,
                "temperature": 0.5,
                "top_p": 0.9,
                "stop_sequences": ["END"],
                "tools": [
                    {"name": "get_weather", "description": "Weather of a place",
                     "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}},
                    {"name": "get_time", "input_schema": {"type": "object"}}
                ],
                "tool_choice": {"type": "any"},
                "stream": true
            })
        );
    }

    #[test]
    fn tool_choices_images_and_max_tokens_translate() {
        let choices = [
            (ToolChoice::Auto, json!({"type": "auto"})),
            (ToolChoice::None, json!({"type": "none"})),
            (ToolChoice::Required, json!({"type": "any"})),
            (
                ToolChoice::Tool("f".into()),
                json!({"type": "tool", "name": "f"}),
            ),
        ];
        for (choice, expected) in choices {
            let mut req = request(vec![msg(Role::User, vec![text("x")])]);
            req.tools = vec![Tool {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
            }];
            req.tool_choice = Some(choice);
            assert_eq!(body_of(&req)["tool_choice"], expected);
        }
        // Without tools, no tool_choice (Anthropic refuses one).
        let mut req = request(vec![msg(Role::User, vec![text("x")])]);
        req.tool_choice = Some(ToolChoice::Auto);
        req.max_tokens = Some(77);
        let body = body_of(&req);
        assert!(body.get("tool_choice").is_none() && body.get("tools").is_none());
        assert!(body.get("system").is_none() && body.get("stop_sequences").is_none());
        assert_eq!(body["max_tokens"], 77);
        assert_eq!(body["stream"], false);

        let req = request(vec![msg(
            Role::User,
            vec![
                Part::Image(ImageSource::Url("https://example.com/cat.png".into())),
                Part::Image(ImageSource::Url(
                    "data:image/png;base64,iVBORw0KGgo=".into(),
                )),
                Part::Image(ImageSource::Base64 {
                    media_type: "image/jpeg".into(),
                    data: "/9j/4AAQ".into(),
                }),
                text("What are these?"),
            ],
        )]);
        assert_eq!(
            body_of(&req)["messages"][0]["content"],
            json!([
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                {"type": "text", "text": "What are these?"}
            ])
        );
    }

    #[test]
    fn untranslatable_requests_fail_as_invalid_requests() {
        let req = request(vec![msg(
            Role::User,
            vec![Part::Image(ImageSource::Url("data:image/png,raw".into()))],
        )]);
        let err = chat_request(&url(), target(), &AnthropicSettings::default(), &req).unwrap_err();
        assert_eq!(err.class, FailureClass::InvalidRequest);
        let mut req = request(vec![msg(Role::User, vec![text("x")])]);
        req.temperature = Some(f64::NAN);
        let err = chat_request(&url(), target(), &AnthropicSettings::default(), &req).unwrap_err();
        assert_eq!(err.class, FailureClass::InvalidRequest);
    }

    #[test]
    fn a_documented_answer_decodes() {
        let answer = br#"{
            "content": [{"text": "Hi! My name is Claude.", "type": "text"}],
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "model": "claude-3-7-sonnet-20250219",
            "role": "assistant",
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "type": "message",
            "usage": {"input_tokens": 2095, "output_tokens": 503}
        }"#;
        let resp = decode_answer(answer).unwrap();
        assert_eq!(
            resp,
            ChatResponse {
                id: "msg_013Zva2CMHLNnXjNJJKqJ2EF".into(),
                model: "claude-3-7-sonnet-20250219".into(),
                content: vec![text("Hi! My name is Claude.")],
                finish: Some(FinishReason::Stop),
                usage: Some(TokenUsage {
                    prompt: 2095,
                    completion: 503,
                    total: 2598,
                    cache_read: None,
                    cache_write: None,
                }),
            }
        );
    }

    #[test]
    fn a_tool_use_answer_with_thinking_and_cache_usage_decodes() {
        let answer = br#"{
            "id": "msg_01Aq9w938a90dw8q",
            "model": "claude-sonnet-4-5",
            "stop_reason": "tool_use",
            "role": "assistant",
            "type": "message",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "I'll check the weather."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9",
                 "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}}
            ],
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 100,
                      "cache_creation_input_tokens": 20, "output_tokens": 5}
        }"#;
        let resp = decode_answer(answer).unwrap();
        assert_eq!(resp.finish, Some(FinishReason::ToolCalls));
        assert_eq!(resp.content.len(), 2);
        let Part::ToolCall {
            id,
            name,
            arguments,
        } = &resp.content[1]
        else {
            panic!("expected a tool call: {:?}", resp.content);
        };
        assert_eq!(id, "toolu_01A09q90qw90lq917835lq9");
        assert_eq!(name, "get_weather");
        let args: Value = serde_json::from_str(arguments).unwrap();
        assert_eq!(
            args,
            json!({"location": "San Francisco, CA", "unit": "celsius"})
        );
        assert_eq!(
            resp.usage,
            Some(TokenUsage {
                prompt: 130,
                completion: 5,
                total: 135,
                cache_read: Some(100),
                cache_write: Some(20),
            })
        );
    }

    #[test]
    fn malformed_answers_are_malformed_responses() {
        for bytes in [
            &b"<html><body>502 Bad Gateway</body></html>"[..],
            b"",
            br#"{"type":"message","content":[{"type":"text""#,
            b"[1,2]",
            br#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
            br#"{"type":"message","id":"msg_1"}"#,
            br#"{"type":"message","content":"text"}"#,
        ] {
            let err = decode_answer(bytes).unwrap_err();
            assert_eq!(err.class, FailureClass::MalformedResponse, "{bytes:?}");
        }
        // Odd but well-formed: missing optional fields decode to defaults.
        let resp = decode_answer(br#"{"type":"message","content":[{"type":"tool_use"},{"type":1}],"usage":{"input_tokens":"x"}}"#).unwrap();
        assert_eq!(resp.content.len(), 1);
        assert_eq!(resp.usage, None);
        assert_eq!(resp.finish, None);
    }

    #[test]
    fn the_documented_text_stream_decodes_event_by_event() {
        let events = decode_all(&[
            (
                "message_start",
                r#"{"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-3-5-sonnet-20241022", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type": "content_block_stop", "index": 0}"#,
            ),
            (
                "message_delta",
                r#"{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}"#,
            ),
            ("message_stop", r#"{"type": "message_stop"}"#),
        ]);
        assert_eq!(
            events,
            vec![
                vec![ChatEvent::Start {
                    id: "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY".into(),
                    model: "claude-3-5-sonnet-20241022".into(),
                }],
                vec![],
                vec![],
                vec![ChatEvent::Text("Hello".into())],
                vec![ChatEvent::Text("!".into())],
                vec![],
                vec![
                    ChatEvent::Finish(FinishReason::Stop),
                    ChatEvent::Usage(TokenUsage {
                        prompt: 25,
                        completion: 15,
                        total: 40,
                        cache_read: None,
                        cache_write: None,
                    }),
                ],
                vec![ChatEvent::Done],
            ]
        );
    }

    #[test]
    fn the_documented_tool_use_stream_decodes_event_by_event() {
        let events = decode_all(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-6","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay, let's check the weather for San Francisco, CA:"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"San Francisco, CA\"}"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        assert_eq!(
            events,
            vec![
                vec![ChatEvent::Start {
                    id: "msg_014p7gG3wDgGV9EUtLvnow3U".into(),
                    model: "claude-opus-4-6".into(),
                }],
                vec![],
                vec![],
                vec![ChatEvent::Text(
                    "Okay, let's check the weather for San Francisco, CA:".into()
                )],
                vec![],
                vec![ChatEvent::ToolCallStart {
                    index: 0,
                    id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                    name: "get_weather".into(),
                }],
                vec![],
                vec![ChatEvent::ToolCallArguments {
                    index: 0,
                    delta: "{\"location\":".into(),
                }],
                vec![ChatEvent::ToolCallArguments {
                    index: 0,
                    delta: " \"San Francisco, CA\"}".into(),
                }],
                vec![],
                vec![
                    ChatEvent::Finish(FinishReason::ToolCalls),
                    ChatEvent::Usage(TokenUsage {
                        prompt: 472,
                        completion: 89,
                        total: 561,
                        cache_read: None,
                        cache_write: None,
                    }),
                ],
                vec![ChatEvent::Done],
            ]
        );
    }

    #[test]
    fn tool_calls_are_numbered_in_order_and_thinking_is_skipped() {
        let events = decode_all(&[
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_a","name":"a","input":{}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_b","name":"b","input":{"x":1}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":9,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            ),
            ("future_event", r#"{"type":"future_event","x":1}"#),
        ]);
        assert_eq!(
            events.concat(),
            vec![
                ChatEvent::ToolCallStart {
                    index: 0,
                    id: "toolu_a".into(),
                    name: "a".into()
                },
                ChatEvent::ToolCallStart {
                    index: 1,
                    id: "toolu_b".into(),
                    name: "b".into()
                },
                ChatEvent::ToolCallArguments {
                    index: 1,
                    delta: r#"{"x":1}"#.into()
                },
                ChatEvent::ToolCallArguments {
                    index: 0,
                    delta: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn message_delta_input_and_cache_figures_win_over_message_start() {
        let events = decode_all(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"model":"claude-haiku-4-5-20251001","id":"msg_01K2","type":"message","role":"assistant","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":849,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":10}}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"input_tokens":900,"cache_creation_input_tokens":3,"cache_read_input_tokens":40,"output_tokens":47}}"#,
            ),
        ]);
        assert_eq!(
            events[1],
            vec![
                ChatEvent::Finish(FinishReason::Length),
                ChatEvent::Usage(TokenUsage {
                    prompt: 943,
                    completion: 47,
                    total: 990,
                    cache_read: Some(40),
                    cache_write: Some(3),
                }),
            ]
        );
        // No stop reason, no usage: nothing.
        let events = decode_all(&[(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":null}}"#,
        )]);
        assert_eq!(events, vec![vec![]]);
    }

    #[test]
    fn stream_errors_are_classified() {
        let cases = [
            ("overloaded_error", FailureClass::Overloaded),
            ("rate_limit_error", FailureClass::RateLimited),
            ("api_error", FailureClass::Upstream5xx),
            ("authentication_error", FailureClass::Auth),
            ("permission_error", FailureClass::Auth),
            ("invalid_request_error", FailureClass::InvalidRequest),
            ("something_new", FailureClass::Upstream5xx),
        ];
        for (kind, class) in cases {
            let data = format!(
                r#"{{"type": "error", "error": {{"type": "{kind}", "message": "Overloaded"}}}}"#
            );
            let mut decoder = AnthropicDecoder::default();
            let mut out = Vec::new();
            let err = decoder.decode(&sse("error", &data), &mut out).unwrap_err();
            assert_eq!(err.class, class, "{kind}");
            assert_eq!(err.vendor_message.as_deref(), Some("Overloaded"));
            assert!(out.is_empty());
            // The type inside the data alone is enough.
            let unnamed = SseEvent {
                event: None,
                data: data.clone(),
            };
            let err = decoder.decode(&unnamed, &mut out).unwrap_err();
            assert_eq!(err.class, class);
        }
        let mut out = Vec::new();
        let err = AnthropicDecoder::default()
            .decode(&sse("error", "upstream exploded"), &mut out)
            .unwrap_err();
        assert_eq!(err.class, FailureClass::Upstream5xx);
    }

    #[test]
    fn undecodable_stream_events_are_errors_never_panics() {
        for data in [
            "<html>502</html>",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"He"#,
            "not json",
        ] {
            let mut out = Vec::new();
            let err = AnthropicDecoder::default()
                .decode(&sse("content_block_delta", data), &mut out)
                .unwrap_err();
            assert_eq!(err.class, FailureClass::MalformedResponse, "{data}");
        }
        let err = AnthropicDecoder::default()
            .decode(
                &sse(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use"}}"#,
                ),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(err.class, FailureClass::MalformedResponse);
        // Odd shapes that are JSON are tolerated.
        let mut decoder = AnthropicDecoder::default();
        let mut out = Vec::new();
        for data in [
            "[]",
            "null",
            "42",
            r#"{"type":"message_start"}"#,
            r#"{"type":"message_start","message":{"usage":"x"}}"#,
            r#"{"type":"content_block_delta"}"#,
            r#"{"type":"content_block_start","content_block":null}"#,
            r#"{"type":"message_delta","usage":{"output_tokens":"many"}}"#,
            "",
        ] {
            decoder.decode(&sse("x", data), &mut out).unwrap();
        }
        assert_eq!(
            out,
            vec![
                ChatEvent::Start {
                    id: String::new(),
                    model: String::new()
                };
                2
            ]
        );
    }

    #[test]
    fn failures_are_classified_by_status_and_error_type() {
        let body = |kind: &str, message: &str| {
            format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"{message}"}}}}"#)
        };
        let overloaded = body("overloaded_error", "Overloaded");
        let f = classify(529, overloaded.as_bytes());
        assert_eq!(f.class, FailureClass::Overloaded);
        assert_eq!(f.status, Some(529));
        assert_eq!(f.detail, "HTTP 529 overloaded_error");
        assert_eq!(f.vendor_message.as_deref(), Some("Overloaded"));
        assert_eq!(
            classify(500, overloaded.as_bytes()).class,
            FailureClass::Overloaded
        );
        let cases = [
            (
                429,
                body("rate_limit_error", "slow down"),
                FailureClass::RateLimited,
            ),
            (
                401,
                body("authentication_error", "invalid x-api-key"),
                FailureClass::Auth,
            ),
            (403, body("permission_error", "no"), FailureClass::Auth),
            (402, body("billing_error", "pay"), FailureClass::Billing),
            (
                400,
                body("billing_error", "credit balance is too low"),
                FailureClass::Billing,
            ),
            (
                400,
                body(
                    "invalid_request_error",
                    "prompt is too long: 210000 tokens > 200000 maximum",
                ),
                FailureClass::ContextOverflow,
            ),
            (
                400,
                body("invalid_request_error", "Prompt Is Too Long"),
                FailureClass::ContextOverflow,
            ),
            (
                413,
                body("request_too_large", "Request exceeds the maximum size"),
                FailureClass::ContextOverflow,
            ),
            (
                400,
                body("invalid_request_error", "max_tokens: Field required"),
                FailureClass::InvalidRequest,
            ),
            (
                404,
                body("not_found_error", "model: claude-x"),
                FailureClass::InvalidRequest,
            ),
            (
                500,
                body("api_error", "Internal server error"),
                FailureClass::Upstream5xx,
            ),
            (503, String::new(), FailureClass::Overloaded),
            (529, String::new(), FailureClass::Overloaded),
            (
                502,
                "<html><h1>502 Bad Gateway</h1></html>".into(),
                FailureClass::Upstream5xx,
            ),
            (429, "<html>".into(), FailureClass::RateLimited),
            (401, String::new(), FailureClass::Auth),
            (400, "{\"error\":".into(), FailureClass::InvalidRequest),
            (
                400,
                r#"{"error":"flat string"}"#.into(),
                FailureClass::InvalidRequest,
            ),
        ];
        for (status, body, class) in cases {
            let f = classify(status, body.as_bytes());
            assert_eq!(f.class, class, "{status} {body}");
            assert_eq!(f.status, Some(status));
        }
        let f = classify(502, b"<html>bad gateway</html>");
        assert_eq!(f.detail, "HTTP 502");
        assert_eq!(f.vendor_message, None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn fragment() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":3}}}"#.to_string()),
                Just(r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"n"}}"#.to_string()),
                Just(r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{"}}"#.to_string()),
                Just(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#.to_string()),
                Just(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}"#.to_string()),
                Just(r#"{"type":"message_stop"}"#.to_string()),
                ".{0,40}",
            ]
        }

        proptest! {
            #[test]
            fn the_decoder_never_panics(
                events in proptest::collection::vec(
                    (proptest::option::of("[a-z_]{0,12}"), fragment(), 0usize..80), 0..12),
            ) {
                let mut decoder = AnthropicDecoder::default();
                let mut out = Vec::new();
                for (event, data, cut) in events {
                    let cut = (0..=cut.min(data.len())).rev().find(|i| data.is_char_boundary(*i)).unwrap_or(0);
                    let _ = decoder.decode(&SseEvent { event, data: data[..cut].to_string() }, &mut out);
                }
            }

            #[test]
            fn arbitrary_answers_and_errors_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..256),
                status in 100u16..600,
            ) {
                let _ = decode_answer(&bytes);
                prop_assert_eq!(classify(status, &bytes).status, Some(status));
            }
        }
    }
}
