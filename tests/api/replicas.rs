//! Embedded replicas (`EMBEDDED_REPLICAS=true`) against the real sqld: what
//! one API server writes reaches another server's replica file by its
//! interval sync and is read from there; a replica that cannot sync answers
//! nothing older than `REPLICA_MAX_STALENESS_MS` (its reads go to the primary).
//! On Turso (the fake Platform API over the real sqld, [`crate::turso_fake`])
//! the same, and a replica follows its database's token: renewed, or refused
//! and minted again. The storage conformance suite runs with replicas too
//! (`crate::conformance`, `sqld_replicas` and `turso_replicas`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{event, spawn_app_with, Session, TestApp};
use crate::sqld::Sqld;
use crate::turso_fake::FakeTurso;

/// Replicas on, synced every 200 ms, answering reads up to 1 s old.
fn replica_vars(sqld: &Sqld) -> Vec<(&'static str, String)> {
    with_replicas(sqld.vars())
}

/// `vars` (a backend's), with replicas as [`replica_vars`] says.
fn with_replicas(mut vars: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    vars.extend([
        ("EMBEDDED_REPLICAS", "true".to_owned()),
        ("REPLICA_SYNC_INTERVAL_MS", "200".to_owned()),
        ("REPLICA_MAX_STALENESS_MS", "1000".to_owned()),
        ("REPLICA_SYNC_TIMEOUT_MS", "1000".to_owned()),
    ]);
    vars
}

