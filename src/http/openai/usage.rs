//! `GET /v1/usage`: any valid key reads its own usage — its user's and its key's totals,
//! over all time and today (UTC), and what is left of each of its limits — and nobody
//! else's. No admin right needed. `GET /v1/usage/summary`: its user's usage per model,
//! key or day (the admin summary, held to the caller's user); `GET /v1/keys`: its user's
//! keys, never their secrets.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::actors::ASK_TIMEOUT;
use crate::actors::quota::PeekRates;
use crate::actors::store::GetCallerUsage;
use crate::domain::now_ms;
use crate::domain::quota::{CallerLimits, RateGauge, RateHeaders, duration_text};
use crate::domain::usage::micros_to_usd;
use crate::domain::usage_report::CallerUsage;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::extract::Caller;
use crate::http::openapi::responses::ClientAuth;
use crate::relay::Relay;

/// The answer: the caller's usage, and what is left of each of its limits.
#[derive(Debug, Serialize)]
struct OwnUsage {
    user_id: String,
    key_id: String,
    /// The user's role (`admin`, `operator`, `viewer`, `user`): what the console shows.
    role: &'static str,
    usage: CallerUsage,
    limits: OwnLimits,
}

/// Each limit that applies to the caller (`null`: none).
#[derive(Debug, Serialize)]
struct OwnLimits {
    requests_per_minute: Option<PerMinute>,
    tokens_per_minute: Option<PerMinute>,
    token_quota: Option<Total<u64>>,
    budget_usd: Option<Total<f64>>,
}

#[derive(Debug, Serialize)]
struct PerMinute {
    limit: u64,
    remaining: u64,
    /// Until room frees, as in `x-ratelimit-reset-*` (`1.5s`, `6m0s`).
    reset: String,
}

impl From<RateGauge> for PerMinute {
    fn from(g: RateGauge) -> Self {
        Self {
            limit: g.limit,
            remaining: g.remaining,
            reset: duration_text(g.reset_ms),
        }
    }
}

/// A quota or budget: its limit, the user's recorded spend, and what is left.
#[derive(Debug, Serialize)]
struct Total<T> {
    limit: T,
    used: T,
    remaining: T,
    /// The budget's figures in micro-dollars (budgets only).
    #[serde(skip_serializing_if = "Option::is_none")]
    micros: Option<Micros>,
}

#[derive(Debug, Serialize)]
struct Micros {
    limit: u64,
    used: u64,
    remaining: u64,
}

#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "OpenAI",
    description = "The caller's own usage (its user's and its key's: requests, errors, tokens, \
        cost; all time and today, UTC) and what is left of each of its limits \
        (`requests_per_minute`, `tokens_per_minute`, `token_quota`, `budget_usd`; `null` where \
        none applies). Any valid key; nobody else's usage.",
    responses(
        (status = 200, description = "`{user_id, key_id, role, usage: {day, user, key}, limits}` \
            (`role`: the user's, `admin`, `operator`, `viewer` or `user`)",
            body = serde_json::Value),
        ClientAuth
    )
)]
pub async fn own_usage(
    state: web::Data<AppState>,
    relay: web::Data<Relay>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let grant = caller.0;
    let msg = GetCallerUsage {
        user_id: grant.user_id.clone(),
        key_id: grant.key_id.clone(),
        now: now_ms(),
    };
    let usage = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    let limits = CallerLimits::of(&grant, &state.settings.limits);
    let rates = if limits.rpm.is_some() || limits.tpm.is_some() {
        let peek = PeekRates {
            user_id: grant.user_id.clone(),
            key_id: grant.key_id.clone(),
            limits,
        };
        relay.quota.send(peek).timeout(ASK_TIMEOUT).await?
    } else {
        RateHeaders::default()
    };
    let spent_tokens = usage.user.all_time.total_tokens.max(0) as u64;
    let spent_micros = usage.user.all_time.cost.0.unwrap_or(0).max(0) as u64;
    let limits = OwnLimits {
        requests_per_minute: rates.requests.map(PerMinute::from),
        tokens_per_minute: rates.tokens.map(PerMinute::from),
        token_quota: limits.token_quota.map(|limit| Total {
            limit,
            used: spent_tokens,
            remaining: limit.saturating_sub(spent_tokens),
            micros: None,
        }),
        budget_usd: limits.budget_micros.map(|limit| {
            let remaining = limit.saturating_sub(spent_micros);
            let usd = |m: u64| micros_to_usd(m as i64);
            Total {
                limit: usd(limit),
                used: usd(spent_micros),
                remaining: usd(remaining),
                micros: Some(Micros {
                    limit,
                    used: spent_micros,
                    remaining,
                }),
            }
        }),
    };
    Ok(HttpResponse::Ok().json(OwnUsage {
        user_id: grant.user_id.clone(),
        key_id: grant.key_id.clone(),
        role: grant.role.as_str(),
        usage,
        limits,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/usage/summary",
    tag = "OpenAI",
    description = "The caller's user's usage per model, key or UTC day (`group_by`), from the \
        hourly rollups: as `GET /admin/usage/summary`, held to the caller's user (`user_id`, \
        if given, must be the caller's own). Any valid key.",
    params(crate::http::admin::usage::SummaryQuery),
    responses(
        (status = 200, description = "`{data: [{group, requests, errors, prompt_tokens, \
            completion_tokens, total_tokens, cost_usd, cost_micros, latency_ms: {p50, p95}}]}`",
            body = serde_json::Value),
        (status = 400, description = "A bad parameter, or another user's `user_id` (`invalid_request_error`)", body = crate::http::openapi::schemas::OpenAiError),
        ClientAuth
    )
)]
pub async fn own_usage_summary(
    state: web::Data<AppState>,
    caller: Caller,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let mut q: crate::http::admin::usage::SummaryQuery = crate::http::admin::usage::query(&req)?;
    let own = &caller.0.user_id;
    if q.user_id.as_ref().is_some_and(|u| u != own) {
        return Err(ApiError::invalid(
            "user_id",
            "a key reads its own user's usage only",
        ));
    }
    q.user_id = Some(own.clone());
    crate::http::admin::usage::summarize(&state, q).await
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "OpenAI",
    description = "The caller's user's API keys, oldest first, never their secrets (as \
        `GET /admin/keys?user_id=` answers for that user). Any valid key.",
    responses(
        (status = 200, description = "The keys", body = crate::http::openapi::schemas::KeyList),
        ClientAuth
    )
)]
pub async fn own_keys(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let msg = crate::actors::store::ListKeys {
        user_id: Some(caller.0.user_id.clone()),
    };
    let keys = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({"data": keys})))
}
