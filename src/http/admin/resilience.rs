//! Fallback chains and circuit breakers: `PUT /admin/models/{model_id}/fallbacks`,
//! `GET /admin/breakers`, `PUT /admin/breakers/{deployment_id}` (hold open or closed for
//! maintenance, or back to `auto`).

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::actors::ASK_TIMEOUT;
use crate::actors::provider::BreakerView;
use crate::actors::provider::{ForceBreaker, GetBreaker};
use crate::actors::router::ListProviders;
use crate::actors::store::{AppendAudit, SetFallbacks};
use crate::domain::breaker::BreakerState;
use crate::error::ApiError;
use crate::http::dto::{BreakerOverride, BreakerOverrideBody, FallbacksBody};
use crate::http::extract::{AdminReader, ModelAdmin};
use crate::http::openapi::responses::{AdminAuth, JsonBody};
use crate::http::openapi::schemas::{BreakerList, FallbackChain, OpenAiError};
use crate::http::{AppState, read_json};

#[utoipa::path(
    put,
    path = "/admin/models/{model_id}/fallbacks",
    tag = "Admin",
    description = "Replaces a model's fallback chain (400 on a cycle). Role: admin or operator.",
    request_body = FallbacksBody,
    responses(
        (status = 200, description = "The chain now in force", body = FallbackChain),
        AdminAuth,
        JsonBody,
    )
)]
pub async fn set_fallbacks(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: FallbacksBody =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    let model_id = path.into_inner();
    let fallbacks = body.fallbacks;
    if fallbacks.iter().any(|f| f.trim().is_empty()) {
        return Err(ApiError::invalid(
            "fallbacks",
            "fallback model names must not be empty",
        ));
    }
    let msg = SetFallbacks {
        model_id: model_id.clone(),
        fallbacks,
        actor: caller.actor(),
    };
    let fallbacks = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(json!({"model_id": model_id, "fallbacks": fallbacks})))
}

#[utoipa::path(
    get,
    path = "/admin/breakers",
    tag = "Admin",
    description = "Each routable deployment's circuit breaker and load. Role: admin, operator or viewer.",
    responses((status = 200, description = "The breakers", body = BreakerList), AdminAuth)
)]
pub async fn list_breakers(
    state: web::Data<AppState>,
    _: AdminReader,
) -> Result<HttpResponse, ApiError> {
    let providers = state
        .router
        .send(ListProviders)
        .timeout(ASK_TIMEOUT)
        .await?;
    let mut data = Vec::with_capacity(providers.len());
    for (_, provider) in providers {
        data.push(provider.send(GetBreaker).timeout(ASK_TIMEOUT).await?);
    }
    Ok(HttpResponse::Ok().json(json!({"data": data})))
}

#[utoipa::path(
    put,
    path = "/admin/breakers/{deployment_id}",
    tag = "Admin",
    description = "Holds a deployment's breaker open or closed (maintenance), or hands it back to `auto`. Role: admin or operator.",
    request_body = BreakerOverrideBody,
    responses(
        (status = 200, description = "The breaker now", body = BreakerView),
        (status = 404, description = "No routable deployment with this id (`not_found`)", body = OpenAiError),
        AdminAuth,
        JsonBody,
    )
)]
pub async fn override_breaker(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: BreakerOverrideBody =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    let deployment_id = path.into_inner();
    let providers = state
        .router
        .send(ListProviders)
        .timeout(ASK_TIMEOUT)
        .await?;
    let provider = providers
        .into_iter()
        .find(|(id, _)| *id == deployment_id)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            ApiError::not_found(format!("deployment `{deployment_id}` is not routable"))
        })?;
    let (forced, label) = match body.state {
        BreakerOverride::Open => (Some(BreakerState::Open), "open"),
        BreakerOverride::Closed => (Some(BreakerState::Closed), "closed"),
        BreakerOverride::Auto => (None, "auto"),
    };
    let view = provider
        .send(ForceBreaker(forced))
        .timeout(ASK_TIMEOUT)
        .await?;
    let audit = AppendAudit {
        actor: caller.actor(),
        action: "breaker.override",
        target_type: "deployment",
        target_id: deployment_id,
        details: json!({"state": label}),
    };
    state.store.send(audit).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(view))
}
