use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(string(Users::Id).primary_key())
                    .col(string_null(Users::Name))
                    .col(string(Users::Role))
                    .col(big_integer_null(Users::RpmLimit))
                    .col(big_integer_null(Users::TpmLimit))
                    .col(big_integer_null(Users::TokenQuota))
                    .col(double_null(Users::BudgetUsd))
                    .col(boolean(Users::Disabled).default(false))
                    .col(big_integer(Users::CreatedAt))
                    .col(big_integer(Users::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Users::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Users {
    Table,
    Id,
    Name,
    Role,
    RpmLimit,
    TpmLimit,
    TokenQuota,
    BudgetUsd,
    Disabled,
    CreatedAt,
    UpdatedAt,
}
