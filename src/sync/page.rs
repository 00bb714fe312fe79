//! A pull page as the server writes it: [`PullResponse`](super::wire::PullResponse)'s
//! shape, made from the views' stored text and the log's. A view row holds
//! its heads' seqs; each head is then its event in the log. Version vectors
//! are stored in their wire form (JSON), so they are parsed into borrowed
//! strings as the response is written and written out as they are, instead
//! of being parsed into maps and formatted back again. Text that does not
//! parse (a view or log not written by this service) fails the response with
//! a 500, never a panic.

use std::collections::BTreeMap;

use serde::ser::{Error as _, SerializeStruct};
use serde::{Serialize, Serializer};

use super::wire::{serialize_payload, HexHash};
use crate::events::Kind;
use crate::events::LogTip;
use crate::http::codec::Format;
use crate::store::StoreResult;
use crate::views::changes::{StoredChange, StoredHead};
use crate::views::{heads_error, parse_heads};

/// One page of `GET /sync/pull`.
#[derive(Debug, Serialize)]
pub struct Page {
    pub changes: Vec<PageChange>,
    pub cursor: u64,
    pub has_more: bool,
    /// The log head the page was read at; its hash is `head_hash` on the wire.
    #[serde(rename = "head_hash", serialize_with = "head_hash")]
    pub head: LogTip,
    /// Its changes' [`PageChange::wire_bytes`], summed as the page was read.
    #[serde(skip)]
    pub wire_bytes: u64,
}

impl Page {
    /// The page in `format`, in a buffer sized for it up front
    /// ([`PageChange::wire_bytes`]; JSON writes payloads a third larger).
    pub fn encode(&self, format: Format) -> Result<Vec<u8>, String> {
        let bytes = match format {
            Format::Json => self.wire_bytes + self.wire_bytes / 2,
            Format::MsgPack => self.wire_bytes,
        };
        format.encode_sized(self, usize::try_from(bytes).unwrap_or(usize::MAX).saturating_add(1024))
    }
}

fn head_hash<S: Serializer>(head: &LogTip, serializer: S) -> Result<S::Ok, S::Error> {
    HexHash(head.hash).serialize(serializer)
}

/// A version vector as stored: device id → counter, in key order. Strings
/// are borrowed: the service's JSON has no escapes.
type StoredVersion<'a> = BTreeMap<&'a str, u64>;

fn parse_version(version: &str) -> serde_json::Result<StoredVersion<'_>> {
    serde_json::from_str(version)
}

/// A changed aggregate with the events of its heads.
#[derive(Debug)]
pub struct PageChange {
    row: StoredChange,
    /// The other heads' events (a conflict's), besides `row.latest`.
    others: Vec<StoredHead>,
}

impl PageChange {
    /// The seqs of the heads whose events are still to be read: none for a
    /// row without a conflict (its one head is its latest change, which
    /// came with the row), the others for a conflict.
    pub fn other_head_seqs(row: &StoredChange) -> StoreResult<Vec<u64>> {
        if !row.conflict {
            return Ok(Vec::new());
        }
        let heads = parse_heads(&row.heads).ok_or_else(|| heads_error(row.kind, &row.id, &row.heads))?;
        Ok(heads.into_iter().filter(|seq| *seq != row.updated_seq).collect())
    }

    /// `others`: the events of [`Self::other_head_seqs`].
    pub fn new(row: StoredChange, others: Vec<StoredHead>) -> Self {
        Self { row, others }
    }

    pub fn updated_seq(&self) -> u64 {
        self.row.updated_seq
    }

    fn events(&self) -> impl Iterator<Item = &StoredHead> {
        std::iter::once(&self.row.latest).chain(&self.others)
    }

    /// The bytes this change puts on a page, counted against its budget:
    /// every head's payload and version vector, the merged vector, the ids,
    /// times and field names around them. As MessagePack carries them; JSON
    /// writes payloads in base64, a third more.
    pub fn wire_bytes(&self) -> u64 {
        /// Field names, two ids, a seq, an op and a time.
        const HEAD: u64 = 200;
        /// Field names and flags.
        const CHANGE: u64 = 100;
        let len = |text: &str| text.len() as u64;
        let heads: u64 = self
            .events()
            .map(|head| HEAD + len(&head.version) + head.payload.as_ref().map_or(0, |p| p.len() as u64))
            .sum();
        CHANGE + len(&self.row.id) + self.row.parent_id.as_deref().map_or(0, len) + len(&self.row.version) + heads
    }

    fn event(&self, seq: u64) -> Option<&StoredHead> {
        self.events().find(|head| head.seq == seq)
    }
}

/// A stored head written in [`ChangeHead`](super::wire::ChangeHead)'s shape, its version vector passed through as stored.
struct HeadAsChange<'a> {
    event: &'a StoredHead,
    version: StoredVersion<'a>,
}

