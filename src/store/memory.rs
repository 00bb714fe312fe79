//! SQLite's memory, which is process-wide: what each connection reserves up
//! front, and a soft ceiling on everything SQLite holds.
//!
//! One process serves up to `MAX_OPEN_DATABASES` user databases, each with a
//! connection or two, so what every connection reserves is multiplied by a
//! thousand: by default SQLite gives each one 48 KiB of lookaside slots and a
//! bulk allocation of 20 cache pages (≈ 86 KiB) before it has read anything.
//! Here a connection starts small, and the soft heap limit makes page caches
//! recycle the process's least recently used pages instead of growing once
//! SQLite as a whole nears it.

use std::ffi::c_void;
use std::sync::Once;

use libsql::ffi;

use super::StoreResult;

/// Lookaside: 8 KiB per connection (SQLite splits it into slots of 256 and
/// 128 bytes), for the many small short-lived allocations of parsing and
/// stepping.
const LOOKASIDE_SLOT_BYTES: i32 = 256;
const LOOKASIDE_SLOTS: i32 = 32;

/// Applies the per-connection reservations. Must run before SQLite
/// initialises, which libsql does when it opens its first database: every
/// open of this crate goes through `backend::open_file`, which calls this
/// first. Runs once; later calls do nothing.
pub(super) fn configure_once() {
    static CONFIGURE: Once = Once::new();
    CONFIGURE.call_once(|| {
        // SAFETY: `sqlite3_config` may only run before `sqlite3_initialize`
        // and while no other SQLite call runs: this runs before this
        // process's first open (opens wait on the `Once`). Should SQLite be
        // initialised already (a test that opens a libsql database directly
        // first), both calls return SQLITE_MISUSE and change nothing. The variadic arguments have the C types each option reads
        // (`int, int`; `void*, int, int`).
        let (lookaside, bulk) = unsafe {
            (
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_LOOKASIDE, LOOKASIDE_SLOT_BYTES, LOOKASIDE_SLOTS),
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_PAGECACHE, std::ptr::null_mut::<c_void>(), 0i32, 0i32),
            )
        };
        if lookaside != ffi::SQLITE_OK || bulk != ffi::SQLITE_OK {
            tracing::warn!(lookaside, bulk, "SQLite was initialised before its memory could be configured");
        }
    });
}

/// Sets the soft ceiling on the memory SQLite holds in this process, in
/// bytes (0: none). Past it, page caches reuse their pages rather than grow.
/// The server sets it at start; the operator commands, which run alone and
/// size their own caches, do not.
pub async fn set_soft_limit(conn: &libsql::Connection, bytes: u64) -> StoreResult<()> {
    let mut rows = conn.query(&format!("PRAGMA soft_heap_limit = {bytes}"), ()).await?;
    while rows.next().await?.is_some() {}
    Ok(())
}

/// Caps glibc's malloc at two arenas (unless `MALLOC_ARENA_MAX` says
/// otherwise). By default glibc gives each thread that allocates under
/// contention an arena of its own, up to eight per core, and memory freed in
/// one arena serves only that arena: with a dozen runtime and blocking
/// threads touching a thousand user databases, that is resident memory
/// nobody uses (docs/sqlite-memory.md). Call before any thread starts.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` only sets a malloc parameter; it runs here before
        // the process starts any other thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Makes every file and folder this process creates private to its user
/// (umask 077): databases 0600, their WAL and shared-memory files too (SQLite
/// creates those with the database's mode, masked), folders 0700. Call
/// before any thread starts.
pub fn restrict_new_files() {
    // SAFETY: `umask` only sets the process's file-creation mask and cannot
    // fail; it runs here before the process starts any other thread, so no
    // file is being created while it changes.
    unsafe {
        libc::umask(0o077);
    }
}

/// Bytes SQLite holds right now in this process.
pub fn used_bytes() -> u64 {
    // SAFETY: `sqlite3_memory_used` only reads SQLite's own counter, under its mutex.
    let used = unsafe { ffi::sqlite3_memory_used() };
    u64::try_from(used).unwrap_or(0)
}

/// The soft ceiling in force, in bytes (0: none).
fn soft_limit() -> u64 {
    // SAFETY: a negative argument only reads the limit, under SQLite's mutex.
    let limit = unsafe { ffi::sqlite3_soft_heap_limit64(-1) };
    u64::try_from(limit).unwrap_or(0)
}

/// Lets a reader's page cache grow up to the soft limit, when one is in
/// force, so that the soft limit alone bounds it: below its own size, a
/// cache in SQLite's shared LRU evicts the pages it is about to read again
/// once the writers have taken the budget (docs/sqlite-memory.md). Writers
/// keep SQLite's default size: larger ones made pushes slower and the process larger.
pub async fn size_reader_cache(conn: &libsql::Connection) -> StoreResult<()> {
    if let Some(kib) = reader_cache_kib(soft_limit()) {
        conn.execute_batch(&format!("PRAGMA cache_size = -{kib}")).await?;
    }
    Ok(())
}

/// SQLite's default cache size (2,000 KiB) is the floor.
const MIN_READER_CACHE_KIB: u64 = 2_000;
/// SQLite caps the sum of all cache sizes at 2³¹ pages; a thousand readers
/// at this ceiling stay far below it, whatever the soft limit.
const MAX_READER_CACHE_KIB: u64 = 256 * 1024;

/// A reader's cache size in KiB for a soft limit in bytes (0: none, and
/// SQLite's default size).
fn reader_cache_kib(soft_limit: u64) -> Option<u64> {
    (soft_limit > 0).then(|| soft_limit.div_ceil(1024).clamp(MIN_READER_CACHE_KIB, MAX_READER_CACHE_KIB))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readers_cache_follows_the_soft_limit_within_bounds() {
        assert_eq!(reader_cache_kib(0), None);
        assert_eq!(reader_cache_kib(128 * 1024 * 1024), Some(128 * 1024));
        assert_eq!(reader_cache_kib(1024 * 1024), Some(MIN_READER_CACHE_KIB));
        assert_eq!(reader_cache_kib(u64::MAX), Some(MAX_READER_CACHE_KIB));
    }
}
