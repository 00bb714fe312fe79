//! The user's devices: list, rename, revoke. Every change is a `device`
//! event appended with its projection in one transaction.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use libsql::Connection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::enrol::{capabilities_field, device_name_field};
use crate::clock::parse_rfc3339;
use crate::error::ErrorResponse;
use crate::error::{ApiError, ApiResult};
use crate::events::device::{DeviceAction, DeviceType};
use crate::events::LogTx;
use crate::http::{ApiJson, ApiPath};
use crate::identity::sessions;
use crate::identity::status::DeviceStatus;
use crate::projection::devices::DeviceRow;
use crate::state::AppState;
use crate::state::UserAuth;
use crate::store::StoreResult;
use crate::views::devices;
use crate::views::write::record_device;

/// A device as the apps see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    pub device_id: Uuid,
    pub device_name: String,
    pub device_type: DeviceType,
    pub platform: String,
    pub public_key: String,
    #[schema(value_type = Object)]
    pub capabilities: serde_json::Map<String, serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// True for the device whose token made this request.
    pub current: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

/// New name and/or capabilities of the calling device.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpdateDeviceRequest {
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub capabilities: Option<serde_json::Map<String, serde_json::Value>>,
}

/// List the user's devices, revoked ones included.
#[utoipa::path(get, path = "/auth/devices", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every device of the user, oldest first", body = DeviceList),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn list(auth: UserAuth) -> ApiResult<Json<DeviceList>> {
    let conn = auth.db.read().await?;
    let last_seen = last_seen_times(&conn).await?;
    let devices = devices::list(&conn)
        .await?
        .into_iter()
        .map(|row| {
            let seen = last_seen.get(&row.device_id).copied();
            view(row, seen, auth.device_id)
        })
        .collect();
    Ok(Json(DeviceList { devices }))
}

/// Rename the calling device or change its capabilities.
#[utoipa::path(patch, path = "/auth/devices/current", tag = "auth", security(("bearer" = [])),
    request_body = UpdateDeviceRequest,
    responses(
        (status = 200, description = "The device after the change", body = DeviceView),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 422, description = "Nothing to change, or an invalid field", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn update_current(
    State(state): State<AppState>,
    auth: UserAuth,
    ApiJson(req): ApiJson<UpdateDeviceRequest>,
) -> ApiResult<Json<DeviceView>> {
    if req.device_name.is_none() && req.capabilities.is_none() {
        return Err(ApiError::unprocessable("validation_failed", "give device_name, capabilities or both"));
    }
    let action = DeviceAction::Updated {
        device_name: req.device_name.map(device_name_field).transpose()?,
        capabilities: req.capabilities.map(capabilities_field).transpose()?,
    };
    let now = state.clock.now();
    let mut tx = LogTx::begin(&auth.db).await?;
    let row = record_device(&mut tx, auth.device_id, auth.device_id, action, now).await?;
    let Some(row) = row.filter(|row| !row.is_revoked()) else {
        return Err(ApiError::unauthorized("device_revoked", "this device has been revoked"));
    };
    let last_seen = last_seen_times(&tx).await?.get(&auth.device_id).copied();
    tx.commit().await?;
    Ok(Json(view(row, last_seen, auth.device_id)))
}

/// Revoke a device: from now on every token of it answers 401 `device_revoked`.
#[utoipa::path(delete, path = "/auth/device/{device_id}", tag = "auth", security(("bearer" = [])),
    params(("device_id" = Uuid, Path, description = "The device to revoke (may be the caller itself)")),
    responses(
        (status = 204, description = "Revoked (also when it already was)"),
        (status = 400, description = "The id is not a UUID", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 404, description = "No such device for this user", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all, fields(target_device_id = %target))]
pub async fn revoke(
    State(state): State<AppState>,
    auth: UserAuth,
    ApiPath(target): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let now = state.clock.now();
    let mut tx = LogTx::begin(&auth.db).await?;
    let Some(current) = devices::load(&tx, target).await? else {
        return Err(ApiError::not_found("device_not_found", format!("no device {target}")));
    };
    if !current.is_revoked() {
        record_device(&mut tx, auth.device_id, target, DeviceAction::Revoked, now).await?;
        sessions::revoke_refresh_tokens(&tx, target, now).await?;
        tx.commit().await?;
        tracing::info!("device revoked");
    }
    state.auth.statuses().settle(auth.user_id, target, DeviceStatus::Revoked);
    Ok(StatusCode::NO_CONTENT)
}

async fn last_seen_times(conn: &Connection) -> StoreResult<HashMap<Uuid, DateTime<Utc>>> {
    let mut rows = conn.query("SELECT device_id, last_seen_at FROM device_sessions", ()).await?;
    let mut times = HashMap::new();
    while let Some(row) = rows.next().await? {
        let id: String = row.get(0)?;
        let seen: String = row.get(1)?;
        if let (Ok(id), Some(seen)) = (Uuid::parse_str(&id), parse_rfc3339(&seen)) {
            times.insert(id, seen);
        }
    }
    Ok(times)
}

fn view(row: DeviceRow, last_seen_at: Option<DateTime<Utc>>, caller: Uuid) -> DeviceView {
    DeviceView {
        current: row.device_id == caller,
        device_id: row.device_id,
        device_name: row.profile.device_name,
        device_type: row.profile.device_type,
        platform: row.profile.platform,
        public_key: row.profile.public_key,
        capabilities: row.profile.capabilities,
        created_at: row.created_at,
        last_seen_at,
        revoked_at: row.revoked_at,
    }
}
