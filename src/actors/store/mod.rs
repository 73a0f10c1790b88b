//! `StoreActor`: the only owner of the SeaORM `DatabaseConnection` (and of the master key
//! that seals secrets at rest). Queries run as futures on the actor's own arbiter, so the
//! mailbox never waits on the database; usage rows are buffered and written in batches by
//! one writer task, in order, so a flush is a barrier. The writer's queue is bounded: when
//! it is full, or the database stays down, batches go to the usage spill file instead.
//! Each admin write announces what it changed (`changes.rs`) to the change feed, and on
//! PostgreSQL to the other instances, whose changes the listener (`listener.rs`) brings in.

mod audit;
mod bootstrap;
mod bus;
mod changes;
mod deployments;
mod fallbacks;
mod inbox;
mod jobs;
mod keys;
mod listener;
mod mcp;
pub mod messages;
pub mod quota;
mod routes;
mod scripts;
mod secrets;
mod spill;
mod usage;
mod usage_query;
mod usage_rollup;
mod users;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use crate::actors::feed::{Announce, Change, NotApplied};
use crate::config::DatabaseSettings;
use crate::crypto::MasterKey;
use crate::domain::upstream_hosts::UpstreamHosts;
use crate::domain::usage::UsageRecord;
use crate::telemetry::metrics::Metrics;
use changes::{Announcer, PendingChanges};
use spill::UsageSpill;

pub use inbox::{DrainUsage, UsageInbox};
pub use listener::APPLICATION_NAME as CHANGE_LISTENER_NAME;
pub use messages::*;
pub use secrets::sealed_key_ids;
pub use usage::SpillError;

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Invalid { param: String, message: String },
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("could not seal or open a stored secret")]
    Crypto,
    /// The change committed, but this instance could not apply it to its copies.
    #[error(transparent)]
    NotApplied(#[from] NotApplied),
}

impl From<crate::crypto::CryptoError> for StoreError {
    fn from(_: crate::crypto::CryptoError) -> Self {
        StoreError::Crypto
    }
}

/// Starts a write transaction. On SQLite it takes the write lock at once (`BEGIN
/// IMMEDIATE`), so a read-then-write transaction waits for a concurrent writer instead of
/// failing with `SQLITE_BUSY` when it upgrades its lock.
pub(crate) async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

enum WriterCmd {
    Batch(Vec<UsageRecord>),
    Barrier(oneshot::Sender<()>),
    Replay(oneshot::Sender<Result<u64, SpillError>>),
}

/// How usage rows travel to the database (the `usage_*` keys of `[database]`).
#[derive(Debug, Clone)]
pub struct UsageOptions {
    pub batch_size: usize,
    pub flush_every: Duration,
    /// Capacity of the writer queue, in batches.
    pub queue_batches: usize,
    pub spill_after: Duration,
    pub spill_file: PathBuf,
}

impl UsageOptions {
    pub fn from_settings(db: &DatabaseSettings) -> Self {
        Self {
            batch_size: db.usage_batch_size.max(1),
            flush_every: Duration::from_millis(db.usage_flush_ms.max(1)),
            queue_batches: db.usage_queue_batches.max(1),
            spill_after: Duration::from_millis(db.usage_spill_after_ms),
            spill_file: db.usage_spill_file.clone(),
        }
    }
}

pub struct StoreActor {
    db: DatabaseConnection,
    master_key: Arc<MasterKey>,
    /// Where deployments may point (`security.upstream_hosts`).
    upstream_hosts: Arc<UpstreamHosts>,
    usage_buffer: Vec<UsageRecord>,
    /// Rows request tasks left without a message (`UsageInbox`).
    inbox: inbox::Inbox,
    batch_size: usize,
    flush_every: Duration,
    spill_after: Duration,
    spill: Arc<UsageSpill>,
    metrics: Arc<Metrics>,
    writer: mpsc::Sender<WriterCmd>,
    writer_rx: Option<mpsc::Receiver<WriterCmd>>,
    /// The writer queue was found full (logged once until it has room again).
    queue_full: bool,
    announcer: Announcer,
    /// The change listener's task (PostgreSQL, with a feed), and how to stop it.
    listener: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    /// Fires once the listener first listens; taken by `AwaitListening`.
    listening: Option<oneshot::Receiver<()>>,
    /// Where the listener sends the bus's notices (set once by `FollowBus`).
    bus: Arc<std::sync::OnceLock<Recipient<crate::domain::bus::BusNotice>>>,
}

