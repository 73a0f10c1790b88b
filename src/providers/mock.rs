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

/// A complete `chat.completion` answer.
pub fn complete(req: &ChatRequest, id: &str, created: i64) -> Value {
    let reply = req.last_user_text();
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
/// them: a role chunk, one chunk per word, a finish chunk, a usage chunk, `[DONE]`.
pub fn stream_frames(req: &ChatRequest, id: &str, created: i64) -> Vec<String> {
    let reply = req.last_user_text();
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": req.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        })
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let pieces: Vec<&str> = reply.split_inclusive(' ').collect();
    for piece in pieces {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    events.push(json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": req.model,
        "choices": [], "usage": usage(req, &reply)
    }));
    let mut frames: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    frames.push("data: [DONE]\n\n".to_string());
    frames
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
        let frames = stream_frames(&request("one two three"), "id", 1);
        assert_eq!(frames.len(), 1 + 3 + 1 + 1 + 1);
        assert!(frames[1].contains("\"content\":\"one \""));
        assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
    }
}
