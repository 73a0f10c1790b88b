//! `POST /v1/embeddings`: OpenAI embeddings, relayed to OpenAI-compatible deployments
//! (and the mock) and billed from the vendor's usage.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use crate::domain::canonical;
use crate::error::ApiError;
use crate::http::extract::Caller;
use crate::http::openapi::responses::{ClientAuth, Upstream};
use crate::http::openapi::vendor;
use crate::http::{AppState, read_body, request_info, served_headers};
use crate::relay::{EmbeddingsRequest, Relay};

/// OpenAI embeddings, relayed to the model's OpenAI-compatible (or mock) deployments.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "OpenAI",
    request_body = vendor::EmbeddingsRequest,
    responses(
        (status = 200, description = "The embeddings, as the upstream answered them", body = vendor::EmbeddingsResponse),
        ClientAuth,
        Upstream,
    )
)]
pub async fn embeddings(
    state: web::Data<AppState>,
    relay: web::Data<Relay>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let request = std::sync::Arc::new(parse(&body)?);
    let info = request_info(&req, caller, request.model.clone(), false, started);
    let reply = relay.embeddings(info, &request).await?;
    let mut res = HttpResponse::Ok()
        .content_type("application/json")
        .body(reply.body);
    served_headers(&mut res, reply.served);
    Ok(res)
}

/// Validates an embeddings body: `model`, and `input` as a string, an array of strings,
/// an array of token ids or an array of such arrays (none empty).
pub fn parse(bytes: &[u8]) -> Result<EmbeddingsRequest, ApiError> {
    let body = crate::http::json_object(bytes)?;
    let model = canonical::model_name(body.get("model"))?;
    let invalid = || {
        ApiError::invalid(
            "input",
            "`input` must be a string, an array of strings, an array of token ids or an array of token-id arrays, not empty",
        )
    };
    let token_ids = |v: &Value| {
        v.as_array()
            .is_some_and(|ids| !ids.is_empty() && ids.iter().all(Value::is_u64))
    };
    let valid = match body.get("input") {
        Some(Value::String(_)) => true,
        Some(input @ Value::Array(items)) if !items.is_empty() => {
            token_ids(input) || items.iter().all(|i| i.is_string() || token_ids(i))
        }
        _ => false,
    };
    if !valid {
        return Err(invalid());
    }
    if let Some(format) = body.get("encoding_format").filter(|v| !v.is_null())
        && !matches!(format.as_str(), Some("float" | "base64"))
    {
        return Err(ApiError::invalid(
            "encoding_format",
            "`encoding_format` must be `float` or `base64`",
        ));
    }
    Ok(EmbeddingsRequest { model, body })
}
