//! Typed configuration: defaults < `config.toml` < `LOWART_<SECTION>__<KEY>` environment,
//! with `${ENV}` expansion inside string values and the well-known variables
//! (`DATABASE_URL`, `LOWART_MASTER_KEY`, `LOWART_ADMIN_KEY`, `LISTEN_MODE=UDS`).
//! `Settings` is immutable once loaded; live changes travel as messages to actors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};

/// Why a configuration could not be loaded; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("configuration key `{key}` refers to environment variable `{var}`, which is not set")]
    MissingEnv { key: String, var: String },
    #[error("configuration key `{key}`: {message}")]
    BadValue { key: String, message: String },
}

/// A secret string: `Debug` and `Serialize` print `***`, never the value.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub security: SecuritySettings,
    pub telemetry: TelemetrySettings,
    pub routing: RoutingSettings,
    pub limits: LimitSettings,
    pub jobs: JobSettings,
    pub bus: BusSettings,
    pub mcp: McpSettings,
    pub scripts: ScriptSettings,
    pub models: Vec<ModelSeed>,
    /// `[[routes]]`: passthrough routes (SPEC §9), read-only beside `/admin/routes`.
    pub routes: Vec<crate::domain::passthrough::RouteSpec>,
}

/// `[scripts]`: the sandbox every Rhai transform script runs in (`/admin/scripts`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptSettings {
    /// Operations one call may run (0: no limit; the wall-clock budget still holds).
    pub max_operations: u64,
    /// Nesting of function calls.
    pub max_call_levels: usize,
    /// Nesting of expressions (and of statements in functions).
    pub max_expr_depth: usize,
    /// Longest string a script may build, in bytes.
    pub max_string_bytes: usize,
    /// Longest array a script may build.
    pub max_array_len: usize,
    /// Largest object map a script may build.
    pub max_map_len: usize,
    /// Wall-clock budget of one call; a script still running then is stopped.
    pub timeout_ms: u64,
}

impl Default for ScriptSettings {
    fn default() -> Self {
        Self {
            max_operations: 10_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_bytes: 1 << 20,
            max_array_len: 100_000,
            max_map_len: 10_000,
            timeout_ms: 1_000,
        }
    }
}

/// `[mcp]`: MCP servers and the tool loop.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpSettings {
    /// The commands a stdio server may be registered with, exactly as given in `command`
    /// (an absolute path, or a name looked up in the child's `PATH`). Empty: no stdio
    /// server can be registered.
    pub allowed_commands: Vec<String>,
    /// Whether streamable-HTTP servers may be registered (their host must also pass
    /// `security.upstream_hosts`).
    pub allow_http: bool,
    /// `PATH` of a stdio server's child when its registration sets none.
    pub child_path: String,
    /// Start, `initialize` and the first `tools/list` must finish within this.
    pub start_timeout_ms: u64,
    /// A tool call's limit when the registration sets none.
    pub call_timeout_ms: u64,
    /// Calls in flight per server when the registration sets none.
    pub max_concurrency: u32,
    /// The policy of a tool with none of its own: `auto`, `confirm` or `block`.
    pub default_policy: crate::domain::mcp::ToolPolicy,
    /// Model calls in one tool loop (a confirmation continues the count).
    pub max_steps: u32,
    /// A tool session waits this long for a confirmation.
    pub session_ttl_secs: u64,
    /// Longest restart backoff after a server died (it doubles from 500 ms).
    pub max_restart_backoff_ms: u64,
    /// A tool result longer than this is cut before the model sees it.
    pub max_result_bytes: usize,
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            allowed_commands: Vec::new(),
            allow_http: false,
            child_path: "/usr/local/bin:/usr/bin:/bin".into(),
            start_timeout_ms: 15_000,
            call_timeout_ms: 30_000,
            max_concurrency: 4,
            default_policy: crate::domain::mcp::ToolPolicy::Confirm,
            max_steps: 8,
            session_ttl_secs: 3_600,
            max_restart_backoff_ms: 30_000,
            max_result_bytes: 64 * 1024,
        }
    }
}