async fn spawn(vars: &[(&'static str, String)]) -> TestApp {
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app_with(&vars).await
}

/// (reads answered by a replica, reads sent to the primary) of a server.
fn replica_reads(app: &TestApp) -> (u64, u64) {
    let stats = &app.state.users.replicas().expect("replicas are on").stats;
    (stats.reads.load(Ordering::Relaxed), stats.fallbacks.load(Ordering::Relaxed))
}

/// One number read from the replica file of `user` that `app` keeps, as an operator would.
async fn read_replica_file(app: &TestApp, user: Uuid, sql: &str) -> u64 {
    let dir = app.state.users.replicas().unwrap().dir().to_owned();
    let db = libsql::Builder::new_local(dir.join(format!("{user}.db")))
        .flags(libsql::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .build()
        .await
        .unwrap();
    let conn = db.connect().unwrap();
    // The replicator may hold the file a moment (reopened, it recovers the WAL), as the server's reads wait for.
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut rows = conn.query(sql, ()).await.unwrap();
    rows.next().await.unwrap().unwrap().get(0).unwrap()
}

/// Events in the replica file of `user` that `app` keeps.
async fn events_in_replica(app: &TestApp, user: Uuid) -> u64 {
    read_replica_file(app, user, "SELECT count(*) FROM events").await
}

async fn entry_ids(app: &TestApp, session: &Session) -> Vec<String> {
    let page = app.pull(session, "since=0").await;
    page["changes"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

fn put(session: &Session, payload: &[u8]) -> (Uuid, Value) {
    let id = Uuid::new_v4();
    (id, event("entry", id, "put", &[(session.device_id, 1)], Some(payload)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_server_is_read_from_anothers_replica_after_sync() {
    let sqld = Sqld::start().await;
    write_here_read_there(spawn(&replica_vars(&sqld)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_turso_a_write_through_one_server_is_read_from_anothers_replica_after_sync() {
    let sqld = Sqld::start().await;
    let fake = FakeTurso::start(&sqld).await;
    write_here_read_there(spawn(&with_replicas(fake.vars())).await).await;
}

/// A write through `writer` is read from its replica at once, and from
/// another server's after that one's interval sync.
async fn write_here_read_there(writer: TestApp) {
    let reader = writer.beside().await;
    assert_ne!(
        writer.state.users.replicas().unwrap().dir(),
        reader.state.users.replicas().unwrap().dir(),
        "each server keeps its replicas in a directory of its own"
    );
    let a = writer.register().await;
    // The reader's first read opens its replica.
    assert_eq!(entry_ids(&reader, &a).await, Vec::<String>::new());

    let (id, put) = put(&a, b"written through the first server");
    writer.push_ok(&a, &[put]).await;
    // The writer reads its own write from its replica at once (it synced before answering).
    let before = replica_reads(&writer);
    assert_eq!(entry_ids(&writer, &a).await, [id.to_string()]);
    assert_eq!(replica_reads(&writer), (before.0 + 1, before.1), "the writer's read came from its replica");
    // Any other write through it (here a pairing, a device event in the log) is read back at once too:
    // the replica, fresh a moment ago, syncs before it answers again.
    let b = writer.pair(&a, "Phone").await;
    let events: Value = writer.get("/sync/events?since=0", &b.access_token).await.json().await.unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 3, "{events}");
    assert_eq!(replica_reads(&writer), (before.0 + 2, before.1));

    // The reader's replica file gets the event by its interval sync, with no request to the reader.
    let started = Instant::now();
    while events_in_replica(&reader, a.user_id).await < 3 {
        assert!(started.elapsed() < Duration::from_secs(5), "the reader's replica did not sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = replica_reads(&reader);
    assert_eq!(entry_ids(&reader, &a).await, [id.to_string()]);
    let events: Value = reader.get("/sync/events?since=0", &a.access_token).await.json().await.unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 3, "{events}");
    let status: Value = reader.get("/sync/status", &a.access_token).await.json().await.unwrap();
    assert_eq!(status["entries"], 1, "{status}");
    assert_eq!(replica_reads(&reader), (before.0 + 3, before.1), "pull, events and status came from the replica");

    // Account deletion takes the replica files of every server on this data directory.
    assert_eq!(writer.delete("/account", &a.access_token).await.status(), StatusCode::NO_CONTENT);
    for app in [&writer, &reader] {
        let dir = app.state.users.replicas().unwrap().dir().to_owned();
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&a.user_id.to_string()))
            .collect();
        assert!(left.is_empty(), "{left:?} left in {}", dir.display());
    }
}

/// Forwards to sqld; while `blocked`, replication requests (libSQL's
/// gRPC-web `wal_log` service) get no answer, as if that path were cut;
/// while `refused`, they are answered 401. Tokens revoked
/// ([`Proxy::revoke_seen`]) are answered 401 on every path.
struct Proxy {
    blocked: Arc<AtomicBool>,
    refused: Arc<AtomicBool>,
    faults: Arc<ProxyFaults>,
    url: String,
    addr: std::net::SocketAddr,
}

#[derive(Default)]
struct ProxyFaults {
    blocked: Arc<AtomicBool>,
    refused: Arc<AtomicBool>,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    revoked: std::sync::Mutex<std::collections::HashSet<String>>,
}

async fn forward(State((upstream, proxy)): State<(String, Arc<ProxyFaults>)>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let replication = parts.uri.path().starts_with("/wal_log");
    // Hrana's `Authorization`, or replication's `x-authorization`.
    let token = ["authorization", "x-authorization"]
        .iter()
        .find_map(|name| parts.headers.get(*name))
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim_start_matches("Bearer ").to_owned());
    if let Some(token) = &token {
        if proxy.revoked.lock().unwrap().contains(token) {
            return Response::builder().status(401).body(Body::from("Unauthorized")).unwrap();
        }
        proxy.seen.lock().unwrap().insert(token.clone());
    }
    if proxy.blocked.load(Ordering::Relaxed) && replication {
        std::future::pending::<()>().await;
    }
    if proxy.refused.load(Ordering::Relaxed) && replication {
        // As a database answers a token it does not take (gRPC-web maps it to `Unauthenticated`).
        return Response::builder().status(401).body(Body::from("Unauthorized")).unwrap();
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let url = format!("{upstream}{}", parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    let mut forwarded = reqwest::Client::new().request(parts.method, url).body(body);
    // `Host` goes on: on Turso it names the database.
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "content-length" | "connection" | "transfer-encoding") {
            forwarded = forwarded.header(name, value);
        }
    }
    // Upstream down (a test stopped it): a gateway's answer, not a panic in the proxy.
    let Ok(answer) = forwarded.send().await else {
        return Response::builder().status(502).body(Body::from("Bad Gateway")).unwrap();
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if !matches!(name.as_str(), "content-length" | "connection" | "transfer-encoding") {
            response = response.header(name, value);
        }
    }
    response.body(Body::from(answer.bytes().await.unwrap())).unwrap()
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let faults = Arc::new(ProxyFaults::default());
        let (blocked, refused) = (faults.blocked.clone(), faults.refused.clone());
        let app = axum::Router::new().fallback(forward).with_state((upstream, faults.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Proxy { blocked, refused, faults, url: format!("http://{addr}"), addr }
    }

    /// Every token seen so far is refused from now on, as after `turso db tokens invalidate`.
    fn revoke_seen(&self) {
        let seen = self.faults.seen.lock().unwrap().clone();
        self.faults.revoked.lock().unwrap().extend(seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_sync_serves_nothing_older_than_the_bound() {
    let sqld = Sqld::start().await;
    let writer = spawn(&replica_vars(&sqld)).await;
    let proxy = Proxy::start(sqld.url()).await;
    let reader = writer.beside_with(&[("SQLD_URL", proxy.url.as_str())]).await;
    let a = writer.register().await;
    let (first, put_first) = put(&a, b"before the cut");
    writer.push_ok(&a, &[put_first]).await;
    assert_eq!(entry_ids(&reader, &a).await, [first.to_string()], "through the proxy, replica and all");

    // Replication cut; the primary still answers through the same proxy.
    proxy.blocked.store(true, Ordering::Relaxed);
    let (second, put_second) = put(&a, b"after the cut");
    writer.push_ok(&a, &[put_second]).await;
    let cut = Instant::now();
    // Within the bound the replica may answer, without the second entry.
    let before = replica_reads(&reader);
    let seen = entry_ids(&reader, &a).await;
    if cut.elapsed() < Duration::from_millis(800) {
        assert_eq!(seen, [first.to_string()], "a replica within its bound answers what it holds");
        assert_eq!(replica_reads(&reader).0, before.0 + 1);
    }

    // Past the bound: never the stale page. The read goes to the primary.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = replica_reads(&reader);
    let started = Instant::now();
    let mut seen = entry_ids(&reader, &a).await;
    seen.sort();
    let mut both = vec![first.to_string(), second.to_string()];
    both.sort();
    assert_eq!(seen, both, "past the bound, nothing stale");
    assert!(started.elapsed() < Duration::from_secs(3), "the sync's timeout bounds the read: {:?}", started.elapsed());
    assert_eq!(replica_reads(&reader), (before.0, before.1 + 1), "answered by the primary");
    let status: Value = reader.get("/sync/status", &a.access_token).await.json().await.unwrap();
    assert_eq!(status["entries"], 2, "{status}");

    // Replication back: the replica catches up by its interval sync and answers again.
    proxy.blocked.store(false, Ordering::Relaxed);
    let started = Instant::now();
    while events_in_replica(&reader, a.user_id).await < 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "the replica did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = replica_reads(&reader);
    let mut seen = entry_ids(&reader, &a).await;
    seen.sort();
    assert_eq!(seen, both);
    assert_eq!(replica_reads(&reader).0, before.0 + 1, "from the replica again");
}

/// The stats of `app`'s replicas.
fn stats(app: &TestApp) -> &echolia::store::replica::ReplicaStats {
    &app.state.users.replicas().expect("replicas are on").stats
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Waits until `user`'s replica kept by `app` holds `events` events.
async fn replica_holds(app: &TestApp, user: Uuid, events: u64) {
    let started = Instant::now();
    while events_in_replica(app, user).await < events {
        assert!(started.elapsed() < Duration::from_secs(10), "the replica did not get to {events} events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pages of `user`'s replica file kept by `app`.
async fn replica_pages(app: &TestApp, user: Uuid) -> u64 {
    read_replica_file(app, user, "PRAGMA page_count").await
}

/// A Turso database token lives 4 s (renewed at 3 s): the reader's replica
/// takes each renewed token at its next sync, opening its replicating handle
/// again on the same file, and goes on answering every read, fresh. The
/// reopened handle fetches only the new frames, not the database again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_turso_a_replica_keeps_syncing_across_token_renewals() {
    let _tokens = crate::turso::TOKENS.lock().await;
    let sqld = Sqld::start().await;
    let fake = FakeTurso::start(&sqld).await;
    let mut vars = with_replicas(fake.vars());
    // Timing is not what this test is about: a slow sync on a busy machine must not send a read to the primary.
    vars.extend([
        ("TURSO_TOKEN_EXPIRATION", "4s".to_owned()),
        ("REPLICA_SYNC_TIMEOUT_MS", "5000".to_owned()),
        ("REPLICA_MAX_STALENESS_MS", "5000".to_owned()),
    ]);
    let writer = spawn(&vars).await;
    let reader = writer.beside().await;
    let a = writer.register().await;
    let name = echolia::store::remote::turso::user_database(a.user_id);
    // Some bulk first, so a download of the whole database would show.
    let bulk: Vec<Value> = (0..40).map(|n| put(&a, &[n; 8192]).1).collect();
    writer.push_ok(&a, &bulk).await;
    let mut ids: Vec<String> = entry_ids(&reader, &a).await;
    assert_eq!(ids.len(), 40);
    let pages = replica_pages(&reader, a.user_id).await;
    let first_download = count(&stats(&reader).frames_synced);
    assert!(pages >= 80, "{pages} pages");
    let (mints, reopens, fallbacks) =
        (fake.mints(&name), count(&stats(&reader).token_reopens), count(&stats(&reader).fallbacks));

    let started = Instant::now();
    let mut events = 41; // the device's registration, and the bulk
    let mut most_frames_in_a_round = 0;
    // Frames synced between rounds (by the interval sync, where a reopen may fall): nothing new was written then.
    let (mut between_rounds, mut round_ended) = (0, first_download);
    // Two renewals (at about 3 s and 6 s), a round of writes and reads every 300 ms or so.
    while count(&stats(&reader).token_reopens) < reopens + 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "no two renewals in 30 s");
        let frames = count(&stats(&reader).frames_synced);
        between_rounds += frames - round_ended;
        let (id, event) = put(&a, b"one more");
        writer.push_ok(&a, &[event]).await;
        ids.push(id.to_string());
        events += 1;
        replica_holds(&reader, a.user_id, events).await;
        round_ended = count(&stats(&reader).frames_synced);
        most_frames_in_a_round = most_frames_in_a_round.max(round_ended - frames);
        let reads = count(&stats(&reader).reads);
        let mut seen = entry_ids(&reader, &a).await;
        seen.sort();
        ids.sort();
        assert_eq!(seen, ids, "after {:?}", started.elapsed());
        assert_eq!(count(&stats(&reader).reads), reads + 1, "from the replica, after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let reopened = count(&stats(&reader).token_reopens) - reopens;
    assert!(fake.mints(&name) >= mints + 2, "{} mints, {mints} before", fake.mints(&name));
    assert_eq!(count(&stats(&reader).fallbacks), fallbacks, "no read went to the primary");
    // No round fetched the database again: each took its own write's frames.
    assert!(most_frames_in_a_round * 4 < pages, "{most_frames_in_a_round} frames in a round, of {pages} pages");
    assert!(between_rounds * 4 < pages, "{between_rounds} frames synced between rounds, of {pages} pages");
    eprintln!(
        "{reopened} reopens in {:?}; at most {most_frames_in_a_round} frames synced in a round, \
         {between_rounds} between rounds; \
         the replica holds {pages} pages, {first_download} frames came with its first syncs",
        started.elapsed()
    );
}

/// The replica's token is invalidated (every token out so far refused, as
/// after `turso db tokens invalidate`) while replication stays refused: the
/// replica's failed sync finds the token refused and forgets it, with no
/// request to that server; a new one is minted (once, not at every sync);
/// reads past the bound go to the primary with it; once replication is back
/// the replica, reopened with the new token, answers again, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_turso_a_refused_token_sends_reads_to_the_primary_until_a_new_one_is_minted() {
    let _tokens = crate::turso::TOKENS.lock().await;
    let sqld = Sqld::start().await;
    let fake = FakeTurso::start(&sqld).await;
    let proxy = Proxy::start(sqld.url()).await;
    let writer = spawn(&with_replicas(fake.vars())).await;
    let connect_to = proxy.addr.to_string();
    let reader = writer.beside_with(&[("TURSO_CONNECT_TO", connect_to.as_str())]).await;
    let a = writer.register().await;
    let name = echolia::store::remote::turso::user_database(a.user_id);
    let (first, put_first) = put(&a, b"before the refusal");
    writer.push_ok(&a, &[put_first]).await;
    let reads = count(&stats(&reader).reads);
    assert_eq!(entry_ids(&reader, &a).await, [first.to_string()], "through the proxy, replica and all");
    assert_eq!(count(&stats(&reader).reads), reads + 1);

    let (mints, reopens, failures) =
        (fake.mints(&name), count(&stats(&reader).token_reopens), count(&stats(&reader).sync_failures));
    proxy.refused.store(true, Ordering::Relaxed);
    proxy.revoke_seen();
    let (second, put_second) = put(&a, b"after the refusal");
    writer.push_ok(&a, &[put_second]).await;
    // Only the reader's replica syncs here: it alone can find its token refused.
    let started = Instant::now();
    while fake.mints(&name) == mints {
        assert!(started.elapsed() < Duration::from_secs(10), "the refused token was not minted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(count(&stats(&reader).sync_failures) > failures);
    // Past the bound: the primary answers, everything, with the new token.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fallbacks = count(&stats(&reader).fallbacks);
    let mut seen = entry_ids(&reader, &a).await;
    seen.sort();
    let mut both = vec![first.to_string(), second.to_string()];
    both.sort();
    assert_eq!(seen, both, "past the bound, nothing stale");
    assert_eq!(count(&stats(&reader).fallbacks), fallbacks + 1, "answered by the primary");
    // A token the database takes is kept while replication fails for another reason: no more
    // mints. (After a pause: a refusal on libSQL's client, which the revoked token may have met in
    // a request under way, has every token minted again, the writer's too.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (minted, failures) = (fake.mints(&name), count(&stats(&reader).sync_failures));
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(count(&stats(&reader).sync_failures) > failures, "replication still fails");
    assert_eq!(fake.mints(&name), minted, "no token minted while the one taken is good");

    proxy.refused.store(false, Ordering::Relaxed);
    replica_holds(&reader, a.user_id, 3).await;
    assert!(count(&stats(&reader).token_reopens) > reopens, "the replica took the new token");
    let reads = count(&stats(&reader).reads);
    let mut seen = entry_ids(&reader, &a).await;
    seen.sort();
    assert_eq!(seen, both);
    assert_eq!(count(&stats(&reader).reads), reads + 1, "from the replica again");
}
