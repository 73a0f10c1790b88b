//! The gateway child process: build, spawn (pinned to CPU 0, optionally under a wrapper
//! such as heaptrack), find its address, wait for readiness, stop with SIGTERM, read its
//! CPU time and memory from /proc.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use crate::BoxError;
use crate::http::call_once;

pub const ADMIN_KEY: &str = "lw-bench-admin-key-0123456789abcdef";
const MASTER_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The release gateway binary: under `CARGO_TARGET_DIR` when set, else `<root>/target`.
pub fn binary(root: &Path) -> PathBuf {
    if let Some(bin) = prebuilt() {
        return bin;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    target.join("release/lowart")
}

/// `BENCH_GATEWAY_BIN`: a gateway binary built beforehand (another commit's, say), run
/// instead of building this checkout's.
fn prebuilt() -> Option<PathBuf> {
    std::env::var_os("BENCH_GATEWAY_BIN").map(PathBuf::from)
}

/// Runs `cargo build --release -p lowart --bin lowart` in the workspace root (unless
/// `BENCH_GATEWAY_BIN` names a binary).
pub fn build(root: &Path) -> Result<PathBuf, BoxError> {
    if let Some(bin) = prebuilt() {
        eprintln!(
            "bench: the gateway is {} (BENCH_GATEWAY_BIN)",
            bin.display()
        );
        return Ok(bin);
    }
    eprintln!("bench: cargo build --release -p lowart --bin lowart");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "lowart", "--bin", "lowart"])
        .current_dir(root)
        .status()?;
    if !status.success() {
        return Err(format!("building the gateway failed: {status}").into());
    }
    Ok(binary(root))
}

pub struct Spec {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub pin: bool,
    /// A command the gateway runs under (`BENCH_GATEWAY_WRAPPER`, split on spaces), e.g.
    /// `heaptrack -o /tmp/lowart`.
    pub wrapper: Vec<String>,
}

impl Spec {
    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.base_env();
        if self.has_metrics_switch() {
            env.push(("LOWART_TELEMETRY__METRICS".to_owned(), "true".to_owned()));
        }
        env
    }

    fn base_env(&self) -> Vec<(String, String)> {
        let db = format!("sqlite://{}/lowart.db?mode=rwc", self.dir.display());
        vec![
            ("DATABASE_URL".to_owned(), db),
            ("LOWART_MASTER_KEY".to_owned(), MASTER_KEY.to_owned()),
            ("LOWART_ADMIN_KEY".to_owned(), ADMIN_KEY.to_owned()),
            ("LOWART_SERVER__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("LOWART_TELEMETRY__LOG_FORMAT".to_owned(), "json".to_owned()),
            (
                "RUST_LOG".to_owned(),
                "warn,lowart::startup=info".to_owned(),
            ),
        ]
    }

    /// Whether the gateway knows `telemetry.metrics` (unknown keys are config errors).
    fn has_metrics_switch(&self) -> bool {
        let out = Command::new(&self.bin)
            .arg("check-config")
            .current_dir(&self.dir)
            .envs(self.base_env())
            .output();
        let Ok(out) = out else { return false };
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map(|v| v["telemetry"].get("metrics").is_some())
            .unwrap_or(false)
    }

    /// Spawns the gateway and waits until `/readyz` answers 200. Returns the running
    /// gateway and the time from spawn to ready.
    pub async fn start(&self) -> Result<(Gateway, Duration), BoxError> {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if self.pin {
            argv.extend(["taskset", "-c", "0"].map(Into::into));
        }
        argv.extend(self.wrapper.iter().map(Into::into));
        argv.push(self.bin.clone().into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.current_dir(&self.dir)
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || watch_stderr(stderr, tx));
        let addr = match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = child.kill();
                let status = child.wait()?;
                return Err(format!("gateway did not report its address ({status})").into());
            }
        };
        loop {
            if let Ok((StatusCode::OK, _)) =
                call_once(addr, Method::GET, "/readyz", None, None).await
            {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err("gateway never became ready".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ready = t0.elapsed();
        let wrapped = !self.wrapper.is_empty();
        let pid = if wrapped {
            descendant_named(child.id(), "lowart").ok_or("no lowart process under the wrapper")?
        } else {
            child.id()
        };
        Ok((
            Gateway {
                child,
                addr,
                pid,
                wrapped,
            },
            ready,
        ))
    }
}

/// Reads the gateway's JSON log lines: sends the `listening` address, then keeps
/// draining the pipe, echoing the first few warnings and errors.
fn watch_stderr(stderr: std::process::ChildStderr, tx: tokio::sync::oneshot::Sender<SocketAddr>) {
    let mut tx = Some(tx);
    let mut echoed = 0;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(addr) = json["fields"]["addr"].as_str().and_then(|a| a.parse().ok())
            && json["fields"]["message"].as_str() == Some("listening")
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(addr);
            continue;
        }
        let level = json["level"].as_str().unwrap_or("");
        if (json.is_null() || level == "WARN" || level == "ERROR") && echoed < 20 {
            echoed += 1;
            eprintln!("gateway: {line}");
        }
    }
}

/// The first process below `root` (a wrapper) whose command name is `name`.
fn descendant_named(root: u32, name: &str) -> Option<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some((head, tail)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let comm = head[open + 1..].to_owned();
        let ppid = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid, comm));
        }
    }
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, comm) in &parents {
            if *ppid == parent {
                if comm == name {
                    return Some(*pid);
                }
                frontier.push(*pid);
            }
        }
    }
    None
}

/// Resident memory of the gateway now, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub vm_rss: u64,
    pub rss_anon: u64,
}

pub struct Gateway {
    /// The spawned process: the gateway, or the wrapper it runs under.
    child: Child,
    pub addr: SocketAddr,
    /// The gateway process itself.
    pub pid: u32,
    wrapped: bool,
}

impl Gateway {
    /// SIGTERM, then waits for the process to exit.
    pub async fn stop(mut self) -> Result<(), BoxError> {
        Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        // A wrapper such as heaptrack may take minutes to write its report.
        let limit = Duration::from_secs(if self.wrapped { 600 } else { 45 });
        let t0 = Instant::now();
        while self.child.try_wait()?.is_none() {
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                return Err(format!("gateway ignored SIGTERM for {} s", limit.as_secs()).into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// User plus system CPU time consumed so far.
    pub fn cpu_time(&self) -> Result<Duration, BoxError> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let after = stat.rsplit_once(')').ok_or("bad /proc stat")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        // After the command name: field 3 (state) is f[0], utime (14) f[11], stime (15) f[12].
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        Ok(Duration::from_secs_f64(ticks as f64 / clk_tck()))
    }

    /// Peak resident set size in bytes (VmHWM).
    pub fn peak_rss(&self) -> Result<u64, BoxError> {
        self.status_bytes("VmHWM:")
    }

    /// Resident and anonymous resident memory now.
    pub fn memory(&self) -> Result<Memory, BoxError> {
        Ok(Memory {
            vm_rss: self.status_bytes("VmRSS:")?,
            rss_anon: self.status_bytes("RssAnon:")?,
        })
    }

    /// A `kB` field of `/proc/<pid>/status`, in bytes.
    fn status_bytes(&self, field: &str) -> Result<u64, BoxError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .ok_or_else(|| format!("no {field} in /proc/{}/status", self.pid))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| format!("bad {field}"))?
            .parse()?;
        Ok(kb * 1024)
    }
}

impl Drop for Gateway {
    /// A bench that fails half-way must not leave a gateway behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.wrapped {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.pid.to_string()])
                    .status();
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
