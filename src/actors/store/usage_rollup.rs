//! The hourly rollups (`usage_hourly`): added to by the usage writer in the transaction
//! that inserts the rows they summarise, and read for spend (quotas and budgets).
//!
//! Each (hour, user, key, model) of a batch is one `INSERT … ON CONFLICT … DO UPDATE SET
//! x = usage_hourly.x + excluded.x` (SQLite and PostgreSQL alike) of one fixed statement
//! text, so the driver's per-connection statement cache holds one statement however
//! batches are shaped. Groups are written in key order, so two instances writing the same
//! rollup rows on PostgreSQL lock them in the same order.

use actix::prelude::*;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect};

use super::{GetUserSpend, StoreActor, StoreError};
use crate::domain::usage::UsageRecord;
use crate::domain::usage_report::UserSpend;
use crate::domain::usage_rollup::{RollupDelta, RollupKey, rollups};
use crate::entities::usage_hourly::{self, Column, LATENCY_COLUMNS};

/// The columns a delta adds to, with its figures.
fn sums(delta: &RollupDelta) -> impl Iterator<Item = (Column, i64)> + '_ {
    [
        (Column::Requests, delta.requests),
        (Column::Errors, delta.errors),
        (Column::PromptTokens, delta.prompt_tokens),
        (Column::CompletionTokens, delta.completion_tokens),
        (Column::TotalTokens, delta.total_tokens),
        (Column::CostMicros, delta.cost_micros),
        (Column::LatencyMsSum, delta.latency_ms_sum),
    ]
    .into_iter()
    .chain(LATENCY_COLUMNS.into_iter().zip(delta.latency))
}

/// Adds `rows` to the rollups (call it on the transaction that inserts them).
pub(super) async fn add(conn: &impl ConnectionTrait, rows: &[UsageRecord]) -> Result<(), DbErr> {
    for (key, delta) in rollups(rows) {
        add_one(conn, key, &delta).await?;
    }
    Ok(())
}

async fn add_one(
    conn: &impl ConnectionTrait,
    key: RollupKey,
    delta: &RollupDelta,
) -> Result<(), DbErr> {
    let (columns, figures): (Vec<Column>, Vec<i64>) = sums(delta).unzip();
    let identity = [Column::Hour, Column::UserId, Column::KeyId, Column::Model];
    let excluded = Alias::new("excluded");
    let mut on_conflict = OnConflict::columns(identity);
    on_conflict.values(columns.iter().map(|&c| {
        (
            c,
            Expr::col((usage_hourly::Entity, c)).add(Expr::col((excluded.clone(), c))),
        )
    }));
    let mut insert = Query::insert();
    insert
        .into_table(usage_hourly::Entity)
        .columns(identity.into_iter().chain(columns))
        .values(
            [
                Expr::val(key.hour),
                Expr::val(key.user_id),
                Expr::val(key.key_id),
                Expr::val(key.model),
            ]
            .into_iter()
            .chain(figures.into_iter().map(Expr::val)),
        )
        .map_err(|e| DbErr::Custom(format!("usage rollup statement: {e}")))?
        .on_conflict(on_conflict);
    conn.execute(&insert).await?;
    Ok(())
}

/// A user's tokens and cost over all time, from the rollups.
pub(super) async fn user_spend(
    conn: &impl ConnectionTrait,
    user_id: &str,
) -> Result<UserSpend, DbErr> {
    let sums: Option<(i64, i64)> = usage_hourly::Entity::find()
        .select_only()
        .expr(Expr::cust("CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT)"))
        .expr(Expr::cust("CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT)"))
        .filter(Column::UserId.eq(user_id))
        .into_tuple()
        .one(conn)
        .await?;
    let (tokens, cost_micros) = sums.unwrap_or_default();
    Ok(UserSpend {
        tokens,
        cost_micros,
    })
}

impl Handler<GetUserSpend> for StoreActor {
    type Result = ResponseFuture<Result<UserSpend, StoreError>>;

    fn handle(&mut self, msg: GetUserSpend, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move { Ok(user_spend(&db, &msg.user_id).await?) })
    }
}
