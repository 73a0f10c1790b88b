//! The agent bus: `bus_groups` (every work group ever subscribed to a topic, so messages
//! published while none of its members is connected still wait for it), `bus_messages`
//! (one row per message per group until it is acked or dead-lettered; `visible_at` is
//! when it may be delivered again, `claimed_by` the instance that delivered it last),
//! `bus_fanout` (fan-out messages too large for a `NOTIFY`, read by the other instances
//! and deleted after a minute), and `api_keys.topics` (the topic prefixes a key is limited
//! to, JSON).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(BusGroups::Table)
                    .if_not_exists()
                    .col(string(BusGroups::Topic))
                    .col(string(BusGroups::Grp))
                    .col(big_integer(BusGroups::CreatedAt))
                    .primary_key(Index::create().col(BusGroups::Topic).col(BusGroups::Grp))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(BusMessages::Table)
                    .if_not_exists()
                    .col(string(BusMessages::Id))
                    .col(string(BusMessages::Topic))
                    .col(string(BusMessages::Grp))
                    .col(text(BusMessages::Payload))
                    .col(string(BusMessages::Sender))
                    .col(string_null(BusMessages::ReplyTo))
                    .col(integer(BusMessages::Attempt).default(0))
                    .col(big_integer(BusMessages::VisibleAt))
                    .col(string_null(BusMessages::ClaimedBy))
                    .col(big_integer(BusMessages::CreatedAt))
                    .primary_key(Index::create().col(BusMessages::Id).col(BusMessages::Grp))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_bus_messages_due")
                    .table(BusMessages::Table)
                    .col(BusMessages::Topic)
                    .col(BusMessages::Grp)
                    .col(BusMessages::VisibleAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(BusFanout::Table)
                    .if_not_exists()
                    .col(string(BusFanout::Id).primary_key())
                    .col(text(BusFanout::Body))
                    .col(big_integer(BusFanout::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(text_null(ApiKeys::Topics))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .drop_column(ApiKeys::Topics)
                    .to_owned(),
            )
            .await?;
        for table in [
            BusFanout::Table.into_iden(),
            BusMessages::Table.into_iden(),
            BusGroups::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum BusGroups {
    Table,
    Topic,
    Grp,
    CreatedAt,
}

#[derive(DeriveIden)]
enum BusMessages {
    Table,
    Id,
    Topic,
    Grp,
    Payload,
    Sender,
    ReplyTo,
    Attempt,
    VisibleAt,
    ClaimedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum BusFanout {
    Table,
    Id,
    Body,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Topics,
}
