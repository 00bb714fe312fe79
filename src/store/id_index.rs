//! A log's row ids by key, in memory: the writer's exact answer to "is this
//! id already in the log, and at which seq?" and "which view row is this
//! aggregate's?" without a unique index on disk. With random (v4) ids such an
//! index costs every append a write at a random leaf page; these maps cost
//! memory instead (about 50 bytes an id, while the user's database is open:
//! docs/sqlite-memory.md).
//!
//! An aggregate's view row is keyed by the seq of its first event
//! ([`crate::projection::aggregate::AggregateRow::created_seq`]), so both maps
//! come from the log alone, and a replay of the views leaves them true.
//!
//! It covers the log up to [`IdIndex::through`]; the writer extends it from
//! the log at the start of each transaction (whoever appended: this process
//! or another), inside the write lock, so a lookup is never stale. Ids added
//! during a transaction are staged and count only once it commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use uuid::Uuid;

/// One event as the index takes it from the log. `view` tags the aggregate
/// view its kind folds into (the events layer's `Kind::view_tag`), `None`
/// for a kind whose view is keyed otherwise (devices).
#[derive(Debug, Clone, Copy)]
pub struct Logged {
    pub event_id: Uuid,
    pub seq: u64,
    pub view: Option<u8>,
    pub aggregate_id: Uuid,
}

#[derive(Debug, Default)]
pub struct IdIndex {
    committed: HashMap<Uuid, u64>,
    /// Each aggregate's first seq (its view row's key), by view tag and id.
    aggregates: HashMap<(u8, Uuid), u64>,
    /// Added by the open transaction; merged on commit, dropped otherwise.
    staged: HashMap<Uuid, u64>,
    staged_aggregates: HashMap<(u8, Uuid), u64>,
    /// The last seq the committed ids cover.
    through: u64,
    /// Committed ids held (events' and aggregates'), this index's and every index's of the process
    /// ([`super::UserDatabases`] keeps their sum under its budget).
    counters: [Arc<AtomicUsize>; 2],
}

impl IdIndex {
    /// An empty index counting its ids into `own` and `all`.
    pub fn counted(own: Arc<AtomicUsize>, all: Arc<AtomicUsize>) -> Self {
        Self {
            committed: HashMap::new(),
            aggregates: HashMap::new(),
            staged: HashMap::new(),
            staged_aggregates: HashMap::new(),
            through: 0,
            counters: [own, all],
        }
    }

    /// The seq of `id`, committed or staged.
    pub fn get(&self, id: &Uuid) -> Option<u64> {
        self.staged.get(id).or_else(|| self.committed.get(id)).copied()
    }

    /// The seq of the first event of aggregate `id` of the view `view`,
    /// committed or staged: the key of its view row (`None`: no row yet).
    pub fn created(&self, view: u8, id: Uuid) -> Option<u64> {
        let key = (view, id);
        self.staged_aggregates.get(&key).or_else(|| self.aggregates.get(&key)).copied()
    }

    /// The last seq the committed ids cover.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Adds events the log already held (read from it in seq order), up to `through`.
    pub fn extend(&mut self, events: impl IntoIterator<Item = Logged>, through: u64) {
        let before = self.len();
        for event in events {
            self.committed.insert(event.event_id, event.seq);
            if let Some(view) = event.view {
                self.aggregates.entry((view, event.aggregate_id)).or_insert(event.seq);
            }
        }
        self.through = through;
        self.count(before);
    }

    /// Forgets every id: the next transaction reads the whole log again.
    pub fn clear(&mut self) {
        let before = self.len();
        self.committed = HashMap::new();
        self.aggregates = HashMap::new();
        self.discard_staged();
        self.through = 0;
        self.count(before);
    }

    /// Notes an event appended by the open transaction.
    pub fn stage(&mut self, event: Logged) {
        self.staged.insert(event.event_id, event.seq);
        if let Some(view) = event.view.filter(|view| self.created(*view, event.aggregate_id).is_none()) {
            self.staged_aggregates.insert((view, event.aggregate_id), event.seq);
        }
    }

    pub(super) fn publish(&mut self) {
        if let Some(last) = self.staged.values().max().copied() {
            self.through = self.through.max(last);
        }
        let before = self.len();
        // Taken, not drained: a batch's table would otherwise keep its capacity in every idle writer.
        self.committed.extend(std::mem::take(&mut self.staged));
        self.aggregates.extend(std::mem::take(&mut self.staged_aggregates));
        self.count(before);
    }

    /// Moves the counters by the change of size since `before`.
    fn count(&self, before: usize) {
        let after = self.len();
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
        self.staged_aggregates = HashMap::new();
    }

    /// Committed ids held: events' and aggregates'.
    pub fn len(&self) -> usize {
        self.committed.len() + self.aggregates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    const ENTRY: Option<u8> = Some(0);
    const TAG: Option<u8> = Some(2);

    fn logged(seq: u64, view: Option<u8>, aggregate_id: Uuid) -> Logged {
        Logged { event_id: Uuid::new_v4(), seq, view, aggregate_id }
    }

    #[test]
    fn staged_ids_count_once_published_and_vanish_when_discarded() {
        let (entry, other) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, b) = (logged(1, ENTRY, entry), logged(2, ENTRY, other));
        let mut index = IdIndex::default();
        index.extend([a], 1);
        index.stage(b);
        assert_eq!((index.get(&a.event_id), index.get(&b.event_id)), (Some(1), Some(2)));
        assert_eq!((index.created(0, entry), index.created(0, other)), (Some(1), Some(2)));
        index.discard_staged();
        assert_eq!((index.get(&b.event_id), index.created(0, other)), (None, None));
        assert_eq!(index.through(), 1);
        index.stage(b);
        index.publish();
        assert_eq!((index.get(&b.event_id), index.through(), index.len()), (Some(2), 2, 4));
    }

    #[test]
    fn an_aggregate_keeps_the_seq_of_its_first_event() {
        let (entry, device) = (Uuid::new_v4(), Uuid::new_v4());
        let mut index = IdIndex::default();
        index.extend([logged(1, ENTRY, entry), logged(2, None, device), logged(3, ENTRY, entry)], 3);
        index.stage(logged(4, ENTRY, entry));
        index.stage(logged(5, TAG, entry));
        assert_eq!(index.created(0, entry), Some(1));
        assert_eq!(index.created(2, entry), Some(5), "an id is its kind's");
        assert_eq!(index.created(4, device), None, "devices have a view of their own");
        index.publish();
        assert_eq!((index.created(0, entry), index.created(2, entry)), (Some(1), Some(5)));
    }

    #[test]
    fn the_counters_follow_the_committed_ids() {
        let (own, all) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(5)));
        let mut index = IdIndex::counted(own.clone(), all.clone());
        let entry = Uuid::new_v4();
        index.extend((1..=3).map(|seq| logged(seq, ENTRY, entry)), 3);
        index.stage(logged(4, ENTRY, entry));
        assert_eq!((own.load(Ordering::Relaxed), all.load(Ordering::Relaxed)), (4, 9), "staged ids do not count");
        index.publish();
        assert_eq!(own.load(Ordering::Relaxed), 5);
        drop(index);
        assert_eq!((own.load(Ordering::Relaxed), all.load(Ordering::Relaxed)), (0, 5));
    }
}
