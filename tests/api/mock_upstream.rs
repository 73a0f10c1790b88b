//! A mock OpenAI server on its own random port, speaking the real wire format (JSON and
//! SSE). Each test scripts its replies and reads back what it received.

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
}

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub traceparent: Option<String>,
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
            authorization: req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            traceparent: req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: body.clone(),
        });
        let index = s.received.len() - 1;
        match s.flapping {
            Some(period) if (index / period) % 2 == 1 => Reply::Status(
                500,
                json!({"error": {"message": "flapping", "type": "server_error"}}),
            ),
            _ => s.replies.pop_front().unwrap_or_else(default_text),
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
    }
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
    if !stream {
        return HttpResponse::Ok().json(json!({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "upstream",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}
        }));
    }
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for word in content.split_inclusive(' ') {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        events.push(usage_chunk(prompt_tokens, completion_tokens));
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
