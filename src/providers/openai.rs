//! OpenAI and OpenAI-compatible servers. A request that came in the OpenAI dialect is
//! forwarded as the client sent it (only the model is replaced and streams ask for
//! usage), so fields the gateway does not model survive; any other is translated from the
//! canonical model. Answers and stream chunks are decoded into canonical ones, and error
//! answers are classified.

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use super::{FailureClass, Target, UpstreamFailure, UpstreamRequest, VendorError};
use crate::domain::canonical::{
    ChatEvent, ChatRequest, ChatResponse, Dialect, FinishReason, ImageSource, Message, Part, Role,
    StreamDecoder, ToolChoice,
};
use crate::domain::sse::SseEvent;
use crate::domain::usage::TokenUsage;

/// `{base_url}/chat/completions`, tolerant of a trailing slash.
pub fn chat_url(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

/// `{base_url}/embeddings`, tolerant of a trailing slash.
pub fn embeddings_url(base_url: &str) -> String {
    format!("{}/embeddings", base_url.trim_end_matches('/'))
}

pub fn images_url(base_url: &str) -> String {
    format!("{}/images/generations", base_url.trim_end_matches('/'))
}

/// The upstream call for an image request: the client's body with the deployment's model,
/// without `response_format` (newer models refuse it; the answer is read either way).
pub fn images_request(
    url: &reqwest::Url,
    target: Target<'_>,
    body: &Map<String, Value>,
) -> Result<UpstreamRequest, UpstreamFailure> {
    let mut body = body.clone();
    body.remove("response_format");
    as_sent(url, target, body)
}

/// The client's body as it sent it, to the deployment's model.
fn as_sent(
    url: &reqwest::Url,
    target: Target<'_>,
    mut body: Map<String, Value>,
) -> Result<UpstreamRequest, UpstreamFailure> {
    body.insert(
        "model".into(),
        Value::String(target.upstream_model.to_string()),
    );
    Ok(UpstreamRequest {
        url: url.clone(),
        headers: headers(target, false)?,
        body: to_bytes(&body)?,
    })
}

/// An images answer: `data[]` of `b64_json` or `url` (with `revised_prompt`), and the
/// `usage` newer image models report.
pub fn decode_images(
    bytes: &[u8],
) -> Result<(Vec<crate::domain::images::VendorImage>, Option<TokenUsage>), UpstreamFailure> {
    use crate::domain::images::{ImageData, VendorImage};
    use base64::Engine;
    let answer: Value =
        serde_json::from_slice(bytes).map_err(|_| malformed("answer is not JSON"))?;
    let data = answer
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("images answer has no `data` array"))?;
    let mut images = Vec::with_capacity(data.len());
    for item in data {
        let revised_prompt = item
            .get("revised_prompt")
            .and_then(Value::as_str)
            .map(str::to_string);
        let data = if let Some(b64) = item.get("b64_json").and_then(Value::as_str) {
            ImageData::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| malformed("`b64_json` is not base64"))?,
            )
        } else if let Some(url) = item.get("url").and_then(Value::as_str) {
            ImageData::Url(url.to_string())
        } else {
            return Err(malformed("an image has neither `b64_json` nor `url`"));
        };
        images.push(VendorImage {
            data,
            revised_prompt,
        });
    }
    if images.is_empty() {
        return Err(malformed("images answer has no image"));
    }
    let usage = answer.get("usage").and_then(|u| {
        let prompt = u.get("input_tokens")?.as_i64()?;
        let completion = u.get("output_tokens").and_then(Value::as_i64).unwrap_or(0);
        Some(TokenUsage {
            prompt,
            completion,
            total: prompt.saturating_add(completion),
            ..TokenUsage::default()
        })
    });
    Ok((images, usage))
}

/// Headers of every call: JSON, the deployment's key as a bearer token.
fn headers(target: Target<'_>, stream: bool) -> Result<HeaderMap, UpstreamFailure> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if stream {
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    }
    if let Some(key) = target.api_key {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            UpstreamFailure::new(
                FailureClass::Auth,
                "the deployment's api_key is not a valid header value",
            )
        })?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Ok(headers)
}

