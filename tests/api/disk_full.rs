//! A full disk: the real server as a child process whose files may not grow
//! past a few MiB (`ulimit -f`, RLIMIT_FSIZE, with SIGXFSZ ignored, so a write
//! past the limit fails with EFBIG as on a full disk: no root, no tmpfs).
//! The push that does not fit answers 503 `storage_unavailable` with
//! `Retry-After` and writes nothing; pulls keep answering.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{device_body, event};

/// The largest file the server may write, in KiB (bash's `ulimit -f` unit).
const FILE_LIMIT_KIB: u32 = 3 * 1024;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_push_that_does_not_fit_on_disk_is_503_and_writes_nothing_while_pulls_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {FILE_LIMIT_KIB} && exec \"$0\""))
        .arg(env!("CARGO_BIN_EXE_echolia"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", dir.path())
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = client.get(format!("{base}/health")).send().await {
            if resp.status() == StatusCode::OK {
                break;
            }
        }
        assert!(server.0.try_wait().unwrap().is_none(), "the server exited early");
        assert!(Instant::now() < deadline, "the server did not answer /health");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let resp =
        client.post(format!("{base}/auth/register")).json(&device_body("Desktop", "desktop")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let session: Value = resp.json().await.unwrap();
    let token = session["access_token"].as_str().unwrap().to_owned();
    let device = Uuid::parse_str(session["device_id"].as_str().unwrap()).unwrap();

    // Batches of 512 KiB payloads until one does not fit.
    let payload = vec![0x5a_u8; 512 * 1024];
    let mut acknowledged = 0u64;
    let mut refused: Option<Vec<String>> = None;
    for counter in 1..=64u64 {
        let events: Vec<Value> =
            (0..2).map(|_| event("entry", Uuid::new_v4(), "put", &[(device, counter)], Some(&payload))).collect();
        let ids = events.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
        let resp = client
            .post(format!("{base}/sync/push"))
            .bearer_auth(&token)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        match resp.status() {
            StatusCode::OK => acknowledged += 2,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(resp.headers().get("retry-after").is_some(), "503 without Retry-After");
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
                refused = Some(ids);
                break;
            }
            other => panic!("push {counter}: {other} {}", resp.text().await.unwrap()),
        }
    }
    let refused = refused.expect("the disk never filled up");
    assert!(acknowledged > 0, "the limit leaves room for some pushes");
    assert!(server.0.try_wait().unwrap().is_none(), "the server survived the full disk");

    // Pulls keep answering, with exactly the acknowledged events.
    let get = |path: &str| client.get(format!("{base}{path}")).bearer_auth(&token).send();
    let resp = get("/sync/status").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let status: Value = resp.json().await.unwrap();
    // The device's own registration event is in the log too.
    assert_eq!(status["entries"], acknowledged, "{status}");
    let mut logged = Vec::new();
    let mut since = 0;
    loop {
        let resp = get(&format!("/sync/events?since={since}&limit=5")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let page: Value = resp.json().await.unwrap();
        logged.extend(page["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()));
        since = page["cursor"].as_u64().unwrap();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert!(refused.iter().all(|id| !logged.contains(id)), "part of the refused batch was written");
    let resp = get("/sync/pull?since=0&limit=3").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(client.get(format!("{base}/health")).send().await.unwrap().status(), StatusCode::OK);
}
