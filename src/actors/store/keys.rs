//! API keys: created with a fresh 256-bit secret (returned once, stored as SHA-256),
//! listed without secrets, revoked, and looked up by hash for the auth cache. Creating and
//! revoking announce `Keys` (and a key with its own `rpm_limit`, its user's `Limits`).

use std::sync::Arc;

use actix::prelude::*;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder,
};
use serde_json::json;

use super::{
    CreateKey, ListKeys, LookupKey, RevokeKey, StoreActor, StoreError, audit, begin_write,
};
use crate::actors::feed::Change;
use crate::config::Secret;
use crate::crypto;
use crate::domain::now_ms;
use crate::domain::records::{ApiKeyInfo, KeyGrant, Role, UserLimits};
use crate::entities::{api_key, user};

fn models_of(m: &api_key::Model) -> Option<Vec<String>> {
    m.models
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

fn topics_of(m: &api_key::Model) -> Option<Vec<String>> {
    m.topics
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

pub(super) fn to_info(m: api_key::Model) -> ApiKeyInfo {
    ApiKeyInfo {
        models: models_of(&m),
        topics: topics_of(&m),
        id: m.id,
        user_id: m.user_id,
        name: m.name,
        prefix: m.prefix,
        rpm_limit: m.rpm_limit,
        expires_at: m.expires_at,
        revoked_at: m.revoked_at,
        created_at: m.created_at,
    }
}

/// Inserts a key row for `secret` (no audit: callers decide).
pub(super) async fn insert(
    conn: &impl sea_orm::ConnectionTrait,
    id: String,
    key: &super::NewKey,
    secret: &str,
    bootstrap: bool,
) -> Result<api_key::Model, StoreError> {
    let models = match &key.models {
        Some(m) => Some(serde_json::to_string(m).map_err(|e| StoreError::Invalid {
            param: "models".into(),
            message: e.to_string(),
        })?),
        None => None,
    };
    let topics = match &key.topics {
        Some(t) => Some(serde_json::to_string(t).map_err(|e| StoreError::Invalid {
            param: "topics".into(),
            message: e.to_string(),
        })?),
        None => None,
    };
    Ok(api_key::ActiveModel {
        id: Set(id),
        user_id: Set(key.user_id.clone()),
        name: Set(key.name.clone()),
        key_hash: Set(crypto::hash_api_key_hex(secret)),
        prefix: Set(crypto::key_prefix(secret)),
        models: Set(models),
        topics: Set(topics),
        rpm_limit: Set(key.rpm_limit),
        expires_at: Set(key.expires_at),
        revoked_at: Set(None),
        created_at: Set(now_ms()),
        bootstrap: Set(bootstrap),
    }
    .insert(conn)
    .await?)
}

impl Handler<CreateKey> for StoreActor {
    type Result = ResponseFuture<Result<(ApiKeyInfo, Secret), StoreError>>;

    fn handle(&mut self, msg: CreateKey, _: &mut Self::Context) -> Self::Result {
        let mut changes = vec![Change::Keys];
        if msg.key.rpm_limit.is_some() {
            changes.push(Change::Limits {
                user_id: msg.key.user_id.clone(),
            });
        }
        self.run_change(changes, move |db, _, changes| async move {
            let secret = crypto::generate_api_key()?;
            let txn = begin_write(&db).await?;
            if user::Entity::find_by_id(msg.key.user_id.clone())
                .one(&txn)
                .await?
                .is_none()
            {
                return Err(StoreError::NotFound(format!("user `{}`", msg.key.user_id)));
            }
            let id = format!("key_{}", uuid::Uuid::now_v7().simple());
            let row = insert(&txn, id.clone(), &msg.key, &secret, false).await?;
            let details = json!({"user_id": msg.key.user_id, "name": msg.key.name,
                "models": msg.key.models, "topics": msg.key.topics, "rpm_limit": msg.key.rpm_limit,
                "expires_at": msg.key.expires_at, "prefix": row.prefix});
            audit::append(&txn, &msg.actor, "key.create", "api_key", &id, details).await?;
            changes.commit(txn).await?;
            Ok((to_info(row), Secret::new(secret)))
        })
    }
}

impl Handler<ListKeys> for StoreActor {
    type Result = ResponseFuture<Result<Vec<ApiKeyInfo>, StoreError>>;

    fn handle(&mut self, msg: ListKeys, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let mut query = api_key::Entity::find().order_by_asc(api_key::Column::CreatedAt);
            if let Some(user_id) = msg.user_id {
                query = query.filter(api_key::Column::UserId.eq(user_id));
            }
            Ok(query.all(&db).await?.into_iter().map(to_info).collect())
        })
    }
}

impl Handler<RevokeKey> for StoreActor {
    type Result = ResponseFuture<Result<ApiKeyInfo, StoreError>>;

    fn handle(&mut self, msg: RevokeKey, _: &mut Self::Context) -> Self::Result {
        self.run_change(vec![Change::Keys], move |db, _, changes| async move {
            let txn = begin_write(&db).await?;
            let row = api_key::Entity::find_by_id(msg.id.clone())
                .one(&txn)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("key `{}`", msg.id)))?;
            let row = if row.revoked_at.is_some() {
                row
            } else {
                let mut am = row.into_active_model();
                am.revoked_at = Set(Some(now_ms()));
                am.update(&txn).await?
            };
            audit::append(
                &txn,
                &msg.actor,
                "key.revoke",
                "api_key",
                &msg.id,
                json!({}),
            )
            .await?;
            changes.commit(txn).await?;
            Ok(to_info(row))
        })
    }
}

impl Handler<LookupKey> for StoreActor {
    type Result = ResponseFuture<Result<Option<KeyGrant>, StoreError>>;

    fn handle(&mut self, msg: LookupKey, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let found = match msg {
                LookupKey::Hash(hash) => {
                    api_key::Entity::find().filter(api_key::Column::KeyHash.eq(hash))
                }
                LookupKey::Id(id) => api_key::Entity::find_by_id(id),
            }
            .filter(api_key::Column::RevokedAt.is_null())
            .one(&db)
            .await?;
            let Some(key) = found else {
                return Ok(None);
            };
            let Some(owner) = user::Entity::find_by_id(key.user_id.clone())
                .one(&db)
                .await?
            else {
                return Ok(None);
            };
            Ok(Some(KeyGrant {
                models: models_of(&key).map(Arc::from),
                topics: topics_of(&key).map(Arc::from),
                key_id: key.id,
                user_id: key.user_id,
                role: Role::parse(&owner.role).unwrap_or(Role::User),
                rpm_limit: key.rpm_limit,
                expires_at: key.expires_at,
                user_disabled: owner.disabled,
                limits: UserLimits {
                    rpm_limit: owner.rpm_limit,
                    tpm_limit: owner.tpm_limit,
                    token_quota: owner.token_quota,
                    budget_usd: owner.budget_usd,
                },
            }))
        })
    }
}
