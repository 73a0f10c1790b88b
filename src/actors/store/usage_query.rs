//! Reads for the usage API: usage rows newest first (keyset paging on `created_at`, `id`),
//! and summaries and a caller's totals from the hourly rollups only, so their cost grows
//! with hours × active (user, key, model), never with the number of requests.

use actix::prelude::*;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query, SelectStatement};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, IdenStatic, QueryFilter,
    QueryOrder, QueryResult, QuerySelect,
};

use super::{GetCallerUsage, ListUsage, StoreActor, StoreError, SummarizeUsage};
use crate::domain::usage_report::{
    CallerUsage, Cost, GroupBy, LatencyPercentiles, PeriodTotals, RollupFilter, StatusFilter,
    SummaryRow, UsageCursor, UsageFilter, UsagePage, UsageRow, UsageTotals, day_label,
};
use crate::domain::usage_rollup::{
    DAY_MS, LATENCY_BUCKETS, LatencyHistogram, day_start, hour_start,
};
use crate::entities::usage;
use crate::entities::usage_hourly::{self, LATENCY_COLUMNS};

fn to_row(m: usage::Model) -> UsageRow {
    UsageRow {
        id: m.id,
        request_id: m.request_id,
        created_at: m.created_at,
        user_id: m.user_id,
        key_id: m.key_id,
        model: m.model,
        deployment_id: m.deployment_id,
        status: m.status,
        error_class: m.error_class,
        prompt_tokens: m.prompt_tokens,
        completion_tokens: m.completion_tokens,
        total_tokens: m.total_tokens,
        cache_read_tokens: m.cache_read_tokens,
        cache_write_tokens: m.cache_write_tokens,
        usage_source: m.usage_source,
        cost_status: m.cost_status,
        cost: Cost(m.cost_micros),
        latency_ms: m.latency_ms,
        overhead_ms: m.overhead_ms,
        ttft_ms: m.ttft_ms,
        stream: m.stream,
        attempts: m.attempts,
    }
}

fn row_condition(filter: &UsageFilter, before: Option<UsageCursor>) -> Condition {
    use usage::Column;
    let mut c = Condition::all();
    if let Some(user) = &filter.user_id {
        c = c.add(Column::UserId.eq(user.as_str()));
    }
    if let Some(key) = &filter.key_id {
        c = c.add(Column::KeyId.eq(key.as_str()));
    }
    if let Some(model) = &filter.model {
        c = c.add(Column::Model.eq(model.as_str()));
    }
    match filter.status {
        None => {}
        Some(StatusFilter::Ok) => c = c.add(Column::Status.lt(400)),
        Some(StatusFilter::Error) => c = c.add(Column::Status.gte(400)),
        Some(StatusFilter::Is(status)) => c = c.add(Column::Status.eq(i32::from(status))),
    }
    if let Some(since) = filter.since {
        c = c.add(Column::CreatedAt.gte(since));
    }
    if let Some(until) = filter.until {
        c = c.add(Column::CreatedAt.lt(until));
    }
    if let Some(cursor) = before {
        c = c.add(
            Condition::any()
                .add(Column::CreatedAt.lt(cursor.created_at))
                .add(
                    Condition::all()
                        .add(Column::CreatedAt.eq(cursor.created_at))
                        .add(Column::Id.lt(cursor.id)),
                ),
        );
    }
    c
}

