//! How the store announces what it changed. An admin write ends its transaction with
//! `PendingChanges::commit`: on PostgreSQL each change is queued in the transaction as a
//! `NOTIFY` on the gateway's channel (delivered to the other instances at commit, never on
//! rollback); then `StoreActor::run_change` announces the changes to this instance's
//! `ChangeFeed` and answers once they are applied.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};

use super::StoreError;
use crate::actors::ASK_TIMEOUT;
use crate::actors::feed::{Announce, Change, NotApplied};
use crate::domain::change::{CHANNEL, encode_notice};

/// The feed answers within `ASK_TIMEOUT` of an announcement (it bounds each subscriber).
pub(super) const ANNOUNCE_TIMEOUT: Duration = ASK_TIMEOUT.saturating_add(Duration::from_secs(1));

/// Where the store's changes go: this instance's feed (none in one-shot CLI commands), and
/// the instance's id, which its `NOTIFY`s carry so its own listener skips them.
#[derive(Clone)]
pub(super) struct Announcer {
    pub(super) feed: Option<Recipient<Announce>>,
    pub(super) origin: Arc<str>,
}

impl Announcer {
    pub(super) fn new() -> Self {
        Self {
            feed: None,
            origin: uuid::Uuid::new_v4().simple().to_string().into(),
        }
    }

    /// Delivers `changes` to this instance's feed, in order; answers once each is applied.
    pub(super) async fn announce(&self, changes: &[Change]) -> Result<(), NotApplied> {
        let Some(feed) = &self.feed else {
            return Ok(());
        };
        for change in changes {
            feed.send(Announce(change.clone()))
                .timeout(ANNOUNCE_TIMEOUT)
                .await
                .map_err(|e| NotApplied {
                    subscriber: "change feed",
                    cause: e.to_string(),
                })??;
        }
        Ok(())
    }

    pub(super) fn pending(&self, changes: Vec<Change>) -> PendingChanges {
        PendingChanges {
            changes,
            origin: self.origin.clone(),
        }
    }
}

/// The changes one admin write makes, handed to the write so it commits with them.
pub(crate) struct PendingChanges {
    changes: Vec<Change>,
    origin: Arc<str>,
}

impl PendingChanges {
    /// Commits `txn`; on PostgreSQL it first queues a `NOTIFY` of each change in it.
    pub(super) async fn commit(&self, txn: DatabaseTransaction) -> Result<(), StoreError> {
        if txn.get_database_backend() == DbBackend::Postgres {
            for change in &self.changes {
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_notify($1, $2)",
                    [CHANNEL.into(), encode_notice(&self.origin, change).into()],
                ))
                .await?;
            }
        }
        txn.commit().await?;
        Ok(())
    }
}
