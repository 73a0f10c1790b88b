//! A deployment's configuration, written once. The admin API's bodies and answers, the
//! `[[models]]` seeds, the stored row (a `config` JSON column beside the few columns that
//! are queried) and the router all use `DeploymentConfig`. A create or an update is an
//! RFC 7396 merge patch of the request body onto the current configuration (`{}` for a new
//! one), read back as a whole (unknown fields refused) and validated as a whole.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::config::Secret;
use crate::domain::breaker::BreakerConfig;
use crate::domain::quoted_name;
use crate::domain::upstream_hosts::UpstreamHosts;
use crate::domain::usage::{INVALID_PRICE, Prices};
use crate::providers::{Vendor, VendorType};

/// A refused configuration: the offending parameter (a dotted path) and why.
pub type Invalid = (String, String);

/// Every admin-settable field of a deployment but its upstream key (kept sealed, apart).
/// Adding a field means adding it here, with a serde default so that stored rows and
/// seeds written before it still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The public model name clients ask for.
    pub model_id: String,
    /// Read case-insensitively, stored and shown in its canonical spelling.
    pub vendor_type: VendorType,
    /// Required but for Mock (OpenAI: `{base_url}/chat/completions`; Anthropic:
    /// `{base_url}/v1/messages`); its host must be allowed by `security.upstream_hosts`.
    pub base_url: Option<String>,
    /// The model name the vendor knows; `model_id` when unset.
    pub upstream_model: Option<String>,
    /// Share of traffic within a priority tier; 0 serves only when alone.
    #[serde(default = "default_weight")]
    pub weight: i32,
    /// Lower tiers are tried first.
    #[serde(default)]
    pub priority: i32,
    /// USD per million tokens.
    pub price_input_per_mtok: Option<f64>,
    pub price_output_per_mtok: Option<f64>,
    pub connect_timeout_ms: Option<i64>,
    pub request_timeout_ms: Option<i64>,
    pub max_concurrency: Option<i32>,
    /// Longest silence between two chunks of a stream (`routing.idle_timeout_ms` if unset).
    pub idle_timeout_ms: Option<i64>,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Vendor-specific settings, typed by `providers::Vendor::from_settings` (`{}` for OpenAI and
    /// Mock).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub settings: Map<String, Value>,
    /// ComfyUI: the workflow in API format, with placeholders (`{{prompt}}`,
    /// `{{negative_prompt}}`, `{{width}}`, `{{height}}`, `{{seed}}`, `{{steps}}`). A PATCH
    /// replaces it whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub workflow: Option<Value>,
    /// MCP servers whose tools every chat request to this model is offered (beside those
    /// the request names in `mcp_servers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<String>,
    /// A stored Rhai script whose `on_request(req)` rewrites the body sent upstream (a
    /// ComfyUI deployment: whose `workflow(req)` builds the workflow instead of the
    /// template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_script: Option<String>,
    /// A stored Rhai script whose `on_response(resp)` rewrites the upstream's answer (each
    /// event of a stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_script: Option<String>,
}

fn default_weight() -> i32 {
    1
}

fn default_enabled() -> bool {
    true
}

impl DeploymentConfig {
    /// A new configuration from a create body (`api_key` already taken out): the merge
    /// patch of `body` onto `{}`, so `null` means the default.
    pub fn create(body: &Map<String, Value>) -> Result<Self, Invalid> {
        let mut target = Value::Object(Map::new());
        merge_patch(&mut target, &Value::Object(body.clone()));
        read(target)
    }

    /// This configuration with `patch` merged in (RFC 7396): an absent field is left as it
    /// is, `null` clears an optional field or resets one with a default, an object (the
    /// `breaker`, the `settings`) is merged field by field.
    pub fn patched(&self, patch: &Map<String, Value>) -> Result<Self, Invalid> {
        let mut target =
            serde_json::to_value(self).map_err(|e| ("body".to_string(), e.to_string()))?;
        merge_patch(&mut target, &Value::Object(patch.clone()));
        // A workflow is one document: replaced, never merged node by node.
        if let (Some(workflow), Value::Object(fields)) = (patch.get("workflow"), &mut target)
            && !workflow.is_null()
        {
            fields.insert("workflow".into(), workflow.clone());
        }
        read(target)
    }

