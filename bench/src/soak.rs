//! `lowart-bench soak`: does the gateway hold its memory flat under a long run? Sends a
//! fixed number of requests (closed loop, 64 keep-alive connections) in chunks, samples the
//! gateway's `VmRSS` and `RssAnon` after each chunk, and reports the growth between the
//! first sample after warm-up and the last, in bytes per request.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::BoxError;
use crate::gateway::Memory;
use crate::http::Conn;

pub struct SoakSettings {
    /// Requests in all.
    pub requests: u64,
    /// Requests per chunk: the memory is sampled after each.
    pub sample_every: u64,
    /// Requests before the baseline sample.
    pub warmup: u64,
    pub conns: usize,
    /// The vendor the deployment uses: `OpenAI` (the bench mock over HTTP) or `Mock`.
    pub vendor: String,
}

pub struct Sample {
    pub requests: u64,
    pub failed: u64,
    pub rps: f64,
    pub memory: Memory,
}

pub struct Soak {
    pub samples: Vec<Sample>,
}

/// Runs the soak against `addr`; `sample` reads the gateway's memory.
pub async fn run(
    addr: SocketAddr,
    auth: &str,
    body: &'static str,
    s: &SoakSettings,
    sample: impl Fn() -> Result<Memory, BoxError>,
) -> Result<Soak, BoxError> {
    let mut conns = Vec::with_capacity(s.conns);
    for _ in 0..s.conns {
        conns.push(Some(Conn::open(addr).await?));
    }
    let body = Bytes::from_static(body.as_bytes());
    let auth: Arc<str> = Arc::from(auth);
    let mut samples = vec![Sample {
        requests: 0,
        failed: 0,
        rps: f64::NAN,
        memory: sample()?,
    }];
    let mut sent = 0;
    while sent < s.requests {
        let chunk = s.sample_every.min(s.requests - sent);
        let next = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(conns.len());
        for slot in &mut conns {
            let conn = slot.take();
            let (next, failed, body, auth) =
                (next.clone(), failed.clone(), body.clone(), auth.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = conn;
                while next.fetch_add(1, Ordering::Relaxed) < chunk {
                    if conn.is_none() {
                        conn = Conn::open(addr).await.ok();
                    }
                    let Some(c) = conn.as_mut() else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let res = c
                        .call(
                            Method::POST,
                            "/v1/chat/completions",
                            Some(&auth),
                            Some(body.clone()),
                        )
                        .await;
                    match res {
                        Ok((StatusCode::OK, _)) => {}
                        Ok(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
                conn
            }));
        }
        for (slot, task) in conns.iter_mut().zip(tasks) {
            *slot = task.await?;
        }
        let secs = t0.elapsed().as_secs_f64();
        sent += chunk;
        let failed = failed.load(Ordering::Relaxed);
        let memory = sample()?;
        eprintln!(
            "bench: soak {sent:>9} requests, {:>8.0} req/s, RssAnon {:>7.1} MiB, VmRSS {:>7.1} MiB{}",
            chunk as f64 / secs,
            mib(memory.rss_anon),
            mib(memory.vm_rss),
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            }
        );
        samples.push(Sample {
            requests: sent,
            failed,
            rps: chunk as f64 / secs,
            memory,
        });
    }
    Ok(Soak { samples })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Soak {
    /// The first sample at or after the warm-up, and the last.
    fn window(&self, warmup: u64) -> Option<(&Sample, &Sample)> {
        let first = self.samples.iter().find(|x| x.requests >= warmup)?;
        let last = self.samples.last()?;
        (last.requests > first.requests).then_some((first, last))
    }

    /// Growth per request between the first sample after warm-up and the last:
    /// (`RssAnon`, `VmRSS`), in bytes.
    pub fn growth(&self, warmup: u64) -> Option<(f64, f64)> {
        let (first, last) = self.window(warmup)?;
        let n = (last.requests - first.requests) as f64;
        let per = |a: u64, b: u64| (b as f64 - a as f64) / n;
        Some((
            per(first.memory.rss_anon, last.memory.rss_anon),
            per(first.memory.vm_rss, last.memory.vm_rss),
        ))
    }

    /// The least-squares slope of `RssAnon` over the samples from the warm-up on, in bytes
    /// per request (less sensitive than `growth` to where the last sample falls), and the
    /// lowest and highest `RssAnon` among them.
    pub fn trend(&self, warmup: u64) -> Option<(f64, u64, u64)> {
        let points: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|x| x.requests >= warmup)
            .map(|x| (x.requests as f64, x.memory.rss_anon as f64))
            .collect();
        if points.len() < 2 {
            return None;
        }
        let n = points.len() as f64;
        let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
        let my = points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let anon = points.iter().map(|p| p.1 as u64);
        let (lo, hi) = (anon.clone().min()?, anon.max()?);
        Some((sxy / sxx, lo, hi))
    }

    pub fn table(&self, s: &SoakSettings) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nLowart soak: {} requests to a `{}` deployment, {} connections, closed loop",
            s.requests, s.vendor, s.conns
        );
        let _ = writeln!(
            out,
            "{:>10} {:>10} {:>8} {:>13} {:>11}",
            "requests", "req/s", "failed", "RssAnon (MiB)", "VmRSS (MiB)"
        );
        for x in &self.samples {
            let _ = writeln!(
                out,
                "{:>10} {:>10.0} {:>8} {:>13.2} {:>11.2}",
                x.requests,
                x.rps,
                x.failed,
                mib(x.memory.rss_anon),
                mib(x.memory.vm_rss)
            );
        }
        match (self.window(s.warmup), self.growth(s.warmup)) {
            (Some((first, last)), Some((anon, rss))) => {
                let _ = writeln!(
                    out,
                    "growth from {} to {} requests: RssAnon {:+.2} MiB ({anon:+.2} bytes/request), VmRSS {:+.2} MiB ({rss:+.2} bytes/request)",
                    first.requests,
                    last.requests,
                    mib(last.memory.rss_anon) - mib(first.memory.rss_anon),
                    mib(last.memory.vm_rss) - mib(first.memory.vm_rss),
                );
            }
            _ => {
                let _ = writeln!(out, "growth: no sample after the warm-up");
            }
        }
        if let Some((slope, lo, hi)) = self.trend(s.warmup) {
            let _ = writeln!(
                out,
                "RssAnon from {} requests on: least-squares slope {slope:+.2} bytes/request, range {:.2}..{:.2} MiB",
                s.warmup,
                mib(lo),
                mib(hi)
            );
        }
        out
    }

    pub fn to_json(&self, s: &SoakSettings) -> serde_json::Value {
        let growth = self.growth(s.warmup);
        let trend = self.trend(s.warmup);
        json!({
            "requests": s.requests, "sample_every": s.sample_every, "warmup": s.warmup,
            "connections": s.conns, "vendor": s.vendor,
            "samples": self.samples.iter().map(|x| json!({
                "requests": x.requests, "rps": x.rps, "failed": x.failed,
                "rss_anon_bytes": x.memory.rss_anon, "vm_rss_bytes": x.memory.vm_rss,
            })).collect::<Vec<_>>(),
            "growth_bytes_per_request": growth.map(|(anon, rss)| json!({
                "rss_anon": anon, "vm_rss": rss})),
            "rss_anon_after_warmup": trend.map(|(slope, lo, hi)| json!({
                "slope_bytes_per_request": slope, "min_bytes": lo, "max_bytes": hi})),
        })
    }
}
