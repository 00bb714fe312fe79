//! A prepared statement of a [`RawConn`](super::RawConn), its runs and the
//! rows it lends: text and blobs bound in place for the length of one run,
//! columns lent straight from SQLite until the next step.

use std::ffi::{c_char, c_int};
use std::marker::PhantomData;
use std::ptr::NonNull;

use libsql::ffi;

use super::{failure, last_error, RawConn};
use crate::store::{StoreError, StoreResult};

/// One value to bind, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// A compiled statement of a [`RawConn`], finalized on drop.
pub struct RawStatement<'c> {
    pub(super) stmt: NonNull<ffi::sqlite3_stmt>,
    pub(super) params: c_int,
    pub(super) conn: PhantomData<&'c RawConn>,
}

impl<'c> RawStatement<'c> {
    /// Binds exactly one value to each parameter, in order, runs the
    /// statement to its end (rows it returns are skipped), and resets it.
    pub fn execute<'a>(&mut self, params: impl IntoIterator<Item = Param<'a>>) -> StoreResult<()> {
        let mut rows = self.query(params)?;
        while rows.step()?.is_some() {}
        Ok(())
    }

    /// Binds exactly one value to each parameter, in order, and starts a
    /// run: its rows, one step at a time. The statement is reset and its
    /// bindings cleared when they are dropped.
    pub fn query<'s, 'a>(&'s mut self, params: impl IntoIterator<Item = Param<'a>>) -> StoreResult<RawRows<'s, 'c>>
    where
        'a: 's,
    {
        // Reset on every way out, a panic in `params` included.
        let run = Run(self);
        run.0.bind(params)?;
        Ok(RawRows { run, done: false })
    }

    fn bind<'a>(&mut self, params: impl IntoIterator<Item = Param<'a>>) -> StoreResult<()> {
        let stmt = self.stmt.as_ptr();
        let mut bound = 0;
        for param in params {
            bound += 1;
            if bound > self.params {
                return Err(StoreError::Corrupt(format!("more values than the {} parameters", self.params)));
            }
            let too_long = || StoreError::Corrupt("a value too long to bind".into());
            // SAFETY: a valid statement and an index within its parameters.
            // Text and blobs are bound without a copy (`SQLITE_STATIC`: a
            // NULL destructor): they outlive the run (`'a: 's`), and the run
            // clears the bindings when it ends (its rows dropped).
            let rc = unsafe {
                match param {
                    Param::Null => ffi::sqlite3_bind_null(stmt, bound),
                    Param::Integer(n) => ffi::sqlite3_bind_int64(stmt, bound, n),
                    Param::Real(x) => ffi::sqlite3_bind_double(stmt, bound, x),
                    Param::Text(text) => {
                        let len = c_int::try_from(text.len()).map_err(|_| too_long())?;
                        ffi::sqlite3_bind_text(stmt, bound, text.as_ptr().cast::<c_char>(), len, None)
                    }
                    Param::Blob(blob) => {
                        let len = c_int::try_from(blob.len()).map_err(|_| too_long())?;
                        ffi::sqlite3_bind_blob(stmt, bound, blob.as_ptr().cast(), len, None)
                    }
                }
            };
            self.check(rc)?;
        }
        if bound != self.params {
            return Err(StoreError::Corrupt(format!("{bound} values for {} parameters", self.params)));
        }
        Ok(())
    }

    fn check(&self, rc: c_int) -> StoreResult<()> {
        if rc == ffi::SQLITE_OK {
            return Ok(());
        }
        // SAFETY: a valid statement's connection, open while it lives.
        Err(unsafe { last_error(ffi::sqlite3_db_handle(self.stmt.as_ptr()), rc) })
    }
}

/// A statement being run, reset when dropped.
struct Run<'s, 'c>(&'s mut RawStatement<'c>);

/// The rows of one run of a statement (whose values, bound in place,
/// outlive it: [`RawStatement::query`]); reset when dropped.
pub struct RawRows<'s, 'c> {
    run: Run<'s, 'c>,
    /// The run has ended: a step now would start it over.
    done: bool,
}

impl RawRows<'_, '_> {
    /// Steps to the next row: `None` at the end of the run. An error ends it.
    pub fn step(&mut self) -> StoreResult<Option<RawRow<'_>>> {
        if self.done {
            return Ok(None);
        }
        let stmt = self.run.0.stmt;
        // SAFETY: a valid statement with every parameter bound; the values
        // bound in place outlive these rows.
        match unsafe { ffi::sqlite3_step(stmt.as_ptr()) } {
            ffi::SQLITE_ROW => {
                // SAFETY: a valid statement.
                let columns = unsafe { ffi::sqlite3_column_count(stmt.as_ptr()) };
                Ok(Some(RawRow { stmt, columns, rows: PhantomData }))
            }
            rc => {
                self.done = true;
                match rc {
                    ffi::SQLITE_DONE => Ok(None),
                    rc => self.run.0.check(rc).map(|()| None),
                }
            }
        }
    }
}

