//! The tables of the client read models (`entries`, `memories`, `tags`,
//! `embeddings`): one row per aggregate, as [`AggregateRow`].

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use libsql::{Connection, Row, Statement, Value, ValueType};
use uuid::Uuid;

use super::aggregate::{AggregateRow, Head};
use super::version::VersionVector;
use crate::clock::parse_rfc3339;
use crate::events::{Kind, Op};
use crate::store::{StoreError, StoreResult, WriteTx};

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

fn client_table(kind: Kind) -> StoreResult<&'static str> {
    table(kind).ok_or_else(|| no_view(kind))
}

fn index(kind: Kind) -> StoreResult<usize> {
    CLIENT_KINDS.iter().position(|k| *k == kind).ok_or_else(|| no_view(kind))
}

fn no_view(kind: Kind) -> StoreError {
    StoreError::Corrupt(format!("`{}` has no aggregate view", kind.as_str()))
}

/// Load and save statements for the views, reused across a batch (each is
/// reset before use: libsql reuses bound values otherwise).
pub struct ViewStatements {
    load: [Option<Arc<Statement>>; 4],
    save: [Option<Arc<Statement>>; 4],
}

/// The load and save SQL of each client kind, in [`CLIENT_KINDS`] order.
static SQL: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
    CLIENT_KINDS
        .iter()
        .filter_map(|kind| table(*kind).map(|table| (kind.as_str(), table)))
        .map(|(kind, table)| {
            // One row per head, with its event: a head that names no event
            // of this aggregate still comes back (NULL event columns), so it
            // is an error rather than a missing head. `load_rows` puts the
            // heads in their stored order (no sort here).
            let load = format!(
                "SELECT v.id, v.parent_id, v.heads, v.version, v.deleted, v.conflict, v.updated_seq, \
                 e.seq, e.event_id, e.device_id, e.op, e.version, e.client_time, e.parent_id \
                 FROM {table} AS v LEFT JOIN json_each(v.heads) AS h LEFT JOIN events AS e \
                 ON e.seq = h.value AND e.aggregate_id = v.id AND e.kind = '{kind}' WHERE v.id = ?1"
            );
            let save = format!(
                "INSERT INTO {table} ({COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO UPDATE SET \
                 parent_id = excluded.parent_id, heads = excluded.heads, version = excluded.version, \
                 deleted = excluded.deleted, conflict = excluded.conflict, updated_seq = excluded.updated_seq"
            );
            (load, save)
        })
        .collect()
});

impl ViewStatements {
    /// Every view's statements, prepared on `conn`.
    pub async fn prepare(conn: &Connection) -> StoreResult<Self> {
        let mut statements = Self { load: Default::default(), save: Default::default() };
        for (i, (load, save)) in SQL.iter().enumerate() {
            statements.load[i] = Some(Arc::new(conn.prepare(load).await?));
            statements.save[i] = Some(Arc::new(conn.prepare(save).await?));
        }
        Ok(statements)
    }

    /// The statements of `kinds` only, from the writer's statement cache.
    pub async fn cached(tx: &mut WriteTx, kinds: impl IntoIterator<Item = Kind>) -> StoreResult<Self> {
        let mut statements = Self { load: Default::default(), save: Default::default() };
        for kind in kinds {
            let i = index(kind)?;
            if statements.load[i].is_none() {
                let (load, save) = &SQL[i];
                statements.load[i] = Some(tx.cached(load).await?);
                statements.save[i] = Some(tx.cached(save).await?);
            }
        }
        Ok(statements)
    }

    /// The row of aggregate `id`, its heads read back from the log.
    pub async fn load(&self, kind: Kind, id: Uuid) -> StoreResult<Option<AggregateRow>> {
        let stmt = prepared(&self.load, kind)?;
        stmt.reset();
        let loaded = load_rows(kind, stmt.query([id.to_string()]).await?).await;
        stmt.reset();
        loaded
    }

    pub async fn save(&self, row: &AggregateRow) -> StoreResult<()> {
        let values = values(row)?;
        let stmt = prepared(&self.save, row.kind)?;
        stmt.reset();
        stmt.execute(values).await?;
        stmt.reset();
        Ok(())
    }
}

/// The statement of `kind` among `statements`; an error for a kind that has
/// no view or was not prepared (a bug of the caller, never a panic).
fn prepared(statements: &[Option<Arc<Statement>>; 4], kind: Kind) -> StoreResult<&Statement> {
    statements[index(kind)?]
        .as_deref()
        .ok_or_else(|| StoreError::Corrupt(format!("no statement prepared for the `{}` view", kind.as_str())))
}

/// The stored columns of every aggregate view, in the order of [`values`].
pub const COLUMNS: &str = "id, parent_id, heads, version, deleted, conflict, updated_seq";

