//! Push and pull through HTTP with several devices of one user.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use echolia::events::hash::ChainVerifier;
use echolia::events::version::VersionVector;
use echolia::events::{Kind, NewEvent, Op, StoredEvent};
use rand::{Rng, RngCore};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_error, event, spawn_app, Session, TestApp};

async fn three_devices(app: &TestApp) -> (Session, Session, Session) {
    let a = app.register().await;
    let b = app.pair(&a, "B").await;
    let c = app.pair(&a, "C").await;
    (a, b, c)
}

fn statuses(body: &Value) -> Vec<&str> {
    body["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect()
}

fn change(pull: &Value, id: Uuid) -> &Value {
    pull["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id.to_string())
        .expect("the aggregate is in the pull")
}

fn payloads(change: &Value) -> HashSet<Vec<u8>> {
    change["heads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["payload"].as_str())
        .map(|p| STANDARD.decode(p).unwrap())
        .collect()
}

#[tokio::test]
async fn concurrent_edits_conflict_and_a_third_device_resolves() {
    let app = spawn_app().await;
    let (a, b, c) = three_devices(&app).await;
    let entry = Uuid::new_v4();
    let created = app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, 1)], Some(b"v1"))]).await;
    assert_eq!(statuses(&created), ["applied"]);

    // A and B both edit v1 without seeing each other.
    let from_a = app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, 2)], Some(b"a-edit"))]).await;
    let from_b =
        app.push_ok(&b, &[event("entry", entry, "put", &[(a.device_id, 1), (b.device_id, 1)], Some(b"b-edit"))]).await;
    assert_eq!(statuses(&from_a), ["applied"]);
    assert_eq!(statuses(&from_b), ["conflict"]);

    let pull = app.pull(&c, "since=0").await;
    let row = change(&pull, entry);
    assert_eq!(row["conflict"], true);
    assert_eq!(row["deleted"], false);
    assert_eq!(row["kind"], "entry");
    assert_eq!(row["heads"].as_array().unwrap().len(), 2);
    assert_eq!(payloads(row), HashSet::from([b"a-edit".to_vec(), b"b-edit".to_vec()]));
    assert_eq!(row["version"], json!({a.device_id.to_string(): 2, b.device_id.to_string(): 1}));
    let status: Value = app.get("/sync/status", &c.access_token).await.json().await.unwrap();
    assert_eq!(status["conflicts"], 1);

    // C merges (it can decrypt) and pushes a version that dominates both heads.
    let merged = [(a.device_id, 2), (b.device_id, 1), (c.device_id, 1)];
    let resolved = app.push_ok(&c, &[event("entry", entry, "put", &merged, Some(b"merged"))]).await;
    assert_eq!(statuses(&resolved), ["applied"]);
    let pull = app.pull(&a, &format!("since={}", pull["cursor"])).await;
    let row = change(&pull, entry);
    assert_eq!(row["conflict"], false);
    assert_eq!(payloads(row), HashSet::from([b"merged".to_vec()]));
    let status: Value = app.get("/sync/status", &c.access_token).await.json().await.unwrap();
    assert_eq!(status["conflicts"], 0);
    assert_eq!(status["entries"], 1);

    // An old edit arriving late is stale: in the log, not in the view.
    let late =
        app.push_ok(&b, &[event("entry", entry, "put", &[(a.device_id, 1), (b.device_id, 1)], Some(b"late"))]).await;
    assert_eq!(statuses(&late), ["stale"]);
    assert_eq!(payloads(change(&app.pull(&a, "since=0").await, entry)), HashSet::from([b"merged".to_vec()]));
}

