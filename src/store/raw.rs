//! A bare SQLite connection on libSQL's own C library (`libsql::ffi`, the
//! same copy the `libsql` crate opens its local connections with, so SQLite's
//! in-process file locks are shared), for the bulk work of replay that cannot
//! afford the crate's per-value work: its scanners reading the whole log, and
//! its writer filling the shadow tables.
//!
//! `libsql`'s statements copy every parameter twice (into a `Value`, then
//! into SQLite with `SQLITE_TRANSIENT`), and every column read once; here
//! text and blobs are bound in place (`SQLITE_STATIC`) for the length of one
//! run of a statement, which resets it and clears its bindings when it ends
//! (its [`RawRows`] dropped, or [`RawStatement::execute`] returning), so
//! SQLite never holds a pointer past the borrow; and a [`RawRow`] lends its
//! columns' text and blobs straight from SQLite until the next step.
//! Connections are opened in SQLite's multi-thread mode (no mutex around
//! each call): a `RawConn` is used by one thread at a time. Blocking calls:
//! use from a blocking thread.

use std::ffi::{c_char, c_int, CStr, CString};
use std::marker::PhantomData;
use std::path::Path;
use std::ptr::{self, NonNull};

use libsql::ffi;

use super::{StoreError, StoreResult, BUSY_TIMEOUT};

/// One value to bind, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// An open database connection, closed on drop.
pub struct RawConn {
    db: NonNull<ffi::sqlite3>,
}

// SAFETY: libsql-ffi builds SQLite with SQLITE_THREADSAFE=1, and `open`
// asks for its multi-thread mode (`SQLITE_OPEN_NOMUTEX`): a connection may
// move between threads as long as one thread at a time uses it, and
// `RawConn` is not `Sync` (nor are its statements and rows `Send`).
unsafe impl Send for RawConn {}

impl RawConn {
    /// Opens an existing database file for reading and writing, with the
    /// store's busy timeout, in SQLite's multi-thread mode.
    pub fn open(path: &Path) -> StoreResult<Self> {
        libsql_started();
        let name = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| StoreError::Corrupt(format!("{}: a NUL byte in the path", path.display())))?;
        let mut db = ptr::null_mut();
        // SAFETY: `name` is a NUL-terminated string alive for the call; `db`
        // receives a handle (even on failure, then closed below).
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                name.as_ptr(),
                &mut db,
                ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX,
                ptr::null(),
            )
        };
        let Some(db) = NonNull::new(db) else {
            return Err(failure(rc, "out of memory opening the database".into()));
        };
        let conn = Self { db };
        if rc != ffi::SQLITE_OK {
            return Err(conn.error(rc));
        }
        let millis = c_int::try_from(BUSY_TIMEOUT.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: `conn.db` is an open connection.
        unsafe { ffi::sqlite3_busy_timeout(conn.db.as_ptr(), millis) };
        Ok(conn)
    }

    /// Runs SQL statements (no parameters, results ignored).
    pub fn execute_batch(&self, sql: &str) -> StoreResult<()> {
        let sql = CString::new(sql).map_err(|_| StoreError::Corrupt("a NUL byte in SQL".into()))?;
        // SAFETY: an open connection and a NUL-terminated string; no callback,
        // and no error message asked for (read with `sqlite3_errmsg` instead).
        let rc = unsafe { ffi::sqlite3_exec(self.db.as_ptr(), sql.as_ptr(), None, ptr::null_mut(), ptr::null_mut()) };
        self.check(rc)
    }

    /// Compiles one statement (SQL holding more than one is refused).
    pub fn prepare(&self, sql: &str) -> StoreResult<RawStatement<'_>> {
        let len = c_int::try_from(sql.len()).map_err(|_| StoreError::Corrupt("a statement too long".into()))?;
        let (mut stmt, mut tail) = (ptr::null_mut(), ptr::null());
        // SAFETY: `sql` is valid for `len` bytes (SQLite reads no further
        // when given the length); `stmt` receives the statement or NULL,
        // `tail` a pointer into `sql` where the first statement ends.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(self.db.as_ptr(), sql.as_ptr().cast::<c_char>(), len, &mut stmt, &mut tail)
        };
        self.check(rc)?;
        let stmt = NonNull::new(stmt).ok_or_else(|| StoreError::Corrupt("no statement in SQL".into()))?;
        // Finalized on drop, the early returns below included.
        let mut statement = RawStatement { stmt, params: 0, conn: PhantomData };
        // The tail points into `sql` (or at its end): an offset, read without dereferencing.
        let rest = sql.get(tail.addr().saturating_sub(sql.as_ptr().addr())..).unwrap_or_default();
        if !rest.trim().is_empty() {
            return Err(StoreError::Corrupt(format!("more than one statement in `{sql}`")));
        }
        // SAFETY: a valid statement.
        statement.params = unsafe { ffi::sqlite3_bind_parameter_count(stmt.as_ptr()) };
        Ok(statement)
    }

    fn check(&self, rc: c_int) -> StoreResult<()> {
        match rc {
            ffi::SQLITE_OK => Ok(()),
            rc => Err(self.error(rc)),
        }
    }

    fn error(&self, rc: c_int) -> StoreError {
        // SAFETY: an open connection.
        unsafe { last_error(self.db.as_ptr(), rc) }
    }

    /// `BEGIN IMMEDIATE`: the caller holds the user's write lock
    /// ([`super::UserDb::lock_writes`]), so this waits only for another
    /// process's writer (up to the busy timeout).
    pub fn begin_immediate(&self) -> StoreResult<RawTx<'_>> {
        self.execute_batch("BEGIN IMMEDIATE")?;
        Ok(RawTx { conn: self, open: true })
    }
}

