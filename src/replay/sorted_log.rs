//! The log of one user in `(kind, aggregate_id, seq)` order, for replay: an
//! external merge sort done here rather than by SQLite.
//!
//! Scanners read the log in seq order, each its own range on its own
//! connection and thread, and cut it into runs: events encoded compactly
//! (ids as 16 bytes, times as integers, no payload but a device's) into a
//! buffer of at most [`Limits::run_bytes`], sorted by a fixed-width key and,
//! when the buffer is full, written to an unnamed temporary file in
//! [`temp_dir`] (nothing is left behind, even by a crash). The runs are then
//! merged, one event at a time. Memory holds each scanner's buffer, the last
//! run of each (kept rather than written) and a read buffer per file,
//! whatever the log size. A scanner that has written [`Limits::max_files`]
//! runs merges them into one, so files stay few too; past that (≈ 750 MB
//! encoded per scanner) some events are written out more than twice, which
//! levelled merging would avoid: not needed at the sizes measured.
//!
//! Scanners need no common snapshot: every event at or below the head read
//! by the caller is immutable (the log is append-only), so any connection
//! reads the same ones. The first scanner to fail stops the others, and its
//! error is the one returned.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::hash::{put_optional_bytes, put_optional_uuid, put_version};
use crate::events::log::scan_for_replay;
use crate::events::{Kind, NewEvent, Op, StoredEvent};
use crate::projection::version::VersionVector;
use crate::store::{StoreError, StoreResult, UserDb};

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

/// Read buffer of each run in a file.
const READ_BUFFER: usize = 64 * 1024;

/// Where runs are written: `TMPDIR` when set, else `/var/tmp` (disk-backed
/// on most systems, where `/tmp` is often in memory), else the system's
/// temporary directory: the order of SQLite's own temporary files, after
/// its `SQLITE_TMPDIR`.
pub fn temp_dir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if Path::new("/var/tmp").is_dir() => PathBuf::from("/var/tmp"),
        _ => std::env::temp_dir(),
    }
}

fn temp_file() -> StoreResult<File> {
    tempfile::tempfile_in(temp_dir()).map_err(io_error)
}

/// The kinds in the text order of their names: the order SQLite sorted them
/// in, and the order of replay's views.
const KINDS_BY_NAME: [Kind; 5] = [Kind::Device, Kind::Embedding, Kind::Entry, Kind::Memory, Kind::Tag];

fn rank(kind: Kind) -> u8 {
    match kind {
        Kind::Device => 0,
        Kind::Embedding => 1,
        Kind::Entry => 2,
        Kind::Memory => 3,
        Kind::Tag => 4,
    }
}

/// Kind rank, aggregate id (big-endian: the order of its text form) and seq
/// (big-endian): byte order is the sort order.
type Key = [u8; KEY_LEN];
const KEY_LEN: usize = 1 + 16 + 8;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("replay's sorted log: {what}"))
}

fn io_error(source: io::Error) -> StoreError {
    StoreError::Io { context: "replay's temporary files (TMPDIR)".into(), source }
}

