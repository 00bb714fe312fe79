//! One storage conformance suite, run against every backend: `local`
//! (files under `DATA_DIR`), `sqld` (the real libSQL server, started by
//! each test, [`crate::sqld`]), `sqld` with embedded replicas (reads from
//! replica files under `DATA_DIR/replicas`, synced before every read:
//! `REPLICA_MAX_STALENESS_MS=0`, so two servers agree as on the others),
//! `turso` (a fake Turso Platform API whose databases are namespaces of a real
//! sqld, [`crate::turso_fake`]) and `turso` with embedded replicas. Everything goes through the HTTP API or the
//! operator commands, as a user would see it; only where a database lives
//! differs ([`Fixture::database_exists`]).

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use echolia::events::hash::ChainVerifier;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_error, event, spawn_app_with, Session, TestApp};
use crate::sqld::Sqld;
use crate::sync_flow::stored_from_json;
use crate::turso_fake::FakeTurso;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Local,
    Sqld,
    Turso,
    /// Only in a build with the `embedded-replicas` feature.
    #[cfg_attr(not(feature = "embedded-replicas"), allow(dead_code))]
    SqldReplicas,
    /// Only in a build with the `embedded-replicas` feature.
    #[cfg_attr(not(feature = "embedded-replicas"), allow(dead_code))]
    TursoReplicas,
}

impl Store {
    /// Whether reads come from embedded replicas.
    pub fn replicated(self) -> bool {
        matches!(self, Store::SqldReplicas | Store::TursoReplicas)
    }
}

/// The variables of embedded replicas that answer no read older than its request.
const REPLICAS: [(&str, &str); 3] =
    [("EMBEDDED_REPLICAS", "true"), ("REPLICA_MAX_STALENESS_MS", "0"), ("REPLICA_SYNC_INTERVAL_MS", "200")];

pub struct Fixture {
    pub app: TestApp,
    pub sqld: Option<Sqld>,
    pub turso: Option<FakeTurso>,
    /// The storage variables (the server's and the operator commands').
    vars: Vec<(&'static str, String)>,
    pub store: Store,
}

impl Fixture {
    pub async fn new(store: Store) -> Fixture {
        Self::with(store, &[]).await
    }