    /// This type's schema without `additionalProperties: false`, for a record that flattens
    /// it beside fields of its own (under `allOf`, the closed schema would refuse those).
    pub fn flattened_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::Schema;
        let mut schema = <Self as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.additional_properties = None;
        }
        schema
    }

    /// Reads a stored or configured configuration as JSON.
    pub fn from_json(value: Value) -> Result<Self, Invalid> {
        read(value)
    }

    /// Checks the whole configuration; answers the offending parameter and why.
    pub fn validate(&self, hosts: &UpstreamHosts) -> Result<(), Invalid> {
        let invalid = |param: &str, message: String| Err((param.to_string(), message));
        if self.model_id.trim().is_empty() {
            return invalid("model_id", "`model_id` must not be empty".into());
        }
        match self.base_url.as_deref() {
            Some(url) => hosts
                .check_base_url(url)
                .map_err(|message| ("base_url".to_string(), message))?,
            None if self.vendor_type != VendorType::Mock => {
                return invalid(
                    "base_url",
                    format!("`base_url` is required for {}", self.vendor_type.as_str()),
                );
            }
            None => {}
        }
        for (param, price) in [
            ("price_input_per_mtok", self.price_input_per_mtok),
            ("price_output_per_mtok", self.price_output_per_mtok),
        ] {
            if !Prices::valid(price) {
                return invalid(param, format!("`{param}` {INVALID_PRICE}"));
            }
        }
        match (self.vendor_type, &self.workflow) {
            (VendorType::ComfyUI, None) => {
                return invalid(
                    "workflow",
                    "`workflow` (ComfyUI API-format JSON) is required for ComfyUI".into(),
                );
            }
            (VendorType::ComfyUI, Some(workflow)) => {
                crate::providers::comfyui::check_workflow(workflow)
                    .map_err(|message| ("workflow".to_string(), message))?;
            }
            (_, Some(_)) => {
                return invalid(
                    "workflow",
                    "`workflow` is only for ComfyUI deployments".into(),
                );
            }
            (_, None) => {}
        }
        if self.weight < 0 {
            return invalid("weight", "`weight` must not be negative".into());
        }
        for (param, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if v.is_some_and(|v| v <= 0) {
                return invalid(param, format!("`{param}` must be greater than 0"));
            }
        }
        if self.max_concurrency.is_some_and(|v| v <= 0) {
            return invalid(
                "max_concurrency",
                "`max_concurrency` must be greater than 0".into(),
            );
        }
        self.validate_scripts()?;
        self.breaker
            .validate()
            .map_err(|(field, message)| (format!("breaker.{field}"), message.to_string()))?;
        self.vendor()?;
        Ok(())
    }

    /// Script names are plain; the in-process Mock sends no upstream request to rewrite,
    /// and ComfyUI's answer is images, not JSON.
    fn validate_scripts(&self) -> Result<(), Invalid> {
        for (param, name) in [
            ("request_script", &self.request_script),
            ("response_script", &self.response_script),
        ] {
            if let Some(name) = name {
                crate::domain::scripts::check_script_name(name)
                    .map_err(|message| (param.to_string(), message))?;
            }
        }
        if self.request_script.is_some() && self.vendor_type == VendorType::Mock {
            return Err((
                "request_script".into(),
                "the in-process Mock vendor sends no upstream request to rewrite".into(),
            ));
        }
        if self.response_script.is_some() && self.vendor_type == VendorType::ComfyUI {
            return Err((
                "response_script".into(),
                "a ComfyUI deployment answers images: only `request_script` (`workflow(req)`) applies".into(),
            ));
        }
        Ok(())
    }

    /// The vendor with its `settings`, typed.
    pub fn vendor(&self) -> Result<Vendor, Invalid> {
        Vendor::from_settings(self.vendor_type, &self.settings, self.workflow.as_ref()).map_err(
            |e| {
                let message = e.to_string();
                let param = quoted_name(&message)
                    .map_or_else(|| "settings".to_string(), |f| format!("settings.{f}"));
                (
                    param,
                    format!(
                        "invalid `settings` for {}: {message}",
                        self.vendor_type.as_str()
                    ),
                )
            },
        )
    }

    pub fn prices(&self) -> Prices {
        Prices {
            input_per_mtok: self.price_input_per_mtok,
            output_per_mtok: self.price_output_per_mtok,
        }
    }
}

/// A `POST` or `PATCH /admin/models` body: the configuration fields as sent, and the
/// upstream key apart.
#[derive(Debug, Clone)]
pub struct DeploymentPatch {
    /// Every field but `api_key`, merged onto the current configuration.
    pub fields: Map<String, Value>,
    /// Absent: unchanged; `null`: cleared; a string: the new key.
    pub api_key: Option<Option<Secret>>,
}

impl DeploymentPatch {
    /// Splits `api_key` off a JSON body.
    pub fn from_body(mut fields: Map<String, Value>) -> Result<Self, Invalid> {
        let api_key = match fields.remove("api_key") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(key)) => Some(Some(Secret::new(key))),
            Some(_) => {
                return Err((
                    "api_key".into(),
                    "`api_key` must be a string or null".into(),
                ));
            }
        };
        Ok(Self { fields, api_key })
    }

    /// The body for the audit log: as sent, with `api_key` as "set" or "cleared", never the
    /// secret.
    pub fn audit_details(&self) -> Value {
        let mut details = self.fields.clone();
        if let Some(key) = &self.api_key {
            let marker = if key.is_some() { "set" } else { "cleared" };
            details.insert("api_key".into(), marker.into());
        }
        Value::Object(details)
    }
}

