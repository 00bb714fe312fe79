//! Replay on a remote database (sqld), where there is no file to scan with
//! [`crate::store::raw`]: the log read a page per round trip through libSQL's
//! remote client, folded in memory with the live projectors, then
//! - `--check`: compared with the stored views, row by row, by the values
//!   `save` writes;
//! - rebuild: written in one transaction (one round trip) that first checks
//!   the log's head is still the one folded, and otherwise changes nothing
//!   (the operator runs it again): the views are emptied and refilled.
//!
//! Memory holds one row per aggregate (not the log), and the rebuild's
//! batch holds every row: sized for a journal's views, not for millions of rows.

use std::collections::{BTreeMap, HashMap};

use libsql::Value;
use uuid::Uuid;

use super::OnProgress;
use crate::events::log::read_after;
use crate::events::{read_tip, Kind, StoredEvent};
use crate::projection::aggregate::{self, AggregateRow};
use crate::projection::devices::{self, DeviceRow};
use crate::store::remote::hrana::{self, Hrana, Stmt};
use crate::store::{StoreError, StoreResult, UserDb};
use crate::views::{self, aggregates, devices as device_rows, CLIENT_KINDS, COLUMNS};

/// Events read per round trip.
const PAGE: u64 = 1000;

/// Rows as the log folds them, by view and key.
struct Folded {
    events: u64,
    head: u64,
    aggregates: BTreeMap<(Kind, Uuid), AggregateRow>,
    devices: BTreeMap<Uuid, DeviceRow>,
}

async fn fold_log(db: &UserDb, progress: &OnProgress<'_>) -> StoreResult<Folded> {
    let conn = db.read().await?;
    let head = read_tip(&conn).await?.seq;
    let mut folded = Folded { events: 0, head, aggregates: BTreeMap::new(), devices: BTreeMap::new() };
    let mut since = 0;
    while since < head {
        let page = read_after(&conn, since, PAGE.min(head - since)).await?;
        let Some(last) = page.last() else { break };
        since = last.seq;
        for stored in &page {
            fold_one(&mut folded, stored)?;
        }
        folded.events += page.len() as u64;
        progress(folded.events);
    }
    Ok(folded)
}

fn fold_one(folded: &mut Folded, stored: &StoredEvent) -> StoreResult<()> {
    let event = &stored.event;
    if event.kind == Kind::Device {
        let current = folded.devices.remove(&event.aggregate_id);
        if let Some(row) = devices::apply(current, stored)? {
            folded.devices.insert(event.aggregate_id, row);
        }
    } else {
        let key = (event.kind, event.aggregate_id);
        let current = folded.aggregates.remove(&key);
        folded.aggregates.insert(key, aggregate::apply(current, stored).0);
    }
    Ok(())
}

/// What a remote rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct Rebuilt {
    pub events: u64,
    pub rows: u64,
}

/// Rebuilds every view of `db` from its log (see the module's doc).
pub async fn rebuild(db: &UserDb, hrana: &Hrana, progress: &OnProgress<'_>) -> StoreResult<Rebuilt> {
    let folded = fold_log(db, progress).await?;
    let head = hrana::Value::integer(folded.head)?;
    // Fails (and so rolls everything back) unless the head is still the one folded.
    let mut stmts = vec![Stmt::new(
        "SELECT json(CASE WHEN coalesce((SELECT max(seq) FROM events), 0) = ?1 THEN '1' ELSE 'the log moved' END)",
        vec![head],
    )];
    stmts.push(Stmt::new("DELETE FROM devices", Vec::new()));
    for kind in CLIENT_KINDS {
        stmts.push(Stmt::new(format!("DELETE FROM {}", views::client_table(kind)?), Vec::new()));
    }
    let device_insert: &'static str = DEVICE_INSERT.as_str();
    for row in folded.devices.values() {
        stmts.push(Stmt::new(device_insert, converted(device_rows::values(row)?)?));
    }
    for row in folded.aggregates.values() {
        stmts.push(Stmt::new(aggregates::save_sql(row.kind)?, converted(views::values(row)?)?));
    }
    let rows = (folded.devices.len() + folded.aggregates.len()) as u64;
    match hrana.transaction(stmts).await?.failed {
        None => Ok(Rebuilt { events: folded.events, rows }),
        Some((0, _)) => Err(StoreError::Conflict(
            "events were appended while the log was read; nothing was changed: run the replay again".into(),
        )),
        Some((at, error)) => Err(error.into_store_error(&format!("writing the views (statement {at})"))),
    }
}

static DEVICE_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("INSERT INTO devices ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)", device_rows::COLUMNS)
});

fn converted(values: Vec<Value>) -> StoreResult<Vec<hrana::Value>> {
    values.into_iter().map(hrana::Value::try_from).collect()
}

/// What a remote check found.
#[derive(Debug, Clone)]
pub struct Checked {
    pub events: u64,
    pub rows: u64,
    pub differences: u64,
    /// The first row that differs, named.
    pub first: Option<String>,
}

/// Folds the log and compares every view row with the stored one.
pub async fn check(db: &UserDb, progress: &OnProgress<'_>) -> StoreResult<Checked> {
    let folded = fold_log(db, progress).await?;
    let mut expected: HashMap<(&'static str, String), Vec<Value>> = HashMap::new();
    for row in folded.devices.values() {
        expected.insert(("devices", row.device_id.to_string()), device_rows::values(row)?);
    }
    for row in folded.aggregates.values() {
        expected.insert((views::client_table(row.kind)?, row.id.to_string()), views::values(row)?);
    }
    let rows = expected.len() as u64;
    let conn = db.read().await?;
    let mut stored: HashMap<(&'static str, String), Vec<Value>> = HashMap::new();
    // A second stored row of one key (an aggregate's rows are keyed by
    // `created_seq`, not `id`) is a difference of its own, never folded into the first.
    let (mut differences, mut first) = (0, None);
    let mut tables = vec![("devices", device_rows::COLUMNS)];
    for kind in CLIENT_KINDS {
        tables.push((views::client_table(kind)?, COLUMNS));
    }
    for (table, columns) in tables {
        let mut result = conn.query(&format!("SELECT {columns} FROM {table}"), ()).await?;
        while let Some(row) = result.next().await? {
            let values = (0..row.column_count()).map(|idx| row.get_value(idx)).collect::<Result<Vec<_>, _>>()?;
            let key = match values.first() {
                Some(Value::Text(key)) => key.clone(),
                other => return Err(StoreError::Corrupt(format!("{table}: a key that is not text: {other:?}"))),
            };
            match stored.entry((table, key)) {
                std::collections::hash_map::Entry::Occupied(seen) => {
                    differences += 1;
                    first.get_or_insert_with(|| format!("{} {}: more than one stored row", table, seen.key().1));
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(values);
                }
            }
        }
    }
    let mut keys: Vec<_> = expected.keys().chain(stored.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        if expected.get(&key) != stored.get(&key) {
            differences += 1;
            first.get_or_insert_with(|| format!("{} {}", key.0, key.1));
        }
    }
    Ok(Checked { events: folded.events, rows, differences, first })
}
