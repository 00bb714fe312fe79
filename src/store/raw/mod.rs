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

mod statement;

pub use statement::{Param, RawRow, RawRows, RawStatement};

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
