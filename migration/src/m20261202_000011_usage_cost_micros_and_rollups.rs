//! Exact money and usage rollups. `usage.cost_usd` (a float) becomes `usage.cost_micros`
//! (integer micro-dollars, rounded from the old figure), and `usage_hourly` and
//! `usage_daily` hold per (hour or UTC day, user, key, model) the sums of the usage rows and
//! a latency histogram, built here from the rows already stored; from now on the usage
//! writer keeps them in step, in the transaction that inserts the rows.

use sea_orm_migration::sea_orm::ConnectionTrait;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Upper bounds of the latency buckets in milliseconds (`domain::usage_rollup`), as of
/// this migration; one more bucket holds what is slower.
const LATENCY_BOUNDS_MS: [i64; 16] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
];

/// The latency bucket columns, fastest first, and the condition a row's `latency_ms`
/// meets to fall in each.
fn latency_buckets() -> Vec<(String, String)> {
    let mut buckets = Vec::with_capacity(LATENCY_BOUNDS_MS.len() + 1);
    let mut lower: Option<i64> = None;
    for bound in LATENCY_BOUNDS_MS {
        let condition = match lower {
            None => format!("latency_ms <= {bound}"),
            Some(l) => format!("latency_ms > {l} AND latency_ms <= {bound}"),
        };
        buckets.push((format!("latency_le_{bound}"), condition));
        lower = Some(bound);
    }
    if let Some(last) = lower {
        buckets.push((
            format!("latency_over_{last}"),
            format!("latency_ms > {last}"),
        ));
    }
    buckets
}

/// The summed columns of a rollup table and the expression each is built from.
const SUMS: [(&str, &str); 7] = [
    ("requests", "COUNT(*)"),
    ("errors", "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)"),
    ("prompt_tokens", "COALESCE(SUM(prompt_tokens), 0)"),
    ("completion_tokens", "COALESCE(SUM(completion_tokens), 0)"),
    ("total_tokens", "COALESCE(SUM(total_tokens), 0)"),
    ("cost_micros", "COALESCE(SUM(cost_micros), 0)"),
    ("latency_ms_sum", "SUM(latency_ms)"),
];

/// The rollup tables: name, the column holding the period's start, the period in ms.
const ROLLUPS: [(&str, &str, i64); 2] = [
    ("usage_hourly", "hour", 3_600_000),
    ("usage_daily", "day", 86_400_000),
];

/// Creates one rollup table with its indexes, and fills it from the stored usage rows.
async fn create_rollup(
    manager: &SchemaManager<'_>,
    (name, start, period_ms): (&str, &str, i64),
) -> Result<(), DbErr> {
    let identity = [start, "user_id", "key_id", "model"].map(Alias::new);
    let mut table = Table::create();
    table
        .table(Alias::new(name))
        .if_not_exists()
        .col(big_integer(identity[0].clone()));
    for column in &identity[1..] {
        table.col(string(column.clone()));
    }
    let buckets = latency_buckets();
    for column in SUMS
        .iter()
        .map(|(c, _)| (*c).to_owned())
        .chain(buckets.iter().map(|(c, _)| c.clone()))
    {
        table.col(big_integer(Alias::new(column)).default(0).to_owned());
    }
    let mut primary_key = Index::create();
    for column in &identity {
        primary_key.col(column.clone());
    }
    table.primary_key(&mut primary_key);
    manager.create_table(table.to_owned()).await?;
    for by in ["user_id", "key_id"] {
        manager
            .create_index(
                Index::create()
                    .name(format!("idx_{name}_{by}_{start}"))
                    .table(Alias::new(name))
                    .col(Alias::new(by))
                    .col(Alias::new(start))
                    .to_owned(),
            )
            .await?;
    }

    let columns: Vec<String> = [start, "user_id", "key_id", "model"]
        .into_iter()
        .chain(SUMS.iter().map(|(c, _)| *c))
        .map(str::to_owned)
        .chain(buckets.iter().map(|(c, _)| c.clone()))
        .collect();
    let values: Vec<String> = [
        format!("(created_at / {period_ms}) * {period_ms}"),
        "COALESCE(user_id, '')".to_owned(),
        "COALESCE(key_id, '')".to_owned(),
        "model".to_owned(),
    ]
    .into_iter()
    .chain(SUMS.iter().map(|(_, sum)| (*sum).to_owned()))
    .chain(
        buckets
            .iter()
            .map(|(_, when)| format!("SUM(CASE WHEN {when} THEN 1 ELSE 0 END)")),
    )
    .collect();
    manager
        .get_connection()
        .execute_unprepared(&format!(
            "INSERT INTO {name} ({}) SELECT {} FROM \"usage\" GROUP BY 1, 2, 3, 4",
            columns.join(", "),
            values.join(", ")
        ))
        .await?;
    Ok(())
}

async fn alter_usage(
    manager: &SchemaManager<'_>,
    alter: &mut TableAlterStatement,
) -> Result<(), DbErr> {
    manager
        .alter_table(alter.table(Usage::Table).to_owned())
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction on every backend.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        alter_usage(
            manager,
            Table::alter().add_column(big_integer_null(Usage::CostMicros)),
        )
        .await?;
        // Through NUMERIC, so PostgreSQL rounds the decimal figure half away from zero,
        // as SQLite and the application do.
        db.execute_unprepared(
            "UPDATE \"usage\" SET cost_micros = \
             CAST(ROUND(CAST(cost_usd AS NUMERIC) * 1000000) AS BIGINT) \
             WHERE cost_usd IS NOT NULL",
        )
        .await?;
        // Not indexed or constrained, so SQLite (3.35+) can drop it.
        alter_usage(manager, Table::alter().drop_column(Usage::CostUsd)).await?;

        for rollup in ROLLUPS {
            create_rollup(manager, rollup).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, _, _) in ROLLUPS {
            manager
                .drop_table(Table::drop().table(Alias::new(name)).to_owned())
                .await?;
        }
        alter_usage(
            manager,
            Table::alter().add_column(double_null(Usage::CostUsd)),
        )
        .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE \"usage\" SET cost_usd = cost_micros / 1000000.0 \
                 WHERE cost_micros IS NOT NULL",
            )
            .await?;
        alter_usage(manager, Table::alter().drop_column(Usage::CostMicros)).await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Usage {
    Table,
    CostUsd,
    CostMicros,
}