/// `[bus]`: the agent bus.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// A group message not acked this long after its delivery is delivered again.
    pub visibility_timeout_ms: u64,
    /// Deliveries of a group message before it moves to `<topic>.dead`.
    pub max_attempts: u32,
    /// Frames waiting to be sent to one connection; a fan-out subscriber whose queue is
    /// full is told `slow_consumer` and dropped, a group member gets no more work.
    pub outbound_queue: usize,
    /// Group messages one member holds unacked at most.
    pub max_unacked: usize,
    /// Largest `payload` (as JSON text).
    pub max_payload_bytes: usize,
    /// How often due group messages (redeliveries, other instances' messages) are looked for.
    pub poll_ms: u64,
    /// WebSocket pings; a connection silent for three of them is dropped.
    pub ping_ms: u64,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            visibility_timeout_ms: 30_000,
            max_attempts: 5,
            outbound_queue: 256,
            max_unacked: 16,
            max_payload_bytes: 256 * 1024,
            poll_ms: 1_000,
            ping_ms: 15_000,
        }
    }
}

/// `[jobs]`: async jobs (`"async": true`, images), their artifacts and webhooks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// Jobs this instance runs at once, in all.
    pub max_running: usize,
    /// Jobs of one model this instance runs at once; further ones wait in order.
    pub max_running_per_model: usize,
    /// A running job's claim; renewed every third of it while the job runs. An instance
    /// that dies leaves its jobs to be claimed again once their lease has run out.
    pub lease_ms: u64,
    /// How often an instance looks for queued jobs it did not submit itself (and for
    /// changes to jobs it watches for others).
    pub poll_ms: u64,
    /// Longest a job's generation may take (an image job's deadline, ComfyUI included).
    pub timeout_ms: u64,
    /// Largest artifact a job may produce; a larger one fails the job.
    pub max_artifact_bytes: usize,
    /// Artifacts up to this size are stored in the database; larger ones as files in
    /// `artifact_dir`.
    pub inline_artifact_bytes: usize,
    pub artifact_dir: PathBuf,
    /// Artifacts (and finished jobs' results) older than this are deleted; 0 keeps them.
    pub retention_hours: u64,
    /// Webhook deliveries per job before giving up (backoff doubling from a second).
    pub webhook_attempts: u32,
    pub webhook_timeout_ms: u64,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            max_running: 16,
            max_running_per_model: 4,
            lease_ms: 30_000,
            poll_ms: 1_000,
            timeout_ms: 600_000,
            max_artifact_bytes: 64 * 1024 * 1024,
            inline_artifact_bytes: 1024 * 1024,
            artifact_dir: PathBuf::from("lowart-artifacts"),
            retention_hours: 24 * 7,
            webhook_attempts: 5,
            webhook_timeout_ms: 10_000,
        }
    }
}

/// `[limits]`: defaults for users that set no limit of their own, and what a request
/// reserves. A user's own limit (admin API) always wins; unset means unlimited.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Requests per minute per user (a key's own `rpm_limit` overrides it for that key).
    pub rpm_limit: Option<u64>,
    /// Tokens per minute per user.
    pub tpm_limit: Option<u64>,
    /// Tokens a user may spend in all.
    pub token_quota: Option<u64>,
    /// US dollars a user may spend in all.
    pub budget_usd: Option<f64>,
    /// Completion tokens reserved for a request that sets no `max_tokens`.
    pub reserve_completion_tokens: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            rpm_limit: None,
            tpm_limit: None,
            token_quota: None,
            budget_usd: None,
            reserve_completion_tokens: 1024,
        }
    }
}

