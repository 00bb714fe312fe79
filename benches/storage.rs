//! The storage shape of the push path alone: no HTTP, no projector. Per event: the duplicate check, the log
//! insert, the view row's load and upsert (plus what a variant adds), 1,000 events a transaction, one user,
//! the server's connection settings (`store::connect`: WAL, `synchronous=FULL`). Schema variants side by
//! side, each on a fresh database, to see how many random-keyed B-tree pages an event costs as the log grows:
//! three quarters of the events create an aggregate, a quarter edit an earlier one, 512-byte payloads.
//!
//! `cargo bench --bench storage` — `STORAGE_BENCH_EVENTS` (default 500000), `STORAGE_BENCH_IDS` (`v4,v7`),
//! `STORAGE_BENCH_VARIANTS` (default: all, by name). Prints events/s per slice of a tenth of the log, and the
//! bytes the process wrote per event (WAL and checkpoints, from /proc/self/io); for the in-memory id variants,
//! also how long reading the log's ids back into memory takes (a writer's first transaction after an open).

use std::time::Instant;

use libsql::Connection;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use uuid::Uuid;

const PER_TX: usize = 1_000;
const PAYLOAD: usize = 512;

/// One schema and the statements of the write path over it. Parameters: `find` (?1 event id, ?2 aggregate
/// id); `insert` (?1 seq, ?2 event id, ?3 device, ?4 aggregate, ?5 version, ?6 payload, ?7 time, ?8 hash);
/// `after_insert` likewise; `load` (?1 aggregate id); `save` (?1 id, ?2 heads, ?3 version, ?4 updated seq).
struct Variant {
    name: &'static str,
    /// Ids stored as 16-byte blobs rather than 36-byte text.
    blob_ids: bool,
    /// The duplicate check against an in-memory set of the log's event ids (no `find` statement).
    memory_ids: bool,
    /// View rows found through an in-memory map of aggregate id to rowid: no index on the view's id, so no
    /// random-keyed B-tree at all (`load` then takes ?1 the rowid; `save` ?1 the rowid, ?2 the id, then as above).
    memory_aggregates: bool,
    schema: &'static str,
    find: &'static str,
    insert: &'static str,
    after_insert: Option<&'static str>,
    load: &'static str,
    save: &'static str,
}

const EVENTS: &str = "CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id ANY NOT NULL {UNIQUE}, device_id ANY NOT NULL, \
     kind TEXT NOT NULL, aggregate_id ANY NOT NULL, parent_id ANY, op TEXT NOT NULL, version TEXT NOT NULL, payload BLOB, \
     client_time TEXT NOT NULL, received_at TEXT NOT NULL, hash BLOB NOT NULL) STRICT; \
     CREATE INDEX events_by_device ON events (device_id, seq);";
const INSERT: &str = "INSERT INTO events VALUES (?1, ?2, ?3, 'entry', ?4, NULL, 'put', ?5, ?6, ?7, ?7, ?8)";
const UPSERT: &str = "INSERT INTO entries (id, parent_id, heads, version, deleted, conflict, updated_seq) \
     VALUES (?1, NULL, ?2, ?3, 0, 0, ?4) ON CONFLICT (id) DO UPDATE SET heads = excluded.heads, \
     version = excluded.version, updated_seq = excluded.updated_seq";

