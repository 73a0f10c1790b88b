//! Passthrough routes as pure logic (SPEC §9): a route's spec and its validation, the
//! longest-prefix match on segment boundaries, the upstream URL, and which headers cross
//! the gateway in each direction. No I/O: `actors::passthrough` publishes the table and
//! `http::passthrough` moves the bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::domain::upstream_hosts::UpstreamHosts;

/// Connecting to the upstream may take this long unless the route says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Time to the upstream's headers (and a non-SSE answer's whole body), by default.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 300_000;
/// Longest pause between two chunks of an SSE answer, by default.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 120_000;

/// The gateway's own path prefixes: a route may not shadow them.
const RESERVED: [&str; 8] = [
    "/v1",
    "/admin",
    "/metrics",
    "/healthz",
    "/readyz",
    "/mcp",
    "/ui",
    "/openapi.json",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) and `Host`: never forwarded in either direction.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// Inbound headers that carry the client's credentials: not forwarded unless the route
/// names them in `pass_headers` (the route's `token_header` is one of them too).
const SENSITIVE: [&str; 4] = [
    "authorization",
    "cookie",
    "x-api-key",
    "proxy-authorization",
];

/// One passthrough route: `[[routes]]` in the config, or a body of `POST /admin/routes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Path prefix, matched on segment boundaries (`/openai` matches `/openai/v1/x`, not
    /// `/openaix`); the longest matching prefix wins.
    pub prefix: String,
    /// Upstream base URL; the rest of the path and the query string are appended.
    pub upstream: String,
    /// Headers set on the upstream request (added, or replacing the client's). Values are
    /// secrets: sealed at rest, never returned.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inject_headers: BTreeMap<String, Secret>,
    /// Inbound headers never forwarded.
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// Sensitive inbound headers (`authorization`, `cookie`, `x-api-key`) forwarded anyway.
    #[serde(default)]
    pub pass_headers: Vec<String>,
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Time to the upstream's headers, and for a non-SSE answer to its last byte.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Longest pause between two chunks of an SSE answer.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Requests per minute per API key on this route (sliding window, per instance).
    #[serde(default)]
    pub rpm_limit: Option<u64>,
    /// Requests in flight on this route at once (per instance); more answer 503.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// A header that carries the client's Lowart key instead of `Authorization`.
    #[serde(default)]
    pub token_header: Option<String>,
}

/// A route added through `/admin/routes`, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoute {
    pub id: String,
    pub spec: RouteSpec,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A bad field: its name and what is wrong with it.
pub type Invalid = (String, String);

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    (field.to_string(), message.into())
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