    pub async fn with(store: Store, extra: &[(&'static str, &str)]) -> Fixture {
        let sqld = match store {
            Store::Local => None,
            Store::Sqld | Store::SqldReplicas | Store::Turso | Store::TursoReplicas => Some(Sqld::start().await),
        };
        let turso = match (store, &sqld) {
            (Store::Turso | Store::TursoReplicas, Some(sqld)) => Some(FakeTurso::start(sqld).await),
            _ => None,
        };
        let mut vars: Vec<(&'static str, String)> = match (&turso, &sqld) {
            (Some(turso), _) => turso.vars(),
            (None, Some(sqld)) => sqld.vars(),
            (None, None) => Vec::new(),
        };
        if store.replicated() {
            vars.extend(REPLICAS.iter().map(|(k, v)| (*k, v.to_string())));
        }
        vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let app = {
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            spawn_app_with(&vars).await
        };
        Fixture { app, sqld, turso, vars, store }
    }

    /// With replicas: `app` answered reads from its replicas, and none went
    /// to the primary (each synced first). Elsewhere nothing to check.
    pub fn assert_read_from_replicas(&self, app: &TestApp) {
        if !self.store.replicated() {
            return;
        }
        let stats = &app.state.users.replicas().expect("replicas are on").stats;
        let (reads, fallbacks) = (stats.reads.load(Ordering::Relaxed), stats.fallbacks.load(Ordering::Relaxed));
        assert!(reads > 0 && fallbacks == 0, "{reads} reads from replicas, {fallbacks} from the primary");
    }

    /// The same storage, a new server (as after a crash and a start).
    pub async fn restart(self) -> Fixture {
        let Fixture { app, sqld, turso, vars, store } = self;
        Fixture { app: app.restart().await, sqld, turso, vars, store }
    }

    /// Whether the user's database exists where its backend keeps it: on
    /// Turso, listed by the Platform API and served by its sqld namespace.
    pub async fn database_exists(&self, user: Uuid) -> bool {
        match (&self.turso, &self.sqld) {
            (Some(turso), Some(sqld)) => {
                let name = echolia::store::remote::turso::user_database(user);
                let listed = turso.has_database(&name);
                assert_eq!(listed, sqld.namespace_exists(&FakeTurso::namespace(&name)).await, "{name}");
                listed
            }
            (_, Some(sqld)) => sqld.namespace_exists(&format!("user-{user}")).await,
            (_, None) => self.app.user_db_path(user).exists(),
        }
    }

    /// Runs `echolia <args>` on this fixture's storage.
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_echolia"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", self.app.data_dir())
            .stdin(Stdio::null());
        for (name, value) in &self.vars {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn statuses(body: &Value) -> Vec<&str> {
    body["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect()
}

/// Every event of the user's log, checked link by link; the head.
async fn verify_chain(app: &TestApp, session: &Session) -> (u64, Vec<u64>) {
    let (mut verifier, mut since, mut seqs) = (ChainVerifier::default(), 0, Vec::new());
    loop {
        let resp = app.get(&format!("/sync/events?since={since}&limit=50"), &session.access_token).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let page: Value = resp.json().await.unwrap();
        for e in page["events"].as_array().unwrap() {
            let stored = stored_from_json(e);
            seqs.push(stored.seq);
            verifier.check(&stored).unwrap();
        }
        since = page["cursor"].as_u64().unwrap();
        if page["has_more"] == false {
            break;
        }
    }
    let status: Value = app.get("/sync/status", &session.access_token).await.json().await.unwrap();
    let (seq, hash) = verifier.head();
    assert_eq!(seq, status["cursor"].as_u64().unwrap());
    assert_eq!(hex::encode(hash), status["head_hash"].as_str().unwrap());
    (seq, seqs)
}

async fn append_duplicates_and_reuse(store: Store) {
    let fx = Fixture::new(store).await;
    let app = &fx.app;
    let a = app.register().await;
    let (entry, memory) = (Uuid::new_v4(), Uuid::new_v4());
    let first = event("entry", entry, "put", &[(a.device_id, 1)], Some(b"one"));
    let second = event("memory", memory, "put", &[(a.device_id, 1)], Some(b"two"));
    let pushed = app.push_ok(&a, &[first.clone(), second.clone()]).await;
    assert_eq!(statuses(&pushed), ["applied", "applied"]);
    let cursor = pushed["cursor"].as_u64().unwrap();
    assert_eq!(cursor, 3, "one device event, then the two");

    // The same events again, and one repeated inside its batch: duplicates, nothing appended.
    let third = event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"three"));
    let again = app.push_ok(&a, &[first.clone(), third.clone(), third.clone(), second]).await;
    assert_eq!(statuses(&again), ["duplicate", "applied", "duplicate", "duplicate"]);
    assert_eq!(again["cursor"], 4);
    assert_eq!(again["results"][0]["seq"], 2);

    // An id already in the log with other content: 409, nothing appended.
    let mut reused = first.clone();
    reused["payload"] = json!("b3RoZXI=");
    let fresh = event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"fresh"));
    assert_error(app.push(&a, &[fresh, reused]).await, StatusCode::CONFLICT, "event_id_reused").await;
    let (head, seqs) = verify_chain(app, &a).await;
    assert_eq!((head, seqs), (4, vec![1, 2, 3, 4]));
    fx.assert_read_from_replicas(app);

