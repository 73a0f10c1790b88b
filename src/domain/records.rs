//! Records that cross from the store to the HTTP edge: users, keys, deployments, audit
//! entries. They serialise as the admin API's answers; secrets are simply not fields.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::Secret;
use crate::domain::deployment::DeploymentConfig;

/// A user's role: `admin` everything; `operator` models and routing; `viewer` reads the
/// admin API; `user` only the client API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Viewer,
    User,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "admin" => Some(Self::Admin),
            "operator" => Some(Self::Operator),
            "viewer" => Some(Self::Viewer),
            "user" => Some(Self::User),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
            Self::User => "user",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct User {
    pub user_id: String,
    pub name: Option<String>,
    pub role: Role,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub token_quota: Option<i64>,
    pub budget_usd: Option<f64>,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An API key as the admin API shows it: never the secret, never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: String,
    pub user_id: String,
    pub name: Option<String>,
    /// Only for keys Lowart generated; a chosen key shows none.
    pub prefix: Option<String>,
    pub models: Option<Vec<String>>,
    /// Agent-bus topic prefixes the key is limited to.
    pub topics: Option<Vec<String>>,
    pub rpm_limit: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

/// What a valid key grants, as the auth cache holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyGrant {
    pub key_id: String,
    pub user_id: String,
    pub role: Role,
    pub models: Option<Arc<[String]>>,
    /// Agent-bus topic prefixes the key is limited to (none: any topic).
    pub topics: Option<Arc<[String]>>,
    /// The key's own RPM limit (overrides its user's).
    pub rpm_limit: Option<i64>,
    pub expires_at: Option<i64>,
    pub user_disabled: bool,
    /// The user's own limits (unset: `[limits]` defaults apply).
    pub limits: UserLimits,
}

/// A user's limits as stored; `None` is "not set".
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UserLimits {
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub token_quota: Option<i64>,
    pub budget_usd: Option<f64>,
}

impl KeyGrant {
    pub fn permits_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }
}

/// A deployment as stored, minus its secret (`has_api_key` says whether one is set); the
/// configuration's fields are at the top level of the JSON answer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Deployment {
    pub id: String,
    #[serde(flatten)]
    #[schema(schema_with = DeploymentConfig::flattened_schema)]
    pub config: DeploymentConfig,
    pub has_api_key: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A deployment with its decrypted upstream key, for the router only.
#[derive(Debug, Clone)]
pub struct DeploymentWithSecret {
    pub deployment: Deployment,
    pub api_key: Option<Secret>,
}

/// Who did an admin mutation, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub actor_user_id: String,
    pub actor_key_id: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub details: serde_json::Value,
    pub created_at: i64,
}
