//! The Turso Platform API (`https://api.turso.tech/v1/organizations/{org}`):
//! databases created, looked up, deleted, measured, and their tokens minted.
//!
//! Every call has a deadline (`TURSO_TIMEOUT_SECS`). One answered 429 or
//! 5xx, or not at all, is tried again (`TURSO_RETRIES` times) after the
//! `Retry-After` it gave, else after an exponential backoff with jitter; a
//! wait longer than [`MAX_WAIT`] is not waited for. What still fails is
//! [`StoreError::Unavailable`] (503 `storage_unavailable`). The API token is
//! sent, never logged; error bodies are kept short (they name databases, not secrets).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rand::Rng;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::store::{StoreError, StoreResult};

/// The longest wait before a retry: a `Retry-After` beyond it fails the call now.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// The first backoff; each retry doubles it.
const BACKOFF: Duration = Duration::from_millis(200);

pub struct Platform {
    http: reqwest::Client,
    /// `{api}/v1/organizations/{org}`.
    org_url: String,
    token: SecretString,
    timeout: Duration,
    retries: u32,
}

/// A database, as the create and get routes answer it.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseInfo {
    #[serde(rename = "Name")]
    pub name: String,
    /// Where its data is served (`<name>-<org>.turso.io`).
    #[serde(rename = "Hostname")]
    pub hostname: String,
}

#[derive(Deserialize)]
struct DatabaseAnswer {
    database: DatabaseInfo,
}

impl Platform {
    pub fn new(
        http: reqwest::Client,
        api_url: &str,
        org: &str,
        token: SecretString,
        timeout: Duration,
        retries: u32,
    ) -> Self {
        Self { http, org_url: format!("{api_url}/v1/organizations/{org}"), token, timeout, retries }
    }

    /// Creates `name` in `group`; one that exists already is looked up (a retry).
    pub async fn create_database(&self, name: &str, group: &str) -> StoreResult<DatabaseInfo> {
        let what = format!("creating database {name}");
        let body = serde_json::json!({ "name": name, "group": group });
        match self.send(Method::POST, "/databases", Some(&body), &what).await? {
            (StatusCode::OK | StatusCode::CREATED, body) => parse::<DatabaseAnswer>(&what, &body).map(|a| a.database),
            (StatusCode::CONFLICT, _) => self.get_database(name).await?.ok_or_else(|| {
                StoreError::Unavailable(format!("Turso Platform API, {what}: it exists, then it does not"))
            }),
            (status, body) => Err(refused(&what, status, &body)),
        }
    }

    /// The database `name`, if it exists.
    pub async fn get_database(&self, name: &str) -> StoreResult<Option<DatabaseInfo>> {
        let what = format!("looking up database {name}");
        match self.send(Method::GET, &format!("/databases/{name}"), None, &what).await? {
            (StatusCode::OK, body) => parse::<DatabaseAnswer>(&what, &body).map(|a| Some(a.database)),
            (StatusCode::NOT_FOUND, _) => Ok(None),
            (status, body) => Err(refused(&what, status, &body)),
        }
    }

    /// Deletes `name` for good; one already gone is fine (a retry).
    pub async fn delete_database(&self, name: &str) -> StoreResult<()> {
        let what = format!("deleting database {name}");
        match self.send(Method::DELETE, &format!("/databases/{name}"), None, &what).await? {
            (StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND, _) => Ok(()),
            (status, body) => Err(refused(&what, status, &body)),
        }
    }

    /// Bytes `name` takes (its usage's `total.storage_bytes`); 0 if it is gone.
    pub async fn storage_bytes(&self, name: &str) -> StoreResult<u64> {
        #[derive(Deserialize)]
        struct Answer {
            database: Usage,
        }
        #[derive(Deserialize)]
        struct Usage {
            total: Total,
        }
        #[derive(Deserialize)]
        struct Total {
            storage_bytes: u64,
        }
        let what = format!("reading the usage of database {name}");
        match self.send(Method::GET, &format!("/databases/{name}/usage"), None, &what).await? {
            (StatusCode::OK, body) => parse::<Answer>(&what, &body).map(|a| a.database.total.storage_bytes),
            (StatusCode::NOT_FOUND, _) => Ok(0),
            (status, body) => Err(refused(&what, status, &body)),
        }
    }