async fn list(db: &impl ConnectionTrait, msg: ListUsage) -> Result<UsagePage, DbErr> {
    let limit = Ord::max(msg.limit, 1);
    let mut rows = usage::Entity::find()
        .filter(row_condition(&msg.filter, msg.before))
        .order_by_desc(usage::Column::CreatedAt)
        .order_by_desc(usage::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = rows.last().filter(|_| more).map(|last| {
        UsageCursor {
            created_at: last.created_at,
            id: last.id,
        }
        .to_string()
    });
    Ok(UsagePage {
        data: rows.into_iter().map(to_row).collect(),
        next,
    })
}

/// The summed figures of a rollup query, by alias, in `read_totals`' order.
const SUMMED: [&str; 6] = [
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_micros",
];

/// `SELECT <sums> FROM usage_hourly WHERE <filter>`; with `latency`, the histogram too.
fn rollup_select(filter: &RollupFilter, latency: bool) -> SelectStatement {
    use usage_hourly::Column;
    let mut select = Query::select();
    select.from(usage_hourly::Entity);
    let latency_columns = LATENCY_COLUMNS.iter().filter(|_| latency);
    for name in SUMMED
        .iter()
        .map(|n| n.to_string())
        .chain(latency_columns.map(|c| c.as_str().to_string()))
    {
        select.expr_as(
            Expr::cust(format!("CAST(COALESCE(SUM({name}), 0) AS BIGINT)")),
            Alias::new(name),
        );
    }
    if let Some(user) = &filter.user_id {
        select.and_where(Expr::col(Column::UserId).eq(user.as_str()));
    }
    if let Some(key) = &filter.key_id {
        select.and_where(Expr::col(Column::KeyId).eq(key.as_str()));
    }
    if let Some(model) = &filter.model {
        select.and_where(Expr::col(Column::Model).eq(model.as_str()));
    }
    if let Some(since) = filter.since {
        select.and_where(Expr::col(Column::Hour).gte(hour_start(since)));
    }
    if let Some(until) = filter.until {
        select.and_where(Expr::col(Column::Hour).lt(until));
    }
    select
}

fn read_totals(row: &QueryResult) -> Result<UsageTotals, DbErr> {
    let [
        requests,
        errors,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        cost_micros,
    ] = SUMMED.map(|name| row.try_get::<i64>("", name));
    Ok(UsageTotals {
        requests: requests?,
        errors: errors?,
        prompt_tokens: prompt_tokens?,
        completion_tokens: completion_tokens?,
        total_tokens: total_tokens?,
        cost: Cost(Some(cost_micros?)),
    })
}

fn read_histogram(row: &QueryResult) -> Result<LatencyHistogram, DbErr> {
    let mut histogram = [0; LATENCY_BUCKETS];
    for (count, column) in histogram.iter_mut().zip(LATENCY_COLUMNS) {
        *count = row.try_get::<i64>("", column.as_str())?;
    }
    Ok(histogram)
}

const GROUP: &str = "grp";

async fn summarize(
    db: &impl ConnectionTrait,
    group_by: GroupBy,
    filter: &RollupFilter,
) -> Result<Vec<SummaryRow>, DbErr> {
    use usage_hourly::Column;
    let mut select = rollup_select(filter, true);
    let group = match group_by {
        GroupBy::Model => Expr::col(Column::Model),
        GroupBy::User => Expr::col(Column::UserId),
        GroupBy::Key => Expr::col(Column::KeyId),
        GroupBy::Day => Expr::cust(format!("(hour / {DAY_MS}) * {DAY_MS}")),
    };
    select
        .expr_as(group, Alias::new(GROUP))
        .add_group_by([Expr::col(Alias::new(GROUP))])
        .order_by(Alias::new(GROUP), Order::Asc);
    let rows = db.query_all(&select).await?;
    rows.iter()
        .map(|row| {
            let group = match group_by {
                GroupBy::Day => Some(day_label(row.try_get::<i64>("", GROUP)?)),
                _ => Some(row.try_get::<String>("", GROUP)?).filter(|g| !g.is_empty()),
            };
            Ok(SummaryRow {
                group,
                totals: read_totals(row)?,
                latency_ms: LatencyPercentiles::of(&read_histogram(row)?),
            })
        })
        .collect()
}

async fn totals(db: &impl ConnectionTrait, filter: &RollupFilter) -> Result<UsageTotals, DbErr> {
    match db.query_one(&rollup_select(filter, false)).await? {
        Some(row) => read_totals(&row),
        None => Ok(UsageTotals {
            cost: Cost(Some(0)),
            ..UsageTotals::default()
        }),
    }
}

async fn period_totals(
    db: &impl ConnectionTrait,
    filter: RollupFilter,
    today: i64,
) -> Result<PeriodTotals, DbErr> {
    let all_time = totals(db, &filter).await?;
    let today = totals(
        db,
        &RollupFilter {
            since: Some(today),
            ..filter
        },
    )
    .await?;
    Ok(PeriodTotals { all_time, today })
}

async fn caller_usage(
    db: &impl ConnectionTrait,
    msg: GetCallerUsage,
) -> Result<CallerUsage, DbErr> {
    let today = day_start(msg.now);
    let user = RollupFilter {
        user_id: Some(msg.user_id),
        ..RollupFilter::default()
    };
    let key = RollupFilter {
        key_id: Some(msg.key_id),
        ..RollupFilter::default()
    };
    Ok(CallerUsage {
        day: day_label(today),
        user: period_totals(db, user, today).await?,
        key: period_totals(db, key, today).await?,
    })
}

impl Handler<ListUsage> for StoreActor {
    type Result = ResponseFuture<Result<UsagePage, StoreError>>;

    fn handle(&mut self, msg: ListUsage, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move { Ok(list(&db, msg).await?) })
    }
}

impl Handler<SummarizeUsage> for StoreActor {
    type Result = ResponseFuture<Result<Vec<SummaryRow>, StoreError>>;

    fn handle(&mut self, msg: SummarizeUsage, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move { Ok(summarize(&db, msg.group_by, &msg.filter).await?) })
    }
}

impl Handler<GetCallerUsage> for StoreActor {
    type Result = ResponseFuture<Result<CallerUsage, StoreError>>;

    fn handle(&mut self, msg: GetCallerUsage, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move { Ok(caller_usage(&db, msg).await?) })
    }
}
