//! `UserAuth`: the extractor every authenticated handler takes, so none can
//! forget to check the token or the device behind it.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::identity::sessions;
use crate::identity::tokens::TokenType;
use crate::state::AppState;
use crate::store::{StoreError, UserDb};

/// An authenticated device of a user, with that user's database.
pub struct UserAuth {
    pub user_id: Uuid,
    pub device_id: Uuid,
    pub db: Arc<UserDb>,
}

impl FromRequestParts<AppState> for UserAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        let now = state.clock.now();
        let claims = state.auth.keys().verify(token, TokenType::Access, now)?;
        // A deleted account's database is gone: StoreError::UserNotFound answers 401.
        let db = state.users.get(claims.sub).await?;
        state.auth.require_active(&db, claims.did).await?;
        state.metrics.user_active(claims.sub, now);

        let span = tracing::Span::current();
        span.record("user_id", tracing::field::display(claims.sub));
        span.record("device_id", tracing::field::display(claims.did));
        if state.auth.statuses().touch_due(claims.sub, claims.did) {
            let (db, device) = (db.clone(), claims.did);
            tokio::spawn(state.metrics.scope(async move {
                let touched = match db.read().await {
                    Ok(conn) => sessions::touch(&conn, device, now).await,
                    Err(err) => Err(err),
                };
                match touched {
                    Ok(()) | Err(StoreError::UserNotFound(_)) => {}
                    Err(err) => tracing::warn!(error = %err, "could not record last_seen_at"),
                }
            }));
        }
        Ok(UserAuth { user_id: claims.sub, device_id: claims.did, db })
    }
}

fn bearer_token(parts: &Parts) -> ApiResult<&str> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing_token",
            "this endpoint needs an `Authorization: Bearer <access_token>` header",
        ));
    };
    let value = value.to_str().unwrap_or_default();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(ApiError::unauthorized("invalid_token", "the Authorization header is not `Bearer <access_token>`")),
    }
}