#[tokio::test]
async fn delete_versus_edit_is_a_conflict() {
    let app = spawn_app().await;
    let (a, b, c) = three_devices(&app).await;
    let memory = Uuid::new_v4();
    app.push_ok(&a, &[event("memory", memory, "put", &[(a.device_id, 1)], Some(b"m1"))]).await;
    app.push_ok(&a, &[event("memory", memory, "delete", &[(a.device_id, 2)], None)]).await;
    let edit =
        app.push_ok(&b, &[event("memory", memory, "put", &[(a.device_id, 1), (b.device_id, 1)], Some(b"m2"))]).await;
    assert_eq!(statuses(&edit), ["conflict"]);

    let row = change(&app.pull(&c, "since=0").await, memory).clone();
    assert_eq!(row["conflict"], true);
    assert_eq!(row["deleted"], false, "an edit beside the delete keeps it alive until resolved");
    let ops: HashSet<&str> = row["heads"].as_array().unwrap().iter().map(|h| h["op"].as_str().unwrap()).collect();
    assert_eq!(ops, HashSet::from(["put", "delete"]));
    assert!(row["heads"].as_array().unwrap().iter().any(|h| h["op"] == "delete" && h["payload"].is_null()));

    // C resolves in favour of the delete.
    let merged = [(a.device_id, 2), (b.device_id, 1), (c.device_id, 1)];
    app.push_ok(&c, &[event("memory", memory, "delete", &merged, None)]).await;
    let row = change(&app.pull(&a, "since=0").await, memory).clone();
    assert_eq!((row["deleted"].clone(), row["conflict"].clone()), (json!(true), json!(false)));
}

#[tokio::test]
async fn retried_batches_are_no_ops_and_a_reused_event_id_is_refused() {
    let app = spawn_app().await;
    let (a, b, _) = three_devices(&app).await;
    let entry = Uuid::new_v4();
    let batch: Vec<Value> =
        (1..=5).map(|n| event("entry", entry, "put", &[(a.device_id, n)], Some(format!("v{n}").as_bytes()))).collect();
    let first = app.push_ok(&a, &batch).await;
    assert_eq!(statuses(&first), ["applied"; 5]);
    let count = app.event_count(a.user_id).await;

    let retry = app.push_ok(&a, &batch).await;
    assert_eq!(statuses(&retry), ["duplicate"; 5]);
    let seqs = |body: &Value| body["results"].as_array().unwrap().iter().map(|r| r["seq"].clone()).collect::<Vec<_>>();
    assert_eq!(seqs(&retry), seqs(&first), "a retry answers the original seqs");
    assert_eq!(retry["cursor"], first["cursor"]);
    assert_eq!(retry["head_hash"], first["head_hash"]);
    assert_eq!(app.event_count(a.user_id).await, count);

    // Same event_id, other content: refused, and nothing of the batch lands.
    let mut reused = batch[2].clone();
    reused["payload"] = json!(STANDARD.encode(b"something else"));
    let fresh = event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"fresh"));
    let resp = app.push(&a, &[fresh.clone(), reused]).await;
    let message = assert_error(resp, StatusCode::CONFLICT, "event_id_reused").await;
    assert!(message.starts_with("events[1]"), "{message}");
    // The same event_id from another device is not a retry either.
    let resp = app.push(&b, &[batch[0].clone()]).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let mut from_b = batch[0].clone();
    from_b["version"] = json!({b.device_id.to_string(): 1});
    assert_error(app.push(&b, &[from_b]).await, StatusCode::CONFLICT, "event_id_reused").await;
    assert_eq!(app.event_count(a.user_id).await, count);

    // A duplicate inside one batch is answered as such.
    let twice = event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"x"));
    assert_eq!(statuses(&app.push_ok(&a, &[twice.clone(), twice]).await), ["applied", "duplicate"]);
}

#[tokio::test]
async fn users_never_see_each_other() {
    let app = spawn_app().await;
    let alice = app.register().await;
    let bob = app.register().await;
    app.push_ok(&alice, &[event("entry", Uuid::new_v4(), "put", &[(alice.device_id, 1)], Some(b"alice"))]).await;
    let pull = app.pull(&bob, "since=0").await;
    assert_eq!(pull["changes"], json!([]));
    let events: Value = app.get("/sync/events", &bob.access_token).await.json().await.unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "only bob's own registration");
    let status: Value = app.get("/sync/status", &bob.access_token).await.json().await.unwrap();
    assert_eq!(status["entries"], 0);
}

