//! Loading and saving the row of one aggregate, with the statements a
//! batch reuses.

use std::sync::{Arc, LazyLock};

use libsql::{Connection, Row, Statement, ValueType};
use uuid::Uuid;

use super::{client_index, heads_error, parse_heads, table, values, HeadColumns, CLIENT_KINDS, COLUMNS};
use crate::events::version::VersionVector;
use crate::events::Kind;
use crate::projection::aggregate::{AggregateHead, AggregateRow};
use crate::store::{StoreError, StoreResult, WriteTx};

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
            // By `created_seq`, the table's key: the writer knows it from
            // the log ([`crate::store::IdIndex::created`]).
            let load = format!(
                "SELECT v.id, v.parent_id, v.heads, v.version, v.deleted, v.conflict, v.updated_seq, \
                 e.seq, e.event_id, e.device_id, e.op, e.version, e.client_time, e.parent_id, v.created_seq \
                 FROM {table} AS v LEFT JOIN json_each(v.heads) AS h LEFT JOIN events AS e \
                 ON e.seq = h.value AND e.aggregate_id = v.id AND e.kind = '{kind}' WHERE v.created_seq = ?1"
            );
            let save = format!(
                "INSERT INTO {table} ({COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (created_seq) DO UPDATE SET \
                 parent_id = excluded.parent_id, heads = excluded.heads, version = excluded.version, \
                 deleted = excluded.deleted, conflict = excluded.conflict, updated_seq = excluded.updated_seq"
            );
            (load, save)
        })
        .collect()
});

/// The load SQL of `kind` for many aggregates at once, one row per head as
/// [`ViewStatements::load`] reads them (a remote append reads a whole
/// batch's rows in one round trip): the rows keyed by the `created_seq`s in
/// the JSON array `?1`, and the rows made after seq `?2` (by another process,
/// since the writer's index last read the log) of the ids in the array `?3`.
pub fn load_many_sql(kind: Kind) -> StoreResult<String> {
    let (load, _) = &SQL[client_index(kind)?];
    Ok(load.replace(
        "WHERE v.created_seq = ?1",
        "WHERE v.created_seq IN (SELECT value FROM json_each(?1)) \
         OR (v.created_seq > ?2 AND v.id IN (SELECT value FROM json_each(?3)))",
    ))
}

/// The save SQL of `kind` (an upsert of [`super::COLUMNS`]).
pub fn save_sql(kind: Kind) -> StoreResult<&'static str> {
    Ok(SQL[client_index(kind)?].1.as_str())
}

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
            let i = client_index(kind)?;
            if statements.load[i].is_none() {
                let (load, save) = &SQL[i];
                statements.load[i] = Some(tx.cached(load).await?);
                statements.save[i] = Some(tx.cached(save).await?);
            }
        }
        Ok(statements)
    }

    /// The row of the aggregate made at `created_seq`, its heads read back from the log.
    pub async fn load(&self, kind: Kind, created_seq: u64) -> StoreResult<Option<AggregateRow>> {
        let stmt = prepared(&self.load, kind)?;
        stmt.reset();
        let loaded = load_rows(kind, stmt.query([created_seq]).await?).await;
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
    statements[client_index(kind)?]
        .as_deref()
        .ok_or_else(|| StoreError::Corrupt(format!("no statement prepared for the `{}` view", kind.as_str())))
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

/// Decodes the view's columns (the first seven, and `created_seq` after the
/// head's): the row without its heads yet, and their seqs.
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
        created_seq: row.get(14)?,
    };
    Ok((row, heads))
}

