//! Embedded replicas (`EMBEDDED_REPLICAS=true`) against the real sqld: what
//! one API server writes reaches another server's replica file by its
//! interval sync and is read from there; a replica that cannot sync answers
//! nothing older than `REPLICA_MAX_STALENESS_MS` (its reads go to the primary).
//! The storage conformance suite runs on sqld with replicas too
//! (`crate::conformance`, `sqld_replicas`).

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

/// Replicas on, synced every 200 ms, answering reads up to 1 s old.
fn replica_vars(sqld: &Sqld) -> Vec<(&'static str, String)> {
    let mut vars = sqld.vars();
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

/// Events in the replica file of `user` that `app` keeps, read as an operator would.
async fn events_in_replica(app: &TestApp, user: Uuid) -> u64 {
    let dir = app.state.users.replicas().unwrap().dir().to_owned();
    let db = libsql::Builder::new_local(dir.join(format!("{user}.db")))
        .flags(libsql::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .build()
        .await
        .unwrap();
    let conn = db.connect().unwrap();
    let mut rows = conn.query("SELECT count(*) FROM events", ()).await.unwrap();
    rows.next().await.unwrap().unwrap().get(0).unwrap()
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
    let writer = spawn(&replica_vars(&sqld)).await;
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
/// gRPC-web `wal_log` service) get no answer, as if that path were cut.
struct Proxy {
    blocked: Arc<AtomicBool>,
    url: String,
}

async fn forward(State((upstream, blocked)): State<(String, Arc<AtomicBool>)>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if blocked.load(Ordering::Relaxed) && parts.uri.path().starts_with("/wal_log") {
        std::future::pending::<()>().await;
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let url = format!("{upstream}{}", parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    let mut forwarded = reqwest::Client::new().request(parts.method, url).body(body);
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection" | "transfer-encoding") {
            forwarded = forwarded.header(name, value);
        }
    }
    let answer = forwarded.send().await.unwrap();
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
        let blocked = Arc::new(AtomicBool::new(false));
        let app = axum::Router::new().fallback(forward).with_state((upstream, blocked.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Proxy { blocked, url }
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
