//! MCP servers under supervision. `McpSupervisor` keeps one `McpServerActor` per
//! registered server (started from the store at boot, and on every `Change::McpServers`
//! from the change feed, so every instance runs every registered server), and publishes
//! an immutable `McpCatalog` (servers, status, tools, policies, a handle to call them)
//! over a watch channel: request tasks read it and call tools without a round trip.

mod connection;
mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock};
use rmcp::{Peer, RoleClient};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;
use utoipa::ToSchema;

use crate::actors::feed::{Changed, NotApplied};
use crate::actors::store::StoreActor;
use crate::actors::store::messages::{ListMcpServers, PurgeToolSessions};
use crate::config::McpSettings;
use crate::domain::mcp::{McpServerSpec, McpTransport, ToolInfo, ToolPolicy};
use crate::telemetry::metrics::Metrics;
pub use server::{McpServerActor, StopServer};

/// How a server is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerStatus {
    Starting,
    Running,
    /// It died or failed to start; the next start is due after a backoff.
    Restarting,
}

/// What can call a running server's tools.
#[derive(Clone)]
pub struct ToolHandle {
    peer: Peer<RoleClient>,
    limit: Arc<Semaphore>,
}

/// One server in the catalog.
#[derive(Clone)]
pub struct ServerView {
    pub spec: McpServerSpec,
    pub status: ServerStatus,
    /// Why it is not running, when it is not.
    pub error: Option<String>,
    /// From its last successful `tools/list`, sorted by name.
    pub tools: Vec<ToolInfo>,
    /// The stdio server's process (its process group's id).
    pub pid: Option<u32>,
    pub restarts: u32,
    pub handle: Option<ToolHandle>,
}

/// The MCP servers as the supervisor last published them, by name.
#[derive(Clone, Default)]
pub struct McpCatalog {
    pub servers: BTreeMap<String, Arc<ServerView>>,
}

/// A tool call that did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolCallError {
    /// No such server, or not running.
    Unavailable(String),
    /// It took longer than the server's `call_timeout_ms`.
    Timeout(u64),
    /// The server's connection failed during the call.
    Failed(String),
}

impl ToolCallError {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Failed(_) => "failed",
        }
    }
}

impl std::fmt::Display for ToolCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "the tool is unavailable: {why}"),
            Self::Timeout(ms) => write!(f, "the tool did not answer within {ms} ms"),
            Self::Failed(why) => write!(f, "the tool call failed: {why}"),
        }
    }
}

impl McpCatalog {
    pub fn server(&self, name: &str) -> Option<&Arc<ServerView>> {
        self.servers.get(name)
    }

    /// The current policy and policy version of `server`'s `tool`.
    pub fn policy(&self, server: &str, tool: &str) -> Option<(ToolPolicy, i64)> {
        self.server(server)
            .map(|s| (s.spec.policy(tool), s.spec.policy_version))
    }

    /// Calls `tool` of `server`: waits for a slot under the server's concurrency limit and
    /// for the answer, both within the server's call timeout; records the outcome in the
    /// metrics and a span.
    pub async fn call(
        &self,
        server: &str,
        tool: &str,
        arguments: Map<String, Value>,
        call_id: &str,
        metrics: &Metrics,
    ) -> Result<CallToolResult, ToolCallError> {
        let started = Instant::now();
        let span = crate::telemetry::otel::tool_span(server, tool, call_id);
        let result = self
            .call_inner(server, tool, arguments)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(r) if r.is_error == Some(true) => "tool_error",
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        if outcome != "ok" {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", outcome);
        }
        metrics.record_tool_call(server, tool, outcome, started.elapsed());
        result
    }

    async fn call_inner(
        &self,
        server: &str,
        tool: &str,
        arguments: Map<String, Value>,
    ) -> Result<CallToolResult, ToolCallError> {
        let view = self
            .server(server)
            .ok_or_else(|| ToolCallError::Unavailable(format!("no MCP server `{server}`")))?;
        let handle = view.handle.as_ref().ok_or_else(|| {
            ToolCallError::Unavailable(format!(
                "MCP server `{server}` is not running{}",
                view.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ))
        })?;
        let ms = view.spec.call_timeout_ms;
        let call = async {
            let _slot = handle
                .limit
                .acquire()
                .await
                .map_err(|_| ToolCallError::Unavailable("the server stopped".into()))?;
            let mut params = CallToolRequestParams::new(tool.to_string());
            params.arguments = Some(arguments);
            handle
                .peer
                .call_tool(params)
                .await
                .map_err(|e| ToolCallError::Failed(e.to_string()))
        };
        tokio::time::timeout(Duration::from_millis(ms), call)
            .await
            .map_err(|_| ToolCallError::Timeout(ms))?
    }
}