impl RouteSpec {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self, hosts: &UpstreamHosts) -> Result<(), Invalid> {
        let p = &self.prefix;
        if !p.starts_with('/') || p.len() < 2 {
            return Err(invalid(
                "prefix",
                "must start with `/` and name at least one segment",
            ));
        }
        if p.ends_with('/') || p.contains("//") {
            return Err(invalid(
                "prefix",
                "must not end with `/` or hold an empty segment",
            ));
        }
        if p.split('/').any(|s| s == ".." || s == ".") {
            return Err(invalid("prefix", "must not hold `.` or `..` segments"));
        }
        if p.len() > 256
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'))
        {
            return Err(invalid(
                "prefix",
                "at most 256 characters of letters, digits, `/ - _ . ~`",
            ));
        }
        if let Some(own) = RESERVED
            .iter()
            .find(|r| segment_prefix(p, r) || segment_prefix(r, p))
        {
            return Err(invalid(
                "prefix",
                format!("overlaps the gateway's own `{own}`"),
            ));
        }
        hosts
            .check_url("upstream", &self.upstream)
            .map_err(|m| invalid("upstream", m))?;
        if self.upstream.contains(['?', '#']) {
            return Err(invalid(
                "upstream",
                "must not hold a query string or fragment",
            ));
        }
        for (name, value) in &self.inject_headers {
            if !valid_header_name(name) || is_hop_by_hop(name) {
                return Err(invalid(
                    "inject_headers",
                    format!("`{name}` is not a header that can be set"),
                ));
            }
            if !valid_header_value(value.expose()) {
                return Err(invalid(
                    "inject_headers",
                    format!("the value of `{name}` holds control characters"),
                ));
            }
        }
        for (field, names) in [
            ("strip_headers", &self.strip_headers),
            ("pass_headers", &self.pass_headers),
        ] {
            if let Some(bad) = names.iter().find(|n| !valid_header_name(n)) {
                return Err(invalid(field, format!("`{bad}` is not a header name")));
            }
        }
        if let Some(t) = &self.token_header
            && (!valid_header_name(t) || is_hop_by_hop(t))
        {
            return Err(invalid(
                "token_header",
                format!("`{t}` is not a header name"),
            ));
        }
        for (field, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if value.is_some_and(|v| v == 0 || v > 86_400_000) {
                return Err(invalid(field, "must be between 1 and 86400000"));
            }
        }
        if self.rpm_limit == Some(0) {
            return Err(invalid(
                "rpm_limit",
                "must be at least 1 (omit it for none)",
            ));
        }
        if self.max_concurrency == Some(0) {
            return Err(invalid(
                "max_concurrency",
                "must be at least 1 (omit it for none)",
            ));
        }
        Ok(())
    }

    /// The path after the prefix if `path` is under this route (on a segment boundary).
    pub fn rest<'a>(&self, path: &'a str) -> Option<&'a str> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    /// The upstream URL for `rest` of the path and the raw `query` (empty: none).
    pub fn upstream_url(&self, rest: &str, query: &str) -> String {
        let mut url = self.upstream.trim_end_matches('/').to_string();
        url.push_str(rest);
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    pub fn connect_timeout_ms(&self) -> u64 {
        self.connect_timeout_ms
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS)
    }

    pub fn request_timeout_ms(&self) -> u64 {
        self.request_timeout_ms
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS)
    }

    pub fn idle_timeout_ms(&self) -> u64 {
        self.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS)
    }

    /// Which inbound headers go upstream, given the names the client's `Connection`
    /// header lists (`connection_tokens`, lowercase). `inject_headers` are set after.
    pub fn forwards_request_header(&self, name: &str, connection_tokens: &[String]) -> bool {
        let name = name.to_ascii_lowercase();
        if is_hop_by_hop(&name) || name == "host" || connection_tokens.contains(&name) {
            return false;
        }
        let listed = |list: &[String]| list.iter().any(|n| n.eq_ignore_ascii_case(&name));
        if listed(&self.strip_headers) {
            return false;
        }
        let sensitive = SENSITIVE.contains(&name.as_str())
            || self
                .token_header
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(&name));
        !sensitive || listed(&self.pass_headers)
    }
}

/// Whether the rest of a request's path stays below the route's upstream base: no `.` or
/// `..` segment, written plainly or percent-encoded (the URL parser would resolve them,
/// and `/openai/../x` would leave the base with the route's injected headers).
pub fn rest_is_safe(rest: &str) -> bool {
    rest.split('/').all(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded != "." && decoded != ".."
    })
}

/// Whether `name` is a hop-by-hop header (never forwarded, either direction).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Which upstream response headers go to the client.
pub fn forwards_response_header(name: &str, connection_tokens: &[String]) -> bool {
    let name = name.to_ascii_lowercase();
    !is_hop_by_hop(&name) && !connection_tokens.contains(&name)
}

/// The header names a `Connection` value lists, lowercase.
pub fn connection_tokens<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether `prefix` is `path` or an ancestor of it on a segment boundary.
fn segment_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The route whose prefix is the longest one `path` lies under, with the rest of the path.
pub fn longest_match<'a, 'p, T>(
    routes: impl IntoIterator<Item = &'a T>,
    spec: impl Fn(&T) -> &RouteSpec,
    path: &'p str,
) -> Option<(&'a T, &'p str)>
where
    T: 'a,
{
    routes
        .into_iter()
        .filter_map(|r| spec(r).rest(path).map(|rest| (r, rest)))
        .max_by_key(|(r, _)| spec(r).prefix.len())
}

