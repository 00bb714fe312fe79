//! The write path on a remote database (sqld), where every statement is a
//! round trip: a push is one read round trip and one write batch, whatever
//! its size.
//!
//! 1. Read, in one batch: the log's head, the pushing device's status, the
//!    events the writer's index lacks (`seq > through`), the events the
//!    batch's ids name (for the duplicate check), and the view rows of every
//!    aggregate the batch touches (one statement per kind: by key those the
//!    index knows, by id among the rows made after `through` the others).
//! 2. Fold in memory with the local path's pure logic: the hash chain
//!    ([`link`]), the fold ([`aggregate::apply`]), the same duplicate and
//!    head-cap rules as [`super::write::apply_batch`].
//! 3. Write, in one batch inside `BEGIN IMMEDIATE … COMMIT`: every event, then
//!    every changed view row. The first event takes seq `head + 1`, the log's
//!    primary key: if anyone appended since the read (another process), that
//!    insert fails, the batch rolls back whole, and the push starts again at
//!    1 (optimistic concurrency). Anything else that fails rolls back too.
//!
//! A batch whose answer is lost (a timeout after the server committed) is
//! answered 503; its retry finds every event in the log and answers them
//! `duplicate`, so nothing acknowledged is lost and nothing is appended twice.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::aggregates::{load_many_sql, save_sql};
use super::write::{fold, BatchError, BatchResult, EventStatus};
use super::{heads_error, parse_heads, values};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::events::append::{logged, INSERT};
use crate::events::hash::{canonical_bytes, link};
use crate::events::log::{decode_remote, COLUMNS};
use crate::events::version::VersionVector;
use crate::events::{Kind, LogTip, NewEvent, Op, StoredEvent};
use crate::projection::aggregate::{AggregateHead, AggregateRow};
use crate::store::remote::hrana::{Hrana, Row, Stmt, Value};
use crate::store::{Logged, StoreError, StoreResult, UserDb};

/// How many times a push starts again after losing the race for the log's
/// head to another process, before it answers 503 (the client retries).
const MAX_ATTEMPTS: u32 = 8;

/// What a device may still do, as its rows say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    Active,
    /// Revoked, or unknown to this user.
    Revoked,
    /// Every token of the device was revoked (a refresh token reused).
    TokensRevoked,
}

/// Appends `events` (validated) pushed by `device` and folds them into
/// their views, as [`super::write::apply_batch`] does locally; the results
/// and the log's tip after them.
pub async fn apply_batch_remote(
    db: &UserDb,
    hrana: &Hrana,
    device: Uuid,
    now: DateTime<Utc>,
    events: &[NewEvent],
) -> Result<(Vec<BatchResult>, LogTip), BatchError> {
    for attempt in 1..=MAX_ATTEMPTS {
        match attempt_once(db, hrana, device, now, events).await? {
            Some(done) => return Ok(done),
            None => {
                metrics::counter!("echolia_remote_append_retries_total").increment(1);
                // Another process won the head: back off a little, more each time.
                let jitter = u64::from(rand::random::<u8>() % 20);
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt) * 10 + jitter)).await;
            }
        }
    }
    Err(StoreError::Busy(format!("the log's head kept moving for {MAX_ATTEMPTS} attempts")).into())
}

