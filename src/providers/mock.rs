//! The `Mock` vendor: deterministic, no network. It answers with the last user message,
//! reports usage (whitespace-separated words stand in for tokens), and streams word by
//! word in the OpenAI wire format, so it exercises exactly the path a real upstream does.
//!
//! Tools: when the request offers tools (and `tool_choice` is not `none`) and its last
//! message is the user's, the mock calls the named tool (or the first) once, with
//! arguments `{"input": <the user's text>}`. When the last message carries tool results,
//! it answers with their text. Embeddings are 8 numbers derived from each input's bytes.

use serde_json::{Value, json};

use crate::domain::canonical::{ChatRequest, Role, ToolChoice};

fn words(s: &str) -> i64 {
    s.split_whitespace().count() as i64
}

fn usage(req: &ChatRequest, reply: &str) -> Value {
    let prompt = words(&req.all_text()).max(1);
    let completion = words(reply);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// The longest echo the mock gives, in bytes: a huge prompt must not become a huge
/// answer (the rest is cut at a character boundary).
pub const MAX_ECHO_BYTES: usize = 16 * 1024;

/// The reply: the last user message (or the last tool results), at most `MAX_ECHO_BYTES`.
fn reply(req: &ChatRequest) -> String {
    let mut text = match req.messages.last() {
        Some(last) if last.role == Role::Tool => last.text(),
        _ => req.last_user_text(),
    };
    if text.len() > MAX_ECHO_BYTES {
        let mut cut = MAX_ECHO_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The id of the mock's tool call.
pub const TOOL_CALL_ID: &str = "toolu_mock_0";

/// The tool the mock calls, and its arguments, when it calls one.
fn tool_call(req: &ChatRequest) -> Option<(String, String)> {
    let last = req.messages.last()?;
    if last.role != Role::User || req.tools.is_empty() {
        return None;
    }
    let name = match &req.tool_choice {
        Some(ToolChoice::None) => return None,
        Some(ToolChoice::Tool(name)) => name.clone(),
        _ => req.tools[0].name.clone(),
    };
    Some((name, json!({"input": req.last_user_text()}).to_string()))
}

/// A complete `chat.completion` answer.
pub fn complete(req: &ChatRequest, id: &str, created: i64) -> Value {
    let (message, finish, reply) = match tool_call(req) {
        Some((name, arguments)) => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": TOOL_CALL_ID,
                "type": "function", "function": {"name": name, "arguments": arguments}}]}),
            "tool_calls",
            arguments,
        ),
        None => {
            let reply = reply(req);
            (
                json!({"role": "assistant", "content": reply}),
                "stop",
                reply,
            )
        }
    };
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish
        }],
        "usage": usage(req, &reply),
    })
}

/// An embeddings answer for a (validated) OpenAI embeddings body: one vector per input
/// (a text, or token ids read as their numbers' text), base64 when
/// `encoding_format` asks for it (little-endian `f32`s, as OpenAI does).
pub fn embeddings(body: &serde_json::Map<String, Value>, model: &str) -> Value {
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let as_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other
            .as_array()
            .map(|ids| {
                ids.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
    };
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::Array(items)) if !items.iter().all(Value::is_u64) => {
            items.iter().map(as_text).collect()
        }
        Some(input) => vec![as_text(input)],
        None => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut vector = [0f64; 8];
            for (j, b) in text.bytes().enumerate() {
                vector[j % 8] += f64::from(b) / 255.0;
            }
            let norm = vector.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-9);
            let vector: Vec<f64> = vector.iter().map(|v| v / norm).collect();
            let embedding = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|v| (*v as f32).to_le_bytes())
                    .collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: i64 = inputs.iter().map(|t| words(t).max(1)).sum();
    json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

