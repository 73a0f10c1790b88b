//! Sealed values at rest (deployments' upstream API keys, MCP servers' secrets, passthrough
//! routes' injected headers): which
//! master keys sealed them, checked before the store starts, and re-sealing under a new
//! master key.

use std::collections::BTreeSet;

use actix::prelude::*;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel, QueryFilter, QuerySelect,
};
use serde_json::json;

use super::{ResealSecrets, StoreActor, StoreError, audit, begin_write};
use crate::crypto::Sealed;
use crate::domain::records::Actor;
use crate::entities::{deployment, mcp_server, passthrough_route};

/// The ids of the master keys that sealed stored values, sorted. Read at startup, before
/// `StoreActor` owns the connection (like migrations), to pick and check the master key.
pub async fn sealed_key_ids(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let mut ids: Vec<Option<String>> = deployment::Entity::find()
        .select_only()
        .column(deployment::Column::ApiKeyKeyId)
        .filter(deployment::Column::ApiKeyCiphertext.is_not_null())
        .distinct()
        .into_tuple()
        .all(db)
        .await?;
    let mcp: Vec<Option<String>> = mcp_server::Entity::find()
        .select_only()
        .column(mcp_server::Column::SecretsKeyId)
        .filter(mcp_server::Column::SecretsCiphertext.is_not_null())
        .distinct()
        .into_tuple()
        .all(db)
        .await?;
    ids.extend(mcp);
    let routes: Vec<Option<String>> = passthrough_route::Entity::find()
        .select_only()
        .column(passthrough_route::Column::InjectKeyId)
        .filter(passthrough_route::Column::InjectCiphertext.is_not_null())
        .distinct()
        .into_tuple()
        .all(db)
        .await?;
    ids.extend(routes);
    // A ciphertext without a key id opens under no key: report it as an unknown id.
    let ids: BTreeSet<String> = ids
        .into_iter()
        .map(|id| id.unwrap_or_else(|| "(none)".into()))
        .collect();
    Ok(ids.into_iter().collect())
}

impl Handler<ResealSecrets> for StoreActor {
    type Result = ResponseFuture<Result<usize, StoreError>>;

    fn handle(&mut self, msg: ResealSecrets, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, current| async move {
            let txn = begin_write(&db).await?;
            let rows = deployment::Entity::find()
                .filter(deployment::Column::ApiKeyCiphertext.is_not_null())
                .all(&txn)
                .await?;
            let mut count = rows.len();
            for row in rows {
                let sealed = Sealed {
                    ciphertext_hex: row.api_key_ciphertext.clone().unwrap_or_default(),
                    key_id: row.api_key_key_id.clone().unwrap_or_default(),
                };
                let plain = current.open(&sealed).map_err(|_| {
                    tracing::error!(deployment = %row.id, key_id = %sealed.key_id,
                        "cannot open the deployment's API key with the current master key; nothing re-sealed");
                    StoreError::Crypto
                })?;
                let resealed = msg.new_key.seal(&plain)?;
                let mut am = row.into_active_model();
                am.api_key_ciphertext = Set(Some(resealed.ciphertext_hex));
                am.api_key_key_id = Set(Some(resealed.key_id));
                am.update(&txn).await?;
            }
            let servers = mcp_server::Entity::find()
                .filter(mcp_server::Column::SecretsCiphertext.is_not_null())
                .all(&txn)
                .await?;
            count += servers.len();
            for row in servers {
                let sealed = Sealed {
                    ciphertext_hex: row.secrets_ciphertext.clone().unwrap_or_default(),
                    key_id: row.secrets_key_id.clone().unwrap_or_default(),
                };
                let plain = current.open(&sealed).map_err(|_| {
                    tracing::error!(mcp_server = %row.name, key_id = %sealed.key_id,
                        "cannot open the MCP server's secrets with the current master key; nothing re-sealed");
                    StoreError::Crypto
                })?;
                let resealed = msg.new_key.seal(&plain)?;
                let mut am = row.into_active_model();
                am.secrets_ciphertext = Set(Some(resealed.ciphertext_hex));
                am.secrets_key_id = Set(Some(resealed.key_id));
                am.update(&txn).await?;
            }
            let routes = passthrough_route::Entity::find()
                .filter(passthrough_route::Column::InjectCiphertext.is_not_null())
                .all(&txn)
                .await?;
            count += routes.len();
            for row in routes {
                let sealed = Sealed {
                    ciphertext_hex: row.inject_ciphertext.clone().unwrap_or_default(),
                    key_id: row.inject_key_id.clone().unwrap_or_default(),
                };
                let plain = current.open(&sealed).map_err(|_| {
                    tracing::error!(route = %row.id, key_id = %sealed.key_id,
                        "cannot open the route's injected headers with the current master key; nothing re-sealed");
                    StoreError::Crypto
                })?;
                let resealed = msg.new_key.seal(&plain)?;
                let mut am = row.into_active_model();
                am.inject_ciphertext = Set(Some(resealed.ciphertext_hex));
                am.inject_key_id = Set(Some(resealed.key_id));
                am.update(&txn).await?;
            }
            let actor = Actor {
                user_id: "system".into(),
                key_id: None,
            };
            let details = json!({"from": current.id(), "to": msg.new_key.id(), "resealed": count});
            audit::append(
                &txn,
                &actor,
                "master_key.rotate",
                "master_key",
                msg.new_key.id(),
                details,
            )
            .await?;
            txn.commit().await?;
            Ok(count)
        })
    }
}
