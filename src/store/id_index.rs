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

/// Keyed per map with a random seed, as std's SipHash is, at a fraction of
/// its cost for 16-byte keys: the ids are the client's, so the seed keeps
/// anyone from choosing ids that collide.
type Hasher = foldhash::fast::RandomState;

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

/// Ids the open transaction added go straight into the maps, and their keys
/// into `staged`: a commit only forgets the keys, a rollback takes them out
/// again (no second table to merge, no key hashed twice).
#[derive(Debug, Default)]
pub struct IdIndex {
    ids: HashMap<Uuid, u64, Hasher>,
    /// Each aggregate's first seq (its view row's key), by view tag and id.
    aggregates: HashMap<(u8, Uuid), u64, Hasher>,
    /// Keys the open transaction added to `ids` and `aggregates`.
    staged: Vec<Uuid>,
    staged_aggregates: Vec<(u8, Uuid)>,
    /// The last seq the open transaction staged (0: none).
    staged_through: u64,
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
            ids: HashMap::default(),
            aggregates: HashMap::default(),
            staged: Vec::new(),
            staged_aggregates: Vec::new(),
            staged_through: 0,
            through: 0,
            counters: [own, all],
        }
    }

    /// The seq of `id`, committed or staged.
    pub fn get(&self, id: &Uuid) -> Option<u64> {
        self.ids.get(id).copied()
    }

    /// The seq of the first event of aggregate `id` of the view `view`,
    /// committed or staged: the key of its view row (`None`: no row yet).
    pub fn created(&self, view: u8, id: Uuid) -> Option<u64> {
        self.aggregates.get(&(view, id)).copied()
    }

    /// The last seq the committed ids cover.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Adds events the log already held (read from it in seq order), up to `through`.
    pub fn extend(&mut self, events: impl IntoIterator<Item = Logged>, through: u64) {
        let before = self.len();
        for event in events {
            self.ids.insert(event.event_id, event.seq);
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
        self.ids = HashMap::default();
        self.aggregates = HashMap::default();
        self.staged = Vec::new();
        self.staged_aggregates = Vec::new();
        self.staged_through = 0;
        self.through = 0;
        self.count(before);
    }

    /// Notes an event appended by the open transaction. An id the index
    /// holds already keeps its seq (the writer appends only ids it did not
    /// find), and an aggregate its first seq.
    pub fn stage(&mut self, event: Logged) {
        if let std::collections::hash_map::Entry::Vacant(vacant) = self.ids.entry(event.event_id) {
            vacant.insert(event.seq);
            self.staged.push(event.event_id);
        }
        if let Some(view) = event.view {
            let key = (view, event.aggregate_id);
            if let std::collections::hash_map::Entry::Vacant(vacant) = self.aggregates.entry(key) {
                vacant.insert(event.seq);
                self.staged_aggregates.push(key);
            }
        }
        self.staged_through = self.staged_through.max(event.seq);
    }

    /// The open transaction committed: what it staged is the log's.
    pub(super) fn publish(&mut self) {
        let before = self.len();
        self.through = self.through.max(std::mem::take(&mut self.staged_through));
        // Dropped, not cleared: a batch's keys would otherwise keep their capacity in every idle writer.
        self.staged = Vec::new();
        self.staged_aggregates = Vec::new();
        self.count(before);
    }

    /// The open transaction rolled back: what it staged was never the log's.
    pub(super) fn discard_staged(&mut self) {
        for id in std::mem::take(&mut self.staged) {
            self.ids.remove(&id);
        }
        for key in std::mem::take(&mut self.staged_aggregates) {
            self.aggregates.remove(&key);
        }
        self.staged_through = 0;
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

    /// Committed ids held: events' and aggregates' (not the open transaction's).
    pub fn len(&self) -> usize {
        self.ids.len() + self.aggregates.len() - self.staged.len() - self.staged_aggregates.len()
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
        let edit = logged(3, ENTRY, entry);
        index.stage(edit);
        assert_eq!(index.len(), 2, "staged ids do not count");
        index.discard_staged();
        assert_eq!((index.get(&b.event_id), index.created(0, other), index.get(&edit.event_id)), (None, None, None));
        assert_eq!((index.get(&a.event_id), index.created(0, entry)), (Some(1), Some(1)), "what was committed stays");
        assert_eq!((index.through(), index.len()), (1, 2));
        index.stage(b);
        index.publish();
        assert_eq!((index.get(&b.event_id), index.through(), index.len()), (Some(2), 2, 4));
    }

    #[test]
    fn a_cleared_index_covers_nothing_until_it_reads_the_log_again() {
        let mut index = IdIndex::default();
        index.extend([logged(1, ENTRY, Uuid::new_v4())], 1);
        index.stage(logged(2, ENTRY, Uuid::new_v4()));
        index.publish();
        assert_eq!(index.through(), 2);
        index.clear();
        // A transaction that staged nothing (a device action) commits.
        index.publish();
        assert_eq!((index.through(), index.len()), (0, 0), "the next lookup must read the whole log");
        index.stage(logged(3, ENTRY, Uuid::new_v4()));
        index.discard_staged();
        index.publish();
        assert_eq!(index.through(), 0);
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
