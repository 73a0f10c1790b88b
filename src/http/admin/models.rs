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
use crate::domain::records::Deployment;
use crate::error::ApiError;
use crate::http::extract::{AdminReader, ModelAdmin};
use crate::http::openapi::responses::{AdminAuth, JsonBody, NotFound};
use crate::http::openapi::schemas::{CreateDeploymentBody, DeploymentList, PatchDeploymentBody};
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

#[utoipa::path(
    post,
    path = "/admin/models",
    tag = "Admin",
    description = "Creates a deployment of a model; traffic routes by it from the answer on. Role: admin or operator.",
    request_body = CreateDeploymentBody,
    responses(
        (status = 201, description = "The deployment (never its `api_key`)", body = Deployment),
        AdminAuth,
        JsonBody,
    )
)]
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

#[utoipa::path(
    get,
    path = "/admin/models",
    tag = "Admin",
    operation_id = "admin_list_models",
    description = "Every deployment. Role: admin, operator or viewer.",
    responses((status = 200, description = "The deployments", body = DeploymentList), AdminAuth)
)]
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

#[utoipa::path(
    patch,
    path = "/admin/models/{id}",
    tag = "Admin",
    description = "Changes a deployment (a merge patch); live traffic follows from the answer on. Role: admin or operator.",
    request_body = PatchDeploymentBody,
    responses(
        (status = 200, description = "The deployment", body = Deployment),
        (status = 404, response = NotFound),
        AdminAuth,
        JsonBody,
    )
)]
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

#[utoipa::path(
    delete,
    path = "/admin/models/{id}",
    tag = "Admin",
    description = "Deletes a deployment. Role: admin or operator.",
    responses(
        (status = 200, description = "The deleted deployment", body = Deployment),
        (status = 404, response = NotFound),
        AdminAuth,
    )
)]
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
