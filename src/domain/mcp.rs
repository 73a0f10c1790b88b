//! MCP servers and the tools they offer, as the gateway sees them: registrations, tool
//! policies, the server-prefixed names models see, and the tool sessions that wait for a
//! person's approval. Plain data and rules, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;

/// Between a server's name and its tool's in the names models see (`time__now`).
pub const PREFIX_SEPARATOR: &str = "__";

/// The longest tool name vendors accept (OpenAI: `^[a-zA-Z0-9_-]{1,64}$`).
pub const MAX_TOOL_NAME: usize = 64;

/// The longest server name: short, so that prefixed tool names stay under 64.
pub const MAX_SERVER_NAME: usize = 24;

/// What the gateway does when a model calls a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolPolicy {
    /// Run it and feed the result back.
    Auto,
    /// Stop and ask a person.
    Confirm,
    /// Never run it; the model is told it was refused.
    Block,
}

impl ToolPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "confirm" => Some(Self::Confirm),
            "block" => Some(Self::Block),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Confirm => "confirm",
            Self::Block => "block",
        }
    }
}

/// How the gateway reaches a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "transport", rename_all = "snake_case")]
pub enum McpTransport {
    /// A child process speaking MCP on stdin/stdout, started with this argv (no shell) and
    /// only this environment.
    Stdio {
        command: String,
        #[serde(default)]
        args: Vec<String>,
    },
    /// A streamable-HTTP server.
    Http { url: String },
}

/// A registered server, as stored. `secrets` (the child's environment, or the HTTP
/// server's headers) are sealed at rest and never returned.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServerSpec {
    pub name: String,
    pub transport: McpTransport,
    /// Environment variables (stdio) or request headers (HTTP).
    pub secrets: BTreeMap<String, String>,
    /// Per-tool policies; tools not named here get `default_policy`.
    pub policies: BTreeMap<String, ToolPolicy>,
    pub default_policy: ToolPolicy,
    /// Bumped on every policy change: an approval binds to the version it was given under.
    pub policy_version: i64,
    /// Calls in flight at once; more wait.
    pub max_concurrency: u32,
    /// A `tools/call` that takes longer fails with `tool_timeout`.
    pub call_timeout_ms: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl McpServerSpec {
    pub fn policy(&self, tool: &str) -> ToolPolicy {
        self.policies
            .get(tool)
            .copied()
            .unwrap_or(self.default_policy)
    }
}

/// A tool one server offers (from its `tools/list`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ToolInfo {
    /// The server's own name for it.
    pub name: String,
    /// What models see: `<server>__<name>`.
    pub prefixed: String,
    pub description: Option<String>,
    /// Its JSON Schema for arguments.
    #[schema(value_type = Object)]
    pub input_schema: Value,
}

/// Checks a server name: letters, digits, `-` and single `_`, at most
/// `MAX_SERVER_NAME` bytes, so that `<server>__<tool>` parses back unambiguously.
pub fn check_server_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SERVER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.contains(PREFIX_SEPARATOR)
        && !name.ends_with('_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            format!(
                "`name` must be 1 to {MAX_SERVER_NAME} letters, digits, `-` or `_` (not `__`, not ending in `_`)"
            ),
        ))
    }
}

/// The name models see for `tool` of `server`, or `None` when it would not be a valid
/// vendor tool name (too long, or characters vendors refuse).
pub fn prefixed_name(server: &str, tool: &str) -> Option<String> {
    let name = format!("{server}{PREFIX_SEPARATOR}{tool}");
    let valid = name.len() <= MAX_TOOL_NAME
        && !tool.is_empty()
        && tool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some(name)
}

/// `(server, tool)` of a prefixed name.
pub fn split_prefixed(name: &str) -> Option<(&str, &str)> {
    name.split_once(PREFIX_SEPARATOR)
}

/// The digest an approval binds to: SHA-256 (hex) of the tool's prefixed name and its
/// arguments in canonical JSON (keys sorted), so the same call always has the same digest
/// and any change to tool or arguments changes it.
pub fn call_digest(prefixed: &str, arguments: &Value) -> String {
    let mut text = String::with_capacity(prefixed.len() + 64);
    text.push_str(prefixed);
    text.push('\n');
    text.push_str(&canonical_json(arguments));
    crate::crypto::sha256_hex(text.as_bytes())
}

/// JSON with object keys sorted, at every depth (serde_json's `Map` keeps them sorted
/// unless `preserve_order` is on; sorting here does not depend on that).
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, String> =
                map.iter().map(|(k, v)| (k, canonical_json(v))).collect();
            let fields: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// A tool call's arguments (JSON text from the model) as an object: `{}` when empty; an
/// error message when they are not a JSON object.
pub fn parse_arguments(arguments: &str) -> Result<serde_json::Map<String, Value>, String> {
    if arguments.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the arguments are not a JSON object".into()),
        Err(e) => Err(format!("the arguments are not valid JSON: {e}")),
    }
}

/// Where a tool session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Waiting for a person.
    Pending,
    /// Confirmed: the chat loop is running on (a chat session), or approved calls wait for
    /// the MCP client to call again (an `/mcp` session).
    Approved,
    /// Over: the loop ran on, or every approved call was used.
    Done,
}

