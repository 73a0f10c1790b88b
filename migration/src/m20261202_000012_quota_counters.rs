//! Shared quota counters: one row per limited subject (`rpm:user:<id>`, `tpm:user:<id>`,
//! `rpm:key:<id>`, `tokens:user:<id>`, `micros:user:<id>`). Instances lease units from a
//! row in a transaction that locks it, so several instances on one database share a limit.
//! Per-minute counters keep their last minute as JSON `[[second, count], …]` in `window`;
//! totals keep what has been leased in all in `used`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(QuotaCounters::Table)
                    .if_not_exists()
                    .col(string(QuotaCounters::Subject).primary_key())
                    .col(big_integer(QuotaCounters::Used).default(0))
                    .col(text_null(QuotaCounters::Window))
                    .col(big_integer(QuotaCounters::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(QuotaCounters::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum QuotaCounters {
    Table,
    Subject,
    Used,
    Window,
    UpdatedAt,
}