impl Serialize for HeadAsChange<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct PayloadOut<'a>(&'a [u8]);
        impl Serialize for PayloadOut<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize_payload(self.0, serializer)
            }
        }
        let event = self.event;
        let mut out = serializer.serialize_struct("ChangeHead", 7)?;
        out.serialize_field("event_id", &event.event_id.hyphenated())?;
        out.serialize_field("device_id", &event.device_id.hyphenated())?;
        out.serialize_field("seq", &event.seq)?;
        out.serialize_field("op", &event.op)?;
        out.serialize_field("version", &self.version)?;
        out.serialize_field("payload", &event.payload.as_deref().map(PayloadOut))?;
        out.serialize_field("client_time", &event.client_time)?;
        out.end()
    }
}

/// [`Change`](super::wire::Change)'s shape.
impl Serialize for PageChange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let row = &self.row;
        let version = parse_version(&row.version).map_err(S::Error::custom)?;
        let seqs =
            parse_heads(&row.heads).ok_or_else(|| S::Error::custom(heads_error(row.kind, &row.id, &row.heads)))?;
        // A head whose event was not read (never so for rows the projector
        // wrote) fails the response rather than sending a wrong head.
        let heads = seqs
            .into_iter()
            .map(|seq| match self.event(seq) {
                Some(event) => match parse_version(&event.version) {
                    Ok(version) => Ok(HeadAsChange { event, version }),
                    Err(_) => Err(format!("event seq {seq}: version")),
                },
                None => Err(format!("{} {}: no event read for head seq {seq}", row.kind.as_str(), row.id)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(S::Error::custom)?;
        let kind: Kind = row.kind;
        let mut out = serializer.serialize_struct("Change", 7)?;
        out.serialize_field("kind", &kind)?;
        out.serialize_field("id", &row.id)?;
        out.serialize_field("parent_id", &row.parent_id)?;
        out.serialize_field("deleted", &row.deleted)?;
        out.serialize_field("conflict", &row.conflict)?;
        out.serialize_field("version", &version)?;
        out.serialize_field("heads", &heads)?;
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::events::version::VersionVector;
    use crate::events::{Kind, Op};
    use crate::projection::aggregate::{AggregateHead, AggregateRow};
    use crate::store::StoreError;
    use crate::sync::wire::{Change, ChangeHead, PullResponse};
    use crate::views;

    fn head(seq: u64, device: Uuid, op: Op, version: VersionVector, parent: Option<Uuid>) -> AggregateHead {
        AggregateHead {
            seq,
            event_id: Uuid::new_v4(),
            device_id: device,
            op,
            version,
            client_time: Utc.timestamp_opt(1_790_000_000 + seq as i64, 123_456_000).unwrap(),
            parent_id: parent,
        }
    }

    /// A head's event as pull reads it from the log.
    fn event_of(head: &AggregateHead, payload: Option<Vec<u8>>) -> StoredHead {
        StoredHead {
            seq: head.seq,
            event_id: head.event_id,
            device_id: head.device_id,
            op: head.op,
            version: head.version.to_json(),
            client_time: head.client_time,
            payload,
        }
    }

    /// The typed change pull used to build, and the stored row and events it
    /// is built from now. `payloads` in the order of `heads`; the row's
    /// latest change is its head with the highest seq.
    fn both(kind: Kind, heads: Vec<AggregateHead>, payloads: Vec<Option<Vec<u8>>>) -> (Change, PageChange) {
        let updated_seq = heads.iter().map(|h| h.seq).max().unwrap();
        let parent_id = heads.iter().find_map(|h| h.parent_id);
        let mut version = VersionVector::default();
        for head in &heads {
            version.merge(&head.version);
        }
        let row = AggregateRow {
            kind,
            id: Uuid::new_v4(),
            parent_id,
            deleted: heads.iter().all(|h| h.op == Op::Delete),
            conflict: heads.len() > 1,
            heads,
            version,
            updated_seq,
            created_seq: 1,
        };
        let values = views::values(&row).unwrap();
        let text = |i: usize| match &values[i] {
            libsql::Value::Text(text) => Some(text.clone()),
            _ => None,
        };
        let events: Vec<StoredHead> = row.heads.iter().zip(payloads.clone()).map(|(h, p)| event_of(h, p)).collect();
        let (latest, others): (Vec<StoredHead>, Vec<StoredHead>) =
            events.into_iter().partition(|event| event.seq == updated_seq);
        let stored = StoredChange {
            kind,
            id: text(0).unwrap(),
            parent_id: text(1),
            heads: text(2).unwrap(),
            version: text(3).unwrap(),
            deleted: row.deleted,
            conflict: row.conflict,
            updated_seq,
            latest: latest.into_iter().next().unwrap(),
        };
        assert_eq!(
            PageChange::other_head_seqs(&stored).unwrap(),
            others.iter().map(|event| event.seq).collect::<Vec<_>>()
        );
        let page = PageChange::new(stored, others);
        let typed = Change {
            kind,
            id: row.id.hyphenated(),
            parent_id: row.parent_id.map(Uuid::hyphenated),
            deleted: row.deleted,
            conflict: row.conflict,
            version: row.version.clone(),
            heads: row.heads.into_iter().zip(payloads).map(|(h, p)| ChangeHead::new(h, p)).collect(),
        };
        (typed, page)
    }

    #[test]
    fn a_page_is_written_exactly_as_the_typed_response() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let entry = Uuid::new_v4();
        let mut two = VersionVector::single(a, 2);
        two.merge(&VersionVector::single(b, 1));
        let cases = vec![
            both(Kind::Entry, vec![head(7, a, Op::Put, VersionVector::single(a, 1), None)], vec![Some(vec![1, 2, 3])]),
            both(
                Kind::Tag,
                vec![
                    head(9, a, Op::Put, VersionVector::single(a, 3), Some(entry)),
                    head(11, b, Op::Delete, two, Some(entry)),
                ],
                vec![Some(vec![0xff; 40]), None],
            ),
            // Heads are ordered by event id, not seq: the latest may come first.
            both(
                Kind::Entry,
                vec![
                    head(13, b, Op::Put, VersionVector::single(b, 6), None),
                    head(10, a, Op::Put, VersionVector::single(a, 4), None),
                ],
                vec![Some(vec![5; 8]), Some(vec![6; 9])],
            ),
            both(Kind::Memory, vec![head(12, b, Op::Delete, VersionVector::single(b, 5), None)], vec![None]),
        ];
        let (typed, page): (Vec<Change>, Vec<PageChange>) = cases.into_iter().unzip();
        let typed = PullResponse { changes: typed, cursor: 12, has_more: true, head_hash: HexHash([7; 32]) };
        let page = Page {
            changes: page,
            cursor: 12,
            has_more: true,
            head: crate::events::LogTip { seq: 12, hash: [7; 32] },
            wire_bytes: 0,
        };
        assert_eq!(serde_json::to_vec(&page).unwrap(), serde_json::to_vec(&typed).unwrap());
        assert_eq!(rmp_serde::to_vec_named(&page).unwrap(), rmp_serde::to_vec_named(&typed).unwrap());
        // Every byte of a change counts: its payloads and its version vectors too.
        for change in &page.changes {
            let json = serde_json::to_vec(change).unwrap().len() as u64;
            let msgpack = rmp_serde::to_vec_named(change).unwrap().len() as u64;
            assert!(change.wire_bytes() >= msgpack, "{} < {msgpack}", change.wire_bytes());
            assert!(change.wire_bytes() >= json / 2, "{} vs {json}", change.wire_bytes());
        }
    }

    #[test]
    fn stored_text_that_does_not_parse_is_an_error_never_a_panic() {
        let event = |seq: u64| StoredHead {
            seq,
            event_id: Uuid::nil(),
            device_id: Uuid::nil(),
            op: Op::Put,
            version: "{}".into(),
            client_time: Utc::now(),
            payload: Some(vec![1]),
        };
        let good = StoredChange {
            kind: Kind::Entry,
            id: Uuid::new_v4().to_string(),
            parent_id: None,
            heads: "[1]".into(),
            version: "{}".into(),
            deleted: false,
            conflict: false,
            updated_seq: 1,
            latest: event(1),
        };
        assert!(PageChange::other_head_seqs(&good).unwrap().is_empty());
        assert!(serde_json::to_vec(&PageChange::new(good.clone(), Vec::new())).is_ok());
        // A conflict's heads are read when the row is.
        let conflict = StoredChange { heads: "[{\"seq\":1}]".into(), conflict: true, ..good.clone() };
        assert!(
            matches!(PageChange::other_head_seqs(&conflict), Err(StoreError::Corrupt(msg)) if msg.contains("heads"))
        );
        let conflict = StoredChange { heads: "[1,2]".into(), conflict: true, ..good.clone() };
        assert_eq!(PageChange::other_head_seqs(&conflict).unwrap(), [2]);
        // Anything else fails the response.
        for bad in [
            StoredChange { heads: "[{\"seq\":1}]".into(), ..good.clone() },
            StoredChange { version: "{\"a\":-1}".into(), ..good.clone() },
            StoredChange { latest: StoredHead { version: "[]".into(), ..event(1) }, ..good.clone() },
            // Its one head is not its latest change: no event was read for it.
            StoredChange { heads: "[2]".into(), ..good.clone() },
        ] {
            let change = PageChange::new(bad, Vec::new());
            assert!(serde_json::to_vec(&change).is_err());
            assert!(rmp_serde::to_vec_named(&change).is_err());
        }
    }
}
