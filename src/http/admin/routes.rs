//! `/admin/routes`: passthrough routes at runtime, beside the config's `[[routes]]`
//! (listed as `source: "config"`, read-only). A stored route takes effect on every
//! instance once the store answers (the change feed); the values of `inject_headers` are
//! sealed at rest and never returned (names only). A prefix a `[[routes]]` entry or
//! another stored route holds is refused with 409.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::messages::{
    CreatePassthroughRoute, DeletePassthroughRoute, UpdatePassthroughRoute,
};
use crate::domain::passthrough::{RouteSpec, StoredRoute};
use crate::error::{ApiError, ErrorKind};
use crate::http::extract::{AdminReader, ModelAdmin};
use crate::http::openapi::responses::{AdminAuth, JsonBody, NotFound};
use crate::http::{AppState, read_json};

/// A route as the admin API shows it: never the injected headers' values.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteInfo {
    /// `config-<n>` for the n-th `[[routes]]` entry; else the stored route's id.
    pub id: String,
    /// `config` (read-only) or `admin`.
    pub source: &'static str,
    pub prefix: String,
    pub upstream: String,
    /// The names of the headers it sets upstream.
    pub inject_headers: Vec<String>,
    pub strip_headers: Vec<String>,
    pub pass_headers: Vec<String>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub rpm_limit: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub token_header: Option<String>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

fn info(id: &str, from_config: bool, spec: &RouteSpec, times: Option<(i64, i64)>) -> RouteInfo {
    RouteInfo {
        id: id.to_string(),
        source: if from_config { "config" } else { "admin" },
        prefix: spec.prefix.clone(),
        upstream: spec.upstream.clone(),
        inject_headers: spec.inject_headers.keys().cloned().collect(),
        strip_headers: spec.strip_headers.clone(),
        pass_headers: spec.pass_headers.clone(),
        connect_timeout_ms: spec.connect_timeout_ms(),
        request_timeout_ms: spec.request_timeout_ms(),
        idle_timeout_ms: spec.idle_timeout_ms(),
        rpm_limit: spec.rpm_limit,
        max_concurrency: spec.max_concurrency,
        token_header: spec.token_header.clone(),
        created_at: times.map(|t| t.0),
        updated_at: times.map(|t| t.1),
    }
}

fn stored_info(route: &StoredRoute) -> RouteInfo {
    info(
        &route.id,
        false,
        &route.spec,
        Some((route.created_at, route.updated_at)),
    )
}

/// 409 when a `[[routes]]` entry holds `prefix`.
fn check_not_config(state: &AppState, prefix: &str) -> Result<(), ApiError> {
    if state.settings.routes.iter().any(|r| r.prefix == prefix) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("the prefix `{prefix}` belongs to a [[routes]] entry of the config"),
        ));
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/admin/routes",
    operation_id = "list_routes",
    tag = "Admin",
    description = "The passthrough routes this instance serves: the config's `[[routes]]` (`source: config`, read-only) and those added here (`source: admin`). Injected headers by name only. Role: admin, operator or viewer.",
    responses(
        (status = 200, description = "`{data: [route]}`"),
        AdminAuth,
    )
)]
pub async fn list(state: web::Data<AppState>, _: AdminReader) -> Result<HttpResponse, ApiError> {
    let table = state.passthrough.borrow().clone();
    let data: Vec<RouteInfo> = table
        .routes
        .iter()
        .map(|r| {
            let times = r.created_at.zip(r.updated_at);
            info(&r.id, r.from_config, &r.spec, times)
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

#[utoipa::path(
    post,
    path = "/admin/routes",
    operation_id = "create_route",
    tag = "Admin",
    description = "Adds a passthrough route; it serves at once on every instance. `inject_headers` values are sealed and never returned. Role: admin or operator.",
    request_body = RouteSpec,
    responses(
        (status = 201, description = "The route", body = RouteInfo),
        (status = 409, description = "The prefix is taken (`conflict`)"),
        AdminAuth,
        JsonBody,
    )
)]
pub async fn create(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let spec: RouteSpec = read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    spec.validate(&state.upstream_hosts)
        .map_err(|(field, message)| ApiError::invalid(field, message))?;
    check_not_config(&state, &spec.prefix)?;
    let route = state
        .store
        .send(CreatePassthroughRoute {
            spec,
            actor: caller.actor(),
        })
        .timeout(ASK_TIMEOUT * 2)
        .await??;
    Ok(HttpResponse::Created().json(stored_info(&route)))
}

#[utoipa::path(
    patch,
    path = "/admin/routes/{id}",
    operation_id = "update_route",
    tag = "Admin",
    description = "Changes a route added here (a JSON merge patch: `null` removes a field or an injected header). Moving `upstream` of a route with `inject_headers` needs them again in the same request. Role: admin or operator.",
    params(("id" = String, Path, description = "The route's id")),
    request_body(content = Object, description = "Any fields of a route"),
    responses(
        (status = 200, description = "The route", body = RouteInfo),
        (status = 409, description = "The prefix is taken, or the route comes from the config"),
        AdminAuth,
        JsonBody,
        (status = 404, response = NotFound),
    )
)]
pub async fn update(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    refuse_config(&id)?;
    let patch: serde_json::Map<String, serde_json::Value> =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    if let Some(prefix) = patch.get("prefix").and_then(|p| p.as_str()) {
        check_not_config(&state, prefix)?;
    }
    let route = state
        .store
        .send(UpdatePassthroughRoute {
            id,
            patch,
            actor: caller.actor(),
        })
        .timeout(ASK_TIMEOUT * 2)
        .await??;
    Ok(HttpResponse::Ok().json(stored_info(&route)))
}

/// The config's routes change with the config file only.
fn refuse_config(id: &str) -> Result<(), ApiError> {
    if id.starts_with("config-") {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("the route `{id}` comes from the config file; change it there"),
        ));
    }
    Ok(())
}

#[utoipa::path(
    delete,
    path = "/admin/routes/{id}",
    operation_id = "delete_route",
    tag = "Admin",
    description = "Deletes a route added here; its prefix answers 404 at once on every instance. Role: admin or operator.",
    params(("id" = String, Path, description = "The route's id")),
    responses(
        (status = 200, description = "`{id, deleted: true}`"),
        (status = 409, description = "The route comes from the config"),
        AdminAuth,
        (status = 404, response = NotFound),
    )
)]
pub async fn delete(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    refuse_config(&id)?;
    let deleted = state
        .store
        .send(DeletePassthroughRoute {
            id: id.clone(),
            actor: caller.actor(),
        })
        .timeout(ASK_TIMEOUT * 2)
        .await??;
    if !deleted {
        return Err(ApiError::not_found(format!("no route `{id}`")));
    }
    Ok(HttpResponse::Ok().json(json!({"id": id, "deleted": true})))
}