/// One read, fold and conditional write: `None` when the head moved in between.
async fn attempt_once(
    db: &UserDb,
    hrana: &Hrana,
    device: Uuid,
    now: DateTime<Utc>,
    events: &[NewEvent],
) -> Result<Option<(Vec<BatchResult>, LogTip)>, BatchError> {
    let mut writer = db.lock_remote_writer().await?;
    let through = writer.ids()?.through();
    let known: Vec<u64> = {
        let ids = writer.ids()?;
        events.iter().filter_map(|event| ids.get(&event.event_id)).collect()
    };
    let batch_ids: Vec<String> = events.iter().map(|event| event.event_id.to_string()).collect();
    // Per kind, the rows to read: by key, those the index knows; by id among
    // the rows made after `through`, the others (made since by another
    // process, or new).
    let mut aggregates: HashMap<Kind, (Vec<u64>, Vec<String>)> = HashMap::new();
    {
        let ids = writer.ids()?;
        for event in events {
            let (known, unknown) = aggregates.entry(event.kind).or_default();
            match event.kind.view_tag().and_then(|view| ids.created(view, event.aggregate_id)) {
                Some(created) => known.push(created),
                None => unknown.push(event.aggregate_id.to_string()),
            }
        }
    }
    let kinds: Vec<Kind> = aggregates.keys().copied().collect();

    // The head first: whatever commits after it read moves the head, so the write below fails.
    let mut reads = vec![
        Stmt::new("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", Vec::new()),
        Stmt::new(
            "SELECT d.revoked_at IS NOT NULL, s.tokens_revoked_at IS NOT NULL \
             FROM devices d LEFT JOIN device_sessions s ON s.device_id = d.device_id WHERE d.device_id = ?1",
            vec![Value::text(device.to_string())],
        ),
        Stmt::new(
            "SELECT seq, event_id, kind, aggregate_id FROM events WHERE seq > ?1 ORDER BY seq",
            vec![Value::integer(through)?],
        ),
        Stmt::new(
            format!(
                "SELECT {COLUMNS} FROM events WHERE seq IN (SELECT value FROM json_each(?1)) \
                 OR (seq > ?2 AND event_id IN (SELECT value FROM json_each(?3)))"
            ),
            vec![Value::text(json(&known)), Value::integer(through)?, Value::text(json(&batch_ids))],
        ),
    ];
    for kind in &kinds {
        let (known, unknown) =
            aggregates.get(kind).map(|(known, unknown)| (json(known), json(unknown))).unwrap_or_default();
        let args = vec![Value::text(known), Value::integer(through)?, Value::text(unknown)];
        reads.push(Stmt::new(load_many_sql(*kind)?, args));
    }
    let outcome = hrana.read(reads).await?;
    if let Some((at, error)) = outcome.failed {
        return Err(error.into_store_error(&format!("a remote read (statement {at})")).into());
    }
    let mut results = outcome.results.into_iter().map(Option::unwrap_or_default);
    let mut next_rows = || results.next().map(|result| result.rows).unwrap_or_default();

    let head = match next_rows().first() {
        Some(row) => {
            let seq = u64::try_from(row.integer(0)?).map_err(|_| StoreError::Corrupt("a negative seq".into()))?;
            let hash = row.blob(1)?.unwrap_or_default();
            let hash = hash.try_into().map_err(|_| StoreError::Corrupt(format!("seq {seq}: hash is not 32 bytes")))?;
            LogTip { seq, hash }
        }
        None => LogTip::EMPTY,
    };
    let state = match next_rows().first() {
        None => DeviceState::Revoked,
        Some(row) if row.integer(0)? != 0 => DeviceState::Revoked,
        Some(row) if !row.is_null(1)? && row.integer(1)? != 0 => DeviceState::TokensRevoked,
        Some(_) => DeviceState::Active,
    };
    let new_ids = next_rows();
    let originals: HashMap<u64, StoredEvent> = next_rows()
        .iter()
        .map(decode_remote)
        .filter(|event| event.as_ref().map_or(true, |event| event.seq <= head.seq))
        .map(|event| event.map(|event| (event.seq, event)))
        .collect::<StoreResult<_>>()?;
    let mut rows: HashMap<(Kind, Uuid), AggregateRow> = HashMap::new();
    // Each loaded row's aggregate, by its key.
    let mut keyed: HashMap<(Kind, u64), Uuid> = HashMap::new();
    for kind in &kinds {
        for row in decode_view_rows(*kind, &next_rows())? {
            keyed.insert((*kind, row.created_seq), row.id);
            rows.insert((*kind, row.id), row);
        }
    }

    if through > head.seq {
        // The log is append-only: an index ahead of it means the database was replaced.
        writer.ids()?.clear();
        return Ok(None);
    }
    let mut caught_up = Vec::with_capacity(new_ids.len());
    for row in &new_ids {
        let seq = u64::try_from(row.integer(0)?).map_err(|_| StoreError::Corrupt("a negative seq".into()))?;
        if seq <= head.seq {
            caught_up.push(logged(seq, row.text(1)?, row.text(2)?, row.text(3)?)?);
        }
    }
    writer.ids()?.extend(caught_up, head.seq)?;
    if state != DeviceState::Active {
        return Err(BatchError::DeviceInactive { tokens_only: state == DeviceState::TokensRevoked });
    }

    // The fold: the local path's rules, in memory.
    let mut tip = head;
    let mut appended: Vec<StoredEvent> = Vec::new();
    let mut dirty: HashSet<(Kind, Uuid)> = HashSet::new();
    let mut out = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        if let Some(seq) = writer.ids()?.get(&event.event_id) {
            let original = originals.get(&seq).or_else(|| appended.iter().find(|stored| stored.seq == seq));
            if original.is_some_and(|o| o.device_id == device && o.event == *event) {
                out.push(BatchResult { event_id: event.event_id, seq, status: EventStatus::Duplicate });
                continue;
            }
            return Err(BatchError::EventIdReused { index, event_id: event.event_id });
        }
        let seq = tip.seq + 1;
        let received_text = rfc3339(now);
        let hash = link(&tip.hash, &canonical_bytes(seq, device, &received_text, event));
        let stored = StoredEvent { seq, device_id: device, received_at: now, hash, event: event.clone() };
        let view = event.kind.view_tag();
        let created = match view {
            Some(view) => writer.ids()?.created(view, event.aggregate_id),
            None => None,
        };
        writer.ids()?.stage(Logged { event_id: event.event_id, seq, view, aggregate_id: event.aggregate_id })?;
        tip = LogTip { seq, hash };

        // As the local path loads it: this aggregate's row, else the row at
        // the key the index gives it (another aggregate's, if the index is
        // wrong, which `fold` refuses).
        let current = rows.remove(&(event.kind, event.aggregate_id)).or_else(|| {
            let other = *keyed.get(&(event.kind, created?))?;
            rows.remove(&(event.kind, other))
        });
        let status = fold(&mut rows, &mut dirty, current, created, &stored, index)?;
        out.push(BatchResult { event_id: event.event_id, seq, status });
        appended.push(stored);
    }
    if appended.is_empty() {
        return Ok(Some((out, tip)));
    }

    let mut writes = Vec::with_capacity(appended.len() + dirty.len());
    for stored in &appended {
        writes.push(Stmt { sql: INSERT.into(), args: log_values(stored)?, want_rows: false });
    }
    for key in &dirty {
        if let Some(row) = rows.get(key) {
            let args = values(row)?.into_iter().map(Value::try_from).collect::<StoreResult<Vec<_>>>()?;
            writes.push(Stmt { sql: save_sql(row.kind)?.into(), args, want_rows: false });
        }
    }
    let outcome = hrana.transaction(writes).await?;
    match outcome.failed {
        None => {
            writer.committed(appended.len() as u64);
            Ok(Some((out, tip)))
        }
        Some((0, error)) if error.message.contains("UNIQUE constraint failed: events.seq") => Ok(None),
        Some((at, error)) => Err(error.into_store_error(&format!("a remote write (statement {at})")).into()),
    }
}

