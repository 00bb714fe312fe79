//! Replay throughput and memory on one user with a big log.
//!
//! The log is generated straight through the append path (`LogTx::append`,
//! 10,000 events a transaction: far faster than HTTP), with a journal-like
//! mix: entries created and edited a few times, sometimes concurrently by a
//! second device and then merged, tags and embeddings of entries, memories,
//! deletes; 512-byte payloads. Then `rebuild` (shadow tables + swap), `check`
//! and `verify` are timed, each with the process's peak RSS (VmHWM, reset
//! before each phase through /proc/self/clear_refs), at two log sizes to show
//! memory does not grow with the log.
//!
//! `cargo bench --bench replay` (sizes: `REPLAY_BENCH_EVENTS=100000,1000000`,
//! the default). `REPLAY_BENCH_DIR=<dir>` keeps the data there (for
//! `/usr/bin/time -v echolia replay --user <id>`). Figures in benches/README.md.

use std::time::Instant;

use chrono::Utc;
use echolia::events::device::{DeviceAction, DeviceProfile, DeviceType};
use echolia::events::verify::verify_log;
use echolia::events::version::VersionVector;
use echolia::events::{Kind, LogTx, NewEvent, Op};
use echolia::replay;
use echolia::store::{Backend, UserDb};
use echolia::views::write::record_device;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use uuid::Uuid;

const PAYLOAD: usize = 512;
const PER_TX: usize = 10_000;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS to the current RSS (Linux ≥ 4.0).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Generator {
    rng: StdRng,
    devices: Vec<Uuid>,
    entries: Vec<Uuid>,
}

impl Generator {
    fn payload(&mut self) -> Option<Vec<u8>> {
        let mut bytes = vec![0; PAYLOAD];
        self.rng.fill_bytes(&mut bytes);
        Some(bytes)
    }

    fn event(&mut self, kind: Kind, id: Uuid, parent: Option<Uuid>, version: VersionVector, delete: bool) -> NewEvent {
        NewEvent {
            event_id: Uuid::new_v4(),
            kind,
            aggregate_id: id,
            parent_id: parent,
            op: if delete { Op::Delete } else { Op::Put },
            version,
            payload: if delete { None } else { self.payload() },
            client_time: Utc::now(),
        }
    }

    /// One editing session: (device, event) pairs in log order.
    fn session(&mut self) -> Vec<(Uuid, NewEvent)> {
        let (a, b) = (self.rng.random_range(0..3), self.rng.random_range(0..3));
        let (me, other) = (self.devices[a], self.devices[(a + 1 + b % 2) % 3]);
        let mut out = Vec::new();
        if self.rng.random_bool(0.15) {
            let id = Uuid::new_v4();
            out.push((me, self.event(Kind::Memory, id, None, VersionVector::single(me, 1), false)));
        }
        let entry = if self.entries.is_empty() || self.rng.random_bool(0.7) {
            let id = Uuid::new_v4();
            self.entries.push(id);
            id
        } else {
            self.entries[self.rng.random_range(0..self.entries.len())]
        };
        let base = self.rng.random_range(1..1000u64) * 10;
        let mut version = VersionVector::single(me, base);
        out.push((me, self.event(Kind::Entry, entry, None, version.clone(), false)));
        for _ in 0..self.rng.random_range(0..4) {
            version.merge(&VersionVector::single(me, version.get(&me) + 1));
            out.push((me, self.event(Kind::Entry, entry, None, version.clone(), false)));
        }
        if self.rng.random_bool(0.2) {
            // A concurrent edit elsewhere, then a merge: a conflict, resolved.
            let mut theirs = version.clone();
            theirs.merge(&VersionVector::single(other, theirs.get(&other) + 1));
            version.merge(&VersionVector::single(me, version.get(&me) + 1));
            out.push((me, self.event(Kind::Entry, entry, None, version.clone(), false)));
            out.push((other, self.event(Kind::Entry, entry, None, theirs.clone(), false)));
            version.merge(&theirs);
            version.merge(&VersionVector::single(me, version.get(&me) + 1));
            out.push((me, self.event(Kind::Entry, entry, None, version.clone(), false)));
        }
        for _ in 0..self.rng.random_range(0..3) {
            let tag = Uuid::new_v4();
            out.push((me, self.event(Kind::Tag, tag, Some(entry), VersionVector::single(me, 1), false)));
        }
        let embedding = Uuid::new_v4();
        out.push((me, self.event(Kind::Embedding, embedding, Some(entry), VersionVector::single(me, 1), false)));
        if self.rng.random_bool(0.05) {
            version.merge(&VersionVector::single(me, version.get(&me) + 1));
            out.push((me, self.event(Kind::Entry, entry, None, version, true)));
        }
        out
    }
}

