//! An event's wire form, the same in JSON and MessagePack: payloads are
//! base64 strings in JSON and `bin` in MessagePack, hashes lowercase hex in
//! both. Sync's shapes (`sync::wire`) and the exports (`GET /account/export`,
//! `echolia export`) are made of these.

use std::cell::Cell;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::fmt::Hyphenated;
use uuid::Uuid;

use super::version::VersionVector;
use super::{Kind, Op, StoredEvent};

thread_local! {
    /// Set while [`binary_payloads`] decodes MessagePack: its deserializer
    /// runs human-readable (so ids are read from strings), which alone
    /// would let a payload arrive as text too.
    static BINARY_PAYLOADS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `decode` with payloads accepted as `bin` only, never as text: how
/// MessagePack bodies are read, so each value has exactly one encoding.
pub fn binary_payloads<T>(decode: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            BINARY_PAYLOADS.with(|flag| flag.set(self.0));
        }
    }
    let _reset = Reset(BINARY_PAYLOADS.with(|flag| flag.replace(true)));
    decode()
}

/// A unit enum (`Kind`, `Op`) from its name only: MessagePack would also
/// take a variant index or a one-key map, which no client means.
pub fn enum_by_name<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let name = String::deserialize(deserializer)?;
    T::deserialize(de::value::StrDeserializer::<D::Error>::new(&name))
}

/// Opaque bytes: base64 (standard, padded) in JSON, `bin` in MessagePack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_payload(&self.0, serializer)
    }
}

/// Payload bytes as [`Payload`] writes them. In JSON the quoted base64 goes
/// out as a raw value: base64 needs no escapes, and serde_json would check
/// every byte of it for one (about 7 % of a cold pull's server CPU). JSON is the
/// only human-readable format here; serde_json's `to_value` reads a raw
/// value back into a string.
pub fn serialize_payload<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    if !serializer.is_human_readable() {
        return serializer.serialize_bytes(bytes);
    }
    let mut quoted = String::with_capacity(bytes.len().div_ceil(3) * 4 + 2);
    quoted.push('"');
    STANDARD.encode_string(bytes, &mut quoted);
    quoted.push('"');
    match serde_json::value::RawValue::from_string(quoted) {
        Ok(raw) => raw.serialize(serializer),
        Err(err) => Err(serde::ser::Error::custom(err)),
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PayloadVisitor;

        impl Visitor<'_> for PayloadVisitor {
            type Value = Payload;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a standard base64 string (JSON) or bin (MessagePack)")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Payload, E> {
                if BINARY_PAYLOADS.with(Cell::get) {
                    return Err(E::custom("must be bin in MessagePack, not a string"));
                }
                STANDARD.decode(text).map(Payload).map_err(|_| E::custom("is not standard base64 with padding"))
            }

            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Payload, E> {
                Ok(Payload(bytes.to_vec()))
            }

            fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(bytes))
            }
        }

        deserializer.deserialize_any(PayloadVisitor)
    }
}

/// A SHA-256 hash as lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexHash(pub [u8; 32]);

impl Serialize for HexHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for HexHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut hash = [0; 32];
        hex::decode_to_slice(&text, &mut hash).map_err(|_| de::Error::custom("is not 64 hex digits"))?;
        Ok(HexHash(hash))
    }
}

/// One event of the raw log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogEvent {
    pub seq: u64,
    #[schema(value_type = String, format = Uuid)]
    pub event_id: Hyphenated,
    #[schema(value_type = String, format = Uuid)]
    pub device_id: Hyphenated,
    pub kind: Kind,
    #[schema(value_type = String, format = Uuid)]
    pub aggregate_id: Hyphenated,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub parent_id: Option<Hyphenated>,
    pub op: Op,
    #[schema(value_type = Object)]
    pub version: VersionVector,
    #[schema(value_type = Option<String>, format = Byte)]
    pub payload: Option<Payload>,
    pub client_time: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// SHA-256(previous hash ‖ canonical bytes of this event), hex.
    #[schema(value_type = String)]
    pub hash: HexHash,
}

impl From<StoredEvent> for LogEvent {
    fn from(stored: StoredEvent) -> Self {
        let event = stored.event;
        LogEvent {
            seq: stored.seq,
            event_id: event.event_id.hyphenated(),
            device_id: stored.device_id.hyphenated(),
            kind: event.kind,
            aggregate_id: event.aggregate_id.hyphenated(),
            parent_id: event.parent_id.map(Uuid::hyphenated),
            op: event.op,
            version: event.version,
            payload: event.payload.map(Payload),
            client_time: event.client_time,
            received_at: stored.received_at,
            hash: HexHash(stored.hash),
        }
    }
}

/// Writes one event as a line of NDJSON: the export format of both
/// `GET /account/export` and `echolia export` (a [`LogEvent`] per line).
pub fn write_ndjson(out: &mut impl std::io::Write, event: StoredEvent) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, &LogEvent::from(event))?;
    out.write_all(b"\n")
}
