//! Pairing sessions in the control database. Every state change is one
//! conditional `UPDATE`, so two racing requests cannot both claim, approve
//! or collect the same pairing.

use chrono::{DateTime, TimeZone, Utc};
use hmac::digest::InvalidLength;
use hmac::{Hmac, Mac};
use libsql::{Connection, Row};
use sha2::Sha256;
use uuid::Uuid;

use crate::clock::rfc3339;
use crate::events::device::DeviceProfile;
use crate::store::{query_opt, StoreError, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Waiting,
    Claimed,
    Approved,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Claimed => "claimed",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Waiting, Self::Claimed, Self::Approved, Self::Rejected].into_iter().find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone)]
pub struct Pairing {
    pub pairing_id: Uuid,
    pub user_id: Uuid,
    pub initiator_device: Uuid,
    pub claim_token_hash: Option<Vec<u8>>,
    pub status: Status,
    pub new_device: Option<DeviceProfile>,
    pub new_device_id: Option<Uuid>,
    pub approver_device: Option<Uuid>,
    pub key_envelope: Option<Vec<u8>>,
    pub delivered: bool,
    pub expires_at: DateTime<Utc>,
}

impl Pairing {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }
}

const COLUMNS: &str = "pairing_id, user_id, initiator_device, claim_token_hash, status, new_device, new_device_id, \
                       approver_device, key_envelope, delivered_at, expires_at";

/// The keys pairing codes are hashed with, derived from the JWT secrets
/// (HMAC-SHA256(secret, "pairing-code")): a copy of `control.db` alone no
/// longer lets anyone try the 2^40 codes offline. New codes are hashed with
/// the current secret's key; a lookup tries the previous secrets' keys too,
/// so a pairing open when the secret rotates stays claimable.
#[derive(Clone)]
pub struct CodeKey {
    current: Hmac<Sha256>,
    previous: Vec<Hmac<Sha256>>,
}

impl CodeKey {
    pub fn new(jwt_secret: &[u8], previous: &[&[u8]]) -> Result<Self, InvalidLength> {
        let derive = |secret: &[u8]| -> Result<Hmac<Sha256>, InvalidLength> {
            let mut derive = Hmac::<Sha256>::new_from_slice(secret)?;
            derive.update(b"pairing-code");
            Hmac::<Sha256>::new_from_slice(&derive.finalize().into_bytes())
        };
        let previous = previous.iter().map(|secret| derive(secret)).collect::<Result<_, _>>()?;
        Ok(Self { current: derive(jwt_secret)?, previous })
    }

    /// What is stored for a code in canonical form (the code never is).
    pub fn hash(&self, code: &str) -> Vec<u8> {
        hash_with(&self.current, code)
    }

    /// The hashes a stored code may have: under the current key, then the previous ones.
    pub fn candidates<'a>(&'a self, code: &'a str) -> impl Iterator<Item = Vec<u8>> + 'a {
        std::iter::once(&self.current).chain(&self.previous).map(move |key| hash_with(key, code))
    }
}

