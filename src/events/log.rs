//! Reading the log back.

use chrono::{DateTime, Utc};
use libsql::{Connection, Row, ValueType};
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

/// For replay: the events with `after < seq <= upto`, oldest first, at most
/// `limit`, each handed to `each` as it is read (no page is held). Payloads
/// are read for `device` events only: the other projectors never look at
/// them, and they are most of the bytes.
pub async fn scan_for_replay(
    conn: &Connection,
    after: u64,
    upto: u64,
    limit: u64,
    mut each: impl FnMut(StoredEvent) -> StoreResult<()>,
) -> StoreResult<()> {
    let mut rows = conn
        .query(
            "SELECT seq, event_id, device_id, kind, aggregate_id, parent_id, op, version, \
             CASE WHEN kind = 'device' THEN payload END, client_time, received_at, hash \
             FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
            (after, upto, limit),
        )
        .await?;
    while let Some(row) = rows.next().await? {
        each(decode(&row)?)?;
    }
    Ok(())
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
    // Text is borrowed from the row (`get_str`), not copied into a `String` first.
    let uuid =
        |idx: i32, what: &str| -> StoreResult<Uuid> { Uuid::parse_str(row.get_str(idx)?).map_err(|_| corrupt(what)) };
    let time = |idx: i32, what: &str| -> StoreResult<DateTime<Utc>> {
        parse_rfc3339(row.get_str(idx)?).ok_or_else(|| corrupt(what))
    };
    let parent_id = match row.column_type(5)? {
        ValueType::Null => None,
        _ => Some(uuid(5, "parent_id")?),
    };
    let hash: Vec<u8> = row.get(11)?;
    Ok(StoredEvent {
        seq,
        device_id: uuid(2, "device_id")?,
        received_at: time(10, "received_at")?,
        hash: hash.try_into().map_err(|_| corrupt("hash"))?,
        event: NewEvent {
            event_id: uuid(1, "event_id")?,
            kind: Kind::parse(row.get_str(3)?).ok_or_else(|| corrupt("kind"))?,
            aggregate_id: uuid(4, "aggregate_id")?,
            parent_id,
            op: Op::parse(row.get_str(6)?).ok_or_else(|| corrupt("op"))?,
            version: VersionVector::from_json(row.get_str(7)?).map_err(|_| corrupt("version"))?,
            payload: row.get(8)?,
            client_time: time(9, "client_time")?,
        },
    })
}
