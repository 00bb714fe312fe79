//! `UserDatabases`: every per-user database handle, opened lazily and kept in
//! a bounded LRU. An evicted handle closes once its last user drops it; the
//! next request reopens it transparently.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::{Backend, StoreResult, UserDb};

type Slot = Arc<OnceCell<Arc<UserDb>>>;

pub struct UserDatabases {
    backend: Backend,
    open: Mutex<LruCache<Uuid, Slot>>,
    /// Events committed through any database this manager opened.
    appended: Arc<AtomicU64>,
}

impl UserDatabases {
    pub fn new(backend: Backend, max_open: NonZeroUsize) -> Self {
        Self { backend, open: Mutex::new(LruCache::new(max_open)), appended: Arc::default() }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The database of an existing user; [`StoreError::UserNotFound`] when
    /// there is none. Concurrent callers share one open.
    pub async fn get(&self, user_id: Uuid) -> StoreResult<Arc<UserDb>> {
        let slot = self.lock().get_or_insert(user_id, || Arc::new(OnceCell::new())).clone();
        let opened = slot.get_or_try_init(|| async { self.open_counted(user_id).await.map(Arc::new) }).await.cloned();
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
        Ok(db.counting_appends_into(self.appended.clone()))
    }

    /// Closes (from the cache's side) and deletes a user's database. Handles
    /// still held by requests in flight refuse new work from then on.
    pub async fn delete(&self, user_id: Uuid) -> StoreResult<()> {
        self.forget(user_id);
        let deleted = self.backend.delete_user(user_id).await;
        // A handle opened while the files were going is refused too.
        self.forget(user_id);
        deleted
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
}
