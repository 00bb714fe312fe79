//! A client of Atuin's server (18.x) record API, the peer the issue-22 targets
//! compare with: `POST /register`, then with `Authorization: Token <session>`
//! `POST /api/v0/record` (a JSON array of records), `GET /api/v0/record` (the
//! last `idx` of each host and tag) and `GET /api/v0/record/next` (a page of
//! one host's records of one tag from an `idx`). Shapes as in the crates
//! `atuin-common` 18.16.1 (`record.rs`, `api.rs`) and `atuin-server` 18.16.1
//! (`handlers/v0/record.rs`, `handlers/user.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::RngCore;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cli::Ids;
use crate::client::{decode_json, send, timed, Failure, Timed};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The tag and version Atuin's client gives its shell history records.
pub const TAG: &str = "history";
const VERSION: &str = "v0";
/// Bytes of the content encryption key each record carries (wrapped, in Atuin's client).
const CEK_BYTES: usize = 32;

/// One host (Atuin's word for a device) of a user: the user's session
/// token, and the next `idx` of its records of [`TAG`].
#[derive(Debug, Clone)]
pub struct Host {
    pub id: Uuid,
    token: Arc<str>,
    next_idx: Arc<AtomicU64>,
}

impl Host {
    /// Another host of the same user (Atuin's hosts share the user's session).
    pub fn sibling(&self) -> Host {
        Host { id: Uuid::now_v7(), token: self.token.clone(), next_idx: Arc::default() }
    }
}

/// `Record<EncryptedData>` of atuin-common.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: Uuid,
    pub idx: u64,
    pub host: RecordHost,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: u64,
    pub version: String,
    pub tag: String,
    pub data: EncryptedData,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RecordHost {
    pub id: Uuid,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EncryptedData {
    pub data: String,
    pub content_encryption_key: String,
}

/// `RecordStatus`: the last `idx` of each host's records, by tag.
#[derive(Debug, Deserialize)]
pub struct RecordStatus {
    pub hosts: BTreeMap<Uuid, BTreeMap<String, u64>>,
}

#[derive(Deserialize)]
struct RegisterResponse {
    session: String,
}

#[derive(Clone)]
pub struct AtuinApi {
    http: reqwest::Client,
    base: String,
}

impl AtuinApi {
    pub fn new(base: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|err| format!("building the HTTP client: {err}"))?;
        Ok(AtuinApi { http, base: base.trim_end_matches('/').to_owned() })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /healthz`: Ok when the server answers 200.
    pub async fn health(&self) -> Result<(), Failure> {
        send(self.http.get(self.url("/healthz")), StatusCode::OK).await.map(drop)
    }

    /// `POST /register` of a new user (the server needs `open_registration = true`); its first host.
    pub async fn register(&self, username: &str) -> Timed<Host> {
        let mut password = [0u8; 16];
        rand::rng().fill_bytes(&mut password);
        let body = serde_json::json!({
            "username": username,
            "email": format!("{username}@load.invalid"),
            "password": STANDARD.encode(password),
        });
        let req = self.http.post(self.url("/register")).json(&body);
        timed(async {
            let session: RegisterResponse = decode_json(send(req, StatusCode::OK).await?)?;
            Ok(Host { id: Uuid::now_v7(), token: session.session.into(), next_idx: Arc::default() })
        })
        .await
    }

    /// `count` new records of `host`, with the next `idx`s (taken now, so that
    /// batches built ahead of sending stay in order), encoded as the push body.
    pub fn new_records(
        &self,
        host: &Host,
        count: u64,
        payload: usize,
        ids: Ids,
        rng: &mut StdRng,
    ) -> Result<Bytes, Failure> {
        let first = host.next_idx.fetch_add(count, Ordering::Relaxed);
        let mut bytes = vec![0; payload];
        let mut cek = [0u8; CEK_BYTES];
        let records: Vec<Record> = (first..first + count)
            .map(|idx| {
                rng.fill_bytes(&mut bytes);
                rng.fill_bytes(&mut cek);
                Record {
                    id: ids.new_id(),
                    idx,
                    host: RecordHost { id: host.id, name: String::new() },
                    timestamp: now_nanos(),
                    version: VERSION.into(),
                    tag: TAG.into(),
                    data: EncryptedData { data: STANDARD.encode(&bytes), content_encryption_key: STANDARD.encode(cek) },
                }
            })
            .collect();
        serde_json::to_vec(&records).map(Bytes::from).map_err(|err| Failure::Decode(err.to_string()))
    }

    /// `POST /api/v0/record` of a body made by [`AtuinApi::new_records`]; the server answers 200, empty.
    pub async fn push(&self, host: &Host, body: Bytes) -> Timed<()> {
        let req = self.auth(self.http.post(self.url("/api/v0/record")), host);
        timed(async { send(req.header(CONTENT_TYPE, "application/json").body(body), StatusCode::OK).await.map(drop) })
            .await
    }

    /// `GET /api/v0/record`: the last `idx` of every host and tag of the user.
    pub async fn status(&self, host: &Host) -> Timed<RecordStatus> {
        let req = self.auth(self.http.get(self.url("/api/v0/record")), host);
        timed(async { decode_json(send(req, StatusCode::OK).await?) }).await
    }

    /// `GET /api/v0/record/next`: up to `count` records of host `of`, tag `tag`, from `idx` `start`.
    /// The body is read in the clock, decoded after.
    pub async fn next(&self, host: &Host, of: Uuid, tag: &str, start: u64, count: u64) -> Timed<Vec<Record>> {
        let url = self.url("/api/v0/record/next");
        let req = self.auth(self.http.get(url), host).query(&[
            ("host", of.to_string()),
            ("tag", tag.to_owned()),
            ("start", start.to_string()),
            ("count", count.to_string()),
        ]);
        let Timed { result, elapsed } = timed(send(req, StatusCode::OK)).await;
        Timed { result: result.and_then(decode_json), elapsed }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self, req: RequestBuilder, host: &Host) -> RequestBuilder {
        req.header(AUTHORIZATION, format!("Token {}", host.token))
    }
}

fn now_nanos() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}
