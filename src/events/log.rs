//! Reading the log back.

use libsql::{Connection, Row};
use uuid::Uuid;

use super::{Kind, NewEvent, Op, StoredEvent};
use crate::clock::parse_rfc3339;
use crate::projection::version::VersionVector;
use crate::store::{StoreError, StoreResult};

const COLUMNS: &str =
    "seq, event_id, device_id, kind, aggregate_id, parent_id, op, version, payload, client_time, received_at, hash";

/// Events with `seq > since`, oldest first, at most `limit`.
pub async fn read_after(conn: &Connection, since: u64, limit: u64) -> StoreResult<Vec<StoredEvent>> {
    let mut rows = conn
        .query(&format!("SELECT {COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"), (since, limit))
        .await?;
    let mut events = Vec::new();
    while let Some(row) = rows.next().await? {
        events.push(decode(&row)?);
    }
    Ok(events)
}

/// The event at `seq`, if any.
pub async fn read_one(conn: &Connection, seq: u64) -> StoreResult<Option<StoredEvent>> {
    let mut rows = conn.query(&format!("SELECT {COLUMNS} FROM events WHERE seq = ?1"), [seq]).await?;
    rows.next().await?.map(|row| decode(&row)).transpose()
}

fn decode(row: &Row) -> StoreResult<StoredEvent> {
    let seq: u64 = row.get(0)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("event seq {seq}: {what}"));
    let uuid = |idx: i32, what: &str| -> StoreResult<Uuid> {
        let text: String = row.get(idx)?;
        Uuid::parse_str(&text).map_err(|_| corrupt(what))
    };
    let time = |idx: i32, what: &str| -> StoreResult<chrono::DateTime<chrono::Utc>> {
        let text: String = row.get(idx)?;
        parse_rfc3339(&text).ok_or_else(|| corrupt(what))
    };
    let parent: Option<String> = row.get(5)?;
    let kind: String = row.get(3)?;
    let op: String = row.get(6)?;
    let version: String = row.get(7)?;
    let hash: Vec<u8> = row.get(11)?;
    Ok(StoredEvent {
        seq,
        device_id: uuid(2, "device_id")?,
        received_at: time(10, "received_at")?,
        hash: hash.try_into().map_err(|_| corrupt("hash"))?,
        event: NewEvent {
            event_id: uuid(1, "event_id")?,
            kind: Kind::parse(&kind).ok_or_else(|| corrupt("kind"))?,
            aggregate_id: uuid(4, "aggregate_id")?,
            parent_id: parent.map(|p| Uuid::parse_str(&p).map_err(|_| corrupt("parent_id"))).transpose()?,
            op: Op::parse(&op).ok_or_else(|| corrupt("op"))?,
            version: VersionVector::from_json(&version).map_err(|_| corrupt("version"))?,
            payload: row.get(8)?,
            client_time: time(9, "client_time")?,
        },
    })
}