fn to_bytes(body: &Map<String, Value>) -> Result<Vec<u8>, UpstreamFailure> {
    serde_json::to_vec(body)
        .map_err(|e| UpstreamFailure::new(FailureClass::InvalidRequest, e.to_string()))
}

/// The upstream call for a chat request.
pub fn chat_request(
    url: &reqwest::Url,
    target: Target<'_>,
    req: &ChatRequest,
) -> Result<UpstreamRequest, UpstreamFailure> {
    let mut body = match req.native.dialect {
        Dialect::OpenAI => req.native.body.clone(),
        Dialect::Anthropic => translate(req),
    };
    body.insert(
        "model".into(),
        Value::String(target.upstream_model.to_string()),
    );
    if req.stream {
        // Every stream is asked for usage so that it can be accounted for.
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Value::Object(options) = options {
            options.insert("include_usage".into(), Value::Bool(true));
        }
    }
    Ok(UpstreamRequest {
        url: url.clone(),
        headers: headers(target, req.stream)?,
        body: to_bytes(&body)?,
    })
}

/// The upstream call for an embeddings request: the client's body, model replaced.
pub fn embeddings_request(
    url: &reqwest::Url,
    target: Target<'_>,
    body: &Map<String, Value>,
) -> Result<UpstreamRequest, UpstreamFailure> {
    as_sent(url, target, body.clone())
}

