use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Deployments::Table)
                    .if_not_exists()
                    .col(string(Deployments::Id).primary_key())
                    .col(string(Deployments::ModelId))
                    .col(string(Deployments::VendorType))
                    .col(string_null(Deployments::BaseUrl))
                    .col(string_null(Deployments::UpstreamModel))
                    .col(text_null(Deployments::ApiKeyCiphertext))
                    .col(string_null(Deployments::ApiKeyKeyId))
                    .col(integer(Deployments::Weight).default(1))
                    .col(integer(Deployments::Priority).default(0))
                    .col(double_null(Deployments::PriceInputPerMtok))
                    .col(double_null(Deployments::PriceOutputPerMtok))
                    .col(big_integer_null(Deployments::ConnectTimeoutMs))
                    .col(big_integer_null(Deployments::RequestTimeoutMs))
                    .col(integer_null(Deployments::MaxConcurrency))
                    .col(string_null(Deployments::RequestScript))
                    .col(string_null(Deployments::ResponseScript))
                    .col(text_null(Deployments::Workflow))
                    .col(text_null(Deployments::McpServers))
                    .col(boolean(Deployments::Enabled).default(true))
                    .col(big_integer(Deployments::CreatedAt))
                    .col(big_integer(Deployments::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_deployments_model_id")
                    .table(Deployments::Table)
                    .col(Deployments::ModelId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Deployments::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Deployments {
    Table,
    Id,
    ModelId,
    VendorType,
    BaseUrl,
    UpstreamModel,
    ApiKeyCiphertext,
    ApiKeyKeyId,
    Weight,
    Priority,
    PriceInputPerMtok,
    PriceOutputPerMtok,
    ConnectTimeoutMs,
    RequestTimeoutMs,
    MaxConcurrency,
    RequestScript,
    ResponseScript,
    Workflow,
    McpServers,
    Enabled,
    CreatedAt,
    UpdatedAt,
}
