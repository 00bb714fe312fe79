//! What pull pages are made of: the rows changed after a cursor, in order
//! of their latest change, each with the event of that change.

use chrono::{DateTime, Utc};
use libsql::{Connection, Row, ValueType};
use uuid::Uuid;

use super::{client_table, HeadColumns};
use crate::events::{Kind, Op};
use crate::store::{StoreError, StoreResult};

/// A view row as pull sends it: its columns as stored (ids and the version
/// vector in their wire form, so pull passes the text through instead of
/// parsing it into types and formatting it again), with the event at
/// `updated_seq`, read in the same statement: the projector's latest change
/// to a row is always one of its heads ([`super::aggregate::apply`] puts
/// every event it does not find stale among the heads), so a row without a
/// conflict needs no other read.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChange {
    pub kind: Kind,
    pub id: String,
    pub parent_id: Option<String>,
    /// JSON: the heads' seqs, as [`values`] stores them.
    pub heads: String,
    /// JSON: the merged version vector.
    pub version: String,
    pub deleted: bool,
    pub conflict: bool,
    pub updated_seq: u64,
    /// The event at `updated_seq`.
    pub latest: StoredHead,
}

/// The event of a head, as pull sends it: the version vector in its stored
/// wire form (JSON), passed through.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHead {
    pub seq: u64,
    pub event_id: Uuid,
    pub device_id: Uuid,
    pub op: Op,
    /// JSON, as the log stores it.
    pub version: String,
    pub client_time: DateTime<Utc>,
    /// `None` for a delete.
    pub payload: Option<Vec<u8>>,
}

/// The columns [`StoredHead::decode`] reads, from `events`.
pub const STORED_HEAD_COLUMNS: &str = "seq, event_id, device_id, op, version, client_time, payload";

impl StoredHead {
    /// Reads [`STORED_HEAD_COLUMNS`] from column `first` of `row` on.
    pub fn decode(row: &Row, first: i32) -> StoreResult<Self> {
        let head = HeadColumns::decode(row, first)?;
        Ok(Self {
            seq: head.seq,
            event_id: head.event_id,
            device_id: head.device_id,
            op: head.op,
            version: head.version.to_owned(),
            client_time: head.client_time,
            payload: row.get(first + 6)?,
        })
    }
}

/// The aggregates of some kinds changed after a cursor, in order of their
/// latest change: each view walked in its `updated_seq` index, the walks
/// merged here. (One `UNION ALL` under an `ORDER BY` made SQLite copy every
/// arm's rows, heads and all, into a temporary B-tree to sort them.) A row
/// is read when it is taken, so a caller that stops early has read at most
/// one row more per view; each row comes with the event of its latest
/// change, joined in the same statement.
pub struct ChangedSince {
    walks: Vec<KindWalk>,
}

struct KindWalk {
    kind: Kind,
    rows: libsql::Rows,
    /// The walk's next row; `None` once it is exhausted (never stepped again:
    /// SQLite would run a finished statement from the start).
    next: Option<StoredChange>,
}

impl KindWalk {
    async fn advance(&mut self) -> StoreResult<()> {
        self.next = match self.rows.next().await? {
            Some(row) => Some(stored_change(self.kind, &row)?),
            None => None,
        };
        Ok(())
    }
}

impl ChangedSince {
    /// Up to `limit` rows of each of `kinds` changed after `since`.
    pub async fn open(conn: &Connection, since: u64, limit: u64, kinds: &[Kind]) -> StoreResult<Self> {
        let mut walks = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let table = client_table(*kind)?;
            let sql = format!(
                "SELECT v.id, v.parent_id, v.heads, v.version, v.deleted, v.conflict, v.updated_seq, \
                 e.seq, e.event_id, e.device_id, e.op, e.version, e.client_time, e.payload \
                 FROM {table} v LEFT JOIN events e \
                 ON e.seq = v.updated_seq AND e.aggregate_id = v.id AND e.kind = '{}' \
                 WHERE v.updated_seq > ?1 ORDER BY v.updated_seq LIMIT ?2",
                kind.as_str()
            );
            let mut walk = KindWalk { kind: *kind, rows: conn.query(&sql, (since, limit)).await?, next: None };
            walk.advance().await?;
            if walk.next.is_some() {
                walks.push(walk);
            }
        }
        Ok(Self { walks })
    }

    /// The next row in `updated_seq` order (each seq changes one aggregate,
    /// so there are no ties).
    pub async fn next(&mut self) -> StoreResult<Option<StoredChange>> {
        let first = self
            .walks
            .iter()
            .enumerate()
            .filter_map(|(i, walk)| walk.next.as_ref().map(|row| (i, row.updated_seq)))
            .min_by_key(|(_, seq)| *seq)
            .map(|(i, _)| i);
        let Some(i) = first else { return Ok(None) };
        let walk = &mut self.walks[i];
        let row = walk.next.take();
        walk.advance().await?;
        if walk.next.is_none() {
            self.walks.swap_remove(i);
        }
        Ok(row)
    }
}

fn stored_change(kind: Kind, row: &Row) -> StoreResult<StoredChange> {
    let id: String = row.get(0)?;
    let updated_seq = row.get(6)?;
    if matches!(row.column_type(7)?, ValueType::Null) {
        let kind = kind.as_str();
        return Err(StoreError::Corrupt(format!(
            "{kind} {id}: its latest change, seq {updated_seq}, is not in the log"
        )));
    }
    Ok(StoredChange {
        kind,
        parent_id: row.get(1)?,
        heads: row.get(2)?,
        version: row.get(3)?,
        deleted: row.get::<i64>(4)? != 0,
        conflict: row.get::<i64>(5)? != 0,
        updated_seq,
        latest: StoredHead::decode(row, 7)?,
        id,
    })
}