/// RFC 7396 JSON merge patch of `patch` onto `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Deserialises `value`, naming the offending parameter as a dotted path.
fn read<T: DeserializeOwned>(value: Value) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let parent = (path != ".").then_some(path);
        // A missing field is named inside the message, below the path it is missing from.
        let missing = quoted_name(&message).filter(|_| message.starts_with("missing field"));
        let param = match (parent, missing) {
            (Some(p), Some(field)) => format!("{p}.{field}"),
            (Some(p), None) => p,
            (None, Some(field)) => field,
            (None, None) => "body".into(),
        };
        (param, message)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn base() -> Result<DeploymentConfig, Invalid> {
        DeploymentConfig::create(&object(json!({
            "model_id": "gpt", "vendor_type": "openai", "base_url": "https://api.openai.com/v1",
            "upstream_model": "gpt-4o", "weight": 3, "price_input_per_mtok": 2.5,
            "breaker": {"open_ms": 1000},
        })))
    }

    #[test]
    fn create_fills_defaults_and_canonical_vendor() -> Result<(), Invalid> {
        let c = base()?;
        assert_eq!(c.vendor_type, VendorType::OpenAI);
        assert_eq!(
            serde_json::to_value(&c).map_err(|e| ("".into(), e.to_string()))?["vendor_type"],
            "OpenAI"
        );
        assert_eq!((c.weight, c.priority, c.enabled), (3, 0, true));
        assert_eq!(c.breaker.open_ms, 1000);
        assert_eq!(c.breaker.window_size, BreakerConfig::default().window_size);
        assert!(c.settings.is_empty());
        c.validate(&UpstreamHosts::default())
    }

    #[test]
    fn merge_patch_leaves_absent_fields_clears_nulls_and_merges_objects() -> Result<(), Invalid> {
        let c = base()?;
        let p = c.patched(&object(json!({
            "priority": 2, "upstream_model": null, "weight": null,
            "breaker": {"minimum_calls": 9},
        })))?;
        assert_eq!(p.priority, 2);
        assert_eq!(p.upstream_model, None, "null clears an optional field");
        assert_eq!(p.weight, 1, "null resets a field with a default");
        assert_eq!(p.breaker.open_ms, 1000, "objects merge field by field");
        assert_eq!(p.breaker.minimum_calls, 9);
        assert_eq!(p.base_url, c.base_url, "absent fields are left");
        assert_eq!(p.price_input_per_mtok, Some(2.5));
        assert_eq!(c.patched(&Map::new())?, c, "an empty patch changes nothing");
        let p = c.patched(&object(json!({"breaker": null})))?;
        assert_eq!(p.breaker, BreakerConfig::default());
        Ok(())
    }

    #[test]
    fn refusals_name_the_parameter() -> Result<(), Invalid> {
        let c = base()?;
        let param = |patch: Value| match c.patched(&object(patch)) {
            Ok(p) => p.validate(&UpstreamHosts::default()).err().map(|e| e.0),
            Err((param, _)) => Some(param),
        };
        assert_eq!(param(json!({"bogus": 1})).as_deref(), Some("bogus"));
        assert_eq!(param(json!({"weight": "x"})).as_deref(), Some("weight"));
        assert_eq!(
            param(json!({"model_id": null})).as_deref(),
            Some("model_id")
        );
        assert_eq!(
            param(json!({"vendor_type": "nope"})).as_deref(),
            Some("vendor_type")
        );
        assert_eq!(
            param(json!({"breaker": {"opn_ms": 1}})).as_deref(),
            Some("breaker.opn_ms")
        );
        assert_eq!(
            param(json!({"breaker": {"minimum_calls": 0}})).as_deref(),
            Some("breaker.minimum_calls")
        );
        assert_eq!(
            param(json!({"base_url": null})).as_deref(),
            Some("base_url")
        );
        assert_eq!(
            param(json!({"max_concurrency": 0})).as_deref(),
            Some("max_concurrency")
        );
        assert_eq!(param(json!({"weight": -1})).as_deref(), Some("weight"));
        assert_eq!(
            param(json!({"price_output_per_mtok": -1.0})).as_deref(),
            Some("price_output_per_mtok")
        );
        assert_eq!(
            param(json!({"settings": {"version": "1"}})).as_deref(),
            Some("settings.version")
        );
        assert_eq!(param(json!({"settings": null})), None);
        Ok(())
    }

    #[test]
    fn the_audit_details_carry_no_key() -> Result<(), Invalid> {
        let patch =
            DeploymentPatch::from_body(object(json!({"api_key": "sk-secret", "weight": 2})))?;
        assert_eq!(
            patch.audit_details(),
            json!({"api_key": "set", "weight": 2})
        );
        let patch = DeploymentPatch::from_body(object(json!({"api_key": null})))?;
        assert_eq!(patch.audit_details(), json!({"api_key": "cleared"}));
        assert!(DeploymentPatch::from_body(object(json!({"api_key": 1}))).is_err());
        Ok(())
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"a": [1]});
        merge_patch(&mut target, &json!({"a": {"b": "c"}, "e": null}));
        assert_eq!(target, json!({"a": {"b": "c"}}));
    }
}