fn variants() -> Vec<Variant> {
    let events_unique = EVENTS.replace("{UNIQUE}", "UNIQUE").leak();
    let events_plain = EVENTS.replace("{UNIQUE}", "").leak();
    let entries =
        "CREATE TABLE entries (id ANY PRIMARY KEY, parent_id ANY, heads TEXT NOT NULL, version TEXT NOT NULL, \
         deleted INTEGER NOT NULL, conflict INTEGER NOT NULL, updated_seq INTEGER NOT NULL) STRICT";
    let by_seq = "CREATE UNIQUE INDEX entries_by_updated_seq ON entries (updated_seq)";
    let load = "SELECT heads, version, updated_seq FROM entries WHERE id = ?1";
    let find = "SELECT seq FROM events WHERE event_id = ?1";
    let leak = |parts: &[&str]| -> &'static str { parts.join("; ").leak() };
    vec![
        Variant {
            name: "current",
            blob_ids: false,
            memory_ids: false,
            memory_aggregates: false,
            schema: leak(&[events_unique, entries, by_seq]),
            find,
            insert: INSERT,
            after_insert: None,
            load,
            save: UPSERT,
        },
        Variant {
            name: "blob-ids",
            blob_ids: true,
            memory_ids: false,
            memory_aggregates: false,
            schema: leak(&[events_unique, entries, by_seq]),
            find,
            insert: INSERT,
            after_insert: None,
            load,
            save: UPSERT,
        },
        Variant {
            name: "view-clustered",
            blob_ids: true,
            memory_ids: false,
            memory_aggregates: false,
            schema: leak(&[events_unique, &format!("{entries}, WITHOUT ROWID"), by_seq]),
            find,
            insert: INSERT,
            after_insert: None,
            load,
            save: UPSERT,
        },
        // Pull's order from a narrow, append-only change list instead of an index that moves with every edit.
        Variant {
            name: "clustered-changes",
            blob_ids: true,
            memory_ids: false,
            memory_aggregates: false,
            schema: leak(&[
                events_unique,
                &format!("{entries}, WITHOUT ROWID"),
                "CREATE TABLE changes (seq INTEGER PRIMARY KEY, id ANY NOT NULL) STRICT",
            ]),
            find,
            insert: INSERT,
            after_insert: Some("INSERT INTO changes VALUES (?1, ?4)"),
            load,
            save: UPSERT,
        },
        // Idempotency where the aggregate's row already is: the view rows and the event ids of each aggregate
        // share one clustered table, keyed (aggregate id, event id; the view row under an empty event id). No
        // global event-id index: a reused event id is seen only on its own aggregate.
        Variant {
            name: "per-aggregate-ids",
            blob_ids: true,
            memory_ids: false,
            memory_aggregates: false,
            schema: leak(&[
                events_plain,
                "CREATE TABLE entries (id ANY NOT NULL, event_id ANY NOT NULL, seq INTEGER, heads TEXT, version TEXT, \
                 updated_seq INTEGER, PRIMARY KEY (id, event_id)) STRICT, WITHOUT ROWID",
                "CREATE TABLE changes (seq INTEGER PRIMARY KEY, id ANY NOT NULL) STRICT",
            ]),
            find: "SELECT seq FROM entries WHERE id = ?2 AND event_id = ?1",
            insert: INSERT,
            after_insert: Some(
                "INSERT INTO entries (id, event_id, seq) VALUES (?4, ?2, ?1); INSERT INTO changes VALUES (?1, ?4)",
            ),
            load: "SELECT heads, version, updated_seq FROM entries WHERE id = ?1 AND event_id = x''",
            save: "INSERT INTO entries (id, event_id, heads, version, updated_seq) VALUES (?1, x'', ?2, ?3, ?4) \
                   ON CONFLICT (id, event_id) DO UPDATE SET heads = excluded.heads, version = excluded.version, \
                   updated_seq = excluded.updated_seq",
        },
        // The log without an event-id index: the duplicate check is an in-memory set of the log's ids.
        Variant {
            name: "memory-ids",
            blob_ids: false,
            memory_ids: true,
            memory_aggregates: false,
            schema: leak(&[events_plain, entries, by_seq]),
            find,
            insert: INSERT,
            after_insert: None,
            load,
            save: UPSERT,
        },
        Variant {
            name: "memory-blob-ids",
            blob_ids: true,
            memory_ids: true,
            memory_aggregates: false,
            schema: leak(&[events_plain, entries, by_seq]),
            find,
            insert: INSERT,
            after_insert: None,
            load,
            save: UPSERT,
        },
        // No random-keyed B-tree written: the view's rows are found by rowid through an in-memory map, as
        // the event ids are through the in-memory set.
        Variant {
            name: "memory-aggregates",
            blob_ids: false,
            memory_ids: true,
            memory_aggregates: true,
            schema: leak(&[events_plain, &entries.replace("id ANY PRIMARY KEY", "id ANY NOT NULL"), by_seq]),
            find,
            insert: INSERT,
            after_insert: None,
            load: "SELECT heads, version, updated_seq FROM entries WHERE rowid = ?1",
            save: "INSERT INTO entries (rowid, id, parent_id, heads, version, deleted, conflict, updated_seq) \
                   VALUES (?1, ?2, NULL, ?3, ?4, 0, 0, ?5) ON CONFLICT (rowid) DO UPDATE SET heads = excluded.heads, \
                   version = excluded.version, updated_seq = excluded.updated_seq",
        },
    ]
}

