//! The record of an event in a run: length-prefixed, starting with its sort
//! key, the rest laid out with the hash chain's pieces (ids as 16 bytes,
//! times as integers, no payload but a device's).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::hash::{put_optional_bytes, put_optional_uuid, put_version};
use crate::events::version::VersionVector;
use crate::events::{Kind, NewEvent, Op, StoredEvent};
use crate::store::{StoreError, StoreResult};

/// The kinds in the text order of their names: the order SQLite sorted them
/// in, and the order of replay's views.
pub(super) const KINDS_BY_NAME: [Kind; 5] = [Kind::Device, Kind::Embedding, Kind::Entry, Kind::Memory, Kind::Tag];

fn rank(kind: Kind) -> u8 {
    match kind {
        Kind::Device => 0,
        Kind::Embedding => 1,
        Kind::Entry => 2,
        Kind::Memory => 3,
        Kind::Tag => 4,
    }
}

/// Kind rank, aggregate id (big-endian: the order of its text form) and seq
/// (big-endian): byte order is the sort order.
pub(super) type Key = [u8; KEY_LEN];
const KEY_LEN: usize = 1 + 16 + 8;

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("replay's sorted log: {what}"))
}

/// Appends `stored` to `out` as a length-prefixed record that starts with
/// its key; the fields are laid out with the hash chain's pieces.
pub(super) fn encode(stored: &StoredEvent, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let event = &stored.event;
    out.push(rank(event.kind));
    out.extend_from_slice(event.aggregate_id.as_bytes());
    out.extend_from_slice(&stored.seq.to_be_bytes());
    out.extend_from_slice(event.event_id.as_bytes());
    out.extend_from_slice(stored.device_id.as_bytes());
    put_optional_uuid(out, event.parent_id);
    out.push(match event.op {
        Op::Put => 0,
        Op::Delete => 1,
    });
    for time in [event.client_time, stored.received_at] {
        out.extend_from_slice(&time.timestamp().to_be_bytes());
        out.extend_from_slice(&time.timestamp_subsec_nanos().to_be_bytes());
    }
    out.extend_from_slice(&stored.hash);
    put_version(out, &event.version);
    put_optional_bytes(out, event.payload.as_deref());
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Reads a record's fields in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn array<const N: usize>(&mut self) -> StoreResult<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or_else(|| corrupt("a record is cut short"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn bytes(&mut self, len: usize) -> StoreResult<&'a [u8]> {
        if self.0.len() < len {
            return Err(corrupt("a record is cut short"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> StoreResult<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn uuid(&mut self) -> StoreResult<Uuid> {
        Ok(Uuid::from_bytes(self.array()?))
    }

    fn u32(&mut self) -> StoreResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> StoreResult<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn time(&mut self) -> StoreResult<DateTime<Utc>> {
        let secs = i64::from_be_bytes(self.array()?);
        let nanos = self.u32()?;
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| corrupt("a time is out of range"))
    }
}

/// The event of a record (without its length prefix).
pub(super) fn decode(record: &[u8]) -> StoreResult<StoredEvent> {
    let mut fields = Fields(record);
    let kind = *KINDS_BY_NAME.get(usize::from(fields.byte()?)).ok_or_else(|| corrupt("unknown kind"))?;
    let aggregate_id = fields.uuid()?;
    let seq = fields.u64()?;
    let event_id = fields.uuid()?;
    let device_id = fields.uuid()?;
    let parent_id = match fields.byte()? {
        0 => None,
        1 => Some(fields.uuid()?),
        _ => return Err(corrupt("a parent flag is neither 0 nor 1")),
    };
    let op = match fields.byte()? {
        0 => Op::Put,
        1 => Op::Delete,
        _ => return Err(corrupt("unknown op")),
    };
    let client_time = fields.time()?;
    let received_at = fields.time()?;
    let hash = fields.array()?;
    let entries = fields.u32()?;
    let version = (0..entries).map(|_| Ok((fields.uuid()?, fields.u64()?))).collect::<StoreResult<VersionVector>>()?;
    let payload = match fields.byte()? {
        0 => None,
        1 => {
            let len = fields.u32()? as usize;
            Some(fields.bytes(len)?.to_vec())
        }
        _ => return Err(corrupt("a payload flag is neither 0 nor 1")),
    };
    if !fields.0.is_empty() {
        return Err(corrupt("a record is longer than its event"));
    }
    Ok(StoredEvent {
        seq,
        device_id,
        received_at,
        hash,
        event: NewEvent { event_id, kind, aggregate_id, parent_id, op, version, payload, client_time },
    })
}

pub(super) fn key_of(record: &[u8]) -> StoreResult<Key> {
    record.first_chunk::<KEY_LEN>().copied().ok_or_else(|| corrupt("a record is cut short"))
}

/// The record at `offset` of a buffer of length-prefixed records: its
/// bytes with the prefix, and without.
pub(super) fn record_at(arena: &[u8], offset: u32) -> StoreResult<(&[u8], &[u8])> {
    let start = offset as usize;
    let cut = || corrupt("a record is cut short");
    let prefix = arena.get(start..).and_then(|rest| rest.first_chunk::<4>()).ok_or_else(cut)?;
    let end = start + 4 + u32::from_le_bytes(*prefix) as usize;
    let whole = arena.get(start..end).ok_or_else(cut)?;
    Ok((whole, &whole[4..]))
}

#[cfg(test)]
pub(super) mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    pub(in crate::replay::sorted_log) fn event(
        seq: u64,
        kind: Kind,
        aggregate: u128,
        payload: Option<Vec<u8>>,
    ) -> StoredEvent {
        let device = Uuid::from_u128(7);
        StoredEvent {
            seq,
            device_id: device,
            received_at: Utc.timestamp_opt(1_700_000_000 + seq as i64, 123_456_789).unwrap(),
            hash: [seq as u8; 32],
            event: NewEvent {
                event_id: Uuid::from_u128(u128::from(seq) << 64 | 1),
                kind,
                aggregate_id: Uuid::from_u128(aggregate),
                parent_id: seq.is_multiple_of(3).then(|| Uuid::from_u128(99)),
                op: if seq.is_multiple_of(4) { Op::Delete } else { Op::Put },
                version: [(device, seq), (Uuid::from_u128(8), 2)].into_iter().collect(),
                payload,
                client_time: Utc.timestamp_opt(-5_000 + seq as i64, 1).unwrap(),
            },
        }
    }

    #[test]
    fn kinds_by_name_are_in_text_order_and_ranked_by_position() {
        let mut sorted = KINDS_BY_NAME;
        sorted.sort_by_key(|kind| kind.as_str());
        assert_eq!(sorted, KINDS_BY_NAME);
        for (i, kind) in KINDS_BY_NAME.into_iter().enumerate() {
            assert_eq!(usize::from(rank(kind)), i);
        }
    }

    #[test]
    fn records_decode_to_the_event_encoded() {
        for stored in [event(1, Kind::Device, 5, Some(vec![1, 2, 3])), event(12, Kind::Tag, u128::MAX, None)] {
            let mut out = Vec::new();
            encode(&stored, &mut out);
            assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()) as usize, out.len() - 4);
            assert_eq!(decode(&out[4..]).unwrap(), stored);
            assert!(decode(&out[4..out.len() - 1]).is_err(), "a cut record is an error, not a panic");
        }
    }

    proptest! {
        #[test]
        fn uuid_byte_order_is_the_order_of_their_text(a in any::<u128>(), b in any::<u128>()) {
            let (a, b) = (Uuid::from_u128(a), Uuid::from_u128(b));
            prop_assert_eq!(a.as_bytes().cmp(b.as_bytes()), a.to_string().cmp(&b.to_string()));
        }
    }
}
