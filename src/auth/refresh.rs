//! `POST /auth/refresh`: rotation with reuse detection. The presented refresh
//! token is consumed; presenting a consumed one again means it was copied,
//! so every token of its device is revoked (401 `refresh_token_reused`).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use crate::error::ErrorResponse;
use crate::error::{ApiError, ApiResult};
use crate::http::ApiJson;
use crate::identity::sessions::{self, RefreshState};
use crate::identity::status::{self, DeviceStatus};
use crate::identity::tokens::TokenType;
use crate::identity::TokenResponse;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Exchange a refresh token for a new access and refresh token.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair; the presented refresh token is consumed", body = TokenResponse),
        (status = 401, description = "invalid_token, token_expired, device_revoked, token_revoked or refresh_token_reused", body = ErrorResponse),
        (status = 422, description = "refresh_token missing", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all, fields(user_id, device_id))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<(super::NoStore, Json<TokenResponse>)> {
    let now = state.clock.now();
    let claims = state.auth.keys().verify(&req.refresh_token, TokenType::Refresh, now)?;
    let span = tracing::Span::current();
    span.record("user_id", tracing::field::display(claims.sub));
    span.record("device_id", tracing::field::display(claims.did));
    let db = state.users.get(claims.sub).await?;

    let tx = db.begin_write().await?;
    match status::load(&tx, claims.did).await? {
        Some(DeviceStatus::Active) => {}
        Some(DeviceStatus::Revoked) => {
            return Err(ApiError::unauthorized("device_revoked", "this device has been revoked"))
        }
        Some(DeviceStatus::TokensRevoked) => return Err(tokens_revoked()),
        None => return Err(ApiError::unauthorized("invalid_token", "the token names an unknown device")),
    }
    match sessions::refresh_state(&tx, &req.refresh_token).await? {
        RefreshState::Live { device } if device == claims.did => {
            sessions::consume_refresh(&tx, &req.refresh_token, device, now).await?;
            let tokens = state.auth.issue_session(&tx, claims.sub, device, now).await?;
            tx.commit().await?;
            Ok((super::NO_STORE, Json(tokens)))
        }
        RefreshState::Consumed { device } if device == claims.did => {
            sessions::revoke_all_tokens(&tx, device, now).await?;
            tx.commit().await?;
            state.auth.statuses().settle(claims.sub, device, DeviceStatus::TokensRevoked);
            tracing::warn!("refresh token reused: every token of the device revoked");
            Err(ApiError::unauthorized(
                "refresh_token_reused",
                "this refresh token was already used; every token of this device has been revoked",
            ))
        }
        RefreshState::Revoked { .. } => Err(tokens_revoked()),
        _ => Err(ApiError::unauthorized("invalid_token", "this refresh token is not known")),
    }
}

fn tokens_revoked() -> ApiError {
    ApiError::unauthorized("token_revoked", "every token of this device has been revoked")
}
