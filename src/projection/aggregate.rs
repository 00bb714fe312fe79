//! The read model of client aggregates (entries, memories, tags, embeddings):
//! a pure, order-independent fold of their events.
//!
//! For each aggregate the view keeps its **heads**: the events whose version
//! vector no other event of the aggregate strictly dominates. An event that a
//! head strictly dominates is `stale` (it stays in the log, not in the view);
//! otherwise it joins the heads and evicts every head it strictly dominates.
//! The heads are thus the maximal elements of all events seen, whatever the
//! order they arrived in. Two or more heads are a conflict, which the client
//! (the only one that can decrypt) resolves by pushing an event that
//! dominates them all.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::version::VersionVector;
use crate::events::{Kind, Op, StoredEvent};

/// One head of an aggregate: the routing metadata of an event. The view row
/// stores only its `seq` ([`super::views::heads_json`]); the rest, payload
/// included, is the event in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateHead {
    pub seq: u64,
    pub event_id: Uuid,
    pub device_id: Uuid,
    pub op: Op,
    pub version: VersionVector,
    pub client_time: DateTime<Utc>,
    pub parent_id: Option<Uuid>,
}

/// The view row of one aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateRow {
    pub kind: Kind,
    pub id: Uuid,
    /// The parent (a tag's or embedding's entry), from the heads.
    pub parent_id: Option<Uuid>,
    /// Ordered by `event_id`, so the row does not depend on arrival order.
    pub heads: Vec<AggregateHead>,
    /// The merge of the heads' version vectors.
    pub version: VersionVector,
    /// Every head is a delete.
    pub deleted: bool,
    /// More than one head.
    pub conflict: bool,
    /// The seq of the latest event that changed this row.
    pub updated_seq: u64,
    /// The seq of the aggregate's first event, which made the row: the row's
    /// key as stored. Never changes, and replay finds the same one, so the
    /// writer can map an aggregate to its row from the log alone; new rows
    /// append to the table's B-tree instead of landing at a random leaf.
    pub created_seq: u64,
}

/// What an event did to its aggregate's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It is now the only head.
    Applied,
    /// It is a head beside others.
    Conflict,
    /// A head strictly dominates it (or it is already a head): view unchanged.
    Stale,
}

impl AggregateHead {
    pub fn of(stored: &StoredEvent) -> Self {
        AggregateHead {
            seq: stored.seq,
            event_id: stored.event.event_id,
            device_id: stored.device_id,
            op: stored.event.op,
            version: stored.event.version.clone(),
            client_time: stored.event.client_time,
            parent_id: stored.event.parent_id,
        }
    }
}

/// Most heads a push may leave an aggregate with: an event that would make
/// more is refused (422 `too_many_heads`) until a device merges them. With
/// push's cap on a vector's devices (`MAX_VERSION_KEYS`) it bounds the fold's work per
/// event: at most two walks over each head's vector (the stale check, the
/// eviction), `2 × MAX_HEADS × 2 × MAX_VERSION_KEYS` counter comparisons,
/// plus one merge into the row's vector. The fold itself takes any number:
/// a log written before the cap replays as it was.
pub const MAX_HEADS: usize = 32;

impl AggregateRow {
    /// The row its first event makes.
    fn created(kind: Kind, id: Uuid, head: AggregateHead) -> Self {
        let (version, seq) = (head.version.clone(), head.seq);
        Self::with_version(kind, id, vec![head], version, seq, seq)
    }

    fn with_version(
        kind: Kind,
        id: Uuid,
        heads: Vec<AggregateHead>,
        version: VersionVector,
        updated_seq: u64,
        created_seq: u64,
    ) -> Self {
        AggregateRow {
            created_seq,
            kind,
            id,
            parent_id: heads.iter().find_map(|head| head.parent_id),
            deleted: heads.iter().all(|head| head.op == Op::Delete),
            conflict: heads.len() > 1,
            version,
            heads,
            updated_seq,
        }
    }
}

