//! Pure logic and plain data: no actors, no I/O. Records that cross actor boundaries and
//! serialise to clients live here so `http/` never touches storage entities.

pub mod breaker;
pub mod bus;
pub mod canonical;
pub mod change;
pub mod deployment;
pub mod fallbacks;
pub mod images;
pub mod jobs;
pub mod mcp;
pub mod passthrough;
pub mod quota;
pub mod records;
pub mod scripts;
pub mod sse;
pub mod tokens;
pub mod upstream_hosts;
pub mod usage;
pub mod usage_report;
pub mod usage_rollup;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The first `quoted` name in a serde message such as "missing field `user_id`" (a name
/// has no spaces).
pub fn quoted_name(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    let name = &message[start..end];
    (!name.is_empty() && !name.contains(' ')).then(|| name.to_string())
}
