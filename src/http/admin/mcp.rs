//! `/admin/mcp`: MCP servers. A registration is started once (handshake and `tools/list`)
//! before it is stored, so a server that cannot start is refused with the reason; once
//! stored, every instance's supervisor runs it (the change feed). Environment variables
//! and headers are sealed at rest and never returned.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::actors::ASK_TIMEOUT;
use crate::actors::mcp::{McpCatalog, ProbeServer, ServerStatus, ServerView, command_allowed};
use crate::actors::store::messages::{DeleteMcpServer, RegisterMcpServer, SetToolPolicy};
use crate::domain::mcp::{McpServerSpec, McpTransport, ToolInfo, ToolPolicy, check_server_name};
use crate::domain::now_ms;
use crate::error::{ApiError, ErrorKind};
use crate::http::extract::{Admin, AdminReader, ModelAdmin};
use crate::http::openapi::responses::{AdminAuth, JsonBody, NotFound};
use crate::http::{AppState, read_json};

/// `POST /admin/mcp/register`: a stdio server (`command`, `args`, `env`) or a
/// streamable-HTTP one (`url`, `headers`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Letters, digits, `-`, `_`; its tools are offered as `<name>__<tool>`.
    pub name: String,
    /// The program (one of `[mcp].allowed_commands`), run without a shell.
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// The child's whole environment (beside `PATH`); sealed at rest.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A streamable-HTTP server's endpoint (with `[mcp].allow_http`).
    pub url: Option<String>,
    /// Headers for the HTTP server (an `Authorization`, say); sealed at rest.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Policies by tool name; others get `default_policy`.
    #[serde(default)]
    pub policies: BTreeMap<String, ToolPolicy>,
    /// `[mcp].default_policy` when unset.
    pub default_policy: Option<ToolPolicy>,
    pub max_concurrency: Option<u32>,
    pub call_timeout_ms: Option<u64>,
}

/// A server as the admin API shows it: never its environment's or headers' values.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerInfo {
    pub name: String,
    pub transport: &'static str,
    pub command: Option<String>,
    pub args: Vec<String>,
    pub url: Option<String>,
    /// The names of the environment variables (stdio) or headers (HTTP) it is given.
    pub secret_names: Vec<String>,
    pub status: ServerStatus,
    pub error: Option<String>,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub default_policy: ToolPolicy,
    pub policy_version: i64,
    pub max_concurrency: u32,
    pub call_timeout_ms: u64,
    pub tools: Vec<ToolWithPolicy>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolWithPolicy {
    #[serde(flatten)]
    pub tool: ToolInfo,
    pub policy: ToolPolicy,
}

fn info(view: &ServerView) -> ServerInfo {
    let spec = &view.spec;
    let (transport, command, args, url) = match &spec.transport {
        McpTransport::Stdio { command, args } => {
            ("stdio", Some(command.clone()), args.clone(), None)
        }
        McpTransport::Http { url } => ("http", None, Vec::new(), Some(url.clone())),
    };
    ServerInfo {
        name: spec.name.clone(),
        transport,
        command,
        args,
        url,
        secret_names: spec.secrets.keys().cloned().collect(),
        status: view.status,
        error: view.error.clone(),
        pid: view.pid,
        restarts: view.restarts,
        default_policy: spec.default_policy,
        policy_version: spec.policy_version,
        max_concurrency: spec.max_concurrency,
        call_timeout_ms: spec.call_timeout_ms,
        tools: view
            .tools
            .iter()
            .map(|t| ToolWithPolicy {
                policy: spec.policy(&t.name),
                tool: t.clone(),
            })
            .collect(),
        created_at: spec.created_at,
        updated_at: spec.updated_at,
    }
}

fn catalog(state: &AppState) -> std::sync::Arc<McpCatalog> {
    state.mcp_catalog.borrow().clone()
}

fn spec_of(state: &AppState, body: RegisterBody) -> Result<McpServerSpec, ApiError> {
    let settings = &state.settings.mcp;
    check_server_name(&body.name)?;
    let (transport, secrets) = match (body.command, body.url) {
        (Some(command), None) => {
            if !body.headers.is_empty() {
                return Err(ApiError::invalid(
                    "headers",
                    "`headers` are for `url` servers",
                ));
            }
            (
                McpTransport::Stdio {
                    command,
                    args: body.args,
                },
                body.env,
            )
        }
        (None, Some(url)) => {
            if !body.env.is_empty() || !body.args.is_empty() {
                return Err(ApiError::invalid(
                    "env",
                    "`env` and `args` are for `command` servers",
                ));
            }
            state
                .upstream_hosts
                .check_url("url", &url)
                .map_err(|m| ApiError::invalid("url", m))?;
            (McpTransport::Http { url }, body.headers)
        }
        _ => {
            return Err(ApiError::invalid(
                "command",
                "give either `command` (a stdio server) or `url` (a streamable-HTTP server)",
            ));
        }
    };
    if !command_allowed(settings, &transport) {
        let (param, message) = match &transport {
            McpTransport::Stdio { command, .. } => (
                "command",
                format!("`{command}` is not one of [mcp].allowed_commands"),
            ),
            McpTransport::Http { .. } => (
                "url",
                "streamable-HTTP servers are off ([mcp].allow_http)".to_string(),
            ),
        };
        return Err(ApiError::invalid(param, message));
    }
    let now = now_ms();
    Ok(McpServerSpec {
        name: body.name,
        transport,
        secrets,
        policies: body.policies,
        default_policy: body.default_policy.unwrap_or(settings.default_policy),
        policy_version: 1,
        max_concurrency: body
            .max_concurrency
            .unwrap_or(settings.max_concurrency)
            .clamp(1, 256),
        call_timeout_ms: body
            .call_timeout_ms
            .unwrap_or(settings.call_timeout_ms)
            .clamp(1, 3_600_000),
        created_at: now,
        updated_at: now,
    })
}

