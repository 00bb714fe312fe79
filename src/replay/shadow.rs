//! Rebuild's first half: fresh shadow tables filled from the log, folding
//! and writing on two threads, each shadow indexed once its rows are in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::{RowBatch, ShadowInserts};
use super::checkpointer::Checkpointer;
use super::fold::{EventsByKind, FoldedRows};
use super::schema::{shadow_indexes, shadow_sql, table_sql};
use super::timing::millis;
use super::{OnProgress, View, PAGE, VIEWS};
use crate::events::read_tip;
use crate::store::raw::RawConn;
use crate::store::{ReplayLock, StoreError, StoreResult, UserDb, JOURNAL_SIZE_LIMIT};

/// Shadow tables filled from the log up to `upto`, waiting for [`swap`](super::swap()).
pub struct Shadow {
    pub upto: u64,
    pub events: u64,
    pub rows: u64,
    /// Still copying the shadows' pages into the database file: the swap
    /// need not wait for it, and it is joined after.
    pub(super) checkpointer: Checkpointer,
    /// No other rebuild of this user may start until the swap is done.
    _lock: ReplayLock,
}

/// From the folding side to the writing side.
enum ToWrite {
    /// Rows for a view's shadow.
    Rows(View, RowBatch),
    /// Every row has been sent. A channel closed without it means the
    /// folding side failed: the writer then stops without building indexes.
    Done,
}

/// Creates fresh shadow tables and fills them from the log up to the current
/// head. Folding (reading the sorted log, the projectors, encoding rows) and
/// writing (`write_shadows`) run side by side, on two threads, with at most
/// two batches between them. The shadows are written in short transactions:
/// the server's writers get their turn between them.
pub async fn build_shadow(db: &Arc<UserDb>, scanners: u64, progress: &OnProgress<'_>) -> StoreResult<Shadow> {
    let started = Instant::now();
    let lock = db.lock_replay()?;
    let tx = db.begin_write().await?;
    let mut indexes = Vec::with_capacity(VIEWS.len());
    for view in VIEWS {
        // Leftovers of a rebuild that stopped halfway.
        for table in [Some(view.shadow()), Some(view.retired()), view.fill()].into_iter().flatten() {
            tx.execute(&format!("DROP TABLE IF EXISTS {table}"), ()).await?;
        }
        let live = table_sql(&tx, view.table).await?;
        tx.execute(&shadow_sql(view.table, &live)?, ()).await?;
        if let Some(fill) = view.fill() {
            let sql = format!("CREATE TABLE {fill} AS SELECT {} FROM {} WHERE 0", view.columns, view.shadow());
            tx.execute(&sql, ()).await?;
        }
        // Once its rows are in: moved to the shadow in key order, then indexed.
        let mut then = view.sorted_in();
        then.extend(shadow_indexes(&tx, view).await?);
        indexes.push((view, then));
    }
    tx.commit().await?;

    let checkpointer = Checkpointer::start(db).await?;
    let (batches, to_write) = tokio::sync::mpsc::channel::<ToWrite>(2);
    let writing = tokio::task::spawn_blocking({
        let db = db.clone();
        move || write_shadows(&db, to_write, indexes, checkpointer)
    });
    let folded = fold_into(db, scanners, &batches, progress).await;
    drop(batches);
    let written = writing.await.map_err(|err| StoreError::Corrupt(format!("the shadow writer stopped: {err}")))?;
    // A failed writer makes the folding side fail too, with less to say: its error goes first.
    let written = written?;
    let (upto, events) = folded?;
    let (rows, checkpointer) = written.ok_or_else(|| StoreError::Corrupt("the shadow writer missed the end".into()))?;
    tracing::debug!(events, rows, ms = millis(started.elapsed()), "replay: shadow views written");
    Ok(Shadow { upto, events, rows, checkpointer, _lock: lock })
}

