//! Rhai transform scripts: one row per script (name, source). Writes are admin writes:
//! audited in their transaction and announced as `Change::Scripts`. A script that a
//! deployment names cannot be deleted, and a deployment cannot name a script that does
//! not exist: both hold the script's row while they look (`FOR UPDATE` / `FOR SHARE` on
//! PostgreSQL; SQLite's write transaction is the lock), so neither can slip past the other.

use actix::prelude::*;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait, IntoActiveModel, ModelTrait,
    QueryOrder, QuerySelect, SqlErr,
};
use serde_json::{Value, json};

use super::{
    CreateScript, DeleteScript, ListScripts, ReplaceScript, StoreActor, StoreError, audit,
    begin_write,
};
use crate::actors::feed::Change;
use crate::domain::deployment::DeploymentConfig;
use crate::domain::now_ms;
use crate::domain::scripts::ScriptRecord;
use crate::entities::{deployment, script};

const TARGET_TYPE: &str = "script";

fn to_record(m: script::Model) -> ScriptRecord {
    ScriptRecord {
        name: m.name,
        source: m.source,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

/// What the audit log keeps of a save: the source's size, not the source.
fn details(source: &str) -> Value {
    json!({"source_bytes": source.len()})
}

/// Refuses a deployment configuration that names a script that is not stored; holds each
/// named script's row until the transaction ends.
pub(super) async fn check_named(
    conn: &impl ConnectionTrait,
    config: &DeploymentConfig,
) -> Result<(), StoreError> {
    for (param, name) in [
        ("request_script", &config.request_script),
        ("response_script", &config.response_script),
    ] {
        let Some(name) = name else { continue };
        let found = script::Entity::find_by_id(name.clone())
            .lock_shared()
            .one(conn)
            .await?;
        if found.is_none() {
            return Err(StoreError::Invalid {
                param: param.into(),
                message: format!("no script `{name}` (create it with POST /admin/scripts)"),
            });
        }
    }
    Ok(())
}

/// The ids of the deployments whose configuration names the script `name`.
async fn deployments_naming(
    conn: &impl ConnectionTrait,
    name: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = deployment::Entity::find()
        .order_by_asc(deployment::Column::Id)
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter(|row| {
            let config: Value = serde_json::from_str(&row.config).unwrap_or(Value::Null);
            ["request_script", "response_script"]
                .iter()
                .any(|field| config.get(field).and_then(Value::as_str) == Some(name))
        })
        .map(|row| row.id)
        .collect())
}

impl Handler<CreateScript> for StoreActor {
    type Result = ResponseFuture<Result<ScriptRecord, StoreError>>;

    fn handle(&mut self, msg: CreateScript, _: &mut Self::Context) -> Self::Result {
        self.run_change(vec![Change::Scripts], move |db, _, changes| async move {
            let taken = || StoreError::Conflict(format!("script `{}` already exists", msg.name));
            let now = now_ms();
            let txn = begin_write(&db).await?;
            if script::Entity::find_by_id(msg.name.clone())
                .one(&txn)
                .await?
                .is_some()
            {
                return Err(taken());
            }
            let row = script::ActiveModel {
                name: Set(msg.name.clone()),
                source: Set(msg.source.clone()),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(&txn)
            .await
            .map_err(|e| match e.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(_)) => taken(),
                _ => StoreError::Db(e),
            })?;
            audit::append(
                &txn,
                &msg.actor,
                "script.create",
                TARGET_TYPE,
                &msg.name,
                details(&msg.source),
            )
            .await?;
            changes.commit(txn).await?;
            Ok(to_record(row))
        })
    }
}

impl Handler<ReplaceScript> for StoreActor {
    type Result = ResponseFuture<Result<(ScriptRecord, bool), StoreError>>;

    fn handle(&mut self, msg: ReplaceScript, _: &mut Self::Context) -> Self::Result {
        self.run_change(vec![Change::Scripts], move |db, _, changes| async move {
            let now = now_ms();
            let txn = begin_write(&db).await?;
            let existing = script::Entity::find_by_id(msg.name.clone())
                .lock_exclusive()
                .one(&txn)
                .await?;
            let (row, created) = match existing {
                Some(row) => {
                    let mut am = row.into_active_model();
                    am.source = Set(msg.source.clone());
                    am.updated_at = Set(now);
                    (am.update(&txn).await?, false)
                }
                None => {
                    let am = script::ActiveModel {
                        name: Set(msg.name.clone()),
                        source: Set(msg.source.clone()),
                        created_at: Set(now),
                        updated_at: Set(now),
                    };
                    (am.insert(&txn).await?, true)
                }
            };
            let action = if created {
                "script.create"
            } else {
                "script.update"
            };
            audit::append(
                &txn,
                &msg.actor,
                action,
                TARGET_TYPE,
                &msg.name,
                details(&msg.source),
            )
            .await?;
            changes.commit(txn).await?;
            Ok((to_record(row), created))
        })
    }
}

impl Handler<ListScripts> for StoreActor {
    type Result = ResponseFuture<Result<Vec<ScriptRecord>, StoreError>>;

    fn handle(&mut self, _: ListScripts, _: &mut Self::Context) -> Self::Result {
        self.run(|db, _| async move {
            let rows = script::Entity::find()
                .order_by_asc(script::Column::Name)
                .all(&db)
                .await?;
            Ok(rows.into_iter().map(to_record).collect())
        })
    }
}

impl Handler<DeleteScript> for StoreActor {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: DeleteScript, _: &mut Self::Context) -> Self::Result {
        self.run_change(vec![Change::Scripts], move |db, _, changes| async move {
            let txn = begin_write(&db).await?;
            let Some(row) = script::Entity::find_by_id(msg.name.clone())
                .lock_exclusive()
                .one(&txn)
                .await?
            else {
                return Ok(false);
            };
            let users = deployments_naming(&txn, &msg.name).await?;
            if !users.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "script `{}` is named by the deployments {}; change them first",
                    msg.name,
                    users
                        .iter()
                        .map(|id| format!("`{id}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let source_bytes = row.source.len();
            row.delete(&txn).await?;
            audit::append(
                &txn,
                &msg.actor,
                "script.delete",
                TARGET_TYPE,
                &msg.name,
                json!({"source_bytes": source_bytes}),
            )
            .await?;
            changes.commit(txn).await?;
            Ok(true)
        })
    }
}