/// A tool result as the text a model is given: text parts joined, other parts as JSON,
/// the structured result when there is nothing else; cut at `max_bytes`.
pub fn result_text(result: &CallToolResult, max_bytes: usize) -> String {
    let mut parts: Vec<String> = result
        .content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(t) => t.text.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        })
        .collect();
    if parts.is_empty()
        && let Some(structured) = &result.structured_content
    {
        parts.push(structured.to_string());
    }
    let mut text = parts.join("\n");
    if text.len() > max_bytes {
        let mut cut = max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" …[truncated]");
    }
    text
}

struct Entry {
    spec: McpServerSpec,
    addr: Addr<McpServerActor>,
}

pub struct McpSupervisor {
    store: Addr<StoreActor>,
    settings: Arc<McpSettings>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    servers: BTreeMap<String, Entry>,
    catalog: McpCatalog,
    publish: watch::Sender<Arc<McpCatalog>>,
    stopping: bool,
}

impl McpSupervisor {
    /// A supervisor and the receiving end of its catalog.
    pub fn new(
        store: Addr<StoreActor>,
        settings: Arc<McpSettings>,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> (Self, watch::Receiver<Arc<McpCatalog>>) {
        let (publish, catalog) = watch::channel(Arc::new(McpCatalog::default()));
        (
            Self {
                store,
                settings,
                http,
                metrics,
                servers: BTreeMap::new(),
                catalog: McpCatalog::default(),
                publish,
                stopping: false,
            },
            catalog,
        )
    }

    fn publish(&self) {
        self.publish.send_replace(Arc::new(self.catalog.clone()));
    }

    fn start_server(&mut self, spec: McpServerSpec, ctx: &mut Context<Self>) {
        let actor = McpServerActor::new(
            spec.clone(),
            self.settings.clone(),
            self.http.clone(),
            ctx.address(),
        );
        self.catalog.servers.insert(
            spec.name.clone(),
            Arc::new(ServerView {
                spec: spec.clone(),
                status: ServerStatus::Starting,
                error: None,
                tools: Vec::new(),
                pid: None,
                restarts: 0,
                handle: None,
            }),
        );
        let addr = actor.start();
        self.servers.insert(spec.name.clone(), Entry { spec, addr });
    }

    /// Applies the stored registrations: starts new servers, stops deleted ones, restarts
    /// those whose command, URL, environment or limits changed, and takes new policies as
    /// they are. Answers once stopped servers are gone.
    fn apply(
        &mut self,
        specs: Vec<McpServerSpec>,
        ctx: &mut Context<Self>,
    ) -> Vec<Addr<McpServerActor>> {
        let mut stopped = Vec::new();
        let wanted: BTreeMap<String, McpServerSpec> =
            specs.into_iter().map(|s| (s.name.clone(), s)).collect();
        let gone: Vec<String> = self
            .servers
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(entry) = self.servers.remove(&name) {
                stopped.push(entry.addr);
            }
            self.catalog.servers.remove(&name);
        }
        for (name, spec) in wanted {
            match self.servers.get_mut(&name) {
                None => self.start_server(spec, ctx),
                Some(entry) if same_process(&entry.spec, &spec) => {
                    entry.spec = spec.clone();
                    if let Some(view) = self.catalog.servers.get_mut(&name) {
                        Arc::make_mut(view).spec = spec;
                    }
                }
                Some(_) => {
                    if let Some(entry) = self.servers.remove(&name) {
                        stopped.push(entry.addr);
                    }
                    self.start_server(spec, ctx);
                }
            }
        }
        self.publish();
        stopped
    }

    fn reload(&mut self) -> ResponseActFuture<Self, Result<(), NotApplied>> {
        let store = self.store.clone();
        Box::pin(
            async move { store.send(ListMcpServers).await }
                .into_actor(self)
                .then(|listed, act, ctx| {
                    let stopped = match listed {
                        Ok(Ok(specs)) if !act.stopping => Ok(act.apply(specs, ctx)),
                        Ok(Ok(_)) => Ok(Vec::new()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    async move {
                        let stopped = stopped.map_err(|cause| NotApplied {
                            subscriber: "mcp supervisor",
                            cause,
                        })?;
                        join_all(stopped.iter().map(|a| a.send(StopServer))).await;
                        Ok(())
                    }
                    .into_actor(act)
                }),
        )
    }
}

/// Whether two registrations run the same process (only policies differ).
fn same_process(a: &McpServerSpec, b: &McpServerSpec) -> bool {
    a.transport == b.transport
        && a.secrets == b.secrets
        && a.max_concurrency == b.max_concurrency
        && a.call_timeout_ms == b.call_timeout_ms
}

/// Expired tool sessions are kept this long (a late confirmation is told it expired),
/// then deleted.
const EXPIRED_SESSIONS_KEPT_MS: i64 = 24 * 3600 * 1000;

impl Actor for McpSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(60), |act, _| {
            act.store.do_send(PurgeToolSessions {
                before: crate::domain::now_ms() - EXPIRED_SESSIONS_KEPT_MS,
            });
        });
    }
}

