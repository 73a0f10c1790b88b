//! Deployments (the `models` of the admin API): one row per upstream that serves a public
//! model name. Upstream API keys are sealed with the master key on the way in and opened
//! only for the router. Every write announces `Deployments`.

use actix::prelude::*;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, IntoActiveModel,
    ModelTrait, QueryFilter, QueryOrder,
};
use serde_json::{Map, Value, json};

use super::{
    CreateDeployment, DeleteDeployment, ListDeployments, LoadDeployments, StoreActor, StoreError,
    UpdateDeployment, audit, begin_write,
};
use crate::actors::feed::Change;
use crate::config::Secret;
use crate::crypto::{MasterKey, Sealed};
use crate::domain::deployment::{DeploymentConfig, Invalid};
use crate::domain::now_ms;
use crate::domain::records::{Deployment, DeploymentWithSecret};
use crate::domain::upstream_hosts::UpstreamHosts;
use crate::entities::deployment;

/// The configuration fields stored as columns (they are queried); the rest is `config`.
const COLUMNS: [&str; 3] = ["model_id", "vendor_type", "enabled"];

pub(super) fn invalid((param, message): Invalid) -> StoreError {
    StoreError::Invalid { param, message }
}

/// A row as the admin API and the router see it. A row that does not read (written by
/// another version?) is an error, never a deployment silently dropped or defaulted.
pub(super) fn to_record(m: &deployment::Model) -> Result<Deployment, StoreError> {
    let unreadable =
        |why: String| StoreError::Db(DbErr::Type(format!("deployment `{}`: {why}", m.id)));
    let mut json: Map<String, Value> =
        serde_json::from_str(&m.config).map_err(|e| unreadable(e.to_string()))?;
    json.insert("model_id".into(), m.model_id.clone().into());
    json.insert("vendor_type".into(), m.vendor_type.clone().into());
    json.insert("enabled".into(), m.enabled.into());
    let config = DeploymentConfig::from_json(Value::Object(json))
        .map_err(|(param, message)| unreadable(format!("{param}: {message}")))?;
    Ok(Deployment {
        id: m.id.clone(),
        config,
        has_api_key: m.api_key_ciphertext.is_some(),
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}

/// Writes `config` into the row: its queried fields as columns, the rest as JSON.
fn set_config(
    am: &mut deployment::ActiveModel,
    config: &DeploymentConfig,
) -> Result<(), StoreError> {
    let mut json = match serde_json::to_value(config) {
        Ok(Value::Object(json)) => json,
        Ok(_) => Map::new(),
        Err(e) => return Err(StoreError::Db(DbErr::Json(e.to_string()))),
    };
    for column in COLUMNS {
        json.remove(column);
    }
    am.model_id = Set(config.model_id.clone());
    am.vendor_type = Set(config.vendor_type.as_str().to_string());
    am.enabled = Set(config.enabled);
    am.config = Set(Value::Object(json).to_string());
    Ok(())
}

/// Seals `api_key` (or clears the stored one).
fn set_api_key(
    am: &mut deployment::ActiveModel,
    api_key: Option<&Secret>,
    key: &MasterKey,
) -> Result<(), StoreError> {
    let sealed = api_key.map(|s| key.seal(s.expose())).transpose()?;
    am.api_key_key_id = Set(sealed.as_ref().map(|s| s.key_id.clone()));
    am.api_key_ciphertext = Set(sealed.map(|s| s.ciphertext_hex));
    Ok(())
}

/// A new row for a validated `config` (not yet inserted).
pub(super) fn new_row(
    config: &DeploymentConfig,
    api_key: Option<&Secret>,
    key: &MasterKey,
    hosts: &UpstreamHosts,
) -> Result<deployment::ActiveModel, StoreError> {
    config.validate(hosts).map_err(invalid)?;
    let now = now_ms();
    let mut am = deployment::ActiveModel {
        id: Set(format!("dep_{}", uuid::Uuid::now_v7().simple())),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    set_config(&mut am, config)?;
    set_api_key(&mut am, api_key, key)?;
    Ok(am)
}

impl Handler<CreateDeployment> for StoreActor {
    type Result = ResponseFuture<Result<Deployment, StoreError>>;

    fn handle(&mut self, msg: CreateDeployment, _: &mut Self::Context) -> Self::Result {
        let hosts = self.upstream_hosts.clone();
        self.run_change(
            vec![Change::Deployments],
            move |db, key, changes| async move {
                let config = DeploymentConfig::create(&msg.patch.fields).map_err(invalid)?;
                let api_key = msg.patch.api_key.clone().flatten();
                let am = new_row(&config, api_key.as_ref(), &key, &hosts)?;
                let txn = begin_write(&db).await?;
                super::scripts::check_named(&txn, &config).await?;
                let row = am.insert(&txn).await?;
                let details = msg.patch.audit_details();
                audit::append(
                    &txn,
                    &msg.actor,
                    "model.create",
                    "deployment",
                    &row.id,
                    details,
                )
                .await?;
                changes.commit(txn).await?;
                to_record(&row)
            },
        )
    }
}

impl Handler<UpdateDeployment> for StoreActor {
    type Result = ResponseFuture<Result<Deployment, StoreError>>;

    fn handle(&mut self, msg: UpdateDeployment, _: &mut Self::Context) -> Self::Result {
        let hosts = self.upstream_hosts.clone();
        self.run_change(vec![Change::Deployments], move |db, key, changes| async move {
            let txn = begin_write(&db).await?;
            let row = deployment::Entity::find_by_id(msg.id.clone())
                .one(&txn)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("deployment `{}`", msg.id)))?;
            let current = to_record(&row)?.config;
            let config = current.patched(&msg.patch.fields).map_err(invalid)?;
            // The stored key goes wherever `base_url` points: moving it needs the key again.
            if config.base_url != current.base_url
                && row.api_key_ciphertext.is_some()
                && msg.patch.api_key.is_none()
            {
                return Err(invalid((
                    "api_key".into(),
                    "changing `base_url` of a deployment with a stored key requires `api_key` in the same request".into(),
                )));
            }
            config.validate(&hosts).map_err(invalid)?;
            if config.request_script != current.request_script
                || config.response_script != current.response_script
            {
                super::scripts::check_named(&txn, &config).await?;
            }
            let mut am = row.into_active_model();
            set_config(&mut am, &config)?;
            if let Some(api_key) = &msg.patch.api_key {
                set_api_key(&mut am, api_key.as_ref(), &key)?;
            }
            am.updated_at = Set(now_ms());
            let row = am.update(&txn).await?;
            let details = msg.patch.audit_details();
            audit::append(
                &txn,
                &msg.actor,
                "model.update",
                "deployment",
                &msg.id,
                details,
            )
            .await?;
            changes.commit(txn).await?;
            to_record(&row)
        })
    }
}

impl Handler<DeleteDeployment> for StoreActor {
    type Result = ResponseFuture<Result<Deployment, StoreError>>;

    fn handle(&mut self, msg: DeleteDeployment, _: &mut Self::Context) -> Self::Result {
        self.run_change(
            vec![Change::Deployments],
            move |db, _, changes| async move {
                let txn = begin_write(&db).await?;
                let row = deployment::Entity::find_by_id(msg.id.clone())
                    .one(&txn)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("deployment `{}`", msg.id)))?;
                let record = to_record(&row)?;
                row.delete(&txn).await?;
                let details = json!({"model_id": record.config.model_id});
                audit::append(
                    &txn,
                    &msg.actor,
                    "model.delete",
                    "deployment",
                    &msg.id,
                    details,
                )
                .await?;
                changes.commit(txn).await?;
                Ok(record)
            },
        )
    }
}

