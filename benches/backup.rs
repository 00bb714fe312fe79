//! `echolia backup` on many users: a full backup, an incremental one after
//! a few users changed, the bytes each stored, and the longest write a
//! concurrent writer saw while a backup ran (against the same writes with
//! no backup running).
//!
//! The data is written straight through the push path's write function
//! (`apply_batch`: log and views in one transaction, 100 events each, 512-byte
//! payloads), then the shipped binary backs it up to a folder.
//!
//! `cargo bench --bench backup` (`BACKUP_BENCH_USERS=1000`,
//! `BACKUP_BENCH_EVENTS=1000` per user, `BACKUP_BENCH_CHANGED=10`;
//! `BACKUP_BENCH_DIR=<dir>` keeps the data and backups there). Figures in
//! benches/README.md.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use echolia::events::version::VersionVector;
use echolia::events::{Kind, LogTx, NewEvent, Op};
use echolia::store::{Backend, ControlDb, UserDb};
use echolia::views::write::apply_batch;
use uuid::Uuid;

const PAYLOAD: usize = 512;
const PER_TX: u64 = 100;

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn entry(device: Uuid, n: u64) -> NewEvent {
    let mut payload = vec![0u8; PAYLOAD];
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte = (n as usize * 31 + i * 7) as u8;
    }
    NewEvent {
        event_id: Uuid::new_v4(),
        kind: Kind::Entry,
        aggregate_id: Uuid::new_v4(),
        parent_id: None,
        op: Op::Put,
        version: VersionVector::single(device, 1),
        payload: Some(payload),
        client_time: Utc::now(),
    }
}

/// Appends `events` entries in transactions of [`PER_TX`]; returns the longest transaction.
async fn push(db: &UserDb, device: Uuid, events: u64) -> Duration {
    let mut longest = Duration::ZERO;
    let mut written = 0;
    while written < events {
        let n = PER_TX.min(events - written);
        let started = Instant::now();
        let mut tx = LogTx::begin(db).await.unwrap();
        apply_batch(&mut tx, device, Utc::now(), (0..n).map(|i| entry(device, written + i)).collect()).await.unwrap();
        tx.commit().await.unwrap();
        longest = longest.max(started.elapsed());
        written += n;
    }
    longest
}

fn backup(data: &Path, to: &Path) -> (serde_json::Value, f64) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_echolia"))
        .args(["backup", "--to", to.to_str().unwrap(), "--json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", data)
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (serde_json::from_slice(&output.stdout).unwrap(), secs)
}

/// Small pushes (10 events) to a rotating set of users until `stop`; the longest one.
async fn writer(dbs: Arc<Vec<(UserDb, Uuid)>>, stop: Arc<AtomicBool>) -> (Duration, u64) {
    let (mut longest, mut pushes, mut i) = (Duration::ZERO, 0u64, 0usize);
    while !stop.load(Ordering::Relaxed) {
        let (db, device) = &dbs[i % dbs.len()];
        let started = Instant::now();
        let mut tx = LogTx::begin(db).await.unwrap();
        apply_batch(&mut tx, *device, Utc::now(), (0..10).map(|n| entry(*device, n)).collect()).await.unwrap();
        tx.commit().await.unwrap();
        longest = longest.max(started.elapsed());
        pushes += 1;
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (longest, pushes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (users, events, changed) =
        (var("BACKUP_BENCH_USERS", 1000), var("BACKUP_BENCH_EVENTS", 1000), var("BACKUP_BENCH_CHANGED", 10));
    let temp = tempfile::tempdir().unwrap();
    let root = std::env::var("BACKUP_BENCH_DIR").map_or_else(|_| temp.path().to_path_buf(), Into::into);
    let (data, target) = (root.join("data"), root.join("backups"));
    let backend = Backend::local(&data);
    let control = ControlDb::open(&backend).await.unwrap();

    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..users {
        let (user, device) = (Uuid::new_v4(), Uuid::new_v4());
        control.insert_user(user, Utc::now()).await.unwrap();
        let db = UserDb::open(&backend, user, true).await.unwrap();
        push(&db, device, events).await;
        ids.push((user, device));
    }
    println!("generated {users} users x {events} events in {:.1} s", started.elapsed().as_secs_f64());

    let (full, full_secs) = backup(&data, &target);
    println!(
        "full backup: {full_secs:.2} s, {} users, {} events, {} bytes stored",
        full["users"], full["events"], full["bytes_copied"]
    );

    for (user, device) in ids.iter().take(changed as usize) {
        let db = UserDb::open(&backend, *user, false).await.unwrap();
        push(&db, *device, 10).await;
    }
    let (incremental, incremental_secs) = backup(&data, &target);
    println!(
        "incremental backup ({changed} users changed): {incremental_secs:.2} s, {} copied, {} unchanged, {} bytes stored of {}",
        incremental["copied"], incremental["unchanged"], incremental["bytes_copied"], incremental["bytes_total"]
    );

    // The longest push while nothing else runs, then while a full backup (to a new folder) runs.
    let mut writers = Vec::new();
    for (user, device) in ids.iter().take(50) {
        writers.push((UserDb::open(&backend, *user, false).await.unwrap(), *device));
    }
    let writers = Arc::new(writers);
    for (label, with_backup) in [("no backup", false), ("during a full backup", true)] {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(writer(writers.clone(), stop.clone()));
        let secs = if with_backup {
            let other = root.join(format!("backups-{}", Uuid::new_v4()));
            tokio::task::spawn_blocking(move || backup(&data_of(&other), &other).1).await.unwrap()
        } else {
            tokio::time::sleep(Duration::from_secs(5)).await;
            5.0
        };
        stop.store(true, Ordering::Relaxed);
        let (longest, pushes) = task.await.unwrap();
        println!(
            "longest push of 10 events, {label}: {:.1} ms ({pushes} pushes over {secs:.1} s)",
            longest.as_secs_f64() * 1e3
        );
    }
}

/// The data directory next to a backup folder of this bench.
fn data_of(backups: &Path) -> std::path::PathBuf {
    backups.parent().unwrap().join("data")
}