/// The values of [`INSERT`] for one event, in its order.
fn log_values(stored: &StoredEvent) -> StoreResult<Vec<Value>> {
    let event = &stored.event;
    Ok(vec![
        Value::integer(stored.seq)?,
        Value::text(event.event_id.to_string()),
        Value::text(stored.device_id.to_string()),
        Value::text(event.kind.as_str()),
        Value::text(event.aggregate_id.to_string()),
        event.parent_id.map_or(Value::Null, |id| Value::text(id.to_string())),
        Value::text(event.op.as_str()),
        Value::text(event.version.to_json()),
        event.payload.clone().map_or(Value::Null, Value::blob),
        Value::text(rfc3339(event.client_time)),
        Value::text(rfc3339(stored.received_at)),
        Value::blob(stored.hash.to_vec()),
    ])
}

fn json<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// The view rows of `kind` from the load statement's rows (one per head,
/// rows of several aggregates in any order), each with its heads in their
/// stored order: what [`super::aggregates::ViewStatements::load`] reads for one.
fn decode_view_rows(kind: Kind, rows: &[Row]) -> StoreResult<Vec<AggregateRow>> {
    let mut found: HashMap<Uuid, (AggregateRow, Vec<u64>, Vec<AggregateHead>)> = HashMap::new();
    for row in rows {
        let id_text = row.text(0)?;
        let corrupt = |what: String| StoreError::Corrupt(format!("{} {id_text}: {what}", kind.as_str()));
        let id = Uuid::parse_str(id_text).map_err(|_| corrupt("id".into()))?;
        if let std::collections::hash_map::Entry::Vacant(slot) = found.entry(id) {
            let heads_text = row.text(2)?;
            let seqs = parse_heads(heads_text).ok_or_else(|| heads_error(kind, id_text, heads_text))?;
            let parent_id =
                row.opt_text(1)?.map(|p| Uuid::parse_str(p).map_err(|_| corrupt("parent_id".into()))).transpose()?;
            let aggregate = AggregateRow {
                kind,
                id,
                parent_id,
                heads: Vec::with_capacity(seqs.len()),
                version: VersionVector::from_json(row.text(3)?).map_err(|_| corrupt("version".into()))?,
                deleted: row.integer(4)? != 0,
                conflict: row.integer(5)? != 0,
                updated_seq: u64::try_from(row.integer(6)?).map_err(|_| corrupt("updated_seq".into()))?,
                created_seq: u64::try_from(row.integer(14)?).map_err(|_| corrupt("created_seq".into()))?,
            };
            slot.insert((aggregate, seqs, Vec::new()));
        }
        if row.is_null(7)? {
            return Err(corrupt("its heads name an event not of this aggregate in the log".into()));
        }
        if let Some((_, _, heads)) = found.get_mut(&id) {
            heads.push(decode_head(row)?);
        }
    }
    found
        .into_values()
        .map(|(mut aggregate, seqs, mut heads)| {
            let corrupt = |what: String| StoreError::Corrupt(format!("{} {}: {what}", kind.as_str(), aggregate.id));
            for seq in &seqs {
                let at = heads.iter().position(|head| head.seq == *seq);
                let at = at.ok_or_else(|| corrupt(format!("its head {seq} was not read")))?;
                aggregate.heads.push(heads.swap_remove(at));
            }
            if !heads.is_empty() {
                return Err(corrupt(format!("more events than its heads {seqs:?}")));
            }
            Ok(aggregate)
        })
        .collect()
}

/// A head from its event's `seq, event_id, device_id, op, version,
/// client_time, parent_id` (columns 7 to 13 of the load statement).
fn decode_head(row: &Row) -> StoreResult<AggregateHead> {
    let seq = u64::try_from(row.integer(7)?).map_err(|_| StoreError::Corrupt("a negative seq".into()))?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("event seq {seq}: {what}"));
    let uuid =
        |idx: i32, what: &str| -> StoreResult<Uuid> { Uuid::parse_str(row.text(idx)?).map_err(|_| corrupt(what)) };
    Ok(AggregateHead {
        seq,
        event_id: uuid(8, "event_id")?,
        device_id: uuid(9, "device_id")?,
        op: Op::parse(row.text(10)?).ok_or_else(|| corrupt("op"))?,
        version: VersionVector::from_json(row.text(11)?).map_err(|_| corrupt("version"))?,
        client_time: parse_rfc3339(row.text(12)?).ok_or_else(|| corrupt("client_time"))?,
        parent_id: row.opt_text(13)?.map(|p| Uuid::parse_str(p).map_err(|_| corrupt("parent_id"))).transpose()?,
    })
}
