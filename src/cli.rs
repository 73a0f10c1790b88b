//! Admin commands that work on the database without a server (`lowart keys create`):
//! they send the store the same messages as the admin API, so they are validated and
//! audited the same way, with the actor `cli`. The argument parsers are here too, for
//! `clap` in `main.rs`.

use std::sync::Arc;

use actix::Actor as _;

use crate::actors::store::{
    CreateKey, CreateUser, GetUser, NewKey, StoreActor, StoreError, UsageOptions, UserFields,
};
use crate::config::{Secret, Settings};
use crate::domain::canonical::MAX_MODEL_BYTES;
use crate::domain::records::{Actor, ApiKeyInfo};
use crate::master_key;
use crate::startup::{StartupError, connect_and_migrate};
use crate::telemetry::metrics::Metrics;

/// The audit log's actor for changes made from the command line.
pub const CLI_ACTOR: &str = "cli";

/// Epoch milliseconds below this (3 March 1973) are taken for a mistake: such a number is
/// almost surely Unix seconds.
const MIN_EPOCH_MS: i64 = 100_000_000_000;

/// What `lowart keys create` asks for.
#[derive(Debug, Clone)]
pub struct KeyRequest {
    pub user_id: String,
    pub name: Option<String>,
    pub models: Option<Vec<String>>,
    pub rpm_limit: Option<u32>,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
}

/// A created key: its record, the key itself (shown once), and whether its user was
/// created for it.
pub struct CreatedKey {
    pub info: ApiKeyInfo,
    pub key: Secret,
    pub created_user: bool,
}

/// Creates an API key for `request.user_id`, creating that user (role `user`) if absent.
/// Opens the database and its master key as `serve` does (migrating it, and creating a key
/// file if neither exists yet), so it works on a fresh database and beside a running
/// gateway (which looks the new key up on its first use).
pub async fn create_key(
    settings: &Settings,
    request: KeyRequest,
) -> Result<CreatedKey, StartupError> {
    let db = connect_and_migrate(settings).await?;
    let master_key = Arc::new(master_key::open_for_serve(settings, &db).await?);
    let store = StoreActor::new(
        db,
        master_key,
        UsageOptions::from_settings(&settings.database),
        Arc::new(Metrics::new()),
    )
    .start();
    let actor = Actor {
        user_id: CLI_ACTOR.into(),
        key_id: None,
    };
    let created_user = match store
        .send(GetUser {
            user_id: request.user_id.clone(),
        })
        .await?
    {
        Ok(_) => false,
        Err(StoreError::NotFound(_)) => {
            let created = store
                .send(CreateUser {
                    user_id: request.user_id.clone(),
                    fields: UserFields::default(),
                    actor: actor.clone(),
                })
                .await?;
            match created {
                Ok(_) => true,
                // Created meanwhile by someone else: the key goes to that user.
                Err(StoreError::Conflict(_)) => false,
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let key = NewKey {
        user_id: request.user_id,
        name: request.name,
        models: request.models,
        topics: None,
        rpm_limit: request.rpm_limit.map(i64::from),
        expires_at: request.expires_at,
    };
    let (info, key) = store.send(CreateKey { key, actor }).await??;
    Ok(CreatedKey {
        info,
        key,
        created_user,
    })
}

/// `--user`: a user id, not empty.
pub fn parse_user_id(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("the user id must not be empty".into());
    }
    Ok(value.to_string())
}

/// One name of `--models a,b`: not empty, at most `MAX_MODEL_BYTES`, no control
/// characters (what a request's `model` may be).
pub fn parse_model_name(value: &str) -> Result<String, String> {
    let name = value.trim();
    if name.is_empty() {
        return Err("model names must not be empty (`--models a,b`)".into());
    }
    if name.len() > MAX_MODEL_BYTES {
        return Err(format!(
            "model names must be at most {MAX_MODEL_BYTES} bytes"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("model names must not contain control characters".into());
    }
    Ok(name.to_string())
}

/// `--expires-at`: Unix milliseconds or an RFC 3339 time, in the future.
pub fn parse_expiry(value: &str) -> Result<i64, String> {
    parse_expiry_at(value, crate::domain::now_ms())
}

fn parse_expiry_at(value: &str, now_ms: i64) -> Result<i64, String> {
    let value = value.trim();
    let ms = match value.parse::<i64>() {
        Ok(ms) if ms < MIN_EPOCH_MS => {
            return Err(format!(
                "{value} is not Unix milliseconds (Unix seconds? multiply by 1000), nor an RFC 3339 time"
            ));
        }
        Ok(ms) => ms,
        Err(_) => chrono::DateTime::parse_from_rfc3339(value)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                format!(
                    "`{value}` is neither Unix milliseconds nor an RFC 3339 time such as 2027-01-31T00:00:00Z ({e})"
                )
            })?,
    };
    if ms <= now_ms {
        return Err(format!("{value} is not in the future"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    #[test]
    fn an_expiry_is_epoch_milliseconds_or_rfc_3339_in_the_future() {
        assert_eq!(parse_expiry_at("1800000000000", NOW), Ok(1_800_000_000_000));
        assert_eq!(
            parse_expiry_at("2027-01-15T08:00:00+01:00", NOW),
            Ok(1_799_996_400_000)
        );
        let seconds = parse_expiry_at("1800000000", NOW).unwrap_err();
        assert!(seconds.contains("Unix seconds"), "{seconds}");
        assert!(parse_expiry_at("next tuesday", NOW).is_err());
        let past = parse_expiry_at("2020-01-01T00:00:00Z", NOW).unwrap_err();
        assert!(past.contains("not in the future"), "{past}");
    }

    #[test]
    fn model_names_are_what_a_request_may_name() {
        assert_eq!(parse_model_name(" gpt-4o "), Ok("gpt-4o".into()));
        assert!(parse_model_name("").is_err());
        assert!(parse_model_name("a\u{7}b").is_err());
        assert!(parse_model_name(&"m".repeat(MAX_MODEL_BYTES + 1)).is_err());
        assert!(parse_user_id("  ").is_err());
    }
}
