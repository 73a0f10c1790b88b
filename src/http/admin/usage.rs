//! `GET /admin/usage` (usage rows, newest first, paged by an opaque `before` cursor) and
//! `GET /admin/usage/summary` (totals per model, user, key or UTC day, read from the
//! hourly rollups). Times are Unix milliseconds or RFC 3339; `since` is inclusive and
//! `until` exclusive. Summaries count whole hours: `since` counts from the start of its
//! hour and `until` to the end of its hour.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::http::openapi::responses::AdminAuth;
use serde_json::json;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::{ListUsage, SummarizeUsage};
use crate::domain::quoted_name;
use crate::domain::usage_report::{
    GroupBy, RollupFilter, StatusFilter, UsageCursor, UsageFilter, parse_time,
};
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::extract::AdminReader;

const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1000;

/// Filters and paging of `GET /admin/usage` (times: epoch milliseconds or RFC 3339).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    user_id: Option<String>,
    key_id: Option<String>,
    model: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

/// `group_by` (`model`, `user`, `key` or `day`) and the filters of a usage summary.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    group_by: Option<String>,
    pub(crate) user_id: Option<String>,
    key_id: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// The query string as `T`: 400 naming the parameter on an unknown or repeated one.
pub(crate) fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| {
            let message = format!("invalid query: {e}");
            ApiError {
                param: quoted_name(&message),
                ..ApiError::new(crate::error::ErrorKind::InvalidRequest, message)
            }
        })
}

/// A filter value: given, and not empty.
fn id(param: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.is_empty() => Err(ApiError::invalid(
            param,
            format!("`{param}` must not be empty"),
        )),
        v => Ok(v),
    }
}

fn time(param: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            parse_time(v).ok_or_else(|| {
                ApiError::invalid(
                    param,
                    format!("`{param}` must be Unix milliseconds or an RFC 3339 time"),
                )
            })
        })
        .transpose()
}

/// `since` and `until`, with `since` before `until`.
fn period(
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let (since, until) = (time("since", since)?, time("until", until)?);
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return Err(ApiError::invalid("until", "`until` must be after `since`"));
    }
    Ok((since, until))
}

#[utoipa::path(
    get,
    path = "/admin/usage",
    tag = "Admin",
    description = "Usage rows, newest first, filtered by user, key, model, status (`ok`, \
        `error` or an HTTP status) and time; `limit` (at most 1000) and the `next` cursor of \
        the previous page as `before`. Role: admin, operator or viewer.",
    params(ListQuery),
    responses(
        (status = 200, description = "`{data: [usage rows], next}`", body = serde_json::Value),
        AdminAuth
    )
)]
pub async fn list_usage(
    state: web::Data<AppState>,
    _: AdminReader,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q: ListQuery = query(&req)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            StatusFilter::parse(s).ok_or_else(|| {
                ApiError::invalid("status", "`status` must be `ok`, `error` or an HTTP status")
            })
        })
        .transpose()?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<u64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::invalid("limit", format!("`limit` must be 1 to {MAX_LIMIT}"))
            })?,
    };
    let before = q
        .before
        .as_deref()
        .map(|b| {
            UsageCursor::parse(b).ok_or_else(|| {
                ApiError::invalid("before", "`before` must be a `next` cursor of this API")
            })
        })
        .transpose()?;
    let (since, until) = period(q.since.as_deref(), q.until.as_deref())?;
    let filter = UsageFilter {
        user_id: id("user_id", q.user_id)?,
        key_id: id("key_id", q.key_id)?,
        model: id("model", q.model)?,
        status,
        since,
        until,
    };
    let msg = ListUsage {
        filter,
        before,
        limit,
    };
    let page = state.store.send(msg).timeout(ASK_TIMEOUT).await??;
    Ok(HttpResponse::Ok().json(page))
}

#[utoipa::path(
    get,
    path = "/admin/usage/summary",
    tag = "Admin",
    description = "Requests, errors, tokens, cost and p50/p95 latency per model, user, key or \
        UTC day, from the hourly rollups. Role: admin, operator or viewer.",
    params(SummaryQuery),
    responses(
        (status = 200, description = "`{data: [{group, requests, errors, prompt_tokens, \
            completion_tokens, total_tokens, cost_usd, cost_micros, latency_ms: {p50, p95}}]}`",
            body = serde_json::Value),
        AdminAuth
    )
)]
pub async fn usage_summary(
    state: web::Data<AppState>,
    _: AdminReader,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    summarize(&state, query(&req)?).await
}

/// A usage summary of the query's groups and filters.
pub(crate) async fn summarize(state: &AppState, q: SummaryQuery) -> Result<HttpResponse, ApiError> {
    let group_by = q
        .group_by
        .as_deref()
        .and_then(GroupBy::parse)
        .ok_or_else(|| {
            ApiError::invalid(
                "group_by",
                "`group_by` must be `model`, `user`, `key` or `day`",
            )
        })?;
    let (since, until) = period(q.since.as_deref(), q.until.as_deref())?;
    let filter = RollupFilter {
        user_id: id("user_id", q.user_id)?,
        key_id: id("key_id", q.key_id)?,
        model: id("model", q.model)?,
        since,
        until,
    };
    let rows = state
        .store
        .send(SummarizeUsage { group_by, filter })
        .timeout(ASK_TIMEOUT)
        .await??;
    Ok(HttpResponse::Ok().json(json!({"data": rows})))
}
