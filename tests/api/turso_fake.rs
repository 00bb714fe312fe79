//! A fake Turso Platform API (`/v1/organizations/{org}/databases…`), on
//! 127.0.0.1, whose databases are namespaces of a real sqld ([`Sqld`]): only
//! the control plane is faked, the data path is the real server's.
//!
//! As Turso documents it: create (`{"name","group"}` → `{"database":
//! {"DbId","Hostname","Name"}}`, 409 if it exists, names of lowercase letters,
//! digits and dashes up to 32), get, list, delete, usage, and database tokens
//! (`POST …/auth/tokens?expiration=…&authorization=…` → `{"jwt"}`); errors as
//! `{"error": "…"}`; 401 for a wrong API token. A database `<name>` is
//! served at `Hostname` `<name>-<org>.turso.test`, which is the sqld
//! namespace `<name>-<org>` (sqld takes the namespace from the `Host`
//! header's first label; the server under test connects every host to
//! sqld's port, `TURSO_CONNECT_TO`). Tokens are EdDSA JWTs signed with the
//! key sqld trusts, scoped to their database (`id`, which sqld checks
//! against the namespace) and with `exp` as `expiration` says.
//!
//! Faults for the tests: answers queued ahead of any route (429 with
//! `Retry-After`, 5xx), tokens minted already expired or refused by the
//! database, the API token revoked.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use crate::sqld::Sqld;

pub const ORG: &str = "acme";
pub const GROUP: &str = "default";
pub const API_TOKEN: &str = "fake-platform-api-token";

pub struct Fake {
    sqld_admin: String,
    key: jsonwebtoken::EncodingKey,
    /// Database name → its id.
    databases: Mutex<BTreeMap<String, String>>,
    /// Tokens minted, per database.
    pub mints: Mutex<HashMap<String, u32>>,
    /// Every request that passed the API token check: method, path, when.
    pub requests: Mutex<Vec<(Method, String, Instant)>>,
    /// Answers given before any route runs, one per request (to a path
    /// ending as the first says, or to any).
    faults: Mutex<VecDeque<Fault>>,
    /// Mint tokens that expired two minutes ago (past sqld's leeway).
    pub expired_tokens: AtomicBool,
    /// Refuse the API token (as after `turso auth api-tokens revoke`).
    pub api_token_revoked: AtomicBool,
    /// Databases whose tokens are minted with a broken signature (as after
    /// `turso db tokens invalidate`: the database refuses them, 401).
    pub refused_tokens_for: Mutex<HashSet<String>>,
}

/// A path suffix (or any path), the status answered, its `Retry-After`.
type Fault = (Option<String>, StatusCode, Option<String>);

pub struct FakeTurso {
    pub addr: SocketAddr,
    pub state: Arc<Fake>,
    sqld_port: u16,
}

impl FakeTurso {
    pub async fn start(sqld: &Sqld) -> FakeTurso {
        let key = jsonwebtoken::EncodingKey::from_ed_pem(&sqld.signing_key()).unwrap();
        let state = Arc::new(Fake {
            sqld_admin: sqld.admin_url(),
            key,
            databases: Mutex::default(),
            mints: Mutex::default(),
            requests: Mutex::default(),
            faults: Mutex::default(),
            expired_tokens: AtomicBool::new(false),
            api_token_revoked: AtomicBool::new(false),
            refused_tokens_for: Mutex::default(),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeTurso { addr, state, sqld_port: sqld.http_port }
    }

    /// The variables of a server on this fake and its sqld.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_BACKEND", "turso".into()),
            ("TURSO_API_URL", format!("http://{}", self.addr)),
            ("TURSO_ORG", ORG.into()),
            ("TURSO_AUTH_TOKEN", API_TOKEN.into()),
            ("TURSO_GROUP", GROUP.into()),
            ("TURSO_CONNECT_TO", format!("127.0.0.1:{}", self.sqld_port)),
            ("TURSO_TIMEOUT_SECS", "3".into()),
        ]
    }

    /// The sqld namespace that serves database `name`.
    pub fn namespace(name: &str) -> String {
        format!("{name}-{ORG}")
    }

    /// Whether the Platform API lists database `name`.
    pub fn has_database(&self, name: &str) -> bool {
        self.state.databases.lock().unwrap().contains_key(name)
    }

