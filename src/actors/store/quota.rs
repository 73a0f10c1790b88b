//! Shared quota counters (`quota_counters`): the database hands out leases of units to
//! each instance's `QuotaActor`, in a transaction that holds the counter's row, so every
//! instance on one database draws from the same limit.
//!
//! A per-minute counter keeps its last minute (a `SlidingWindow`, as JSON); a total
//! (tokens or micro-dollars a user may spend in all) keeps what has been leased in all,
//! starting from the user's recorded spend (the usage rollups) when the counter is first
//! needed.

use actix::prelude::*;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
};

use super::{StoreActor, StoreError, begin_write};
use crate::domain::quota::SlidingWindow;
use crate::entities::quota_counter;

/// What one counter counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterKind {
    /// Units per minute (requests, tokens).
    PerMinute,
    /// Units a user may spend in all; a new counter starts from the user's recorded spend.
    Total { user_id: String, unit: SpendUnit },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendUnit {
    Tokens,
    Micros,
}

/// Take up to `want` (at least `need`) units of `subject` under `limit`, after adding
/// `adjust` (units spent beyond an earlier lease, or, when negative, unspent units given
/// back by a total). `need = want = 0` only applies the adjustment.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Leased, StoreError>")]
pub struct LeaseUnits {
    pub subject: String,
    pub kind: CounterKind,
    pub limit: u64,
    pub need: u64,
    pub want: u64,
    pub adjust: i64,
    pub now_ms: i64,
}

/// A lease: `granted` units (0: refused, `need` did not fit), and the counter after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub granted: u64,
    /// The shared last minute, this lease included (per-minute counters only).
    pub window: SlidingWindow,
    /// Units counted now, this lease included.
    pub used: u64,
}

pub fn total_subject(unit: SpendUnit, user_id: &str) -> String {
    match unit {
        SpendUnit::Tokens => format!("tokens:user:{user_id}"),
        SpendUnit::Micros => format!("micros:user:{user_id}"),
    }
}

/// What `user_id` has spent according to its usage rows (their hourly rollups).
async fn recorded_spend(
    txn: &DatabaseTransaction,
    user_id: &str,
    unit: SpendUnit,
) -> Result<u64, StoreError> {
    let spend = super::usage_rollup::user_spend(txn, user_id).await?;
    let spent = match unit {
        SpendUnit::Tokens => spend.tokens,
        SpendUnit::Micros => spend.cost_micros,
    };
    Ok(spent.max(0) as u64)
}

/// Locks the counter's row for this transaction, creating it if needed. On PostgreSQL the
/// UPDATE takes the row lock; SQLite's `BEGIN IMMEDIATE` already holds the database.
async fn lock_counter(
    txn: &DatabaseTransaction,
    msg: &LeaseUnits,
) -> Result<quota_counter::Model, StoreError> {
    let touch = || {
        quota_counter::Entity::update_many()
            .col_expr(quota_counter::Column::UpdatedAt, Expr::value(msg.now_ms))
            .filter(quota_counter::Column::Subject.eq(msg.subject.as_str()))
    };
    if touch().exec(txn).await?.rows_affected == 0 {
        let used = match &msg.kind {
            CounterKind::PerMinute => 0,
            CounterKind::Total { user_id, unit } => recorded_spend(txn, user_id, *unit).await?,
        };
        let row = quota_counter::ActiveModel {
            subject: Set(msg.subject.clone()),
            used: Set(i64::try_from(used).unwrap_or(i64::MAX)),
            window: Set(None),
            updated_at: Set(msg.now_ms),
        };
        quota_counter::Entity::insert(row)
            .on_conflict_do_nothing()
            .exec(txn)
            .await?;
        touch().exec(txn).await?;
    }
    quota_counter::Entity::find_by_id(msg.subject.clone())
        .one(txn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("quota counter `{}`", msg.subject)))
}

async fn lease(txn: &DatabaseTransaction, msg: &LeaseUnits) -> Result<Leased, StoreError> {
    let row = lock_counter(txn, msg).await?;
    let (granted, window, used) = match msg.kind {
        CounterKind::PerMinute => {
            let mut window: SlidingWindow = row
                .window
                .as_deref()
                .and_then(|w| serde_json::from_str(w).ok())
                .unwrap_or_default();
            window.expire(msg.now_ms);
            if msg.adjust >= 0 {
                window.add(msg.now_ms, msg.adjust as u64);
            } else {
                window.remove(msg.adjust.unsigned_abs());
            }
            let used = window.used(msg.now_ms);
            let granted = grant(used, msg);
            window.add(msg.now_ms, granted);
            let used = window.used(msg.now_ms);
            (granted, window, used)
        }
        CounterKind::Total { .. } => {
            let used = (row.used.max(0) as u64).saturating_add_signed(msg.adjust);
            let granted = grant(used, msg);
            (granted, SlidingWindow::default(), used + granted)
        }
    };
    let window_json = match msg.kind {
        CounterKind::PerMinute => Some(serde_json::to_string(&window).unwrap_or_default()),
        CounterKind::Total { .. } => None,
    };
    quota_counter::Entity::update_many()
        .col_expr(
            quota_counter::Column::Used,
            Expr::value(i64::try_from(used).unwrap_or(i64::MAX)),
        )
        .col_expr(quota_counter::Column::Window, Expr::value(window_json))
        .filter(quota_counter::Column::Subject.eq(msg.subject.as_str()))
        .exec(txn)
        .await?;
    Ok(Leased {
        granted,
        window,
        used,
    })
}

/// Units granted when `used` are counted: all of `want` that fits, nothing if `need`
/// does not.
fn grant(used: u64, msg: &LeaseUnits) -> u64 {
    let room = msg.limit.saturating_sub(used);
    if msg.need > room {
        0
    } else {
        msg.want.max(msg.need).min(room)
    }
}

impl Handler<LeaseUnits> for StoreActor {
    type Result = ResponseFuture<Result<Leased, StoreError>>;

    fn handle(&mut self, msg: LeaseUnits, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let txn = begin_write(&db).await?;
            let leased = lease(&txn, &msg).await?;
            txn.commit().await?;
            Ok(leased)
        })
    }
}

/// From a quota actor that stops: give these units back to the shared counters. `done`
/// is dropped once they are written (or could not be), which is how shutdown knows.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReturnUnits {
    pub returns: Vec<LeaseUnits>,
    pub done: tokio::sync::mpsc::Sender<()>,
}

impl Handler<ReturnUnits> for StoreActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: ReturnUnits, _: &mut Self::Context) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            for units in &msg.returns {
                let written = async {
                    let txn = begin_write(&db).await?;
                    lease(&txn, units).await?;
                    txn.commit().await?;
                    Ok::<_, StoreError>(())
                };
                if let Err(e) = written.await {
                    tracing::warn!(error = %e, subject = %units.subject,
                        "quota: unused units could not be given back");
                }
            }
            drop(msg.done);
        })
    }
}

/// Deletes `user_id`'s total counters (inside a change's own transaction, or alone).
pub(super) async fn reset_spend_counters(
    conn: &impl ConnectionTrait,
    user_id: &str,
) -> Result<(), StoreError> {
    let subjects = [SpendUnit::Tokens, SpendUnit::Micros].map(|u| total_subject(u, user_id));
    quota_counter::Entity::delete_many()
        .filter(quota_counter::Column::Subject.is_in(subjects))
        .exec(conn)
        .await?;
    Ok(())
}
