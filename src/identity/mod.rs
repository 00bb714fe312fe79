//! Who is calling: the token keys, refresh sessions, device statuses (with
//! their cache), pairing sessions and the JWT secret. Every area relies on
//! these; the `auth` area's handlers are built on them.

pub mod pairings;
pub mod secret;
pub mod sessions;
pub mod status;
pub mod tokens;

use chrono::{DateTime, Utc};
use libsql::Connection;
use serde::Serialize;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::store::{StoreError, StoreResult, UserDb};
use status::{DeviceStatus, StatusCache};
use tokens::{TokenKeys, TokenType, ACCESS_TTL};

/// Token keys and the device-status cache.
pub struct Auth {
    keys: TokenKeys,
    statuses: StatusCache,
    pairing_codes: pairings::CodeKey,
}

/// What registration, enrolment and refresh answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub user_id: Uuid,
    pub device_id: Uuid,
    pub access_token: String,
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Lifetime of the access token, in seconds.
    pub expires_in: i64,
}

impl Auth {
    /// Signs with `secret`; also verifies tokens (and finds pairing codes)
    /// of the `previous` secrets, newest first.
    pub fn new(secret: &[u8], previous: &[&[u8]]) -> Result<Self, hmac::digest::InvalidLength> {
        let pairing_codes = pairings::CodeKey::new(secret, previous)?;
        Ok(Self { keys: TokenKeys::new(secret, previous)?, statuses: StatusCache::default(), pairing_codes })
    }

    /// Hashes pairing codes for storage and lookup.
    pub fn pairing_codes(&self) -> &pairings::CodeKey {
        &self.pairing_codes
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    pub fn statuses(&self) -> &StatusCache {
        &self.statuses
    }

    /// Issues an access and a refresh token for a device, storing the
    /// refresh token's hash in the caller's transaction.
    pub async fn issue_session(
        &self,
        conn: &Connection,
        user: Uuid,
        device: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<TokenResponse> {
        let signing = |err: jsonwebtoken::errors::Error| StoreError::Corrupt(format!("cannot sign a token: {err}"));
        let (access_token, _) = self.keys.issue(TokenType::Access, user, device, now).map_err(signing)?;
        let (refresh_token, refresh) = self.keys.issue(TokenType::Refresh, user, device, now).map_err(signing)?;
        sessions::store_refresh(conn, &refresh_token, device, refresh.iat, refresh.exp).await?;
        Ok(TokenResponse {
            user_id: user,
            device_id: device,
            access_token,
            refresh_token,
            token_type: "bearer",
            expires_in: ACCESS_TTL.num_seconds(),
        })
    }

    /// The status of a device, from the cache or its user's database.
    pub async fn device_status(&self, db: &UserDb, device: Uuid) -> StoreResult<Option<DeviceStatus>> {
        let user = db.user_id();
        if let Some(status) = self.statuses.get(user, device) {
            return Ok(Some(status));
        }
        let status = status::load(&*db.read().await?, device).await?;
        if let Some(status) = status {
            self.statuses.remember(user, device, status);
        }
        Ok(status)
    }

    /// Fails unless the device may act: 401 `device_revoked`, `token_revoked`
    /// or `invalid_token`.
    pub async fn require_active(&self, db: &UserDb, device: Uuid) -> ApiResult<()> {
        match self.device_status(db, device).await? {
            Some(DeviceStatus::Active) => Ok(()),
            Some(DeviceStatus::Revoked) => {
                Err(ApiError::unauthorized("device_revoked", "this device has been revoked"))
            }
            Some(DeviceStatus::TokensRevoked) => Err(ApiError::unauthorized(
                "token_revoked",
                "every token of this device was revoked after a refresh token was reused; pair the device again",
            )),
            None => Err(ApiError::unauthorized("invalid_token", "the token names an unknown device")),
        }
    }
}
