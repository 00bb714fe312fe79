//! Replay: every view of a user rebuilt from its log with the projectors the
//! push path uses ([`aggregate::apply`], [`devices::apply`]), or checked
//! against the stored views.
//!
//! The log is read sequentially, by a scanner per core, and sorted by `(kind,
//! aggregate_id, seq)` outside SQLite, in bounded memory spilling to
//! temporary files ([`sorted_log`]). Each aggregate's events thus
//! arrive together and in log order, which is all a projector needs (a row
//! depends only on its own aggregate's events, and the fold is
//! order-independent anyway), so each row is folded in memory and written
//! once, already in key order, and the views come one after the other in the
//! order of their kinds. Memory holds the sort's bounded buffers, up to four
//! batches of rows (two queued, one being written, one being filled) and the
//! row being folded, whatever the log size.
//!
//! **Rebuild** fills shadow tables (`<view>_replay`: the live schema under
//! another name, or the projection file's when a view table was dropped) in
//! short write transactions, up to the head seen at the start, so the
//! server's writers are never held up for long, and builds each shadow's
//! indexes once its rows are in (one sort each, one transaction each). The
//! indexes cannot be renamed (SQLite has no such statement) and the live
//! ones serve until the swap, so a shadow index takes whichever of its two
//! names, `<name>` and `<name>_replay`, the live one does not use: the names
//! alternate from one rebuild to the next, and a migration that touches a
//! view's index names both. Then one write transaction (the user's lock and
//! `BEGIN IMMEDIATE`) renames the live tables away and the shadows in (their
//! indexes follow them), folds the events appended meanwhile with the push
//! path's own storage code, and commits: a reader sees the old views or the
//! new ones, never a mix; it refuses (changing nothing) if the live views'
//! indexes changed since the rebuild began. A second rebuild of the same
//! user, in this process or another, is refused while one runs
//! ([`UserDb::lock_replay`]).
//!
//! **Check** folds the same way, reads the stored views inside one read
//! snapshot (the scanners read the log up to that snapshot's head, which is
//! immutable), and merges the two in key order, naming the first difference;
//! both sides get a checksum: SHA-256 over every row, by table then key.
//!
//! These run long on a big log and libSQL local calls block their thread:
//! they are for the operator commands, never for a request handler.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{self, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libsql::{Connection, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub mod sorted_log;

use self::sorted_log::SortedLog;
use crate::events::append::read_head;
use crate::events::log::read_after;
use crate::events::{Kind, StoredEvent};
use crate::projection::aggregate::{self, AggregateRow, Outcome};
use crate::projection::devices::{self, DeviceRow};
use crate::projection::views::{self, ViewStatements};
use crate::store::raw::{Param, RawConn, RawStatement};
use crate::store::{
    migrations, query_opt, PooledConn, ReplayLock, StoreError, StoreResult, UserDb, JOURNAL_SIZE_LIMIT,
};

/// Events (or view rows) read or written per query or transaction.
pub const PAGE: u64 = 10_000;

/// Told how many events have been folded so far.
pub type OnProgress<'a> = dyn Fn(u64) + Send + Sync + 'a;

/// One read model: its table, the kind of events it folds, its key column
/// (also the first of its columns) and its stored columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub table: &'static str,
    pub kind: Kind,
    pub key: &'static str,
    pub columns: &'static str,
}

/// Every view, in the fixed order of the checksum, which is also the text
/// order of their kinds (the order the sorted log comes in).
pub const VIEWS: [View; 5] = [
    View { table: "devices", kind: Kind::Device, key: "device_id", columns: devices::COLUMNS },
    View { table: "embeddings", kind: Kind::Embedding, key: "id", columns: views::COLUMNS },
    View { table: "entries", kind: Kind::Entry, key: "id", columns: views::COLUMNS },
    View { table: "memories", kind: Kind::Memory, key: "id", columns: views::COLUMNS },
    View { table: "tags", kind: Kind::Tag, key: "id", columns: views::COLUMNS },
];

impl View {
    fn shadow(&self) -> String {
        format!("{}_replay", self.table)
    }

    /// Where the live table goes during the swap, dropped right after.
    fn retired(&self) -> String {
        format!("{}_old", self.table)
    }

    fn column_names(&self) -> impl Iterator<Item = &'static str> {
        self.columns.split(',').map(str::trim)
    }
}

/// A row as a projector returns it.
enum Folded {
    Aggregate(AggregateRow),
    Device(DeviceRow),
}

impl Folded {
    fn values(&self) -> StoreResult<Vec<Value>> {
        match self {
            Self::Aggregate(row) => views::values(row),
            Self::Device(row) => devices::values(row),
        }
    }
}

fn values_of(row: Option<Folded>) -> StoreResult<Option<Vec<Value>>> {
    row.map(|row| row.values()).transpose()
}

/// Folds one event into the row of its aggregate, with the live projectors.
fn fold(current: Option<Folded>, stored: &StoredEvent) -> StoreResult<Option<Folded>> {
    if stored.event.kind == Kind::Device {
        let current = match current {
            Some(Folded::Device(row)) => Some(row),
            _ => None,
        };
        Ok(devices::apply(current, stored)?.map(Folded::Device))
    } else {
        let current = match current {
            Some(Folded::Aggregate(row)) => Some(row),
            _ => None,
        };
        Ok(Some(Folded::Aggregate(aggregate::apply(current, stored).0)))
    }
}

/// The log sorted by kind, then aggregate, then seq, shared by the views in
/// turn (their order is the kinds' order): each takes the events of its kind
/// and leaves the first event of the next kind for the next view.
struct Source {
    stream: SortedLog,
    peeked: Option<StoredEvent>,
    /// Events handed out so far.
    events: u64,
}

impl Source {
    async fn open(db: &Arc<UserDb>, upto: u64, scanners: u64) -> StoreResult<Self> {
        let stream = SortedLog::open(db, upto, scanners).await?;
        Ok(Self { stream, peeked: None, events: 0 })
    }

    /// Checks that every event the scanners read was handed out: a run cut
    /// short would otherwise go live as missing rows.
    fn finish(&self) -> StoreResult<()> {
        match (&self.peeked, self.stream.scanned()) {
            (None, scanned) if scanned == self.events => Ok(()),
            (_, scanned) => Err(StoreError::Corrupt(format!(
                "replay folded {} of the {scanned} events it read (an event of no view, or a lost run)",
                self.events
            ))),
        }
    }

    /// The next event if it is of `kind`.
    fn next_of(&mut self, kind: Kind) -> StoreResult<Option<StoredEvent>> {
        let next = match self.peeked.take() {
            Some(stored) => Some(stored),
            None => self.stream.next_event()?,
        };
        match next {
            Some(stored) if stored.event.kind == kind => {
                self.events += 1;
                Ok(Some(stored))
            }
            Some(stored) if stored.event.kind.as_str() < kind.as_str() => {
                Err(StoreError::Corrupt(format!("seq {}: the log did not come sorted by kind", stored.seq)))
            }
            other => {
                self.peeked = other;
                Ok(None)
            }
        }
    }
}

/// The rows replay makes for one view, in key order: the events of its kind
/// folded one aggregate at a time.
struct FoldedRows {
    kind: Kind,
    /// The aggregate being folded, and its row so far.
    current: Option<(Uuid, Option<Folded>)>,
}

impl FoldedRows {
    fn new(view: View) -> Self {
        Self { kind: view.kind, current: None }
    }

    fn next(&mut self, source: &mut Source) -> StoreResult<Option<Folded>> {
        while let Some(stored) = source.next_of(self.kind)? {
            let id = stored.event.aggregate_id;
            let (row, done) = match self.current.take() {
                Some((current, row)) if current == id => (fold(row, &stored)?, None),
                Some((_, done)) => (fold(None, &stored)?, done),
                None => (fold(None, &stored)?, None),
            };
            self.current = Some((id, row));
            if done.is_some() {
                return Ok(done);
            }
        }
        Ok(self.current.take().and_then(|(_, row)| row))
    }
}

