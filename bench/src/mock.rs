//! The fast mock OpenAI upstream: `POST /v1/chat/completions`, blocking JSON or SSE.
//!
//! The first content chunk of a stream carries the mock's send time as
//! `delta.content = "t=<unix nanos> "`, so a client can measure how long the chunk took
//! to reach it (through the gateway or not). Every SSE event is flushed on its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::BoxError;

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench mock."},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}"#;

const WORDS: [&str; 4] = ["Hello", " from", " the", " mock."];

/// Binds 127.0.0.1:0 and serves on the current runtime; returns the bound address.
pub async fn start() -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
    Ok(addr)
}

type MockBody = BoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    if req.uri().path() != "/v1/chat/completions" {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    }
    let Ok(body) = req.into_body().collect().await else {
        return Ok(plain(StatusCode::BAD_REQUEST, "unreadable body"));
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "invalid json"));
    };
    if json["stream"].as_bool() != Some(true) {
        let mut res = Response::new(Full::new(Bytes::from_static(COMPLETION.as_bytes())).boxed());
        res.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return Ok(res);
    }
    let usage = json["stream_options"]["include_usage"].as_bool() == Some(true);
    let mut res = Response::new(SseBody::new(usage).boxed());
    let h = res.headers_mut();
    h.insert("content-type", "text/event-stream".parse().unwrap());
    h.insert("cache-control", "no-cache".parse().unwrap());
    Ok(res)
}

fn plain(status: StatusCode, msg: &'static str) -> Response<MockBody> {
    let mut res = Response::new(Full::new(Bytes::from_static(msg.as_bytes())).boxed());
    *res.status_mut() = status;
    res
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn chunk(delta: &str, finish: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

/// An SSE body that returns `Pending` once between events, so hyper flushes each event
/// in its own write; the timestamp is taken when the first event is produced.
struct SseBody {
    step: usize,
    usage: bool,
    yielded: bool,
}

impl SseBody {
    fn new(usage: bool) -> Self {
        Self {
            step: 0,
            usage,
            yielded: false,
        }
    }

    fn event(&self) -> Option<String> {
        let n = WORDS.len();
        match self.step {
            0 => Some(chunk(
                &format!(
                    "{{\"role\":\"assistant\",\"content\":\"t={} \"}}",
                    unix_nanos()
                ),
                "null",
            )),
            s if s <= n => Some(chunk(&format!("{{\"content\":\"{}\"}}", WORDS[s - 1]), "null")),
            s if s == n + 1 => Some(chunk("{}", "\"stop\"")),
            s if s == n + 2 && self.usage => Some(
                "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}\n\n"
                    .to_owned(),
            ),
            s if s == n + 2 || s == n + 3 => Some("data: [DONE]\n\n".to_owned()),
            _ => None,
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if !self.yielded {
            // Give hyper a chance to flush what it has before the next event.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        let ev = self.event();
        let done = ev.as_deref() == Some("data: [DONE]\n\n");
        self.step = if done { usize::MAX } else { self.step + 1 };
        Poll::Ready(ev.map(|e| Ok(Frame::data(Bytes::from(e)))))
    }
}
