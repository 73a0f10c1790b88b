//! `POST /mcp`: Lowart as an MCP server (streamable HTTP, rmcp's server), offering every
//! registered server's tools, server-prefixed, to MCP clients that present a Lowart key.
//! Policies hold here too: `block` is a tool error; `confirm` stores a tool session
//! (announced on `approvals.<user>`) and answers a tool error naming it, until a person
//! approves it with `POST /v1/tools/confirm`; the same call (same tool, same arguments,
//! same policy version) then runs once.
//!
//! actix-web speaks `http` 0.2 and rmcp's tower service `http` 1: the handler carries the
//! request over (method, URI, headers, body, and the caller in the extensions) and the
//! answer back, streamed.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, ListToolsResult, PaginatedRequestParams, ServerCapabilities, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer};
use serde_json::Value;
use tokio::sync::watch;
use tower_service::Service;

use crate::actors::bus::BusActor;
use crate::actors::mcp::{McpCatalog, result_text};
use crate::actors::store::StoreActor;
use crate::actors::store::messages::UseApproval;
use crate::config::McpSettings;
use crate::domain::mcp::{
    PendingCall, SessionKind, ToolPolicy, ToolSession, call_digest, split_prefixed,
};
use crate::domain::now_ms;
use crate::domain::records::KeyGrant;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::extract::Caller;
use crate::relay::tools::hold_session;
use crate::telemetry::metrics::Metrics;

/// The MCP server behind `/mcp`, one per HTTP worker.
pub type McpEndpoint = StreamableHttpService<GatewayTools, NeverSessionManager>;

/// What an MCP client at `/mcp` talks to.
#[derive(Clone)]
pub struct GatewayTools {
    catalog: watch::Receiver<Arc<McpCatalog>>,
    store: actix::Addr<StoreActor>,
    bus: actix::Addr<BusActor>,
    metrics: Arc<Metrics>,
    settings: Arc<McpSettings>,
}

/// The `/mcp` service: stateless, JSON answers where it can; hosts are checked by the
/// gateway's own auth, not by rmcp's loopback-only default.
pub fn endpoint(state: &AppState) -> McpEndpoint {
    let tools = GatewayTools {
        catalog: state.mcp_catalog.clone(),
        store: state.store.clone(),
        bus: state.bus.clone(),
        metrics: state.metrics.clone(),
        settings: Arc::new(state.settings.mcp.clone()),
    };
    let mut config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    config.legacy_session_mode = false;
    config.json_response = true;
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

fn caller_of(context: &RequestContext<RoleServer>) -> Result<Arc<KeyGrant>, McpError> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Arc<KeyGrant>>())
        .cloned()
        .ok_or_else(|| McpError::internal_error("no caller", None))
}

fn tool_error(text: String) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