#[tokio::test]
async fn a_new_device_pulls_current_state_and_history_stays_in_the_log() {
    let app = spawn_app().await;
    let a = app.register().await;
    let (entry, tag) = (Uuid::new_v4(), Uuid::new_v4());
    for n in 1..=4 {
        app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, n)], Some(format!("draft {n}").as_bytes()))])
            .await;
    }
    let mut tag_event = event("tag", tag, "put", &[(a.device_id, 5)], Some(b"#travel"));
    tag_event["parent_id"] = json!(entry);
    app.push_ok(&a, &[tag_event]).await;

    let phone = app.pair(&a, "Phone").await;
    let pull = app.pull(&phone, "since=0").await;
    let changes = pull["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "one change per aggregate: {pull}");
    assert_eq!(payloads(change(&pull, entry)), HashSet::from([b"draft 4".to_vec()]));
    assert_eq!(change(&pull, tag)["parent_id"], entry.to_string());
    assert_eq!(pull["has_more"], false);
    let status: Value = app.get("/sync/status", &phone.access_token).await.json().await.unwrap();
    assert_eq!(pull["cursor"], status["cursor"]);
    assert_eq!(pull["head_hash"], status["head_hash"]);

    let only_tags = app.pull(&phone, "since=0&kinds=tag").await;
    assert_eq!(only_tags["changes"].as_array().unwrap().len(), 1);
    let log: Value = app.get("/sync/events?limit=1000", &phone.access_token).await.json().await.unwrap();
    let entry_events = log["events"].as_array().unwrap().iter().filter(|e| e["aggregate_id"] == entry.to_string());
    assert_eq!(entry_events.count(), 4, "every draft stays in the log");
    assert_eq!(app.pull(&phone, &format!("since={}", pull["cursor"])).await["changes"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_each_aggregate_once_while_another_device_pushes() {
    let app = spawn_app().await;
    let (a, b, c) = three_devices(&app).await;
    let ids: Vec<Uuid> = (0..5000).map(|_| Uuid::new_v4()).collect();
    for chunk in ids.chunks(1000) {
        let batch: Vec<Value> =
            chunk.iter().map(|id| event("entry", *id, "put", &[(a.device_id, 1)], Some(id.as_bytes()))).collect();
        app.push_ok(&a, &batch).await;
    }

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut cursor = 0u64;
    let mut pages = 0;
    loop {
        let page = app.pull(&c, &format!("since={cursor}&limit=97")).await;
        for change in page["changes"].as_array().unwrap() {
            *seen.entry(change["id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        cursor = page["cursor"].as_u64().unwrap();
        pages += 1;
        if page["has_more"] == false {
            break;
        }
        // Between pages, another device pushes new aggregates and edits one not yet pulled.
        let pending = ids[(pages * 97 + 500).min(ids.len() - 1)];
        let edit = event("entry", pending, "put", &[(a.device_id, 1), (b.device_id, pages as u64)], Some(b"edited"));
        app.push_ok(&b, &[event("memory", Uuid::new_v4(), "put", &[(b.device_id, 1)], Some(b"new")), edit]).await;
    }
    assert!(pages > 50);
    for id in &ids {
        assert_eq!(seen.get(&id.to_string()), Some(&1), "entry {id} seen exactly once");
    }
    assert!(seen.values().all(|n| *n == 1), "no aggregate twice");
}

fn gauge(scrape: &str, name: &str) -> f64 {
    let line = scrape.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn pulls_read_ahead(scrape: &str) -> f64 {
    gauge(scrape, "echolia_pulls_read_ahead_total")
}

/// Scrapes until the server counts `n` long-polls waiting for a push (up to 10 s):
/// from then on, only a wake-up answers them early.
async fn wait_for_long_polls(app: &TestApp, n: f64) {
    let started = Instant::now();
    loop {
        let scrape = app.scrape().await;
        let waiting = scrape.lines().find_map(|line| line.strip_prefix("echolia_long_polls_waiting "));
        if waiting.map_or(0.0, |value| value.trim().parse().unwrap()) == n {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{n} long-polls never waited:\n{scrape}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_read_ahead_are_the_pages_a_fresh_read_gives() {
    let app = spawn_app().await;
    let (a, b, c) = three_devices(&app).await;
    // Every kind, interleaved in the log, with conflicts and deletes.
    let entries: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    for (i, entry) in entries.iter().enumerate() {
        let mut batch = vec![event("entry", *entry, "put", &[(a.device_id, 1)], Some(&[i as u8; 3]))];
        if i % 3 == 0 {
            batch.push(event("memory", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"m")));
            let mut tag = event("tag", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"t"));
            tag["parent_id"] = json!(entry);
            batch.push(tag);
        }
        if i % 5 == 0 {
            let mut embedding = event("embedding", Uuid::new_v4(), "delete", &[(a.device_id, 1)], None);
            embedding["parent_id"] = json!(entry);
            batch.push(embedding);
        }
        app.push_ok(&a, &batch).await;
    }
    for entry in entries.iter().step_by(4) {
        app.push_ok(&b, &[event("entry", *entry, "put", &[(b.device_id, 1)], Some(b"concurrent"))]).await;
    }

    // C pages through: after the first page, each is read while C reads the one before.
    let mut pages = Vec::new();
    let mut cursor = 0u64;
    loop {
        let page = app.pull(&c, &format!("since={cursor}&limit=7")).await;
        pages.push((cursor, page.clone()));
        cursor = page["cursor"].as_u64().unwrap();
        if page["has_more"] == false {
            break;
        }
    }
    let total: usize = pages.iter().map(|(_, page)| page["changes"].as_array().unwrap().len()).sum();
    assert_eq!(total, 40 + 14 + 14 + 8);
    assert!(pages.len() > 10);
    assert!(pulls_read_ahead(&app.scrape().await) >= (pages.len() - 1) as f64 - 1.0, "pages were read ahead");

    // The same queries again, last first, so none matches a page read ahead: each is a fresh read.
    let before = pulls_read_ahead(&app.scrape().await);
    for (since, page) in pages.iter().rev() {
        assert_eq!(&app.pull(&b, &format!("since={since}&limit=7")).await, page, "page since={since}");
    }
    assert_eq!(pulls_read_ahead(&app.scrape().await), before);

    // A page read ahead in JSON does not answer MessagePack...
    let first = app.pull(&c, "since=0&limit=7").await;
    let next = format!("/sync/pull?since={}&limit=7", first["cursor"]);
    let before = pulls_read_ahead(&app.scrape().await);
    let body: echolia::sync::wire::PullResponse =
        echolia::http::codec::from_msgpack(&app.get_msgpack(&next, &c.access_token).await).unwrap();
    assert_eq!(json!(body.cursor), pages[1].1["cursor"]);
    assert_eq!(body.changes.len(), 7);
    assert_eq!(pulls_read_ahead(&app.scrape().await), before, "not from the JSON page");

    // ...and a push after it was read makes it stale.
    app.pull(&c, "since=0&limit=7").await;
    let ready = Instant::now();
    while gauge(&app.scrape().await, "echolia_pull_read_ahead_bytes") == 0.0 {
        assert!(ready.elapsed() < Duration::from_secs(10), "the read-ahead never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let edited = entries[39];
    app.push_ok(&a, &[event("entry", edited, "put", &[(a.device_id, 2)], Some(b"moved"))]).await;
    let before = pulls_read_ahead(&app.scrape().await);
    let page = app.pull(&c, &format!("since={}&limit=7", first["cursor"])).await;
    assert_eq!(pulls_read_ahead(&app.scrape().await), before, "the log moved: read afresh");
    assert_eq!(page["changes"], pages[1].1["changes"], "the edit is not in this page");
    assert_ne!(page["head_hash"], pages[1].1["head_hash"], "read at the new head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_within_a_second_of_a_push() {
    let app = spawn_app().await;
    let (a, b, _) = three_devices(&app).await;
    let head = app.pull(&b, "since=0").await["cursor"].as_u64().unwrap();

    let waiting =
        app.client.get(app.url(&format!("/sync/pull?since={head}&wait=30"))).bearer_auth(&b.access_token).send();
    let waiter = tokio::spawn(async move {
        let resp = waiting.await.unwrap();
        (Instant::now(), resp.json::<Value>().await.unwrap())
    });
    wait_for_long_polls(&app, 1.0).await;
    assert!(!waiter.is_finished(), "nothing new: the pull waits");
    let entry = Uuid::new_v4();
    app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, 1)], Some(b"wake up"))]).await;
    let pushed_at = Instant::now();
    let (answered_at, body) = waiter.await.unwrap();
    assert!(answered_at.duration_since(pushed_at) < Duration::from_secs(1));
    assert_eq!(payloads(change(&body, entry)), HashSet::from([b"wake up".to_vec()]));

    // With nothing to wake it, it answers empty when the wait ends.
    let started = Instant::now();
    let empty = app.pull(&b, &format!("since={}&wait=1", body["cursor"])).await;
    assert_eq!(empty["changes"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn the_database_holds_exactly_the_bytes_clients_sent() {
    let app = spawn_app().await;
    let (a, b, _) = three_devices(&app).await;
    let mut rng = rand::rng();
    let mut sent: HashMap<Uuid, Vec<u8>> = HashMap::new();
    let mut batch = Vec::new();
    for _ in 0..200 {
        let mut payload = vec![0u8; rng.random_range(1..2048)];
        rng.fill_bytes(&mut payload);
        let ev = event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(&payload));
        sent.insert(Uuid::parse_str(ev["event_id"].as_str().unwrap()).unwrap(), payload);
        batch.push(ev);
    }
    app.push_ok(&a, &batch).await;

    let conn = app.open_user_db(a.user_id).await;
    let mut rows = conn.query("SELECT event_id, payload FROM events WHERE kind = 'entry'", ()).await.unwrap();
    let mut stored = 0;
    while let Some(row) = rows.next().await.unwrap() {
        let id = Uuid::parse_str(&row.get::<String>(0).unwrap()).unwrap();
        assert_eq!(&row.get::<Vec<u8>>(1).unwrap(), &sent[&id], "stored byte for byte");
        stored += 1;
    }
    assert_eq!(stored, sent.len());
    // Views hold no payloads: their columns are ids, vectors, flags and seqs only.
    let mut rows = conn.query("SELECT heads, version FROM entries", ()).await.unwrap();
    while let Some(row) = rows.next().await.unwrap() {
        let heads: String = row.get(0).unwrap();
        assert!(!heads.contains("payload"));
    }
    // And what comes back is what went in.
    let pull = app.pull(&b, "since=0&limit=1000").await;
    for change in pull["changes"].as_array().unwrap() {
        let head = &change["heads"][0];
        let id = Uuid::parse_str(head["event_id"].as_str().unwrap()).unwrap();
        assert_eq!(STANDARD.decode(head["payload"].as_str().unwrap()).unwrap(), sent[&id]);
    }
}

/// Rebuilds a stored event from its `/sync/events` JSON.
pub(crate) fn stored_from_json(e: &Value) -> StoredEvent {
    let uuid = |v: &Value| Uuid::parse_str(v.as_str().unwrap()).unwrap();
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().to_utc();
    let version: VersionVector = serde_json::from_value(e["version"].clone()).unwrap();
    StoredEvent {
        seq: e["seq"].as_u64().unwrap(),
        device_id: uuid(&e["device_id"]),
        received_at: time(&e["received_at"]),
        hash: hex::decode(e["hash"].as_str().unwrap()).unwrap().try_into().unwrap(),
        event: NewEvent {
            event_id: uuid(&e["event_id"]),
            kind: serde_json::from_value::<Kind>(e["kind"].clone()).unwrap(),
            aggregate_id: uuid(&e["aggregate_id"]),
            parent_id: e["parent_id"].as_str().map(|p| Uuid::parse_str(p).unwrap()),
            op: serde_json::from_value::<Op>(e["op"].clone()).unwrap(),
            version,
            payload: e["payload"].as_str().map(|p| STANDARD.decode(p).unwrap()),
            client_time: time(&e["client_time"]),
        },
    }
}

#[tokio::test]
async fn the_hash_chain_of_the_log_links_to_head_hash() {
    let app = spawn_app().await;
    let (a, b, _) = three_devices(&app).await;
    let mut rng = rand::rng();
    let aggregates: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let mut counters: HashMap<Uuid, u64> = HashMap::new();
    for round in 0..30 {
        let who = if round % 3 == 0 { &b } else { &a };
        let batch: Vec<Value> = (0..rng.random_range(1..20))
            .map(|_| {
                let agg = aggregates[rng.random_range(0..aggregates.len())];
                let n = counters.entry(who.device_id).or_insert(0);
                *n += 1;
                if rng.random_bool(0.1) {
                    event("memory", agg, "delete", &[(who.device_id, *n)], None)
                } else {
                    event("memory", agg, "put", &[(who.device_id, *n)], Some(&rng.random::<[u8; 16]>()))
                }
            })
            .collect();
        app.push_ok(who, &batch).await;
    }
    let status: Value = app.get("/sync/status", &a.access_token).await.json().await.unwrap();
    let mut verifier = ChainVerifier::default();
    let mut since = 0;
    loop {
        let page: Value =
            app.get(&format!("/sync/events?since={since}&limit=100"), &a.access_token).await.json().await.unwrap();
        for e in page["events"].as_array().unwrap() {
            verifier.check(&stored_from_json(e)).unwrap();
        }
        since = page["cursor"].as_u64().unwrap();
        if page["has_more"] == false {
            break;
        }
    }
    let (seq, hash) = verifier.head();
    assert_eq!(seq, status["cursor"].as_u64().unwrap());
    assert_eq!(hex::encode(hash), status["head_hash"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_answers_waiting_long_polls() {
    let mut app = spawn_app().await;
    let a = app.register().await;
    let head = app.pull(&a, "since=0").await["cursor"].as_u64().unwrap();
    let waiting =
        app.client.get(app.url(&format!("/sync/pull?since={head}&wait=60"))).bearer_auth(&a.access_token).send();
    let waiter = tokio::spawn(waiting);
    wait_for_long_polls(&app, 1.0).await;
    let started = Instant::now();
    app.stop().await;
    let resp = waiter.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5), "the stop did not wait for the long-poll to run out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_ends_a_waiting_long_poll() {
    let app = spawn_app().await;
    let (a, b, _) = three_devices(&app).await;
    let head = app.pull(&b, "since=0").await["cursor"].as_u64().unwrap();
    let waiting =
        app.client.get(app.url(&format!("/sync/pull?since={head}&wait=30"))).bearer_auth(&b.access_token).send();
    let waiter = tokio::spawn(async move {
        let resp = waiting.await.unwrap();
        (Instant::now(), resp)
    });
    // Waiting before the revocation: only the push's wake-up can end it early.
    wait_for_long_polls(&app, 1.0).await;
    assert!(!waiter.is_finished(), "nothing new: the pull waits");
    assert_eq!(
        app.delete(&format!("/auth/device/{}", b.device_id), &a.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    app.push_ok(&a, &[event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"not for b"))]).await;
    let pushed_at = Instant::now();
    let (answered_at, resp) = waiter.await.unwrap();
    assert!(
        answered_at.duration_since(pushed_at) < Duration::from_secs(5),
        "woken by the push, long before its 30 s wait ends"
    );
    assert_error(resp, StatusCode::UNAUTHORIZED, "device_revoked").await;
    wait_for_long_polls(&app, 0.0).await;
}

#[tokio::test]
async fn pages_of_large_payloads_are_cut_at_8_mib() {
    let app = spawn_app().await;
    let a = app.register().await;
    let big = vec![5u8; 1024 * 1024];
    let batch: Vec<Value> =
        (0..10).map(|_| event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(&big))).collect();
    app.push_ok(&a, &batch).await;

    let first = app.pull(&a, "since=0&limit=1000").await;
    assert_eq!(first["changes"].as_array().unwrap().len(), 8, "8 MiB of payloads, then a new page");
    assert_eq!(first["has_more"], true);
    let rest = app.pull(&a, &format!("since={}&limit=1000", first["cursor"])).await;
    assert_eq!(rest["changes"].as_array().unwrap().len(), 2);
    assert_eq!(rest["has_more"], false);

    let events: Value = app.get("/sync/events?limit=1000", &a.access_token).await.json().await.unwrap();
    assert_eq!(events["has_more"], true);
    let listed = events["events"].as_array().unwrap().len();
    assert_eq!(listed, 9, "the registration event and 8 MiB of payloads");
    let more: Value =
        app.get(&format!("/sync/events?since={}", events["cursor"]), &a.access_token).await.json().await.unwrap();
    assert_eq!(more["events"].as_array().unwrap().len(), 2);
    assert_eq!(more["has_more"], false);
}