    // A fresh server (no id index in memory) still finds the duplicates.
    let app = fx.app.beside().await;
    assert_eq!(statuses(&app.push_ok(&a, &[first]).await), ["duplicate"]);
}

async fn pull_pages(store: Store) {
    let fx = Fixture::new(store).await;
    let app = &fx.app;
    let a = app.register().await;
    let ids: Vec<Uuid> = (0..25).map(|_| Uuid::new_v4()).collect();
    let batch: Vec<Value> =
        ids.iter().map(|id| event("entry", *id, "put", &[(a.device_id, 1)], Some(id.as_bytes()))).collect();
    app.push_ok(&a, &batch).await;
    let (mut since, mut seen, mut pages) = (0, HashSet::new(), 0);
    loop {
        let page = app.pull(&a, &format!("since={since}&limit=10")).await;
        pages += 1;
        for change in page["changes"].as_array().unwrap() {
            if change["kind"] == "entry" {
                assert!(seen.insert(change["id"].as_str().unwrap().to_owned()), "an aggregate twice");
            }
        }
        since = page["cursor"].as_u64().unwrap();
        if page["has_more"] == false {
            break;
        }
        assert!(pages < 10, "pages do not end");
    }
    assert_eq!(seen.len(), 25);
    assert!(pages >= 3, "limit=10 pages 26 changes in at least 3 pages, got {pages}");
    assert_eq!(since, 26);
    fx.assert_read_from_replicas(app);
}

async fn projections_and_conflicts(store: Store) {
    let fx = Fixture::new(store).await;
    let app = &fx.app;
    let a = app.register().await;
    let b = app.pair(&a, "B").await;
    let entry = Uuid::new_v4();
    app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, 1)], Some(b"v1"))]).await;
    let from_a = app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, 2)], Some(b"a-edit"))]).await;
    let from_b =
        app.push_ok(&b, &[event("entry", entry, "put", &[(a.device_id, 1), (b.device_id, 1)], Some(b"b-edit"))]).await;
    assert_eq!((statuses(&from_a), statuses(&from_b)), (vec!["applied"], vec!["conflict"]));
    let stale = app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, 1)], Some(b"old"))]).await;
    assert_eq!(statuses(&stale), ["stale"]);
    let pull = app.pull(&a, "since=0").await;
    let row = pull["changes"].as_array().unwrap().iter().find(|c| c["id"] == entry.to_string()).unwrap().clone();
    assert_eq!((row["conflict"].clone(), row["heads"].as_array().unwrap().len()), (json!(true), 2));
    let merged = [(a.device_id, 2), (b.device_id, 1)];
    let merge = app.push_ok(&a, &[event("entry", entry, "delete", &merged, None)]).await;
    assert_eq!(statuses(&merge), ["applied"]);
    let pull = app.pull(&b, &format!("since={}", pull["cursor"])).await;
    let row = pull["changes"].as_array().unwrap().iter().find(|c| c["id"] == entry.to_string()).unwrap().clone();
    assert_eq!((row["conflict"].clone(), row["deleted"].clone()), (json!(false), json!(true)));
    let status: Value = app.get("/sync/status", &a.access_token).await.json().await.unwrap();
    assert_eq!(status["conflicts"], 0);
    fx.assert_read_from_replicas(app);
}

async fn concurrent_appends_from_two_servers(store: Store) {
    let fx = Fixture::new(store).await;
    let other = fx.app.beside().await;
    let a = fx.app.register().await;
    let b = fx.app.pair(&a, "B").await;
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let (app, who) = if i % 2 == 0 { (&fx.app, &a) } else { (&other, &b) };
        let batch: Vec<Value> = (0..5)
            .map(|_| event("memory", Uuid::new_v4(), "put", &[(who.device_id, 1)], Some(b"concurrent")))
            .collect();
        tasks.push(async move { app.push(who, &batch).await });
    }
    for resp in futures_util::future::join_all(tasks).await {
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());
    }
    let (head, seqs) = verify_chain(&other, &a).await;
    assert_eq!(head, 2 + 40, "two device events and every pushed one");
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "gapless");
    fx.assert_read_from_replicas(&other);
}

