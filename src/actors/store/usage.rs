//! Usage rows: converted to storage rows on arrival, written in batches by one writer task
//! so batches land in order and a barrier means "everything before me is written".

use std::time::Duration;

use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use tokio::sync::mpsc;

use super::WriterCmd;
use crate::domain::usage::UsageRecord;
use crate::entities::usage;

const WRITE_ATTEMPTS: u32 = 5;

pub(super) fn to_active_model(r: UsageRecord) -> usage::ActiveModel {
    usage::ActiveModel {
        id: Default::default(),
        request_id: Set(r.request_id),
        user_id: Set(r.user_id),
        key_id: Set(r.key_id),
        model: Set(r.model),
        deployment_id: Set(r.deployment_id),
        prompt_tokens: Set(r.usage.map(|u| u.prompt)),
        completion_tokens: Set(r.usage.map(|u| u.completion)),
        total_tokens: Set(r.usage.map(|u| u.total)),
        cost_usd: Set(r.cost_usd),
        cost_status: Set(r.cost_status.as_str().to_string()),
        status: Set(i32::from(r.status)),
        error_class: Set(r.error_class),
        latency_ms: Set(r.latency_ms),
        overhead_ms: Set(r.overhead_ms),
        ttft_ms: Set(r.ttft_ms),
        stream: Set(r.stream),
        usage_source: Set(r.usage_source.as_str().to_string()),
        created_at: Set(r.created_at),
        attempts: Set(i32::try_from(r.attempts).unwrap_or(i32::MAX)),
    }
}

/// Writes batches in arrival order, retrying a failed batch with backoff before giving up
/// on it (loudly, with its size).
pub(super) async fn writer_loop(
    db: DatabaseConnection,
    mut rx: mpsc::UnboundedReceiver<WriterCmd>,
) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            WriterCmd::Barrier(done) => {
                let _ = done.send(());
            }
            WriterCmd::Batch(rows) => write_batch(&db, rows).await,
        }
    }
}

async fn write_batch(db: &DatabaseConnection, rows: Vec<usage::ActiveModel>) {
    let count = rows.len();
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=WRITE_ATTEMPTS {
        match usage::Entity::insert_many(rows.clone()).exec(db).await {
            Ok(_) => return,
            Err(e) if attempt < WRITE_ATTEMPTS => {
                tracing::warn!(error = %e, rows = count, attempt, "usage batch write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, rows = count, "usage batch could not be written");
            }
        }
    }
}
