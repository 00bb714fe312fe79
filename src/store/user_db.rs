//! One user's database: a handle to read from, and the single write path.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};

use libsql::{Connection, Statement, Transaction, TransactionBehavior};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

use super::backend::REPLAY_LOCK_SUFFIX;
use super::id_index::IdIndex;
use super::raw::RawConn;
use super::remote::hrana::Hrana;
use super::replica::{ReplicaTarget, Replicas};
use super::{migrations, Backend, Db, StoreError, StoreResult};

pub struct UserDb {
    user_id: Uuid,
    db: Db,
    /// Its file, on a backend that keeps one on this machine.
    file: Option<PathBuf>,
    /// Its embedded replica, with `EMBEDDED_REPLICAS` (opened on the first read).
    replica: Option<(Arc<Replicas>, ReplicaTarget)>,
    /// The connection writes go through, behind the user's lock: one writer
    /// per user inside this process, so writers queue here rather than on
    /// SQLite's lock (`BEGIN IMMEDIATE` still arbitrates between processes).
    /// Always the same connection: its page cache stays valid from one commit
    /// to the next, and queued writers hold no connection while they wait
    /// (docs/push-path.md).
    writer: Arc<Mutex<Option<Writer>>>,
    /// Idle connections for reads, reused so page caches stay warm between requests.
    idle: Arc<SyncMutex<Vec<Connection>>>,
    /// Set when the account is deleted: no new unit of work may start.
    deleted: AtomicBool,
    /// Events committed to this log, shared with whoever counts them
    /// (the [`super::UserDatabases`] that opened it).
    appended: Arc<AtomicU64>,
    /// Ids in this writer's [`IdIndex`], and in every open database's.
    indexed: Arc<AtomicUsize>,
    all_indexed: Arc<AtomicUsize>,
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
        db.migrate(migrations::USER).await?;
        Ok(Self {
            user_id,
            db,
            file: backend.user_file(user_id),
            replica: None,
            writer: Arc::new(Mutex::new(None)),
            idle: Arc::default(),
            deleted: AtomicBool::new(false),
            appended: Arc::default(),
            indexed: Arc::default(),
            all_indexed: Arc::default(),
        })
    }

    /// Counts the events this database commits into `appended`, and the
    /// ids its writer holds in memory into `indexed`, too.
    pub(super) fn counting_into(mut self, appended: Arc<AtomicU64>, indexed: Arc<AtomicUsize>) -> Self {
        self.appended = appended;
        self.all_indexed = indexed;
        self
    }

    /// Reads of the log and views come from an embedded replica of this
    /// database in `replicas`, on a remote backend (sqld, Turso).
    pub(super) fn replicated_by(mut self, replicas: Option<Arc<Replicas>>) -> Self {
        self.replica = replicas.zip(self.db.replica_target());
        self
    }

    /// Event ids this database's writer holds in memory.
    pub fn indexed_ids(&self) -> usize {
        self.indexed.load(Ordering::Relaxed)
    }

    /// Frees the writer's id index unless a write holds it (the next write
    /// reads it back from the log). Returns how many ids it freed.
    pub(super) fn drop_id_index(&self) -> usize {
        let Ok(mut writer) = self.writer.try_lock() else { return 0 };
        let Some(writer) = writer.as_mut() else { return 0 };
        let freed = writer.ids.len();
        writer.ids.clear();
        freed
    }

    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    /// The Hrana client of this database, on a remote backend: the append
    /// and pull paths batch their statements through it.
    pub fn remote(&self) -> Option<&Hrana> {
        self.db.hrana()
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
            None => self.db.connect_reader().await?,
        };
        // Not kept unless the database allows it ([`Db::keeps_connections`]).
        let idle = if self.db.keeps_connections() { self.idle.clone() } else { Arc::default() };
        Ok(PooledConn { conn: Some(conn), idle })
    }

    /// A connection for reads of the log and the views, which may come from
    /// the embedded replica ([`super::replica`]): fresh within its bound and
    /// holding this process's writes. `None`: read the primary.
    pub async fn read_replica(&self) -> StoreResult<Option<PooledConn>> {
        self.check_live()?;
        let Some((replicas, target)) = &self.replica else { return Ok(None) };
        let conn = replicas.connect(self.user_id, target).await;
        Ok(conn.map(|conn| PooledConn { conn: Some(conn), idle: Arc::default() }))
    }

    /// [`UserDb::read_replica`], else [`UserDb::read`]: for a read that may
    /// be answered from the replica and otherwise runs the same on the primary.
    pub async fn read_view(&self) -> StoreResult<PooledConn> {
        match self.read_replica().await? {
            Some(conn) => Ok(conn),
            None => self.read().await,
        }
    }

    /// A write to this database committed: its replica syncs before it
    /// answers again (read-your-writes), and starts syncing now, in the
    /// background. A sync that fails only sends reads to the primary until
    /// one succeeds; the write stands.
    pub fn wrote(&self) {
        if let Some((replicas, _)) = &self.replica {
            replicas.after_write(self.user_id);
        }
    }

    /// What a write marks when it commits: this database's replica, if any.
    fn replica_to_mark(&self) -> ReplicaMark {
        self.replica.as_ref().map(|(replicas, _)| (replicas.clone(), self.user_id))
    }

    /// The primary moved past what this process knows (another process
    /// wrote): the replica answers again only after a sync from now.
    pub fn moved_elsewhere(&self) {
        if let Some((replicas, _)) = &self.replica {
            replicas.behind(self.user_id);
        }
    }

    /// Starts the one write transaction of this user: takes the user's lock
    /// and its writer connection, then `BEGIN IMMEDIATE`.
    pub async fn begin_write(&self) -> StoreResult<WriteTx> {
        self.check_live()?;
        let mut guard = self.writer.clone().lock_owned().await;
        let locked_at = std::time::Instant::now();
        // A remote database's connection is not kept from one transaction to
        // the next ([`Db::keeps_connections`]); nor the token it was made
        // with, which a Turso database renews.
        let fresh = if self.db.keeps_connections() { None } else { Some(self.db.connect().await?) };
        // A writer left inside a transaction (a rollback that failed) is replaced.
        let writer = match guard.take() {
            Some(mut writer) if writer.conn.is_autocommit() => {
                if let Some(conn) = fresh {
                    writer.conn = conn;
                }
                writer
            }
            _ => Writer {
                statements: HashMap::new(),
                ids: IdIndex::counted(self.indexed.clone(), self.all_indexed.clone()),
                conn: match fresh {
                    Some(conn) => conn,
                    None => self.db.connect().await?,
                },
            },
        };
        // Ids a rolled-back transaction staged were never committed.
        let mut writer = writer;
        writer.ids.discard_staged();
        // A cached statement left mid-step (an error between a query and its
        // reset) would keep a read open across the rollback, and `BEGIN
        // IMMEDIATE` would then fail for good once another connection commits.
        for statement in writer.statements.values() {
            statement.reset();
        }
        let tx = writer.conn.transaction_with_behavior(TransactionBehavior::Immediate).await;
        // Kept for the next writer whether `BEGIN` worked or not (busy from another process).
        *guard = Some(writer);
        let cache = self.db.keeps_connections();
        let replica = self.replica_to_mark();
        Ok(WriteTx { tx: tx?, appended: 0, counter: self.appended.clone(), cache, replica, guard, locked_at })
    }

    /// A connection of this database outside libSQL's API ([`RawConn`]), for
    /// replay's scanners and bulk writer; it writes only under
    /// [`UserDb::lock_writes`].
    pub fn open_raw(&self) -> StoreResult<RawConn> {
        self.check_live()?;
        let file = self
            .file
            .as_deref()
            .ok_or_else(|| StoreError::Corrupt("this storage backend has no local file to open directly".into()))?;
        RawConn::open(file)
    }

    /// Held by a rebuild from its first shadow to its swap (an exclusive
    /// lock on a file next to the database, so across processes too): a
    /// second rebuild of the user is refused, rather than left to drop the
    /// first one's shadows. Released when dropped, or when the process ends.
    pub fn lock_replay(&self) -> StoreResult<ReplayLock> {
        self.check_live()?;
        let Some(file) = &self.file else { return Ok(ReplayLock { _file: None }) };
        let path = PathBuf::from(format!("{}{REPLAY_LOCK_SUFFIX}", file.display()));
        let io = |err| StoreError::io(format!("locking {}", path.display()), err);
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => Ok(ReplayLock { _file: Some(lock) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Conflict(format!(
                "another replay of user {} is running; try again once it is done",
                self.user_id
            ))),
            Err(std::fs::TryLockError::Error(err)) => Err(io(err)),
        }
    }

    /// The user's write lock and its writer's id index, for a remote append
    /// whose writes go in one batch rather than through a transaction held
    /// open here ([`UserDb::remote`]).
    pub async fn lock_remote_writer(&self) -> StoreResult<RemoteWriter> {
        self.check_live()?;
        let mut guard = self.writer.clone().lock_owned().await;
        if guard.is_none() {
            *guard = Some(Writer {
                statements: HashMap::new(),
                ids: IdIndex::counted(self.indexed.clone(), self.all_indexed.clone()),
                conn: self.db.connect().await?,
            });
        }
        if let Some(writer) = guard.as_mut() {
            writer.ids.discard_staged();
        }
        Ok(RemoteWriter { counter: self.appended.clone(), replica: self.replica_to_mark(), guard })
    }

    /// The user's write lock alone, for a transaction on a [`RawConn`]:
    /// held from its `BEGIN IMMEDIATE` to its end, it queues that writer
    /// with the others of this process.
    pub async fn lock_writes(&self) -> StoreResult<WriteLock> {
        self.check_live()?;
        Ok(WriteLock { _guard: self.writer.clone().lock_owned().await })
    }
}

