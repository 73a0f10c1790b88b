//! `UsageInbox`: where request tasks leave usage rows for the store without waking it. A
//! bounded queue the store drains on its flush tick, at once when a batch is waiting
//! (one `DrainUsage` per batch), and before every `FlushUsage` barrier. A row that finds
//! the queue full goes as a `RecordUsage` message instead: never refused, never lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::prelude::*;
use tokio::sync::mpsc;

use super::{RecordUsage, StoreActor};
use crate::domain::usage::UsageRecord;

/// From an inbox that holds a batch: drain it now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainUsage;

/// The sending side, cloned into every worker's relay.
#[derive(Clone)]
pub struct UsageInbox {
    rows: mpsc::Sender<UsageRecord>,
    store: Addr<StoreActor>,
    drain: Arc<DrainFlag>,
    batch_size: usize,
}

/// Whether a `DrainUsage` is on its way; the store lowers it as it drains.
#[derive(Debug, Default)]
pub(super) struct DrainFlag(AtomicBool);

impl DrainFlag {
    pub(super) fn lower(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Raises the flag; `true` when it was down (so this caller sends the message).
    fn raise(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }
}

/// The store's side: the queue and the flag.
pub(super) struct Inbox {
    pub(super) rows: mpsc::Receiver<UsageRecord>,
    pub(super) drain: Arc<DrainFlag>,
    pub(super) sender: mpsc::Sender<UsageRecord>,
}

impl Inbox {
    /// A queue of `capacity` rows.
    pub(super) fn new(capacity: usize) -> Self {
        let (sender, rows) = mpsc::channel(capacity.max(1));
        Self {
            rows,
            drain: Arc::default(),
            sender,
        }
    }
}

impl UsageInbox {
    pub(super) fn new(inbox: &Inbox, store: Addr<StoreActor>, batch_size: usize) -> Self {
        Self {
            rows: inbox.sender.clone(),
            store,
            drain: inbox.drain.clone(),
            batch_size: batch_size.max(1),
        }
    }

    /// Leaves one usage row for the next batch.
    pub fn record(&self, row: UsageRecord) {
        match self.rows.try_send(row) {
            Ok(()) => {
                let waiting = self.rows.max_capacity() - self.rows.capacity();
                if waiting >= self.batch_size && self.drain.raise() {
                    self.store.do_send(DrainUsage);
                }
            }
            Err(mpsc::error::TrySendError::Full(row) | mpsc::error::TrySendError::Closed(row)) => {
                self.store.do_send(RecordUsage(row));
            }
        }
    }
}