impl SessionStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "done" => Some(Self::Done),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Done => "done",
        }
    }
}

/// Who started a session: a chat request's tool loop, or an MCP client at `/mcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// `/v1/chat/completions` (`openai`) or `/v1/messages` (`anthropic`).
    OpenaiChat,
    AnthropicChat,
    /// A `tools/call` at `POST /mcp`.
    Mcp,
}

impl SessionKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "openai_chat" => Some(Self::OpenaiChat),
            "anthropic_chat" => Some(Self::AnthropicChat),
            "mcp" => Some(Self::Mcp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenaiChat => "openai_chat",
            Self::AnthropicChat => "anthropic_chat",
            Self::Mcp => "mcp",
        }
    }
}

/// A call waiting for approval, bound to what was asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PendingCall {
    /// The model's id for the call (an `/mcp` call: one the gateway made).
    pub id: String,
    pub server: String,
    pub tool: String,
    /// The name the model used: `<server>__<tool>`.
    pub name: String,
    #[schema(value_type = Object)]
    pub arguments: Value,
    /// `call_digest(name, arguments)`.
    pub digest: String,
    /// The server's `policy_version` when approval was asked.
    pub policy_version: i64,
}

/// The outcome of one call, fed back to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    pub call_id: String,
    pub content: String,
    pub is_error: bool,
}

/// A tool session, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSession {
    pub id: String,
    pub user_id: String,
    pub key_id: String,
    pub kind: SessionKind,
    pub model: String,
    pub status: SessionStatus,
    /// The client asked for a stream (a chat session).
    pub stream: bool,
    /// The step of the loop it stopped at (0-based).
    pub step: u32,
    /// A chat session: the request body in the client's dialect, with the offered tools
    /// and every turn so far, up to and including the assistant's calls.
    pub body: Value,
    /// Outputs of the calls of this step that already ran (`auto`, `block`).
    pub outputs: Vec<ToolOutput>,
    pub pending: Vec<PendingCall>,
    /// The ids a person approved (an `/mcp` session: those not yet used).
    pub approved: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl ToolSession {
    /// A new session waiting for a person: `key`'s, of `kind`, expiring after `ttl_secs`.
    pub fn waiting(
        key: &crate::domain::records::KeyGrant,
        kind: SessionKind,
        pending: Vec<PendingCall>,
        ttl_secs: u64,
    ) -> Self {
        let now = crate::domain::now_ms();
        Self {
            id: format!("ts_{}", uuid::Uuid::now_v7().simple()),
            user_id: key.user_id.clone(),
            key_id: key.key_id.clone(),
            kind,
            model: String::new(),
            status: SessionStatus::Pending,
            stream: false,
            step: 0,
            body: Value::Null,
            outputs: Vec::new(),
            pending,
            approved: Vec::new(),
            created_at: now,
            expires_at: now.saturating_add((ttl_secs as i64).saturating_mul(1000)),
        }
    }
}

/// What the caller of `/v1/tools/sessions` sees of a session.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SessionView {
    pub session_id: String,
    pub kind: SessionKind,
    pub model: String,
    pub status: SessionStatus,
    pub pending_calls: Vec<PendingCall>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl From<&ToolSession> for SessionView {
    fn from(s: &ToolSession) -> Self {
        Self {
            session_id: s.id.clone(),
            kind: s.kind,
            model: s.model.clone(),
            status: s.status,
            pending_calls: s.pending.clone(),
            created_at: s.created_at,
            expires_at: s.expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_names_keep_prefixes_unambiguous() {
        assert!(check_server_name("time").is_ok());
        assert!(check_server_name("os-tools_2").is_ok());
        for bad in ["", "a__b", "a_", "with space", "x/y", &"n".repeat(25)] {
            assert!(check_server_name(bad).is_err(), "{bad}");
        }
        assert_eq!(prefixed_name("time", "now").as_deref(), Some("time__now"));
        assert_eq!(split_prefixed("time__get_time"), Some(("time", "get_time")));
        assert_eq!(prefixed_name("time", "bad.name"), None);
        assert_eq!(prefixed_name("time", &"t".repeat(60)), None);
    }

    #[test]
    fn a_digest_binds_tool_and_arguments_not_key_order() {
        let a = call_digest("fs__delete", &json!({"path": "/a", "force": true}));
        let b = call_digest("fs__delete", &json!({"force": true, "path": "/a"}));
        assert_eq!(a, b);
        assert_ne!(
            a,
            call_digest("fs__delete", &json!({"path": "/b", "force": true}))
        );
        assert_ne!(
            a,
            call_digest("fs__remove", &json!({"path": "/a", "force": true}))
        );
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn arguments_must_be_an_object() {
        assert!(parse_arguments("").unwrap().is_empty());
        assert_eq!(parse_arguments(r#"{"a":1}"#).unwrap()["a"], 1);
        assert!(parse_arguments("[1]").is_err());
        assert!(parse_arguments("{").is_err());
    }
}
