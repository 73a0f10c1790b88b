//! The usage spill file: usage rows the database did not take, one JSON `UsageRecord` per
//! line, created with mode 0600. The store actor (writer queue full) and the writer task
//! (database down) append to it; only the writer task takes it for replay, by renaming it
//! to `<file>.replaying` first, so rows appended during a replay land in a new file.
//! Lines written before costs were micro-dollars carry `cost_usd` and still replay.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

use crate::domain::usage::UsageRecord;
use crate::telemetry::metrics::Metrics;

pub struct UsageSpill {
    path: PathBuf,
    replaying: PathBuf,
    /// Serialises appends with the rename that takes the file for replay.
    lock: Mutex<()>,
}

impl UsageSpill {
    pub fn new(path: PathBuf) -> Self {
        let mut replaying = path.clone().into_os_string();
        replaying.push(".replaying");
        Self {
            path,
            replaying: PathBuf::from(replaying),
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether rows are waiting to be replayed.
    pub fn pending(&self) -> bool {
        self.path.exists() || self.replaying.exists()
    }

    /// Appends `rows` in one write; on failure the file is cut back to its previous length
    /// so no half line is left behind.
    pub fn append(&self, rows: &[UsageRecord]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(rows.len() * 512);
        for row in rows {
            serde_json::to_writer(&mut buf, row)?;
            buf.push(b'\n');
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&self.path)?;
        let before = file.metadata()?.len();
        if let Err(e) = file.write_all(&buf).and_then(|()| file.flush()) {
            let _ = file.set_len(before);
            return Err(e);
        }
        Ok(())
    }

    /// The file to replay: a `.replaying` file left by an interrupted replay, else the spill
    /// file renamed to it; `None` when there is nothing to replay.
    pub fn take(&self) -> io::Result<Option<(PathBuf, File)>> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.replaying.exists() {
            match std::fs::rename(&self.path, &self.replaying) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let file = File::open(&self.replaying)?;
        Ok(Some((self.replaying.clone(), file)))
    }
}

/// Appends `rows` to the spill file; rows it cannot take are counted as dropped and logged
/// loudly. Answers whether the rows were kept.
pub fn spill_or_drop(spill: &UsageSpill, metrics: &Metrics, rows: &[UsageRecord]) -> bool {
    match spill.append(rows) {
        Ok(()) => {
            metrics.usage_rows_spilled(rows.len());
            true
        }
        Err(e) => {
            metrics.usage_rows_dropped(rows.len());
            tracing::error!(error = %e, rows = rows.len(), file = %spill.path().display(),
                "USAGE ROWS LOST: the database did not take them and the spill file cannot be written");
            false
        }
    }
}

/// A spill line: a `UsageRecord`, or one written before costs were micro-dollars, whose
/// cost is `cost_usd` (USD, a float).
#[derive(Deserialize)]
struct SpillLine {
    #[serde(flatten)]
    record: UsageRecord,
    #[serde(default)]
    cost_usd: Option<f64>,
}

/// Reads one spill line.
pub fn parse_line(line: &[u8]) -> serde_json::Result<UsageRecord> {
    let SpillLine {
        mut record,
        cost_usd,
    } = serde_json::from_slice(line)?;
    if record.cost_micros.is_none() {
        record.cost_micros = cost_usd.map(|usd| (usd * 1e6).round() as i64);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::usage::{CostStatus, TokenUsage, UsageSource};

    fn record() -> UsageRecord {
        UsageRecord {
            request_id: "req-1".into(),
            user_id: Some("u".into()),
            key_id: Some("k".into()),
            model: "m".into(),
            deployment_id: Some("d".into()),
            usage: Some(TokenUsage {
                prompt: 11,
                completion: 5,
                total: 16,
                ..TokenUsage::default()
            }),
            cost_micros: Some(62),
            cost_status: CostStatus::Priced,
            status: 200,
            error_class: None,
            latency_ms: 12,
            overhead_ms: 0.5,
            ttft_ms: None,
            stream: false,
            usage_source: UsageSource::Reported,
            created_at: 1_764_669_600_000,
            attempts: 1,
            request_bytes: None,
            response_bytes: None,
        }
    }

    #[test]
    fn spill_lines_round_trip() {
        let line = serde_json::to_vec(&record()).unwrap();
        assert_eq!(parse_line(&line).unwrap(), record());
    }

    #[test]
    fn lines_written_with_a_dollar_cost_replay_in_micro_dollars() {
        let mut old = serde_json::to_value(record()).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("cost_micros");
        // 11 × $2/Mtok + 5 × $8/Mtok, as the float the old gateway wrote.
        fields.insert(
            "cost_usd".into(),
            serde_json::json!(11.0 * 2.0 / 1e6 + 5.0 * 8.0 / 1e6),
        );
        let line = serde_json::to_vec(&old).unwrap();
        assert_eq!(parse_line(&line).unwrap(), record());
        old["cost_usd"] = serde_json::Value::Null;
        let unpriced = parse_line(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(unpriced.cost_micros, None);
    }
}