/// The user's write lock with its writer's id index (see
/// [`UserDb::lock_remote_writer`]); the ids staged count once
/// [`RemoteWriter::committed`] says the batch committed.
pub struct RemoteWriter {
    counter: Arc<AtomicU64>,
    replica: ReplicaMark,
    guard: OwnedMutexGuard<Option<Writer>>,
}

impl RemoteWriter {
    /// The writer's in-memory index of the log's event ids ([`IdIndex`]).
    pub fn ids(&mut self) -> StoreResult<&mut IdIndex> {
        let writer =
            self.guard.as_mut().ok_or_else(|| StoreError::Corrupt("a remote writer without its state".into()))?;
        Ok(&mut writer.ids)
    }

    /// The batch committed with `appended` events: its staged ids count.
    pub fn committed(&mut self, appended: u64) {
        self.counter.fetch_add(appended, Ordering::Relaxed);
        mark_behind(&self.replica);
        if let Some(writer) = self.guard.as_mut() {
            writer.ids.publish();
        }
    }
}

/// The replica a committed write leaves behind the primary.
type ReplicaMark = Option<(Arc<Replicas>, Uuid)>;

/// Every write that commits: the replica answers again only after a sync
/// that began after it (read-your-writes for every write, not only pushes).
fn mark_behind(replica: &ReplicaMark) {
    if let Some((replicas, user)) = replica {
        replicas.behind(*user);
    }
}

