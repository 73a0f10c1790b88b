//! The error answers shared by many operations, as reusable responses
//! (`#/components/responses/…`, OpenAI's error shape), and the sets an operation takes
//! whole: `ClientAuth` or `AdminAuth` for who may call it, `JsonBody` when it reads a body,
//! `Upstream` when it calls one.

use std::collections::BTreeMap;

use utoipa::openapi::{Ref, RefOr, Response};
use utoipa::{IntoResponses, ToResponse};

use super::schemas::OpenAiError;

/// Malformed request: not JSON (`invalid_json`), or a field missing or of the wrong
/// shape (`invalid_request`, `param` names it); an upstream's refusal of the request.
#[derive(ToResponse)]
pub struct BadRequest(pub OpenAiError);

/// No API key (`missing_api_key`), an unknown or revoked one, or a disabled user's
/// (`invalid_api_key`), or an expired one (`key_expired`).
#[derive(ToResponse)]
pub struct Unauthorized(pub OpenAiError);

/// The key's role may not do this (`admin_forbidden`), or the key may not use this model
/// (`model_not_permitted`).
#[derive(ToResponse)]
pub struct Forbidden(pub OpenAiError);

/// No such object (`not_found`), or no such model (`model_not_found`).
#[derive(ToResponse)]
pub struct NotFound(pub OpenAiError);

/// The object already exists (`conflict`).
#[derive(ToResponse)]
pub struct Conflict(pub OpenAiError);

/// The body exceeds `server.max_body_bytes` (`payload_too_large`).
#[derive(ToResponse)]
pub struct PayloadTooLarge(pub OpenAiError);

/// Too many unknown keys from this address (`too_many_auth_failures`), the caller's RPM or
/// TPM limit (`rate_limited`, the upstream's included), or its token quota or budget spent
/// (`insufficient_quota`, type `insufficient_quota`); `Retry-After` says when to retry. A
/// caller with RPM or TPM limits gets OpenAI's `x-ratelimit-*` headers on every answer.
#[derive(ToResponse)]
#[response(headers(
    ("Retry-After" = u64, description = "Seconds to wait before retrying"),
    ("x-ratelimit-limit-requests" = u64, description = "The caller's requests per minute"),
    ("x-ratelimit-remaining-requests" = u64, description = "Requests left in the sliding minute"),
    ("x-ratelimit-reset-requests" = String, description = "Until a request slot frees, e.g. `1.5s`"),
    ("x-ratelimit-limit-tokens" = u64, description = "The caller's tokens per minute"),
    ("x-ratelimit-remaining-tokens" = u64, description = "Tokens left in the sliding minute"),
    ("x-ratelimit-reset-tokens" = String, description = "Until tokens free, e.g. `6m0s`"),
))]
pub struct TooManyRequests(pub OpenAiError);

/// The gateway failed (`internal_error`); the cause is in its log, never in the answer.
#[derive(ToResponse)]
pub struct Internal(pub OpenAiError);

/// The upstream failed or answered something unreadable (an upstream failure class as
/// the code, e.g. `upstream_error`, `malformed_response`).
#[derive(ToResponse)]
pub struct BadGateway(pub OpenAiError);

/// Busy or stopping: no healthy deployment (`no_healthy_deployment`), a concurrency cap
/// (`upstream_concurrency_exceeded`, `downstream_concurrency_exceeded`), the store or
/// router not answering (`service_unavailable`), shutdown (`shutting_down`).
#[derive(ToResponse)]
pub struct Unavailable(pub OpenAiError);

/// The upstream did not answer in time (`upstream_timeout`).
#[derive(ToResponse)]
pub struct GatewayTimeout(pub OpenAiError);

/// Each status with a reference to its reusable response (named by its type).
fn refs(responses: &[(&str, &str)]) -> BTreeMap<String, RefOr<Response>> {
    responses
        .iter()
        .map(|(status, name)| {
            (
                (*status).to_string(),
                RefOr::Ref(Ref::from_response_name(*name)),
            )
        })
        .collect()
}

/// What any operation behind an API key can answer besides its own answers.
pub struct ClientAuth;

impl IntoResponses for ClientAuth {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        refs(&[
            ("401", Unauthorized::response().0),
            ("429", TooManyRequests::response().0),
            ("500", Internal::response().0),
            ("503", Unavailable::response().0),
        ])
    }
}

/// What any admin operation can answer besides its own answers (403: the role).
pub struct AdminAuth;

impl IntoResponses for AdminAuth {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut responses = ClientAuth::responses();
        responses.extend(refs(&[("403", Forbidden::response().0)]));
        responses
    }
}

/// What an operation that reads a JSON body can answer about it.
pub struct JsonBody;

impl IntoResponses for JsonBody {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        refs(&[
            ("400", BadRequest::response().0),
            ("413", PayloadTooLarge::response().0),
        ])
    }
}

/// What an operation relayed to an upstream can answer besides the above.
pub struct Upstream;

impl IntoResponses for Upstream {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut responses = refs(&[
            ("403", Forbidden::response().0),
            ("404", NotFound::response().0),
            ("502", BadGateway::response().0),
            ("504", GatewayTimeout::response().0),
        ]);
        responses.extend(JsonBody::responses());
        responses
    }
}
