//! Authentication as extractors: `Caller` for any valid key, `AdminReader` /
//! `ModelAdmin` / `Admin` for the admin API's roles. Keys are looked up by their SHA-256
//! through `KeyCache`; a miss asks `StoreActor` (unless `AuthThrottle` says the client has
//! guessed enough), and the change feed clears the cache so a revocation holds on the very
//! next request.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use tracing::Instrument;

use super::AppState;
use super::auth_throttle::{AuthThrottle, ClientAddr};
use crate::actors::ASK_TIMEOUT;
use crate::actors::store::LookupKey;
use crate::crypto::{hash_api_key, hex_encode};
use crate::domain::now_ms;
use crate::domain::records::{Actor, KeyGrant, Role};
use crate::error::{ApiError, ErrorKind};

/// The token of an `Authorization` value with the `Bearer` scheme, in any case.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(|c: char| c.is_ascii_whitespace())?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The key presented: `Authorization: Bearer …` (scheme in any case), or `x-api-key` for
/// Anthropic clients.
pub(crate) fn presented_key(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        let token = bearer_token(value).unwrap_or(value);
        return (!token.is_empty()).then(|| token.to_string());
    }
    req.headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

pub(crate) async fn authenticate(
    state: web::Data<AppState>,
    key: Option<String>,
    client: ClientAddr,
) -> Result<Arc<KeyGrant>, ApiError> {
    let key = key.ok_or_else(|| {
        ApiError::new(
            ErrorKind::MissingApiKey,
            "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
        )
    })?;
    let hash = hash_api_key(&key);
    let grant = match state.keys.get(&hash).await {
        Some(cached) => cached,
        None => {
            if let Some(secs) = state.auth_throttle.blocked_for(client).await {
                return Err(ApiError {
                    retry_after: Some(secs),
                    ..ApiError::new(
                        ErrorKind::TooManyAuthFailures,
                        "too many unknown API keys from this address; retry later",
                    )
                });
            }
            let generation = state.keys.generation();
            let found = state
                .store
                .send(LookupKey::Hash(hex_encode(&hash)))
                .timeout(ASK_TIMEOUT)
                .await??
                .map(Arc::new);
            if found.is_none() {
                state.auth_throttle.record_failure(client).await;
            }
            state
                .keys
                .insert_if_current(generation, hash, found.clone())
                .await;
            found
        }
    };
    let grant = grant
        .ok_or_else(|| ApiError::new(ErrorKind::InvalidApiKey, "invalid or revoked API key"))?;
    if grant.expires_at.is_some_and(|t| t <= now_ms()) {
        return Err(ApiError::new(
            ErrorKind::KeyExpired,
            "this API key has expired",
        ));
    }
    if grant.user_disabled {
        return Err(ApiError::new(
            ErrorKind::InvalidApiKey,
            "the user of this API key is disabled",
        ));
    }
    Ok(grant)
}

/// The authenticated caller's key, in the request's extensions for `/metrics/summary`'s
/// per-key counts (only while metrics are on).
#[derive(Clone)]
pub struct CallerKey(pub Arc<KeyGrant>);

/// Notes the caller of `req` for the per-key request counts (`/metrics/summary`); a
/// handler that authenticates without these extractors calls it itself.
pub fn note_caller(req: &HttpRequest, state: &AppState, grant: &Arc<KeyGrant>) {
    if state.settings.telemetry.metrics {
        req.extensions_mut().insert(CallerKey(grant.clone()));
    }
}

fn authorize(
    req: &HttpRequest,
    allowed: fn(Role) -> bool,
) -> LocalBoxFuture<'static, Result<Arc<KeyGrant>, ApiError>> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let key = presented_key(req);
    let client = AuthThrottle::client_of(req.peer_addr());
    let req = req.clone();
    Box::pin(async move {
        let state = state.ok_or_else(ApiError::internal)?;
        let grant = authenticate(state.clone(), key, client)
            .instrument(tracing::info_span!("auth"))
            .await?;
        note_caller(&req, &state, &grant);
        if allowed(grant.role) {
            Ok(grant)
        } else {
            Err(ApiError::new(
                ErrorKind::AdminForbidden,
                format!("the role `{}` may not do this", grant.role.as_str()),
            ))
        }
    })
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $allowed:expr) => {
        $(#[$doc])*
        pub struct $name(pub Arc<KeyGrant>);

        impl $name {
            /// The audit-log actor of this caller.
            pub fn actor(&self) -> Actor {
                Actor {
                    user_id: self.0.user_id.clone(),
                    key_id: Some(self.0.key_id.clone()),
                }
            }
        }

        impl FromRequest for $name {
            type Error = ApiError;
            type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                let fut = authorize(req, $allowed);
                Box::pin(async move { fut.await.map($name) })
            }
        }
    };
}

role_extractor!(
    /// Any valid, unexpired key of an enabled user.
    Caller,
    |_| true
);
role_extractor!(
    /// Read access to the admin API: admin, operator, viewer.
    AdminReader,
    |r| matches!(r, Role::Admin | Role::Operator | Role::Viewer)
);
role_extractor!(
    /// Changes to models and routing: admin, operator.
    ModelAdmin,
    |r| matches!(r, Role::Admin | Role::Operator)
);
role_extractor!(
    /// Changes to users and keys: admin only.
    Admin,
    |r| r == Role::Admin
);
