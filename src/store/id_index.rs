//! A log's row ids by key, in memory: the writer's exact answer to "is this
//! id already in the log, and at which seq?" and "which view row is this
//! aggregate's?" without a unique index on disk. With random (v4) ids such an
//! index costs every append a write at a random leaf page; this costs memory
//! instead, while the user's database is open (docs/sqlite-memory.md): each
//! event's id once, in seq order (16 bytes), each aggregate's id, view and
//! first seq once (21 bytes), and a hash table of 4-byte positions over each
//! list, about 30 bytes an id in all, with the lists' and tables' room to grow.
//!
//! An aggregate's view row is keyed by the seq of its first event
//! ([`crate::projection::aggregate::AggregateRow::created_seq`]), so both
//! lists come from the log alone, and a replay of the views leaves them true.
//!
//! It covers the log up to [`IdIndex::through`]; the writer extends it from
//! the log at the start of each transaction (whoever appended: this process
//! or another), inside the write lock, so a lookup is never stale. Ids added
//! during a transaction are staged at the lists' ends and count only once it
//! commits; a rollback cuts them off again.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use uuid::Uuid;

use super::{StoreError, StoreResult};

/// Keyed per index with a random seed, as std's SipHash is, at a fraction
/// of its cost for 16-byte keys: the ids are the client's, so the seed keeps
/// anyone from choosing ids that collide.
type Hasher = foldhash::fast::RandomState;

/// The most events one log may hold: the index's positions are `u32`s
/// (4,294,967,295 events, terabytes of one user's journal).
pub const MAX_LOG_EVENTS: u64 = u32::MAX as u64;

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

/// An aggregate of a view as the index keeps it, in 21 bytes (no padding):
/// its id, view tag and first seq (the key of its view row).
#[derive(Debug, Clone, Copy)]
struct Aggregate {
    id: Uuid,
    view: u8,
    /// A `u32`, little-endian: [`MAX_LOG_EVENTS`] bounds every seq.
    first_seq: [u8; 4],
}

const _: () = assert!(std::mem::size_of::<Aggregate>() == 21);

impl Aggregate {
    fn key(&self) -> (u8, Uuid) {
        (self.view, self.id)
    }

    fn first_seq(&self) -> u64 {
        u64::from(u32::from_le_bytes(self.first_seq))
    }
}

#[derive(Debug, Default)]
pub struct IdIndex {
    /// The log's event ids in seq order: seq `s` at `s - 1`.
    events: Vec<Uuid>,
    /// Positions in `events`, by the id there (the first, if the log holds one twice).
    by_event: HashTable<u32>,
    /// Each aggregate of a view, in order of its first event.
    aggregates: Vec<Aggregate>,
    /// Positions in `aggregates`, by view tag and id.
    by_aggregate: HashTable<u32>,
    /// How many of `events` (the last seq covered) and of the aggregates
    /// are committed; the rest the open transaction staged.
    committed_events: usize,
    committed_aggregates: usize,
    hasher: Hasher,
    /// Committed ids held (events' and aggregates'), this index's and every index's of the process
    /// ([`super::UserDatabases`] keeps their sum under its budget).
    counters: [Arc<AtomicUsize>; 2],
}

impl IdIndex {
    /// An empty index counting its ids into `own` and `all`.
    pub fn counted(own: Arc<AtomicUsize>, all: Arc<AtomicUsize>) -> Self {
        Self {
            events: Vec::new(),
            by_event: HashTable::new(),
            aggregates: Vec::new(),
            by_aggregate: HashTable::new(),
            committed_events: 0,
            committed_aggregates: 0,
            hasher: Hasher::default(),
            counters: [own, all],
        }
    }

    /// The seq of `id`, committed or staged.
    pub fn get(&self, id: &Uuid) -> Option<u64> {
        let events = &self.events;
        let at = *self.by_event.find(self.hasher.hash_one(id), |&at| events[at as usize] == *id)?;
        Some(u64::from(at) + 1)
    }

    /// The seq of the first event of aggregate `id` of the view `view`,
    /// committed or staged: the key of its view row (`None`: no row yet).
    pub fn created(&self, view: u8, id: Uuid) -> Option<u64> {
        let aggregates = &self.aggregates;
        let key = (view, id);
        let at = *self.by_aggregate.find(self.hasher.hash_one(key), |&at| aggregates[at as usize].key() == key)?;
        Some(aggregates[at as usize].first_seq())
    }

    /// The last seq the committed ids cover.
    pub fn through(&self) -> u64 {
        self.committed_events as u64
    }

