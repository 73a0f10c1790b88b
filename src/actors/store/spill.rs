//! The usage spill file: usage rows the database did not take, one JSON `UsageRecord` per
//! line, created with mode 0600. The store actor (writer queue full) and the writer task
//! (database down) append to it; only the writer task takes it for replay, by renaming it
//! to `<file>.replaying` first, so rows appended during a replay land in a new file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
