//! The LLM proxy: OpenAI-compatible chat completions (streamed or not),
//! embeddings and the model list, in front of OpenAI-compatible servers and
//! Anthropic's Messages API; usage per request in the user's database,
//! quotas per tier, and an Oblivious HTTP gateway (`/llm/ohttp`) that
//! carries the same requests encrypted to this service.
//!
//! Nothing of a prompt or a completion is stored, logged, put in a metrics
//! label or an error message: the pure parts (`sse`, `usage`, `anthropic`,
//! `quota`) see the content only to count and translate it.

pub mod anthropic;
pub mod chat;
pub mod gateway;
pub mod relay;
pub mod sse;
pub mod usage_api;

// Shared with the fallback embeddings (`embeddings`), so they live a layer down.
pub use crate::inference::{call, ledger, quota, upstream, usage};

use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::http::BodyLimit;
use crate::state::{AppState, UserAuth};
use quota::Tier;

/// Largest request body on `/llm/*` (long conversations).
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The routes an OHTTP request may reach: the proxy's own.
pub fn proxy_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(chat::chat_completions))
        .routes(routes!(chat::embeddings))
        .routes(routes!(chat::models))
        .routes(routes!(usage_api::usage))
}

pub fn router() -> OpenApiRouter<AppState> {
    let limit = BodyLimit {
        bytes: BODY_LIMIT,
        code: "body_too_large",
        message: "the request body is larger than this endpoint accepts",
    };
    limit.apply(proxy_router().routes(routes!(gateway::keys)).routes(routes!(gateway::ohttp)))
}

/// The tier quotas are taken from (`inference::tier`).
pub async fn tier(state: &AppState, auth: &UserAuth) -> Result<Tier, ApiError> {
    crate::inference::tier(&state.control, auth.user_id, state.clock.now(), state.stores.live).await
}

/// 503 `not_configured` when no upstream is set.
pub fn require_configured(state: &AppState) -> Result<(), ApiError> {
    if state.config.llm.is_configured() {
        return Ok(());
    }
    Err(ApiError::client(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_configured",
        "the LLM proxy is not configured: set LLM_BASE_URL (with LLM_PROVIDER and LLM_API_KEY) or LLM_MODELS_FILE",
    ))
}
