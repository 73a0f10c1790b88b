//! `cargo run --release -p lowart-bench -- usage`: usage summaries over a million rows.
//!
//! Fills a fresh SQLite database with `BENCH_USAGE_ROWS` (1,000,000) usage rows spread
//! over 30 days, 20 users with 2 keys each and 5 models, through the gateway's own usage
//! writer: the rows are written as usage spill files (the `UsageRecord` JSON lines the
//! gateway spills when its database does not take them), which the release gateway
//! replays at start through the same insert as its live batches (rows and rollups in one
//! transaction), `PART` rows per start. Then it times
//! `GET /admin/usage/summary?group_by=model|user|key|day` and a few `GET /admin/usage`
//! pages, one request at a time on a keep-alive connection. Every summary's request count
//! must add up to the rows written. Prints a table and writes `target/bench/usage.json`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::BoxError;
use crate::gateway::{self, ADMIN_KEY, Spec};
use crate::http::Conn;
use crate::sse::pct;

const DAYS: i64 = 30;
const USERS: u64 = 20;
const KEYS_PER_USER: u64 = 2;
const MODELS: [(&str, f64, f64); 5] = [
    ("gpt-4o", 2.5, 10.0),
    ("gpt-4o-mini", 0.15, 0.6),
    ("claude-sonnet", 3.0, 15.0),
    ("llama-70b", 0.0, 0.0),
    ("embed", 0.02, 0.0),
];
/// Rows replayed per gateway start (one spill file, one transaction).
const PART: u64 = 250_000;
/// The gateway's spill file in its working directory (`database.usage_spill_file`).
const SPILL_FILE: &str = "lowart-usage.spill.jsonl";
/// Timed calls per query, after two untimed ones.
const CALLS: usize = 20;
/// The goal per summary call on SQLite.
const GOAL_MS: f64 = 200.0;

/// A small deterministic generator (SplitMix64), so every run writes the same rows.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Row `i` of `rows`, in time order over the last `DAYS` days before `end`, as a spill
/// line (a `UsageRecord`).
fn row(i: u64, rows: u64, end: i64) -> Value {
    let span = DAYS * 24 * 3_600_000;
    let created_at = end - span + (i as i64 * span) / rows as i64;
    let r = mix(i);
    let user = r % USERS;
    let key = user * KEYS_PER_USER + (r >> 8) % KEYS_PER_USER;
    let (model, input, output) = MODELS[((r >> 16) % MODELS.len() as u64) as usize];
    let status: u16 = match (r >> 24) % 200 {
        0 => 502,
        1 => 429,
        2 => 499,
        _ => 200,
    };
    let ok = status == 200;
    let prompt = 20 + ((r >> 32) % 4_000) as i64;
    let completion = if model == "embed" {
        0
    } else {
        ((r >> 44) % 800) as i64
    };
    let priced = input > 0.0 || output > 0.0;
    let (usage, cost_micros, cost_status) = match (ok, priced) {
        (false, _) => (Value::Null, Value::Null, "unknown"),
        (true, priced) => (
            json!({"prompt": prompt, "completion": completion, "total": prompt + completion}),
            if priced {
                json!((prompt as f64 * input + completion as f64 * output).round() as i64)
            } else {
                Value::Null
            },
            if priced { "priced" } else { "unpriced" },
        ),
    };
    // Latencies over three decades, 40 ms to 40 s, most of them short.
    let spread = ((r >> 52) % 1000) as f64 / 1000.0;
    let latency_ms = (40.0 * 1000f64.powf(spread.powf(1.5))) as i64;
    json!({
        "request_id": format!("bench-{i}"),
        "user_id": format!("user-{user:02}"),
        "key_id": format!("key-{key:02}"),
        "model": model,
        "deployment_id": format!("dep-{model}"),
        "usage": usage,
        "cost_micros": cost_micros,
        "cost_status": cost_status,
        "status": status,
        "error_class": if ok { Value::Null } else { json!("upstream_error") },
        "latency_ms": latency_ms,
        "overhead_ms": 0.3,
        "ttft_ms": null,
        "stream": false,
        "usage_source": if ok { "reported" } else { "missing" },
        "created_at": created_at,
        "attempts": 1,
    })
}