impl Supervised for McpSupervisor {}

/// At startup (after subscribing to the feed): start every registered server.
#[derive(Message)]
#[rtype(result = "Result<(), NotApplied>")]
pub struct LoadServers;

impl Handler<LoadServers> for McpSupervisor {
    type Result = ResponseActFuture<Self, Result<(), NotApplied>>;

    fn handle(&mut self, _: LoadServers, _: &mut Self::Context) -> Self::Result {
        self.reload()
    }
}

impl Handler<Changed> for McpSupervisor {
    type Result = ResponseActFuture<Self, Result<(), NotApplied>>;

    fn handle(&mut self, msg: Changed, _: &mut Self::Context) -> Self::Result {
        if !msg.0.touches_mcp() {
            return Box::pin(fut::ready(Ok(())));
        }
        self.reload()
    }
}

/// What a server actor has to say.
pub enum ServerState {
    Running {
        peer: Peer<RoleClient>,
        tools: Vec<ToolInfo>,
        pid: Option<u32>,
    },
    Down {
        error: String,
    },
    Restarting,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ServerUpdate {
    pub name: String,
    pub state: ServerState,
}

impl Handler<ServerUpdate> for McpSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ServerUpdate, _: &mut Self::Context) {
        let Some(view) = self.catalog.servers.get_mut(&msg.name) else {
            return;
        };
        let view = Arc::make_mut(view);
        match msg.state {
            ServerState::Running { peer, tools, pid } => {
                let limit = Arc::new(Semaphore::new(view.spec.max_concurrency.max(1) as usize));
                view.status = ServerStatus::Running;
                view.error = None;
                view.tools = tools;
                view.pid = pid;
                view.handle = Some(ToolHandle { peer, limit });
            }
            ServerState::Down { error } => {
                view.status = ServerStatus::Restarting;
                view.error = Some(error);
                view.pid = None;
                view.handle = None;
            }
            ServerState::Restarting => {
                view.restarts += 1;
                self.metrics.mcp_server_restarted(&msg.name);
            }
        }
        self.publish();
    }
}

/// A server said its tool list changed: list it again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RelistTools {
    pub name: String,
}

impl Handler<RelistTools> for McpSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: RelistTools, _: &mut Self::Context) -> Self::Result {
        let peer = self
            .catalog
            .server(&msg.name)
            .and_then(|v| v.handle.as_ref().map(|h| h.peer.clone()));
        let name = msg.name;
        Box::pin(
            async move {
                match peer {
                    Some(peer) => Some(connection::list_tools(&name, &peer).await),
                    None => None,
                }
                .map(|tools| (name, tools))
            }
            .into_actor(self)
            .map(|listed, act, _| {
                if let Some((name, Ok(tools))) = listed
                    && let Some(view) = act.catalog.servers.get_mut(&name)
                {
                    Arc::make_mut(view).tools = tools;
                    act.publish();
                }
            }),
        )
    }
}

/// From `POST /admin/mcp/register`, before anything is stored: starts the server once,
/// completes the handshake and lists its tools, then stops it. Answers the tools, or why
/// it could not start (the registration is then refused).
#[derive(Message)]
#[rtype(result = "Result<Vec<ToolInfo>, String>")]
pub struct ProbeServer(pub McpServerSpec);

impl Handler<ProbeServer> for McpSupervisor {
    type Result = ResponseFuture<Result<Vec<ToolInfo>, String>>;

    fn handle(&mut self, msg: ProbeServer, _: &mut Self::Context) -> Self::Result {
        let settings = self.settings.clone();
        let http = self.http.clone();
        Box::pin(async move {
            let within = Duration::from_millis(settings.start_timeout_ms);
            let connected =
                connection::connect(&msg.0, &settings.child_path, within, &http, Box::new(|| {}))
                    .await?;
            let tools = connected.tools.clone();
            let _ = connected.service.cancel().await;
            // The probe's process group is killed as `child` drops.
            drop(connected.child);
            Ok(tools)
        })
    }
}

/// At shutdown: stop every server (process groups killed); answers once all are gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopServers;

impl Handler<StopServers> for McpSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopServers, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let addrs: Vec<Addr<McpServerActor>> = std::mem::take(&mut self.servers)
            .into_values()
            .map(|e| e.addr)
            .collect();
        self.catalog.servers.clear();
        self.publish();
        Box::pin(async move {
            join_all(addrs.iter().map(|a| a.send(StopServer))).await;
        })
    }
}

/// Whether `command` may be registered: exactly one of `[mcp].allowed_commands`.
pub fn command_allowed(settings: &McpSettings, transport: &McpTransport) -> bool {
    match transport {
        McpTransport::Stdio { command, .. } => {
            settings.allowed_commands.iter().any(|c| c == command)
        }
        McpTransport::Http { .. } => settings.allow_http,
    }
}
