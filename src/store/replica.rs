//! Embedded replicas (`EMBEDDED_REPLICAS=true`): a local copy of a remote
//! user database, kept by libSQL's replication client, that the log and view
//! reads (pull pages, `/sync/events`, `/sync/status`, the operator commands'
//! reads) are answered from. Writes never touch it: they go to the primary
//! through the usual paths, and the replica syncs after each one.
//!
//! Freshness, the rule every read follows ([`Replicas::connect`]): a replica
//! answers only if its last successful sync began (a) within
//! `REPLICA_MAX_STALENESS_MS` and (b) after this process's last write to that
//! database (read-your-writes). Otherwise the read syncs it first; a sync that
//! fails or takes longer than `REPLICA_SYNC_TIMEOUT_MS` (libSQL has no timeout
//! of its own) sends the read to the primary. So a replica that cannot sync
//! never serves anything older than the bound.
//!
//! Replication is libSQL's (gRPC-web on sqld's HTTP listener, the namespace
//! in `x-namespace-bin`: sqld's own, or on Turso the URL host's first label,
//! which libSQL's client sends itself); reads go through a read-only handle of the replica
//! file, never through the replication connection, which would send any
//! `BEGIN` to the primary. Each process keeps its replicas in a directory of
//! its own (`DATA_DIR/replicas/<n>/`, held by a lock), since two replicators
//! must never share a file.
//!
//! Tokens: libSQL's replicator keeps the token it was built with, and a
//! Turso database's is renewed ([`crate::store::remote::turso::tokens`]). So
//! each sync takes the token current now and, when it is not the one the
//! replicating handle holds, opens the handle again on the same file (which
//! keeps its frames: the next sync fetches only what is new). A refused token
//! does not show in a failed sync (libSQL retries its handshake and reports a
//! timeout), so after a failed sync of a database whose tokens are minted,
//! one Hrana request checks the token, in the background: refused (401/403),
//! it is forgotten ([`Auth::refused`]), and the next sync mints another.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use libsql::{Builder, Connection, Database, OpenFlags};
use lru::LruCache;
use secrecy::SecretString;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use uuid::Uuid;

use super::remote::hrana::{self, Hrana};
use super::remote::{same_token, Auth};
use super::{StoreError, StoreResult, BUSY_TIMEOUT};

/// Where a replica syncs from, as the database's data path reaches it
/// ([`super::remote::RemoteDb::replica_target`]).
#[derive(Clone)]
pub struct ReplicaTarget {
    /// The database's Hrana client: its URL (sqld's, or a Turso database's
    /// own), its namespace (sqld's; none on Turso, where libSQL sends the
    /// URL host's first label), its token source ([`Auth`]).
    pub hrana: Hrana,
    /// Every host reached at this address instead (`TURSO_CONNECT_TO`).
    pub connect_to: Option<std::net::SocketAddr>,
}

impl ReplicaTarget {
    fn auth(&self) -> &Auth {
        self.hrana.auth()
    }
}

/// How replicas are kept (`crate::config::replicas::ReplicaConfig`, plus where).
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// `DATA_DIR/replicas`: this process takes a directory of its own inside.
    pub dir: PathBuf,
    pub sync_interval: Duration,
    pub max_staleness: Duration,
    pub sync_timeout: Duration,
    pub max_open: NonZeroUsize,
}

/// Counters since start, for tests and metrics.
#[derive(Debug, Default)]
pub struct ReplicaStats {
    /// Reads answered from a replica.
    pub reads: AtomicU64,
    /// Reads sent to the primary: the replica could not be opened or synced in time.
    pub fallbacks: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_failures: AtomicU64,
    /// WAL frames (4 KiB pages) replicated by the syncs that succeeded.
    pub frames_synced: AtomicU64,
    /// Replicating handles opened again on their file with another token.
    pub token_reopens: AtomicU64,
}

