//! `GET /v1/models`: the models this key may use, in the OpenAI list shape.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::actors::ASK_TIMEOUT;
use crate::actors::router::ListModels;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::extract::Caller;
use crate::http::openapi::responses::ClientAuth;
use crate::http::openapi::schemas::ModelList;

/// The models this key may use.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "OpenAI",
    responses((status = 200, description = "The models this key may use", body = ModelList), ClientAuth)
)]
pub async fn list_models(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let names = state.router.send(ListModels).timeout(ASK_TIMEOUT).await?;
    let data: Vec<_> = names
        .into_iter()
        .filter(|m| caller.0.permits_model(m))
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "lowart"}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}
