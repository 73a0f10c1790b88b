//! `/admin/models`: deployments. A change is written by the store, then the router reloads
//! before the answer, so the next request already routes by the new table. The upstream
//! `api_key` is accepted, sealed, and never returned.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::actors::ASK_TIMEOUT;
use crate::actors::router::Reload;
use crate::actors::store::{CreateDeployment, DeleteDeployment, ListDeployments, UpdateDeployment};
use crate::error::ApiError;
use crate::http::dto::DeploymentBody;
use crate::http::extract::{AdminReader, ModelAdmin};
use crate::http::{AppState, read_json};

/// Rebuilds the routing table so the next request sees an admin change.
pub(crate) async fn reload(state: &AppState) -> Result<(), ApiError> {
    state
        .router
        .send(Reload)
        .timeout(ASK_TIMEOUT)
        .await?
        .map_err(|e| {
            tracing::error!(error = %e, "routing table reload failed");
            ApiError::unavailable()
        })?;
    Ok(())
}

pub async fn create_model(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: DeploymentBody =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    let spec = body.into_spec();
    if spec.model_id.is_none() {
        return Err(ApiError::invalid("model_id", "`model_id` is required"));
    }
    let msg = CreateDeployment {
        spec,
        actor: caller.actor(),
    };
    let deployment = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    reload(&state).await?;
    Ok(HttpResponse::Created().json(deployment))
}

pub async fn list_models(
    state: web::Data<AppState>,
    _: AdminReader,
) -> Result<HttpResponse, ApiError> {
    let deployments = state
        .store
        .send(ListDeployments)
        .timeout(ASK_TIMEOUT)
        .await??;
    Ok(HttpResponse::Ok().json(json!({"data": deployments})))
}

pub async fn update_model(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: DeploymentBody =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    let msg = UpdateDeployment {
        id: path.into_inner(),
        spec: body.into_spec(),
        actor: caller.actor(),
    };
    let deployment = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    reload(&state).await?;
    Ok(HttpResponse::Ok().json(deployment))
}

pub async fn delete_model(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let msg = DeleteDeployment {
        id: path.into_inner(),
        actor: caller.actor(),
    };
    let deployment = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    reload(&state).await?;
    Ok(HttpResponse::Ok().json(deployment))
}
