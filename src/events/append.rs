//! The append path: inside the user's `BEGIN IMMEDIATE` transaction, read
//! the log's tip once, then give each event the next `seq` and its link of
//! the hash chain. `seq` is the table's primary key, so a second writer that
//! raced past the lock (another process) fails instead of forking the chain.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use libsql::{Connection, Statement};
use uuid::Uuid;

use super::hash::{canonical_bytes, link, GENESIS};
use super::Kind;
use super::{NewEvent, StoredEvent};
use crate::clock::rfc3339;
use crate::store::{query_opt, Logged, StoreError, StoreResult, UserDb, WriteTx};

/// The newest position of a log: its last seq and hash (not an aggregate's
/// head, which is a view's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogTip {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl LogTip {
    pub const EMPTY: LogTip = LogTip { seq: 0, hash: GENESIS };
}

/// Reads the tip of the log (seq 0 and the zero hash when empty).
pub async fn read_tip(conn: &Connection) -> StoreResult<LogTip> {
    let Some(row) = query_opt(conn, "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", ()).await? else {
        return Ok(LogTip::EMPTY);
    };
    let seq: u64 = row.get(0)?;
    let hash: Vec<u8> = row.get(1)?;
    let hash = hash.try_into().map_err(|_| StoreError::Corrupt(format!("seq {seq}: hash is not 32 bytes")))?;
    Ok(LogTip { seq, hash })
}

/// The statement [`LogTx::append`] runs, once per event.
pub const INSERT: &str = "INSERT INTO events (seq, event_id, device_id, kind, aggregate_id, parent_id, op, version, \
                      payload, client_time, received_at, hash) \
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// The user's write transaction, appending to its log: [`WriteTx`] plus
/// the tip it read when it began. Dropped without [`LogTx::commit`], it
/// rolls everything back.
pub struct LogTx {
    // Field order matters: the statement is released before the transaction ends.
    /// The log insert, looked up in the writer's cache once per transaction.
    insert: Option<Arc<Statement>>,
    tip: LogTip,
    /// The tip when the transaction began: what the writer's id index may
    /// take from the log as committed.
    began_at: u64,
    /// Whether the id index covers the log up to `began_at`, so appends are
    /// staged in it. Until then they wait in `unstaged` (a transaction that
    /// never looks an id up never reads the log's ids).
    ids_current: bool,
    unstaged: Vec<Logged>,
    tx: WriteTx,
}

impl LogTx {
    /// Takes the user's write lock (`BEGIN IMMEDIATE`), then reads the tip.
    pub async fn begin(db: &UserDb) -> StoreResult<Self> {
        let mut tx = db.begin_write().await?;
        let tip = read_tip(&tx).await?;
        let ids_current = tx.ids()?.through() == tip.seq;
        Ok(Self { insert: None, tip, began_at: tip.seq, ids_current, unstaged: Vec::new(), tx })
    }

    /// The seq of the event `event_id` names, if the log (or this
    /// transaction) holds it: the idempotency check of every append. The
    /// first lookup brings the writer's id index up to the log.
    pub async fn find(&mut self, event_id: Uuid) -> StoreResult<Option<u64>> {
        self.catch_up().await?;
        Ok(self.tx.ids()?.get(&event_id))
    }

    /// The seq of the first event of aggregate `id` of `kind` in the log or
    /// this transaction, which keys its view row (`None`: it has none yet).
    pub async fn created(&mut self, kind: Kind, id: Uuid) -> StoreResult<Option<u64>> {
        self.catch_up().await?;
        let Some(view) = kind.view_tag() else { return Ok(None) };
        Ok(self.tx.ids()?.created(view, id))
    }

    /// Reads the ids the index lacks from the log (what this process never
    /// saw: all of it on the first write after the database opened, else
    /// what other processes appended), then stages this transaction's own.
    async fn catch_up(&mut self) -> StoreResult<()> {
        if self.ids_current {
            return Ok(());
        }
        catch_up_ids(&mut self.tx, self.began_at).await?;
        let ids = self.tx.ids()?;
        for event in self.unstaged.drain(..) {
            ids.stage(event)?;
        }
        self.ids_current = true;
        Ok(())
    }

    /// Appends one event after the tip and moves the tip forward (its view
    /// rows are the caller's to write, in this same transaction).
    pub async fn append(
        &mut self,
        device_id: Uuid,
        received_at: DateTime<Utc>,
        event: NewEvent,
    ) -> StoreResult<StoredEvent> {
        let insert = match &self.insert {
            Some(insert) => insert.clone(),
            None => {
                let insert = self.tx.cached(INSERT).await?;
                self.insert.insert(insert).clone()
            }
        };
        let seq = self.tip.seq + 1;
        // No index on disk holds `event_id` unique: callers look it up first
        // (`find`), and a known id is refused here whoever the caller is.
        if self.ids_current && self.tx.ids()?.get(&event.event_id).is_some() {
            return Err(StoreError::Conflict(format!("event {} is already in the log", event.event_id)));
        }
        let received_text = rfc3339(received_at);
        let hash = link(&self.tip.hash, &canonical_bytes(seq, device_id, &received_text, &event));
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
        let logged =
            Logged { event_id: event.event_id, seq, view: event.kind.view_tag(), aggregate_id: event.aggregate_id };
        if self.ids_current {
            self.tx.ids()?.stage(logged)?;
        } else {
            self.unstaged.push(logged);
        }
        self.tip = LogTip { seq, hash };
        self.tx.count_appended();
        Ok(StoredEvent { seq, device_id, received_at, hash, event })
    }

    pub fn tip(&self) -> LogTip {
        self.tip
    }

    pub async fn commit(mut self) -> StoreResult<()> {
        self.insert = None;
        self.tx.commit().await
    }
}

/// Reads the event ids the index lacks, up to the committed `head`. The
/// log is append-only, so an index ahead of it can only mean the file was
/// replaced: it starts over.
async fn catch_up_ids(tx: &mut WriteTx, head: u64) -> StoreResult<()> {
    let mut from = tx.ids()?.through();
    if from == head {
        return Ok(());
    }
    if from > head {
        tx.ids()?.clear();
        from = 0;
    }
    let sql = "SELECT seq, event_id, kind, aggregate_id FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq";
    let mut rows = tx.query(sql, [from, head]).await?;
    let mut ids = Vec::new();
    while let Some(row) = rows.next().await? {
        ids.push(logged(row.get(0)?, row.get_str(1)?, row.get_str(2)?, row.get_str(3)?)?);
    }
    drop(rows);
    tx.ids()?.extend(ids, head)?;
    Ok(())
}

/// An event as the writer's index takes it, from its log columns `seq,
/// event_id, kind, aggregate_id` (the local and the remote append share it).
pub fn logged(seq: u64, event_id: &str, kind: &str, aggregate_id: &str) -> StoreResult<Logged> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("event seq {seq}: {what}"));
    Ok(Logged {
        event_id: Uuid::parse_str(event_id).map_err(|_| corrupt("event_id"))?,
        seq,
        view: Kind::parse(kind).ok_or_else(|| corrupt("kind"))?.view_tag(),
        aggregate_id: Uuid::parse_str(aggregate_id).map_err(|_| corrupt("aggregate_id"))?,
    })
}

impl Deref for LogTx {
    type Target = WriteTx;

    fn deref(&self) -> &WriteTx {
        &self.tx
    }
}

impl DerefMut for LogTx {
    fn deref_mut(&mut self) -> &mut WriteTx {
        &mut self.tx
    }
}
