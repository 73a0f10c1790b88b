//! Usage rows: buffered by the store actor, written in batches by one writer task so
//! batches land in order and a barrier means "everything before me is written or spilled".
//! A failing batch is retried with capped exponential backoff; once the database has been
//! failing for `usage_spill_after_ms`, batches go to the spill file (one try per backoff
//! period until the database answers again), and after the next successful write the
//! spill file is replayed.
//!
//! A batch is written as INSERTs of a few fixed row counts (powers of two), in one
//! transaction with the hourly rollups it adds to (`usage_rollup.rs`), so the rollups
//! always equal the sum of the rows; the spill replay goes through the same path. The
//! database driver keeps every distinct statement text prepared, per connection (up to
//! 100 each): one INSERT per batch size would prepare a new statement for nearly every
//! batch, and on SQLite a multi-row INSERT's program takes about 1.3 KiB per row, so the
//! gateway's memory grew with every new batch size it met.

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ActiveValue::Set, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::spill::{UsageSpill, spill_or_drop};
use super::usage_rollup;
use super::{WriterCmd, begin_write};
use crate::domain::usage::UsageRecord;
use crate::entities::usage;
use crate::telemetry::metrics::Metrics;

/// First pause before retrying a failed batch; it doubles up to `RETRY_MAX`.
const RETRY_INITIAL: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Rows read from the spill file before they are inserted.
const REPLAY_CHUNK: usize = 512;
/// The most rows one INSERT carries: 256 rows × 22 columns = 5,632 bind parameters, well
/// under SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_ROWS_PER_INSERT: usize = 256;
/// After a failed replay, how long to wait before trying again.
const REPLAY_RETRY: Duration = Duration::from_secs(30);

/// Why a spill file could not be replayed (it stays where it is, for the next try).
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("usage spill file: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error(
        "replayed, but the spill file could not be removed (remove it before the next start): {0}"
    )]
    NotRemoved(std::io::Error),
    #[error("the usage writer is gone")]
    WriterGone,
}

pub(super) fn to_active_model(r: UsageRecord) -> usage::ActiveModel {
    usage::ActiveModel {
        id: Default::default(),
        request_id: Set(r.request_id),
        user_id: Set(r.user_id),
        key_id: Set(r.key_id),
        model: Set(r.model),
        deployment_id: Set(r.deployment_id),
        prompt_tokens: Set(r.usage.map(|u| u.prompt)),
        completion_tokens: Set(r.usage.map(|u| u.completion)),
        total_tokens: Set(r.usage.map(|u| u.total)),
        cost_micros: Set(r.cost_micros),
        cost_status: Set(r.cost_status.as_str().to_string()),
        status: Set(i32::from(r.status)),
        error_class: Set(r.error_class),
        latency_ms: Set(r.latency_ms),
        overhead_ms: Set(r.overhead_ms),
        ttft_ms: Set(r.ttft_ms),
        stream: Set(r.stream),
        usage_source: Set(r.usage_source.as_str().to_string()),
        created_at: Set(r.created_at),
        attempts: Set(i32::try_from(r.attempts).unwrap_or(i32::MAX)),
        cache_read_tokens: Set(r.usage.and_then(|u| u.cache_read)),
        cache_write_tokens: Set(r.usage.and_then(|u| u.cache_write)),
        request_bytes: Set(r.request_bytes),
        response_bytes: Set(r.response_bytes),
    }
}

/// The row counts of the INSERTs that write `rows` rows: full inserts of
/// `MAX_ROWS_PER_INSERT`, then the rest's binary decomposition, largest first. Every count
/// is a power of two up to `MAX_ROWS_PER_INSERT`, so there are at most 9 statement texts.
fn insert_sizes(rows: usize) -> impl Iterator<Item = usize> {
    let full = rows / MAX_ROWS_PER_INSERT;
    let rest = rows % MAX_ROWS_PER_INSERT;
    let bits = (0..MAX_ROWS_PER_INSERT.trailing_zeros())
        .rev()
        .map(|bit| 1usize << bit)
        .filter(move |size| rest & size != 0);
    std::iter::repeat_n(MAX_ROWS_PER_INSERT, full).chain(bits)
}