    /// Adds events the log already held (read from it in seq order), up to
    /// `through`, on top of what is committed (an open transaction's staged
    /// ids are dropped first: the log is ahead of them).
    pub fn extend(&mut self, events: impl IntoIterator<Item = Logged>, through: u64) -> StoreResult<()> {
        self.discard_staged();
        let before = self.len();
        let events = events.into_iter();
        // Room for the ids at once: growing the table rehashes every id it holds.
        let (more, _) = events.size_hint();
        self.events.reserve(more);
        let Self { events: ids, by_event, hasher, .. } = self;
        by_event.reserve(more, |&at| hasher.hash_one(ids[at as usize]));
        for event in events {
            self.stage(event)?;
        }
        if through != self.events.len() as u64 {
            return Err(damaged(format!(
                "the log's last seq is {through}, its events end at seq {}",
                self.events.len()
            )));
        }
        self.committed_events = self.events.len();
        self.committed_aggregates = self.aggregates.len();
        self.count(before);
        Ok(())
    }

    /// Forgets every id: the next transaction reads the whole log again.
    pub fn clear(&mut self) {
        let before = self.len();
        // Field by field, not `*self = …`: that would drop (and so clear) the old index again.
        self.events = Vec::new();
        self.by_event = HashTable::new();
        self.aggregates = Vec::new();
        self.by_aggregate = HashTable::new();
        (self.committed_events, self.committed_aggregates) = (0, 0);
        self.count(before);
    }

    /// Notes an event appended by the open transaction (and [`Self::extend`]
    /// each event it reads), at the next seq after what the index holds: the
    /// log is gapless from seq 1, and read or appended in order. An id the
    /// index holds already keeps its seq (the writer appends only ids it did
    /// not find), and an aggregate its first seq.
    pub fn stage(&mut self, event: Logged) -> StoreResult<()> {
        let next = self.events.len() as u64 + 1;
        if event.seq != next {
            return Err(damaged(format!("seq {} where the writer's index expects seq {next}", event.seq)));
        }
        if event.seq > MAX_LOG_EVENTS {
            return Err(StoreError::Unavailable(format!("a log holds at most {MAX_LOG_EVENTS} events")));
        }
        let at = self.events.len() as u32;
        self.events.push(event.event_id);
        let Self { events, by_event, hasher, .. } = self;
        let hashed = hasher.hash_one(event.event_id);
        if by_event.find(hashed, |&other| events[other as usize] == event.event_id).is_none() {
            by_event.insert_unique(hashed, at, |&other| hasher.hash_one(events[other as usize]));
        }
        let Some(view) = event.view else { return Ok(()) };
        let key = (view, event.aggregate_id);
        let Self { aggregates, by_aggregate, hasher, .. } = self;
        let hashed = hasher.hash_one(key);
        if by_aggregate.find(hashed, |&other| aggregates[other as usize].key() == key).is_none() {
            let at = aggregates.len() as u32;
            // At most MAX_LOG_EVENTS, checked above.
            aggregates.push(Aggregate { id: event.aggregate_id, view, first_seq: (event.seq as u32).to_le_bytes() });
            by_aggregate.insert_unique(hashed, at, |&other| hasher.hash_one(aggregates[other as usize].key()));
        }
        Ok(())
    }

    /// The open transaction committed: what it staged is the log's.
    pub(super) fn publish(&mut self) {
        let before = self.len();
        self.committed_events = self.events.len();
        self.committed_aggregates = self.aggregates.len();
        self.count(before);
    }

