//! A pull page as the server writes it: [`PullResponse`](super::wire::PullResponse)'s
//! shape, made from the views' stored text. The projector stores ids, times
//! and version vectors in their wire form (JSON), so a row's heads and
//! version are parsed into borrowed strings as the response is written and
//! written out as they are, instead of being parsed into UUIDs, times and
//! maps and formatted back again. Text that does not parse (a view not
//! written by the projector) fails the response with a 500, never a panic.

use std::collections::BTreeMap;

use serde::ser::{Error as _, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use super::wire::{serialize_payload, HexHash};
use crate::events::append::Head;
use crate::events::{Kind, Op};
use crate::projection::views::StoredChange;
use crate::store::{StoreError, StoreResult};

/// One page of `GET /sync/pull`.
#[derive(Debug, Serialize)]
pub struct Page {
    pub changes: Vec<PageChange>,
    pub cursor: u64,
    pub has_more: bool,
    /// The log head the page was read at; its hash is `head_hash` on the wire.
    #[serde(rename = "head_hash", serialize_with = "head_hash")]
    pub head: Head,
}

fn head_hash<S: Serializer>(head: &Head, serializer: S) -> Result<S::Ok, S::Error> {
    HexHash(head.hash).serialize(serializer)
}

/// A version vector as stored: device id → counter, in key order.
type StoredVersion<'a> = BTreeMap<&'a str, u64>;

/// A head as the view stores it (`parent_id` is there too; pull sends the
/// row's own). Strings are borrowed: the projector's JSON has no escapes.
#[derive(Debug, Deserialize)]
struct StoredHead<'a> {
    seq: u64,
    event_id: &'a str,
    device_id: &'a str,
    op: Op,
    #[serde(borrow)]
    version: StoredVersion<'a>,
    client_time: &'a str,
}

fn parse_heads(heads: &str) -> serde_json::Result<Vec<StoredHead<'_>>> {
    serde_json::from_str(heads)
}

fn parse_version(version: &str) -> serde_json::Result<StoredVersion<'_>> {
    serde_json::from_str(version)
}

/// A changed aggregate with the payloads of its heads.
#[derive(Debug)]
pub struct PageChange {
    row: StoredChange,
    /// The payload of each head, by the head's seq.
    payloads: Vec<(u64, Option<Vec<u8>>)>,
}

impl PageChange {
    /// The seqs of the heads whose payloads are still to be read: none for
    /// a row without a conflict (its one head is its latest change, whose
    /// payload came with the row), the others for a conflict.
    pub fn other_head_seqs(row: &StoredChange) -> StoreResult<Vec<u64>> {
        if !row.conflict {
            return Ok(Vec::new());
        }
        let heads = parse_heads(&row.heads)
            .map_err(|_| StoreError::Corrupt(format!("{} {}: heads", row.kind.as_str(), row.id)))?;
        Ok(heads.iter().map(|head| head.seq).filter(|seq| *seq != row.updated_seq).collect())
    }

    /// `others`: the payloads of [`Self::other_head_seqs`], by seq.
    pub fn new(mut row: StoredChange, others: Vec<(u64, Option<Vec<u8>>)>) -> Self {
        let mut payloads = Vec::with_capacity(1 + others.len());
        payloads.push((row.updated_seq, row.latest_payload.take()));
        payloads.extend(others);
        Self { row, payloads }
    }

    pub fn updated_seq(&self) -> u64 {
        self.row.updated_seq
    }

    /// Payload bytes of all heads.
    pub fn payload_bytes(&self) -> u64 {
        self.payloads.iter().filter_map(|(_, p)| p.as_ref()).map(|p| p.len() as u64).sum()
    }

    fn payload(&self, seq: u64) -> Option<&Option<Vec<u8>>> {
        self.payloads.iter().find(|(at, _)| *at == seq).map(|(_, payload)| payload)
    }
}

/// [`HeadView`](super::wire::HeadView)'s shape.
struct HeadOut<'a> {
    head: StoredHead<'a>,
    payload: Option<&'a [u8]>,
}

impl Serialize for HeadOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct PayloadOut<'a>(&'a [u8]);
        impl Serialize for PayloadOut<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize_payload(self.0, serializer)
            }
        }
        let head = &self.head;
        let mut out = serializer.serialize_struct("HeadView", 7)?;
        out.serialize_field("event_id", head.event_id)?;
        out.serialize_field("device_id", head.device_id)?;
        out.serialize_field("seq", &head.seq)?;
        out.serialize_field("op", &head.op)?;
        out.serialize_field("version", &head.version)?;
        out.serialize_field("payload", &self.payload.map(PayloadOut))?;
        out.serialize_field("client_time", head.client_time)?;
        out.end()
    }
}

