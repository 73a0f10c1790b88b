//! The agent bus's durable part: work groups per topic, group messages (one row per
//! message per group, claimed under a visibility timeout with `FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, deleted when acked), and on PostgreSQL the `NOTIFY`s that carry fan-out
//! messages and "a group message is waiting" to the other instances.

use actix::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Set, Statement,
};

use super::{
    AckBusMessage, ClaimBusMessages, PendingBusMessages, PersistBusMessage, PurgeFanout,
    ReadFanout, RegisterGroup, RelayFanout, ReleaseBusMessages, StoreActor, StoreError,
    begin_write,
};
use crate::domain::bus::{BUS_CHANNEL, BusMessage, BusNotice, encode_bus_notice};
use crate::domain::now_ms;
use crate::entities::{bus_fanout, bus_group, bus_message};

fn to_message(m: bus_message::Model) -> BusMessage {
    BusMessage {
        payload: serde_json::from_str(&m.payload).unwrap_or_default(),
        id: m.id,
        topic: m.topic,
        from: m.sender,
        reply_to: m.reply_to,
        attempt: m.attempt,
    }
}

async fn notify(
    conn: &impl ConnectionTrait,
    origin: &str,
    notice: &BusNotice,
) -> Result<bool, StoreError> {
    let Some(payload) = encode_bus_notice(origin, notice) else {
        return Ok(false);
    };
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [BUS_CHANNEL.into(), payload.into()],
    ))
    .await?;
    Ok(true)
}

impl Handler<RegisterGroup> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: RegisterGroup, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let row = bus_group::ActiveModel {
                topic: Set(msg.topic),
                grp: Set(msg.group),
                created_at: Set(now_ms()),
            };
            bus_group::Entity::insert(row)
                .on_conflict_do_nothing()
                .exec(&db)
                .await?;
            Ok(())
        })
    }
}

impl Handler<PersistBusMessage> for StoreActor {
    type Result = ResponseFuture<Result<Vec<String>, StoreError>>;

    fn handle(&mut self, msg: PersistBusMessage, _: &mut Self::Context) -> Self::Result {
        let origin = self.announcer.origin.clone();
        self.run(move |db, _| async move {
            let m = msg.message;
            let groups: Vec<String> = bus_group::Entity::find()
                .select_only()
                .column(bus_group::Column::Grp)
                .filter(bus_group::Column::Topic.eq(m.topic.clone()))
                .into_tuple()
                .all(&db)
                .await?;
            if groups.is_empty() {
                return Ok(groups);
            }
            let now = now_ms();
            let payload = m.payload.to_string();
            let rows = groups.iter().map(|g| bus_message::ActiveModel {
                id: Set(m.id.clone()),
                topic: Set(m.topic.clone()),
                grp: Set(g.clone()),
                payload: Set(payload.clone()),
                sender: Set(m.from.clone()),
                reply_to: Set(m.reply_to.clone()),
                attempt: Set(0),
                visible_at: Set(now),
                claimed_by: Set(None),
                created_at: Set(now),
            });
            let txn = begin_write(&db).await?;
            bus_message::Entity::insert_many(rows).exec(&txn).await?;
            if db.get_database_backend() == DbBackend::Postgres {
                notify(
                    &txn,
                    &origin,
                    &BusNotice::Group {
                        topic: m.topic.clone(),
                    },
                )
                .await?;
            }
            txn.commit().await?;
            Ok(groups)
        })
    }
}

impl Handler<RelayFanout> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: RelayFanout, _: &mut Self::Context) -> Self::Result {
        let origin = self.announcer.origin.clone();
        self.run(move |db, _| async move {
            if db.get_database_backend() != DbBackend::Postgres {
                return Ok(());
            }
            let notice = BusNotice::Fanout {
                message: msg.message.clone(),
            };
            if notify(&db, &origin, &notice).await? {
                return Ok(());
            }
            // Too large for a notice: the others read it from the table.
            let body = serde_json::to_string(&msg.message).unwrap_or_default();
            let txn = begin_write(&db).await?;
            bus_fanout::Entity::insert(bus_fanout::ActiveModel {
                id: Set(msg.message.id.clone()),
                body: Set(body),
                created_at: Set(now_ms()),
            })
            .exec(&txn)
            .await?;
            notify(&txn, &origin, &BusNotice::FanoutRef { id: msg.message.id }).await?;
            txn.commit().await?;
            Ok(())
        })
    }
}