/// Retries and fallbacks of one client request.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSettings {
    /// Upstream attempts per request, retries and fallbacks included.
    pub max_attempts: u32,
    /// Total time a request may spend on attempts and backoff.
    pub deadline_ms: u64,
    /// First backoff before retrying a deployment already tried (doubles each attempt,
    /// full jitter, never shorter than the upstream's Retry-After).
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Longest silence between two chunks of a stream, for deployments that set none.
    pub idle_timeout_ms: u64,
    /// Longest a stream may run in total once committed; then it ends with an error event.
    pub stream_timeout_ms: u64,
    /// Largest upstream answer read (a blocking body); above it: 502 `malformed_response`.
    pub max_response_bytes: usize,
    /// Largest single upstream stream event; above it the attempt fails as malformed.
    pub max_event_bytes: usize,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            deadline_ms: 600_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
            idle_timeout_ms: 30_000,
            stream_timeout_ms: 3_600_000,
            max_response_bytes: 32 * 1024 * 1024,
            max_event_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// TCP address; port 0 picks a free port.
    pub listen: String,
    /// Unix domain socket path; when set (or with `LISTEN_MODE=UDS`) the gateway listens there.
    pub uds: Option<PathBuf>,
    /// Permission bits of the socket file, e.g. `0o660` written as 432.
    pub uds_mode: u32,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest accepted request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Requests handled at once (streams until they end); 0 = no cap. Above it: 503.
    pub max_concurrency: usize,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_grace_ms: u64,
    /// PEM certificate chain (leaf first) for inbound TLS on the TCP listener; with
    /// `tls_key`. Read again on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            uds: None,
            uds_mode: 0o660,
            workers: 0,
            max_body_bytes: 4 * 1024 * 1024,
            max_concurrency: 0,
            shutdown_grace_ms: 30_000,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://FILE?mode=rwc` or `postgres://…`; `DATABASE_URL` overrides it.
    pub url: Secret,
    pub max_connections: u32,
    /// Usage rows are written when this many are buffered …
    pub usage_batch_size: usize,
    /// … or after this long, whichever comes first.
    pub usage_flush_ms: u64,
    /// Batches waiting for the usage writer; when full, new batches go to the spill file.
    pub usage_queue_batches: usize,
    /// How long the writer retries a failing batch before appending it to the spill file.
    pub usage_spill_after_ms: u64,
    /// JSON-lines file (mode 0600) of usage rows the database did not take; replayed into
    /// `usage` at the next start, or as soon as the database answers again.
    pub usage_spill_file: PathBuf,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("sqlite://lowart.db?mode=rwc"),
            max_connections: 4,
            usage_batch_size: 256,
            usage_flush_ms: 100,
            usage_queue_batches: 64,
            usage_spill_after_ms: 5_000,
            usage_spill_file: PathBuf::from("lowart-usage.spill.jsonl"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// AES-256-GCM key as 64 hex characters; `LOWART_MASTER_KEY` sets it.
    pub master_key: Option<Secret>,
    /// Where the master key is kept when none is configured; created (0600) on first start.
    pub master_key_file: PathBuf,
    /// Bootstrap admin API key (at least 32 characters); `LOWART_ADMIN_KEY` sets it. A
    /// new one revokes the bootstrap keys configured before it.
    pub admin_key: Option<Secret>,
    /// How long an API-key lookup stays cached (admin changes invalidate it at once).
    pub key_cache_ttl_ms: u64,
    /// Hosts a deployment's `base_url` may name: `api.openai.com` (exact) or
    /// `*.example.com` (below it). Empty: any host.
    pub upstream_hosts: Vec<String>,
    /// Key lookups finding no key a client address may cause per minute; beyond it, keys
    /// the cache does not know get 429 without a lookup. 0 turns the brake off.
    pub auth_failures_per_minute: u32,
}

/// The shortest bootstrap admin key accepted.
pub const MIN_ADMIN_KEY_LEN: usize = 32;

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            master_key: None,
            master_key_file: PathBuf::from("lowart.key"),
            admin_key: None,
            key_cache_ttl_ms: 60_000,
            upstream_hosts: Vec::new(),
            auth_failures_per_minute: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The OTLP transports this build speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// `tracing` env-filter directive; `RUST_LOG` overrides it.
    pub log_filter: String,
    /// OTLP collector base URL (e.g. `http://localhost:4318`); spans are exported when set.
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    /// Extra headers for the collector (e.g. its API key).
    pub otlp_headers: BTreeMap<String, Secret>,
    /// Share of new traces sampled (inbound sampled parents are always followed).
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics: bool,
    /// When set, `/metrics` requires `Authorization: Bearer <metrics_token>`.
    pub metrics_token: Option<Secret>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info,sqlx=warn,sea_orm=warn".into(),
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            otlp_headers: BTreeMap::new(),
            sample_ratio: 1.0,
            service_name: "lowart".into(),
            metrics: true,
            metrics_token: None,
        }
    }
}

/// A deployment created at startup when no deployment of that `model_id` exists yet: the
/// fields of `POST /admin/models`, read by the same type.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSeed {
    #[serde(flatten)]
    pub config: crate::domain::deployment::DeploymentConfig,
    pub api_key: Option<Secret>,
}