/// A rebuild's hold on its user, until dropped (see [`UserDb::lock_replay`]).
pub struct ReplayLock {
    _file: Option<std::fs::File>,
}

/// A user's write lock, held until dropped (see [`UserDb::lock_writes`]).
pub struct WriteLock {
    _guard: OwnedMutexGuard<Option<Writer>>,
}

/// The connection a user's writes go through, with the statements the
/// write paths prepared on it: kept from one transaction to the next, since
/// preparing them again for every push showed in its profile (docs/push-path.md).
struct Writer {
    /// By SQL text. The write paths use a fixed set of statements (a dozen),
    /// so this stays small; [`MAX_CACHED_STATEMENTS`] bounds it regardless.
    /// Declared first: the statements are finalized before their connection closes.
    statements: HashMap<String, Arc<Statement>>,
    /// The log's event ids, for the duplicate check (kept with the connection
    /// that extends it, and dropped with it).
    ids: IdIndex,
    conn: Connection,
}

/// Past this many cached statements the cache starts over.
const MAX_CACHED_STATEMENTS: usize = 32;

/// An open write transaction. Dropping it without [`WriteTx::commit`] rolls
/// everything back, so an error anywhere leaves the database as it was.
pub struct WriteTx {
    // Field order matters: the transaction ends before the lock is released.
    tx: Transaction,
    /// Events appended in this transaction; they count once it commits.
    appended: u64,
    counter: Arc<AtomicU64>,
    replica: ReplicaMark,
    /// Whether prepared statements outlive the transaction: not on a remote
    /// database, where a statement belongs to the stream (the transaction)
    /// that prepared it.
    cache: bool,
    guard: OwnedMutexGuard<Option<Writer>>,
    /// When the lock was taken: a user's writes queue behind it, so the time
    /// it is held bounds that user's throughput (`echolia_write_lock_held_seconds`).
    locked_at: std::time::Instant,
}