impl Handler<ReadFanout> for StoreActor {
    type Result = ResponseFuture<Result<Option<BusMessage>, StoreError>>;

    fn handle(&mut self, msg: ReadFanout, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            Ok(bus_fanout::Entity::find_by_id(msg.id)
                .one(&db)
                .await?
                .and_then(|row| serde_json::from_str(&row.body).ok()))
        })
    }
}

impl Handler<ClaimBusMessages> for StoreActor {
    type Result = ResponseFuture<Result<Vec<BusMessage>, StoreError>>;

    fn handle(&mut self, msg: ClaimBusMessages, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let now = now_ms();
            let mut due = Query::select();
            due.column(bus_message::Column::Id)
                .from(bus_message::Entity)
                .and_where(bus_message::Column::Topic.eq(msg.topic.clone()))
                .and_where(bus_message::Column::Grp.eq(msg.group.clone()))
                .and_where(bus_message::Column::VisibleAt.lte(now))
                .order_by(bus_message::Column::CreatedAt, sea_orm::Order::Asc)
                .order_by(bus_message::Column::Id, sea_orm::Order::Asc)
                .limit(msg.limit)
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
            let txn = begin_write(&db).await?;
            let mut claimed = bus_message::Entity::update_many()
                .col_expr(
                    bus_message::Column::VisibleAt,
                    Expr::value(now + msg.visibility_ms as i64),
                )
                .col_expr(
                    bus_message::Column::Attempt,
                    Expr::col(bus_message::Column::Attempt).add(1),
                )
                .col_expr(bus_message::Column::ClaimedBy, Expr::value(msg.owner))
                .filter(bus_message::Column::Grp.eq(msg.group))
                .filter(Expr::col(bus_message::Column::Id).in_subquery(due))
                .exec_with_returning(&txn)
                .await?;
            txn.commit().await?;
            claimed.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(claimed.into_iter().map(to_message).collect())
        })
    }
}

impl Handler<AckBusMessage> for StoreActor {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: AckBusMessage, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let gone = bus_message::Entity::delete_many()
                .filter(bus_message::Column::Id.eq(msg.id))
                .filter(bus_message::Column::Grp.eq(msg.group))
                .exec(&db)
                .await?;
            Ok(gone.rows_affected > 0)
        })
    }
}

impl Handler<ReleaseBusMessages> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: ReleaseBusMessages, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let now = now_ms();
            for (id, group) in msg.messages {
                bus_message::Entity::update_many()
                    .col_expr(bus_message::Column::VisibleAt, Expr::value(now))
                    .filter(bus_message::Column::Id.eq(id))
                    .filter(bus_message::Column::Grp.eq(group))
                    .filter(bus_message::Column::ClaimedBy.eq(msg.owner.clone()))
                    .exec(&db)
                    .await?;
            }
            Ok(())
        })
    }
}

impl Handler<PendingBusMessages> for StoreActor {
    type Result = ResponseFuture<Result<Vec<(String, i64)>, StoreError>>;

    fn handle(&mut self, _: PendingBusMessages, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            Ok(bus_message::Entity::find()
                .select_only()
                .column(bus_message::Column::Topic)
                .column_as(bus_message::Column::Id.count(), "n")
                .group_by(bus_message::Column::Topic)
                .order_by_asc(bus_message::Column::Topic)
                .into_tuple()
                .all(&db)
                .await?)
        })
    }
}

impl Handler<PurgeFanout> for StoreActor {
    type Result = ResponseFuture<Result<u64, StoreError>>;

    fn handle(&mut self, msg: PurgeFanout, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let gone = bus_fanout::Entity::delete_many()
                .filter(bus_fanout::Column::CreatedAt.lt(msg.before))
                .exec(&db)
                .await?;
            Ok(gone.rows_affected)
        })
    }
}
