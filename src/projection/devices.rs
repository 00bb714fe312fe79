//! The `devices` read model: a pure fold of `device` events, and the rows
//! that store it.

use chrono::{DateTime, Utc};
use libsql::{Connection, Row, Value};
use uuid::Uuid;

use crate::clock::{parse_rfc3339, rfc3339};
use crate::events::device::{DeviceAction, DeviceProfile, DeviceType};
use crate::events::{Kind, StoredEvent};
use crate::store::{query_opt, StoreError, StoreResult};

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

/// The stored columns of the `devices` view, in the order of [`values`].
pub const COLUMNS: &str = "device_id, device_name, device_type, platform, public_key, capabilities, created_at, \
                       paired_by, revoked_at, revoked_by, version, updated_seq";

pub async fn load(conn: &Connection, device_id: Uuid) -> StoreResult<Option<DeviceRow>> {
    let sql = format!("SELECT {COLUMNS} FROM devices WHERE device_id = ?1");
    query_opt(conn, &sql, [device_id.to_string()]).await?.map(|row| decode(&row)).transpose()
}

/// Every device of the user, oldest first.
pub async fn list(conn: &Connection) -> StoreResult<Vec<DeviceRow>> {
    let mut rows = conn.query(&format!("SELECT {COLUMNS} FROM devices ORDER BY created_at, device_id"), ()).await?;
    let mut devices = Vec::new();
    while let Some(row) = rows.next().await? {
        devices.push(decode(&row)?);
    }
    Ok(devices)
}

pub async fn save(conn: &Connection, row: &DeviceRow) -> StoreResult<()> {
    conn.execute(
        &format!(
            "INSERT OR REPLACE INTO devices ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        values(row)?,
    )
    .await?;
    Ok(())
}

/// The column values a row is stored as, in the order of [`COLUMNS`]; `save`
/// writes exactly these, and replay compares and hashes them.
pub fn values(row: &DeviceRow) -> StoreResult<Vec<Value>> {
    let text = |s: &str| Value::Text(s.to_owned());
    let uuid = |id: Option<Uuid>| id.map_or(Value::Null, |id| Value::Text(id.to_string()));
    Ok(vec![
        Value::Text(row.device_id.to_string()),
        text(&row.profile.device_name),
        text(row.profile.device_type.as_str()),
        text(&row.profile.platform),
        text(&row.profile.public_key),
        Value::Text(serde_json::Value::Object(row.profile.capabilities.clone()).to_string()),
        Value::Text(rfc3339(row.created_at)),
        uuid(row.paired_by),
        row.revoked_at.map_or(Value::Null, |at| Value::Text(rfc3339(at))),
        uuid(row.revoked_by),
        Value::try_from(row.version)?,
        Value::try_from(row.updated_seq)?,
    ])
}

fn decode(row: &Row) -> StoreResult<DeviceRow> {
    let id: String = row.get(0)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("device {id}: {what}"));
    let uuid = |text: String, what: &str| Uuid::parse_str(&text).map_err(|_| corrupt(what));
    let time = |text: String, what: &str| parse_rfc3339(&text).ok_or_else(|| corrupt(what));
    let device_type: String = row.get(2)?;
    let capabilities: String = row.get(5)?;
    let serde_json::Value::Object(capabilities) =
        serde_json::from_str(&capabilities).map_err(|_| corrupt("capabilities"))?
    else {
        return Err(corrupt("capabilities"));
    };
    Ok(DeviceRow {
        device_id: uuid(id.clone(), "device_id")?,
        profile: DeviceProfile {
            device_name: row.get(1)?,
            device_type: DeviceType::parse(&device_type).ok_or_else(|| corrupt("device_type"))?,
            platform: row.get(3)?,
            public_key: row.get(4)?,
            capabilities,
        },
        created_at: time(row.get(6)?, "created_at")?,
        paired_by: row.get::<Option<String>>(7)?.map(|t| uuid(t, "paired_by")).transpose()?,
        revoked_at: row.get::<Option<String>>(8)?.map(|t| time(t, "revoked_at")).transpose()?,
        revoked_by: row.get::<Option<String>>(9)?.map(|t| uuid(t, "revoked_by")).transpose()?,
        version: row.get(10)?,
        updated_seq: row.get(11)?,
    })
}
