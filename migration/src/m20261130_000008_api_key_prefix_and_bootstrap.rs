//! API keys: `prefix` becomes nullable (only generated keys show one), and `bootstrap`
//! marks the keys registered from `security.admin_key` or generated at first start, so a
//! replaced bootstrap key can be revoked. Existing bootstrap keys (found by their
//! `key.bootstrap` audit rows) lose their prefix: it may be part of a chosen key.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction on every backend: on SQLite that also keeps every step on one
    /// pooled connection, so no step meets a schema from before the previous one.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite cannot drop NOT NULL in place: add a nullable column, copy, drop, rename.
        // One change per statement: SQLite alters one thing at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(boolean(ApiKeys::Bootstrap).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(string_null(ApiKeys::DisplayPrefix))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(ApiKeys::Table)
                    .value(ApiKeys::Bootstrap, true)
                    .and_where(
                        Expr::col(ApiKeys::Id).in_subquery(
                            Query::select()
                                .column(AuditLog::TargetId)
                                .from(AuditLog::Table)
                                .and_where(Expr::col(AuditLog::Action).eq("key.bootstrap"))
                                .to_owned(),
                        ),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(ApiKeys::Table)
                    .value(ApiKeys::DisplayPrefix, Expr::col(ApiKeys::Prefix))
                    .and_where(Expr::col(ApiKeys::Bootstrap).eq(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .drop_column(ApiKeys::Prefix)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .rename_column(ApiKeys::DisplayPrefix, ApiKeys::Prefix)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(string(ApiKeys::DisplayPrefix).default(""))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(ApiKeys::Table)
                    .value(
                        ApiKeys::DisplayPrefix,
                        Func::coalesce([Expr::col(ApiKeys::Prefix), Expr::val("")]),
                    )
                    .to_owned(),
            )
            .await?;
        for column in [ApiKeys::Prefix, ApiKeys::Bootstrap] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .rename_column(ApiKeys::DisplayPrefix, ApiKeys::Prefix)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    Prefix,
    DisplayPrefix,
    Bootstrap,
}

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Action,
    TargetId,
}
