use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ModelFallbacks::Table)
                    .if_not_exists()
                    .col(string(ModelFallbacks::ModelId))
                    .col(integer(ModelFallbacks::Position))
                    .col(string(ModelFallbacks::FallbackModelId))
                    .primary_key(
                        Index::create()
                            .col(ModelFallbacks::ModelId)
                            .col(ModelFallbacks::Position),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ModelFallbacks::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ModelFallbacks {
    Table,
    ModelId,
    Position,
    FallbackModelId,
}
