//! Reading the log back.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use libsql::{Connection, Row, ValueType};
use uuid::Uuid;

use super::{Kind, NewEvent, Op, StoredEvent};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::events::version::VersionVector;
use crate::store::raw::{Param, RawConn, RawRow};
use crate::store::{StoreError, StoreResult};

/// Items a page of the log or of the views holds at most (`limit`), and by default.
pub const MAX_LIMIT: u64 = 1000;
pub const DEFAULT_LIMIT: u64 = 500;
/// A page ends once it holds this many bytes (so it holds at most this plus
/// one item's, and always one item): with up to 1,000 items of up to 1 MiB
/// each, `limit` alone would not bound memory. Every byte counts: payloads,
/// version vectors, ids and times.
pub const MAX_PAGE_PAYLOAD_BYTES: u64 = 8 * 1024 * 1024;

/// The log's columns in the order every reader of whole events selects them.
pub const COLUMNS: &str =
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
/// `limit`, each handed to `each` as it is read (no page is held), on
/// replay's own connection ([`RawConn`]: columns are decoded in place, and
/// blocks its thread). Payloads are read for `device` events only: the other
/// projectors never look at them, and they are most of the bytes.
pub fn scan_for_replay(
    conn: &RawConn,
    after: u64,
    upto: u64,
    limit: u64,
    mut each: impl FnMut(StoredEvent) -> StoreResult<()>,
) -> StoreResult<()> {
    let mut statement = conn.prepare(
        "SELECT seq, event_id, device_id, kind, aggregate_id, parent_id, op, version, \
         CASE WHEN kind = 'device' THEN payload END, client_time, received_at, hash \
         FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let int = |n: u64| Param::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let mut rows = statement.query([int(after), int(upto), int(limit)])?;
    while let Some(row) = rows.step()? {
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
            // An event's ids, hash, times and field names: 300 bytes at most.
            "SELECT coalesce(length(payload), 0) + length(version) + 300 FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
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

/// A row of the log's columns, in [`COLUMNS`]' order: from libSQL, or from
/// replay's own connection.
trait LogColumns {
    fn integer(&self, idx: i32) -> StoreResult<i64>;
    fn is_null(&self, idx: i32) -> StoreResult<bool>;
    /// Text that is not NULL.
    fn text(&self, idx: i32) -> StoreResult<&str>;
    fn blob(&self, idx: i32) -> StoreResult<Option<Cow<'_, [u8]>>>;
}

impl LogColumns for Row {
    fn integer(&self, idx: i32) -> StoreResult<i64> {
        Ok(self.get(idx)?)
    }

    fn is_null(&self, idx: i32) -> StoreResult<bool> {
        Ok(matches!(self.column_type(idx)?, ValueType::Null))
    }

    fn text(&self, idx: i32) -> StoreResult<&str> {
        // Borrowed from the row, not copied into a `String` first.
        Ok(self.get_str(idx)?)
    }

    fn blob(&self, idx: i32) -> StoreResult<Option<Cow<'_, [u8]>>> {
        Ok(self.get::<Option<Vec<u8>>>(idx)?.map(Cow::Owned))
    }
}

impl LogColumns for RawRow<'_> {
    fn integer(&self, idx: i32) -> StoreResult<i64> {
        RawRow::integer(self, idx)
    }

    fn is_null(&self, idx: i32) -> StoreResult<bool> {
        RawRow::is_null(self, idx)
    }

    fn text(&self, idx: i32) -> StoreResult<&str> {
        RawRow::text(self, idx)?.ok_or_else(|| StoreError::Corrupt(format!("column {idx} is NULL")))
    }

    fn blob(&self, idx: i32) -> StoreResult<Option<Cow<'_, [u8]>>> {
        Ok(RawRow::blob(self, idx)?.map(Cow::Borrowed))
    }
}

impl LogColumns for crate::store::remote::hrana::Row {
    fn integer(&self, idx: i32) -> StoreResult<i64> {
        crate::store::remote::hrana::Row::integer(self, idx)
    }

    fn is_null(&self, idx: i32) -> StoreResult<bool> {
        crate::store::remote::hrana::Row::is_null(self, idx)
    }

    fn text(&self, idx: i32) -> StoreResult<&str> {
        crate::store::remote::hrana::Row::text(self, idx)
    }

    fn blob(&self, idx: i32) -> StoreResult<Option<Cow<'_, [u8]>>> {
        Ok(crate::store::remote::hrana::Row::blob(self, idx)?.map(Cow::Borrowed))
    }
}

/// An event from a row of [`COLUMNS`] as a remote batch returned it.
pub fn decode_remote(row: &crate::store::remote::hrana::Row) -> StoreResult<StoredEvent> {
    decode(row)
}

fn decode(row: &impl LogColumns) -> StoreResult<StoredEvent> {
    let seq = u64::try_from(row.integer(0)?).map_err(|_| StoreError::Corrupt("a negative seq".into()))?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("event seq {seq}: {what}"));
    let uuid =
        |idx: i32, what: &str| -> StoreResult<Uuid> { Uuid::parse_str(row.text(idx)?).map_err(|_| corrupt(what)) };
    let time = |idx: i32, what: &str| -> StoreResult<DateTime<Utc>> {
        parse_rfc3339(row.text(idx)?).ok_or_else(|| corrupt(what))
    };
    let parent_id = if row.is_null(5)? { None } else { Some(uuid(5, "parent_id")?) };
    let hash = row.blob(11)?.ok_or_else(|| corrupt("hash"))?;
    Ok(StoredEvent {
        seq,
        device_id: uuid(2, "device_id")?,
        received_at: time(10, "received_at")?,
        hash: (*hash).try_into().map_err(|_| corrupt("hash"))?,
        event: NewEvent {
            event_id: uuid(1, "event_id")?,
            kind: Kind::parse(row.text(3)?).ok_or_else(|| corrupt("kind"))?,
            aggregate_id: uuid(4, "aggregate_id")?,
            parent_id,
            op: Op::parse(row.text(6)?).ok_or_else(|| corrupt("op"))?,
            version: VersionVector::from_json(row.text(7)?).map_err(|_| corrupt("version"))?,
            payload: row.blob(8)?.map(Cow::into_owned),
            client_time: time(9, "client_time")?,
        },
    })
}
