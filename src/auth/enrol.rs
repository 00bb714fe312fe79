//! Devices joining: `POST /auth/register` (a new anonymous user and its first
//! device) and `POST /auth/pair-device` (an existing device enrols another).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use uuid::Uuid;

use super::keys;
use crate::error::{ApiError, ApiResult};
use crate::events::device::{DeviceAction, DeviceProfile, DeviceType};
use crate::events::LogTx;
use crate::http::ApiJson;
use crate::identity::{sessions, status, TokenResponse};
use crate::state::AppState;
use crate::state::UserAuth;
use crate::store::provisioning;
use crate::views::write::record_device;

pub const MAX_DEVICE_NAME_CHARS: usize = 100;
pub const MAX_PLATFORM_CHARS: usize = 64;
pub const MAX_PUBLIC_KEY_BYTES: usize = 4 * 1024;
pub const MAX_CAPABILITIES_BYTES: usize = 4 * 1024;
pub const MAX_KEY_ENVELOPE_BYTES: usize = 64 * 1024;

type Capabilities = serde_json::Map<String, serde_json::Value>;

/// A new anonymous user's first device.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    /// 1–100 characters.
    pub device_name: String,
    pub device_type: DeviceType,
    /// e.g. `macos`, `ios`, `android`; 1–64 characters.
    pub platform: String,
    /// The device's public key (PEM or base64), at most 4 KiB.
    pub public_key: String,
    /// Free-form flags such as `{"local_embeddings": true}`, at most 4 KiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub capabilities: Option<Capabilities>,
}

/// A device enrolled by an existing device of the same user.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PairDeviceRequest {
    pub device_name: String,
    pub device_type: DeviceType,
    pub platform: String,
    pub public_key: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub capabilities: Option<Capabilities>,
    /// The user key sealed to the new device's public key: standard base64, at most 64 KiB decoded.
    #[serde(default)]
    pub key_envelope: Option<String>,
}

/// Register an anonymous user with its first device.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "User and device created", body = TokenResponse),
        (status = 400, description = "Malformed JSON", body = crate::error::ErrorResponse),
        (status = 413, description = "Body over 1 MiB", body = crate::error::ErrorResponse),
        (status = 415, description = "Not `application/json`", body = crate::error::ErrorResponse),
        (status = 422, description = "A field is missing or invalid", body = crate::error::ErrorResponse),
        (status = 429, description = "Too many registrations from this address (see `Retry-After`)", body = crate::error::ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, super::NoStore, Json<TokenResponse>)> {
    let profile = profile(req.device_name, req.device_type, req.platform, req.public_key, req.capabilities)?;
    let now = state.clock.now();
    let (user_id, device_id) = (Uuid::new_v4(), Uuid::new_v4());

    // In the ledger first, so a crash from here on leaves nothing for good (store::provisioning).
    provisioning::begin_create(&state.control, user_id, now).await?;
    let db = match state.users.create(user_id).await {
        Ok(db) => db,
        Err(err) => {
            forget_registration(&state, user_id, false).await;
            return Err(err.into());
        }
    };
    let written = async {
        let mut tx = LogTx::begin(&db).await?;
        record_device(&mut tx, device_id, device_id, DeviceAction::Registered(profile), now).await?;
        sessions::open(&tx, device_id, now).await?;
        let tokens = state.auth.issue_session(&tx, user_id, device_id, now).await?;
        tx.commit().await?;
        provisioning::finish_create(&state.control, user_id, now).await?;
        Ok::<_, crate::store::StoreError>(tokens)
    }
    .await;
    drop(db);

    let tokens = match written {
        Ok(tokens) => tokens,
        Err(err) => {
            forget_registration(&state, user_id, true).await;
            return Err(err.into());
        }
    };
    tracing::info!(%user_id, %device_id, "user registered");
    Ok((StatusCode::CREATED, super::NO_STORE, Json(tokens)))
}

/// A registration that did not finish leaves nothing behind: its database
/// goes, then its ledger row. Whatever fails here stays in the ledger, for
/// the sweep at the next start.
///
/// `maybe_recorded`: the failure may be a lost answer to the step that adds
/// the user to the directory (a remote commit that went through). Such a user
/// keeps its database (a directory row without one would break every
/// operator command); if the directory cannot be read now, the sweep decides.
async fn forget_registration(state: &AppState, user_id: Uuid, maybe_recorded: bool) {
    if maybe_recorded {
        match provisioning::in_directory(&state.control, user_id).await {
            Ok(false) => {}
            Ok(true) => return,
            Err(err) => {
                tracing::warn!(error = %err, %user_id, "a failed registration stays in the ledger for the next sweep");
                return;
            }
        }
    }
    if let Err(cleanup) = state.users.delete(user_id).await {
        tracing::error!(error = %cleanup, %user_id, "could not remove the database of a failed registration");
        return;
    }
    if let Err(cleanup) = provisioning::finish(&state.control, user_id).await {
        tracing::warn!(error = %cleanup, %user_id, "a failed registration's ledger row stays for the next sweep");
    }
}