/// Appends `stored` to `out` as a length-prefixed record that starts with
/// its key; the fields are laid out with the hash chain's pieces.
fn encode(stored: &StoredEvent, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let event = &stored.event;
    out.push(rank(event.kind));
    out.extend_from_slice(event.aggregate_id.as_bytes());
    out.extend_from_slice(&stored.seq.to_be_bytes());
    out.extend_from_slice(event.event_id.as_bytes());
    out.extend_from_slice(stored.device_id.as_bytes());
    put_optional_uuid(out, event.parent_id);
    out.push(match event.op {
        Op::Put => 0,
        Op::Delete => 1,
    });
    for time in [event.client_time, stored.received_at] {
        out.extend_from_slice(&time.timestamp().to_be_bytes());
        out.extend_from_slice(&time.timestamp_subsec_nanos().to_be_bytes());
    }
    out.extend_from_slice(&stored.hash);
    put_version(out, &event.version);
    put_optional_bytes(out, event.payload.as_deref());
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Reads a record's fields in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn array<const N: usize>(&mut self) -> StoreResult<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or_else(|| corrupt("a record is cut short"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn bytes(&mut self, len: usize) -> StoreResult<&'a [u8]> {
        if self.0.len() < len {
            return Err(corrupt("a record is cut short"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> StoreResult<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn uuid(&mut self) -> StoreResult<Uuid> {
        Ok(Uuid::from_bytes(self.array()?))
    }

    fn u32(&mut self) -> StoreResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> StoreResult<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn time(&mut self) -> StoreResult<DateTime<Utc>> {
        let secs = i64::from_be_bytes(self.array()?);
        let nanos = self.u32()?;
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| corrupt("a time is out of range"))
    }
}

/// The event of a record (without its length prefix).
fn decode(record: &[u8]) -> StoreResult<StoredEvent> {
    let mut fields = Fields(record);
    let kind = *KINDS_BY_NAME.get(usize::from(fields.byte()?)).ok_or_else(|| corrupt("unknown kind"))?;
    let aggregate_id = fields.uuid()?;
    let seq = fields.u64()?;
    let event_id = fields.uuid()?;
    let device_id = fields.uuid()?;
    let parent_id = match fields.byte()? {
        0 => None,
        1 => Some(fields.uuid()?),
        _ => return Err(corrupt("a parent flag is neither 0 nor 1")),
    };
    let op = match fields.byte()? {
        0 => Op::Put,
        1 => Op::Delete,
        _ => return Err(corrupt("unknown op")),
    };
    let client_time = fields.time()?;
    let received_at = fields.time()?;
    let hash = fields.array()?;
    let entries = fields.u32()?;
    let version = (0..entries).map(|_| Ok((fields.uuid()?, fields.u64()?))).collect::<StoreResult<VersionVector>>()?;
    let payload = match fields.byte()? {
        0 => None,
        1 => {
            let len = fields.u32()? as usize;
            Some(fields.bytes(len)?.to_vec())
        }
        _ => return Err(corrupt("a payload flag is neither 0 nor 1")),
    };
    if !fields.0.is_empty() {
        return Err(corrupt("a record is longer than its event"));
    }
    Ok(StoredEvent {
        seq,
        device_id,
        received_at,
        hash,
        event: NewEvent { event_id, kind, aggregate_id, parent_id, op, version, payload, client_time },
    })
}

fn key_of(record: &[u8]) -> StoreResult<Key> {
    record.first_chunk::<KEY_LEN>().copied().ok_or_else(|| corrupt("a record is cut short"))
}

/// The record at `offset` of a buffer of length-prefixed records: its
/// bytes with the prefix, and without.
fn record_at(arena: &[u8], offset: u32) -> StoreResult<(&[u8], &[u8])> {
    let start = offset as usize;
    let cut = || corrupt("a record is cut short");
    let prefix = arena.get(start..).and_then(|rest| rest.first_chunk::<4>()).ok_or_else(cut)?;
    let end = start + 4 + u32::from_le_bytes(*prefix) as usize;
    let whole = arena.get(start..end).ok_or_else(cut)?;
    Ok((whole, &whole[4..]))
}

/// A sorted run: kept in memory, or written to a temporary file (with the
/// number of records written, so a short read is an error, not an end).
enum Run {
    Memory { arena: Vec<u8>, order: Vec<(Key, u32)> },
    File { reader: BufReader<File>, records: u64 },
}

/// A run being read: its current record.
struct RunCursor {
    run: Run,
    /// Records moved past so far.
    read: u64,
    /// The current record of a file run (a memory run's is in its arena).
    record: Vec<u8>,
    /// Where the current record of a memory run starts.
    offset: u32,
}

impl RunCursor {
    fn new(run: Run) -> Self {
        Self { run, read: 0, record: Vec::new(), offset: 0 }
    }

    /// Moves to the next record; false at the end.
    fn advance(&mut self) -> StoreResult<bool> {
        let next = self.read;
        match &mut self.run {
            Run::Memory { order, .. } => {
                let Some(&(_, offset)) = order.get(next as usize) else { return Ok(false) };
                self.offset = offset;
            }
            Run::File { reader, records } => {
                if next == *records {
                    return Ok(false);
                }
                let mut prefix = [0; 4];
                reader.read_exact(&mut prefix).map_err(io_error)?;
                self.record.resize(u32::from_le_bytes(prefix) as usize, 0);
                reader.read_exact(&mut self.record).map_err(io_error)?;
            }
        }
        self.read += 1;
        Ok(true)
    }

    fn current(&self) -> StoreResult<&[u8]> {
        match &self.run {
            Run::Memory { arena, .. } => Ok(record_at(arena, self.offset)?.1),
            Run::File { .. } => Ok(&self.record),
        }
    }
}

/// The merge of sorted runs, record by record.
struct Merge {
    cursors: Vec<RunCursor>,
    heap: BinaryHeap<Reverse<(Key, usize)>>,
    /// The cursor whose record was handed out last: advanced on the next call.
    taken: Option<usize>,
}

impl Merge {
    fn new(runs: Vec<Run>) -> StoreResult<Self> {
        let mut merge = Self { cursors: Vec::with_capacity(runs.len()), heap: BinaryHeap::new(), taken: None };
        for run in runs {
            let mut cursor = RunCursor::new(run);
            if cursor.advance()? {
                merge.heap.push(Reverse((key_of(cursor.current()?)?, merge.cursors.len())));
            }
            merge.cursors.push(cursor);
        }
        Ok(merge)
    }

    /// The next record of the merged order (without its length prefix).
    fn next(&mut self) -> StoreResult<Option<&[u8]>> {
        if let Some(i) = self.taken.take() {
            let cursor = &mut self.cursors[i];
            if cursor.advance()? {
                self.heap.push(Reverse((key_of(cursor.current()?)?, i)));
            }
        }
        let Some(Reverse((_, i))) = self.heap.pop() else { return Ok(None) };
        self.taken = Some(i);
        self.cursors[i].current().map(Some)
    }
}

/// Cuts a scanner's events into sorted runs.
struct RunBuilder {
    limits: Limits,
    arena: Vec<u8>,
    order: Vec<(Key, u32)>,
    files: Vec<Run>,
    /// Events pushed in all.
    events: u64,
}

impl RunBuilder {
    fn new(limits: Limits) -> Self {
        Self { limits, arena: Vec::new(), order: Vec::new(), files: Vec::new(), events: 0 }
    }

    fn push(&mut self, stored: &StoredEvent) -> StoreResult<()> {
        let offset = u32::try_from(self.arena.len()).map_err(|_| corrupt("a run outgrew its buffer"))?;
        encode(stored, &mut self.arena);
        self.order.push((key_of(record_at(&self.arena, offset)?.1)?, offset));
        self.events += 1;
        if self.arena.len() + self.order.len() * size_of::<(Key, u32)>() >= self.limits.run_bytes {
            self.spill()?;
        }
        Ok(())
    }

    /// Writes the buffered events, sorted, to a new temporary file.
    fn spill(&mut self) -> StoreResult<()> {
        self.order.sort_unstable_by_key(|(key, _)| *key);
        let mut out = BufWriter::with_capacity(READ_BUFFER, temp_file()?);
        for &(_, offset) in &self.order {
            out.write_all(record_at(&self.arena, offset)?.0).map_err(io_error)?;
        }
        let records = self.order.len() as u64;
        self.arena.clear();
        self.order.clear();
        self.files.push(Run::File { reader: rewound(out)?, records });
        if self.files.len() >= self.limits.max_files {
            let merged = merge_to_file(std::mem::take(&mut self.files))?;
            self.files.push(merged);
        }
        Ok(())
    }

    /// The runs: those written out, and the last one, kept in memory; and
    /// the number of events in them.
    fn finish(mut self) -> (Vec<Run>, u64) {
        self.order.sort_unstable_by_key(|(key, _)| *key);
        let mut runs = self.files;
        if !self.order.is_empty() {
            runs.push(Run::Memory { arena: self.arena, order: self.order });
        }
        (runs, self.events)
    }
}

fn rewound(out: BufWriter<File>) -> StoreResult<BufReader<File>> {
    let mut file = out.into_inner().map_err(|err| io_error(err.into_error()))?;
    file.rewind().map_err(io_error)?;
    Ok(BufReader::with_capacity(READ_BUFFER, file))
}

/// Merges runs into one, in a new temporary file.
fn merge_to_file(runs: Vec<Run>) -> StoreResult<Run> {
    let mut merge = Merge::new(runs)?;
    let mut out = BufWriter::with_capacity(READ_BUFFER, temp_file()?);
    let mut records = 0;
    while let Some(record) = merge.next()? {
        out.write_all(&(record.len() as u32).to_le_bytes()).map_err(io_error)?;
        out.write_all(record).map_err(io_error)?;
        records += 1;
    }
    Ok(Run::File { reader: rewound(out)?, records })
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
            ms = super::millis(started.elapsed()),
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn event(seq: u64, kind: Kind, aggregate: u128, payload: Option<Vec<u8>>) -> StoredEvent {
        let device = Uuid::from_u128(7);
        StoredEvent {
            seq,
            device_id: device,
            received_at: Utc.timestamp_opt(1_700_000_000 + seq as i64, 123_456_789).unwrap(),
            hash: [seq as u8; 32],
            event: NewEvent {
                event_id: Uuid::from_u128(u128::from(seq) << 64 | 1),
                kind,
                aggregate_id: Uuid::from_u128(aggregate),
                parent_id: seq.is_multiple_of(3).then(|| Uuid::from_u128(99)),
                op: if seq.is_multiple_of(4) { Op::Delete } else { Op::Put },
                version: [(device, seq), (Uuid::from_u128(8), 2)].into_iter().collect(),
                payload,
                client_time: Utc.timestamp_opt(-5_000 + seq as i64, 1).unwrap(),
            },
        }
    }

    #[test]
    fn kinds_by_name_are_in_text_order_and_ranked_by_position() {
        let mut sorted = KINDS_BY_NAME;
        sorted.sort_by_key(|kind| kind.as_str());
        assert_eq!(sorted, KINDS_BY_NAME);
        for (i, kind) in KINDS_BY_NAME.into_iter().enumerate() {
            assert_eq!(usize::from(rank(kind)), i);
        }
    }

    #[test]
    fn records_decode_to_the_event_encoded() {
        for stored in [event(1, Kind::Device, 5, Some(vec![1, 2, 3])), event(12, Kind::Tag, u128::MAX, None)] {
            let mut out = Vec::new();
            encode(&stored, &mut out);
            assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()) as usize, out.len() - 4);
            assert_eq!(decode(&out[4..]).unwrap(), stored);
            assert!(decode(&out[4..out.len() - 1]).is_err(), "a cut record is an error, not a panic");
        }
    }

    #[test]
    fn a_file_run_shorter_than_it_was_written_is_an_error_not_an_end() {
        let mut builder = RunBuilder::new(Limits { page: 1, run_bytes: 1, max_files: 10 });
        builder.push(&event(1, Kind::Entry, 1, None)).unwrap();
        let (mut runs, _) = builder.finish();
        let Some(Run::File { records, .. }) = runs.first_mut() else { panic!("run_bytes 1 writes every event out") };
        *records += 1;
        let mut merge = Merge::new(runs).unwrap();
        assert!(merge.next().unwrap().is_some());
        assert!(matches!(merge.next(), Err(StoreError::Io { .. })));
    }

    proptest! {
        #[test]
        fn uuid_byte_order_is_the_order_of_their_text(a in any::<u128>(), b in any::<u128>()) {
            let (a, b) = (Uuid::from_u128(a), Uuid::from_u128(b));
            prop_assert_eq!(a.as_bytes().cmp(b.as_bytes()), a.to_string().cmp(&b.to_string()));
        }

        #[test]
        fn runs_merge_into_kind_aggregate_seq_order(
            events in proptest::collection::vec((0..5usize, 0..20u128), 0..400),
            run_bytes in 1..20_000usize,
            max_files in 2..5usize,
        ) {
            let all: Vec<StoredEvent> = events
                .iter()
                .enumerate()
                .map(|(i, &(kind, aggregate))| event(i as u64 + 1, KINDS_BY_NAME[kind], aggregate, None))
                .collect();
            // Runs as scanners cut them: some in files (merged into one past
            // `max_files`), the last in memory.
            let mut builder = RunBuilder::new(Limits { page: 1, run_bytes, max_files });
            for stored in &all {
                builder.push(stored).unwrap();
            }
            prop_assert!(builder.files.len() < max_files);
            let (runs, pushed) = builder.finish();
            prop_assert_eq!(pushed, all.len() as u64);
            let mut merge = Merge::new(runs).unwrap();
            let mut merged = Vec::new();
            while let Some(record) = merge.next().unwrap() {
                merged.push(decode(record).unwrap());
            }
            let mut expected = all.clone();
            expected.sort_by(|a, b| {
                let key = |e: &StoredEvent| (e.event.kind.as_str(), e.event.aggregate_id.to_string(), e.seq);
                key(a).cmp(&key(b))
            });
            prop_assert_eq!(merged, expected);
        }
    }
}
