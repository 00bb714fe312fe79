//! A thin HTTP client of the server: the endpoints the scenarios use, the
//! sync bodies in JSON or MessagePack through the crate's wire types.

use std::fmt;
use std::time::{Duration, Instant};

// The `bytes` type reqwest returns, re-exported by axum.
use axum::body::Bytes;
use echolia::http::codec::from_msgpack;
use echolia::sync::wire::{PullResponse, PushRequest, PushResponse};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::cli::Format;

const MSGPACK: &str = "application/msgpack";
const TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request did not succeed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The server answered with a status other than the expected one.
    Status(StatusCode),
    /// No answer: connection refused or reset, timeout.
    Transport(String),
    /// An answer whose body does not decode.
    Decode(String),
}

impl Failure {
    /// A short label to count failures by.
    pub fn label(&self) -> String {
        match self {
            Self::Status(status) => format!("HTTP {}", status.as_u16()),
            Self::Transport(_) => "transport".into(),
            Self::Decode(_) => "undecodable body".into(),
        }
    }

    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Self::Status(StatusCode::TOO_MANY_REQUESTS))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "HTTP {status}"),
            Self::Transport(err) | Self::Decode(err) => f.write_str(err),
        }
    }
}

/// What a request returned, and how long it took (send to last body byte).
pub struct Timed<T> {
    pub result: Result<T, Failure>,
    pub elapsed: Duration,
}

/// An encoded push body (cheap to clone).
#[derive(Debug, Clone)]
pub struct Encoded {
    content_type: &'static str,
    body: Bytes,
}

/// A device's credentials, from registration or pairing.
#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    pub device_id: Uuid,
    pub access_token: String,
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    format: Format,
}

impl Api {
    pub fn new(base: &str, format: Format) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|err| format!("building the HTTP client: {err}"))?;
        Ok(Api { http, base: base.trim_end_matches('/').to_owned(), format })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /health`: Ok when the server answers 200.
    pub async fn health(&self) -> Result<(), Failure> {
        let resp = self.http.get(self.url("/health")).send().await.map_err(transport)?;
        match resp.status() {
            StatusCode::OK => Ok(()),
            status => Err(Failure::Status(status)),
        }
    }

    /// `POST /auth/register`: a new user and its first device.
    pub async fn register(&self, name: &str) -> Timed<Session> {
        let req = self.http.post(self.url("/auth/register")).json(&device_body(name, "cli"));
        timed(async { decode_json(send(req, StatusCode::CREATED).await?) }).await
    }

    /// `POST /auth/pair-device`: `by` enrols a new device of its user.
    pub async fn pair(&self, by: &Session, name: &str) -> Timed<Session> {
        let req = self.http.post(self.url("/auth/pair-device")).bearer_auth(&by.access_token);
        let req = req.json(&device_body(name, "mobile"));
        timed(async { decode_json(send(req, StatusCode::CREATED).await?) }).await
    }

    /// `POST /sync/push` in the configured format. The body is encoded before
    /// the clock starts.
    pub async fn push(&self, device: &Session, batch: &PushRequest) -> Timed<PushResponse> {
        match self.encode(batch) {
            Ok(body) => self.push_encoded(device, &body).await,
            Err(failure) => Timed { result: Err(failure), elapsed: Duration::ZERO },
        }
    }

    /// A push body in the configured format, to send later with [`Api::push_encoded`].
    pub fn encode(&self, batch: &PushRequest) -> Result<Encoded, Failure> {
        let (content_type, body) = match self.format {
            Format::Json => ("application/json", serde_json::to_vec(batch).map_err(|e| e.to_string())),
            Format::Msgpack => (MSGPACK, rmp_serde::to_vec_named(batch).map_err(|e| e.to_string())),
        };
        body.map(|body| Encoded { content_type, body: Bytes::from(body) }).map_err(Failure::Decode)
    }

    /// `POST /sync/push` of a body made by [`Api::encode`].
    pub async fn push_encoded(&self, device: &Session, body: &Encoded) -> Timed<PushResponse> {
        let req = self.sync(self.http.post(self.url("/sync/push")), device);
        self.timed_sync(req.header(CONTENT_TYPE, body.content_type).body(body.body.clone())).await
    }

    /// `GET /sync/pull?since=&limit=` in the configured format.
    pub async fn pull(&self, device: &Session, since: u64, limit: u64) -> Timed<PullResponse> {
        let url = self.url(&format!("/sync/pull?since={since}&limit={limit}"));
        self.timed_sync(self.sync(self.http.get(url), device)).await
    }

    /// `GET /sync/pull?since=&limit=&wait=`: held by the server until a push
    /// (or `wait` seconds); the client waits 10 s longer than that.
    pub async fn long_poll(&self, device: &Session, since: u64, limit: u64, wait: u64) -> Timed<PullResponse> {
        let url = self.url(&format!("/sync/pull?since={since}&limit={limit}&wait={wait}"));
        let req = self.http.get(url).timeout(Duration::from_secs(wait + 10));
        self.timed_sync(self.sync(req, device)).await
    }

    /// The value of an unlabelled series on a Prometheus `/metrics` page at `metrics_url`.
    pub async fn gauge(&self, metrics_url: &str, series: &str) -> Result<f64, Failure> {
        let url = format!("{}/metrics", metrics_url.trim_end_matches('/'));
        let text = send(self.http.get(url), StatusCode::OK).await?;
        let text = String::from_utf8_lossy(&text);
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| Failure::Decode(format!("no `{series}` on the metrics page")))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn sync(&self, req: RequestBuilder, device: &Session) -> RequestBuilder {
        let req = req.bearer_auth(&device.access_token);
        match self.format {
            Format::Json => req,
            Format::Msgpack => req.header(ACCEPT, MSGPACK),
        }
    }

    /// Times a sync request up to its last body byte; decoding is not timed.
    async fn timed_sync<T: DeserializeOwned>(&self, req: RequestBuilder) -> Timed<T> {
        let Timed { result, elapsed } = timed(send(req, StatusCode::OK)).await;
        let result = result.and_then(|body| match self.format {
            Format::Json => decode_json(body),
            Format::Msgpack => from_msgpack(&body).map_err(|err| Failure::Decode(err.to_string())),
        });
        Timed { result, elapsed }
    }
}

pub async fn timed<T>(request: impl std::future::Future<Output = Result<T, Failure>>) -> Timed<T> {
    let started = Instant::now();
    let result = request.await;
    Timed { result, elapsed: started.elapsed() }
}

/// Sends and reads the whole body; any status but `expected` is a failure.
pub async fn send(req: RequestBuilder, expected: StatusCode) -> Result<Bytes, Failure> {
    let resp = req.send().await.map_err(transport)?;
    if resp.status() != expected {
        return Err(Failure::Status(resp.status()));
    }
    resp.bytes().await.map_err(transport)
}

pub fn decode_json<T: DeserializeOwned>(body: Bytes) -> Result<T, Failure> {
    serde_json::from_slice(&body).map_err(|err| Failure::Decode(err.to_string()))
}

pub fn transport(err: reqwest::Error) -> Failure {
    // The source chain says why (connection refused, reset, timed out).
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    Failure::Transport(message)
}

fn device_body(name: &str, device_type: &str) -> serde_json::Value {
    json!({
        "device_name": name,
        "device_type": device_type,
        "platform": "linux",
        "public_key": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEA9s8rR1vC2dWnC0cYpZ1x3u3pYgk0E0cPq9Gm7oTt1Ws=\n-----END PUBLIC KEY-----",
    })
}
