//! One connection to one MCP server: start it (a child process in its own process group,
//! or a streamable-HTTP session), `initialize`, list its tools; then hold it until it ends.
//! Nothing here is an actor: `McpServerActor` runs a connection as a future of its own.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use process_wrap::tokio::{ChildWrapper, CommandWrap, ProcessGroup};
use rmcp::model::{ClientConfig, Implementation};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, Peer, RoleClient, ServiceExt};
use tokio::io::AsyncReadExt;

use crate::domain::mcp::{McpServerSpec, McpTransport, ToolInfo, prefixed_name};

/// Told when the server says its tool list changed.
pub type OnToolsChanged = Box<dyn Fn() + Send + Sync>;

/// The gateway's side of an MCP session.
pub struct GatewayClient {
    on_tools_changed: OnToolsChanged,
}

impl ClientHandler for GatewayClient {
    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        (self.on_tools_changed)();
    }

    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info = Implementation::new("lowart", env!("CARGO_PKG_VERSION"));
        info
    }
}

/// A stdio server's process group: killed as a group when dropped.
pub struct ChildGroup {
    child: Box<dyn ChildWrapper>,
    pub pid: Option<u32>,
}

impl ChildGroup {
    /// Kills every process of the group (the server and whatever it started).
    pub fn kill(&mut self) {
        if let Err(e) = self.child.start_kill()
            && e.kind() != std::io::ErrorKind::NotFound
            && e.raw_os_error() != Some(3)
        {
            tracing::debug!(error = %e, "killing an MCP server's process group");
        }
    }

    /// Waits for the server process to end.
    pub async fn wait(&mut self) -> String {
        match self.child.wait().await {
            Ok(status) => format!("the server process exited ({status})"),
            Err(e) => format!("waiting for the server process failed: {e}"),
        }
    }
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A live connection.
pub struct Connected {
    pub service: RunningService<RoleClient, GatewayClient>,
    pub child: Option<ChildGroup>,
    pub tools: Vec<ToolInfo>,
}

impl Connected {
    pub fn peer(&self) -> Peer<RoleClient> {
        self.service.peer().clone()
    }
}

/// Starts `spec`'s server and completes the handshake and the first `tools/list`, all
/// within `within`; an error says what went wrong in words for the admin.
pub async fn connect(
    spec: &McpServerSpec,
    child_path: &str,
    within: Duration,
    http: &reqwest::Client,
    on_tools_changed: OnToolsChanged,
) -> Result<Connected, String> {
    let client = GatewayClient { on_tools_changed };
    match &spec.transport {
        McpTransport::Stdio { command, args } => {
            let mut group = spawn(spec, command, args, child_path)?;
            let stdout = group.child.stdout().take();
            let stdin = group.child.stdin().take();
            let (Some(stdout), Some(stdin)) = (stdout, stdin) else {
                return Err("the server's stdin/stdout could not be opened".into());
            };
            if let Some(stderr) = group.child.stderr().take() {
                tokio::spawn(log_stderr(spec.name.clone(), stderr));
            }
            let started = tokio::time::timeout(within, async {
                let service = client
                    .serve((stdout, stdin))
                    .await
                    .map_err(|e| format!("the MCP handshake failed: {e}"))?;
                let tools = list_tools(&spec.name, service.peer()).await?;
                Ok::<_, String>((service, tools))
            });
            // A server that exits at start is told apart from one that never answers.
            tokio::select! {
                started = started => match started {
                    Ok(Ok((service, tools))) => Ok(Connected { service, child: Some(group), tools }),
                    Ok(Err(e)) => Err(with_exit(e, &mut group).await),
                    Err(_) => Err(format!(
                        "no MCP handshake within {} ms (is it an MCP server on stdio?)",
                        within.as_millis()
                    )),
                },
                exit = group.wait() => Err(format!("{exit} before the MCP handshake")),
            }
        }
        McpTransport::Http { url } => {
            use rmcp::transport::StreamableHttpClientTransport;
            use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
            let mut headers = HashMap::new();
            for (name, value) in &spec.secrets {
                let name = reqwest::header::HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("`{name}` is not a header name"))?;
                let value = reqwest::header::HeaderValue::try_from(value.as_str())
                    .map_err(|_| format!("the value of `{name}` is not a header value"))?;
                headers.insert(name, value);
            }
            let config =
                StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(headers);
            let transport = StreamableHttpClientTransport::with_client(http.clone(), config);
            let started = tokio::time::timeout(within, async {
                let service = client
                    .serve(transport)
                    .await
                    .map_err(|e| format!("the MCP handshake failed: {e}"))?;
                let tools = list_tools(&spec.name, service.peer()).await?;
                Ok::<_, String>((service, tools))
            })
            .await
            .map_err(|_| format!("no MCP handshake within {} ms", within.as_millis()))??;
            Ok(Connected {
                service: started.0,
                child: None,
                tools: started.1,
            })
        }
    }
}

/// Adds how the process ended, when it did, to a handshake error.
async fn with_exit(error: String, group: &mut ChildGroup) -> String {
    match tokio::time::timeout(Duration::from_millis(200), group.wait()).await {
        Ok(exit) => format!("{error}; {exit}"),
        Err(_) => error,
    }
}

/// The child: argv as given (no shell), only the registration's environment (and a
/// `PATH`), its own process group, stdio piped.
fn spawn(
    spec: &McpServerSpec,
    command: &str,
    args: &[String],
    child_path: &str,
) -> Result<ChildGroup, String> {
    let mut cmd = CommandWrap::with_new(command, |c| {
        c.args(args)
            .env_clear()
            .env("PATH", child_path)
            .envs(&spec.secrets)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
    });
    cmd.wrap(ProcessGroup::leader());
    let child = cmd
        .spawn()
        .map_err(|e| format!("could not start `{command}`: {e}"))?;
    let pid = child.id();
    Ok(ChildGroup { child, pid })
}

/// What a server writes on stderr goes to the log, 4 KiB at a time at most per line.
async fn log_stderr(server: String, mut stderr: tokio::process::ChildStderr) {
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&buf[..n]);
        tracing::info!(mcp_server = %server, stderr = %text.trim_end(), "MCP server stderr");
    }
}

/// The server's tools, sorted by name, with the names models see; tools whose prefixed
/// name no vendor would accept are left out (logged).
pub async fn list_tools(server: &str, peer: &Peer<RoleClient>) -> Result<Vec<ToolInfo>, String> {
    let listed = peer
        .list_all_tools()
        .await
        .map_err(|e| format!("tools/list failed: {e}"))?;
    let mut tools: Vec<ToolInfo> = listed
        .into_iter()
        .filter_map(|t| {
            let Some(prefixed) = prefixed_name(server, &t.name) else {
                tracing::warn!(mcp_server = %server, tool = %t.name,
                    "MCP tool left out: its prefixed name is not a valid vendor tool name");
                return None;
            };
            Some(ToolInfo {
                name: t.name.to_string(),
                prefixed,
                description: t.description.map(|d| d.to_string()),
                input_schema: serde_json::Value::Object((*t.input_schema).clone()),
            })
        })
        .collect();
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    tools.dedup_by(|a, b| a.name == b.name);
    Ok(tools)
}