/// The stored rows of one view, in key order, a page at a time.
struct StoredRows<'c> {
    conn: &'c Connection,
    view: View,
    after: Option<Value>,
    buffer: VecDeque<Vec<Value>>,
    exhausted: bool,
}

impl<'c> StoredRows<'c> {
    fn new(conn: &'c Connection, view: View) -> Self {
        Self { conn, view, after: None, buffer: VecDeque::new(), exhausted: false }
    }

    async fn next(&mut self) -> StoreResult<Option<Vec<Value>>> {
        loop {
            if let Some(values) = self.buffer.pop_front() {
                return Ok(Some(values));
            }
            if self.exhausted {
                return Ok(None);
            }
            let View { table, key, columns, .. } = self.view;
            let mut rows = match self.after.clone() {
                None => {
                    self.conn.query(&format!("SELECT {columns} FROM {table} ORDER BY {key} LIMIT ?1"), [PAGE]).await?
                }
                Some(after) => {
                    let sql = format!("SELECT {columns} FROM {table} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2");
                    self.conn.query(&sql, (after, PAGE)).await?
                }
            };
            let mut read = 0;
            while let Some(row) = rows.next().await? {
                let values = (0..row.column_count()).map(|i| row.get_value(i)).collect::<Result<Vec<_>, _>>()?;
                self.after = values.first().cloned();
                self.buffer.push_back(values);
                read += 1;
            }
            self.exhausted = read < PAGE;
        }
    }
}

/// SHA-256 over view rows, each value tagged with its type and length, so
/// no two different sets of rows hash alike by concatenation.
#[derive(Default)]
pub struct ViewHasher(Sha256);

impl ViewHasher {
    pub fn table(&mut self, table: &str) {
        self.0.update([0xff]);
        self.bytes(table.as_bytes());
    }