/// Lets libSQL configure SQLite before this module's first open starts it:
/// libSQL asserts, once per process, that it can still choose SQLite's
/// threading mode (`sqlite3_config` fails once SQLite has started), and a
/// raw connection opened first would make every later libSQL open panic.
fn libsql_started() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        // Its only effect here is libSQL's one-time setup; no file is opened.
        #[allow(deprecated)]
        let started = libsql::Database::open_in_memory();
        if let Err(err) = started {
            tracing::warn!(error = %err, "libSQL's setup before a raw connection failed");
        }
    });
}

/// The last error of connection `db` (after a call returned `rc`), as the
/// `libsql` crate reports one.
///
/// # Safety
/// `db` is an open connection.
unsafe fn last_error(db: *mut ffi::sqlite3, rc: c_int) -> StoreError {
    // SAFETY: by this function's contract, an open connection; the message is NUL-terminated and
    // copied before any other call on the connection.
    let (code, message) = unsafe {
        let message = ffi::sqlite3_errmsg(db);
        let message =
            if message.is_null() { String::new() } else { CStr::from_ptr(message).to_string_lossy().into_owned() };
        (ffi::sqlite3_extended_errcode(db), message)
    };
    failure(if code == ffi::SQLITE_OK { rc } else { code }, message)
}

fn failure(code: c_int, message: String) -> StoreError {
    libsql::Error::SqliteFailure(code, message).into()
}

/// A write transaction of a [`RawConn`]: rolled back when dropped without
/// [`RawTx::commit`], so an error anywhere leaves the database as it was.
pub struct RawTx<'c> {
    conn: &'c RawConn,
    open: bool,
}

impl RawTx<'_> {
    pub fn commit(mut self) -> StoreResult<()> {
        // A failed commit leaves the transaction open: dropped, it rolls back.
        self.conn.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for RawTx<'_> {
    fn drop(&mut self) {
        // A failed rollback leaves nothing to do: SQLite rolls back a
        // transaction left open when its connection closes.
        if self.open && self.conn.execute_batch("ROLLBACK").is_err() {
            tracing::warn!("replay: a rollback of its own connection failed");
        }
    }
}