impl StoreActor {
    pub fn new(
        db: DatabaseConnection,
        master_key: Arc<MasterKey>,
        usage: UsageOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (writer, writer_rx) = mpsc::channel(usage.queue_batches.max(1));
        Self {
            db,
            master_key,
            upstream_hosts: Arc::default(),
            usage_buffer: Vec::with_capacity(usage.batch_size),
            // Room for a few batches; a row that finds it full comes as a message.
            inbox: inbox::Inbox::new(usage.batch_size.saturating_mul(4)),
            batch_size: usage.batch_size,
            flush_every: usage.flush_every,
            spill_after: usage.spill_after,
            spill: Arc::new(UsageSpill::new(usage.spill_file)),
            metrics,
            writer,
            writer_rx: Some(writer_rx),
            queue_full: false,
            announcer: Announcer::new(),
            listener: None,
            listening: None,
            bus: Arc::default(),
        }
    }

    /// Announces every change this store commits to `feed`; on PostgreSQL, also listens
    /// for the other instances' changes and announces them there.
    pub fn with_change_feed(mut self, feed: Recipient<Announce>) -> Self {
        self.announcer.feed = Some(feed);
        self
    }

    /// Restricts deployments' `base_url` to these hosts (default: any host).
    pub fn with_upstream_hosts(mut self, hosts: UpstreamHosts) -> Self {
        self.upstream_hosts = Arc::new(hosts);
        self
    }

    /// Runs a query future on this actor's arbiter without blocking the mailbox.
    fn run<T, Fut>(
        &self,
        query: impl FnOnce(DatabaseConnection, Arc<MasterKey>) -> Fut,
    ) -> ResponseFuture<Result<T, StoreError>>
    where
        Fut: Future<Output = Result<T, StoreError>> + 'static,
    {
        Box::pin(query(self.db.clone(), self.master_key.clone()))
    }

    /// Runs an admin write that makes `changes`: `write` ends its transaction with
    /// `changes.commit(txn)` (on PostgreSQL the changes travel in it as `NOTIFY`). Then
    /// they are announced to this instance's feed, and the answer waits until they are
    /// applied. They are announced after a database error too: its outcome is unknown (a
    /// commit that failed may have committed), so the copies are refreshed in case.
    fn run_change<T, Fut>(
        &self,
        changes: Vec<Change>,
        write: impl FnOnce(DatabaseConnection, Arc<MasterKey>, PendingChanges) -> Fut,
    ) -> ResponseFuture<Result<T, StoreError>>
    where
        T: 'static,
        Fut: Future<Output = Result<T, StoreError>> + 'static,
    {
        let announcer = self.announcer.clone();
        let pending = announcer.pending(changes.clone());
        let written = write(self.db.clone(), self.master_key.clone(), pending);
        Box::pin(async move {
            let result = written.await;
            if !matches!(result, Ok(_) | Err(StoreError::Db(_))) {
                return result;
            }
            match announcer.announce(&changes).await {
                Ok(()) => result,
                Err(e) if result.is_ok() => Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "a write that failed was announced but not applied");
                    result
                }
            }
        })
    }

    /// Starts the change listener when there is a feed to announce to and other
    /// instances to hear from (PostgreSQL).
    fn start_listener(&mut self) {
        let Some(feed) = self.announcer.feed.clone() else {
            return;
        };
        if self.db.get_database_backend() != DbBackend::Postgres {
            return;
        }
        let (listening, awaited) = oneshot::channel();
        let listener = listener::ChangeListener {
            options: (*self.db.get_postgres_connection_pool().connect_options()).clone(),
            origin: self.announcer.origin.clone(),
            feed,
            bus: self.bus.clone(),
        };
        let (stop, stopped) = oneshot::channel();
        self.listener = Some((stop, actix::spawn(listener.run(listening, stopped))));
        self.listening = Some(awaited);
    }

    /// Starts the actor; answers its address and the usage inbox for request tasks.
    pub fn start_with_inbox(self) -> (Addr<StoreActor>, UsageInbox) {
        let context = Context::new();
        let inbox = UsageInbox::new(&self.inbox, context.address(), self.batch_size);
        (context.run(self), inbox)
    }

    /// Moves the rows waiting in the inbox into the buffer, a batch to the writer at a time.
    fn drain_inbox(&mut self) {
        self.inbox.drain.lower();
        while let Ok(row) = self.inbox.rows.try_recv() {
            self.usage_buffer.push(row);
            if self.usage_buffer.len() >= self.batch_size {
                self.flush_usage_buffer();
            }
        }
    }

    /// Hands the buffered rows to the writer; when its queue is full, appends them to the
    /// spill file instead (one short synchronous write, only while the database lags).
    fn flush_usage_buffer(&mut self) {
        if self.usage_buffer.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.usage_buffer, Vec::with_capacity(self.batch_size));
        match self.writer.try_reserve() {
            Ok(slot) => {
                slot.send(WriterCmd::Batch(batch));
                self.queue_full = false;
                return;
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                if !self.queue_full {
                    self.queue_full = true;
                    tracing::warn!(file = %self.spill.path().display(),
                        "usage writer queue is full; spilling usage rows to the file");
                }
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                tracing::error!("usage writer is gone; spilling usage rows to the file");
            }
        }
        spill::spill_or_drop(&self.spill, &self.metrics, &batch);
    }
}

