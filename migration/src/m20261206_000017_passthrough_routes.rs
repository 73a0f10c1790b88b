//! Passthrough routes (SPEC §9) added at runtime through `/admin/routes`: one row per
//! route, its prefix (unique), its spec as JSON without the injected headers' values, and
//! those values as one JSON object sealed with the master key (as a deployment's API key).
//! `usage` gains the bytes a passthrough request moved each way (null for other rows).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PassthroughRoutes::Table)
                    .if_not_exists()
                    .col(string(PassthroughRoutes::Id).primary_key())
                    .col(string_uniq(PassthroughRoutes::Prefix))
                    .col(text(PassthroughRoutes::Spec))
                    .col(string_null(PassthroughRoutes::InjectKeyId))
                    .col(text_null(PassthroughRoutes::InjectCiphertext))
                    .col(big_integer(PassthroughRoutes::CreatedAt))
                    .col(big_integer(PassthroughRoutes::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // One column per ALTER: SQLite takes one change per statement.
        for column in [Usage::RequestBytes, Usage::ResponseBytes] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Usage::Table)
                        .add_column(big_integer_null(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Usage::RequestBytes, Usage::ResponseBytes] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Usage::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(PassthroughRoutes::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum PassthroughRoutes {
    Table,
    Id,
    Prefix,
    Spec,
    InjectKeyId,
    InjectCiphertext,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Usage {
    Table,
    RequestBytes,
    ResponseBytes,
}