async fn migrations_and_operator_commands(store: Store) {
    let fx = Fixture::new(store).await;
    let app = &fx.app;
    let a = app.register().await;
    for i in 0..3 {
        let payload = format!("ciphertext {i}");
        app.push_ok(&a, &[event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(payload.as_bytes()))]).await;
    }
    let user = a.user_id.to_string();
    let (code, stdout, stderr) = fx.cli(&["migrate"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("control: up to date"), "{stdout}");
    assert!(stdout.contains(&format!("user {user}: up to date")), "{stdout}");

    let (code, stdout, stderr) = fx.cli(&["verify", "--user", &user]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, stdout, stderr) = fx.cli(&["verify", "--all"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    let (code, stdout, stderr) = fx.cli(&["audit", "--user", &user]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(&a.device_id.to_string()), "{stdout}");

    let (code, stdout, stderr) = fx.cli(&["export", "--user", &user]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.contains("\"entry\"")).count(), 3, "{stdout}");
    if store.replicated() {
        // The commands kept a replica of their own, beside the server's, holding the whole log.
        let theirs = app.data_dir().join("replicas").join("1").join(format!("{user}.db"));
        let db = libsql::Builder::new_local(&theirs).flags(libsql::OpenFlags::SQLITE_OPEN_READ_ONLY).build().await;
        let conn = db.unwrap().connect().unwrap();
        let mut rows = conn.query("SELECT count(*) FROM events", ()).await.unwrap();
        assert_eq!(rows.next().await.unwrap().unwrap().get::<u64>(0).unwrap(), 4, "{}", theirs.display());
    }

    let (code, stdout, stderr) = fx.cli(&["replay", "--user", &user, "--check"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, stdout, stderr) = fx.cli(&["replay", "--user", &user]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (head, _) = verify_chain(app, &a).await;
    assert_eq!(head, 4);
    let stranger = Uuid::new_v4().to_string();
    let (code, _, stderr) = fx.cli(&["verify", "--user", &stranger]);
    assert_eq!(code, Some(2), "{stderr}");
}

async fn account_deletion(store: Store) {
    let fx = Fixture::new(store).await;
    let app = &fx.app;
    let a = app.register().await;
    app.push_ok(&a, &[event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"x"))]).await;
    assert!(fx.database_exists(a.user_id).await);
    assert_eq!(app.delete("/account", &a.access_token).await.status(), StatusCode::NO_CONTENT);
    assert!(!fx.database_exists(a.user_id).await, "the database is gone");
    let resp = app.get("/sync/status", &a.access_token).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Registration still works afterwards.
    let b = app.register().await;
    assert!(fx.database_exists(b.user_id).await);
}

/// A database a crash left between its creation and its user, and one
/// between its user's removal and its own: both gone after a restart.
async fn unfinished_provisioning_is_swept_at_start(store: Store) {
    let fx = Fixture::new(store).await;
    let (orphan, kept) = (Uuid::new_v4(), fx.app.register().await);
    let deleted = fx.app.register().await;
    // As a crashed registration leaves it: a database and a ledger row, no directory row.
    fx.app.state.users.create(orphan).await.unwrap();
    let control = fx.app.state.control.conn().await.unwrap();
    let long_ago = "2020-01-01T00:00:00.000000Z";
    control
        .execute("INSERT INTO provisioning VALUES (?1, 'create', ?2)", [orphan.to_string(), long_ago.to_owned()])
        .await
        .unwrap();
    // As a crashed deletion leaves it: no directory row, the ledger's `delete`, the database.
    control.execute("DELETE FROM users WHERE user_id = ?1", [deleted.user_id.to_string()]).await.unwrap();
    control
        .execute(
            "INSERT INTO provisioning VALUES (?1, 'delete', ?2)",
            [deleted.user_id.to_string(), "2099-01-01T00:00:00.000000Z".to_owned()],
        )
        .await
        .unwrap();
    // A registration in flight (recent): left alone.
    let in_flight = Uuid::new_v4();
    fx.app.state.users.create(in_flight).await.unwrap();
    let now = echolia::clock::rfc3339(chrono::Utc::now());
    control.execute("INSERT INTO provisioning VALUES (?1, 'create', ?2)", [in_flight.to_string(), now]).await.unwrap();
    assert!(fx.database_exists(orphan).await && fx.database_exists(deleted.user_id).await);

    let fx = fx.restart().await;
    assert!(!fx.database_exists(orphan).await, "the crashed registration's database is gone");
    assert!(!fx.database_exists(deleted.user_id).await, "the crashed deletion's database is gone");
    assert!(fx.database_exists(in_flight).await, "a registration in flight is not touched");
    assert!(fx.database_exists(kept.user_id).await);
    let mut rows =
        fx.app.state.control.conn().await.unwrap().query("SELECT user_id FROM provisioning", ()).await.unwrap();
    let mut left = Vec::new();
    while let Some(row) = rows.next().await.unwrap() {
        left.push(row.get::<String>(0).unwrap());
    }
    assert_eq!(left, [in_flight.to_string()]);
    assert_eq!(fx.app.push_ok(&kept, &[]).await["cursor"], 1);
}

/// Two API servers on one store, as two processes would be (each its own
/// caches, writers and notifier): a long-poll on one wakes when the other
/// appends, and a device revoked through one is refused by the other
/// within a second.
async fn two_servers_long_poll_and_revocation(store: Store) {
    let fx = Fixture::new(store).await;
    let other = fx.app.beside().await;
    let a = fx.app.register().await;
    let b = fx.app.pair(&a, "B").await;
    let head = other.pull(&b, "since=0").await["cursor"].as_u64().unwrap();
    let waiting = other.client.get(other.url(&format!("/sync/pull?since={head}&wait=20"))).bearer_auth(&b.access_token);
    let waiter = tokio::spawn(async move { waiting.send().await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let entry = Uuid::new_v4();
    fx.app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, 1)], Some(b"through the first"))]).await;
    let resp = waiter.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["changes"][0]["id"], entry.to_string(), "{page}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "woken by the head watch: {:?}", started.elapsed());
    fx.assert_read_from_replicas(&other);

    assert_eq!(other.get("/sync/status", &b.access_token).await.status(), StatusCode::OK);
    let revoked = fx.app.delete(&format!("/auth/device/{}", b.device_id), &a.access_token).await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_error(other.get("/sync/status", &b.access_token).await, StatusCode::UNAUTHORIZED, "device_revoked").await;
}

