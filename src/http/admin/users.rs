//! `/admin/users`: create, list, read, update, disable; `/admin/users/quota` upserts limits.
//! The store answers once the key cache follows the change: a disabled user's keys stop
//! working at once.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::{CreateUser, GetUser, ListUsers, UpdateUser, UserFields};
use crate::error::ApiError;
use crate::http::dto::{CreateUserBody, PatchUserBody, QuotaBody};
use crate::http::extract::{Admin, AdminReader};
use crate::http::{AppState, read_json};

pub async fn create_user(
    state: web::Data<AppState>,
    caller: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: CreateUserBody =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    let (user_id, fields) = body.into_fields()?;
    let user_id = match user_id {
        Some(id) if id.trim().is_empty() => {
            return Err(ApiError::invalid("user_id", "`user_id` must not be empty"));
        }
        Some(id) => id,
        None => format!("user_{}", uuid::Uuid::now_v7().simple()),
    };
    let msg = CreateUser {
        user_id,
        fields,
        actor: caller.actor(),
    };
    let user = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Created().json(user))
}

pub async fn list_users(
    state: web::Data<AppState>,
    _: AdminReader,
) -> Result<HttpResponse, ApiError> {
    let users = state.store.send(ListUsers).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(json!({"data": users})))
}

pub async fn get_user(
    state: web::Data<AppState>,
    _: AdminReader,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let msg = GetUser {
        user_id: path.into_inner(),
    };
    let user = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(user))
}

async fn update(
    state: &AppState,
    caller: &Admin,
    user_id: String,
    fields: UserFields,
    create_if_absent: bool,
) -> Result<HttpResponse, ApiError> {
    let msg = UpdateUser {
        user_id,
        fields,
        create_if_absent,
        actor: caller.actor(),
    };
    let user = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(user))
}

pub async fn update_user(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: PatchUserBody =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    let fields = body.into_fields()?;
    update(&state, &caller, path.into_inner(), fields, false).await
}

/// `DELETE /admin/users/{id}` disables the user (its usage history stays attributable).
pub async fn disable_user(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let fields = UserFields {
        disabled: Some(true),
        ..Default::default()
    };
    update(&state, &caller, path.into_inner(), fields, false).await
}

pub async fn set_quota(
    state: web::Data<AppState>,
    caller: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: QuotaBody = read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    let (user_id, fields) = body.into_fields()?;
    if user_id.trim().is_empty() {
        return Err(ApiError::invalid("user_id", "`user_id` must not be empty"));
    }
    update(&state, &caller, user_id, fields, true).await
}