/// The writing side of [`build_shadow`], on a blocking thread: each batch of
/// rows in a transaction of its own, and once a view's rows are all in (the
/// next view's first batch has come, or the last batch), each of its
/// shadow's `indexes` in one more, built in one sort while the folding side
/// goes on with the next view.
///
/// The connection is replay's own ([`RawConn`]: rows are bound straight
/// from their batch's buffers), writes under the user's write lock, and
/// commits with `synchronous = NORMAL`: a crash can lose its last commits,
/// which are worth nothing until the swap commits with `synchronous = FULL`
/// (docs/replay.md). It leaves checkpoints to a [`Checkpointer`], handed
/// back with the number of rows written (`None` if the folding side stopped
/// short: its error tells why).
fn write_shadows(
    db: &UserDb,
    mut to_write: tokio::sync::mpsc::Receiver<ToWrite>,
    indexes: Vec<(View, Vec<String>)>,
    checkpointer: Checkpointer,
) -> StoreResult<Option<(u64, Checkpointer)>> {
    let conn = db.open_raw()?;
    // The store's WAL size limit too: a WAL this connection restarts is cut
    // back to it, not left at its peak.
    conn.execute_batch(&format!(
        "PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0; \
         PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}"
    ))?;
    let mut writer =
        ShadowWriter { db, conn: &conn, checkpointer, rows: 0, clock: Instant::now(), spent: [Duration::ZERO; 4] };
    let mut inserts: Option<ShadowInserts<'_>> = None;
    let mut unindexed = indexes.into_iter().peekable();
    loop {
        let (view, batch) = match to_write.blocking_recv() {
            Some(ToWrite::Rows(view, batch)) => (view, batch),
            Some(ToWrite::Done) => break,
            None => return Ok(None),
        };
        writer.lap(WriterPhase::Idle);
        // Views come in order: those before this one are complete.
        while let Some((_, statements)) = unindexed.next_if(|(next, _)| *next != view) {
            writer.index(&statements)?;
        }
        let inserts = match &mut inserts {
            Some(inserts) if inserts.view == view => inserts,
            slot => slot.insert(ShadowInserts::prepare(&conn, view)?),
        };
        writer.transaction(WriterPhase::Inserting, || inserts.write(&batch))?;
        writer.rows += batch.rows as u64;
    }
    drop(inserts);
    for (_, statements) in unindexed {
        writer.index(&statements)?;
    }
    let ShadowWriter { rows, checkpointer, spent, .. } = writer;
    let [idle, inserting, indexing, waiting] = spent.map(millis);
    tracing::debug!(
        rows,
        idle_ms = idle,
        inserting_ms = inserting,
        indexing_ms = indexing,
        checkpoint_wait_ms = waiting,
        "replay: shadow writer done"
    );
    Ok(Some((rows, checkpointer)))
}

/// What [`write_shadows`] spends its time on.
#[derive(Clone, Copy)]
enum WriterPhase {
    Idle,
    Inserting,
    Indexing,
    CheckpointWait,
}

/// The writing side's connection and checkpointer, and its time by phase.
struct ShadowWriter<'a> {
    db: &'a UserDb,
    conn: &'a RawConn,
    checkpointer: Checkpointer,
    rows: u64,
    clock: Instant,
    /// By [`WriterPhase`].
    spent: [Duration; 4],
}

impl ShadowWriter<'_> {
    /// Adds the time since the last lap to `what`.
    fn lap(&mut self, what: WriterPhase) {
        let now = Instant::now();
        self.spent[what as usize] += now - self.clock;
        self.clock = now;
    }

    /// Runs `write` in one transaction, under the user's write lock, then
    /// tells the checkpointer (which may make it wait). Blocks its thread.
    fn transaction(&mut self, what: WriterPhase, write: impl FnOnce() -> StoreResult<()>) -> StoreResult<()> {
        let handle = tokio::runtime::Handle::current();
        {
            let _lock = handle.block_on(self.db.lock_writes())?;
            let tx = self.conn.begin_immediate()?;
            write()?;
            tx.commit()?;
        }
        self.lap(what);
        handle.block_on(self.checkpointer.committed());
        self.lap(WriterPhase::CheckpointWait);
        Ok(())
    }

    /// Builds indexes, each in a transaction of its own: the write lock is
    /// held for one sort at a time.
    fn index(&mut self, statements: &[String]) -> StoreResult<()> {
        let conn = self.conn;
        for sql in statements {
            let started = Instant::now();
            self.transaction(WriterPhase::Indexing, || conn.execute_batch(sql))?;
            tracing::debug!(index = sql.as_str(), ms = millis(started.elapsed()), "replay: index built");
        }
        Ok(())
    }
}

/// The folding side of [`build_shadow`]: every view's rows, in batches.
async fn fold_into(
    db: &Arc<UserDb>,
    scanners: u64,
    batches: &tokio::sync::mpsc::Sender<ToWrite>,
    progress: &OnProgress<'_>,
) -> StoreResult<(u64, u64)> {
    let upto = read_tip(&*db.read().await?).await?.seq;
    let mut log = EventsByKind::open(db, upto, scanners).await?;
    let stopped = || StoreError::Corrupt("the shadow writer stopped".into());
    for view in VIEWS {
        let mut folded = FoldedRows::new(view);
        let mut batch = RowBatch::new(view);
        while let Some(row) = folded.next(&mut log)? {
            batch.push(row.values()?)?;
            if batch.rows as u64 >= PAGE {
                let full = std::mem::replace(&mut batch, RowBatch::new(view));
                batches.send(ToWrite::Rows(view, full)).await.map_err(|_| stopped())?;
                progress(log.events);
            }
        }
        if batch.rows > 0 {
            batches.send(ToWrite::Rows(view, batch)).await.map_err(|_| stopped())?;
        }
    }
    log.finish()?;
    batches.send(ToWrite::Done).await.map_err(|_| stopped())?;
    let events = log.events;
    progress(events);
    Ok((upto, events))
}

/// Page cache of the shadow writer, which also bounds the memory its index
/// builds sort in (SQLite's sorter holds up to a cache's worth before it
/// spills to temporary files). Its inserts append, so they need few pages:
/// a larger cache raised replay's peak memory, not its speed (the peak RSS
/// of `benches/replay.rs`).
const WRITER_CACHE_KIB: u32 = 8 * 1024;