impl TestApp {
    /// Pushes and expects 200, naming the error otherwise; returns the body.
    async fn push_ok_said(&self, session: &Session, events: &[Value]) -> Value {
        let resp = self.push(session, events).await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// One aggregate of each kind made by `maker` (the embedding under its
/// entry's id: an id is its kind's), a second made and edited in one batch,
/// then every one edited by `editor` on `to` in one batch with a new one.
/// Returns the aggregates' (kind, id) and the versions their last events carry.
async fn made_then_edited(
    from: &TestApp,
    maker: &Session,
    to: &TestApp,
    editor: &Session,
) -> Vec<(&'static str, Uuid, Vec<(Uuid, u64)>)> {
    let entry = Uuid::new_v4();
    let with_parent = |mut event: Value, kind: &str| {
        if matches!(kind, "tag" | "embedding") {
            event["parent_id"] = json!(entry);
        }
        event
    };
    let mut made: Vec<(&'static str, Uuid)> =
        vec![("entry", entry), ("memory", Uuid::new_v4()), ("tag", Uuid::new_v4()), ("embedding", entry)];
    // A put of each aggregate of `made`, at `version`.
    let puts = |made: &[(&'static str, Uuid)], version: &[(Uuid, u64)], payload: &[u8]| -> Vec<Value> {
        made.iter().map(|(kind, id)| with_parent(event(kind, *id, "put", version, Some(payload)), kind)).collect()
    };
    let made_version = vec![(maker.device_id, 1)];
    let mut batch = puts(&made, &made_version, b"made");
    let twice = Uuid::new_v4();
    batch.push(event("memory", twice, "put", &[(maker.device_id, 1)], Some(b"made")));
    batch.push(event(
        "memory",
        twice,
        "put",
        &made_version.iter().map(|(d, _)| (*d, 2)).collect::<Vec<_>>(),
        Some(b"again"),
    ));
    assert_eq!(statuses(&from.push_ok_said(maker, &batch).await), ["applied"; 6]);

    let edited_version = vec![(maker.device_id, 2), (editor.device_id, 1)];
    made.push(("memory", twice));
    let mut edits = puts(&made, &edited_version, b"edited");
    let fresh = Uuid::new_v4();
    edits.push(event("entry", fresh, "put", &[(editor.device_id, 1)], Some(b"fresh")));
    assert_eq!(statuses(&to.push_ok_said(editor, &edits).await), ["applied"; 6], "one head each: no conflict");
    let mut out: Vec<_> = made.into_iter().map(|(kind, id)| (kind, id, edited_version.clone())).collect();
    out.push(("entry", fresh, vec![(editor.device_id, 1)]));
    out
}

/// Every change a pull from 0 returns, by (kind, id), each seen once.
async fn pulled_once_each(app: &TestApp, session: &Session) -> std::collections::HashMap<(String, String), Value> {
    let (mut since, mut seen) = (0, std::collections::HashMap::new());
    loop {
        let page = app.pull(session, &format!("since={since}&limit=10")).await;
        for change in page["changes"].as_array().unwrap() {
            let key = (change["kind"].as_str().unwrap().to_owned(), change["id"].as_str().unwrap().to_owned());
            assert!(seen.insert(key.clone(), change.clone()).is_none(), "{key:?}: two rows of one aggregate");
        }
        since = page["cursor"].as_u64().unwrap();
        if page["has_more"] == false {
            return seen;
        }
    }
}

/// Two servers on one store, each making aggregates the other then edits
/// (issue 22: a view row is found by its aggregate's first seq, which a
/// writer learns from the log only when it looks the aggregate up), and a
/// third server, its index still empty, editing them all: one row per
/// aggregate, one head each, and `replay --check` clean. A second row of
/// one aggregate, put there by hand, is what check then reports.
async fn aggregates_made_on_one_server_edited_on_another(store: Store) {
    let fx = Fixture::new(store).await;
    let other = fx.app.beside().await;
    let a = fx.app.register().await;
    let b = fx.app.pair(&a, "B").await;
    // Both writers' indexes cover the log so far before the other appends.
    for (app, who) in [(&fx.app, &a), (&other, &b)] {
        app.push_ok_said(who, &[event("entry", Uuid::new_v4(), "put", &[(who.device_id, 1)], Some(b"warm"))]).await;
    }
    let mut aggregates = made_then_edited(&other, &b, &fx.app, &a).await;
    aggregates.extend(made_then_edited(&fx.app, &a, &other, &b).await);
    aggregates.extend(made_then_edited(&other, &b, &other, &a).await);

    let third = fx.app.beside().await;
    let last: Vec<Value> = aggregates
        .iter()
        .map(|(kind, id, version)| {
            // Above every earlier version, and holding the pushing device.
            let mut version: Vec<(Uuid, u64)> = version.iter().map(|(device, n)| (*device, n + 10)).collect();
            if !version.iter().any(|(device, _)| *device == b.device_id) {
                version.push((b.device_id, 10));
            }
            let mut last = event(kind, *id, "put", &version, Some(b"last"));
            if matches!(*kind, "tag" | "embedding") {
                last["parent_id"] = json!(id);
            }
            last
        })
        .collect();
    assert_eq!(statuses(&third.push_ok_said(&b, &last).await), vec!["applied"; last.len()]);

    let pulled = pulled_once_each(&fx.app, &a).await;
    for (kind, id, _) in &aggregates {
        let row = &pulled[&(kind.to_string(), id.to_string())];
        assert_eq!((row["conflict"].clone(), row["heads"].as_array().unwrap().len()), (json!(false), 1), "{row}");
    }
    assert_eq!(pulled.len(), aggregates.len() + 2, "the aggregates and the two warm-up entries");
    let user = a.user_id.to_string();
    let (code, stdout, stderr) = fx.cli(&["replay", "--check", "--user", &user]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    // A second row of one aggregate, keyed before its own: check reports it, whichever row it reads first.
    let entry = aggregates[0].1;
    let db = fx.app.state.users.get(a.user_id).await.unwrap();
    let sql = "INSERT INTO entries (id, parent_id, heads, version, deleted, conflict, updated_seq, created_seq) \
               SELECT id, parent_id, heads, version, deleted, conflict, -updated_seq, -created_seq FROM entries \
               WHERE id = ?1";
    assert_eq!(db.read().await.unwrap().execute(sql, [entry.to_string()]).await.unwrap(), 1);
    let (code, stdout, stderr) = fx.cli(&["replay", "--check", "--user", &user]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("entries {entry}")), "{stdout}{stderr}");
}

/// Views keyed by `id` (the shape before schema/user/0007) upgrade with
/// `echolia migrate` on either backend: every row under its aggregate's first
/// seq of its kind, pulls as they were, `replay --check` clean, and pushes go
/// on editing the migrated rows. Locally one view table is missing as well
/// (dropped: the migration skips it, replay makes it again).
async fn views_keyed_by_id_migrate(store: Store) {
    let fx = Fixture::new(store).await;
    let a = fx.app.register().await;
    let entry = Uuid::new_v4();
    let mut tag = event("tag", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"tag"));
    tag["parent_id"] = json!(entry);
    let mut embedding = event("embedding", entry, "put", &[(a.device_id, 1)], Some(b"vector"));
    embedding["parent_id"] = json!(entry);
    let memory = Uuid::new_v4();
    let batch = [
        event("entry", entry, "put", &[(a.device_id, 1)], Some(b"one")),
        event("memory", memory, "put", &[(a.device_id, 1)], Some(b"m")),
        tag,
        embedding,
        event("entry", entry, "put", &[(a.device_id, 2)], Some(b"two")),
        event("memory", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"m2")),
    ];
    fx.app.push_ok_said(&a, &batch).await;
    let pulled = pulled_once_each(&fx.app, &a).await;

    let db = fx.app.state.users.get(a.user_id).await.unwrap();
    let conn = db.read().await.unwrap();
    let mut old_shape = Vec::new();
    for (i, table) in ["entries", "memories", "tags", "embeddings"].into_iter().enumerate() {
        old_shape.extend(
            crate::replay::keyed_by_id(table, if i % 2 == 0 { "" } else { "_replay" }).split("; ").map(str::to_owned),
        );
    }
    old_shape.push(
        "DELETE FROM schema_migrations WHERE name IN ('schema/user/0007_views_keyed_by_creation.sql', \
         'schema/user/0008_view_parent_indexes.sql')"
            .into(),
    );
    for sql in old_shape.iter().map(|sql| sql.trim().trim_end_matches(';')).filter(|sql| !sql.is_empty()) {
        conn.execute(sql, ()).await.unwrap_or_else(|err| panic!("{sql}: {err}"));
    }
    if store == Store::Local {
        conn.execute("DROP TABLE memories", ()).await.unwrap();
    }
    drop((conn, db));
    let Fixture { mut app, sqld, turso, vars, store } = fx;
    app.stop().await;
    let fx = Fixture { app, sqld, turso, vars, store };

    let (code, stdout, stderr) = fx.cli(&["migrate"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("0007_views_keyed_by_creation.sql"), "{stdout}");
    let user = a.user_id.to_string();
    if store == Store::Local {
        let (code, stdout, stderr) = fx.cli(&["replay", "--user", &user]);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
    }
    let (code, stdout, stderr) = fx.cli(&["replay", "--check", "--user", &user]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    let fx = fx.restart().await;
    let db = fx.app.state.users.get(a.user_id).await.unwrap();
    let conn = db.read().await.unwrap();
    for (table, kind) in [("entries", "entry"), ("memories", "memory"), ("tags", "tag"), ("embeddings", "embedding")] {
        let sql = format!(
            "SELECT count(*), coalesce(sum(v.created_seq = (SELECT min(seq) FROM events e \
             WHERE e.aggregate_id = v.id AND e.kind = '{kind}')), 0) FROM {table} v"
        );
        let row = conn.query(&sql, ()).await.unwrap().next().await.unwrap().unwrap();
        let (count, keyed) = (row.get::<u64>(0).unwrap(), row.get::<u64>(1).unwrap());
        assert_eq!((keyed, count > 0), (count, true), "{table}");
    }
    assert_eq!(pulled_once_each(&fx.app, &a).await, pulled);
    let edit = fx.app.push_ok_said(&a, &[event("entry", entry, "put", &[(a.device_id, 3)], Some(b"three"))]).await;
    assert_eq!(statuses(&edit), ["applied"]);
    let edit = fx.app.push_ok_said(&a, &[event("memory", memory, "put", &[(a.device_id, 2)], Some(b"m'"))]).await;
    assert_eq!(statuses(&edit), ["applied"]);
    pulled_once_each(&fx.app, &a).await;
    let (code, stdout, stderr) = fx.cli(&["replay", "--check", "--user", &user]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::Local).await
                }
            )*
        }
        mod sqld {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::Sqld).await
                }
            )*
        }
        #[cfg(feature = "embedded-replicas")]
        mod sqld_replicas {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::SqldReplicas).await
                }
            )*
        }

        mod turso {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::Turso).await
                }
            )*
        }
        #[cfg(feature = "embedded-replicas")]
        mod turso_replicas {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::TursoReplicas).await
                }
            )*
        }
    };
}