/// The current row of a [`RawRows`]: its text and blobs are lent straight
/// from SQLite, valid until the next step (which needs the rows back).
pub struct RawRow<'r> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    columns: c_int,
    rows: PhantomData<&'r mut ()>,
}

impl RawRow<'_> {
    /// The column's type (`SQLITE_INTEGER`, `SQLITE_TEXT`, ...); an index
    /// past the last column is an error.
    fn column_type(&self, idx: c_int) -> StoreResult<c_int> {
        if !(0..self.columns).contains(&idx) {
            return Err(StoreError::Corrupt(format!("no column {idx} in a row of {}", self.columns)));
        }
        // SAFETY: a statement on a row, and a column within it.
        Ok(unsafe { ffi::sqlite3_column_type(self.stmt.as_ptr(), idx) })
    }

    fn mismatch(&self, idx: c_int, found: c_int, wanted: &str) -> StoreError {
        let found = match found {
            ffi::SQLITE_INTEGER => "an integer",
            ffi::SQLITE_FLOAT => "a real",
            ffi::SQLITE_TEXT => "text",
            ffi::SQLITE_BLOB => "a blob",
            _ => "NULL",
        };
        StoreError::Corrupt(format!("column {idx} holds {found}, not {wanted}"))
    }

    pub fn is_null(&self, idx: c_int) -> StoreResult<bool> {
        Ok(self.column_type(idx)? == ffi::SQLITE_NULL)
    }

    /// An integer column (anything else, NULL included, is an error: no
    /// conversion).
    pub fn integer(&self, idx: c_int) -> StoreResult<i64> {
        match self.column_type(idx)? {
            // SAFETY: a statement on a row, and an integer column within it.
            ffi::SQLITE_INTEGER => Ok(unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), idx) }),
            found => Err(self.mismatch(idx, found, "an integer")),
        }
    }

    /// A text column, `None` if NULL; it must be UTF-8.
    pub fn text(&self, idx: c_int) -> StoreResult<Option<&str>> {
        match self.column_type(idx)? {
            ffi::SQLITE_NULL => Ok(None),
            ffi::SQLITE_TEXT => {
                // SAFETY: a text column: `sqlite3_column_text` first, then
                // `sqlite3_column_bytes` (the order SQLite asks for), gives
                // its bytes without a conversion, valid until the next step.
                let bytes = unsafe { self.bytes(idx, ffi::sqlite3_column_text(self.stmt.as_ptr(), idx)) }?;
                std::str::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| StoreError::Corrupt(format!("column {idx} holds text that is not UTF-8")))
            }
            found => Err(self.mismatch(idx, found, "text")),
        }
    }

    /// A blob column, `None` if NULL.
    pub fn blob(&self, idx: c_int) -> StoreResult<Option<&[u8]>> {
        match self.column_type(idx)? {
            ffi::SQLITE_NULL => Ok(None),
            // SAFETY: as for `text`, with `sqlite3_column_blob`.
            ffi::SQLITE_BLOB => unsafe { self.bytes(idx, ffi::sqlite3_column_blob(self.stmt.as_ptr(), idx)) }.map(Some),
            found => Err(self.mismatch(idx, found, "a blob")),
        }
    }

    /// The `sqlite3_column_bytes` bytes at `start`, which SQLite returned
    /// for column `idx` of this row (NULL for an empty value, or when it ran
    /// out of memory: an error).
    ///
    /// # Safety
    /// `start` is what `sqlite3_column_text` or `sqlite3_column_blob` just
    /// returned for a text or blob column `idx`.
    unsafe fn bytes<T>(&self, idx: c_int, start: *const T) -> StoreResult<&[u8]> {
        // SAFETY: by this function's contract, the value's length, read after its pointer.
        let len = unsafe { ffi::sqlite3_column_bytes(self.stmt.as_ptr(), idx) };
        match usize::try_from(len) {
            Ok(0) => Ok(&[]),
            Ok(len) if !start.is_null() => {
                // SAFETY: by this function's contract, `len` bytes at `start`, owned by SQLite and
                // left alone until the next step, which needs `&mut` rows.
                Ok(unsafe { std::slice::from_raw_parts(start.cast::<u8>(), len) })
            }
            _ => Err(failure(ffi::SQLITE_NOMEM, format!("out of memory reading column {idx}"))),
        }
    }
}

impl Drop for Run<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: a valid statement. Resetting ends the run; clearing the
        // bindings drops every pointer into the borrowed values.
        unsafe {
            ffi::sqlite3_reset(self.0.stmt.as_ptr());
            ffi::sqlite3_clear_bindings(self.0.stmt.as_ptr());
        }
    }
}

impl Drop for RawStatement<'_> {
    fn drop(&mut self) {
        // SAFETY: a valid statement, finalized once.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}
