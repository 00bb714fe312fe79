//! A log's row ids by key, in memory: the writer's exact answer to "is this
//! id already in the log, and at which seq?" without a unique index on disk.
//! With random (v4) ids such an index costs every append a write at a random
//! leaf page; this map costs memory instead (about 40 bytes an id, only
//! while the user's database is open: docs/sqlite-memory.md).
//!
//! It covers the log up to [`IdIndex::through`]; the writer extends it from
//! the log at the start of each transaction (whoever appended: this process
//! or another), inside the write lock, so a lookup is never stale. Ids added
//! during a transaction are staged and count only once it commits.

use std::collections::HashMap;

use uuid::Uuid;

#[derive(Debug, Default)]
pub struct IdIndex {
    committed: HashMap<Uuid, u64>,
    /// Added by the open transaction; merged on commit, dropped otherwise.
    staged: HashMap<Uuid, u64>,
    /// The last seq the committed ids cover.
    through: u64,
}

impl IdIndex {
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
        self.committed.extend(ids);
        self.through = through;
    }

    /// Forgets everything: the next transaction reads the whole log again.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Notes an id appended by the open transaction.
    pub fn stage(&mut self, id: Uuid, seq: u64) {
        self.staged.insert(id, seq);
    }

    pub(super) fn publish(&mut self) {
        if let Some(last) = self.staged.values().max().copied() {
            self.through = self.through.max(last);
        }
        self.committed.extend(self.staged.drain());
    }

    pub(super) fn discard_staged(&mut self) {
        self.staged.clear();
    }

    pub fn len(&self) -> usize {
        self.committed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
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
}