/// Reads the process environment; injectable so tests never touch the real one.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Settings {
    /// Loads `path` (missing file = defaults) layered with the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if path.exists() {
            figment = figment.merge(Toml::file_exact(path));
        } else if path != Path::new("config.toml") {
            return Err(ConfigError::Invalid(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(
            Env::prefixed("LOWART_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        Self::from_figment(figment, &ProcessEnv)
    }

    /// Parses a TOML document without consulting the process environment for overrides
    /// (but `${VAR}` and the well-known variables still come from `env`).
    pub fn from_toml_str(toml: &str, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)), env)
    }

    fn from_figment(figment: Figment, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let mut root: Dict = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (key, value) in root.iter_mut() {
            expand_env(key, value, env)?;
        }
        let mut settings: Settings = Figment::from(Serialized::defaults(root))
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.apply_well_known(env);
        settings.validate()?;
        Ok(settings)
    }

    fn apply_well_known(&mut self, env: &dyn EnvSource) {
        if let Some(url) = env.var("DATABASE_URL") {
            self.database.url = Secret::new(url);
        }
        if let Some(key) = env.var("LOWART_MASTER_KEY") {
            self.security.master_key = Some(Secret::new(key));
        }
        if let Some(key) = env.var("LOWART_ADMIN_KEY") {
            self.security.admin_key = Some(Secret::new(key));
        }
        if env
            .var("LISTEN_MODE")
            .is_some_and(|m| m.eq_ignore_ascii_case("uds"))
            && self.server.uds.is_none()
        {
            self.server.uds = Some(PathBuf::from("./lowart.sock"));
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError::BadValue {
            key: key.into(),
            message: message.into(),
        };
        if self.server.uds.is_none() && self.server.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(bad(
                "server.listen",
                "expected an address like 127.0.0.1:8080",
            ));
        }
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) => {
                return Err(bad("server.tls_key", "tls_cert is set: set tls_key too"));
            }
            (None, Some(_)) => {
                return Err(bad("server.tls_cert", "tls_key is set: set tls_cert too"));
            }
            (Some(_), Some(_)) if self.server.uds.is_some() => {
                return Err(bad(
                    "server.tls_cert",
                    "TLS applies to the TCP listener; a Unix socket (server.uds, LISTEN_MODE=UDS) serves plain HTTP",
                ));
            }
            _ => {}
        }
        if self.server.max_body_bytes == 0 {
            return Err(bad("server.max_body_bytes", "must be greater than 0"));
        }
        let url = self.database.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(bad("database.url", "expected a sqlite: or postgres:// URL"));
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return Err(bad("telemetry.sample_ratio", "must be between 0 and 1"));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !endpoint.is_empty()
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(bad("telemetry.otlp_endpoint", "expected an http(s) URL"));
        }
        for (key, value) in [
            ("jobs.max_running", self.jobs.max_running as u64),
            (
                "jobs.max_running_per_model",
                self.jobs.max_running_per_model as u64,
            ),
            ("jobs.lease_ms", self.jobs.lease_ms),
            ("jobs.poll_ms", self.jobs.poll_ms),
            ("jobs.timeout_ms", self.jobs.timeout_ms),
            (
                "jobs.max_artifact_bytes",
                self.jobs.max_artifact_bytes as u64,
            ),
            (
                "jobs.webhook_attempts",
                u64::from(self.jobs.webhook_attempts),
            ),
            ("bus.visibility_timeout_ms", self.bus.visibility_timeout_ms),
            ("bus.max_attempts", u64::from(self.bus.max_attempts)),
            ("bus.outbound_queue", self.bus.outbound_queue as u64),
            ("bus.max_unacked", self.bus.max_unacked as u64),
            ("bus.max_payload_bytes", self.bus.max_payload_bytes as u64),
            ("bus.poll_ms", self.bus.poll_ms),
            ("bus.ping_ms", self.bus.ping_ms),
        ] {
            if value == 0 {
                return Err(bad(key, "must be greater than 0"));
            }
        }
        if self.routing.max_attempts == 0 {
            return Err(bad("routing.max_attempts", "must be at least 1"));
        }
        for (key, value) in [
            ("routing.idle_timeout_ms", self.routing.idle_timeout_ms),
            ("routing.stream_timeout_ms", self.routing.stream_timeout_ms),
            (
                "routing.max_response_bytes",
                self.routing.max_response_bytes as u64,
            ),
            (
                "routing.max_event_bytes",
                self.routing.max_event_bytes as u64,
            ),
        ] {
            if value == 0 {
                return Err(bad(key, "must be greater than 0"));
            }
        }
        if self
            .limits
            .budget_usd
            .is_some_and(|b| !b.is_finite() || b < 0.0)
        {
            return Err(bad("limits.budget_usd", "must be a number, not negative"));
        }
        if self.database.usage_batch_size == 0 {
            return Err(bad("database.usage_batch_size", "must be greater than 0"));
        }
        if self.database.usage_queue_batches == 0 {
            return Err(bad(
                "database.usage_queue_batches",
                "must be greater than 0",
            ));
        }
        if self.database.usage_spill_file.as_os_str().is_empty() {
            return Err(bad("database.usage_spill_file", "must be a file path"));
        }
        if let Some(key) = &self.security.master_key
            && crate::crypto::MasterKey::from_hex(key.expose()).is_err()
        {
            return Err(bad(
                "security.master_key",
                "expected 64 hex characters (32 bytes)",
            ));
        }
        if let Some(key) = &self.security.admin_key
            && key.expose().chars().count() < MIN_ADMIN_KEY_LEN
        {
            return Err(bad(
                "security.admin_key",
                &format!(
                    "must be at least {MIN_ADMIN_KEY_LEN} characters (e.g. `openssl rand -hex 32`)"
                ),
            ));
        }
        let upstream_hosts =
            crate::domain::upstream_hosts::UpstreamHosts::parse(&self.security.upstream_hosts)
                .map_err(|(i, message)| bad(&format!("security.upstream_hosts[{i}]"), &message))?;
        for (i, seed) in self.models.iter().enumerate() {
            seed.config
                .validate(&upstream_hosts)
                .map_err(|(param, message)| bad(&format!("models[{i}].{param}"), &message))?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            route
                .validate(&upstream_hosts)
                .map_err(|(field, message)| bad(&format!("routes[{i}].{field}"), &message))?;
            if self.routes[..i].iter().any(|r| r.prefix == route.prefix) {
                return Err(bad(
                    &format!("routes[{i}].prefix"),
                    &format!("`{}` is already the prefix of another route", route.prefix),
                ));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML-like JSON with secrets masked.
    pub fn masked_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }
}