fn hash_with(key: &Hmac<Sha256>, code: &str) -> Vec<u8> {
    let mut mac = key.clone();
    mac.update(code.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Inserts a new waiting pairing; `false` when the code hash is taken (retry with another code).
pub async fn insert(
    conn: &Connection,
    pairing_id: Uuid,
    user: Uuid,
    device: Uuid,
    code_hash: Vec<u8>,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> StoreResult<bool> {
    let inserted = conn
        .execute(
            "INSERT OR IGNORE INTO pairings (pairing_id, user_id, initiator_device, code_hash, status, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, 'waiting', ?5, ?6)",
            libsql::params![
                pairing_id.to_string(),
                user.to_string(),
                device.to_string(),
                code_hash,
                rfc3339(now),
                expires_at.timestamp_millis()
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Open (waiting or claimed, unexpired) pairings of a user, and when the first of them expires.
pub async fn open_pairings(conn: &Connection, user: Uuid, now: DateTime<Utc>) -> StoreResult<(u64, Option<i64>)> {
    let row = query_opt(
        conn,
        "SELECT count(*), min(expires_at) FROM pairings \
         WHERE user_id = ?1 AND status IN ('waiting', 'claimed') AND expires_at > ?2",
        libsql::params![user.to_string(), now.timestamp_millis()],
    )
    .await?;
    match row {
        Some(row) => Ok((row.get(0)?, row.get(1)?)),
        None => Ok((0, None)),
    }
}

/// Approved pairings whose result was never collected and whose time to
/// collect it is over, envelope still kept: (pairing, user, new device, approver).
pub async fn uncollected(conn: &Connection, now: DateTime<Utc>) -> StoreResult<Vec<(Uuid, Uuid, Uuid, Uuid)>> {
    let mut rows = conn
        .query(
            "SELECT pairing_id, user_id, new_device_id, approver_device FROM pairings \
             WHERE status = 'approved' AND delivered_at IS NULL AND key_envelope IS NOT NULL AND expires_at <= ?1 \
             AND new_device_id IS NOT NULL AND approver_device IS NOT NULL",
            [now.timestamp_millis()],
        )
        .await?;
    let mut found = Vec::new();
    while let Some(row) = rows.next().await? {
        let id = |i: i32| -> StoreResult<Uuid> {
            let text: String = row.get(i)?;
            Uuid::parse_str(&text).map_err(|_| StoreError::Corrupt(format!("pairing row: `{text}` is not an id")))
        };
        found.push((id(0)?, id(1)?, id(2)?, id(3)?));
    }
    Ok(found)
}

/// Drops the sealed key of an approved pairing left uncollected past its
/// expiry (its device is revoked first): it can never be delivered now.
pub async fn purge_envelope(conn: &Connection, pairing_id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
    conn.execute(
        "UPDATE pairings SET key_envelope = NULL \
         WHERE pairing_id = ?1 AND status = 'approved' AND delivered_at IS NULL AND expires_at <= ?2",
        libsql::params![pairing_id.to_string(), now.timestamp_millis()],
    )
    .await?;
    Ok(())
}

/// Forgets pairings that expired over a day ago.
pub async fn prune(conn: &Connection, now: DateTime<Utc>) -> StoreResult<()> {
    let cutoff = (now - chrono::Duration::days(1)).timestamp_millis();
    conn.execute("DELETE FROM pairings WHERE expires_at < ?1", [cutoff]).await?;
    Ok(())
}

pub async fn by_code(conn: &Connection, code_hash: &[u8]) -> StoreResult<Option<Pairing>> {
    let sql = format!("SELECT {COLUMNS} FROM pairings WHERE code_hash = ?1");
    query_opt(conn, &sql, [code_hash.to_vec()]).await?.map(|row| decode(&row)).transpose()
}

pub async fn by_id(conn: &Connection, pairing_id: Uuid) -> StoreResult<Option<Pairing>> {
    let sql = format!("SELECT {COLUMNS} FROM pairings WHERE pairing_id = ?1");
    query_opt(conn, &sql, [pairing_id.to_string()]).await?.map(|row| decode(&row)).transpose()
}

/// waiting → claimed, if still waiting and unexpired.
pub async fn claim(
    conn: &Connection,
    pairing_id: Uuid,
    token_hash: Vec<u8>,
    device: &DeviceProfile,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let profile = serde_json::to_string(device).map_err(|err| StoreError::Corrupt(err.to_string()))?;
    let changed = conn
        .execute(
            "UPDATE pairings SET status = 'claimed', claim_token_hash = ?2, new_device = ?3 \
             WHERE pairing_id = ?1 AND status = 'waiting' AND expires_at > ?4",
            libsql::params![pairing_id.to_string(), token_hash, profile, now.timestamp_millis()],
        )
        .await?;
    Ok(changed == 1)
}

/// claimed → approved, if still claimed and unexpired; the result stays
/// collectable until `collect_until`.
pub async fn approve(
    conn: &Connection,
    pairing: &Pairing,
    new_device: Uuid,
    approver: Uuid,
    envelope: &[u8],
    now: DateTime<Utc>,
    collect_until: DateTime<Utc>,
) -> StoreResult<bool> {
    let changed = conn
        .execute(
            "UPDATE pairings SET status = 'approved', new_device_id = ?2, approver_device = ?3, key_envelope = ?4, \
             expires_at = ?6 WHERE pairing_id = ?1 AND status = 'claimed' AND expires_at > ?5",
            libsql::params![
                pairing.pairing_id.to_string(),
                new_device.to_string(),
                approver.to_string(),
                envelope.to_vec(),
                now.timestamp_millis(),
                collect_until.timestamp_millis()
            ],
        )
        .await?;
    Ok(changed == 1)
}

/// Undoes [`approve`] when creating the device failed.
pub async fn unapprove(conn: &Connection, pairing: &Pairing) -> StoreResult<()> {
    conn.execute(
        "UPDATE pairings SET status = 'claimed', new_device_id = NULL, approver_device = NULL, key_envelope = NULL, \
         delivered_at = NULL, expires_at = ?2 WHERE pairing_id = ?1 AND status = 'approved'",
        libsql::params![pairing.pairing_id.to_string(), pairing.expires_at.timestamp_millis()],
    )
    .await?;
    Ok(())
}

/// waiting or claimed → rejected.
pub async fn reject(conn: &Connection, pairing_id: Uuid) -> StoreResult<bool> {
    let changed = conn
        .execute(
            "UPDATE pairings SET status = 'rejected', key_envelope = NULL \
             WHERE pairing_id = ?1 AND status IN ('waiting', 'claimed')",
            [pairing_id.to_string()],
        )
        .await?;
    Ok(changed == 1)
}

/// Marks the approved result delivered; `true` only for the one caller that
/// got it, before its expiry (after it, the sweep revokes the device).
pub async fn mark_delivered(conn: &Connection, pairing_id: Uuid, now: DateTime<Utc>) -> StoreResult<bool> {
    let changed = conn
        .execute(
            "UPDATE pairings SET delivered_at = ?2, key_envelope = NULL \
             WHERE pairing_id = ?1 AND status = 'approved' AND delivered_at IS NULL AND key_envelope IS NOT NULL \
             AND expires_at > ?3",
            libsql::params![pairing_id.to_string(), rfc3339(now), now.timestamp_millis()],
        )
        .await?;
    Ok(changed == 1)
}

/// Undoes [`mark_delivered`] when issuing the tokens failed.
pub async fn unmark_delivered(conn: &Connection, pairing: &Pairing) -> StoreResult<()> {
    conn.execute(
        "UPDATE pairings SET delivered_at = NULL, key_envelope = ?2 WHERE pairing_id = ?1",
        libsql::params![pairing.pairing_id.to_string(), pairing.key_envelope.clone()],
    )
    .await?;
    Ok(())
}

pub async fn delete_user(conn: &Connection, user: Uuid) -> StoreResult<()> {
    conn.execute("DELETE FROM pairings WHERE user_id = ?1", [user.to_string()]).await?;
    Ok(())
}

fn decode(row: &Row) -> StoreResult<Pairing> {
    let id: String = row.get(0)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("pairing {id}: {what}"));
    let uuid = |text: String, what: &str| Uuid::parse_str(&text).map_err(|_| corrupt(what));
    let status: String = row.get(4)?;
    let new_device: Option<String> = row.get(5)?;
    let expires_ms: i64 = row.get(10)?;
    Ok(Pairing {
        pairing_id: uuid(id.clone(), "pairing_id")?,
        user_id: uuid(row.get(1)?, "user_id")?,
        initiator_device: uuid(row.get(2)?, "initiator_device")?,
        claim_token_hash: row.get(3)?,
        status: Status::parse(&status).ok_or_else(|| corrupt("status"))?,
        new_device: new_device
            .map(|json| serde_json::from_str(&json).map_err(|_| corrupt("new_device")))
            .transpose()?,
        new_device_id: row.get::<Option<String>>(6)?.map(|t| uuid(t, "new_device_id")).transpose()?,
        approver_device: row.get::<Option<String>>(7)?.map(|t| uuid(t, "approver_device")).transpose()?,
        key_envelope: row.get(8)?,
        delivered: row.get::<Option<String>>(9)?.is_some(),
        expires_at: Utc.timestamp_millis_opt(expires_ms).single().ok_or_else(|| corrupt("expires_at"))?,
    })
}
