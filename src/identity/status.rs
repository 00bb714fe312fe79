//! Whether a device may still act, with a small cache in front of the
//! database. A revocation in this process overwrites the cached status at
//! once; an entry read from the database never overwrites a revocation, so a
//! slow reader cannot bring a revoked device back. Active entries expire
//! within a second, which bounds staleness when several API servers share
//! one database.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use libsql::Connection;
use uuid::Uuid;

use crate::store::{query_opt, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Active,
    /// The device was revoked: its tokens answer 401 `device_revoked`.
    Revoked,
    /// A refresh token of the device was reused: all its tokens are dead.
    TokensRevoked,
}

/// Reads a device's status; `None` when the user has no such device.
pub async fn load(conn: &Connection, device: Uuid) -> StoreResult<Option<DeviceStatus>> {
    let row = query_opt(
        conn,
        "SELECT d.revoked_at IS NOT NULL, s.tokens_revoked_at IS NOT NULL \
         FROM devices d LEFT JOIN device_sessions s ON s.device_id = d.device_id WHERE d.device_id = ?1",
        [device.to_string()],
    )
    .await?;
    let Some(row) = row else { return Ok(None) };
    let revoked: i64 = row.get(0)?;
    let tokens_revoked: Option<i64> = row.get(1)?;
    Ok(Some(if revoked != 0 {
        DeviceStatus::Revoked
    } else if tokens_revoked.unwrap_or(0) != 0 {
        DeviceStatus::TokensRevoked
    } else {
        DeviceStatus::Active
    }))
}

/// Inside a write transaction: fails unless the device is still active, so
/// nothing it sends commits after its revocation was acknowledged.
pub async fn require_active_in(conn: &Connection, device: Uuid) -> crate::error::ApiResult<()> {
    match load(conn, device).await? {
        Some(DeviceStatus::Active) => Ok(()),
        Some(DeviceStatus::TokensRevoked) => {
            Err(crate::error::ApiError::unauthorized("token_revoked", "every token of this device has been revoked"))
        }
        _ => Err(crate::error::ApiError::unauthorized("device_revoked", "this device has been revoked")),
    }
}

/// How long an `Active` entry is trusted without asking the database:
/// under a second, so a device revoked through another server (which this
/// one's cache never hears of) is refused here within one second, at the
/// cost of one status read per active device and second.
const ACTIVE_TTL: Duration = Duration::from_millis(900);
/// How often a device's `last_seen_at` is written at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Past this many entries, active ones are dropped (they reload on demand).
const MAX_ENTRIES: usize = 100_000;

type Key = (Uuid, Uuid);

#[derive(Debug, Clone, Copy)]
struct Entry {
    status: DeviceStatus,
    loaded: Instant,
    touched: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct StatusCache {
    entries: DashMap<Key, Entry>,
}

impl StatusCache {
    /// The cached status, if still trusted.
    pub fn get(&self, user: Uuid, device: Uuid) -> Option<DeviceStatus> {
        let entry = *self.entries.get(&(user, device))?;
        (entry.status != DeviceStatus::Active || entry.loaded.elapsed() < ACTIVE_TTL).then_some(entry.status)
    }

    /// Caches a status read from the database, unless a final status is
    /// already known (a revocation always wins over a read).
    pub fn remember(&self, user: Uuid, device: Uuid, status: DeviceStatus) {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, entry| entry.status != DeviceStatus::Active);
        }
        let fresh = Entry { status, loaded: Instant::now(), touched: None };
        self.entries
            .entry((user, device))
            .and_modify(|entry| {
                if entry.status == DeviceStatus::Active {
                    *entry = Entry { touched: entry.touched, ..fresh };
                }
            })
            .or_insert(fresh);
    }

    /// Records a status change this process just committed.
    pub fn settle(&self, user: Uuid, device: Uuid, status: DeviceStatus) {
        self.entries.insert((user, device), Entry { status, loaded: Instant::now(), touched: None });
    }

    /// Forgets every device of a user (account deleted).
    pub fn forget_user(&self, user: Uuid) {
        self.entries.retain(|(owner, _), _| *owner != user);
    }

    /// True at most once per [`TOUCH_EVERY`] for a device: time to write `last_seen_at`.
    pub fn touch_due(&self, user: Uuid, device: Uuid) -> bool {
        let Some(mut entry) = self.entries.get_mut(&(user, device)) else { return false };
        if entry.touched.is_some_and(|at| at.elapsed() < TOUCH_EVERY) {
            return false;
        }
        entry.touched = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_is_never_overwritten_by_a_stale_read() {
        let cache = StatusCache::default();
        let (user, device) = (Uuid::new_v4(), Uuid::new_v4());
        cache.remember(user, device, DeviceStatus::Active);
        cache.settle(user, device, DeviceStatus::Revoked);
        cache.remember(user, device, DeviceStatus::Active);
        assert_eq!(cache.get(user, device), Some(DeviceStatus::Revoked));
        assert_eq!(cache.get(Uuid::new_v4(), device), None, "keyed by user and device");
    }

    #[test]
    fn touches_are_throttled() {
        let cache = StatusCache::default();
        let (user, device) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(!cache.touch_due(user, device), "unknown devices are not touched");
        cache.remember(user, device, DeviceStatus::Active);
        assert!(cache.touch_due(user, device));
        assert!(!cache.touch_due(user, device));
        cache.remember(user, device, DeviceStatus::Active);
        assert!(!cache.touch_due(user, device), "a reload keeps the last touch");
    }
}
