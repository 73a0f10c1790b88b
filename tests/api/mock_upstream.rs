//! A mock upstream on its own random port, speaking the real wire formats (JSON and SSE):
//! OpenAI chat completions and embeddings, and Anthropic's Messages API (`…/v1/messages`,
//! shapes as documented by Anthropic: the Message object, the named stream events, the
//! `{"type":"error","error":{…}}` bodies). Each test scripts its replies and reads back
//! what it received. With nothing scripted, each path gets its own default answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One scripted answer.
#[derive(Clone)]
pub enum Reply {
    /// A completion with this text and these token counts; streamed word by word when the
    /// request asks for a stream (with a usage chunk if `stream_options.include_usage`).
    Text {
        content: String,
        prompt_tokens: i64,
        completion_tokens: i64,
    },
    /// A completion with this text from a vendor that reports no usage (as some
    /// OpenAI-compatible servers do): no `usage` in the blocking answer, and no usage chunk
    /// in a stream even when `stream_options.include_usage` asks for one.
    TextWithoutUsage(String),
    /// This exact JSON body with status 200 (blocking requests).
    Json(Value),
    /// These exact SSE data payloads, then `[DONE]` (streaming requests).
    Events(Vec<Value>),
    /// A stream that sends its first `before` events, waits for `gate`, then the rest.
    Gated {
        events: Vec<Value>,
        before: usize,
        gate: Arc<Notify>,
    },
    /// A stream that stops after these events without `[DONE]`.
    Truncated(Vec<Value>),
    /// An error status with this body.
    Status(u16, Value),
    /// Waits this long before answering with `Text`.
    Delay(Duration),
    /// 429 with `Retry-After: <seconds>`.
    RateLimited(u64),
    /// A stream that sends a content chunk every `interval`, for as long as it is read
    /// (at most 100,000 chunks), and never `[DONE]`.
    Trickle(Duration),
    /// Never answers; notifies `stream_dropped` when the gateway hangs up.
    Hang,
    /// 200 with this exact body and content type (malformed JSON, an HTML page…).
    Raw {
        content_type: &'static str,
        body: String,
    },
    /// An Anthropic Message with one text block, `stop_reason: end_turn`; when the request
    /// has `"stream": true`, the documented event sequence (message_start,
    /// content_block_start, ping, one text_delta per word, content_block_stop,
    /// message_delta with the output tokens, message_stop).
    AnthropicText {
        content: String,
        input_tokens: i64,
        output_tokens: i64,
    },
    /// An Anthropic Message with one `tool_use` block, `stop_reason: tool_use`. Blocking:
    /// `input` is the chunks joined and parsed; streamed: content_block_start (tool_use,
    /// `input: {}`) and one `input_json_delta` per chunk.
    AnthropicToolUse {
        id: String,
        name: String,
        input_json_chunks: Vec<String>,
        input_tokens: i64,
        output_tokens: i64,
    },
    /// These exact Anthropic events `(event name, data)`, in order, then the end of the
    /// body (streaming requests).
    AnthropicEvents(Vec<(String, Value)>),
    /// These Anthropic events, then `partial` (the first bytes of an event, no blank line
    /// ending it), then the end of the body: a stream cut in the middle of an event.
    AnthropicCut {
        events: Vec<(String, Value)>,
        partial: String,
    },
    /// An OpenAI embeddings list: one `dims`-long vector per input (a string, an array of
    /// strings, a token array, an array of token arrays), with this usage.
    Embeddings { dims: usize, prompt_tokens: i64 },
    /// The same list without `usage`.
    EmbeddingsWithoutUsage { dims: usize },
}

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub traceparent: Option<String>,
    /// Anthropic's credential header.
    pub x_api_key: Option<String>,
    pub anthropic_version: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    received: Vec<Received>,
    /// When set, requests alternate in runs of this many between healthy and 500.
    flapping: Option<usize>,
    /// Notified whenever a streamed answer is dropped (finished or cut).
    stream_dropped: Arc<Notify>,
}

#[derive(Clone)]
pub struct MockUpstream {
    pub address: String,
    script: Arc<Mutex<Script>>,
}

pub fn default_text() -> Reply {
    Reply::Text {
        content: "Hello from the mock upstream".into(),
        prompt_tokens: 11,
        completion_tokens: 5,
    }
}

