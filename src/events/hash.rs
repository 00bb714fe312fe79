//! The tamper-evident hash chain of a user's log:
//! `hash(n) = SHA-256(hash(n-1) ‖ canonical bytes of event n)`, `hash(0)` = 32 zero bytes.
//!
//! The canonical bytes are a fixed binary layout (not JSON), so the chain does
//! not depend on how any serializer orders or escapes fields.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{NewEvent, StoredEvent};
use crate::clock::rfc3339;
use crate::events::version::VersionVector;

/// The `prev_hash` of the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// Domain separation, and room for a later layout.
const LAYOUT_TAG: &[u8] = b"echolia-event-v1";

/// The fields that make an event, laid out in one fixed order.
pub fn canonical_bytes(seq: u64, device_id: Uuid, received_at: &str, event: &NewEvent) -> Vec<u8> {
    let payload_len = event.payload.as_ref().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(160 + payload_len + event.version.len() * 24);
    out.extend_from_slice(LAYOUT_TAG);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(event.event_id.as_bytes());
    out.extend_from_slice(device_id.as_bytes());
    put_str(&mut out, event.kind.as_str());
    out.extend_from_slice(event.aggregate_id.as_bytes());
    put_optional_uuid(&mut out, event.parent_id);
    put_str(&mut out, event.op.as_str());
    put_version(&mut out, &event.version);
    put_optional_bytes(&mut out, event.payload.as_deref());
    put_str(&mut out, &rfc3339(event.client_time));
    put_str(&mut out, received_at);
    out
}

// The pieces of the layout, big-endian. Replay's sorted log
// (`replay::sorted_log`) writes its records with them too.

/// `1` and the id, or `0`.
pub(crate) fn put_optional_uuid(out: &mut Vec<u8>, id: Option<Uuid>) {
    match id {
        Some(id) => {
            out.push(1);
            out.extend_from_slice(id.as_bytes());
        }
        None => out.push(0),
    }
}

