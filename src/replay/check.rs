//! Check: the views replay makes, compared with the stored ones row by row
//! in one read snapshot, with both sides' checksums. Writes nothing.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use libsql::Value;

use super::checksum::{StoredRows, ViewHasher};
use super::fold::{values_of, EventsByKind, FoldedRows};
use super::{sorted_log, OnProgress, PAGE, VIEWS};
use crate::events::read_tip;
use crate::store::{PooledConn, StoreResult, UserDb};

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
                        write!(f, "{}, replayed {}", DisplayValue(&diff.stored), DisplayValue(&diff.replayed))?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A stored value as a person reads it (long text cut short).
struct DisplayValue<'a>(&'a Value);

impl fmt::Display for DisplayValue<'_> {
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
        Some(other) => DisplayValue(other).to_string(),
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
    let head = read_tip(&snapshot).await?.seq;
    let mut log = EventsByKind::open(db, head, scanners).await?;
    let (mut stored_hash, mut replayed_hash) = (ViewHasher::default(), ViewHasher::default());
    let mut report =
        CheckReport { head, events: 0, rows: 0, differences: 0, first: None, stored: [0; 32], replayed: [0; 32] };
    for view in VIEWS {
        stored_hash.table(view.table);
        replayed_hash.table(view.table);
        let mut replayed = FoldedRows::new(view);
        let mut stored = StoredRows::new(&snapshot, view);
        let (mut ours, mut theirs) = (values_of(replayed.next(&mut log)?)?, stored.next().await?);
        let mut reported = 0;
        loop {
            if log.events >= reported + PAGE {
                reported = log.events;
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
                    ours = values_of(replayed.next(&mut log)?)?;
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
                    (ours, theirs) = (values_of(replayed.next(&mut log)?)?, stored.next().await?);
                    differs.then(|| (key_of(&a), DifferenceKind::Columns(columns)))
                }
            };
            if let Some((key, kind)) = difference {
                report.differences += 1;
                report.first.get_or_insert(Difference { table: view.table, key, kind });
            }
        }
    }
    log.finish()?;
    report.events = log.events;
    progress(report.events);
    drop(log);
    snapshot.commit().await?;
    report.stored = stored_hash.finish();
    report.replayed = replayed_hash.finish();
    Ok(report)
}

/// Page cache of the connection `check` reads the stored views with:
/// bounded, so memory stays flat in log size.
const CACHE_KIB: u32 = 32 * 1024;

/// The read connection `check` reads the stored views with.
async fn reader(db: &UserDb) -> StoreResult<PooledConn> {
    let conn = db.read().await?;
    conn.execute(&format!("PRAGMA cache_size = -{CACHE_KIB}"), ()).await?;
    Ok(conn)
}
