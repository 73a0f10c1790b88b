//! `/admin/models`: deployments. The store answers a change once the router has reloaded
//! (the change feed), so the next request already routes by the new table. A body is a
//! JSON object: `POST` merges it onto `{}`, `PATCH` onto the current configuration
//! (RFC 7396, see `domain::deployment`). The upstream `api_key` is accepted, sealed, and
//! never returned.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::{CreateDeployment, DeleteDeployment, ListDeployments, UpdateDeployment};
use crate::domain::deployment::DeploymentPatch;
use crate::error::ApiError;
use crate::http::extract::{AdminReader, ModelAdmin};
use crate::http::{AppState, read_json};

/// A deployment body: a JSON object, checked field by field by the store once merged.
async fn read_patch(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<DeploymentPatch, ApiError> {
    let body: serde_json::Map<String, serde_json::Value> =
        read_json(req, payload, state.settings.server.max_body_bytes).await?;
    DeploymentPatch::from_body(body).map_err(|(param, message)| ApiError::invalid(param, message))
}

pub async fn create_model(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let msg = CreateDeployment {
        patch: read_patch(&state, &req, payload).await?,
        actor: caller.actor(),
    };
    let deployment = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
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
    let msg = UpdateDeployment {
        id: path.into_inner(),
        patch: read_patch(&state, &req, payload).await?,
        actor: caller.actor(),
    };
    let deployment = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
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
    Ok(HttpResponse::Ok().json(deployment))
}
