//! Passthrough routes added at runtime (`/admin/routes`). A row is the route's prefix
//! (unique), its spec as JSON without the injected headers' values, and those values as
//! one JSON object sealed with the master key (as a deployment seals its API key), opened
//! only for `ListPassthroughRoutes`. Writes are admin writes: audited and announced as
//! `PassthroughRoutes`.

use std::collections::BTreeMap;

use actix::prelude::*;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, DbErr, EntityTrait, IntoActiveModel, ModelTrait,
    QueryOrder, SqlErr,
};
use serde_json::{Value, json};

use super::deployments::invalid;
use super::{
    CreatePassthroughRoute, DeletePassthroughRoute, ListPassthroughRoutes, StoreActor, StoreError,
    UpdatePassthroughRoute, audit, begin_write,
};
use crate::actors::feed::Change;
use crate::config::Secret;
use crate::crypto::{MasterKey, Sealed};
use crate::domain::deployment::merge_patch;
use crate::domain::now_ms;
use crate::domain::passthrough::{RouteSpec, StoredRoute};
use crate::entities::passthrough_route;

const TARGET_TYPE: &str = "passthrough_route";

fn unreadable(id: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Db(DbErr::Type(format!("passthrough route `{id}`: {why}")))
}

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError::Db(DbErr::Json(e.to_string()))
}

/// The row's route, its injected headers opened with the master key.
fn to_stored(m: &passthrough_route::Model, key: &MasterKey) -> Result<StoredRoute, StoreError> {
    let mut spec: Value = serde_json::from_str(&m.spec).map_err(|e| unreadable(&m.id, e))?;
    let inject: BTreeMap<String, String> = match &m.inject_ciphertext {
        None => BTreeMap::new(),
        Some(ciphertext) => {
            let sealed = Sealed {
                ciphertext_hex: ciphertext.clone(),
                key_id: m.inject_key_id.clone().unwrap_or_default(),
            };
            let plain = key.open(&sealed).map_err(|_| {
                tracing::error!(route = %m.id, key_id = %sealed.key_id,
                    "cannot open the route's injected headers with the current master key; restart with the right key");
                StoreError::Crypto
            })?;
            serde_json::from_str(&plain).map_err(|e| unreadable(&m.id, e))?
        }
    };
    spec["prefix"] = json!(m.prefix);
    spec["inject_headers"] = json!(inject);
    let spec: RouteSpec = serde_json::from_value(spec).map_err(|e| unreadable(&m.id, e))?;
    Ok(StoredRoute {
        id: m.id.clone(),
        spec,
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}

/// The spec's JSON as stored (no header values; the prefix is a column of its own) and
/// its headers sealed (none: `None`).
fn sealed_parts(spec: &RouteSpec, key: &MasterKey) -> Result<(String, Option<Sealed>), StoreError> {
    let mut json = serde_json::to_value(spec).map_err(json_error)?;
    if let Some(object) = json.as_object_mut() {
        object.remove("prefix");
        object.remove("inject_headers");
    }
    let sealed = if spec.inject_headers.is_empty() {
        None
    } else {
        let plain: BTreeMap<&str, &str> = spec
            .inject_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        Some(key.seal(&serde_json::to_string(&plain).map_err(json_error)?)?)
    };
    Ok((json.to_string(), sealed))
}

/// What the audit log keeps of a route: everything but the injected headers' values.
fn details(spec: &RouteSpec) -> Value {
    let mut details = serde_json::to_value(spec).unwrap_or_else(|_| json!({}));
    details["inject_headers"] = json!(spec.inject_headers.keys().collect::<Vec<_>>());
    details
}

fn taken(prefix: &str) -> StoreError {
    StoreError::Conflict(format!("a route with prefix `{prefix}` already exists"))
}

fn map_unique(prefix: &str) -> impl FnOnce(DbErr) -> StoreError + '_ {
    move |e| match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => taken(prefix),
        _ => StoreError::Db(e),
    }
}

impl Handler<CreatePassthroughRoute> for StoreActor {
    type Result = ResponseFuture<Result<StoredRoute, StoreError>>;

    fn handle(&mut self, msg: CreatePassthroughRoute, _: &mut Self::Context) -> Self::Result {
        let hosts = self.upstream_hosts.clone();
        self.run_change(
            vec![Change::PassthroughRoutes],
            move |db, key, changes| async move {
                msg.spec.validate(&hosts).map_err(invalid)?;
                let (spec_json, sealed) = sealed_parts(&msg.spec, &key)?;
                let now = now_ms();
                let id = uuid::Uuid::now_v7().to_string();
                let am = passthrough_route::ActiveModel {
                    id: Set(id.clone()),
                    prefix: Set(msg.spec.prefix.clone()),
                    spec: Set(spec_json),
                    inject_key_id: Set(sealed.as_ref().map(|s| s.key_id.clone())),
                    inject_ciphertext: Set(sealed.map(|s| s.ciphertext_hex)),
                    created_at: Set(now),
                    updated_at: Set(now),
                };
                let txn = begin_write(&db).await?;
                am.insert(&txn)
                    .await
                    .map_err(map_unique(&msg.spec.prefix))?;
                audit::append(
                    &txn,
                    &msg.actor,
                    "route.create",
                    TARGET_TYPE,
                    &id,
                    details(&msg.spec),
                )
                .await?;
                changes.commit(txn).await?;
                Ok(StoredRoute {
                    id,
                    spec: msg.spec,
                    created_at: now,
                    updated_at: now,
                })
            },
        )
    }
}

