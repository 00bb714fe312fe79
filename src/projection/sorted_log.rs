//! The log of one user in `(kind, aggregate_id, seq)` order, for replay: an
//! external merge sort done here rather than by SQLite.
//!
//! Scanners read the log in seq order, each its own range on its own
//! connection and thread, and cut it into runs: events encoded compactly
//! (ids as 16 bytes, times as integers, no payload but a device's) into a
//! buffer of at most [`RUN_BYTES`], sorted by a fixed-width key and, when the
//! buffer is full, written to an unnamed temporary file. The runs are then
//! merged, one event at a time. Memory holds each scanner's buffer, the
//! last run of each (kept rather than written) and a read buffer per file,
//! whatever the log size; a scanner that has written [`MAX_FILES`] runs
//! merges them into one, so files stay few too.
//!
//! Scanners need no common snapshot: every event at or below the head read
//! by the caller is immutable (the log is append-only), so any connection
//! reads the same ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::log::scan_for_replay;
use crate::events::{Kind, NewEvent, Op, StoredEvent};
use crate::projection::version::VersionVector;
use crate::store::{StoreError, StoreResult, UserDb};

/// The encoded events a scanner holds (with their keys) before writing them
/// out as a run.
const RUN_BYTES: usize = 24 * 1024 * 1024;

/// Runs a scanner keeps in files before merging them into one.
const MAX_FILES: usize = 32;

/// Read buffer of each run in a file.
const READ_BUFFER: usize = 64 * 1024;

/// Events a scanner reads per query.
const SCAN_PAGE: u64 = 50_000;

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
/// its key.
fn encode(stored: &StoredEvent, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let event = &stored.event;
    out.push(rank(event.kind));
    out.extend_from_slice(event.aggregate_id.as_bytes());
    out.extend_from_slice(&stored.seq.to_be_bytes());
    out.extend_from_slice(event.event_id.as_bytes());
    out.extend_from_slice(stored.device_id.as_bytes());
    match event.parent_id {
        Some(parent) => {
            out.push(1);
            out.extend_from_slice(parent.as_bytes());
        }
        None => out.push(0),
    }
    out.push(match event.op {
        Op::Put => 0,
        Op::Delete => 1,
    });
    for time in [event.client_time, stored.received_at] {
        out.extend_from_slice(&time.timestamp().to_le_bytes());
        out.extend_from_slice(&time.timestamp_subsec_nanos().to_le_bytes());
    }
    out.extend_from_slice(&stored.hash);
    out.extend_from_slice(&(event.version.len() as u32).to_le_bytes());
    for (device, counter) in event.version.iter() {
        out.extend_from_slice(device.as_bytes());
        out.extend_from_slice(&counter.to_le_bytes());
    }
    match &event.payload {
        Some(payload) => {
            out.push(1);
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
        }
        None => out.push(0),
    }
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
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64_le(&mut self) -> StoreResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn time(&mut self) -> StoreResult<DateTime<Utc>> {
        let secs = i64::from_le_bytes(self.array()?);
        let nanos = self.u32()?;
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| corrupt("a time is out of range"))
    }
}