/// The number of entries (`u32`), then each device id and its counter.
pub(crate) fn put_version(out: &mut Vec<u8>, version: &VersionVector) {
    out.extend_from_slice(&(version.len() as u32).to_be_bytes());
    for (device, counter) in version.iter() {
        out.extend_from_slice(device.as_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
    }
}

/// `1` and the length-prefixed bytes, or `0`.
pub(crate) fn put_optional_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
        None => out.push(0),
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_bytes(out, text.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// One link of the chain.
pub fn link(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// The hash a stored event must carry, given the hash before it.
pub fn expected_hash(prev_hash: &[u8; 32], stored: &StoredEvent) -> [u8; 32] {
    let canonical = canonical_bytes(stored.seq, stored.device_id, &rfc3339(stored.received_at), &stored.event);
    link(prev_hash, &canonical)
}

/// Where a chain stops holding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("seq {found} follows seq {previous}: the log has a gap or is out of order")]
    Gap { previous: u64, found: u64 },
    #[error("seq {0}: hash does not match the event and the hash before it")]
    HashMismatch(u64),
}

/// Follows a chain forward, event by event, from a known position.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    seq: u64,
    hash: [u8; 32],
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { seq: 0, hash: GENESIS }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, stored: &StoredEvent) -> Result<(), ChainError> {
        if stored.seq != self.seq + 1 {
            return Err(ChainError::Gap { previous: self.seq, found: stored.seq });
        }
        if expected_hash(&self.hash, stored) != stored.hash {
            return Err(ChainError::HashMismatch(stored.seq));
        }
        self.seq = stored.seq;
        self.hash = stored.hash;
        Ok(())
    }

    /// The last verified position: (seq, hash).
    pub fn head(&self) -> (u64, [u8; 32]) {
        (self.seq, self.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::version::VersionVector;
    use crate::events::{Kind, Op};
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn event(n: u8, payload: Option<Vec<u8>>) -> NewEvent {
        let device = Uuid::from_bytes([n; 16]);
        NewEvent {
            event_id: Uuid::from_bytes([n.wrapping_add(1); 16]),
            kind: Kind::Entry,
            aggregate_id: Uuid::from_bytes([7; 16]),
            parent_id: None,
            op: if payload.is_some() { Op::Put } else { Op::Delete },
            version: VersionVector::single(device, u64::from(n) + 1),
            payload,
            client_time: Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap(),
        }
    }

    fn chain_of(events: Vec<NewEvent>) -> Vec<StoredEvent> {
        let mut prev = GENESIS;
        let received = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap();
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                let seq = i as u64 + 1;
                let device_id = Uuid::from_bytes([9; 16]);
                let hash = link(&prev, &canonical_bytes(seq, device_id, &rfc3339(received), &event));
                prev = hash;
                StoredEvent { seq, device_id, received_at: received, hash, event }
            })
            .collect()
    }

    fn verify(chain: &[StoredEvent]) -> Result<(), ChainError> {
        let mut verifier = ChainVerifier::default();
        chain.iter().try_for_each(|stored| verifier.check(stored))
    }

    #[test]
    fn every_field_changes_the_bytes() {
        let base = event(1, Some(vec![1, 2, 3]));
        let at = "2026-11-30T00:00:00.000000Z";
        let reference = canonical_bytes(1, Uuid::nil(), at, &base);
        let mut variants = vec![
            canonical_bytes(2, Uuid::nil(), at, &base),
            canonical_bytes(1, Uuid::max(), at, &base),
            canonical_bytes(1, Uuid::nil(), "2026-11-30T00:00:01.000000Z", &base),
        ];
        let edits: Vec<fn(&mut NewEvent)> = vec![
            |e| e.event_id = Uuid::nil(),
            |e| e.kind = Kind::Memory,
            |e| e.aggregate_id = Uuid::nil(),
            |e| e.parent_id = Some(Uuid::nil()),
            |e| e.op = Op::Delete,
            |e| e.version = VersionVector::single(Uuid::nil(), 1),
            |e| e.payload = Some(vec![1, 2, 4]),
            |e| e.payload = None,
            |e| e.client_time += chrono::Duration::microseconds(1),
        ];
        for edit in edits {
            let mut changed = base.clone();
            edit(&mut changed);
            variants.push(canonical_bytes(1, Uuid::nil(), at, &changed));
        }
        for variant in variants {
            assert_ne!(variant, reference);
        }
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let chain = chain_of((0..5).map(|n| event(n, Some(vec![n; 8]))).collect());
        let mut verifier = ChainVerifier::default();
        for stored in &chain {
            verifier.check(stored).unwrap();
        }
        assert_eq!(verifier.head(), (5, chain[4].hash));
    }

    #[test]
    fn gaps_and_reorders_are_found() {
        let mut chain = chain_of((0..4).map(|n| event(n, None)).collect());
        let mut gapped = chain.clone();
        gapped.remove(1);
        assert_eq!(verify(&gapped), Err(ChainError::Gap { previous: 1, found: 3 }));
        chain.swap(1, 2);
        assert_eq!(verify(&chain), Err(ChainError::Gap { previous: 1, found: 3 }));
    }

    proptest! {
        /// Flipping any bit of any payload breaks the chain exactly at that event.
        #[test]
        fn any_payload_bit_flip_is_found_at_its_seq(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 1..12),
            pick in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let events = payloads.into_iter().enumerate().map(|(i, p)| event(i as u8, Some(p))).collect();
            let mut chain = chain_of(events);
            prop_assert_eq!(verify(&chain), Ok(()));
            let at = pick.index(chain.len());
            let payload = chain[at].event.payload.as_mut().unwrap();
            let byte = bit as usize % payload.len();
            payload[byte] ^= 1 << bit;
            prop_assert_eq!(verify(&chain), Err(ChainError::HashMismatch(at as u64 + 1)));
        }
    }
}