/// The default answer on `…/v1/messages`.
pub fn default_anthropic_text() -> Reply {
    Reply::AnthropicText {
        content: "Hello from the mock Anthropic upstream".into(),
        input_tokens: 13,
        output_tokens: 6,
    }
}

/// The default answer on `…/embeddings`.
pub fn default_embeddings() -> Reply {
    Reply::Embeddings {
        dims: 4,
        prompt_tokens: 7,
    }
}

/// What the mock answers when nothing is scripted: by the path asked.
fn default_for(path: &str) -> Reply {
    if path.ends_with("/messages") {
        default_anthropic_text()
    } else if path.ends_with("/embeddings") {
        default_embeddings()
    } else {
        default_text()
    }
}

/// An Anthropic Message object (the blocking answer of `POST /v1/messages`).
pub fn anthropic_message(content: Value, stop_reason: &str, usage: Value) -> Value {
    json!({"id": "msg_mock_01", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5", "content": content, "stop_reason": stop_reason,
        "stop_sequence": null, "usage": usage})
}

/// Anthropic's error body: `{"type":"error","error":{"type":…,"message":…}}`.
pub fn anthropic_error(error_type: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type, "message": message}})
}

/// One Anthropic stream event; the data carries the event's name as its `type`.
pub fn anthropic_event(name: &str, mut data: Value) -> (String, Value) {
    if let Some(o) = data.as_object_mut() {
        o.insert("type".into(), json!(name));
    }
    (name.to_string(), data)
}

