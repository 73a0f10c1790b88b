//! `StoreActor`: the only owner of the SeaORM `DatabaseConnection` (and of the master key
//! that seals secrets at rest). Queries run as futures on the actor's own arbiter, so the
//! mailbox never waits on the database; usage rows are buffered and written in batches by
//! one writer task, in order, so a flush is a barrier.

mod audit;
mod bootstrap;
mod deployments;
mod fallbacks;
mod keys;
pub mod messages;
mod secrets;
mod usage;
mod users;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use crate::crypto::MasterKey;
use crate::domain::upstream_hosts::UpstreamHosts;
use crate::entities::usage as usage_entity;

pub use messages::*;
pub use secrets::sealed_key_ids;

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
    Batch(Vec<usage_entity::ActiveModel>),
    Barrier(oneshot::Sender<()>),
}

pub struct StoreActor {
    db: DatabaseConnection,
    master_key: Arc<MasterKey>,
    /// Where deployments may point (`security.upstream_hosts`).
    upstream_hosts: Arc<UpstreamHosts>,
    usage_buffer: Vec<usage_entity::ActiveModel>,
    batch_size: usize,
    flush_every: Duration,
    writer: mpsc::UnboundedSender<WriterCmd>,
    writer_rx: Option<mpsc::UnboundedReceiver<WriterCmd>>,
}

impl StoreActor {
    pub fn new(
        db: DatabaseConnection,
        master_key: Arc<MasterKey>,
        batch_size: usize,
        flush_every: Duration,
    ) -> Self {
        let (writer, writer_rx) = mpsc::unbounded_channel();
        Self {
            db,
            master_key,
            upstream_hosts: Arc::default(),
            usage_buffer: Vec::with_capacity(batch_size),
            batch_size,
            flush_every,
            writer,
            writer_rx: Some(writer_rx),
        }
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

    fn flush_usage_buffer(&mut self) {
        if self.usage_buffer.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.usage_buffer, Vec::with_capacity(self.batch_size));
        if self.writer.send(WriterCmd::Batch(batch)).is_err() {
            tracing::error!("usage writer is gone; usage rows could not be queued");
        }
    }
}

impl Actor for StoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(rx) = self.writer_rx.take() {
            actix::spawn(usage::writer_loop(self.db.clone(), rx));
        }
        ctx.run_interval(self.flush_every, |actor, _| actor.flush_usage_buffer());
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.flush_usage_buffer();
        Running::Stop
    }
}

impl Handler<RecordUsage> for StoreActor {
    type Result = ();

    fn handle(&mut self, msg: RecordUsage, _: &mut Self::Context) {
        self.usage_buffer.push(usage::to_active_model(msg.0));
        if self.usage_buffer.len() >= self.batch_size {
            self.flush_usage_buffer();
        }
    }
}

impl Handler<FlushUsage> for StoreActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushUsage, _: &mut Self::Context) -> Self::Result {
        self.flush_usage_buffer();
        let (tx, rx) = oneshot::channel();
        let queued = self.writer.send(WriterCmd::Barrier(tx)).is_ok();
        Box::pin(async move {
            if queued {
                let _ = rx.await;
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
