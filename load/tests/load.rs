//! The load generator (`echolia-load`, the built binary) against a real
//! server: a tiny steady run, a tiny long-poll run, and a server that is
//! not there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use echolia::app;
use echolia::clock::SystemClock;
use echolia::config::Config;
use echolia::state::AppState;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A server in this process on random ports, with a temporary `DATA_DIR`.
/// Dropping it starts the server's graceful shutdown.
struct TestApp {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    _shutdown: oneshot::Sender<()>,
    dir: TempDir,
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let env = HashMap::from([
        ("DATA_DIR", dir.path().display().to_string()),
        ("REGISTER_RATE_LIMIT", "100000".to_owned()),
        ("BIND_ADDR", "127.0.0.1:0".to_owned()),
        ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
    ]);
    let config = Config::from_lookup(|name| env.get(name).cloned()).unwrap();
    let state = AppState::build(config, Arc::new(SystemClock)).await.unwrap();
    let listeners = app::Listeners::bind(&state.config).await.unwrap();
    let (addr, metrics_addr) = listeners.local_addrs().unwrap();
    let (shutdown, stop) = oneshot::channel::<()>();
    tokio::spawn(app::serve(listeners, state, async {
        let _ = stop.await;
    }));
    TestApp { addr, metrics_addr, _shutdown: shutdown, dir }
}

/// The users' database files under `DATA_DIR/users`.
fn user_db_files(app: &TestApp) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(app.dir.path().join("users")).unwrap();
    entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "db")).collect()
}

/// Runs the binary off the runtime's threads, so the in-process server keeps serving.
async fn load(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_echolia-load")).args(args).output())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_steady_run_reports_pushes_that_the_server_kept() {
    let app = spawn_app().await;
    let url = app.url("");
    let output = load(&[
        "--url",
        &url,
        "--users",
        "2",
        "--devices",
        "2",
        "--batch",
        "10",
        "--payload",
        "64",
        "--duration",
        "2",
        "--max-requests",
        "20",
        "--json",
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(report["scenario"], "steady");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["requests"].as_u64().unwrap() <= 20, "{report}");
    let push = &report["operations"]["push"];
    assert!(push["requests"].as_u64().unwrap() > 0, "{report}");
    let pushed = push["items"].as_u64().unwrap();
    assert_eq!(pushed, push["ok"].as_u64().unwrap() * 10);
    assert_eq!(report["push_results"]["applied"], pushed, "each device edits only its own entries");
    assert!(report["operations"]["pull"]["ok"].as_u64().unwrap() > 0, "{report}");
    assert!(push["latency_ms"]["max"].as_f64().unwrap() > 0.0);

    // Every event the report counts is in a user's log: 2 users, 4 devices.
    let files = user_db_files(&app);
    assert_eq!(files.len(), 2);
    let mut stored = 0;
    for file in files {
        let conn = libsql::Builder::new_local(file).build().await.unwrap().connect().unwrap();
        let mut rows = conn.query("SELECT count(*) FROM events WHERE kind = 'entry'", ()).await.unwrap();
        stored += rows.next().await.unwrap().unwrap().get::<u64>(0).unwrap();
    }
    assert_eq!(stored, pushed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiting_device_is_woken_by_its_users_push() {
    let app = spawn_app().await;
    let url = app.url("");
    let metrics = format!("http://{}", app.metrics_addr);
    let output = load(&[
        "--url",
        &url,
        "--metrics-url",
        &metrics,
        "--scenario",
        "long-poll",
        "--users",
        "3",
        "--devices",
        "2",
        "--batch",
        "1",
        "--duration",
        "1",
        "--settle",
        "10",
        "--json",
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["scenario"], "long-poll");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["operations"]["push"]["ok"], 3, "one push per user: {report}");
    let wake = &report["operations"]["wake"];
    assert_eq!(wake["ok"], 6, "both waiting devices of each user woke with its change: {report}");
    assert_eq!(wake["items"], 6);
    // Woken by the push: the wait itself would have ended 21 s later, with no change (an error above).
    assert!(wake["latency_ms"]["max"].as_f64().unwrap() < 5_000.0, "{report}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let output = load(&["--url", &url, "--duration", "1"]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the server at"), "{stderr}");
    assert!(output.stdout.is_empty());
}
