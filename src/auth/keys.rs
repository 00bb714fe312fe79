//! Key envelopes: the user key sealed by one device to another device's
//! public key. The server stores the sealed bytes and never anything else.

use std::collections::HashSet;

use axum::extract::State;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use libsql::Connection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::enrol::key_envelope;
use crate::clock::rfc3339;
use crate::error::ErrorResponse;
use crate::error::{ApiError, ApiResult};
use crate::events::device::DeviceAction;
use crate::events::LogTx;
use crate::http::ApiJson;
use crate::state::AppState;
use crate::state::UserAuth;
use crate::store::{query_opt, StoreResult};
use crate::views::devices as device_view;
use crate::views::write::record_device;

/// The user's current key epoch (1 until the first rotation).
pub async fn current_epoch(conn: &Connection) -> StoreResult<u64> {
    let row = query_opt(conn, "SELECT COALESCE(MAX(key_epoch), 1) FROM key_envelopes", ()).await?;
    Ok(match row {
        Some(row) => row.get(0)?,
        None => 1,
    })
}

pub async fn store_envelope(
    conn: &Connection,
    device: Uuid,
    epoch: u64,
    envelope: &[u8],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO key_envelopes (device_id, key_epoch, envelope, created_at) VALUES (?1, ?2, ?3, ?4)",
        libsql::params![device.to_string(), epoch, envelope.to_vec(), rfc3339(now)],
    )
    .await?;
    Ok(())
}

/// The envelope of one device at one epoch.
pub async fn envelope_of(conn: &Connection, device: Uuid, epoch: u64) -> StoreResult<Option<Vec<u8>>> {
    let row = query_opt(
        conn,
        "SELECT envelope FROM key_envelopes WHERE device_id = ?1 AND key_epoch = ?2",
        libsql::params![device.to_string(), epoch],
    )
    .await?;
    Ok(match row {
        Some(row) => Some(row.get(0)?),
        None => None,
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeysResponse {
    pub key_epoch: u64,
    /// This device's sealed user key at `key_epoch` (standard base64); null
    /// for a device that holds the key itself (the first device, before any rotation).
    pub key_envelope: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RotateRequest {
    /// The current epoch plus one.
    pub key_epoch: u64,
    /// One envelope for every active device, each sealed to that device's public key.
    pub envelopes: Vec<DeviceEnvelope>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DeviceEnvelope {
    pub device_id: Uuid,
    /// Standard base64, at most 64 KiB decoded.
    pub key_envelope: String,
}

/// The calling device's key envelope at the current epoch.
#[utoipa::path(get, path = "/auth/keys", tag = "keys", security(("bearer" = [])),
    responses(
        (status = 200, description = "Current epoch and this device's envelope", body = KeysResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn show(auth: UserAuth) -> ApiResult<Json<KeysResponse>> {
    let conn = auth.db.read().await?;
    let key_epoch = current_epoch(&conn).await?;
    let envelope = envelope_of(&conn, auth.device_id, key_epoch).await?;
    Ok(Json(KeysResponse { key_epoch, key_envelope: envelope.map(|e| STANDARD.encode(e)) }))
}

/// Rotate the user key: a new envelope for every active device, epoch + 1.
#[utoipa::path(post, path = "/auth/keys/rotate", tag = "keys", security(("bearer" = [])),
    request_body = RotateRequest,
    responses(
        (status = 200, description = "Rotated; this device's new envelope", body = KeysResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 409, description = "`key_epoch_mismatch`: key_epoch is not the current epoch plus one", body = ErrorResponse),
        (status = 413, description = "An envelope over 64 KiB", body = ErrorResponse),
        (status = 422, description = "A device missing, named twice, unknown or revoked; or an envelope not base64", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn rotate(
    State(state): State<AppState>,
    auth: UserAuth,
    ApiJson(req): ApiJson<RotateRequest>,
) -> ApiResult<Json<KeysResponse>> {
    let mut sealed = Vec::with_capacity(req.envelopes.len());
    for (i, entry) in req.envelopes.iter().enumerate() {
        let bytes = key_envelope(&entry.key_envelope)
            .map_err(|err| rename_field(err, "key_envelope", &format!("envelopes[{i}].key_envelope")))?;
        sealed.push((entry.device_id, bytes));
    }
    let now = state.clock.now();
    let mut tx = LogTx::begin(&auth.db).await?;
    crate::identity::status::require_active_in(&tx, auth.device_id).await?;
    let devices = device_view::list(&tx).await?;
    let mut named = HashSet::new();
    for (i, (device, _)) in sealed.iter().enumerate() {
        let field = format!("envelopes[{i}].device_id");
        match devices.iter().find(|d| d.device_id == *device) {
            None => return Err(ApiError::invalid_field(&field, format!("{device} is not a device of this user"))),
            Some(d) if d.is_revoked() => {
                return Err(ApiError::invalid_field(
                    &field,
                    format!("{device} is revoked and must not get the new key"),
                ))
            }
            Some(_) if !named.insert(*device) => {
                return Err(ApiError::invalid_field(&field, format!("{device} is named twice")))
            }
            Some(_) => {}
        }
    }
    if let Some(missing) = devices.iter().find(|d| !d.is_revoked() && !named.contains(&d.device_id)) {
        return Err(ApiError::invalid_field(
            "envelopes",
            format!("active device {} has no envelope; every active device needs one", missing.device_id),
        ));
    }
    let current = current_epoch(&tx).await?;
    if req.key_epoch != current + 1 {
        return Err(ApiError::conflict(
            "key_epoch_mismatch",
            format!("key_epoch must be {} (the current epoch {current} plus one)", current + 1),
        ));
    }
    for (device, envelope) in &sealed {
        store_envelope(&tx, *device, req.key_epoch, envelope, now).await?;
    }
    let action = DeviceAction::KeysRotated { key_epoch: req.key_epoch };
    record_device(&mut tx, auth.device_id, auth.device_id, action, now).await?;
    tx.commit().await?;
    tracing::info!(key_epoch = req.key_epoch, devices = sealed.len(), "user key rotated");
    let mine = sealed.into_iter().find(|(device, _)| *device == auth.device_id).map(|(_, e)| STANDARD.encode(e));
    Ok(Json(KeysResponse { key_epoch: req.key_epoch, key_envelope: mine }))
}

/// Points a field error at the field's place in the request.
fn rename_field(err: ApiError, from: &str, to: &str) -> ApiError {
    match err {
        ApiError::Client { status, code, message, retry_after } => {
            ApiError::Client { status, code, message: message.replacen(from, to, 1), retry_after }
        }
        other => other,
    }
}
