//! `/admin/scripts`: Rhai transform scripts. A save is compiled first (400 with the
//! compiler's message, `line` and `column` when it does not compile), then stored (audited,
//! announced); the store answers once the script registry recompiled, so the next request
//! runs the new source. `/test` runs a stored script in the same sandbox as requests do.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::messages::{CreateScript, DeleteScript, ReplaceScript};
use crate::domain::scripts::{ScriptRecord, check_script_name};
use crate::error::{ApiError, ErrorKind};
use crate::http::extract::{AdminReader, ModelAdmin};
use crate::http::openapi::responses::{AdminAuth, JsonBody, NotFound};
use crate::http::{AppState, read_json};
use crate::scripts::{Functions, Hook, LoadedScript};

/// `POST /admin/scripts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateScriptBody {
    /// 1 to 64 letters, digits, `-`, `_` or `.`.
    pub name: String,
    /// Rhai source defining `fn on_request(req)`, `fn on_response(resp)` and/or
    /// `fn workflow(req)`.
    pub source: String,
}

/// `PUT /admin/scripts/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceScriptBody {
    pub source: String,
}

/// `POST /admin/scripts/{name}/test`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestScriptBody {
    /// The object map the function is given.
    #[schema(value_type = Object)]
    pub input: Value,
    /// `on_request` (the default), `on_response`, `workflow`, or any function of the
    /// script taking one argument.
    pub function: Option<String>,
}

/// A script as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScriptInfo {
    pub name: String,
    /// Which hooks it defines.
    pub functions: Functions,
    /// Why a stored script does not compile under the current `[scripts]` limits.
    pub error: Option<String>,
    /// Its source (`GET /admin/scripts/{name}` and saves only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn info(script: &LoadedScript, with_source: bool) -> ScriptInfo {
    let record = &script.record;
    ScriptInfo {
        name: record.name.clone(),
        functions: script.functions,
        error: script.program.as_ref().err().cloned(),
        source: with_source.then(|| record.source.clone()),
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

/// The script as saved: compiled by the same sandbox the registry uses.
fn saved(state: &AppState, record: ScriptRecord) -> ScriptInfo {
    info(&state.scripts.sandbox().load(record), true)
}

/// Compiles `source`; a compile error is answered (the refusal returned) as a 400
/// `invalid_request_error` on `source` with the compiler's message and position (also as
/// `error.line` and `error.column`).
fn compile_refusal(state: &AppState, source: &str) -> Option<HttpResponse> {
    state.scripts.sandbox().compile(source).err().map(|e| {
        let at = match (e.line, e.column) {
            (Some(line), Some(column)) => format!(" (line {line}, column {column})"),
            (Some(line), None) => format!(" (line {line})"),
            _ => String::new(),
        };
        let error = ApiError::invalid(
            "source",
            format!("the script does not compile: {}{at}", e.message),
        );
        error.log();
        let mut body = error.body();
        body["error"]["line"] = json!(e.line);
        body["error"]["column"] = json!(e.column);
        HttpResponse::BadRequest().json(body)
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    check_script_name(name).map_err(|m| ApiError::invalid("name", m))
}

#[utoipa::path(
    post,
    path = "/admin/scripts",
    tag = "Admin",
    description = "Stores a Rhai transform script, compiled first; it runs from the next request on. Role: admin or operator.",
    request_body = CreateScriptBody,
    responses(
        (status = 201, description = "The script", body = ScriptInfo),
        (status = 400, description = "`invalid_request_error` on `source` with the compiler's message, `line` and `column`, or a bad `name`"),
        (status = 409, description = "A script of that name exists (`conflict`)"),
        AdminAuth,
        JsonBody,
    )
)]
pub async fn create_script(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: CreateScriptBody =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    check_name(&body.name)?;
    if let Some(refused) = compile_refusal(&state, &body.source) {
        return Ok(refused);
    }
    let record = state
        .store
        .send(CreateScript {
            name: body.name,
            source: body.source,
            actor: caller.actor(),
        })
        .timeout(ASK_TIMEOUT)
        .await??;
    Ok(HttpResponse::Created().json(saved(&state, record)))
}

#[utoipa::path(
    put,
    path = "/admin/scripts/{name}",
    tag = "Admin",
    description = "Creates or replaces a script's source, compiled first; the next request runs the new source (no restart). Role: admin or operator.",
    params(("name" = String, Path, description = "The script's name")),
    request_body = ReplaceScriptBody,
    responses(
        (status = 200, description = "The script, replaced", body = ScriptInfo),
        (status = 201, description = "The script, created", body = ScriptInfo),
        (status = 400, description = "`invalid_request_error` on `source` with the compiler's message, `line` and `column`"),
        AdminAuth,
        JsonBody,
    )
)]
pub async fn replace_script(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    check_name(&name)?;
    let body: ReplaceScriptBody =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    if let Some(refused) = compile_refusal(&state, &body.source) {
        return Ok(refused);
    }
    let (record, created) = state
        .store
        .send(ReplaceScript {
            name,
            source: body.source,
            actor: caller.actor(),
        })
        .timeout(ASK_TIMEOUT)
        .await??;
    let script = saved(&state, record);
    Ok(if created {
        HttpResponse::Created().json(script)
    } else {
        HttpResponse::Ok().json(script)
    })
}

