//! `ApiError`: every error that reaches a client, mapped once to an HTTP status and a
//! stable snake_case `code` (`ErrorKind`: the gateway's own kinds plus
//! `Upstream(FailureClass)`). It renders in the OpenAI shape
//! `{"error":{"message","type","param","code"}}` here; the Anthropic surface renders the
//! same error in its own shape. It is logged once, where the response is rendered.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::actors::store::StoreError;
use crate::providers::{FailureClass, UpstreamFailure};

/// The low-cardinality kind of an error: its stable `code` and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidJson,
    InvalidRequest,
    MissingApiKey,
    InvalidApiKey,
    KeyExpired,
    ModelNotPermitted,
    AdminForbidden,
    NotFound,
    ModelNotFound,
    RouteNotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    Conflict,
    RateLimited,
    /// A token quota or budget is spent.
    InsufficientQuota,
    TooManyAuthFailures,
    /// An upstream failed, in the closed vocabulary of failure classes.
    Upstream(FailureClass),
    NoHealthyDeployment,
    UpstreamConcurrencyExceeded,
    DownstreamConcurrencyExceeded,
    ServiceUnavailable,
    /// The gateway is stopping and its grace period ran out (ends streams still open).
    ShuttingDown,
    /// An MCP server a request needs is not running.
    McpServerUnavailable,
    /// An MCP server could not be started for its registration.
    McpServerFailed,
    /// A tool session was confirmed already (a session is confirmed once).
    SessionAlreadyConfirmed,
    /// A tool session's time to be confirmed ran out.
    SessionExpired,
    /// The model still called tools when the tool loop reached `mcp.max_steps`.
    ToolStepLimit,
    /// A Rhai transform script failed (an error, a sandbox limit, its time budget).
    ScriptError,
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::KeyExpired => "key_expired",
            Self::ModelNotPermitted => "model_not_permitted",
            Self::AdminForbidden => "admin_forbidden",
            Self::NotFound => "not_found",
            Self::ModelNotFound => "model_not_found",
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Conflict => "conflict",
            Self::RateLimited => "rate_limited",
            Self::InsufficientQuota => "insufficient_quota",
            Self::TooManyAuthFailures => "too_many_auth_failures",
            // The contract's name for a timeout; every other class is its own code.
            Self::Upstream(FailureClass::Timeout) => "upstream_timeout",
            Self::Upstream(class) => class.as_str(),
            Self::NoHealthyDeployment => "no_healthy_deployment",
            Self::UpstreamConcurrencyExceeded => "upstream_concurrency_exceeded",
            Self::DownstreamConcurrencyExceeded => "downstream_concurrency_exceeded",
            Self::ServiceUnavailable => "service_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::McpServerUnavailable => "mcp_server_unavailable",
            Self::McpServerFailed => "mcp_server_failed",
            Self::SessionAlreadyConfirmed => "session_already_confirmed",
            Self::SessionExpired => "session_expired",
            Self::ToolStepLimit => "tool_step_limit",
            Self::ScriptError => "script_error",
            Self::Internal => "internal_error",
        }
    }

    /// The kind whose `code` this is (a job's stored error, answered again).
    pub fn parse(code: &str) -> Option<Self> {
        const GATEWAY: [ErrorKind; 28] = [
            ErrorKind::InvalidJson,
            ErrorKind::InvalidRequest,
            ErrorKind::MissingApiKey,
            ErrorKind::InvalidApiKey,
            ErrorKind::KeyExpired,
            ErrorKind::ModelNotPermitted,
            ErrorKind::AdminForbidden,
            ErrorKind::NotFound,
            ErrorKind::ModelNotFound,
            ErrorKind::RouteNotFound,
            ErrorKind::MethodNotAllowed,
            ErrorKind::PayloadTooLarge,
            ErrorKind::Conflict,
            ErrorKind::RateLimited,
            ErrorKind::InsufficientQuota,
            ErrorKind::TooManyAuthFailures,
            ErrorKind::NoHealthyDeployment,
            ErrorKind::UpstreamConcurrencyExceeded,
            ErrorKind::DownstreamConcurrencyExceeded,
            ErrorKind::ServiceUnavailable,
            ErrorKind::ShuttingDown,
            ErrorKind::McpServerUnavailable,
            ErrorKind::McpServerFailed,
            ErrorKind::SessionAlreadyConfirmed,
            ErrorKind::SessionExpired,
            ErrorKind::ToolStepLimit,
            ErrorKind::ScriptError,
            ErrorKind::Internal,
        ];
        GATEWAY
            .into_iter()
            .chain(FailureClass::ALL.into_iter().map(ErrorKind::Upstream))
            .find(|kind| kind.as_str() == code)
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson | Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::MissingApiKey | Self::InvalidApiKey | Self::KeyExpired => {
                StatusCode::UNAUTHORIZED
            }
            Self::ModelNotPermitted | Self::AdminForbidden => StatusCode::FORBIDDEN,
            Self::NotFound | Self::ModelNotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict | Self::SessionAlreadyConfirmed => StatusCode::CONFLICT,
            Self::SessionExpired => StatusCode::GONE,
            Self::RateLimited
            | Self::InsufficientQuota
            | Self::TooManyAuthFailures
            | Self::Upstream(FailureClass::RateLimited) => StatusCode::TOO_MANY_REQUESTS,
            Self::ScriptError | Self::Upstream(FailureClass::Script) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            // The request itself is at fault: the vendor's 4xx stays a 400.
            Self::Upstream(class) if class.is_client_fault() => StatusCode::BAD_REQUEST,
            Self::Upstream(FailureClass::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::NoHealthyDeployment
            | Self::UpstreamConcurrencyExceeded
            | Self::DownstreamConcurrencyExceeded
            | Self::ServiceUnavailable
            | Self::ShuttingDown
            | Self::McpServerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::McpServerFailed | Self::ToolStepLimit => StatusCode::BAD_GATEWAY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `type` field.
    fn error_type(self) -> &'static str {
        if self == Self::InsufficientQuota {
            // OpenAI's type for a spent quota, which its SDKs and clients look for.
            return "insufficient_quota";
        }
        match self.status().as_u16() {
            400 | 404 | 405 | 409 | 410 | 413 => "invalid_request_error",
            401 => "authentication_error",
            429 => "rate_limit_error",
            403 => "permission_error",
            502 | 504 => "upstream_error",
            503 => "service_unavailable",
            _ => "api_error",
        }
    }
}

