//! `ApiError`: every error that reaches a client, mapped once to an HTTP status and the
//! OpenAI error body `{"error":{"message","type","param","code"}}`. `code` is a stable,
//! snake_case contract taken from `ErrorKind`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::actors::store::StoreError;
use crate::providers::UpstreamFailure;

/// The low-cardinality kind of an error: its stable `code` and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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
    TooManyAuthFailures,
    UpstreamError,
    UpstreamTimeout,
    NoHealthyDeployment,
    UpstreamConcurrencyExceeded,
    DownstreamConcurrencyExceeded,
    ServiceUnavailable,
    /// The gateway is stopping and its grace period ran out (ends streams still open).
    ShuttingDown,
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
            Self::TooManyAuthFailures => "too_many_auth_failures",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::NoHealthyDeployment => "no_healthy_deployment",
            Self::UpstreamConcurrencyExceeded => "upstream_concurrency_exceeded",
            Self::DownstreamConcurrencyExceeded => "downstream_concurrency_exceeded",
            Self::ServiceUnavailable => "service_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal_error",
        }
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
            Self::Conflict => StatusCode::CONFLICT,
            Self::RateLimited | Self::TooManyAuthFailures => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoHealthyDeployment
            | Self::UpstreamConcurrencyExceeded
            | Self::DownstreamConcurrencyExceeded
            | Self::ServiceUnavailable
            | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `type` field.
    fn error_type(self) -> &'static str {
        match self.status().as_u16() {
            400 | 404 | 405 | 409 | 413 => "invalid_request_error",
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
    pub message: String,
    pub param: Option<String>,
    /// For upstream failures: the vendor's failure class, used as `code` instead of the kind.
    pub class: Option<&'static str>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            class: None,
            retry_after: None,
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
        self.class.unwrap_or(self.kind.as_str())
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
        if self.kind.status().is_server_error() {
            tracing::warn!(code = self.code(), message = %self.message, "request failed");
        }
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
            StoreError::Db(e) => {
                tracing::error!(error = %e, "database error");
                ApiError::internal()
            }
            StoreError::Crypto => {
                tracing::error!("could not encrypt or decrypt a stored secret");
                ApiError::internal()
            }
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        tracing::warn!(error = %e, "actor did not answer");
        ApiError::unavailable()
    }
}

impl From<UpstreamFailure> for ApiError {
    /// Client-caused failures keep a 4xx and the vendor's message; rate limits stay 429;
    /// everything else is the gateway's problem: 502, or 504 for a timeout, with a generic
    /// message (the detail goes to the log).
    fn from(f: UpstreamFailure) -> Self {
        use crate::providers::FailureClass;
        tracing::warn!(class = f.class.as_str(), status = ?f.status, detail = %f.detail, "upstream failed");
        let (kind, message) = match f.class {
            class if class.is_client_fault() => (
                ErrorKind::InvalidRequest,
                f.vendor_message
                    .unwrap_or_else(|| class.client_message().to_string()),
            ),
            FailureClass::RateLimited => {
                (ErrorKind::RateLimited, f.class.client_message().to_string())
            }
            FailureClass::Timeout => (
                ErrorKind::UpstreamTimeout,
                f.class.client_message().to_string(),
            ),
            _ => (
                ErrorKind::UpstreamError,
                f.class.client_message().to_string(),
            ),
        };
        // Timeouts answer the contract's `upstream_timeout`; other failures their class.
        let class = (f.class != FailureClass::Timeout).then_some(f.class.as_str());
        Self {
            class,
            ..ApiError::new(kind, message)
        }
    }
}
