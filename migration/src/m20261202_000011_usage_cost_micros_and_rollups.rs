//! Exact money and hourly rollups. `usage.cost_usd` (a float) becomes `usage.cost_micros`
//! (integer micro-dollars, rounded from the old figure), and `usage_hourly` holds per
//! (hour, user, key, model) the sums of the usage rows and a latency histogram, built here
//! from the rows already stored; from now on the usage writer keeps it in step, in the
//! transaction that inserts the rows.

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

/// The summed columns of `usage_hourly` and the expression each is built from.
const SUMS: [(UsageHourly, &str); 7] = [
    (UsageHourly::Requests, "COUNT(*)"),
    (
        UsageHourly::Errors,
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)",
    ),
    (UsageHourly::PromptTokens, "COALESCE(SUM(prompt_tokens), 0)"),
    (
        UsageHourly::CompletionTokens,
        "COALESCE(SUM(completion_tokens), 0)",
    ),
    (UsageHourly::TotalTokens, "COALESCE(SUM(total_tokens), 0)"),
    (UsageHourly::CostMicros, "COALESCE(SUM(cost_micros), 0)"),
    (UsageHourly::LatencyMsSum, "SUM(latency_ms)"),
];

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

        let mut table = Table::create();
        table
            .table(UsageHourly::Table)
            .if_not_exists()
            .col(big_integer(UsageHourly::Hour))
            .col(string(UsageHourly::UserId))
            .col(string(UsageHourly::KeyId))
            .col(string(UsageHourly::Model));
        for (column, _) in SUMS {
            table.col(big_integer(column).default(0).to_owned());
        }
        for (column, _) in latency_buckets() {
            table.col(big_integer(Alias::new(column)).default(0).to_owned());
        }
        table.primary_key(
            Index::create()
                .col(UsageHourly::Hour)
                .col(UsageHourly::UserId)
                .col(UsageHourly::KeyId)
                .col(UsageHourly::Model),
        );
        manager.create_table(table.to_owned()).await?;
        for (name, column) in [
            ("idx_usage_hourly_user_id_hour", UsageHourly::UserId),
            ("idx_usage_hourly_key_id_hour", UsageHourly::KeyId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(UsageHourly::Table)
                        .col(column)
                        .col(UsageHourly::Hour)
                        .to_owned(),
                )
                .await?;
        }

        let buckets = latency_buckets();
        let columns: Vec<String> = ["hour", "user_id", "key_id", "model"]
            .into_iter()
            .map(str::to_string)
            .chain(SUMS.iter().map(|(c, _)| c.to_string()))
            .chain(buckets.iter().map(|(c, _)| c.clone()))
            .collect();
        let values: Vec<String> = [
            "(created_at / 3600000) * 3600000",
            "COALESCE(user_id, '')",
            "COALESCE(key_id, '')",
            "model",
        ]
        .into_iter()
        .map(str::to_string)
        .chain(SUMS.iter().map(|(_, sum)| (*sum).to_owned()))
        .chain(
            buckets
                .iter()
                .map(|(_, when)| format!("SUM(CASE WHEN {when} THEN 1 ELSE 0 END)")),
        )
        .collect();
        db.execute_unprepared(&format!(
            "INSERT INTO usage_hourly ({}) SELECT {} FROM \"usage\" GROUP BY 1, 2, 3, 4",
            columns.join(", "),
            values.join(", ")
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(UsageHourly::Table).to_owned())
            .await?;
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

#[derive(DeriveIden, Clone, Copy)]
enum UsageHourly {
    Table,
    Hour,
    UserId,
    KeyId,
    Model,
    Requests,
    Errors,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    CostMicros,
    LatencyMsSum,
}