/// An error on its way to a client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    /// What the client is told.
    pub message: String,
    pub param: Option<String>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// What the gateway knows and the client is not told (an upstream's status and
    /// error, a database error): logged with the error, never rendered.
    pub detail: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            retry_after: None,
            detail: None,
        }
    }

    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(ErrorKind::InvalidRequest, message)
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, what)
    }

    pub fn internal() -> Self {
        Self::new(ErrorKind::Internal, "internal error; see the gateway log")
    }

    pub fn unavailable() -> Self {
        Self::new(
            ErrorKind::ServiceUnavailable,
            "the gateway is busy or shutting down; retry shortly",
        )
    }

    pub fn code(&self) -> &'static str {
        self.kind.as_str()
    }

    /// The one log line of an error that reaches a client: server-side failures at WARN
    /// with what the client was not told; client errors at DEBUG.
    pub fn log(&self) {
        if self.kind.status().is_server_error() || matches!(self.kind, ErrorKind::Upstream(_)) {
            tracing::warn!(code = self.code(), message = %self.message,
                detail = self.detail.as_deref().unwrap_or(""), "request failed");
        } else {
            tracing::debug!(code = self.code(), message = %self.message, "request refused");
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.error_type(),
                "param": self.param,
                "code": self.code(),
            }
        })
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind.status()
    }

    fn error_response(&self) -> HttpResponse {
        self.log();
        let mut res = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after {
            res.insert_header((actix_web::http::header::RETRY_AFTER, secs));
        }
        res.json(self.body())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(what) => ApiError::new(ErrorKind::Conflict, what),
            StoreError::Invalid { param, message } => ApiError::invalid(param, message),
            StoreError::Db(e) => ApiError {
                detail: Some(format!("database error: {e}")),
                ..ApiError::internal()
            },
            StoreError::Crypto => ApiError {
                detail: Some("could not encrypt or decrypt a stored secret".into()),
                ..ApiError::internal()
            },
            // The change is saved; this instance's copies may lag it (e.g. a failed reload).
            StoreError::NotApplied(e) => ApiError {
                detail: Some(format!("change saved but not applied: {e}")),
                ..ApiError::unavailable()
            },
        }
    }
}

impl From<crate::actors::router::RouteError> for ApiError {
    fn from(e: crate::actors::router::RouteError) -> Self {
        use crate::actors::router::RouteError;
        match e {
            RouteError::UnknownModel(model) => ApiError {
                param: Some("model".into()),
                ..ApiError::new(
                    ErrorKind::ModelNotFound,
                    format!("the model `{model}` does not exist"),
                )
            },
            RouteError::StoreUnavailable | RouteError::Store(_) => ApiError {
                detail: Some(format!("routing: {e}")),
                ..ApiError::unavailable()
            },
        }
    }
}

impl From<crate::actors::quota::Refusal> for ApiError {
    fn from(r: crate::actors::quota::Refusal) -> Self {
        use crate::actors::quota::RefusalKind;
        let kind = match r.kind {
            RefusalKind::RateLimited => ErrorKind::RateLimited,
            RefusalKind::InsufficientQuota => ErrorKind::InsufficientQuota,
            RefusalKind::Unavailable => ErrorKind::ServiceUnavailable,
        };
        Self {
            retry_after: Some(crate::domain::quota::retry_after_secs(r.retry_after_ms)),
            ..ApiError::new(kind, r.message)
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError {
            detail: Some(format!("actor did not answer: {e}")),
            ..ApiError::unavailable()
        }
    }
}

impl From<UpstreamFailure> for ApiError {
    /// Client-caused failures keep the vendor's message; everything else is the gateway's
    /// problem and gets the class's generic message (the detail goes to the log).
    fn from(f: UpstreamFailure) -> Self {
        if f.class == FailureClass::Script {
            return ApiError::new(ErrorKind::ScriptError, f.detail);
        }
        let message = match f.vendor_message {
            Some(vendor) if f.class.is_client_fault() => vendor,
            _ => f.class.client_message().to_string(),
        };
        let status = f.status.map_or_else(String::new, |s| format!("HTTP {s}: "));
        Self {
            detail: Some(format!("{status}{}", f.detail)),
            ..ApiError::new(ErrorKind::Upstream(f.class), message)
        }
    }
}
