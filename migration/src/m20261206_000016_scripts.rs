//! Rhai transform scripts: `scripts`, one row per script, its name and its source (the
//! gateway compiles it when it loads it).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Scripts::Table)
                    .if_not_exists()
                    .col(string(Scripts::Name).primary_key())
                    .col(text(Scripts::Source))
                    .col(big_integer(Scripts::CreatedAt))
                    .col(big_integer(Scripts::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Scripts::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Scripts {
    Table,
    Name,
    Source,
    CreatedAt,
    UpdatedAt,
}
