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
        let row = rows.next().await?.map(|row| decode(kind, &row, 0)).transpose();
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
    let heads = serde_json::to_string(&row.heads).map_err(|err| StoreError::Corrupt(err.to_string()))?;
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

/// Up to `limit` aggregates of `kinds` changed after `since`, in order of
/// their latest change.
pub async fn changed_since(
    conn: &Connection,
    since: u64,
    limit: u64,
    kinds: &[Kind],
) -> StoreResult<Vec<AggregateRow>> {
    let mut arms = Vec::new();
    for kind in kinds {
        let table = client_table(*kind)?;
        arms.push(format!(
            "SELECT * FROM (SELECT '{kind}', id, parent_id, heads, version, deleted, conflict, updated_seq \
             FROM {table} WHERE updated_seq > ?1 ORDER BY updated_seq LIMIT ?2)",
            kind = kind.as_str()
        ));
    }
    if arms.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!("{} ORDER BY 8 LIMIT ?2", arms.join(" UNION ALL "));
    let mut rows = conn.query(&sql, (since, limit)).await?;
    let mut changes = Vec::new();
    while let Some(row) = rows.next().await? {
        let kind: String = row.get(0)?;
        let kind = Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("view kind `{kind}`")))?;
        changes.push(decode(kind, &row, 1)?);
    }
    Ok(changes)
}

/// Decodes the columns `id, parent_id, heads, version, deleted, conflict,
/// updated_seq` starting at `at`.
fn decode(kind: Kind, row: &Row, at: i32) -> StoreResult<AggregateRow> {
    let id: String = row.get(at)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("{} {id}: {what}", kind.as_str()));
    let parent: Option<String> = row.get(at + 1)?;
    let heads: String = row.get(at + 2)?;
    let version: String = row.get(at + 3)?;
    let heads: Vec<Head> = serde_json::from_str(&heads).map_err(|_| corrupt("heads"))?;
    Ok(AggregateRow {
        kind,
        id: Uuid::parse_str(&id).map_err(|_| corrupt("id"))?,
        parent_id: parent.map(|p| Uuid::parse_str(&p).map_err(|_| corrupt("parent_id"))).transpose()?,
        heads,
        version: VersionVector::from_json(&version).map_err(|_| corrupt("version"))?,
        deleted: row.get::<i64>(at + 4)? != 0,
        conflict: row.get::<i64>(at + 5)? != 0,
        updated_seq: row.get(at + 6)?,
    })
}
