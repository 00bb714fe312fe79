//! The read models as stored: one table per view, one row per aggregate
//! (or device), written in the same transaction as the events they fold.
//! [`projection`](crate::projection) computes the rows; this layer loads and
//! saves them, reads what pull pages are made of, and runs the write path
//! that appends a batch and folds it into its views ([`write`]).

pub mod aggregates;
pub mod changes;
pub mod devices;
pub mod remote_read;
pub mod remote_write;
pub mod write;

use chrono::{DateTime, Utc};
use libsql::{Row, Value};
use uuid::Uuid;

use crate::clock::parse_rfc3339;
use crate::events::{Kind, Op};
use crate::projection::aggregate::{AggregateHead, AggregateRow};
use crate::store::{StoreError, StoreResult};

/// The kinds devices push and pull, in a fixed order.
pub const CLIENT_KINDS: [Kind; 4] = [Kind::Entry, Kind::Memory, Kind::Tag, Kind::Embedding];

/// The view table of a client kind (`None` for `device`, whose view differs).
pub fn table(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Entry => Some("entries"),
        Kind::Memory => Some("memories"),
        Kind::Tag => Some("tags"),
        Kind::Embedding => Some("embeddings"),
        Kind::Device => None,
    }
}

pub(crate) fn client_table(kind: Kind) -> StoreResult<&'static str> {
    table(kind).ok_or_else(|| no_view(kind))
}

pub(crate) fn client_index(kind: Kind) -> StoreResult<usize> {
    CLIENT_KINDS.iter().position(|k| *k == kind).ok_or_else(|| no_view(kind))
}

fn no_view(kind: Kind) -> StoreError {
    StoreError::Corrupt(format!("`{}` has no aggregate view", kind.as_str()))
}

/// The stored columns of every aggregate view, in the order of [`values`].
/// `created_seq` is the key (the table's rowid): see
/// [`AggregateRow::created_seq`].
pub const COLUMNS: &str = "id, parent_id, heads, version, deleted, conflict, updated_seq, created_seq";

/// The heads as a view row stores them: their seqs, in the heads' order (by
/// event id), as a JSON array (`[9,11]`). The rest of a head is its event
/// in the log, found by seq (ARCHITECTURE.md: "a view row holds its heads'
/// seqs"): a row is a fifth of the size it had with whole heads, which is
/// what replay writes, indexes and drops.
pub fn heads_json(heads: &[AggregateHead]) -> String {
    let mut out = String::with_capacity(2 + heads.len() * 8);
    out.push('[');
    for (i, head) in heads.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(itoa::Buffer::new().format(head.seq));
    }
    out.push(']');
    out
}

/// The seqs of a row's heads, from [`heads_json`]'s text: at least one,
/// none twice.
pub fn parse_heads(text: &str) -> Option<Vec<u64>> {
    let seqs: Vec<u64> = serde_json::from_str(text).ok()?;
    let unique = seqs.iter().enumerate().all(|(i, seq)| !seqs[..i].contains(seq));
    (!seqs.is_empty() && unique).then_some(seqs)
}

/// Why a row's `heads` did not parse: heads stored whole are the shape
/// before migration 0003 (a database an older binary wrote to after it).
pub fn heads_error(kind: Kind, id: &str, text: &str) -> StoreError {
    let kind = kind.as_str();
    if text.starts_with("[{") {
        return StoreError::Corrupt(format!(
            "{kind} {id}: heads stored whole, as before migration 0003_view_heads_as_seqs: \
             `echolia replay --user <id>` with this version rewrites them"
        ));
    }
    StoreError::Corrupt(format!("{kind} {id}: heads"))
}

/// The column values a row is stored as, in the order of [`COLUMNS`]. `save`
/// writes exactly these, so replay can compare and hash rows without a
/// second encoding that could drift from the live one.
pub fn values(row: &AggregateRow) -> StoreResult<Vec<Value>> {
    let heads = heads_json(&row.heads);
    Ok(vec![
        Value::Text(row.id.to_string()),
        row.parent_id.map_or(Value::Null, |id| Value::Text(id.to_string())),
        Value::Text(heads),
        Value::Text(row.version.to_json()),
        Value::Integer(i64::from(row.deleted)),
        Value::Integer(i64::from(row.conflict)),
        Value::try_from(row.updated_seq)?,
        Value::try_from(row.created_seq)?,
    ])
}

/// What a head takes from its event, in the order of the columns `seq,
/// event_id, device_id, op, version, client_time` (the version vector as
/// stored): shared by the projector's heads and pull's.
pub(crate) struct HeadColumns<'r> {
    seq: u64,
    event_id: Uuid,
    device_id: Uuid,
    op: Op,
    version: &'r str,
    client_time: DateTime<Utc>,
}

impl<'r> HeadColumns<'r> {
    /// Reads them from column `first` of `row` on.
    pub(crate) fn decode(row: &'r Row, first: i32) -> StoreResult<Self> {
        let seq: u64 = row.get(first)?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("event seq {seq}: {what}"));
        let uuid = |idx: i32, what: &str| Uuid::parse_str(row.get_str(first + idx)?).map_err(|_| corrupt(what));
        Ok(Self {
            seq,
            event_id: uuid(1, "event_id")?,
            device_id: uuid(2, "device_id")?,
            op: Op::parse(row.get_str(first + 3)?).ok_or_else(|| corrupt("op"))?,
            version: row.get_str(first + 4)?,
            client_time: parse_rfc3339(row.get_str(first + 5)?).ok_or_else(|| corrupt("client_time"))?,
        })
    }
}
