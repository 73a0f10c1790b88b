//! First-start work: the bootstrap admin key and the seed deployments (the built-in
//! `mock` model and `[[models]]` from the configuration). They announce `Keys` and
//! `Deployments`: instances already running on the same database follow them.

use actix::prelude::*;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter,
};
use serde_json::{Map, Value, json};

use super::{
    EnsureAdminKey, HasAdminKey, NewKey, SeedDeployments, StoreActor, StoreError, audit,
    begin_write, deployments, keys, users,
};
use crate::actors::feed::Change;
use crate::crypto;
use crate::domain::deployment::DeploymentConfig;
use crate::domain::now_ms;
use crate::domain::records::{Actor, Role};
use crate::entities::{api_key, deployment, user};

const BOOTSTRAP_USER: &str = "admin";

fn system_actor() -> Actor {
    Actor {
        user_id: "system".into(),
        key_id: None,
    }
}

impl Handler<EnsureAdminKey> for StoreActor {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    /// Registers the key unless it exists, then revokes every other live bootstrap key
    /// (each audited), so a replaced `security.admin_key` stops working. A configured key
    /// that an admin revoked stays revoked, and a configured key made through the admin
    /// API stays what it is; then nothing else is revoked.
    fn handle(&mut self, msg: EnsureAdminKey, _: &mut Self::Context) -> Self::Result {
        self.run_change(vec![Change::Keys], move |db, _, changes| async move {
            let secret = msg.key.expose().to_string();
            let hash = crypto::hash_api_key_hex(&secret);
            let txn = begin_write(&db).await?;
            let existing = api_key::Entity::find()
                .filter(api_key::Column::KeyHash.eq(hash))
                .one(&txn)
                .await?;
            let (current_id, created) = match existing {
                Some(row) if row.revoked_at.is_some() => {
                    tracing::warn!(key = %row.id,
                        "the configured admin key was revoked; it stays revoked (configure a new one)");
                    return Ok(false);
                }
                Some(row) if !row.bootstrap => {
                    tracing::warn!(key = %row.id, user = %row.user_id,
                        "the configured admin key is an ordinary key; earlier bootstrap keys are kept");
                    return Ok(false);
                }
                Some(row) => (row.id, false),
                None => (insert_bootstrap_key(&txn, &secret).await?, true),
            };
            let replaced = api_key::Entity::find()
                .filter(api_key::Column::Bootstrap.eq(true))
                .filter(api_key::Column::RevokedAt.is_null())
                .filter(api_key::Column::Id.ne(current_id.clone()))
                .all(&txn)
                .await?;
            let now = now_ms();
            for row in replaced {
                let id = row.id.clone();
                let mut am = row.into_active_model();
                am.revoked_at = Set(Some(now));
                am.update(&txn).await?;
                let details = json!({"reason": "bootstrap key replaced", "replaced_by": current_id});
                audit::append(&txn, &system_actor(), "key.revoke", "api_key", &id, details)
                    .await?;
                tracing::info!(key = %id, "earlier bootstrap admin key revoked");
            }
            changes.commit(txn).await?;
            Ok(created)
        })
    }
}

/// Inserts the bootstrap key (and the `admin` user on first start), audited; answers its id.
async fn insert_bootstrap_key(
    txn: &sea_orm::DatabaseTransaction,
    secret: &str,
) -> Result<String, StoreError> {
    if user::Entity::find_by_id(BOOTSTRAP_USER)
        .one(txn)
        .await?
        .is_none()
    {
        let now = now_ms();
        user::ActiveModel {
            name: Set(Some("Bootstrap administrator".into())),
            role: Set(Role::Admin.as_str().into()),
            ..users::fresh(BOOTSTRAP_USER, now)
        }
        .insert(txn)
        .await?;
    }
    let id = format!("key_{}", uuid::Uuid::now_v7().simple());
    let key = NewKey {
        user_id: BOOTSTRAP_USER.into(),
        name: Some("bootstrap".into()),
        models: None,
        topics: None,
        rpm_limit: None,
        expires_at: None,
    };
    keys::insert(txn, id.clone(), &key, secret, true).await?;
    audit::append(
        txn,
        &system_actor(),
        "key.bootstrap",
        "api_key",
        &id,
        json!({}),
    )
    .await?;
    Ok(id)
}

impl Handler<HasAdminKey> for StoreActor {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, _: HasAdminKey, _: &mut Self::Context) -> Self::Result {
        self.run(|db, _| async move {
            let admins: Vec<String> = user::Entity::find()
                .filter(user::Column::Role.eq(Role::Admin.as_str()))
                .filter(user::Column::Disabled.eq(false))
                .all(&db)
                .await?
                .into_iter()
                .map(|u| u.id)
                .collect();
            if admins.is_empty() {
                return Ok(false);
            }
            let live = api_key::Entity::find()
                .filter(api_key::Column::UserId.is_in(admins))
                .filter(api_key::Column::RevokedAt.is_null())
                .count(&db)
                .await?;
            Ok(live > 0)
        })
    }
}

impl Handler<SeedDeployments> for StoreActor {
    type Result = ResponseFuture<Result<usize, StoreError>>;

    fn handle(&mut self, msg: SeedDeployments, _: &mut Self::Context) -> Self::Result {
        let hosts = self.upstream_hosts.clone();
        self.run_change(
            vec![Change::Deployments],
            move |db, key, changes| async move {
                let txn = begin_write(&db).await?;
                let mut new = Vec::new();
                if deployment::Entity::find().count(&txn).await? == 0 {
                    let mock = Map::from_iter([
                        ("model_id".to_string(), Value::from("mock")),
                        ("vendor_type".to_string(), Value::from("Mock")),
                    ]);
                    let config = DeploymentConfig::create(&mock).map_err(deployments::invalid)?;
                    new.push((config, None));
                }
                for seed in msg.seeds {
                    let exists = deployment::Entity::find()
                        .filter(deployment::Column::ModelId.eq(seed.config.model_id.clone()))
                        .count(&txn)
                        .await?
                        > 0;
                    if !exists {
                        new.push((seed.config, seed.api_key));
                    }
                }
                let created = new.len();
                for (config, api_key) in new {
                    let row = deployments::new_row(&config, api_key.as_ref(), &key, &hosts)?
                        .insert(&txn)
                        .await?;
                    let details = json!({"model_id": row.model_id, "vendor_type": row.vendor_type});
                    audit::append(
                        &txn,
                        &system_actor(),
                        "model.seed",
                        "deployment",
                        &row.id,
                        details,
                    )
                    .await?;
                }
                changes.commit(txn).await?;
                Ok(created)
            },
        )
    }
}
