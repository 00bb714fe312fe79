//! The log of one user in `(kind, aggregate_id, seq)` order, for replay: an
//! external merge sort done here rather than by SQLite, in bounded memory
//! whatever the log size. Scanners read the log in seq order, each its own
//! range on its own connection and thread, into sorted runs (`runs.rs`) of
//! compact records (`record.rs`), merged one event at a time. They need no
//! common snapshot: every event at or below the caller's head is immutable.
//! Why and how: docs/replay.md.

mod record;
mod runs;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use self::record::{corrupt, decode};
pub use self::runs::temp_dir;
use self::runs::{Merge, Run, RunBuilder};
use super::timing::millis;
use crate::events::log::scan_for_replay;
use crate::events::StoredEvent;
use crate::store::{StoreResult, UserDb};

/// How scanners cut the log: fixed in production ([`Limits::default`]);
/// tests make them tiny to go through every path.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Events a scanner reads per query.
    pub page: u64,
    /// The encoded events (with their keys) a scanner holds before writing
    /// them out as a run.
    pub run_bytes: usize,
    /// Runs a scanner keeps in files before merging them into one.
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { page: 50_000, run_bytes: 24 * 1024 * 1024, max_files: 32 }
    }
}

/// No scanner has failed yet.
const NONE_FAILED: usize = usize::MAX;

/// Reads `after < seq <= upto` into sorted runs. Blocks its thread. Stops
/// early, with an error, once `failed` names another scanner.
fn scan(db: &UserDb, after: u64, upto: u64, limits: Limits, failed: &AtomicUsize) -> StoreResult<(Vec<Run>, u64)> {
    let conn = db.open_raw()?;
    let mut runs = RunBuilder::new(limits);
    let mut since = after;
    while since < upto {
        // Pages follow the last seq read, not a count: a gap (which `verify`
        // reports) is read past, never read twice.
        let mut last = since;
        scan_for_replay(&conn, since, upto, limits.page, |stored| {
            if failed.load(Ordering::Relaxed) != NONE_FAILED {
                return Err(corrupt("stopped: another scanner failed"));
            }
            last = stored.seq;
            runs.push(&stored)
        })?;
        if last == since {
            break;
        }
        since = last;
    }
    Ok(runs.finish())
}

/// The log up to `upto`, sorted by `(kind, aggregate_id, seq)`.
pub struct SortedLog {
    merge: Merge,
    /// Events the scanners read (and the merge must hand out).
    scanned: u64,
}

impl SortedLog {
    /// Reads and sorts every event with `seq <= upto`, with up to
    /// `scanners` threads (each its share of the seqs, on its own connection).
    pub async fn open(db: &Arc<UserDb>, upto: u64, scanners: u64) -> StoreResult<Self> {
        Self::open_with(db, upto, scanners, Limits::default()).await
    }

    pub async fn open_with(db: &Arc<UserDb>, upto: u64, scanners: u64, limits: Limits) -> StoreResult<Self> {
        let started = std::time::Instant::now();
        let scanners = scanners.clamp(1, upto.max(1));
        let share = upto.div_ceil(scanners);
        let failed = Arc::new(AtomicUsize::new(NONE_FAILED));
        let tasks: Vec<_> = (0..scanners)
            .map(|i| {
                let (db, failed) = (db.clone(), failed.clone());
                let (after, upto) = (i * share, ((i + 1) * share).min(upto));
                let i = i as usize;
                tokio::task::spawn_blocking(move || {
                    let scanned = scan(&db, after, upto, limits, &failed);
                    if scanned.is_err() {
                        // The first to fail stops the others.
                        let _ = failed.compare_exchange(NONE_FAILED, i, Ordering::Relaxed, Ordering::Relaxed);
                    }
                    scanned
                })
            })
            .collect();
        // Every scanner is waited for, so none outlives a failure.
        let mut results = Vec::with_capacity(tasks.len());
        for (i, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap_or_else(|err| Err(corrupt(&format!("a scanner stopped: {err}"))));
            if result.is_err() {
                let _ = failed.compare_exchange(NONE_FAILED, i, Ordering::Relaxed, Ordering::Relaxed);
            }
            results.push(result);
        }
        let first_failed = failed.load(Ordering::Relaxed);
        let (mut runs, mut scanned) = (Vec::new(), 0);
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok((more, events)) => {
                    runs.extend(more);
                    scanned += events;
                }
                Err(err) if i == first_failed => return Err(err),
                Err(_) => {}
            }
        }
        tracing::debug!(
            scanned,
            runs = runs.len(),
            ms = millis(started.elapsed()),
            "replay: log read into sorted runs"
        );
        Ok(Self { merge: Merge::new(runs)?, scanned })
    }

    pub fn next_event(&mut self) -> StoreResult<Option<StoredEvent>> {
        self.merge.next()?.map(decode).transpose()
    }

    /// How many events the scanners read: what a full merge hands out.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }
}

/// Scanners for one replay on this machine: one per core, at most four.
pub fn scanners() -> u64 {
    scanners_for(1)
}

/// Scanners for each of `jobs` replays at once: the cores shared out, at
/// least one each, at most four.
pub fn scanners_for(jobs: usize) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / jobs.max(1)).clamp(1, 4) as u64
}
