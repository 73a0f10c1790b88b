//! `GET /admin/audit`: the newest admin mutations first.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::ListAudit;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::dto::AuditQuery;
use crate::http::extract::AdminReader;
use crate::http::openapi::responses::AdminAuth;
use crate::http::openapi::schemas::AuditList;

#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "Admin",
    description = "Admin mutations, newest first. Role: admin, operator or viewer.",
    params(AuditQuery),
    responses((status = 200, description = "The audit entries", body = AuditList), AdminAuth)
)]
pub async fn list_audit(
    state: web::Data<AppState>,
    _: AdminReader,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = state
        .store
        .send(ListAudit { limit })
        .timeout(ASK_TIMEOUT)
        .await??;
    Ok(HttpResponse::Ok().json(json!({"data": entries})))
}