impl Handler<ListPassthroughRoutes> for StoreActor {
    type Result = ResponseFuture<Result<Vec<StoredRoute>, StoreError>>;

    fn handle(&mut self, _: ListPassthroughRoutes, _: &mut Self::Context) -> Self::Result {
        self.run(|db, key| async move {
            let rows = passthrough_route::Entity::find()
                .order_by_asc(passthrough_route::Column::Prefix)
                .all(&db)
                .await?;
            // Never drop a route silently: one that does not open fails the whole load.
            rows.iter().map(|row| to_stored(row, &key)).collect()
        })
    }
}

impl Handler<UpdatePassthroughRoute> for StoreActor {
    type Result = ResponseFuture<Result<StoredRoute, StoreError>>;

    fn handle(&mut self, msg: UpdatePassthroughRoute, _: &mut Self::Context) -> Self::Result {
        let hosts = self.upstream_hosts.clone();
        self.run_change(
            vec![Change::PassthroughRoutes],
            move |db, key, changes| async move {
                let txn = begin_write(&db).await?;
                let row = passthrough_route::Entity::find_by_id(msg.id.clone())
                    .one(&txn)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("route `{}`", msg.id)))?;
                let current = to_stored(&row, &key)?;
                let mut target = serde_json::to_value(exposed(&current.spec)).map_err(json_error)?;
                merge_patch(&mut target, &Value::Object(msg.patch.clone()));
                let spec: RouteSpec = serde_json::from_value(target).map_err(|e| {
                    let message = e.to_string();
                    StoreError::Invalid {
                        param: crate::domain::quoted_name(&message)
                            .unwrap_or_else(|| "body".into()),
                        message: format!("invalid body: {message}"),
                    }
                })?;
                spec.validate(&hosts).map_err(invalid)?;
                // Injected headers (a vendor key) go wherever `upstream` points: moving it
                // needs them again.
                if spec.upstream != current.spec.upstream
                    && !current.spec.inject_headers.is_empty()
                    && !msg.patch.contains_key("inject_headers")
                {
                    return Err(invalid((
                        "inject_headers".into(),
                        "changing `upstream` of a route with `inject_headers` requires `inject_headers` in the same request".into(),
                    )));
                }
                let (spec_json, sealed) = sealed_parts(&spec, &key)?;
                let now = now_ms();
                let created_at = row.created_at;
                let mut am = row.into_active_model();
                am.prefix = Set(spec.prefix.clone());
                am.spec = Set(spec_json);
                am.inject_key_id = Set(sealed.as_ref().map(|s| s.key_id.clone()));
                am.inject_ciphertext = Set(sealed.map(|s| s.ciphertext_hex));
                am.updated_at = Set(now);
                am.update(&txn).await.map_err(map_unique(&spec.prefix))?;
                let mut audited = details(&spec);
                audited["patched"] = json!(msg.patch.keys().collect::<Vec<_>>());
                audit::append(
                    &txn,
                    &msg.actor,
                    "route.update",
                    TARGET_TYPE,
                    &msg.id,
                    audited,
                )
                .await?;
                changes.commit(txn).await?;
                Ok(StoredRoute {
                    id: msg.id,
                    spec,
                    created_at,
                    updated_at: now,
                })
            },
        )
    }
}

/// The spec with its header values in clear, to merge a patch onto (never leaves the
/// store: the patched spec is sealed again).
fn exposed(spec: &RouteSpec) -> Value {
    let mut value = serde_json::to_value(spec).unwrap_or_else(|_| json!({}));
    value["inject_headers"] = json!(
        spec.inject_headers
            .iter()
            .map(|(k, v): (&String, &Secret)| (k.clone(), v.expose().to_string()))
            .collect::<BTreeMap<_, _>>()
    );
    value
}

impl Handler<DeletePassthroughRoute> for StoreActor {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: DeletePassthroughRoute, _: &mut Self::Context) -> Self::Result {
        self.run_change(
            vec![Change::PassthroughRoutes],
            move |db, _, changes| async move {
                let txn = begin_write(&db).await?;
                let Some(row) = passthrough_route::Entity::find_by_id(msg.id.clone())
                    .one(&txn)
                    .await?
                else {
                    return Ok(false);
                };
                let details = json!({"prefix": row.prefix});
                row.delete(&txn).await?;
                audit::append(
                    &txn,
                    &msg.actor,
                    "route.delete",
                    TARGET_TYPE,
                    &msg.id,
                    details,
                )
                .await?;
                changes.commit(txn).await?;
                Ok(true)
            },
        )
    }
}