/// Folds one event into the current row of its aggregate. Returns the new
/// row (the same row when stale) and the outcome.
pub fn apply(current: Option<AggregateRow>, stored: &StoredEvent) -> (AggregateRow, Outcome) {
    let event = &stored.event;
    let head = AggregateHead::of(stored);
    let Some(row) = current else {
        return (AggregateRow::created(event.kind, event.aggregate_id, head), Outcome::Applied);
    };
    let is_stale = row.heads.iter().any(|h| h.event_id == head.event_id || h.version.dominates(&head.version));
    if is_stale {
        return (row, Outcome::Stale);
    }
    // The merge of the heads left and the new one equals the old merge and
    // the new one (the heads it evicts are below it): one merge, not one per head.
    let mut version = row.version;
    version.merge(&head.version);
    let mut heads: Vec<AggregateHead> = row.heads.into_iter().filter(|h| !head.version.dominates(&h.version)).collect();
    let at = heads.partition_point(|h| h.event_id < head.event_id);
    heads.insert(at, head);
    let outcome = if heads.len() == 1 { Outcome::Applied } else { Outcome::Conflict };
    (AggregateRow::with_version(row.kind, row.id, heads, version, stored.seq, row.created_seq), outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::NewEvent;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const DEVICES: u8 = 3;

    fn device(n: u8) -> Uuid {
        Uuid::from_bytes([n + 1; 16])
    }

    /// An event of aggregate `agg`, its identity a function of its content so
    /// that generated duplicates are true duplicates.
    fn event(agg: u8, by: u8, counters: [u64; DEVICES as usize], delete: bool) -> NewEvent {
        let mut version: VersionVector =
            (0..DEVICES).filter(|d| counters[*d as usize] > 0).map(|d| (device(d), counters[d as usize])).collect();
        if version.get(&device(by)) == 0 {
            version.merge(&VersionVector::single(device(by), 1));
        }
        let mut id = [0u8; 16];
        id[0] = agg;
        id[1] = by;
        id[2] = u8::from(delete);
        for (i, c) in counters.iter().enumerate() {
            id[3 + i] = *c as u8;
        }
        NewEvent {
            event_id: Uuid::from_bytes(id),
            kind: Kind::Entry,
            aggregate_id: Uuid::from_bytes([agg; 16]),
            parent_id: None,
            op: if delete { Op::Delete } else { Op::Put },
            version,
            payload: (!delete).then(|| vec![agg, by]),
            client_time: Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap(),
        }
    }

    fn events() -> impl Strategy<Value = Vec<NewEvent>> {
        let one = (0u8..3, 0..DEVICES, [0u64..3, 0u64..3, 0u64..3], prop::bool::weighted(0.2))
            .prop_map(|(agg, by, counters, delete)| event(agg, by, counters, delete));
        prop::collection::vec(one, 1..24)
    }

    fn events_and_a_permutation() -> impl Strategy<Value = (Vec<NewEvent>, Vec<NewEvent>)> {
        events().prop_flat_map(|events| (Just(events.clone()), Just(events).prop_shuffle()))
    }

    /// The log as the server would hold it: duplicates (same event_id) are
    /// answered `duplicate` and never appended.
    fn store(events: &[NewEvent]) -> Vec<StoredEvent> {
        let mut seen = std::collections::HashSet::new();
        let received = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap();
        events
            .iter()
            .filter(|e| seen.insert(e.event_id))
            .enumerate()
            .map(|(i, e)| StoredEvent {
                seq: i as u64 + 1,
                device_id: device(0),
                received_at: received,
                hash: [0; 32],
                event: e.clone(),
            })
            .collect()
    }

    type Views = BTreeMap<Uuid, AggregateRow>;

    fn fold(log: &[StoredEvent], mut views: Views) -> Views {
        for stored in log {
            let current = views.remove(&stored.event.aggregate_id);
            let (row, _) = apply(current, stored);
            views.insert(row.id, row);
        }
        views
    }

    /// A row with the arrival order (seq) taken out: id, head event ids,
    /// version, deleted, conflict, parent.
    type Content = (Uuid, Vec<Uuid>, VersionVector, bool, bool, Option<Uuid>);

    /// The views with what must not depend on arrival order.
    fn content(views: &Views) -> Vec<Content> {
        views
            .values()
            .map(|row| {
                let heads = row.heads.iter().map(|h| h.event_id).collect();
                (row.id, heads, row.version.clone(), row.deleted, row.conflict, row.parent_id)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn any_permutation_with_duplicates_gives_the_same_views(
            (events, mut mixed) in events_and_a_permutation(),
            dup in any::<prop::sample::Index>(),
        ) {
            let reference = content(&fold(&store(&events), Views::new()));
            // A permutation, plus a duplicate.
            let n = mixed.len();
            mixed.insert(dup.index(n + 1), events[dup.index(n)].clone());
            prop_assert_eq!(content(&fold(&store(&mixed), Views::new())), reference);
        }

        #[test]
        fn heads_are_exactly_the_maximal_events(events in events()) {
            let log = store(&events);
            let views = fold(&log, Views::new());
            for row in views.values() {
                let all: Vec<&StoredEvent> = log.iter().filter(|s| s.event.aggregate_id == row.id).collect();
                let mut maximal: Vec<Uuid> = all
                    .iter()
                    .filter(|s| !all.iter().any(|o| o.event.version.dominates(&s.event.version)))
                    .map(|s| s.event.event_id)
                    .collect();
                maximal.sort();
                let heads: Vec<Uuid> = row.heads.iter().map(|h| h.event_id).collect();
                prop_assert_eq!(heads, maximal);
                prop_assert_eq!(row.conflict, row.heads.len() > 1);
                // Keyed by its first event, whatever came after (stale events included).
                prop_assert_eq!(Some(row.created_seq), all.iter().map(|s| s.seq).min());
            }
        }

        /// Pull reads the payload of a row's latest change with the row and
        /// reads the others only for a conflict: the latest change must be a head.
        #[test]
        fn the_latest_change_is_always_a_head(mixed in events().prop_shuffle()) {
            for row in fold(&store(&mixed), Views::new()).values() {
                prop_assert!(row.heads.iter().any(|h| h.seq == row.updated_seq));
            }
        }

        #[test]
        fn folding_in_steps_equals_folding_at_once(events in events(), cut in any::<prop::sample::Index>()) {
            let log = store(&events);
            let whole = fold(&log, Views::new());
            let at = cut.index(log.len() + 1);
            let resumed = fold(&log[at..], fold(&log[..at], Views::new()));
            prop_assert_eq!(&resumed, &whole);
            let one_by_one = log.iter().fold(Views::new(), |views, e| fold(std::slice::from_ref(e), views));
            prop_assert_eq!(one_by_one, whole);
        }

        #[test]
        fn an_event_dominating_every_head_resolves_the_conflict(events in events()) {
            let mut log = store(&events);
            let views = fold(&log, Views::new());
            for row in views.values() {
                let mut version = row.version.clone();
                version.merge(&VersionVector::single(device(1), row.version.get(&device(1)) + 1));
                let resolution = StoredEvent {
                    seq: log.len() as u64 + 1,
                    device_id: device(1),
                    received_at: log[0].received_at,
                    hash: [0; 32],
                    event: NewEvent {
                        event_id: Uuid::new_v4(),
                        version,
                        ..event(row.id.as_bytes()[0], 1, [0, 0, 0], false)
                    },
                };
                let (resolved, outcome) = apply(Some(row.clone()), &resolution);
                prop_assert_eq!(outcome, Outcome::Applied);
                prop_assert_eq!(resolved.heads.len(), 1);
                prop_assert!(!resolved.conflict);
                prop_assert!(!resolved.deleted);
                prop_assert_eq!(resolved.updated_seq, resolution.seq);
                log.push(resolution);
            }
        }
    }

    #[test]
    fn concurrent_edits_conflict_and_a_dominated_event_is_stale() {
        let first = store(&[event(1, 0, [1, 0, 0], false), event(1, 1, [0, 1, 0], false)]);
        let (row, outcome) = apply(None, &first[0]);
        assert_eq!(outcome, Outcome::Applied);
        let (row, outcome) = apply(Some(row), &first[1]);
        assert_eq!(outcome, Outcome::Conflict);
        assert!(row.conflict);
        assert_eq!(row.version.get(&device(0)), 1);
        assert_eq!(row.version.get(&device(1)), 1);
        // A later edit by device 0 that saw both resolves; an older one is stale.
        let more = store(&[
            event(1, 0, [1, 0, 0], false),
            event(1, 1, [0, 1, 0], false),
            event(1, 0, [2, 1, 0], false),
            event(1, 1, [1, 1, 0], false),
        ]);
        let (row, _) = apply(Some(row), &more[2]);
        assert_eq!((row.heads.len(), row.conflict), (1, false));
        let before = row.clone();
        let (row, outcome) = apply(Some(row), &more[3]);
        assert_eq!(outcome, Outcome::Stale);
        assert_eq!(row, before, "a stale event leaves the row untouched");
    }

    #[test]
    fn delete_versus_edit_is_a_conflict_that_is_not_deleted() {
        let log = store(&[event(1, 0, [1, 0, 0], true), event(1, 1, [0, 1, 0], false)]);
        let views = fold(&log, Views::new());
        let row = &views[&Uuid::from_bytes([1; 16])];
        assert!(row.conflict);
        assert!(!row.deleted, "a live head keeps the aggregate alive");
        let only_delete = fold(&store(&[event(2, 0, [1, 0, 0], true)]), Views::new());
        assert!(only_delete[&Uuid::from_bytes([2; 16])].deleted);
    }
}
