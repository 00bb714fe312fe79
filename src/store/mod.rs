//! Storage: the control database, one libSQL database per user, the backends
//! that hold them, and the migrations that shape them.

pub mod backend;
pub mod control;
pub mod database;
pub mod id_index;
#[allow(unsafe_code)]
pub mod memory;
pub mod migrations;
pub mod provisioning;
#[allow(unsafe_code)]
pub mod raw;
pub mod remote;
pub mod replica;
pub mod user_db;
pub mod users;

pub use backend::Backend;
pub use control::ControlDb;
pub use database::Db;
pub use id_index::{IdIndex, Logged};
pub use user_db::{PooledConn, RemoteWriter, ReplayLock, UserDb, WriteLock, WriteTx};
pub use users::UserDatabases;

use std::time::Duration;

use uuid::Uuid;

/// The size an idle WAL is cut back to after a checkpoint: 16 MiB.
pub const JOURNAL_SIZE_LIMIT: u64 = 16 * 1024 * 1024;

/// How long a connection waits for another writer's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's primary result code for a locked database.
const SQLITE_BUSY: i32 = 5;
/// Result codes of storage that cannot take a write now (answered 503
/// `storage_unavailable`; the request is not at fault and nothing was
/// written): a read-only database or file system (the base code only: the
/// extended ones mean a broken WAL or a moved file), a full disk (or a file at
/// its size limit), and a failed write, sync or truncate. Every other error
/// stays an internal one, logged as such.
const SQLITE_READONLY: i32 = 8;
const SQLITE_FULL: i32 = 13;
const SQLITE_IOERR_WRITE: i32 = 10 | (3 << 8);
const SQLITE_IOERR_FSYNC: i32 = 10 | (4 << 8);
const SQLITE_IOERR_DIR_FSYNC: i32 = 10 | (5 << 8);
const SQLITE_IOERR_TRUNCATE: i32 = 10 | (6 << 8);

/// Whether an (extended) SQLite result code means the storage cannot take
/// a write now.
fn storage_unavailable(code: i32) -> bool {
    code & 0xff == SQLITE_FULL
        || matches!(
            code,
            SQLITE_READONLY | SQLITE_IOERR_WRITE | SQLITE_IOERR_FSYNC | SQLITE_IOERR_DIR_FSYNC | SQLITE_IOERR_TRUNCATE
        )
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database busy: {0}")]
    Busy(String),
    /// The disk is full or read-only, or failed: writes cannot proceed,
    /// reads may still work. Answered 503 `storage_unavailable`.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(libsql::Error),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("user database {0} does not exist")]
    UserNotFound(Uuid),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// An operator job that would clash with another (a second replay of
    /// the same user, a schema changed under a rebuild): nothing changed.
    #[error("{0}")]
    Conflict(String),
}

impl From<libsql::Error> for StoreError {
    fn from(err: libsql::Error) -> Self {
        match err {
            libsql::Error::SqliteFailure(code, message) if code & 0xff == SQLITE_BUSY => Self::Busy(message),
            libsql::Error::SqliteFailure(code, message) if storage_unavailable(code) => {
                Self::Unavailable(format!("{message} (SQLite code {code})"))
            }
            // An HTTP answer other than 200 (libSQL's text: `status=…, body=…`): the server's
            // or its configuration's fault (a token it refuses is 401), so 503; without the
            // body, which could quote the request.
            libsql::Error::Hrana(err) if remote::http_status(&err.to_string()).is_some() => {
                let message = err.to_string();
                let status = remote::http_status(&message).unwrap_or_default();
                if status.starts_with("401") {
                    remote::note_refusal();
                }
                Self::Unavailable(format!("remote database: HTTP {status}"))
            }
            libsql::Error::Hrana(err) if remote::remote_unavailable(&err.to_string()) => {
                Self::Unavailable(format!("remote database: {err}"))
            }
            libsql::Error::ConnectionFailed(message) => Self::Unavailable(format!("remote database: {message}")),
            other => Self::Database(other),
        }
    }
}

impl StoreError {
    /// A file-system failure; a full, read-only or over-quota disk is
    /// [`StoreError::Unavailable`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match source.kind() {
            ErrorKind::StorageFull
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::QuotaExceeded
            | ErrorKind::FileTooLarge => Self::Unavailable(format!("{}: {source}", context.into())),
            _ => Self::Io { context: context.into(), source },
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Opens a fresh connection for one unit of work, with the settings every
/// connection needs (they are per connection in SQLite).
pub async fn connect(db: &libsql::Database) -> StoreResult<libsql::Connection> {
    let conn = db.connect()?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Acknowledged means durable: fsync the WAL on every commit. Checkpoint
    // every 4,000 pages (not SQLite's 1,000): random-key index inserts dirty
    // many pages per batch, and fewer, larger checkpoints write each page once.
    // An idle WAL is cut back to 16 MiB after a checkpoint. No memory map:
    // pages read stay in SQLite's page cache, under the soft heap limit
    // (`store::memory`), rather than in mapped files that count against
    // the process and that nothing bounds across a thousand databases.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 4000; PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};",
    ))
    .await?;
    Ok(conn)
}

/// Reads the first row of a query, if any.
pub async fn query_opt(
    conn: &libsql::Connection,
    sql: &str,
    params: impl libsql::params::IntoParams,
) -> StoreResult<Option<libsql::Row>> {
    let mut rows = conn.query(sql, params).await?;
    Ok(rows.next().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_only_database_is_unavailable_not_an_internal_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.db");
        let writable = libsql::Builder::new_local(&path).build().await.unwrap();
        writable.connect().unwrap().execute("CREATE TABLE t (x)", ()).await.unwrap();
        let read_only =
            libsql::Builder::new_local(&path).flags(libsql::OpenFlags::SQLITE_OPEN_READ_ONLY).build().await.unwrap();
        let err = read_only.connect().unwrap().execute("INSERT INTO t VALUES (1)", ()).await.unwrap_err();
        let err = StoreError::from(err);
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }

    #[test]
    fn full_read_only_and_failing_storage_map_to_unavailable() {
        for code in [
            SQLITE_FULL,
            SQLITE_READONLY,
            SQLITE_IOERR_WRITE,
            SQLITE_IOERR_FSYNC,
            SQLITE_IOERR_DIR_FSYNC,
            SQLITE_IOERR_TRUNCATE,
        ] {
            let err = StoreError::from(libsql::Error::SqliteFailure(code, "x".into()));
            assert!(matches!(err, StoreError::Unavailable(_)), "{code}: {err:?}");
        }
        // Not the disk's state but a fault (a failed read, a moved or broken
        // file, a constraint, corruption): internal errors, not 503.
        let io_err = 10;
        let (read, short_read, readonly_dbmoved, corrupt, not_a_db, constraint) =
            (io_err | (1 << 8), io_err | (2 << 8), SQLITE_READONLY | (4 << 8), 11, 26, 19);
        for code in [io_err, read, short_read, readonly_dbmoved, corrupt, not_a_db, constraint] {
            let err = StoreError::from(libsql::Error::SqliteFailure(code, "x".into()));
            assert!(matches!(err, StoreError::Database(_)), "{code}: {err:?}");
        }
        for kind in [std::io::ErrorKind::StorageFull, std::io::ErrorKind::ReadOnlyFilesystem] {
            assert!(matches!(StoreError::io("creating", kind.into()), StoreError::Unavailable(_)));
        }
        assert!(matches!(StoreError::io("creating", std::io::ErrorKind::NotFound.into()), StoreError::Io { .. }));
    }
}
