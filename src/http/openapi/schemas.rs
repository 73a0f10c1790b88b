//! Schemas of the wire shapes that have no Rust type of their own: the vendor request and
//! answer bodies (handled as JSON objects, so only the fields the gateway reads are
//! described and any other field is allowed), the error bodies, the `{"data": [...]}`
//! lists, and the deployment bodies (a `DeploymentConfig` plus its upstream `api_key`).

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::actors::provider::BreakerView;
use crate::domain::deployment::DeploymentConfig;
use crate::domain::records::{ApiKeyInfo, AuditEntry, Deployment, User};

/// The OpenAI error body, used by every surface but `/v1/messages`.
#[derive(ToSchema)]
#[schema(example = json!({"error": {"message": "invalid or revoked API key",
    "type": "authentication_error", "param": null, "code": "invalid_api_key"}}))]
pub struct OpenAiError {
    pub error: OpenAiErrorObject,
}

#[derive(ToSchema)]
pub struct OpenAiErrorObject {
    /// What went wrong, for a human.
    pub message: String,
    /// OpenAI's error type: `invalid_request_error`, `authentication_error`,
    /// `permission_error`, `rate_limit_error`, `upstream_error`, `service_unavailable` or
    /// `api_error`.
    #[schema(rename = "type")]
    pub kind: String,
    /// The request field at fault (a dotted path), when one is.
    #[schema(required = true)]
    pub param: Option<String>,
    /// The gateway's stable snake_case error code, e.g. `invalid_request`,
    /// `missing_api_key`, `model_not_found`, `rate_limited`, `upstream_timeout`.
    pub code: String,
}

/// Anthropic's error body, answered on `/v1/messages`.
#[derive(ToSchema)]
#[schema(example = json!({"type": "error", "error": {"type": "authentication_error",
    "message": "invalid or revoked API key"}}))]
pub struct AnthropicError {
    /// Always `error`.
    #[schema(rename = "type", pattern = "^error$")]
    pub kind: String,
    pub error: AnthropicErrorObject,
}

#[derive(ToSchema)]
pub struct AnthropicErrorObject {
    /// Anthropic's error type: `invalid_request_error`, `authentication_error`,
    /// `permission_error`, `not_found_error`, `request_too_large`, `rate_limit_error`,
    /// `overloaded_error` or `api_error`.
    #[schema(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// A list answer of the admin API.
#[derive(ToSchema)]
pub struct UserList {
    pub data: Vec<User>,
}

#[derive(ToSchema)]
pub struct KeyList {
    pub data: Vec<ApiKeyInfo>,
}

#[derive(ToSchema)]
pub struct DeploymentList {
    pub data: Vec<Deployment>,
}

#[derive(ToSchema)]
pub struct BreakerList {
    pub data: Vec<BreakerView>,
}

#[derive(ToSchema)]
pub struct AuditList {
    pub data: Vec<AuditEntry>,
}

/// `POST /admin/keys`: the key's record and, only here, the key itself.
pub struct CreatedKey;

impl PartialSchema for CreatedKey {
    fn schema() -> RefOr<Schema> {
        let mut object = object_of(ApiKeyInfo::schema());
        let key = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("The API key in clear: shown in this answer only."))
            .build();
        object.properties.insert("key".into(), key.into());
        object.required.push("key".into());
        RefOr::T(Schema::Object(object))
    }
}

impl ToSchema for CreatedKey {}

/// The object schema of a derived type (its schema is an object by construction).
fn object_of(schema: RefOr<Schema>) -> Object {
    match schema {
        RefOr::T(Schema::Object(object)) => object,
        _ => Object::new(),
    }
}