/// `message_start` with an empty Message and this usage.
pub fn message_start(usage: Value) -> (String, Value) {
    anthropic_event(
        "message_start",
        json!({"message": {"id": "msg_mock_01", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": usage}}),
    )
}

pub fn text_block_start(index: usize) -> (String, Value) {
    anthropic_event(
        "content_block_start",
        json!({"index": index, "content_block": {"type": "text", "text": ""}}),
    )
}

pub fn text_delta(index: usize, text: &str) -> (String, Value) {
    anthropic_event(
        "content_block_delta",
        json!({"index": index, "delta": {"type": "text_delta", "text": text}}),
    )
}

pub fn block_stop(index: usize) -> (String, Value) {
    anthropic_event("content_block_stop", json!({"index": index}))
}

pub fn message_delta(stop_reason: &str, output_tokens: i64) -> (String, Value) {
    anthropic_event(
        "message_delta",
        json!({"delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}}),
    )
}

pub fn message_stop() -> (String, Value) {
    anthropic_event("message_stop", json!({}))
}

pub fn ping() -> (String, Value) {
    anthropic_event("ping", json!({}))
}

/// The `error` event Anthropic sends inside a stream.
pub fn error_event(error_type: &str, message: &str) -> (String, Value) {
    ("error".to_string(), anthropic_error(error_type, message))
}

/// A whole streamed text answer: one text_delta per word.
pub fn anthropic_text_events(
    content: &str,
    usage: Value,
    output_tokens: i64,
) -> Vec<(String, Value)> {
    let mut events = vec![message_start(usage), text_block_start(0), ping()];
    for word in content.split_inclusive(' ') {
        events.push(text_delta(0, word));
    }
    events.extend([
        block_stop(0),
        message_delta("end_turn", output_tokens),
        message_stop(),
    ]);
    events
}

pub fn chunk(delta: Value, finish: Value) -> Value {
    json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
        "model": "upstream", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

pub fn usage_chunk(prompt: i64, completion: i64) -> Value {
    json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "upstream",
        "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion}})
}

impl MockUpstream {
    pub async fn start() -> Self {
        crate::helpers::install_crypto();
        let script = Arc::new(Mutex::new(Script::default()));
        let data = web::Data::new(script.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .default_service(web::to(handle))
        })
        .workers(1)
        .disable_signals()
        .h1_allow_half_closed(false)
        .bind("127.0.0.1:0")
        .expect("mock binds");
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        Self {
            address: format!("http://{addr}"),
            script,
        }
    }

    /// Queues replies; when the queue is empty the mock answers `default_text()`.
    pub fn push(&self, reply: Reply) {
        self.script.lock().unwrap().replies.push_back(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    /// From now on, alternate runs of `period` healthy answers and `period` 500s.
    pub fn flap(&self, period: usize) {
        self.script.lock().unwrap().flapping = Some(period);
    }

    pub fn stream_dropped(&self) -> Arc<Notify> {
        self.script.lock().unwrap().stream_dropped.clone()
    }
}

async fn handle(
    script: web::Data<Arc<Mutex<Script>>>,
    req: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = {
        let mut s = script.lock().unwrap();
        s.received.push(Received {
            path: req.path().to_string(),
            authorization: header(&req, "authorization"),
            traceparent: header(&req, "traceparent"),
            x_api_key: header(&req, "x-api-key"),
            anthropic_version: header(&req, "anthropic-version"),
            body: body.clone(),
        });
        let index = s.received.len() - 1;
        match s.flapping {
            Some(period) if (index / period) % 2 == 1 => Reply::Status(
                500,
                json!({"error": {"message": "flapping", "type": "server_error"}}),
            ),
            _ => s
                .replies
                .pop_front()
                .unwrap_or_else(|| default_for(req.path())),
        }
    };
    let dropped = script.lock().unwrap().stream_dropped.clone();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    match reply {
        Reply::Delay(d) => {
            tokio::time::sleep(d).await;
            text_reply(default_text(), stream, include_usage, dropped)
        }
        Reply::TextWithoutUsage(content) => text_answer(&content, None, stream, dropped),
        Reply::Status(code, body) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap()).json(body)
        }
        Reply::RateLimited(seconds) => HttpResponse::TooManyRequests()
            .insert_header(("retry-after", seconds.to_string()))
            .json(json!({"error": {"message": "slow down", "type": "rate_limit_error"}})),
        Reply::Json(v) => HttpResponse::Ok().json(v),
        Reply::Events(events) => sse(frames(&events, true), None, dropped),
        Reply::Truncated(events) => sse(frames(&events, false), None, dropped),
        Reply::Gated {
            events,
            before,
            gate,
        } => sse(frames(&events, true), Some((before, gate)), dropped),
        text @ Reply::Text { .. } => text_reply(text, stream, include_usage, dropped),
        Reply::Trickle(interval) => {
            let signal = DropSignal(dropped);
            let ticks =
                futures_util::stream::unfold((0u32, signal), move |(n, signal)| async move {
                    if n >= 100_000 {
                        return None;
                    }
                    tokio::time::sleep(interval).await;
                    let frame = format!(
                        "data: {}\n\n",
                        chunk(json!({"content": "tick "}), Value::Null)
                    );
                    Some((
                        Ok::<_, actix_web::Error>(Bytes::from(frame)),
                        (n + 1, signal),
                    ))
                });
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .streaming(ticks.boxed_local())
        }
        Reply::Hang => {
            let _signal = DropSignal(dropped);
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Raw { content_type, body } => {
            HttpResponse::Ok().content_type(content_type).body(body)
        }
        Reply::AnthropicText {
            content,
            input_tokens,
            output_tokens,
        } => {
            let usage = json!({"input_tokens": input_tokens, "output_tokens": output_tokens});
            if stream {
                let start_usage = json!({"input_tokens": input_tokens, "output_tokens": 1});
                let events = anthropic_text_events(&content, start_usage, output_tokens);
                sse(anthropic_frames(&events), None, dropped)
            } else {
                HttpResponse::Ok().json(anthropic_message(
                    json!([{"type": "text", "text": content}]),
                    "end_turn",
                    usage,
                ))
            }
        }
        Reply::AnthropicToolUse {
            id,
            name,
            input_json_chunks,
            input_tokens,
            output_tokens,
        } => {
            if stream {
                let mut events = vec![
                    message_start(json!({"input_tokens": input_tokens, "output_tokens": 1})),
                    anthropic_event(
                        "content_block_start",
                        json!({"index": 0, "content_block": {"type": "tool_use", "id": id,
                            "name": name, "input": {}}}),
                    ),
                    ping(),
                ];
                for piece in &input_json_chunks {
                    events.push(anthropic_event(
                        "content_block_delta",
                        json!({"index": 0, "delta": {"type": "input_json_delta",
                            "partial_json": piece}}),
                    ));
                }
                events.extend([
                    block_stop(0),
                    message_delta("tool_use", output_tokens),
                    message_stop(),
                ]);
                sse(anthropic_frames(&events), None, dropped)
            } else {
                let input: Value = serde_json::from_str(&input_json_chunks.concat())
                    .expect("the scripted tool input is JSON");
                HttpResponse::Ok().json(anthropic_message(
                    json!([{"type": "tool_use", "id": id, "name": name, "input": input}]),
                    "tool_use",
                    json!({"input_tokens": input_tokens, "output_tokens": output_tokens}),
                ))
            }
        }
        Reply::AnthropicEvents(events) => sse(anthropic_frames(&events), None, dropped),
        Reply::AnthropicCut { events, partial } => {
            let mut frames = anthropic_frames(&events);
            frames.push(Bytes::from(partial));
            sse(frames, None, dropped)
        }
        Reply::Embeddings {
            dims,
            prompt_tokens,
        } => HttpResponse::Ok().json(embeddings_list(&body, dims, prompt_tokens)),
        Reply::EmbeddingsWithoutUsage { dims } => {
            let mut list = embeddings_list(&body, dims, 0);
            list.as_object_mut().unwrap().remove("usage");
            HttpResponse::Ok().json(list)
        }
    }
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// How many inputs an embeddings request carries: a string or a token array is one; an
/// array of strings or of token arrays is one each.
pub fn embedding_inputs(input: &Value) -> usize {
    match input {
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => 1,
        Value::Array(items) => items.len(),
        _ => 1,
    }
}

/// OpenAI's embeddings answer; vector `i` is deterministic (`(i + 1) / (j + 1)`-ish).
fn embeddings_list(body: &Value, dims: usize, prompt_tokens: i64) -> Value {
    let data: Vec<Value> = (0..embedding_inputs(&body["input"]))
        .map(|i| {
            let vector: Vec<f64> = (0..dims).map(|j| (i + 1) as f64 / (j + 2) as f64).collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    json!({"object": "list", "data": data, "model": body["model"],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})
}

/// Anthropic's SSE framing: `event: <name>` and `data: <json>` lines, a blank line after.
fn anthropic_frames(events: &[(String, Value)]) -> Vec<Bytes> {
    events
        .iter()
        .map(|(name, data)| Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
        .collect()
}

fn text_reply(
    reply: Reply,
    stream: bool,
    include_usage: bool,
    dropped: Arc<Notify>,
) -> HttpResponse {
    let Reply::Text {
        content,
        prompt_tokens,
        completion_tokens,
    } = reply
    else {
        unreachable!()
    };
    let usage = (!stream || include_usage).then_some((prompt_tokens, completion_tokens));
    text_answer(&content, usage, stream, dropped)
}

/// An OpenAI completion of `content` (blocking, or streamed word by word), with `usage`
/// (in the answer, or as the stream's last chunk) when given.
fn text_answer(
    content: &str,
    usage: Option<(i64, i64)>,
    stream: bool,
    dropped: Arc<Notify>,
) -> HttpResponse {
    if !stream {
        let mut answer = json!({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "upstream",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                "finish_reason": "stop"}],
        });
        if let Some((prompt, completion)) = usage {
            answer["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion});
        }
        return HttpResponse::Ok().json(answer);
    }
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for word in content.split_inclusive(' ') {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if let Some((prompt, completion)) = usage {
        events.push(usage_chunk(prompt, completion));
    }
    sse(frames(&events, true), None, dropped)
}

fn frames(events: &[Value], done: bool) -> Vec<Bytes> {
    let mut out: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\n\n")))
        .collect();
    if done {
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    out
}

/// Notifies when dropped: the mock's way to see a stream end or be cut.
struct DropSignal(Arc<Notify>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

fn sse(
    frames: Vec<Bytes>,
    gate: Option<(usize, Arc<Notify>)>,
    dropped: Arc<Notify>,
) -> HttpResponse {
    let signal = DropSignal(dropped);
    let stream = futures_util::stream::unfold(
        (frames.into_iter().enumerate(), gate, signal),
        |(mut it, gate, signal)| async move {
            let (i, frame) = it.next()?;
            if let Some((before, g)) = &gate
                && i == *before
            {
                g.notified().await;
            }
            Some((Ok::<_, actix_web::Error>(frame), (it, gate, signal)))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(stream.boxed_local())
}