impl WriteTx {
    /// A statement for `sql` (one of a fixed set, never built from input),
    /// prepared once per writer connection. [`UserDb::begin_write`] resets
    /// every cached statement; callers reset before and after each use, as
    /// with any libsql statement.
    pub async fn cached(&mut self, sql: &str) -> StoreResult<Arc<Statement>> {
        if let Some(statement) = self.guard.as_ref().and_then(|writer| writer.statements.get(sql)) {
            return Ok(statement.clone());
        }
        let statement = Arc::new(self.tx.prepare(sql).await?);
        if !self.cache {
            return Ok(statement);
        }
        if let Some(writer) = self.guard.as_mut() {
            if writer.statements.len() >= MAX_CACHED_STATEMENTS {
                writer.statements.clear();
            }
            writer.statements.insert(sql.to_owned(), statement.clone());
        }
        Ok(statement)
    }

    /// Notes one more event appended to the log, counted once this commits
    /// (a rolled-back batch counts nothing).
    pub fn count_appended(&mut self) {
        self.appended += 1;
    }

    /// The writer's in-memory index of the log's event ids ([`IdIndex`]).
    pub fn ids(&mut self) -> StoreResult<&mut IdIndex> {
        // `begin_write` leaves its writer in the guard; only `mark_deleted` empties it, never while locked.
        let writer =
            self.guard.as_mut().ok_or_else(|| StoreError::Corrupt("write transaction without its writer".into()))?;
        Ok(&mut writer.ids)
    }

    pub async fn commit(mut self) -> StoreResult<()> {
        self.tx.commit().await?;
        metrics::histogram!("echolia_write_lock_held_seconds").record(self.locked_at.elapsed());
        mark_behind(&self.replica);
        self.counter.fetch_add(self.appended, Ordering::Relaxed);
        if let Some(writer) = self.guard.as_mut() {
            writer.ids.publish();
        }
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

impl PooledConn {
    /// The connection for the caller alone, closed when dropped rather than
    /// pooled: for a job that changes its settings (replay's checkpointer).
    pub fn detach(mut self) -> Connection {
        self.conn.take().unwrap_or_else(|| unreachable!("taken only here and in drop"))
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

#[cfg(test)]
mod tests {
    use super::*;

    const SQL: &str = "SELECT count(*) FROM events";

    #[tokio::test]
    async fn the_writer_prepares_a_statement_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap();
        let mut tx = db.begin_write().await.unwrap();
        let first = tx.cached(SQL).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = db.begin_write().await.unwrap();
        let again = tx.cached(SQL).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second transaction reuses the statement");
        let mut rows = again.query(()).await.unwrap();
        assert_eq!(rows.next().await.unwrap().unwrap().get::<u64>(0).unwrap(), 0);
        drop(rows);
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_cached_statement_left_mid_step_does_not_wedge_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap();
        let mut tx = db.begin_write().await.unwrap();
        let statement = tx.cached("SELECT name FROM sqlite_master").await.unwrap();
        let mut rows = statement.query(()).await.unwrap();
        assert!(rows.next().await.unwrap().is_some());
        // As an error between a query and its reset would leave it: mid-step, rolled back.
        drop((rows, statement, tx));
        let other = db.read().await.unwrap();
        other.execute("CREATE TABLE scratch (x INTEGER)", ()).await.unwrap();
        for _ in 0..2 {
            db.begin_write().await.expect("the writer begins again").commit().await.unwrap();
        }
    }
}