/// `PUT /admin/models/{model_id}/fallbacks`: the chain now in force.
#[derive(ToSchema)]
pub struct FallbackChain {
    pub model_id: String,
    /// Model names tried in order after the model's own deployments.
    pub fallbacks: Vec<String>,
}

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`: 200 when the database answers and the router is alive, else 503.
#[derive(ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    pub database: bool,
    pub router: bool,
}

/// `GET /v1/models`: the models this key may use.
#[derive(ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelEntry>,
}

#[derive(ToSchema)]
pub struct ModelEntry {
    pub id: String,
    /// Always `model`.
    pub object: String,
    pub created: i64,
    pub owned_by: String,
}

/// `DeploymentConfig`'s schema as an object schema, with the upstream `api_key` added and,
/// unless `required`, no field required.
fn deployment_body(required: bool, description: &str) -> RefOr<Schema> {
    let mut object = object_of(DeploymentConfig::schema());
    if !required {
        object.required.clear();
    }
    let api_key = ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::String,
            Type::Null,
        ]))
        .description(Some(
            "The upstream's API key: sealed (AES-256-GCM) before it is stored, never returned; `null` clears it.",
        ))
        .build();
    object.properties.insert("api_key".into(), api_key.into());
    object.description = Some(description.into());
    RefOr::T(Schema::Object(object))
}

/// `POST /admin/models`: a deployment's configuration and its upstream key.
pub struct CreateDeploymentBody;

impl PartialSchema for CreateDeploymentBody {
    fn schema() -> RefOr<Schema> {
        deployment_body(
            true,
            "A deployment's configuration (omitted fields take their defaults) and its upstream `api_key`.",
        )
    }
}

impl ToSchema for CreateDeploymentBody {
    fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
        DeploymentConfig::schemas(out);
    }
}

/// `PATCH /admin/models/{id}`: an RFC 7396 merge patch of the configuration.
pub struct PatchDeploymentBody;

impl PartialSchema for PatchDeploymentBody {
    fn schema() -> RefOr<Schema> {
        deployment_body(
            false,
            "An RFC 7396 merge patch onto the deployment's configuration: an absent field stays as it is, `null` clears an optional field or resets one with a default, `breaker` and `settings` merge field by field. The result is validated as a whole.",
        )
    }
}

impl ToSchema for PatchDeploymentBody {
    fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
        DeploymentConfig::schemas(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ApiError, ErrorKind};
    use crate::http::anthropic::dialect::error_body;

    fn property_names(schema: RefOr<Schema>) -> Vec<String> {
        match schema {
            RefOr::T(Schema::Object(o)) => o.properties.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn requires(schema: &RefOr<Schema>, field: &str) -> bool {
        match schema {
            RefOr::T(Schema::Object(o)) => o.required.iter().any(|f| f == field),
            _ => false,
        }
    }

    fn keys(value: &serde_json::Value) -> Vec<String> {
        value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_error_schemas_name_the_fields_the_gateway_renders() {
        let error = ApiError::invalid("model", "`model` is required");
        let openai = error.body();
        assert_eq!(keys(&openai), property_names(OpenAiError::schema()));
        let mut expected = property_names(OpenAiErrorObject::schema());
        let mut rendered = keys(&openai["error"]);
        expected.sort();
        rendered.sort();
        assert_eq!(rendered, expected);

        let anthropic = error_body(&ApiError::new(ErrorKind::InvalidApiKey, "no"));
        let mut expected = property_names(AnthropicError::schema());
        let mut rendered = keys(&anthropic);
        expected.sort();
        rendered.sort();
        assert_eq!(rendered, expected);
        let mut expected = property_names(AnthropicErrorObject::schema());
        let mut rendered = keys(&anthropic["error"]);
        expected.sort();
        rendered.sort();
        assert_eq!(rendered, expected);
    }

    #[test]
    fn a_deployment_create_requires_what_the_configuration_requires_and_a_patch_nothing() {
        let create = CreateDeploymentBody::schema();
        assert!(requires(&create, "model_id") && requires(&create, "vendor_type"));
        assert!(property_names(create).contains(&"api_key".to_string()));
        let patch = PatchDeploymentBody::schema();
        assert!(!requires(&patch, "model_id"));
        assert!(property_names(patch).contains(&"breaker".to_string()));
    }
}
