//! Deployments (the `models` of the admin API): one row per upstream that serves a public
//! model name. Upstream API keys are sealed with the master key on the way in and opened
//! only for the router.

use actix::prelude::*;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, ModelTrait,
    QueryFilter, QueryOrder,
};
use serde_json::json;

use super::{
    CreateDeployment, DeleteDeployment, ListDeployments, LoadDeployments, StoreActor, StoreError,
    UpdateDeployment, audit, begin_write,
};
use crate::config::Secret;
use crate::crypto::{MasterKey, Sealed};
use crate::domain::now_ms;
use crate::domain::records::{Deployment, DeploymentSpec, DeploymentWithSecret};
use crate::domain::upstream_hosts::UpstreamHosts;
use crate::domain::usage::{INVALID_PRICE, Prices};
use crate::entities::deployment;
use crate::providers::VendorType;

pub(super) fn to_record(m: &deployment::Model) -> Deployment {
    Deployment {
        id: m.id.clone(),
        model_id: m.model_id.clone(),
        vendor_type: m.vendor_type.clone(),
        base_url: m.base_url.clone(),
        upstream_model: m.upstream_model.clone(),
        has_api_key: m.api_key_ciphertext.is_some(),
        weight: m.weight,
        priority: m.priority,
        price_input_per_mtok: m.price_input_per_mtok,
        price_output_per_mtok: m.price_output_per_mtok,
        connect_timeout_ms: m.connect_timeout_ms,
        request_timeout_ms: m.request_timeout_ms,
        max_concurrency: m.max_concurrency,
        idle_timeout_ms: m.idle_timeout_ms,
        breaker: m
            .breaker
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default(),
        enabled: m.enabled,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

fn invalid(param: &str, message: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        param: param.into(),
        message: message.into(),
    }
}

/// Applies `spec` to `am`, sealing a new upstream key; `None` fields are left alone.
fn apply(
    am: &mut deployment::ActiveModel,
    spec: &DeploymentSpec,
    key: &MasterKey,
) -> Result<(), StoreError> {
    if let Some(v) = &spec.model_id {
        am.model_id = Set(v.clone());
    }
    if let Some(v) = &spec.vendor_type {
        let vendor = VendorType::parse(v).ok_or_else(|| {
            invalid(
                "vendor_type",
                format!(
                    "unknown vendor_type `{v}`; supported: {}",
                    VendorType::SUPPORTED
                ),
            )
        })?;
        am.vendor_type = Set(vendor.as_str().to_string());
    }
    if let Some(v) = &spec.base_url {
        am.base_url = Set(v.clone());
    }
    if let Some(v) = &spec.upstream_model {
        am.upstream_model = Set(v.clone());
    }
    if let Some(v) = &spec.api_key {
        let sealed = v.as_ref().map(|s| key.seal(s.expose())).transpose()?;
        am.api_key_key_id = Set(sealed.as_ref().map(|s| s.key_id.clone()));
        am.api_key_ciphertext = Set(sealed.map(|s| s.ciphertext_hex));
    }
    if let Some(v) = spec.weight {
        am.weight = Set(v);
    }
    if let Some(v) = spec.priority {
        am.priority = Set(v);
    }
    if let Some(v) = spec.price_input_per_mtok {
        am.price_input_per_mtok = Set(v);
    }
    if let Some(v) = spec.price_output_per_mtok {
        am.price_output_per_mtok = Set(v);
    }
    if let Some(v) = spec.connect_timeout_ms {
        am.connect_timeout_ms = Set(v);
    }
    if let Some(v) = spec.request_timeout_ms {
        am.request_timeout_ms = Set(v);
    }
    if let Some(v) = spec.max_concurrency {
        am.max_concurrency = Set(v);
    }
    if let Some(v) = spec.idle_timeout_ms {
        am.idle_timeout_ms = Set(v);
    }
    if let Some(v) = &spec.breaker {
        if let Some(config) = v {
            config
                .validate()
                .map_err(|(field, message)| invalid(&format!("breaker.{field}"), message))?;
        }
        let json = v
            .map(|c| serde_json::to_string(&c))
            .transpose()
            .map_err(|e| invalid("breaker", e.to_string()))?;
        am.breaker = Set(json);
    }
    if let Some(v) = spec.enabled {
        am.enabled = Set(v);
    }
    Ok(())
}

/// Checks the whole row after a create or an update: `base_url` must name an allowed host.
fn validate(m: &deployment::ActiveModel, hosts: &UpstreamHosts) -> Result<(), StoreError> {
    let model_id = m.model_id.clone().unwrap();
    if model_id.trim().is_empty() {
        return Err(invalid("model_id", "`model_id` must not be empty"));
    }
    let vendor = VendorType::parse(&m.vendor_type.clone().unwrap());
    let base_url = m.base_url.clone().unwrap();
    match base_url.as_deref() {
        Some(u) => hosts
            .check_base_url(u)
            .map_err(|message| invalid("base_url", message))?,
        None if vendor == Some(VendorType::OpenAI) => {
            return Err(invalid("base_url", "`base_url` is required for OpenAI"));
        }
        None => {}
    }
    for (param, price) in [
        (
            "price_input_per_mtok",
            m.price_input_per_mtok.clone().unwrap(),
        ),
        (
            "price_output_per_mtok",
            m.price_output_per_mtok.clone().unwrap(),
        ),
    ] {
        if !Prices::valid(price) {
            return Err(invalid(param, format!("`{param}` {INVALID_PRICE}")));
        }
    }
    if m.weight.clone().unwrap() < 0 {
        return Err(invalid("weight", "`weight` must not be negative"));
    }
    for (param, v) in [
        ("connect_timeout_ms", m.connect_timeout_ms.clone().unwrap()),
        ("request_timeout_ms", m.request_timeout_ms.clone().unwrap()),
        ("idle_timeout_ms", m.idle_timeout_ms.clone().unwrap()),
    ] {
        if v.is_some_and(|v| v <= 0) {
            return Err(invalid(param, format!("`{param}` must be greater than 0")));
        }
    }
    if m.max_concurrency.clone().unwrap().is_some_and(|v| v <= 0) {
        return Err(invalid(
            "max_concurrency",
            "`max_concurrency` must be greater than 0",
        ));
    }
    Ok(())
}

fn describe(spec: &DeploymentSpec) -> serde_json::Value {
    json!({
        "model_id": spec.model_id, "vendor_type": spec.vendor_type, "base_url": spec.base_url,
        "upstream_model": spec.upstream_model,
        "api_key": spec.api_key.as_ref().map(|k| if k.is_some() { "set" } else { "cleared" }),
        "weight": spec.weight, "priority": spec.priority,
        "price_input_per_mtok": spec.price_input_per_mtok,
        "price_output_per_mtok": spec.price_output_per_mtok,
        "connect_timeout_ms": spec.connect_timeout_ms, "request_timeout_ms": spec.request_timeout_ms,
        "max_concurrency": spec.max_concurrency, "idle_timeout_ms": spec.idle_timeout_ms,
        "breaker": spec.breaker, "enabled": spec.enabled,
    })
}

/// A new row with defaults, `spec` applied and validated (not yet inserted).
pub(super) fn new_row(
    spec: &DeploymentSpec,
    key: &MasterKey,
    hosts: &UpstreamHosts,
) -> Result<deployment::ActiveModel, StoreError> {
    let now = now_ms();
    let mut am = deployment::ActiveModel {
        id: Set(format!("dep_{}", uuid::Uuid::now_v7().simple())),
        model_id: Set(String::new()),
        vendor_type: Set(String::new()),
        base_url: Set(None),
        upstream_model: Set(None),
        api_key_ciphertext: Set(None),
        api_key_key_id: Set(None),
        weight: Set(1),
        priority: Set(0),
        price_input_per_mtok: Set(None),
        price_output_per_mtok: Set(None),
        connect_timeout_ms: Set(None),
        request_timeout_ms: Set(None),
        max_concurrency: Set(None),
        request_script: Set(None),
        response_script: Set(None),
        workflow: Set(None),
        mcp_servers: Set(None),
        idle_timeout_ms: Set(None),
        breaker: Set(None),
        enabled: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
    };
    if spec.vendor_type.is_none() {
        return Err(invalid("vendor_type", "`vendor_type` is required"));
    }
    apply(&mut am, spec, key)?;
    validate(&am, hosts)?;
    Ok(am)
}

impl Handler<CreateDeployment> for StoreActor {
    type Result = ResponseFuture<Result<Deployment, StoreError>>;

    fn handle(&mut self, msg: CreateDeployment, _: &mut Self::Context) -> Self::Result {
        let hosts = self.upstream_hosts.clone();
        self.run(move |db, key| async move {
            let am = new_row(&msg.spec, &key, &hosts)?;
            let txn = begin_write(&db).await?;
            let row = am.insert(&txn).await?;
            let details = describe(&msg.spec);
            audit::append(
                &txn,
                &msg.actor,
                "model.create",
                "deployment",
                &row.id,
                details,
            )
            .await?;
            txn.commit().await?;
            Ok(to_record(&row))
        })
    }
}

impl Handler<UpdateDeployment> for StoreActor {
    type Result = ResponseFuture<Result<Deployment, StoreError>>;

    fn handle(&mut self, msg: UpdateDeployment, _: &mut Self::Context) -> Self::Result {
        let hosts = self.upstream_hosts.clone();
        self.run(move |db, key| async move {
            let txn = begin_write(&db).await?;
            let row = deployment::Entity::find_by_id(msg.id.clone())
                .one(&txn)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("deployment `{}`", msg.id)))?;
            // The stored key goes wherever `base_url` points: moving it needs the key again.
            let moves_base_url = msg
                .spec
                .base_url
                .as_ref()
                .is_some_and(|url| *url != row.base_url);
            if moves_base_url && row.api_key_ciphertext.is_some() && msg.spec.api_key.is_none() {
                return Err(invalid(
                    "api_key",
                    "changing `base_url` of a deployment with a stored key requires `api_key` in the same request",
                ));
            }
            let mut am = row.into_active_model();
            apply(&mut am, &msg.spec, &key)?;
            am.updated_at = Set(now_ms());
            validate(&am, &hosts)?;
            let row = am.update(&txn).await?;
            let details = describe(&msg.spec);
            audit::append(
                &txn,
                &msg.actor,
                "model.update",
                "deployment",
                &msg.id,
                details,
            )
            .await?;
            txn.commit().await?;
            Ok(to_record(&row))
        })
    }
}

impl Handler<DeleteDeployment> for StoreActor {
    type Result = ResponseFuture<Result<Deployment, StoreError>>;

    fn handle(&mut self, msg: DeleteDeployment, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let txn = begin_write(&db).await?;
            let row = deployment::Entity::find_by_id(msg.id.clone())
                .one(&txn)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("deployment `{}`", msg.id)))?;
            let record = to_record(&row);
            row.delete(&txn).await?;
            let details = json!({"model_id": record.model_id});
            audit::append(
                &txn,
                &msg.actor,
                "model.delete",
                "deployment",
                &msg.id,
                details,
            )
            .await?;
            txn.commit().await?;
            Ok(record)
        })
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
            Ok(rows.iter().map(to_record).collect())
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
                    deployment: to_record(&row),
                    api_key,
                });
            }
            Ok(out)
        })
    }
}
