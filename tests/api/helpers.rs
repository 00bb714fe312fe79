//! A real server on a random port with a temporary `DATA_DIR`, and a client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use echolia::app;
use echolia::clock::ManualClock;
use echolia::config::Config;
use echolia::state::AppState;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The secret tests sign forged tokens with.
pub const JWT_SECRET: &str = "integration-test-secret-0123456789abcdef";

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `GET /metrics` answers (`METRICS_ADDR`, a port of its own).
    pub metrics_addr: SocketAddr,
    pub client: reqwest::Client,
    pub dir: Arc<TempDir>,
    pub clock: Arc<ManualClock>,
    pub state: AppState,
    vars: Vec<(String, String)>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// What registration or pairing hands a device.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: Uuid,
    pub device_id: Uuid,
    pub access_token: String,
    pub refresh_token: String,
}

impl Session {
    pub fn from_json(body: &Value) -> Self {
        let id = |name: &str| Uuid::parse_str(body[name].as_str().unwrap()).unwrap();
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 3600);
        Session {
            user_id: id("user_id"),
            device_id: id("device_id"),
            access_token: body["access_token"].as_str().unwrap().to_owned(),
            refresh_token: body["refresh_token"].as_str().unwrap().to_owned(),
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts a server; `vars` override the test defaults.
pub async fn spawn_app_with(vars: &[(&str, &str)]) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    start(dir, vars, Arc::new(ManualClock::new(Utc::now()))).await
}

async fn start(dir: Arc<TempDir>, overrides: Vec<(String, String)>, clock: Arc<ManualClock>) -> TestApp {
    let mut env: HashMap<String, String> = HashMap::from([
        ("DATA_DIR".into(), dir.path().display().to_string()),
        ("JWT_SECRET".into(), JWT_SECRET.into()),
        ("REGISTER_RATE_LIMIT".into(), "100000".into()),
        ("BIND_ADDR".into(), "127.0.0.1:0".into()),
        ("METRICS_ADDR".into(), "127.0.0.1:0".into()),
    ]);
    for (key, value) in &overrides {
        env.insert(key.clone(), value.clone());
    }
    env.retain(|_, value| !value.is_empty());
    let config = Config::from_lookup(|name| env.get(name).cloned()).unwrap();
    let state = AppState::build(config, clock.clone()).await.unwrap();
    let listeners = app::Listeners::bind(&state.config).await.unwrap();
    let (addr, metrics_addr) = listeners.local_addrs().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let server_state = state.clone();
    let server = tokio::spawn(async move {
        app::serve(listeners, server_state, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        addr,
        metrics_addr,
        client: reqwest::Client::new(),
        dir,
        clock,
        state,
        vars: overrides,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The body of `GET /metrics` on the metrics listener.
    pub async fn scrape(&self) -> String {
        let resp = self.client.get(format!("http://{}/metrics", self.metrics_addr)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        resp.text().await.unwrap()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn user_db_path(&self, user: Uuid) -> PathBuf {
        self.data_dir().join("users").join(format!("{user}.db"))
    }

    /// Stops the server gracefully and starts a new one on the same data.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let (dir, vars, clock) = (self.dir.clone(), std::mem::take(&mut self.vars), self.clock.clone());
        drop(self);
        start(dir, vars, clock).await
    }

    /// A second server on the same data, as another process would be: its
    /// own open databases, writers and caches.
    pub async fn beside(&self) -> TestApp {
        start(self.dir.clone(), self.vars.clone(), self.clock.clone()).await
    }

    /// [`beside`](Self::beside), with `vars` on top of this server's overrides
    /// (e.g. another `SQLD_URL` for the same data).
    #[cfg_attr(not(feature = "embedded-replicas"), allow(dead_code))]
    pub async fn beside_with(&self, vars: &[(&str, &str)]) -> TestApp {
        let mut overrides = self.vars.clone();
        overrides.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        start(self.dir.clone(), overrides, self.clock.clone()).await
    }

    /// Like [`restart`](Self::restart), with `vars` replacing the overrides
    /// (e.g. a rotated `JWT_SECRET`).
    pub async fn restart_with(mut self, vars: &[(&str, &str)]) -> TestApp {
        self.vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.restart().await
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.client.delete(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn register(&self) -> Session {
        self.register_body(&device_body("Desktop", "desktop")).await
    }

    pub async fn register_body(&self, body: &Value) -> Session {
        let resp = self.post("/auth/register", None, body).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        Session::from_json(&resp.json().await.unwrap())
    }

    pub async fn pair(&self, by: &Session, name: &str) -> Session {
        let resp = self.post("/auth/pair-device", Some(&by.access_token), &device_body(name, "mobile")).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let session = Session::from_json(&resp.json().await.unwrap());
        assert_eq!(session.user_id, by.user_id);
        session
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post("/auth/refresh", None, &json!({ "refresh_token": refresh_token })).await
    }

    /// The devices a session sees.
    pub async fn devices(&self, session: &Session) -> Vec<Value> {
        let resp = self.get("/auth/devices", &session.access_token).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["devices"].as_array().unwrap().clone()
    }

    /// Opens a user's database file directly, as an operator would.
    pub async fn open_user_db(&self, user: Uuid) -> libsql::Connection {
        let db = libsql::Builder::new_local(self.user_db_path(user)).build().await.unwrap();
        db.connect().unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn device_body(name: &str, device_type: &str) -> Value {
    json!({
        "device_name": name,
        "device_type": device_type,
        "platform": "macos",
        "public_key": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEA9s8rR1vC2dWnC0cYpZ1x3u3pYgk0E0cPq9Gm7oTt1Ws=\n-----END PUBLIC KEY-----",
        "capabilities": {"local_embeddings": true}
    })
}

/// Asserts an error response: its status, the JSON error shape and its code.
/// Returns the message.
pub async fn assert_error(resp: Response, status: StatusCode, code: &str) -> String {
    assert_eq!(resp.status(), status, "status for expected `{code}`");
    let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().expect("a message").to_owned();
    assert!(!message.is_empty());
    assert_eq!(body.as_object().unwrap().len(), 1, "only `error` at the top: {body}");
    message
}

/// Signs arbitrary claims with the test secret (HS256).
pub fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Files under `DATA_DIR/users`.
pub fn user_db_files(app: &TestApp) -> Vec<PathBuf> {
    let dir = app.data_dir().join("users");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "db")).collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A client event as JSON: `version` as (device, counter) pairs, payload raw bytes.
pub fn event(kind: &str, aggregate: Uuid, op: &str, version: &[(Uuid, u64)], payload: Option<&[u8]>) -> Value {
    use base64::Engine;
    let version: serde_json::Map<String, Value> = version.iter().map(|(d, c)| (d.to_string(), json!(c))).collect();
    let mut event = json!({
        "event_id": Uuid::new_v4(),
        "kind": kind,
        "aggregate_id": aggregate,
        "op": op,
        "version": version,
        "client_time": "2026-11-29T10:00:00Z",
    });
    if let Some(payload) = payload {
        event["payload"] = json!(base64::engine::general_purpose::STANDARD.encode(payload));
    }
    event
}

impl TestApp {
    pub async fn push(&self, session: &Session, events: &[Value]) -> Response {
        self.post("/sync/push", Some(&session.access_token), &json!({ "events": events })).await
    }

    /// Pushes and expects 200; returns the body.
    pub async fn push_ok(&self, session: &Session, events: &[Value]) -> Value {
        let resp = self.push(session, events).await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    /// A GET asking for MessagePack; checks the answer is MessagePack and returns its body.
    pub async fn get_msgpack(&self, path: &str, token: &str) -> Vec<u8> {
        let resp = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .header("accept", "application/msgpack")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/msgpack");
        resp.bytes().await.unwrap().to_vec()
    }

    pub async fn pull(&self, session: &Session, query: &str) -> Value {
        let resp = self.get(&format!("/sync/pull?{query}"), &session.access_token).await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    pub async fn event_count(&self, user: Uuid) -> u64 {
        let conn = self.open_user_db(user).await;
        let mut rows = conn.query("SELECT count(*) FROM events", ()).await.unwrap();
        rows.next().await.unwrap().unwrap().get(0).unwrap()
    }
}

/// Polls `base`'s `/health` until it answers 200 (30 s at most), for tests
/// that run the real binary; panics with the server's log otherwise.
pub async fn wait_healthy(client: &reqwest::Client, base: &str, log: &Path) {
    for _ in 0..600 {
        if client.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status() == StatusCode::OK) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the server did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
}

/// Starts the shipped binary on `port` with a fresh environment (`DATA_DIR`,
/// JSON logs at `trace` written to `log`) plus `vars`, for tests that read
/// what the real process logs and writes.
pub fn spawn_binary(data: &Path, port: u16, log: &Path, vars: &[(&str, &std::ffi::OsStr)]) -> std::process::Child {
    use std::process::{Command, Stdio};
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_echolia"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", data)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .envs(vars.iter().copied())
        .current_dir(data)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}
