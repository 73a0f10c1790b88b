//! Sequential streamed requests: time to the first content chunk (client receive time
//! minus the mock's stamped send time) and total stream time.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::BoxError;
use crate::http::Conn;

#[derive(Debug, Clone, Default)]
pub struct Sse {
    pub first_p50: f64,
    pub first_p99: f64,
    pub total_p50: f64,
    pub total_p99: f64,
    pub streams: usize,
    pub bad: usize,
}

impl Sse {
    pub fn to_json(&self) -> serde_json::Value {
        json!({"first_chunk_p50_ms": self.first_p50, "first_chunk_p99_ms": self.first_p99,
               "total_p50_ms": self.total_p50, "total_p99_ms": self.total_p99,
               "streams": self.streams, "bad_streams": self.bad})
    }
}

pub async fn measure(addr: SocketAddr, auth: Option<&str>, n: usize) -> Result<Sse, BoxError> {
    let body = Bytes::from_static(
        br#"{"model":"bench","messages":[{"role":"user","content":"hello"}],"stream":true}"#,
    );
    let mut conn = Conn::open(addr).await?;
    let (mut first, mut total, mut bad) = (Vec::new(), Vec::new(), 0);
    for _ in 0..n {
        let t0 = Instant::now();
        let res = conn
            .send(
                Method::POST,
                "/v1/chat/completions",
                auth,
                Some(body.clone()),
            )
            .await?;
        if res.status() != StatusCode::OK {
            bad += 1;
            let _ = res.into_body().collect().await;
            continue;
        }
        let mut body = res.into_body();
        let mut buf = Vec::new();
        let mut got_first = false;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            if !got_first && let Some(stamp) = stamp(&buf) {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
                first.push(now.saturating_sub(stamp) as f64 / 1e6);
                got_first = true;
            }
        }
        total.push(t0.elapsed().as_secs_f64() * 1e3);
        if !got_first || !buf.trim_ascii_end().ends_with(b"data: [DONE]") {
            bad += 1;
        }
    }
    Ok(Sse {
        first_p50: pct(&mut first, 0.50),
        first_p99: pct(&mut first, 0.99),
        total_p50: pct(&mut total, 0.50),
        total_p99: pct(&mut total, 0.99),
        streams: n,
        bad,
    })
}

/// The nanosecond stamp after `t=` once the digits are complete.
fn stamp(buf: &[u8]) -> Option<u128> {
    let at = buf.windows(3).position(|w| w == b"\"t=")? + 3;
    let digits: Vec<u8> = buf[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    if at + digits.len() >= buf.len() {
        return None; // the number may continue in the next frame
    }
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}