/// Inserts `rows` as INSERTs of the sizes `insert_sizes` gives, and adds them to the hourly
/// rollups; `conn` is a transaction, so rows and rollups land together or not at all.
async fn insert(conn: &impl ConnectionTrait, rows: &[UsageRecord]) -> Result<(), DbErr> {
    let mut rest = rows;
    for size in insert_sizes(rows.len()) {
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        usage::Entity::insert_many(chunk.iter().cloned().map(to_active_model))
            .exec_without_returning(conn)
            .await?;
        rest = tail;
    }
    usage_rollup::add(conn, rows).await
}

/// Writes one batch, atomically.
async fn insert_batch(db: &DatabaseConnection, rows: &[UsageRecord]) -> Result<(), DbErr> {
    let txn = begin_write(db).await?;
    insert(&txn, rows).await?;
    txn.commit().await
}

/// The database has been failing since `since`; the next try is due at `retry_at`.
struct Outage {
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
    spilled: usize,
}

/// The one task that writes usage rows.
pub(super) struct UsageWriter {
    db: DatabaseConnection,
    spill: Arc<UsageSpill>,
    metrics: Arc<Metrics>,
    spill_after: Duration,
    outage: Option<Outage>,
    /// Set after a failed replay: no new try before then.
    replay_at: Option<Instant>,
    /// A replayed file could not be removed: replaying it again would duplicate its rows.
    replay_disabled: bool,
}

impl UsageWriter {
    pub fn new(
        db: DatabaseConnection,
        spill: Arc<UsageSpill>,
        metrics: Arc<Metrics>,
        spill_after: Duration,
    ) -> Self {
        Self {
            db,
            spill,
            metrics,
            spill_after,
            outage: None,
            replay_at: None,
            replay_disabled: false,
        }
    }

