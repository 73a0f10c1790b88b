//! Prompt-cache figures on usage rows, when the vendor reports them (Anthropic's cache
//! reads and writes, OpenAI's cached prompt tokens). Both are part of `prompt_tokens`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        for column in [Usage::CacheReadTokens, Usage::CacheWriteTokens] {
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
        for column in [Usage::CacheReadTokens, Usage::CacheWriteTokens] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Usage::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Usage {
    Table,
    CacheReadTokens,
    CacheWriteTokens,
}