impl ServerHandler for GatewayTools {
    fn get_info(&self) -> InitializeResult {
        let mut info = InitializeResult::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("lowart", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "Tools of the MCP servers registered with this Lowart gateway, named <server>__<tool>. \
             Tools that need a person's approval answer with an error naming a session; call again \
             with the same arguments once it is approved."
                .into(),
        );
        info
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let catalog = self.catalog.borrow().clone();
        let tools = catalog
            .servers
            .values()
            .flat_map(|s| s.tools.iter())
            .map(|t| {
                let schema = match &t.input_schema {
                    Value::Object(o) => o.clone(),
                    _ => serde_json::Map::new(),
                };
                Tool::new(
                    t.prefixed.clone(),
                    t.description.clone().unwrap_or_default(),
                    schema,
                )
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = caller_of(&context)?;
        let name = request.name.to_string();
        let catalog = self.catalog.borrow().clone();
        let Some((server, tool)) = split_prefixed(&name).filter(|(s, t)| {
            catalog
                .server(s)
                .is_some_and(|v| v.tools.iter().any(|x| x.name == *t))
        }) else {
            return Err(McpError::invalid_params(format!("no tool `{name}`"), None));
        };
        let arguments = request.arguments.unwrap_or_default();
        let (policy, version) = catalog
            .policy(server, tool)
            .unwrap_or((ToolPolicy::Block, 0));
        match policy {
            ToolPolicy::Block => {
                return Ok(tool_error(format!(
                    "`{name}` is blocked by the gateway's policy; the call was refused"
                )));
            }
            ToolPolicy::Confirm => {
                let args = Value::Object(arguments.clone());
                let digest = call_digest(&name, &args);
                let used = self
                    .store
                    .send(UseApproval {
                        user_id: caller.user_id.clone(),
                        digest: digest.clone(),
                        policy_version: version,
                        now: now_ms(),
                    })
                    .await
                    .map_err(|e| McpError::internal_error(e.to_string(), None))?
                    .map_err(|e| McpError::internal_error(e.to_string(), None))?;
                if !used {
                    let session = self
                        .hold(
                            &caller,
                            PendingCall {
                                id: format!("call_{}", uuid::Uuid::now_v7().simple()),
                                server: server.to_string(),
                                tool: tool.to_string(),
                                name: name.clone(),
                                arguments: args,
                                digest,
                                policy_version: version,
                            },
                        )
                        .await?;
                    return Ok(tool_error(format!(
                        "`{name}` needs a person's approval: tool session `{}` (call `{}`) is pending. \
                         Once it is approved (POST /v1/tools/confirm), call `{name}` again with the same arguments.",
                        session.id, session.pending[0].id
                    )));
                }
            }
            ToolPolicy::Auto => {}
        }
        let call_id = format!("mcp_{}", uuid::Uuid::now_v7().simple());
        match catalog
            .call(server, tool, arguments, &call_id, &self.metrics)
            .await
        {
            Ok(mut result) => {
                let text = result_text(&result, self.settings.max_result_bytes);
                result.content = vec![ContentBlock::text(text)];
                Ok(result.into())
            }
            Err(e) => Ok(tool_error(e.to_string())),
        }
    }
}

impl GatewayTools {
    async fn hold(&self, caller: &KeyGrant, call: PendingCall) -> Result<ToolSession, McpError> {
        let session = ToolSession::waiting(
            caller,
            SessionKind::Mcp,
            vec![call],
            self.settings.session_ttl_secs,
        );
        hold_session(&self.store, &self.bus, &session)
            .await
            .map_err(|e| McpError::internal_error(e.message, None))?;
        Ok(session)
    }
}

/// `POST /mcp`: one JSON-RPC message of MCP's streamable HTTP transport. The server is
/// stateless (no `Mcp-Session-Id`; no `GET` event stream, so `GET` is a 405 as MCP allows).
#[utoipa::path(
    post,
    path = "/mcp",
    tag = "MCP",
    description = "Lowart as an MCP server (streamable HTTP, stateless): `initialize`, `tools/list` (every registered server's tools, named `<server>__<tool>`), `tools/call` under the tools' policies. Send `Accept: application/json, text/event-stream`.",
    request_body(content = Object, description = "A JSON-RPC request or notification", content_type = "application/json"),
    responses(
        (status = 200, description = "The JSON-RPC answer (JSON, or an event stream when the call sends notifications first)"),
        (status = 202, description = "A notification was accepted"),
        crate::http::openapi::responses::ClientAuth,
    )
)]
pub async fn mcp(
    endpoint: web::Data<McpEndpoint>,
    caller: Caller,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let mut builder = http::Request::builder()
        .method(req.method().as_str())
        .uri(req.uri().to_string());
    for (name, value) in req.headers() {
        builder = builder.header(name.as_str(), value.as_bytes());
    }
    let mut request = builder
        .body(http_body_util::Full::new(body))
        .map_err(|e| ApiError::invalid("body", e.to_string()))?;
    request.extensions_mut().insert(caller.0.clone());
    let mut service = endpoint.get_ref().clone();
    let response = match service.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let status = actix_web::http::StatusCode::from_u16(parts.status.as_u16())
        .map_err(|_| ApiError::internal())?;
    let mut res = HttpResponse::build(status);
    for (name, value) in &parts.headers {
        res.append_header((name.as_str(), value.as_bytes()));
    }
    let frames = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(|never| match never {}));
    Ok(res.streaming::<_, std::convert::Infallible>(
        frames.map(|r: Result<web::Bytes, std::convert::Infallible>| r),
    ))
}