/// The heads as a view row stores them: their seqs, in the heads' order (by
/// event id), as a JSON array (`[9,11]`). The rest of a head is its event
/// in the log, found by seq (ARCHITECTURE.md: "a view row holds its heads'
/// seqs"): a row is a fifth of the size it had with whole heads, which is
/// what replay writes, indexes and drops.
pub fn heads_json(heads: &[Head]) -> String {
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
    ])
}

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
    pub latest: HeadEvent,
}

/// The event of a head, as pull sends it: the version vector in its stored
/// wire form (JSON), passed through.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadEvent {
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

/// The columns [`HeadEvent::decode`] reads, from `events`.
pub const HEAD_EVENT_COLUMNS: &str = "seq, event_id, device_id, op, version, client_time, payload";

impl HeadEvent {
    /// Reads [`HEAD_EVENT_COLUMNS`] from column `first` of `row` on.
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

/// What a head takes from its event, in the order of the columns `seq,
/// event_id, device_id, op, version, client_time` (the version vector as
/// stored): shared by the projector's heads and pull's.
struct HeadColumns<'r> {
    seq: u64,
    event_id: Uuid,
    device_id: Uuid,
    op: Op,
    version: &'r str,
    client_time: DateTime<Utc>,
}

impl<'r> HeadColumns<'r> {
    /// Reads them from column `first` of `row` on.
    fn decode(row: &'r Row, first: i32) -> StoreResult<Self> {
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

/// The aggregates of some kinds changed after a cursor, in order of their
/// latest change: each view walked in its `updated_seq` index, the walks
/// merged here. (One `UNION ALL` under an `ORDER BY` made SQLite copy every
/// arm's rows, heads and all, into a temporary B-tree to sort them.) A row
/// is read when it is taken, so a caller that stops early has read at most
/// one row more per view; each row comes with the event of its latest
/// change, joined in the same statement.
pub struct ChangedSince {
    walks: Vec<ViewWalk>,
}

/// One view's walk in its `updated_seq` index.
struct ViewWalk {
    kind: Kind,
    rows: libsql::Rows,
    /// The walk's next row; `None` once it is exhausted (never stepped again:
    /// SQLite would run a finished statement from the start).
    next: Option<StoredChange>,
}

impl ViewWalk {
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
            let mut walk = ViewWalk { kind: *kind, rows: conn.query(&sql, (since, limit)).await?, next: None };
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
        latest: HeadEvent::decode(row, 7)?,
        id,
    })
}

/// A row and its heads from the load statement's rows (one per head, in
/// no particular order), the heads put in their stored order.
async fn load_rows(kind: Kind, mut rows: libsql::Rows) -> StoreResult<Option<AggregateRow>> {
    let Some(first) = rows.next().await? else { return Ok(None) };
    let (mut row, seqs) = decode(kind, &first)?;
    let corrupt = |what: String| StoreError::Corrupt(format!("{} {}: {what}", kind.as_str(), row.id));
    let mut found = Vec::with_capacity(seqs.len());
    let mut next = Some(first);
    while let Some(event) = next {
        if matches!(event.column_type(7)?, ValueType::Null) {
            return Err(corrupt(format!("its heads {seqs:?} name an event not of this aggregate in the log")));
        }
        found.push(decode_head(&event, 7)?);
        next = rows.next().await?;
    }
    for seq in &seqs {
        let at = found.iter().position(|head| head.seq == *seq);
        row.heads.push(found.swap_remove(at.ok_or_else(|| corrupt(format!("its head {seq} was not read")))?));
    }
    if !found.is_empty() {
        return Err(corrupt(format!("more events than its heads {seqs:?}")));
    }
    Ok(Some(row))
}

/// Decodes the view's columns (the first seven): the row without its heads
/// yet, and their seqs.
fn decode(kind: Kind, row: &Row) -> StoreResult<(AggregateRow, Vec<u64>)> {
    let id: String = row.get(0)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("{} {id}: {what}", kind.as_str()));
    let parent: Option<String> = row.get(1)?;
    let text = row.get_str(2)?;
    let heads = parse_heads(text).ok_or_else(|| heads_error(kind, &id, text))?;
    let version: String = row.get(3)?;
    let row = AggregateRow {
        kind,
        id: Uuid::parse_str(&id).map_err(|_| corrupt("id"))?,
        parent_id: parent.map(|p| Uuid::parse_str(&p).map_err(|_| corrupt("parent_id"))).transpose()?,
        heads: Vec::with_capacity(heads.len()),
        version: VersionVector::from_json(&version).map_err(|_| corrupt("version"))?,
        deleted: row.get::<i64>(4)? != 0,
        conflict: row.get::<i64>(5)? != 0,
        updated_seq: row.get(6)?,
    };
    Ok((row, heads))
}