/// Token counts read from a recognisable OpenAI or Anthropic body or stream event: the
/// `usage` object (`prompt_tokens`/`completion_tokens`, or `input_tokens`/`output_tokens`)
/// at the top or in Anthropic's `message`.
pub fn usage_of(value: &serde_json::Value) -> Option<(i64, i64)> {
    let usage = value
        .get("usage")
        .or_else(|| value.get("message").and_then(|m| m.get("usage")))?;
    let field = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| usage.get(*n).and_then(serde_json::Value::as_i64))
    };
    let prompt = field(["prompt_tokens", "input_tokens"]);
    let completion = field(["completion_tokens", "output_tokens"]);
    (prompt.is_some() || completion.is_some())
        .then(|| (prompt.unwrap_or(0), completion.unwrap_or(0)))
}

/// Usage gathered from the events of a stream: Anthropic splits it (input tokens in
/// `message_start`, output tokens in `message_delta`), OpenAI sends it once at the end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamUsage {
    pub prompt: Option<i64>,
    pub completion: Option<i64>,
}

impl StreamUsage {
    /// Takes in one event's JSON data.
    pub fn observe(&mut self, value: &serde_json::Value) {
        if let Some((prompt, completion)) = usage_of(value) {
            if prompt > 0 || self.prompt.is_none() {
                self.prompt = Some(prompt);
            }
            if completion > 0 || self.completion.is_none() {
                self.completion = Some(completion);
            }
        }
    }