impl Actor for StoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(rx) = self.writer_rx.take() {
            let writer = usage::UsageWriter::new(
                self.db.clone(),
                self.spill.clone(),
                self.metrics.clone(),
                self.spill_after,
            );
            actix::spawn(writer.run(rx));
        }
        ctx.run_interval(self.flush_every, |actor, _| {
            actor.drain_inbox();
            actor.flush_usage_buffer();
        });
        self.start_listener();
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.drain_inbox();
        self.flush_usage_buffer();
        Running::Stop
    }
}

impl Handler<RecordUsage> for StoreActor {
    type Result = ();

    fn handle(&mut self, msg: RecordUsage, _: &mut Self::Context) {
        self.drain_inbox();
        self.usage_buffer.push(msg.0);
        if self.usage_buffer.len() >= self.batch_size {
            self.flush_usage_buffer();
        }
    }
}

impl Handler<DrainUsage> for StoreActor {
    type Result = ();

    fn handle(&mut self, _: DrainUsage, _: &mut Self::Context) {
        self.drain_inbox();
    }
}

impl Handler<FlushUsage> for StoreActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushUsage, _: &mut Self::Context) -> Self::Result {
        self.drain_inbox();
        self.flush_usage_buffer();
        let writer = self.writer.clone();
        Box::pin(async move {
            usage::ask(writer, WriterCmd::Barrier).await;
        })
    }
}

impl Handler<ReplayUsageSpill> for StoreActor {
    type Result = ResponseFuture<Result<u64, SpillError>>;

    fn handle(&mut self, _: ReplayUsageSpill, _: &mut Self::Context) -> Self::Result {
        let writer = self.writer.clone();
        Box::pin(async move {
            usage::ask(writer, WriterCmd::Replay)
                .await
                .unwrap_or(Err(SpillError::WriterGone))
        })
    }
}

impl Handler<FollowBus> for StoreActor {
    type Result = ();

    fn handle(&mut self, msg: FollowBus, _: &mut Self::Context) {
        let _ = self.bus.set(msg.0);
    }
}

impl Handler<AwaitListening> for StoreActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: AwaitListening, _: &mut Self::Context) -> Self::Result {
        let listening = self.listening.take();
        Box::pin(async move {
            let Some(listening) = listening else { return };
            if tokio::time::timeout(msg.within, listening).await.is_err() {
                tracing::warn!(
                    waited_ms = msg.within.as_millis() as u64,
                    "the change listener is not listening yet; starting without it"
                );
            }
        })
    }
}

impl Handler<StopChangeListener> for StoreActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopChangeListener, _: &mut Self::Context) -> Self::Result {
        let listener = self.listener.take();
        Box::pin(async move {
            if let Some((stop, task)) = listener {
                let _ = stop.send(());
                let _ = task.await;
            }
        })
    }
}

impl Handler<Ping> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: Ping, _: &mut Self::Context) -> Self::Result {
        self.run(|db, _| async move { db.ping().await.map_err(StoreError::from) })
    }
}
