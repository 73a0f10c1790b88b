//! The audit log: one row per admin mutation, written in the mutation's transaction.

use actix::prelude::*;
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait, QueryOrder, QuerySelect};
use serde_json::Value;

use super::{AppendAudit, ListAudit, StoreActor, StoreError};
use crate::domain::now_ms;
use crate::domain::records::{Actor, AuditEntry};
use crate::entities::audit_log;

/// Appends an audit row on `conn` (normally the mutation's transaction).
pub(super) async fn append(
    conn: &impl ConnectionTrait,
    actor: &Actor,
    action: &str,
    target_type: &str,
    target_id: &str,
    details: Value,
) -> Result<(), StoreError> {
    audit_log::Entity::insert(audit_log::ActiveModel {
        actor_user_id: Set(actor.user_id.clone()),
        actor_key_id: Set(actor.key_id.clone()),
        action: Set(action.to_string()),
        target_type: Set(target_type.to_string()),
        target_id: Set(target_id.to_string()),
        details: Set(Some(details.to_string())),
        created_at: Set(now_ms()),
        ..Default::default()
    })
    .exec(conn)
    .await?;
    Ok(())
}

impl Handler<ListAudit> for StoreActor {
    type Result = ResponseFuture<Result<Vec<AuditEntry>, StoreError>>;

    fn handle(&mut self, msg: ListAudit, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let rows = audit_log::Entity::find()
                .order_by_desc(audit_log::Column::Id)
                .limit(msg.limit)
                .all(&db)
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| AuditEntry {
                    id: r.id,
                    actor_user_id: r.actor_user_id,
                    actor_key_id: r.actor_key_id,
                    action: r.action,
                    target_type: r.target_type,
                    target_id: r.target_id,
                    details: r
                        .details
                        .and_then(|d| serde_json::from_str(&d).ok())
                        .unwrap_or(Value::Null),
                    created_at: r.created_at,
                })
                .collect())
        })
    }
}

impl Handler<AppendAudit> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: AppendAudit, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            append(
                &db,
                &msg.actor,
                msg.action,
                msg.target_type,
                &msg.target_id,
                msg.details,
            )
            .await
        })
    }
}