/// [`Change`](super::wire::Change)'s shape.
impl Serialize for PageChange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let row = &self.row;
        let version = parse_version(&row.version).map_err(S::Error::custom)?;
        let heads = parse_heads(&row.heads).map_err(S::Error::custom)?;
        // A head without a payload read (never so for rows the projector
        // wrote) fails the response rather than sending a wrong payload.
        let heads = heads
            .into_iter()
            .map(|head| match self.payload(head.seq) {
                Some(payload) => Ok(HeadOut { payload: payload.as_deref(), head }),
                None => Err(S::Error::custom(format!(
                    "{} {}: no payload read for seq {}",
                    row.kind.as_str(),
                    row.id,
                    head.seq
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
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
    use crate::events::{Kind, Op};
    use crate::projection::aggregate::{AggregateRow, Head};
    use crate::projection::version::VersionVector;
    use crate::projection::views;
    use crate::sync::wire::{Change, HeadView, PullResponse};

    fn head(seq: u64, device: Uuid, op: Op, version: VersionVector, parent: Option<Uuid>) -> Head {
        Head {
            seq,
            event_id: Uuid::new_v4(),
            device_id: device,
            op,
            version,
            client_time: Utc.timestamp_opt(1_790_000_000 + seq as i64, 123_456_000).unwrap(),
            parent_id: parent,
        }
    }

    /// The typed change pull used to build, and the stored row it is built
    /// from now. `payloads` in the order of `heads`; the row's latest change
    /// is its head with the highest seq.
    fn both(kind: Kind, heads: Vec<Head>, payloads: Vec<Option<Vec<u8>>>) -> (Change, PageChange) {
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
        };
        let values = views::values(&row).unwrap();
        let text = |i: usize| match &values[i] {
            libsql::Value::Text(text) => Some(text.clone()),
            _ => None,
        };
        let by_seq: Vec<(u64, Option<Vec<u8>>)> = row.heads.iter().map(|h| h.seq).zip(payloads.clone()).collect();
        let stored = StoredChange {
            kind,
            id: text(0).unwrap(),
            parent_id: text(1),
            heads: text(2).unwrap(),
            version: text(3).unwrap(),
            deleted: row.deleted,
            conflict: row.conflict,
            updated_seq,
            latest_payload: by_seq.iter().find(|(seq, _)| *seq == updated_seq).unwrap().1.clone(),
        };
        let others: Vec<(u64, Option<Vec<u8>>)> = by_seq.into_iter().filter(|(seq, _)| *seq != updated_seq).collect();
        assert_eq!(
            PageChange::other_head_seqs(&stored).unwrap(),
            others.iter().map(|(seq, _)| *seq).collect::<Vec<_>>()
        );
        let page = PageChange::new(stored, others);
        let typed = Change {
            kind,
            id: row.id.hyphenated(),
            parent_id: row.parent_id.map(Uuid::hyphenated),
            deleted: row.deleted,
            conflict: row.conflict,
            version: row.version.clone(),
            heads: row.heads.into_iter().zip(payloads).map(|(h, p)| HeadView::new(h, p)).collect(),
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
            head: crate::events::append::Head { seq: 12, hash: [7; 32] },
        };
        assert_eq!(serde_json::to_vec(&page).unwrap(), serde_json::to_vec(&typed).unwrap());
        assert_eq!(rmp_serde::to_vec_named(&page).unwrap(), rmp_serde::to_vec_named(&typed).unwrap());
        assert_eq!(page.changes.iter().map(PageChange::payload_bytes).collect::<Vec<_>>(), vec![3, 40, 17, 0]);
    }

    #[test]
    fn stored_text_that_does_not_parse_is_an_error_never_a_panic() {
        let head = |seq: u64| {
            format!(
                r#"{{"seq":{seq},"event_id":"{}","device_id":"{}","op":"put","version":{{}},"client_time":"t"}}"#,
                Uuid::nil(),
                Uuid::nil()
            )
        };
        let good = StoredChange {
            kind: Kind::Entry,
            id: Uuid::new_v4().to_string(),
            parent_id: None,
            heads: format!("[{}]", head(1)),
            version: "{}".into(),
            deleted: false,
            conflict: false,
            updated_seq: 1,
            latest_payload: Some(vec![1]),
        };
        assert!(PageChange::other_head_seqs(&good).unwrap().is_empty());
        assert!(serde_json::to_vec(&PageChange::new(good.clone(), Vec::new())).is_ok());
        // A conflict's heads are read when the row is.
        let conflict = StoredChange { heads: "[{\"seq\":1}]".into(), conflict: true, ..good.clone() };
        assert!(
            matches!(PageChange::other_head_seqs(&conflict), Err(StoreError::Corrupt(msg)) if msg.ends_with("heads"))
        );
        // Anything else fails the response.
        for bad in [
            StoredChange { heads: "[{\"seq\":1}]".into(), ..good.clone() },
            StoredChange { version: "{\"a\":-1}".into(), ..good.clone() },
            // Its one head is not its latest change: no payload was read for it.
            StoredChange { heads: format!("[{}]", head(2)), ..good.clone() },
        ] {
            let change = PageChange::new(bad, Vec::new());
            assert!(serde_json::to_vec(&change).is_err());
            assert!(rmp_serde::to_vec_named(&change).is_err());
        }
    }
}