/// A canonical request as an OpenAI chat-completion body (the model is set by the caller).
fn translate(req: &ChatRequest) -> Map<String, Value> {
    let mut body = Map::new();
    let messages: Vec<Value> = req.messages.iter().flat_map(message).collect();
    body.insert("messages".into(), Value::Array(messages));
    if !req.tools.is_empty() {
        let tools = tools_json(&req.tools);
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = &req.tool_choice {
        let choice = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
        body.insert("tool_choice".into(), choice);
    }
    if let Some(n) = req.max_tokens {
        body.insert("max_tokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if !req.stop.is_empty() {
        body.insert("stop".into(), json!(req.stop));
    }
    body.insert("stream".into(), Value::Bool(req.stream));
    body
}

/// Canonical tools as OpenAI's `tools` entries (functions).
pub fn tools_json(tools: &[crate::domain::canonical::Tool]) -> Vec<Value> {
    tools
        .iter()
        .map(|t| {
            let mut function = json!({"name": t.name, "parameters": t.parameters});
            if let Some(d) = &t.description {
                function["description"] = json!(d);
            }
            json!({"type": "function", "function": function})
        })
        .collect()
}

/// Canonical messages as OpenAI messages.
pub fn messages_json(messages: &[Message]) -> Vec<Value> {
    messages.iter().flat_map(message).collect()
}

/// One canonical message as OpenAI messages: tool results become one `tool` message each.
fn message(m: &Message) -> Vec<Value> {
    let mut out = Vec::new();
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for part in &m.content {
        match part {
            Part::Text(text) => parts.push(json!({"type": "text", "text": text})),
            Part::Image(source) => {
                let url = match source {
                    ImageSource::Url(url) => url.clone(),
                    ImageSource::Base64 { media_type, data } => {
                        format!("data:{media_type};base64,{data}")
                    }
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Part::ToolCall {
                id,
                name,
                arguments,
            } => calls.push(json!({"id": id, "type": "function",
                "function": {"name": name, "arguments": arguments}})),
            Part::ToolResult {
                call_id, content, ..
            } => out.push(json!({"role": "tool", "tool_call_id": call_id, "content": content})),
        }
    }
    let role = match m.role {
        Role::System => "system",
        Role::User | Role::Tool => "user",
        Role::Assistant => "assistant",
    };
    // Plain text stays a string: every OpenAI-compatible server reads that.
    let content = match parts.as_slice() {
        [] => Value::Null,
        [only] if only["type"] == "text" => only["text"].clone(),
        _ => Value::Array(parts),
    };
    if !content.is_null() || !calls.is_empty() {
        let mut msg = json!({"role": role, "content": content});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    }
    out
}

fn malformed(detail: impl Into<String>) -> UpstreamFailure {
    UpstreamFailure::new(FailureClass::MalformedResponse, detail)
}

/// A blocking `chat.completion` answer.
pub fn decode_answer(bytes: &[u8]) -> Result<ChatResponse, UpstreamFailure> {
    let mut answer: Value =
        serde_json::from_slice(bytes).map_err(|_| malformed("answer is not JSON"))?;
    if !answer.get("choices").is_some_and(Value::is_array) {
        return Err(malformed("answer has no `choices` array"));
    }
    let finish = answer
        .pointer("/choices/0/finish_reason")
        .and_then(Value::as_str)
        .map(FinishReason::from_openai);
    let usage = answer.get("usage").and_then(TokenUsage::from_openai);
    // The parsed answer is ours: its strings move into the canonical one, uncopied.
    let mut content = Vec::new();
    if let Some(message) = answer.pointer_mut("/choices/0/message") {
        let text = take_string(message.get_mut("content"));
        if !text.is_empty() {
            content.push(Part::Text(text));
        }
        if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
            for call in calls {
                content.push(Part::ToolCall {
                    id: take_string(call.get_mut("id")),
                    name: take_string(call.pointer_mut("/function/name")),
                    arguments: take_string(call.pointer_mut("/function/arguments")),
                });
            }
        }
    }
    Ok(ChatResponse {
        id: take_string(answer.get_mut("id")),
        model: take_string(answer.get_mut("model")),
        content,
        finish,
        usage,
    })
}

/// An embeddings answer: must be an object with a `data` array; its usage.
pub fn decode_embeddings(bytes: &[u8]) -> Result<Option<TokenUsage>, UpstreamFailure> {
    let answer: Value =
        serde_json::from_slice(bytes).map_err(|_| malformed("answer is not JSON"))?;
    if !answer.get("data").is_some_and(Value::is_array) {
        return Err(malformed("embeddings answer has no `data` array"));
    }
    Ok(answer.get("usage").and_then(|u| {
        let prompt = u.get("prompt_tokens")?.as_i64()?;
        Some(TokenUsage {
            prompt,
            completion: 0,
            total: u
                .get("total_tokens")
                .and_then(Value::as_i64)
                .unwrap_or(prompt),
            ..TokenUsage::default()
        })
    }))
}

/// The string at `v`, moved out (empty when absent or not a string).
fn take_string(v: Option<&mut Value>) -> String {
    match v {
        Some(Value::String(s)) => std::mem::take(s),
        _ => String::new(),
    }
}

/// Decodes `chat.completion.chunk` events.
#[derive(Debug, Default)]
pub struct OpenAiDecoder {
    started: bool,
}

impl StreamDecoder for OpenAiDecoder {
    fn decode(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<ChatEvent>,
    ) -> Result<(), UpstreamFailure> {
        if event.data == "[DONE]" {
            out.push(ChatEvent::Done);
            return Ok(());
        }
        let mut chunk: Value =
            serde_json::from_str(&event.data).map_err(|_| malformed("stream event is not JSON"))?;
        if let Some(error) = chunk.get("error").filter(|e| e.is_object()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(UpstreamFailure::new(FailureClass::Upstream5xx, message));
        }
        if !chunk.is_object() {
            return Err(malformed("stream event is not a JSON object"));
        }
        if !self.started {
            self.started = true;
            out.push(ChatEvent::Start {
                id: take_string(chunk.get_mut("id")),
                model: take_string(chunk.get_mut("model")),
            });
        }
        let finish = chunk
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
            .map(FinishReason::from_openai);
        // The chunk is ours: text and arguments move out of it, uncopied.
        if let Some(delta) = chunk.pointer_mut("/choices/0/delta") {
            let text = take_string(delta.get_mut("content"));
            if !text.is_empty() {
                out.push(ChatEvent::Text(text));
            }
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for call in calls {
                    let index = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .and_then(|i| usize::try_from(i).ok())
                        .unwrap_or(0);
                    if let Some(Value::String(name)) = call.pointer_mut("/function/name") {
                        let name = std::mem::take(name);
                        out.push(ChatEvent::ToolCallStart {
                            index,
                            id: take_string(call.get_mut("id")),
                            name,
                        });
                    }
                    let delta = take_string(call.pointer_mut("/function/arguments"));
                    if !delta.is_empty() {
                        out.push(ChatEvent::ToolCallArguments { index, delta });
                    }
                }
            }
        }
        if let Some(reason) = finish {
            out.push(ChatEvent::Finish(reason));
        }
        if let Some(usage) = chunk.get("usage").and_then(TokenUsage::from_openai) {
            out.push(ChatEvent::Usage(usage));
        }
        Ok(())
    }
}

/// Classifies a non-2xx answer by status and the vendor's error `code`/`type`.
pub fn classify(status: u16, body: &[u8]) -> UpstreamFailure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = VendorError::of(parsed.as_ref());
    let has = |needle: &str| error.code.contains(needle) || error.kind.contains(needle);
    let class = match status {
        429 if has("insufficient_quota") => FailureClass::Billing,
        429 => FailureClass::RateLimited,
        401 | 403 => FailureClass::Auth,
        402 => FailureClass::Billing,
        400 | 404 | 413 | 422 if has("context_length") => FailureClass::ContextOverflow,
        400 | 404 | 413 | 422 if has("content_policy") || has("content_filter") => {
            FailureClass::ContentPolicy
        }
        400..=499 => FailureClass::InvalidRequest,
        503 | 529 => FailureClass::Overloaded,
        _ => FailureClass::Upstream5xx,
    };
    UpstreamFailure {
        class,
        status: Some(status),
        detail: format!("HTTP {status} {} {}", error.code, error.kind),
        vendor_message: error.vendor_message(),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::canonical::Native;

    fn request(native: Dialect, stream: bool) -> ChatRequest {
        let mut body = Map::new();
        body.insert("model".into(), "public".into());
        body.insert("stream_options".into(), Value::Null);
        body.insert("x_vendor".into(), json!(1));
        ChatRequest {
            model: "public".into(),
            messages: vec![
                Message {
                    role: Role::System,
                    content: vec![Part::Text("be brief".into())],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![Part::ToolCall {
                        id: "c1".into(),
                        name: "f".into(),
                        arguments: "{}".into(),
                    }],
                },
                Message {
                    role: Role::Tool,
                    content: vec![Part::ToolResult {
                        call_id: "c1".into(),
                        content: "42".into(),
                        is_error: false,
                    }],
                },
            ],
            tools: vec![],
            tool_choice: Some(ToolChoice::Required),
            max_tokens: Some(10),
            temperature: None,
            top_p: None,
            stop: vec![],
            stream,
            include_usage: false,
            native: Native {
                dialect: native,
                body,
            },
        }
    }

    fn body_of(req: &UpstreamRequest) -> Value {
        serde_json::from_slice(&req.body).unwrap()
    }

    #[test]
    fn an_openai_request_is_forwarded_with_the_upstream_model_and_usage_asked_for() {
        let url = reqwest::Url::parse("http://up/v1/chat/completions").unwrap();
        let target = Target {
            upstream_model: "gpt-4o-mini",
            api_key: Some("sk"),
        };
        let built = chat_request(&url, target, &request(Dialect::OpenAI, true)).unwrap();
        let body = body_of(&built);
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["x_vendor"], 1, "unknown fields pass through");
        assert_eq!(built.headers[AUTHORIZATION], "Bearer sk");
    }

    #[test]
    fn another_dialect_is_translated_from_the_canonical_model() {
        let url = reqwest::Url::parse("http://up/v1/chat/completions").unwrap();
        let target = Target {
            upstream_model: "m",
            api_key: None,
        };
        let body =
            body_of(&chat_request(&url, target, &request(Dialect::Anthropic, false)).unwrap());
        assert!(body.get("x_vendor").is_none());
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            body["messages"][1]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(
            body["messages"][2],
            json!({"role": "tool", "tool_call_id": "c1", "content": "42"})
        );
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["max_tokens"], 10);
    }

    #[test]
    fn answers_and_chunks_decode_into_canonical_ones() {
        let answer = br#"{"id":"x","model":"m","choices":[{"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
            "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,
            "prompt_tokens_details":{"cached_tokens":1}}}"#;
        let decoded = decode_answer(answer).unwrap();
        assert_eq!(decoded.finish, Some(FinishReason::ToolCalls));
        assert_eq!(decoded.usage.unwrap().cache_read, Some(1));
        assert!(
            matches!(&decoded.content[0], Part::ToolCall { arguments, .. } if arguments == "{\"a\":1}")
        );
        assert!(decode_answer(b"<html>").is_err());
        assert!(decode_answer(b"{\"id\":1}").is_err(), "no choices");

        let mut decoder = OpenAiDecoder::default();
        let mut out = Vec::new();
        for data in [
            r#"{"id":"x","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"x","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"id":"x","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]}}]}"#,
            r#"{"id":"x","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"x","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            "[DONE]",
        ] {
            let event = SseEvent {
                event: None,
                data: data.into(),
            };
            decoder.decode(&event, &mut out).unwrap();
        }
        assert_eq!(
            out[0],
            ChatEvent::Start {
                id: "x".into(),
                model: "m".into()
            }
        );
        assert_eq!(
            out[1],
            ChatEvent::ToolCallStart {
                index: 0,
                id: "c".into(),
                name: "f".into()
            }
        );
        assert_eq!(
            out[2],
            ChatEvent::ToolCallArguments {
                index: 0,
                delta: "{\"a\"".into()
            }
        );
        assert_eq!(out[3], ChatEvent::Finish(FinishReason::ToolCalls));
        assert!(matches!(out[4], ChatEvent::Usage(u) if u.total == 5));
        assert_eq!(out[5], ChatEvent::Done);
        let not_json = SseEvent {
            event: None,
            data: "{\"choices\":[".into(),
        };
        assert!(decoder.decode(&not_json, &mut out).is_err());
    }

    #[test]
    fn failures_are_classified_by_status_and_code() {
        let ctx = br#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert_eq!(classify(400, ctx).class, FailureClass::ContextOverflow);
        assert_eq!(
            classify(400, ctx).vendor_message.as_deref(),
            Some("too long")
        );
        let quota = br#"{"error":{"message":"x","type":"insufficient_quota"}}"#;
        assert_eq!(classify(429, quota).class, FailureClass::Billing);
        assert_eq!(classify(429, b"").class, FailureClass::RateLimited);
        assert_eq!(classify(401, b"").class, FailureClass::Auth);
        assert_eq!(classify(503, b"").class, FailureClass::Overloaded);
        assert_eq!(classify(500, b"oops").class, FailureClass::Upstream5xx);
        assert_eq!(classify(422, b"{}").class, FailureClass::InvalidRequest);
    }

    #[test]
    fn images_answers_decode_bytes_urls_and_usage() {
        use crate::domain::images::ImageData;
        let answer = json!({"created": 1, "data": [
            {"b64_json": "iVBORw==", "revised_prompt": "a cat, photo"},
            {"url": "https://files.example/img.png"}],
            "usage": {"input_tokens": 12, "output_tokens": 4160, "total_tokens": 4172}});
        let (images, usage) = decode_images(answer.to_string().as_bytes()).unwrap();
        assert_eq!(
            images[0].data,
            ImageData::Bytes(vec![0x89, b'P', b'N', b'G'])
        );
        assert_eq!(images[0].revised_prompt.as_deref(), Some("a cat, photo"));
        assert_eq!(
            images[1].data,
            ImageData::Url("https://files.example/img.png".into())
        );
        let usage = usage.unwrap();
        assert_eq!(
            (usage.prompt, usage.completion, usage.total),
            (12, 4160, 4172)
        );
        for bad in [
            json!({}),
            json!({"data": []}),
            json!({"data": [{"b64_json": "%%"}]}),
            json!({"data": [{"revised_prompt": "x"}]}),
        ] {
            let failure = decode_images(bad.to_string().as_bytes()).unwrap_err();
            assert_eq!(failure.class, FailureClass::MalformedResponse, "{bad}");
        }
    }

    #[test]
    fn an_images_request_keeps_the_body_but_the_format_and_model() {
        let url = reqwest::Url::parse("https://api.example/v1/images/generations").unwrap();
        let target = Target {
            upstream_model: "gpt-image-1",
            api_key: Some("sk-x"),
        };
        let body =
            json!({"model": "img", "prompt": "p", "response_format": "url", "size": "1024x1024"});
        let Value::Object(body) = body else {
            unreachable!()
        };
        let request = images_request(&url, target, &body).unwrap();
        let sent: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            sent,
            json!({"model": "gpt-image-1", "prompt": "p", "size": "1024x1024"})
        );
    }
}
