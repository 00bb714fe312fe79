//! Session state of devices that is not part of the event log: refresh
//! tokens (stored as SHA-256 hashes only), last-seen times, and the switch
//! that kills every token of a device after a refresh token was reused.

use chrono::{DateTime, Utc};
use libsql::Connection;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::rfc3339;
use crate::store::{query_opt, StoreResult};

/// What the store knows of a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshState {
    /// Never issued here (or pruned after expiry).
    Unknown,
    /// Issued to `device` and still usable.
    Live { device: Uuid },
    /// Already exchanged once: presenting it again means it was stolen.
    Consumed { device: Uuid },
    /// Killed along with every token of its device.
    Revoked { device: Uuid },
}

pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Starts the session row of a new device.
pub async fn open(conn: &Connection, device: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO device_sessions (device_id, last_seen_at) VALUES (?1, ?2)",
        (device.to_string(), rfc3339(now)),
    )
    .await?;
    Ok(())
}

pub async fn store_refresh(
    conn: &Connection,
    token: &str,
    device: Uuid,
    issued_at: i64,
    expires_at: i64,
) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO refresh_tokens (token_hash, device_id, issued_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        libsql::params![token_hash(token), device.to_string(), issued_at, expires_at],
    )
    .await?;
    Ok(())
}

/// Whether any refresh token was ever issued to the device (a pairing's
/// device was collected).
pub async fn has_refresh_tokens(conn: &Connection, device: Uuid) -> StoreResult<bool> {
    Ok(query_opt(conn, "SELECT 1 FROM refresh_tokens WHERE device_id = ?1 LIMIT 1", [device.to_string()])
        .await?
        .is_some())
}

pub async fn refresh_state(conn: &Connection, token: &str) -> StoreResult<RefreshState> {
    let row = query_opt(
        conn,
        "SELECT device_id, consumed_at, revoked_at FROM refresh_tokens WHERE token_hash = ?1",
        [token_hash(token)],
    )
    .await?;
    let Some(row) = row else { return Ok(RefreshState::Unknown) };
    let device: String = row.get(0)?;
    let Ok(device) = Uuid::parse_str(&device) else { return Ok(RefreshState::Unknown) };
    let consumed: Option<i64> = row.get(1)?;
    let revoked: Option<i64> = row.get(2)?;
    Ok(match (consumed, revoked) {
        (_, Some(_)) => RefreshState::Revoked { device },
        (Some(_), None) => RefreshState::Consumed { device },
        (None, None) => RefreshState::Live { device },
    })
}

/// Marks a refresh token used, and forgets this device's expired ones.
pub async fn consume_refresh(conn: &Connection, token: &str, device: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
    conn.execute(
        "UPDATE refresh_tokens SET consumed_at = ?2 WHERE token_hash = ?1",
        libsql::params![token_hash(token), now.timestamp()],
    )
    .await?;
    conn.execute(
        "DELETE FROM refresh_tokens WHERE device_id = ?1 AND expires_at <= ?2",
        libsql::params![device.to_string(), now.timestamp()],
    )
    .await?;
    Ok(())
}

/// Makes every refresh token of a device unusable.
pub async fn revoke_refresh_tokens(conn: &Connection, device: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
    conn.execute(
        "UPDATE refresh_tokens SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
        libsql::params![device.to_string(), now.timestamp()],
    )
    .await?;
    Ok(())
}

/// After theft was detected: every token of the device stops working.
pub async fn revoke_all_tokens(conn: &Connection, device: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
    revoke_refresh_tokens(conn, device, now).await?;
    conn.execute(
        "UPDATE device_sessions SET tokens_revoked_at = ?2 WHERE device_id = ?1",
        (device.to_string(), rfc3339(now)),
    )
    .await?;
    Ok(())
}

pub async fn touch(conn: &Connection, device: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
    conn.execute(
        "UPDATE device_sessions SET last_seen_at = ?2 WHERE device_id = ?1",
        (device.to_string(), rfc3339(now)),
    )
    .await?;
    Ok(())
}
