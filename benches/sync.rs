//! Criterion benchmarks of the sync core: the pure projector, and push and
//! pull through the real router (axum + libSQL on a temporary DATA_DIR,
//! `synchronous=FULL`), without a network in between.
//!
//! `cargo bench --bench sync` — figures and commands are recorded in benches/README.md.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use echolia::app::router;
use echolia::clock::SystemClock;
use echolia::config::Config;
use echolia::events::version::VersionVector;
use echolia::events::{Kind, NewEvent, Op, StoredEvent};
use echolia::projection::aggregate::{self, AggregateRow};
use echolia::state::AppState;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

const BATCH: usize = 100;
const PAYLOAD: usize = 512;
const PULL_ENTRIES: usize = 60_000;

fn projector(c: &mut Criterion) {
    let devices: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let aggregates: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    let log: Vec<StoredEvent> = (0..1000u64)
        .map(|i| {
            let device = devices[(i % 3) as usize];
            StoredEvent {
                seq: i + 1,
                device_id: device,
                received_at: Utc::now(),
                hash: [0; 32],
                event: NewEvent {
                    event_id: Uuid::new_v4(),
                    kind: Kind::Entry,
                    aggregate_id: aggregates[(i % 100) as usize],
                    parent_id: None,
                    op: Op::Put,
                    version: VersionVector::single(device, i / 3 + 1),
                    payload: None,
                    client_time: Utc::now(),
                },
            }
        })
        .collect();
    let mut group = c.benchmark_group("projector");
    group.throughput(Throughput::Elements(log.len() as u64));
    group.bench_function("fold 1000 events over 100 aggregates, 3 devices", |b| {
        b.iter(|| {
            let mut views: std::collections::HashMap<Uuid, AggregateRow> = Default::default();
            for stored in &log {
                let current = views.remove(&stored.event.aggregate_id);
                let (row, _) = aggregate::apply(current, stored);
                views.insert(row.id, row);
            }
            views
        })
    });
    group.finish();
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    token: String,
    device: Uuid,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let config = Config::from_lookup(|name| match name {
        "DATA_DIR" => Some(data_dir.clone()),
        "JWT_SECRET" => Some("benchmark-secret-benchmark-secret-0123".into()),
        "LOG_FORMAT" => Some("json".into()),
        _ => None,
    })
    .unwrap();
    let state = AppState::build(config, Arc::new(SystemClock)).await.unwrap();
    let app = router(state);
    let body = json!({"device_name": "bench", "device_type": "cli", "platform": "linux", "public_key": "k"});
    let resp = app.clone().oneshot(json_request("POST", "/auth/register", None, &body)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let session: Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
    Fixture {
        _dir: dir,
        app,
        token: session["access_token"].as_str().unwrap().to_owned(),
        device: Uuid::parse_str(session["device_id"].as_str().unwrap()).unwrap(),
    }
}

fn json_request(method: &str, uri: &str, token: Option<&str>, body: &Value) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    req.body(Body::from(serde_json::to_vec(body).unwrap())).unwrap()
}

/// A push body of `BATCH` new entries with random 512-byte payloads.
fn push_body(device: Uuid) -> Value {
    let events: Vec<Value> = (0..BATCH)
        .map(|_| {
            let payload: Vec<u8> = (0..PAYLOAD).map(|_| rand::random::<u8>()).collect();
            json!({
                "event_id": Uuid::new_v4(), "kind": "entry", "aggregate_id": Uuid::new_v4(), "op": "put",
                "version": {device.to_string(): 1}, "payload": STANDARD.encode(payload),
                "client_time": "2026-11-29T10:00:00Z",
            })
        })
        .collect();
    json!({ "events": events })
}

async fn send(app: &Router, req: Request<Body>) -> axum::body::Bytes {
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap()
}

fn push(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let fx = runtime.block_on(fixture());
    let mut group = c.benchmark_group("push");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("batch of 100 entries, 512-byte payloads, JSON", |b| {
        b.to_async(&runtime).iter_batched(
            || json_request("POST", "/sync/push", Some(&fx.token), &push_body(fx.device)),
            |req| send(&fx.app, req),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // Several users at once: each has its own database file and writer, so
    // their commits proceed side by side.
    const USERS: usize = 8;
    let users: Vec<Fixture> =
        runtime.block_on(async { futures_util::future::join_all((0..USERS).map(|_| fixture())).await });
    let mut group = c.benchmark_group("push");
    group.throughput(Throughput::Elements((USERS * BATCH) as u64));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("8 users at once, a batch of 100 entries each, 512-byte payloads, JSON", |b| {
        b.to_async(&runtime).iter_batched(
            || {
                users
                    .iter()
                    .map(|fx| json_request("POST", "/sync/push", Some(&fx.token), &push_body(fx.device)))
                    .collect::<Vec<_>>()
            },
            |requests| {
                let sends = users.iter().zip(requests).map(|(fx, req)| {
                    let app = fx.app.clone();
                    tokio::spawn(async move { send(&app, req).await })
                });
                futures_util::future::join_all(sends)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Pages through the whole account from 0, 1000 changes a request.
async fn cold_pull(app: &Router, token: &str, accept: &str) -> usize {
    let (mut since, mut rows) = (0u64, 0usize);
    loop {
        let req = Request::builder()
            .uri(format!("/sync/pull?since={since}&limit=1000"))
            .header("authorization", format!("Bearer {token}"))
            .header("accept", accept)
            .body(Body::empty())
            .unwrap();
        let bytes = send(app, req).await;
        #[derive(serde::Deserialize)]
        struct Page {
            changes: Vec<serde::de::IgnoredAny>,
            cursor: u64,
            has_more: bool,
        }
        let page: Page = if accept == "application/msgpack" {
            rmp_serde::from_slice(&bytes).unwrap()
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        rows += page.changes.len();
        since = page.cursor;
        if !page.has_more {
            return rows;
        }
    }
}

fn pull(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let fx = runtime.block_on(async {
        let fx = fixture().await;
        for _ in 0..PULL_ENTRIES / BATCH {
            send(&fx.app, json_request("POST", "/sync/push", Some(&fx.token), &push_body(fx.device))).await;
        }
        fx
    });
    let mut group = c.benchmark_group("cold pull");
    group.throughput(Throughput::Elements(PULL_ENTRIES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, accept) in
        [("60,000 entries, JSON", "application/json"), ("60,000 entries, MessagePack", "application/msgpack")]
    {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let rows = cold_pull(&fx.app, &fx.token, accept).await;
                assert_eq!(rows, PULL_ENTRIES);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, projector, push, pull);
criterion_main!(benches);