conformance!(
    append_duplicates_and_reuse,
    pull_pages,
    projections_and_conflicts,
    concurrent_appends_from_two_servers,
    migrations_and_operator_commands,
    account_deletion,
    unfinished_provisioning_is_swept_at_start,
    two_servers_long_poll_and_revocation,
    aggregates_made_on_one_server_edited_on_another,
    views_keyed_by_id_migrate,
);

/// sqld stopped while a push is in flight: 503 `storage_unavailable` with
/// `Retry-After` (never a hang, never half a batch); restarted, the next
/// push succeeds on the same server, with no restart of the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqld_stopped_mid_push_is_unavailable_then_recovers() {
    let _ = tracing_subscriber::fmt().with_env_filter("error").with_test_writer().try_init();
    let mut fx = Fixture::new(Store::Sqld).await;
    let a = fx.app.register().await;
    let batch: Vec<Value> =
        (0..400).map(|_| event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(&[7u8; 2048]))).collect();
    let pushing = {
        let (client, url, token, body) =
            (fx.app.client.clone(), fx.app.url("/sync/push"), a.access_token.clone(), json!({ "events": batch }));
        tokio::spawn(async move { client.post(url).bearer_auth(token).json(&body).send().await.unwrap() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let sqld = fx.sqld.as_mut().unwrap();
    sqld.stop().await;
    let in_flight = pushing.await.unwrap();
    assert!(matches!(in_flight.status().as_u16(), 200 | 503), "{}", in_flight.status());

    let started = std::time::Instant::now();
    let resp = fx.app.push(&a, &batch[..1]).await;
    assert!(resp.headers().contains_key("retry-after"));
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    let resp = fx.app.get("/sync/pull?since=0", &a.access_token).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "failing is quick, not a hang");

    fx.sqld.as_mut().unwrap().restart().await;
    let sqld = fx.sqld.as_ref().unwrap();
    assert!(sqld.namespace_exists(&format!("user-{}", a.user_id)).await, "{}", sqld.log());
    let (head, _) = verify_chain(&fx.app, &a).await;
    assert!(head == 1 || head == 401, "all of the batch or none of it: head {head}");
    let retried = fx.app.push_ok(&a, &batch).await;
    let expected = if head == 1 { "applied" } else { "duplicate" };
    assert!(statuses(&retried).iter().all(|status| *status == expected), "{expected}");
    let (head, seqs) = verify_chain(&fx.app, &a).await;
    assert_eq!((head, seqs.len()), (401, 401));
}

/// Every namespace the service creates (the control database's and each
/// user's) commits with `synchronous = FULL` (sqld's `strong`), not sqld's
/// default `relaxed`, whose last commits an OS crash can take back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqld_namespaces_are_created_durable() {
    let fx = Fixture::new(Store::Sqld).await;
    let a = fx.app.register().await;
    let sqld = fx.sqld.as_ref().unwrap();
    for namespace in ["control".to_string(), format!("user-{}", a.user_id)] {
        let config = sqld.config(&namespace).await;
        assert_eq!(config["durability_mode"], "strong", "{namespace}: {config}");
    }
}