    /// The open transaction rolled back: what it staged was never the log's.
    pub(super) fn discard_staged(&mut self) {
        let Self { events, by_event, hasher, .. } = self;
        for (at, id) in events.iter().enumerate().skip(self.committed_events) {
            if let Ok(entry) = by_event.find_entry(hasher.hash_one(id), |&other| other as usize == at) {
                entry.remove();
            }
        }
        events.truncate(self.committed_events);
        let Self { aggregates, by_aggregate, hasher, .. } = self;
        for (at, aggregate) in aggregates.iter().enumerate().skip(self.committed_aggregates) {
            if let Ok(entry) = by_aggregate.find_entry(hasher.hash_one(aggregate.key()), |&other| other as usize == at)
            {
                entry.remove();
            }
        }
        aggregates.truncate(self.committed_aggregates);
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
        self.committed_events + self.committed_aggregates
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A log the index cannot hold in seq order: a damaged database.
fn damaged(what: String) -> StoreError {
    StoreError::Corrupt(format!(
        "{what}: the log has a gap or is out of order (`echolia verify` shows where); \
         restore the user's database from a backup"
    ))
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
        index.extend([a], 1).unwrap();
        index.stage(b).unwrap();
        assert_eq!((index.get(&a.event_id), index.get(&b.event_id)), (Some(1), Some(2)));
        assert_eq!((index.created(0, entry), index.created(0, other)), (Some(1), Some(2)));
        let edit = logged(3, ENTRY, entry);
        index.stage(edit).unwrap();
        assert_eq!(index.len(), 2, "staged ids do not count");
        index.discard_staged();
        assert_eq!((index.get(&b.event_id), index.created(0, other), index.get(&edit.event_id)), (None, None, None));
        assert_eq!((index.get(&a.event_id), index.created(0, entry)), (Some(1), Some(1)), "what was committed stays");
        assert_eq!((index.through(), index.len()), (1, 2));
        index.stage(b).unwrap();
        index.publish();
        assert_eq!((index.get(&b.event_id), index.through(), index.len()), (Some(2), 2, 4));
    }

    #[test]
    fn a_cleared_index_covers_nothing_until_it_reads_the_log_again() {
        let mut index = IdIndex::default();
        index.extend([logged(1, ENTRY, Uuid::new_v4())], 1).unwrap();
        index.stage(logged(2, ENTRY, Uuid::new_v4())).unwrap();
        index.publish();
        assert_eq!(index.through(), 2);
        index.clear();
        // A transaction that staged nothing (a device action) commits.
        index.publish();
        assert_eq!((index.through(), index.len()), (0, 0), "the next lookup must read the whole log");
        assert!(index.stage(logged(3, ENTRY, Uuid::new_v4())).is_err(), "only the log's next seq is staged");
        index.discard_staged();
        index.publish();
        assert_eq!(index.through(), 0);
    }

    #[test]
    fn a_log_with_a_gap_is_refused_and_nothing_of_it_counts() {
        let mut index = IdIndex::default();
        let (a, c) = (logged(1, ENTRY, Uuid::new_v4()), logged(3, ENTRY, Uuid::new_v4()));
        assert!(matches!(index.extend([a, c], 3), Err(StoreError::Corrupt(_))));
        assert!(matches!(index.extend([a], 2), Err(StoreError::Corrupt(_))), "events end before the log's last seq");
        assert_eq!((index.through(), index.len()), (0, 0));
        index.discard_staged();
        assert_eq!((index.get(&a.event_id), index.get(&c.event_id)), (None, None));
        index.extend([a], 1).unwrap();
        assert_eq!((index.get(&a.event_id), index.through(), index.len()), (Some(1), 1, 2));
    }

    #[test]
    fn a_rollback_leaves_the_committed_seq_of_an_id_the_log_holds_twice() {
        // Only a damaged log holds an id twice (`verify` reports it); the first seq answers.
        let id = Uuid::new_v4();
        let mut index = IdIndex::default();
        index.extend([Logged { event_id: id, seq: 1, view: None, aggregate_id: id }], 1).unwrap();
        index.stage(Logged { event_id: id, seq: 2, view: None, aggregate_id: id }).unwrap();
        assert_eq!(index.get(&id), Some(1));
        index.discard_staged();
        assert_eq!((index.get(&id), index.through()), (Some(1), 1));
    }

    #[test]
    fn many_ids_survive_the_tables_growing_and_a_rollback_of_half() {
        let mut index = IdIndex::default();
        let events: Vec<Logged> = (1..=5_000).map(|seq| logged(seq, ENTRY, Uuid::new_v4())).collect();
        index.extend(events[..2_500].iter().copied(), 2_500).unwrap();
        for event in &events[2_500..] {
            index.stage(*event).unwrap();
        }
        index.discard_staged();
        for (i, event) in events.iter().enumerate() {
            let held = (i < 2_500).then_some(event.seq);
            assert_eq!((index.get(&event.event_id), index.created(0, event.aggregate_id)), (held, held));
        }
        assert_eq!((index.through(), index.len()), (2_500, 5_000));
    }

    #[test]
    fn an_aggregate_keeps_the_seq_of_its_first_event() {
        let (entry, device) = (Uuid::new_v4(), Uuid::new_v4());
        let mut index = IdIndex::default();
        index.extend([logged(1, ENTRY, entry), logged(2, None, device), logged(3, ENTRY, entry)], 3).unwrap();
        index.stage(logged(4, ENTRY, entry)).unwrap();
        index.stage(logged(5, TAG, entry)).unwrap();
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
        index.extend((1..=3).map(|seq| logged(seq, ENTRY, entry)), 3).unwrap();
        index.stage(logged(4, ENTRY, entry)).unwrap();
        assert_eq!((own.load(Ordering::Relaxed), all.load(Ordering::Relaxed)), (4, 9), "staged ids do not count");
        index.publish();
        assert_eq!(own.load(Ordering::Relaxed), 5);
        drop(index);
        assert_eq!((own.load(Ordering::Relaxed), all.load(Ordering::Relaxed)), (0, 5));
    }
}