type Slot = Arc<OnceCell<Arc<Replica>>>;

/// Every open replica of this process, bounded (LRU), synced on an interval.
pub struct Replicas {
    settings: ReplicaSettings,
    /// This process's directory, and the lock that makes it so.
    dir: PathBuf,
    _lock: std::fs::File,
    open: Mutex<LruCache<Uuid, Slot>>,
    pub stats: ReplicaStats,
}

/// Directories a process may take under `DATA_DIR/replicas`: one per
/// process running on this data directory at once.
const MAX_PROCESS_DIRS: u32 = 64;

/// Replicas synced at once by the interval sync.
const INTERVAL_SYNCS_AT_ONCE: usize = 4;

impl Replicas {
    /// The replicas `config` asks for (`EMBEDDED_REPLICAS`), if any.
    pub fn from_config(config: &crate::config::Config) -> StoreResult<Option<Arc<Self>>> {
        let Some(replicas) = &config.replicas else { return Ok(None) };
        let settings = ReplicaSettings {
            dir: config.data_dir.join("replicas"),
            sync_interval: replicas.sync_interval,
            max_staleness: replicas.max_staleness,
            sync_timeout: replicas.sync_timeout,
            max_open: replicas.max_open,
        };
        Self::start(settings).map(Some)
    }

    /// Takes a directory under `settings.dir` and starts syncing on the
    /// interval (a task that ends when this is dropped). Needs a tokio runtime.
    pub fn start(settings: ReplicaSettings) -> StoreResult<Arc<Self>> {
        let (dir, lock) = take_dir(&settings.dir)?;
        let replicas = Arc::new(Self {
            open: Mutex::new(LruCache::new(settings.max_open)),
            settings,
            dir,
            _lock: lock,
            stats: ReplicaStats::default(),
        });
        tokio::spawn(sync_on_interval(Arc::downgrade(&replicas), replicas.settings.sync_interval));
        Ok(replicas)
    }

    /// This process's replica directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A read-only connection to `user`'s replica when it is fresh (syncing
    /// it first if it is not); `None` when the read must go to the primary.
    /// Never an error: a replica that cannot serve is only slower.
    pub async fn connect(&self, user: Uuid, target: &ReplicaTarget) -> Option<Connection> {
        let connected = match self.replica(user, target).await {
            Ok(replica) => self.fresh_connection(&replica).await,
            Err(err) => {
                tracing::warn!(%user, error = %err, "the embedded replica cannot be opened; reading the primary");
                None
            }
        };
        let (counter, name) = if connected.is_some() {
            (&self.stats.reads, "echolia_replica_reads_total")
        } else {
            (&self.stats.fallbacks, "echolia_replica_fallbacks_total")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(name).increment(1);
        connected
    }

    /// After a write to `user`'s primary committed: the replica answers again
    /// only after a sync that began after it, and one starts now, in the
    /// background. The write's answer does not wait for it: a read that comes
    /// first waits for it (and syncs), or goes to the primary if it fails.
    pub fn after_write(self: &Arc<Self>, user: Uuid) {
        let Some(replica) = self.peek(user) else { return };
        replica.behind(Instant::now());
        let replicas = self.clone();
        tokio::spawn(async move { replicas.sync(&replica).await });
    }

    /// The primary moved past what `user`'s replica holds (another process
    /// wrote): it answers again only after a sync that begins from now.
    pub fn behind(&self, user: Uuid) {
        if let Some(replica) = self.peek(user) {
            replica.behind(Instant::now());
        }
    }

    /// Forgets `user`'s replica and deletes its files, in every process's
    /// directory (an account's data leaves this machine with it).
    pub async fn remove(&self, user: Uuid) -> StoreResult<()> {
        self.lock().pop(&user);
        let (root, prefix) = (self.settings.dir.clone(), format!("{}.db", user.as_hyphenated()));
        let remove = move || -> std::io::Result<()> {
            for dir in std::fs::read_dir(&root)? {
                let dir = dir?.path();
                if !dir.is_dir() {
                    continue;
                }
                for file in std::fs::read_dir(&dir)? {
                    let file = file?;
                    if file.file_name().to_string_lossy().starts_with(&prefix) {
                        match std::fs::remove_file(file.path()) {
                            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                            _ => {}
                        }
                    }
                }
            }
            Ok(())
        };
        let context = || format!("removing the replicas of user {user}");
        match tokio::task::spawn_blocking(remove).await {
            Ok(result) => result.map_err(|err| StoreError::io(context(), err)),
            Err(join) => Err(StoreError::io(context(), std::io::Error::other(join))),
        }
    }

    /// How many replicas are open.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    fn peek(&self, user: Uuid) -> Option<Arc<Replica>> {
        self.lock().peek(&user).and_then(|slot| slot.get().cloned())
    }

