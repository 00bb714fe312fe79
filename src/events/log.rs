//! Reading the log back.

use chrono::{DateTime, Utc};
use libsql::{Connection, Row};
use uuid::Uuid;

use super::{Kind, NewEvent, Op, StoredEvent};
use crate::clock::{parse_rfc3339, rfc3339};
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

/// Every event with `seq <= upto`, ordered by `(kind, aggregate_id, seq)`,
/// streamed row by row: each aggregate's events arrive together and in log
/// order, so replay folds one aggregate at a time and writes each view row
/// once, in key order.
///
/// `NOT INDEXED` makes SQLite read the log once, sequentially, and sort it
/// (in memory bounded by the connection's `cache_size`, spilling to
/// temporary files) instead of walking `events_by_aggregate` with one random
/// table lookup per event. Payloads are read for `device` events only: the
/// other projectors never look at them, and they are most of the bytes.
pub async fn stream_by_aggregate(conn: &Connection, upto: u64) -> StoreResult<EventStream> {
    let rows = conn
        .query(
            "SELECT seq, event_id, device_id, kind, aggregate_id, parent_id, op, version, \
             CASE WHEN kind = 'device' THEN payload END, client_time, received_at, hash \
             FROM events NOT INDEXED WHERE seq <= ?1 ORDER BY kind, aggregate_id, seq",
            [upto],
        )
        .await?;
    Ok(EventStream { rows, done: false })
}

/// Events of a running query, decoded one at a time.
pub struct EventStream {
    rows: libsql::Rows,
    /// SQLite runs a finished statement again from the start if stepped
    /// once more: after the end, stay at the end.
    done: bool,
}

impl EventStream {
    pub async fn next(&mut self) -> StoreResult<Option<StoredEvent>> {
        if self.done {
            return Ok(None);
        }
        let row = self.rows.next().await?;
        self.done = row.is_none();
        row.map(|row| decode(&row)).transpose()
    }
}

/// Like [`read_after`], but a row that does not decode comes back as its
/// error, next to its seq, instead of failing the page: a verifier names the
/// seq of a damaged event rather than stopping at "corrupt".
pub async fn read_after_lenient(
    conn: &Connection,
    since: u64,
    limit: u64,
) -> StoreResult<Vec<(u64, StoreResult<StoredEvent>)>> {
    let mut rows = conn
        .query(&format!("SELECT {COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"), (since, limit))
        .await?;
    let mut events = Vec::new();
    while let Some(row) = rows.next().await? {
        let seq: u64 = row.get(0)?;
        events.push((seq, decode(&row)));
    }
    Ok(events)
}

/// Which events [`read_filtered`] returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFilter {
    /// Only events done by this device.
    pub device_id: Option<Uuid>,
    /// Only events received at or after this time.
    pub received_from: Option<DateTime<Utc>>,
}

/// Events with `seq > since` that pass `filter`, oldest first, at most `limit`.
pub async fn read_filtered(
    conn: &Connection,
    since: u64,
    limit: u64,
    filter: &LogFilter,
) -> StoreResult<Vec<StoredEvent>> {
    let mut sql = format!("SELECT {COLUMNS} FROM events WHERE seq > ?1");
    let mut params = vec![libsql::Value::try_from(since)?];
    if let Some(device) = filter.device_id {
        params.push(libsql::Value::Text(device.to_string()));
        sql.push_str(&format!(" AND device_id = ?{}", params.len()));
    }
    if let Some(from) = filter.received_from {
        // Stored times all have the one fixed form of `rfc3339`, so text order is time order.
        params.push(libsql::Value::Text(rfc3339(from)));
        sql.push_str(&format!(" AND received_at >= ?{}", params.len()));
    }
    params.push(libsql::Value::try_from(limit)?);
    sql.push_str(&format!(" ORDER BY seq LIMIT ?{}", params.len()));
    let mut rows = conn.query(&sql, params).await?;
    let mut events = Vec::new();
    while let Some(row) = rows.next().await? {
        events.push(decode(&row)?);
    }
    Ok(events)
}

/// How many of the next `limit` events after `since` make a page: it ends
/// once it holds `byte_budget` bytes of payload (so always at least one
/// event). Also whether more events follow. Keeps a page of large payloads
/// from being read into memory whole.
pub async fn page_len(conn: &Connection, since: u64, limit: u64, byte_budget: u64) -> StoreResult<(u64, bool)> {
    let mut rows = conn
        .query(
            "SELECT coalesce(length(payload), 0) FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            (since, limit + 1),
        )
        .await?;
    let (mut fits, mut bytes) = (0u64, 0u64);
    while let Some(row) = rows.next().await? {
        let size: u64 = row.get(0)?;
        if fits == limit || bytes >= byte_budget {
            return Ok((fits, true));
        }
        fits += 1;
        bytes += size;
    }
    Ok((fits, false))
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
