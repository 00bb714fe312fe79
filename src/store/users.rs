//! `UserDatabases`: every per-user database handle, opened lazily and kept in
//! a bounded LRU. An evicted handle closes once its last user drops it; the
//! next request reopens it transparently.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::replica::Replicas;
use super::{Backend, StoreResult, UserDb};

type Slot = Arc<OnceCell<Arc<UserDb>>>;

pub struct UserDatabases {
    backend: Backend,
    open: Mutex<LruCache<Uuid, Slot>>,
    /// Events committed through any database this manager opened.
    appended: Arc<AtomicU64>,
    /// Event ids held by the open databases' writers ([`super::IdIndex`]),
    /// and the most they may hold together.
    indexed: Arc<AtomicUsize>,
    max_indexed: usize,
    /// Embedded replicas of the user databases (`EMBEDDED_REPLICAS`).
    replicas: Option<Arc<Replicas>>,
}

impl UserDatabases {
    pub fn new(backend: Backend, max_open: NonZeroUsize) -> Self {
        Self {
            backend,
            open: Mutex::new(LruCache::new(max_open)),
            appended: Arc::default(),
            indexed: Arc::default(),
            max_indexed: usize::MAX,
            replicas: None,
        }
    }

    /// Reads of the log and views come from embedded replicas kept by `replicas`.
    pub fn with_replicas(mut self, replicas: Option<Arc<Replicas>>) -> Self {
        self.replicas = replicas;
        self
    }

    /// The embedded replicas, when reads come from them.
    pub fn replicas(&self) -> Option<&Arc<Replicas>> {
        self.replicas.as_ref()
    }

    /// Bounds the event ids all writers hold in memory together: past it,
    /// the least recently used databases' indexes are freed (each is read
    /// back from its log by that user's next write).
    pub fn with_id_index_budget(mut self, max_ids: usize) -> Self {
        self.max_indexed = max_ids;
        self
    }

    /// Event ids held in memory by all open databases' writers.
    pub fn indexed_ids(&self) -> usize {
        self.indexed.load(Ordering::Relaxed)
    }

