//! The `Mock` vendor: deterministic, no network. It answers with the last user message,
//! reports usage (whitespace-separated words stand in for tokens), and streams word by
//! word in the OpenAI wire format, so it exercises exactly the path a real upstream does.

use serde_json::{Value, json};

use crate::domain::chat::ChatRequest;

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

/// The reply: the last user message, at most `MAX_ECHO_BYTES`.
fn reply(req: &ChatRequest) -> String {
    let mut text = req.last_user_text();
    if text.len() > MAX_ECHO_BYTES {
        let mut cut = MAX_ECHO_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// A complete `chat.completion` answer.
pub fn complete(req: &ChatRequest, id: &str, created: i64) -> Value {
    let reply = reply(req);
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": usage(req, &reply),
    })
}

/// The SSE frames of a streamed answer, as an OpenAI upstream asked for usage would send
/// them: a role chunk, one chunk per word, a finish chunk, a usage chunk, `[DONE]`. Frames
/// are made one at a time as the relay asks for them, so a stream holds one frame, not
/// the whole answer rendered.
pub fn stream_frames(req: &ChatRequest, id: &str, created: i64) -> MockStream {
    let reply = reply(req);
    MockStream {
        usage: usage(req, &reply),
        reply,
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
    reply: String,
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
                    let frame = self.delta(json!({"content": piece}), Value::Null);
                    self.offset += len;
                    return Some(frame);
                }
                Stage::Finish => {
                    self.stage = Stage::Usage;
                    return Some(self.delta(json!({}), json!("stop")));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> ChatRequest {
        let body = json!({"model": "mock", "messages": [{"role": "user", "content": text}]});
        ChatRequest::parse(body.to_string().as_bytes()).unwrap()
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