/// The round trips the design promises: a push (of any size) is one read
/// and one write batch, a pull page one read, counted where they are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_two_round_trips_and_a_pull_page_one() {
    round_trips(&Fixture::new(Store::Sqld).await).await;
}

/// [`a_push_is_two_round_trips_and_a_pull_page_one`] on `fx` (a remote backend).
pub async fn round_trips(fx: &Fixture) {
    let a = fx.app.register().await;
    let trips = |scrape: &str| {
        scrape
            .lines()
            .find_map(|line| line.strip_prefix("echolia_sqld_round_trips_total "))
            .map_or(0, |value| value.trim().parse::<u64>().unwrap())
    };
    for size in [1, 300] {
        let before = trips(&fx.app.scrape().await);
        let batch: Vec<Value> =
            (0..size).map(|_| event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"counted"))).collect();
        fx.app.push_ok(&a, &batch).await;
        assert_eq!(trips(&fx.app.scrape().await) - before, 2, "a push of {size}");
    }
    let before = trips(&fx.app.scrape().await);
    let page = fx.app.pull(&a, "since=0&limit=1000").await;
    assert_eq!(page["changes"].as_array().unwrap().len(), 301);
    assert_eq!(trips(&fx.app.scrape().await) - before, 1, "a pull page");
}

/// sqld frozen (SIGSTOP): the push answers 503 within `SQLD_TIMEOUT_SECS`,
/// and once it runs again the service goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sqld_times_out_then_recovers() {
    let fx = Fixture::new(Store::Sqld).await;
    let a = fx.app.register().await;
    let pid = fx.sqld.as_ref().unwrap().pid();
    // SAFETY: signals to a child of this process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    let resp = fx.app.push(&a, &[event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"x"))]).await;
    let waited = started.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    assert!(waited < std::time::Duration::from_secs(8), "bounded by SQLD_TIMEOUT_SECS=3: {waited:?}");
    let pushed = fx.app.push_ok(&a, &[event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"y"))]).await;
    assert_eq!(statuses(&pushed), ["applied"]);
    let status: Value = fx.app.get("/sync/status", &a.access_token).await.json().await.unwrap();
    assert_eq!(status["cursor"], 2);
}