    pub fn tokens(&self) -> Option<(i64, i64)> {
        (self.prompt.is_some() || self.completion.is_some())
            .then(|| (self.prompt.unwrap_or(0), self.completion.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prefix: &str) -> RouteSpec {
        RouteSpec {
            prefix: prefix.into(),
            upstream: "https://api.example.com/v1".into(),
            inject_headers: BTreeMap::new(),
            strip_headers: Vec::new(),
            pass_headers: Vec::new(),
            connect_timeout_ms: None,
            request_timeout_ms: None,
            idle_timeout_ms: None,
            rpm_limit: None,
            max_concurrency: None,
            token_header: None,
        }
    }

    fn any_host() -> UpstreamHosts {
        UpstreamHosts::default()
    }

    #[test]
    fn prefixes_match_on_segment_boundaries_and_the_longest_wins() {
        let routes = [spec("/openai"), spec("/openai/v1"), spec("/anthropic")];
        let find =
            |path| longest_match(&routes, |r| r, path).map(|(r, rest)| (r.prefix.as_str(), rest));
        assert_eq!(find("/openai"), Some(("/openai", "")));
        assert_eq!(find("/openai/models"), Some(("/openai", "/models")));
        assert_eq!(find("/openai/v1/chat"), Some(("/openai/v1", "/chat")));
        assert_eq!(find("/openai/v1"), Some(("/openai/v1", "")));
        assert_eq!(find("/openaix"), None);
        assert_eq!(find("/openai/v1x"), Some(("/openai", "/v1x")));
        assert_eq!(find("/other"), None);
    }

    #[test]
    fn dot_segments_cannot_climb_out_of_the_upstream_base() {
        for safe in ["", "/a", "/a/b.c", "/..a", "/a..", "/%2e%2ex"] {
            assert!(rest_is_safe(safe), "{safe}");
        }
        for unsafe_rest in ["/..", "/a/../b", "/.", "/%2e%2e/x", "/.%2E", "/%2e"] {
            assert!(!rest_is_safe(unsafe_rest), "{unsafe_rest}");
        }
    }

    #[test]
    fn the_upstream_url_is_the_base_the_rest_and_the_query() {
        let s = spec("/openai");
        assert_eq!(
            s.upstream_url("/chat/completions", "a=1&b=%20"),
            "https://api.example.com/v1/chat/completions?a=1&b=%20"
        );
        assert_eq!(s.upstream_url("", ""), "https://api.example.com/v1");
        let slash = RouteSpec {
            upstream: "http://h/".into(),
            ..spec("/x")
        };
        assert_eq!(slash.upstream_url("/y", ""), "http://h/y");
    }

    #[test]
    fn validation_names_the_bad_field() {
        let hosts = any_host();
        assert_eq!(spec("/openai").validate(&hosts), Ok(()));
        let cases: Vec<(RouteSpec, &str)> = vec![
            (spec("openai"), "prefix"),
            (spec("/"), "prefix"),
            (spec("/a/../b"), "prefix"),
            (spec("/a/"), "prefix"),
            (spec("/a b"), "prefix"),
            (spec("/v1"), "prefix"),
            (spec("/v1/x"), "prefix"),
            (spec("/admin"), "prefix"),
            (spec("/metrics"), "prefix"),
            (spec("/openapi.json"), "prefix"),
            (
                RouteSpec {
                    upstream: "ftp://x".into(),
                    ..spec("/a")
                },
                "upstream",
            ),
            (
                RouteSpec {
                    upstream: "http://x/?q=1".into(),
                    ..spec("/a")
                },
                "upstream",
            ),
            (
                RouteSpec {
                    inject_headers: [("bad name".to_string(), Secret::new("v"))].into(),
                    ..spec("/a")
                },
                "inject_headers",
            ),
            (
                RouteSpec {
                    inject_headers: [("x-k".to_string(), Secret::new("a\nb"))].into(),
                    ..spec("/a")
                },
                "inject_headers",
            ),
            (
                RouteSpec {
                    strip_headers: vec!["a:b".into()],
                    ..spec("/a")
                },
                "strip_headers",
            ),
            (
                RouteSpec {
                    token_header: Some("connection".into()),
                    ..spec("/a")
                },
                "token_header",
            ),
            (
                RouteSpec {
                    request_timeout_ms: Some(0),
                    ..spec("/a")
                },
                "request_timeout_ms",
            ),
            (
                RouteSpec {
                    rpm_limit: Some(0),
                    ..spec("/a")
                },
                "rpm_limit",
            ),
            (
                RouteSpec {
                    max_concurrency: Some(0),
                    ..spec("/a")
                },
                "max_concurrency",
            ),
        ];
        for (s, field) in cases {
            assert_eq!(
                s.validate(&hosts).map_err(|(f, _)| f),
                Err(field.to_string()),
                "{s:?}"
            );
        }
        // `/v1x` is not under `/v1`.
        assert_eq!(spec("/v1x").validate(&hosts), Ok(()));
    }

    #[test]
    fn hop_by_hop_sensitive_and_stripped_headers_stay_behind() {
        let s = RouteSpec {
            strip_headers: vec!["X-Debug".into()],
            pass_headers: vec!["cookie".into()],
            token_header: Some("x-gw-token".into()),
            ..spec("/a")
        };
        let tokens = connection_tokens(["keep-alive, X-Hop"].into_iter());
        for gone in [
            "Connection",
            "keep-alive",
            "TE",
            "transfer-encoding",
            "upgrade",
            "host",
            "x-hop",
            "authorization",
            "x-api-key",
            "x-gw-token",
            "x-debug",
            "proxy-authorization",
        ] {
            assert!(!s.forwards_request_header(gone, &tokens), "{gone}");
        }
        for kept in [
            "content-type",
            "accept",
            "cookie",
            "openai-beta",
            "content-length",
        ] {
            assert!(s.forwards_request_header(kept, &tokens), "{kept}");
        }
        assert!(!forwards_response_header("Transfer-Encoding", &[]));
        assert!(!forwards_response_header("x-hop", &tokens));
        assert!(forwards_response_header("content-type", &tokens));
    }

    #[test]
    fn usage_is_read_from_openai_and_anthropic_shapes() {
        let openai = serde_json::json!({"usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}});
        assert_eq!(usage_of(&openai), Some((3, 5)));
        let anthropic = serde_json::json!({"usage": {"input_tokens": 7, "output_tokens": 2}});
        assert_eq!(usage_of(&anthropic), Some((7, 2)));
        assert_eq!(usage_of(&serde_json::json!({"data": []})), None);

        let mut stream = StreamUsage::default();
        stream.observe(&serde_json::json!({"type": "message_start", "message": {"usage": {"input_tokens": 11, "output_tokens": 1}}}));
        stream.observe(&serde_json::json!({"type": "content_block_delta"}));
        stream
            .observe(&serde_json::json!({"type": "message_delta", "usage": {"output_tokens": 9}}));
        assert_eq!(stream.tokens(), Some((11, 9)));
        assert_eq!(StreamUsage::default().tokens(), None);
    }
}
