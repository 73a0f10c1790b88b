//! `cargo run --release -p lowart-bench`: what the Lowart gateway adds over calling the
//! upstream directly. Builds the release gateway, starts a mock upstream in-process,
//! pins the gateway to CPU 0 and this process (mock + load) to the other CPUs, and
//! measures latency at fixed rates, saturation throughput, SSE first-chunk delay, CPU
//! per request, peak RSS and cold start. The requests through the gateway come from a user
//! with RPM, TPM, token quota and budget limits that never trigger (every request is
//! admitted by a quota actor and settles its reservation: all the accounting on). Prints
//! a table against the targets, writes target/bench/results.json.
//!
//! `cargo run --release -p lowart-bench -- soak`: the memory soak instead (see `soak.rs`);
//! writes target/bench/soak.json.
//!
//! `cargo run --release -p lowart-bench -- unlimited`: the same run, as a caller without
//! limits (no admission at all); writes target/bench/results-unlimited.json.
//!
//! `cargo run --release -p lowart-bench -- usage`: usage summaries over 1,000,000 usage
//! rows instead (see `usage.rs`); writes target/bench/usage.json.

mod floor;
mod gateway;
mod http;
mod load;
mod mock;
mod report;
mod soak;
mod sse;
mod usage;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::gateway::{ADMIN_KEY, Spec};
use crate::http::call_once;
use crate::load::{Loadgen, Target};
use crate::soak::SoakSettings;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set in the re-executed, pinned copy of this process.
const PINNED_MARKER: &str = "LOWART_BENCH_PINNED";

