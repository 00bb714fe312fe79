//! A log's row ids by key, in memory: the writer's exact answer to "is this
//! id already in the log, and at which seq?" without a unique index on disk.
//! With random (v4) ids such an index costs every append a write at a random
//! leaf page; this map costs memory instead (about 50 bytes an id, while
//! the user's database is open: docs/sqlite-memory.md).
//!
//! It covers the log up to [`IdIndex::through`]; the writer extends it from
//! the log at the start of each transaction (whoever appended: this process
//! or another), inside the write lock, so a lookup is never stale. Ids added
//! during a transaction are staged and count only once it commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use uuid::Uuid;

#[derive(Debug, Default)]
pub struct IdIndex {
    committed: HashMap<Uuid, u64>,
    /// Added by the open transaction; merged on commit, dropped otherwise.
    staged: HashMap<Uuid, u64>,
    /// The last seq the committed ids cover.
    through: u64,
    /// Committed ids held, this index's and every index's of the process
    /// ([`super::UserDatabases`] keeps their sum under its budget).
    counters: [Arc<AtomicUsize>; 2],
}

impl IdIndex {
    /// An empty index counting its ids into `own` and `all`.
    pub fn counted(own: Arc<AtomicUsize>, all: Arc<AtomicUsize>) -> Self {
        Self { committed: HashMap::new(), staged: HashMap::new(), through: 0, counters: [own, all] }
    }

    /// The seq of `id`, committed or staged.
    pub fn get(&self, id: &Uuid) -> Option<u64> {
        self.staged.get(id).or_else(|| self.committed.get(id)).copied()
    }

    /// The last seq the committed ids cover.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Adds ids the log already held (read from it), up to `through`.
    pub fn extend(&mut self, ids: impl IntoIterator<Item = (Uuid, u64)>, through: u64) {
        let before = self.committed.len();
        self.committed.extend(ids);
        self.through = through;
        self.count(before);
    }

    /// Forgets every id: the next transaction reads the whole log again.
    pub fn clear(&mut self) {
        let before = self.committed.len();
        self.committed = HashMap::new();
        self.staged = HashMap::new();
        self.through = 0;
        self.count(before);
    }

    /// Notes an id appended by the open transaction.
    pub fn stage(&mut self, id: Uuid, seq: u64) {
        self.staged.insert(id, seq);
    }

    pub(super) fn publish(&mut self) {
        if let Some(last) = self.staged.values().max().copied() {
            self.through = self.through.max(last);
        }
        let before = self.committed.len();
        // Taken, not drained: a batch's table would otherwise keep its capacity in every idle writer.
        self.committed.extend(std::mem::take(&mut self.staged));
        self.count(before);
    }

    /// Moves the counters by the change of size since `before`.
    fn count(&self, before: usize) {
        let after = self.committed.len();
        for counter in &self.counters {
            if after >= before {
                counter.fetch_add(after - before, Ordering::Relaxed);
            } else {
                counter.fetch_sub(before - after, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn discard_staged(&mut self) {
        self.staged = HashMap::new();
    }

    pub fn len(&self) -> usize {
        self.committed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }
}

impl Drop for IdIndex {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_ids_count_once_published_and_vanish_when_discarded() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut index = IdIndex::default();
        index.extend([(a, 1)], 1);
        index.stage(b, 2);
        assert_eq!((index.get(&a), index.get(&b)), (Some(1), Some(2)));
        index.discard_staged();
        assert_eq!(index.get(&b), None);
        assert_eq!(index.through(), 1);
        index.stage(b, 2);
        index.publish();
        assert_eq!((index.get(&b), index.through(), index.len()), (Some(2), 2, 2));
    }

    #[test]
    fn the_counters_follow_the_committed_ids() {
        let (own, all) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(5)));
        let mut index = IdIndex::counted(own.clone(), all.clone());
        index.extend((1..=3).map(|seq| (Uuid::new_v4(), seq)), 3);
        index.stage(Uuid::new_v4(), 4);
        assert_eq!((own.load(Ordering::Relaxed), all.load(Ordering::Relaxed)), (3, 8), "staged ids do not count");
        index.publish();
        assert_eq!(own.load(Ordering::Relaxed), 4);
        drop(index);
        assert_eq!((own.load(Ordering::Relaxed), all.load(Ordering::Relaxed)), (0, 5));
    }
}
