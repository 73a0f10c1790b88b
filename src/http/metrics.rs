//! `GET /metrics`: Prometheus (OpenMetrics text), and `GET /metrics/summary`: this
//! instance's requests per route and key over the last hour and day as JSON. Off with
//! `telemetry.metrics = false`; behind a bearer token of its own when
//! `telemetry.metrics_token` is set; `/metrics/summary` also takes an API key of role
//! admin, operator or viewer in its place (the web console shows it).

use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::crypto::hash_api_key;
use crate::domain::records::Role;
use crate::error::{ApiError, ErrorKind};
use crate::http::AppState;
use crate::http::auth_throttle::AuthThrottle;
use crate::http::extract::{authenticate, bearer_token};
use crate::http::openapi::schemas::OpenAiError;
use crate::telemetry::summary::SummaryReport;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "Operations",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "The metrics", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 401, description = "`telemetry.metrics_token` is set and was not presented (`invalid_api_key`)", body = OpenAiError),
        (status = 404, description = "Metrics are off: `telemetry.metrics = false` (`route_not_found`)", body = OpenAiError),
    )
)]
pub async fn metrics(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    check_access(&state, &req)?;
    let body = state.metrics.render().map_err(|_| ApiError::internal())?;
    Ok(HttpResponse::Ok().content_type(OPENMETRICS).body(body))
}

/// This instance's traffic: requests per route and per API key over the last hour and
/// the last day, and requests in flight now and at their peak. Kept in memory by each
/// HTTP worker (minute buckets for the hour, hour buckets for the day), so it starts over
/// with the process and covers this instance only. When `telemetry.metrics_token` is set,
/// an API key of role admin, operator or viewer may be presented instead of the token.
#[utoipa::path(
    get,
    path = "/metrics/summary",
    tag = "Operations",
    security((), ("metrics_token" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The summary", body = SummaryReport),
        (status = 401, description = "`telemetry.metrics_token` is set and neither it nor a valid API key was presented (`invalid_api_key`, `missing_api_key`)", body = OpenAiError),
        (status = 403, description = "`telemetry.metrics_token` is set and the key presented instead is of role `user` (`admin_forbidden`)", body = OpenAiError),
        (status = 404, description = "Metrics are off: `telemetry.metrics = false` (`route_not_found`)", body = OpenAiError),
    )
)]
pub async fn summary(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if let Err(refused) = check_access(&state, &req) {
        // Metrics off stays off; a wrong token may still be an API key that may read it.
        if refused.kind != ErrorKind::InvalidApiKey {
            return Err(refused);
        }
        let key = crate::http::extract::presented_key(&req);
        let client = AuthThrottle::client_of(req.peer_addr());
        let grant = authenticate(state.clone(), key, client).await?;
        if !matches!(grant.role, Role::Admin | Role::Operator | Role::Viewer) {
            return Err(ApiError::new(
                ErrorKind::AdminForbidden,
                "the summary needs the metrics token or a key of role admin, operator or viewer",
            ));
        }
    }
    let report = state.summary.report(state.metrics.inflight());
    Ok(HttpResponse::Ok().json(report))
}

/// 404 when metrics are off; 401 without the metrics token when one is set.
fn check_access(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let telemetry = &state.settings.telemetry;
    if !telemetry.metrics {
        return Err(ApiError::new(
            ErrorKind::RouteNotFound,
            "metrics are disabled",
        ));
    }
    if let Some(token) = &telemetry.metrics_token {
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or_default();
        // Comparing digests keeps the comparison's timing independent of the token.
        if hash_api_key(presented.trim()) != hash_api_key(token.expose()) {
            return Err(ApiError::new(
                ErrorKind::InvalidApiKey,
                "a valid metrics token is required",
            ));
        }
    }
    Ok(())
}