/// Enrol a new device directly from an existing one (e.g. after scanning its QR code).
#[utoipa::path(post, path = "/auth/pair-device", tag = "auth", request_body = PairDeviceRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Device enrolled; tokens for the new device", body = TokenResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = crate::error::ErrorResponse),
        (status = 413, description = "Body over 1 MiB or key envelope over 64 KiB", body = crate::error::ErrorResponse),
        (status = 422, description = "A field is missing or invalid", body = crate::error::ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn pair_device(
    State(state): State<AppState>,
    auth: UserAuth,
    ApiJson(req): ApiJson<PairDeviceRequest>,
) -> ApiResult<(StatusCode, super::NoStore, Json<TokenResponse>)> {
    let profile = profile(req.device_name, req.device_type, req.platform, req.public_key, req.capabilities)?;
    let envelope = req.key_envelope.as_deref().map(key_envelope).transpose()?;
    let now = state.clock.now();
    let new_device = Uuid::new_v4();

    let mut tx = LogTx::begin(&auth.db).await?;
    // The approver may have been revoked since its token was checked.
    status::require_active_in(&tx, auth.device_id).await?;
    record_device(&mut tx, auth.device_id, new_device, DeviceAction::Paired(profile), now).await?;
    sessions::open(&tx, new_device, now).await?;
    if let Some(envelope) = envelope {
        let epoch = keys::current_epoch(&tx).await?;
        keys::store_envelope(&tx, new_device, epoch, &envelope, now).await?;
    }
    let tokens = state.auth.issue_session(&tx, auth.user_id, new_device, now).await?;
    tx.commit().await?;
    tracing::info!(new_device_id = %new_device, "device paired");
    Ok((StatusCode::CREATED, super::NO_STORE, Json(tokens)))
}

/// Checks what a device says about itself.
pub fn profile(
    device_name: String,
    device_type: DeviceType,
    platform: String,
    public_key: String,
    capabilities: Option<Capabilities>,
) -> ApiResult<DeviceProfile> {
    let platform = platform.trim().to_owned();
    if platform.is_empty() || platform.chars().count() > MAX_PLATFORM_CHARS {
        return Err(ApiError::invalid_field("platform", format!("must be 1 to {MAX_PLATFORM_CHARS} characters")));
    }
    if public_key.trim().is_empty() {
        return Err(ApiError::invalid_field("public_key", "must not be empty"));
    }
    if public_key.len() > MAX_PUBLIC_KEY_BYTES {
        return Err(ApiError::invalid_field("public_key", format!("must be at most {MAX_PUBLIC_KEY_BYTES} bytes")));
    }
    Ok(DeviceProfile {
        device_name: device_name_field(device_name)?,
        device_type,
        platform,
        public_key,
        capabilities: capabilities_field(capabilities.unwrap_or_default())?,
    })
}

pub fn device_name_field(name: String) -> ApiResult<String> {
    let name = name.trim().to_owned();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_DEVICE_NAME_CHARS {
        return Err(ApiError::invalid_field("device_name", format!("must be 1 to {MAX_DEVICE_NAME_CHARS} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid_field("device_name", "must not contain control characters"));
    }
    Ok(name)
}

pub fn capabilities_field(capabilities: Capabilities) -> ApiResult<Capabilities> {
    let size = serde_json::to_vec(&capabilities).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_CAPABILITIES_BYTES {
        return Err(ApiError::invalid_field("capabilities", format!("must be at most {MAX_CAPABILITIES_BYTES} bytes")));
    }
    Ok(capabilities)
}

/// Decodes a base64 key envelope: 422 when not base64, 413 when too large.
pub fn key_envelope(text: &str) -> ApiResult<Vec<u8>> {
    if text.len() > MAX_KEY_ENVELOPE_BYTES.div_ceil(3) * 4 {
        return Err(envelope_too_large());
    }
    let bytes = STANDARD.decode(text).map_err(|_| ApiError::invalid_field("key_envelope", "is not standard base64"))?;
    if bytes.is_empty() {
        return Err(ApiError::invalid_field("key_envelope", "must not be empty"));
    }
    if bytes.len() > MAX_KEY_ENVELOPE_BYTES {
        return Err(envelope_too_large());
    }
    Ok(bytes)
}

fn envelope_too_large() -> ApiError {
    ApiError::too_large(
        "key_envelope_too_large",
        format!("key_envelope must be at most {MAX_KEY_ENVELOPE_BYTES} bytes"),
    )
}
