//! Replay against the live write path: a user with random pushes (conflicts,
//! merges, deletes, stale events, retries), rebuilt and checked.
#![cfg(test)]

mod checks;
mod rebuilds;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use libsql::Connection;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use uuid::Uuid;

use super::schema::explicit_indexes;
use super::{check, CheckReport, VIEWS};
use crate::events::device::{DeviceAction, DeviceProfile, DeviceType};
use crate::events::version::VersionVector;
use crate::events::{Kind, LogTx, NewEvent, Op};
use crate::store::{Backend, UserDb};
use crate::views;
use crate::views::write::{apply_batch, record_device as record};

struct Fixture {
    _dir: TempDir,
    db: Arc<UserDb>,
    devices: Vec<Uuid>,
    aggregates: Vec<(Kind, Uuid, Option<Uuid>)>,
    rng: StdRng,
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap()
}

fn profile(name: &str) -> DeviceProfile {
    DeviceProfile {
        device_name: name.into(),
        device_type: DeviceType::Desktop,
        platform: "linux".into(),
        public_key: format!("key of {name}"),
        capabilities: serde_json::Map::new(),
    }
}

async fn device_event(db: &UserDb, actor: Uuid, device: Uuid, action: DeviceAction) {
    let mut tx = LogTx::begin(db).await.unwrap();
    record(&mut tx, actor, device, action, Utc::now()).await.unwrap();
    tx.commit().await.unwrap();
}

async fn push(db: &UserDb, device: Uuid, events: Vec<NewEvent>) {
    let mut tx = LogTx::begin(db).await.unwrap();
    apply_batch(&mut tx, device, Utc::now(), events).await.unwrap();
    tx.commit().await.unwrap();
}

/// A user with three devices (one renamed) and `events` random pushes.
async fn fixture(events: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap());
    let devices: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    device_event(&db, devices[0], devices[0], DeviceAction::Registered(profile("a"))).await;
    device_event(&db, devices[0], devices[1], DeviceAction::Paired(profile("b"))).await;
    device_event(&db, devices[1], devices[2], DeviceAction::Paired(profile("c"))).await;
    let renamed = DeviceAction::Updated { device_name: Some("b2".into()), capabilities: None };
    device_event(&db, devices[1], devices[1], renamed).await;
    let entries: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let mut aggregates: Vec<(Kind, Uuid, Option<Uuid>)> = entries.iter().map(|e| (Kind::Entry, *e, None)).collect();
    aggregates.extend((0..3).map(|_| (Kind::Memory, Uuid::new_v4(), None)));
    aggregates.extend((0..2).map(|i| (Kind::Tag, Uuid::new_v4(), Some(entries[i]))));
    aggregates.extend((0..2).map(|i| (Kind::Embedding, Uuid::new_v4(), Some(entries[i]))));
    let mut fx = Fixture { _dir: dir, db, devices, aggregates, rng: StdRng::seed_from_u64(5) };
    fx.random_pushes(events).await;
    fx
}

impl Fixture {
    /// Pushes from random devices with partial knowledge of each other:
    /// edits, conflicts, merges, deletes, stale events and retried batches.
    async fn random_pushes(&mut self, events: usize) {
        let mut known: HashMap<(usize, usize), VersionVector> = HashMap::new();
        let mut pushed = 0;
        while pushed < events {
            let d = self.rng.random_range(0..self.devices.len());
            let device = self.devices[d];
            let size = self.rng.random_range(1..=6);
            let mut batch = Vec::new();
            for _ in 0..size {
                let a = self.rng.random_range(0..self.aggregates.len());
                let (kind, id, parent) = self.aggregates[a];
                if self.rng.random_bool(0.3) {
                    // Learn what the others did (a pull).
                    let everyone: Vec<VersionVector> =
                        (0..self.devices.len()).filter_map(|o| known.get(&(o, a)).cloned()).collect();
                    let mine = known.entry((d, a)).or_default();
                    everyone.iter().for_each(|v| mine.merge(v));
                }
                let mine = known.entry((d, a)).or_default();
                let stale = self.rng.random_bool(0.05) && mine.get(&device) > 1;
                let version = if stale {
                    VersionVector::single(device, 1)
                } else {
                    let next = mine.get(&device) + 1;
                    mine.merge(&VersionVector::single(device, next));
                    mine.clone()
                };
                let delete = self.rng.random_bool(0.15);
                batch.push(NewEvent {
                    event_id: Uuid::new_v4(),
                    kind,
                    aggregate_id: id,
                    parent_id: parent,
                    op: if delete { Op::Delete } else { Op::Put },
                    version,
                    payload: (!delete).then(|| vec![self.rng.random(); 16]),
                    client_time: at(),
                });
            }
            pushed += batch.len();
            push(&self.db, device, batch.clone()).await;
            if self.rng.random_bool(0.1) {
                push(&self.db, device, batch).await; // a retry: all duplicates
            }
        }
    }
}

async fn clean_check(db: &Arc<UserDb>) -> CheckReport {
    let report = check(db, &|_| {}).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.first);
    assert_eq!(report.stored, report.replayed);
    report
}

async fn schema(conn: &Connection) -> Vec<(String, String, String)> {
    let sql = "SELECT type, name, tbl_name FROM sqlite_master ORDER BY type, name";
    let mut rows = conn.query(sql, ()).await.unwrap();
    let mut names = Vec::new();
    while let Some(row) = rows.next().await.unwrap() {
        names.push((row.get(0).unwrap(), row.get(1).unwrap(), row.get(2).unwrap()));
    }
    names
}

/// The explicit indexes of the views, by name without `_replay`.
async fn view_indexes(conn: &Connection) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for view in VIEWS {
        for (name, _) in explicit_indexes(conn, view.table).await.unwrap() {
            all.push((view.table.to_owned(), name.trim_end_matches("_replay").to_owned()));
        }
    }
    all.sort();
    all
}

#[test]
fn every_view_is_listed_with_its_key_first() {
    for view in VIEWS {
        assert_eq!(view.column_names().next(), Some(view.key));
        if view.kind != Kind::Device {
            assert_eq!(views::table(view.kind), Some(view.table));
        }
    }
    assert!(VIEWS.windows(2).all(|w| w[0].kind.as_str() < w[1].kind.as_str()), "the sorted log's order");
    let mut kinds: Vec<Kind> = VIEWS.iter().map(|v| v.kind).collect();
    kinds.sort();
    assert_eq!(kinds, [Kind::Entry, Kind::Memory, Kind::Tag, Kind::Embedding, Kind::Device]);
}
