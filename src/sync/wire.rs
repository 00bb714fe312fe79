//! The shapes of the sync endpoints, the same in JSON and MessagePack.
//! Ids are UUID strings in both; payloads are base64 strings in JSON and
//! `bin` in MessagePack; hashes are lowercase hex strings in both.
//! Requests also serialize and responses also deserialize, for clients
//! written against this crate (`echolia-load`, the benchmarks); such a
//! client reads MessagePack with [`crate::http::codec::from_msgpack`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::fmt::Hyphenated;
use uuid::Uuid;

use crate::events::version::VersionVector;
use crate::events::wire::enum_by_name;
pub use crate::events::wire::{serialize_payload, HexHash, LogEvent, Payload};
use crate::events::{Kind, Op};
use crate::projection::aggregate::AggregateHead;

/// One event as a device pushes it. It serializes as clients send it (ids
/// as strings in MessagePack too), for clients written against this crate
/// (`echolia-load`, the benchmarks).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClientEvent {
    /// Client-generated; the idempotency key. Any UUID; time-ordered (version 7) recommended.
    #[serde(serialize_with = "uuid::serde::hyphenated::serialize")]
    pub event_id: Uuid,
    /// `entry`, `memory`, `tag` or `embedding`.
    #[serde(deserialize_with = "enum_by_name")]
    pub kind: Kind,
    #[serde(serialize_with = "uuid::serde::hyphenated::serialize")]
    pub aggregate_id: Uuid,
    /// Required for `tag` and `embedding`: the entry it belongs to.
    #[serde(default, serialize_with = "uuid::serde::hyphenated::option::serialize")]
    pub parent_id: Option<Uuid>,
    #[serde(deserialize_with = "enum_by_name")]
    pub op: Op,
    /// Device id → counter; must hold the caller's device with a counter ≥ 1.
    #[schema(value_type = Object, example = json!({"6f1c…": 3}))]
    pub version: VersionVector,
    /// Ciphertext (base64 in JSON), required for `put`, absent for `delete`, at most 1 MiB.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Byte)]
    pub payload: Option<Payload>,
    pub client_time: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushRequest {
    /// At most 1,000 events.
    pub events: Vec<ClientEvent>,
}

