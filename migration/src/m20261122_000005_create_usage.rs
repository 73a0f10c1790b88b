use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Usage::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Usage::Id))
                    .col(string(Usage::RequestId))
                    .col(string_null(Usage::UserId))
                    .col(string_null(Usage::KeyId))
                    .col(string(Usage::Model))
                    .col(string_null(Usage::DeploymentId))
                    .col(big_integer_null(Usage::PromptTokens))
                    .col(big_integer_null(Usage::CompletionTokens))
                    .col(big_integer_null(Usage::TotalTokens))
                    .col(double_null(Usage::CostUsd))
                    .col(string(Usage::CostStatus))
                    .col(integer(Usage::Status))
                    .col(string_null(Usage::ErrorClass))
                    .col(big_integer(Usage::LatencyMs))
                    .col(double(Usage::OverheadMs))
                    .col(big_integer_null(Usage::TtftMs))
                    .col(boolean(Usage::Stream))
                    .col(string(Usage::UsageSource))
                    .col(big_integer(Usage::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_usage_created_at")
                    .table(Usage::Table)
                    .col(Usage::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_usage_user_id_created_at")
                    .table(Usage::Table)
                    .col(Usage::UserId)
                    .col(Usage::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Usage::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
#[expect(
    clippy::enum_variant_names,
    reason = "`usage_source` is the column's name"
)]
enum Usage {
    Table,
    Id,
    RequestId,
    UserId,
    KeyId,
    Model,
    DeploymentId,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    CostUsd,
    CostStatus,
    Status,
    ErrorClass,
    LatencyMs,
    OverheadMs,
    TtftMs,
    Stream,
    UsageSource,
    CreatedAt,
}
