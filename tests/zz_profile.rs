use echolia::app::AppState;
use echolia::clock::SystemClock;
use echolia::config::Config;
use echolia::events::{Kind, NewEvent, Op};
use echolia::projection::version::VersionVector;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[test]
fn profile_push() {
    let workers: usize = std::env::var("WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap().block_on(run());
}
async fn run() {
    let users: usize = std::env::var("USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let config = Config::from_lookup(|n| match n {
        "DATA_DIR" => Some(d.clone()),
        "JWT_SECRET" => Some("x".repeat(40)),
        _ => None,
    })
    .unwrap();
    let state = AppState::build(config, Arc::new(SystemClock)).await.unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..users {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let db = state.users.create(Uuid::new_v4()).await.unwrap();
            let device = Uuid::new_v4();
            let (mut apply, mut commit, mut lat) = (Duration::ZERO, Duration::ZERO, Vec::new());
            for _ in 0..rounds {
                let events: Vec<NewEvent> = (0..100)
                    .map(|_| NewEvent {
                        event_id: Uuid::new_v4(),
                        kind: Kind::Entry,
                        aggregate_id: Uuid::new_v4(),
                        parent_id: None,
                        op: Op::Put,
                        version: VersionVector::single(device, 1),
                        payload: Some(vec![7; 512]),
                        client_time: chrono::Utc::now(),
                    })
                    .collect();
                let t = Instant::now();
                let mut tx = db.begin_write().await.unwrap();
                echolia::sync::push::apply_batch(&mut tx, device, chrono::Utc::now(), events).await.unwrap();
                let t2 = t.elapsed();
                tx.commit().await.unwrap();
                let t3 = t.elapsed();
                apply += t2;
                commit += t3 - t2;
                lat.push(t3);
            }
            (apply, commit, lat)
        }));
    }
    let mut lat = Vec::new();
    let (mut apply, mut commit) = (Duration::ZERO, Duration::ZERO);
    for t in tasks {
        let (a, c, l) = t.await.unwrap();
        apply += a;
        commit += c;
        lat.extend(l);
    }
    let wall = start.elapsed();
    lat.sort();
    println!("{}", std::fs::read_to_string("/proc/self/io").unwrap().replace('\n', " "));
    let n = lat.len();
    println!("users {users} rounds {rounds}: {:.0} events/s wall {wall:?}; avg apply {:?} commit {:?}; p50 {:?} p99 {:?} max {:?}",
        (n * 100) as f64 / wall.as_secs_f64(), apply / n as u32, commit / n as u32, lat[n / 2], lat[n * 99 / 100], lat[n - 1]);
}
