//! `/admin/keys`: create (the secret is in this answer only), list, revoke. The store
//! answers a revocation once the key cache follows it, so the very next request with the
//! key is a 401.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::{CreateKey, ListKeys, NewKey, RevokeKey};
use crate::domain::records::ApiKeyInfo;
use crate::error::ApiError;
use crate::http::dto::{CreateKeyBody, KeysQuery};
use crate::http::extract::{Admin, AdminReader};
use crate::http::openapi::responses::{AdminAuth, JsonBody, NotFound};
use crate::http::openapi::schemas::{CreatedKey, KeyList, OpenAiError};
use crate::http::{AppState, read_json};

#[utoipa::path(
    post,
    path = "/admin/keys",
    tag = "Admin",
    description = "Creates an API key for an existing user; the key itself is in this answer only. Role: admin.",
    request_body = CreateKeyBody,
    responses(
        (status = 201, description = "The key's record and the key", body = CreatedKey),
        (status = 404, description = "No such user (`not_found`)", body = OpenAiError),
        AdminAuth,
        JsonBody,
    )
)]
pub async fn create_key(
    state: web::Data<AppState>,
    caller: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: CreateKeyBody =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    if body.rpm_limit.is_some_and(|n| n < 0) {
        return Err(ApiError::invalid(
            "rpm_limit",
            "`rpm_limit` must not be negative",
        ));
    }
    for prefix in body.topics.iter().flatten() {
        crate::domain::bus::check_name("topics", prefix)
            .map_err(|e| ApiError::invalid("topics", e.message))?;
    }
    let key = NewKey {
        user_id: body.user_id,
        name: body.name,
        models: body.models,
        topics: body.topics,
        rpm_limit: body.rpm_limit,
        expires_at: body.expires_at.map(|t| t.to_ms("expires_at")).transpose()?,
    };
    let msg = CreateKey {
        key,
        actor: caller.actor(),
    };
    let (info, secret) = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    let mut answer = serde_json::to_value(&info).map_err(|_| ApiError::internal())?;
    answer["key"] = json!(secret.expose());
    Ok(HttpResponse::Created().json(answer))
}

#[utoipa::path(
    get,
    path = "/admin/keys",
    tag = "Admin",
    description = "API keys (never their secrets), oldest first. Role: admin, operator or viewer.",
    params(KeysQuery),
    responses((status = 200, description = "The keys", body = KeyList), AdminAuth)
)]
pub async fn list_keys(
    state: web::Data<AppState>,
    _: AdminReader,
    query: web::Query<KeysQuery>,
) -> Result<HttpResponse, ApiError> {
    let msg = ListKeys {
        user_id: query.into_inner().user_id,
    };
    let keys = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(json!({"data": keys})))
}

#[utoipa::path(
    delete,
    path = "/admin/keys/{id}",
    tag = "Admin",
    description = "Revokes a key: the next request with it is refused. Role: admin.",
    responses(
        (status = 200, description = "The revoked key", body = ApiKeyInfo),
        (status = 404, response = NotFound),
        AdminAuth,
    )
)]
pub async fn revoke_key(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let msg = RevokeKey {
        id: path.into_inner(),
        actor: caller.actor(),
    };
    let info = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(info))
}
