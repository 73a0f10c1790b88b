//! The usage rollups (`usage_hourly`, `usage_daily`): added to by the usage writer in the
//! transaction that inserts the rows they summarise, and read for spend (quotas and
//! budgets).
//!
//! Each (period, user, key, model) of a batch is one `INSERT … ON CONFLICT … DO UPDATE SET
//! x = <table>.x + excluded.x` (SQLite and PostgreSQL alike) of one fixed statement text
//! per table, so the driver's per-connection statement cache holds two statements however
//! batches are shaped. Groups are written in one order (hourly, then daily, each in key
//! order), so two instances writing the same rollup rows on PostgreSQL lock them in the
//! same order.

use actix::prelude::*;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ConnectionTrait, DbErr, IdenStatic};

use super::{GetUserSpend, StoreActor, StoreError};
use crate::domain::usage::UsageRecord;
use crate::domain::usage_report::UserSpend;
use crate::domain::usage_rollup::{Period, RollupDelta, RollupKey, RollupPlan, rollups};
use crate::entities::usage_hourly::LATENCY_COLUMNS;

/// A rollup table: its name, the column holding its period's start, its period.
#[derive(Debug, Clone, Copy)]
pub(super) struct RollupTable {
    pub name: &'static str,
    pub start: &'static str,
    pub period: Period,
}

pub(super) const HOURLY: RollupTable = RollupTable {
    name: "usage_hourly",
    start: "hour",
    period: Period::Hour,
};

pub(super) const DAILY: RollupTable = RollupTable {
    name: "usage_daily",
    start: "day",
    period: Period::Day,
};

/// The summed totals of a rollup row, in `RollupDelta`'s order (what the usage API adds up).
pub(super) const TOTALS: [&str; 6] = [
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_micros",
];

/// The summed columns (both tables have them; the entities' test says so), in
/// `RollupDelta`'s order: the totals, the latency sum, the latency buckets.
pub(super) fn summed_columns() -> impl Iterator<Item = &'static str> {
    TOTALS
        .into_iter()
        .chain(["latency_ms_sum"])
        .chain(LATENCY_COLUMNS.iter().map(|c| c.as_str()))
}

fn figures(delta: &RollupDelta) -> impl Iterator<Item = i64> + '_ {
    [
        delta.requests,
        delta.errors,
        delta.prompt_tokens,
        delta.completion_tokens,
        delta.total_tokens,
        delta.cost_micros,
        delta.latency_ms_sum,
    ]
    .into_iter()
    .chain(delta.latency)
}

/// Adds `rows` to the rollups (call it on the transaction that inserts them).
pub(super) async fn add(conn: &impl ConnectionTrait, rows: &[UsageRecord]) -> Result<(), DbErr> {
    for table in [HOURLY, DAILY] {
        for (key, delta) in rollups(rows, table.period) {
            add_one(conn, table, key, &delta).await?;
        }
    }
    Ok(())
}

async fn add_one(
    conn: &impl ConnectionTrait,
    table: RollupTable,
    key: RollupKey,
    delta: &RollupDelta,
) -> Result<(), DbErr> {
    let identity = [table.start, "user_id", "key_id", "model"].map(Alias::new);
    let (name, excluded) = (Alias::new(table.name), Alias::new("excluded"));
    let mut on_conflict = OnConflict::columns(identity.clone());
    on_conflict.values(summed_columns().map(|c| {
        let column = Alias::new(c);
        let sum = Expr::col((name.clone(), column.clone()))
            .add(Expr::col((excluded.clone(), column.clone())));
        (column, sum)
    }));
    let mut insert = Query::insert();
    insert
        .into_table(name.clone())
        .columns(identity.into_iter().chain(summed_columns().map(Alias::new)))
        .values(
            [
                Expr::val(key.start),
                Expr::val(key.user_id),
                Expr::val(key.key_id),
                Expr::val(key.model),
            ]
            .into_iter()
            .chain(figures(delta).map(Expr::val)),
        )
        .map_err(|e| DbErr::Custom(format!("usage rollup statement: {e}")))?
        .on_conflict(on_conflict);
    conn.execute(&insert).await?;
    Ok(())
}

/// A user's tokens and cost over all time, from the daily rollups.
pub(super) async fn user_spend(
    conn: &impl ConnectionTrait,
    user_id: &str,
) -> Result<UserSpend, DbErr> {
    let filter = crate::domain::usage_report::RollupFilter {
        user_id: Some(user_id.to_string()),
        ..Default::default()
    };
    let totals = super::usage_query::totals(conn, &filter, &RollupPlan::new(None, None)).await?;
    Ok(UserSpend {
        tokens: totals.total_tokens,
        cost_micros: totals.cost.0.unwrap_or(0),
    })
}

impl Handler<GetUserSpend> for StoreActor {
    type Result = ResponseFuture<Result<UserSpend, StoreError>>;

    fn handle(&mut self, msg: GetUserSpend, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move { Ok(user_spend(&db, &msg.user_id).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::usage_hourly::Column;
    use sea_orm::Iterable;

    #[test]
    fn the_summed_columns_are_the_rollup_columns_after_the_identity() {
        let columns: Vec<&str> = Column::iter().skip(4).map(|c| c.as_str()).collect();
        assert_eq!(summed_columns().collect::<Vec<_>>(), columns);
        assert_eq!(figures(&RollupDelta::default()).count(), columns.len());
    }
}
