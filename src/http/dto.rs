//! Wire types of the admin API's request bodies, and their conversion into the messages'
//! field sets. Unknown fields are refused, so a typo is a 400, not a silent no-op.

use serde::{Deserialize, Deserializer};
use utoipa::{IntoParams, ToSchema};

use crate::actors::store::UserFields;
use crate::domain::records::Role;
use crate::error::ApiError;

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn parse_role(role: Option<&str>) -> Result<Option<Role>, ApiError> {
    role.map(|r| {
        Role::parse(r).ok_or_else(|| {
            ApiError::invalid(
                "role",
                format!("unknown role `{r}`; expected admin, operator, viewer or user"),
            )
        })
    })
    .transpose()
}

fn non_negative(param: &str, v: Option<Option<i64>>) -> Result<Option<Option<i64>>, ApiError> {
    if v.flatten().is_some_and(|n| n < 0) {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must not be negative"),
        ));
    }
    Ok(v)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    pub user_id: Option<String>,
    pub name: Option<String>,
    #[schema(value_type = Option<Role>)]
    pub role: Option<String>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub token_quota: Option<i64>,
    pub budget_usd: Option<f64>,
}

impl CreateUserBody {
    pub fn into_fields(self) -> Result<(Option<String>, UserFields), ApiError> {
        let fields = UserFields {
            name: Some(self.name),
            role: parse_role(self.role.as_deref())?,
            rpm_limit: non_negative("rpm_limit", Some(self.rpm_limit))?,
            tpm_limit: non_negative("tpm_limit", Some(self.tpm_limit))?,
            token_quota: non_negative("token_quota", Some(self.token_quota))?,
            budget_usd: Some(self.budget_usd),
            disabled: None,
        };
        Ok((self.user_id, fields))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUserBody {
    #[serde(default, deserialize_with = "double_option")]
    pub name: Option<Option<String>>,
    #[schema(value_type = Option<Role>)]
    pub role: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub rpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub tpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub token_quota: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub budget_usd: Option<Option<f64>>,
    pub disabled: Option<bool>,
}

impl PatchUserBody {
    pub fn into_fields(self) -> Result<UserFields, ApiError> {
        Ok(UserFields {
            name: self.name,
            role: parse_role(self.role.as_deref())?,
            rpm_limit: non_negative("rpm_limit", self.rpm_limit)?,
            tpm_limit: non_negative("tpm_limit", self.tpm_limit)?,
            token_quota: non_negative("token_quota", self.token_quota)?,
            budget_usd: self.budget_usd,
            disabled: self.disabled,
        })
    }
}

/// `POST /admin/users/quota` (seed compatibility): creates the user if absent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    pub user_id: String,
    #[serde(default, deserialize_with = "double_option")]
    pub rpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub tpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub token_quota: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub budget_usd: Option<Option<f64>>,
}

impl QuotaBody {
    pub fn into_fields(self) -> Result<(String, UserFields), ApiError> {
        let fields = UserFields {
            rpm_limit: non_negative("rpm_limit", self.rpm_limit)?,
            tpm_limit: non_negative("tpm_limit", self.tpm_limit)?,
            token_quota: non_negative("token_quota", self.token_quota)?,
            budget_usd: self.budget_usd,
            ..Default::default()
        };
        Ok((self.user_id, fields))
    }
}

/// `expires_at` as Unix seconds or an RFC 3339 timestamp.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Timestamp {
    UnixSeconds(i64),
    Rfc3339(String),
}

impl Timestamp {
    pub fn to_ms(&self, param: &str) -> Result<i64, ApiError> {
        match self {
            Timestamp::UnixSeconds(s) => s
                .checked_mul(1000)
                .ok_or_else(|| ApiError::invalid(param, "timestamp out of range")),
            Timestamp::Rfc3339(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| {
                    ApiError::invalid(param, format!("`{param}` is not an RFC 3339 time: {e}"))
                }),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    pub user_id: String,
    pub name: Option<String>,
    pub models: Option<Vec<String>>,
    /// Agent-bus topic prefixes the key is limited to (none: any topic).
    pub topics: Option<Vec<String>>,
    pub rpm_limit: Option<i64>,
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeysQuery {
    pub user_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub limit: Option<u64>,
}

/// `PUT /admin/models/{model_id}/fallbacks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbacksBody {
    pub fallbacks: Vec<String>,
}

/// `PUT /admin/breakers/{deployment_id}`: hold open, hold closed, or back to automatic.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerOverrideBody {
    pub state: BreakerOverride,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerOverride {
    Open,
    Closed,
    Auto,
}
