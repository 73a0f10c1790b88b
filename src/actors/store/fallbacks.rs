//! Fallback chains (`model_fallbacks`): replaced whole per model, refused if they would
//! close a cycle. A replacement announces `Fallbacks`.

use std::collections::HashMap;

use actix::prelude::*;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
};
use serde_json::json;

use super::{
    LoadFallbacks, PendingChanges, SetFallbacks, StoreActor, StoreError, audit, begin_write,
};
use crate::actors::feed::Change;
use crate::domain::fallbacks::find_cycle;
use crate::entities::model_fallback;

async fn load(
    db: &impl sea_orm::ConnectionTrait,
) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let rows = model_fallback::Entity::find()
        .order_by_asc(model_fallback::Column::ModelId)
        .order_by_asc(model_fallback::Column::Position)
        .all(db)
        .await?;
    let mut graph: HashMap<String, Vec<String>> = HashMap::new();
    for row in rows {
        graph
            .entry(row.model_id)
            .or_default()
            .push(row.fallback_model_id);
    }
    Ok(graph)
}

async fn set(
    db: DatabaseConnection,
    changes: PendingChanges,
    msg: SetFallbacks,
) -> Result<Vec<String>, StoreError> {
    let txn = begin_write(&db).await?;
    let mut graph = load(&txn).await?;
    graph.insert(msg.model_id.clone(), msg.fallbacks.clone());
    if let Some(cycle) = find_cycle(&graph, &msg.model_id) {
        return Err(StoreError::Invalid {
            param: "fallbacks".into(),
            message: format!("fallbacks would form a cycle: {}", cycle.join(" → ")),
        });
    }
    model_fallback::Entity::delete_many()
        .filter(model_fallback::Column::ModelId.eq(msg.model_id.clone()))
        .exec(&txn)
        .await?;
    for (position, fallback) in msg.fallbacks.iter().enumerate() {
        model_fallback::Entity::insert(model_fallback::ActiveModel {
            model_id: Set(msg.model_id.clone()),
            position: Set(i32::try_from(position).unwrap_or(i32::MAX)),
            fallback_model_id: Set(fallback.clone()),
        })
        .exec(&txn)
        .await?;
    }
    let details = json!({"fallbacks": msg.fallbacks});
    audit::append(
        &txn,
        &msg.actor,
        "model.fallbacks",
        "model",
        &msg.model_id,
        details,
    )
    .await?;
    changes.commit(txn).await?;
    Ok(msg.fallbacks)
}

impl Handler<SetFallbacks> for StoreActor {
    type Result = ResponseFuture<Result<Vec<String>, StoreError>>;

    fn handle(&mut self, msg: SetFallbacks, _: &mut Self::Context) -> Self::Result {
        self.run_change(vec![Change::Fallbacks], move |db, _, changes| {
            set(db, changes, msg)
        })
    }
}

impl Handler<LoadFallbacks> for StoreActor {
    type Result = ResponseFuture<Result<HashMap<String, Vec<String>>, StoreError>>;

    fn handle(&mut self, _: LoadFallbacks, _: &mut Self::Context) -> Self::Result {
        self.run(|db, _| async move { load(&db).await })
    }
}