    /// Frees id indexes, least recently used database first, never
    /// `keep`'s, until the sum is within the budget (or nothing is left to
    /// free: a write in progress keeps its index).
    fn trim_id_indexes(&self, keep: Uuid) {
        let total = self.indexed_ids();
        if total <= self.max_indexed {
            return;
        }
        let mut excess = total - self.max_indexed;
        let open = self.lock();
        for (user, slot) in open.iter().rev() {
            if excess == 0 {
                break;
            }
            if *user == keep {
                continue;
            }
            if let Some(db) = slot.get().filter(|db| db.indexed_ids() > 0) {
                excess = excess.saturating_sub(db.drop_id_index());
            }
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The database of an existing user; [`StoreError::UserNotFound`] when
    /// there is none. Concurrent callers share one open.
    pub async fn get(&self, user_id: Uuid) -> StoreResult<Arc<UserDb>> {
        let slot = self.lock().get_or_insert(user_id, || Arc::new(OnceCell::new())).clone();
        let opened = slot.get_or_try_init(|| async { self.open_counted(user_id).await.map(Arc::new) }).await.cloned();
        self.trim_id_indexes(user_id);
        if opened.is_err() {
            // Do not let a failed open hold a place in the cache.
            let mut open = self.lock();
            if open.peek(&user_id).is_some_and(|current| Arc::ptr_eq(current, &slot)) {
                open.pop(&user_id);
            }
        }
        opened
    }

    /// Makes the database of a new user. The handle kept is reopened without
    /// the create flag, so no later connection can ever recreate a deleted file.
    pub async fn create(&self, user_id: Uuid) -> StoreResult<Arc<UserDb>> {
        drop(UserDb::open(&self.backend, user_id, true).await?);
        let db = Arc::new(self.open_counted(user_id).await?);
        let slot = Arc::new(OnceCell::new_with(Some(db.clone())));
        self.lock().put(user_id, slot);
        Ok(db)
    }

    async fn open_counted(&self, user_id: Uuid) -> StoreResult<UserDb> {
        let db = UserDb::open(&self.backend, user_id, false).await?;
        Ok(db.counting_into(self.appended.clone(), self.indexed.clone()).replicated_by(self.replicas.clone()))
    }

    /// Closes (from the cache's side) and deletes a user's database. Handles
    /// still held by requests in flight refuse new work from then on.
    pub async fn delete(&self, user_id: Uuid) -> StoreResult<()> {
        self.forget(user_id);
        let deleted = self.backend.delete_user(user_id).await;
        // A handle opened while the files were going is refused too.
        self.forget(user_id);
        deleted?;
        match &self.replicas {
            Some(replicas) => replicas.remove(user_id).await,
            None => Ok(()),
        }
    }

    fn forget(&self, user_id: Uuid) {
        if let Some(slot) = self.lock().pop(&user_id) {
            if let Some(db) = slot.get() {
                db.mark_deleted();
            }
        }
    }

    /// How many user databases the cache holds open.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    /// Events appended (and committed) through these databases since start.
    pub fn events_appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<Uuid, Slot>> {
        // The cache holds no invariant a panic could break halfway.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for UserDatabases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserDatabases").field("backend", &self.backend).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[tokio::test]
    async fn evicted_databases_reopen_and_missing_ones_are_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let dbs = UserDatabases::new(Backend::local(dir.path()), NonZeroUsize::new(2).unwrap());
        let users: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        for user in &users {
            let db = dbs.create(*user).await.unwrap();
            db.read().await.unwrap().execute("INSERT INTO schema_migrations VALUES ('marker', 'x')", ()).await.unwrap();
        }
        assert_eq!(dbs.open_count(), 2);
        for user in &users {
            let db = dbs.get(*user).await.unwrap();
            let conn = db.read().await.unwrap();
            let mut rows =
                conn.query("SELECT count(*) FROM schema_migrations WHERE name = 'marker'", ()).await.unwrap();
            let count: u64 = rows.next().await.unwrap().unwrap().get(0).unwrap();
            assert_eq!(count, 1, "data survives eviction and reopening");
            assert!(dbs.open_count() <= 2);
        }
        let stranger = Uuid::new_v4();
        assert!(matches!(dbs.get(stranger).await, Err(StoreError::UserNotFound(id)) if id == stranger));
        assert!(!dir.path().join(format!("users/{stranger}.db")).exists());
        assert!(dbs.open_count() <= 1, "a failed open keeps no place in the cache");
    }

    /// Puts `n` made-up ids into the writer's index, as `LogTx` would after
    /// appending them (the events layer is above this one).
    async fn index_ids(db: &UserDb, n: usize) {
        let mut tx = db.begin_write().await.unwrap();
        let through = tx.ids().unwrap().through();
        let logged = |i| crate::store::Logged {
            event_id: Uuid::new_v4(),
            seq: through + i,
            view: None,
            aggregate_id: Uuid::new_v4(),
        };
        tx.ids().unwrap().extend((1..=n as u64).map(logged), through + n as u64).unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn id_indexes_past_the_budget_are_freed_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let dbs =
            UserDatabases::new(Backend::local(dir.path()), NonZeroUsize::new(8).unwrap()).with_id_index_budget(25);
        let users: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for user in &users {
            index_ids(&dbs.create(*user).await.unwrap(), 10).await;
        }
        assert_eq!(dbs.indexed_ids(), 30);
        // Opening the newest again trims: the oldest index goes, the others stay.
        let newest = dbs.get(users[2]).await.unwrap();
        assert_eq!(dbs.indexed_ids(), 20);
        assert_eq!(dbs.get(users[0]).await.unwrap().indexed_ids(), 0, "the least recently used was freed");
        assert_eq!(newest.indexed_ids(), 10);
        // One user larger than the budget keeps its own index while it uses it.
        index_ids(&newest, 40).await;
        drop(dbs.get(users[2]).await.unwrap());
        assert_eq!(newest.indexed_ids(), 50);
        assert_eq!(dbs.indexed_ids(), 50);
        drop(newest);
        dbs.delete(users[2]).await.unwrap();
        assert_eq!(dbs.indexed_ids(), 0, "a deleted database's index is freed with it");
    }
}