    /// Runs commands in arrival order until every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<WriterCmd>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                WriterCmd::Batch(rows) => self.write_batch(rows).await,
                WriterCmd::Barrier(done) => {
                    let _ = done.send(());
                }
                WriterCmd::Replay(done) => {
                    let _ = done.send(self.replay().await);
                }
            }
        }
    }

    /// Writes `rows`, retrying while the database has been failing for less than
    /// `spill_after`; after that, one try when the backoff allows, else the spill file.
    /// Each try is bounded too, so a database that hangs is treated as one that fails.
    async fn write_batch(&mut self, rows: Vec<UsageRecord>) {
        let spill_after = self.spill_after;
        loop {
            let now = Instant::now();
            let budget = match &self.outage {
                None => spill_after.max(RETRY_MAX),
                Some(o) => {
                    // `None`: a window too long to represent, i.e. never spill.
                    let deadline = o.since.checked_add(spill_after);
                    if deadline.is_none_or(|d| now < d) {
                        let wake = deadline.map_or(o.retry_at, |d| o.retry_at.min(d));
                        tokio::time::sleep_until(wake).await;
                        match deadline {
                            Some(d) if Instant::now() >= d => continue,
                            Some(d) => d.saturating_duration_since(Instant::now()),
                            None => Duration::MAX,
                        }
                    } else if now >= o.retry_at {
                        RETRY_MAX
                    } else {
                        self.spill(&rows);
                        return;
                    }
                }
            };
            let started = Instant::now();
            let result = match tokio::time::timeout(budget, insert_batch(&self.db, &rows)).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", budget.as_millis())),
            };
            match result {
                Ok(()) => {
                    self.database_answered().await;
                    return;
                }
                Err(error) => self.database_failed(started, rows.len(), &error),
            }
        }
    }

    fn database_failed(&mut self, started: Instant, rows: usize, error: &str) {
        let now = Instant::now();
        match &mut self.outage {
            None => {
                tracing::warn!(%error, rows, "usage batch write failed; retrying");
                self.outage = Some(Outage {
                    since: started,
                    retry_at: now + RETRY_INITIAL,
                    backoff: RETRY_INITIAL,
                    spilled: 0,
                });
            }
            Some(o) => {
                tracing::debug!(%error, rows, "usage batch write failed again");
                o.backoff = (o.backoff * 2).min(RETRY_MAX);
                o.retry_at = now + o.backoff;
            }
        }
    }

    fn spill(&mut self, rows: &[UsageRecord]) {
        let first = self.outage.as_ref().is_some_and(|o| o.spilled == 0);
        if first {
            tracing::warn!(file = %self.spill.path().display(),
                after_ms = self.spill_after.as_millis() as u64,
                "the database is not taking usage rows; spilling them to the file until it does");
        }
        if spill_or_drop(&self.spill, &self.metrics, rows)
            && let Some(o) = &mut self.outage
        {
            o.spilled += rows.len();
        }
    }

    /// A write succeeded: the outage (if any) is over, and spilled rows are replayed.
    async fn database_answered(&mut self) {
        if let Some(o) = self.outage.take() {
            tracing::info!(
                down_ms = o.since.elapsed().as_millis() as u64,
                spilled = o.spilled,
                "usage writes succeed again"
            );
        }
        if self.replay_at.is_some_and(|at| Instant::now() < at) || !self.spill.pending() {
            return;
        }
        match self.replay().await {
            Ok(rows) if rows > 0 => tracing::info!(rows, "spilled usage rows replayed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "spilled usage rows could not be replayed yet"),
        }
    }

    /// Moves the spill file into `usage` (one transaction per file, then the file is
    /// removed); answers the rows inserted. Unreadable lines are skipped and counted as
    /// dropped.
    async fn replay(&mut self) -> Result<u64, SpillError> {
        if self.replay_disabled {
            return Ok(0);
        }
        // A file left by an interrupted replay first, then the current spill file.
        let mut result = Ok(0);
        for _ in 0..2 {
            if !self.spill.pending() {
                break;
            }
            match replay_file(&self.db, &self.spill, &self.metrics).await {
                Ok(rows) => result = result.map(|total| total + rows),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.replay_at = result.is_err().then(|| Instant::now() + REPLAY_RETRY);
        self.replay_disabled = matches!(result, Err(SpillError::NotRemoved(_)));
        result
    }
}

async fn replay_file(
    db: &DatabaseConnection,
    spill: &UsageSpill,
    metrics: &Metrics,
) -> Result<u64, SpillError> {
    let Some((path, file)) = spill.take()? else {
        return Ok(0);
    };
    let txn = begin_write(db).await?;
    let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
    let (mut replayed, mut unreadable) = (0u64, 0usize);
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        if line.trim_ascii().is_empty() {
            continue;
        }
        match super::spill::parse_line(&line) {
            Ok(row) => chunk.push(row),
            Err(e) => {
                unreadable += 1;
                tracing::error!(error = %e, line = index + 1, file = %path.display(),
                    "USAGE ROW LOST: a spill file line is not a usage row; skipped");
            }
        }
        if chunk.len() == REPLAY_CHUNK {
            insert(&txn, &chunk).await?;
            replayed += chunk.len() as u64;
            chunk.clear();
        }
    }
    insert(&txn, &chunk).await?;
    replayed += chunk.len() as u64;
    txn.commit().await?;
    metrics.usage_rows_replayed(replayed);
    metrics.usage_rows_dropped(unreadable);
    if let Err(e) = std::fs::remove_file(&path) {
        // The rows are in the database; replaying this file again would count them twice.
        tracing::error!(error = %e, file = %path.display(),
            "replayed usage spill file could not be removed; remove it by hand before the next start");
        return Err(SpillError::NotRemoved(e));
    }
    Ok(replayed)
}

/// Sends `cmd` built around a fresh reply channel and waits for the reply.
pub(super) async fn ask<T>(
    writer: mpsc::Sender<WriterCmd>,
    cmd: impl FnOnce(oneshot::Sender<T>) -> WriterCmd,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    writer.send(cmd(tx)).await.ok()?;
    rx.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_written_with_a_handful_of_statement_shapes() {
        let mut shapes = std::collections::BTreeSet::new();
        for rows in 0..=1_000 {
            let sizes: Vec<usize> = insert_sizes(rows).collect();
            assert_eq!(sizes.iter().sum::<usize>(), rows);
            assert!(
                sizes
                    .iter()
                    .all(|s| s.is_power_of_two() && *s <= MAX_ROWS_PER_INSERT)
            );
            shapes.extend(sizes);
        }
        assert_eq!(shapes.len(), 9, "1, 2, 4 … 256 rows: {shapes:?}");
    }
}
