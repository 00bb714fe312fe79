//! The views' checksum: SHA-256 over every stored row, by table then key;
//! and the stored rows of a view, read in key order (check reads them too).

use std::collections::VecDeque;

use libsql::{Connection, Value};
use sha2::{Digest, Sha256};

use super::{View, PAGE, VIEWS};
use crate::store::StoreResult;

/// The stored rows of one view, in key order, a page at a time.
pub(super) struct StoredRows<'c> {
    conn: &'c Connection,
    view: View,
    after: Option<Value>,
    buffer: VecDeque<Vec<Value>>,
    exhausted: bool,
}

impl<'c> StoredRows<'c> {
    pub(super) fn new(conn: &'c Connection, view: View) -> Self {
        Self { conn, view, after: None, buffer: VecDeque::new(), exhausted: false }
    }

    pub(super) async fn next(&mut self) -> StoreResult<Option<Vec<Value>>> {
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