fn id(variant: &Variant, id: Uuid) -> libsql::Value {
    if variant.blob_ids {
        libsql::Value::Blob(id.as_bytes().to_vec())
    } else {
        libsql::Value::Text(id.to_string())
    }
}

fn new_id(rng: &mut StdRng, v7: bool, at: u64) -> Uuid {
    if v7 {
        let mut random = [0u8; 10];
        rng.fill_bytes(&mut random);
        uuid::Builder::from_unix_timestamp_millis(1_800_000_000_000 + at, &random).into_uuid()
    } else {
        uuid::Builder::from_random_bytes(rng.random()).into_uuid()
    }
}

fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The statements of `sql` (separated by `; `), prepared, each with how many of the values it takes.
async fn prepare_all(conn: &Connection, sql: &str) -> Vec<(libsql::Statement, usize)> {
    let mut prepared = Vec::new();
    for statement in sql.split("; ") {
        let takes = (1..=8).rev().find(|n| statement.contains(&format!("?{n}"))).unwrap_or(0);
        prepared.push((conn.prepare(statement).await.unwrap(), takes));
    }
    prepared
}

async fn run(variant: &Variant, events: u64, v7: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = libsql::Builder::new_local(dir.path().join("user.db")).build().await.unwrap();
    let conn = echolia::store::connect(&db).await.unwrap();
    conn.query("PRAGMA journal_mode = WAL", ()).await.unwrap();
    conn.execute_batch(variant.schema).await.unwrap();

    let mut rng = StdRng::seed_from_u64(7);
    let devices = [Uuid::new_v4(), Uuid::new_v4()];
    let mut aggregates: Vec<Uuid> = Vec::new();
    let mut payload = vec![0u8; PAYLOAD];
    let slice = (events / 10).max(1);
    let (started, written) = (Instant::now(), written_bytes());
    let mut slice_started = Instant::now();
    let mut rates = Vec::new();
    let mut seq = 0u64;
    let mut known = std::collections::HashSet::new();
    let mut rowids: std::collections::HashMap<Uuid, i64> = std::collections::HashMap::new();
    while seq < events {
        let device = devices[(seq / PER_TX as u64 % 2) as usize];
        let tx = conn.transaction().await.unwrap();
        let find = tx.prepare(variant.find).await.unwrap();
        let load = tx.prepare(variant.load).await.unwrap();
        let insert = tx.prepare(variant.insert).await.unwrap();
        let save = tx.prepare(variant.save).await.unwrap();
        let after = match variant.after_insert {
            Some(sql) => prepare_all(&tx, sql).await,
            None => Vec::new(),
        };
        for _ in 0..PER_TX.min((events - seq) as usize) {
            seq += 1;
            let edit = !aggregates.is_empty() && rng.random_bool(0.25);
            let aggregate = if edit {
                aggregates[rng.random_range(0..aggregates.len())]
            } else {
                let fresh = new_id(&mut rng, v7, seq);
                aggregates.push(fresh);
                fresh
            };
            let event_id = new_id(&mut rng, v7, seq);
            if variant.memory_ids {
                assert!(known.insert(event_id));
            } else {
                find.reset();
                assert!(find
                    .query([id(variant, event_id), id(variant, aggregate)])
                    .await
                    .unwrap()
                    .next()
                    .await
                    .unwrap()
                    .is_none());
            }
            rng.fill_bytes(&mut payload);
            let version = format!("{{\"{device}\":{seq}}}");
            let values = vec![
                libsql::Value::Integer(seq as i64),
                id(variant, event_id),
                id(variant, device),
                id(variant, aggregate),
                libsql::Value::Text(version.clone()),
                libsql::Value::Blob(payload.clone()),
                libsql::Value::Text("2026-12-07T00:00:00.000000Z".into()),
                libsql::Value::Blob(vec![seq as u8; 32]),
            ];
            insert.reset();
            insert.execute(values.clone()).await.unwrap();
            for (statement, takes) in &after {
                statement.reset();
                statement.execute(values[..*takes].to_vec()).await.unwrap();
            }
            load.reset();
            let key = if variant.memory_aggregates {
                let next = rowids.len() as i64 + 1;
                libsql::Value::Integer(*rowids.entry(aggregate).or_insert(next))
            } else {
                id(variant, aggregate)
            };
            let current = load.query([key.clone()]).await.unwrap().next().await.unwrap().is_some();
            assert_eq!(current, edit);
            let mut row = vec![
                key,
                libsql::Value::Text(format!("[{seq}]")),
                libsql::Value::Text(version),
                libsql::Value::Integer(seq as i64),
            ];
            if variant.memory_aggregates {
                row.insert(1, id(variant, aggregate));
            }
            save.reset();
            save.execute(row).await.unwrap();
            if seq.is_multiple_of(slice) {
                rates.push(slice as f64 / slice_started.elapsed().as_secs_f64());
                slice_started = Instant::now();
            }
        }
        drop((find, load, insert, save, after));
        tx.commit().await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let per_event = (written_bytes() - written) as f64 / events as f64;
    if variant.memory_ids {
        // What the writer's first transaction after an open pays: the log's ids read back into memory.
        let loading = Instant::now();
        let mut rows = conn.query("SELECT seq, event_id FROM events WHERE seq > 0 ORDER BY seq", ()).await.unwrap();
        let mut index = std::collections::HashMap::new();
        while let Some(row) = rows.next().await.unwrap() {
            let id = match row.get_value(1).unwrap() {
                libsql::Value::Blob(bytes) => Uuid::from_slice(&bytes).unwrap(),
                libsql::Value::Text(text) => Uuid::parse_str(&text).unwrap(),
                other => panic!("event_id {other:?}"),
            };
            index.insert(id, row.get::<u64>(0).unwrap());
        }
        println!(
            "{:<18} the index of {} ids read back in {:.0} ms",
            variant.name,
            index.len(),
            loading.elapsed().as_secs_f64() * 1000.0
        );
    }
    let rates: Vec<String> = rates.iter().map(|r| format!("{:.1}", r / 1000.0)).collect();
    println!(
        "{:<18} {}: {:>7.0} events/s, {:>6.0} bytes written an event; k events/s by tenth: {}",
        variant.name,
        if v7 { "v7" } else { "v4" },
        events as f64 / secs,
        per_event,
        rates.join(" ")
    );
}

fn main() {
    let events: u64 = std::env::var("STORAGE_BENCH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(500_000);
    let ids = std::env::var("STORAGE_BENCH_IDS").unwrap_or_else(|_| "v4,v7".into());
    let only = std::env::var("STORAGE_BENCH_VARIANTS").ok();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for variant in variants() {
        if only.as_deref().is_some_and(|only| !only.split(',').any(|name| name == variant.name)) {
            continue;
        }
        for kind in ids.split(',') {
            runtime.block_on(run(&variant, events, kind == "v7"));
        }
    }
}
