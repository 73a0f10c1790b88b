//! Liveness and readiness.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use crate::actors::ASK_TIMEOUT;
use crate::actors::store::Ping;
use crate::http::openapi::schemas::{Liveness, Readiness};

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "Operations",
    security(()),
    responses((status = 200, description = "The process is alive", body = Liveness))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers and the router is alive.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "Operations",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: what is down", body = Readiness),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database = matches!(
        state.store.send(Ping).timeout(ASK_TIMEOUT).await,
        Ok(Ok(()))
    );
    let router = state.router.connected();
    let body = json!({"status": if database && router { "ready" } else { "unavailable" },
        "database": database, "router": router});
    if database && router {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
