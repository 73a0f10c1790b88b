//! A small MCP server over stdio for the gateway's integration tests (`tests/api/mcp*.rs`).
//! Tools: `echo {text}`, `add {a, b}`, `delete_record {id}`, `hang {}` (never answers),
//! `pid {}` (this process's pid), `spawn_sleeper {}` (starts `sleep 600`, answers its pid),
//! `fail {}` (a tool result with `isError: true`); with `--env-check`, also `env {}` (this
//! process's environment as sorted `KEY=VALUE` lines).
//!
//! Other modes: `--garbage` answers every line on stdin (and starts) with non-JSON garbage
//! on stdout, never speaking MCP; `--exit-at-start` exits with status 3 at once.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

struct TestServer {
    env_check: bool,
}

/// A tool whose input schema is an object with these `(name, JSON type)` properties, all
/// required.
fn tool(name: &'static str, description: &'static str, props: &[(&str, &str)]) -> Tool {
    let properties: JsonObject = props
        .iter()
        .map(|(p, ty)| (p.to_string(), json!({"type": ty})))
        .collect();
    let required: Vec<&str> = props.iter().map(|(p, _)| *p).collect();
    let schema = json!({"type": "object", "properties": properties, "required": required});
    let schema = match schema {
        Value::Object(o) => o,
        _ => JsonObject::new(),
    };
    Tool::new(name, description, Arc::new(schema))
}

fn text(s: impl Into<String>) -> Result<CallToolResponse, McpError> {
    Ok(CallToolResult::success(vec![ContentBlock::text(s)]).into())
}

fn string_arg<'a>(args: &'a JsonObject, name: &str) -> Result<&'a str, McpError> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| McpError::invalid_params(format!("`{name}` must be a string"), None))
}

fn number_arg(args: &JsonObject, name: &str) -> Result<f64, McpError> {
    args.get(name)
        .and_then(Value::as_f64)
        .ok_or_else(|| McpError::invalid_params(format!("`{name}` must be a number"), None))
}

impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mcp-test-server", "0.1.0"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let mut tools = vec![
            tool("echo", "Echoes the text back", &[("text", "string")]),
            tool(
                "add",
                "Adds two numbers",
                &[("a", "number"), ("b", "number")],
            ),
            tool("delete_record", "Deletes a record", &[("id", "string")]),
            tool("hang", "Never answers", &[]),
            tool("pid", "This server's process id", &[]),
            tool("spawn_sleeper", "Starts `sleep 600`, answers its pid", &[]),
            tool("fail", "Always fails", &[]),
        ];
        if self.env_check {
            tools.push(tool("env", "This server's environment", &[]));
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        match request.name.as_ref() {
            "echo" => text(string_arg(&args, "text")?),
            "add" => text((number_arg(&args, "a")? + number_arg(&args, "b")?).to_string()),
            "delete_record" => text(format!("deleted {}", string_arg(&args, "id")?)),
            "hang" => std::future::pending().await,
            "pid" => text(std::process::id().to_string()),
            "spawn_sleeper" => {
                let mut child = std::process::Command::new("sleep")
                    .arg("600")
                    .spawn()
                    .map_err(|e| McpError::internal_error(e.to_string(), None))?;
                let pid = child.id();
                // Reaped when it dies (with this server's process group, in the tests).
                std::thread::spawn(move || child.wait());
                text(pid.to_string())
            }
            "fail" => Ok(CallToolResult::error(vec![ContentBlock::text("it failed")]).into()),
            "env" if self.env_check => {
                let mut vars: Vec<String> =
                    std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                vars.sort();
                text(vars.join("\n"))
            }
            other => Err(McpError::invalid_params(
                format!("unknown tool `{other}`"),
                None,
            )),
        }
    }
}

/// Garbage on stdout at start and for every line read, until stdin closes.
fn garbage() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "this is not JSON-RPC")?;
    writeln!(out, "<html><body>nor this</body></html>")?;
    writeln!(out, "{{\"half\": ")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        writeln!(out, "garbage in reply to {} bytes", line.len())?;
        out.flush()?;
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--exit-at-start") {
        return Ok(ExitCode::from(3));
    }
    if has("--garbage") {
        garbage()?;
        return Ok(ExitCode::SUCCESS);
    }
    let server = TestServer {
        env_check: has("--env-check"),
    };
    server
        .serve(rmcp::transport::stdio())
        .await?
        .waiting()
        .await?;
    Ok(ExitCode::SUCCESS)
}