#[utoipa::path(
    get,
    path = "/admin/scripts",
    tag = "Admin",
    operation_id = "admin_list_scripts",
    description = "Every script (without its source), by name. Role: admin, operator or viewer.",
    responses(
        (status = 200, description = "`{data: [script]}`"),
        AdminAuth,
    )
)]
pub async fn list_scripts(
    state: web::Data<AppState>,
    _: AdminReader,
) -> Result<HttpResponse, ApiError> {
    let set = state.scripts.current();
    let data: Vec<ScriptInfo> = set.scripts.values().map(|s| info(s, false)).collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

#[utoipa::path(
    get,
    path = "/admin/scripts/{name}",
    tag = "Admin",
    description = "One script with its source. Role: admin, operator or viewer.",
    params(("name" = String, Path, description = "The script's name")),
    responses(
        (status = 200, description = "The script", body = ScriptInfo),
        AdminAuth,
        (status = 404, response = NotFound),
    )
)]
pub async fn get_script(
    state: web::Data<AppState>,
    _: AdminReader,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let set = state.scripts.current();
    let script = set
        .scripts
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no script `{name}`")))?;
    Ok(HttpResponse::Ok().json(info(script, true)))
}

#[utoipa::path(
    delete,
    path = "/admin/scripts/{name}",
    tag = "Admin",
    description = "Deletes a script. A script a deployment names is refused (409 naming the deployments). Role: admin or operator.",
    params(("name" = String, Path, description = "The script's name")),
    responses(
        (status = 200, description = "`{name, deleted: true}`"),
        (status = 409, description = "Deployments name the script (`conflict`)"),
        AdminAuth,
        (status = 404, response = NotFound),
    )
)]
pub async fn delete_script(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let deleted = state
        .store
        .send(DeleteScript {
            name: name.clone(),
            actor: caller.actor(),
        })
        .timeout(ASK_TIMEOUT)
        .await??;
    if !deleted {
        return Err(ApiError::not_found(format!("no script `{name}`")));
    }
    Ok(HttpResponse::Ok().json(json!({"name": name, "deleted": true})))
}

#[utoipa::path(
    post,
    path = "/admin/scripts/{name}/test",
    tag = "Admin",
    description = "Runs a stored script's `on_request` (or `function`) on `input` in the request sandbox (same limits and time budget) and answers `{output}`. A script that fails answers 500 `script_error` with the reason, as a request would. Role: admin or operator.",
    params(("name" = String, Path, description = "The script's name")),
    request_body = TestScriptBody,
    responses(
        (status = 200, description = "`{output}`: the object map the function returned"),
        (status = 500, description = "`script_error`: the script failed (its error, a sandbox limit, its time budget)"),
        AdminAuth,
        JsonBody,
        (status = 404, response = NotFound),
    )
)]
pub async fn test_script(
    state: web::Data<AppState>,
    _: ModelAdmin,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let body: TestScriptBody =
        read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    if !body.input.is_object() {
        return Err(ApiError::invalid("input", "`input` must be a JSON object"));
    }
    if !state.scripts.current().scripts.contains_key(&name) {
        return Err(ApiError::not_found(format!("no script `{name}`")));
    }
    let function = body
        .function
        .unwrap_or_else(|| Hook::OnRequest.name().to_string());
    let output = state
        .scripts
        .run(&name, &function, body.input)
        .await
        .map_err(|e| ApiError::new(ErrorKind::ScriptError, e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({ "output": output })))
}