impl Handler<ListDeployments> for StoreActor {
    type Result = ResponseFuture<Result<Vec<Deployment>, StoreError>>;

    fn handle(&mut self, _: ListDeployments, _: &mut Self::Context) -> Self::Result {
        self.run(|db, _| async move {
            let rows = deployment::Entity::find()
                .order_by_asc(deployment::Column::ModelId)
                .order_by_asc(deployment::Column::CreatedAt)
                .all(&db)
                .await?;
            rows.iter().map(to_record).collect()
        })
    }
}

impl Handler<LoadDeployments> for StoreActor {
    type Result = ResponseFuture<Result<Vec<DeploymentWithSecret>, StoreError>>;

    fn handle(&mut self, _: LoadDeployments, _: &mut Self::Context) -> Self::Result {
        self.run(|db, key| async move {
            let rows = deployment::Entity::find()
                .filter(deployment::Column::Enabled.eq(true))
                .order_by_asc(deployment::Column::CreatedAt)
                .all(&db)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let api_key = match (&row.api_key_ciphertext, &row.api_key_key_id) {
                    (Some(ct), Some(kid)) => {
                        let sealed = Sealed {
                            ciphertext_hex: ct.clone(),
                            key_id: kid.clone(),
                        };
                        match key.open(&sealed) {
                            Ok(plain) => Some(Secret::new(plain)),
                            Err(_) => {
                                // Never drop a deployment silently: the reload fails and
                                // the router keeps the table it has.
                                tracing::error!(deployment = %row.id, key_id = %kid,
                                    "cannot open the deployment's API key with the current master key (rotated while running?); restart with the right key");
                                return Err(StoreError::Crypto);
                            }
                        }
                    }
                    _ => None,
                };
                out.push(DeploymentWithSecret {
                    deployment: to_record(&row)?,
                    api_key,
                });
            }
            Ok(out)
        })
    }
}
