//! The load generator (`echolia-load`, the built binary) against a real
//! server: tiny steady, long-poll, single-user and open-loop runs, usage
//! errors, and a server that is not there. Atuin's server, when
//! `ATUIN_SERVER_BIN` names its binary, for the `--target atuin` runs.

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

/// Entry events stored in all the users' logs.
async fn stored_entries(app: &TestApp) -> u64 {
    let mut stored = 0;
    for file in user_db_files(app) {
        let conn = libsql::Builder::new_local(file).build().await.unwrap().connect().unwrap();
        let mut rows = conn.query("SELECT count(*) FROM events WHERE kind = 'entry'", ()).await.unwrap();
        stored += rows.next().await.unwrap().unwrap().get::<u64>(0).unwrap();
    }
    stored
}

/// Runs the binary and decodes its JSON report; the run must succeed.
async fn load_json(args: &[&str]) -> Value {
    let output = load(args).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
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
    assert_eq!(user_db_files(&app).len(), 2);
    assert_eq!(stored_entries(&app).await, pushed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_user_run_reports_each_slice_of_the_log_and_pulls_it_all_back() {
    let app = spawn_app().await;
    let url = app.url("");
    // The server runs in this process: its CPU is this process's.
    let pid = std::process::id().to_string();
    let report = load_json(&[
        "--url",
        &url,
        "--scenario",
        "single-user",
        "--devices",
        "2",
        "--events",
        "1000",
        "--batch",
        "50",
        "--slice",
        "300",
        "--payload",
        "512",
        "--ids",
        "v4",
        "--format",
        "msgpack",
        "--server-pid",
        &pid,
        "--json",
    ])
    .await;

    assert_eq!(report["scenario"], "single-user");
    assert_eq!((report["target"].as_str(), report["ids"].as_str()), (Some("echolia"), Some("v4")));
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["settings"]["duration_secs"], Value::Null, "bounded by --events alone: {report}");
    let single = &report["single_user"];
    assert_eq!(single["events"], 1000, "{report}");
    assert_eq!(report["operations"]["push"]["items"], 1000);
    assert_eq!(report["operations"]["push"]["ok"], 20, "batches of 50");
    assert_eq!(report["push_results"]["applied"], 1000);
    let bounds: Vec<(u64, u64)> = single["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["from"].as_u64().unwrap(), s["to"].as_u64().unwrap()))
        .collect();
    assert_eq!(bounds, [(0, 300), (300, 600), (600, 900), (900, 1000)], "{report}");
    assert!(single["slices"].as_array().unwrap().iter().all(|s| s["events_per_sec"].as_f64().unwrap() > 0.0));
    assert!(single["last_over_first"].as_f64().unwrap() > 0.0, "{report}");

    // The fresh device pulled every event back, in pages of 1,000.
    let pull = &single["pull"];
    assert_eq!((pull["rows"].as_u64(), pull["pages"].as_u64()), (Some(1000), Some(1)), "{report}");
    assert_eq!(report["operations"]["pull"]["items"], 1000);
    assert!(pull["rows_per_sec"].as_f64().unwrap() > 0.0);

    let cpu = &report["server_cpu"];
    assert_eq!(cpu["pushed_events"], 1000, "{report}");
    assert!(cpu["cpu_secs"].as_f64().unwrap() > 0.0, "pushing 1,000 events takes CPU: {report}");
    assert!(cpu["us_per_event"].as_f64().unwrap() > 0.0);

    assert_eq!(user_db_files(&app).len(), 1, "one user");
    assert_eq!(stored_entries(&app).await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_run_sends_its_seeded_schedule_and_times_from_it() {
    let app = spawn_app().await;
    let url = app.url("");
    let args = [
        "--url",
        url.as_str(),
        "--open-loop",
        "--rate",
        "400",
        "--batch",
        "10",
        "--users",
        "2",
        "--devices",
        "2",
        "--duration",
        "1",
        "--seed",
        "42",
        "--json",
    ];
    let report = load_json(&args).await;
    assert_eq!(report["scenario"], "open-loop");
    assert_eq!(report["errors"], 0, "{report}");
    let open = &report["open_loop"];
    let scheduled = open["scheduled_requests"].as_u64().unwrap();
    // 40 pushes a second expected; a Poisson count over 1 s stays well within 15..80.
    assert!((15..80).contains(&scheduled), "{report}");
    let push = &report["operations"]["push"];
    assert_eq!(push["ok"].as_u64(), Some(scheduled), "every scheduled push was sent and answered: {report}");
    assert_eq!(push["items"].as_u64(), Some(scheduled * 10));
    assert_eq!(open["offered_events_per_sec"], 400.0);
    assert!(open["achieved_events_per_sec"].as_f64().unwrap() > 0.0);
    assert!(open["late_starts"].as_u64().unwrap() <= scheduled);
    assert!(push["latency_ms"]["max"].as_f64().unwrap() > 0.0);

    // The same seed, the same schedule; everything reached the logs.
    let again = load_json(&args).await;
    assert_eq!(again["open_loop"]["scheduled_requests"].as_u64(), Some(scheduled), "{again}");
    assert_eq!(stored_entries(&app).await, 2 * scheduled * 10);
}

#[tokio::test]
async fn options_that_do_not_go_together_are_usage_errors() {
    let cases: [&[&str]; 5] = [
        &["--open-loop"],
        &["--rate", "100"],
        &["--open-loop", "--rate", "100", "--scenario", "cold-pull"],
        &["--target", "atuin", "--format", "msgpack", "--scenario", "single-user"],
        &["--scenario", "single-user", "--batch", "300", "--slice", "1000"],
    ];
    for args in cases {
        let output = load(args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let output = load(&["--target", "atuin", "--scenario", "steady"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--no-pull"));
}

/// Atuin's server (`cargo install atuin-server --version 18.16.1 --locked`) on a temporary
/// SQLite file and a free port, open to registration; stopped when dropped.
struct AtuinServer {
    child: std::process::Child,
    url: String,
    _dir: TempDir,
}

impl Drop for AtuinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_atuin(bin: &str) -> AtuinServer {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "host = \"127.0.0.1\"\nport = {port}\nopen_registration = true\ndb_uri = \"sqlite://{}/atuin.db\"\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("server.toml"), config).unwrap();
    let child = Command::new(bin)
        .arg("start")
        .env("ATUIN_CONFIG_DIR", dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let server = AtuinServer { child, url, _dir: dir };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{}/healthz", server.url)).send().await.is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("Atuin's server did not start at {}", server.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_atuin_target_pushes_and_pulls_atuins_record_api() {
    let Ok(bin) = std::env::var("ATUIN_SERVER_BIN") else {
        eprintln!("skipped: set ATUIN_SERVER_BIN to an atuin-server 18.16.1 binary to run the Atuin target");
        return;
    };
    let atuin = spawn_atuin(&bin).await;
    let pid = atuin.child.id().to_string();

    let report = load_json(&[
        "--url",
        &atuin.url,
        "--target",
        "atuin",
        "--scenario",
        "single-user",
        "--events",
        "600",
        "--batch",
        "100",
        "--slice",
        "200",
        "--server-pid",
        &pid,
        "--json",
    ])
    .await;
    assert_eq!(report["target"], "atuin");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["single_user"]["events"], 600, "{report}");
    assert_eq!(report["single_user"]["slices"].as_array().unwrap().len(), 3);
    // Both hosts' records, read back host by host from idx 0.
    assert_eq!(report["single_user"]["pull"]["rows"], 600, "{report}");
    assert_eq!(report["operations"]["status"]["ok"], 1);
    assert!(report["server_cpu"]["us_per_event"].as_f64().unwrap() > 0.0, "{report}");

    let report = load_json(&[
        "--url",
        &atuin.url,
        "--target",
        "atuin",
        "--scenario",
        "steady",
        "--no-pull",
        "--users",
        "2",
        "--max-requests",
        "10",
        "--duration",
        "5",
        "--json",
    ])
    .await;
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["operations"]["push"]["items"], 1000, "10 pushes of 100: {report}");
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
