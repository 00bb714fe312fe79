//! The `devices` read model: a pure fold of `device` events.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::device::{DeviceAction, DeviceProfile};
use crate::events::{Kind, StoredEvent};
use crate::store::{StoreError, StoreResult};

/// One device as the view holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub device_id: Uuid,
    pub profile: DeviceProfile,
    pub created_at: DateTime<Utc>,
    pub paired_by: Option<Uuid>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<Uuid>,
    /// How many device events changed this row.
    pub version: u64,
    /// The seq of the latest event that changed it.
    pub updated_seq: u64,
}

impl DeviceRow {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// Folds one `device` event into the current row of its device. Events that
/// change nothing (a second registration, an update after revocation) leave
/// the row as it was, so the fold is total and deterministic.
pub fn apply(current: Option<DeviceRow>, stored: &StoredEvent) -> StoreResult<Option<DeviceRow>> {
    let event = &stored.event;
    if event.kind != Kind::Device {
        return Ok(current);
    }
    let payload = event.payload.as_deref().unwrap_or_default();
    let action = DeviceAction::from_payload(payload)
        .map_err(|err| StoreError::Corrupt(format!("device event seq {}: {err}", stored.seq)))?;
    let bump = |mut row: DeviceRow| {
        row.version += 1;
        row.updated_seq = stored.seq;
        Some(row)
    };
    Ok(match (current, action) {
        (None, DeviceAction::Registered(profile)) | (None, DeviceAction::Paired(profile)) => {
            let paired_by = (stored.device_id != event.aggregate_id).then_some(stored.device_id);
            bump(DeviceRow {
                device_id: event.aggregate_id,
                profile,
                created_at: stored.received_at,
                paired_by,
                revoked_at: None,
                revoked_by: None,
                version: 0,
                updated_seq: 0,
            })
        }
        (Some(mut row), DeviceAction::Updated { device_name, capabilities }) if !row.is_revoked() => {
            if let Some(name) = device_name {
                row.profile.device_name = name;
            }
            if let Some(capabilities) = capabilities {
                row.profile.capabilities = capabilities;
            }
            bump(row)
        }
        (Some(row), DeviceAction::KeysRotated { .. }) if !row.is_revoked() => bump(row),
        (Some(mut row), DeviceAction::Revoked) if !row.is_revoked() => {
            row.revoked_at = Some(stored.received_at);
            row.revoked_by = Some(stored.device_id);
            bump(row)
        }
        (current, _) => current,
    })
}