/// The event of a record (without its length prefix).
fn decode(record: &[u8]) -> StoreResult<StoredEvent> {
    let mut fields = Fields(record);
    let kind = *KINDS_BY_NAME.get(usize::from(fields.byte()?)).ok_or_else(|| corrupt("unknown kind"))?;
    let aggregate_id = fields.uuid()?;
    let seq = u64::from_be_bytes(fields.array()?);
    let event_id = fields.uuid()?;
    let device_id = fields.uuid()?;
    let parent_id = match fields.byte()? {
        0 => None,
        _ => Some(fields.uuid()?),
    };
    let op = match fields.byte()? {
        0 => Op::Put,
        _ => Op::Delete,
    };
    let client_time = fields.time()?;
    let received_at = fields.time()?;
    let hash = fields.array()?;
    let entries = fields.u32()?;
    let version =
        (0..entries).map(|_| Ok((fields.uuid()?, fields.u64_le()?))).collect::<StoreResult<VersionVector>>()?;
    let payload = match fields.byte()? {
        0 => None,
        _ => {
            let len = fields.u32()? as usize;
            Some(fields.bytes(len)?.to_vec())
        }
    };
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

/// A sorted run: kept in memory, or written to a temporary file.
enum Run {
    Memory { arena: Vec<u8>, order: Vec<(Key, u32)>, next: usize },
    File(BufReader<File>),
}

/// A run being read: its current record.
struct RunCursor {
    run: Run,
    /// The current record of a file run (a memory run's is in its arena).
    record: Vec<u8>,
    /// Where the current record of a memory run starts and ends.
    span: (usize, usize),
}

impl RunCursor {
    fn new(run: Run) -> Self {
        Self { run, record: Vec::new(), span: (0, 0) }
    }

    /// Moves to the next record; false at the end.
    fn advance(&mut self) -> StoreResult<bool> {
        match &mut self.run {
            Run::Memory { arena, order, next } => {
                let Some(&(_, offset)) = order.get(*next) else { return Ok(false) };
                *next += 1;
                let start = offset as usize + 4;
                let len = arena
                    .get(offset as usize..start)
                    .and_then(|prefix| prefix.try_into().ok())
                    .map(u32::from_le_bytes)
                    .ok_or_else(|| corrupt("a record is cut short"))?;
                self.span = (start, start + len as usize);
                Ok(true)
            }
            Run::File(reader) => {
                let mut prefix = [0; 4];
                match reader.read_exact(&mut prefix) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                    Err(err) => return Err(io_error(err)),
                }
                self.record.resize(u32::from_le_bytes(prefix) as usize, 0);
                reader.read_exact(&mut self.record).map_err(io_error)?;
                Ok(true)
            }
        }
    }

    fn current(&self) -> StoreResult<&[u8]> {
        match &self.run {
            Run::Memory { arena, .. } => {
                arena.get(self.span.0..self.span.1).ok_or_else(|| corrupt("a record is cut short"))
            }
            Run::File(_) => Ok(&self.record),
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
    arena: Vec<u8>,
    order: Vec<(Key, u32)>,
    files: Vec<Run>,
}

impl RunBuilder {
    fn new() -> Self {
        Self { arena: Vec::new(), order: Vec::new(), files: Vec::new() }
    }

    fn push(&mut self, stored: &StoredEvent) -> StoreResult<()> {
        let offset = u32::try_from(self.arena.len()).map_err(|_| corrupt("a run outgrew its buffer"))?;
        encode(stored, &mut self.arena);
        self.order.push((key_of(&self.arena[offset as usize + 4..])?, offset));
        if self.arena.len() + self.order.len() * size_of::<(Key, u32)>() >= RUN_BYTES {
            self.spill()?;
        }
        Ok(())
    }

    /// Writes the buffered events, sorted, to a new temporary file.
    fn spill(&mut self) -> StoreResult<()> {
        self.order.sort_unstable_by_key(|(key, _)| *key);
        let mut out = BufWriter::with_capacity(READ_BUFFER, tempfile::tempfile().map_err(io_error)?);
        for &(_, offset) in &self.order {
            let start = offset as usize;
            let len = self
                .arena
                .get(start..start + 4)
                .and_then(|prefix| prefix.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| corrupt("a record is cut short"))?;
            let record =
                self.arena.get(start..start + 4 + len as usize).ok_or_else(|| corrupt("a record is cut short"))?;
            out.write_all(record).map_err(io_error)?;
        }
        self.arena.clear();
        self.order.clear();
        self.files.push(Run::File(rewound(out)?));
        if self.files.len() >= MAX_FILES {
            let merged = merge_to_file(std::mem::take(&mut self.files))?;
            self.files.push(merged);
        }
        Ok(())
    }

    /// The runs: those written out, and the last one, kept in memory.
    fn finish(mut self) -> Vec<Run> {
        self.order.sort_unstable_by_key(|(key, _)| *key);
        let mut runs = self.files;
        if !self.order.is_empty() {
            runs.push(Run::Memory { arena: self.arena, order: self.order, next: 0 });
        }
        runs
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
    let mut out = BufWriter::with_capacity(READ_BUFFER, tempfile::tempfile().map_err(io_error)?);
    while let Some(record) = merge.next()? {
        out.write_all(&(record.len() as u32).to_le_bytes()).map_err(io_error)?;
        out.write_all(record).map_err(io_error)?;
    }
    Ok(Run::File(rewound(out)?))
}

/// Reads `after < seq <= upto` into sorted runs. Blocks its thread.
fn scan(db: &UserDb, after: u64, upto: u64) -> StoreResult<Vec<Run>> {
    let handle = tokio::runtime::Handle::current();
    let conn = handle.block_on(db.read())?;
    let mut runs = RunBuilder::new();
    let mut since = after;
    while since < upto {
        // Pages follow the last seq read, not a count: a gap (which `verify`
        // reports) is read past, never read twice.
        let mut last = since;
        handle.block_on(scan_for_replay(&conn, since, upto, SCAN_PAGE, |stored| {
            last = stored.seq;
            runs.push(&stored)
        }))?;
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
}

impl SortedLog {
    /// Reads and sorts every event with `seq <= upto`, with up to
    /// `scanners` threads (each its share of the seqs, on its own connection).
    pub async fn open(db: &Arc<UserDb>, upto: u64, scanners: u64) -> StoreResult<Self> {
        let scanners = scanners.clamp(1, upto.max(1));
        let share = upto.div_ceil(scanners);
        let tasks: Vec<_> = (0..scanners)
            .map(|i| {
                let (db, after, upto) = (db.clone(), i * share, ((i + 1) * share).min(upto));
                tokio::task::spawn_blocking(move || scan(&db, after, upto))
            })
            .collect();
        let mut runs = Vec::new();
        for task in tasks {
            runs.extend(task.await.map_err(|err| corrupt(&format!("a scanner stopped: {err}")))??);
        }
        Ok(Self { merge: Merge::new(runs)? })
    }

    pub fn next_event(&mut self) -> StoreResult<Option<StoredEvent>> {
        self.merge.next()?.map(decode).transpose()
    }
}

/// Scanners for a machine: one per core, at most four.
pub fn scanners() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4) as u64)
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
                parent_id: (seq % 3 == 0).then(|| Uuid::from_u128(99)),
                op: if seq % 4 == 0 { Op::Delete } else { Op::Put },
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
    fn uuid_byte_order_is_the_order_of_their_text() {
        let ids = [Uuid::from_u128(1), Uuid::from_u128(0xa << 120), Uuid::from_u128(0x9f << 64), Uuid::max()];
        for a in ids {
            for b in ids {
                assert_eq!(a.as_bytes().cmp(b.as_bytes()), a.to_string().cmp(&b.to_string()));
            }
        }
    }

    proptest! {
        #[test]
        fn runs_merge_into_kind_aggregate_seq_order(
            events in proptest::collection::vec((0..5usize, 0..20u128), 0..400),
            cut in 1..50usize,
        ) {
            let all: Vec<StoredEvent> = events
                .iter()
                .enumerate()
                .map(|(i, &(kind, aggregate))| event(i as u64 + 1, KINDS_BY_NAME[kind], aggregate, None))
                .collect();
            // Runs as scanners cut them: some in files (a few merged into one), the last in memory.
            let mut builder = RunBuilder::new();
            for (i, stored) in all.iter().enumerate() {
                builder.push(stored).unwrap();
                if (i + 1) % cut == 0 {
                    builder.spill().unwrap();
                }
                if builder.files.len() == 3 {
                    let merged = merge_to_file(std::mem::take(&mut builder.files)).unwrap();
                    builder.files.push(merged);
                }
            }
            let mut merge = Merge::new(builder.finish()).unwrap();
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
