//! The `devices` view as stored: one row per device.

use libsql::{Connection, Row, Value};
use uuid::Uuid;

use crate::clock::{parse_rfc3339, rfc3339};
use crate::events::device::{DeviceProfile, DeviceType};
use crate::projection::devices::DeviceRow;
use crate::store::{query_opt, StoreError, StoreResult};

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
