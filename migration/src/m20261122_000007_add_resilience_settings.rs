//! Per-deployment resilience settings (idle timeout, breaker configuration as JSON) and
//! the number of upstream attempts behind each usage row.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Deployments::Table)
                    .add_column(big_integer_null(Deployments::IdleTimeoutMs))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Deployments::Table)
                    .add_column(text_null(Deployments::Breaker))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Usage::Table)
                    .add_column(integer(Usage::Attempts).default(1))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in [
            (
                Deployments::Table.into_iden(),
                Deployments::IdleTimeoutMs.into_iden(),
            ),
            (
                Deployments::Table.into_iden(),
                Deployments::Breaker.into_iden(),
            ),
            (Usage::Table.into_iden(), Usage::Attempts.into_iden()),
        ] {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Deployments {
    Table,
    IdleTimeoutMs,
    Breaker,
}

#[derive(DeriveIden)]
enum Usage {
    Table,
    Attempts,
}
