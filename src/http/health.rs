//! Liveness and readiness.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use crate::actors::ASK_TIMEOUT;
use crate::actors::store::Ping;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers and the router is alive.
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