/// The SSE frames of a streamed answer, as an OpenAI upstream asked for usage would send
/// them: a role chunk, one chunk per word, a finish chunk, a usage chunk, `[DONE]`. Frames
/// are made one at a time as the relay asks for them, so a stream holds one frame, not
/// the whole answer rendered.
pub fn stream_frames(req: &ChatRequest, id: &str, created: i64) -> MockStream {
    let call = tool_call(req);
    let reply = match &call {
        Some((_, arguments)) => arguments.clone(),
        None => reply(req),
    };
    MockStream {
        usage: usage(req, &reply),
        reply,
        call: call.map(|(name, _)| name),
        offset: 0,
        stage: Stage::Role,
        id: id.to_string(),
        created,
        model: req.model.clone(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Role,
    Words,
    Finish,
    Usage,
    Done,
    Ended,
}

/// The frames of one streamed mock answer, generated lazily.
pub struct MockStream {
    /// The text, or the tool call's arguments when `call` names a tool.
    reply: String,
    call: Option<String>,
    usage: Value,
    /// Where the next word starts in `reply`.
    offset: usize,
    stage: Stage,
    id: String,
    created: i64,
    model: String,
}

impl MockStream {
    /// One `chat.completion.chunk` frame with these `choices` (and `usage`, if given).
    fn frame(&self, choices: Value, usage: Option<&Value>) -> String {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": choices
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage.clone();
        }
        format!("data: {chunk}\n\n")
    }

    fn delta(&self, delta: Value, finish: Value) -> String {
        self.frame(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            None,
        )
    }
}

impl Iterator for MockStream {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            match self.stage {
                Stage::Role => {
                    self.stage = Stage::Words;
                    if let Some(name) = &self.call {
                        return Some(self.delta(
                            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                                "id": TOOL_CALL_ID, "type": "function",
                                "function": {"name": name, "arguments": ""}}]}),
                            Value::Null,
                        ));
                    }
                    return Some(
                        self.delta(json!({"role": "assistant", "content": ""}), Value::Null),
                    );
                }
                Stage::Words => {
                    let rest = &self.reply[self.offset..];
                    if rest.is_empty() {
                        self.stage = Stage::Finish;
                        continue;
                    }
                    let len = rest.find(' ').map_or(rest.len(), |i| i + 1);
                    let piece = &rest[..len];
                    let delta = match self.call {
                        Some(_) => {
                            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                        }
                        None => json!({"content": piece}),
                    };
                    let frame = self.delta(delta, Value::Null);
                    self.offset += len;
                    return Some(frame);
                }
                Stage::Finish => {
                    self.stage = Stage::Usage;
                    let finish = if self.call.is_some() {
                        "tool_calls"
                    } else {
                        "stop"
                    };
                    return Some(self.delta(json!({}), json!(finish)));
                }
                Stage::Usage => {
                    self.stage = Stage::Done;
                    return Some(self.frame(json!([]), Some(&self.usage)));
                }
                Stage::Done => {
                    self.stage = Stage::Ended;
                    return Some("data: [DONE]\n\n".to_string());
                }
                Stage::Ended => return None,
            }
        }
    }
}

/// The mock's image: a valid 1×1 PNG, the same for every prompt.
pub const PNG_1X1: [u8; 70] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x64, 0x60, 0xf8, 0x5f,
    0x0f, 0x00, 0x02, 0x87, 0x01, 0x80, 0xeb, 0x47, 0xba, 0x92, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// `n` images for an image request: the 1×1 PNG each, the prompt given back as revised.
pub fn images(
    req: &crate::domain::images::ImageRequest,
) -> Vec<crate::domain::images::VendorImage> {
    use crate::domain::images::{ImageData, VendorImage};
    (0..req.n)
        .map(|_| VendorImage {
            data: ImageData::Bytes(PNG_1X1.to_vec()),
            revised_prompt: Some(req.prompt.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> ChatRequest {
        let body = json!({"model": "mock", "messages": [{"role": "user", "content": text}]});
        crate::http::openai::dialect::parse(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn the_mock_calls_the_first_tool_offered_then_echoes_its_result() {
        let body = json!({"model": "mock", "messages": [{"role": "user", "content": "weather?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]});
        let req = crate::http::openai::dialect::parse(body.to_string().as_bytes()).unwrap();
        let answer = complete(&req, "id", 1);
        let call = &answer["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(call["function"]["arguments"], r#"{"input":"weather?"}"#);
        assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
        let streamed: String = stream_frames(&req, "id", 1).collect();
        assert!(streamed.contains(r#""finish_reason":"tool_calls""#));

        let body = json!({"model": "mock", "messages": [{"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [{"id": TOOL_CALL_ID, "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": "sunny"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]});
        let req = crate::http::openai::dialect::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            complete(&req, "id", 1)["choices"][0]["message"]["content"],
            "sunny"
        );
    }

    #[test]
    fn the_mock_echoes_the_last_user_message_with_usage() {
        let answer = complete(&request("hello there"), "id", 1);
        assert_eq!(answer["choices"][0]["message"]["content"], "hello there");
        assert_eq!(answer["usage"]["prompt_tokens"], 2);
        assert_eq!(answer["usage"]["completion_tokens"], 2);
    }

    #[test]
    fn the_mock_streams_word_by_word_and_ends_with_done() {
        let frames: Vec<String> = stream_frames(&request("one two three"), "id", 1).collect();
        assert_eq!(frames.len(), 1 + 3 + 1 + 1 + 1);
        assert!(frames[1].contains("\"content\":\"one \""));
        assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
    }

    #[test]
    fn the_echo_is_capped_at_a_character_boundary() {
        let long = "é".repeat(MAX_ECHO_BYTES);
        let answer = complete(&request(&long), "id", 1);
        let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(content.len() <= MAX_ECHO_BYTES && content.len() > MAX_ECHO_BYTES - 4);
        let streamed: usize = stream_frames(&request(&long), "id", 1)
            .map(|f| f.len())
            .max()
            .unwrap();
        assert!(
            streamed < MAX_ECHO_BYTES + 1024,
            "one frame at a time, each bounded"
        );
    }
}