/// What the push did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PushStatus {
    /// Appended; now the only head of its aggregate.
    Applied,
    /// Appended; a head beside others (a conflict to resolve).
    Conflict,
    /// Appended to the log, but dominated: not in the view.
    Stale,
    /// This event_id was already in the log: nothing appended, the original seq returned.
    Duplicate,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushResult {
    #[schema(value_type = String, format = Uuid)]
    pub event_id: Hyphenated,
    pub seq: u64,
    pub status: PushStatus,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushResponse {
    /// The log head after the push.
    pub cursor: u64,
    #[schema(value_type = String, example = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")]
    pub head_hash: HexHash,
    pub results: Vec<PushResult>,
}

/// A head of an aggregate, with its payload.
// The schema keeps the name client code was generated from.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = HeadView)]
pub struct ChangeHead {
    #[schema(value_type = String, format = Uuid)]
    pub event_id: Hyphenated,
    #[schema(value_type = String, format = Uuid)]
    pub device_id: Hyphenated,
    pub seq: u64,
    pub op: Op,
    #[schema(value_type = Object)]
    pub version: VersionVector,
    #[schema(value_type = Option<String>, format = Byte)]
    pub payload: Option<Payload>,
    pub client_time: DateTime<Utc>,
}

impl ChangeHead {
    pub fn new(head: AggregateHead, payload: Option<Vec<u8>>) -> Self {
        ChangeHead {
            event_id: head.event_id.hyphenated(),
            device_id: head.device_id.hyphenated(),
            seq: head.seq,
            op: head.op,
            version: head.version,
            payload: payload.map(Payload),
            client_time: head.client_time,
        }
    }
}

/// One aggregate changed since the cursor, as it stands now.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    pub kind: Kind,
    #[schema(value_type = String, format = Uuid)]
    pub id: Hyphenated,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub parent_id: Option<Hyphenated>,
    pub deleted: bool,
    pub conflict: bool,
    /// The merge of the heads' version vectors.
    #[schema(value_type = Object)]
    pub version: VersionVector,
    pub heads: Vec<ChangeHead>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PullResponse {
    pub changes: Vec<Change>,
    /// Send it as `since` next time; the log head when `has_more` is false.
    pub cursor: u64,
    pub has_more: bool,
    #[schema(value_type = String)]
    pub head_hash: HexHash,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventsResponse {
    pub events: Vec<LogEvent>,
    pub cursor: u64,
    pub has_more: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusResponse {
    /// The log head (seq of the newest event).
    pub cursor: u64,
    #[schema(value_type = String)]
    pub head_hash: HexHash,
    /// Events in the log (device events included).
    pub events: u64,
    /// Live (not deleted) aggregates of each kind.
    pub entries: u64,
    pub memories: u64,
    pub tags: u64,
    pub embeddings: u64,
    /// Aggregates with more than one head, all kinds.
    pub conflicts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::StoredEvent;
    use crate::http::codec::parse_msgpack;

    #[derive(Serialize)]
    struct Outgoing<'a> {
        event_id: &'a str,
        kind: &'a str,
        aggregate_id: &'a str,
        op: &'a str,
        version: std::collections::BTreeMap<&'a str, u64>,
        payload: Payload,
        client_time: &'a str,
    }

    #[test]
    fn a_messagepack_event_decodes_with_string_ids_and_bin_payload() {
        let id = "6f1c2a9e-3b4d-4c5e-8f70-112233445566";
        let bytes = rmp_serde::to_vec_named(&Outgoing {
            event_id: id,
            kind: "entry",
            aggregate_id: id,
            op: "put",
            version: [(id, 1)].into_iter().collect(),
            payload: Payload(vec![0, 1, 2, 255]),
            client_time: "2026-11-29T10:00:00Z",
        })
        .unwrap();
        let event: ClientEvent = match parse_msgpack(&bytes) {
            Ok(event) => event,
            Err(err) => panic!("{err:?}"),
        };
        assert_eq!(event.event_id.to_string(), id);
        assert_eq!(event.kind, Kind::Entry);
        assert_eq!(event.payload, Some(Payload(vec![0, 1, 2, 255])));
    }

    #[test]
    fn a_push_request_serialized_by_a_client_decodes_on_the_server_in_both_formats() {
        let device = Uuid::new_v4();
        let request = PushRequest {
            events: vec![ClientEvent {
                event_id: Uuid::new_v4(),
                kind: Kind::Tag,
                aggregate_id: Uuid::new_v4(),
                parent_id: Some(Uuid::new_v4()),
                op: Op::Put,
                version: VersionVector::single(device, 2),
                payload: Some(Payload(vec![0, 255])),
                client_time: chrono::Utc::now(),
            }],
        };
        let packed = rmp_serde::to_vec_named(&request).unwrap();
        let id = request.events[0].event_id.to_string();
        assert!(packed.windows(id.len()).any(|w| w == id.as_bytes()), "ids are strings in MessagePack");
        let decoded: PushRequest = parse_msgpack(&packed).unwrap_or_else(|err| panic!("{err:?}"));
        let json: PushRequest = serde_json::from_slice(&serde_json::to_vec(&request).unwrap()).unwrap();
        for event in [&decoded.events[0], &json.events[0]] {
            assert_eq!(event.event_id, request.events[0].event_id);
            assert_eq!(event.parent_id, request.events[0].parent_id);
            assert_eq!(event.version, request.events[0].version);
            assert_eq!(event.payload, request.events[0].payload);
        }
    }

    #[test]
    fn a_pull_response_decodes_on_the_client_in_both_formats() {
        let head = AggregateHead {
            seq: 7,
            event_id: Uuid::new_v4(),
            device_id: Uuid::new_v4(),
            op: Op::Put,
            version: VersionVector::single(Uuid::new_v4(), 3),
            client_time: chrono::Utc::now(),
            parent_id: None,
        };
        let change = Change {
            kind: Kind::Entry,
            id: Uuid::new_v4().hyphenated(),
            parent_id: None,
            deleted: false,
            conflict: false,
            version: head.version.clone(),
            heads: vec![ChangeHead::new(head, Some(vec![1, 2, 3]))],
        };
        let page = PullResponse { changes: vec![change], cursor: 7, has_more: false, head_hash: HexHash([0xab; 32]) };
        let packed: PullResponse = crate::http::codec::from_msgpack(&rmp_serde::to_vec_named(&page).unwrap()).unwrap();
        let json: PullResponse = serde_json::from_slice(&serde_json::to_vec(&page).unwrap()).unwrap();
        for decoded in [packed, json] {
            assert_eq!(decoded.head_hash, page.head_hash);
            assert_eq!(decoded.changes[0].id, page.changes[0].id);
            assert_eq!(decoded.changes[0].version, page.changes[0].version);
            assert_eq!(decoded.changes[0].heads[0].payload, Some(Payload(vec![1, 2, 3])));
        }
    }

    #[test]
    fn payloads_are_base64_in_json_and_bin_in_messagepack() {
        let payload = Payload(vec![0xde, 0xad]);
        assert_eq!(serde_json::to_string(&payload).unwrap(), "\"3q0=\"");
        assert_eq!(rmp_serde::to_vec(&payload).unwrap(), vec![0xc4, 2, 0xde, 0xad]);
        let ids = LogEvent::from(StoredEvent {
            seq: 1,
            device_id: Uuid::nil(),
            received_at: chrono::Utc::now(),
            hash: [0xab; 32],
            event: crate::events::NewEvent {
                event_id: Uuid::nil(),
                kind: Kind::Entry,
                aggregate_id: Uuid::nil(),
                parent_id: None,
                op: Op::Delete,
                version: VersionVector::single(Uuid::nil(), 1),
                payload: None,
                client_time: chrono::Utc::now(),
            },
        });
        let packed = rmp_serde::to_vec_named(&ids).unwrap();
        let nil = Uuid::nil().to_string();
        assert!(packed.windows(nil.len()).any(|w| w == nil.as_bytes()), "UUIDs are strings in MessagePack");
        assert!(packed.windows(64).any(|w| w == "ab".repeat(32).as_bytes()), "hashes are hex");
    }
}
