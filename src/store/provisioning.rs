//! Making and removing user databases so that a crash at any point leaves
//! nothing behind for good: the control database's `provisioning` ledger
//! (control migration 0005) names every database between its creation and
//! the directory row that makes it a user's, and between the removal of that
//! row and the database's deletion. [`sweep`] finishes what a crash left:
//! at start, and after a registration that failed.
//!
//! This is what stands in for listing a backend's databases, which sqld
//! cannot do (it has no route for it): every database this service makes is
//! either in the users directory or in the ledger.

use std::time::Duration;

use chrono::{DateTime, Utc};
use libsql::{Connection, TransactionBehavior};
use uuid::Uuid;

use super::{ControlDb, StoreError, StoreResult, UserDatabases};
use crate::clock::{parse_rfc3339, rfc3339};

/// A registration older than this whose user is not in the directory
/// crashed (a live one takes a few round trips): the sweep removes its database.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// Notes a user database about to be made (before anything is created).
pub async fn begin_create(control: &ControlDb, user_id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
    control
        .conn()
        .await?
        .execute(
            "INSERT OR REPLACE INTO provisioning (user_id, action, started_at) VALUES (?1, 'create', ?2)",
            (user_id.to_string(), rfc3339(now)),
        )
        .await?;
    Ok(())
}

/// The registration is done: the user joins the directory and leaves the
/// ledger, in one transaction.
pub async fn finish_create(control: &ControlDb, user_id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
    let conn = control.conn().await?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).await?;
    tx.execute("INSERT INTO users (user_id, created_at) VALUES (?1, ?2)", (user_id.to_string(), rfc3339(now))).await?;
    tx.execute("DELETE FROM provisioning WHERE user_id = ?1", [user_id.to_string()]).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether `user_id` is in the users directory: after a registration whose
/// last step failed, whether that step committed all the same (its answer lost).
pub async fn in_directory(control: &ControlDb, user_id: Uuid) -> StoreResult<bool> {
    let conn = control.conn().await?;
    Ok(super::query_opt(&conn, "SELECT 1 FROM users WHERE user_id = ?1", [user_id.to_string()]).await?.is_some())
}

/// In the transaction that removes a user from the directory: its
/// database is to be deleted.
pub async fn note_delete(tx: &Connection, user_id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
    tx.execute(
        "INSERT OR REPLACE INTO provisioning (user_id, action, started_at) VALUES (?1, 'delete', ?2)",
        (user_id.to_string(), rfc3339(now)),
    )
    .await?;
    Ok(())
}

/// The database is gone (or was never kept): the ledger forgets it.
pub async fn finish(control: &ControlDb, user_id: Uuid) -> StoreResult<()> {
    control.conn().await?.execute("DELETE FROM provisioning WHERE user_id = ?1", [user_id.to_string()]).await?;
    Ok(())
}

/// Finishes what the ledger holds: a deletion whatever its age, a
/// registration older than `abandoned_after` whose user is not in the
/// directory (a user that is there only leaves the ledger). Returns how
/// many databases it removed; one that fails is logged and left for the
/// next sweep.
pub async fn sweep(
    control: &ControlDb,
    users: &UserDatabases,
    now: DateTime<Utc>,
    abandoned_after: Duration,
) -> StoreResult<usize> {
    let conn = control.conn().await?;
    let mut rows = conn
        .query(
            "SELECT p.user_id, p.action, p.started_at, u.user_id IS NOT NULL \
             FROM provisioning p LEFT JOIN users u ON u.user_id = p.user_id",
            (),
        )
        .await?;
    let mut pending = Vec::new();
    while let Some(row) = rows.next().await? {
        let (user, action, started): (String, String, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
        let user =
            Uuid::parse_str(&user).map_err(|_| StoreError::Corrupt(format!("provisioning: `{user}` is not a UUID")))?;
        pending.push((user, action, parse_rfc3339(&started), row.get::<i64>(3)? != 0));
    }
    drop(rows);
    let mut removed = 0;
    for (user, action, started, in_directory) in pending {
        let old = started
            .is_none_or(|started| now.signed_duration_since(started).to_std().is_ok_and(|age| age >= abandoned_after));
        let remove = match action.as_str() {
            "delete" => !in_directory,
            _ if in_directory => false,
            _ => old,
        };
        if !remove {
            if in_directory {
                finish(control, user).await?;
            }
            continue;
        }
        match users.delete(user).await {
            Ok(()) => {
                finish(control, user).await?;
                removed += 1;
                tracing::info!(%user, action = action.as_str(), "removed a database left by an unfinished registration or deletion");
            }
            Err(err) => {
                tracing::warn!(%user, error = %err, "could not remove a database the ledger names; the next sweep tries again")
            }
        }
    }
    Ok(removed)
}