    pub fn row(&mut self, values: &[Value]) {
        self.0.update([0xfe]);
        for value in values {
            match value {
                Value::Null => self.0.update([0]),
                Value::Integer(n) => {
                    self.0.update([1]);
                    self.0.update(n.to_be_bytes());
                }
                Value::Real(x) => {
                    self.0.update([2]);
                    self.0.update(x.to_bits().to_be_bytes());
                }
                Value::Text(text) => {
                    self.0.update([3]);
                    self.bytes(text.as_bytes());
                }
                Value::Blob(blob) => {
                    self.0.update([4]);
                    self.bytes(blob);
                }
            }
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// The checksum of the stored views: every row of every view, by table then
/// key, read in one snapshot. `conn` must not be inside a transaction.
pub async fn checksum(conn: &Connection) -> StoreResult<[u8; 32]> {
    let snapshot = conn.transaction().await?;
    let mut hasher = ViewHasher::default();
    for view in VIEWS {
        hasher.table(view.table);
        let mut rows = StoredRows::new(&snapshot, view);
        while let Some(values) = rows.next().await? {
            hasher.row(&values);
        }
    }
    snapshot.commit().await?;
    Ok(hasher.finish())
}

/// How a stored view differs from its replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub table: &'static str,
    pub key: String,
    pub kind: DifferenceKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DifferenceKind {
    /// Replay makes this row; the stored view lacks it.
    Missing,
    /// The stored view has this row; replay does not make it.
    Unexpected,
    /// Both have the row; these columns differ.
    Columns(Vec<ColumnDifference>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDifference {
    pub column: &'static str,
    pub stored: Value,
    pub replayed: Value,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Difference { table, key, kind } = self;
        match kind {
            DifferenceKind::Missing => write!(f, "{table} {key}: missing from the stored view (replay makes it)"),
            DifferenceKind::Unexpected => write!(f, "{table} {key}: in the stored view, but replay does not make it"),
            DifferenceKind::Columns(columns) => {
                write!(f, "{table} {key}:")?;
                for (i, diff) in columns.iter().enumerate() {
                    let sep = if i == 0 { " " } else { "; " };
                    write!(f, "{sep}{}: stored ", diff.column)?;
                    // Keys are never printed, public ones included.
                    if diff.column == "public_key" {
                        f.write_str("(not shown), replayed (not shown)")?;
                    } else {
                        write!(f, "{}, replayed {}", Shown(&diff.stored), Shown(&diff.replayed))?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A stored value as a person reads it (long text cut short).
struct Shown<'a>(&'a Value);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 160;
        match self.0 {
            Value::Null => f.write_str("NULL"),
            Value::Integer(n) => write!(f, "{n}"),
            Value::Real(x) => write!(f, "{x}"),
            Value::Text(text) if text.chars().count() > MAX => {
                write!(f, "`{}…`", text.chars().take(MAX).collect::<String>())
            }
            Value::Text(text) => write!(f, "`{text}`"),
            Value::Blob(blob) => write!(f, "<{} bytes>", blob.len()),
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// The log head of the snapshot checked.
    pub head: u64,
    /// Events folded.
    pub events: u64,
    /// Rows replay made.
    pub rows: u64,
    /// Rows that differ (missing, unexpected or changed).
    pub differences: u64,
    pub first: Option<Difference>,
    /// Checksum of the stored views.
    pub stored: [u8; 32],
    /// Checksum of the views replay makes.
    pub replayed: [u8; 32],
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.differences == 0
    }
}

/// SQLite's order of values of one column (NULL, numbers, text, blobs; text
/// by bytes, which is the BINARY collation of the keys).
fn sql_order(a: &Value, b: &Value) -> Ordering {
    fn rank(value: &Value) -> u8 {
        match value {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) => 1,
            Value::Text(_) => 2,
            Value::Blob(_) => 3,
        }
    }
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => x.cmp(y),
        (Value::Integer(x), Value::Real(y)) => (*x as f64).total_cmp(y),
        (Value::Real(x), Value::Integer(y)) => x.total_cmp(&(*y as f64)),
        (Value::Real(x), Value::Real(y)) => x.total_cmp(y),
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn key_of(values: &[Value]) -> String {
    match values.first() {
        Some(Value::Text(text)) => text.clone(),
        Some(other) => Shown(other).to_string(),
        None => String::new(),
    }
}

/// Replays every view of `db` in memory, from one read snapshot, and compares
/// the result with the stored views. Writes nothing, takes no lock: safe
/// while the server runs.
pub async fn check(db: &Arc<UserDb>, progress: &OnProgress<'_>) -> StoreResult<CheckReport> {
    check_with(db, sorted_log::scanners(), progress).await
}

/// [`check`] reading the log with `scanners` threads.
pub async fn check_with(db: &Arc<UserDb>, scanners: u64, progress: &OnProgress<'_>) -> StoreResult<CheckReport> {
    let conn = reader(db).await?;
    let snapshot = conn.transaction().await?;
    let head = read_head(&snapshot).await?.seq;
    let mut source = Source::open(db, head, scanners).await?;
    let (mut stored_hash, mut replayed_hash) = (ViewHasher::default(), ViewHasher::default());
    let mut report =
        CheckReport { head, events: 0, rows: 0, differences: 0, first: None, stored: [0; 32], replayed: [0; 32] };
    for view in VIEWS {
        stored_hash.table(view.table);
        replayed_hash.table(view.table);
        let mut replayed = FoldedRows::new(view);
        let mut stored = StoredRows::new(&snapshot, view);
        let (mut ours, mut theirs) = (values_of(replayed.next(&mut source)?)?, stored.next().await?);
        let mut reported = 0;
        loop {
            if source.events >= reported + PAGE {
                reported = source.events;
                progress(reported);
            }
            let order = match (&ours, &theirs) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => sql_order(&a[0], &b[0]),
            };
            let difference = match order {
                Ordering::Less => {
                    let row = ours.take().unwrap_or_default();
                    replayed_hash.row(&row);
                    report.rows += 1;
                    ours = values_of(replayed.next(&mut source)?)?;
                    Some((key_of(&row), DifferenceKind::Missing))
                }
                Ordering::Greater => {
                    let row = theirs.take().unwrap_or_default();
                    stored_hash.row(&row);
                    theirs = stored.next().await?;
                    Some((key_of(&row), DifferenceKind::Unexpected))
                }
                Ordering::Equal => {
                    let (a, b) = (ours.take().unwrap_or_default(), theirs.take().unwrap_or_default());
                    replayed_hash.row(&a);
                    stored_hash.row(&b);
                    report.rows += 1;
                    let columns: Vec<ColumnDifference> = view
                        .column_names()
                        .zip(a.iter().zip(b.iter()))
                        .filter(|(_, (x, y))| x != y)
                        .map(|(column, (x, y))| ColumnDifference { column, stored: y.clone(), replayed: x.clone() })
                        .collect();
                    let differs = !columns.is_empty() || a.len() != b.len();
                    (ours, theirs) = (values_of(replayed.next(&mut source)?)?, stored.next().await?);
                    differs.then(|| (key_of(&a), DifferenceKind::Columns(columns)))
                }
            };
            if let Some((key, kind)) = difference {
                report.differences += 1;
                report.first.get_or_insert(Difference { table: view.table, key, kind });
            }
        }
    }
    source.finish()?;
    report.events = source.events;
    progress(report.events);
    drop(source);
    snapshot.commit().await?;
    report.stored = stored_hash.finish();
    report.replayed = replayed_hash.finish();
    Ok(report)
}

/// Shadow tables filled from the log up to `upto`, waiting for [`swap`].
pub struct Shadow {
    pub upto: u64,
    pub events: u64,
    pub rows: u64,
    /// Still copying the shadows' pages into the database file: the swap
    /// need not wait for it, and it is joined after.
    checkpointer: Checkpointer,
    /// No other rebuild of this user may start until the swap is done.
    _lock: ReplayLock,
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// The log head when the new views went live.
    pub head: u64,
    /// Events folded in all.
    pub events: u64,
    /// Of those, events appended during the rebuild, folded at the swap.
    pub tail: u64,
    /// View rows written to the shadows.
    pub rows: u64,
}

/// Rebuilds every view of `db` from its log and swaps the result in.
pub async fn rebuild(db: &Arc<UserDb>, progress: &OnProgress<'_>) -> StoreResult<RebuildReport> {
    rebuild_with(db, sorted_log::scanners(), progress).await
}

/// [`rebuild`] reading the log with `scanners` threads.
pub async fn rebuild_with(db: &Arc<UserDb>, scanners: u64, progress: &OnProgress<'_>) -> StoreResult<RebuildReport> {
    let shadow = build_shadow(db, scanners, progress).await?;
    swap(db, shadow).await
}

/// From the folding side to the writing side.
enum ToWrite {
    /// Rows for a view's shadow.
    Rows(View, Packed),
    /// Every row has been sent. A channel closed without it means the
    /// folding side failed: the writer then stops without building indexes.
    Done,
}

/// Rows encoded by the folding side, packed into two buffers; the writing
/// side binds them in place. Each side thus frees only what it allocated:
/// with glibc's allocator, values allocated on one thread and freed on
/// another took the writing side twice the time.
struct Packed {
    columns: usize,
    text: String,
    blobs: Vec<u8>,
    cells: Vec<Cell>,
    rows: usize,
}

#[derive(Clone, Copy)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(usize, usize),
    Blob(usize, usize),
}

impl Packed {
    fn new(view: View) -> Self {
        let columns = view.column_names().count();
        Self { columns, text: String::new(), blobs: Vec::new(), cells: Vec::new(), rows: 0 }
    }

    fn push(&mut self, values: Vec<Value>) -> StoreResult<()> {
        if values.len() != self.columns {
            return Err(StoreError::Corrupt(format!("a row of {} values for {} columns", values.len(), self.columns)));
        }
        for value in values {
            let cell = match value {
                Value::Null => Cell::Null,
                Value::Integer(n) => Cell::Integer(n),
                Value::Real(x) => Cell::Real(x),
                Value::Text(text) => {
                    let start = self.text.len();
                    self.text.push_str(&text);
                    Cell::Text(start, self.text.len())
                }
                Value::Blob(blob) => {
                    let start = self.blobs.len();
                    self.blobs.extend_from_slice(&blob);
                    Cell::Blob(start, self.blobs.len())
                }
            };
            self.cells.push(cell);
        }
        self.rows += 1;
        Ok(())
    }

    /// The values of rows `rows`, in order, borrowed.
    fn params(&self, rows: std::ops::Range<usize>) -> StoreResult<Vec<Param<'_>>> {
        let lost = || StoreError::Corrupt("replay lost a packed value".into());
        let cells = self.cells.get(rows.start * self.columns..rows.end * self.columns).ok_or_else(lost)?;
        cells
            .iter()
            .map(|cell| {
                Ok(match *cell {
                    Cell::Null => Param::Null,
                    Cell::Integer(n) => Param::Integer(n),
                    Cell::Real(x) => Param::Real(x),
                    Cell::Text(start, end) => Param::Text(self.text.get(start..end).ok_or_else(lost)?),
                    Cell::Blob(start, end) => Param::Blob(self.blobs.get(start..end).ok_or_else(lost)?),
                })
            })
            .collect()
    }
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
        tx.execute(&format!("DROP TABLE IF EXISTS {}", view.shadow()), ()).await?;
        tx.execute(&format!("DROP TABLE IF EXISTS {}", view.retired()), ()).await?;
        let live = table_sql(&tx, view.table).await?;
        tx.execute(&shadow_sql(view.table, &live)?, ()).await?;
        indexes.push((view, shadow_indexes(&tx, view).await?));
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

/// For the phase timings replay logs at debug level.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The writing side of [`build_shadow`], on a blocking thread: each batch of
/// rows in a transaction of its own, and once a view's rows are all in (the
/// next view's first batch has come, or the last batch), each of its
/// shadow's `indexes` in one more, built in one sort while the folding side
/// goes on with the next view.
///
/// The connection is replay's own ([`RawConn`]: rows are bound straight
/// from their packed buffers), writes under the user's write lock, and
/// commits with `synchronous = NORMAL`: in WAL mode a crash can lose its
/// last commits but not corrupt the database, and the shadows are worth
/// nothing until the swap, which commits on the user's writer connection
/// with `synchronous = FULL`, syncing the write-ahead log with every frame
/// before its own. It leaves checkpoints to a [`Checkpointer`], handed back
/// with the number of rows written (`None` if the folding side stopped
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
        writer.lap(Spent::Idle);
        // Views come in order: those before this one are complete.
        while let Some((_, statements)) = unindexed.next_if(|(next, _)| *next != view) {
            writer.index(&statements)?;
        }
        let inserts = match &mut inserts {
            Some(inserts) if inserts.view == view => inserts,
            slot => slot.insert(ShadowInserts::prepare(&conn, view)?),
        };
        writer.transaction(Spent::Inserting, || inserts.write(&batch))?;
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
enum Spent {
    Idle,
    Inserting,
    Indexing,
    CheckpointWait,
}

struct ShadowWriter<'a> {
    db: &'a UserDb,
    conn: &'a RawConn,
    checkpointer: Checkpointer,
    rows: u64,
    clock: Instant,
    /// By [`Spent`].
    spent: [Duration; 4],
}

impl ShadowWriter<'_> {
    /// Adds the time since the last lap to `what`.
    fn lap(&mut self, what: Spent) {
        let now = Instant::now();
        self.spent[what as usize] += now - self.clock;
        self.clock = now;
    }

    /// Runs `write` in one transaction, under the user's write lock, then
    /// tells the checkpointer (which may make it wait). Blocks its thread.
    fn transaction(&mut self, what: Spent, write: impl FnOnce() -> StoreResult<()>) -> StoreResult<()> {
        let handle = tokio::runtime::Handle::current();
        {
            let _lock = handle.block_on(self.db.lock_writes())?;
            let tx = self.conn.begin_immediate()?;
            write()?;
            tx.commit()?;
        }
        self.lap(what);
        handle.block_on(self.checkpointer.committed());
        self.lap(Spent::CheckpointWait);
        Ok(())
    }

    /// Builds indexes, each in a transaction of its own: the write lock is
    /// held for one sort at a time.
    fn index(&mut self, statements: &[String]) -> StoreResult<()> {
        let conn = self.conn;
        for sql in statements {
            let started = Instant::now();
            self.transaction(Spent::Indexing, || conn.execute_batch(sql))?;
            tracing::debug!(index = sql.as_str(), ms = millis(started.elapsed()), "replay: index built");
        }
        Ok(())
    }
}

/// Copies the shadows' pages from the write-ahead log into the database file
/// on a connection and thread of its own while the next batches are written:
/// replay's writer does not checkpoint (`wal_autocheckpoint = 0`), which took
/// half of its time. Every [`WAIT_EVERY`] commits the writer waits for a
/// checkpoint begun after its last commit, so that its next transaction
/// starts the log over: the WAL stays within about that many transactions instead
/// of growing with the rebuild (and the server's own commits meanwhile find
/// little to checkpoint). A failed checkpoint is logged and the rebuild goes
/// on: checkpoints move pages, they decide nothing.
struct Checkpointer {
    /// Commits the writer has made.
    commits: Arc<AtomicU64>,
    wake: std::sync::mpsc::SyncSender<()>,
    /// How many commits the last finished checkpoint began after.
    done: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// Commits of replay's writer between two waits for a checkpoint: the WAL
/// peaked at 156 MB for a million events, against 45 MB with 8, and the
/// writer waited a third as long as with 16 (benches/README.md).
const WAIT_EVERY: u64 = 32;

impl Checkpointer {
    async fn start(db: &UserDb) -> StoreResult<Self> {
        let conn = db.read().await?.detach();
        let commits = Arc::new(AtomicU64::new(0));
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let (finished, done) = tokio::sync::watch::channel(0);
        let task = tokio::task::spawn_blocking({
            let commits = commits.clone();
            move || {
                let handle = tokio::runtime::Handle::current();
                loop {
                    // Disconnected once the writer is done: one last checkpoint.
                    let last = woken.recv().is_err();
                    let after = commits.load(atomic::Ordering::Acquire);
                    let checkpoint = async { conn.query("PRAGMA wal_checkpoint(PASSIVE)", ()).await?.next().await };
                    if let Err(err) = handle.block_on(checkpoint) {
                        tracing::warn!(error = %err, "replay: a checkpoint failed; the next one copies its pages");
                    }
                    finished.send_replace(after);
                    if last {
                        return;
                    }
                }
            }
        });
        Ok(Self { commits, wake, done, task })
    }

    /// Told after each commit of the writer.
    async fn committed(&mut self) {
        let commits = self.commits.fetch_add(1, atomic::Ordering::Release) + 1;
        // A wake-up already pending will see this commit too.
        let _ = self.wake.try_send(());
        if commits.is_multiple_of(WAIT_EVERY) {
            // Fails only if the checkpointer is gone; then there is nothing to wait for.
            let _ = self.done.wait_for(|done| *done >= commits).await;
        }
    }

    /// The last checkpoint, once the writer is done.
    async fn finish(self) -> StoreResult<()> {
        drop(self.wake);
        self.task.await.map_err(|err| StoreError::Corrupt(format!("the checkpointer stopped: {err}")))
    }
}

/// The folding side of [`build_shadow`]: every view's rows, in batches.
async fn fold_into(
    db: &Arc<UserDb>,
    scanners: u64,
    batches: &tokio::sync::mpsc::Sender<ToWrite>,
    progress: &OnProgress<'_>,
) -> StoreResult<(u64, u64)> {
    let upto = read_head(&*db.read().await?).await?.seq;
    let mut source = Source::open(db, upto, scanners).await?;
    let stopped = || StoreError::Corrupt("the shadow writer stopped".into());
    for view in VIEWS {
        let mut folded = FoldedRows::new(view);
        let mut batch = Packed::new(view);
        while let Some(row) = folded.next(&mut source)? {
            batch.push(row.values()?)?;
            if batch.rows as u64 >= PAGE {
                let full = std::mem::replace(&mut batch, Packed::new(view));
                batches.send(ToWrite::Rows(view, full)).await.map_err(|_| stopped())?;
                progress(source.events);
            }
        }
        if batch.rows > 0 {
            batches.send(ToWrite::Rows(view, batch)).await.map_err(|_| stopped())?;
        }
    }
    source.finish()?;
    batches.send(ToWrite::Done).await.map_err(|_| stopped())?;
    let events = source.events;
    progress(events);
    Ok((upto, events))
}

/// Page cache of the connection `check` reads the stored views with:
/// bounded, so memory stays flat in log size.
const CACHE_KIB: u32 = 32 * 1024;

/// Page cache of the shadow writer, which also bounds the memory its index
/// builds sort in (SQLite's sorter holds up to a cache's worth before it
/// spills to temporary files). Its inserts append, so they need few pages:
/// with 8 MiB instead of 32 a replay of 1,000,000 events peaked at 114–126
/// MiB instead of 143–150, in the same time (benches/README.md).
const WRITER_CACHE_KIB: u32 = 8 * 1024;

/// The read connection `check` reads the stored views with.
async fn reader(db: &UserDb) -> StoreResult<PooledConn> {
    let conn = db.read().await?;
    conn.execute(&format!("PRAGMA cache_size = -{CACHE_KIB}"), ()).await?;
    Ok(conn)
}

/// Rows a shadow insert statement writes at once: a statement per row made
/// the per-statement work (binding, stepping, resetting) about a third of
/// the writing side.
const ROWS_PER_INSERT: usize = 64;

/// The insert statements of one view's shadow.
struct ShadowInserts<'c> {
    view: View,
    /// [`ROWS_PER_INSERT`] rows at once, and one.
    many: RawStatement<'c>,
    one: RawStatement<'c>,
}

impl<'c> ShadowInserts<'c> {
    fn prepare(conn: &'c RawConn, view: View) -> StoreResult<Self> {
        let columns = view.column_names().count();
        let insert = |rows: usize| {
            let tuples: Vec<String> = (0..rows)
                .map(|row| {
                    let params: Vec<String> =
                        (1..=columns).map(|column| format!("?{}", row * columns + column)).collect();
                    format!("({})", params.join(", "))
                })
                .collect();
            // OR FAIL: a fresh shadow cannot hit a constraint, and without the
            // default ABORT a statement of many rows needs no statement journal.
            format!("INSERT OR FAIL INTO {} ({}) VALUES {}", view.shadow(), view.columns, tuples.join(", "))
        };
        Ok(Self { view, many: conn.prepare(&insert(ROWS_PER_INSERT))?, one: conn.prepare(&insert(1))? })
    }

    /// Inserts every row of `rows` (inside the caller's transaction).
    fn write(&mut self, rows: &Packed) -> StoreResult<()> {
        let mut start = 0;
        while start < rows.rows {
            let (statement, end) = match start + ROWS_PER_INSERT {
                end if end <= rows.rows => (&mut self.many, end),
                _ => (&mut self.one, start + 1),
            };
            statement.execute(rows.params(start..end)?)?;
            start = end;
        }
        Ok(())
    }
}

/// In one write transaction: swaps the shadows in for the live views (each
/// table with its indexes, built with the shadow), folds the events appended
/// since the shadows' head with the push path's storage code, and commits.
/// The old tables are dropped afterwards, outside the swap.
pub async fn swap(db: &UserDb, shadow: Shadow) -> StoreResult<RebuildReport> {
    let started = Instant::now();
    let tx = db.begin_write().await?;
    for view in VIEWS {
        if table_exists(&tx, view.table).await? {
            // The shadow's indexes were read from the live table's at the
            // start; a migration since would be undone by the swap.
            let live = index_shapes(view.table, &explicit_indexes(&tx, view.table).await?)?;
            let shadow = index_shapes(view.table, &explicit_indexes(&tx, &view.shadow()).await?)?;
            if live != shadow {
                return Err(StoreError::Conflict(format!(
                    "the indexes of `{}` changed during the rebuild (a migration?); nothing was swapped: run replay again",
                    view.table
                )));
            }
            tx.execute(&format!("ALTER TABLE {} RENAME TO {}", view.table, view.retired()), ()).await?;
        }
        tx.execute(&format!("ALTER TABLE {} RENAME TO {}", view.shadow(), view.table), ()).await?;
    }
    let tail = fold_tail(&tx, shadow.upto).await?;
    let head = tx.head().seq;
    tx.commit().await?;
    tracing::debug!(tail, ms = millis(started.elapsed()), "replay: views swapped in");
    // The new views are live: what follows only tidies up, and a failure
    // there is logged, not reported as a failed rebuild (the next rebuild
    // drops leftover tables first).
    if let Err(err) = drop_retired(db).await {
        tracing::warn!(error = %err, "replay: the old views were not dropped; the next replay drops them");
    }
    tracing::debug!(ms = millis(started.elapsed()), "replay: old views dropped");
    if let Err(err) = shadow.checkpointer.finish().await {
        tracing::warn!(error = %err, "replay: the last checkpoint did not finish; the server's own checkpoints copy its pages");
    }
    tracing::debug!(ms = millis(started.elapsed()), "replay: last checkpoint done");
    Ok(RebuildReport { head, events: shadow.events + tail, tail, rows: shadow.rows })
}

async fn drop_retired(db: &UserDb) -> StoreResult<()> {
    let tx = db.begin_write().await?;
    for view in VIEWS {
        tx.execute(&format!("DROP TABLE IF EXISTS {}", view.retired()), ()).await?;
    }
    tx.commit().await
}

/// Folds the events after `upto` into the (new) live views exactly as the
/// write paths do: load the row, apply the projector, save what changed.
async fn fold_tail(conn: &Connection, upto: u64) -> StoreResult<u64> {
    let views = ViewStatements::prepare(conn).await?;
    let (mut since, mut folded) = (upto, 0);
    loop {
        let page = read_after(conn, since, PAGE).await?;
        let Some(last) = page.last() else { return Ok(folded) };
        since = last.seq;
        for stored in &page {
            folded += 1;
            let id = stored.event.aggregate_id;
            match stored.event.kind {
                Kind::Device => {
                    let current = devices::load(conn, id).await?;
                    if let Some(row) = devices::apply(current, stored)? {
                        devices::save(conn, &row).await?;
                    }
                }
                kind => {
                    let current = views.load(kind, id).await?;
                    let (row, outcome) = aggregate::apply(current, stored);
                    if outcome != Outcome::Stale {
                        views.save(&row).await?;
                    }
                }
            }
        }
    }
}

async fn table_exists(conn: &Connection, table: &str) -> StoreResult<bool> {
    let sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1";
    Ok(query_opt(conn, sql, [table]).await?.is_some())
}

/// The `CREATE TABLE` of a view: the live one, or when the table was dropped
/// (the log is the truth; views may be thrown away), its projection file's.
async fn table_sql(conn: &Connection, table: &str) -> StoreResult<String> {
    match query_opt(conn, "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1", [table]).await? {
        Some(row) => Ok(row.get(0)?),
        None => embedded(table)?
            .into_iter()
            .find(|statement| statement.starts_with("CREATE TABLE"))
            .ok_or_else(|| StoreError::Corrupt(format!("projections/{table}.sql creates no table"))),
    }
}

/// The statements of a view's embedded projection file, comments removed.
fn embedded(table: &str) -> StoreResult<Vec<String>> {
    let name = format!("projections/{table}.sql");
    let file = migrations::USER
        .iter()
        .find(|migration| migration.name == name)
        .ok_or_else(|| StoreError::Corrupt(format!("no embedded {name}")))?;
    let code: Vec<&str> = file.sql.lines().map(|line| line.split("--").next().unwrap_or_default()).collect();
    Ok(code.join("\n").split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
}

/// The `CREATE INDEX` statements of a view's shadow: the live table's
/// explicit indexes (or its projection file's, when the table was dropped),
/// each on the shadow and under the one of its two names (`<name>` and
/// `<name>_replay`) that the live index does not use. SQLite cannot rename
/// an index, and the shadow's are built before the swap, while the live
/// ones still serve: so the names alternate from one rebuild to the next.
async fn shadow_indexes(conn: &Connection, view: View) -> StoreResult<Vec<String>> {
    let live = if table_exists(conn, view.table).await? {
        explicit_indexes(conn, view.table).await?
    } else {
        let creates = embedded(view.table)?.into_iter().filter(|sql| IndexSql::parse(sql).is_some());
        creates.map(|sql| (String::new(), sql)).collect()
    };
    let mut shapes = index_shapes(view.table, &live)?;
    shapes.dedup_by(|a, b| a.0 == b.0);
    if shapes.len() < live.len() {
        return Err(StoreError::Conflict(format!(
            "`{}` has an index under both of its names (`<name>` and `<name>_replay`); drop one, then run replay",
            view.table
        )));
    }
    let used: Vec<&str> = live.iter().map(|(name, _)| name.as_str()).collect();
    live.iter().map(|(_, sql)| shadow_index_sql(view, sql, &used)).collect()
}

/// The explicit indexes of a table: (name, `CREATE` statement).
async fn explicit_indexes(conn: &Connection, table: &str) -> StoreResult<Vec<(String, String)>> {
    let sql = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL \
               ORDER BY name";
    let mut rows = conn.query(sql, [table]).await?;
    let mut indexes = Vec::new();
    while let Some(row) = rows.next().await? {
        indexes.push((row.get(0)?, row.get(1)?));
    }
    Ok(indexes)
}

/// An index's `CREATE` statement, parsed. Names and the table may be
/// quoted: SQLite writes the table so after a rename.
struct IndexSql<'a> {
    create: &'static str,
    name: String,
    table: String,
    /// From the opening parenthesis on.
    columns: &'a str,
}

impl<'a> IndexSql<'a> {
    fn parse(sql: &'a str) -> Option<Self> {
        let unquote = |word: &str| word.trim_matches('"').to_owned();
        let (create, rest) = ["CREATE UNIQUE INDEX ", "CREATE INDEX "]
            .iter()
            .find_map(|create| sql.strip_prefix(create).map(|rest| (*create, rest.trim_start())))?;
        let (name, rest) = rest.split_once(char::is_whitespace)?;
        let rest = rest.trim_start().strip_prefix("ON")?.trim_start();
        let (table, columns) = rest.split_at(rest.find(|c: char| c == '(' || c.is_whitespace())?);
        Some(Self { create, name: unquote(name), table: unquote(table), columns: columns.trim_start() })
    }

    /// The name without the `_replay` a rebuild may have given it.
    fn canonical(&self) -> &str {
        self.name.strip_suffix("_replay").unwrap_or(&self.name)
    }
}

/// What a table's explicit indexes are, whatever their current names: by
/// name without `_replay`, with their kind and columns.
fn index_shapes(table: &str, indexes: &[(String, String)]) -> StoreResult<Vec<(String, &'static str, String)>> {
    let mut shapes = indexes
        .iter()
        .map(|(_, sql)| {
            let index = IndexSql::parse(sql)
                .ok_or_else(|| StoreError::Corrupt(format!("cannot read the index `{sql}` of `{table}`")))?;
            Ok((index.canonical().to_owned(), index.create, index.columns.to_owned()))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    shapes.sort();
    Ok(shapes)
}

/// An index's `CREATE` statement for the shadow of `view`, named apart from
/// the live indexes `used` (see [`shadow_indexes`]).
fn shadow_index_sql(view: View, sql: &str, used: &[&str]) -> StoreResult<String> {
    let unexpected = || StoreError::Corrupt(format!("cannot derive a shadow index of `{}` from `{sql}`", view.table));
    let index = IndexSql::parse(sql).filter(|index| index.table == view.table).ok_or_else(unexpected)?;
    let canonical = index.canonical();
    let name = if used.contains(&canonical) { format!("{canonical}_replay") } else { canonical.to_owned() };
    Ok(format!("{}{name} ON {} {}", index.create, view.shadow(), index.columns))
}

/// The live table's `CREATE TABLE` with the shadow's name. The name may be
/// quoted: SQLite writes it so after a rename (a previous replay).
fn shadow_sql(table: &str, live: &str) -> StoreResult<String> {
    let unexpected = || StoreError::Corrupt(format!("cannot derive a shadow of `{table}` from its schema"));
    let rest = live.strip_prefix("CREATE TABLE").ok_or_else(unexpected)?.trim_start();
    let rest = rest
        .strip_prefix(&format!("\"{table}\""))
        .or_else(|| rest.strip_prefix(table))
        .filter(|rest| rest.starts_with(|c: char| c == '(' || c.is_whitespace()))
        .ok_or_else(unexpected)?;
    Ok(format!("CREATE TABLE {table}_replay {}", rest.trim_start()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::{DateTime, TimeZone, Utc};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tempfile::TempDir;

    use super::sorted_log::Limits;
    use super::*;
    use crate::auth::devices::record;
    use crate::events::device::{DeviceAction, DeviceProfile, DeviceType};
    use crate::events::{NewEvent, Op};
    use crate::projection::version::VersionVector;
    use crate::store::Backend;
    use crate::sync::push::apply_batch;

    struct Fixture {
        _dir: TempDir,
        db: Arc<UserDb>,
        devices: Vec<Uuid>,
        aggregates: Vec<(Kind, Uuid, Option<Uuid>)>,
        rng: StdRng,
    }

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap()
    }

    fn profile(name: &str) -> DeviceProfile {
        DeviceProfile {
            device_name: name.into(),
            device_type: DeviceType::Desktop,
            platform: "linux".into(),
            public_key: format!("key of {name}"),
            capabilities: serde_json::Map::new(),
        }
    }

    async fn device_event(db: &UserDb, actor: Uuid, device: Uuid, action: DeviceAction) {
        let mut tx = db.begin_write().await.unwrap();
        record(&mut tx, actor, device, action, Utc::now()).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn push(db: &UserDb, device: Uuid, events: Vec<NewEvent>) {
        let mut tx = db.begin_write().await.unwrap();
        apply_batch(&mut tx, device, Utc::now(), events).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// A user with three devices (one renamed) and `events` random pushes.
    async fn fixture(events: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap());
        let devices: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        device_event(&db, devices[0], devices[0], DeviceAction::Registered(profile("a"))).await;
        device_event(&db, devices[0], devices[1], DeviceAction::Paired(profile("b"))).await;
        device_event(&db, devices[1], devices[2], DeviceAction::Paired(profile("c"))).await;
        let renamed = DeviceAction::Updated { device_name: Some("b2".into()), capabilities: None };
        device_event(&db, devices[1], devices[1], renamed).await;
        let entries: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let mut aggregates: Vec<(Kind, Uuid, Option<Uuid>)> = entries.iter().map(|e| (Kind::Entry, *e, None)).collect();
        aggregates.extend((0..3).map(|_| (Kind::Memory, Uuid::new_v4(), None)));
        aggregates.extend((0..2).map(|i| (Kind::Tag, Uuid::new_v4(), Some(entries[i]))));
        aggregates.extend((0..2).map(|i| (Kind::Embedding, Uuid::new_v4(), Some(entries[i]))));
        let mut fx = Fixture { _dir: dir, db, devices, aggregates, rng: StdRng::seed_from_u64(5) };
        fx.random_pushes(events).await;
        fx
    }

    impl Fixture {
        /// Pushes from random devices with partial knowledge of each other:
        /// edits, conflicts, merges, deletes, stale events and retried batches.
        async fn random_pushes(&mut self, events: usize) {
            let mut known: HashMap<(usize, usize), VersionVector> = HashMap::new();
            let mut pushed = 0;
            while pushed < events {
                let d = self.rng.random_range(0..self.devices.len());
                let device = self.devices[d];
                let size = self.rng.random_range(1..=6);
                let mut batch = Vec::new();
                for _ in 0..size {
                    let a = self.rng.random_range(0..self.aggregates.len());
                    let (kind, id, parent) = self.aggregates[a];
                    if self.rng.random_bool(0.3) {
                        // Learn what the others did (a pull).
                        let everyone: Vec<VersionVector> =
                            (0..self.devices.len()).filter_map(|o| known.get(&(o, a)).cloned()).collect();
                        let mine = known.entry((d, a)).or_default();
                        everyone.iter().for_each(|v| mine.merge(v));
                    }
                    let mine = known.entry((d, a)).or_default();
                    let stale = self.rng.random_bool(0.05) && mine.get(&device) > 1;
                    let version = if stale {
                        VersionVector::single(device, 1)
                    } else {
                        let next = mine.get(&device) + 1;
                        mine.merge(&VersionVector::single(device, next));
                        mine.clone()
                    };
                    let delete = self.rng.random_bool(0.15);
                    batch.push(NewEvent {
                        event_id: Uuid::new_v4(),
                        kind,
                        aggregate_id: id,
                        parent_id: parent,
                        op: if delete { Op::Delete } else { Op::Put },
                        version,
                        payload: (!delete).then(|| vec![self.rng.random(); 16]),
                        client_time: at(),
                    });
                }
                pushed += batch.len();
                push(&self.db, device, batch.clone()).await;
                if self.rng.random_bool(0.1) {
                    push(&self.db, device, batch).await; // a retry: all duplicates
                }
            }
        }
    }

    async fn clean_check(db: &Arc<UserDb>) -> CheckReport {
        let report = check(db, &|_| {}).await.unwrap();
        assert!(report.is_clean(), "{:?}", report.first);
        assert_eq!(report.stored, report.replayed);
        report
    }

    async fn schema(conn: &Connection) -> Vec<(String, String, String)> {
        let sql = "SELECT type, name, tbl_name FROM sqlite_master ORDER BY type, name";
        let mut rows = conn.query(sql, ()).await.unwrap();
        let mut names = Vec::new();
        while let Some(row) = rows.next().await.unwrap() {
            names.push((row.get(0).unwrap(), row.get(1).unwrap(), row.get(2).unwrap()));
        }
        names
    }

    #[tokio::test]
    async fn rebuilt_views_equal_the_live_ones_again_and_again() {
        let mut fx = fixture(400).await;
        let conn = fx.db.read().await.unwrap();
        let live = checksum(&conn).await.unwrap();
        let report = clean_check(&fx.db).await;
        assert_eq!(report.stored, live);
        assert!(report.rows > 10);
        let names = schema(&conn).await;
        // The views' indexes alternate between their two names.
        let replay_named = |names: &[(String, String, String)]| {
            names.iter().filter(|(kind, name, _)| kind == "index" && name.ends_with("_replay")).count()
        };
        assert_eq!(replay_named(&names), 0);
        for round in 1..=2 {
            let rebuilt = rebuild(&fx.db, &|_| {}).await.unwrap();
            assert_eq!((rebuilt.events, rebuilt.tail, rebuilt.head), (report.head, 0, report.head));
            assert_eq!(rebuilt.rows, report.rows);
            assert_eq!(checksum(&conn).await.unwrap(), live);
            let now = schema(&conn).await;
            let canonical = |names: &[(String, String, String)]| -> Vec<(String, String, String)> {
                let mut names: Vec<_> = names
                    .iter()
                    .map(|(kind, name, table)| {
                        (kind.clone(), name.strip_suffix("_replay").unwrap_or(name).to_owned(), table.clone())
                    })
                    .collect();
                names.sort();
                names
            };
            assert_eq!(canonical(&now), canonical(&names), "same tables, indexes on the same tables, no leftovers");
            let expected = if round == 1 { 6 } else { 0 };
            assert_eq!(replay_named(&now), expected, "the six view indexes under their other name: {now:?}");
        }
        clean_check(&fx.db).await;
        // The writer's cached statements outlive the swaps: they now write the new tables.
        fx.random_pushes(200).await;
        let after = clean_check(&fx.db).await;
        assert!(after.head > report.head && after.stored != live, "the pushes after the rebuilds changed the views");
    }

    #[tokio::test]
    async fn the_sorted_log_is_the_log_by_kind_aggregate_and_seq_whatever_the_scanners() {
        let fx = fixture(300).await;
        let conn = fx.db.read().await.unwrap();
        // A gap in the log (which `verify` reports): read past, nothing read twice.
        let copy = "INSERT INTO events SELECT seq + 10, ?1, device_id, kind, aggregate_id, parent_id, op, version, \
                    payload, client_time, received_at, hash FROM events WHERE seq = (SELECT max(seq) FROM events)";
        conn.execute(copy, [Uuid::new_v4().to_string()]).await.unwrap();
        let head = read_head(&conn).await.unwrap().seq;
        let mut expected = read_after(&conn, 0, u64::MAX >> 1).await.unwrap();
        // Replay never reads the payloads of non-device events.
        expected.iter_mut().filter(|e| e.event.kind != Kind::Device).for_each(|e| e.event.payload = None);
        expected.sort_by_key(|e| (e.event.kind.as_str(), e.event.aggregate_id.to_string(), e.seq));
        // Pages of 7 events, runs of a few events written out, files merged by threes.
        let tiny = Limits { page: 7, run_bytes: 2_000, max_files: 3 };
        for (scanners, limits) in [(1, Limits::default()), (2, tiny), (3, tiny), (7, tiny), (head + 5, tiny)] {
            let mut sorted = SortedLog::open_with(&fx.db, head, scanners, limits).await.unwrap();
            assert_eq!(sorted.scanned(), expected.len() as u64);
            let mut events = Vec::new();
            while let Some(event) = sorted.next_event().unwrap() {
                events.push(event);
            }
            assert_eq!(events, expected, "{scanners} scanners");
        }
    }

    #[tokio::test]
    async fn wiped_views_come_back_from_the_log() {
        let fx = fixture(200).await;
        let conn = fx.db.read().await.unwrap();
        let live = checksum(&conn).await.unwrap();
        for view in VIEWS {
            conn.execute(&format!("DELETE FROM {}", view.table), ()).await.unwrap();
        }
        assert_ne!(checksum(&conn).await.unwrap(), live);
        let report = check(&fx.db, &|_| {}).await.unwrap();
        assert_eq!(report.first.map(|d| (d.table, d.kind)), Some(("devices", DifferenceKind::Missing)));
        assert_eq!(report.replayed, live);
        rebuild(&fx.db, &|_| {}).await.unwrap();
        assert_eq!(checksum(&conn).await.unwrap(), live);
    }

    #[tokio::test]
    async fn rebuilt_views_keep_one_row_per_updated_seq() {
        let fx = fixture(200).await;
        rebuild(&fx.db, &|_| {}).await.unwrap();
        let conn = fx.db.read().await.unwrap();
        for view in &VIEWS[1..] {
            let rows = query_opt(&conn, &format!("SELECT count(*) FROM {}", view.table), ()).await.unwrap();
            assert!(rows.unwrap().get::<u64>(0).unwrap() > 0, "{} is empty", view.table);
            let taken = format!(
                "INSERT INTO {table} ({columns}) SELECT '00000000-0000-0000-0000-000000000000', NULL, '[]', '{{}}', 0, 0, \
                 max(updated_seq) FROM {table}",
                table = view.table,
                columns = view.columns
            );
            assert!(conn.execute(&taken, ()).await.is_err(), "{} took a second row for one seq", view.table);
        }
    }

    #[tokio::test]
    async fn dropped_view_tables_come_back_with_their_schema() {
        let fx = fixture(200).await;
        let conn = fx.db.read().await.unwrap();
        let (live, names) = (checksum(&conn).await.unwrap(), schema(&conn).await);
        for view in VIEWS {
            conn.execute(&format!("DROP TABLE {}", view.table), ()).await.unwrap();
        }
        let rebuilt = rebuild(&fx.db, &|_| {}).await.unwrap();
        assert_eq!(rebuilt.events, rebuilt.head);
        assert_eq!(checksum(&conn).await.unwrap(), live);
        assert_eq!(schema(&conn).await, names);
    }

    /// The explicit indexes of the views, by name without `_replay`.
    async fn view_indexes(conn: &Connection) -> Vec<(String, String)> {
        let mut all = Vec::new();
        for view in VIEWS {
            for (name, _) in explicit_indexes(conn, view.table).await.unwrap() {
                all.push((view.table.to_owned(), name.trim_end_matches("_replay").to_owned()));
            }
        }
        all.sort();
        all
    }

    #[tokio::test]
    async fn views_without_rows_get_their_indexes_too() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap());
        let conn = db.read().await.unwrap();
        let indexes = view_indexes(&conn).await;
        assert_eq!(indexes.len(), 6, "{indexes:?}");
        for round in 0..2 {
            let report = rebuild(&db, &|_| {}).await.unwrap();
            assert_eq!((report.events, report.rows), (0, 0));
            assert_eq!(view_indexes(&conn).await, indexes, "round {round}");
        }
    }

    #[tokio::test]
    async fn a_second_rebuild_of_a_user_is_refused_while_one_runs() {
        let fx = fixture(100).await;
        let shadow = build_shadow(&fx.db, 1, &|_| {}).await.unwrap();
        let err = rebuild(&fx.db, &|_| {}).await.unwrap_err();
        assert!(matches!(&err, StoreError::Conflict(message) if message.contains("another replay")), "{err}");
        swap(&fx.db, shadow).await.unwrap();
        rebuild(&fx.db, &|_| {}).await.unwrap();
        clean_check(&fx.db).await;
    }

    #[tokio::test]
    async fn an_index_changed_during_a_rebuild_stops_the_swap_and_the_next_rebuild_keeps_it() {
        let fx = fixture(100).await;
        let conn = fx.db.read().await.unwrap();
        let live = checksum(&conn).await.unwrap();
        let shadow = build_shadow(&fx.db, 1, &|_| {}).await.unwrap();
        // As a migration applied meanwhile by a server in another process would.
        conn.execute("CREATE INDEX entries_by_deleted ON entries (deleted)", ()).await.unwrap();
        let err = swap(&fx.db, shadow).await.unwrap_err();
        assert!(matches!(&err, StoreError::Conflict(message) if message.contains("`entries`")), "{err}");
        assert_eq!(checksum(&conn).await.unwrap(), live);
        assert!(view_indexes(&conn).await.contains(&("entries".into(), "entries_by_deleted".into())));
        rebuild(&fx.db, &|_| {}).await.unwrap();
        assert!(view_indexes(&conn).await.contains(&("entries".into(), "entries_by_deleted".into())));
        assert_eq!(checksum(&conn).await.unwrap(), live);
    }

    #[tokio::test]
    async fn leftovers_of_a_rebuild_cut_short_after_its_swap_free_their_index_names() {
        let fx = fixture(100).await;
        let conn = fx.db.read().await.unwrap();
        let live = checksum(&conn).await.unwrap();
        rebuild(&fx.db, &|_| {}).await.unwrap();
        // A crash between the swap and the drop: the old table keeps the
        // names the next shadow takes back.
        conn.execute_batch(
            "CREATE TABLE entries_old (id TEXT PRIMARY KEY, updated_seq INTEGER NOT NULL) STRICT; \
             CREATE UNIQUE INDEX entries_by_updated_seq ON entries_old (updated_seq); \
             CREATE TABLE tags_replay (id TEXT PRIMARY KEY, parent_id TEXT) STRICT; \
             CREATE INDEX tags_by_parent ON tags_replay (parent_id);",
        )
        .await
        .unwrap();
        rebuild(&fx.db, &|_| {}).await.unwrap();
        assert_eq!(checksum(&conn).await.unwrap(), live);
        let leftovers =
            query_opt(&conn, "SELECT 1 FROM sqlite_master WHERE name IN ('entries_old', 'tags_replay')", ());
        assert!(leftovers.await.unwrap().is_none());
        clean_check(&fx.db).await;
    }

    #[tokio::test]
    async fn a_view_index_under_both_its_names_is_refused_before_any_work() {
        let fx = fixture(50).await;
        let conn = fx.db.read().await.unwrap();
        conn.execute("CREATE UNIQUE INDEX entries_by_updated_seq_replay ON entries (updated_seq)", ()).await.unwrap();
        let err = rebuild(&fx.db, &|_| {}).await.unwrap_err();
        assert!(matches!(&err, StoreError::Conflict(message) if message.contains("both of its names")), "{err}");
        let shadows = query_opt(
            &conn,
            "SELECT 1 FROM sqlite_master WHERE name LIKE '%\\_replay' ESCAPE '\\' AND type = 'table'",
            (),
        );
        assert!(shadows.await.unwrap().is_none(), "no shadow left behind");
    }

    #[tokio::test]
    async fn check_names_the_first_difference_and_never_prints_a_key() {
        let fx = fixture(100).await;
        let conn = fx.db.read().await.unwrap();
        let entry: String = query_opt(&conn, "SELECT min(id) FROM entries", ()).await.unwrap().unwrap().get(0).unwrap();
        conn.execute("UPDATE entries SET conflict = 1 - conflict WHERE id = ?1", [entry.clone()]).await.unwrap();
        conn.execute(
            "INSERT INTO memories (id, parent_id, heads, version, deleted, conflict, updated_seq) \
             VALUES ('ffffffff-ffff-ffff-ffff-ffffffffffff', NULL, '[]', '{}', 0, 0, 999999)",
            (),
        )
        .await
        .unwrap();
        let report = check(&fx.db, &|_| {}).await.unwrap();
        assert_eq!(report.differences, 2);
        assert_ne!(report.stored, report.replayed);
        let first = report.first.unwrap();
        assert_eq!((first.table, first.key.as_str()), ("entries", entry.as_str()));
        assert!(matches!(&first.kind, DifferenceKind::Columns(c) if c.len() == 1 && c[0].column == "conflict"));
        assert!(first.to_string().contains("conflict: stored"), "{first}");

        conn.execute("UPDATE devices SET public_key = 'tampered-key'", ()).await.unwrap();
        let first = check(&fx.db, &|_| {}).await.unwrap().first.unwrap();
        assert_eq!(first.table, "devices");
        assert!(first.to_string().contains("public_key") && !first.to_string().contains("tampered-key"), "{first}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushes_while_the_shadows_fill_end_up_in_the_views_swapped_in() {
        let mut fx = fixture(3_000).await;
        let db = fx.db.clone();
        let rebuilding = tokio::spawn(async move { rebuild(&db, &|_| {}).await });
        // Through the server's writer, between the shadow writer's transactions.
        fx.random_pushes(400).await;
        let report = rebuilding.await.unwrap().unwrap();
        assert_eq!(report.events, report.head);
        let checked = clean_check(&fx.db).await;
        let head = read_head(&fx.db.read().await.unwrap()).await.unwrap().seq;
        assert_eq!(checked.head, head, "every push is in the views");
    }

    #[tokio::test]
    async fn events_appended_during_a_rebuild_are_folded_at_the_swap() {
        let mut fx = fixture(150).await;
        let shadow = build_shadow(&fx.db, 2, &|_| {}).await.unwrap();
        fx.random_pushes(60).await;
        device_event(&fx.db, fx.devices[0], fx.devices[2], DeviceAction::Revoked).await;
        let late = Uuid::new_v4();
        device_event(&fx.db, fx.devices[0], late, DeviceAction::Paired(profile("late"))).await;
        let report = swap(&fx.db, shadow).await.unwrap();
        assert!(report.tail >= 62, "{report:?}");
        assert_eq!(report.events, report.head);
        let checked = clean_check(&fx.db).await;
        assert_eq!(checked.head, report.head);
        let conn = fx.db.read().await.unwrap();
        let revoked = devices::load(&conn, fx.devices[2]).await.unwrap().unwrap();
        assert!(revoked.is_revoked());
        assert!(devices::load(&conn, late).await.unwrap().is_some());
    }

    #[test]
    fn shadows_are_derived_from_plain_and_quoted_names() {
        let plain = "CREATE TABLE tags (\n    id TEXT PRIMARY KEY\n) STRICT";
        assert_eq!(shadow_sql("tags", plain).unwrap(), "CREATE TABLE tags_replay (\n    id TEXT PRIMARY KEY\n) STRICT");
        let quoted = "CREATE TABLE \"tags\" (id TEXT PRIMARY KEY) STRICT";
        assert_eq!(shadow_sql("tags", quoted).unwrap(), "CREATE TABLE tags_replay (id TEXT PRIMARY KEY) STRICT");
        assert!(shadow_sql("tags", "CREATE TABLE tagsx (id TEXT)").is_err());
        assert!(shadow_sql("tags", "CREATE VIEW tags AS SELECT 1").is_err());
    }

    #[test]
    fn shadow_indexes_take_the_name_the_live_index_does_not_use() {
        let tags = VIEWS[4];
        let live = "CREATE INDEX tags_by_parent ON tags (parent_id)";
        let shadow = shadow_index_sql(tags, live, &["tags_by_parent"]).unwrap();
        assert_eq!(shadow, "CREATE INDEX tags_by_parent_replay ON tags_replay (parent_id)");
        // As SQLite stores it after the swap renamed `tags_replay`: back to the first name.
        let renamed = "CREATE INDEX tags_by_parent_replay ON \"tags\" (parent_id)";
        let shadow = shadow_index_sql(tags, renamed, &["tags_by_parent_replay"]).unwrap();
        assert_eq!(shadow, "CREATE INDEX tags_by_parent ON tags_replay (parent_id)");
        // A dropped table's indexes, from its projection file.
        let unique = "CREATE UNIQUE INDEX tags_by_updated_seq ON tags (updated_seq)";
        let shadow = shadow_index_sql(tags, unique, &[]).unwrap();
        assert_eq!(shadow, "CREATE UNIQUE INDEX tags_by_updated_seq ON tags_replay (updated_seq)");
        assert!(shadow_index_sql(tags, "CREATE INDEX x ON entries (parent_id)", &[]).is_err());
        assert!(shadow_index_sql(tags, "CREATE TABLE tags (id TEXT)", &[]).is_err());
    }

    #[test]
    fn every_view_is_listed_with_its_key_first() {
        for view in VIEWS {
            assert_eq!(view.column_names().next(), Some(view.key));
            if view.kind != Kind::Device {
                assert_eq!(views::table(view.kind), Some(view.table));
            }
        }
        assert!(VIEWS.windows(2).all(|w| w[0].kind.as_str() < w[1].kind.as_str()), "the sorted log's order");
        let mut kinds: Vec<Kind> = VIEWS.iter().map(|v| v.kind).collect();
        kinds.sort();
        assert_eq!(kinds, [Kind::Entry, Kind::Memory, Kind::Tag, Kind::Embedding, Kind::Device]);
    }
}
