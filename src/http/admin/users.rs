//! `/admin/users`: create, list, read, update, disable; `/admin/users/quota` upserts limits.
//! The store answers once the key cache follows the change: a disabled user's keys stop
//! working at once.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::{CreateUser, GetUser, ListUsers, UpdateUser, UserFields};
use crate::domain::records::User;
use crate::error::ApiError;
use crate::http::dto::{CreateUserBody, PatchUserBody, QuotaBody};
use crate::http::extract::{Admin, AdminReader};
use crate::http::openapi::responses::{AdminAuth, Conflict, JsonBody, NotFound};
use crate::http::openapi::schemas::UserList;
use crate::http::{AppState, read_json};

#[utoipa::path(
    post,
    path = "/admin/users",
    tag = "Admin",
    description = "Creates a user (an id is generated when `user_id` is absent). Role: admin.",
    request_body = CreateUserBody,
    responses(
        (status = 201, description = "The user", body = User),
        (status = 409, response = Conflict),
        AdminAuth,
        JsonBody,
    )
)]
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

#[utoipa::path(
    get,
    path = "/admin/users",
    tag = "Admin",
    description = "Every user. Role: admin, operator or viewer.",
    responses((status = 200, description = "The users", body = UserList), AdminAuth)
)]
pub async fn list_users(
    state: web::Data<AppState>,
    _: AdminReader,
) -> Result<HttpResponse, ApiError> {
    let users = state.store.send(ListUsers).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(json!({"data": users})))
}

#[utoipa::path(
    get,
    path = "/admin/users/{user_id}",
    tag = "Admin",
    description = "One user. Role: admin, operator or viewer.",
    responses(
        (status = 200, description = "The user", body = User),
        (status = 404, response = NotFound),
        AdminAuth,
    )
)]
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

#[utoipa::path(
    patch,
    path = "/admin/users/{user_id}",
    tag = "Admin",
    description = "Changes the fields present (`null` clears a limit); disabling a user stops its keys at once. Role: admin.",
    request_body = PatchUserBody,
    responses(
        (status = 200, description = "The user", body = User),
        (status = 404, response = NotFound),
        AdminAuth,
        JsonBody,
    )
)]
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
#[utoipa::path(
    delete,
    path = "/admin/users/{user_id}",
    tag = "Admin",
    description = "Disables the user: its keys stop working at once; its usage history stays attributable. Role: admin.",
    responses(
        (status = 200, description = "The disabled user", body = User),
        (status = 404, response = NotFound),
        AdminAuth,
    )
)]
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

#[utoipa::path(
    post,
    path = "/admin/users/quota",
    tag = "Admin",
    description = "Sets a user's limits, creating the user (role `user`) if absent. Role: admin.",
    request_body = QuotaBody,
    responses((status = 200, description = "The user", body = User), AdminAuth, JsonBody)
)]
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