    pub fn database_names(&self) -> Vec<String> {
        self.state.databases.lock().unwrap().keys().cloned().collect()
    }

    /// Tokens minted for database `name` so far.
    pub fn mints(&self, name: &str) -> u32 {
        self.state.mints.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    /// The next requests (any route) are answered `status`, each with `Retry-After` if given.
    pub fn fail_next(&self, answers: &[(u16, Option<&str>)]) {
        self.fail_next_to(None, answers);
    }

    /// Like [`Self::fail_next`], for requests to a path ending with `suffix` only.
    pub fn fail_next_to(&self, suffix: Option<&str>, answers: &[(u16, Option<&str>)]) {
        let mut faults = self.state.faults.lock().unwrap();
        for (status, retry_after) in answers {
            let status = StatusCode::from_u16(*status).unwrap();
            faults.push_back((suffix.map(str::to_owned), status, retry_after.map(str::to_owned)));
        }
    }

    /// The requests seen so far whose path ends with `suffix`, by method.
    pub fn requests_to(&self, method: Method, suffix: &str) -> Vec<Instant> {
        let requests = self.state.requests.lock().unwrap();
        requests.iter().filter(|(m, path, _)| *m == method && path.ends_with(suffix)).map(|(_, _, at)| *at).collect()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn database(name: &str, id: &str) -> Value {
    json!({
        "DbId": id,
        "Hostname": format!("{}.turso.test", FakeTurso::namespace(name)),
        "Name": name,
        "group": GROUP,
        "primaryRegion": "fake",
        "block_reads": false,
        "block_writes": false,
        "delete_protection": false,
    })
}

/// Turso's rule for a database name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Turso's duration form (`2w1d30m`), in seconds; `never` is `None`.
fn expiration_secs(text: &str) -> Result<Option<u64>, ()> {
    if text == "never" {
        return Ok(None);
    }
    let (mut total, mut number) = (0u64, None::<u64>);
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            number = Some(number.unwrap_or(0) * 10 + u64::from(digit));
            continue;
        }
        let unit = match c {
            'w' => 604_800,
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(()),
        };
        total += number.take().ok_or(())? * unit;
    }
    if number.is_some() || total == 0 {
        return Err(());
    }
    Ok(Some(total))
}

async fn handle(
    State(fake): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(API_TOKEN) || fake.api_token_revoked.load(Ordering::Relaxed) {
        return error(StatusCode::UNAUTHORIZED, "token contains an invalid number of segments");
    }
    let path = uri.path().to_owned();
    fake.requests.lock().unwrap().push((method.clone(), path.clone(), Instant::now()));
    let fault = {
        let mut faults = fake.faults.lock().unwrap();
        let at = faults.iter().position(|(suffix, ..)| suffix.as_ref().is_none_or(|suffix| path.ends_with(suffix)));
        at.and_then(|at| faults.remove(at))
    };
    if let Some((_, status, retry_after)) = fault {
        let mut response = error(
            status,
            if status == StatusCode::TOO_MANY_REQUESTS { "rate limit exceeded" } else { "internal error" },
        );
        if let Some(retry_after) = retry_after {
            response.headers_mut().insert("retry-after", retry_after.parse().unwrap());
        }
        return response;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["v1", "organizations", org, "databases", rest @ ..] = segments.as_slice() else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    if *org != ORG {
        return error(StatusCode::NOT_FOUND, format!("organization {org} not found"));
    }
    let admin = reqwest::Client::new();
    match (method, rest) {
        (Method::GET, []) => {
            let databases = fake.databases.lock().unwrap();
            let list: Vec<Value> = databases.iter().map(|(name, id)| database(name, id)).collect();
            axum::Json(json!({ "databases": list })).into_response()
        }
        (Method::POST, []) => {
            let Ok(request) = serde_json::from_slice::<Value>(&body) else {
                return error(StatusCode::BAD_REQUEST, "invalid request body");
            };
            let (Some(name), Some(group)) = (request["name"].as_str(), request["group"].as_str()) else {
                return error(StatusCode::BAD_REQUEST, "name and group are required");
            };
            if !valid_name(name) {
                return error(StatusCode::BAD_REQUEST, format!("invalid database name: {name}"));
            }
            if group != GROUP {
                return error(StatusCode::NOT_FOUND, format!("group {group} not found"));
            }
            if fake.databases.lock().unwrap().contains_key(name) {
                return error(StatusCode::CONFLICT, format!("database {name} already exists"));
            }
            let created = admin
                .post(format!("{}/v1/namespaces/{}/create", fake.sqld_admin, FakeTurso::namespace(name)))
                .json(&json!({}))
                .send()
                .await;
            if !created.is_ok_and(|r| r.status().is_success()) {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "could not create the database");
            }
            let id = uuid::Uuid::new_v4().to_string();
            fake.databases.lock().unwrap().insert(name.to_owned(), id.clone());
            axum::Json(json!({ "database": { "DbId": id, "Hostname": database(name, &id)["Hostname"], "Name": name } }))
                .into_response()
        }
        (method, [name, tail @ ..]) => {
            let Some(id) = fake.databases.lock().unwrap().get(*name).cloned() else {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("could not find database with name {name}: record not found"),
                );
            };
            match (method, tail) {
                (Method::GET, []) => axum::Json(json!({ "database": database(name, &id) })).into_response(),
                (Method::DELETE, []) => {
                    let deleted = admin
                        .delete(format!("{}/v1/namespaces/{}", fake.sqld_admin, FakeTurso::namespace(name)))
                        .send()
                        .await;
                    if !deleted.is_ok_and(|r| r.status().is_success()) {
                        return error(StatusCode::INTERNAL_SERVER_ERROR, "could not delete the database");
                    }
                    fake.databases.lock().unwrap().remove(*name);
                    axum::Json(json!({ "database": name })).into_response()
                }
                (Method::GET, ["usage"]) => {
                    let stats = admin
                        .get(format!("{}/v1/namespaces/{}/stats", fake.sqld_admin, FakeTurso::namespace(name)))
                        .send()
                        .await;
                    let Ok(stats) = stats else { return error(StatusCode::INTERNAL_SERVER_ERROR, "no stats") };
                    let stats: Value = stats.json().await.unwrap_or_default();
                    let bytes = stats["storage_bytes_used"].as_u64().unwrap_or(0);
                    let usage = json!({ "rows_read": 0, "rows_written": 0, "storage_bytes": bytes, "bytes_synced": 0 });
                    axum::Json(json!({ "database": { "uuid": id, "instances": [{ "uuid": id, "usage": usage }], "total": usage } }))
                        .into_response()
                }
                (Method::POST, ["auth", "tokens"]) => {
                    let access = match query.get("authorization").map(String::as_str) {
                        None | Some("full-access") => "rw",
                        Some("read-only") => "ro",
                        Some(other) => {
                            return error(StatusCode::BAD_REQUEST, format!("invalid authorization: {other}"))
                        }
                    };
                    let Ok(lifetime) = expiration_secs(query.get("expiration").map_or("never", String::as_str)) else {
                        return error(StatusCode::BAD_REQUEST, "invalid expiration");
                    };
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
                    // `id` scopes the token to one database: sqld takes it as the namespace's name.
                    let mut claims = json!({ "a": access, "iat": now, "id": FakeTurso::namespace(name) });
                    if fake.expired_tokens.load(Ordering::Relaxed) {
                        claims["exp"] = json!(now - 120);
                    } else if let Some(lifetime) = lifetime {
                        claims["exp"] = json!(now + lifetime);
                    }
                    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
                    let mut jwt = jsonwebtoken::encode(&header, &claims, &fake.key).unwrap();
                    if fake.refused_tokens_for.lock().unwrap().contains(*name) {
                        // Another signature of the right length: valid base64url, wrong bytes.
                        let at = jwt.rfind('.').unwrap() + 1;
                        let flipped = if jwt.as_bytes()[at] == b'A' { "B" } else { "A" };
                        jwt.replace_range(at..at + 1, flipped);
                    }
                    *fake.mints.lock().unwrap().entry((*name).to_owned()).or_default() += 1;
                    axum::Json(json!({ "jwt": jwt })).into_response()
                }
                _ => error(StatusCode::NOT_FOUND, "not found"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}