/// Writes rows `from..to` as the gateway's spill file in `dir`.
fn write_spill(dir: &Path, from: u64, to: u64, rows: u64, end: i64) -> Result<(), BoxError> {
    let mut out = BufWriter::new(std::fs::File::create(dir.join(SPILL_FILE))?);
    for i in from..to {
        serde_json::to_writer(&mut out, &row(i, rows, end))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Fills the database in `spec.dir` with `rows` rows, `PART` per gateway start; answers
/// the time the gateway took to replay them (its start times).
async fn fill(spec: &Spec, rows: u64) -> Result<Duration, BoxError> {
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut took = Duration::ZERO;
    let mut from = 0;
    while from < rows {
        let to = (from + PART).min(rows);
        write_spill(&spec.dir, from, to, rows, end)?;
        let (gw, ready) = spec.start().await?;
        gw.stop().await?;
        if spec.dir.join(SPILL_FILE).exists() {
            return Err("the gateway did not replay the usage spill file".into());
        }
        took += ready;
        from = to;
        eprintln!("bench: {to} usage rows replayed");
    }
    Ok(took)
}

/// One timed query: its path and the durations of its calls, in ms.
struct Timing {
    path: String,
    ms: Vec<f64>,
    groups: usize,
}

/// Calls `path` twice untimed, then `CALLS` times; with `rows`, checks that the groups'
/// requests add up to it.
async fn time(conn: &mut Conn, path: &str, rows: Option<u64>) -> Result<Timing, BoxError> {
    let mut ms = Vec::with_capacity(CALLS);
    let mut groups = 0;
    for call in 0..CALLS + 2 {
        let t0 = Instant::now();
        let (status, body) = conn.call(Method::GET, path, Some(ADMIN_KEY), None).await?;
        let took = t0.elapsed().as_secs_f64() * 1e3;
        if status != StatusCode::OK {
            return Err(format!("GET {path}: {status} {}", String::from_utf8_lossy(&body)).into());
        }
        if call >= 2 {
            ms.push(took);
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        let data = answer["data"].as_array().ok_or("no data")?;
        groups = data.len();
        if let Some(rows) = rows {
            let requests: u64 = data.iter().filter_map(|g| g["requests"].as_u64()).sum();
            if requests != rows {
                return Err(format!("GET {path}: {requests} requests, expected {rows}").into());
            }
        }
    }
    Ok(Timing {
        path: path.to_owned(),
        ms,
        groups,
    })
}

pub async fn run(root: &Path, pinned: bool) -> Result<(), BoxError> {
    let rows = crate::env_num("BENCH_USAGE_ROWS", 1_000_000.0) as u64;
    let dir: PathBuf =
        std::env::temp_dir().join(format!("lowart-bench-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let spec = Spec {
        bin: gateway::binary(root),
        dir: dir.clone(),
        pin: pinned,
        wrapper: Vec::new(),
    };
    eprintln!("bench: writing {rows} usage rows through the gateway's usage writer");
    let fill_time = fill(&spec, rows).await?;
    let db_mib = std::fs::metadata(dir.join("lowart.db"))?.len() as f64 / (1024.0 * 1024.0);
    eprintln!(
        "bench: {rows} rows in {:.1} s ({:.0} rows/s), database {db_mib:.0} MiB",
        fill_time.as_secs_f64(),
        rows as f64 / fill_time.as_secs_f64()
    );

    let (gw, _) = spec.start().await?;
    let mut conn = Conn::open(gw.addr).await?;
    let mut timings = Vec::new();
    for group_by in ["model", "user", "key", "day"] {
        let path = format!("/admin/usage/summary?group_by={group_by}");
        timings.push(time(&mut conn, &path, Some(rows)).await?);
    }
    // The last week and a half, from the middle of an hour: whole days from the daily
    // rollups, the hours around them from the hourly ones.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64
        - 10 * 24 * 3_600_000
        - 5_400_000;
    for path in [
        format!("/admin/usage/summary?group_by=model&since={since}"),
        "/admin/usage/summary?group_by=day&user_id=user-07".to_owned(),
        "/admin/usage?limit=100".to_owned(),
        "/admin/usage?limit=100&user_id=user-07&model=gpt-4o".to_owned(),
        "/admin/usage?limit=100&status=error".to_owned(),
    ] {
        timings.push(time(&mut conn, &path, None).await?);
    }
    gw.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);

    let mut table = format!(
        "Usage API over {rows} usage rows on SQLite ({DAYS} days, {USERS} users, {} keys, {} models); \
         fill {:.1} s ({:.0} rows/s replayed through the usage writer), database {db_mib:.0} MiB\n\n\
         | query | groups/rows | median ms | p90 ms | max ms | goal |\n| --- | ---: | ---: | ---: | ---: | --- |\n",
        USERS * KEYS_PER_USER,
        MODELS.len(),
        fill_time.as_secs_f64(),
        rows as f64 / fill_time.as_secs_f64(),
    );
    let mut results = Vec::new();
    for t in &mut timings {
        let (median, p90) = (pct(&mut t.ms, 0.5), pct(&mut t.ms, 0.9));
        let max = t.ms.iter().copied().fold(0.0, f64::max);
        let goal = if t.path.contains("summary") {
            if max < GOAL_MS {
                "PASS < 200 ms"
            } else {
                "MISS < 200 ms"
            }
        } else {
            ""
        };
        table.push_str(&format!(
            "| `{}` | {} | {median:.1} | {p90:.1} | {max:.1} | {goal} |\n",
            t.path, t.groups
        ));
        results.push(
            json!({"path": t.path, "groups": t.groups, "median_ms": median,
            "p90_ms": p90, "max_ms": max}),
        );
    }
    print!("{table}");
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let path = out.join("usage.json");
    let json = json!({"rows": rows, "days": DAYS, "users": USERS,
        "keys": USERS * KEYS_PER_USER, "models": MODELS.len(),
        "fill_seconds": fill_time.as_secs_f64(), "database_mib": db_mib,
        "calls_per_query": CALLS, "queries": results});
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("results: {}", path.display());
    Ok(())
}
