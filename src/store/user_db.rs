//! One user's database: a handle to read from, and the single write path.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};

use chrono::{DateTime, Utc};
use libsql::{Connection, Database, Statement, Transaction, TransactionBehavior};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

use super::{connect, migrations, Backend, StoreError, StoreResult};
use crate::events::append::{append, prepare_insert, read_head, Head};
use crate::events::{NewEvent, StoredEvent};

pub struct UserDb {
    user_id: Uuid,
    db: Database,
    /// The connection writes go through, behind the user's lock: one writer
    /// per user inside this process, so writers queue here rather than on
    /// SQLite's lock (`BEGIN IMMEDIATE` still arbitrates between processes).
    /// Always the same connection: its page cache stays valid from one commit
    /// to the next, and queued writers hold no connection while they wait
    /// (32 concurrent pushes: 70 MiB peak instead of 117, benches/README.md).
    writer: Arc<Mutex<Option<Connection>>>,
    /// Idle connections for reads, reused so page caches stay warm between requests.
    idle: Arc<SyncMutex<Vec<Connection>>>,
    /// Set when the account is deleted: no new unit of work may start.
    deleted: AtomicBool,
    /// Events committed to this log, shared with whoever counts them
    /// (the [`super::UserDatabases`] that opened it).
    appended: Arc<AtomicU64>,
}

/// Idle read connections kept per open user database, besides its writer:
/// one, so an open database holds two connections (each with its schema and
/// page cache), times every open database. A second concurrent reader opens
/// a connection of its own and closes it after.
const IDLE_CONNECTIONS: usize = 1;

impl UserDb {
    /// Opens (or with `create`, makes) the database and brings its schema up to date.
    pub async fn open(backend: &Backend, user_id: Uuid, create: bool) -> StoreResult<Self> {
        let db = backend.open_user(user_id, create).await?;
        migrations::apply(&connect(&db).await?, migrations::USER).await?;
        Ok(Self {
            user_id,
            db,
            writer: Arc::new(Mutex::new(None)),
            idle: Arc::default(),
            deleted: AtomicBool::new(false),
            appended: Arc::default(),
        })
    }

    /// Counts the events this database commits into `appended` too.
    pub(super) fn counting_appends_into(mut self, appended: Arc<AtomicU64>) -> Self {
        self.appended = appended;
        self
    }

    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    /// The account is gone: refuse every unit of work from now on.
    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        if let Ok(mut writer) = self.writer.try_lock() {
            *writer = None;
        }
    }

    fn check_live(&self) -> StoreResult<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(StoreError::UserNotFound(self.user_id));
        }
        Ok(())
    }

    /// A connection for one unit of work (never shared between requests);
    /// it goes back to the idle pool when dropped outside a transaction.
    pub async fn read(&self) -> StoreResult<PooledConn> {
        self.check_live()?;
        let idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => connect(&self.db).await?,
        };
        Ok(PooledConn { conn: Some(conn), idle: self.idle.clone() })
    }

    /// Starts the one write transaction of this user: takes the user's lock
    /// and its writer connection, then `BEGIN IMMEDIATE`, then reads the log head.
    pub async fn begin_write(&self) -> StoreResult<WriteTx> {
        self.check_live()?;
        let mut guard = self.writer.clone().lock_owned().await;
        // A writer left inside a transaction (a rollback that failed) is replaced.
        let conn = match guard.take() {
            Some(conn) if conn.is_autocommit() => conn,
            _ => connect(&self.db).await?,
        };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).await;
        // Kept for the next writer whether `BEGIN` worked or not (busy from another process).
        *guard = Some(conn);
        WriteTx::start(tx?, guard, self.appended.clone()).await
    }

    /// [`UserDb::begin_write`] on a connection of this database the caller
    /// keeps (from [`UserDb::read`]), for a long job of many transactions
    /// (replay) whose page cache should outlive each of them.
    pub async fn begin_write_on(&self, conn: &Connection) -> StoreResult<WriteTx> {
        let guard = self.writer.clone().lock_owned().await;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).await?;
        WriteTx::start(tx, guard, self.appended.clone()).await
    }
}

/// An open write transaction. Dropping it without [`WriteTx::commit`] rolls
/// everything back, so an error anywhere leaves the database as it was.
pub struct WriteTx {
    // Field order matters: statements are finalized before the transaction
    // ends, and the transaction ends before the lock is released.
    insert: Option<Statement>,
    tx: Transaction,
    head: Head,
    /// Events appended in this transaction; they count once it commits.
    appended: u64,
    counter: Arc<AtomicU64>,
    _guard: OwnedMutexGuard<Option<Connection>>,
}

impl WriteTx {
    async fn start(
        tx: Transaction,
        guard: OwnedMutexGuard<Option<Connection>>,
        counter: Arc<AtomicU64>,
    ) -> StoreResult<Self> {
        let head = read_head(&tx).await?;
        Ok(WriteTx { insert: None, tx, head, appended: 0, counter, _guard: guard })
    }

    /// Appends one event to the log (its view rows are the caller's to write,
    /// in this same transaction).
    pub async fn append(
        &mut self,
        device_id: Uuid,
        received_at: DateTime<Utc>,
        event: NewEvent,
    ) -> StoreResult<StoredEvent> {
        if self.insert.is_none() {
            self.insert = Some(prepare_insert(&self.tx).await?);
        }
        let insert = self.insert.as_ref().unwrap_or_else(|| unreachable!("prepared above"));
        let stored = append(insert, &mut self.head, device_id, received_at, event).await?;
        self.appended += 1;
        Ok(stored)
    }

    pub fn head(&self) -> Head {
        self.head
    }

    pub async fn commit(mut self) -> StoreResult<()> {
        self.insert = None;
        self.tx.commit().await?;
        self.counter.fetch_add(self.appended, Ordering::Relaxed);
        Ok(())
    }
}

impl Deref for WriteTx {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.tx
    }
}

/// A connection on loan from a [`UserDb`]'s idle pool.
pub struct PooledConn {
    conn: Option<Connection>,
    idle: Arc<SyncMutex<Vec<Connection>>>,
}

impl Deref for PooledConn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn.as_ref().unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // Only a connection with no transaction left open may serve someone else.
        if conn.is_autocommit() {
            let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(conn);
            }
        }
    }
}
