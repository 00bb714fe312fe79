//! Replay equals live: after a randomized workload of pushes from several
//! devices (conflicts, deletes, stale events, retried batches, device
//! events), dropping the views and replaying the log with the real binary —
//! while the server runs — gives identical pull results and checksum.

use std::collections::{HashMap, HashSet};

use echolia::events::version::VersionVector;
use echolia::replay::{self, VIEWS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cli::echolia;
use crate::helpers::{event, spawn_app, Session, TestApp};

/// Random pushes by `devices` with partial knowledge of each other. Returns
/// the push statuses seen.
async fn workload(app: &TestApp, devices: &[Session], rng: &mut StdRng, batches: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    let entries: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let mut aggregates: Vec<(&str, Uuid, Option<Uuid>)> = entries.iter().map(|e| ("entry", *e, None)).collect();
    aggregates.extend((0..3).map(|_| ("memory", Uuid::new_v4(), None)));
    aggregates.extend((0..3).map(|i| ("tag", Uuid::new_v4(), Some(entries[i]))));
    aggregates.extend((0..2).map(|i| ("embedding", Uuid::new_v4(), Some(entries[i]))));
    let mut known: HashMap<(usize, usize), VersionVector> = HashMap::new();
    for _ in 0..batches {
        let d = rng.random_range(0..devices.len());
        let device = devices[d].device_id;
        let mut batch = Vec::new();
        for _ in 0..rng.random_range(1..=8) {
            let a = rng.random_range(0..aggregates.len());
            let (kind, id, parent) = aggregates[a];
            if rng.random_bool(0.35) {
                let everyone: Vec<VersionVector> =
                    (0..devices.len()).filter_map(|o| known.get(&(o, a)).cloned()).collect();
                let mine = known.entry((d, a)).or_default();
                everyone.iter().for_each(|v| mine.merge(v));
            }
            let mine = known.entry((d, a)).or_default();
            let version = if rng.random_bool(0.05) && mine.get(&device) > 1 {
                VersionVector::single(device, 1) // an old edit arriving late: stale
            } else {
                mine.merge(&VersionVector::single(device, mine.get(&device) + 1));
                mine.clone()
            };
            let pairs: Vec<(Uuid, u64)> = version.iter().map(|(d, c)| (*d, *c)).collect();
            let delete = rng.random_bool(0.15);
            let payload: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            let mut ev =
                event(kind, id, if delete { "delete" } else { "put" }, &pairs, (!delete).then_some(&payload[..]));
            if let Some(parent) = parent {
                ev["parent_id"] = json!(parent);
            }
            batch.push(ev);
        }
        let pushed = app.push_ok(&devices[d], &batch).await;
        seen.extend(pushed["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap().to_owned()));
        if rng.random_bool(0.1) {
            let retried = app.push_ok(&devices[d], &batch).await;
            assert!(retried["results"].as_array().unwrap().iter().all(|r| r["status"] == "duplicate"));
            seen.insert("duplicate".into());
        }
    }
    seen
}

/// Every page of a pull from 0, small pages so paging is exercised.
async fn pull_all(app: &TestApp, session: &Session) -> Vec<Value> {
    let (mut since, mut pages) = (0u64, Vec::new());
    loop {
        let page = app.pull(session, &format!("since={since}&limit=7")).await;
        since = page["cursor"].as_u64().unwrap();
        let more = page["has_more"] == true;
        pages.push(page);
        if !more {
            return pages;
        }
    }
}

async fn checksum(app: &TestApp, user: Uuid) -> [u8; 32] {
    let db = app.state.users.get(user).await.unwrap();
    replay::checksum(&db.read().await.unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_views_and_replaying_gives_identical_pulls_and_checksum() {
    let app = spawn_app().await;
    let a = app.register().await;
    let b = app.pair(&a, "B").await;
    let c = app.pair(&a, "C").await;
    let seed: u64 = rand::random();
    eprintln!("workload seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let seen = workload(&app, &[a.clone(), b.clone(), c.clone()], &mut rng, 120).await;
    for status in ["applied", "conflict", "stale", "duplicate"] {
        assert!(seen.contains(status), "the workload produced no `{status}`");
    }
    let renamed = app.client.patch(app.url("/auth/devices/current")).bearer_auth(&b.access_token);
    let resp = renamed.json(&json!({"device_name": "B renamed"})).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app.delete(&format!("/auth/device/{}", c.device_id), &a.access_token).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let pulls = pull_all(&app, &a).await;
    let status: Value = app.get("/sync/status", &a.access_token).await.json().await.unwrap();
    let devices = app.devices(&a).await;
    let live = checksum(&app, a.user_id).await;

    let conn = app.open_user_db(a.user_id).await;
    for view in VIEWS {
        conn.execute(&format!("DROP TABLE {}", view.table), ()).await.unwrap();
    }
    let user = a.user_id.to_string();
    let run = echolia(app.data_dir(), &["replay", "--user", &user]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("replayed"), "{}", run.stdout);

    assert_eq!(checksum(&app, a.user_id).await, live);
    assert_eq!(pull_all(&app, &a).await, pulls);
    let again: Value = app.get("/sync/status", &a.access_token).await.json().await.unwrap();
    assert_eq!(again, status);
    assert_eq!(app.devices(&a).await, devices);
    let run = echolia(app.data_dir(), &["replay", "--check", "--user", &user]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains(&format!("checksum {}", hex::encode(live))), "{}", run.stdout);
}

/// A user with two devices, after a random workload of 60 batches (its seed printed).
async fn two_devices_after_a_workload(app: &TestApp) -> (Session, Session) {
    let a = app.register().await;
    let b = app.pair(&a, "B").await;
    let seed: u64 = rand::random();
    eprintln!("workload seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    workload(app, &[a.clone(), b.clone()], &mut rng, 60).await;
    (a, b)
}

/// Heads in the shape view rows stored them before
/// `schema/user/0003_view_heads_as_seqs.sql`, an array of head objects, rebuilt here
/// from the log (not byte for byte: the migration reads only their `seq`).
const WHOLE_HEADS: &str = "(SELECT json_group_array(json_object('seq', e.seq, 'event_id', e.event_id, \
     'device_id', e.device_id, 'op', e.op, 'version', json(e.version), 'client_time', e.client_time) \
     ORDER BY h.key) FROM json_each(heads) AS h JOIN events AS e ON e.seq = h.value)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_with_whole_heads_are_migrated_to_seqs_and_pull_the_same() {
    let app = spawn_app().await;
    let (a, b) = two_devices_after_a_workload(&app).await;
    // An entry in conflict for sure: two devices' concurrent edits.
    let entry = Uuid::new_v4();
    for device in [&a, &b] {
        let edit = event("entry", entry, "put", &[(device.device_id, 1)], Some(b"edit"));
        app.push_ok(device, &[edit]).await;
    }
    let pulls = pull_all(&app, &a).await;
    let live = checksum(&app, a.user_id).await;

    let conn = app.open_user_db(a.user_id).await;
    for table in ["entries", "memories", "tags", "embeddings"] {
        conn.execute(&format!("UPDATE {table} SET heads = {WHOLE_HEADS}"), ()).await.unwrap();
    }
    let migration = "schema/user/0003_view_heads_as_seqs.sql";
    conn.execute("DELETE FROM schema_migrations WHERE name = ?1", [migration]).await.unwrap();
    let mut rows = conn.query("SELECT heads FROM entries WHERE id = ?1", [entry.to_string()]).await.unwrap();
    let old: String = rows.next().await.unwrap().unwrap().get(0).unwrap();
    drop(rows);
    assert!(old.starts_with("[{\"seq\":") && old.contains("},{\"seq\":"), "{old}");
    assert_ne!(checksum(&app, a.user_id).await, live);
    // A dropped view is no obstacle: the migration skips it, and replay brings it back.
    conn.execute("DROP TABLE memories", ()).await.unwrap();

    let run = echolia(app.data_dir(), &["migrate"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains(&format!("user {}: applied {migration}", a.user_id)), "{}", run.stdout);
    let user = a.user_id.to_string();
    let run = echolia(app.data_dir(), &["replay", "--user", &user]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(checksum(&app, a.user_id).await, live);
    assert_eq!(pull_all(&app, &a).await, pulls);
    let run = echolia(app.data_dir(), &["replay", "--check", "--user", &user]);
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_while_devices_push_loses_nothing_and_check_finds_stale_views() {
    let app = spawn_app().await;
    let a = app.register().await;
    let b = app.pair(&a, "B").await;
    let mut rng = StdRng::seed_from_u64(7);
    workload(&app, &[a.clone(), b.clone()], &mut rng, 60).await;

    let user = a.user_id.to_string();
    let dir = app.data_dir().to_path_buf();
    let replaying = tokio::task::spawn_blocking(move || {
        (0..3).map(|_| echolia(&dir, &["replay", "--user", &user])).collect::<Vec<_>>()
    });
    let mut rng = StdRng::seed_from_u64(8);
    workload(&app, &[a.clone(), b.clone()], &mut rng, 40).await;
    for run in replaying.await.unwrap() {
        assert_eq!(run.code, Some(0), "{run:?}");
    }
    let run = echolia(app.data_dir(), &["replay", "--all", "--check"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains("checked 1 users") && run.stdout.contains("0 with views that differ"),
        "{}",
        run.stdout
    );

    // A view that drifted from the log is found, named, and replay repairs it.
    let conn = app.open_user_db(a.user_id).await;
    conn.execute("UPDATE entries SET deleted = 1 - deleted WHERE id = (SELECT min(id) FROM entries)", ())
        .await
        .unwrap();
    let run = echolia(app.data_dir(), &["replay", "--check", "--user", &a.user_id.to_string()]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("views DIFFER") && run.stdout.contains("deleted: stored"), "{}", run.stdout);
    assert_eq!(echolia(app.data_dir(), &["replay", "--all"]).code, Some(0));
    assert_eq!(echolia(app.data_dir(), &["replay", "--check", "--all"]).code, Some(0));
}

/// An aggregate view in the shape before `schema/user/0007_views_keyed_by_creation.sql`
/// (keyed by a unique `id`, its indexes under either of their names).
pub fn keyed_by_id(table: &str, index_suffix: &str) -> String {
    let parent = if matches!(table, "tags" | "embeddings") {
        format!("CREATE INDEX {table}_by_parent{index_suffix} ON {table} (parent_id);")
    } else {
        String::new()
    };
    format!(
        "ALTER TABLE {table} RENAME TO {table}_new; \
         CREATE TABLE {table} (id TEXT PRIMARY KEY, parent_id TEXT, heads TEXT NOT NULL, version TEXT NOT NULL, \
         deleted INTEGER NOT NULL, conflict INTEGER NOT NULL, updated_seq INTEGER NOT NULL) STRICT; \
         INSERT INTO {table} SELECT id, parent_id, heads, version, deleted, conflict, updated_seq FROM {table}_new \
         ORDER BY id; DROP TABLE {table}_new; \
         CREATE UNIQUE INDEX {table}_by_updated_seq{index_suffix} ON {table} (updated_seq); {parent}"
    )
}

/// Views keyed by `id` upgrade with `echolia migrate`: every row kept, each
/// under its aggregate's first seq, the indexes back under their names; the
/// pulls and the views' content are what they were, and pushes go on editing
/// the migrated rows (conflicts included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_keyed_by_id_migrate_to_rows_keyed_by_their_first_seq() {
    let mut app = spawn_app().await;
    let (a, b) = two_devices_after_a_workload(&app).await;
    let entry = Uuid::new_v4();
    app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, 1)], Some(b"first"))]).await;
    let pulls = pull_all(&app, &a).await;

    let conn = app.open_user_db(a.user_id).await;
    let mut old_shape = String::from("BEGIN; ");
    for (i, table) in ["entries", "memories", "tags", "embeddings"].into_iter().enumerate() {
        old_shape.push_str(&keyed_by_id(table, if i % 2 == 0 { "" } else { "_replay" }));
    }
    old_shape.push_str(
        "DELETE FROM schema_migrations WHERE name IN ('schema/user/0007_views_keyed_by_creation.sql', \
         'schema/user/0008_view_parent_indexes.sql'); COMMIT;",
    );
    conn.execute_batch(&old_shape).await.unwrap();
    drop(conn);
    app.stop().await;

    let run = echolia(app.data_dir(), &["migrate"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("0007_views_keyed_by_creation.sql"), "{}", run.stdout);
    let conn = app.open_user_db(a.user_id).await;
    for table in ["entries", "memories", "tags", "embeddings"] {
        // Each row under the first seq of its aggregate's events.
        let sql = format!(
            "SELECT count(*), sum(v.created_seq = (SELECT min(seq) FROM events e WHERE e.aggregate_id = v.id)) \
             FROM {table} v"
        );
        let mut rows = conn.query(&sql, ()).await.unwrap();
        let row = rows.next().await.unwrap().unwrap();
        let (count, keyed) = (row.get::<u64>(0).unwrap(), row.get::<Option<u64>>(1).unwrap().unwrap_or(0));
        assert_eq!(keyed, count, "{table}");
        let indexes =
            format!("SELECT group_concat(name) FROM sqlite_schema WHERE type = 'index' AND tbl_name = '{table}'");
        let mut rows = conn.query(&indexes, ()).await.unwrap();
        let names: String = rows.next().await.unwrap().unwrap().get(0).unwrap();
        assert!(names.contains(&format!("{table}_by_updated_seq")), "{table}: {names}");
        assert_eq!(names.contains("_by_parent"), matches!(table, "tags" | "embeddings"), "{table}: {names}");
        assert!(!names.contains("autoindex"), "{table}: no index on id: {names}");
    }
    let user = a.user_id.to_string();
    let run = echolia(app.data_dir(), &["replay", "--check", "--user", &user]);
    assert_eq!(run.code, Some(0), "{run:?}");

    let app = app.restart().await;
    assert_eq!(pull_all(&app, &a).await, pulls);
    // A migrated row takes edits: one device's edit, then a concurrent one from the other.
    let edit = app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, 2)], Some(b"second"))]).await;
    assert_eq!(edit["results"][0]["status"], "applied");
    let concurrent = app.push_ok(&b, &[event("entry", entry, "put", &[(b.device_id, 1)], Some(b"other"))]).await;
    assert_eq!(concurrent["results"][0]["status"], "conflict");
    let mut rows = conn.query("SELECT count(*) FROM entries WHERE id = ?1", [entry.to_string()]).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<u64>(0).unwrap(), 1, "one row per aggregate");
    drop(rows);
    let run = echolia(app.data_dir(), &["replay", "--check", "--user", &user]);
    assert_eq!(run.code, Some(0), "{run:?}");
}