impl Drop for RawConn {
    fn drop(&mut self) {
        // SAFETY: every statement borrows the connection, so none is left;
        // `close_v2` would defer the close until they were finalized anyway.
        unsafe { ffi::sqlite3_close_v2(self.db.as_ptr()) };
    }
}

/// A compiled statement of a [`RawConn`], finalized on drop.
pub struct RawStatement<'c> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    params: c_int,
    conn: PhantomData<&'c RawConn>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.db");
        let conn = RawConn::open_for_test(&path);
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (a, b, c, d, e)").unwrap();
        (dir, path)
    }

    impl RawConn {
        fn open_for_test(path: &Path) -> Self {
            std::fs::File::create_new(path).ok();
            Self::open(path).unwrap()
        }

        fn rows(&self, sql: &str) -> Vec<String> {
            let sql = CString::new(sql).unwrap();
            let mut stmt = ptr::null_mut();
            let mut rows = Vec::new();
            // SAFETY: an open connection; the statement is finalized before
            // it goes, and each text is copied before the next step.
            unsafe {
                assert_eq!(ffi::sqlite3_prepare_v2(self.db.as_ptr(), sql.as_ptr(), -1, &mut stmt, ptr::null_mut()), 0);
                while ffi::sqlite3_step(stmt) == ffi::SQLITE_ROW {
                    let text = ffi::sqlite3_column_text(stmt, 0);
                    rows.push(CStr::from_ptr(text.cast()).to_string_lossy().into_owned());
                }
                ffi::sqlite3_finalize(stmt);
            }
            rows
        }
    }

    #[test]
    fn values_bound_in_place_are_stored_whole() {
        let (_dir, path) = scratch();
        let conn = RawConn::open(&path).unwrap();
        let mut insert = conn.prepare("INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)").unwrap();
        for i in 0..3 {
            let text = format!("text {i} ✓");
            let blob = vec![i as u8; 40];
            let params = [Param::Null, Param::Integer(i), Param::Real(0.5), Param::Text(&text), Param::Blob(&blob)];
            insert.execute(params).unwrap();
        }
        let sql = "SELECT quote(a) || ' ' || b || ' ' || c || ' ' || d || ' ' || hex(e) FROM t ORDER BY b";
        let rows = conn.rows(sql);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2], format!("NULL 2 0.5 text 2 ✓ {}", "02".repeat(40)));
    }

    #[test]
    fn a_wrong_number_of_values_is_an_error_and_writes_nothing() {
        let (_dir, path) = scratch();
        let conn = RawConn::open(&path).unwrap();
        let mut insert = conn.prepare("INSERT INTO t (a, b) VALUES (?1, ?2)").unwrap();
        assert!(insert.execute([Param::Integer(1)]).is_err());
        assert!(insert.execute([Param::Integer(1), Param::Integer(2), Param::Integer(3)]).is_err());
        assert_eq!(conn.rows("SELECT count(*) FROM t"), ["0"]);
        insert.execute([Param::Integer(1), Param::Integer(2)]).unwrap();
        assert_eq!(conn.rows("SELECT count(*) FROM t"), ["1"]);
    }

    #[test]
    fn a_transaction_dropped_uncommitted_rolls_back_and_errors_carry_sqlites_message() {
        let (_dir, path) = scratch();
        let conn = RawConn::open(&path).unwrap();
        let tx = conn.begin_immediate().unwrap();
        conn.execute_batch("INSERT INTO t (a) VALUES (1)").unwrap();
        drop(tx);
        assert_eq!(conn.rows("SELECT count(*) FROM t"), ["0"]);
        let tx = conn.begin_immediate().unwrap();
        conn.execute_batch("INSERT INTO t (a) VALUES (2)").unwrap();
        tx.commit().unwrap();
        assert_eq!(conn.rows("SELECT a FROM t"), ["2"]);

        let err = conn.execute_batch("INSERT INTO missing VALUES (1)").unwrap_err();
        assert!(err.to_string().contains("no such table: missing"), "{err}");
        let err = conn.prepare("SELEC 1").err().unwrap();
        assert!(err.to_string().contains("syntax error"), "{err}");
    }

    #[test]
    fn a_second_writer_is_told_busy_past_its_timeout() {
        let (_dir, path) = scratch();
        let (first, second) = (RawConn::open(&path).unwrap(), RawConn::open(&path).unwrap());
        let _tx = first.begin_immediate().unwrap();
        // SAFETY: an open connection.
        unsafe { ffi::sqlite3_busy_timeout(second.db.as_ptr(), 10) };
        assert!(matches!(second.begin_immediate(), Err(StoreError::Busy(_))));
    }

    #[test]
    fn one_statement_at_a_time_and_a_failed_run_leaves_the_statement_reusable() {
        let (_dir, path) = scratch();
        let conn = RawConn::open(&path).unwrap();
        assert!(conn.prepare("INSERT INTO t (a) VALUES (1); DROP TABLE t").is_err());
        conn.prepare("INSERT INTO t (a) VALUES (1);  ").unwrap();
        conn.execute_batch("CREATE UNIQUE INDEX t_a ON t (a)").unwrap();
        let mut insert = conn.prepare("INSERT INTO t (a) VALUES (?1)").unwrap();
        insert.execute([Param::Integer(1)]).unwrap();
        let err = insert.execute([Param::Integer(1)]).unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        insert.execute([Param::Integer(2)]).unwrap();
        assert_eq!(conn.rows("SELECT count(*) FROM t"), ["2"]);
    }

    #[test]
    fn rows_lend_their_columns_check_their_types_and_end_for_good() {
        let (_dir, path) = scratch();
        let conn = RawConn::open(&path).unwrap();
        conn.execute_batch("INSERT INTO t VALUES (1, 'one ✓', x'0102', NULL, 1.5), (2, '', x'', 'two', 2.5)").unwrap();
        let mut select = conn.prepare("SELECT a, b, c, d, e FROM t WHERE a >= ?1 ORDER BY a").unwrap();
        let mut rows = select.query([Param::Integer(1)]).unwrap();
        let row = rows.step().unwrap().unwrap();
        assert_eq!(row.integer(0).unwrap(), 1);
        assert_eq!(row.text(1).unwrap(), Some("one ✓"));
        assert_eq!(row.blob(2).unwrap(), Some(&[1u8, 2][..]));
        assert!(row.is_null(3).unwrap());
        assert_eq!(row.text(3).unwrap(), None);
        assert_eq!(row.blob(3).unwrap(), None);
        // No conversions: a wrong type, NULL as an integer, or a column past the last is an error.
        let err = row.text(0).unwrap_err();
        assert!(err.to_string().contains("column 0 holds an integer, not text"), "{err}");
        assert!(row.blob(1).is_err() && row.integer(3).is_err() && row.integer(4).is_err());
        assert!(row.integer(5).is_err() && row.integer(-1).is_err());
        let row = rows.step().unwrap().unwrap();
        assert_eq!((row.text(1).unwrap(), row.blob(2).unwrap()), (Some(""), Some(&[][..])));
        assert!(rows.step().unwrap().is_none());
        // Ended: not started over.
        assert!(rows.step().unwrap().is_none());
        drop(rows);
        // Dropped halfway, the statement is reset and runs again.
        let mut rows = select.query([Param::Integer(2)]).unwrap();
        assert_eq!(rows.step().unwrap().unwrap().integer(0).unwrap(), 2);
        drop(rows);
        let mut rows = select.query([Param::Integer(0)]).unwrap();
        assert_eq!(rows.step().unwrap().unwrap().integer(0).unwrap(), 1);
    }

    #[test]
    fn a_missing_file_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.db");
        assert!(RawConn::open(&path).is_err());
        assert!(!path.exists());
    }
}
