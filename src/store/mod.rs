//! Storage: the control database, one libSQL database per user, the backends
//! that hold them, and the migrations that shape them.

pub mod backend;
pub mod control;
pub mod id_index;
#[allow(unsafe_code)]
pub mod memory;
pub mod migrations;
#[allow(unsafe_code)]
pub mod raw;
pub mod user_db;
pub mod users;

pub use backend::Backend;
pub use control::ControlDb;
pub use id_index::IdIndex;
pub use user_db::{PooledConn, ReplayLock, UserDb, WriteLock, WriteTx};
pub use users::UserDatabases;

use std::time::Duration;

use uuid::Uuid;

/// The size an idle WAL is cut back to after a checkpoint: 16 MiB.
pub const JOURNAL_SIZE_LIMIT: u64 = 16 * 1024 * 1024;

/// How long a connection waits for another writer's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's primary result code for a locked database.
const SQLITE_BUSY: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database busy: {0}")]
    Busy(String),
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
            other => Self::Database(other),
        }
    }
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
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
