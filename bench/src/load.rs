//! Load generation: `oha` (installed into `target/bench-tools` when missing) or, with
//! `BENCH_LOADGEN=builtin` or when oha cannot be had, a small open-loop generator here.
//!
//! Both measure constant-rate runs with coordinated-omission correction: a request's
//! latency counts from when it was due, not from when a free connection sent it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::BoxError;
use crate::http::Conn;

/// One load run's outcome; latencies in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub rps: f64,
    pub ok: u64,
    pub failed: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Run {
    pub fn to_json(&self) -> serde_json::Value {
        json!({"rps": self.rps, "ok": self.ok, "failed": self.failed,
               "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99})
    }
}

/// What to hit and how hard.
pub struct Target<'a> {
    pub addr: SocketAddr,
    pub auth: Option<&'a str>,
    pub body: &'a str,
}

pub enum Loadgen {
    Oha {
        bin: PathBuf,
        json_flag: Vec<String>,
    },
    Builtin,
}

impl Loadgen {
    pub fn name(&self) -> String {
        match self {
            Loadgen::Oha { bin, .. } => {
                let v = Command::new(bin).arg("--version").output();
                v.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_else(|_| "oha".to_owned())
            }
            Loadgen::Builtin => "builtin open-loop generator".to_owned(),
        }
    }

    /// oha from PATH, else `<root>/target/bench-tools/bin/oha`, installing it there.
    pub fn find(root: &Path) -> Loadgen {
        if std::env::var("BENCH_LOADGEN").as_deref() == Ok("builtin") {
            return Loadgen::Builtin;
        }
        let local = root.join("target/bench-tools/bin/oha");
        let bin = if works(Path::new("oha")) {
            PathBuf::from("oha")
        } else if works(&local) {
            local
        } else {
            eprintln!(
                "bench: oha not found; installing it with `cargo install oha --locked --root {}` (takes minutes)",
                root.join("target/bench-tools").display()
            );
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let ok = Command::new(cargo)
                .args(["install", "oha", "--locked", "--root"])
                .arg(root.join("target/bench-tools"))
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok || !works(&local) {
                eprintln!("bench: installing oha failed; using the builtin generator");
                return Loadgen::Builtin;
            }
            local
        };
        let help = Command::new(&bin)
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let json_flag = if help.contains("--output-format") {
            vec!["--output-format".to_owned(), "json".to_owned()]
        } else {
            vec!["--json".to_owned()]
        };
        Loadgen::Oha { bin, json_flag }
    }

    /// Runs for `secs` with `conns` connections, at `rate` req/s (open loop) or as fast
    /// as possible (closed loop) when `rate` is `None`.
    pub async fn run(
        &self,
        t: &Target<'_>,
        rate: Option<u32>,
        conns: usize,
        secs: f64,
    ) -> Result<Run, BoxError> {
        match self {
            Loadgen::Oha { bin, json_flag } => oha(bin, json_flag, t, rate, conns, secs).await,
            Loadgen::Builtin => builtin(t, rate, conns, secs).await,
        }
    }
}

fn works(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

async fn oha(
    bin: &Path,
    json_flag: &[String],
    t: &Target<'_>,
    rate: Option<u32>,
    conns: usize,
    secs: f64,
) -> Result<Run, BoxError> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--no-tui")
        .args(json_flag)
        .args(["-z", &format!("{}ms", (secs * 1000.0) as u64)])
        .args(["-c", &conns.to_string()])
        .args(["-m", "POST", "-T", "application/json", "-d", t.body]);
    if let Some(rate) = rate {
        cmd.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    if let Some(key) = t.auth {
        cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
    }
    cmd.arg(format!("http://{}/v1/chat/completions", t.addr));
    let out = cmd.output().await?;
    if !out.status.success() {
        return Err(format!("oha failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let codes = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let ok = codes.get("200").and_then(|n| n.as_u64()).unwrap_or(0);
    let non_ok: u64 = codes
        .iter()
        .filter(|(k, _)| k.as_str() != "200")
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    // Requests cut at the deadline are not failures.
    let errors: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let pct = &v["latencyPercentiles"];
    let ms = |k: &str| pct[k].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let total = v["summary"]["total"].as_f64().unwrap_or(secs);
    Ok(Run {
        rps: ok as f64 / total,
        ok,
        failed: non_ok + errors,
        p50: ms("p50"),
        p90: ms("p90"),
        p99: ms("p99"),
    })
}

/// Open loop (`rate`) or closed loop. Each connection takes the next due slot; a request
/// sent more than 1 ms late (tokio's timer granularity) counts from its due time.
async fn builtin(
    t: &Target<'_>,
    rate: Option<u32>,
    conns: usize,
    secs: f64,
) -> Result<Run, BoxError> {
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(secs);
    let next = Arc::new(AtomicU64::new(0));
    let body = Bytes::from(t.body.to_owned());
    let auth = t.auth.map(str::to_owned);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = Conn::open(t.addr).await?;
        let (next, body, auth) = (next.clone(), body.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failed) = (Vec::new(), 0u64);
            loop {
                let due = match rate {
                    Some(r) => {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        start + Duration::from_secs_f64(i as f64 / f64::from(r))
                    }
                    None => Instant::now().max(start),
                };
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let now = Instant::now();
                let from = if now > due + Duration::from_millis(1) {
                    due
                } else {
                    now
                };
                let res = conn
                    .call(
                        Method::POST,
                        "/v1/chat/completions",
                        auth.as_deref(),
                        Some(body.clone()),
                    )
                    .await;
                match res {
                    Ok((StatusCode::OK, _)) => lat.push(from.elapsed().as_nanos() as u64),
                    Ok(_) => failed += 1,
                    Err(_) => {
                        failed += 1;
                        break;
                    }
                }
            }
            (lat, failed)
        }));
    }
    let (mut lat, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (l, f) = task.await?;
        lat.extend(l);
        failed += f;
    }
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |n| *n as f64 / 1e6)
    };
    Ok(Run {
        rps: lat.len() as f64 / secs,
        ok: lat.len() as u64,
        failed,
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
    })
}
