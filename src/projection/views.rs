//! The tables of the client read models (`entries`, `memories`, `tags`,
//! `embeddings`): one row per aggregate, as [`AggregateRow`].

use std::sync::{Arc, LazyLock};

use libsql::{Connection, Row, Statement, Value};
use uuid::Uuid;

use super::aggregate::{AggregateRow, Head};
use super::version::VersionVector;
use crate::events::Kind;
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
        .filter_map(|kind| table(*kind))
        .map(|table| {
            let load = format!("SELECT {COLUMNS} FROM {table} WHERE id = ?1");
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

    pub async fn load(&self, kind: Kind, id: Uuid) -> StoreResult<Option<AggregateRow>> {
        let stmt = prepared(&self.load, kind)?;
        stmt.reset();
        let mut rows = stmt.query([id.to_string()]).await?;
        let row = rows.next().await?.map(|row| decode(kind, &row)).transpose();
        stmt.reset();
        row
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

/// The column values a row is stored as, in the order of [`COLUMNS`]. `save`
/// writes exactly these, so replay can compare and hash rows without a
/// second encoding that could drift from the live one.
pub fn values(row: &AggregateRow) -> StoreResult<Vec<Value>> {
    let heads = super::aggregate::heads_json(&row.heads);
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

/// A view row as pull sends it: its columns as stored (the projector writes
/// ids, times and version vectors in their wire form, so pull passes the
/// text through instead of parsing it into types and formatting it again),
/// with the payload of the event at `updated_seq`: the projector's latest
/// change to a row is always one of its heads ([`super::aggregate::apply`]
/// puts every event it does not find stale among the heads), so a row
/// without a conflict needs no other payload.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChange {
    pub kind: Kind,
    pub id: String,
    pub parent_id: Option<String>,
    /// JSON: the heads, as [`values`] stores them.
    pub heads: String,
    /// JSON: the merged version vector.
    pub version: String,
    pub deleted: bool,
    pub conflict: bool,
    pub updated_seq: u64,
    /// The payload of the event at `updated_seq` (`None` for a delete).
    pub latest_payload: Option<Vec<u8>>,
}

/// The aggregates of some kinds changed after a cursor, in order of their
/// latest change: each view walked in its `updated_seq` index, the walks
/// merged here. (One `UNION ALL` under an `ORDER BY` made SQLite copy every
/// arm's rows, heads and all, into a temporary B-tree to sort them.) A row
/// is read when it is taken, so a caller that stops early has read at most
/// one row more per view; each row comes with the payload of its latest
/// change, joined in the same statement.
pub struct ChangedSince {
    arms: Vec<Arm>,
}

struct Arm {
    kind: Kind,
    rows: libsql::Rows,
    /// The arm's next row; `None` once it is exhausted (never stepped again:
    /// SQLite would run a finished statement from the start).
    next: Option<StoredChange>,
}

impl Arm {
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
        let mut arms = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let table = client_table(*kind)?;
            let sql = format!(
                "SELECT v.id, v.parent_id, v.heads, v.version, v.deleted, v.conflict, v.updated_seq, e.payload \
                 FROM {table} v LEFT JOIN events e ON e.seq = v.updated_seq \
                 WHERE v.updated_seq > ?1 ORDER BY v.updated_seq LIMIT ?2"
            );
            let mut arm = Arm { kind: *kind, rows: conn.query(&sql, (since, limit)).await?, next: None };
            arm.advance().await?;
            if arm.next.is_some() {
                arms.push(arm);
            }
        }
        Ok(Self { arms })
    }

    /// The next row in `updated_seq` order (each seq changes one aggregate,
    /// so there are no ties).
    pub async fn next(&mut self) -> StoreResult<Option<StoredChange>> {
        let first = self
            .arms
            .iter()
            .enumerate()
            .filter_map(|(i, arm)| arm.next.as_ref().map(|row| (i, row.updated_seq)))
            .min_by_key(|(_, seq)| *seq)
            .map(|(i, _)| i);
        let Some(i) = first else { return Ok(None) };
        let arm = &mut self.arms[i];
        let row = arm.next.take();
        arm.advance().await?;
        if arm.next.is_none() {
            self.arms.swap_remove(i);
        }
        Ok(row)
    }
}

fn stored_change(kind: Kind, row: &Row) -> StoreResult<StoredChange> {
    Ok(StoredChange {
        kind,
        id: row.get(0)?,
        parent_id: row.get(1)?,
        heads: row.get(2)?,
        version: row.get(3)?,
        deleted: row.get::<i64>(4)? != 0,
        conflict: row.get::<i64>(5)? != 0,
        updated_seq: row.get(6)?,
        latest_payload: row.get(7)?,
    })
}

/// Decodes the columns [`COLUMNS`].
fn decode(kind: Kind, row: &Row) -> StoreResult<AggregateRow> {
    let id: String = row.get(0)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("{} {id}: {what}", kind.as_str()));
    let parent: Option<String> = row.get(1)?;
    let heads: String = row.get(2)?;
    let version: String = row.get(3)?;
    let heads: Vec<Head> = serde_json::from_str(&heads).map_err(|_| corrupt("heads"))?;
    Ok(AggregateRow {
        kind,
        id: Uuid::parse_str(&id).map_err(|_| corrupt("id"))?,
        parent_id: parent.map(|p| Uuid::parse_str(&p).map_err(|_| corrupt("parent_id"))).transpose()?,
        heads,
        version: VersionVector::from_json(&version).map_err(|_| corrupt("version"))?,
        deleted: row.get::<i64>(4)? != 0,
        conflict: row.get::<i64>(5)? != 0,
        updated_seq: row.get(6)?,
    })
}