/// Decodes a head from its event's `seq, event_id, device_id, op, version,
/// client_time, parent_id`, from column `first` of `row` on.
fn decode_head(row: &Row, first: i32) -> StoreResult<Head> {
    let head = HeadColumns::decode(row, first)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("event seq {}: {what}", head.seq));
    let parent_id = match row.column_type(first + 6)? {
        ValueType::Null => None,
        _ => Some(Uuid::parse_str(row.get_str(first + 6)?).map_err(|_| corrupt("parent_id"))?),
    };
    Ok(Head {
        seq: head.seq,
        event_id: head.event_id,
        device_id: head.device_id,
        op: head.op,
        version: VersionVector::from_json(head.version).map_err(|_| corrupt("version"))?,
        client_time: head.client_time,
        parent_id,
    })
}

#[cfg(test)]
mod tests {
    use chrono::{SubsecRound, Utc};
    use proptest::prelude::*;

    use super::*;

    fn head(seq: u64) -> Head {
        Head {
            seq,
            event_id: Uuid::new_v4(),
            device_id: Uuid::new_v4(),
            op: Op::Put,
            version: VersionVector::default(),
            client_time: Utc::now(),
            parent_id: None,
        }
    }

    proptest! {
        #[test]
        fn heads_are_stored_as_the_json_array_of_their_seqs(seqs in proptest::collection::hash_set(any::<u64>(), 1..5)) {
            let seqs: Vec<u64> = seqs.into_iter().collect();
            let heads: Vec<Head> = seqs.iter().copied().map(head).collect();
            let text = heads_json(&heads);
            prop_assert_eq!(&text, &serde_json::to_string(&seqs).unwrap());
            prop_assert_eq!(parse_heads(&text), Some(seqs));
        }
    }

    #[tokio::test]
    async fn a_row_loads_with_its_heads_events_and_heads_naming_no_event_are_an_error() {
        use crate::store::{Backend, UserDb};
        use crate::sync::push::apply_batch;

        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap();
        let (a, b, entry) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let edit = |device: Uuid| crate::events::NewEvent {
            event_id: Uuid::new_v4(),
            kind: Kind::Entry,
            aggregate_id: entry,
            parent_id: None,
            op: Op::Put,
            version: VersionVector::single(device, 1),
            payload: Some(vec![1]),
            client_time: Utc::now().trunc_subsecs(6),
        };
        let (first, second) = (edit(a), edit(b));
        let mut tx = db.begin_write().await.unwrap();
        apply_batch(&mut tx, a, Utc::now(), vec![first.clone()]).await.unwrap();
        apply_batch(&mut tx, b, Utc::now(), vec![second.clone()]).await.unwrap();
        let views = ViewStatements::cached(&mut tx, [Kind::Entry]).await.unwrap();
        let row = views.load(Kind::Entry, entry).await.unwrap().unwrap();
        assert!(row.conflict);
        let mut expected = [(first.event_id, a, 1), (second.event_id, b, 2)];
        expected.sort();
        let heads: Vec<_> = row.heads.iter().map(|h| (h.event_id, h.device_id, h.seq)).collect();
        assert_eq!(heads, expected);
        assert_eq!(row.heads[0].client_time, if expected[0].1 == a { first.client_time } else { second.client_time });
        assert!(views.load(Kind::Entry, Uuid::new_v4()).await.unwrap().is_none());

        for bad in ["[1,9]", "[9]", "[]", "[1,1]", "[{\"seq\":1}]"] {
            tx.execute("UPDATE entries SET heads = ?1", [bad]).await.unwrap();
            assert!(views.load(Kind::Entry, entry).await.is_err(), "{bad}");
        }
        // Heads stored whole (the shape before migration 0003) say how to mend them.
        tx.execute("UPDATE entries SET heads = '[{\"seq\":1}]'", ()).await.unwrap();
        let err = views.load(Kind::Entry, entry).await.unwrap_err().to_string();
        assert!(err.contains("echolia replay"), "{err}");
        // A head naming another aggregate's event is not taken for this one's.
        let other = Uuid::new_v4();
        apply_batch(&mut tx, a, Utc::now(), vec![crate::events::NewEvent { aggregate_id: other, ..edit(a) }])
            .await
            .unwrap();
        tx.execute("UPDATE entries SET heads = '[1,3]' WHERE id = ?1", [entry.to_string()]).await.unwrap();
        assert!(views.load(Kind::Entry, entry).await.is_err());
        tx.execute("UPDATE entries SET heads = '[2,1]'", ()).await.unwrap();
        let row = views.load(Kind::Entry, entry).await.unwrap().unwrap();
        assert_eq!(row.heads.iter().map(|h| h.seq).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn heads_that_are_not_an_array_of_seqs_do_not_parse() {
        for bad in ["", "[", "[]", "[1,1]", "[-1]", "[1.5]", "[\"1\"]", "[{\"seq\":1}]", "{}", "[18446744073709551616]"]
        {
            assert_eq!(parse_heads(bad), None, "{bad}");
        }
    }
}
