//! The views' checksum: SHA-256 over every stored row, by table then key;
//! and the stored rows of a view, read in key order (check reads them too).

use libsql::{Connection, Value};
use sha2::{Digest, Sha256};

use super::{View, VIEWS};
use crate::store::StoreResult;

/// The stored rows of one view, in key order, from one statement. The
/// aggregate views have no index on their key (`id`; rows are stored by
/// `created_seq`), so SQLite sorts them once, in its sorter's bounded memory,
/// rather than once per page.
pub(super) struct StoredRows<'c> {
    conn: &'c Connection,
    view: View,
    rows: Option<libsql::Rows>,
}

impl<'c> StoredRows<'c> {
    pub(super) fn new(conn: &'c Connection, view: View) -> Self {
        Self { conn, view, rows: None }
    }

    pub(super) async fn next(&mut self) -> StoreResult<Option<Vec<Value>>> {
        let rows = match &mut self.rows {
            Some(rows) => rows,
            None => {
                let View { table, key, columns, .. } = self.view;
                let rows = self.conn.query(&format!("SELECT {columns} FROM {table} ORDER BY {key}"), ()).await?;
                self.rows.insert(rows)
            }
        };
        let Some(row) = rows.next().await? else { return Ok(None) };
        Ok(Some((0..row.column_count()).map(|i| row.get_value(i)).collect::<Result<Vec<_>, _>>()?))
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
