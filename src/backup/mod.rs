//! Backups of the `local` backend: consistent snapshots of the control
//! database and every user database taken while the server runs, stored
//! incrementally in a folder or S3-compatible object storage under a
//! manifest written last; and the restore and check that read them back,
//! verifying every file's SHA-256 and every log's hash chain.
//!
//! A snapshot is SQLite's `VACUUM INTO` on a connection of its own: one read
//! transaction on the live database. In WAL mode a reader never blocks the
//! writer, so pushes go on while each copy is made; the copy is exactly the
//! database as of that transaction's start.

pub mod manifest;
pub mod restore;
pub mod snapshot;
pub mod target;

use std::path::Path;

use libsql::{Connection, Value};
use sha2::{Digest, Sha256};

use crate::events::{read_tip, LogTip};
use crate::store::{StoreError, StoreResult};

pub use manifest::Manifest;
pub use target::Target;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The arguments name something unusable (exit status 2).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// Object storage failed (after its retries).
    #[error("{0}")]
    Target(String),
    /// A manifest that cannot be read or names what a backup never writes.
    #[error("{0}")]
    Manifest(String),
    /// A restore that stopped after it began writing `DATA_DIR`.
    #[error("{source}; {data_dir} is left half restored: do not start a server on it, restore again with --force")]
    Incomplete { data_dir: String, source: Box<BackupError> },
}

impl BackupError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// The tables of a user database that change outside its log: the views
/// change only with it (and replay rebuilds them identically), these do not.
/// A unit test checks every other table is the log or a view.
pub const STATE_TABLES: [&str; 4] = ["refresh_tokens", "device_sessions", "key_envelopes", "llm_usage"];

/// The head of a database's log and the digest of its [`STATE_TABLES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbState {
    pub tip: LogTip,
    pub state_sha256: String,
}

impl DbState {
    pub fn head_hash(&self) -> String {
        hex::encode(self.tip.hash)
    }
}

/// Reads the head and the state digest in one read transaction.
pub async fn read_state(conn: &Connection) -> StoreResult<DbState> {
    conn.execute_batch("BEGIN").await?;
    let state =
        async { Ok::<_, StoreError>(DbState { tip: read_tip(conn).await?, state_sha256: state_digest(conn).await? }) }
            .await;
    // A failed read leaves the transaction to be rolled back; the connection is dropped by the caller.
    conn.execute_batch(if state.is_ok() { "COMMIT" } else { "ROLLBACK" }).await?;
    state
}

/// SHA-256 over the rows of the [`STATE_TABLES`], independent of row order:
/// per table, its row count and the sum of each row's hash.
async fn state_digest(conn: &Connection) -> StoreResult<String> {
    let mut digest = Sha256::new();
    for table in STATE_TABLES {
        let exists =
            crate::store::query_opt(conn, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", [table])
                .await?
                .is_some();
        let (mut count, mut sum) = (0u64, 0u128);
        if exists {
            // The name is one of the constants above, never input.
            let mut rows = conn.query(&format!("SELECT * FROM {table}"), ()).await?;
            while let Some(row) = rows.next().await? {
                let mut hash = Sha256::new();
                for column in 0..row.column_count() {
                    match row.get_value(column)? {
                        Value::Null => hash.update([0]),
                        Value::Integer(n) => {
                            hash.update([1]);
                            hash.update(n.to_le_bytes());
                        }
                        Value::Real(x) => {
                            hash.update([2]);
                            hash.update(x.to_bits().to_le_bytes());
                        }
                        Value::Text(text) => {
                            hash.update([3]);
                            hash.update((text.len() as u64).to_le_bytes());
                            hash.update(text.as_bytes());
                        }
                        Value::Blob(blob) => {
                            hash.update([4]);
                            hash.update((blob.len() as u64).to_le_bytes());
                            hash.update(&blob);
                        }
                    }
                }
                let row_hash = hash.finalize();
                let mut low = [0u8; 16];
                low.copy_from_slice(&row_hash[..16]);
                sum = sum.wrapping_add(u128::from_le_bytes(low));
                count += 1;
            }
        }
        digest.update(table.as_bytes());
        digest.update(count.to_le_bytes());
        digest.update(sum.to_le_bytes());
    }
    Ok(hex::encode(digest.finalize()))
}

/// Opens a snapshot file (never a live database) with libSQL.
pub async fn open_copy(path: &Path, read_only: bool) -> StoreResult<(libsql::Database, Connection)> {
    let flags =
        if read_only { libsql::OpenFlags::SQLITE_OPEN_READ_ONLY } else { libsql::OpenFlags::SQLITE_OPEN_READ_WRITE };
    let db = libsql::Builder::new_local(path).flags(flags).build().await?;
    let conn = db.connect()?;
    conn.busy_timeout(crate::store::BUSY_TIMEOUT)?;
    Ok((db, conn))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use uuid::Uuid;

    use super::*;
    use crate::store::{migrations, Backend, UserDb};

    /// A table a later migration adds is either the log, a view (a
    /// `projections/` file creates it), or state a backup must notice.
    #[tokio::test]
    async fn every_table_of_a_user_database_is_the_log_a_view_or_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap();
        let conn = db.read().await.unwrap();
        let mut rows = conn
            .query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'", ())
            .await
            .unwrap();
        let mut views = BTreeSet::new();
        for migration in migrations::USER.iter().filter(|m| m.name.starts_with("projections/")) {
            for part in migration.sql.split("CREATE TABLE ").skip(1) {
                views.insert(part.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap().to_owned());
            }
        }
        while let Some(row) = rows.next().await.unwrap() {
            let name: String = row.get(0).unwrap();
            assert!(
                name == "events"
                    || name == "schema_migrations"
                    || views.contains(&name)
                    || STATE_TABLES.contains(&name.as_str()),
                "table {name}: add it to STATE_TABLES (it changes outside the log) or make it a view"
            );
        }
    }

    #[tokio::test]
    async fn the_state_digest_changes_with_a_row_and_not_with_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap();
        let conn = db.read().await.unwrap();
        let empty = read_state(&conn).await.unwrap();
        assert_eq!(empty.tip, LogTip::EMPTY);
        conn.execute_batch(
            "INSERT INTO device_sessions VALUES ('a', 't1', NULL); INSERT INTO device_sessions VALUES ('b', 't1', NULL);",
        )
        .await
        .unwrap();
        let two = read_state(&conn).await.unwrap();
        assert_ne!(two, empty);
        conn.execute_batch(
            "DELETE FROM device_sessions; INSERT INTO device_sessions VALUES ('b', 't1', NULL); \
             INSERT INTO device_sessions VALUES ('a', 't1', NULL);",
        )
        .await
        .unwrap();
        assert_eq!(read_state(&conn).await.unwrap(), two, "the same rows in another order");
        conn.execute_batch("UPDATE device_sessions SET last_seen_at = 't2' WHERE device_id = 'a'").await.unwrap();
        assert_ne!(read_state(&conn).await.unwrap(), two);
    }
}
