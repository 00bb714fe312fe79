//! One user's database: a handle to read from, and the single write path.

use std::ops::Deref;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use libsql::{Connection, Database, Statement, Transaction, TransactionBehavior};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

use super::{connect, migrations, Backend, StoreResult};
use crate::events::append::{append, prepare_insert, read_head, Head};
use crate::events::{NewEvent, StoredEvent};

pub struct UserDb {
    user_id: Uuid,
    db: Database,
    /// One writer per user inside this process, so writers queue here
    /// rather than on SQLite's lock. `BEGIN IMMEDIATE` still arbitrates
    /// between processes.
    write_lock: Arc<Mutex<()>>,
}

impl UserDb {
    /// Opens (or with `create`, makes) the database and brings its schema up to date.
    pub async fn open(backend: &Backend, user_id: Uuid, create: bool) -> StoreResult<Self> {
        let db = backend.open_user(user_id, create).await?;
        migrations::apply(&connect(&db).await?, migrations::USER).await?;
        Ok(Self { user_id, db, write_lock: Arc::new(Mutex::new(())) })
    }

    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    /// A connection for reads (one unit of work; never shared between requests).
    pub async fn read(&self) -> StoreResult<Connection> {
        connect(&self.db).await
    }

    /// Starts the one write transaction of this user: takes the user's lock,
    /// then `BEGIN IMMEDIATE`, then reads the log head.
    pub async fn begin_write(&self) -> StoreResult<WriteTx> {
        self.begin_write_on(&connect(&self.db).await?).await
    }

    /// [`UserDb::begin_write`] on a connection of this database the caller
    /// keeps (from [`UserDb::read`]), for a long job of many transactions
    /// (replay) whose page cache should outlive each of them.
    pub async fn begin_write_on(&self, conn: &Connection) -> StoreResult<WriteTx> {
        let guard = self.write_lock.clone().lock_owned().await;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).await?;
        let head = read_head(&tx).await?;
        Ok(WriteTx { insert: None, tx, head, _guard: guard })
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
    _guard: OwnedMutexGuard<()>,
}

impl WriteTx {
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
        append(insert, &mut self.head, device_id, received_at, event).await
    }

    pub fn head(&self) -> Head {
        self.head
    }

    pub async fn commit(mut self) -> StoreResult<()> {
        self.insert = None;
        self.tx.commit().await?;
        Ok(())
    }
}

impl Deref for WriteTx {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.tx
    }
}
