//! The append path: inside the caller's `BEGIN IMMEDIATE` transaction, read
//! the head once, then give each event the next `seq` and its link of the
//! hash chain. `seq` is the table's primary key, so a second writer that
//! raced past the lock (another process) fails instead of forking the chain.

use chrono::{DateTime, Utc};
use libsql::{Connection, Statement};
use uuid::Uuid;

use super::hash::{canonical_bytes, link, GENESIS};
use super::{NewEvent, StoredEvent};
use crate::clock::rfc3339;
use crate::store::{query_opt, StoreError, StoreResult};

/// The newest position of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl Head {
    pub const EMPTY: Head = Head { seq: 0, hash: GENESIS };
}

/// Reads the head of the log (seq 0 and the zero hash when empty).
pub async fn read_head(conn: &Connection) -> StoreResult<Head> {
    let Some(row) = query_opt(conn, "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", ()).await? else {
        return Ok(Head::EMPTY);
    };
    let seq: u64 = row.get(0)?;
    let hash: Vec<u8> = row.get(1)?;
    let hash = hash.try_into().map_err(|_| StoreError::Corrupt(format!("seq {seq}: hash is not 32 bytes")))?;
    Ok(Head { seq, hash })
}

/// The statement [`append`] runs, once per event.
pub const INSERT: &str = "INSERT INTO events (seq, event_id, device_id, kind, aggregate_id, parent_id, op, version, \
                      payload, client_time, received_at, hash) \
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// Appends one event after `head` and moves `head` forward.
pub async fn append(
    insert: &Statement,
    head: &mut Head,
    device_id: Uuid,
    received_at: DateTime<Utc>,
    event: NewEvent,
) -> StoreResult<StoredEvent> {
    let seq = head.seq + 1;
    let received_text = rfc3339(received_at);
    let hash = link(&head.hash, &canonical_bytes(seq, device_id, &received_text, &event));
    insert.reset();
    insert
        .execute(libsql::params![
            seq,
            event.event_id.to_string(),
            device_id.to_string(),
            event.kind.as_str(),
            event.aggregate_id.to_string(),
            event.parent_id.map(|id| id.to_string()),
            event.op.as_str(),
            event.version.to_json(),
            event.payload.as_deref().map(libsql::Value::from),
            rfc3339(event.client_time),
            received_text,
            hash.to_vec(),
        ])
        .await?;
    insert.reset();
    *head = Head { seq, hash };
    Ok(StoredEvent { seq, device_id, received_at, hash, event })
}
