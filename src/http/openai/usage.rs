//! `GET /v1/usage`: any valid key reads its own usage — its user's and its key's totals,
//! over all time and today (UTC) — and nobody else's. No admin right needed.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::GetCallerUsage;
use crate::domain::now_ms;
use crate::domain::usage_report::CallerUsage;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::extract::Caller;

/// The answer; more about the caller (e.g. its remaining limits) goes beside `usage`.
#[derive(Debug, Serialize)]
struct OwnUsage {
    user_id: String,
    key_id: String,
    usage: CallerUsage,
}

pub async fn own_usage(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let grant = caller.0;
    let msg = GetCallerUsage {
        user_id: grant.user_id.clone(),
        key_id: grant.key_id.clone(),
        now: now_ms(),
    };
    let usage = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(OwnUsage {
        user_id: grant.user_id.clone(),
        key_id: grant.key_id.clone(),
        usage,
    }))
}
