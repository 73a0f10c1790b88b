//! Users: create, read, update, disable. Every mutation is audited in its transaction and
//! announces `User` (created, or name, role or `disabled` changed) and/or `Limits`.

use actix::prelude::*;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait, IntoActiveModel,
    QueryOrder,
};
use serde_json::json;

use super::{
    CreateUser, GetUser, ListUsers, PendingChanges, StoreActor, StoreError, UpdateUser, UserFields,
    audit, begin_write,
};
use crate::actors::feed::Change;
use crate::domain::now_ms;
use crate::domain::records::{Role, User};
use crate::entities::user;

pub(super) fn to_record(m: user::Model) -> User {
    User {
        role: Role::parse(&m.role).unwrap_or(Role::User),
        user_id: m.id,
        name: m.name,
        rpm_limit: m.rpm_limit,
        tpm_limit: m.tpm_limit,
        token_quota: m.token_quota,
        budget_usd: m.budget_usd,
        disabled: m.disabled,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

fn apply(am: &mut user::ActiveModel, f: &UserFields) {
    if let Some(v) = &f.name {
        am.name = Set(v.clone());
    }
    if let Some(v) = f.role {
        am.role = Set(v.as_str().to_string());
    }
    if let Some(v) = f.rpm_limit {
        am.rpm_limit = Set(v);
    }
    if let Some(v) = f.tpm_limit {
        am.tpm_limit = Set(v);
    }
    if let Some(v) = f.token_quota {
        am.token_quota = Set(v);
    }
    if let Some(v) = f.budget_usd {
        am.budget_usd = Set(v);
    }
    if let Some(v) = f.disabled {
        am.disabled = Set(v);
    }
}

/// A new enabled user with role `user` and no limits (not yet inserted).
pub(super) fn fresh(user_id: &str, now: i64) -> user::ActiveModel {
    user::ActiveModel {
        id: Set(user_id.to_string()),
        name: Set(None),
        role: Set(Role::User.as_str().to_string()),
        rpm_limit: Set(None),
        tpm_limit: Set(None),
        token_quota: Set(None),
        budget_usd: Set(None),
        disabled: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

fn describe(f: &UserFields) -> serde_json::Value {
    json!({
        "name": f.name, "role": f.role.map(Role::as_str), "rpm_limit": f.rpm_limit,
        "tpm_limit": f.tpm_limit, "token_quota": f.token_quota, "budget_usd": f.budget_usd,
        "disabled": f.disabled,
    })
}

/// What a write of `fields` changes (`may_create`: the user may be new).
fn changes_of(user_id: &str, f: &UserFields, may_create: bool) -> Vec<Change> {
    let user_id = user_id.to_string();
    let account = may_create || f.name.is_some() || f.role.is_some() || f.disabled.is_some();
    let limits = f.rpm_limit.is_some()
        || f.tpm_limit.is_some()
        || f.token_quota.is_some()
        || f.budget_usd.is_some();
    match (account, limits) {
        (true, true) => vec![
            Change::User {
                user_id: user_id.clone(),
            },
            Change::Limits { user_id },
        ],
        (true, false) => vec![Change::User { user_id }],
        (false, true) => vec![Change::Limits { user_id }],
        (false, false) => Vec::new(),
    }
}

async fn upsert(
    db: DatabaseConnection,
    changes: PendingChanges,
    user_id: String,
    fields: UserFields,
    create: bool,
    update: bool,
    actor: crate::domain::records::Actor,
) -> Result<User, StoreError> {
    let txn = begin_write(&db).await?;
    let now = now_ms();
    let existing = user::Entity::find_by_id(user_id.clone()).one(&txn).await?;
    let (model, action) = match existing {
        Some(_) if !update => {
            return Err(StoreError::Conflict(format!(
                "user `{user_id}` already exists"
            )));
        }
        Some(m) => {
            let mut am = m.into_active_model();
            apply(&mut am, &fields);
            am.updated_at = Set(now);
            (am.update(&txn).await?, "user.update")
        }
        None if !create => return Err(StoreError::NotFound(format!("user `{user_id}`"))),
        None => {
            let mut am = fresh(&user_id, now);
            apply(&mut am, &fields);
            (am.insert(&txn).await?, "user.create")
        }
    };
    if fields.rpm_limit.is_some()
        || fields.tpm_limit.is_some()
        || fields.token_quota.is_some()
        || fields.budget_usd.is_some()
    {
        // The shared spend counters start again from the recorded spend (every instance
        // forgets its leases of them on the `Limits` change).
        super::quota::reset_spend_counters(&txn, &user_id).await?;
    }
    audit::append(&txn, &actor, action, "user", &user_id, describe(&fields)).await?;
    changes.commit(txn).await?;
    Ok(to_record(model))
}

impl Handler<CreateUser> for StoreActor {
    type Result = ResponseFuture<Result<User, StoreError>>;

    fn handle(&mut self, msg: CreateUser, _: &mut Self::Context) -> Self::Result {
        let changes = changes_of(&msg.user_id, &msg.fields, true);
        self.run_change(changes, move |db, _, changes| {
            upsert(db, changes, msg.user_id, msg.fields, true, false, msg.actor)
        })
    }
}

impl Handler<UpdateUser> for StoreActor {
    type Result = ResponseFuture<Result<User, StoreError>>;

    fn handle(&mut self, msg: UpdateUser, _: &mut Self::Context) -> Self::Result {
        let changes = changes_of(&msg.user_id, &msg.fields, msg.create_if_absent);
        self.run_change(changes, move |db, _, changes| {
            upsert(
                db,
                changes,
                msg.user_id,
                msg.fields,
                msg.create_if_absent,
                true,
                msg.actor,
            )
        })
    }
}

impl Handler<ListUsers> for StoreActor {
    type Result = ResponseFuture<Result<Vec<User>, StoreError>>;

    fn handle(&mut self, _: ListUsers, _: &mut Self::Context) -> Self::Result {
        self.run(|db, _| async move {
            let rows = user::Entity::find()
                .order_by_asc(user::Column::CreatedAt)
                .order_by_asc(user::Column::Id)
                .all(&db)
                .await?;
            Ok(rows.into_iter().map(to_record).collect())
        })
    }
}

impl Handler<GetUser> for StoreActor {
    type Result = ResponseFuture<Result<User, StoreError>>;

    fn handle(&mut self, msg: GetUser, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            user::Entity::find_by_id(msg.user_id.clone())
                .one(&db)
                .await?
                .map(to_record)
                .ok_or_else(|| StoreError::NotFound(format!("user `{}`", msg.user_id)))
        })
    }
}
