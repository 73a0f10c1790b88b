//! Reads for the usage API: usage rows newest first (keyset paging on `created_at`, `id`),
//! and summaries and a caller's totals from the rollups only (whole days from
//! `usage_daily`, the hours at either end from `usage_hourly`), so their cost grows with
//! days × active (user, key, model), never with the number of requests.

use actix::prelude::*;
use std::collections::BTreeMap;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, IdenStatic, QueryFilter,
    QueryOrder, QueryResult, QuerySelect,
};

use super::usage_rollup::{DAILY, HOURLY, RollupTable, TOTALS};
use super::{GetCallerUsage, ListUsage, StoreActor, StoreError, SummarizeUsage};
use crate::domain::usage_report::{
    CallerUsage, Cost, GroupBy, LatencyPercentiles, PeriodTotals, RollupFilter, StatusFilter,
    SummaryRow, UsageCursor, UsageFilter, UsagePage, UsageRow, UsageTotals, day_label,
};
use crate::domain::usage_rollup::{
    DAY_MS, LATENCY_BUCKETS, LatencyHistogram, RollupPlan, StartRange, day_start,
};
use crate::entities::usage;
use crate::entities::usage_hourly::LATENCY_COLUMNS;

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
        request_bytes: m.request_bytes,
        response_bytes: m.response_bytes,
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

/// `SELECT <sums> FROM <table> WHERE <filter> AND <start in one of ranges>`; with
/// `latency`, the histogram too.
fn rollup_select(
    table: RollupTable,
    filter: &RollupFilter,
    ranges: &[StartRange],
    latency: bool,
) -> SelectStatement {
    let mut select = Query::select();
    select.from(Alias::new(table.name));
    let latency_columns = LATENCY_COLUMNS.iter().filter(|_| latency);
    for name in TOTALS
        .into_iter()
        .chain(latency_columns.map(|c| c.as_str()))
    {
        select.expr_as(
            Expr::cust(format!("CAST(COALESCE(SUM({name}), 0) AS BIGINT)")),
            Alias::new(name),
        );
    }
    for (column, value) in [
        ("user_id", &filter.user_id),
        ("key_id", &filter.key_id),
        ("model", &filter.model),
    ] {
        if let Some(value) = value {
            select.and_where(Expr::col(Alias::new(column)).eq(value.as_str()));
        }
    }
    let start = || Expr::col(Alias::new(table.start));
    if ranges.iter().all(|r| r.from.is_some() || r.to.is_some()) {
        let mut any = Condition::any();
        for range in ranges {
            let mut all = Condition::all();
            if let Some(from) = range.from {
                all = all.add(start().gte(from));
            }
            if let Some(to) = range.to {
                all = all.add(start().lt(to));
            }
            any = any.add(all);
        }
        select.cond_where(any);
    }
    select
}

/// The parts of a rollup read: whole days from the daily table, the ends from the hourly.
fn parts(plan: &RollupPlan) -> Vec<(RollupTable, Vec<StartRange>)> {
    let mut parts = Vec::with_capacity(2);
    if let Some(days) = plan.days {
        parts.push((DAILY, vec![days]));
    }
    if !plan.hours.is_empty() {
        parts.push((HOURLY, plan.hours.clone()));
    }
    parts
}

fn read_totals(row: &QueryResult) -> Result<UsageTotals, DbErr> {
    let [
        requests,
        errors,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        cost_micros,
    ] = TOTALS.map(|name| row.try_get::<i64>("", name));
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
    let plan = RollupPlan::new(filter.since, filter.until);
    let mut groups: BTreeMap<String, (UsageTotals, LatencyHistogram)> = BTreeMap::new();
    for (table, ranges) in parts(&plan) {
        let mut select = rollup_select(table, filter, &ranges, true);
        let group = match group_by {
            GroupBy::Model => Expr::col(Alias::new("model")),
            GroupBy::User => Expr::col(Alias::new("user_id")),
            GroupBy::Key => Expr::col(Alias::new("key_id")),
            GroupBy::Day => Expr::cust(format!("({0} / {DAY_MS}) * {DAY_MS}", table.start)),
        };
        select
            .expr_as(group, Alias::new(GROUP))
            .add_group_by([Expr::col(Alias::new(GROUP))]);
        for row in db.query_all(&select).await? {
            let group = match group_by {
                GroupBy::Day => day_label(row.try_get::<i64>("", GROUP)?),
                _ => row.try_get::<String>("", GROUP)?,
            };
            let (totals, histogram) = groups.entry(group).or_default();
            totals.add(&read_totals(&row)?);
            for (count, more) in histogram.iter_mut().zip(read_histogram(&row)?) {
                *count += more;
            }
        }
    }
    Ok(groups
        .into_iter()
        .map(|(group, (totals, histogram))| SummaryRow {
            group: Some(group).filter(|g| !g.is_empty()),
            totals,
            latency_ms: LatencyPercentiles::of(&histogram),
        })
        .collect())
}

/// The totals of the usage `filter` keeps over the periods of `plan`.
pub(super) async fn totals(
    db: &impl ConnectionTrait,
    filter: &RollupFilter,
    plan: &RollupPlan,
) -> Result<UsageTotals, DbErr> {
    let mut totals = UsageTotals::zero();
    for (table, ranges) in parts(plan) {
        if let Some(row) = db
            .query_one(&rollup_select(table, filter, &ranges, false))
            .await?
        {
            totals.add(&read_totals(&row)?);
        }
    }
    Ok(totals)
}

async fn period_totals(
    db: &impl ConnectionTrait,
    filter: RollupFilter,
    today: i64,
) -> Result<PeriodTotals, DbErr> {
    Ok(PeriodTotals {
        all_time: totals(db, &filter, &RollupPlan::new(None, None)).await?,
        today: totals(db, &filter, &RollupPlan::new(Some(today), None)).await?,
    })
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
