//! The shipped binary itself: configuration from the environment, JSON logs
//! that never carry secrets, a graceful stop on SIGTERM, and SQLite's
//! memory held to `SQLITE_MEMORY_LIMIT_MB`.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::device_body;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn echolia(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_echolia"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", data_dir)
        .current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

async fn wait_for_health(client: &reqwest::Client, base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(resp) = client.get(format!("{base}/health")).send().await {
            if resp.status() == StatusCode::OK {
                return;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "the server exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not answer /health within 30 s");
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the server did not stop within 20 s of SIGTERM");
}

#[tokio::test]
async fn the_binary_serves_logs_json_without_secrets_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = echolia(dir.path())
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("LOG_FORMAT", "json")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_for_health(&client, &base, &mut child).await;

    let resp =
        client.post(format!("{base}/auth/register")).json(&device_body("Laptop", "desktop")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let session: Value = resp.json().await.unwrap();
    let access = session["access_token"].as_str().unwrap().to_owned();
    let refresh = session["refresh_token"].as_str().unwrap().to_owned();
    let resp = client.get(format!("{base}/auth/devices")).bearer_auth(&access).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client
        .post(format!("{base}/auth/refresh"))
        .json(&serde_json::json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the binary serves metrics on METRICS_ADDR");
    let scrape = resp.text().await.unwrap();
    assert!(scrape.contains("echolia_user_databases 1\n"), "{scrape}");
    assert!(scrape.contains("route=\"/auth/register\",method=\"POST\",status=\"201\"} 1\n"), "{scrape}");

    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let exit = wait_for_exit(&mut child);
    assert!(exit.success(), "graceful stop exits 0, got {exit:?}");

    let mut logs = String::new();
    child.stdout.take().unwrap().read_to_string(&mut logs).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 4, "{logs}");
    for line in &lines {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
    assert!(logs.contains("/auth/register"), "requests are traced by route");
    assert!(logs.contains("\"status\":201"), "with their status");
    let jwt_secret = std::fs::read_to_string(dir.path().join("jwt_secret")).unwrap();
    for secret in [access.as_str(), refresh.as_str(), "BEGIN PUBLIC KEY", jwt_secret.trim()] {
        assert!(!logs.contains(secret), "a secret or key reached the logs");
    }
}

#[test]
fn bad_configuration_stops_the_binary_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let output = echolia(dir.path()).env("ENVIRONMENT", "production").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");

    let output = echolia(dir.path()).env("BIND_ADDR", "somewhere").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("BIND_ADDR"));
}

#[test]
fn a_production_server_refuses_custom_apple_roots_unless_told_to_trust_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/apple/certs/testCA.der");
    let production = |command: &mut Command| {
        command
            .env("ENVIRONMENT", "production")
            .env("JWT_SECRET", crate::helpers::JWT_SECRET)
            .env("APPLE_BUNDLE_ID", "com.example")
            .env("APPLE_APP_APPLE_ID", "1")
            .env("APPLE_ROOT_CERTS", root)
            .env("GOOGLE_ENVIRONMENT", "test");
    };
    let mut command = echolia(dir.path());
    production(&mut command);
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("APPLE_ROOT_CERTS") && stderr.contains("APPLE_ALLOW_CUSTOM_ROOTS"), "{stderr}");
    // With the override, the roots pass and the next bad setting is the one named.
    let mut command = echolia(dir.path());
    production(&mut command);
    let output = command.env("APPLE_ALLOW_CUSTOM_ROOTS", "true").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GOOGLE_ENVIRONMENT") && !stderr.contains("APPLE_ROOT_CERTS"), "{stderr}");
}

#[test]
fn a_metrics_port_in_use_stops_the_binary_naming_metrics_addr() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = echolia(dir.path())
        .env("BIND_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("METRICS_ADDR", taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("METRICS_ADDR") && stderr.contains("cannot listen"), "{stderr}");
}

/// The same work (a few users, each pushing and pulling back a few thousand
/// entries) on a server with `SQLITE_MEMORY_LIMIT_MB`, and what SQLite
/// holds afterwards by `echolia_sqlite_memory_bytes`.
async fn sqlite_memory_after_work(limit_mb: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = echolia(dir.path())
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("SQLITE_MEMORY_LIMIT_MB", limit_mb)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_for_health(&client, &base, &mut child).await;
    for user in 0..4 {
        let resp = client.post(format!("{base}/auth/register")).json(&device_body("Laptop", "desktop")).send();
        let session: Value = resp.await.unwrap().json().await.unwrap();
        let (token, device) = (session["access_token"].as_str().unwrap(), session["device_id"].as_str().unwrap());
        let device = uuid::Uuid::parse_str(device).unwrap();
        for _ in 0..20 {
            let events: Vec<Value> = (0..100)
                .map(|_| crate::helpers::event("entry", uuid::Uuid::new_v4(), "put", &[(device, 1)], Some(&[7; 512])))
                .collect();
            let resp = client
                .post(format!("{base}/sync/push"))
                .bearer_auth(token)
                .json(&serde_json::json!({"events": events}));
            assert_eq!(resp.send().await.unwrap().status(), StatusCode::OK, "user {user}");
        }
        let resp = client.get(format!("{base}/sync/pull?since=0&limit=1000")).bearer_auth(token).send();
        assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    }
    let scrape = client.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap();
    let scrape = scrape.text().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    scrape
        .lines()
        .find_map(|line| line.strip_prefix("echolia_sqlite_memory_bytes ")?.parse().ok())
        .expect("echolia_sqlite_memory_bytes on the scrape")
}

#[tokio::test]
async fn sqlite_memory_limit_bounds_the_page_caches() {
    let unlimited = sqlite_memory_after_work("0").await;
    let limited = sqlite_memory_after_work("1").await;
    assert!(limited < 1.5 * 1024.0 * 1024.0, "a 1 MiB soft limit held {limited} bytes");
    assert!(unlimited > 2.0 * limited, "without a limit the caches grow: {unlimited} vs {limited} bytes");
}

/// The permission bits of a file or folder.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display())).permissions().mode() & 0o777
}

#[tokio::test]
async fn the_data_directory_and_databases_are_private_to_the_server_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
    // One the server creates, one an operator made world-readable before.
    for data in [dir.path().join("fresh"), existing] {
        let (port, metrics_port) = (free_port(), free_port());
        let mut child = echolia(dir.path())
            .env("DATA_DIR", &data)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_for_health(&client, &base, &mut child).await;
        let resp =
            client.post(format!("{base}/auth/register")).json(&device_body("Laptop", "desktop")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let user: Value = resp.json().await.unwrap();
        let user = user["user_id"].as_str().unwrap().to_owned();

        assert_eq!(mode(&data), 0o700, "{}", data.display());
        assert_eq!(mode(&data.join("users")), 0o700);
        let mut databases = vec![data.join("control.db"), data.join("users").join(format!("{user}.db"))];
        for db in databases.clone() {
            for suffix in ["-wal", "-shm"] {
                let side = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
                if side.exists() {
                    databases.push(side);
                }
            }
        }
        assert!(databases.len() > 2, "WAL files while the server runs: {databases:?}");
        for file in &databases {
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }

        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
        assert!(wait_for_exit(&mut child).success());
    }
}
