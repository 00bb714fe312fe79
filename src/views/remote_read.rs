//! What a pull page is made of, read from a remote database in one round
//! trip: one batch, inside a read transaction (one snapshot), holding the
//! log's head and, for each kind, its rows changed after the cursor (with
//! the event of each one's latest change, as [`super::changes::ChangedSince`]
//! reads them) and the events of the other heads of those in conflict.

use std::collections::HashMap;

use uuid::Uuid;

use super::changes::{StoredChange, StoredHead};
use super::{client_table, parse_heads};
use crate::clock::parse_rfc3339;
use crate::events::{Kind, LogTip, Op};
use crate::store::remote::hrana::{Hrana, Row, Stmt, Value};
use crate::store::{StoreError, StoreResult};

/// The rows changed after a cursor, in order of their latest change, each
/// with its other heads' events (in its heads' stored order).
pub struct ChangedPage {
    pub head: LogTip,
    pub changes: Vec<(StoredChange, Vec<StoredHead>)>,
}

/// Up to `limit` rows of each of `kinds` changed after `since`, with the head.
pub async fn changed_since(hrana: &Hrana, since: u64, limit: u64, kinds: &[Kind]) -> StoreResult<ChangedPage> {
    let (since_value, limit_value) = (Value::integer(since)?, Value::integer(limit)?);
    let mut stmts = vec![
        Stmt::new("BEGIN", Vec::new()),
        Stmt::new("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", Vec::new()),
    ];
    for kind in kinds {
        let table = client_table(*kind)?;
        let kind = kind.as_str();
        let window = format!("SELECT * FROM {table} WHERE updated_seq > ?1 ORDER BY updated_seq LIMIT ?2");
        stmts.push(Stmt::new(
            format!(
                "SELECT v.id, v.parent_id, v.heads, v.version, v.deleted, v.conflict, v.updated_seq, \
                 e.seq, e.event_id, e.device_id, e.op, e.version, e.client_time, e.payload \
                 FROM ({window}) v LEFT JOIN events e \
                 ON e.seq = v.updated_seq AND e.aggregate_id = v.id AND e.kind = '{kind}' ORDER BY v.updated_seq"
            ),
            vec![since_value.clone(), limit_value.clone()],
        ));
        stmts.push(Stmt::new(
            format!(
                "SELECT v.id, e.seq, e.event_id, e.device_id, e.op, e.version, e.client_time, e.payload \
                 FROM ({window}) v, json_each(v.heads) h JOIN events e \
                 ON e.seq = h.value AND e.aggregate_id = v.id AND e.kind = '{kind}' \
                 WHERE v.conflict = 1 AND h.value != v.updated_seq"
            ),
            vec![since_value.clone(), limit_value.clone()],
        ));
    }
    stmts.push(Stmt::new("COMMIT", Vec::new()));
    let outcome = hrana.read(stmts).await?;
    if let Some((at, error)) = outcome.failed {
        return Err(error.into_store_error(&format!("a remote pull read (statement {at})")));
    }
    let mut results = outcome.results.into_iter().skip(1).map(|result| result.unwrap_or_default().rows);
    let head = match results.next().unwrap_or_default().first() {
        Some(row) => {
            let seq = unsigned(row.integer(0)?)?;
            let hash = row.blob(1)?.unwrap_or_default();
            LogTip { seq, hash: hash.try_into().map_err(|_| StoreError::Corrupt(format!("seq {seq}: hash")))? }
        }
        None => LogTip::EMPTY,
    };
    let mut changes = Vec::new();
    for kind in kinds {
        let rows = results.next().unwrap_or_default();
        let mut others: HashMap<String, HashMap<u64, StoredHead>> = HashMap::new();
        for row in results.next().unwrap_or_default() {
            let head = decode_head(&row, 1)?;
            others.entry(row.text(0)?.to_owned()).or_default().insert(head.seq, head);
        }
        for row in &rows {
            let change = decode_change(*kind, row)?;
            let mut heads = Vec::new();
            if change.conflict {
                let seqs = parse_heads(&change.heads)
                    .ok_or_else(|| super::heads_error(change.kind, &change.id, &change.heads))?;
                let mut found = others.remove(&change.id).unwrap_or_default();
                for seq in seqs.into_iter().filter(|seq| *seq != change.updated_seq) {
                    heads.push(found.remove(&seq).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "{} {}: its head {seq} is not an event of it in the log",
                            kind.as_str(),
                            change.id
                        ))
                    })?);
                }
            }
            changes.push((change, heads));
        }
    }
    // Each seq changes one aggregate: no ties.
    changes.sort_by_key(|(change, _)| change.updated_seq);
    Ok(ChangedPage { head, changes })
}

fn unsigned(value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("a negative seq {value}")))
}

fn decode_change(kind: Kind, row: &Row) -> StoreResult<StoredChange> {
    let id = row.text(0)?.to_owned();
    let updated_seq = unsigned(row.integer(6)?)?;
    if row.is_null(7)? {
        return Err(StoreError::Corrupt(format!(
            "{} {id}: its latest change, seq {updated_seq}, is not in the log",
            kind.as_str()
        )));
    }
    Ok(StoredChange {
        kind,
        parent_id: row.opt_text(1)?.map(str::to_owned),
        heads: row.text(2)?.to_owned(),
        version: row.text(3)?.to_owned(),
        deleted: row.integer(4)? != 0,
        conflict: row.integer(5)? != 0,
        updated_seq,
        latest: decode_head(row, 7)?,
        id,
    })
}

/// [`super::changes::STORED_HEAD_COLUMNS`] from column `first` of `row` on.
fn decode_head(row: &Row, first: i32) -> StoreResult<StoredHead> {
    let seq = unsigned(row.integer(first)?)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("event seq {seq}: {what}"));
    let uuid = |idx: i32, what: &str| -> StoreResult<Uuid> {
        Uuid::parse_str(row.text(first + idx)?).map_err(|_| corrupt(what))
    };
    Ok(StoredHead {
        seq,
        event_id: uuid(1, "event_id")?,
        device_id: uuid(2, "device_id")?,
        op: Op::parse(row.text(first + 3)?).ok_or_else(|| corrupt("op"))?,
        version: row.text(first + 4)?.to_owned(),
        client_time: parse_rfc3339(row.text(first + 5)?).ok_or_else(|| corrupt("client_time"))?,
        payload: row.blob(first + 6)?.map(<[u8]>::to_vec),
    })
}
