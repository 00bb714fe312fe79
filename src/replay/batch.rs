//! Rows on their way to a shadow: packed by the folding side, bound in place
//! and inserted many to a statement by the writing side.

use libsql::Value;

use super::View;
use crate::store::raw::{Param, RawConn, RawStatement};
use crate::store::{StoreError, StoreResult};

/// Rows encoded by the folding side, packed into two buffers; the writing
/// side binds them in place. Each side thus frees only what it allocated:
/// with glibc's allocator, values allocated on one thread and freed on
/// another slowed the writing side (`benches/replay.rs`).
pub(super) struct RowBatch {
    columns: usize,
    text: String,
    blobs: Vec<u8>,
    values: Vec<BatchValue>,
    pub(super) rows: usize,
}

/// A value of a batched row; text and blobs as ranges of the batch's buffers.
#[derive(Clone, Copy)]
enum BatchValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(usize, usize),
    Blob(usize, usize),
}

impl RowBatch {
    pub(super) fn new(view: View) -> Self {
        let columns = view.column_names().count();
        Self { columns, text: String::new(), blobs: Vec::new(), values: Vec::new(), rows: 0 }
    }

    pub(super) fn push(&mut self, values: Vec<Value>) -> StoreResult<()> {
        if values.len() != self.columns {
            return Err(StoreError::Corrupt(format!("a row of {} values for {} columns", values.len(), self.columns)));
        }
        for value in values {
            let packed = match value {
                Value::Null => BatchValue::Null,
                Value::Integer(n) => BatchValue::Integer(n),
                Value::Real(x) => BatchValue::Real(x),
                Value::Text(text) => {
                    let start = self.text.len();
                    self.text.push_str(&text);
                    BatchValue::Text(start, self.text.len())
                }
                Value::Blob(blob) => {
                    let start = self.blobs.len();
                    self.blobs.extend_from_slice(&blob);
                    BatchValue::Blob(start, self.blobs.len())
                }
            };
            self.values.push(packed);
        }
        self.rows += 1;
        Ok(())
    }

    /// The values of rows `rows`, in order, borrowed.
    fn params(&self, rows: std::ops::Range<usize>) -> StoreResult<Vec<Param<'_>>> {
        let lost = || StoreError::Corrupt("replay lost a packed value".into());
        let values = self.values.get(rows.start * self.columns..rows.end * self.columns).ok_or_else(lost)?;
        values
            .iter()
            .map(|value| {
                Ok(match *value {
                    BatchValue::Null => Param::Null,
                    BatchValue::Integer(n) => Param::Integer(n),
                    BatchValue::Real(x) => Param::Real(x),
                    BatchValue::Text(start, end) => Param::Text(self.text.get(start..end).ok_or_else(lost)?),
                    BatchValue::Blob(start, end) => Param::Blob(self.blobs.get(start..end).ok_or_else(lost)?),
                })
            })
            .collect()
    }
}

/// Rows a shadow insert statement writes at once: with a statement per row,
/// the per-statement work (binding, stepping, resetting) weighed on the
/// writing side (`benches/replay.rs`).
const ROWS_PER_INSERT: usize = 64;

/// The insert statements of one view's shadow.
pub(super) struct ShadowInserts<'c> {
    pub(super) view: View,
    /// [`ROWS_PER_INSERT`] rows at once, and one.
    many: RawStatement<'c>,
    one: RawStatement<'c>,
}

impl<'c> ShadowInserts<'c> {
    pub(super) fn prepare(conn: &'c RawConn, view: View) -> StoreResult<Self> {
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
            format!("INSERT OR FAIL INTO {} ({}) VALUES {}", view.inserted_into(), view.columns, tuples.join(", "))
        };
        Ok(Self { view, many: conn.prepare(&insert(ROWS_PER_INSERT))?, one: conn.prepare(&insert(1))? })
    }

    /// Inserts every row of `rows` (inside the caller's transaction).
    pub(super) fn write(&mut self, rows: &RowBatch) -> StoreResult<()> {
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