/// Decodes a head from its event's `seq, event_id, device_id, op, version,
/// client_time, parent_id`, from column `first` of `row` on.
fn decode_head(row: &Row, first: i32) -> StoreResult<AggregateHead> {
    let head = HeadColumns::decode(row, first)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("event seq {}: {what}", head.seq));
    let parent_id = match row.column_type(first + 6)? {
        ValueType::Null => None,
        _ => Some(Uuid::parse_str(row.get_str(first + 6)?).map_err(|_| corrupt("parent_id"))?),
    };
    Ok(AggregateHead {
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
    use crate::events::{LogTx, Op};
    use crate::views::{heads_json, parse_heads};

    fn head(seq: u64) -> AggregateHead {
        AggregateHead {
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
            let heads: Vec<AggregateHead> = seqs.iter().copied().map(head).collect();
            let text = heads_json(&heads);
            prop_assert_eq!(&text, &serde_json::to_string(&seqs).unwrap());
            prop_assert_eq!(parse_heads(&text), Some(seqs));
        }
    }

    #[tokio::test]
    async fn a_row_loads_with_its_heads_events_and_heads_naming_no_event_are_an_error() {
        use crate::store::{Backend, UserDb};
        use crate::views::write::apply_batch;

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
        let mut tx = LogTx::begin(&db).await.unwrap();
        apply_batch(&mut tx, a, Utc::now(), vec![first.clone()]).await.unwrap();
        apply_batch(&mut tx, b, Utc::now(), vec![second.clone()]).await.unwrap();
        let views = ViewStatements::cached(&mut tx, [Kind::Entry]).await.unwrap();
        let row = views.load(Kind::Entry, 1).await.unwrap().unwrap();
        assert!(row.conflict);
        let mut expected = [(first.event_id, a, 1), (second.event_id, b, 2)];
        expected.sort();
        let heads: Vec<_> = row.heads.iter().map(|h| (h.event_id, h.device_id, h.seq)).collect();
        assert_eq!(heads, expected);
        assert_eq!(row.heads[0].client_time, if expected[0].1 == a { first.client_time } else { second.client_time });
        assert!(views.load(Kind::Entry, 999).await.unwrap().is_none());

        for bad in ["[1,9]", "[9]", "[]", "[1,1]", "[{\"seq\":1}]"] {
            tx.execute("UPDATE entries SET heads = ?1", [bad]).await.unwrap();
            assert!(views.load(Kind::Entry, 1).await.is_err(), "{bad}");
        }
        // Heads stored whole (the shape before migration 0003) say how to mend them.
        tx.execute("UPDATE entries SET heads = '[{\"seq\":1}]'", ()).await.unwrap();
        let err = views.load(Kind::Entry, 1).await.unwrap_err().to_string();
        assert!(err.contains("echolia replay"), "{err}");
        // A head naming another aggregate's event is not taken for this one's.
        let other = Uuid::new_v4();
        apply_batch(&mut tx, a, Utc::now(), vec![crate::events::NewEvent { aggregate_id: other, ..edit(a) }])
            .await
            .unwrap();
        tx.execute("UPDATE entries SET heads = '[1,3]' WHERE id = ?1", [entry.to_string()]).await.unwrap();
        assert!(views.load(Kind::Entry, 1).await.is_err());
        tx.execute("UPDATE entries SET heads = '[2,1]'", ()).await.unwrap();
        let row = views.load(Kind::Entry, 1).await.unwrap().unwrap();
        assert_eq!(row.heads.iter().map(|h| h.seq).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn heads_that_are_not_an_array_of_seqs_do_not_parse() {
        for bad in ["", "[", "[]", "[1,1]", "[-1]", "[1.5]", "[\"1\"]", "[{\"seq\":1}]", "{}", "[18446744073709551616]"]
        {
            assert_eq!(parse_heads(bad), None, "{bad}");
        }
    }

    /// A writer whose index keys an aggregate at another's row (its database
    /// replaced under it) refuses the batch rather than fold onto that row.
    #[tokio::test]
    async fn an_index_keying_an_aggregate_at_another_ones_row_refuses_the_batch() {
        use crate::store::{Backend, Logged, UserDb};
        use crate::views::write::{apply_batch, BatchError};

        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap();
        let (device, x, y) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let put = |aggregate_id: Uuid, counter: u64| crate::events::NewEvent {
            event_id: Uuid::new_v4(),
            kind: Kind::Entry,
            aggregate_id,
            parent_id: None,
            op: Op::Put,
            version: VersionVector::single(device, counter),
            payload: Some(vec![1]),
            client_time: Utc::now().trunc_subsecs(6),
        };
        let mut tx = LogTx::begin(&db).await.unwrap();
        apply_batch(&mut tx, device, Utc::now(), vec![put(x, 1), put(y, 1)]).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = LogTx::begin(&db).await.unwrap();
        let ids = tx.ids().unwrap();
        ids.clear();
        // The index keys x at seq 2, y's row.
        let other = Logged { event_id: Uuid::new_v4(), seq: 1, view: None, aggregate_id: device };
        let x_at_2 = Logged { event_id: Uuid::new_v4(), seq: 2, view: Kind::Entry.view_tag(), aggregate_id: x };
        ids.extend([other, x_at_2], 2).unwrap();
        let err = apply_batch(&mut tx, device, Utc::now(), vec![put(x, 2)]).await.unwrap_err();
        assert!(matches!(&err, BatchError::Store(StoreError::Corrupt(_))), "{err}");
        drop(tx);
        let mut tx = LogTx::begin(&db).await.unwrap();
        let views = ViewStatements::cached(&mut tx, [Kind::Entry]).await.unwrap();
        let row = views.load(Kind::Entry, 2).await.unwrap().unwrap();
        assert_eq!((row.id, row.updated_seq), (y, 2), "the other aggregate's row is as it was");
    }
}
