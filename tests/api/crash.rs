//! Crash safety: the real server as a child process, several clients pushing
//! batches, SIGKILL mid-stream, a restart. Every batch that got a 200 is fully
//! present, no other batch is half present, the chain verifies and
//! `replay --check` passes. Repeated with different kill points.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cli::echolia;
use crate::helpers::{device_body, event, Session};

const ROUNDS: [u64; 3] = [60, 250, 700];
const BATCH: usize = 25;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server {
    child: Child,
    base: String,
}

async fn start(dir: &Path) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_echolia"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", dir)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("REGISTER_RATE_LIMIT", "1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server { child, base: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(resp) = client.get(format!("{}/health", server.base)).send().await {
            if resp.status() == StatusCode::OK {
                return server;
            }
        }
        assert!(server.child.try_wait().unwrap().is_none(), "the server exited early");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = server.child.kill();
    panic!("the server did not answer /health within 20 s");
}

impl Server {
    fn kill_hard(&mut self) {
        let status = Command::new("kill").arg("-KILL").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn post(client: &reqwest::Client, url: String, token: Option<&str>, body: &Value) -> Value {
    let mut req = client.post(url).json(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.unwrap()
}

/// One batch a client sent, and whether it got a 200.
struct Sent {
    user: Uuid,
    event_ids: Vec<String>,
    acknowledged: bool,
}

/// Pushes batches until the server stops answering (or a time bound).
async fn client(base: String, session: Session, acked: Arc<AtomicUsize>) -> Vec<Sent> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut own: Vec<(Uuid, u64)> = Vec::new();
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let events: Vec<Value> = (0..BATCH)
            .map(|i| {
                let payload = vec![i as u8; 200];
                if i % 3 == 2 && !own.is_empty() {
                    let at = i % own.len();
                    own[at].1 += 1;
                    let (id, counter) = own[at];
                    event("entry", id, "put", &[(session.device_id, counter)], Some(&payload))
                } else {
                    let id = Uuid::new_v4();
                    own.push((id, 1));
                    event("entry", id, "put", &[(session.device_id, 1)], Some(&payload))
                }
            })
            .collect();
        let event_ids = events.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
        let resp = client
            .post(format!("{base}/sync/push"))
            .bearer_auth(&session.access_token)
            .json(&json!({ "events": events }))
            .send()
            .await;
        let acknowledged = matches!(&resp, Ok(resp) if resp.status() == StatusCode::OK);
        sent.push(Sent { user: session.user_id, event_ids, acknowledged });
        if !acknowledged {
            break;
        }
        acked.fetch_add(1, Ordering::SeqCst);
    }
    sent
}

/// Every event id in a user's log, through `/sync/events`.
async fn logged_ids(base: &str, session: &Session) -> HashSet<String> {
    let client = reqwest::Client::new();
    let (mut since, mut ids) = (0u64, HashSet::new());
    loop {
        let url = format!("{base}/sync/events?since={since}&limit=1000");
        let page: Value =
            client.get(url).bearer_auth(&session.access_token).send().await.unwrap().json().await.unwrap();
        for event in page["events"].as_array().unwrap() {
            ids.insert(event["event_id"].as_str().unwrap().to_owned());
        }
        since = page["cursor"].as_u64().unwrap();
        if page["has_more"] != true {
            return ids;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_survive_sigkill_and_nothing_is_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path()).await;
    let http = reqwest::Client::new();
    let first = Session::from_json(
        &post(&http, format!("{}/auth/register", server.base), None, &device_body("A", "desktop")).await,
    );
    let mut sessions = vec![first.clone()];
    for name in ["B", "C"] {
        let url = format!("{}/auth/pair-device", server.base);
        sessions
            .push(Session::from_json(&post(&http, url, Some(&first.access_token), &device_body(name, "mobile")).await));
    }
    let other = Session::from_json(
        &post(&http, format!("{}/auth/register", server.base), None, &device_body("D", "desktop")).await,
    );
    sessions.push(other.clone());

    let mut all_sent: Vec<Sent> = Vec::new();
    for (round, kill_after_ms) in ROUNDS.into_iter().enumerate() {
        let acked = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = sessions
            .iter()
            .map(|session| tokio::spawn(client(server.base.clone(), session.clone(), acked.clone())))
            .collect();
        // Mid-stream: once batches are being acknowledged, wait a little more, then SIGKILL.
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        server.kill_hard();
        let mut sent_now = Vec::new();
        for handle in clients {
            sent_now.extend(handle.await.unwrap());
        }
        let cut = sent_now.iter().filter(|s| !s.acknowledged).count();
        assert!(cut >= 1, "round {round}: the kill came after every client had stopped");
        all_sent.extend(sent_now);

        server = start(dir.path()).await;
        let mut present: std::collections::HashMap<Uuid, HashSet<String>> = Default::default();
        for session in [&first, &other] {
            present.insert(session.user_id, logged_ids(&server.base, session).await);
        }
        for (i, sent) in all_sent.iter().enumerate() {
            let ids = &present[&sent.user];
            let found = sent.event_ids.iter().filter(|id| ids.contains(*id)).count();
            if sent.acknowledged {
                assert_eq!(found, sent.event_ids.len(), "round {round}: acknowledged batch {i} lost events");
            } else {
                assert!(
                    found == 0 || found == sent.event_ids.len(),
                    "round {round}: batch {i} is half present ({found})"
                );
            }
        }
        let run = echolia(dir.path(), &["verify", "--all"]);
        assert_eq!(run.code, Some(0), "round {round}: {run:?}");
        let run = echolia(dir.path(), &["replay", "--check", "--all"]);
        assert_eq!(run.code, Some(0), "round {round}: {run:?}");
        assert!(run.stdout.contains("checked 2 users"), "{}", run.stdout);
    }
    let acknowledged = all_sent.iter().filter(|s| s.acknowledged).count();
    assert!(acknowledged >= ROUNDS.len() * 2, "only {acknowledged} batches were acknowledged");
}
