//! `GET /llm/usage?from=&to=`: the caller's usage per day and model.

use chrono::{Days, NaiveDate};
use serde::Serialize;

use super::ledger::{self, DayUsage};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::http::json::ApiJson;
use crate::http::query::QueryParams;
use crate::state::{AppState, UserAuth};

/// The longest span one request may cover, in days.
pub const MAX_DAYS: u64 = 366;

#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageResponse {
    /// One row per model and day with any request, ordered by day then model.
    pub usage: Vec<DayUsage>,
}

fn date(params: &QueryParams, name: &str) -> ApiResult<Option<NaiveDate>> {
    params
        .raw(name)
        .map(|text| {
            NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| {
                ApiError::bad_request("invalid_query", format!("{name}: `{text}` is not a date (YYYY-MM-DD)"))
            })
        })
        .transpose()
}

/// Usage per day (UTC) and model between `from` and `to`, both included;
/// by default the 30 days up to today. Requests still running count with
/// the tokens recorded so far.
#[utoipa::path(get, path = "/llm/usage", tag = "llm", security(("bearer" = [])),
    params(
        ("from" = Option<String>, Query, description = "First day, `YYYY-MM-DD` (default: `to` − 29 days)"),
        ("to" = Option<String>, Query, description = "Last day, `YYYY-MM-DD` (default: today, UTC)"),
    ),
    responses(
        (status = 200, description = "Usage rows", body = UsageResponse),
        (status = 400, description = "`invalid_query`: a malformed date, `from` after `to`, or more than 366 days", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
    ))]
pub async fn usage(
    axum::extract::State(state): axum::extract::State<AppState>,
    auth: UserAuth,
    params: QueryParams,
) -> ApiResult<ApiJson<UsageResponse>> {
    let to = date(&params, "to")?.unwrap_or_else(|| state.clock.now().date_naive());
    let from = date(&params, "from")?.unwrap_or_else(|| to.checked_sub_days(Days::new(29)).unwrap_or(to));
    if from > to {
        return Err(ApiError::bad_request("invalid_query", "from: must not be after `to`"));
    }
    if (to - from).num_days() >= MAX_DAYS as i64 {
        return Err(ApiError::bad_request("invalid_query", format!("at most {MAX_DAYS} days per request")));
    }
    Ok(ApiJson(UsageResponse { usage: ledger::summary(&auth.db, from, to).await? }))
}
