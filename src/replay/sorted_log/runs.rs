//! Sorted runs: a scanner's events cut into runs, sorted by key, kept in
//! memory or written to unnamed temporary files; and their merge.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::record::{corrupt, encode, key_of, record_at, Key};
use super::Limits;
use crate::events::StoredEvent;
use crate::store::{StoreError, StoreResult};

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

fn io_error(source: io::Error) -> StoreError {
    StoreError::Io { context: "replay's temporary files (TMPDIR)".into(), source }
}

/// A sorted run: kept in memory, or written to a temporary file (with the
/// number of records written, so a short read is an error, not an end).
pub(super) enum Run {
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
pub(super) struct Merge {
    cursors: Vec<RunCursor>,
    heap: BinaryHeap<Reverse<(Key, usize)>>,
    /// The cursor whose record was handed out last: advanced on the next call.
    taken: Option<usize>,
}

impl Merge {
    pub(super) fn new(runs: Vec<Run>) -> StoreResult<Self> {
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
    pub(super) fn next(&mut self) -> StoreResult<Option<&[u8]>> {
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
pub(super) struct RunBuilder {
    limits: Limits,
    arena: Vec<u8>,
    order: Vec<(Key, u32)>,
    files: Vec<Run>,
    /// Events pushed in all.
    events: u64,
}

impl RunBuilder {
    pub(super) fn new(limits: Limits) -> Self {
        Self { limits, arena: Vec::new(), order: Vec::new(), files: Vec::new(), events: 0 }
    }

    pub(super) fn push(&mut self, stored: &StoredEvent) -> StoreResult<()> {
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
    pub(super) fn finish(mut self) -> (Vec<Run>, u64) {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::record::decode;
    use super::super::record::tests::event;
    use super::super::record::KINDS_BY_NAME;
    use super::*;
    use crate::events::Kind;

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