/// Replaces `${VAR}` in every string under `value`, naming `key` when a variable is unset.
fn expand_env(key: &str, value: &mut Value, env: &dyn EnvSource) -> Result<(), ConfigError> {
    match value {
        Value::String(_, s) if s.contains("${") => *s = expand_str(key, s, env)?,
        Value::Dict(_, dict) => {
            for (k, v) in dict.iter_mut() {
                expand_env(&format!("{key}.{k}"), v, env)?;
            }
        }
        Value::Array(_, items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand_env(&format!("{key}[{i}]"), v, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(key: &str, s: &str, env: &dyn EnvSource) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::BadValue {
                key: key.into(),
                message: "unterminated `${`".into(),
            });
        };
        let var = &after[..end];
        let value = env.var(var).ok_or_else(|| ConfigError::MissingEnv {
            key: key.into(),
            var: var.into(),
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<&'static str, &'static str>);
    impl EnvSource for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    #[test]
    fn empty_config_gives_defaults() -> Result<(), ConfigError> {
        let s = Settings::from_toml_str("", &FakeEnv(HashMap::new()))?;
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.database.url.expose(), "sqlite://lowart.db?mode=rwc");
        Ok(())
    }

    #[test]
    fn env_references_are_expanded_and_well_known_variables_win() -> Result<(), ConfigError> {
        let env = FakeEnv(HashMap::from([
            ("UPSTREAM_KEY", "sk-123"),
            ("DATABASE_URL", "postgres://x/y"),
            ("LISTEN_MODE", "UDS"),
        ]));
        let s = Settings::from_toml_str(
            "[[models]]\nmodel_id='a'\nvendor_type='openai'\nbase_url='https://api.openai.com/v1'\napi_key='${UPSTREAM_KEY}'\n[models.breaker]\nopen_ms=5\n",
            &env,
        )?;
        assert_eq!(
            s.models[0].api_key.as_ref().map(|k| k.expose().to_string()),
            Some("sk-123".to_string())
        );
        assert_eq!(
            s.models[0].config.vendor_type,
            crate::providers::VendorType::OpenAI
        );
        assert_eq!(s.models[0].config.breaker.open_ms, 5);
        assert_eq!(s.database.url.expose(), "postgres://x/y");
        assert_eq!(s.server.uds, Some(PathBuf::from("./lowart.sock")));
        Ok(())
    }

    #[test]
    fn unknown_key_and_unset_variable_are_named() {
        let env = FakeEnv(HashMap::new());
        let unknown = Settings::from_toml_str("[server]\nlisen='x'\n", &env)
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(unknown.contains("lisen"), "{unknown}");
        let unset = Settings::from_toml_str("[database]\nurl='${NOPE}'\n", &env)
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(
            unset.contains("database.url") && unset.contains("NOPE"),
            "{unset}"
        );
        let bad = Settings::from_toml_str("[server]\nlisten='nowhere'\n", &env)
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(bad.contains("server.listen"), "{bad}");
        // `[[models]]` is read and checked as `POST /admin/models` is.
        for (seed, named) in [
            ("vendor_type='Mock'\nwieght=2\n", "wieght"),
            ("vendor_type='nope'\n", "nope"),
            ("vendor_type='Mock'\nweight=-1\n", "models[0].weight"),
            ("vendor_type='OpenAI'\n", "models[0].base_url"),
            (
                "vendor_type='Mock'\n[models.breaker]\nminimum_calls=0\n",
                "models[0].breaker.minimum_calls",
            ),
            (
                "vendor_type='Mock'\n[models.settings]\nx=1\n",
                "models[0].settings.x",
            ),
        ] {
            let toml = format!("[[models]]\nmodel_id='a'\n{seed}");
            let err = Settings::from_toml_str(&toml, &env)
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_default();
            assert!(err.contains(named), "{named}: {err}");
        }
    }

    #[test]
    fn routes_are_read_with_env_expanded_and_checked_naming_the_key() -> Result<(), ConfigError> {
        let env = FakeEnv(HashMap::from([("VENDOR_KEY", "sk-1")]));
        let s = Settings::from_toml_str(
            "[[routes]]\nprefix='/openai'\nupstream='https://api.openai.com'\ninject_headers={authorization='Bearer ${VENDOR_KEY}'}\nrpm_limit=5\n",
            &env,
        )?;
        assert_eq!(s.routes[0].prefix, "/openai");
        assert_eq!(
            s.routes[0].inject_headers["authorization"].expose(),
            "Bearer sk-1"
        );
        assert!(!s.masked_json().contains("sk-1"));
        for (toml, named) in [
            ("prefix='/admin'\nupstream='http://h'\n", "routes[0].prefix"),
            ("prefix='/a'\nupstream='h'\n", "routes[0].upstream"),
            (
                "prefix='/a'\nupstream='http://h'\nmax_concurrency=0\n",
                "routes[0].max_concurrency",
            ),
            ("prefix='/a'\nupstream='http://h'\nprefx=1\n", "prefx"),
            (
                "prefix='/a'\nupstream='http://h'\n[[routes]]\nprefix='/a'\nupstream='http://h'\n",
                "routes[1].prefix",
            ),
        ] {
            let err = Settings::from_toml_str(&format!("[[routes]]\n{toml}"), &env)
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_default();
            assert!(err.contains(named), "{named}: {err}");
        }
        Ok(())
    }

    #[test]
    fn the_shipped_config_toml_runs_as_is_with_the_defaults() -> Result<(), ConfigError> {
        let shipped =
            Settings::from_toml_str(include_str!("../config.toml"), &FakeEnv(HashMap::new()))?;
        assert_eq!(shipped.masked_json(), Settings::default().masked_json());
        Ok(())
    }

    #[test]
    fn secrets_are_masked_when_printed() -> Result<(), ConfigError> {
        let env = FakeEnv(HashMap::from([(
            "LOWART_ADMIN_KEY",
            "super-secret-admin-key-0123456789abcdef",
        )]));
        let s = Settings::from_toml_str("", &env)?;
        assert!(!s.masked_json().contains("super-secret"));
        assert!(!format!("{s:?}").contains("super-secret"));
        Ok(())
    }
}