    /// A full-access token for `name` that expires after `expiration` (Turso's form, `7d`).
    pub async fn mint_token(&self, name: &str, expiration: &str) -> StoreResult<SecretString> {
        #[derive(Deserialize)]
        struct Answer {
            jwt: String,
        }
        let what = format!("minting a token for database {name}");
        let path = format!("/databases/{name}/auth/tokens?expiration={expiration}&authorization=full-access");
        match self.send(Method::POST, &path, None, &what).await? {
            (StatusCode::OK | StatusCode::CREATED, body) => {
                parse::<Answer>(&what, &body).map(|a| SecretString::from(a.jwt))
            }
            (status, body) => Err(refused(&what, status, &body)),
        }
    }

    /// Sends one call, tried again as the module's doc says. Answers other
    /// than 429 and 5xx are the caller's to read; a refused API token
    /// (401, 403) or an unpaid plan (402) is [`StoreError::Unavailable`] here.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> StoreResult<(StatusCode, Bytes)> {
        let url = format!("{}{path}", self.org_url);
        let mut attempt = 0;
        loop {
            let mut request =
                self.http.request(method.clone(), &url).bearer_auth(self.token.expose_secret()).timeout(self.timeout);
            if let Some(body) = body {
                request = request.json(body);
            }
            metrics::counter!("echolia_turso_api_calls_total").increment(1);
            let answer = async {
                let response = request.send().await?;
                let (status, wait) = (response.status(), retry_after(response.headers()));
                Ok::<_, reqwest::Error>((status, wait, response.bytes().await?))
            }
            .await;
            let (failure, wait) = match answer {
                Ok((status, wait, _)) if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => {
                    (format!("HTTP {status}"), wait)
                }
                Ok((status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN), _, _)) => {
                    return Err(StoreError::Unavailable(format!(
                        "Turso Platform API, {what}: HTTP {status} (check TURSO_AUTH_TOKEN and TURSO_ORG)"
                    )))
                }
                Ok((StatusCode::PAYMENT_REQUIRED, _, body)) => {
                    return Err(StoreError::Unavailable(format!(
                        "Turso Platform API, {what}: HTTP 402 (the organization's plan): {}",
                        error_message(&body)
                    )))
                }
                Ok((status, _, body)) => return Ok((status, body)),
                Err(err) => (super::super::hrana::without_url(err), None),
            };
            let wait = wait.unwrap_or_else(|| backoff(attempt));
            if attempt >= self.retries || wait > MAX_WAIT {
                return Err(StoreError::Unavailable(format!(
                    "Turso Platform API, {what}: {failure} ({} attempts)",
                    attempt + 1
                )));
            }
            tracing::debug!(what, failure, ?wait, "Turso Platform API call failed; trying again");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// `BACKOFF` doubled per attempt, with full jitter (half to all of it), so
/// servers that failed together do not retry together.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF.saturating_mul(1 << attempt.min(10));
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The Platform API's error shape: `{"error": "…"}`, kept short.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Error {
        error: String,
    }
    let message = serde_json::from_slice::<Error>(body).map(|e| e.error).unwrap_or_default();
    message.chars().take(200).collect()
}

/// An answer the call did not expect: the service's or the configuration's
/// fault (a group that does not exist, a name it refuses), so 503, logged.
fn refused(what: &str, status: StatusCode, body: &[u8]) -> StoreError {
    StoreError::Unavailable(format!("Turso Platform API, {what}: HTTP {status}: {}", error_message(body)))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(body)
        .map_err(|err| StoreError::Unavailable(format!("Turso Platform API, {what}: an answer it cannot read: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_backoff_grows() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        headers.insert(reqwest::header::RETRY_AFTER, later.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
        for attempt in 0..4 {
            let wait = backoff(attempt);
            let ceiling = BACKOFF * (1 << attempt);
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{attempt}: {wait:?}");
        }
    }

    #[test]
    fn error_bodies_are_read_short() {
        assert_eq!(error_message(br#"{"error":"group not found"}"#), "group not found");
        assert_eq!(error_message(b"<html>"), "");
        let long = format!(r#"{{"error":"{}"}}"#, "x".repeat(1000));
        assert_eq!(error_message(long.as_bytes()).len(), 200);
    }
}
