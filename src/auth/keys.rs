//! Key envelopes: the user key sealed by one device to another device's
//! public key. The server stores the sealed bytes and never anything else.

use chrono::{DateTime, Utc};
use libsql::Connection;
use uuid::Uuid;

use crate::clock::rfc3339;
use crate::store::{query_opt, StoreResult};

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