#[utoipa::path(
    post,
    path = "/admin/mcp/register",
    tag = "Admin",
    description = "Registers an MCP server: started once (handshake, `tools/list`) before it is stored; then run by every instance. Role: admin.",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "The server, running, with its tools", body = ServerInfo),
        (status = 502, description = "The server could not be started (`mcp_server_failed`, with the reason)"),
        AdminAuth,
        JsonBody,
    )
)]
pub async fn register(
    state: web::Data<AppState>,
    caller: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: RegisterBody = read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    let spec = spec_of(&state, body)?;
    if catalog(&state).server(&spec.name).is_some() {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("MCP server `{}` already exists", spec.name),
        ));
    }
    state
        .mcp
        .send(ProbeServer(spec.clone()))
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(|why| {
            ApiError::new(
                ErrorKind::McpServerFailed,
                format!("MCP server `{}` could not be started: {why}", spec.name),
            )
        })?;
    let name = spec.name.clone();
    state
        .store
        .send(RegisterMcpServer {
            spec,
            actor: caller.actor(),
        })
        .timeout(ASK_TIMEOUT)
        .await??;
    // The supervisor started it on the change; answer once it is up (or not).
    let within = std::time::Duration::from_millis(state.settings.mcp.start_timeout_ms + 1_000);
    let mut watch = state.mcp_catalog.clone();
    let settled = tokio::time::timeout(
        within,
        watch.wait_for(|c| {
            c.server(&name)
                .is_some_and(|s| s.status != ServerStatus::Starting)
        }),
    )
    .await;
    drop(settled);
    let view = catalog(&state)
        .server(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("MCP server `{name}` was deleted meanwhile")))?;
    Ok(HttpResponse::Created().json(info(&view)))
}

#[utoipa::path(
    get,
    path = "/admin/mcp",
    tag = "Admin",
    description = "The MCP servers this instance runs: status, process, tools with their policies. Role: admin, operator or viewer.",
    responses(
        (status = 200, description = "`{data: [server]}`, by name"),
        AdminAuth,
    )
)]
pub async fn list(state: web::Data<AppState>, _: AdminReader) -> Result<HttpResponse, ApiError> {
    let catalog = catalog(&state);
    let data: Vec<ServerInfo> = catalog.servers.values().map(|v| info(v)).collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

#[utoipa::path(
    delete,
    path = "/admin/mcp/{name}",
    tag = "Admin",
    description = "Deletes an MCP server; its process group is killed on every instance. Role: admin.",
    params(("name" = String, Path, description = "The server's name")),
    responses(
        (status = 200, description = "`{name, deleted: true}`"),
        AdminAuth,
        (status = 404, response = NotFound),
    )
)]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let deleted = state
        .store
        .send(DeleteMcpServer {
            name: name.clone(),
            actor: caller.actor(),
        })
        .timeout(ASK_TIMEOUT * 2)
        .await??;
    if !deleted {
        return Err(ApiError::not_found(format!("no MCP server `{name}`")));
    }
    Ok(HttpResponse::Ok().json(json!({"name": name, "deleted": true})))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    pub policy: ToolPolicy,
}

#[utoipa::path(
    put,
    path = "/admin/mcp/{name}/tools/{tool}/policy",
    tag = "Admin",
    description = "Sets one tool's policy (`auto`, `confirm`, `block`); approvals given under the previous policy no longer hold. Role: admin or operator.",
    params(
        ("name" = String, Path, description = "The server's name"),
        ("tool" = String, Path, description = "The tool's own name (without the server prefix)"),
    ),
    request_body = PolicyBody,
    responses(
        (status = 200, description = "The server", body = ServerInfo),
        AdminAuth,
        JsonBody,
        (status = 404, response = NotFound),
    )
)]
pub async fn set_policy(
    state: web::Data<AppState>,
    caller: ModelAdmin,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (name, tool) = path.into_inner();
    let body: PolicyBody = read_json(&req, payload, state.settings.server.max_body_bytes).await?;
    let known = catalog(&state)
        .server(&name)
        .map(|s| s.tools.iter().any(|t| t.name == tool));
    match known {
        None => return Err(ApiError::not_found(format!("no MCP server `{name}`"))),
        Some(false) => {
            return Err(ApiError::not_found(format!(
                "MCP server `{name}` has no tool `{tool}`"
            )));
        }
        Some(true) => {}
    }
    state
        .store
        .send(SetToolPolicy {
            server: name.clone(),
            tool,
            policy: body.policy,
            actor: caller.actor(),
        })
        .timeout(ASK_TIMEOUT)
        .await??
        .ok_or_else(|| ApiError::not_found(format!("no MCP server `{name}`")))?;
    let view = catalog(&state)
        .server(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no MCP server `{name}`")))?;
    Ok(HttpResponse::Ok().json(info(&view)))
}
