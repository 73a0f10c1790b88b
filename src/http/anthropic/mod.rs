//! The Anthropic Messages client API (`/v1/messages`).

pub mod dialect;
pub mod messages;

use serde_json::json;

use crate::error::ApiError;

/// Any error answered on the Anthropic surface, as Anthropic's error body.
pub fn render_error(error: &actix_web::Error) -> String {
    let body = match error.as_error::<ApiError>() {
        Some(api) => dialect::error_body(api),
        None => {
            let status = error.as_response_error().status_code().as_u16();
            json!({"type": "error", "error": {"type": dialect::error_type(status),
                "message": error.to_string()}})
        }
    };
    body.to_string()
}