const BODY: &str = r#"{"model":"bench","messages":[{"role":"user","content":"hello"}]}"#;

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let marker = std::env::var(PINNED_MARKER).ok();
    if std::env::args().nth(1).as_deref() == Some(floor::MODE) {
        let upstream = std::env::args().nth(2).unwrap_or_default();
        return match floor::serve(&upstream) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: floor proxy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mode = match std::env::args().nth(1).as_deref() {
        None => Mode::Overhead,
        Some("unlimited") => Mode::Unlimited,
        Some("soak") => Mode::Soak,
        Some("usage") => Mode::Usage,
        Some(other) => {
            eprintln!("bench: unknown mode `{other}` (none, `unlimited`, `soak` or `usage`)");
            return ExitCode::FAILURE;
        }
    };
    if marker.is_none() {
        let built = gateway::build(&root);
        if matches!(mode, Mode::Overhead | Mode::Unlimited) {
            Loadgen::find(&root);
        }
        if let Err(e) = built {
            if !gateway::binary(&root).exists() {
                eprintln!("bench: {e}");
                return ExitCode::FAILURE;
            }
            eprintln!(
                "bench: {e}; WARNING: using the existing, possibly stale {}",
                gateway::binary(&root).display()
            );
        }
        let has_taskset = Command::new("taskset").arg("-V").output().is_ok();
        if has_taskset && cpus >= 2 {
            eprintln!(
                "bench: gateway on CPU 0, bench (mock + load) on CPUs 1-{}",
                cpus - 1
            );
            let status = std::env::current_exe().and_then(|exe| {
                Command::new("taskset")
                    .arg("-c")
                    .arg(format!("1-{}", cpus - 1))
                    .arg(exe)
                    .args(std::env::args_os().skip(1))
                    .env(PINNED_MARKER, "1")
                    .status()
            });
            return match status {
                Ok(s) if s.success() => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            };
        }
        eprintln!("bench: no taskset or a single CPU: running unpinned");
    }
    let pinned = marker.as_deref() == Some("1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .enable_all()
        .build();
    let result = match rt {
        Ok(rt) => match mode {
            Mode::Overhead => rt.block_on(run(&root, pinned, true)),
            Mode::Unlimited => rt.block_on(run(&root, pinned, false)),
            Mode::Soak => rt.block_on(run_soak(&root, pinned)),
            Mode::Usage => rt.block_on(usage::run(&root, pinned)),
        },
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The latency, throughput and memory table (no argument).
    Overhead,
    /// The same, as a caller without limits.
    Unlimited,
    Soak,
    Usage,
}

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub struct Settings {
    pub secs: f64,
    pub warmup: f64,
    pub sse_n: usize,
    pub cold_n: usize,
    pub rates: [u32; 2],
    pub rate_conns: usize,
    pub sat_conns: usize,
    pub pinned: bool,
    pub loadgen: String,
}

/// The mock upstream and a gateway with one deployment `bench` on it, smoke-tested.
struct Setup {
    mock: std::net::SocketAddr,
    dir: PathBuf,
    spec: Spec,
    gw: gateway::Gateway,
    first_start: Duration,
}

/// Starts the mock and the gateway and registers `bench` with `vendor` (`OpenAI`: the
/// mock over HTTP; `Mock`: the gateway's built-in vendor).
async fn setup(root: &Path, pinned: bool, vendor: &str) -> Result<Setup, BoxError> {
    let mock = mock::start().await?;
    let dir: PathBuf = std::env::temp_dir().join(format!("lowart-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let wrapper = std::env::var("BENCH_GATEWAY_WRAPPER")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let spec = Spec {
        bin: gateway::binary(root),
        dir: dir.clone(),
        pin: pinned,
        wrapper,
    };
    let (gw, first_start) = spec.start().await?;
    eprintln!(
        "bench: mock on {mock}, gateway on {} (pid {})",
        gw.addr, gw.pid
    );

    let model = serde_json::json!({"model_id": "bench", "vendor_type": vendor,
        "base_url": format!("http://{mock}/v1"), "api_key": "sk-bench",
        "price_input_per_mtok": 1.0, "price_output_per_mtok": 2.0});
    let (status, body) = call_once(
        gw.addr,
        Method::POST,
        "/admin/models",
        Some(ADMIN_KEY),
        Some(Bytes::from(model.to_string())),
    )
    .await?;
    if status != StatusCode::CREATED {
        return Err(format!(
            "POST /admin/models: {status} {}",
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    for (addr, auth) in [(mock, None), (gw.addr, Some(ADMIN_KEY))] {
        let (status, body) = call_once(
            addr,
            Method::POST,
            "/v1/chat/completions",
            auth,
            Some(Bytes::from_static(BODY.as_bytes())),
        )
        .await?;
        if status != StatusCode::OK || !body.starts_with(b"{") {
            return Err(format!(
                "smoke request to {addr}: {status} {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
    }
    Ok(Setup {
        mock,
        dir,
        spec,
        gw,
        first_start,
    })
}

/// The memory soak: 1,000,000 requests by default, RSS sampled every 50,000.
async fn run_soak(root: &Path, pinned: bool) -> Result<(), BoxError> {
    let s = SoakSettings {
        requests: env_num("BENCH_SOAK_REQUESTS", 1_000_000.0) as u64,
        sample_every: (env_num("BENCH_SOAK_SAMPLE_EVERY", 50_000.0) as u64).max(1),
        warmup: env_num("BENCH_SOAK_WARMUP", 100_000.0) as u64,
        conns: 64,
        vendor: std::env::var("BENCH_SOAK_VENDOR").unwrap_or_else(|_| "OpenAI".to_owned()),
    };
    let Setup { dir, gw, .. } = setup(root, pinned, &s.vendor).await?;
    let soak = soak::run(gw.addr, ADMIN_KEY, BODY, &s, || gw.memory()).await?;
    gw.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", soak.table(&s));
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let path = out.join("soak.json");
    std::fs::write(&path, serde_json::to_string_pretty(&soak.to_json(&s))?)?;
    println!("results: {}", path.display());
    Ok(())
}

/// Creates a user whose limits never trigger in a benchmark, and answers a key of it.
async fn limited_key(gw: std::net::SocketAddr) -> Result<String, BoxError> {
    let user = serde_json::json!({"user_id": "bench-limited", "rpm_limit": 1_000_000_000u64,
        "tpm_limit": 1_000_000_000_000u64, "token_quota": 1_000_000_000_000_000u64,
        "budget_usd": 1_000_000_000.0});
    let key = serde_json::json!({"user_id": "bench-limited"});
    let mut answer = Bytes::new();
    for (path, body) in [("/admin/users", user), ("/admin/keys", key)] {
        let (status, body) = call_once(
            gw,
            Method::POST,
            path,
            Some(ADMIN_KEY),
            Some(Bytes::from(body.to_string())),
        )
        .await?;
        if status != StatusCode::CREATED {
            return Err(format!("POST {path}: {status} {}", String::from_utf8_lossy(&body)).into());
        }
        answer = body;
    }
    let key: serde_json::Value = serde_json::from_slice(&answer)?;
    key["key"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "POST /admin/keys: no key".into())
}

async fn run(root: &Path, pinned: bool, limits: bool) -> Result<(), BoxError> {
    let loadgen = Loadgen::find(root);
    let s = Settings {
        secs: env_num("BENCH_SECONDS", 10.0),
        warmup: env_num("BENCH_WARMUP_SECONDS", 2.0),
        sse_n: env_num("BENCH_SSE_REQUESTS", 200.0) as usize,
        cold_n: (env_num("BENCH_COLD_STARTS", 3.0) as usize).max(1),
        rates: [500, 2000],
        rate_conns: 16,
        sat_conns: 64,
        pinned,
        loadgen: loadgen.name(),
    };
    let Setup {
        mock,
        dir,
        spec,
        gw,
        first_start,
    } = setup(root, pinned, "OpenAI").await?;
    let caller = if limits {
        eprintln!("bench: requests through the gateway come from a user with limits");
        limited_key(gw.addr).await?
    } else {
        ADMIN_KEY.to_owned()
    };
    let direct = Target {
        addr: mock,
        auth: None,
        body: BODY,
    };
    let via = Target {
        addr: gw.addr,
        auth: Some(&caller),
        body: BODY,
    };

    let mut r = report::Results::new(&s);
    r.first_start_s = first_start.as_secs_f64();
    eprintln!("bench: warm-up {} s each", s.warmup);
    for t in [&direct, &via] {
        loadgen
            .run(t, Some(s.rates[1]), s.rate_conns, s.warmup)
            .await?;
    }
    for rate in s.rates {
        eprintln!(
            "bench: {rate} req/s for {} s, direct then via gateway",
            s.secs
        );
        let d = loadgen
            .run(&direct, Some(rate), s.rate_conns, s.secs)
            .await?;
        let g = loadgen.run(&via, Some(rate), s.rate_conns, s.secs).await?;
        r.rate_runs.push((rate, d, g));
    }
    eprintln!("bench: the floor, a bare proxy on the gateway's CPU, at the same rates");
    let proxy = floor::FloorProxy::start(mock, pinned).await?;
    let bare = Target {
        addr: proxy.addr,
        auth: None,
        body: BODY,
    };
    loadgen
        .run(&bare, Some(s.rates[1]), s.rate_conns, s.warmup)
        .await?;
    for rate in s.rates {
        let f = loadgen.run(&bare, Some(rate), s.rate_conns, s.secs).await?;
        r.floor_runs.push((rate, f));
    }
    proxy.stop().await?;
    eprintln!(
        "bench: saturation, {} connections, {} s each",
        s.sat_conns, s.secs
    );
    r.sat_direct = loadgen.run(&direct, None, s.sat_conns, s.secs).await?;
    let cpu0 = gw.cpu_time()?;
    r.sat_gateway = loadgen.run(&via, None, s.sat_conns, s.secs).await?;
    let cpu = gw.cpu_time()?.saturating_sub(cpu0);
    let served = r.sat_gateway.ok + r.sat_gateway.failed;
    r.cpu_ms_per_req = cpu.as_secs_f64() * 1e3 / served.max(1) as f64;

    eprintln!("bench: SSE, {} sequential streams each", s.sse_n);
    sse::measure(mock, None, 20).await?;
    sse::measure(gw.addr, Some(&caller), 20).await?;
    r.sse_direct = sse::measure(mock, None, s.sse_n).await?;
    r.sse_gateway = sse::measure(gw.addr, Some(&caller), s.sse_n).await?;
    r.peak_rss_mib = gw.peak_rss()? as f64 / (1024.0 * 1024.0);

    eprintln!("bench: cold start x{}", s.cold_n);
    gw.stop().await?;
    for _ in 0..s.cold_n {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (g, t) = spec.start().await?;
        r.cold_starts_s.push(t.as_secs_f64());
        g.stop().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);

    print!("{}", r.table());
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let path = out.join(if limits {
        "results.json"
    } else {
        "results-unlimited.json"
    });
    std::fs::write(&path, serde_json::to_string_pretty(&r.to_json())?)?;
    println!("results: {}", path.display());
    Ok(())
}
