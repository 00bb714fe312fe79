//! What the areas that call models share — the LLM proxy (`llm`) and the
//! fallback embeddings (`embeddings`): the seam to OpenAI-compatible and
//! Anthropic upstreams (timeouts, retries, 502/504), token accounting, the
//! usage ledger in the user's database, the quotas per tier and the guard
//! that completes a request's usage row however it ends.
//!
//! Nothing of a prompt, an input or an answer is stored or logged here.

pub mod call;
pub mod ledger;
pub mod quota;
pub mod upstream;
pub mod usage;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::llm::LlmConfig;
use crate::entitlements::Live;
use crate::error::{ApiError, ApiResult};
use crate::store::{ControlDb, UserDb};
use ledger::Opening;
use quota::{Refusal, Tier};

/// The tier quotas are taken from: the user's subscription, as
/// `GET /account/entitlement` shows it.
pub async fn tier(control: &ControlDb, user: Uuid, now: DateTime<Utc>, live: Live) -> ApiResult<Tier> {
    let conn = control.conn().await?;
    Ok(crate::entitlements::tier(&conn, user, now, live).await?)
}

/// Opens a request's usage row under `tier`'s quotas, or answers 429
/// `quota_exceeded` with `Retry-After` (counted in `echolia_llm_quota_refusals_total`).
pub async fn open(
    db: &UserDb,
    tier: Tier,
    config: &LlmConfig,
    now: DateTime<Utc>,
    opening: Opening<'_>,
) -> ApiResult<i64> {
    match ledger::open(db, tier.limits(config), now, opening).await? {
        Ok(id) => Ok(id),
        Err(refusal) => Err(refused(tier, refusal)),
    }
}

/// The 429 of a quota refusal, counted.
pub fn refused(tier: Tier, refusal: Refusal) -> ApiError {
    metrics::counter!("echolia_llm_quota_refusals_total", "tier" => tier.as_str(), "limit" => refusal.limit())
        .increment(1);
    ApiError::Client {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "quota_exceeded",
        message: format!(
            "the {} tier's {} quota is used up; retry later",
            tier.as_str(),
            refusal.limit().replace('_', " ")
        ),
        retry_after: Some(refusal.retry_after()),
    }
}