    /// `user`'s replica, opened on first use (concurrent callers share one open).
    async fn replica(&self, user: Uuid, target: &ReplicaTarget) -> StoreResult<Arc<Replica>> {
        let slot = self.lock().get_or_insert(user, || Arc::new(OnceCell::new())).clone();
        let path = self.dir.join(format!("{}.db", user.as_hyphenated()));
        let opened = slot
            .get_or_try_init(|| async {
                Replica::open(user, &path, target, self.settings.sync_timeout).await.map(Arc::new)
            })
            .await
            .cloned();
        if opened.is_err() {
            let mut open = self.lock();
            if open.peek(&user).is_some_and(|current| Arc::ptr_eq(current, &slot)) {
                open.pop(&user);
            }
        }
        opened
    }

    /// Syncs `replica` under the timeout; whether it worked. A sync cut off
    /// while libSQL's replicator works drops the handle it had taken (the
    /// replicator, cut off mid-transaction, keeps the frames and the write
    /// transaction it had begun, and would build on them at its next sync), so
    /// the next one opens it again on the file; one cut off while it waited
    /// for the handle or a token leaves the handle as it was.
    async fn sync(&self, replica: &Arc<Replica>) -> bool {
        let began = Instant::now();
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::time::timeout(self.settings.sync_timeout, replica.sync_once(&self.stats)).await;
        let error = match outcome {
            Ok(Ok(frames)) => {
                self.stats.frames_synced.fetch_add(frames, Ordering::Relaxed);
                metrics::counter!("echolia_replica_frames_synced_total").increment(frames);
                let mut freshness = replica.freshness();
                freshness.synced = freshness.synced.max(Some(began));
                freshness.failed = None;
                return true;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {:?}", self.settings.sync_timeout),
        };
        self.stats.sync_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("echolia_replica_sync_failures_total").increment(1);
        replica.check_token();
        let mut freshness = replica.freshness();
        // Once per outage, not once per interval.
        if freshness.failed.is_none() {
            tracing::warn!(user = %replica.user, error, "an embedded replica could not sync; its reads go to the primary");
        } else {
            tracing::debug!(user = %replica.user, error, "an embedded replica still cannot sync");
        }
        freshness.failed = Some(Instant::now());
        false
    }

    /// A connection to `replica` if it is fresh, or once a sync made it so.
    async fn fresh_connection(&self, replica: &Arc<Replica>) -> Option<Connection> {
        if !replica.is_fresh(self.settings.max_staleness) {
            // A sync that failed lately is not retried by every read (each would
            // wait for it): the interval sync tries again.
            let failed_lately =
                replica.freshness().failed.is_some_and(|failed| failed.elapsed() < self.settings.sync_interval);
            if failed_lately || !self.sync(replica).await {
                return None;
            }
        }
        match replica.read_connection().await {
            Ok(conn) => Some(conn),
            Err(err) => {
                tracing::warn!(user = %replica.user, error = %err, "an embedded replica cannot be read; reading the primary");
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Uuid, Slot>> {
        // The cache holds no invariant a panic could break halfway.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Syncs every open replica each `interval`, a few at a time, until the
/// [`Replicas`] are dropped.
async fn sync_on_interval(replicas: Weak<Replicas>, interval: Duration) {
    use futures_util::StreamExt;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(replicas) = replicas.upgrade() else { return };
        let open: Vec<Arc<Replica>> = replicas.lock().iter().filter_map(|(_, slot)| slot.get().cloned()).collect();
        futures_util::stream::iter(open)
            .for_each_concurrent(INTERVAL_SYNCS_AT_ONCE, |replica| {
                let replicas = &replicas;
                async move {
                    replicas.sync(&replica).await;
                }
            })
            .await;
    }
}

/// Locks the first free directory `dir/<n>` (made if needed).
fn take_dir(root: &Path) -> StoreResult<(PathBuf, std::fs::File)> {
    for n in 0..MAX_PROCESS_DIRS {
        let dir = root.join(n.to_string());
        let io = |err| StoreError::io(format!("preparing {}", dir.display()), err);
        std::fs::create_dir_all(&dir).map_err(io)?;
        let lock =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock")).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => return Ok((dir, lock)),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(err)) => return Err(io(err)),
        }
    }
    Err(StoreError::Unavailable(format!("{MAX_PROCESS_DIRS} processes already keep replicas under {}", root.display())))
}

/// One user's replica: the replicating handle, and a read-only one on its
/// file (opened once a sync has given the file its content).
struct Replica {
    user: Uuid,
    path: PathBuf,
    target: ReplicaTarget,
    /// Of each call of the replicating handle's connector.
    timeout: Duration,
    /// Behind a lock: a sync takes the handle out while it runs (cut off, it
    /// drops it), and one whose token is not the one the handle was opened
    /// with closes it and opens another on the file first.
    sync: tokio::sync::Mutex<Replicating>,
    /// A check of the token is under way ([`Replica::check_token`]).
    checking: Arc<AtomicBool>,
    read: OnceCell<Database>,
    freshness: Mutex<Freshness>,
}

#[derive(Debug, Default)]
struct Freshness {
    /// When the last successful sync began: the replica holds every commit before it.
    synced: Option<Instant>,
    /// A sync must begin after this before the replica answers again.
    behind: Option<Instant>,
    /// When a sync last failed: reads go to the primary until the next interval.
    failed: Option<Instant>,
}

/// libSQL's replicating handle (none while a sync has it, or after one that
/// was cut off dropped it), and the token it was last opened with (it keeps
/// the one it was built with).
struct Replicating {
    db: Option<Database>,
    token: SecretString,
}

impl Replica {
    async fn open(user: Uuid, path: &Path, target: &ReplicaTarget, timeout: Duration) -> StoreResult<Self> {
        let token = target.auth().token().await?;
        let sync = Replicating { db: Some(replicating_handle(path, target, &token, timeout).await?), token };
        Ok(Self {
            user,
            path: path.to_owned(),
            target: target.clone(),
            timeout,
            sync: tokio::sync::Mutex::new(sync),
            checking: Arc::default(),
            read: OnceCell::new(),
            freshness: Mutex::default(),
        })
    }

    /// One sync, on the replicating handle (opened again after a sync that
    /// was cut off, or with the token current now if it is another);
    /// the frames it replicated.
    async fn sync_once(&self, stats: &ReplicaStats) -> StoreResult<u64> {
        let mut handle = self.sync.lock().await;
        // Cached: a mint only when the token is due for renewal or was refused.
        let token = self.target.auth().token().await?;
        if !same_token(&handle.token, &token) {
            tracing::debug!(user = %self.user, "an embedded replica reopens with its database's new token");
            stats.token_reopens.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("echolia_replica_token_reopens_total").increment(1);
            // Closed before another opens on the file.
            handle.db = None;
        }
        let db = match handle.db.take() {
            Some(db) => db,
            None => {
                // Noted first: a handle that fails to open is not counted as rotated again.
                handle.token = token.clone();
                replicating_handle(&self.path, &self.target, &token, self.timeout).await?
            }
        };
        // Cut off by the timeout, this future drops `db` (closed, what it began rolled back).
        let synced = sync_database(&db).await;
        handle.db = Some(db);
        synced.map_err(|err| StoreError::Unavailable(format!("replication: {err}")))
    }

    /// After a failed sync, on a database whose tokens are minted: one
    /// request on the data path (a stream opened and closed), in the
    /// background, which forgets the token if the database refuses it
    /// ([`Hrana::pipeline`]). One at a time per replica.
    fn check_token(&self) {
        if !matches!(self.target.auth(), Auth::Minted(_)) || self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let (hrana, checking) = (self.target.hrana.clone(), self.checking.clone());
        tokio::spawn(async move {
            // Its outcome is the token's: kept, or forgotten on a refusal.
            if let Err(err) = hrana.pipeline(None, &[hrana::Request::Close]).await {
                tracing::debug!(error = %err, "checking an embedded replica's token");
            }
            checking.store(false, Ordering::Release);
        });
    }

    fn freshness(&self) -> std::sync::MutexGuard<'_, Freshness> {
        self.freshness.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn behind(&self, at: Instant) {
        let mut freshness = self.freshness();
        freshness.behind = freshness.behind.max(Some(at));
    }

    fn is_fresh(&self, max_staleness: Duration) -> bool {
        let freshness = self.freshness();
        let Some(synced) = freshness.synced else { return false };
        synced.elapsed() <= max_staleness && freshness.behind.is_none_or(|behind| synced >= behind)
    }

    /// Opens the read-only handle once, and a connection on it.
    async fn read_connection(&self) -> StoreResult<Connection> {
        let read = self
            .read
            .get_or_try_init(|| Builder::new_local(&self.path).flags(OpenFlags::SQLITE_OPEN_READ_ONLY).build())
            .await?;
        let conn = read.connect()?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    }
}

/// The handle libSQL replicates `target` into the file at `path` with, sending `token`.
#[cfg(feature = "embedded-replicas")]
async fn replicating_handle(
    path: &Path,
    target: &ReplicaTarget,
    token: &SecretString,
    timeout: Duration,
) -> StoreResult<Database> {
    use secrecy::ExposeSecret;
    super::memory::configure_once();
    let url = target.hrana.url().to_owned();
    let builder = Builder::new_remote_replica(path, url, token.expose_secret().to_owned())
        .connector(super::remote::connector::TimeoutConnector::new(timeout, target.connect_to))
        // Writes never go through a replica here.
        .read_your_writes(false);
    let builder = match target.hrana.namespace() {
        Some(namespace) => builder.namespace(namespace),
        None => builder,
    };
    Ok(builder.build().await?)
}

/// One sync of a replicating handle (libSQL's `sync`, which has no deadline
/// of its own): the frames it replicated.
#[cfg(feature = "embedded-replicas")]
async fn sync_database(db: &Database) -> libsql::Result<u64> {
    db.sync().await.map(|synced| synced.frames_synced() as u64)
}

#[cfg(not(feature = "embedded-replicas"))]
async fn replicating_handle(
    _path: &Path,
    _target: &ReplicaTarget,
    _token: &SecretString,
    _timeout: Duration,
) -> StoreResult<Database> {
    Err(StoreError::Unavailable("this build has no embedded replicas (the `embedded-replicas` cargo feature)".into()))
}

/// Never reached: without the feature no replica opens.
#[cfg(not(feature = "embedded-replicas"))]
async fn sync_database(_db: &Database) -> libsql::Result<u64> {
    Err(libsql::Error::Misuse("this build has no embedded replicas".into()))
}
