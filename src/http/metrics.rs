//! `GET /metrics`: Prometheus (OpenMetrics text). Off with `telemetry.metrics = false`;
//! behind a bearer token of its own when `telemetry.metrics_token` is set.

use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::crypto::hash_api_key;
use crate::error::{ApiError, ErrorKind};
use crate::http::AppState;
use crate::http::extract::bearer_token;
use crate::http::openapi::schemas::OpenAiError;

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
    let body = state.metrics.render().map_err(|_| ApiError::internal())?;
    Ok(HttpResponse::Ok().content_type(OPENMETRICS).body(body))
}