async fn generate(db: &UserDb, events: u64) {
    let devices: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let mut tx = LogTx::begin(db).await.unwrap();
    for (i, device) in devices.iter().enumerate() {
        let profile = DeviceProfile {
            device_name: format!("device {i}"),
            device_type: DeviceType::Desktop,
            platform: "linux".into(),
            public_key: "bench".into(),
            capabilities: serde_json::Map::new(),
        };
        let action = if i == 0 { DeviceAction::Registered(profile) } else { DeviceAction::Paired(profile) };
        record_device(&mut tx, devices[0], *device, action, Utc::now()).await.unwrap();
    }
    let mut generator = Generator { rng: StdRng::seed_from_u64(2026), devices, entries: Vec::new() };
    let (mut written, mut in_tx) = (3u64, 0usize);
    while written < events {
        for (device, event) in generator.session() {
            if written >= events {
                break;
            }
            tx.append(device, Utc::now(), event).await.unwrap();
            written += 1;
            in_tx += 1;
        }
        if in_tx >= PER_TX {
            tx.commit().await.unwrap();
            tx = LogTx::begin(db).await.unwrap();
            in_tx = 0;
        }
        if generator.entries.len() > 50_000 {
            generator.entries.drain(..25_000);
        }
    }
    tx.commit().await.unwrap();
}

async fn measure(events: u64, keep: Option<&str>) {
    let temp = tempfile::tempdir().unwrap();
    let dir = keep.map_or_else(|| temp.path().to_path_buf(), std::path::PathBuf::from);
    let user = Uuid::new_v4();
    let backend = Backend::local(&dir);
    // The control directory names the user, so `echolia replay --all` finds it too.
    let control = echolia::store::ControlDb::open(&backend).await.unwrap();
    control.insert_user(user, Utc::now()).await.unwrap();
    let db = std::sync::Arc::new(UserDb::open(&backend, user, true).await.unwrap());

    let started = Instant::now();
    generate(&db, events).await;
    let secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(dir.join(format!("users/{user}.db"))).map_or(0, |m| m.len());
    println!(
        "{events} events: generated in {secs:.1} s ({:.0} events/s), database {:.0} MiB",
        events as f64 / secs,
        bytes as f64 / (1024.0 * 1024.0)
    );

    reset_peak();
    let baseline = status_kib("VmRSS:");
    let started = Instant::now();
    let report = replay::rebuild(&db, &|_| {}).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(report.events, events);
    println!(
        "  rebuild: {secs:.2} s, {:.0} events/s, {} view rows; peak RSS {:.1} MiB (before {:.1} MiB)",
        events as f64 / secs,
        report.rows,
        mib(status_kib("VmHWM:")),
        mib(baseline)
    );

    reset_peak();
    let started = Instant::now();
    let checked = replay::check(&db, &|_| {}).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(checked.is_clean(), "{:?}", checked.first);
    println!(
        "  check:   {secs:.2} s, {:.0} events/s; peak RSS {:.1} MiB",
        events as f64 / secs,
        mib(status_kib("VmHWM:"))
    );

    reset_peak();
    let started = Instant::now();
    let verified = verify_log(&db.read().await.unwrap(), &|_| {}).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(verified.broken.is_none());
    println!(
        "  verify:  {secs:.2} s, {:.0} events/s; peak RSS {:.1} MiB",
        events as f64 / secs,
        mib(status_kib("VmHWM:"))
    );
    if keep.is_some() {
        println!("  kept: DATA_DIR={} user {user}", dir.display());
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is ignored.
    let sizes: Vec<u64> = std::env::var("REPLAY_BENCH_EVENTS")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let keep = std::env::var("REPLAY_BENCH_DIR").ok();
    let largest = sizes.iter().max().copied();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for events in sizes {
        // Only the largest log is kept when asked to keep one.
        runtime.block_on(measure(events, keep.as_deref().filter(|_| Some(events) == largest)));
    }
}
